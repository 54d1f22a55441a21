//! The whole lifecycle at once, crashed: an AwsAccountLink that bootstraps its role through
//! CloudFormation, a `PublicPrivate` and a `PrivateIsolated` Stack, a Database, an Ssm and an Ssh
//! Bastion, then the deletion of all of them, with the operator killed right after mutating AWS
//! calls (`TINYSTACKS_FAILPOINT_EXIT_AFTER_MUTATIONS`, src/aws/limiter.rs).
//!
//! A sweep crashes the operator after every `stride`-th mutation: each operator is armed to exit
//! after its `stride`-th mutation, and the next one, armed the same way, takes over where it
//! died, so one run goes through the whole lifecycle crash after crash. After every crash the
//! account holds at most one resource per owner and component; once every object is Ready the
//! account holds exactly what an uncrashed run built; after the deletion nothing is left (keys
//! only pending deletion, secrets only scheduled for deletion, which AWS no longer lists). The
//! security invariants (`common::invariants`) hold after every crash, once Ready and at the end.
//! `stride` 1 crashes after every mutation of the lifecycle (`make test-long`); the fast variant
//! crashes after every 7th, a deterministic sample across all kinds and both phases.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_ec2::types::Filter;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tinystacks_operator::api::{AwsAccountLink, Bastion, Database, Stack};

use common::invariants::assert_security_invariants;
use common::*;

const FAILPOINT: &str = "TINYSTACKS_FAILPOINT_EXIT_AFTER_MUTATIONS";
const OWNER_UID: &str = "tinystacks.io/owner-uid";
const COMPONENT: &str = "tinystacks.io/component";
/// How long one operator may run without crashing or finishing the phase.
/// The SSH Bastion's `allowedCidrs`: the only address range port 22 may ever be open to.
const SSH_FROM: &str = "203.0.113.0/24";
const PHASE: Duration = Duration::from_secs(240);

/// One object of the lifecycle, by kind and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Link,
    Stack,
    Database,
    Bastion,
}

/// The objects, in the order they are created.
const OBJECTS: [(Kind, &str); 6] = [
    (Kind::Link, "link"),
    (Kind::Stack, "web"),
    (Kind::Stack, "vault"),
    (Kind::Database, "orders"),
    (Kind::Bastion, "ops-ssm"),
    (Kind::Bastion, "ops-ssh"),
];

/// What one count of the account is keyed by: the owning object's name (or `-` for a resource
/// without an owner tag), the resource type, and its component tag or name.
type Key = (String, &'static str, String);

struct World {
    client: Client,
    ns: TestNamespace,
    aws: SdkConfig,
    /// The link's cluster-wide name (unique per run).
    link: String,
    /// The link's fresh moto account.
    account: String,
}

impl World {
    async fn new() -> Self {
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::new(&client, "lifecycle").await;
        let link = format!("lifecycle-{}", suffix());
        let spec = verified_link_spec(&client, &ns.name, &[&ns.name]).await;
        let account = spec["accountId"].as_str().expect("accountId").to_string();
        let aws = common::moto::account_config(&account).await;
        let world = Self { client, ns, aws, link, account };
        world.create_link(spec).await;
        world
    }

    async fn create_link(&self, spec: Value) {
        let link: AwsAccountLink = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "AwsAccountLink",
            "metadata": {"name": self.link}, "spec": spec,
        }))
        .expect("link");
        let api = Api::<AwsAccountLink>::all(self.client.clone());
        api.create(&PostParams::default(), &link).await.expect("create link");
    }

    fn name(&self, kind: Kind, name: &str) -> String {
        if kind == Kind::Link { self.link.clone() } else { name.to_string() }
    }

    /// Creates the five namespaced objects of one round (the link outlives the rounds).
    async fn create_objects(&self) {
        let link = json!({"name": self.link});
        let specs = [
            (
                Kind::Stack,
                "web",
                json!({"accountLinkRef": link, "network": {"pattern": "PublicPrivate", "cidr": "10.70.0.0/16"}}),
            ),
            (
                Kind::Stack,
                "vault",
                json!({"accountLinkRef": link, "network": {"pattern": "PrivateIsolated", "cidr": "10.71.0.0/16"}}),
            ),
            (Kind::Database, "orders", json!({"stackRef": {"name": "web"}, "deletionPolicy": "Delete"})),
            (Kind::Bastion, "ops-ssm", json!({"stackRef": {"name": "vault"}, "access": "Ssm"})),
            (
                Kind::Bastion,
                "ops-ssh",
                json!({"stackRef": {"name": "web"}, "access": "Ssh", "allowedCidrs": [SSH_FROM]}),
            ),
        ];
        for (kind, name, spec) in specs {
            match kind {
                Kind::Stack => create(&self.api::<Stack>(), name, spec).await,
                Kind::Database => create(&self.api::<Database>(), name, spec).await,
                Kind::Bastion => create(&self.api::<Bastion>(), name, spec).await,
                Kind::Link => unreachable!("the link is created once"),
            }
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Each object as JSON, or `None` once it is gone.
    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Value>, String> {
        let name = self.name(kind, name);
        let got = match kind {
            Kind::Link => json_of(Api::<AwsAccountLink>::all(self.client.clone()).get_opt(&name).await),
            Kind::Stack => json_of(self.api::<Stack>().get_opt(&name).await),
            Kind::Database => json_of(self.api::<Database>().get_opt(&name).await),
            Kind::Bastion => json_of(self.api::<Bastion>().get_opt(&name).await),
        };
        got.map_err(|e| format!("{kind:?} {name}: {e}"))
    }

    /// `Ok` when every object's `Ready=True` describes its generation; else what is not.
    async fn all_ready(&self) -> Result<(), String> {
        let mut waiting = Vec::new();
        for (kind, name) in OBJECTS {
            let ready = self.get(kind, name).await?.as_ref().is_some_and(|v| {
                condition(v, "Ready")
                    .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == v["metadata"]["generation"])
            });
            if !ready {
                waiting.push(name);
            }
        }
        if waiting.is_empty() { Ok(()) } else { Err(format!("not Ready: {waiting:?}")) }
    }

    async fn all_gone(&self) -> Result<(), String> {
        let mut left = Vec::new();
        for (kind, name) in OBJECTS {
            if self.get(kind, name).await?.is_some() {
                left.push(name);
            }
        }
        if left.is_empty() { Ok(()) } else { Err(format!("still there: {left:?}")) }
    }

    /// Deletes every object at once; the Stacks wait for their Database and Bastions, the link
    /// for its Stacks.
    async fn delete_all(&self) {
        let dp = DeleteParams::default();
        for (kind, name) in OBJECTS {
            let name = self.name(kind, name);
            let result = match kind {
                Kind::Link => Api::<AwsAccountLink>::all(self.client.clone()).delete(&name, &dp).await.map(|_| ()),
                Kind::Stack => self.api::<Stack>().delete(&name, &dp).await.map(|_| ()),
                Kind::Database => self.api::<Database>().delete(&name, &dp).await.map(|_| ()),
                Kind::Bastion => self.api::<Bastion>().delete(&name, &dp).await.map(|_| ()),
            };
            result.unwrap_or_else(|e| panic!("delete {kind:?} {name}: {e}"));
        }
    }

    /// The UIDs of the objects that exist, by name, and `-` for resources without an owner tag.
    async fn owners(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (kind, name) in OBJECTS {
            if let Ok(Some(v)) = self.get(kind, name).await
                && let Some(uid) = v["metadata"]["uid"].as_str()
            {
                out.insert(uid.to_string(), name.to_string());
            }
        }
        out
    }

    fn operator(&self, env: &[(&str, &str)]) -> Operator {
        Operator::in_namespace(&self.ns.name, "30s", env)
    }

    /// Every live resource in the account, counted by owner, type and component (or name).
    async fn census(&self) -> BTreeMap<Key, usize> {
        let owners = self.owners().await;
        let mut out = BTreeMap::new();
        let mut add = |uid: Option<&str>, kind: &'static str, component: String| {
            let owner = match uid {
                Some(uid) => owners.get(uid).cloned().unwrap_or_else(|| format!("gone:{uid}")),
                None => "-".to_string(),
            };
            *out.entry((owner, kind, component)).or_insert(0) += 1;
        };
        let ec2 = aws_sdk_ec2::Client::new(&self.aws);
        let tagged = || Filter::builder().name("tag-key").values(OWNER_UID).build();
        let ec2_tags = |tags: &[aws_sdk_ec2::types::Tag]| -> (Option<String>, String) {
            let get = |k: &str| tags.iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_string);
            (get(OWNER_UID), get(COMPONENT).unwrap_or_default())
        };
        let mut ec2_items: Vec<(&'static str, (Option<String>, String))> = Vec::new();
        let vpcs = ec2.describe_vpcs().filters(tagged()).send().await.expect("vpcs");
        ec2_items.extend(vpcs.vpcs().iter().map(|r| ("vpc", ec2_tags(r.tags()))));
        let subnets = ec2.describe_subnets().filters(tagged()).send().await.expect("subnets");
        ec2_items.extend(subnets.subnets().iter().map(|r| ("subnet", ec2_tags(r.tags()))));
        let tables = ec2.describe_route_tables().filters(tagged()).send().await.expect("route tables");
        ec2_items.extend(tables.route_tables().iter().map(|r| ("route table", ec2_tags(r.tags()))));
        let igws = ec2.describe_internet_gateways().filters(tagged()).send().await.expect("igws");
        ec2_items.extend(igws.internet_gateways().iter().map(|r| ("internet gateway", ec2_tags(r.tags()))));
        let eips = ec2.describe_addresses().filters(tagged()).send().await.expect("addresses");
        ec2_items.extend(eips.addresses().iter().map(|r| ("elastic ip", ec2_tags(r.tags()))));
        let groups = ec2.describe_security_groups().filters(tagged()).send().await.expect("groups");
        ec2_items.extend(groups.security_groups().iter().map(|r| ("security group", ec2_tags(r.tags()))));
        // moto ignores filters on NAT gateways and lists deleted endpoints and instances.
        let nats = ec2.describe_nat_gateways().send().await.expect("nats");
        ec2_items.extend(
            nats.nat_gateways()
                .iter()
                .filter(|n| n.state().is_none_or(|s| s.as_str() != "deleted"))
                .map(|r| ("nat gateway", ec2_tags(r.tags()))),
        );
        let endpoints = ec2.describe_vpc_endpoints().filters(tagged()).send().await.expect("endpoints");
        ec2_items.extend(
            endpoints
                .vpc_endpoints()
                .iter()
                .filter(|e| e.state().is_none_or(|s| !s.as_str().eq_ignore_ascii_case("deleted")))
                .map(|r| ("vpc endpoint", ec2_tags(r.tags()))),
        );
        let instances = ec2.describe_instances().send().await.expect("instances");
        ec2_items.extend(
            instances
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| i.state().and_then(|s| s.name()).is_none_or(|s| s.as_str() != "terminated"))
                .map(|r| ("instance", ec2_tags(r.tags()))),
        );
        let key_pairs = ec2.describe_key_pairs().send().await.expect("key pairs");
        for k in key_pairs.key_pairs() {
            let (uid, _) = ec2_tags(k.tags());
            add(uid.as_deref(), "key pair", String::new());
        }
        for (kind, (uid, component)) in ec2_items {
            add(uid.as_deref(), kind, component);
        }

        let apigw = aws_sdk_apigatewayv2::Client::new(&self.aws);
        for l in apigw.get_vpc_links().send().await.expect("vpc links").items() {
            let tags = l.tags();
            let uid = tags.and_then(|t| t.get(OWNER_UID)).map(String::as_str);
            add(uid, "vpc link", tags.and_then(|t| t.get(COMPONENT)).cloned().unwrap_or_default());
        }

        let kms = aws_sdk_kms::Client::new(&self.aws);
        let tagging = aws_sdk_resourcegroupstagging::Client::new(&self.aws);
        let filter = aws_sdk_resourcegroupstagging::types::TagFilter::builder().key(OWNER_UID).build();
        let keys = tagging.get_resources().resource_type_filters("kms:key").tag_filters(filter).send().await;
        for mapping in keys.expect("tagged keys").resource_tag_mapping_list() {
            let Some(arn) = mapping.resource_arn() else { continue };
            let key = kms.describe_key().key_id(arn).send().await.expect("describe key");
            let state = key.key_metadata().and_then(|m| m.key_state()).map(|s| s.as_str().to_string());
            if state.as_deref() == Some("PendingDeletion") {
                continue;
            }
            let tag = |k: &str| mapping.tags().iter().find(|t| t.key() == k).map(|t| t.value().to_string());
            add(tag(OWNER_UID).as_deref(), "kms key", tag(COMPONENT).unwrap_or_default());
        }

        let rds = aws_sdk_rds::Client::new(&self.aws);
        for i in rds.describe_db_instances().send().await.expect("db instances").db_instances() {
            let uid = i.tag_list().iter().find(|t| t.key() == Some(OWNER_UID)).and_then(|t| t.value());
            add(uid, "db instance", String::new());
        }
        for _ in rds.describe_db_subnet_groups().send().await.expect("subnet groups").db_subnet_groups() {
            add(None, "db subnet group", String::new());
        }
        let secrets = aws_sdk_secretsmanager::Client::new(&self.aws);
        for s in secrets.list_secrets().send().await.expect("secrets").secret_list() {
            let uid = s.tags().iter().find(|t| t.key() == Some(OWNER_UID)).and_then(|t| t.value());
            add(uid, "secret", String::new());
        }

        let iam = aws_sdk_iam::Client::new(&self.aws);
        let roles = iam.list_roles().path_prefix("/tinystacks/").send().await.expect("roles");
        for _ in roles.roles() {
            add(None, "iam role", String::new());
        }
        let profiles = iam.list_instance_profiles().path_prefix("/tinystacks/").send().await.expect("profiles");
        for _ in profiles.instance_profiles() {
            add(None, "instance profile", String::new());
        }
        let cfn = aws_sdk_cloudformation::Client::new(&self.aws);
        for s in cfn.describe_stacks().send().await.expect("cfn stacks").stacks() {
            if s.stack_status().is_some_and(|st| st.as_str() != "DELETE_COMPLETE") {
                add(None, "cloudformation stack", String::new());
            }
        }
        out
    }
}

async fn create<K>(api: &Api<K>, name: &str, spec: Value)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()), "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a valid object");
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("create {} {name}: {e}", K::kind(&())));
}

fn json_of<K: serde::Serialize>(got: kube::Result<Option<K>>) -> Result<Option<Value>, String> {
    match got {
        Ok(Some(obj)) => serde_json::to_value(&obj).map(Some).map_err(|e| e.to_string()),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The resources counted more than once for one owner and component: a crash must never make a
/// second one. Resources without an owner tag are counted by type alone (AWS refuses a second
/// one of the same name), so they are left out.
fn duplicates(census: &BTreeMap<Key, usize>) -> Vec<(&Key, &usize)> {
    census.iter().filter(|((owner, _, _), n)| owner != "-" && **n > 1).collect()
}

/// How one lifecycle went.
struct Outcome {
    /// The account once every object was Ready.
    built: BTreeMap<Key, usize>,
    create_crashes: usize,
    delete_crashes: usize,
    took: Duration,
}

/// Runs operators armed to exit after their `stride`-th mutation until `done` holds; returns how
/// many crashed, having checked after each crash that no resource was made twice.
async fn sweep<F, Fut>(world: &World, what: &str, stride: usize, done: F) -> usize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let stride = stride.to_string();
    let mut crashes = 0;
    loop {
        let mut operator = world.operator(&[(FAILPOINT, stride.as_str())]);
        let deadline = Instant::now() + PHASE;
        let crashed = loop {
            match operator.exited() {
                Some(137) => break true,
                Some(code) => panic!("{what}: the operator exited with {code}:\n{}", operator.logs()),
                None => {}
            }
            if done().await.is_ok() {
                break false;
            }
            assert!(Instant::now() < deadline, "{what}: neither a crash nor the end:\n{}", operator.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if !crashed {
            return crashes;
        }
        crashes += 1;
        let census = world.census().await;
        let doubled = duplicates(&census);
        assert!(doubled.is_empty(), "{what}: after crash {crashes}: made twice: {doubled:?}");
        // Half-built or half-deleted, the account is never less safe than the finished one.
        assert_security_invariants(&world.account, &[SSH_FROM]).await;
    }
}

/// The whole lifecycle in a fresh namespace and account: crashed after every `stride`-th
/// mutation, or not at all.
async fn lifecycle(stride: Option<usize>) -> Outcome {
    let started = Instant::now();
    let world = World::new().await;
    world.create_objects().await;
    let create_crashes = match stride {
        Some(stride) => sweep(&world, "create", stride, || world.all_ready()).await,
        None => 0,
    };
    {
        let _clean = world.operator(&[]);
        eventually("every object Ready", PHASE, || world.all_ready()).await;
    }
    let built = world.census().await;
    assert_security_invariants(&world.account, &[SSH_FROM]).await;
    let doubled = duplicates(&built);
    assert!(doubled.is_empty(), "made twice: {doubled:?}");

    world.delete_all().await;
    let delete_crashes = match stride {
        Some(stride) => sweep(&world, "delete", stride, || world.all_gone()).await,
        None => 0,
    };
    {
        let _clean = world.operator(&[]);
        eventually("every object gone", PHASE, || world.all_gone()).await;
    }
    let left = world.census().await;
    assert_security_invariants(&world.account, &[]).await;
    assert!(left.is_empty(), "left after the deletion (crashed after every {stride:?}th mutation): {left:?}");
    Outcome { built, create_crashes, delete_crashes, took: started.elapsed() }
}

/// Crashes after every `stride`-th mutation and compares with an uncrashed run.
async fn crash_sweep(stride: usize) -> Outcome {
    let _lock = OPERATOR_LOCK.lock().await;
    let uncrashed = lifecycle(None).await;
    let kinds: BTreeMap<&str, usize> = uncrashed.built.keys().map(|(_, kind, _)| (*kind, 1)).collect();
    // The uncrashed run built every kind of resource the lifecycle is about.
    for kind in [
        "vpc",
        "nat gateway",
        "vpc endpoint",
        "vpc link",
        "kms key",
        "db instance",
        "secret",
        "instance",
        "key pair",
        "iam role",
        "cloudformation stack",
    ] {
        assert!(kinds.contains_key(kind), "an uncrashed run has a {kind}: {:?}", uncrashed.built);
    }
    let crashed = lifecycle(Some(stride)).await;
    assert_eq!(crashed.built, uncrashed.built, "the account after a crashed create, against an uncrashed one");
    eprintln!(
        "lifecycle, each operator crashed after its mutation number {stride}: {} crash points in the create, {} in the delete, all converged to \
         one of each and nothing left; {:?} (the uncrashed run {:?})",
        crashed.create_crashes, crashed.delete_crashes, crashed.took, uncrashed.took
    );
    crashed
}

#[tokio::test]
async fn the_whole_lifecycle_crashed_at_a_sample_of_mutations_converges_to_one_of_each_and_leaves_nothing() {
    let outcome = crash_sweep(7).await;
    assert!(outcome.create_crashes >= 5, "crash points in the create: {}", outcome.create_crashes);
    assert!(outcome.delete_crashes >= 3, "crash points in the delete: {}", outcome.delete_crashes);
}

#[tokio::test]
#[ignore = "long (minutes): run with `make test-long`"]
async fn the_whole_lifecycle_crashed_after_every_mutation_converges_to_one_of_each_and_leaves_nothing() {
    let outcome = crash_sweep(1).await;
    // 55 and 37 in the last run (docs/RELIABILITY.md): one per mutating call, every kind.
    assert!(outcome.create_crashes >= 50, "crash points in the create: {}", outcome.create_crashes);
    assert!(outcome.delete_crashes >= 30, "crash points in the delete: {}", outcome.delete_crashes);
}
