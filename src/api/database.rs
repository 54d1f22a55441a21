//! `Database`: PostgreSQL on RDS in the private side of a Stack.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{IMMUTABLE, LocalObjectReference, PlanControls, PlanStatus, conditions_schema};

/// PostgreSQL on RDS inside a Stack, never reachable from outside the VPC.
// Each printcolumn repeats `type_ = ...`; clippy reads the macro's arguments as attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tinystacks.io",
    version = "v1alpha1",
    kind = "Database",
    namespaced,
    shortname = "tdb",
    category = "tinystacks",
    status = "DatabaseStatus",
    doc = "PostgreSQL on RDS in the private side of a Stack, its credentials in AWS Secrets Manager and a Kubernetes Secret.",
    printcolumn(name = "Stack", type_ = "string", json_path = ".spec.stackRef.name"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint.address"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Every name built from the object's name fits (`MAX_DATABASE_NAME`).
    validation = super::name_length_rule("Database", super::MAX_DATABASE_NAME, "the name is the value of the label tinystacks.io/database on the connection Secret, and label values are limited to 63")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.restoreFromSnapshot) == has(oldSelf.restoreFromSnapshot) && (!has(self.restoreFromSnapshot) || self.restoreFromSnapshot == oldSelf.restoreFromSnapshot)").message("restoreFromSnapshot is immutable").field_path(".restoreFromSnapshot"))]
pub struct DatabaseSpec {
    /// The Stack, in this namespace, whose private side hosts the database. Immutable.
    #[x_kube(validation = kube::core::Rule::new(IMMUTABLE).message("stackRef is immutable"))]
    pub stack_ref: LocalObjectReference,

    /// Database engine: only `postgres` for now. Immutable.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new(IMMUTABLE).message("engine is immutable"))]
    pub engine: Engine,

    /// PostgreSQL version, major (`"16"`) or major.minor (`"16.4"`). Changing it upgrades in place.
    #[serde(default = "default_engine_version")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]{1,3}([.][0-9]{1,3})?$')").message("engineVersion must look like \"16\" or \"16.4\""))]
    pub engine_version: String,

    /// RDS instance class, for example `db.t4g.micro`.
    #[serde(default = "default_instance_class")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^db[.][a-z0-9-]+[.][a-z0-9-]+$')").message("instanceClass must be an RDS instance class such as db.t4g.micro"))]
    pub instance_class: String,

    /// Allocated storage in GiB: at least 20; may only grow.
    #[serde(default = "default_storage")]
    #[schemars(range(min = 20, max = 65536))]
    #[x_kube(validation = kube::core::Rule::new("self >= oldSelf").message("allocatedStorageGiB may only grow"))]
    pub allocated_storage_gi_b: i32,

    /// Name of the database created in the instance. Immutable.
    #[serde(default = "default_app")]
    #[schemars(length(max = 63))]
    #[x_kube(
        validation = kube::core::Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_]{0,62}$')").message("databaseName must start with a letter and hold only letters, digits and _ (at most 63)"),
        validation = kube::core::Rule::new(IMMUTABLE).message("databaseName is immutable")
    )]
    pub database_name: String,

    /// Name of the master user. Immutable.
    #[serde(default = "default_app")]
    #[schemars(length(max = 63))]
    #[x_kube(
        validation = kube::core::Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_]{0,62}$')").message("masterUsername must start with a letter and hold only letters, digits and _ (at most 63)"),
        validation = kube::core::Rule::new("!(self.lowerAscii() in ['rdsadmin', 'rds_superuser', 'postgres_fdw'])").message("masterUsername is a name RDS reserves"),
        validation = kube::core::Rule::new(IMMUTABLE).message("masterUsername is immutable")
    )]
    pub master_username: String,

    /// Run a standby in a second availability zone.
    #[serde(default)]
    pub multi_az: bool,

    /// Days of automated backups, 0 to 35.
    #[serde(default = "default_backup_days")]
    #[schemars(range(min = 0, max = 35))]
    pub backup_retention_days: i32,

    /// On deletion: `Snapshot` (a final snapshot first), `Delete`, or `Retain` (leave the
    /// instance and its secret).
    #[serde(default)]
    pub deletion_policy: DatabaseDeletionPolicy,

    /// The Kubernetes Secret with the connection settings for `envFrom`.
    #[serde(default)]
    pub connection_secret: ConnectionSecret,

    /// A DB snapshot (identifier or ARN) to create the instance from instead of an empty one, for
    /// example the final snapshot a `Snapshot` policy left (named in the deleted Database's
    /// Events). Used only when the instance is created; immutable. The snapshot must be encrypted
    /// with the Stack's KMS key (a final snapshot of the same Stack is). The data and database
    /// names are the snapshot's; the master password is set to the one generated in the
    /// Database's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub restore_from_snapshot: Option<String>,

    /// `changePolicy`, `approvedPlan` and `management`: whether and when the plan is applied.
    #[serde(flatten)]
    pub controls: PlanControls,
}

fn default_engine_version() -> String {
    "16".into()
}
fn default_instance_class() -> String {
    "db.t4g.micro".into()
}
fn default_storage() -> i32 {
    20
}
fn default_app() -> String {
    "app".into()
}
fn default_backup_days() -> i32 {
    7
}
fn default_true() -> bool {
    true
}

/// The database engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Engine {
    /// PostgreSQL.
    #[default]
    #[serde(rename = "postgres")]
    Postgres,
}

/// What happens to the instance when the Database is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DatabaseDeletionPolicy {
    /// Take a final snapshot (named in an event), then delete.
    #[default]
    Snapshot,
    /// Delete without a snapshot.
    Delete,
    /// Leave the instance and its secret in the account.
    Retain,
}

/// The Kubernetes Secret holding `PG_HOST`, `PG_PORT`, `PG_DATABASE`, `PG_USER`, `PG_PASSWORD`,
/// `PG_CREDENTIALS_SECRET` and `DATABASE_URL`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSecret {
    /// Name of the Secret; default `<database name>-connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("connectionSecret.name must be a valid Secret name (lowercase RFC 1123 subdomain)"))]
    pub name: Option<String>,
    /// Whether to write the Secret at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for ConnectionSecret {
    fn default() -> Self {
        Self { name: None, enabled: true }
    }
}

/// Where the instance answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoint {
    /// Host name of the instance.
    pub address: String,
    /// TCP port of the instance.
    pub port: i32,
}

/// What the operator observed of the database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// RDS DB instance identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_instance_identifier: Option<String>,
    /// ARN of the DB instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Address and port of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// The database's dedicated security group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group_id: Option<String>,
    /// The DB subnet group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_group_name: Option<String>,
    /// ARN of the Secrets Manager secret with the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_arn: Option<String>,
    /// Name of the Kubernetes connection Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret_name: Option<String>,
    /// What the operator would change in AWS, in order; empty when AWS matches the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStatus>,
}
