//! `Stack`: the VPC a team's application lives in. Databases and Bastions reach their Stack
//! through `resolve`, which also decides whether they must wait.

mod aws;
mod plan;
mod reconcile;

use kube::Api;

use crate::api::Stack;
use crate::error::{Error, Result};
use crate::runtime::conditions;
use crate::runtime::context::Context;

/// The Stack a Database or Bastion refers to, if it is Ready.
pub enum StackFor {
    Usable(Box<Stack>),
    /// The Stack exists but is not Ready yet: nothing new is made, but what exists keeps its
    /// security guarantees while the account can be reached through the Stack's link.
    NotReady {
        stack: Box<Stack>,
        message: String,
    },
}

/// Resolves `name` in `namespace`: a missing Stack is a user error; one that is not Ready yet
/// means waiting (reason `WaitingForStack`).
pub async fn resolve(ctx: &Context, namespace: &str, name: &str) -> Result<StackFor> {
    let stack = Api::<Stack>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::StackNotFound { name: name.into() })?;
    let status = stack.status.as_ref();
    if status.is_some_and(|s| conditions::is_ready(&s.conditions, stack.metadata.generation)) {
        return Ok(StackFor::Usable(Box::new(stack)));
    }
    let why = status
        .and_then(|s| conditions::ready(&s.conditions))
        .map(|c| c.reason.clone())
        .unwrap_or_else(|| "not reconciled yet".into());
    Ok(StackFor::NotReady { message: format!("Stack {name:?} is not Ready ({why})"), stack: Box::new(stack) })
}
