//! The link's reconcile steps: settle the external ID, then (with the AWS work of the
//! AwsAccountLink issue) deploy and verify the role. Deletion waits until no Stack uses the link.

use std::time::Duration;

use kube::api::{Api, ListParams};
use rand::distr::{Alphanumeric, SampleString};

use crate::api::{AwsAccountLink, AwsAccountLinkStatus, Stack};
use crate::error::Result;
use crate::runtime::conditions::Health;
use crate::runtime::context::Context;
use crate::runtime::reconciler::{Cleanup, Managed, Step};

/// Length of a generated external ID; AWS recommends at least 32 characters of entropy.
const EXTERNAL_ID_LEN: usize = 40;

impl Managed for AwsAccountLink {
    type Status = AwsAccountLinkStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, _ctx: &Context) -> Result<Step<Self::Status>> {
        let mut status = self.status.clone().unwrap_or_default();
        status.external_id = Some(external_id(self));
        let role = format!("arn:aws:iam::{}:role/{}", self.spec.account_id, self.spec.role_name);
        Ok(Step {
            status,
            health: Health::progressing(
                "WaitingForRole",
                format!("waiting to assume {role} with the link's external ID"),
            ),
            requeue_after: None,
        })
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Cleanup> {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let stacks = Api::<Stack>::all(ctx.client.clone()).list(&ListParams::default()).await?;
        let users: Vec<String> = stacks
            .items
            .iter()
            .filter(|s| s.spec.account_link_ref.name == name)
            .map(|s| {
                format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect();
        if !users.is_empty() {
            return Ok(Cleanup::Pending {
                reason: "DependentsExist",
                message: format!("waiting for the Stacks that use this link to be deleted: {}", users.join(", ")),
                requeue_after: Duration::from_secs(30),
            });
        }
        Ok(Cleanup::Done)
    }
}

/// The external ID in force: the spec's, else the one generated earlier, else a new one.
fn external_id(link: &AwsAccountLink) -> String {
    link.spec
        .external_id
        .clone()
        .or_else(|| link.status.as_ref().and_then(|s| s.external_id.clone()))
        .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), EXTERNAL_ID_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AwsAccountLinkSpec;

    fn link(external_id: Option<&str>) -> AwsAccountLink {
        let mut spec: AwsAccountLinkSpec =
            serde_json::from_value(serde_json::json!({"accountId": "123456789012", "region": "us-east-1"})).unwrap();
        spec.external_id = external_id.map(Into::into);
        AwsAccountLink::new("l", spec)
    }

    #[test]
    fn external_id_is_generated_once_and_kept() {
        let mut l = link(None);
        let generated = external_id(&l);
        assert_eq!(generated.len(), EXTERNAL_ID_LEN);
        assert!(generated.chars().all(|c| c.is_ascii_alphanumeric()));
        l.status = Some(AwsAccountLinkStatus { external_id: Some(generated.clone()), ..Default::default() });
        assert_eq!(external_id(&l), generated);
        assert_ne!(external_id(&link(None)), generated);
    }

    #[test]
    fn spec_external_id_wins() {
        assert_eq!(external_id(&link(Some("given-id"))), "given-id");
    }
}
