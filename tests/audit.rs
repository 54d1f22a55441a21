//! `AwsAccountLink.spec.audit.cloudTrail` against the real API server and moto, with the real
//! operator binary: the trail and its private bucket as users get them, drift put back within a
//! resync, and what disabling and deleting the link leave.

mod common;

use std::time::Duration;

use aws_config::SdkConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tinystacks_operator::api::AwsAccountLink;

use common::invariants::assert_trail_buckets_private;
use common::{Operator, TestNamespace, client, crash_until_done, eventually, install_crds, suffix, verified_link_spec};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the operator's trail and bucket names.
const PREFIX: &str = "tinystacks-trail-";

struct World {
    client: Client,
    ns: TestNamespace,
    _operator: Option<Operator>,
    /// The links made, force-deleted (finalizer removed) when the test ends, so that a failed
    /// test leaves nothing for another operator to reconcile.
    links: std::sync::Mutex<Vec<String>>,
}

impl Drop for World {
    fn drop(&mut self) {
        for name in self.links.lock().map(|l| l.clone()).unwrap_or_default() {
            let name = format!("awsaccountlinks.tinystacks.io/{name}");
            let quiet = || std::process::Stdio::null();
            let _ = std::process::Command::new("kubectl")
                .args(["patch", &name, "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#])
                .stdout(quiet())
                .stderr(quiet())
                .status();
            let _ = std::process::Command::new("kubectl")
                .args(["delete", &name, "--wait=false", "--ignore-not-found"])
                .stdout(quiet())
                .stderr(quiet())
                .status();
        }
    }
}

impl World {
    /// A namespace for the links' Secrets, with an operator unless `crashing` (the test starts
    /// its own, armed to crash).
    async fn new(prefix: &str, crashing: bool) -> Self {
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let operator = (!crashing).then(|| Operator::in_namespace(&ns.name, "3s", &[]));
        Self { client, ns, _operator: operator, links: Default::default() }
    }

    /// An operator that exits right after its first mutating AWS call.
    fn crashing_operator(&self) -> Operator {
        Operator::in_namespace(&self.ns.name, "2s", &[("TINYSTACKS_FAILPOINT_EXIT_AFTER_MUTATIONS", "1")])
    }

    fn links(&self) -> Api<AwsAccountLink> {
        Api::all(self.client.clone())
    }

    /// A verified link in a fresh moto account, with `audit` and `deletionPolicy`; returns its
    /// name and account.
    async fn link(&self, audit: Value, deletion_policy: &str) -> (String, String) {
        let mut spec = verified_link_spec(&self.client, &self.ns.name, &[]).await;
        // The fixture's Secret has one name per namespace: each link here keeps its own copy.
        let name = format!("audit-{}", suffix());
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &self.ns.name);
        let mut secret = secrets.get("bootstrap").await.expect("bootstrap Secret");
        secrets.delete("bootstrap", &DeleteParams::default()).await.expect("delete the fixture's Secret");
        secret.metadata = kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() };
        secrets.create(&PostParams::default(), &secret).await.expect("the link's bootstrap Secret");
        spec["bootstrap"]["credentialsSecretRef"]["name"] = json!(name);
        spec["audit"] = audit;
        spec["deletionPolicy"] = json!(deletion_policy);
        let account = spec["accountId"].as_str().expect("accountId").to_string();
        let link: AwsAccountLink = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "AwsAccountLink",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("link");
        self.links().create(&PostParams::default(), &link).await.expect("create link");
        self.links.lock().expect("links").push(name.clone());
        (name, account)
    }

    /// The link's status once it is Ready for its generation with its audit trail.
    async fn trail_status(&self, name: &str) -> Result<Value, String> {
        let link = self.links().get(name).await.map_err(|e| e.to_string())?;
        let value = serde_json::to_value(&link).map_err(|e| e.to_string())?;
        let ready = common::condition(&value, "Ready");
        let current = ready
            .as_ref()
            .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == value["metadata"]["generation"]);
        let message = ready.as_ref().and_then(|c| c["message"].as_str().map(str::to_string)).unwrap_or_default();
        if current && message.contains("audit trail") {
            Ok(value["status"].clone())
        } else {
            Err(format!("{:?}", value.pointer("/status")))
        }
    }

    /// Waits until the link is Ready for its generation with the trail recorded; returns its status.
    async fn trail_ready(&self, name: &str) -> Value {
        eventually(&format!("{name} Ready with its audit trail"), TIMEOUT, || self.trail_status(name)).await
    }

    async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client.clone(), "default")
            .list(&Default::default())
            .await
            .expect("events");
        events
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    async fn wait_event(&self, name: &str, type_: &str, reason: &str, contains: &str) {
        eventually(&format!("{type_} {reason} about {name} mentioning {contains:?}"), TIMEOUT, || async {
            let events = self.events(name).await;
            if events.iter().any(|(t, r, n)| t == type_ && r == reason && n.contains(contains)) {
                Ok(())
            } else {
                Err(format!("{events:?}"))
            }
        })
        .await
    }

    async fn delete_and_wait_gone(&self, name: &str) {
        let api = self.links();
        api.delete(name, &DeleteParams::default()).await.expect("delete link");
        eventually(&format!("{name} gone"), TIMEOUT, || async {
            match api.get_opt(name).await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
}

/// The account's S3 (path-style, as moto on loopback needs) and CloudTrail clients.
struct Aws {
    s3: aws_sdk_s3::Client,
    cloudtrail: aws_sdk_cloudtrail::Client,
}

impl Aws {
    async fn new(account: &str) -> Self {
        let config: SdkConfig = common::moto::account_config(account).await;
        Self {
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build(),
            ),
            cloudtrail: aws_sdk_cloudtrail::Client::new(&config),
        }
    }

    async fn trail_exists(&self, trail: &str) -> bool {
        self.cloudtrail.get_trail().name(trail).send().await.is_ok()
    }

    async fn bucket_exists(&self, bucket: &str) -> bool {
        self.s3.head_bucket().bucket(bucket).send().await.is_ok()
    }

    async fn policy(&self, bucket: &str) -> Value {
        let out = self.s3.get_bucket_policy().bucket(bucket).send().await.expect("bucket policy");
        serde_json::from_str(out.policy().expect("a policy")).expect("policy JSON")
    }

    async fn logging(&self, trail: &str) -> bool {
        let status = self.cloudtrail.get_trail_status().name(trail).send().await.expect("trail status");
        status.is_logging() == Some(true)
    }

    async fn public_access_blocked(&self, bucket: &str) -> bool {
        let Ok(out) = self.s3.get_public_access_block().bucket(bucket).send().await else { return false };
        out.public_access_block_configuration().is_some_and(|c| {
            [c.block_public_acls(), c.ignore_public_acls(), c.block_public_policy(), c.restrict_public_buckets()]
                .iter()
                .all(|v| *v == Some(true))
        })
    }

    /// Puts a log file as CloudTrail would. moto judges object requests by the bucket policy
    /// without their context (a `Principal: *` Deny with a condition denies everything), so the
    /// policy is taken away first; the operator puts it back as drift.
    async fn put_log(&self, bucket: &str, account: &str) {
        self.s3.delete_bucket_policy().bucket(bucket).send().await.expect("delete the bucket policy");
        self.s3
            .put_object()
            .bucket(bucket)
            .key(format!("AWSLogs/{account}/CloudTrail/us-east-1/log.json.gz"))
            .body(b"{}".to_vec().into())
            .send()
            .await
            .expect("put a log file");
    }

    /// The operator's trails and trail buckets in the account.
    async fn owned(&self) -> (Vec<String>, Vec<String>) {
        let trails = self.cloudtrail.describe_trails().send().await.expect("describe trails");
        let trails = trails.trail_list().iter().filter_map(|t| t.name()).filter(|n| n.starts_with(PREFIX));
        let buckets = self.s3.list_buckets().send().await.expect("list buckets");
        let buckets = buckets.buckets().iter().filter_map(|b| b.name()).filter(|n| n.starts_with(PREFIX));
        (trails.map(str::to_string).collect(), buckets.map(str::to_string).collect())
    }

    async fn objects(&self, bucket: &str) -> usize {
        let out = self.s3.list_objects_v2().bucket(bucket).send().await.expect("list objects");
        out.contents().len()
    }
}

/// The policy CloudTrail needs on the bucket, and nothing wider.
fn expected_policy(bucket: &str, account: &str, trail_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AWSCloudTrailAclCheck", "Effect": "Allow",
                "Principal": {"Service": "cloudtrail.amazonaws.com"},
                "Action": "s3:GetBucketAcl", "Resource": format!("arn:aws:s3:::{bucket}"),
                "Condition": {"StringEquals": {"aws:SourceArn": trail_arn}},
            },
            {
                "Sid": "AWSCloudTrailWrite", "Effect": "Allow",
                "Principal": {"Service": "cloudtrail.amazonaws.com"},
                "Action": "s3:PutObject", "Resource": format!("arn:aws:s3:::{bucket}/AWSLogs/{account}/*"),
                "Condition": {"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control", "aws:SourceArn": trail_arn}},
            },
            {
                "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    })
}

fn trail_name(trail_arn: &str) -> String {
    trail_arn.rsplit('/').next().expect("trail name").to_string()
}

/// One operator for the whole file: links are cluster-wide, and the first install to see one claims it.
#[tokio::test]
async fn audit_trails_are_made_private_kept_so_and_removed_per_the_link_s_policy() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let world = World::new("audit", false).await;
    let drifting = world.link(json!({"cloudTrail": {"enabled": true, "retentionDays": 30}}), "Delete").await;
    let audit = json!({"cloudTrail": {"enabled": true}});
    let deleted = world.link(audit.clone(), "Delete").await;
    let retained = world.link(audit, "Retain").await;
    tokio::join!(enabled_and_drift(&world, drifting), disabled_then_deleted(&world, deleted, retained));
}

/// Enabling makes the trail and its bucket as promised; drift made by hand is put back.
async fn enabled_and_drift(world: &World, (name, account): (String, String)) {
    let status = world.trail_ready(&name).await;
    let trail_arn = status["trailArn"].as_str().expect("status.trailArn").to_string();
    let bucket = status["trailBucket"].as_str().expect("status.trailBucket").to_string();
    assert!(bucket.starts_with(&format!("tinystacks-trail-{account}-us-east-1-")) && bucket.len() <= 63, "{bucket}");
    let trail = trail_name(&trail_arn);
    let aws = Aws::new(&account).await;

    // The trail: every region, global service events, validated log files, logging.
    let got = aws.cloudtrail.get_trail().name(&trail).send().await.expect("trail");
    let t = got.trail().expect("trail");
    assert_eq!(t.trail_arn(), Some(trail_arn.as_str()));
    assert_eq!(t.s3_bucket_name(), Some(bucket.as_str()));
    assert_eq!(t.is_multi_region_trail(), Some(true));
    assert_eq!(t.include_global_service_events(), Some(true));
    assert_eq!(t.log_file_validation_enabled(), Some(true));
    assert!(aws.logging(&trail).await, "the trail logs");
    let tags = aws.cloudtrail.list_tags().resource_id_list(&trail_arn).send().await.expect("trail tags");
    let uid = world.links().get(&name).await.expect("link").metadata.uid.expect("uid");
    let has = |key: &str, value: &str| {
        tags.resource_tag_list().iter().flat_map(|r| r.tags_list()).any(|t| t.key() == key && t.value() == Some(value))
    };
    assert!(has("tinystacks.io/managed-by", "tinystacks-operator") && has("tinystacks.io/owner-uid", &uid));

    // The bucket: encrypted, no public access, no ACLs, logs expire, the exact policy, tagged.
    let encryption = aws.s3.get_bucket_encryption().bucket(&bucket).send().await.expect("encryption");
    let rules = encryption.server_side_encryption_configuration().expect("encryption configuration").rules();
    let algorithm = rules[0].apply_server_side_encryption_by_default().expect("default").sse_algorithm();
    assert_eq!(algorithm.as_str(), "AES256");
    assert!(aws.public_access_blocked(&bucket).await);
    let ownership = aws.s3.get_bucket_ownership_controls().bucket(&bucket).send().await.expect("ownership");
    let ownership =
        ownership.ownership_controls().expect("controls").rules()[0].object_ownership().as_str().to_string();
    assert_eq!(ownership, "BucketOwnerEnforced");
    let lifecycle = aws.s3.get_bucket_lifecycle_configuration().bucket(&bucket).send().await.expect("lifecycle");
    assert_eq!(lifecycle.rules().len(), 1);
    assert_eq!(lifecycle.rules()[0].expiration().and_then(|e| e.days()), Some(30));
    assert_eq!(aws.policy(&bucket).await, expected_policy(&bucket, &account, &trail_arn));
    let bucket_tags = aws.s3.get_bucket_tagging().bucket(&bucket).send().await.expect("bucket tags");
    assert!(bucket_tags.tag_set().iter().any(|t| t.key() == "tinystacks.io/owner-uid" && t.value() == uid));
    assert_trail_buckets_private(&account).await;

    // Drift by hand: logging stopped, the policy opened to everyone, the public access block gone.
    aws.cloudtrail.stop_logging().name(&trail).send().await.expect("stop logging");
    let mut wider = expected_policy(&bucket, &account, &trail_arn);
    wider["Statement"][1]["Principal"] = json!("*");
    aws.s3.put_bucket_policy().bucket(&bucket).policy(wider.to_string()).send().await.expect("widen the policy");
    aws.s3.delete_public_access_block().bucket(&bucket).send().await.expect("remove the public access block");
    eventually("the drift put back", TIMEOUT, || async {
        let policy = aws.policy(&bucket).await;
        let (logging, blocked) = (aws.logging(&trail).await, aws.public_access_blocked(&bucket).await);
        if logging && blocked && policy == expected_policy(&bucket, &account, &trail_arn) {
            Ok(())
        } else {
            Err(format!("logging {logging}, blocked {blocked}, policy {policy}"))
        }
    })
    .await;
    for what in ["started logging", "bucket policy", "public access block"] {
        world.wait_event(&name, "Warning", "DriftRepaired", what).await;
    }
    assert_trail_buckets_private(&account).await;
    world.delete_and_wait_gone(&name).await;
}

/// Disabling deletes the trail and keeps the logs; the link's deletion deletes the bucket with
/// `Delete` and keeps it (with an Event) with `Retain`.
async fn disabled_then_deleted(
    world: &World,
    (deleted, deleted_account): (String, String),
    (retained, retained_account): (String, String),
) {
    let (deleted_status, retained_status) = tokio::join!(world.trail_ready(&deleted), world.trail_ready(&retained));
    let bucket_of = |s: &Value| s["trailBucket"].as_str().expect("trailBucket").to_string();
    let trail_of = |s: &Value| trail_name(s["trailArn"].as_str().expect("trailArn"));
    let (aws, retained_aws) = (Aws::new(&deleted_account).await, Aws::new(&retained_account).await);
    let (bucket, trail) = (bucket_of(&deleted_status), trail_of(&deleted_status));
    aws.put_log(&bucket, &deleted_account).await;
    let lifecycle = aws.s3.get_bucket_lifecycle_configuration().bucket(&bucket).send().await.expect("lifecycle");
    assert_eq!(lifecycle.rules()[0].expiration().and_then(|e| e.days()), Some(365), "the default retention");

    // Disabled: the trail goes, the bucket stays with its logs.
    let patch = json!({"spec": {"audit": {"cloudTrail": {"enabled": false}}}});
    world.links().patch(&deleted, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("disable");
    eventually("the trail deleted", TIMEOUT, || async {
        let link = world.links().get(&deleted).await.map_err(|e| e.to_string())?;
        let recorded = link.status.as_ref().and_then(|s| s.trail_arn.clone());
        if !aws.trail_exists(&trail).await && recorded.is_none() { Ok(()) } else { Err(format!("{recorded:?}")) }
    })
    .await;
    world.wait_event(&deleted, "Normal", "Retained", &bucket).await;
    assert!(aws.bucket_exists(&bucket).await);
    assert_eq!(aws.objects(&bucket).await, 1, "the logs are kept");

    // Deleted with `Delete`: the bucket is emptied and goes too.
    world.delete_and_wait_gone(&deleted).await;
    assert!(!aws.bucket_exists(&bucket).await, "the bucket is deleted with the link");

    // Deleted with `Retain`: the trail goes, the bucket and its logs stay, and an Event says so.
    let (bucket, trail) = (bucket_of(&retained_status), trail_of(&retained_status));
    retained_aws.put_log(&bucket, &retained_account).await;
    world.delete_and_wait_gone(&retained).await;
    assert!(!retained_aws.trail_exists(&trail).await, "the trail is deleted with the link");
    assert!(retained_aws.bucket_exists(&bucket).await);
    assert_eq!(retained_aws.objects(&bucket).await, 1);
    world.wait_event(&retained, "Normal", "Retained", &bucket).await;
}

#[tokio::test]
async fn a_crash_after_every_mutating_call_makes_one_trail_and_one_bucket_and_deletion_leaves_nothing() {
    let _serial = common::OPERATOR_LOCK.lock().await;
    let world = World::new("audit-crash", true).await;
    let (name, account) = world.link(json!({"cloudTrail": {"enabled": true}}), "Delete").await;
    let aws = Aws::new(&account).await;
    let ready = || async { world.trail_status(&name).await.is_ok() };
    let what = "the audit trail, the operator crashing after each mutation";
    let crashes = crash_until_done(|| world.crashing_operator(), what, 40, TIMEOUT, ready).await;
    // The stack, then the bucket and its settings (S3, and moto, encrypt a new bucket with SSE-S3
    // already), the trail and its logging.
    assert!(crashes >= 9, "only {crashes} crashes");
    let status = world.trail_status(&name).await.expect("Ready");
    let (bucket, trail_arn) =
        (status["trailBucket"].as_str().expect("bucket"), status["trailArn"].as_str().expect("arn"));
    assert_eq!(aws.owned().await, (vec![trail_name(trail_arn)], vec![bucket.to_string()]), "one of each");
    assert!(aws.logging(&trail_name(trail_arn)).await);
    assert_eq!(aws.policy(bucket).await, expected_policy(bucket, &account, trail_arn));
    let tags = aws.s3.get_bucket_tagging().bucket(bucket).send().await.expect("bucket tags");
    assert!(tags.tag_set().iter().any(|t| t.key() == "tinystacks.io/managed-by"), "tagged after a crash");
    assert_trail_buckets_private(&account).await;

    world.links().delete(&name, &DeleteParams::default()).await.expect("delete link");
    let gone = || async { matches!(world.links().get_opt(&name).await, Ok(None)) };
    crash_until_done(|| world.crashing_operator(), "the link's deletion under crashes", 40, TIMEOUT, gone).await;
    assert_eq!(aws.owned().await, (vec![], vec![]), "nothing left");
}
