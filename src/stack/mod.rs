//! `Stack`: the VPC a team's application lives in. Databases and Bastions reach their Stack
//! through `resolve`, which also decides whether they must wait.

mod aws;
mod plan;
mod reconcile;

use kube::{Api, ResourceExt};

use crate::api::Stack;
use crate::error::{Error, Result};
use crate::runtime::conditions;
use crate::runtime::context::Context;

/// The Stack a Database or Bastion refers to. A dependent does not wait for the whole Stack to be
/// Ready, only for the parts it needs, which it reads from the Stack's status (its placement):
/// the Stack publishes each ID as soon as the resource exists.
pub enum StackFor {
    /// The Stack exists and is not being deleted.
    Usable(Box<Stack>),
    /// The Stack is being deleted: nothing new is made, but what exists keeps its security
    /// guarantees while the account can be reached through the Stack's link.
    Deleting { stack: Box<Stack>, message: String },
}

/// Resolves `name` in `namespace`: a missing Stack is a user error; one being deleted means
/// waiting (reason `WaitingForStack`).
pub async fn resolve(ctx: &Context, namespace: &str, name: &str) -> Result<StackFor> {
    let stack = Api::<Stack>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::StackNotFound { name: name.into() })?;
    if stack.metadata.deletion_timestamp.is_some() {
        let message = format!("Stack {name:?} is being deleted");
        return Ok(StackFor::Deleting { message, stack: Box::new(stack) });
    }
    Ok(StackFor::Usable(Box::new(stack)))
}

/// What a dependent waiting for parts of `stack` says: the parts its status does not list yet,
/// and where the Stack itself is (its `Ready` reason).
pub fn missing_message(stack: &Stack, missing: &[String]) -> String {
    let where_ = stack
        .status
        .as_ref()
        .and_then(|s| conditions::ready(&s.conditions))
        .map(|c| format!("Ready={}, {}", c.status, c.reason))
        .unwrap_or_else(|| "not reconciled yet".into());
    format!("waiting for Stack {:?} to make {} (the Stack: {where_})", stack.name_any(), missing.join(", "))
}
