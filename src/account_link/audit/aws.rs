//! The audit trail's AWS calls, as the link's role: one read of each setting of the bucket and
//! the trail, and one call per change.

use aws_config::SdkConfig;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration, Delete, ExpirationStatus,
    LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, ObjectIdentifier, ObjectOwnership, OwnershipControls,
    OwnershipControlsRule, PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tagging,
};
use serde_json::Value;

use super::plan::{Bucket, Change, Desired, LIFECYCLE_RULE_ID, Observed, Trail};
use crate::aws::call::{Calls, NOT_FOUND};
use crate::aws::errors::Caller;
use crate::aws::limiter::Service;
use crate::aws::ownership::Tags;
use crate::error::{Error, Result};
use crate::runtime::context::Context;

/// CloudTrail's answer for a trail that does not exist.
const NO_TRAIL: &str = "TrailNotFoundException";

/// The link's S3 and CloudTrail clients in the link's region.
pub struct Clients {
    s3: aws_sdk_s3::Client,
    cloudtrail: aws_sdk_cloudtrail::Client,
    caller: Caller,
    account: String,
}

/// An SDK builder refused a value the operator built: the operator's own fault.
fn built<T, E: std::fmt::Display>(result: std::result::Result<T, E>) -> Result<T> {
    result.map_err(|e| Error::OperatorFault { detail: format!("an S3 or CloudTrail request could not be built: {e}") })
}

impl Clients {
    pub fn new(ctx: &Context, config: &SdkConfig, role_arn: String, account: String) -> Self {
        Self {
            s3: ctx.aws.client(config),
            cloudtrail: ctx.aws.client(config),
            caller: Caller::LinkRole { role_arn },
            account,
        }
    }

    fn calls<'a>(&'a self, ctx: &'a Context) -> Calls<'a> {
        Calls { limiter: &ctx.limiter, account: &self.account, caller: &self.caller }
    }

    /// The bucket and the trail as they are; `objects`: whether to look for log files (a deletion).
    pub async fn observe(&self, ctx: &Context, d: &Desired, objects: bool) -> Result<Observed> {
        Ok(Observed { bucket: self.bucket(ctx, d, objects).await?, trail: self.trail(ctx, d).await? })
    }

    async fn bucket(&self, ctx: &Context, d: &Desired, objects: bool) -> Result<Option<Bucket>> {
        let (calls, s3, name) = (self.calls(ctx), &self.s3, d.bucket.as_str());
        let head = || s3.head_bucket().bucket(name).send();
        if calls.find(Service::S3, "s3:ListBucket", &[NOT_FOUND, "NoSuchBucket"], head).await?.is_none() {
            return Ok(None);
        }
        let tagging = || s3.get_bucket_tagging().bucket(name).send();
        let tags = calls.find(Service::S3, "s3:GetBucketTagging", &["NoSuchTagSet"], tagging).await?;
        let ownership = || s3.get_bucket_ownership_controls().bucket(name).send();
        let ownership =
            calls.find(Service::S3, "s3:GetBucketOwnershipControls", &["OwnershipControlsNotFoundError"], ownership);
        let block = || s3.get_public_access_block().bucket(name).send();
        let block =
            calls.find(Service::S3, "s3:GetBucketPublicAccessBlock", &["NoSuchPublicAccessBlockConfiguration"], block);
        let encryption = || s3.get_bucket_encryption().bucket(name).send();
        let encryption = calls.find(
            Service::S3,
            "s3:GetEncryptionConfiguration",
            &["ServerSideEncryptionConfigurationNotFoundError"],
            encryption,
        );
        let policy = || s3.get_bucket_policy().bucket(name).send();
        let policy = calls.find(Service::S3, "s3:GetBucketPolicy", &["NoSuchBucketPolicy"], policy);
        let lifecycle = || s3.get_bucket_lifecycle_configuration().bucket(name).send();
        let lifecycle =
            calls.find(Service::S3, "s3:GetLifecycleConfiguration", &["NoSuchLifecycleConfiguration"], lifecycle);
        let (ownership, block, encryption, policy, lifecycle) =
            tokio::try_join!(ownership, block, encryption, policy, lifecycle)?;
        let owner_enforced = ownership.as_ref().and_then(|o| o.ownership_controls()).is_some_and(|c| {
            !c.rules().is_empty()
                && c.rules().iter().all(|r| *r.object_ownership() == ObjectOwnership::BucketOwnerEnforced)
        });
        let public_access_blocked =
            block.as_ref().and_then(|b| b.public_access_block_configuration()).is_some_and(|c| {
                [c.block_public_acls(), c.ignore_public_acls(), c.block_public_policy(), c.restrict_public_buckets()]
                    .iter()
                    .all(|v| *v == Some(true))
            });
        let encrypted = encryption.as_ref().and_then(|e| e.server_side_encryption_configuration()).is_some_and(|c| {
            c.rules().iter().any(|r| {
                r.apply_server_side_encryption_by_default()
                    .is_some_and(|by_default| *by_default.sse_algorithm() == ServerSideEncryption::Aes256)
            })
        });
        let policy = policy.as_ref().and_then(|p| p.policy()).and_then(|p| serde_json::from_str::<Value>(p).ok());
        let expiry_days = lifecycle.as_ref().and_then(|l| match l.rules() {
            [rule]
                if rule.id() == Some(LIFECYCLE_RULE_ID)
                    && *rule.status() == ExpirationStatus::Enabled
                    && rule.filter().is_none_or(|f| f.prefix().unwrap_or_default().is_empty() && f.tag().is_none()) =>
            {
                rule.expiration().and_then(|e| e.days())
            }
            _ => None,
        });
        let has_objects = if objects {
            let list = || s3.list_objects_v2().bucket(name).max_keys(1).send();
            calls.read(Service::S3, "s3:ListBucket", list).await?.key_count().unwrap_or_default() > 0
        } else {
            false
        };
        Ok(Some(Bucket {
            tags: tags.map(|t| t.tag_set().iter().map(|t| (t.key(), t.value())).collect()).unwrap_or_default(),
            owner_enforced,
            public_access_blocked,
            encrypted,
            policy,
            expiry_days,
            has_objects,
        }))
    }

    async fn trail(&self, ctx: &Context, d: &Desired) -> Result<Option<Trail>> {
        let (calls, cloudtrail, name) = (self.calls(ctx), &self.cloudtrail, d.trail.as_str());
        let get = || cloudtrail.get_trail().name(name).send();
        let Some(found) = calls.find(Service::CloudTrail, "cloudtrail:GetTrail", &[NO_TRAIL], get).await? else {
            return Ok(None);
        };
        let Some(trail) = found.trail() else { return Ok(None) };
        let status = || cloudtrail.get_trail_status().name(name).send();
        let Some(status) = calls.find(Service::CloudTrail, "cloudtrail:GetTrailStatus", &[NO_TRAIL], status).await?
        else {
            return Ok(None);
        };
        let arn = trail.trail_arn().unwrap_or(&d.trail_arn);
        let tags = || cloudtrail.list_tags().resource_id_list(arn).send();
        let tags = calls.find(Service::CloudTrail, "cloudtrail:ListTags", &[NO_TRAIL], tags).await?;
        let tags: Tags = tags
            .iter()
            .flat_map(|t| t.resource_tag_list())
            .flat_map(|r| r.tags_list())
            .map(|t| (t.key(), t.value().unwrap_or_default()))
            .collect();
        Ok(Some(Trail {
            bucket: trail.s3_bucket_name().unwrap_or_default().to_string(),
            multi_region: trail.is_multi_region_trail().unwrap_or_default(),
            global_events: trail.include_global_service_events().unwrap_or_default(),
            validation: trail.log_file_validation_enabled().unwrap_or_default(),
            logging: status.is_logging().unwrap_or_default(),
            tags,
        }))
    }

    /// Makes one change with one call.
    pub async fn apply(&self, ctx: &Context, d: &Desired, change: &Change) -> Result<()> {
        let (calls, s3, bucket) = (self.calls(ctx), &self.s3, d.bucket.as_str());
        match change {
            Change::CreateBucket => {
                // us-east-1 is S3's default location and is refused as a constraint.
                let location = (d.region != "us-east-1").then(|| {
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(d.region.as_str()))
                        .build()
                });
                let create = || {
                    s3.create_bucket()
                        .bucket(bucket)
                        .set_create_bucket_configuration(location)
                        .object_ownership(ObjectOwnership::BucketOwnerEnforced)
                        .send()
                };
                calls.mutate(Service::S3, "s3:CreateBucket", &["BucketAlreadyOwnedByYou"], create).await?;
            }
            Change::TagBucket(tags) => {
                let tag_set = built(
                    tags.iter().map(|(k, v)| aws_sdk_s3::types::Tag::builder().key(k).value(v).build()).collect(),
                )?;
                let tagging = built(Tagging::builder().set_tag_set(Some(tag_set)).build())?;
                let put = || s3.put_bucket_tagging().bucket(bucket).tagging(tagging).send();
                calls.mutate(Service::S3, "s3:PutBucketTagging", &[], put).await?;
            }
            Change::EnforceBucketOwner => {
                let rule = OwnershipControlsRule::builder().object_ownership(ObjectOwnership::BucketOwnerEnforced);
                let controls = built(OwnershipControls::builder().rules(built(rule.build())?).build())?;
                let put = || s3.put_bucket_ownership_controls().bucket(bucket).ownership_controls(controls).send();
                calls.mutate(Service::S3, "s3:PutBucketOwnershipControls", &[], put).await?;
            }
            Change::BlockPublicAccess => {
                let block = PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build();
                let put =
                    || s3.put_public_access_block().bucket(bucket).public_access_block_configuration(block).send();
                calls.mutate(Service::S3, "s3:PutBucketPublicAccessBlock", &[], put).await?;
            }
            Change::EncryptBucket => {
                let by_default = built(
                    ServerSideEncryptionByDefault::builder().sse_algorithm(ServerSideEncryption::Aes256).build(),
                )?;
                let rule =
                    ServerSideEncryptionRule::builder().apply_server_side_encryption_by_default(by_default).build();
                let config = built(ServerSideEncryptionConfiguration::builder().rules(rule).build())?;
                let put =
                    || s3.put_bucket_encryption().bucket(bucket).server_side_encryption_configuration(config).send();
                calls.mutate(Service::S3, "s3:PutEncryptionConfiguration", &[], put).await?;
            }
            Change::PutBucketPolicy => {
                let policy = d.bucket_policy().to_string();
                let put = || s3.put_bucket_policy().bucket(bucket).policy(policy).send();
                calls.mutate(Service::S3, "s3:PutBucketPolicy", &[], put).await?;
            }
            Change::ExpireLogs => self.expire_logs(ctx, d).await?,
            Change::DeleteBucketPolicy => {
                let delete = || s3.delete_bucket_policy().bucket(bucket).send();
                calls.mutate(Service::S3, "s3:DeleteBucketPolicy", &[], delete).await?;
            }
            Change::EmptyBucket => self.empty_page(ctx, d).await?,
            Change::DeleteBucket => {
                let delete = || s3.delete_bucket().bucket(bucket).send();
                calls.mutate(Service::S3, "s3:DeleteBucket", &[NOT_FOUND, "NoSuchBucket"], delete).await?;
            }
            trail_change => self.apply_to_trail(ctx, d, trail_change).await?,
        }
        Ok(())
    }

    async fn expire_logs(&self, ctx: &Context, d: &Desired) -> Result<()> {
        let rule = LifecycleRule::builder()
            .id(LIFECYCLE_RULE_ID)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("").build())
            .expiration(LifecycleExpiration::builder().days(d.retention_days).build());
        let config = built(BucketLifecycleConfiguration::builder().rules(built(rule.build())?).build())?;
        let s3 = &self.s3;
        let put = || s3.put_bucket_lifecycle_configuration().bucket(&d.bucket).lifecycle_configuration(config).send();
        self.calls(ctx).mutate(Service::S3, "s3:PutLifecycleConfiguration", &[], put).await?;
        Ok(())
    }

    /// Deletes up to a thousand log files (one page).
    async fn empty_page(&self, ctx: &Context, d: &Desired) -> Result<()> {
        let (calls, s3) = (self.calls(ctx), &self.s3);
        let list = || s3.list_objects_v2().bucket(&d.bucket).send();
        let page = calls.read(Service::S3, "s3:ListBucket", list).await?;
        let objects: Vec<ObjectIdentifier> = built(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect(),
        )?;
        if objects.is_empty() {
            return Ok(());
        }
        let delete = built(Delete::builder().set_objects(Some(objects)).quiet(true).build())?;
        let remove = || s3.delete_objects().bucket(&d.bucket).delete(delete).send();
        let out = calls.mutate(Service::S3, "s3:DeleteObject", &[], remove).await?;
        // DeleteObjects answers 200 and lists the objects it could not delete.
        match out.as_ref().and_then(|o| o.errors().first()) {
            Some(refused) => Err(Error::AccessDenied {
                action: "s3:DeleteObject".into(),
                message: format!(
                    "S3 did not delete {} of the log files of {} ({}: {})",
                    out.as_ref().map_or(0, |o| o.errors().len()),
                    d.bucket,
                    refused.code().unwrap_or("no code"),
                    refused.message().unwrap_or("no message")
                ),
            }),
            None => Ok(()),
        }
    }

    async fn apply_to_trail(&self, ctx: &Context, d: &Desired, change: &Change) -> Result<()> {
        let (calls, cloudtrail, name) = (self.calls(ctx), &self.cloudtrail, d.trail.as_str());
        match change {
            Change::CreateTrail => {
                let tags = built(
                    d.tags
                        .iter()
                        .map(|(k, v)| aws_sdk_cloudtrail::types::Tag::builder().key(k).value(v).build())
                        .collect(),
                )?;
                let create = || {
                    cloudtrail
                        .create_trail()
                        .name(name)
                        .s3_bucket_name(&d.bucket)
                        .is_multi_region_trail(true)
                        .include_global_service_events(true)
                        .enable_log_file_validation(true)
                        .set_tags_list(Some(tags))
                        .send()
                };
                calls
                    .mutate(Service::CloudTrail, "cloudtrail:CreateTrail", &["TrailAlreadyExistsException"], create)
                    .await?;
            }
            Change::UpdateTrail => {
                let update = || {
                    cloudtrail
                        .update_trail()
                        .name(name)
                        .s3_bucket_name(&d.bucket)
                        .is_multi_region_trail(true)
                        .include_global_service_events(true)
                        .enable_log_file_validation(true)
                        .send()
                };
                calls.mutate(Service::CloudTrail, "cloudtrail:UpdateTrail", &[], update).await?;
            }
            Change::StartLogging => {
                let start = || cloudtrail.start_logging().name(name).send();
                calls.mutate(Service::CloudTrail, "cloudtrail:StartLogging", &[], start).await?;
            }
            Change::DeleteTrail => {
                let delete = || cloudtrail.delete_trail().name(name).send();
                calls.mutate(Service::CloudTrail, "cloudtrail:DeleteTrail", &[NO_TRAIL], delete).await?;
            }
            other => {
                return Err(Error::OperatorFault { detail: format!("{other:?} is not a change of the trail") });
            }
        }
        Ok(())
    }
}
