//! The user-facing API: the four custom resources of group `tinystacks.io/v1alpha1` and the
//! types they share. Nothing here talks to Kubernetes or AWS; the CRDs are generated from these
//! types, CEL rules included, so the API server rejects what can be rejected without AWS.

mod account_link;
mod bastion;
mod database;
mod plan;
mod stack;

pub use account_link::*;
pub use bastion::*;
pub use database::*;
pub use plan::*;
pub use stack::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "tinystacks.io";
pub const VERSION: &str = "v1alpha1";
/// The finalizer that holds an object until its AWS side is gone (or retained).
pub const FINALIZER: &str = "tinystacks.io/cleanup";
/// `tinystacks.io/paused: "true"` stops all AWS calls for the object.
pub const PAUSED_ANNOTATION: &str = "tinystacks.io/paused";
/// `tinystacks.io/claimed-by: <operator namespace>/<lease name>`: the one install that acts on the
/// object. Written with the finalizer; another install leaves a claimed object alone.
pub const CLAIM_ANNOTATION: &str = "tinystacks.io/claimed-by";

/// The CRDs of every kind, in the order they are documented.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![AwsAccountLink::crd(), Stack::crd(), Database::crd(), Bastion::crd()]
}

/// The CRDs as one multi-document YAML stream, exactly as committed under `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// A reference to another object of this API by name, in the referring object's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct LocalObjectReference {
    /// Name of the referenced object.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("name must be a valid Kubernetes object name (lowercase RFC 1123 subdomain)"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to a Secret in a given namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct SecretReference {
    /// Namespace of the Secret.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("namespace must be a valid namespace name (RFC 1123 label)"))]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("name must be a valid Secret name (lowercase RFC 1123 subdomain)"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What happens to the AWS side when the object is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the AWS resources, and keep the finalizer until AWS confirms they are gone.
    #[default]
    Delete,
    /// Stop managing the AWS resources and leave them, with their tags, in the account.
    Retain,
}

/// The conditions and generation that every kind reports.
pub trait HasConditions {
    fn conditions(&self) -> &[Condition];
    fn observed_generation(&self) -> Option<i64>;
    fn set_conditions(&mut self, conditions: Vec<Condition>, generation: Option<i64>);
}

macro_rules! impl_has_conditions {
    ($($status:ty),*) => {$(
        impl HasConditions for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }
            fn set_conditions(&mut self, conditions: Vec<Condition>, generation: Option<i64>) {
                self.conditions = conditions;
                self.observed_generation = generation;
            }
        }
    )*};
}
impl_has_conditions!(AwsAccountLinkStatus, StackStatus, DatabaseStatus, BastionStatus);

/// The longest name of a namespace, which the rules at admission cannot see (a rule at the root
/// may read only `metadata.name`): every limit below holds in any namespace.
pub const MAX_NAMESPACE: usize = 63;

/// The longest name of an `AwsAccountLink`. Built from it: the label
/// `tinystacks.io/account-link=<name>` on the ConfigMap of its template (label values: 63, the
/// binding limit); the tag `tinystacks.io/owner=AwsAccountLink//<name>` (256); its Events
/// `<name>.<16 hex digits>` (253); the ConfigMap's own name is cut to fit with a hash.
pub const MAX_LINK_NAME: usize = 63;

/// The longest name of a `Stack`, in a namespace of up to 63 characters. Built from it: the VPC
/// Link `tinystacks-<namespace>-<name>` (API Gateway v2 names: 128, so 128 - 11 - 63 - 1 = 53, the
/// binding limit); the KMS alias `alias/tinystacks/<namespace>/<name>` (256, and only
/// `[a-zA-Z0-9/_-]`, so no `.` in the name); the tags `tinystacks.io/owner=Stack/<namespace>/<name>`
/// and `Name=<namespace>-<name>-<component>` (256 with the longest component, `subnet-isolated-2`:
/// 174); its Databases' and Bastions' `Name` tag `<namespace>/<stack>/<name>` (256: 128); its
/// Databases' Secrets Manager names `tinystacks/<namespace>/<stack>/<database>` (512); its Events
/// `<name>.<16 hex digits>` (253: 236).
pub const MAX_STACK_NAME: usize = 53;

/// The longest name of a `Database`. Built from it: the label `tinystacks.io/database=<name>` on
/// its connection Secret (label values: 63, the binding limit); the connection Secret
/// `<name>-connection` (253); the tags `tinystacks.io/owner=Database/<namespace>/<name>` and
/// `Name=<namespace>/<stack>/<name>` (256); the Secrets Manager name
/// `tinystacks/<namespace>/<stack>/<name>` (512); its Events (253). The RDS instance identifier,
/// subnet group and security group are cut to RDS's 63 with a hash, so any name fits them.
pub const MAX_DATABASE_NAME: usize = 63;

/// The longest name of a `Bastion`. Built from it: the label `tinystacks.io/bastion=<name>` on its
/// key Secret (label values: 63, the binding limit); the key Secret `<name>-ssh-key` (253); the
/// tags `tinystacks.io/owner=Bastion/<namespace>/<name>` and `Name=<namespace>/<stack>/<name>`
/// (256); its Events (253). The IAM role and instance profile, the security group and the key
/// pairs are cut to IAM's 64 and end in the object's UID, so any name fits them.
pub const MAX_BASTION_NAME: usize = 63;

/// A rule at a kind's root: `metadata.name` at most `max` characters, because `why`. Checked when
/// the object is created only (`oldSelf` is then absent), so that an object made before the rule
/// existed can still be updated, and deleted (its finalizer removed).
pub(crate) fn name_length_rule(kind: &str, max: usize, why: &str) -> kube::core::Rule {
    kube::core::Rule::new(format!("oldSelf.hasValue() || size(self.metadata.name) <= {max}"))
        .message(format!("{kind} metadata.name may be at most {max} characters: {why}").as_str())
        .optional_old_self(true)
}

/// The `x-kubernetes-validations` rule for a field that may never change once set.
pub(crate) const IMMUTABLE: &str = "self == oldSelf";

/// The shared schema of `status.conditions`: a list-map keyed by `type`, so server-side apply
/// merges conditions one by one.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}
