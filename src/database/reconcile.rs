//! The Database's reconcile steps: wait for its Stack, then converge the instance and its
//! secrets.

use kube::ResourceExt;

use crate::api::{Database, DatabaseStatus};
use crate::error::Result;
use crate::runtime::conditions::Health;
use crate::runtime::context::Context;
use crate::runtime::reconciler::{Cleanup, Managed, Step};
use crate::stack::{self, StackFor};

impl Managed for Database {
    type Status = DatabaseStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Step<Self::Status>> {
        let namespace = self.namespace().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let health = match stack::resolve(ctx, &namespace, &self.spec.stack_ref.name).await? {
            StackFor::NotReady { message } => Health::progressing("WaitingForStack", message),
            StackFor::Usable(stack) => Health::progressing(
                "InstancePending",
                format!("Stack {:?} is Ready; the database instance is not converged yet", stack.name_any()),
            ),
        };
        Ok(Step { status, health, requeue_after: None })
    }

    async fn cleanup(&self, _ctx: &Context) -> Result<Cleanup> {
        Ok(Cleanup::Done)
    }
}
