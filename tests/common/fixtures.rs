//! Fixtures and waits the integration tests share: waiting for `Ready` or for an object to be gone,
//! for a condition, an Event or a metric; fixture objects whose status a test writes (a paused
//! AwsAccountLink or Stack), and a Stack-like network made directly in moto.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::{Operator, condition, eventually};

/// How long the waits without an explicit timeout wait: enough for a Stack, a Database and a
/// Bastion to converge against moto on a loaded machine.
pub const SETTLE: Duration = Duration::from_secs(180);

/// Waits until `Ready=True` describes the object's current generation; returns the object.
pub async fn wait_ready_within<K>(api: &Api<K>, name: &str, timeout: Duration) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    eventually(&format!("{name} to be Ready"), timeout, || async {
        let obj = api.get(name).await.map_err(|e| e.to_string())?;
        let value = serde_json::to_value(&obj).map_err(|e| e.to_string())?;
        match condition(&value, "Ready") {
            Some(c) if c["status"] == "True" && c["observedGeneration"] == value["metadata"]["generation"] => Ok(obj),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// [`wait_ready_within`] [`SETTLE`], the object as JSON.
pub async fn wait_ready<K>(api: &Api<K>, name: &str) -> Value
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj = wait_ready_within(api, name, SETTLE).await;
    serde_json::to_value(&obj).expect("the object as JSON")
}

/// Waits until the object is gone from the API server (its finalizer released).
pub async fn wait_gone_within<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    eventually(&format!("{name} to be deleted"), timeout, || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(o)) => {
                let value = serde_json::to_value(&o).unwrap_or_default();
                Err(format!(
                    "still there, finalizers {}, conditions {}",
                    value["metadata"]["finalizers"], value["status"]["conditions"]
                ))
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// [`wait_gone_within`] [`SETTLE`].
pub async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    wait_gone_within(api, name, SETTLE).await
}

/// `wait_condition` with a timeout of the caller's.
pub async fn wait_condition_for<K>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> Value
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    eventually(&format!("{name}: {type_}={status} ({reason})"), timeout, || async {
        let obj = api.get(name).await.map_err(|e| e.to_string())?;
        let value = serde_json::to_value(&obj).map_err(|e| e.to_string())?;
        match condition(&value, type_) {
            Some(c) if c["status"] == status && c["reason"] == reason => Ok(value),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The Events of the namespace: (type, reason, note).
pub async fn event_notes(client: &Client, namespace: &str) -> Vec<(String, String, String)> {
    let events = Api::<Event>::namespaced(client.clone(), namespace).list(&Default::default()).await;
    events
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Waits for an Event of the namespace of this type and reason whose note contains `contains`;
/// returns the note.
pub async fn wait_event_note(
    client: &Client,
    namespace: &str,
    (type_, reason, contains): (&str, &str, &str),
    timeout: Duration,
) -> String {
    eventually(&format!("a {type_} event {reason} mentioning {contains:?}"), timeout, || async {
        let events = event_notes(client, namespace).await;
        events
            .iter()
            .find(|(t, r, n)| t == type_ && r == reason && n.contains(contains))
            .map(|(_, _, n)| n.clone())
            .ok_or_else(|| format!("{events:?}"))
    })
    .await
}

/// How many times an Event was reported in the namespace: the recorder folds repeats (same type,
/// reason and object) into one Event whose series counts them, keeping the first note.
pub async fn event_count(client: &Client, namespace: &str, type_: &str, reason: &str) -> i32 {
    let events = Api::<Event>::namespaced(client.clone(), namespace).list(&Default::default()).await;
    events
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.type_.as_deref() == Some(type_) && e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// How many times the Event `reason` about the object `name` was reported in the namespace
/// (`default` for a cluster-scoped object).
pub async fn event_repeats(client: &Client, namespace: &str, name: &str, reason: &str) -> i32 {
    let events = Api::<Event>::namespaced(client.clone(), namespace).list(&Default::default()).await;
    events
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// Waits until the Event `reason` about `name` was reported `more` times after the call: the proof
/// that the operator has met the same state again on later passes (an object that waits for
/// something outside it is looked at again every resync, and says so each time).
pub async fn wait_event_repeats(client: &Client, namespace: &str, name: &str, reason: &str, more: i32) {
    let before = event_repeats(client, namespace, name, reason).await;
    eventually(&format!("{more} more {reason} Events about {name}"), SETTLE, || async {
        let now = event_repeats(client, namespace, name, reason).await;
        if now >= before + more { Ok(()) } else { Err(format!("{} more", now - before)) }
    })
    .await
}

/// The operator's `/metrics` body; asks again when a loaded machine times the scrape out, rather
/// than read an empty body as zero.
pub fn scrape(operator: &Operator) -> String {
    (0..10)
        .find_map(|_| match operator.get("/metrics") {
            (200, body) => Some(body),
            _ => {
                std::thread::sleep(Duration::from_millis(500));
                None
            }
        })
        .expect("the operator's /metrics answers")
}

/// The sum of the samples of `body` whose series (name and labels) starts with `series` and
/// contains `labels` (0 when there is none).
pub fn metric_sum(body: &str, series: &str, labels: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(series) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The reconciles of `kind` the operator has run.
pub fn reconciles(operator: &Operator, kind: &str) -> f64 {
    metric_sum(&scrape(operator), &format!("tinystacks_reconciles_total{{kind=\"{kind}\"}} "), "")
}

/// Waits until the operator has run `more` reconciles of `kind` after the moment of the call: the
/// proof that it has looked at its objects again (on a resync, a retry or a watch event), which a
/// test needs before it asserts that something did *not* happen.
pub async fn wait_reconciles(operator: &Operator, kind: &str, more: f64) {
    let before = reconciles(operator, kind);
    let started = Instant::now();
    eventually(&format!("{more} more reconciles of {kind}"), SETTLE, || async {
        let now = reconciles(operator, kind);
        if now >= before + more { Ok(()) } else { Err(format!("{} after {:?}", now - before, started.elapsed())) }
    })
    .await
}

/// Writes a fixture's status and makes sure it sticks: an operator (this test's, or one another
/// test runs on the same cluster) may publish the paused object's status from a read taken just
/// before this write, and its server-side apply would then undo it.
pub async fn write_status<K>(api: &Api<K>, name: &str, status: &Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let wanted = &status["status"];
    for _ in 0..20 {
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.expect("status");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = serde_json::to_value(api.get(name).await.expect("get")).expect("json");
        let ready = |v: &Value| condition(v, "Ready").map(|c| c["status"].clone());
        let kept = wanted.as_object().is_some_and(|fields| {
            fields.iter().filter(|(k, _)| *k != "conditions").all(|(k, v)| &now["status"][k] == v)
        });
        let wanted_ready = ready(&json!({"status": wanted}));
        if kept && (wanted_ready.is_none() || ready(&now) == wanted_ready) {
            return;
        }
    }
    panic!("the status of {name} did not stick");
}

/// The `Ready=True` condition of a fixture whose status the test writes.
pub fn ready_condition() -> Value {
    json!({"type": "Ready", "status": "True", "reason": "Fixture", "message": "written by the test",
        "lastTransitionTime": Timestamp::now().to_string(), "observedGeneration": 1})
}

/// The fixture Stack's network in moto: subnet IDs by tier, the app security group and the KMS key.
#[derive(Default)]
pub struct Network {
    pub vpc: String,
    pub public: BTreeSet<String>,
    pub private: BTreeSet<String>,
    pub isolated: BTreeSet<String>,
    /// The subnets a Database must use: the private ones, or the isolated ones when there are.
    pub database_subnets: BTreeSet<String>,
    pub app_group: String,
    pub kms_key_arn: String,
}

/// A VPC like the Stack's, in moto: 3 public + 2 private subnets (`PublicPrivate`), or 3 private
/// + 3 isolated; an app security group and a KMS key.
pub async fn network(aws: &SdkConfig, pattern: &str) -> Network {
    let ec2 = aws_sdk_ec2::Client::new(aws);
    let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await.expect("vpc");
    let vpc = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_string();
    let tiers: &[(&str, usize)] = match pattern {
        "PublicPrivate" => &[("Public", 3), ("Private", 2)],
        _ => &[("Private", 3), ("Isolated", 3)],
    };
    let mut net = Network { vpc: vpc.clone(), ..Default::default() };
    for (t, (tier, count)) in tiers.iter().enumerate() {
        for i in 0..*count {
            let zone = format!("us-east-1{}", ["a", "b", "c"][i]);
            let tag = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Subnet)
                .tags(aws_sdk_ec2::types::Tag::builder().key("tier").value(*tier).build())
                .build();
            let out = ec2
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(format!("10.0.{}.0/24", t * 10 + i))
                .availability_zone(zone)
                .tag_specifications(tag)
                .send()
                .await
                .expect("subnet");
            let id = out.subnet().and_then(|s| s.subnet_id()).expect("subnet id").to_string();
            match *tier {
                "Public" => net.public.insert(id),
                "Private" => net.private.insert(id),
                _ => net.isolated.insert(id),
            };
        }
    }
    net.database_subnets = if net.isolated.is_empty() { net.private.clone() } else { net.isolated.clone() };
    net.app_group = group(aws, &vpc, "app").await;
    let kms = aws_sdk_kms::Client::new(aws);
    let key = kms.create_key().description("the stack's key").send().await.expect("key");
    net.kms_key_arn = key.key_metadata().and_then(|k| k.arn()).expect("key arn").to_string();
    net
}

/// A security group of the VPC, made in moto.
pub async fn group(aws: &SdkConfig, vpc: &str, name: &str) -> String {
    let ec2 = aws_sdk_ec2::Client::new(aws);
    let out = ec2.create_security_group().vpc_id(vpc).group_name(name).description(name).send().await.expect("sg");
    out.group_id().expect("group id").to_string()
}

/// The subnets of the VPC as the Stack's status lists them.
pub async fn describe_subnets(aws: &SdkConfig, vpc: &str) -> Vec<Value> {
    let ec2 = aws_sdk_ec2::Client::new(aws);
    let filter = aws_sdk_ec2::types::Filter::builder().name("vpc-id").values(vpc).build();
    let out = ec2.describe_subnets().filters(filter).send().await.expect("subnets");
    out.subnets()
        .iter()
        .filter_map(|s| {
            let tier = s.tags().iter().find(|t| t.key() == Some("tier"))?.value()?;
            Some(json!({"id": s.subnet_id()?, "tier": tier, "availabilityZone": s.availability_zone()?,
                "cidr": s.cidr_block()?}))
        })
        .collect()
}

/// Runs operators from `start` (armed to exit right after a mutating AWS call) until `done` holds,
/// each until it crashes or `timeout`; returns how many of them crashed.
pub async fn crash_until_done<S, F, Fut>(start: S, what: &str, max: usize, timeout: Duration, done: F) -> usize
where
    S: Fn() -> Operator,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut crashes = 0;
    for _ in 0..max {
        let mut operator = start();
        let deadline = Instant::now() + timeout;
        let outcome = loop {
            if let Some(code) = operator.exited() {
                break Some(code);
            }
            if done().await {
                break None;
            }
            assert!(Instant::now() < deadline, "{what}: neither a crash nor the end:\n{}", operator.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match outcome {
            Some(137) => crashes += 1,
            Some(code) => panic!("the operator exited with {code}:\n{}", operator.logs()),
            None => return crashes,
        }
    }
    panic!("{what} did not finish after {max} crashes");
}
