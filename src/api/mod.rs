//! The user-facing API: the four custom resources of group `tinystacks.io/v1alpha1` and the
//! types they share. Nothing here talks to Kubernetes or AWS; the CRDs are generated from these
//! types, CEL rules included, so the API server rejects what can be rejected without AWS.

mod account_link;
mod bastion;
mod database;
mod stack;

pub use account_link::*;
pub use bastion::*;
pub use database::*;
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
