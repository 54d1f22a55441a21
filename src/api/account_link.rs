//! `AwsAccountLink`: the operator's access to one AWS account through the `TinyStacksRole`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, IMMUTABLE, SecretReference, conditions_schema};

/// Grants the operator access to one AWS account through an IAM role (by default
/// `TinyStacksRole`) that the operator's own identity assumes with an external ID.
// Each printcolumn repeats `type_ = ...`; clippy reads the macro's arguments as attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tinystacks.io",
    version = "v1alpha1",
    kind = "AwsAccountLink",
    shortname = "awslink",
    category = "tinystacks",
    status = "AwsAccountLinkStatus",
    doc = "Access to one AWS account through an IAM role that the operator assumes with an external ID.",
    printcolumn(name = "Account", type_ = "string", json_path = ".spec.accountId"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Role", type_ = "string", json_path = ".status.roleArn", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Every name built from the object's name fits (`MAX_LINK_NAME`).
    validation = super::name_length_rule("AwsAccountLink", super::MAX_LINK_NAME, "the name is the value of the label tinystacks.io/account-link on the template's ConfigMap, and label values are limited to 63")
)]
#[x_kube(validation = kube::core::Rule::new("!has(oldSelf.externalId) || (has(self.externalId) && self.externalId == oldSelf.externalId)").message("externalId cannot be changed or removed once set").field_path(".externalId"))]
#[serde(rename_all = "camelCase")]
pub struct AwsAccountLinkSpec {
    /// The 12-digit ID of the AWS account. Immutable.
    #[x_kube(
        validation = kube::core::Rule::new("self.matches('^[0-9]{12}$')").message("accountId must be exactly 12 digits"),
        validation = kube::core::Rule::new(IMMUTABLE).message("accountId is immutable")
    )]
    pub account_id: String,

    /// Default AWS region for Stacks that use this link, for example `eu-west-1`.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z]{2}(-[a-z]+)+-[0-9]+$')").message("region must be an AWS region name such as eu-west-1"))]
    #[schemars(length(max = 32))]
    pub region: String,

    /// Name of the IAM role the operator assumes. Immutable.
    #[serde(default = "default_role_name")]
    #[x_kube(
        validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9+=,.@_-]{1,64}$')").message("roleName must be a valid IAM role name (1-64 of A-Z a-z 0-9 +=,.@_-)"),
        validation = kube::core::Rule::new(IMMUTABLE).message("roleName is immutable")
    )]
    #[schemars(length(max = 64))]
    pub role_name: String,

    /// The `sts:ExternalId` the role's trust policy requires. If empty, the operator generates a
    /// random one and records it in `status.externalId`; once set it never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9+=,.@:/_-]+$')").message("externalId may hold only A-Z a-z 0-9 and +=,.@:/_-"))]
    #[schemars(length(min = 2, max = 1224))]
    pub external_id: Option<String>,

    /// How the role gets into the account.
    #[serde(default)]
    pub bootstrap: Bootstrap,

    /// Which permissions the role grants.
    #[serde(default)]
    pub permissions: Permissions,

    /// Namespaces whose Stacks may use this account: namespace names, or `["*"]` for all.
    /// Empty means none.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(n, n == '*' || n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("allowedNamespaces holds namespace names or \"*\""))]
    pub allowed_namespaces: Vec<NamespaceName>,

    /// On deletion: `Delete` removes the CloudFormation stack (revoking access) and the audit
    /// trail's bucket with its logs; `Retain` leaves both. The audit trail itself is deleted
    /// either way. Deletion waits while any Stack still uses the link.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Account-wide auditing the operator sets up through the link's role.
    #[serde(default, skip_serializing_if = "Audit::is_default")]
    pub audit: Audit,
}

/// Account-wide auditing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// A multi-region CloudTrail trail into an encrypted, non-public S3 bucket the operator makes.
    #[serde(default)]
    pub cloud_trail: CloudTrail,
}

impl Audit {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The account's audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudTrail {
    /// `true`: a multi-region trail (global service events, log file validation) logging into the
    /// operator's bucket. Set back to `false`: the trail is deleted and the bucket is kept with
    /// its logs (they still expire after `retentionDays`).
    #[serde(default)]
    pub enabled: bool,
    /// Days after which the bucket's lifecycle rule expires a log file.
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 1, max = 36500))]
    pub retention_days: i32,
}

impl Default for CloudTrail {
    fn default() -> Self {
        Self { enabled: false, retention_days: default_retention_days() }
    }
}

fn default_retention_days() -> i32 {
    365
}

/// A namespace name or `*`.
pub type NamespaceName = String;

fn default_role_name() -> String {
    "TinyStacksRole".into()
}

/// How the `TinyStacksRole` is created in the account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("self.mode != 'CloudFormation' || has(self.credentialsSecretRef)").message("bootstrap.credentialsSecretRef is required when bootstrap.mode is CloudFormation").field_path(".credentialsSecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// `CloudFormation`: the operator deploys the stack itself with the bootstrap credentials.
    /// `Manual`: the operator renders the template and the user deploys it.
    #[serde(default)]
    pub mode: BootstrapMode,

    /// Secret with keys `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optional
    /// `AWS_SESSION_TOKEN`, used only to deploy the CloudFormation stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,

    /// Name of the CloudFormation stack that creates the role.
    #[serde(default = "default_stack_name")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z][A-Za-z0-9-]{0,127}$')").message("stackName must be a valid CloudFormation stack name"))]
    #[schemars(length(max = 128))]
    pub stack_name: String,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self { mode: BootstrapMode::default(), credentials_secret_ref: None, stack_name: default_stack_name() }
    }
}

fn default_stack_name() -> String {
    "TinyStacksRole".into()
}

/// How the role's CloudFormation stack is deployed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum BootstrapMode {
    /// The operator creates and updates the CloudFormation stack itself.
    CloudFormation,
    /// The user deploys the rendered template.
    #[default]
    Manual,
}

/// The permission set the role grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Permissions {
    /// Exactly the access TinyStacks' role granted.
    Full,
    /// Only the actions this operator calls, mutations limited to resources it tagged.
    #[default]
    Scoped,
}

/// What the operator observed of the link.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsAccountLinkStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The external ID in force: `spec.externalId`, or the one the operator generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// ARN of the role the operator assumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// ID of the CloudFormation stack that created the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_formation_stack_id: Option<String>,
    /// ConfigMap, in the operator's namespace, holding the rendered CloudFormation template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_config_map: Option<String>,
    /// The ARN `sts:GetCallerIdentity` returned under the assumed role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_identity: Option<String>,
    /// When the role was last assumed and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_time: Option<Time>,
    /// ARN of the audit trail (`spec.audit.cloudTrail`), recorded before the trail is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail_arn: Option<String>,
    /// Name of the audit trail's S3 bucket, recorded before the bucket is created; kept while the
    /// bucket is (after the trail is disabled, it still holds the logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail_bucket: Option<String>,
}
