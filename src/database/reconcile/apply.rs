//! One planned change made: one AWS call (with the reads it needs around it), its effect recorded
//! in the shared inventory, its Event sent. The pass then plans again from the updated view.

use std::collections::BTreeSet;

use kube::runtime::events::EventType;

use super::{Converge, revoke_ingress};
use crate::api::DatabaseStatus;
use crate::aws::inventory::{self, Created, Recorded, SecretInfo};
use crate::database::aws::{CreateInstance, PASSWORD_FROM_SNAPSHOT, PASSWORD_TAG, RestoreInstance};
use crate::database::credentials::SecretDocument;
use crate::database::plan::{self, Change, InstanceChanges, ObservedInstance, View};
use crate::error::{Error, Result};
use crate::runtime::reconciler::Step;

impl Converge<'_> {
    /// Makes `change`; what it needs of the view is there, since the plan was made from it (else
    /// the pass looks again).
    pub(super) async fn apply(mut self, change: &Change, view: &View) -> Result<Step<DatabaseStatus>> {
        let name = self.names.instance.clone();
        let group_id = view.group.as_ref().map(|g| g.id.clone());
        let (secret, instance) = (view.secret.as_ref(), view.instance.as_ref());
        match (change, group_id, secret, instance) {
            (Change::CreateSecurityGroup, ..) => self.create_group().await,
            (Change::RevokeIngress { rules }, Some(group_id), ..) => {
                revoke_ingress(self.db, self.ctx, self.aws, &group_id, rules, "").await?;
                self.next("UpdatingIngress", format!("revoked ingress on {group_id}"))
            }
            (Change::AuthorizeIngress { rules }, Some(group_id), ..) => {
                self.aws.groups().authorize_ingress(&group_id, rules).await?;
                for rule in rules {
                    let rule = rule.clone();
                    let recorded = Recorded::Rule { group_id: group_id.clone(), egress: false, rule, added: true };
                    self.aws.record(recorded).await;
                }
                let what: Vec<String> = rules.iter().map(plan::describe_rule).collect();
                let note = format!("allowed on {group_id}: {}", what.join(", "));
                self.event(EventType::Normal, "AuthorizedSecurityGroupRule", note).await;
                self.next("UpdatingIngress", format!("allowed ingress on {group_id}"))
            }
            (Change::CreateSubnetGroup, ..) => self.create_subnet_group().await,
            (Change::SetSubnets { from }, ..) => self.set_subnets(from).await,
            (Change::CreateSecret { rotation }, ..) => self.create_secret(rotation.as_deref()).await,
            (Change::RestoreSecret, _, Some(secret), _) => {
                self.aws.restore_secret(&secret.arn).await?;
                let note = format!("the secret {} was scheduled for deletion; restored it", self.names.secret);
                self.event(EventType::Warning, "DriftRepaired", note).await;
                self.next("RestoringSecret", format!("restored the secret {}", self.names.secret))
            }
            (Change::SetSecretKey { .. }, _, Some(secret), _) => {
                self.aws.set_secret_key(&secret.arn, &self.placement.kms_key_arn).await?;
                let note = format!("the secret {} is encrypted with the Stack's key again", self.names.secret);
                self.event(EventType::Warning, "DriftRepaired", note).await;
                self.next("UpdatingSecret", format!("set the KMS key of {}", self.names.secret))
            }
            (Change::CreateInstance, _, Some(secret), _) => self.create_instance(secret).await,
            (Change::RestoreInstance { snapshot }, _, Some(_), _) => self.restore_instance(snapshot).await,
            (Change::SetRestoredPassword, _, Some(secret), Some(instance)) => {
                self.set_master_password(secret, instance).await
            }
            (Change::ModifyInstance(changes), ..) => self.modify_instance(changes).await,
            (Change::RotatePassword { token }, _, Some(secret), _) => self.rotate(secret, token).await,
            (Change::FollowSecretPassword, _, Some(secret), Some(_)) => self.follow_password(secret).await,
            (Change::WriteEndpoint { endpoint: Some((host, port)) }, _, Some(secret), _) => {
                self.write_endpoint(secret, host, *port).await?;
                self.next("UpdatingSecret", format!("wrote the endpoint into the secret {}", self.names.secret))
            }
            // What the change needs is gone since the view was read (or comes later).
            _ => self.next("Observing", format!("looking again at the AWS side of {name}")),
        }
    }

    /// The dedicated security group (no ingress yet), recorded in the inventory.
    async fn create_group(mut self) -> Result<Step<DatabaseStatus>> {
        let description =
            format!("PostgreSQL of Database {}: 5432 from the stack's app and bastion groups only", self.names.display);
        let vpc = &self.placement.vpc_id;
        let id = self.aws.groups().create(vpc, &self.names.instance, &description, &self.tags).await?;
        let tags = self.tags.iter().cloned().collect();
        let created = inventory::new_security_group(&id, vpc, &self.names.instance, tags);
        self.aws.record(Recorded::Created(Created::SecurityGroup(created))).await;
        self.event(EventType::Normal, "CreatedSecurityGroup", format!("created security group {id}")).await;
        self.status.security_group_id = Some(id.clone());
        self.next("CreatingSecurityGroup", format!("created security group {id}"))
    }

    /// The subnet group over the private (or isolated) subnets.
    async fn create_subnet_group(mut self) -> Result<Step<DatabaseStatus>> {
        let subnets: Vec<String> = self.placement.subnet_ids.iter().cloned().collect();
        let description = format!("Database {}: the stack's private side", self.names.display);
        if !self.aws.create_subnet_group(&self.names.instance, &description, &subnets, &self.tags).await? {
            // One of that name existed: its tags are read on the next look.
            let message = format!("a DB subnet group {} exists already", self.names.instance);
            return self.next("CreatingSubnetGroup", message);
        }
        let note = format!("created DB subnet group {} over {}", self.names.instance, subnets.join(", "));
        self.event(EventType::Normal, "CreatedDbSubnetGroup", note).await;
        self.status.subnet_group_name = Some(self.names.instance.clone());
        self.next("CreatingSubnetGroup", format!("created DB subnet group {}", self.names.instance))
    }

    async fn set_subnets(mut self, from: &BTreeSet<String>) -> Result<Step<DatabaseStatus>> {
        let subnets: Vec<String> = self.placement.subnet_ids.iter().cloned().collect();
        self.aws.modify_subnet_group(&self.names.instance, &subnets).await?;
        let from: Vec<&str> = from.iter().map(String::as_str).collect();
        let note = format!(
            "DB subnet group {} had the subnets {}; set to {}",
            self.names.instance,
            from.join(", "),
            subnets.join(", ")
        );
        self.event(EventType::Warning, "DriftRepaired", note).await;
        self.next("UpdatingSubnetGroup", format!("set the subnets of {}", self.names.instance))
    }

    /// Where a password is made: for a new instance, or, asked for with the rotation annotation
    /// (`rotation`, the version's idempotency token), for an instance whose secret was lost (RDS
    /// then follows the new secret, see password.rs). Once the secret exists, its password is the
    /// one the instance gets, whatever crashes when.
    async fn create_secret(mut self, rotation: Option<&str>) -> Result<Step<DatabaseStatus>> {
        let password = self.aws.random_password().await?;
        let spec = &self.db.spec;
        let document = SecretDocument::new(&spec.master_username, password, &spec.database_name, &self.names.instance);
        let description = format!("Master credentials of Database {} (RDS PostgreSQL)", self.names.display);
        let (name, key) = (&self.names.secret, &self.placement.kms_key_arn);
        self.aws.create_secret(name, &description, key, &document, &self.tags, rotation).await?;
        let note = format!("stored generated master credentials in the Secrets Manager secret {}", self.names.secret);
        self.event(EventType::Normal, "CreatedSecret", note).await;
        self.next("CreatingSecret", format!("created the secret {}", self.names.secret))
    }

    async fn create_instance(mut self, secret: &SecretInfo) -> Result<Step<DatabaseStatus>> {
        self.announce_earlier_snapshots().await?;
        let value = self.aws.secret_value(&secret.arn).await?;
        let document = value.document.map_err(|why| Error::SecretUnusable { name: self.names.secret.clone(), why })?;
        // The secret records which version's password RDS gets before RDS gets it, so that a
        // crash after the create never leaves the instance looking out of step (password.rs).
        self.record_password_version(secret, value.version.as_deref()).await?;
        let spec = &self.db.spec;
        self.aws
            .create_instance(&CreateInstance {
                identifier: &self.names.instance,
                engine_version: &spec.engine_version,
                class: &spec.instance_class,
                storage_gib: spec.allocated_storage_gi_b,
                db_name: &spec.database_name,
                username: &document.username,
                password: &document.password,
                subnet_group: &self.names.instance,
                security_group: self.status.security_group_id.as_deref().unwrap_or_default(),
                kms_key_arn: &self.placement.kms_key_arn,
                multi_az: spec.multi_az,
                backup_days: spec.backup_retention_days,
                tags: &self.tags,
            })
            .await?;
        let note = format!(
            "creating DB instance {} (PostgreSQL {}, {}, {} GiB, encrypted, not public)",
            self.names.instance, spec.engine_version, spec.instance_class, spec.allocated_storage_gi_b
        );
        self.event(EventType::Normal, "CreatingDbInstance", note).await;
        self.busy("InstanceNotAvailable", format!("RDS is creating the DB instance {}", self.names.instance))
    }

    /// Before an empty instance is made under an identifier that had one before (a Database
    /// deleted and created again, e.g. by `kubectl replace --force`), says which snapshots of the
    /// earlier instance exist and how to start from one: the new instance has none of that data.
    async fn announce_earlier_snapshots(&self) -> Result<()> {
        let snapshots = self.aws.manual_snapshots_of(&self.names.instance).await?;
        if let Some(latest) = snapshots.last() {
            let note = format!(
                "DB snapshot(s) of an earlier DB instance {} exist: {}. This Database starts empty, without their data; to start from {latest} instead, create the Database again with spec.restoreFromSnapshot: {latest}",
                self.names.instance,
                snapshots.join(", ")
            );
            self.event(EventType::Warning, "EarlierSnapshotExists", note).await;
        }
        Ok(())
    }

    /// `spec.restoreFromSnapshot` (judged usable by the plan): the instance from the snapshot, in
    /// the Stack's subnet group and the Database's security group, not public.
    async fn restore_instance(mut self, snapshot: &str) -> Result<Step<DatabaseStatus>> {
        let spec = &self.db.spec;
        let mut tags = self.tags.clone();
        tags.push((PASSWORD_TAG.to_string(), PASSWORD_FROM_SNAPSHOT.to_string()));
        self.aws
            .restore_instance(&RestoreInstance {
                identifier: &self.names.instance,
                snapshot,
                class: &spec.instance_class,
                subnet_group: &self.names.instance,
                security_group: self.status.security_group_id.as_deref().unwrap_or_default(),
                multi_az: spec.multi_az,
                tags: &tags,
            })
            .await?;
        let note = format!(
            "restoring DB instance {} from the DB snapshot {snapshot} (encrypted, not public); its master password is then set to the secret's",
            self.names.instance
        );
        self.event(EventType::Normal, "RestoringDbInstance", note).await;
        self.busy(
            "InstanceNotAvailable",
            format!("RDS is restoring the DB instance {} from {snapshot}", self.names.instance),
        )
    }

    /// Gives a restored instance the secret's master password in place of its snapshot's.
    async fn set_master_password(
        mut self,
        secret: &SecretInfo,
        instance: &ObservedInstance,
    ) -> Result<Step<DatabaseStatus>> {
        let value = self.aws.secret_value(&secret.arn).await?;
        let document = value.document.map_err(|why| Error::SecretUnusable { name: self.names.secret.clone(), why })?;
        self.aws.set_restored_master_password(instance, &document.password).await?;
        let note = format!(
            "set the master password of the restored DB instance {} to the one in the secret {} (the snapshot's no longer works)",
            self.names.instance, self.names.secret
        );
        self.event(EventType::Normal, "SetMasterPassword", note).await;
        self.busy("SettingMasterPassword", format!("RDS is setting the master password of {}", self.names.instance))
    }

    /// Security repairs (drift) and in-place changes from the spec, in one ModifyDBInstance.
    async fn modify_instance(mut self, changes: &InstanceChanges) -> Result<Step<DatabaseStatus>> {
        self.aws.modify_instance(&self.names.instance, changes).await?;
        if !changes.drift.is_empty() {
            let note = format!("DB instance {}: {}", self.names.instance, changes.drift.join("; "));
            self.event(EventType::Warning, "DriftRepaired", note).await;
        }
        if !changes.updates.is_empty() {
            let note = format!("DB instance {}: {}", self.names.instance, changes.updates.join("; "));
            self.event(EventType::Normal, "ModifyingDbInstance", note).await;
        }
        let what: Vec<String> = changes.drift.iter().chain(&changes.updates).cloned().collect();
        self.busy("ModifyingInstance", format!("applying to {}: {}", self.names.instance, what.join("; ")))
    }
}
