//! The AWS calls a Database makes: RDS (subnet group, instance, final snapshot), Secrets Manager
//! (password, secret) and EC2 (its security group), all as the Stack's account link. Lookups
//! answer `None` for "not there"; every mutation goes through the shared rate limiter.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_rds::types::Tag as RdsTag;
use aws_sdk_secretsmanager::types::Tag as SecretTag;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use super::credentials::{Password, SecretDocument};
use super::plan::{InstanceChanges, ObservedInstance, PORT};
use crate::aws::errors::{Caller, aws_error};
use crate::aws::limiter::{Limiter, Service};
pub use crate::aws::security_group::Deleted;
use crate::aws::security_group::SecurityGroups;
use crate::error::{Error, Result};

/// Length of generated master passwords: well inside RDS PostgreSQL's 8 to 128.
const PASSWORD_LENGTH: i64 = 32;

/// The clients of one Database's reconcile, acting as its Stack's link in the Stack's region.
pub struct DatabaseAws<'a> {
    rds: aws_sdk_rds::Client,
    secrets: aws_sdk_secretsmanager::Client,
    ec2: aws_sdk_ec2::Client,
    caller: Caller,
    account: String,
    limiter: &'a Limiter,
}

/// The DB subnet group as RDS reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetGroup {
    pub vpc_id: Option<String>,
    pub subnet_ids: Vec<String>,
}

/// The Secrets Manager secret's metadata (no value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretInfo {
    pub arn: String,
    pub kms_key_id: Option<String>,
    /// The version labelled `AWSCURRENT`: what a reader gets.
    pub current_version: Option<String>,
    /// Scheduled for deletion (by a person, or an earlier deletion with a recovery window).
    pub scheduled_for_deletion: bool,
    pub tags: BTreeMap<String, String>,
}

/// What a secret holds: its credentials, or why they cannot be read.
pub struct SecretValue {
    pub document: Result<SecretDocument, String>,
    pub version: Option<String>,
}

impl<'a> DatabaseAws<'a> {
    pub fn new(
        aws: &crate::aws::Aws,
        config: &SdkConfig,
        role_arn: String,
        account: String,
        limiter: &'a Limiter,
    ) -> Self {
        Self {
            rds: aws.client(config),
            secrets: aws.client(config),
            ec2: aws.client(config),
            caller: Caller::LinkRole { role_arn },
            account,
            limiter,
        }
    }

    fn fail<E>(&self, action: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        aws_error(action, &self.caller, e)
    }

    /// Its security group's calls.
    pub fn groups(&self) -> SecurityGroups<'_> {
        SecurityGroups { ec2: &self.ec2, caller: &self.caller, account: &self.account, limiter: self.limiter }
    }

    // ----- RDS: subnet group -----

    pub async fn subnet_group(&self, name: &str) -> Result<Option<SubnetGroup>> {
        let read = || self.rds.describe_db_subnet_groups().db_subnet_group_name(name).send();
        match self.limiter.read(&self.account, Service::Rds, read).await {
            Ok(out) => Ok(out.db_subnet_groups().first().map(|g| SubnetGroup {
                vpc_id: g.vpc_id().map(str::to_string),
                subnet_ids: g.subnets().iter().filter_map(|s| s.subnet_identifier().map(str::to_string)).collect(),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_subnet_group_not_found_fault()) => Ok(None),
            Err(e) => Err(self.fail("rds:DescribeDBSubnetGroups", e)),
        }
    }

    pub async fn create_subnet_group(
        &self,
        name: &str,
        description: &str,
        subnet_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<()> {
        let result = self
            .limiter
            .mutate(&self.account, Service::Rds, || {
                self.rds
                    .create_db_subnet_group()
                    .db_subnet_group_name(name)
                    .db_subnet_group_description(description)
                    .set_subnet_ids(Some(subnet_ids.to_vec()))
                    .set_tags(Some(rds_tags(tags)))
                    .send()
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_subnet_group_already_exists_fault()) => Ok(()),
            Err(e) => Err(self.fail("rds:CreateDBSubnetGroup", e)),
        }
    }

    pub async fn modify_subnet_group(&self, name: &str, subnet_ids: &[String]) -> Result<()> {
        self.limiter
            .mutate(&self.account, Service::Rds, || {
                self.rds
                    .modify_db_subnet_group()
                    .db_subnet_group_name(name)
                    .set_subnet_ids(Some(subnet_ids.to_vec()))
                    .send()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.fail("rds:ModifyDBSubnetGroup", e))
    }

    pub async fn delete_subnet_group(&self, name: &str) -> Result<Deleted> {
        let result = self
            .limiter
            .mutate(&self.account, Service::Rds, || self.rds.delete_db_subnet_group().db_subnet_group_name(name).send())
            .await;
        match result {
            Ok(_) => Ok(Deleted::Done),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_subnet_group_not_found_fault()) => Ok(Deleted::Done),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_invalid_db_subnet_group_state_fault()) => {
                Ok(Deleted::StillInUse)
            }
            Err(e) => Err(self.fail("rds:DeleteDBSubnetGroup", e)),
        }
    }

    // ----- RDS: the instance -----

    pub async fn instance(&self, identifier: &str) -> Result<Option<ObservedInstance>> {
        let read = || self.rds.describe_db_instances().db_instance_identifier(identifier).send();
        match self.limiter.read(&self.account, Service::Rds, read).await {
            Ok(out) => Ok(out.db_instances().first().map(observed_instance)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_instance_not_found_fault()) => Ok(None),
            Err(e) => Err(self.fail("rds:DescribeDBInstances", e)),
        }
    }

    pub async fn create_instance(&self, request: &CreateInstance<'_>) -> Result<()> {
        let r = request;
        let result = self
            .limiter
            .mutate(&self.account, Service::Rds, || {
                self.rds
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
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            // A lookup that lagged behind an earlier create: the next pass sees it.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_instance_already_exists_fault()) => Ok(()),
            Err(e) => Err(self.fail("rds:CreateDBInstance", e)),
        }
    }

    pub async fn modify_instance(&self, identifier: &str, c: &InstanceChanges) -> Result<()> {
        self.limiter
            .mutate(&self.account, Service::Rds, || {
                self.rds
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
            })
            .await
            .map(|_| ())
            .map_err(|e| self.fail("rds:ModifyDBInstance", e))
    }

    /// Lifts deletion protection, which is done only once deletion was asked for.
    pub async fn allow_deletion(&self, identifier: &str) -> Result<()> {
        let changes = InstanceChanges { deletion_protection: Some(false), ..Default::default() };
        self.modify_instance(identifier, &changes).await
    }

    /// Deletes the instance, with a final snapshot named `final_snapshot` if given. `Ok(false)`
    /// when RDS cannot start the deletion yet (the instance is busy) or already has.
    pub async fn delete_instance(&self, identifier: &str, final_snapshot: Option<&str>) -> Result<bool> {
        let result = self
            .limiter
            .mutate(&self.account, Service::Rds, || {
                self.rds
                    .delete_db_instance()
                    .db_instance_identifier(identifier)
                    .skip_final_snapshot(final_snapshot.is_none())
                    .set_final_db_snapshot_identifier(final_snapshot.map(str::to_string))
                    .delete_automated_backups(true)
                    .send()
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_db_instance_not_found_fault()) => Ok(false),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_invalid_db_instance_state_fault()) => Ok(false),
            Err(e) => Err(self.fail("rds:DeleteDBInstance", e)),
        }
    }

    // ----- Secrets Manager -----

    pub async fn secret(&self, name: &str) -> Result<Option<SecretInfo>> {
        let read = || self.secrets.describe_secret().secret_id(name).send();
        match self.limiter.read(&self.account, Service::SecretsManager, read).await {
            Ok(out) => {
                let Some(arn) = out.arn() else { return Ok(None) };
                let current_version = out
                    .version_ids_to_stages()
                    .and_then(|m| m.iter().find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT")))
                    .map(|(version, _)| version.clone());
                Ok(Some(SecretInfo {
                    arn: arn.to_string(),
                    kms_key_id: out.kms_key_id().map(str::to_string),
                    current_version,
                    scheduled_for_deletion: out.deleted_date().is_some(),
                    tags: out
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                        .collect(),
                }))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(None),
            Err(e) => Err(self.fail("secretsmanager:DescribeSecret", e)),
        }
    }

    pub async fn secret_value(&self, arn: &str) -> Result<SecretValue> {
        let out = self
            .limiter
            .read(&self.account, Service::SecretsManager, || self.secrets.get_secret_value().secret_id(arn).send())
            .await
            .map_err(|e| self.fail("secretsmanager:GetSecretValue", e))?;
        let document = match out.secret_string() {
            Some(value) => SecretDocument::parse(value),
            None => Err("it holds no string value".to_string()),
        };
        Ok(SecretValue { document, version: out.version_id().map(str::to_string) })
    }

    /// A new master password from Secrets Manager: letters and digits only, so that it survives
    /// URLs, shells and RDS's rules (which forbid `/`, `"`, `@` and spaces) without quoting.
    pub async fn random_password(&self) -> Result<Password> {
        let out = self
            .secrets
            .get_random_password()
            .password_length(PASSWORD_LENGTH)
            .exclude_punctuation(true)
            .include_space(false)
            .require_each_included_type(true)
            .send()
            .await
            .map_err(|e| self.fail("secretsmanager:GetRandomPassword", e))?;
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
    ) -> Result<()> {
        let value = document.to_json();
        let result = self
            .limiter
            .mutate(&self.account, Service::SecretsManager, || {
                self.secrets
                    .create_secret()
                    .name(name)
                    .description(description)
                    .kms_key_id(kms_key_arn)
                    .secret_string(value)
                    .set_tags(Some(tags.iter().map(|(k, v)| SecretTag::builder().key(k).value(v).build()).collect()))
                    .send()
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            // Never overwrite: an existing secret may hold the password of an existing instance.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_exists_exception()) => Ok(()),
            Err(e) => Err(self.fail("secretsmanager:CreateSecret", e)),
        }
    }

    /// Writes a new version of the secret's value; returns its version ID.
    pub async fn put_secret_value(&self, arn: &str, document: &SecretDocument) -> Result<Option<String>> {
        let value = document.to_json();
        let out = self
            .limiter
            .mutate(&self.account, Service::SecretsManager, || {
                self.secrets.put_secret_value().secret_id(arn).secret_string(value).send()
            })
            .await
            .map_err(|e| self.fail("secretsmanager:PutSecretValue", e))?;
        Ok(out.version_id().map(str::to_string))
    }

    pub async fn set_secret_key(&self, arn: &str, kms_key_arn: &str) -> Result<()> {
        self.limiter
            .mutate(&self.account, Service::SecretsManager, || {
                self.secrets.update_secret().secret_id(arn).kms_key_id(kms_key_arn).send()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.fail("secretsmanager:UpdateSecret", e))
    }

    /// Cancels a scheduled deletion: the secret may hold the only copy of a live instance's password.
    pub async fn restore_secret(&self, arn: &str) -> Result<()> {
        self.limiter
            .mutate(&self.account, Service::SecretsManager, || self.secrets.restore_secret().secret_id(arn).send())
            .await
            .map(|_| ())
            .map_err(|e| self.fail("secretsmanager:RestoreSecret", e))
    }

    /// Deletes the secret at once: the instance it described is gone, and a recovery window would
    /// block a Database re-created under the same name from creating its secret.
    pub async fn delete_secret(&self, arn: &str) -> Result<()> {
        let result = self
            .limiter
            .mutate(&self.account, Service::SecretsManager, || {
                self.secrets.delete_secret().secret_id(arn).force_delete_without_recovery(true).send()
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(()),
            Err(e) => Err(self.fail("secretsmanager:DeleteSecret", e)),
        }
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

fn rds_tags(tags: &[(String, String)]) -> Vec<RdsTag> {
    tags.iter().map(|(k, v)| RdsTag::builder().key(k).value(v).build()).collect()
}

fn observed_instance(i: &aws_sdk_rds::types::DbInstance) -> ObservedInstance {
    let pending = i.pending_modified_values();
    ObservedInstance {
        identifier: i.db_instance_identifier().unwrap_or_default().to_string(),
        arn: i.db_instance_arn().map(str::to_string),
        status: i.db_instance_status().unwrap_or_default().to_string(),
        endpoint: i.endpoint().and_then(|e| Some((e.address()?.to_string(), e.port().unwrap_or(PORT)))),
        publicly_accessible: i.publicly_accessible().unwrap_or(false),
        storage_encrypted: i.storage_encrypted().unwrap_or(false),
        kms_key_id: i.kms_key_id().map(str::to_string),
        security_groups: i
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
            .collect(),
        subnet_group: i.db_subnet_group().and_then(|g| g.db_subnet_group_name()).map(str::to_string),
        deletion_protection: i.deletion_protection().unwrap_or(false),
        class: i.db_instance_class().unwrap_or_default().to_string(),
        storage_gib: i.allocated_storage().unwrap_or_default(),
        multi_az: i.multi_az().unwrap_or(false),
        backup_days: i.backup_retention_period().unwrap_or_default(),
        engine_version: i.engine_version().unwrap_or_default().to_string(),
        pending_class: pending.and_then(|p| p.db_instance_class()).map(str::to_string),
        pending_storage_gib: pending.and_then(|p| p.allocated_storage()),
        pending_multi_az: pending.and_then(|p| p.multi_az()),
        pending_backup_days: pending.and_then(|p| p.backup_retention_period()),
        pending_engine_version: pending.and_then(|p| p.engine_version()).map(str::to_string),
        tags: i
            .tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
            .collect(),
    }
}
