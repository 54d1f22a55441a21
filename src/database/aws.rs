//! The AWS calls a Database makes: RDS (subnet group, instance, final snapshot), Secrets Manager
//! (password, secret) and EC2 (its security group), all as the Stack's account link. Lookups
//! answer `None` for "not there"; every call goes through `Calls`.

use aws_config::SdkConfig;
use aws_sdk_rds::types::Tag as RdsTag;
use aws_sdk_secretsmanager::types::Tag as SecretTag;

use super::credentials::{Password, SecretDocument};
use super::plan::{InstanceChanges, ObservedInstance, PORT};
use crate::aws::account::Account;
use crate::aws::call::Calls;
use crate::aws::inventory::observed_instance;
use crate::aws::inventory::{self, Created, Kind, Recorded, Scope, Snapshot};
pub use crate::aws::inventory::{DbSubnetGroup, SecretInfo};
use crate::aws::limiter::Service;
pub use crate::aws::security_group::Deleted;
use crate::aws::security_group::SecurityGroups;
use crate::aws::tags::Tags;
use crate::error::{Error, Result};
use crate::runtime::context::Context;

/// Length of generated master passwords: well inside RDS PostgreSQL's 8 to 128.
const PASSWORD_LENGTH: i64 = 32;

/// The clients of one Database's reconcile, acting as its Stack's link in the Stack's region.
pub struct DatabaseAws<'a> {
    net: Account,
    ctx: &'a Context,
}

/// What a secret holds: its credentials, or why they cannot be read.
pub struct SecretValue {
    pub document: Result<SecretDocument, String>,
    pub version: Option<String>,
}

impl<'a> DatabaseAws<'a> {
    pub fn new(ctx: &'a Context, config: &SdkConfig, role_arn: String, scope: Scope) -> Self {
        Self { net: Account::with_config(ctx, config, role_arn, scope), ctx }
    }

    /// The account's resources, from the shared inventory (the Stack's view).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        self.net.snapshot(self.ctx).await
    }

    /// Tells the shared inventory what a mutation (or a read of one resource) found.
    pub async fn record(&self, recorded: Recorded) {
        self.ctx.inventory.record(&self.net.scope, recorded).await;
    }

    /// Every call of the reconcile, as the link's role, through the shared limiter.
    fn calls(&self) -> Calls<'_> {
        self.net.calls(self.ctx)
    }

    /// Its security group's calls.
    pub fn groups(&self) -> SecurityGroups<'_> {
        SecurityGroups { ec2: &self.net.ec2, calls: self.calls() }
    }

    /// Records what a read of one resource found: the resource as it is now, or that it is gone.
    async fn record_read(&self, kind: Kind, id: &str, found: Option<Created>) {
        self.record(match found {
            Some(now) => Recorded::Observed(now),
            None => Recorded::Deleted(kind, id.to_string()),
        })
        .await;
    }

    // ----- RDS: subnet group -----

    /// Reads the subnet group named `name` now (not from the inventory), and records what it found.
    pub async fn subnet_group(&self, name: &str) -> Result<Option<DbSubnetGroup>> {
        let read = || self.net.rds.describe_db_subnet_groups().db_subnet_group_name(name).send();
        let found = self.calls().find(Service::Rds, "rds:DescribeDBSubnetGroups", NO_SUBNET_GROUP, read).await?;
        let found = found.and_then(|out| out.db_subnet_groups().first().and_then(inventory::db_subnet_group_of));
        self.record_read(Kind::DbSubnetGroups, name, found.clone().map(Created::DbSubnetGroup)).await;
        Ok(found)
    }

    /// The tags of the subnet group named `name` (`None` if there is none). RDS lists subnet
    /// groups without their tags, so this reads them: only before the Database first uses one it
    /// did not see itself create, and before deleting one.
    pub async fn subnet_group_tags(&self, name: &str) -> Result<Option<Tags>> {
        let read = || self.net.rds.describe_db_subnet_groups().db_subnet_group_name(name).send();
        let found = self.calls().find(Service::Rds, "rds:DescribeDBSubnetGroups", NO_SUBNET_GROUP, read).await?;
        let arn = found.and_then(|out| out.db_subnet_groups().first()?.db_subnet_group_arn().map(str::to_string));
        let Some(arn) = arn else { return Ok(None) };
        let read = || self.net.rds.list_tags_for_resource().resource_name(&arn).send();
        let out = self.calls().read(Service::Rds, "rds:ListTagsForResource", read).await?;
        Ok(Some(
            out.tag_list()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                .collect(),
        ))
    }

    /// Creates the subnet group; `false` when one of that name existed already (it is read into
    /// the inventory, and its owner must be checked before it is used).
    pub async fn create_subnet_group(
        &self,
        name: &str,
        description: &str,
        subnet_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<bool> {
        let create = || {
            self.net
                .rds
                .create_db_subnet_group()
                .db_subnet_group_name(name)
                .db_subnet_group_description(description)
                .set_subnet_ids(Some(subnet_ids.to_vec()))
                .set_tags(Some(rds_tags(tags)))
                .send()
        };
        let exists = &["DBSubnetGroupAlreadyExists"];
        match self.calls().mutate(Service::Rds, "rds:CreateDBSubnetGroup", exists, create).await? {
            Some(out) => {
                if let Some(group) = out.db_subnet_group().and_then(inventory::db_subnet_group_of) {
                    self.record(Recorded::Created(Created::DbSubnetGroup(group))).await;
                }
                Ok(true)
            }
            None => self.subnet_group(name).await.map(|_| false),
        }
    }

    pub async fn modify_subnet_group(&self, name: &str, subnet_ids: &[String]) -> Result<()> {
        let modify = || {
            self.net
                .rds
                .modify_db_subnet_group()
                .db_subnet_group_name(name)
                .set_subnet_ids(Some(subnet_ids.to_vec()))
                .send()
        };
        let out = self.calls().mutate(Service::Rds, "rds:ModifyDBSubnetGroup", &[], modify).await?;
        if let Some(group) = out.as_ref().and_then(|o| o.db_subnet_group()).and_then(inventory::db_subnet_group_of) {
            self.record(Recorded::Observed(Created::DbSubnetGroup(group))).await;
        }
        Ok(())
    }

    pub async fn delete_subnet_group(&self, name: &str) -> Result<Deleted> {
        let delete = || self.net.rds.delete_db_subnet_group().db_subnet_group_name(name).send();
        // Still used by an instance (one being deleted, too): `InvalidDBSubnetGroupStateFault`.
        let codes = &[NO_SUBNET_GROUP[0], "InvalidDBSubnetGroupStateFault"];
        match self.calls().mutate_or(Service::Rds, "rds:DeleteDBSubnetGroup", codes, delete).await? {
            Err(code) if code == "InvalidDBSubnetGroupStateFault" => Ok(Deleted::StillInUse),
            Ok(_) | Err(_) => {
                self.record(Recorded::Deleted(Kind::DbSubnetGroups, name.to_string())).await;
                Ok(Deleted::Done)
            }
        }
    }

    // ----- RDS: the instance -----

    /// Reads the instance now (not from the inventory), and records what it found.
    pub async fn instance(&self, identifier: &str) -> Result<Option<ObservedInstance>> {
        let read = || self.net.rds.describe_db_instances().db_instance_identifier(identifier).send();
        let found = self.calls().find(Service::Rds, "rds:DescribeDBInstances", NO_INSTANCE, read).await?;
        let found = found.and_then(|out| out.db_instances().first().map(observed_instance));
        self.record_read(Kind::DbInstances, identifier, found.clone().map(Created::DbInstance)).await;
        Ok(found)
    }

    pub async fn create_instance(&self, request: &CreateInstance<'_>) -> Result<()> {
        let r = request;
        let create = || {
            self.net
                .rds
                .create_db_instance()
                .db_instance_identifier(r.identifier)
                .engine(super::plan::ENGINE)
                .engine_version(r.engine_version)
                .db_instance_class(r.class)
                .allocated_storage(r.storage_gib)
                .storage_type("gp3")
                .db_name(r.db_name)
                .master_username(r.username)
                .master_user_password(r.password.expose())
                .port(PORT)
                .db_subnet_group_name(r.subnet_group)
                .vpc_security_group_ids(r.security_group)
                .publicly_accessible(false)
                .storage_encrypted(true)
                .kms_key_id(r.kms_key_arn)
                .deletion_protection(true)
                .multi_az(r.multi_az)
                .backup_retention_period(r.backup_days)
                .copy_tags_to_snapshot(true)
                .auto_minor_version_upgrade(true)
                .set_tags(Some(rds_tags(r.tags)))
                .send()
        };
        // A lookup that lagged behind an earlier create.
        let created = self.calls().mutate(Service::Rds, "rds:CreateDBInstance", INSTANCE_EXISTS, create).await;
        match created.map_err(naming_fields)? {
            Some(out) => {
                if let Some(instance) = out.db_instance().map(observed_instance) {
                    self.record(Recorded::Created(Created::DbInstance(instance))).await;
                }
                Ok(())
            }
            None => self.instance(r.identifier).await.map(|_| ()),
        }
    }

    pub async fn modify_instance(&self, identifier: &str, c: &InstanceChanges) -> Result<()> {
        let modify = || {
            self.net
                .rds
                .modify_db_instance()
                .db_instance_identifier(identifier)
                .apply_immediately(true)
                .set_publicly_accessible(c.publicly_accessible)
                .set_vpc_security_group_ids(c.security_groups.clone())
                .set_deletion_protection(c.deletion_protection)
                .set_db_instance_class(c.class.clone())
                .set_allocated_storage(c.storage_gib)
                .set_multi_az(c.multi_az)
                .set_backup_retention_period(c.backup_days)
                .set_engine_version(c.engine_version.clone())
                .set_allow_major_version_upgrade(c.allow_major_upgrade.then_some(true))
                .send()
        };
        let out =
            self.calls().mutate(Service::Rds, "rds:ModifyDBInstance", &[], modify).await.map_err(naming_fields)?;
        if let Some(instance) = out.as_ref().and_then(|o| o.db_instance()).map(observed_instance) {
            self.record(Recorded::Observed(Created::DbInstance(instance))).await;
        }
        Ok(())
    }

    /// Gives the instance the master password `password`, at once (RDS applies it within
    /// seconds, as `resetting-master-credentials`; open sessions stay).
    pub async fn set_master_password(&self, identifier: &str, password: &Password) -> Result<()> {
        let modify = || {
            self.net
                .rds
                .modify_db_instance()
                .db_instance_identifier(identifier)
                .master_user_password(password.expose())
                .apply_immediately(true)
                .send()
        };
        let out = self.calls().mutate(Service::Rds, "rds:ModifyDBInstance", &[], modify).await?;
        if let Some(instance) = out.as_ref().and_then(|o| o.db_instance()).map(observed_instance) {
            self.record(Recorded::Observed(Created::DbInstance(instance))).await;
        }
        Ok(())
    }

    /// Lifts deletion protection, which is done only once deletion was asked for.
    pub async fn allow_deletion(&self, identifier: &str) -> Result<()> {
        let changes = InstanceChanges { deletion_protection: Some(false), ..Default::default() };
        self.modify_instance(identifier, &changes).await
    }

    /// Deletes the instance, with a final snapshot named `final_snapshot` if given. `Ok(false)`
    /// when RDS cannot start the deletion yet (the instance is busy) or already has.
    pub async fn delete_instance(&self, identifier: &str, final_snapshot: Option<&str>) -> Result<bool> {
        let delete = || {
            self.net
                .rds
                .delete_db_instance()
                .db_instance_identifier(identifier)
                .skip_final_snapshot(final_snapshot.is_none())
                .set_final_db_snapshot_identifier(final_snapshot.map(str::to_string))
                .delete_automated_backups(true)
                .send()
        };
        let not_now = &[NO_INSTANCE[0], "InvalidDBInstanceState"];
        Ok(self.calls().mutate(Service::Rds, "rds:DeleteDBInstance", not_now, delete).await?.is_some())
    }

    // ----- RDS: snapshots (read only when an instance is about to be made) -----

    /// The manual DB snapshots of the instance `identifier` (a `Snapshot` policy's final
    /// snapshots among them), oldest first.
    pub async fn manual_snapshots_of(&self, identifier: &str) -> Result<Vec<String>> {
        let read =
            || self.net.rds.describe_db_snapshots().db_instance_identifier(identifier).snapshot_type("manual").send();
        let Some(out) = self.calls().find(Service::Rds, "rds:DescribeDBSnapshots", NO_SNAPSHOT, read).await? else {
            return Ok(Vec::new());
        };
        let mut found: Vec<_> = out
            .db_snapshots()
            .iter()
            .filter_map(|s| Some((s.snapshot_create_time().map(|t| t.secs()), s.db_snapshot_identifier()?.to_string())))
            .collect();
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    /// The DB snapshot `id`, if it exists.
    pub async fn db_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>> {
        let read = || self.net.rds.describe_db_snapshots().db_snapshot_identifier(id).send();
        let Some(out) = self.calls().find(Service::Rds, "rds:DescribeDBSnapshots", NO_SNAPSHOT, read).await? else {
            return Ok(None);
        };
        Ok(out.db_snapshots().first().map(|s| SnapshotInfo {
            available: s.status() == Some("available"),
            status: s.status().unwrap_or_default().to_string(),
            engine: s.engine().unwrap_or_default().to_string(),
            encrypted: s.encrypted().unwrap_or(false),
            kms_key_id: s.kms_key_id().map(str::to_string),
        }))
    }

    /// RestoreDBInstanceFromDBSnapshot: a new instance from the snapshot, placed and locked down
    /// as a created one is. It keeps the snapshot's master password until `set_master_password`.
    pub async fn restore_instance(&self, r: &RestoreInstance<'_>) -> Result<()> {
        let restore = || {
            self.net
                .rds
                .restore_db_instance_from_db_snapshot()
                .db_instance_identifier(r.identifier)
                .db_snapshot_identifier(r.snapshot)
                .db_instance_class(r.class)
                .storage_type("gp3")
                .port(PORT)
                .db_subnet_group_name(r.subnet_group)
                .vpc_security_group_ids(r.security_group)
                .publicly_accessible(false)
                .deletion_protection(true)
                .multi_az(r.multi_az)
                .copy_tags_to_snapshot(true)
                .auto_minor_version_upgrade(true)
                .set_tags(Some(rds_tags(r.tags)))
                .send()
        };
        let codes = &[INSTANCE_EXISTS[0], NO_SNAPSHOT[0]];
        match self.calls().mutate_or(Service::Rds, "rds:RestoreDBInstanceFromDBSnapshot", codes, restore).await? {
            Ok(out) => {
                if let Some(instance) = out.db_instance().map(observed_instance) {
                    self.record(Recorded::Created(Created::DbInstance(instance))).await;
                }
                Ok(())
            }
            Err(code) if code == NO_SNAPSHOT[0] => {
                Err(Error::RestoreSnapshotUnusable { snapshot: r.snapshot.into(), why: "does not exist".into() })
            }
            Err(_) => self.instance(r.identifier).await.map(|_| ()),
        }
    }

    /// Sets the master password (a restored instance still has its snapshot's), then marks the
    /// instance as holding the secret's password. Repeating it after a crash sets the same password.
    pub async fn set_restored_master_password(&self, instance: &ObservedInstance, password: &Password) -> Result<()> {
        let identifier = instance.identifier.as_str();
        self.set_master_password(identifier, password).await?;
        let arn = instance.arn.clone().unwrap_or_default();
        let tags = rds_tags(&[(PASSWORD_TAG.to_string(), PASSWORD_FROM_SECRET.to_string())]);
        let tag = || self.net.rds.add_tags_to_resource().resource_name(&arn).set_tags(Some(tags.clone())).send();
        self.calls().mutate(Service::Rds, "rds:AddTagsToResource", &[], tag).await?;
        // Read back: the status (`resetting-master-credentials`) and the tag.
        self.instance(identifier).await.map(|_| ())
    }

    // ----- Secrets Manager -----

    /// Reads the secret (by name or ARN) now, not from the inventory, and records what it found.
    pub async fn secret(&self, name: &str) -> Result<Option<SecretInfo>> {
        let read = || self.net.secrets.describe_secret().secret_id(name).send();
        let found =
            self.calls().find(Service::SecretsManager, "secretsmanager:DescribeSecret", NO_SECRET, read).await?;
        let found = found.and_then(|out| {
            out.arn().map(|arn| SecretInfo {
                name: out.name().unwrap_or(name).to_string(),
                arn: arn.to_string(),
                kms_key_id: out.kms_key_id().map(str::to_string),
                current_version: inventory::current_version(out.version_ids_to_stages()),
                scheduled_for_deletion: out.deleted_date().is_some(),
                tags: inventory::secret_tags(out.tags()),
            })
        });
        self.record_read(Kind::Secrets, name, found.clone().map(Created::Secret)).await;
        Ok(found)
    }

    pub async fn secret_value(&self, arn: &str) -> Result<SecretValue> {
        let read = || self.net.secrets.get_secret_value().secret_id(arn).send();
        let out = self.calls().read(Service::SecretsManager, "secretsmanager:GetSecretValue", read).await?;
        let document = match out.secret_string() {
            Some(value) => SecretDocument::parse(value),
            None => Err("it holds no string value".to_string()),
        };
        Ok(SecretValue { document, version: out.version_id().map(str::to_string) })
    }

    /// What the version `version` of the secret holds; `None` once Secrets Manager no longer has
    /// that version.
    pub async fn secret_version_value(&self, arn: &str, version: &str) -> Result<Option<SecretValue>> {
        let read = || self.net.secrets.get_secret_value().secret_id(arn).version_id(version).send();
        let found =
            self.calls().find(Service::SecretsManager, "secretsmanager:GetSecretValue", NO_SECRET, read).await?;
        let Some(out) = found else { return Ok(None) };
        let document = match out.secret_string() {
            Some(value) => SecretDocument::parse(value),
            None => Err("it holds no string value".to_string()),
        };
        Ok(Some(SecretValue { document, version: out.version_id().map(str::to_string) }))
    }

    /// A new master password from Secrets Manager: letters and digits only, so that it survives
    /// URLs, shells and RDS's rules (which forbid `/`, `"`, `@` and spaces) without quoting.
    pub async fn random_password(&self) -> Result<Password> {
        let generate = || {
            self.net
                .secrets
                .get_random_password()
                .password_length(PASSWORD_LENGTH)
                .exclude_punctuation(true)
                .include_space(false)
                .require_each_included_type(true)
                .send()
        };
        let out = self.calls().read(Service::SecretsManager, "secretsmanager:GetRandomPassword", generate).await?;
        out.random_password()
            .map(|p| Password::new(p.to_string()))
            .ok_or_else(|| crate::aws::inventory::missing("secretsmanager:GetRandomPassword", "RandomPassword"))
    }

    pub async fn create_secret(
        &self,
        name: &str,
        description: &str,
        kms_key_arn: &str,
        document: &SecretDocument,
        tags: &[(String, String)],
        token: Option<&str>,
    ) -> Result<()> {
        let value = document.to_json();
        let create = || {
            self.net
                .secrets
                .create_secret()
                .name(name)
                .description(description)
                .kms_key_id(kms_key_arn)
                .secret_string(value)
                .set_client_request_token(token.map(str::to_string))
                .set_tags(Some(tags.iter().map(|(k, v)| SecretTag::builder().key(k).value(v).build()).collect()))
                .send()
        };
        // Never overwrite: an existing secret may hold the password of an existing instance.
        match self.calls().mutate(Service::SecretsManager, "secretsmanager:CreateSecret", SECRET_EXISTS, create).await?
        {
            Some(out) => {
                if let Some(arn) = out.arn() {
                    let created = SecretInfo {
                        name: name.to_string(),
                        arn: arn.to_string(),
                        kms_key_id: Some(kms_key_arn.to_string()),
                        current_version: out.version_id().map(str::to_string),
                        scheduled_for_deletion: false,
                        tags: tags.iter().cloned().collect(),
                    };
                    self.record(Recorded::Created(Created::Secret(created))).await;
                }
                Ok(())
            }
            None => self.secret(name).await.map(|_| ()),
        }
    }

    /// Writes a new version of the secret's value; returns its version ID. With `token`, the
    /// version's ID is the token, and a version of that ID that exists already counts as written.
    pub async fn put_secret_value(
        &self,
        arn: &str,
        document: &SecretDocument,
        token: Option<&str>,
    ) -> Result<Option<String>> {
        let value = document.to_json();
        let put = || {
            self.net
                .secrets
                .put_secret_value()
                .secret_id(arn)
                .secret_string(value)
                .set_client_request_token(token.map(str::to_string))
                .send()
        };
        let written = if token.is_some() { SECRET_EXISTS } else { &[] };
        let version =
            match self.calls().mutate(Service::SecretsManager, "secretsmanager:PutSecretValue", written, put).await? {
                Some(out) => out.version_id().map(str::to_string),
                None => token.map(str::to_string),
            };
        // The new version is `AWSCURRENT` now: the inventory learns it from one read.
        self.secret(arn).await?;
        Ok(version)
    }

    /// Sets tags on the secret (the operator's bookkeeping of its password), and reads it again.
    pub async fn tag_secret(&self, arn: &str, tags: &[(&str, &str)]) -> Result<()> {
        let tags: Vec<SecretTag> = tags.iter().map(|(k, v)| SecretTag::builder().key(*k).value(*v).build()).collect();
        let tag = || self.net.secrets.tag_resource().secret_id(arn).set_tags(Some(tags.clone())).send();
        self.calls().mutate(Service::SecretsManager, "secretsmanager:TagResource", &[], tag).await?;
        self.secret(arn).await.map(|_| ())
    }

    pub async fn set_secret_key(&self, arn: &str, kms_key_arn: &str) -> Result<()> {
        let update = || self.net.secrets.update_secret().secret_id(arn).kms_key_id(kms_key_arn).send();
        self.calls().mutate(Service::SecretsManager, "secretsmanager:UpdateSecret", &[], update).await?;
        self.secret(arn).await.map(|_| ())
    }

    /// Cancels a scheduled deletion: the secret may hold the only copy of a live instance's password.
    pub async fn restore_secret(&self, arn: &str) -> Result<()> {
        let restore = || self.net.secrets.restore_secret().secret_id(arn).send();
        self.calls().mutate(Service::SecretsManager, "secretsmanager:RestoreSecret", &[], restore).await?;
        self.secret(arn).await.map(|_| ())
    }

    /// Deletes the secret at once: the instance it described is gone, and a recovery window would
    /// block a Database re-created under the same name from creating its secret.
    pub async fn delete_secret(&self, arn: &str) -> Result<()> {
        let delete = || self.net.secrets.delete_secret().secret_id(arn).force_delete_without_recovery(true).send();
        self.calls().mutate(Service::SecretsManager, "secretsmanager:DeleteSecret", NO_SECRET, delete).await?;
        self.record(Recorded::Deleted(Kind::Secrets, arn.to_string())).await;
        Ok(())
    }
}

/// Everything CreateDBInstance needs.
pub struct CreateInstance<'a> {
    pub identifier: &'a str,
    pub engine_version: &'a str,
    pub class: &'a str,
    pub storage_gib: i32,
    pub db_name: &'a str,
    pub username: &'a str,
    pub password: &'a Password,
    pub subnet_group: &'a str,
    pub security_group: &'a str,
    pub kms_key_arn: &'a str,
    pub multi_az: bool,
    pub backup_days: i32,
    pub tags: &'a [(String, String)],
}

/// Everything RestoreDBInstanceFromDBSnapshot needs.
pub struct RestoreInstance<'a> {
    pub identifier: &'a str,
    pub snapshot: &'a str,
    pub class: &'a str,
    pub subnet_group: &'a str,
    pub security_group: &'a str,
    pub multi_az: bool,
    pub tags: &'a [(String, String)],
}

/// A DB snapshot as a restore needs to judge it.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    /// Restorable now (RDS's status `available`); RDS words its status as a string (the SDK has no
    /// enum for it).
    pub available: bool,
    /// RDS's word for the status (`creating`, `copying`, ...), for messages.
    pub status: String,
    pub engine: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
}

/// The tag on a restored instance saying whose master password it has: `snapshot` from the
/// restore until the password is set to the secret's, then `secret`. Kept on the instance rather
/// than in status, so that a crash between the restore and the status write cannot lose it.
pub const PASSWORD_TAG: &str = "tinystacks.io/master-password";
pub const PASSWORD_FROM_SNAPSHOT: &str = "snapshot";
const PASSWORD_FROM_SECRET: &str = "secret";

/// The error codes that answer a call (RDS's and Secrets Manager's "not there" and "already
/// there"), as the SDK's `is_*_fault` checks match them.
const NO_SUBNET_GROUP: &[&str] = &["DBSubnetGroupNotFoundFault"];
const NO_INSTANCE: &[&str] = &["DBInstanceNotFound"];
const INSTANCE_EXISTS: &[&str] = &["DBInstanceAlreadyExists"];
const NO_SNAPSHOT: &[&str] = &["DBSnapshotNotFound"];
const NO_SECRET: &[&str] = &["ResourceNotFoundException"];
const SECRET_EXISTS: &[&str] = &["ResourceExistsException"];

/// The error of a call that carries the instance's spec fields: when RDS refuses a value, the
/// message names the field to change.
fn naming_fields(error: Error) -> Error {
    match error {
        Error::AwsRejectedValue { action, code, message, .. } => {
            let remedy = super::plan::fields_to_change(&message);
            Error::AwsRejectedValue { action, code, message, remedy }
        }
        other => other,
    }
}

fn rds_tags(tags: &[(String, String)]) -> Vec<RdsTag> {
    tags.iter().map(|(k, v)| RdsTag::builder().key(k).value(v).build()).collect()
}
