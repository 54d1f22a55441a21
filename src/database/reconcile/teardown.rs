//! Deletion (policies `Snapshot` and `Delete`): observe what is the Database's, plan the removals
//! (`plan::teardown`: the instance first, then the security group, the subnet group and the
//! secret), make the first. Every step is confirmed by a lookup on a later pass. Deletion is the
//! person's act, so it needs no approval; under `ObserveOnly` nothing is deleted (see `cleanup`).

use std::time::Duration;

use kube::runtime::events::EventType;
use tracing::warn;

use super::{event, poll};
use crate::api::{Database, DatabaseDeletionPolicy};
use crate::aws::inventory::{Kind, Recorded};
use crate::aws::tags::Tags;
use crate::database::aws::{DatabaseAws, Deleted};
use crate::database::plan::{self, Names, ObservedSubnetGroup, Removal, View};
use crate::error::Result;
use crate::runtime::context::Context;
use crate::runtime::owned_secrets::OwnedSecrets;
use crate::runtime::reconciler::Cleanup;

pub(super) struct Teardown<'a> {
    pub db: &'a Database,
    pub ctx: &'a Context,
    pub aws: DatabaseAws<'a>,
    pub names: Names,
    /// The Database's UID: only what carries it is deleted.
    pub uid: String,
    pub vpc_id: Option<String>,
}

fn pending(reason: &'static str, message: String, requeue_after: Duration) -> Result<Cleanup> {
    Ok(Cleanup::Pending { reason, message, requeue_after })
}

impl Teardown<'_> {
    /// Only what carries this object's UID is deleted; anything else of its names is left alone.
    fn ours(&self, tags: &Tags) -> bool {
        plan::claimed_by_other(tags, &self.uid).is_none()
    }

    async fn event(&self, reason: &str, note: String) {
        event(self.db, self.ctx, EventType::Normal, reason, note).await;
    }

    async fn observe(&self) -> Result<View> {
        let names = &self.names;
        let group = match &self.vpc_id {
            Some(vpc) => self.aws.groups().find(vpc, &names.instance).await?.filter(|g| self.ours(&g.tags)),
            None => None,
        };
        let subnet_group = self
            .aws
            .subnet_group_tags(&names.instance)
            .await?
            .filter(|tags| self.ours(tags))
            .map(|tags| ObservedSubnetGroup { subnet_ids: Default::default(), tags: Some(tags) });
        Ok(View {
            instance: self.aws.instance(&names.instance).await?.filter(|i| self.ours(&i.tags)),
            group,
            subnet_group,
            secret: self.aws.secret(&names.secret).await?.filter(|s| self.ours(&s.tags)),
            ..View::default()
        })
    }

    pub(super) async fn run(self) -> Result<Cleanup> {
        let view = self.observe().await?;
        let names = &self.names;
        let snapshot =
            (self.db.spec.deletion_policy == DatabaseDeletionPolicy::Snapshot).then_some(names.final_snapshot.as_str());
        let removals = plan::teardown(&view, snapshot);
        let Some(removal) = removals.next() else {
            if let Some(wait) = removals.wait {
                return pending("DeletingInstance", wait.message, poll(self.ctx));
            }
            if let Err(error) = self.forget_connection_secret().await {
                warn!(%error, "could not delete the connection Secret; the garbage collector will");
            }
            return Ok(Cleanup::Done);
        };
        match removal {
            Removal::LiftDeletionProtection => {
                self.aws.allow_deletion(&names.instance).await?;
                let note = format!("lifted deletion protection of {} to delete it", names.instance);
                self.event("DeletionProtectionLifted", note).await;
                pending("DeletingInstance", format!("lifted deletion protection of {}", names.instance), Duration::ZERO)
            }
            Removal::DeleteInstance { final_snapshot } => {
                if self.aws.delete_instance(&names.instance, final_snapshot.as_deref()).await? {
                    let note = match final_snapshot {
                        Some(s) => format!("deleting DB instance {} after a final snapshot named {s}", names.instance),
                        None => format!("deleting DB instance {} without a final snapshot", names.instance),
                    };
                    self.event("DeletingDbInstance", note).await;
                }
                let message = format!("RDS is deleting the DB instance {}", names.instance);
                pending("DeletingInstance", message, poll(self.ctx))
            }
            Removal::DeleteSecurityGroup { id } => match self.aws.groups().delete(id).await? {
                Deleted::Done => {
                    self.aws.record(Recorded::Deleted(Kind::SecurityGroups, id.clone())).await;
                    self.event("DeletedSecurityGroup", format!("deleted security group {id}")).await;
                    pending("DeletingSecurityGroup", format!("deleted security group {id}"), Duration::ZERO)
                }
                Deleted::StillInUse => {
                    let message =
                        format!("security group {id} is still in use (network interfaces of the deleted instance)");
                    pending("DeletingSecurityGroup", message, poll(self.ctx))
                }
            },
            Removal::DeleteSubnetGroup => match self.aws.delete_subnet_group(&names.instance).await? {
                Deleted::Done => {
                    let note = format!("deleted DB subnet group {}", names.instance);
                    self.event("DeletedDbSubnetGroup", note.clone()).await;
                    pending("DeletingSubnetGroup", note, Duration::ZERO)
                }
                Deleted::StillInUse => {
                    let message = format!("DB subnet group {} is still in use", names.instance);
                    pending("DeletingSubnetGroup", message, poll(self.ctx))
                }
            },
            Removal::DeleteSecret { arn } => {
                self.aws.delete_secret(arn).await?;
                let note = format!("deleted the Secrets Manager secret {}", names.secret);
                self.event("DeletedSecret", note).await;
                pending("DeletingSecret", format!("deleted the secret {}", names.secret), Duration::ZERO)
            }
        }
    }

    /// The owner reference would have the garbage collector delete it too, but only after the
    /// Database is gone; deleting it now keeps the password from outliving the database. Only a
    /// Secret that is this Database's is deleted, under the name the status or the spec gives.
    async fn forget_connection_secret(&self) -> Result<()> {
        let owned = OwnedSecrets::new(self.ctx.client.clone(), self.db);
        let recorded = self.db.status.as_ref().and_then(|s| s.connection_secret_name.clone());
        for name in recorded.into_iter().chain([self.names.connection_secret.clone()]) {
            owned.delete_if_ours(&name).await?;
        }
        Ok(())
    }
}
