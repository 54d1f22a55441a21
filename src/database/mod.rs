//! `Database`: PostgreSQL on RDS in the private side of a Stack, its master credentials in a
//! Secrets Manager secret and in a Kubernetes Secret for `envFrom`.

pub(crate) mod aws;
mod credentials;
pub(crate) mod plan;
mod reconcile;

pub use reconcile::MANAGED_LABEL;
