//! The audit trail's pure part: its names, the bucket policy CloudTrail needs (and nothing wider),
//! and the plan: spec + what was observed → the ordered changes, each applied by one call.

use serde_json::{Value, json};

use crate::aws::ownership::{self, MANAGED_BY_TAG, MANAGED_BY_VALUE, OWNER_TAG, OWNER_UID_TAG, Tags};
use crate::error::{Error, Result};

/// The prefix of every trail and bucket name; the `Scoped` policy's S3 and CloudTrail grants
/// are limited to names that start with it.
pub const NAME_PREFIX: &str = "tinystacks-trail-";
/// The ID of the bucket's lifecycle rule.
pub const LIFECYCLE_RULE_ID: &str = "tinystacks-trail-retention";
/// S3's longest bucket name.
const MAX_BUCKET_NAME: usize = 63;
/// The service principal that writes the logs.
const CLOUDTRAIL_PRINCIPAL: &str = "cloudtrail.amazonaws.com";

/// What the link wants: the trail's and bucket's names and settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub account: String,
    pub region: String,
    pub bucket: String,
    pub trail: String,
    pub trail_arn: String,
    pub retention_days: i32,
    /// The ownership tags (and `Name`) of the bucket and the trail.
    pub tags: Tags,
    /// The link's UID, which owns both.
    pub uid: String,
}

impl Desired {
    /// Names derived from the link alone: bucket names are global, so the bucket's holds the
    /// account, the region and a hash of the link's UID; the trail's the same hash.
    pub fn new(link_name: &str, uid: &str, account: &str, region: &str, retention_days: i32) -> Self {
        let hash = short_hash(uid);
        let fixed = NAME_PREFIX.len() + account.len() + hash.len() + 2;
        let region_part: String = region.chars().take(MAX_BUCKET_NAME.saturating_sub(fixed)).collect();
        let bucket = format!("{NAME_PREFIX}{account}-{}-{hash}", region_part.trim_end_matches('-'));
        let trail = format!("{NAME_PREFIX}{hash}");
        let trail_arn = format!("arn:aws:cloudtrail:{region}:{account}:trail/{trail}");
        let (owner, readable) =
            (format!("AwsAccountLink//{link_name}"), format!("tinystacks audit trail of {link_name}"));
        let tags = Tags::from([
            (MANAGED_BY_TAG, MANAGED_BY_VALUE),
            (OWNER_TAG, owner.as_str()),
            (OWNER_UID_TAG, uid),
            ("Name", readable.as_str()),
        ]);
        Self {
            account: account.into(),
            region: region.into(),
            bucket,
            trail,
            trail_arn,
            retention_days,
            tags,
            uid: uid.into(),
        }
    }

    /// The bucket policy: CloudTrail may read the bucket's ACL and write this account's log files
    /// for this trail only, handing their ownership to the bucket; nobody may reach the bucket
    /// without TLS.
    pub fn bucket_policy(&self) -> Value {
        let bucket_arn = format!("arn:aws:s3:::{}", self.bucket);
        json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AWSCloudTrailAclCheck",
                    "Effect": "Allow",
                    "Principal": {"Service": CLOUDTRAIL_PRINCIPAL},
                    "Action": "s3:GetBucketAcl",
                    "Resource": bucket_arn,
                    "Condition": {"StringEquals": {"aws:SourceArn": self.trail_arn}},
                },
                {
                    "Sid": "AWSCloudTrailWrite",
                    "Effect": "Allow",
                    "Principal": {"Service": CLOUDTRAIL_PRINCIPAL},
                    "Action": "s3:PutObject",
                    "Resource": format!("{bucket_arn}/AWSLogs/{}/*", self.account),
                    "Condition": {"StringEquals": {
                        "s3:x-amz-acl": "bucket-owner-full-control",
                        "aws:SourceArn": self.trail_arn,
                    }},
                },
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn.clone(), format!("{bucket_arn}/*")],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
            ],
        })
    }
}

/// Eight hex digits of FNV-1a over `text`: stable across versions and platforms.
fn short_hash(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{:08x}", hash & 0xffff_ffff)
}

/// The bucket as observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bucket {
    pub tags: Tags,
    /// Object ownership `BucketOwnerEnforced` (ACLs disabled).
    pub owner_enforced: bool,
    /// All four public access block settings on.
    pub public_access_blocked: bool,
    /// Default encryption SSE-S3.
    pub encrypted: bool,
    /// The bucket policy, parsed.
    pub policy: Option<Value>,
    /// The days of the operator's lifecycle rule, when it is the bucket's only rule, enabled, for
    /// every object.
    pub expiry_days: Option<i32>,
    /// Whether the bucket holds objects (observed only for a deletion).
    pub has_objects: bool,
}

/// The trail as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trail {
    pub bucket: String,
    pub multi_region: bool,
    pub global_events: bool,
    pub validation: bool,
    pub logging: bool,
    pub tags: Tags,
}

impl Trail {
    fn settings_match(&self, desired: &Desired) -> bool {
        self.bucket == desired.bucket && self.multi_region && self.global_events && self.validation
    }
}

/// What exists of the trail and its bucket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub bucket: Option<Bucket>,
    pub trail: Option<Trail>,
}

/// One change, made by one call.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    CreateBucket,
    /// The bucket's tags: the ownership tags merged into what it has.
    TagBucket(Tags),
    EnforceBucketOwner,
    BlockPublicAccess,
    EncryptBucket,
    PutBucketPolicy,
    ExpireLogs,
    CreateTrail,
    UpdateTrail,
    StartLogging,
    DeleteTrail,
    /// Removes the bucket's policy before it is emptied: it names the deleted trail, and its
    /// deny of plain-HTTP requests must not stand between the deletion and the log files.
    DeleteBucketPolicy,
    /// Deletes a page of the bucket's objects (before the bucket can go).
    EmptyBucket,
    DeleteBucket,
}

impl Change {
    /// The Event reason when the change is not a drift repair.
    pub fn reason(&self) -> &'static str {
        match self {
            Change::CreateBucket => "CreatedTrailBucket",
            Change::CreateTrail => "CreatedTrail",
            Change::UpdateTrail => "UpdatedTrail",
            Change::StartLogging => "StartedTrailLogging",
            Change::DeleteTrail => "DeletedTrail",
            Change::DeleteBucketPolicy => "DeletedTrailBucketPolicy",
            Change::EmptyBucket => "EmptiedTrailBucket",
            Change::DeleteBucket => "DeletedTrailBucket",
            _ => "ConfiguredTrailBucket",
        }
    }

    /// What the change does, for Events and logs.
    pub fn describe(&self, d: &Desired) -> String {
        let (bucket, trail) = (&d.bucket, &d.trail);
        match self {
            Change::CreateBucket => format!("created S3 bucket {bucket} for the audit trail"),
            Change::TagBucket(_) => format!("tagged S3 bucket {bucket} with the link's ownership tags"),
            Change::EnforceBucketOwner => format!("set object ownership BucketOwnerEnforced (no ACLs) on {bucket}"),
            Change::BlockPublicAccess => format!("turned on all four public access block settings of {bucket}"),
            Change::EncryptBucket => format!("set default encryption SSE-S3 (AES256) on {bucket}"),
            Change::PutBucketPolicy => {
                format!("put the bucket policy of {bucket} back to exactly what CloudTrail needs, with TLS required")
            }
            Change::ExpireLogs => {
                format!("set the lifecycle of {bucket} to expire logs after {} days", d.retention_days)
            }
            Change::CreateTrail => format!("created multi-region CloudTrail trail {trail} into {bucket}"),
            Change::UpdateTrail => format!(
                "updated trail {trail}: multi-region, global service events and log file validation on, into {bucket}"
            ),
            Change::StartLogging => format!("started logging of trail {trail}"),
            Change::DeleteTrail => format!("deleted CloudTrail trail {trail}"),
            Change::DeleteBucketPolicy => format!("deleted the bucket policy of {bucket} before deleting the bucket"),
            Change::EmptyBucket => format!("deleted a page of log files from S3 bucket {bucket}"),
            Change::DeleteBucket => format!("deleted S3 bucket {bucket}"),
        }
    }
}

/// Whether what was found under the bucket's or the trail's name is this link's. With
/// `untagged_is_ours` (the bucket), one without any operator tag is taken for the link's own: its
/// name holds the account and the hash of the link's UID, and only a crash between `CreateBucket`
/// and its tagging leaves it so (tagging it is the next change). A trail is tagged at creation.
fn check_owner(what: &str, name: &str, tags: &Tags, uid: &str, untagged_is_ours: bool) -> Result<()> {
    if untagged_is_ours && !tags.contains_key(MANAGED_BY_TAG) && !tags.contains_key(OWNER_UID_TAG) {
        return Ok(());
    }
    match ownership::claimed_by_other(tags, uid) {
        None => Ok(()),
        Some(why) => Err(Error::NameTaken { what: what.into(), name: name.into(), why }),
    }
}

/// The changes that make AWS match an enabled trail, in order: the bucket fully configured
/// (CloudTrail checks its policy when the trail is created), then the trail, then logging.
pub fn plan(d: &Desired, o: &Observed) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    match &o.bucket {
        None => changes.extend([
            Change::CreateBucket,
            Change::TagBucket(d.tags.clone()),
            Change::EnforceBucketOwner,
            Change::BlockPublicAccess,
            Change::EncryptBucket,
            Change::PutBucketPolicy,
            Change::ExpireLogs,
        ]),
        Some(b) => {
            check_owner("S3 bucket", &d.bucket, &b.tags, &d.uid, true)?;
            let mut tags = b.tags.clone();
            for (k, v) in d.tags.iter() {
                tags.insert(k, v);
            }
            if tags != b.tags {
                changes.push(Change::TagBucket(tags));
            }
            if !b.owner_enforced {
                changes.push(Change::EnforceBucketOwner);
            }
            if !b.public_access_blocked {
                changes.push(Change::BlockPublicAccess);
            }
            if !b.encrypted {
                changes.push(Change::EncryptBucket);
            }
            if b.policy.as_ref() != Some(&d.bucket_policy()) {
                changes.push(Change::PutBucketPolicy);
            }
            if b.expiry_days != Some(d.retention_days) {
                changes.push(Change::ExpireLogs);
            }
        }
    }
    match &o.trail {
        None => changes.extend([Change::CreateTrail, Change::StartLogging]),
        Some(t) => {
            check_owner("CloudTrail trail", &d.trail, &t.tags, &d.uid, false)?;
            if !t.settings_match(d) {
                changes.push(Change::UpdateTrail);
            }
            if !t.logging {
                changes.push(Change::StartLogging);
            }
        }
    }
    Ok(changes)
}

/// The next change of a teardown: the trail goes (only the link's own); the bucket goes too when
/// `delete_bucket`, emptied first, else it stays with its logs.
pub fn teardown(d: &Desired, o: &Observed, delete_bucket: bool) -> Result<Option<Change>> {
    if let Some(t) = &o.trail {
        check_owner("CloudTrail trail", &d.trail, &t.tags, &d.uid, false)?;
        return Ok(Some(Change::DeleteTrail));
    }
    match &o.bucket {
        Some(b) if delete_bucket => {
            check_owner("S3 bucket", &d.bucket, &b.tags, &d.uid, true)?;
            Ok(Some(match b {
                Bucket { policy: Some(_), .. } => Change::DeleteBucketPolicy,
                Bucket { has_objects: true, .. } => Change::EmptyBucket,
                _ => Change::DeleteBucket,
            }))
        }
        _ => Ok(None),
    }
}

impl Observed {
    /// What a change made does to the view, so that the next plan needs no new look. An emptied
    /// page may not have been the last: the bucket is looked at again before it is deleted.
    pub fn apply(&mut self, change: &Change, d: &Desired) {
        match change {
            Change::CreateBucket => self.bucket = Some(Bucket::default()),
            Change::DeleteBucket => self.bucket = None,
            Change::CreateTrail => {
                self.trail = Some(Trail {
                    bucket: d.bucket.clone(),
                    multi_region: true,
                    global_events: true,
                    validation: true,
                    logging: false,
                    tags: d.tags.clone(),
                })
            }
            Change::DeleteTrail => self.trail = None,
            Change::UpdateTrail => {
                if let Some(t) = &mut self.trail {
                    (t.bucket, t.multi_region, t.global_events, t.validation) = (d.bucket.clone(), true, true, true);
                }
            }
            Change::StartLogging => {
                if let Some(t) = &mut self.trail {
                    t.logging = true;
                }
            }
            Change::EmptyBucket => {}
            bucket_change => {
                if let Some(b) = &mut self.bucket {
                    match bucket_change {
                        Change::TagBucket(tags) => b.tags = tags.clone(),
                        Change::EnforceBucketOwner => b.owner_enforced = true,
                        Change::BlockPublicAccess => b.public_access_blocked = true,
                        Change::EncryptBucket => b.encrypted = true,
                        Change::PutBucketPolicy => b.policy = Some(d.bucket_policy()),
                        Change::ExpireLogs => b.expiry_days = Some(d.retention_days),
                        Change::DeleteBucketPolicy => b.policy = None,
                        _ => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired::new("prod", "uid-1", "123456789012", "eu-west-1", 365)
    }

    #[test]
    fn names_are_deterministic_global_and_fit_s3() {
        let d = desired();
        assert_eq!(d, desired());
        assert!(d.bucket.starts_with("tinystacks-trail-123456789012-eu-west-1-"), "{}", d.bucket);
        assert_ne!(d.bucket, Desired::new("prod", "uid-2", "123456789012", "eu-west-1", 365).bucket);
        assert_eq!(d.trail_arn, format!("arn:aws:cloudtrail:eu-west-1:123456789012:trail/{}", d.trail));
        let long = Desired::new("prod", "uid-1", "123456789012", "ap-southeast-something-very-long-9", 1);
        assert!(long.bucket.len() <= MAX_BUCKET_NAME, "{}", long.bucket);
        for name in [&d.bucket, &long.bucket] {
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name}");
            assert!(!name.contains("--"), "{name}");
        }
    }

    #[test]
    fn the_policy_grants_cloudtrail_only_this_trail_and_denies_plain_http() {
        let d = desired();
        let policy = d.bucket_policy();
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 3);
        for allow in statements.iter().filter(|s| s["Effect"] == "Allow") {
            assert_eq!(allow["Principal"], json!({"Service": CLOUDTRAIL_PRINCIPAL}));
            assert_eq!(allow["Condition"]["StringEquals"]["aws:SourceArn"], d.trail_arn);
        }
        assert_eq!(statements[1]["Resource"], format!("arn:aws:s3:::{}/AWSLogs/123456789012/*", d.bucket));
        assert_eq!(statements[2]["Condition"]["Bool"]["aws:SecureTransport"], "false");
    }

    /// Applying the plan one change at a time converges, and the converged view plans nothing.
    #[test]
    fn an_empty_account_converges_in_order() {
        let d = desired();
        let mut o = Observed::default();
        let changes = plan(&d, &o).unwrap();
        assert_eq!(changes.first(), Some(&Change::CreateBucket));
        assert_eq!(&changes[changes.len() - 2..], &[Change::CreateTrail, Change::StartLogging]);
        let policy_at = changes.iter().position(|c| *c == Change::PutBucketPolicy).unwrap();
        assert!(policy_at < changes.len() - 2, "the policy goes before the trail");
        for c in &changes {
            o.apply(c, &d);
        }
        assert_eq!(plan(&d, &o).unwrap(), vec![]);
    }

    #[test]
    fn drift_is_planned_back_one_setting_at_a_time() {
        let d = desired();
        let mut o = Observed::default();
        for c in plan(&d, &o).unwrap() {
            o.apply(&c, &d);
        }
        let converged = o.clone();
        o.trail.as_mut().unwrap().logging = false;
        o.bucket.as_mut().unwrap().public_access_blocked = false;
        let mut wider = d.bucket_policy();
        wider["Statement"][1]["Principal"] = json!("*");
        o.bucket.as_mut().unwrap().policy = Some(wider);
        o.trail.as_mut().unwrap().multi_region = false;
        assert_eq!(
            plan(&d, &o).unwrap(),
            vec![Change::BlockPublicAccess, Change::PutBucketPolicy, Change::UpdateTrail, Change::StartLogging]
        );
        let mut longer = converged.clone();
        let d30 = Desired { retention_days: 30, ..d.clone() };
        assert_eq!(plan(&d30, &longer).unwrap(), vec![Change::ExpireLogs]);
        longer.apply(&Change::ExpireLogs, &d30);
        assert_eq!(longer.bucket.unwrap().expiry_days, Some(30));
    }

    #[test]
    fn an_untagged_bucket_is_adopted_and_another_link_s_is_refused() {
        let d = desired();
        let o = Observed { bucket: Some(Bucket::default()), trail: None };
        assert_eq!(plan(&d, &o).unwrap()[0], Change::TagBucket(d.tags.clone()));
        let other = Desired::new("prod", "uid-2", "123456789012", "eu-west-1", 365);
        let o = Observed { bucket: Some(Bucket { tags: other.tags.clone(), ..Bucket::default() }), trail: None };
        assert!(matches!(plan(&d, &o), Err(Error::NameTaken { .. })));
        let o = Observed { bucket: None, trail: Some(Trail { tags: other.tags, ..Trail::default() }) };
        assert!(matches!(teardown(&d, &o, true), Err(Error::NameTaken { .. })));
    }

    #[test]
    fn teardown_deletes_the_trail_then_empties_and_deletes_the_bucket_only_if_asked() {
        let d = desired();
        let bucket =
            Bucket { tags: d.tags.clone(), has_objects: true, policy: Some(d.bucket_policy()), ..Bucket::default() };
        let trail = Trail { tags: d.tags.clone(), ..Trail::default() };
        let o = Observed { bucket: Some(bucket.clone()), trail: Some(trail) };
        assert_eq!(teardown(&d, &o, false).unwrap(), Some(Change::DeleteTrail));
        let o = Observed { bucket: Some(bucket.clone()), trail: None };
        assert_eq!(teardown(&d, &o, false).unwrap(), None);
        assert_eq!(teardown(&d, &o, true).unwrap(), Some(Change::DeleteBucketPolicy));
        let mut o = o;
        o.apply(&Change::DeleteBucketPolicy, &d);
        assert_eq!(teardown(&d, &o, true).unwrap(), Some(Change::EmptyBucket));
        let o = Observed { bucket: Some(Bucket { has_objects: false, policy: None, ..bucket }), trail: None };
        assert_eq!(teardown(&d, &o, true).unwrap(), Some(Change::DeleteBucket));
        assert_eq!(teardown(&d, &Observed::default(), true).unwrap(), None);
    }
}
