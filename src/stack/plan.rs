//! The Stack's network as a plan: the CIDR carving, the resources each pattern needs (each with a
//! stable component name, which is also its `tinystacks.io/component` tag), the changes that bring
//! AWS to it (`diff`: what can be made now; `planned`: the whole plan, for `status.plan`), the
//! teardown and the status. Pure: no client, no clock, so the convergence itself is unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::account_link::template::{MANAGED_BY_TAG, MANAGED_BY_VALUE, OWNER_TAG, OWNER_UID_TAG};
use crate::api::{NatGateways, NatType, NetworkPattern, StackSpec, StackStatus, StackSubnet, SubnetTier};
use crate::aws::inventory::{
    Address, EndpointState, Instance, InstanceStateName, InternetGateway, Kind, KmsAlias, KmsKey, Lifecycle,
    NatGateway, NatGatewayState, RouteTable, RouteTarget, Rule, SecurityGroup, Snapshot, Source, Subnet, Tags, Vpc,
    VpcEndpoint, VpcLink, VpcLinkStatus,
};
use crate::error::Error;

mod changes;
mod diff;
pub use changes::{planned, planned_change};
pub use diff::diff;

/// Tag key naming a resource's part in the stack (`vpc`, `subnet/public/0`, ...): with the owner's
/// UID it identifies the resource, so a restarted operator finds what it made before.
pub const COMPONENT_TAG: &str = "tinystacks.io/component";

/// The route every non-isolated tier sends out of the VPC.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// Interface endpoints of `PrivateIsolated`: what workloads and Session Manager need without a
/// route out (Secrets Manager, SSM, SSM messages, EC2 messages, CloudWatch Logs).
pub const INTERFACE_ENDPOINTS: [&str; 5] = ["secretsmanager", "ssm", "ssmmessages", "ec2messages", "logs"];

/// KMS's shortest waiting period before a key is deleted.
pub const KEY_DELETION_WINDOW_DAYS: i32 = 7;

/// The Stack a plan is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    /// The value of `tinystacks.io/owner`.
    pub fn reference(&self) -> String {
        format!("Stack/{}/{}", self.namespace, self.name)
    }

    /// The stack's KMS alias.
    pub fn kms_alias(&self) -> String {
        format!("alias/tinystacks/{}/{}", self.namespace, self.name)
    }

    /// A readable `Name` for a component: `<namespace>-<name>-subnet-public-0`.
    pub fn readable(&self, component: &str) -> String {
        format!("{}-{}-{}", self.namespace, self.name, component.replace('/', "-"))
    }

    /// An idempotency token for creating `component`: the same for a retry of the same create
    /// (crash after AWS answered, before anything was recorded), different once `previous`
    /// (the IDs the status last knew for that kind of resource) changed, so that a resource
    /// deleted behind the operator's back is created again rather than answered from the token.
    pub fn client_token(&self, component: &str, previous: &[String]) -> String {
        let mut input = format!("{}|{component}", self.uid);
        for id in previous {
            input.push('|');
            input.push_str(id);
        }
        format!(
            "ts-{:016x}{:016x}",
            fnv1a(input.as_bytes(), 0xcbf2_9ce4_8422_2325),
            fnv1a(input.as_bytes(), 0x8422_2325)
        )
    }
}

/// FNV-1a: stable across Rust versions (unlike `DefaultHasher`), so a restarted binary derives the
/// same tokens.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetPlan {
    pub component: String,
    pub tier: SubnetTier,
    pub index: usize,
    pub zone: String,
    pub cidr: String,
}

/// Where a route table's default route goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultRoute {
    InternetGateway,
    /// The NAT (gateway, or instance's network interface) of that component.
    Nat(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTablePlan {
    pub component: String,
    /// Components of the subnets associated with it.
    pub subnets: Vec<String>,
    pub default_route: Option<DefaultRoute>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatPlan {
    pub component: String,
    /// The Elastic IP's component.
    pub address: String,
    /// The public subnet it lives in.
    pub subnet: String,
    /// `Some(instance type)` for a NAT instance, `None` for a NAT gateway.
    pub instance_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroupPlan {
    pub component: String,
    pub name: String,
    pub description: String,
    pub ingress: BTreeSet<Rule>,
    pub egress: BTreeSet<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPlan {
    pub component: String,
    pub service: String,
    pub gateway: bool,
    pub route_tables: Vec<String>,
    pub subnets: Vec<String>,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcLinkPlan {
    pub component: String,
    pub name: String,
    pub subnets: Vec<String>,
    pub groups: Vec<String>,
}

/// Everything the stack's network consists of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    pub owner: Owner,
    pub pattern: NetworkPattern,
    pub cidr: String,
    pub zones: Vec<String>,
    /// The user's `spec.tags`.
    pub user_tags: Tags,
    pub subnets: Vec<SubnetPlan>,
    pub internet_gateway: bool,
    pub route_tables: Vec<RouteTablePlan>,
    /// The NAT at each position: gateways, or instances (`natType: Instance`).
    pub nat_gateways: Vec<NatPlan>,
    /// The image NAT instances boot (the reconcile pins it); none is launched while unknown.
    pub nat_image: Option<String>,
    pub security_groups: Vec<SecurityGroupPlan>,
    pub endpoints: Vec<EndpointPlan>,
    pub vpc_link: Option<VpcLinkPlan>,
}

pub const VPC: &str = "vpc";
pub const IGW: &str = "igw";
pub const KMS: &str = "kms";
pub const SG_APP: &str = "sg/app";
pub const SG_ENDPOINTS: &str = "sg/endpoints";
pub const SG_VPCLINK: &str = "sg/vpclink";
pub const SG_NAT: &str = "sg/nat-instance";
pub const VPCLINK: &str = "vpclink";

fn tier_name(tier: SubnetTier) -> &'static str {
    match tier {
        SubnetTier::Public => "public",
        SubnetTier::Private => "private",
        SubnetTier::Isolated => "isolated",
    }
}

pub fn subnet_component(tier: SubnetTier, index: usize) -> String {
    format!("subnet/{}/{index}", tier_name(tier))
}

/// The subnets' CIDRs: the VPC's block cut into eight equal parts (three bits longer), handed out
/// in order, so the same `cidr` always gives the same subnets. A `/16` gives `/19`s (8,187 usable
/// addresses each), a `/22` gives `/25`s (123 each); two or three parts stay free for later tiers.
pub fn carve(cidr: &str, count: usize) -> Result<Vec<String>, String> {
    let net: Ipv4Net = cidr.parse().map_err(|e| format!("network.cidr {cidr:?} is not an IPv4 CIDR: {e}"))?;
    if net != net.trunc() {
        return Err(format!("network.cidr {cidr:?} has host bits set; use {}", net.trunc()));
    }
    if !(16..=22).contains(&net.prefix_len()) {
        return Err(format!("network.cidr {cidr:?} must be a /16 to /22"));
    }
    let parts = net.subnets(net.prefix_len() + 3).map_err(|e| format!("cannot carve {cidr}: {e}"))?;
    let out: Vec<String> = parts.take(count).map(|p| p.to_string()).collect();
    if out.len() < count {
        return Err(format!("network.cidr {cidr} has room for {} subnets, not {count}", out.len()));
    }
    Ok(out)
}

/// The three zones: the spec's; else for each index the zone its existing subnets already use
/// (so a region that gains a zone never moves a subnet), then the region's first free zones.
/// Too few zones is AWS's doing (the region, or an impaired zone), not the spec's: `TooFewZones`.
pub fn choose_zones(
    spec: Option<&[String]>,
    region: &str,
    region_zones: &[String],
    existing: &BTreeMap<usize, String>,
) -> Result<Vec<String>, Error> {
    if let Some(zones) = spec {
        return Ok(zones.to_vec());
    }
    let mut chosen: Vec<Option<String>> = (0..3).map(|i| existing.get(&i).cloned()).collect();
    let used: BTreeSet<String> = chosen.iter().flatten().cloned().collect();
    let mut free = region_zones.iter().filter(|z| !used.contains(*z));
    for slot in chosen.iter_mut().filter(|s| s.is_none()) {
        *slot = free.next().cloned();
    }
    chosen.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| Error::TooFewZones {
        region: region.to_string(),
        count: region_zones.len(),
        zones: region_zones.join(", "),
    })
}

/// The network the spec asks for, in `zones`.
pub fn plan_network(owner: Owner, spec: &StackSpec, region: &str, zones: Vec<String>) -> Result<NetworkPlan, String> {
    let network = &spec.network;
    let pattern = network.pattern;
    let tiers: [(SubnetTier, usize); 2] = match pattern {
        NetworkPattern::PublicPrivate => [(SubnetTier::Public, 3), (SubnetTier::Private, 2)],
        NetworkPattern::PrivateIsolated => [(SubnetTier::Private, 3), (SubnetTier::Isolated, 3)],
    };
    let cidrs = carve(&network.cidr, tiers.iter().map(|(_, n)| n).sum())?;
    if zones.len() != 3 {
        return Err(format!("three availability zones are needed, got {}", zones.len()));
    }
    let mut subnets = Vec::new();
    for (tier, count) in tiers {
        for (index, zone) in zones.iter().enumerate().take(count) {
            subnets.push(SubnetPlan {
                component: subnet_component(tier, index),
                tier,
                index,
                zone: zone.clone(),
                cidr: cidrs[subnets.len()].clone(),
            });
        }
    }
    let of_tier = |tier| -> Vec<String> {
        subnets.iter().filter(|s| s.tier == tier).map(|s| s.component.clone()).collect::<Vec<_>>()
    };
    let (public, private, isolated) =
        (of_tier(SubnetTier::Public), of_tier(SubnetTier::Private), of_tier(SubnetTier::Isolated));

    // NAT gateways sit in the public subnets of the zones that have private subnets: `PerAz` puts
    // one in each (a zone's outage does not cut the others off), `Single` one for all.
    let nat_count = match network.nat_gateways() {
        NatGateways::None => 0,
        NatGateways::Single => 1,
        NatGateways::PerAz => private.len(),
    };
    // NAT instances have components of their own, so that a switch of `natType` makes the new
    // ones beside the old, moves the routes, and only then removes the old.
    let instance_type = (network.nat_type() == NatType::Instance).then(|| network.nat_instance_type().to_string());
    let prefix = if instance_type.is_some() { "nat-instance" } else { "nat" };
    let nat_gateways: Vec<NatPlan> = (0..nat_count)
        .map(|i| NatPlan {
            component: format!("{prefix}/{i}"),
            address: format!("eip/{prefix}/{i}"),
            subnet: public[i].clone(),
            instance_type: instance_type.clone(),
        })
        .collect();

    // One route table per private subnet, so that switching between `Single` and `PerAz` only
    // changes where routes point, never which table a subnet uses.
    let mut route_tables = Vec::new();
    if !public.is_empty() {
        route_tables.push(RouteTablePlan {
            component: "rtb/public".into(),
            subnets: public.clone(),
            default_route: Some(DefaultRoute::InternetGateway),
        });
    }
    for (i, subnet) in private.iter().enumerate() {
        let nat = nat_gateways.get(i).or(nat_gateways.first());
        route_tables.push(RouteTablePlan {
            component: format!("rtb/private/{i}"),
            subnets: vec![subnet.clone()],
            default_route: nat.map(|n| DefaultRoute::Nat(n.component.clone())),
        });
    }
    if !isolated.is_empty() {
        route_tables.push(RouteTablePlan {
            component: "rtb/isolated".into(),
            subnets: isolated.clone(),
            default_route: None,
        });
    }

    let vpc_cidr = Source::Cidr(network.cidr.clone());
    let all_to = |source: Source| Rule { protocol: "-1".into(), from: None, to: None, source };
    let whose = format!("Stack {}/{}", owner.namespace, owner.name);
    let mut security_groups = vec![SecurityGroupPlan {
        component: SG_APP.into(),
        name: "tinystacks-app".into(),
        description: format!("Application workloads of {whose}; no inbound rules"),
        ingress: BTreeSet::new(),
        egress: BTreeSet::from([all_to(Source::Cidr(DEFAULT_ROUTE.into()))]),
    }];
    if instance_type.is_some() && !nat_gateways.is_empty() {
        // What a NAT instance forwards comes only from the private subnets; nothing else may
        // reach it (no SSH: it is replaced, never logged into).
        let private_cidrs = subnets.iter().filter(|s| s.tier == SubnetTier::Private);
        security_groups.push(SecurityGroupPlan {
            component: SG_NAT.into(),
            name: "tinystacks-nat".into(),
            description: format!("NAT instances of {whose}: all traffic from the private subnets only"),
            ingress: private_cidrs.map(|s| all_to(Source::Cidr(s.cidr.clone()))).collect(),
            egress: BTreeSet::from([all_to(Source::Cidr(DEFAULT_ROUTE.into()))]),
        });
    }
    let mut endpoints = Vec::new();
    if pattern == NetworkPattern::PrivateIsolated {
        security_groups.push(SecurityGroupPlan {
            component: SG_ENDPOINTS.into(),
            name: "tinystacks-endpoints".into(),
            description: format!("VPC endpoints of {whose}: HTTPS from the VPC only"),
            ingress: BTreeSet::from([Rule {
                protocol: "tcp".into(),
                from: Some(443),
                to: Some(443),
                source: vpc_cidr.clone(),
            }]),
            egress: BTreeSet::new(),
        });
        endpoints = private_endpoints(region, &route_tables, &private);
    }
    let vpc_link = network.vpc_link.then(|| VpcLinkPlan {
        component: VPCLINK.into(),
        name: format!("tinystacks-{}-{}", owner.namespace, owner.name),
        subnets: if pattern == NetworkPattern::PublicPrivate { public.clone() } else { private.clone() },
        groups: vec![SG_VPCLINK.into()],
    });
    if vpc_link.is_some() {
        security_groups.push(SecurityGroupPlan {
            component: SG_VPCLINK.into(),
            name: "tinystacks-vpclink".into(),
            description: format!("API Gateway VPC Link of {whose}: out to the VPC only"),
            ingress: BTreeSet::new(),
            egress: BTreeSet::from([all_to(vpc_cidr)]),
        });
    }

    Ok(NetworkPlan {
        owner,
        pattern,
        cidr: network.cidr.clone(),
        zones,
        user_tags: spec.tags.iter().collect(),
        subnets,
        internet_gateway: pattern == NetworkPattern::PublicPrivate,
        route_tables,
        nat_gateways,
        nat_image: None,
        security_groups,
        endpoints,
        vpc_link,
    })
}

/// `PrivateIsolated`'s way to AWS without a route out: the S3 gateway endpoint on the private
/// route tables, and the interface endpoints in the private subnets behind the endpoints' group.
fn private_endpoints(region: &str, route_tables: &[RouteTablePlan], private: &[String]) -> Vec<EndpointPlan> {
    let private_tables: Vec<String> =
        route_tables.iter().filter(|t| t.component.starts_with("rtb/private/")).map(|t| t.component.clone()).collect();
    let s3 = EndpointPlan {
        component: "vpce/s3".into(),
        service: format!("com.amazonaws.{region}.s3"),
        gateway: true,
        route_tables: private_tables,
        subnets: vec![],
        groups: vec![],
    };
    let interfaces = INTERFACE_ENDPOINTS.iter().map(|service| EndpointPlan {
        component: format!("vpce/{service}"),
        service: format!("com.amazonaws.{region}.{service}"),
        gateway: false,
        route_tables: vec![],
        subnets: private.to_vec(),
        groups: vec![SG_ENDPOINTS.into()],
    });
    std::iter::once(s3).chain(interfaces).collect()
}

impl NetworkPlan {
    /// Every tag a component's resource carries: the identity tags, its component, a readable
    /// `Name` and the user's tags.
    pub fn tags_for(&self, component: &str) -> Tags {
        let mut tags = self.user_tags.clone();
        tags.insert(MANAGED_BY_TAG, MANAGED_BY_VALUE);
        tags.insert(OWNER_TAG, self.owner.reference());
        tags.insert(OWNER_UID_TAG, &self.owner.uid);
        tags.insert(COMPONENT_TAG, component);
        tags.insert("Name", self.owner.readable(component));
        tags
    }

    /// The KMS key's description.
    pub fn key_description(&self) -> String {
        format!("Secrets of Stack {}/{} (tinystacks-operator)", self.owner.namespace, self.owner.name)
    }
}

/// The stack's own resources, as the inventory shows them (only those tagged with its UID).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
    pub route_tables: Vec<RouteTable>,
    pub internet_gateways: Vec<InternetGateway>,
    pub addresses: Vec<Address>,
    pub nat_gateways: Vec<NatGateway>,
    pub instances: Vec<Instance>,
    pub security_groups: Vec<SecurityGroup>,
    pub vpc_endpoints: Vec<VpcEndpoint>,
    pub vpc_links: Vec<VpcLink>,
    pub kms_keys: Vec<KmsKey>,
    /// The alias `alias/tinystacks/<namespace>/<name>`, whoever's key it names.
    pub alias: Option<KmsAlias>,
}

fn mine(tags: &Tags, uid: &str) -> bool {
    tags.get(OWNER_UID_TAG).is_some_and(|v| v == uid)
}

fn component(tags: &Tags) -> Option<&str> {
    tags.get(COMPONENT_TAG)
}

fn keep<T: Clone>(items: &[Arc<T>], uid: &str, tags: impl Fn(&T) -> &Tags) -> Vec<T> {
    items.iter().filter(|i| mine(tags(i), uid)).map(|i| T::clone(i)).collect()
}

impl Observed {
    /// The resources of the stack with this UID, and the alias named `alias`.
    pub fn of(snapshot: &Snapshot, uid: &str, alias: &str) -> Self {
        Self {
            vpcs: keep(&snapshot.vpcs, uid, |r| &r.tags),
            subnets: keep(&snapshot.subnets, uid, |r| &r.tags),
            route_tables: keep(&snapshot.route_tables, uid, |r| &r.tags),
            internet_gateways: keep(&snapshot.internet_gateways, uid, |r| &r.tags),
            addresses: keep(&snapshot.addresses, uid, |r| &r.tags),
            nat_gateways: keep(&snapshot.nat_gateways, uid, |r| &r.tags),
            instances: keep(&snapshot.instances, uid, |r| &r.tags),
            security_groups: keep(&snapshot.security_groups, uid, |r| &r.tags),
            vpc_endpoints: keep(&snapshot.vpc_endpoints, uid, |r| &r.tags),
            vpc_links: keep(&snapshot.vpc_links, uid, |r| &r.tags),
            kms_keys: keep(&snapshot.kms_keys, uid, |r| &r.tags),
            alias: snapshot.kms_aliases.iter().find(|a| a.name == alias).map(|a| KmsAlias::clone(a)),
        }
    }

    #[cfg(test)]
    /// Whether nothing of the stack is left (keys waiting for their deletion do not count: AWS
    /// keeps them for the waiting period whatever anyone does).
    pub fn is_empty(&self) -> bool {
        self.vpcs.is_empty()
            && self.subnets.is_empty()
            && self.route_tables.is_empty()
            && self.internet_gateways.is_empty()
            && self.addresses.is_empty()
            && self.nat_gateways.iter().all(|n| n.state.is_gone())
            && self.instances.iter().all(|i| i.state.is_gone())
            && self.security_groups.is_empty()
            && self.vpc_endpoints.iter().all(|e| e.state.is_gone())
            && self.vpc_links.is_empty()
            && self.alias.is_none()
            && self.kms_keys.iter().all(|k| k.is_pending_deletion())
    }

    /// The zone each subnet index already uses.
    pub fn zones_in_use(&self) -> BTreeMap<usize, String> {
        self.subnets
            .iter()
            .filter_map(|s| {
                let index = component(&s.tags)?.rsplit('/').next()?.parse().ok()?;
                Some((index, s.zone.clone()))
            })
            .collect()
    }
}

/// A resource that says it is this Stack's (its `tinystacks.io/owner` and a component, or the
/// status names its ID) but carries another `tinystacks.io/owner-uid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    /// What it is, as a person reads it (`VPC`, `subnet`, ...).
    pub what: &'static str,
    pub id: String,
    /// The `tinystacks.io/owner-uid` it carries.
    pub uid: String,
    /// Whether this Stack's status names it: then this Stack made it and its tag was changed.
    pub in_status: bool,
}

impl Foreign {
    /// The error that stalls the Stack: what was found and what a person can do. Nothing is
    /// created beside it (a second network) and nothing of it is deleted (an orphan).
    pub fn conflict(&self, owner: &Owner) -> Error {
        let (why, remedy) = if self.in_status {
            (
                "this Stack made it (its status names it) and the tag was changed since".to_string(),
                format!(
                    "set the tag back (aws ec2 create-tags --resources {id} --tags Key={OWNER_UID_TAG},Value={uid}, or the service's own tagging call); the operator never replaces a resource whose ownership tags disagree, nor deletes it",
                    id = self.id,
                    uid = owner.uid
                ),
            )
        } else {
            (
                "it belongs to another Stack object of this name: one deleted with deletionPolicy Retain and created again gets a new UID, and does not take over the retained resources (adopting them is not supported yet); or the tag was changed by hand".to_string(),
                "delete the old Stack's resources in AWS (or set the tag back if it was changed by hand), or give this Stack another name; this Stack creates nothing while they exist".to_string(),
            )
        };
        Error::OwnershipTagsDisagree {
            resource: format!("{} {}", self.what, self.id),
            owner: owner.reference(),
            found: self.uid.clone(),
            uid: owner.uid.clone(),
            detail: format!("{why}; {remedy}"),
        }
    }
}

/// The resources of the snapshot that claim to be `owner`'s but carry another UID (see
/// [`Foreign`]), the VPC first. Resources on their way out (a NAT gateway or endpoint deleted, a key pending
/// deletion) are left out: an earlier Stack of the same name deleted with `Delete` leaves those
/// for a while.
pub fn foreign(snapshot: &Snapshot, owner: &Owner, status: &StackStatus) -> Vec<Foreign> {
    let reference = owner.reference();
    let mut named: BTreeSet<&str> = status.subnets.iter().map(|s| s.id.as_str()).collect();
    named.extend(
        [&status.vpc_id, &status.internet_gateway_id, &status.app_security_group_id, &status.vpc_link_id]
            .into_iter()
            .flatten()
            .map(String::as_str),
    );
    named.extend(
        status
            .nat_gateway_ids
            .iter()
            .chain(&status.nat_instance_ids)
            .chain(&status.route_table_ids)
            .chain(&status.vpc_endpoint_ids)
            .map(String::as_str),
    );
    let key_in_status = |arn: &str| status.kms_key_arn.as_deref() == Some(arn);
    let check = |what: &'static str, id: &str, tags: &Tags, in_status: bool| {
        let uid = tags.get(OWNER_UID_TAG)?;
        if uid == owner.uid {
            return None;
        }
        let ours = tags.get(OWNER_TAG) == Some(reference.as_str()) && component(tags).is_some();
        (ours || in_status).then(|| Foreign { what, id: id.to_string(), uid: uid.to_string(), in_status })
    };
    let named = |id: &str| named.contains(id);
    let s = snapshot;
    let mut found = Vec::new();
    found.extend(s.vpcs.iter().filter_map(|r| check("VPC", &r.id, &r.tags, named(&r.id))));
    found.extend(s.subnets.iter().filter_map(|r| check("subnet", &r.id, &r.tags, named(&r.id))));
    found.extend(s.route_tables.iter().filter_map(|r| check("route table", &r.id, &r.tags, named(&r.id))));
    found.extend(s.internet_gateways.iter().filter_map(|r| check("internet gateway", &r.id, &r.tags, named(&r.id))));
    found.extend(
        s.addresses.iter().filter_map(|r| check("Elastic IP", &r.allocation_id, &r.tags, named(&r.allocation_id))),
    );
    let nats = s.nat_gateways.iter().filter(|r| !r.state.is_going());
    found.extend(nats.filter_map(|r| check("NAT gateway", &r.id, &r.tags, named(&r.id))));
    let instances = s.instances.iter().filter(|r| !r.state.is_going());
    found.extend(instances.filter_map(|r| check("NAT instance", &r.id, &r.tags, named(&r.id))));
    found.extend(s.security_groups.iter().filter_map(|r| check("security group", &r.id, &r.tags, named(&r.id))));
    let endpoints = s.vpc_endpoints.iter().filter(|r| !r.state.is_going());
    found.extend(endpoints.filter_map(|r| check("VPC endpoint", &r.id, &r.tags, named(&r.id))));
    found.extend(s.vpc_links.iter().filter_map(|r| check("VPC Link", &r.id, &r.tags, named(&r.id))));
    let keys = s.kms_keys.iter().filter(|k| !k.is_pending_deletion());
    found.extend(keys.filter_map(|k| check("KMS key", &k.key_id, &k.tags, key_in_status(&k.arn))));
    found
}

/// A resource whose tags the operator owns, by API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tagged {
    Ec2(String),
    VpcLink(String),
    Key(String),
}

/// A deletion, in the API's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    VpcLink(String),
    VpcEndpoints(Vec<String>),
    NatGateway(String),
    /// A NAT instance, terminated.
    Instance(String),
    Address(String),
    DetachInternetGateway {
        gateway_id: String,
        vpc_id: String,
    },
    InternetGateway(String),
    Disassociate(String),
    RouteTable(String),
    SecurityGroup(String),
    Subnet(String),
    Vpc(String),
    Alias(String),
    Key(String),
}

/// One AWS mutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    CreateVpc {
        cidr: String,
        tags: Tags,
    },
    EnableVpcDns {
        vpc_id: String,
        hostnames: bool,
    },
    CreateInternetGateway {
        tags: Tags,
    },
    AttachInternetGateway {
        gateway_id: String,
        vpc_id: String,
    },
    CreateSubnet {
        vpc_id: String,
        cidr: String,
        zone: String,
        tags: Tags,
    },
    CreateRouteTable {
        vpc_id: String,
        token: String,
        tags: Tags,
    },
    AssociateRouteTable {
        route_table_id: String,
        subnet_id: String,
    },
    CreateRoute {
        route_table_id: String,
        destination: String,
        target: RouteTarget,
    },
    ReplaceRoute {
        route_table_id: String,
        destination: String,
        target: RouteTarget,
    },
    DeleteRoute {
        route_table_id: String,
        destination: String,
    },
    AllocateAddress {
        tags: Tags,
    },
    CreateNatGateway {
        subnet_id: String,
        allocation_id: String,
        token: String,
        tags: Tags,
    },
    RunNatInstance(NatInstanceSpec),
    /// A NAT instance forwards what is not addressed to it: EC2's source/destination check off.
    DisableSourceDestCheck {
        instance_id: String,
    },
    AssociateAddress {
        allocation_id: String,
        network_interface_id: String,
    },
    CreateSecurityGroup {
        vpc_id: String,
        name: String,
        description: String,
        tags: Tags,
    },
    Authorize {
        group_id: String,
        egress: bool,
        rule: Rule,
    },
    Revoke {
        group_id: String,
        egress: bool,
        rule: Rule,
    },
    CreateVpcEndpoint(EndpointSpec),
    ModifyVpcEndpoint(EndpointChange),
    CreateVpcLink {
        name: String,
        subnet_ids: Vec<String>,
        group_ids: Vec<String>,
        tags: Tags,
    },
    CreateKey {
        description: String,
        tags: Tags,
    },
    CreateAlias {
        alias: String,
        key_id: String,
    },
    Retag {
        resource: Tagged,
        add: Tags,
        remove: Vec<String>,
    },
    Delete(Deletion),
}

/// A NAT instance to launch: no key pair, IMDSv2 only, its own group, forwarding set up at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatInstanceSpec {
    pub subnet_id: String,
    pub group_id: String,
    pub image: String,
    pub instance_type: String,
    pub token: String,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub vpc_id: String,
    pub service: String,
    pub gateway: bool,
    pub route_table_ids: Vec<String>,
    pub subnet_ids: Vec<String>,
    pub group_ids: Vec<String>,
    pub token: String,
    pub tags: Tags,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointChange {
    pub endpoint_id: String,
    pub add_route_tables: Vec<String>,
    pub remove_route_tables: Vec<String>,
    pub add_subnets: Vec<String>,
    pub remove_subnets: Vec<String>,
    pub add_groups: Vec<String>,
    pub remove_groups: Vec<String>,
}

impl Action {
    /// The kind of resource the action creates, if it creates one.
    pub fn creates(&self) -> Option<Kind> {
        Some(match self {
            Action::CreateVpc { .. } => Kind::Vpcs,
            Action::CreateInternetGateway { .. } => Kind::InternetGateways,
            Action::CreateSubnet { .. } => Kind::Subnets,
            Action::CreateRouteTable { .. } => Kind::RouteTables,
            Action::AllocateAddress { .. } => Kind::Addresses,
            Action::CreateNatGateway { .. } => Kind::NatGateways,
            Action::RunNatInstance(_) => Kind::Instances,
            Action::CreateSecurityGroup { .. } => Kind::SecurityGroups,
            Action::CreateVpcEndpoint(_) => Kind::VpcEndpoints,
            Action::CreateVpcLink { .. } => Kind::VpcLinks,
            Action::CreateKey { .. } => Kind::KmsKeys,
            _ => return None,
        })
    }

    /// The Event reason of the mutation.
    pub fn reason(&self) -> &'static str {
        match self {
            Action::CreateVpc { .. } => "CreatedVpc",
            Action::EnableVpcDns { .. } => "EnabledVpcDns",
            Action::CreateInternetGateway { .. } => "CreatedInternetGateway",
            Action::AttachInternetGateway { .. } => "AttachedInternetGateway",
            Action::CreateSubnet { .. } => "CreatedSubnet",
            Action::CreateRouteTable { .. } => "CreatedRouteTable",
            Action::AssociateRouteTable { .. } => "AssociatedRouteTable",
            Action::CreateRoute { .. } => "CreatedRoute",
            Action::ReplaceRoute { .. } => "ReplacedRoute",
            Action::DeleteRoute { .. } => "DeletedRoute",
            Action::AllocateAddress { .. } => "AllocatedElasticIp",
            Action::CreateNatGateway { .. } => "CreatedNatGateway",
            Action::RunNatInstance(_) => "LaunchedNatInstance",
            Action::DisableSourceDestCheck { .. } => "DisabledSourceDestCheck",
            Action::AssociateAddress { .. } => "AssociatedElasticIp",
            Action::CreateSecurityGroup { .. } => "CreatedSecurityGroup",
            Action::Authorize { .. } => "AuthorizedSecurityGroupRule",
            Action::Revoke { .. } => "RevokedSecurityGroupRule",
            Action::CreateVpcEndpoint(_) => "CreatedVpcEndpoint",
            Action::ModifyVpcEndpoint(_) => "ModifiedVpcEndpoint",
            Action::CreateVpcLink { .. } => "CreatedVpcLink",
            Action::CreateKey { .. } => "CreatedKmsKey",
            Action::CreateAlias { .. } => "CreatedKmsAlias",
            Action::Retag { .. } => "UpdatedTags",
            Action::Delete(d) => match d {
                Deletion::VpcLink(_) => "DeletedVpcLink",
                Deletion::VpcEndpoints(_) => "DeletedVpcEndpoints",
                Deletion::NatGateway(_) => "DeletedNatGateway",
                Deletion::Instance(_) => "TerminatedNatInstance",
                Deletion::Address(_) => "ReleasedElasticIp",
                Deletion::DetachInternetGateway { .. } => "DetachedInternetGateway",
                Deletion::InternetGateway(_) => "DeletedInternetGateway",
                Deletion::Disassociate(_) => "DisassociatedRouteTable",
                Deletion::RouteTable(_) => "DeletedRouteTable",
                Deletion::SecurityGroup(_) => "DeletedSecurityGroup",
                Deletion::Subnet(_) => "DeletedSubnet",
                Deletion::Vpc(_) => "DeletedVpc",
                Deletion::Alias(_) => "DeletedKmsAlias",
                Deletion::Key(_) => "ScheduledKmsKeyDeletion",
            },
        }
    }
}

/// One difference between the plan and AWS, with the mutation that removes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// What differs, for people: "route 0.0.0.0/0 of rtb/public (rtb-1) is missing".
    pub what: String,
    /// The component it concerns.
    pub component: String,
    pub action: Action,
}

/// Whether `other` may be made at the same time as `first`, the change a pass makes first: both
/// create a subnet, or both associate a subnet with the same route table (neither needs the
/// other's result).
pub fn independent(first: &Action, other: &Action) -> bool {
    match (first, other) {
        (Action::CreateSubnet { .. }, Action::CreateSubnet { .. }) => true,
        (
            Action::AssociateRouteTable { route_table_id: a, .. },
            Action::AssociateRouteTable { route_table_id: b, .. },
        ) => a == b,
        _ => false,
    }
}

/// What the comparison found.
#[derive(Debug, Default)]
pub struct Diff {
    /// Everything that differs, in the order it is to be fixed; the first is the next step.
    pub changes: Vec<Change>,
    /// Things AWS is still doing (a NAT gateway becoming available, ...).
    pub waiting: Vec<String>,
    /// A difference the operator must not fix by itself (someone else's key behind the alias).
    pub conflict: Option<Error>,
}

/// The IDs the status last knew, which salt the idempotency tokens of re-creations.
#[derive(Clone, Debug, Default)]
pub struct Previous {
    pub route_tables: Vec<String>,
    pub nat_gateways: Vec<String>,
    pub nat_instances: Vec<String>,
    pub endpoints: Vec<String>,
}

impl Previous {
    pub fn of(status: &StackStatus) -> Self {
        Self {
            route_tables: status.route_table_ids.clone(),
            nat_gateways: status.nat_gateway_ids.clone(),
            nat_instances: status.nat_instance_ids.clone(),
            endpoints: status.vpc_endpoint_ids.clone(),
        }
    }
}

/// Picks the resource of each component among several (a duplicate from a lagging list): the one
/// alive with the smallest ID, so every reconcile picks the same.
fn pick<'a, T>(
    items: &'a [T],
    component_name: &str,
    tags: impl Fn(&T) -> &Tags,
    alive: impl Fn(&T) -> bool,
    id: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    items.iter().filter(|i| component(tags(i)) == Some(component_name) && alive(i)).min_by(|a, b| id(a).cmp(id(b)))
}

/// The tag changes that make `observed` equal to `desired`. The operator owns the whole tag set of
/// its resources (`spec.tags` is how to tag them), except AWS's own `aws:` tags.
fn tag_changes(desired: &Tags, observed: &Tags) -> Option<(Tags, Vec<String>)> {
    let add: Tags = desired.iter().filter(|(k, v)| observed.get(k) != Some(*v)).collect();
    let remove: Vec<String> =
        observed.keys().filter(|k| !desired.contains_key(k) && !k.starts_with("aws:")).map(String::from).collect();
    (!add.is_empty() || !remove.is_empty()).then_some((add, remove))
}

fn describe_tags(add: &Tags, remove: &[String]) -> String {
    let mut parts: Vec<String> = add.keys().map(|k| format!("{k} missing or changed")).collect();
    parts.extend(remove.iter().map(|k| format!("{k} not in the spec")));
    parts.join(", ")
}

fn show_rule(rule: &Rule) -> String {
    let ports = match (rule.from, rule.to) {
        (Some(f), Some(t)) if f == t => format!(" port {f}"),
        (Some(f), Some(t)) => format!(" ports {f}-{t}"),
        _ => String::new(),
    };
    let protocol = if rule.protocol == "-1" { "all traffic".to_string() } else { rule.protocol.clone() };
    let source = match &rule.source {
        Source::Cidr(c) | Source::CidrV6(c) | Source::Group(c) | Source::PrefixList(c) => c,
    };
    format!("{protocol}{ports} {source}")
}

/// What deleting the stack's network takes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Teardown {
    Step(Change),
    /// AWS is still deleting something the next step depends on.
    Waiting(String),
    Done,
}

/// Something outside the stack that still uses its key or network when the Stack is deleted: a DB
/// instance (a Database deleted with `Retain`, or one the operator did not make), a DB snapshot
/// (the final snapshot of the `Snapshot` policy, or any other), a Secrets Manager secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependant {
    /// How people name it: `DB instance x`, `DB snapshot y`, `Secrets Manager secret z`.
    pub what: String,
    /// The KMS key it is encrypted with, as its API reports it (an ARN or a key ID).
    pub kms_key: Option<String>,
    /// The VPC its network interfaces are in, and every subnet it may be placed in (a DB
    /// instance's subnet group: RDS moves it between them on failover or a change of class).
    pub vpc_id: Option<String>,
    pub subnet_ids: Vec<String>,
    /// The security groups its own security groups admit.
    pub admitted_groups: Vec<String>,
}

/// What a Stack's teardown leaves because something outside it still needs it: resource ID →
/// (the resource as people name it, what needs it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kept(pub BTreeMap<String, (String, Vec<String>)>);

impl Kept {
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One line for the condition message: what is kept, for what.
    pub fn summary(&self) -> String {
        let parts: Vec<String> =
            self.0.values().map(|(what, needed_by)| format!("{what} (for {})", needed_by.join(", "))).collect();
        format!("keeping {}", parts.join("; "))
    }

    fn add(&mut self, id: &str, what: String, dependant: &Dependant) {
        let entry = self.0.entry(id.to_string()).or_insert_with(|| (what, Vec::new()));
        if !entry.1.contains(&dependant.what) {
            entry.1.push(dependant.what.clone());
        }
    }
}

/// Whether `reported` (an ARN, a key ID, or a key's alias ARN as an API reports it) names `key`.
fn names_key(reported: &str, key: &KmsKey) -> bool {
    reported == key.arn
        || reported == key.key_id
        || reported.rsplit_once(":key/").is_some_and(|(_, id)| id == key.key_id)
}

/// What the stack's teardown must leave for `dependants`:
/// - a key that encrypts any of them (an instance, a snapshot or a secret is unreadable without
///   it, and a restore from the snapshot needs it; once deleted, KMS cannot bring it back);
/// - the VPC an instance lives in, and the subnets of its subnet group: AWS refuses to delete a
///   subnet or a VPC that still has network interfaces (`DependencyViolation`), and a subnet group
///   whose subnets are gone leaves RDS nowhere to fail over to;
/// - the stack's security groups the instance's groups admit (the Database's group admits the
///   app group): AWS refuses to delete a group another group's rule names.
///
/// Everything else goes: gateways, endpoints and the VPC Link (which cost money while they stand),
/// route tables (a kept subnet falls back to the VPC's main table: local traffic only, all a
/// private instance needs), the other subnets and groups, and the alias (the Events name the kept
/// key by ID, and a new Stack of the same name makes its own).
pub fn kept(observed: &Observed, dependants: &[Dependant]) -> Kept {
    let mut kept = Kept::default();
    for d in dependants {
        for k in observed.kms_keys.iter().filter(|k| !k.is_pending_deletion()) {
            if d.kms_key.as_deref().is_some_and(|r| names_key(r, k)) {
                kept.add(&k.key_id, format!("KMS key {}", k.key_id), d);
            }
        }
        for v in observed.vpcs.iter().filter(|v| d.vpc_id.as_deref() == Some(v.id.as_str())) {
            kept.add(&v.id, format!("VPC {}", v.id), d);
        }
        for s in observed.subnets.iter().filter(|s| d.subnet_ids.contains(&s.id)) {
            kept.add(&s.id, format!("subnet {}", s.id), d);
        }
        for g in observed.security_groups.iter().filter(|g| d.admitted_groups.contains(&g.id)) {
            kept.add(&g.id, format!("security group {}", g.id), d);
        }
    }
    kept
}

/// The next deletion, dependents before what they depend on: the VPC Link, endpoints, NAT
/// gateways (until AWS reports them deleted), NAT instances (until terminated), their Elastic IPs, the internet gateway, route
/// tables, security groups, subnets, the VPC; then the alias and the key. What is `kept` stays.
pub fn teardown(observed: &Observed, alias: &str, kept: &Kept) -> Teardown {
    let step = |what: String, component: &str, deletion: Deletion| {
        Teardown::Step(Change { what, component: component.into(), action: Action::Delete(deletion) })
    };
    let name = |tags: &Tags| component(tags).unwrap_or_default().to_string();

    if let Some(l) = observed.vpc_links.iter().find(|l| l.status != VpcLinkStatus::Deleting) {
        return step(format!("deleting the VPC Link {}", l.id), &name(&l.tags), Deletion::VpcLink(l.id.clone()));
    }
    if observed.vpc_links.iter().any(|l| l.status == VpcLinkStatus::Deleting) {
        return Teardown::Waiting("API Gateway is deleting the VPC Link".into());
    }
    let endpoints: Vec<String> =
        observed.vpc_endpoints.iter().filter(|e| !e.state.is_going()).map(|e| e.id.clone()).collect();
    if !endpoints.is_empty() {
        return step(
            format!("deleting the VPC endpoints {}", endpoints.join(", ")),
            "vpce",
            Deletion::VpcEndpoints(endpoints),
        );
    }
    if observed.vpc_endpoints.iter().any(|e| e.state.is_deleting()) {
        return Teardown::Waiting("EC2 is deleting the VPC endpoints".into());
    }
    if let Some(n) = observed.nat_gateways.iter().find(|n| !n.state.is_going()) {
        return step(format!("deleting NAT gateway {}", n.id), &name(&n.tags), Deletion::NatGateway(n.id.clone()));
    }
    if let Some(n) = observed.nat_gateways.iter().find(|n| n.state.is_deleting()) {
        return Teardown::Waiting(format!("EC2 is deleting NAT gateway {}", n.id));
    }
    if let Some(i) = observed.instances.iter().find(|i| !i.state.is_going()) {
        return step(format!("terminating NAT instance {}", i.id), &name(&i.tags), Deletion::Instance(i.id.clone()));
    }
    if let Some(i) = observed.instances.iter().find(|i| i.state.is_deleting()) {
        return Teardown::Waiting(format!("EC2 is terminating NAT instance {}", i.id));
    }
    if let Some(a) = observed.addresses.first() {
        return step(
            format!("releasing Elastic IP {}", a.allocation_id),
            &name(&a.tags),
            Deletion::Address(a.allocation_id.clone()),
        );
    }
    if let Some(g) = observed.internet_gateways.first() {
        if let Some(vpc_id) = g.attached_vpcs.first() {
            return step(
                format!("detaching internet gateway {} from {vpc_id}", g.id),
                IGW,
                Deletion::DetachInternetGateway { gateway_id: g.id.clone(), vpc_id: vpc_id.clone() },
            );
        }
        return step(format!("deleting internet gateway {}", g.id), IGW, Deletion::InternetGateway(g.id.clone()));
    }
    if let Some(t) = observed.route_tables.first() {
        if let Some(a) = t.associations.first() {
            return step(
                format!("disassociating {} from route table {}", a.id, t.id),
                &name(&t.tags),
                Deletion::Disassociate(a.id.clone()),
            );
        }
        return step(format!("deleting route table {}", t.id), &name(&t.tags), Deletion::RouteTable(t.id.clone()));
    }
    if let Some(g) = observed.security_groups.iter().find(|g| !kept.contains(&g.id)) {
        return step(
            format!("deleting security group {}", g.id),
            &name(&g.tags),
            Deletion::SecurityGroup(g.id.clone()),
        );
    }
    if let Some(s) = observed.subnets.iter().find(|s| !kept.contains(&s.id)) {
        return step(format!("deleting subnet {}", s.id), &name(&s.tags), Deletion::Subnet(s.id.clone()));
    }
    if let Some(v) = observed.vpcs.iter().find(|v| !kept.contains(&v.id)) {
        return step(format!("deleting VPC {}", v.id), VPC, Deletion::Vpc(v.id.clone()));
    }
    if let Some(a) = &observed.alias {
        let ours = a.target_key_id.as_ref().is_none_or(|t| observed.kms_keys.iter().any(|k| k.key_id == *t));
        if ours {
            return step(format!("deleting the KMS alias {alias}"), KMS, Deletion::Alias(a.name.clone()));
        }
    }
    if let Some(k) = observed.kms_keys.iter().find(|k| !k.is_pending_deletion() && !kept.contains(&k.key_id)) {
        return step(
            format!(
                "scheduling the deletion of KMS key {} in {KEY_DELETION_WINDOW_DAYS} days, the shortest AWS allows",
                k.key_id
            ),
            KMS,
            Deletion::Key(k.key_id.clone()),
        );
    }
    Teardown::Done
}

/// Whether a status lists what Databases and Bastions need of their Stack: the VPC, its subnets,
/// the app security group and the key (the diff makes them first).
pub fn lists_what_dependents_need(status: &StackStatus) -> bool {
    status.vpc_id.is_some()
        && !status.subnets.is_empty()
        && status.app_security_group_id.is_some()
        && status.kms_key_arn.is_some()
}

/// The status fields of what exists, in the plan's order.
pub fn status_of(plan: &NetworkPlan, observed: &Observed) -> StackStatus {
    let vpc = observed.vpcs.iter().filter(|v| component(&v.tags) == Some(VPC)).max_by(|a, b| {
        let n = |v: &Vpc| observed.subnets.iter().filter(|s| s.vpc_id == v.id).count();
        n(a).cmp(&n(b)).then_with(|| b.id.cmp(&a.id))
    });
    let vpc_id = vpc.map(|v| v.id.clone()).unwrap_or_default();
    let in_vpc = |v: &str| v == vpc_id;
    let subnets = plan
        .subnets
        .iter()
        .filter_map(|s| {
            let found = pick(&observed.subnets, &s.component, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id)?;
            Some(StackSubnet {
                id: found.id.clone(),
                tier: s.tier,
                availability_zone: found.zone.clone(),
                cidr: found.cidr.clone(),
            })
        })
        .collect();
    let nat_gateway_ids = plan
        .nat_gateways
        .iter()
        .filter_map(|n| pick(&observed.nat_gateways, &n.component, |x| &x.tags, |x| !x.state.is_going(), |x| &x.id))
        .map(|n| n.id.clone())
        .collect();
    let nat_instance_ids = plan
        .nat_gateways
        .iter()
        .filter(|n| n.instance_type.is_some())
        .filter_map(|n| pick(&observed.instances, &n.component, |x| &x.tags, |x| !x.state.is_going(), |x| &x.id))
        .map(|i| i.id.clone())
        .collect();
    let route_table_ids = plan
        .route_tables
        .iter()
        .filter_map(|t| pick(&observed.route_tables, &t.component, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id))
        .map(|t| t.id.clone())
        .collect();
    let vpc_endpoint_ids = plan
        .endpoints
        .iter()
        .filter_map(|e| pick(&observed.vpc_endpoints, &e.component, |x| &x.tags, |x| !x.state.is_going(), |x| &x.id))
        .map(|e| e.id.clone())
        .collect();
    let group = |c: &str| {
        pick(&observed.security_groups, c, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id).map(|g| g.id.clone())
    };
    let key = observed
        .alias
        .as_ref()
        .and_then(|a| a.target_key_id.as_ref())
        .and_then(|t| observed.kms_keys.iter().find(|k| k.key_id == *t));
    StackStatus {
        vpc_id: vpc.map(|v| v.id.clone()),
        subnets,
        internet_gateway_id: pick(&observed.internet_gateways, IGW, |x| &x.tags, |_| true, |x| &x.id)
            .map(|g| g.id.clone()),
        nat_gateway_ids,
        nat_instance_ids,
        route_table_ids,
        vpc_endpoint_ids,
        app_security_group_id: group(SG_APP),
        vpc_link_id: plan.vpc_link.as_ref().and_then(|l| {
            pick(&observed.vpc_links, &l.component, |x| &x.tags, |x| x.status != VpcLinkStatus::Deleting, |x| &x.id)
                .map(|l| l.id.clone())
        }),
        kms_key_arn: key.map(|k| k.arn.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
