//! The Stack's reconcile steps: resolve the account link (enforcing `allowedNamespaces` before
//! any AWS call), then converge the network. Deletion waits for the Stack's Databases and
//! Bastions.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::account_link::{self, LinkFor};
use crate::api::{Bastion, Database, Stack, StackStatus};
use crate::error::Result;
use crate::runtime::conditions::Health;
use crate::runtime::context::Context;
use crate::runtime::reconciler::{Cleanup, Managed, Step};

impl Managed for Stack {
    type Status = StackStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Step<Self::Status>> {
        let namespace = self.namespace().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let health = match account_link::resolve_for(ctx, self, &namespace).await? {
            LinkFor::NotReady { message } => Health::progressing("WaitingForAccountLink", message),
            LinkFor::Usable(link) => Health::progressing(
                "NetworkPending",
                format!("account {} is linked; the network is not converged yet", link.spec.account_id),
            ),
        };
        Ok(Step { status, health, requeue_after: None })
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Cleanup> {
        let namespace = self.namespace().unwrap_or_default();
        let name = self.name_any();
        let lp = ListParams::default();
        let databases = Api::<Database>::namespaced(ctx.client.clone(), &namespace).list(&lp).await?;
        let bastions = Api::<Bastion>::namespaced(ctx.client.clone(), &namespace).list(&lp).await?;
        let dependents: Vec<String> = databases
            .items
            .iter()
            .filter(|d| d.spec.stack_ref.name == name)
            .map(|d| format!("Database/{}", d.name_any()))
            .chain(
                bastions
                    .items
                    .iter()
                    .filter(|b| b.spec.stack_ref.name == name)
                    .map(|b| format!("Bastion/{}", b.name_any())),
            )
            .collect();
        if !dependents.is_empty() {
            return Ok(Cleanup::Pending {
                reason: "DependentsExist",
                message: format!("waiting for these to be deleted first: {}", dependents.join(", ")),
                requeue_after: Duration::from_secs(30),
            });
        }
        Ok(Cleanup::Done)
    }
}
