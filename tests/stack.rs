//! The Stack against the real API server and moto, with the real operator binary: both network
//! patterns checked resource by resource in moto, drift repaired within one resync, spec changes in
//! place, deletion that leaves nothing tagged with the Stack's UID, `Retain`, a crash after every
//! mutating call of a create and of a delete, and 50 Stacks whose steady-state AWS calls do not
//! grow with their number.
//!
//! Each test gets a namespace and an AWS account of its own. The AwsAccountLink is a fixture:
//! paused (no AWS call for it) with a verified status written here, so that these tests exercise
//! only the Stack's code and count only its AWS calls.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_ec2::types::Filter;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tinystacks_operator::api::{AwsAccountLink, Stack, SubnetTier};

use common::fault_proxy::Faults;
use common::moto::{account_config, new_account_id, role_arn};
use common::*;

const READY: Duration = Duration::from_secs(120);
const FAILPOINT: &str = "TINYSTACKS_FAILPOINT_EXIT_AFTER_MUTATIONS";
const UID_TAG: &str = "tinystacks.io/owner-uid";
const COMPONENT_TAG: &str = "tinystacks.io/component";

/// One test's world: its namespace, AWS account and account link.
struct World {
    client: Client,
    ns: TestNamespace,
    aws: SdkConfig,
    link: String,
    account: String,
}

impl World {
    async fn new(prefix: &str) -> Self {
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let account = new_account_id();
        let aws = account_config(&account).await;
        let link = format!("{prefix}-link-{}", suffix());
        let world = Self { client, ns, aws, link, account: account.clone() };
        world.fixture_link(&account).await;
        world
    }

    /// A verified link, paused so that the operator makes no AWS call for it.
    async fn fixture_link(&self, account: &str) {
        let link: AwsAccountLink = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "AwsAccountLink",
            "metadata": {"name": self.link, "annotations": {"tinystacks.io/paused": "true"}},
            "spec": {"accountId": account, "region": "us-east-1", "allowedNamespaces": [self.ns.name]},
        }))
        .expect("link");
        let api = Api::<AwsAccountLink>::all(self.client.clone());
        api.create(&PostParams::default(), &link).await.expect("create link");
        let status = json!({"status": {
            "externalId": "tinystacks-tests-external-id-0123456789",
            "roleArn": role_arn(account),
            "conditions": [{"type": "Ready", "status": "True", "reason": "Fixture", "message": "written by the test",
                "lastTransitionTime": Timestamp::now().to_string(), "observedGeneration": 1}],
            "observedGeneration": 1,
        }});
        api.patch_status(&self.link, &PatchParams::default(), &Patch::Merge(&status)).await.expect("link status");
    }

    fn operator(&self, resync: &str, env: &[(&str, &str)]) -> Operator {
        let config = OperatorConfig {
            namespace: &self.ns.name,
            lease_name: "tinystacks-operator",
            resync,
            extra_args: vec![
                "--watch-namespace".into(),
                self.ns.name.clone(),
                "--leader-election".into(),
                "false".into(),
            ],
        };
        Operator::start_with_env(config, env)
    }

    fn stacks(&self) -> Api<Stack> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.aws)
    }

    /// Creates a Stack; returns its UID.
    async fn stack(&self, name: &str, spec: Value) -> String {
        let mut full = json!({"accountLinkRef": {"name": self.link}});
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        let stack: Stack = serde_json::from_value(json!({
            "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack", "metadata": {"name": name}, "spec": full,
        }))
        .expect("stack");
        let created = self.stacks().create(&PostParams::default(), &stack).await.expect("create stack");
        created.uid().expect("uid")
    }

    async fn patch_spec(&self, name: &str, spec: Value) {
        let patch = json!({"spec": spec});
        self.stacks().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch stack");
    }

    /// Waits until `Ready=True` describes the current generation.
    async fn wait_ready(&self, name: &str, timeout: Duration) -> Stack {
        wait_ready_within(&self.stacks(), name, timeout).await
    }

    async fn delete(&self, name: &str) {
        self.stacks().delete(name, &DeleteParams::default()).await.expect("delete stack");
    }

    async fn wait_gone(&self, name: &str, timeout: Duration) {
        wait_gone_within(&self.stacks(), name, timeout).await
    }

    async fn events(&self, name: &str) -> Vec<String> {
        event_reasons(&self.client, &self.ns.name, name).await.into_iter().map(|(_, r)| r).collect()
    }

    /// How often `reason` was reported about `name`: the recorder folds repeats of one reason into
    /// one Event whose series counts them.
    async fn times(&self, name: &str, reason: &str) -> i32 {
        use k8s_openapi::api::events::v1::Event;
        let events = Api::<Event>::namespaced(self.client.clone(), &self.ns.name).list(&Default::default()).await;
        events
            .map(|l| l.items)
            .unwrap_or_default()
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum()
    }

    /// Everything in moto tagged with the Stack's UID.
    async fn resources(&self, uid: &str) -> Resources {
        let ec2 = self.ec2();
        let f = || Filter::builder().name(format!("tag:{UID_TAG}")).values(uid).build();
        let vpcs = ec2.describe_vpcs().filters(f()).send().await.expect("vpcs").vpcs().to_vec();
        let subnets = ec2.describe_subnets().filters(f()).send().await.expect("subnets").subnets().to_vec();
        let route_tables =
            ec2.describe_route_tables().filters(f()).send().await.expect("route tables").route_tables().to_vec();
        let gateways =
            ec2.describe_internet_gateways().filters(f()).send().await.expect("igws").internet_gateways().to_vec();
        let addresses = ec2.describe_addresses().filters(f()).send().await.expect("eips").addresses().to_vec();
        // moto ignores filters on NAT gateways: filter here, and leave out the deleted ones.
        let nats = ec2
            .describe_nat_gateways()
            .send()
            .await
            .expect("nats")
            .nat_gateways()
            .iter()
            .filter(|n| tag(n.tags(), UID_TAG) == Some(uid))
            .filter(|n| n.state().is_none_or(|s| s.as_str() != "deleted"))
            .cloned()
            .collect();
        let groups = ec2.describe_security_groups().filters(f()).send().await.expect("sgs").security_groups().to_vec();
        // Terminated instances stay listed a while in EC2 (and in moto): they are gone.
        let instances = ec2
            .describe_instances()
            .filters(f())
            .send()
            .await
            .expect("instances")
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.state().and_then(|s| s.name()).is_none_or(|n| n.as_str() != "terminated"))
            .cloned()
            .collect();
        let endpoints = ec2
            .describe_vpc_endpoints()
            .filters(f())
            .send()
            .await
            .expect("endpoints")
            .vpc_endpoints()
            .iter()
            .filter(|e| e.state().is_none_or(|s| !s.as_str().eq_ignore_ascii_case("deleted")))
            .cloned()
            .collect();
        let apigw = aws_sdk_apigatewayv2::Client::new(&self.aws);
        let links = apigw.get_vpc_links().send().await.expect("vpc links");
        let vpc_links = links
            .items()
            .iter()
            .filter(|l| l.tags().and_then(|t| t.get(UID_TAG)).is_some_and(|v| v == uid))
            .cloned()
            .collect();
        let tagging = aws_sdk_resourcegroupstagging::Client::new(&self.aws);
        let filter = aws_sdk_resourcegroupstagging::types::TagFilter::builder().key(UID_TAG).values(uid).build();
        let tagged = tagging.get_resources().resource_type_filters("kms:key").tag_filters(filter).send().await;
        let kms = aws_sdk_kms::Client::new(&self.aws);
        let mut keys = Vec::new();
        for arn in tagged.expect("tagged keys").resource_tag_mapping_list().iter().filter_map(|m| m.resource_arn()) {
            let d = kms.describe_key().key_id(arn).send().await.expect("describe key");
            let meta = d.key_metadata().expect("metadata");
            keys.push((
                meta.key_id().to_string(),
                meta.key_state().map(|s| s.as_str().to_string()).unwrap_or_default(),
            ));
        }
        let aliases: Vec<(String, String)> = kms
            .list_aliases()
            .send()
            .await
            .expect("aliases")
            .aliases()
            .iter()
            .filter_map(|a| Some((a.alias_name()?.to_string(), a.target_key_id()?.to_string())))
            .filter(|(_, target)| keys.iter().any(|(k, _)| k == target))
            .collect();
        Resources {
            vpcs,
            subnets,
            route_tables,
            gateways,
            addresses,
            nats,
            instances,
            groups,
            endpoints,
            vpc_links,
            keys,
            aliases,
        }
    }
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

fn tags_of(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect()
}

struct Resources {
    vpcs: Vec<aws_sdk_ec2::types::Vpc>,
    subnets: Vec<aws_sdk_ec2::types::Subnet>,
    route_tables: Vec<aws_sdk_ec2::types::RouteTable>,
    gateways: Vec<aws_sdk_ec2::types::InternetGateway>,
    addresses: Vec<aws_sdk_ec2::types::Address>,
    nats: Vec<aws_sdk_ec2::types::NatGateway>,
    /// NAT instances not terminated.
    instances: Vec<aws_sdk_ec2::types::Instance>,
    groups: Vec<aws_sdk_ec2::types::SecurityGroup>,
    endpoints: Vec<aws_sdk_ec2::types::VpcEndpoint>,
    vpc_links: Vec<aws_sdk_apigatewayv2::types::VpcLink>,
    /// Key ID and state.
    keys: Vec<(String, String)>,
    /// Alias name and key ID.
    aliases: Vec<(String, String)>,
}

impl Resources {
    /// How many of each kind there are.
    fn counts(&self) -> BTreeMap<&'static str, usize> {
        BTreeMap::from([
            ("vpc", self.vpcs.len()),
            ("subnet", self.subnets.len()),
            ("route table", self.route_tables.len()),
            ("internet gateway", self.gateways.len()),
            ("elastic ip", self.addresses.len()),
            ("nat gateway", self.nats.len()),
            ("nat instance", self.instances.len()),
            ("security group", self.groups.len()),
            ("vpc endpoint", self.endpoints.len()),
            ("vpc link", self.vpc_links.len()),
            ("kms key", self.keys.len()),
            ("kms alias", self.aliases.len()),
        ])
    }

    /// Every component tag, with how often it occurs.
    fn components(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let ec2 = self
            .vpcs
            .iter()
            .map(|r| r.tags())
            .chain(self.subnets.iter().map(|r| r.tags()))
            .chain(self.route_tables.iter().map(|r| r.tags()))
            .chain(self.gateways.iter().map(|r| r.tags()))
            .chain(self.addresses.iter().map(|r| r.tags()))
            .chain(self.nats.iter().map(|r| r.tags()))
            .chain(self.instances.iter().map(|r| r.tags()))
            .chain(self.groups.iter().map(|r| r.tags()))
            .chain(self.endpoints.iter().map(|r| r.tags()));
        for tags in ec2 {
            *out.entry(tag(tags, COMPONENT_TAG).unwrap_or("untagged").to_string()).or_insert(0) += 1;
        }
        for l in &self.vpc_links {
            let c = l.tags().and_then(|t| t.get(COMPONENT_TAG)).cloned().unwrap_or_default();
            *out.entry(c).or_insert(0) += 1;
        }
        out
    }

    /// Whether nothing is left but keys waiting out their deletion window.
    fn only_keys_pending_deletion(&self) -> bool {
        self.counts().iter().all(|(k, n)| *k == "kms key" || *n == 0)
            && self.keys.iter().all(|(_, state)| state == "PendingDeletion")
    }

    /// Every EC2 resource's tags, by component.
    fn all_tags(&self) -> Vec<(String, BTreeMap<String, String>)> {
        let ec2 = self
            .vpcs
            .iter()
            .map(|r| tags_of(r.tags()))
            .chain(self.subnets.iter().map(|r| tags_of(r.tags())))
            .chain(self.route_tables.iter().map(|r| tags_of(r.tags())))
            .chain(self.gateways.iter().map(|r| tags_of(r.tags())))
            .chain(self.addresses.iter().map(|r| tags_of(r.tags())))
            .chain(self.nats.iter().map(|r| tags_of(r.tags())))
            .chain(self.instances.iter().map(|r| tags_of(r.tags())))
            .chain(self.groups.iter().map(|r| tags_of(r.tags())))
            .chain(self.endpoints.iter().map(|r| tags_of(r.tags())));
        let links =
            self.vpc_links.iter().map(|l| l.tags().map(|t| t.clone().into_iter().collect()).unwrap_or_default());
        ec2.chain(links)
            .map(|t: BTreeMap<String, String>| (t.get(COMPONENT_TAG).cloned().unwrap_or_default(), t))
            .collect()
    }
}

/// Asserts the tags every resource of the stack carries.
fn assert_tagged(r: &Resources, ns: &str, name: &str, uid: &str, user: &[(&str, &str)]) {
    let all = r.all_tags();
    assert!(!all.is_empty());
    for (component, tags) in all {
        assert_eq!(
            tags.get("tinystacks.io/managed-by").map(String::as_str),
            Some("tinystacks-operator"),
            "{component}"
        );
        assert_eq!(tags.get("tinystacks.io/owner"), Some(&format!("Stack/{ns}/{name}")), "{component}");
        assert_eq!(tags.get(UID_TAG).map(String::as_str), Some(uid), "{component}");
        assert_eq!(tags.get("Name"), Some(&format!("{ns}-{name}-{}", component.replace('/', "-"))), "{component}");
        for (k, v) in user {
            assert_eq!(tags.get(*k).map(String::as_str), Some(*v), "{component}: user tag {k}");
        }
    }
}

/// Destination and target of each route, by route table component.
fn routes(r: &Resources) -> BTreeMap<String, BTreeSet<(String, String)>> {
    r.route_tables
        .iter()
        .map(|t| {
            let routes = t
                .routes()
                .iter()
                .map(|r| {
                    let dest = r.destination_cidr_block().or(r.destination_prefix_list_id()).unwrap_or_default();
                    let target = r.gateway_id().or(r.nat_gateway_id()).or(r.network_interface_id()).unwrap_or_default();
                    (dest.to_string(), target.to_string())
                })
                .collect();
            (tag(t.tags(), COMPONENT_TAG).unwrap_or_default().to_string(), routes)
        })
        .collect()
}

/// The subnets (by ID) each route table component is associated with.
fn associations(r: &Resources) -> BTreeMap<String, BTreeSet<String>> {
    r.route_tables
        .iter()
        .map(|t| {
            let subnets = t.associations().iter().filter_map(|a| a.subnet_id().map(str::to_string)).collect();
            (tag(t.tags(), COMPONENT_TAG).unwrap_or_default().to_string(), subnets)
        })
        .collect()
}

fn subnet_ids(stack: &Stack, tier: SubnetTier) -> BTreeSet<String> {
    stack
        .status
        .as_ref()
        .map(|s| s.subnets.iter().filter(|x| x.tier == tier).map(|x| x.id.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn public_private_stack_converges_to_the_documented_network_and_deletes_to_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-pp").await;
    let started = Instant::now();
    let _operator = world.operator("30s", &[]);
    let uid = world
        .stack("web", json!({"network": {"pattern": "PublicPrivate", "cidr": "10.20.0.0/16"}, "tags": {"team": "a"}}))
        .await;
    let stack = world.wait_ready("web", READY).await;
    eprintln!("PublicPrivate Ready after {:?}", started.elapsed());
    let status = stack.status.clone().expect("status");

    // Status: every field of the API.
    let vpc_id = status.vpc_id.clone().expect("vpcId");
    let cidrs: Vec<(SubnetTier, &str, &str)> =
        status.subnets.iter().map(|s| (s.tier, s.availability_zone.as_str(), s.cidr.as_str())).collect();
    assert_eq!(
        cidrs,
        vec![
            (SubnetTier::Public, "us-east-1a", "10.20.0.0/19"),
            (SubnetTier::Public, "us-east-1b", "10.20.32.0/19"),
            (SubnetTier::Public, "us-east-1c", "10.20.64.0/19"),
            (SubnetTier::Private, "us-east-1a", "10.20.96.0/19"),
            (SubnetTier::Private, "us-east-1b", "10.20.128.0/19"),
        ]
    );
    let igw = status.internet_gateway_id.clone().expect("internetGatewayId");
    assert_eq!(status.nat_gateway_ids.len(), 1);
    assert_eq!(status.route_table_ids.len(), 3);
    assert!(status.vpc_endpoint_ids.is_empty());
    let app = status.app_security_group_id.clone().expect("appSecurityGroupId");
    let link_id = status.vpc_link_id.clone().expect("vpcLinkId");
    let key_arn = status.kms_key_arn.clone().expect("kmsKeyArn");

    // moto: exactly one of each, where the status says, as the pattern says.
    let r = world.resources(&uid).await;
    let counts = r.counts();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("vpc", 1),
            ("subnet", 5),
            ("route table", 3),
            ("internet gateway", 1),
            ("elastic ip", 1),
            ("nat gateway", 1),
            ("nat instance", 0),
            ("security group", 2),
            ("vpc endpoint", 0),
            ("vpc link", 1),
            ("kms key", 1),
            ("kms alias", 1),
        ])
    );
    assert_eq!(r.vpcs[0].vpc_id(), Some(vpc_id.as_str()));
    assert_eq!(r.vpcs[0].cidr_block(), Some("10.20.0.0/16"));
    let ec2 = world.ec2();
    for (attribute, name) in [
        (aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames, "hostnames"),
        (aws_sdk_ec2::types::VpcAttributeName::EnableDnsSupport, "support"),
    ] {
        let a = ec2.describe_vpc_attribute().vpc_id(&vpc_id).attribute(attribute).send().await.expect("attribute");
        let on = a.enable_dns_hostnames().or(a.enable_dns_support()).and_then(|v| v.value());
        assert_eq!(on, Some(true), "DNS {name}");
    }
    for s in &status.subnets {
        let found = r.subnets.iter().find(|x| x.subnet_id() == Some(s.id.as_str())).expect("subnet in moto");
        assert_eq!(found.cidr_block(), Some(s.cidr.as_str()));
        assert_eq!(found.availability_zone(), Some(s.availability_zone.as_str()));
        assert_eq!(found.vpc_id(), Some(vpc_id.as_str()));
    }
    assert_eq!(r.gateways[0].internet_gateway_id(), Some(igw.as_str()));
    assert_eq!(
        r.gateways[0].attachments().iter().filter_map(|a| a.vpc_id()).collect::<Vec<_>>(),
        vec![vpc_id.as_str()]
    );
    let nat = &r.nats[0];
    assert_eq!(nat.nat_gateway_id(), Some(status.nat_gateway_ids[0].as_str()));
    let public = subnet_ids(&stack, SubnetTier::Public);
    let private = subnet_ids(&stack, SubnetTier::Private);
    assert!(public.contains(nat.subnet_id().unwrap_or_default()), "NAT in a public subnet");
    assert_eq!(
        nat.nat_gateway_addresses().iter().filter_map(|a| a.allocation_id()).collect::<Vec<_>>(),
        vec![r.addresses[0].allocation_id().unwrap_or_default()]
    );
    // Routes: public to the gateway, private to NAT, nothing else but the local route.
    let local = ("10.20.0.0/16".to_string(), "local".to_string());
    let nat_id = status.nat_gateway_ids[0].clone();
    assert_eq!(
        routes(&r),
        BTreeMap::from([
            ("rtb/public".to_string(), BTreeSet::from([local.clone(), ("0.0.0.0/0".into(), igw.clone())])),
            ("rtb/private/0".to_string(), BTreeSet::from([local.clone(), ("0.0.0.0/0".into(), nat_id.clone())])),
            ("rtb/private/1".to_string(), BTreeSet::from([local.clone(), ("0.0.0.0/0".into(), nat_id.clone())])),
        ])
    );
    let assoc = associations(&r);
    assert_eq!(assoc["rtb/public"], public);
    let private_assoc: BTreeSet<String> = assoc["rtb/private/0"].union(&assoc["rtb/private/1"]).cloned().collect();
    assert_eq!(private_assoc, private);
    // Security groups: the app group admits nothing; the VPC Link's goes out to the VPC only.
    let group = |c: &str| r.groups.iter().find(|g| tag(g.tags(), COMPONENT_TAG) == Some(c)).expect("group").clone();
    let app_group = group("sg/app");
    assert_eq!(app_group.group_id(), Some(app.as_str()));
    assert!(app_group.ip_permissions().is_empty());
    let link_group = group("sg/vpclink");
    assert!(link_group.ip_permissions().is_empty());
    let egress: Vec<String> = link_group
        .ip_permissions_egress()
        .iter()
        .flat_map(|p| {
            p.ip_ranges()
                .iter()
                .filter_map(|x| x.cidr_ip().map(|c| format!("{}:{c}", p.ip_protocol().unwrap_or_default())))
        })
        .collect();
    assert_eq!(egress, vec!["-1:10.20.0.0/16"]);
    // The VPC Link in the public subnets, behind its group.
    let vl = &r.vpc_links[0];
    assert_eq!(vl.vpc_link_id(), Some(link_id.as_str()));
    assert_eq!(vl.subnet_ids().iter().cloned().collect::<BTreeSet<_>>(), public);
    assert_eq!(vl.security_group_ids(), [link_group.group_id().unwrap_or_default().to_string()]);
    // The key, by alias.
    assert_eq!(r.aliases, vec![("alias/tinystacks/".to_string() + &world.ns.name + "/web", r.keys[0].0.clone())]);
    assert!(key_arn.ends_with(&r.keys[0].0));
    assert_eq!(r.keys[0].1, "Enabled");
    assert_tagged(&r, &world.ns.name, "web", &uid, &[("team", "a")]);
    let events = world.events("web").await;
    for reason in
        ["CreatedVpc", "CreatedSubnet", "CreatedRoute", "CreatedNatGateway", "CreatedVpcLink", "CreatedKmsKey"]
    {
        assert!(events.iter().any(|e| e == reason), "{reason} in {events:?}");
    }

    let deleting = Instant::now();
    world.delete("web").await;
    world.wait_gone("web", READY).await;
    eprintln!("PublicPrivate deleted after {:?}", deleting.elapsed());
    let left = world.resources(&uid).await;
    assert!(left.only_keys_pending_deletion(), "left behind: {:?} {:?}", left.counts(), left.keys);
    assert_eq!(left.keys.len(), 1, "the key waits out the 7-day window, tagged");
}

#[tokio::test]
async fn private_isolated_stack_has_no_route_out_and_endpoints_behind_443_from_the_vpc() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-pi").await;
    let _operator = world.operator("4s", &[]);
    let uid = world.stack("vault", json!({"network": {"pattern": "PrivateIsolated", "cidr": "10.30.0.0/22"}})).await;
    let stack = world.wait_ready("vault", READY).await;
    let status = stack.status.clone().expect("status");
    let vpc_id = status.vpc_id.clone().expect("vpc");
    assert_eq!(status.subnets.iter().filter(|s| s.tier == SubnetTier::Private).count(), 3);
    assert_eq!(status.subnets.iter().filter(|s| s.tier == SubnetTier::Isolated).count(), 3);
    assert!(status.internet_gateway_id.is_none() && status.nat_gateway_ids.is_empty());
    assert_eq!(status.vpc_endpoint_ids.len(), 6);
    assert_eq!(status.route_table_ids.len(), 4);

    let r = world.resources(&uid).await;
    let counts = r.counts();
    assert_eq!((counts["internet gateway"], counts["nat gateway"], counts["elastic ip"]), (0, 0, 0));
    assert_eq!((counts["subnet"], counts["vpc endpoint"], counts["security group"], counts["vpc link"]), (6, 6, 3, 1));
    // No route to the internet anywhere: only the local route, and S3's prefix list on the private side.
    let s3 = r.endpoints.iter().find(|e| e.service_name() == Some("com.amazonaws.us-east-1.s3")).expect("s3 endpoint");
    let s3_id = s3.vpc_endpoint_id().unwrap_or_default().to_string();
    for (component, routes) in routes(&r) {
        assert!(!routes.iter().any(|(d, _)| d == "0.0.0.0/0"), "{component}: {routes:?}");
        let non_local: Vec<_> = routes.iter().filter(|(_, t)| t != "local").collect();
        if component == "rtb/isolated" {
            assert!(non_local.is_empty(), "isolated has only the local route: {routes:?}");
        } else {
            assert!(non_local.iter().all(|(d, t)| d.starts_with("pl-") && *t == s3_id), "{component}: {routes:?}");
        }
    }
    assert_eq!(s3.route_table_ids().len(), 3);
    let private = subnet_ids(&stack, SubnetTier::Private);
    let endpoints_group =
        r.groups.iter().find(|g| tag(g.tags(), COMPONENT_TAG) == Some("sg/endpoints")).expect("endpoint group");
    let group_id = endpoints_group.group_id().unwrap_or_default().to_string();
    let ingress: Vec<(String, Option<i32>, Option<i32>, String)> = endpoints_group
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            p.ip_ranges().iter().map(move |x| {
                (
                    p.ip_protocol().unwrap_or_default().to_string(),
                    p.from_port(),
                    p.to_port(),
                    x.cidr_ip().unwrap_or_default().to_string(),
                )
            })
        })
        .collect();
    assert_eq!(ingress, vec![("tcp".to_string(), Some(443), Some(443), "10.30.0.0/22".to_string())]);
    assert!(endpoints_group.ip_permissions_egress().is_empty());
    let mut services = BTreeSet::new();
    for e in r.endpoints.iter().filter(|e| e.vpc_endpoint_type().is_some_and(|t| t.as_str() == "Interface")) {
        services
            .insert(e.service_name().unwrap_or_default().trim_start_matches("com.amazonaws.us-east-1.").to_string());
        assert_eq!(e.subnet_ids().iter().cloned().collect::<BTreeSet<_>>(), private);
        assert_eq!(e.groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>(), vec![group_id.as_str()]);
        assert_eq!(e.private_dns_enabled(), Some(true));
        assert_eq!(e.vpc_id(), Some(vpc_id.as_str()));
    }
    assert_eq!(
        services,
        BTreeSet::from(["ec2messages", "logs", "secretsmanager", "ssm", "ssmmessages"].map(String::from))
    );
    assert_eq!(r.vpc_links[0].subnet_ids().iter().cloned().collect::<BTreeSet<_>>(), private);
    assert_tagged(&r, &world.ns.name, "vault", &uid, &[]);

    // Drift: a deleted endpoint, and a route out added to the isolated tier by hand.
    let ssm = r.endpoints.iter().find(|e| e.service_name() == Some("com.amazonaws.us-east-1.ssm")).expect("ssm");
    ec2_delete_endpoint(&world, ssm.vpc_endpoint_id().unwrap_or_default()).await;
    world.wait_ready("vault", Duration::from_secs(20)).await;
    eventually("the ssm endpoint to be back", Duration::from_secs(15), || async {
        let r = world.resources(&uid).await;
        let n = r.endpoints.iter().filter(|e| e.service_name() == Some("com.amazonaws.us-east-1.ssm")).count();
        if n == 1 { Ok(()) } else { Err(format!("{n} ssm endpoints")) }
    })
    .await;
    let ec2 = world.ec2();
    let foreign = ec2.create_internet_gateway().send().await.expect("igw");
    let foreign = foreign.internet_gateway().and_then(|g| g.internet_gateway_id()).expect("igw id").to_string();
    ec2.attach_internet_gateway().internet_gateway_id(&foreign).vpc_id(&vpc_id).send().await.expect("attach");
    let isolated =
        r.route_tables.iter().find(|t| tag(t.tags(), COMPONENT_TAG) == Some("rtb/isolated")).expect("isolated");
    let isolated = isolated.route_table_id().unwrap_or_default().to_string();
    ec2.create_route()
        .route_table_id(&isolated)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&foreign)
        .send()
        .await
        .expect("route");
    eventually("the route out of the isolated tier to be removed", Duration::from_secs(15), || async {
        let r = world.resources(&uid).await;
        let out = routes(&r)["rtb/isolated"].iter().any(|(d, _)| d == "0.0.0.0/0");
        if out { Err("still there".to_string()) } else { Ok(()) }
    })
    .await;
    assert!(world.times("vault", "DriftRepaired").await >= 2);
    ec2.detach_internet_gateway().internet_gateway_id(&foreign).vpc_id(&vpc_id).send().await.expect("detach");
    ec2.delete_internet_gateway().internet_gateway_id(&foreign).send().await.expect("delete igw");

    world.delete("vault").await;
    world.wait_gone("vault", READY).await;
    let left = world.resources(&uid).await;
    assert!(left.only_keys_pending_deletion(), "left behind: {:?}", left.counts());
}

async fn ec2_delete_endpoint(world: &World, id: &str) {
    world.ec2().delete_vpc_endpoints().vpc_endpoint_ids(id).send().await.expect("delete endpoint");
}

/// Waits for `repaired` and a new `DriftRepaired` event; returns how long the repair took.
async fn repair<F, Fut>(world: &World, what: &str, before: i32, resync: Duration, repaired: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    eventually(what, resync + Duration::from_secs(10), || async {
        repaired().await?;
        let n = world.times("web", "DriftRepaired").await;
        if n > before { Ok(()) } else { Err(format!("no new DriftRepaired event ({n})")) }
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn drift_is_repaired_within_one_resync_and_spec_changes_converge_in_place() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-drift").await;
    let resync = Duration::from_secs(4);
    let _operator = world.operator("4s", &[]);
    let uid = world.stack("web", json!({"network": {"cidr": "10.40.0.0/16"}, "tags": {"team": "a"}})).await;
    let stack = world.wait_ready("web", READY).await;
    let status = stack.status.clone().expect("status");
    let ec2 = world.ec2();
    let r = world.resources(&uid).await;
    let table = |c: &str| {
        r.route_tables
            .iter()
            .find(|t| tag(t.tags(), COMPONENT_TAG) == Some(c))
            .and_then(|t| t.route_table_id())
            .unwrap_or_default()
            .to_string()
    };
    let drifted = || async { world.times("web", "DriftRepaired").await };
    let mut took = Vec::new();

    // A deleted route.
    let public_table = table("rtb/public");
    let before = drifted().await;
    ec2.delete_route()
        .route_table_id(&public_table)
        .destination_cidr_block("0.0.0.0/0")
        .send()
        .await
        .expect("delete route");
    took.push((
        "deleted route",
        repair(&world, "the public default route back", before, resync, || async {
            let r = world.resources(&uid).await;
            if routes(&r)["rtb/public"].iter().any(|(d, _)| d == "0.0.0.0/0") { Ok(()) } else { Err("missing".into()) }
        })
        .await,
    ));

    // A detached internet gateway.
    let igw = status.internet_gateway_id.clone().expect("igw");
    let vpc_id = status.vpc_id.clone().expect("vpc");
    let before = drifted().await;
    ec2.detach_internet_gateway().internet_gateway_id(&igw).vpc_id(&vpc_id).send().await.expect("detach");
    took.push((
        "detached gateway",
        repair(&world, "the gateway attached again", before, resync, || async {
            let r = world.resources(&uid).await;
            let attached =
                r.gateways.iter().any(|g| g.attachments().iter().any(|a| a.vpc_id() == Some(vpc_id.as_str())));
            if attached { Ok(()) } else { Err("detached".into()) }
        })
        .await,
    ));

    // A deleted subnet (private, zone b).
    let private_1 =
        r.subnets.iter().find(|s| tag(s.tags(), COMPONENT_TAG) == Some("subnet/private/1")).expect("subnet");
    let (old_id, cidr) =
        (private_1.subnet_id().unwrap_or_default().to_string(), private_1.cidr_block().unwrap_or_default().to_string());
    let before = drifted().await;
    ec2.delete_subnet().subnet_id(&old_id).send().await.expect("delete subnet");
    took.push((
        "deleted subnet",
        repair(&world, "the subnet back, associated", before, resync * 2, || async {
            let r = world.resources(&uid).await;
            let s = r
                .subnets
                .iter()
                .find(|s| tag(s.tags(), COMPONENT_TAG) == Some("subnet/private/1"))
                .ok_or("no subnet")?;
            let id = s.subnet_id().unwrap_or_default();
            let associated = associations(&r)["rtb/private/1"] == BTreeSet::from([id.to_string()]);
            if id != old_id && s.cidr_block() == Some(cidr.as_str()) && associated {
                Ok(())
            } else {
                Err(format!("{id} {associated}"))
            }
        })
        .await,
    ));

    // A removed tag.
    let public_0 = r.subnets.iter().find(|s| tag(s.tags(), COMPONENT_TAG) == Some("subnet/public/0")).expect("subnet");
    let public_0 = public_0.subnet_id().unwrap_or_default().to_string();
    let before = drifted().await;
    let team = aws_sdk_ec2::types::Tag::builder().key("team").build();
    ec2.delete_tags().resources(&public_0).tags(team).send().await.expect("delete tag");
    took.push((
        "removed tag",
        repair(&world, "the tag back", before, resync, || async {
            let r = world.resources(&uid).await;
            let s = r.subnets.iter().find(|s| s.subnet_id() == Some(public_0.as_str())).ok_or("no subnet")?;
            if tag(s.tags(), "team") == Some("a") { Ok(()) } else { Err("no tag".into()) }
        })
        .await,
    ));

    // An ingress rule added by hand to the application security group.
    let app = status.app_security_group_id.clone().expect("app group");
    let before = drifted().await;
    ec2.authorize_security_group_ingress()
        .group_id(&app)
        .ip_permissions(
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
                .build(),
        )
        .send()
        .await
        .expect("authorize");
    took.push((
        "extra ingress rule",
        repair(&world, "the extra rule revoked", before, resync, || async {
            let r = world.resources(&uid).await;
            let g = r.groups.iter().find(|g| g.group_id() == Some(app.as_str())).ok_or("no group")?;
            if g.ip_permissions().is_empty() { Ok(()) } else { Err(format!("{:?}", g.ip_permissions())) }
        })
        .await,
    ));
    eprintln!("drift repaired after (resync {resync:?}): {took:?}");
    // A repair is a Warning, as for every kind.
    let repairs: Vec<String> = event_reasons(&world.client, &world.ns.name, "web")
        .await
        .into_iter()
        .filter(|(_, reason)| reason == "DriftRepaired")
        .map(|(kind, _)| kind)
        .collect();
    assert!(!repairs.is_empty() && repairs.iter().all(|k| k == "Warning"), "{repairs:?}");
    world.wait_ready("web", Duration::from_secs(20)).await;

    // spec.tags: changed values, a new key, a removed key.
    world.patch_spec("web", json!({"tags": {"team": "b", "cost": "1"}})).await;
    world.wait_ready("web", Duration::from_secs(60)).await;
    let r = world.resources(&uid).await;
    assert_tagged(&r, &world.ns.name, "web", &uid, &[("team", "b"), ("cost", "1")]);
    // A merge patch keeps other keys; replace the whole map to drop one.
    let patch = json!([{"op": "replace", "path": "/spec/tags", "value": {"cost": "1"}}]);
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("patch");
    world.stacks().patch("web", &PatchParams::default(), &Patch::<()>::Json(patch)).await.expect("patch tags");
    world.wait_ready("web", Duration::from_secs(60)).await;
    let r = world.resources(&uid).await;
    assert!(r.all_tags().iter().all(|(_, t)| !t.contains_key("team")), "team removed everywhere");

    // natGateways: PerAz, then None with the VPC Link off.
    world.patch_spec("web", json!({"network": {"natGateways": "PerAz"}})).await;
    let stack = world.wait_ready("web", Duration::from_secs(60)).await;
    let nats = stack.status.as_ref().map(|s| s.nat_gateway_ids.clone()).unwrap_or_default();
    assert_eq!(nats.len(), 2);
    let r = world.resources(&uid).await;
    let rt = routes(&r);
    assert!(rt["rtb/private/0"].contains(&("0.0.0.0/0".to_string(), nats[0].clone())));
    assert!(rt["rtb/private/1"].contains(&("0.0.0.0/0".to_string(), nats[1].clone())));
    assert_eq!(r.vpcs[0].vpc_id(), Some(vpc_id.as_str()), "the same VPC");

    world.patch_spec("web", json!({"network": {"natGateways": "None", "vpcLink": false}})).await;
    let stack = world.wait_ready("web", Duration::from_secs(60)).await;
    let s = stack.status.clone().expect("status");
    assert!(s.nat_gateway_ids.is_empty() && s.vpc_link_id.is_none());
    let r = world.resources(&uid).await;
    assert_eq!((r.nats.len(), r.addresses.len(), r.vpc_links.len(), r.groups.len()), (0, 0, 0, 1), "{:?}", r.counts());
    let rt = routes(&r);
    assert!(!rt["rtb/private/0"].iter().chain(rt["rtb/private/1"].iter()).any(|(d, _)| d == "0.0.0.0/0"));
    for (what, took) in &took {
        assert!(*took < resync + Duration::from_secs(6), "{what} took {took:?}");
    }
    world.delete("web").await;
    world.wait_gone("web", READY).await;
    assert!(world.resources(&uid).await.only_keys_pending_deletion());
}

#[tokio::test]
async fn retain_leaves_the_resources_and_their_tags() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-retain").await;
    let _operator = world.operator("30s", &[]);
    let uid = world.stack("kept", json!({"deletionPolicy": "Retain", "network": {"natGateways": "None"}})).await;
    world.wait_ready("kept", READY).await;
    let before = world.resources(&uid).await.counts();
    world.delete("kept").await;
    world.wait_gone("kept", Duration::from_secs(30)).await;
    let r = world.resources(&uid).await;
    assert_eq!(r.counts(), before);
    assert_tagged(&r, &world.ns.name, "kept", &uid, &[]);
    assert!(r.keys.iter().all(|(_, s)| s == "Enabled"));
}

/// The expected resources of a default `PublicPrivate` Stack (one NAT gateway, a VPC Link).
fn one_public_private_stack() -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("vpc", 1),
        ("subnet", 5),
        ("route table", 3),
        ("internet gateway", 1),
        ("elastic ip", 1),
        ("nat gateway", 1),
        ("nat instance", 0),
        ("security group", 2),
        ("vpc endpoint", 0),
        ("vpc link", 1),
        ("kms key", 1),
        ("kms alias", 1),
    ])
}

#[tokio::test]
async fn the_standby_takes_over_a_killed_leader_mid_create_and_finishes_without_a_duplicate() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-failover").await;
    let replica = || {
        Operator::start(OperatorConfig {
            namespace: &world.ns.name,
            lease_name: "tinystacks-operator",
            resync: "30s",
            extra_args: vec!["--watch-namespace".into(), world.ns.name.clone()],
        })
    };
    let (first, second) = (replica(), replica());
    let uid = world.stack("fo", json!({"network": {"cidr": "10.70.0.0/16"}})).await;

    // Mid-create: the VPC and some subnets exist, the Stack is not Ready yet.
    let api = world.stacks();
    eventually("the create to be under way", READY, || async {
        let s = api.get("fo").await.map_err(|e| e.to_string())?;
        let subnets = s.status.as_ref().map_or(0, |st| st.subnets.len());
        if subnets >= 2 { Ok(()) } else { Err(format!("{subnets} subnets")) }
    })
    .await;
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(world.client.clone(), &world.ns.name);
    let holder = leases.get("tinystacks-operator").await.ok().and_then(|l| l.spec).and_then(|s| s.holder_identity);
    let (leader, standby) = if holder.as_deref() == Some(first.identity.as_str()) {
        (first, second)
    } else {
        assert_eq!(holder.as_deref(), Some(second.identity.as_str()), "one of the two holds the lease");
        (second, first)
    };
    let killed = Instant::now();
    drop(leader); // SIGKILL: no lease release, no clean shutdown

    eventually("the standby to hold the lease", Duration::from_secs(30), || async {
        let l = leases.get("tinystacks-operator").await.map_err(|e| e.to_string())?;
        let holder = l.spec.and_then(|s| s.holder_identity);
        if holder.as_deref() == Some(standby.identity.as_str()) { Ok(()) } else { Err(format!("{holder:?}")) }
    })
    .await;
    let took_over = killed.elapsed();
    world.wait_ready("fo", READY).await;
    eprintln!("failover: lease taken over {took_over:?} after the kill, Ready {:?} after it", killed.elapsed());
    assert!(took_over < Duration::from_secs(6 * 2 + 2), "taken over within about a lease duration: {took_over:?}");
    assert_eq!(world.resources(&uid).await.counts(), one_public_private_stack(), "no double create");
    let components = world.resources(&uid).await.components();
    assert!(components.values().all(|c| *c == 1), "one resource per component: {components:?}");

    world.delete("fo").await;
    world.wait_gone("fo", READY).await;
    let left = world.resources(&uid).await;
    assert!(left.only_keys_pending_deletion(), "left behind: {:?}", left.counts());
    drop(standby);
}

/// A request AWS refuses as invalid can never pass as it is: `Stalled`, never retried until the
/// Stack changes; the Stack is still deleted to nothing. The KMS API reference lists
/// `ValidationException` (HTTP 400) for a request whose values break a constraint, such as an
/// alias name outside `^[a-zA-Z0-9/_-]+$` (what a Stack named `web.v2`, admitted before the name
/// rule, makes); moto accepts what this test's Stack asks, so the proxy answers as KMS does.
#[tokio::test]
async fn a_request_aws_refuses_as_invalid_stalls_the_stack_without_retries() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-invalid").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = common::fault_proxy::FaultProxy::start(&moto).await;
    let message = "1 validation error detected: Value at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9/_-]+$";
    proxy.refuse("CreateAlias", "/refused", "ValidationException", message);
    let operator = world.operator("2s", &[("AWS_ENDPOINT_URL", proxy.url.as_str())]);
    let uid = world.stack("refused", json!({"network": {"cidr": "10.95.0.0/16", "natGateways": "None"}})).await;

    let stalled = wait_condition(&world.stacks(), "refused", "Stalled", "True", "AwsRejectedValue").await;
    let said = condition(&stalled, "Stalled").map(|c| c["message"].to_string()).unwrap_or_default();
    assert!(said.contains("kms:CreateAlias") && said.contains("ValidationException"), "{said}");
    // Sent once: the passes the watches wake afterwards (the Stalled status write itself, the
    // link's status) send nothing for the same spec; nor in three resync periods and more than a
    // transient error's first backoff steps (1, 2, 4 s). A stalled Stack waits for a change, so
    // the clock is a paused Stack beside it, which the operator reconciles once per resync.
    let clock: Stack = serde_json::from_value(json!({
        "apiVersion": "tinystacks.io/v1alpha1", "kind": "Stack",
        "metadata": {"name": "clock", "annotations": {"tinystacks.io/paused": "true"}},
        "spec": {"accountLinkRef": {"name": world.link}},
    }))
    .expect("stack");
    world.stacks().create(&PostParams::default(), &clock).await.expect("create the clock");
    wait_reconciles(&operator, "Stack", 2.0).await;
    let attempts = proxy.count("CreateAlias");
    assert_eq!(attempts, 1, "CreateAlias was sent again for the spec AWS refused");
    wait_reconciles(&operator, "Stack", 4.0).await;
    assert_eq!(proxy.count("CreateAlias"), attempts, "CreateAlias was tried again with the same Stack");

    world.delete("refused").await;
    world.wait_gone("refused", READY).await;
    let left = world.resources(&uid).await;
    assert!(left.only_keys_pending_deletion(), "left behind: {:?}", left.counts());
    drop(operator);
}

/// Mixed faults at rates that hit: every kind of throttling answer, 500s, 503s, answers lost after
/// the change was made, latency, and NAT gateways and VPC endpoints kept in their in-between
/// states. Both patterns converge to one resource per component, hold the security invariants, and
/// leave nothing after deletion.
#[tokio::test]
async fn mixed_aws_faults_converge_to_one_of_each_and_leave_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-faults-fast").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = common::fault_proxy::FaultProxy::start(&moto).await;
    let operator = world.operator("10s", &[("AWS_ENDPOINT_URL", proxy.url.as_str())]);
    let faults = Faults {
        throttle: 0.10,
        server_error: 0.04,
        unavailable: 0.04,
        drop_after: 0.04,
        latency: Duration::from_millis(10),
    };
    proxy.set_faults(faults, 5);
    proxy.hold_in_between_states(3);
    let started = Instant::now();
    let public = world.stack("public", json!({"network": {"cidr": "10.93.0.0/16"}})).await;
    let isolated =
        world.stack("isolated", json!({"network": {"pattern": "PrivateIsolated", "cidr": "10.94.0.0/22"}})).await;
    world.wait_ready("public", READY).await;
    world.wait_ready("isolated", READY).await;
    eprintln!("both Stacks Ready {:?} under mixed faults", started.elapsed());
    assert_eq!(world.resources(&public).await.counts(), one_public_private_stack(), "one of each under faults");
    for uid in [&public, &isolated] {
        let components = world.resources(uid).await.components();
        assert!(components.values().all(|c| *c == 1), "one resource per component: {components:?}");
    }
    assert!(proxy.rewritten("DescribeNatGateways") > 0, "a NAT gateway was seen pending");
    assert!(proxy.rewritten("DescribeVpcEndpoints") > 0, "VPC endpoints were seen pending");
    common::invariants::assert_security_invariants(&world.account, &[]).await;

    for name in ["public", "isolated"] {
        world.delete(name).await;
    }
    for name in ["public", "isolated"] {
        world.wait_gone(name, READY).await;
    }
    for uid in [&public, &isolated] {
        let left = world.resources(uid).await;
        assert!(left.only_keys_pending_deletion(), "left behind under faults: {:?}", left.counts());
    }
    common::invariants::assert_security_invariants(&world.account, &[]).await;
    let counts = proxy.fault_counts();
    eprintln!("faults injected in {:?}: {counts:?}", started.elapsed());
    assert!(counts.throttled > 0 && counts.server_errors > 0 && counts.unavailable > 0 && counts.dropped > 0);
    for code in ["RequestLimitExceeded", "ThrottlingException", "TooManyRequestsException"] {
        assert!(counts.throttle_codes.get(code).is_some_and(|n| *n > 0), "{code} never answered: {counts:?}");
    }
    drop(operator);
}

#[tokio::test]
#[ignore = "long (minutes): run with `make test-long`"]
async fn throttling_errors_latency_and_lost_answers_converge_to_one_of_each_and_back_off() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-faults").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = common::fault_proxy::FaultProxy::start(&moto).await;
    let operator = world.operator("10s", &[("AWS_ENDPOINT_URL", proxy.url.as_str())]);

    // A clean create, for the request rate of a Stack converging undisturbed.
    let started = Instant::now();
    let clean_uid = world.stack("clean", json!({"network": {"cidr": "10.90.0.0/16", "natGateways": "None"}})).await;
    world.wait_ready("clean", READY).await;
    let clean_time = started.elapsed();
    let clean_rate = proxy.fault_counts().requests as f64 / clean_time.as_secs_f64();

    // Everything throttled for 20 s: the limiter paces every call of the throttled services.
    proxy.set_faults(Faults { throttle: 1.0, ..Faults::default() }, 7);
    let before = proxy.fault_counts().requests;
    let throttled_uid =
        world.stack("throttled", json!({"network": {"cidr": "10.91.0.0/16", "natGateways": "None"}})).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let measured_from = proxy.fault_counts().requests;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let throttled_rate = (proxy.fault_counts().requests - measured_from) as f64 / 10.0;
    eprintln!(
        "request rate: {clean_rate:.1}/s converging undisturbed, {throttled_rate:.1}/s under full throttling ({} requests in the first 10 s)",
        measured_from - before
    );
    assert!(
        throttled_rate < clean_rate,
        "the request rate drops under throttling: {throttled_rate:.1}/s throttled, {clean_rate:.1}/s undisturbed"
    );

    // Mixed faults, as a bad day of AWS: throttling, 500s, 503s, answers lost after the change
    // was made, latency, and NAT gateways that stay `pending` and `deleting` for a while.
    let faults = Faults {
        throttle: 0.15,
        server_error: 0.03,
        unavailable: 0.03,
        drop_after: 0.03,
        latency: Duration::from_millis(20),
    };
    proxy.set_faults(faults, 11);
    proxy.hold_in_between_states(5);
    let mixed = Instant::now();
    let full_uid = world.stack("full", json!({"network": {"cidr": "10.92.0.0/16"}})).await;
    let isolated_uid =
        world.stack("isolated", json!({"network": {"pattern": "PrivateIsolated", "cidr": "10.95.0.0/22"}})).await;
    world.wait_ready("throttled", Duration::from_secs(400)).await;
    world.wait_ready("full", Duration::from_secs(400)).await;
    world.wait_ready("isolated", Duration::from_secs(400)).await;
    eprintln!("both Stacks Ready {:?} after the mixed faults began", mixed.elapsed());
    assert_eq!(world.resources(&full_uid).await.counts(), one_public_private_stack(), "one of each under faults");
    let components = world.resources(&full_uid).await.components();
    assert!(components.values().all(|c| *c == 1), "one resource per component: {components:?}");
    for uid in [&clean_uid, &throttled_uid, &isolated_uid] {
        let components = world.resources(uid).await.components();
        assert!(components.values().all(|c| *c == 1), "one resource per component: {components:?}");
    }
    common::invariants::assert_security_invariants(&world.account, &[]).await;

    for name in ["clean", "throttled", "full", "isolated"] {
        world.delete(name).await;
    }
    let deleting = Instant::now();
    for name in ["clean", "throttled", "full", "isolated"] {
        world.wait_gone(name, Duration::from_secs(400)).await;
    }
    eprintln!("all four Stacks gone {:?} after the deletion began", deleting.elapsed());
    common::invariants::assert_security_invariants(&world.account, &[]).await;
    for uid in [&clean_uid, &throttled_uid, &full_uid, &isolated_uid] {
        let left = world.resources(uid).await;
        assert!(left.only_keys_pending_deletion(), "left behind under faults: {:?}", left.counts());
    }
    let counts = proxy.fault_counts();
    eprintln!("faults injected: {counts:?}");
    assert!(counts.throttled > 0 && counts.server_errors > 0 && counts.unavailable > 0 && counts.dropped > 0);
    drop(operator);
}

/// Stops the test environment's kube-apiserver, waits `down`, and starts it again with the same
/// command line, the way `hack/testenv.sh` launches it (its own session, pid in the pid file, so
/// that `hack/testenv.sh down` still stops it).
fn restart_apiserver(down: Duration) {
    let state = std::env::var("TINYSTACKS_STATE").expect("TINYSTACKS_STATE (source the testenv env file)");
    let pid_file = format!("{state}/pids/kube-apiserver.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("the API server's pid file").trim().to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the API server's command line");
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let kill = |signal: &str| std::process::Command::new("kill").args([signal, &pid]).status();
    let _ = kill("-TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill("-KILL");
    std::thread::sleep(down);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(format!("{state}/logs/kube-apiserver.log"))
        .expect("the API server's log");
    // `setsid -f` forks the daemon off and returns at once.
    let started = std::process::Command::new("setsid")
        .args(["-f", "bash", "-c", r#"echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@""#, &pid_file])
        .args(&args)
        .current_dir(&state)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .status()
        .expect("start the API server again");
    assert!(started.success(), "setsid: {started}");
}

#[tokio::test]
async fn an_api_server_restart_mid_create_is_survived_and_the_watches_come_back() {
    let _lock = OPERATOR_LOCK.lock().await;
    let started = Instant::now();
    let world = World::new("stack-apiserver").await;
    // A long resync: what happens after the restart comes from the watches, not from a resync.
    let mut operator = world.operator("5m", &[]);
    let uid =
        world.stack("rs", json!({"network": {"cidr": "10.80.0.0/16", "natGateways": "None", "vpcLink": false}})).await;
    let api = world.stacks();
    eventually("the create to be under way", READY, || async {
        let s = api.get("rs").await.map_err(|e| e.to_string())?;
        if s.status.and_then(|st| st.vpc_id).is_some() { Ok(()) } else { Err("no VPC yet".to_string()) }
    })
    .await;

    tokio::task::spawn_blocking(|| restart_apiserver(Duration::from_secs(3))).await.expect("restart");
    eventually("the API server to answer again", Duration::from_secs(60), || async {
        client().await.apiserver_version().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    world.wait_ready("rs", READY).await;

    // A change made after the restart arrives through the re-established watch.
    let patched = Instant::now();
    world.patch_spec("rs", json!({"tags": {"after": "restart"}})).await;
    world.wait_ready("rs", Duration::from_secs(60)).await;
    eprintln!(
        "the spec change after the restart was Ready {:?} later; {:?} in all",
        patched.elapsed(),
        started.elapsed()
    );
    let r = world.resources(&uid).await;
    assert!(r.all_tags().iter().all(|(_, t)| t.get("after").map(String::as_str) == Some("restart")));
    assert_eq!(operator.exited(), None, "the operator kept running:\n{}", operator.logs());

    world.delete("rs").await;
    world.wait_gone("rs", READY).await;
    assert!(world.resources(&uid).await.only_keys_pending_deletion());
}

/// Runs the operator armed to exit right after mutation `n` until it exits or `done` holds;
/// returns whether it crashed.
async fn run_until_crash<F, Fut>(world: &World, n: usize, done: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let n = n.to_string();
    let mut operator = world.operator("30s", &[(FAILPOINT, n.as_str())]);
    let deadline = Instant::now() + READY;
    let outcome = loop {
        if let Some(code) = operator.exited() {
            break Some(code);
        }
        if done().await {
            break None;
        }
        assert!(Instant::now() < deadline, "neither a crash nor the end after {READY:?}:\n{}", operator.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match outcome {
        Some(137) => true,
        Some(code) => panic!("the operator exited with {code}:\n{}", operator.logs()),
        None => false,
    }
}

#[tokio::test]
#[ignore = "long (minutes): run with `make test-long`"]
async fn a_crash_after_any_mutation_of_create_or_delete_converges_to_one_of_each_and_leaves_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-crash").await;
    let (create_points, delete_points) =
        crash_sweep(&world, json!({"network": {"cidr": "10.50.0.0/16"}}), one_public_private_stack()).await;
    assert!(create_points >= 25, "a crash after each mutating call of the create ({create_points})");
    assert!(delete_points >= 20, "a crash after each mutating call of the delete ({delete_points})");
}

#[tokio::test]
#[ignore = "long (minutes): run with `make test-long`"]
async fn a_crash_after_any_mutation_of_a_nat_instance_stack_converges_to_one_of_each_and_leaves_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-natcrash").await;
    let spec = json!({"network": {"cidr": "10.51.0.0/16", "natType": "Instance", "vpcLink": false}});
    let mut expected = one_public_private_stack();
    // The security groups are the app group and the NAT instances' (no VPC Link's).
    expected.extend([("nat gateway", 0), ("nat instance", 1), ("vpc link", 0), ("security group", 2)]);
    let (create_points, delete_points) = crash_sweep(&world, spec, expected).await;
    assert!(create_points >= 28, "a crash after each mutating call of the create ({create_points})");
    assert!(delete_points >= 20, "a crash after each mutating call of the delete ({delete_points})");
}

/// Creates and deletes Stacks of `spec`, the operator crashing right after mutation n of each
/// (n = 1, 2, ...) until one runs through without a crash; after each, a clean operator must
/// converge to exactly `expected` and delete to nothing. Returns the crash points of the create
/// and of the delete.
async fn crash_sweep(world: &World, spec: Value, expected: BTreeMap<&'static str, usize>) -> (usize, usize) {
    let started = Instant::now();
    let (mut create_points, mut delete_points) = (0, 0);
    let (mut create_done, mut delete_done) = (false, false);
    for n in 1.. {
        if create_done && delete_done {
            break;
        }
        let name = format!("crash-{n}");
        let uid = world.stack(&name, spec.clone()).await;
        let api = world.stacks();
        let ready = || async {
            api.get(&name)
                .await
                .ok()
                .and_then(|s| serde_json::to_value(&s).ok())
                .and_then(|v| condition(&v, "Ready"))
                .is_some_and(|c| c["status"] == "True")
        };
        // Create, crashing right after mutation n; then a clean operator finishes it.
        if !create_done {
            if run_until_crash(world, n, ready).await {
                create_points += 1;
            } else {
                create_done = true;
            }
        }
        {
            let _clean = world.operator("30s", &[]);
            world.wait_ready(&name, READY).await;
        }
        let counts = world.resources(&uid).await.counts();
        assert_eq!(counts, expected, "exactly one of each after a crash after mutation {n} of the create");
        let components = world.resources(&uid).await.components();
        assert!(components.values().all(|c| *c == 1), "one resource per component: {components:?}");

        // Delete, crashing right after mutation n; then a clean operator finishes it.
        world.delete(&name).await;
        let gone = || async { api.get_opt(&name).await.ok().flatten().is_none() };
        if !delete_done {
            if run_until_crash(world, n, gone).await {
                delete_points += 1;
            } else {
                delete_done = true;
            }
        }
        {
            let _clean = world.operator("30s", &[]);
            world.wait_gone(&name, READY).await;
        }
        let left = world.resources(&uid).await;
        assert!(
            left.only_keys_pending_deletion(),
            "after a crash after mutation {n} of the delete: {:?}",
            left.counts()
        );
    }
    eprintln!(
        "crash points: {create_points} in create, {delete_points} in delete, all converged; took {:?}",
        started.elapsed()
    );
    (create_points, delete_points)
}

/// The AWS calls counted in the operator's metrics.
fn aws_calls(operator: &Operator) -> u64 {
    metric_sum(&scrape(operator), "tinystacks_aws_requests_total{", "") as u64
}

#[tokio::test]
#[ignore = "long (minutes): run with `make test-long`"]
async fn fifty_stacks_converge_and_steady_state_calls_do_not_grow_with_their_number() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-scale").await;
    let resync = Duration::from_secs(5);
    let operator = world.operator("5s", &[("TINYSTACKS_AWS_MUTATION_RATE_SCALE", "25")]);
    let mut figures = Vec::new();
    let mut created = 0;
    for target in [1usize, 10, 50] {
        let started = Instant::now();
        for i in created..target {
            // Without NAT and VPC Link: fewer resources to make, the same resource types to list.
            world.stack(&format!("s{i:02}"), json!({"network": {"cidr": "10.60.0.0/16", "natGateways": "None"}})).await;
        }
        created = target;
        for i in 0..target {
            world.wait_ready(&format!("s{i:02}"), Duration::from_secs(600)).await;
        }
        let converged = started.elapsed();
        // Let the convergence's own calls pass, then count over three resync periods.
        tokio::time::sleep(resync * 2).await;
        let before = aws_calls(&operator);
        let window = resync * 3;
        tokio::time::sleep(window).await;
        let calls = aws_calls(&operator) - before;
        let per_resync = calls as f64 / 3.0;
        eprintln!(
            "{target} stacks: converged in {converged:?}; {calls} AWS calls in {window:?} = {per_resync:.1} per resync"
        );
        figures.push((target, per_resync));
    }
    eprintln!("AWS calls per steady-state resync: {figures:?}");
    let (_, one) = figures[0];
    for (n, per) in &figures {
        assert!(*per <= one * 1.5 + 3.0, "{n} stacks: {per} calls per resync, against {one} for one stack");
    }
}

/// The value of the counter `name{labels}` in the operator's metrics (0 when it has no sample).
fn counter(operator: &Operator, series: &str) -> f64 {
    metric_sum(&scrape(operator), &format!("{series} "), "")
}

/// Every VPC that carries `tinystacks.io/owner` = `Stack/<ns>/<name>`, whatever its UID tag.
async fn vpcs_named(world: &World, name: &str) -> Vec<aws_sdk_ec2::types::Vpc> {
    let owner = format!("Stack/{}/{name}", world.ns.name);
    let filter = Filter::builder().name("tag:tinystacks.io/owner").values(owner).build();
    world.ec2().describe_vpcs().filters(filter).send().await.expect("vpcs").vpcs().to_vec()
}

/// The Stack's `Stalled` condition once it is `True` with `reason` and its message contains
/// `contains`.
async fn wait_stalled(world: &World, name: &str, reason: &str, contains: &str) -> String {
    let api = world.stacks();
    eventually(&format!("Stack {name} Stalled ({reason})"), READY, || async {
        let s = api.get(name).await.map_err(|e| e.to_string())?;
        let v = serde_json::to_value(&s).map_err(|e| e.to_string())?;
        match condition(&v, "Stalled") {
            Some(c) if c["status"] == "True" && c["reason"] == reason => {
                let message = c["message"].as_str().unwrap_or_default().to_string();
                if message.contains(contains) { Ok(message) } else { Err(message) }
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test]
async fn two_installs_on_the_same_stack_build_one_network_and_the_claim_can_be_moved() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-installs").await;
    // A second install: its own namespace and Lease, watching the same namespace.
    let other_ns = TestNamespace::new(&world.client, "stack-install-b").await;
    let install = |namespace: &str, lease: &str| {
        Operator::start(OperatorConfig {
            namespace,
            lease_name: lease,
            resync: "5s",
            extra_args: vec!["--watch-namespace".into(), world.ns.name.clone()],
        })
    };
    let a = install(&world.ns.name, "tinystacks-operator");
    let b = install(&other_ns.name, "install-b");
    let claims = [format!("{}/tinystacks-operator", world.ns.name), format!("{}/install-b", other_ns.name)];
    let uid = world.stack("both", json!({"network": {"cidr": "10.71.0.0/16"}})).await;

    let stack = world.wait_ready("both", READY).await;
    assert_eq!(world.resources(&uid).await.counts(), one_public_private_stack(), "one network, not two");
    let components = world.resources(&uid).await.components();
    assert!(components.values().all(|c| *c == 1), "one resource per component: {components:?}");
    let claim = stack.annotations().get("tinystacks.io/claimed-by").cloned().expect("the Stack is claimed");
    let (owner, other) = if claim == claims[0] { (&a, &b) } else { (&b, &a) };
    assert!(claims.contains(&claim), "claimed by one of the two installs: {claim}");

    // The other install left it alone: no AWS call at all (the link is a paused fixture), a
    // counted skip and a log line.
    let skipped = "tinystacks_claimed_elsewhere_total{kind=\"Stack\"}";
    eventually("the other install to count its skips", WAIT_METRIC, || async {
        let n = counter(other, skipped);
        if n >= 1.0 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    assert_eq!(aws_calls(other), 0, "the install that does not hold the claim called AWS");
    assert!(aws_calls(owner) > 0);
    assert!(other.logs().contains("claimed by another install"), "the skip is logged");

    // A person moves the Stack to the other install by rewriting the annotation; from then on the
    // other install acts on it (a spec change converges) and the first leaves it alone.
    let moved_to = if claim == claims[0] { &claims[1] } else { &claims[0] };
    let patch = json!({"metadata": {"annotations": {"tinystacks.io/claimed-by": moved_to}}});
    world.stacks().patch("both", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("move the claim");
    let owner_skips = counter(owner, skipped);
    world.patch_spec("both", json!({"tags": {"moved": "yes"}})).await;
    world.wait_ready("both", READY).await;
    let r = world.resources(&uid).await;
    assert!(r.all_tags().iter().all(|(_, t)| t.get("moved").map(String::as_str) == Some("yes")));
    assert!(counter(owner, skipped) > owner_skips, "the first install now skips the Stack");
    assert!(aws_calls(other) > 0, "the new holder did the work");

    world.delete("both").await;
    world.wait_gone("both", READY).await;
    let left = world.resources(&uid).await;
    assert!(left.only_keys_pending_deletion(), "left behind: {:?}", left.counts());
    assert!(vpcs_named(&world, "both").await.is_empty(), "no VPC of the Stack is left, whatever its UID tag");
    drop((a, b));
}

const WAIT_METRIC: Duration = Duration::from_secs(30);

#[tokio::test]
async fn an_edited_owner_uid_tag_stalls_the_stack_and_nothing_is_made_again_or_orphaned() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-owner-tag").await;
    // A short resync: the inventory is listed again within seconds of the edit.
    let operator = world.operator("3s", &[]);
    let spec = json!({"network": {"cidr": "10.72.0.0/16", "natGateways": "None", "vpcLink": false}});
    let uid = world.stack("edited", spec).await;
    let stack = world.wait_ready("edited", READY).await;
    let vpc = stack.status.as_ref().and_then(|s| s.vpc_id.clone()).expect("vpcId");
    let before = world.resources(&uid).await.counts();

    // Someone changes the VPC's owner-uid tag by hand.
    let ec2 = world.ec2();
    let tag = |value: &str| aws_sdk_ec2::types::Tag::builder().key(UID_TAG).value(value).build();
    ec2.create_tags().resources(&vpc).tags(tag("someone-else")).send().await.expect("edit the tag");
    let message = wait_stalled(&world, "edited", "OwnershipConflict", &vpc).await;
    for part in ["someone-else", &uid, "set the tag back"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    let vpcs = vpcs_named(&world, "edited").await;
    assert_eq!(vpcs.len(), 1, "no second VPC was made: {vpcs:?}");
    let events = world.events("edited").await;
    assert!(events.iter().any(|r| r == "OwnershipConflict"), "a Warning Event says so: {events:?}");

    // Deleting the Stack deletes nothing while the tag disagrees: the VPC would be left behind
    // with nothing to find it by.
    let errors = "tinystacks_reconcile_errors_total{kind=\"Stack\",reason=\"OwnershipConflict\"}";
    let seen = counter(&operator, errors);
    world.delete("edited").await;
    eventually("the deletion to meet the conflict", READY, || async {
        let n = counter(&operator, errors);
        if n > seen { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    wait_stalled(&world, "edited", "OwnershipConflict", &vpc).await;
    let mut during = world.resources(&uid).await.counts();
    during.insert("vpc", during["vpc"] + 1); // the edited VPC no longer carries the UID
    assert_eq!(during, before, "nothing was deleted while the conflict stands");

    // The tag set back, the deletion goes on and leaves nothing.
    ec2.create_tags().resources(&vpc).tags(tag(&uid)).send().await.expect("restore the tag");
    world.wait_gone("edited", READY).await;
    assert!(world.resources(&uid).await.only_keys_pending_deletion());
    assert!(vpcs_named(&world, "edited").await.is_empty(), "the VPC went too");
}

#[tokio::test]
async fn a_stack_created_again_under_a_retained_ones_name_does_not_take_its_resources() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-again").await;
    let _operator = world.operator("3s", &[]);
    let spec = json!({"deletionPolicy": "Retain", "network": {"cidr": "10.73.0.0/16", "natGateways": "None", "vpcLink": false}});
    let first = world.stack("again", spec.clone()).await;
    world.wait_ready("again", READY).await;
    let kept = world.resources(&first).await.counts();
    world.delete("again").await;
    world.wait_gone("again", READY).await;

    // Same name, new UID: stalled, saying why and what to do; nothing made, nothing taken.
    let second = world.stack("again", spec).await;
    let message = wait_stalled(&world, "again", "OwnershipConflict", "Retain").await;
    assert!(
        message.contains(&first) && message.contains(&second) && message.contains("not supported yet"),
        "{message}"
    );
    assert_eq!(vpcs_named(&world, "again").await.len(), 1, "no second VPC");
    assert!(world.resources(&second).await.counts().values().all(|n| *n == 0), "the new Stack made nothing");

    // It made nothing, so it goes at once, and the retained resources stay as they were.
    world.delete("again").await;
    world.wait_gone("again", READY).await;
    assert_eq!(world.resources(&first).await.counts(), kept, "the retained resources are untouched");
}

#[tokio::test]
async fn a_namespace_dropped_from_the_link_while_its_stack_is_deleted_stalls_the_deletion() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-disallowed").await;
    let _operator = world.operator("30s", &[]);
    let spec = json!({"network": {"cidr": "10.74.0.0/16", "natGateways": "None", "vpcLink": false}});
    let uid = world.stack("dropped", spec).await;
    world.wait_ready("dropped", READY).await;
    let before = world.resources(&uid).await.counts();

    // The link drops the namespace; then the Stack is deleted: its resources cannot be reached.
    let links = Api::<AwsAccountLink>::all(world.client.clone());
    let allow = |namespaces: Vec<String>| json!({"spec": {"allowedNamespaces": namespaces}});
    links.patch(&world.link, &PatchParams::default(), &Patch::Merge(allow(vec![]))).await.expect("drop the namespace");
    wait_stalled(&world, "dropped", "AccountLinkNotAllowed", "allowedNamespaces").await;
    world.delete("dropped").await;
    let message = wait_stalled(&world, "dropped", "AccountLinkNotAllowed", "cannot be deleted").await;
    assert!(message.contains(&world.ns.name) && message.contains("allowedNamespaces again"), "{message}");
    let s = serde_json::to_value(world.stacks().get("dropped").await.expect("stack")).expect("json");
    assert_eq!(condition(&s, "Reconciling").expect("Reconciling")["status"], "False");
    assert_eq!(world.resources(&uid).await.counts(), before, "nothing deleted, nothing lost track of");

    // Allowed again (the link's change wakes the Stack), the deletion finishes.
    links
        .patch(&world.link, &PatchParams::default(), &Patch::Merge(allow(vec![world.ns.name.clone()])))
        .await
        .expect("allow");
    world.wait_gone("dropped", READY).await;
    assert!(world.resources(&uid).await.only_keys_pending_deletion());
}

/// Whether the Lease `name` in `ns` is held by `identity` and was renewed after `after`.
async fn holds_lease(client: &Client, ns: &str, identity: &str, after: Timestamp) -> Result<(), String> {
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), ns);
    let spec = leases.get("tinystacks-operator").await.map_err(|e| e.to_string())?.spec.unwrap_or_default();
    let renewed = spec.renew_time.map(|t| t.0);
    match (spec.holder_identity.as_deref(), renewed) {
        (Some(holder), Some(renewed)) if holder == identity && renewed > after => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test]
async fn the_leader_keeps_running_through_a_20s_api_server_outage_and_leads_again() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-outage").await;
    // Leader election on, with the harness's 6 s lease: the outage outlasts it three times.
    let mut operator = Operator::start(OperatorConfig {
        namespace: &world.ns.name,
        lease_name: "tinystacks-operator",
        resync: "5m",
        extra_args: vec!["--watch-namespace".into(), world.ns.name.clone()],
    });
    let spec = json!({"network": {"cidr": "10.75.0.0/16", "natGateways": "None", "vpcLink": false}});
    let uid = world.stack("outage", spec).await;
    world.wait_ready("outage", READY).await;

    let down = Instant::now();
    tokio::task::spawn_blocking(|| restart_apiserver(Duration::from_secs(20))).await.expect("restart");
    eventually("the API server to answer again", Duration::from_secs(60), || async {
        client().await.apiserver_version().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    let back = Timestamp::now();
    eprintln!("the API server was away {:?}", down.elapsed());
    assert_eq!(operator.exited(), None, "the operator kept running:\n{}", operator.logs());
    let client = client().await;
    eventually("the operator to lead again", Duration::from_secs(60), || {
        holds_lease(&client, &world.ns.name, &operator.identity, back)
    })
    .await;
    assert!(operator.logs().contains("lost the leader lease: controllers stopped"), "leadership was dropped");
    // The lease is written before the line saying so: wait for the line.
    eventually("the operator to log that it leads again", Duration::from_secs(10), || async {
        match operator.logs().matches("became leader").count() {
            2 => Ok(()),
            n => Err(format!("`became leader` logged {n} times")),
        }
    })
    .await;

    // The controllers run again: a change converges, and the deletion leaves nothing.
    let patched = Instant::now();
    world.patch_spec("outage", json!({"tags": {"after": "outage"}})).await;
    world.wait_ready("outage", READY).await;
    eprintln!("a spec change after leading again was Ready {:?} later", patched.elapsed());
    let r = world.resources(&uid).await;
    assert!(r.all_tags().iter().all(|(_, t)| t.get("after").map(String::as_str) == Some("outage")));
    world.delete("outage").await;
    world.wait_gone("outage", READY).await;
    assert!(world.resources(&uid).await.only_keys_pending_deletion());
    assert_eq!(operator.exited(), None);
}

/// `status.plan` of the Stack `name`.
async fn plan_of(world: &World, name: &str) -> tinystacks_operator::api::PlanStatus {
    let stack = world.stacks().get(name).await.expect("stack");
    stack.status.and_then(|s| s.plan).unwrap_or_default()
}

/// Waits until the Stack is held (`Ready=False`, `reason`) with a plan of its current generation
/// that `accept` takes; returns that plan.
async fn wait_held(
    world: &World,
    name: &str,
    reason: &str,
    accept: impl Fn(&tinystacks_operator::api::PlanStatus) -> bool,
) -> tinystacks_operator::api::PlanStatus {
    eventually(&format!("Stack {name} held ({reason})"), Duration::from_secs(30), || async {
        let s = world.stacks().get(name).await.map_err(|e| e.to_string())?;
        let v = serde_json::to_value(&s).map_err(|e| e.to_string())?;
        let ready = condition(&v, "Ready");
        let plan = s.status.and_then(|s| s.plan).unwrap_or_default();
        let held = ready.as_ref().is_some_and(|c| {
            c["status"] == "False" && c["reason"] == reason && c["observedGeneration"] == v["metadata"]["generation"]
        });
        if held && plan.observed_generation == s.metadata.generation && accept(&plan) {
            Ok(plan)
        } else {
            Err(format!("{ready:?} {plan:?}"))
        }
    })
    .await
}

/// Waits until the operator has run `n` more reconciles of Stacks than `before` (a count taken
/// earlier with [`reconciles`]).
async fn wait_reconciles_since(operator: &Operator, before: f64, n: f64) {
    eventually(&format!("{n} more Stack reconciles"), Duration::from_secs(30), || async {
        let now = reconciles(operator, "Stack");
        if now >= before + n { Ok(()) } else { Err(format!("{now}")) }
    })
    .await;
}

fn change_keys(plan: &tinystacks_operator::api::PlanStatus) -> Vec<String> {
    plan.changes.iter().map(|c| format!("{:?} {} {}", c.action, c.resource, c.name)).collect()
}

/// `changePolicy: Manual` on a new Stack: the plan (every resource of the network, in order) is
/// in status and nothing is made in AWS, over several resyncs, until `approvedPlan` names it; then
/// the Stack converges to Ready with an empty plan. Later, a route deleted by hand is planned and
/// held; an approval of that plan after AWS changed again (a rule added by hand) does nothing,
/// and the plan has a new id, whose approval repairs both. Deleting a `Manual` Stack proceeds.
#[tokio::test]
async fn manual_changes_nothing_until_the_plan_is_approved_and_an_outdated_approval_does_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-manual").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = common::fault_proxy::FaultProxy::start(&moto).await;
    let operator = world.operator("3s", &[("AWS_ENDPOINT_URL", proxy.url.as_str())]);
    let network = json!({"cidr": "10.71.0.0/16", "natGateways": "None", "vpcLink": false});
    let uid = world.stack("web", json!({"changePolicy": "Manual", "network": network})).await;

    let plan = wait_held(&world, "web", "AwaitingApproval", |p| !p.changes.is_empty()).await;
    let keys = change_keys(&plan);
    assert_eq!(keys[0], "Create ec2:Vpc vpc", "{keys:?}");
    for expected in ["Create ec2:Subnet subnet/private/1", "Create ec2:Route rtb/public", "Create kms:Key kms"] {
        assert!(keys.iter().any(|k| k == expected), "{expected} not in {keys:?}");
    }
    assert!(plan.changes.iter().all(|c| c.id.is_none()), "nothing exists yet: {:?}", plan.changes);
    let before = reconciles(&operator, "Stack");
    wait_reconciles_since(&operator, before, 2.0).await;
    assert_eq!(proxy.mutation_count(), 0, "nothing may change in AWS before the plan is approved");
    assert!(vpcs_named(&world, "web").await.is_empty());
    assert_eq!(plan_of(&world, "web").await.id, plan.id, "the same plan keeps its id");

    world.patch_spec("web", json!({"approvedPlan": plan.id})).await;
    let stack = world.wait_ready("web", READY).await;
    let done = stack.status.as_ref().and_then(|s| s.plan.clone()).expect("plan");
    assert!(done.changes.is_empty() && done.applying.is_none(), "{done:?}");
    assert_eq!(proxy.mutation_count(), keys.len(), "exactly the approved plan's changes were made");
    eprintln!("a new Stack's plan: {} changes; made after approval: {}", keys.len(), proxy.mutation_count());
    let r = world.resources(&uid).await;
    assert_eq!((r.vpcs.len(), r.subnets.len(), r.route_tables.len()), (1, 5, 3));

    // A route deleted by hand is planned, and held.
    let status = stack.status.expect("status");
    let public = routes(&r);
    assert!(public["rtb/public"].iter().any(|(d, _)| d == "0.0.0.0/0"));
    let table = r
        .route_tables
        .iter()
        .find(|t| tag(t.tags(), COMPONENT_TAG) == Some("rtb/public"))
        .and_then(|t| t.route_table_id())
        .expect("public table")
        .to_string();
    let ec2 = world.ec2();
    ec2.delete_route().route_table_id(&table).destination_cidr_block("0.0.0.0/0").send().await.expect("delete route");
    let outdated = wait_held(&world, "web", "AwaitingApproval", |p| p.changes.len() == 1).await;
    assert_eq!(change_keys(&outdated), ["Create ec2:Route rtb/public"]);
    assert_eq!(outdated.changes[0].id.as_deref(), Some(table.as_str()));
    let made = proxy.mutation_count();

    // AWS changes again before the approval: the plan read earlier is outdated.
    let app = status.app_security_group_id.clone().expect("app group");
    let ssh = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    ec2.authorize_security_group_ingress().group_id(&app).ip_permissions(ssh).send().await.expect("authorize");
    let current = wait_held(&world, "web", "AwaitingApproval", |p| p.changes.len() == 2).await;
    assert_ne!(current.id, outdated.id);
    world.patch_spec("web", json!({"approvedPlan": outdated.id})).await;
    let still = wait_held(&world, "web", "AwaitingApproval", |p| p.changes.len() == 2).await;
    assert_eq!(still.id, current.id, "the outdated approval changes nothing, not even the plan's id");
    let before = reconciles(&operator, "Stack");
    wait_reconciles_since(&operator, before, 2.0).await;
    assert_eq!(proxy.mutation_count(), made, "an outdated approval makes no change");

    world.patch_spec("web", json!({"approvedPlan": current.id})).await;
    world.wait_ready("web", READY).await;
    let r = world.resources(&uid).await;
    assert!(routes(&r)["rtb/public"].iter().any(|(d, _)| d == "0.0.0.0/0"), "route repaired");
    let group = r.groups.iter().find(|g| g.group_id() == Some(app.as_str())).expect("app group");
    assert!(group.ip_permissions().is_empty(), "rule revoked");
    assert_eq!(proxy.mutation_count(), made + 2);

    world.delete("web").await;
    world.wait_gone("web", READY).await;
    assert!(world.resources(&uid).await.only_keys_pending_deletion());
}

/// `management: ObserveOnly` on a Ready Stack: a route deleted by hand shows in `status.plan`, a
/// Warning `DriftDetected` Event (once) and `Ready=False` reason `Drifted`; nothing is changed over
/// two resyncs and more. Deleting the Stack leaves its network in AWS, with its tags.
#[tokio::test]
async fn observe_only_reports_drift_changes_nothing_and_its_deletion_leaves_the_network() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-observe").await;
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let proxy = common::fault_proxy::FaultProxy::start(&moto).await;
    let operator = world.operator("3s", &[("AWS_ENDPOINT_URL", proxy.url.as_str())]);
    let network = json!({"cidr": "10.72.0.0/16", "natGateways": "None", "vpcLink": false});
    let uid = world.stack("seen", json!({"network": network})).await;
    world.wait_ready("seen", READY).await;
    world.patch_spec("seen", json!({"management": "ObserveOnly"})).await;
    let stack = world.wait_ready("seen", Duration::from_secs(30)).await;
    let status = stack.status.expect("status");
    assert!(status.plan.as_ref().is_some_and(|p| p.changes.is_empty()), "{:?}", status.plan);
    let before = world.resources(&uid).await;
    let made = proxy.mutation_count();

    let table = before
        .route_tables
        .iter()
        .find(|t| tag(t.tags(), COMPONENT_TAG) == Some("rtb/public"))
        .and_then(|t| t.route_table_id())
        .expect("public table")
        .to_string();
    world.ec2().delete_route().route_table_id(&table).destination_cidr_block("0.0.0.0/0").send().await.expect("delete");
    let plan = wait_held(&world, "seen", "Drifted", |p| !p.changes.is_empty()).await;
    assert_eq!(change_keys(&plan), ["Create ec2:Route rtb/public"]);
    assert_eq!(plan.changes[0].id.as_deref(), Some(table.as_str()));
    assert!(plan.changes[0].detail.contains("0.0.0.0/0"), "{:?}", plan.changes[0]);
    eventually("a Warning DriftDetected Event", Duration::from_secs(10), || async {
        let events = event_reasons(&world.client, &world.ns.name, "seen").await;
        let warned = events.iter().any(|(t, r)| t == "Warning" && r == "DriftDetected");
        if warned { Ok(()) } else { Err(format!("{events:?}")) }
    })
    .await;
    // The IDs are still reported from what exists.
    let held = world.stacks().get("seen").await.expect("stack").status.expect("status");
    assert_eq!((held.vpc_id.clone(), held.subnets.len()), (status.vpc_id.clone(), 5));

    // Two resyncs and more: still nothing changed, one Event for the one plan.
    let passes = reconciles(&operator, "Stack");
    wait_reconciles_since(&operator, passes, 3.0).await;
    assert_eq!(proxy.mutation_count(), made, "ObserveOnly made an AWS mutation");
    let after = reconciles(&operator, "Stack") - passes;
    eprintln!("ObserveOnly: 0 mutations over {after} reconciles (resync 3 s)");
    let r = world.resources(&uid).await;
    assert!(!routes(&r)["rtb/public"].iter().any(|(d, _)| d == "0.0.0.0/0"), "the route was put back");
    assert_eq!(plan_of(&world, "seen").await.id, plan.id);
    assert_eq!(world.times("seen", "DriftDetected").await, 1, "DriftDetected once per plan");

    world.delete("seen").await;
    world.wait_gone("seen", Duration::from_secs(30)).await;
    assert_eq!(proxy.mutation_count(), made, "deleting an ObserveOnly Stack changes nothing in AWS");
    let after = world.resources(&uid).await;
    assert_eq!(after.counts(), before.counts(), "the network stays");
    assert_tagged(&after, &world.ns.name, "seen", &uid, &[]);
    assert!(world.events("seen").await.iter().any(|r| r == "Retained"));
}

/// The Stack's NAT instances in moto, and where its private tables' default routes go.
struct NatView {
    instances: Vec<aws_sdk_ec2::types::Instance>,
    /// Private route table component → target of `0.0.0.0/0`.
    private_defaults: BTreeMap<String, String>,
}

async fn nat_view(world: &World, uid: &str) -> (Resources, NatView) {
    let r = world.resources(uid).await;
    let private_defaults = routes(&r)
        .into_iter()
        .filter(|(c, _)| c.starts_with("rtb/private/"))
        .filter_map(|(c, routes)| Some((c, routes.into_iter().find(|(d, _)| d == "0.0.0.0/0")?.1)))
        .collect();
    let instances = r.instances.clone();
    (r, NatView { instances, private_defaults })
}

fn eni(i: &aws_sdk_ec2::types::Instance) -> String {
    i.network_interfaces().first().and_then(|n| n.network_interface_id()).unwrap_or_default().to_string()
}

/// Checks one NAT instance per position as users rely on it: in a public subnet, no key pair,
/// IMDSv2 only, source/dest check off, its Elastic IP on its interface, the private tables'
/// default routes through its interface, and its group admitting only the private subnets.
async fn assert_nat_instances(world: &World, uid: &str, stack: &Stack, positions: usize) -> NatView {
    let (r, view) = nat_view(world, uid).await;
    assert!(r.nats.is_empty(), "no NAT gateway: {:?}", r.counts());
    assert_eq!(view.instances.len(), positions, "{:?}", r.counts());
    let public = subnet_ids(stack, SubnetTier::Public);
    let status = stack.status.clone().expect("status");
    let mut enis = Vec::new();
    for (k, i) in view.instances.iter().enumerate() {
        let id = i.instance_id().unwrap_or_default();
        assert!(public.contains(i.subnet_id().unwrap_or_default()), "{id} in a public subnet");
        assert_eq!(i.key_name(), None, "{id} has no key pair");
        let tokens = i.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str().to_string());
        assert_eq!(tokens.as_deref(), Some("required"), "{id} IMDSv2 only");
        let check = world.ec2().describe_instance_attribute().instance_id(id).attribute("sourceDestCheck".into());
        let check = check.send().await.expect("sourceDestCheck");
        assert_eq!(check.source_dest_check().and_then(|v| v.value()), Some(false), "{id} source/dest check off");
        let position = tag(i.tags(), COMPONENT_TAG).unwrap_or_default().to_string();
        assert!(position.starts_with("nat-instance/"), "{position}");
        let address = r.addresses.iter().find(|a| tag(a.tags(), COMPONENT_TAG) == Some(&format!("eip/{position}")));
        let address = address.unwrap_or_else(|| panic!("eip/{position}: {:?}", r.counts()));
        assert_eq!(address.network_interface_id(), Some(eni(i).as_str()), "eip/{position} on {id}'s interface");
        assert!(status.nat_instance_ids.contains(&id.to_string()), "{id} in status");
        enis.push((k, eni(i)));
    }
    let targets: BTreeSet<&String> = view.private_defaults.values().collect();
    let expected: BTreeSet<&String> = enis.iter().map(|(_, e)| e).collect();
    assert_eq!(view.private_defaults.len(), 2, "both private tables route out");
    assert_eq!(targets, expected, "private routes through the instances' interfaces");
    let group = r.groups.iter().find(|g| tag(g.tags(), COMPONENT_TAG) == Some("sg/nat-instance")).expect("NAT group");
    let private_cidrs: BTreeSet<String> =
        status.subnets.iter().filter(|s| s.tier == SubnetTier::Private).map(|s| s.cidr.clone()).collect();
    let admitted: BTreeSet<String> = group
        .ip_permissions()
        .iter()
        .inspect(|p| assert_eq!(p.ip_protocol(), Some("-1"), "all traffic from the private side only"))
        .flat_map(|p| p.ip_ranges().iter().filter_map(|x| x.cidr_ip().map(str::to_string)))
        .collect();
    assert_eq!(admitted, private_cidrs, "the NAT group admits exactly the private subnets");
    assert!(group.ip_permissions().iter().all(|p| p.user_id_group_pairs().is_empty() && p.ipv6_ranges().is_empty()));
    view
}

#[tokio::test]
async fn nat_instances_route_the_private_side_are_replaced_when_terminated_and_delete_to_nothing() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-natinst").await;
    let resync = Duration::from_secs(4);
    let _operator = world.operator("4s", &[]);
    let started = Instant::now();
    let spec = json!({"network": {"cidr": "10.60.0.0/16", "natType": "Instance", "vpcLink": false}});
    let uid = world.stack("web", spec).await;
    let stack = world.wait_ready("web", READY).await;
    eprintln!("NAT instance Stack Ready after {:?}", started.elapsed());
    let view = assert_nat_instances(&world, &uid, &stack, 1).await;
    common::invariants::assert_security_invariants(&world.account, &[]).await;
    assert!(stack.annotations().get("tinystacks.io/nat-image").is_some_and(|a| a.starts_with("arm64:ami-")));
    let events = world.events("web").await;
    for reason in ["LaunchedNatInstance", "DisabledSourceDestCheck", "AssociatedElasticIp", "ChoseImage"] {
        assert!(events.iter().any(|e| e == reason), "{reason} in {events:?}");
    }

    // Terminated by hand: replaced, its address and the routes moved to the new one.
    let old = view.instances[0].instance_id().unwrap_or_default().to_string();
    let before = world.times("web", "DriftRepaired").await;
    world.ec2().terminate_instances().instance_ids(&old).send().await.expect("terminate");
    let took = repair(&world, "the NAT instance replaced", before, resync, || async {
        let (_, v) = nat_view(&world, &uid).await;
        let new = v.instances.iter().find(|i| i.instance_id() != Some(old.as_str())).ok_or("no new instance")?;
        let all_through_it = v.private_defaults.len() == 2 && v.private_defaults.values().all(|t| *t == eni(new));
        if all_through_it { Ok(()) } else { Err(format!("routes: {:?}", v.private_defaults)) }
    })
    .await;
    eprintln!("terminated NAT instance replaced in {took:?}");
    let stack = world.wait_ready("web", READY).await;
    let view = assert_nat_instances(&world, &uid, &stack, 1).await;

    // Stopped by hand: terminated and replaced the same way.
    let stopped = view.instances[0].instance_id().unwrap_or_default().to_string();
    let before = world.times("web", "DriftRepaired").await;
    world.ec2().stop_instances().instance_ids(&stopped).send().await.expect("stop");
    let took = repair(&world, "the stopped NAT instance replaced", before, resync, || async {
        let (_, v) = nat_view(&world, &uid).await;
        let ids: Vec<&str> = v.instances.iter().filter_map(|i| i.instance_id()).collect();
        let new = v.instances.iter().find(|i| i.instance_id() != Some(stopped.as_str()));
        let through_new = new.is_some_and(|n| v.private_defaults.values().all(|t| *t == eni(n)));
        if ids.len() == 1 && through_new { Ok(()) } else { Err(format!("{ids:?}, routes {:?}", v.private_defaults)) }
    })
    .await;
    eprintln!("stopped NAT instance replaced in {took:?}");
    let stack = world.wait_ready("web", READY).await;
    assert_nat_instances(&world, &uid, &stack, 1).await;

    // One per position.
    world.patch_spec("web", json!({"network": {"natGateways": "PerAz"}})).await;
    let stack = world.wait_ready("web", READY).await;
    assert_nat_instances(&world, &uid, &stack, 2).await;
    common::invariants::assert_security_invariants(&world.account, &[]).await;

    world.delete("web").await;
    world.wait_gone("web", READY).await;
    let left = world.resources(&uid).await;
    assert!(left.only_keys_pending_deletion(), "left behind: {:?}", left.counts());
}

#[tokio::test]
async fn switching_nat_type_on_a_live_stack_moves_the_routes_and_removes_the_other_type() {
    let _lock = OPERATOR_LOCK.lock().await;
    let world = World::new("stack-natswitch").await;
    let _operator = world.operator("30s", &[]);
    let uid = world.stack("web", json!({"network": {"cidr": "10.61.0.0/16", "vpcLink": false}})).await;
    world.wait_ready("web", READY).await;
    let (r, _) = nat_view(&world, &uid).await;
    assert_eq!((r.nats.len(), r.instances.len()), (1, 0));

    world.patch_spec("web", json!({"network": {"natType": "Instance"}})).await;
    let stack = world.wait_ready("web", READY).await;
    assert_nat_instances(&world, &uid, &stack, 1).await;
    let (r, _) = nat_view(&world, &uid).await;
    let addresses: Vec<&str> = r.addresses.iter().filter_map(|a| tag(a.tags(), COMPONENT_TAG)).collect();
    assert_eq!(addresses, ["eip/nat-instance/0"], "the gateway's Elastic IP released");
    let events = world.events("web").await;
    for reason in ["ReplacedRoute", "DeletedNatGateway", "ReleasedElasticIp"] {
        assert!(events.iter().any(|e| e == reason), "{reason} in {events:?}");
    }

    world.patch_spec("web", json!({"network": {"natType": "Gateway"}})).await;
    let stack = world.wait_ready("web", READY).await;
    let (r, view) = nat_view(&world, &uid).await;
    assert_eq!((r.nats.len(), r.instances.len()), (1, 0), "{:?}", r.counts());
    let nat = r.nats[0].nat_gateway_id().unwrap_or_default().to_string();
    assert!(view.private_defaults.values().all(|t| *t == nat), "{:?}", view.private_defaults);
    assert_eq!(stack.status.as_ref().map(|s| s.nat_gateway_ids.clone()), Some(vec![nat]));
    assert!(!r.groups.iter().any(|g| tag(g.tags(), COMPONENT_TAG) == Some("sg/nat-instance")), "NAT group gone");
    let addresses: Vec<&str> = r.addresses.iter().filter_map(|a| tag(a.tags(), COMPONENT_TAG)).collect();
    assert_eq!(addresses, ["eip/nat/0"]);

    world.delete("web").await;
    world.wait_gone("web", READY).await;
    let left = world.resources(&uid).await;
    assert!(left.only_keys_pending_deletion(), "left behind: {:?}", left.counts());
}
