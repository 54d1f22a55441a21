//! `Database`: PostgreSQL on RDS in the private side of a Stack, its master credentials in a
//! Secrets Manager secret and in a Kubernetes Secret for `envFrom`.

pub(crate) mod aws;
mod credentials;
pub(crate) mod plan;
mod reconcile;

/// The name of a Database's DB instance, subnet group and security group (tests look for them).
pub use plan::instance_identifier;
pub use reconcile::MANAGED_LABEL;
