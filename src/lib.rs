//! tinystacks-operator: secure AWS stacks (VPC, PostgreSQL, bastion) declared as Kubernetes
//! resources. `api` holds the CRD types, `runtime` the shared reconcile machinery, and each
//! kind's folder its own reconcile steps.
#![forbid(unsafe_code)]

pub mod account_link;
pub mod api;
pub mod aws;
pub mod bastion;
pub mod database;
pub mod error;
pub mod runtime;
pub mod stack;
