//! `Bastion`: a host through which people reach a Stack's Database, through Session Manager (no
//! inbound port) or SSH from allowed addresses only, for a limited time if `ttl` says so.

mod apply;
mod aws;
mod keys;
mod plan;
mod reconcile;

pub use plan::NAME_PREFIX;
pub use reconcile::EXPIRED;
