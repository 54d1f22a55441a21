//! The Stack's network as a plan: the CIDR carving, the resources each pattern needs (each with a
//! stable component name, which is also its `tinystacks.io/component` tag), and the diff between
//! that and what AWS shows, which yields the next single step and everything that still differs.
//! Pure: no client, no clock, so the convergence itself is unit-tested here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::account_link::template::{MANAGED_BY_TAG, MANAGED_BY_VALUE, OWNER_TAG, OWNER_UID_TAG};
use crate::api::{NatGateways, NetworkPattern, StackSpec, StackStatus, StackSubnet, SubnetTier};
use crate::aws::inventory::{
    Address, InternetGateway, Kind, KmsAlias, KmsKey, NatGateway, RouteTable, RouteTarget, Rule, SecurityGroup,
    Snapshot, Source, Subnet, Tags, Vpc, VpcEndpoint, VpcLink,
};
use crate::error::Error;

mod changes;
pub use changes::{planned, planned_change};

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
    /// The NAT gateway of that component.
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
    pub nat_gateways: Vec<NatPlan>,
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
pub fn choose_zones(
    spec: Option<&[String]>,
    region_zones: &[String],
    existing: &BTreeMap<usize, String>,
) -> Result<Vec<String>, String> {
    if let Some(zones) = spec {
        return Ok(zones.to_vec());
    }
    let mut chosen: Vec<Option<String>> = (0..3).map(|i| existing.get(&i).cloned()).collect();
    let used: BTreeSet<String> = chosen.iter().flatten().cloned().collect();
    let mut free = region_zones.iter().filter(|z| !used.contains(*z));
    for slot in chosen.iter_mut().filter(|s| s.is_none()) {
        *slot = free.next().cloned();
    }
    chosen.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
        format!(
            "the region offers {} availability zones ({}); a Stack needs three",
            region_zones.len(),
            region_zones.join(", ")
        )
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
    let nat_gateways: Vec<NatPlan> = (0..nat_count)
        .map(|i| NatPlan { component: format!("nat/{i}"), address: format!("eip/nat/{i}"), subnet: public[i].clone() })
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
        let private_tables: Vec<String> = route_tables
            .iter()
            .filter(|t| t.component.starts_with("rtb/private/"))
            .map(|t| t.component.clone())
            .collect();
        endpoints.push(EndpointPlan {
            component: "vpce/s3".into(),
            service: format!("com.amazonaws.{region}.s3"),
            gateway: true,
            route_tables: private_tables,
            subnets: vec![],
            groups: vec![],
        });
        for service in INTERFACE_ENDPOINTS {
            endpoints.push(EndpointPlan {
                component: format!("vpce/{service}"),
                service: format!("com.amazonaws.{region}.{service}"),
                gateway: false,
                route_tables: vec![],
                subnets: private.clone(),
                groups: vec![SG_ENDPOINTS.into()],
            });
        }
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
        security_groups,
        endpoints,
        vpc_link,
    })
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
            && self.nat_gateways.iter().all(|n| gone(&n.state))
            && self.security_groups.is_empty()
            && self.vpc_endpoints.iter().all(|e| gone(&e.state))
            && self.vpc_links.is_empty()
            && self.alias.is_none()
            && self.kms_keys.iter().all(|k| k.state.as_deref() == Some("PendingDeletion"))
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
    let nats = s.nat_gateways.iter().filter(|r| !going(&r.state));
    found.extend(nats.filter_map(|r| check("NAT gateway", &r.id, &r.tags, named(&r.id))));
    found.extend(s.security_groups.iter().filter_map(|r| check("security group", &r.id, &r.tags, named(&r.id))));
    let endpoints = s.vpc_endpoints.iter().filter(|r| !going(&r.state));
    found.extend(endpoints.filter_map(|r| check("VPC endpoint", &r.id, &r.tags, named(&r.id))));
    found.extend(s.vpc_links.iter().filter_map(|r| check("VPC Link", &r.id, &r.tags, named(&r.id))));
    let keys = s.kms_keys.iter().filter(|k| k.state.as_deref() != Some("PendingDeletion"));
    found.extend(keys.filter_map(|k| check("KMS key", &k.key_id, &k.tags, key_in_status(&k.arn))));
    found
}

/// A NAT gateway or endpoint that is gone or going (AWS lists them for a while after).
fn gone(state: &str) -> bool {
    matches!(state, "deleted" | "failed" | "rejected" | "expired")
}

fn going(state: &str) -> bool {
    state == "deleting" || gone(state)
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
    Address(String),
    DetachInternetGateway { gateway_id: String, vpc_id: String },
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
    CreateVpc { cidr: String, tags: Tags },
    EnableVpcDns { vpc_id: String, hostnames: bool },
    CreateInternetGateway { tags: Tags },
    AttachInternetGateway { gateway_id: String, vpc_id: String },
    CreateSubnet { vpc_id: String, cidr: String, zone: String, tags: Tags },
    CreateRouteTable { vpc_id: String, token: String, tags: Tags },
    AssociateRouteTable { route_table_id: String, subnet_id: String },
    CreateRoute { route_table_id: String, destination: String, target: RouteTarget },
    ReplaceRoute { route_table_id: String, destination: String, target: RouteTarget },
    DeleteRoute { route_table_id: String, destination: String },
    AllocateAddress { tags: Tags },
    CreateNatGateway { subnet_id: String, allocation_id: String, token: String, tags: Tags },
    CreateSecurityGroup { vpc_id: String, name: String, description: String, tags: Tags },
    Authorize { group_id: String, egress: bool, rule: Rule },
    Revoke { group_id: String, egress: bool, rule: Rule },
    CreateVpcEndpoint(EndpointSpec),
    ModifyVpcEndpoint(EndpointChange),
    CreateVpcLink { name: String, subnet_ids: Vec<String>, group_ids: Vec<String>, tags: Tags },
    CreateKey { description: String, tags: Tags },
    CreateAlias { alias: String, key_id: String },
    Retag { resource: Tagged, add: Tags, remove: Vec<String> },
    Delete(Deletion),
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
    pub endpoints: Vec<String>,
}

impl Previous {
    pub fn of(status: &StackStatus) -> Self {
        Self {
            route_tables: status.route_table_ids.clone(),
            nat_gateways: status.nat_gateway_ids.clone(),
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

/// The comparison: what AWS shows against the plan. Works through the resources in the order they
/// depend on each other; a resource whose parent does not exist yet is not mentioned, since the
/// parent's creation comes first.
pub fn diff(plan: &NetworkPlan, observed: &Observed, previous: &Previous) -> Diff {
    let mut d = Diff::default();
    let mut change = |what: String, component: &str, action: Action| {
        d.changes.push(Change { what, component: component.to_string(), action });
    };
    let mut waiting = Vec::new();
    let retag = |component: &str, resource: Tagged, observed_tags: &Tags| {
        tag_changes(&plan.tags_for(component), observed_tags).map(|(add, remove)| {
            (format!("tags of {component}: {}", describe_tags(&add, &remove)), Action::Retag { resource, add, remove })
        })
    };

    // The VPC: everything else hangs off it. Among duplicates, the one with the most subnets.
    let vpc = observed.vpcs.iter().filter(|v| component(&v.tags) == Some(VPC)).max_by(|a, b| {
        let n = |v: &Vpc| observed.subnets.iter().filter(|s| s.vpc_id == v.id).count();
        n(a).cmp(&n(b)).then_with(|| b.id.cmp(&a.id))
    });
    let Some(vpc) = vpc else {
        change(
            "the VPC does not exist".into(),
            VPC,
            Action::CreateVpc { cidr: plan.cidr.clone(), tags: plan.tags_for(VPC) },
        );
        kms(plan, observed, &mut d, retag);
        return d;
    };
    let vpc_id = vpc.id.clone();
    if vpc.dns_support == Some(false) {
        change(
            "DNS support of the VPC is off".into(),
            VPC,
            Action::EnableVpcDns { vpc_id: vpc_id.clone(), hostnames: false },
        );
    }
    if vpc.dns_hostnames == Some(false) {
        change(
            "DNS hostnames of the VPC are off".into(),
            VPC,
            Action::EnableVpcDns { vpc_id: vpc_id.clone(), hostnames: true },
        );
    }
    if let Some((what, action)) = retag(VPC, Tagged::Ec2(vpc_id.clone()), &vpc.tags) {
        change(what, VPC, action);
    }

    // Internet gateway.
    let igw = pick(&observed.internet_gateways, IGW, |g| &g.tags, |_| true, |g| &g.id);
    if plan.internet_gateway {
        match igw {
            None => change(
                "the internet gateway does not exist".into(),
                IGW,
                Action::CreateInternetGateway { tags: plan.tags_for(IGW) },
            ),
            Some(g) => {
                if let Some(other) = g.attached_vpcs.iter().find(|v| **v != vpc_id) {
                    change(
                        format!("the internet gateway {} is attached to {other}, not the stack's VPC", g.id),
                        IGW,
                        Action::Delete(Deletion::DetachInternetGateway {
                            gateway_id: g.id.clone(),
                            vpc_id: other.clone(),
                        }),
                    );
                } else if g.attached_vpcs.is_empty() {
                    change(
                        format!("the internet gateway {} is not attached to the VPC", g.id),
                        IGW,
                        Action::AttachInternetGateway { gateway_id: g.id.clone(), vpc_id: vpc_id.clone() },
                    );
                }
                if let Some((what, action)) = retag(IGW, Tagged::Ec2(g.id.clone()), &g.tags) {
                    change(what, IGW, action);
                }
            }
        }
    }
    let igw_id = igw.filter(|g| g.attached_vpcs.contains(&vpc_id)).map(|g| g.id.clone());

    // Subnets.
    let in_vpc = |v: &str| v == vpc_id;
    let mut subnet_ids: BTreeMap<&str, String> = BTreeMap::new();
    for s in &plan.subnets {
        match pick(&observed.subnets, &s.component, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id) {
            None => change(
                format!("{} ({} in {}) does not exist", s.component, s.cidr, s.zone),
                &s.component,
                Action::CreateSubnet {
                    vpc_id: vpc_id.clone(),
                    cidr: s.cidr.clone(),
                    zone: s.zone.clone(),
                    tags: plan.tags_for(&s.component),
                },
            ),
            Some(found) => {
                subnet_ids.insert(&s.component, found.id.clone());
                if let Some((what, action)) = retag(&s.component, Tagged::Ec2(found.id.clone()), &found.tags) {
                    change(what, &s.component, action);
                }
            }
        }
    }

    // NAT gateways and their addresses (before the routes that point at them).
    let mut nat_ids: BTreeMap<&str, String> = BTreeMap::new();
    for n in &plan.nat_gateways {
        let address = pick(&observed.addresses, &n.address, |a| &a.tags, |_| true, |a| &a.allocation_id);
        match address {
            None => change(
                format!("the Elastic IP {} does not exist", n.address),
                &n.address,
                Action::AllocateAddress { tags: plan.tags_for(&n.address) },
            ),
            Some(a) => {
                if let Some((what, action)) = retag(&n.address, Tagged::Ec2(a.allocation_id.clone()), &a.tags) {
                    change(what, &n.address, action);
                }
            }
        }
        let nat = pick(
            &observed.nat_gateways,
            &n.component,
            |x| &x.tags,
            |x| !going(&x.state) && in_vpc(&x.vpc_id),
            |x| &x.id,
        );
        match (nat, address, subnet_ids.get(n.subnet.as_str())) {
            (Some(found), _, _) => {
                if found.state != "available" {
                    waiting.push(format!("{} ({}) is {}", n.component, found.id, found.state));
                }
                nat_ids.insert(&n.component, found.id.clone());
                if let Some((what, action)) = retag(&n.component, Tagged::Ec2(found.id.clone()), &found.tags) {
                    change(what, &n.component, action);
                }
            }
            (None, Some(a), Some(subnet_id)) => change(
                format!("{} does not exist", n.component),
                &n.component,
                Action::CreateNatGateway {
                    subnet_id: subnet_id.clone(),
                    allocation_id: a.allocation_id.clone(),
                    token: plan.owner.client_token(&n.component, &previous.nat_gateways),
                    tags: plan.tags_for(&n.component),
                },
            ),
            (None, _, _) => {}
        }
    }

    // Route tables, their routes and associations.
    let mut table_ids: BTreeMap<&str, String> = BTreeMap::new();
    let gateway_endpoints: BTreeSet<&str> =
        observed.vpc_endpoints.iter().filter(|e| e.gateway && !going(&e.state)).map(|e| e.id.as_str()).collect();
    for t in &plan.route_tables {
        let Some(table) = pick(&observed.route_tables, &t.component, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id)
        else {
            change(
                format!("{} does not exist", t.component),
                &t.component,
                Action::CreateRouteTable {
                    vpc_id: vpc_id.clone(),
                    token: plan.owner.client_token(&t.component, &previous.route_tables),
                    tags: plan.tags_for(&t.component),
                },
            );
            continue;
        };
        table_ids.insert(&t.component, table.id.clone());
        let rtb = format!("{} ({})", t.component, table.id);
        let wanted = match &t.default_route {
            Some(DefaultRoute::InternetGateway) => igw_id.clone().map(RouteTarget::Gateway),
            Some(DefaultRoute::Nat(nat)) => nat_ids.get(nat.as_str()).cloned().map(RouteTarget::Nat),
            None => None,
        };
        let current = table.routes.iter().find(|r| r.destination == DEFAULT_ROUTE);
        match (&wanted, current) {
            (Some(target), None) => change(
                format!("route {DEFAULT_ROUTE} of {rtb} is missing"),
                &t.component,
                Action::CreateRoute {
                    route_table_id: table.id.clone(),
                    destination: DEFAULT_ROUTE.into(),
                    target: target.clone(),
                },
            ),
            (Some(target), Some(r)) if r.target != *target => change(
                format!("route {DEFAULT_ROUTE} of {rtb} goes to {:?}, not {target:?}", r.target),
                &t.component,
                Action::ReplaceRoute {
                    route_table_id: table.id.clone(),
                    destination: DEFAULT_ROUTE.into(),
                    target: target.clone(),
                },
            ),
            _ => {}
        }
        // Any other route out is not the operator's: the isolated tier must have none at all. The
        // routes gateway endpoints add (to a prefix list) stay; a default route stays while its
        // target is still being made.
        for r in &table.routes {
            let endpoint_route = matches!(&r.target, RouteTarget::Gateway(g) if gateway_endpoints.contains(g.as_str()));
            // The planned default route was dealt with above (replaced, or kept while its target
            // is being made).
            let planned_default = r.destination == DEFAULT_ROUTE && t.default_route.is_some();
            let extra = r.target != RouteTarget::Local && !endpoint_route && !planned_default;
            if extra {
                change(
                    format!("route {} of {rtb} to {:?} is not in the plan", r.destination, r.target),
                    &t.component,
                    Action::DeleteRoute { route_table_id: table.id.clone(), destination: r.destination.clone() },
                );
            }
        }
        for subnet in &t.subnets {
            let Some(subnet_id) = subnet_ids.get(subnet.as_str()) else { continue };
            if table.associations.iter().any(|a| a.subnet_id.as_ref() == Some(subnet_id)) {
                continue;
            }
            // Associated with another of the stack's tables: undo that first.
            let elsewhere = observed
                .route_tables
                .iter()
                .filter(|o| o.id != table.id)
                .flat_map(|o| o.associations.iter())
                .find(|a| a.subnet_id.as_ref() == Some(subnet_id));
            match elsewhere {
                Some(a) => change(
                    format!("{subnet} ({subnet_id}) is associated with another route table ({})", a.id),
                    &t.component,
                    Action::Delete(Deletion::Disassociate(a.id.clone())),
                ),
                None => change(
                    format!("{subnet} ({subnet_id}) is not associated with {rtb}"),
                    &t.component,
                    Action::AssociateRouteTable { route_table_id: table.id.clone(), subnet_id: subnet_id.clone() },
                ),
            }
        }
        let wanted_subnets: BTreeSet<&String> = t.subnets.iter().filter_map(|s| subnet_ids.get(s.as_str())).collect();
        for a in &table.associations {
            if a.subnet_id.as_ref().is_some_and(|s| !wanted_subnets.contains(s)) {
                change(
                    format!("{rtb} is associated with {:?}, which is not in the plan", a.subnet_id),
                    &t.component,
                    Action::Delete(Deletion::Disassociate(a.id.clone())),
                );
            }
        }
        if let Some((what, action)) = retag(&t.component, Tagged::Ec2(table.id.clone()), &table.tags) {
            change(what, &t.component, action);
        }
    }

    // Security groups and their rules.
    let mut group_ids: BTreeMap<&str, String> = BTreeMap::new();
    for g in &plan.security_groups {
        let Some(group) = pick(&observed.security_groups, &g.component, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id)
        else {
            change(
                format!("{} does not exist", g.component),
                &g.component,
                Action::CreateSecurityGroup {
                    vpc_id: vpc_id.clone(),
                    name: g.name.clone(),
                    description: g.description.clone(),
                    tags: plan.tags_for(&g.component),
                },
            );
            continue;
        };
        group_ids.insert(&g.component, group.id.clone());
        for (egress, wanted, actual) in [(false, &g.ingress, &group.ingress), (true, &g.egress, &group.egress)] {
            let direction = if egress { "egress" } else { "ingress" };
            for rule in wanted.difference(actual) {
                change(
                    format!("{direction} rule {} of {} ({}) is missing", show_rule(rule), g.component, group.id),
                    &g.component,
                    Action::Authorize { group_id: group.id.clone(), egress, rule: rule.clone() },
                );
            }
            for rule in actual.difference(wanted) {
                change(
                    format!(
                        "{direction} rule {} of {} ({}) is not in the plan",
                        show_rule(rule),
                        g.component,
                        group.id
                    ),
                    &g.component,
                    Action::Revoke { group_id: group.id.clone(), egress, rule: rule.clone() },
                );
            }
        }
        if let Some((what, action)) = retag(&g.component, Tagged::Ec2(group.id.clone()), &group.tags) {
            change(what, &g.component, action);
        }
    }

    // VPC endpoints.
    let ids = |components: &[String], map: &BTreeMap<&str, String>| -> Option<Vec<String>> {
        components.iter().map(|c| map.get(c.as_str()).cloned()).collect()
    };
    for e in &plan.endpoints {
        let (Some(tables), Some(subnets), Some(groups)) =
            (ids(&e.route_tables, &table_ids), ids(&e.subnets, &subnet_ids), ids(&e.groups, &group_ids))
        else {
            continue;
        };
        let found = pick(
            &observed.vpc_endpoints,
            &e.component,
            |x| &x.tags,
            |x| !going(&x.state) && in_vpc(&x.vpc_id),
            |x| &x.id,
        );
        let Some(found) = found else {
            change(
                format!("{} ({}) does not exist", e.component, e.service),
                &e.component,
                Action::CreateVpcEndpoint(EndpointSpec {
                    vpc_id: vpc_id.clone(),
                    service: e.service.clone(),
                    gateway: e.gateway,
                    route_table_ids: tables,
                    subnet_ids: subnets,
                    group_ids: groups,
                    token: plan.owner.client_token(&e.component, &previous.endpoints),
                    tags: plan.tags_for(&e.component),
                }),
            );
            continue;
        };
        if found.state != "available" {
            waiting.push(format!("{} ({}) is {}", e.component, found.id, found.state));
        }
        let delta = |wanted: &[String], actual: &BTreeSet<String>| -> (Vec<String>, Vec<String>) {
            let wanted: BTreeSet<&String> = wanted.iter().collect();
            (
                wanted.iter().filter(|w| !actual.contains(**w)).map(|w| (*w).clone()).collect(),
                actual.iter().filter(|a| !wanted.contains(a)).cloned().collect(),
            )
        };
        let (add_route_tables, remove_route_tables) = delta(&tables, &found.route_table_ids);
        let (add_subnets, remove_subnets) = delta(&subnets, &found.subnet_ids);
        let (add_groups, remove_groups) = delta(&groups, &found.group_ids);
        let modify = EndpointChange {
            endpoint_id: found.id.clone(),
            add_route_tables,
            remove_route_tables,
            add_subnets,
            remove_subnets,
            add_groups,
            remove_groups,
        };
        if modify != (EndpointChange { endpoint_id: found.id.clone(), ..Default::default() }) {
            change(
                format!(
                    "{} ({}) is not in the planned route tables, subnets or security groups",
                    e.component, found.id
                ),
                &e.component,
                Action::ModifyVpcEndpoint(modify),
            );
        }
        if let Some((what, action)) = retag(&e.component, Tagged::Ec2(found.id.clone()), &found.tags) {
            change(what, &e.component, action);
        }
    }

    // The VPC Link. Its subnets and groups cannot be changed: a link that differs is replaced.
    if let Some(l) = &plan.vpc_link
        && let (Some(subnets), Some(groups)) = (ids(&l.subnets, &subnet_ids), ids(&l.groups, &group_ids))
    {
        let alive = |x: &VpcLink| !matches!(x.status.as_str(), "DELETING" | "FAILED" | "INACTIVE");
        match pick(&observed.vpc_links, &l.component, |x| &x.tags, alive, |x| &x.id) {
            None => change(
                format!("the VPC Link {} does not exist", l.name),
                &l.component,
                Action::CreateVpcLink {
                    name: l.name.clone(),
                    subnet_ids: subnets,
                    group_ids: groups,
                    tags: plan.tags_for(&l.component),
                },
            ),
            Some(found) => {
                let same = found.subnet_ids == subnets.iter().cloned().collect::<BTreeSet<_>>()
                    && found.group_ids == groups.iter().cloned().collect::<BTreeSet<_>>();
                if !same {
                    change(
                        format!(
                            "the VPC Link {} is not in the planned subnets and security group; it is replaced",
                            found.id
                        ),
                        &l.component,
                        Action::Delete(Deletion::VpcLink(found.id.clone())),
                    );
                } else if found.status != "AVAILABLE" {
                    waiting.push(format!("the VPC Link {} is {}", found.id, found.status));
                }
                if let Some((what, action)) = retag(&l.component, Tagged::VpcLink(found.id.clone()), &found.tags) {
                    change(what, &l.component, action);
                }
            }
        }
    }

    kms(plan, observed, &mut d, retag);
    extras(plan, observed, &vpc_id, &mut d, &mut waiting);
    d.waiting.extend(waiting);
    d
}

/// The key and its alias.
fn kms(
    plan: &NetworkPlan,
    observed: &Observed,
    d: &mut Diff,
    retag: impl Fn(&str, Tagged, &Tags) -> Option<(String, Action)>,
) {
    let alias = plan.owner.kms_alias();
    let usable = |k: &&KmsKey| k.state.as_deref() != Some("PendingDeletion");
    let key = match observed.alias.as_ref().and_then(|a| a.target_key_id.as_deref()) {
        Some(target) => match observed.kms_keys.iter().find(|k| k.key_id == target) {
            Some(k) => Some(k),
            None => {
                d.conflict = Some(Error::NameTaken {
                    what: "KMS alias".into(),
                    name: alias,
                    why: format!("it names key {target}, which this Stack did not create"),
                });
                return;
            }
        },
        None => {
            // Created but not aliased (a crash in between): found by its tags.
            let key = observed.kms_keys.iter().filter(usable).min_by(|a, b| a.key_id.cmp(&b.key_id));
            let change = match key {
                Some(k) => Change {
                    what: format!("the alias {alias} does not exist"),
                    component: KMS.into(),
                    action: Action::CreateAlias { alias: alias.clone(), key_id: k.key_id.clone() },
                },
                None => Change {
                    what: "the stack's KMS key does not exist".into(),
                    component: KMS.into(),
                    action: Action::CreateKey { description: plan.key_description(), tags: plan.tags_for(KMS) },
                },
            };
            d.changes.push(change);
            key
        }
    };
    if let Some(k) = key {
        if k.state.as_deref() == Some("PendingDeletion") {
            d.conflict = Some(Error::KmsKeyPendingDeletion { key_id: k.key_id.clone() });
        }
        if let Some((what, action)) = retag(KMS, Tagged::Key(k.key_id.clone()), &k.tags) {
            d.changes.push(Change { what, component: KMS.into(), action });
        }
    }
}

/// Resources of the stack that the plan no longer has (a spec change: fewer NAT gateways, no VPC
/// Link) or has twice, removed once nothing depends on them.
fn extras(plan: &NetworkPlan, observed: &Observed, vpc_id: &str, d: &mut Diff, waiting: &mut Vec<String>) {
    let planned_actions: Vec<Action> = d.changes.iter().map(|c| c.action.clone()).collect();
    let chosen = |c: Option<&str>, id: &str, pick_id: Option<&str>| -> bool { c.is_some() && pick_id == Some(id) };
    let mut delete = |what: String, component: &str, deletion: Deletion| {
        d.changes.push(Change { what, component: component.into(), action: Action::Delete(deletion) });
    };

    let link_plan = plan.vpc_link.as_ref().map(|l| l.component.as_str());
    let live_links: Vec<&VpcLink> = observed.vpc_links.iter().filter(|l| l.status != "DELETING").collect();
    let keep_link = link_plan.and_then(|c| {
        pick(
            &observed.vpc_links,
            c,
            |x| &x.tags,
            |x| !matches!(x.status.as_str(), "DELETING" | "FAILED" | "INACTIVE"),
            |x| &x.id,
        )
    });
    for l in &live_links {
        if !chosen(component(&l.tags), &l.id, keep_link.map(|k| k.id.as_str())) {
            delete(
                format!("the VPC Link {} is not in the plan", l.id),
                component(&l.tags).unwrap_or(VPCLINK),
                Deletion::VpcLink(l.id.clone()),
            );
        }
    }
    if observed.vpc_links.iter().any(|l| l.status == "DELETING") {
        waiting.push("a VPC Link is being deleted".into());
    }

    let planned_nats: BTreeSet<&str> = plan.nat_gateways.iter().map(|n| n.component.as_str()).collect();
    let mut live_nat_addresses: BTreeSet<&str> = BTreeSet::new();
    for n in observed.nat_gateways.iter().filter(|n| !gone(&n.state)) {
        let c = component(&n.tags).unwrap_or_default();
        let keep = planned_nats.contains(c)
            && pick(&observed.nat_gateways, c, |x| &x.tags, |x| !going(&x.state) && x.vpc_id == vpc_id, |x| &x.id)
                .is_some_and(|k| k.id == n.id);
        if n.state == "deleting" {
            waiting.push(format!("NAT gateway {} is being deleted", n.id));
            live_nat_addresses.extend(n.allocation_ids.iter().map(String::as_str));
        } else if keep {
            live_nat_addresses.extend(n.allocation_ids.iter().map(String::as_str));
        } else {
            delete(format!("NAT gateway {} ({c}) is not in the plan", n.id), c, Deletion::NatGateway(n.id.clone()));
            live_nat_addresses.extend(n.allocation_ids.iter().map(String::as_str));
        }
    }
    let planned_addresses: BTreeSet<&str> = plan.nat_gateways.iter().map(|n| n.address.as_str()).collect();
    for a in &observed.addresses {
        let c = component(&a.tags).unwrap_or_default();
        let keep = planned_addresses.contains(c)
            && pick(&observed.addresses, c, |x| &x.tags, |_| true, |x| &x.allocation_id)
                .is_some_and(|k| k.allocation_id == a.allocation_id);
        if !keep && !live_nat_addresses.contains(a.allocation_id.as_str()) {
            delete(
                format!("Elastic IP {} ({c}) is not in the plan", a.allocation_id),
                c,
                Deletion::Address(a.allocation_id.clone()),
            );
        }
    }

    // Route tables: a surplus one (a create retried after its answer was lost makes a second
    // table with the same component) loses its subnets first, then goes once no endpoint routes
    // through it (the kept table took its place in the endpoint just before).
    let planned_tables: BTreeSet<&str> = plan.route_tables.iter().map(|t| t.component.as_str()).collect();
    for t in &observed.route_tables {
        let c = component(&t.tags).unwrap_or_default();
        let keep = planned_tables.contains(c)
            && pick(&observed.route_tables, c, |x| &x.tags, |x| x.vpc_id == vpc_id, |x| &x.id)
                .is_some_and(|k| k.id == t.id);
        if keep {
            continue;
        }
        let what = if planned_tables.contains(c) { "a second table of the component" } else { "not in the plan" };
        let associations: Vec<&str> =
            t.associations.iter().filter(|a| a.subnet_id.is_some()).map(|a| a.id.as_str()).collect();
        let routed = observed.vpc_endpoints.iter().any(|e| !going(&e.state) && e.route_table_ids.contains(&t.id));
        if !associations.is_empty() {
            for a in associations {
                let deletion = Deletion::Disassociate(a.to_string());
                if !planned_actions.contains(&Action::Delete(deletion.clone())) {
                    delete(
                        format!("route table {} ({c}) is {what}; its association {a} goes first", t.id),
                        c,
                        deletion,
                    );
                }
            }
        } else if routed {
            waiting.push(format!("route table {} ({c}) is {what}; a VPC endpoint still routes through it", t.id));
        } else {
            delete(format!("route table {} ({c}) is {what}", t.id), c, Deletion::RouteTable(t.id.clone()));
        }
    }

    // A second internet gateway or VPC endpoint of a component: detached, then deleted.
    for g in &observed.internet_gateways {
        let keep = plan.internet_gateway
            && pick(&observed.internet_gateways, IGW, |x| &x.tags, |_| true, |x| &x.id).is_some_and(|k| k.id == g.id);
        if keep {
            continue;
        }
        match g.attached_vpcs.first() {
            Some(attached) => delete(
                format!("internet gateway {} is not the stack's one; detached from {attached} first", g.id),
                IGW,
                Deletion::DetachInternetGateway { gateway_id: g.id.clone(), vpc_id: attached.clone() },
            ),
            None => delete(
                format!("internet gateway {} is not the stack's one", g.id),
                IGW,
                Deletion::InternetGateway(g.id.clone()),
            ),
        }
    }
    let planned_endpoints: BTreeSet<&str> = plan.endpoints.iter().map(|e| e.component.as_str()).collect();
    let surplus_endpoints: Vec<String> = observed
        .vpc_endpoints
        .iter()
        .filter(|e| !going(&e.state))
        .filter(|e| {
            let c = component(&e.tags).unwrap_or_default();
            !(planned_endpoints.contains(c)
                && pick(&observed.vpc_endpoints, c, |x| &x.tags, |x| !going(&x.state) && x.vpc_id == vpc_id, |x| &x.id)
                    .is_some_and(|k| k.id == e.id))
        })
        .map(|e| e.id.clone())
        .collect();
    if !surplus_endpoints.is_empty() {
        delete(
            format!(
                "VPC endpoints {} are not in the plan or a second one of their component",
                surplus_endpoints.join(", ")
            ),
            "vpce",
            Deletion::VpcEndpoints(surplus_endpoints),
        );
    }

    // A second KMS key (CreateKey has no idempotency token): scheduled for deletion once the
    // alias names the kept one.
    if let Some(target) = observed.alias.as_ref().and_then(|a| a.target_key_id.as_deref()) {
        for k in observed.kms_keys.iter().filter(|k| k.state.as_deref() != Some("PendingDeletion")) {
            if k.key_id != target {
                delete(
                    format!("KMS key {} is a second key of the stack; the alias names {target}", k.key_id),
                    KMS,
                    Deletion::Key(k.key_id.clone()),
                );
            }
        }
    }

    // A second VPC, once nothing of the stack is left in it.
    for v in observed.vpcs.iter().filter(|v| v.id != vpc_id) {
        let used = observed.subnets.iter().any(|x| x.vpc_id == v.id)
            || observed.route_tables.iter().any(|x| x.vpc_id == v.id)
            || observed.security_groups.iter().any(|x| x.vpc_id == v.id)
            || observed.nat_gateways.iter().any(|x| !gone(&x.state) && x.vpc_id == v.id)
            || observed.vpc_endpoints.iter().any(|x| !gone(&x.state) && x.vpc_id == v.id)
            || observed.internet_gateways.iter().any(|g| g.attached_vpcs.contains(&v.id));
        if used {
            waiting.push(format!("VPC {} is a second VPC of the stack; what is in it goes first", v.id));
        } else {
            delete(format!("VPC {} is a second VPC of the stack", v.id), VPC, Deletion::Vpc(v.id.clone()));
        }
    }

    let planned_groups: BTreeSet<&str> = plan.security_groups.iter().map(|g| g.component.as_str()).collect();
    for g in &observed.security_groups {
        let c = component(&g.tags).unwrap_or_default();
        let keep = planned_groups.contains(c)
            && pick(&observed.security_groups, c, |x| &x.tags, |x| x.vpc_id == vpc_id, |x| &x.id)
                .is_some_and(|k| k.id == g.id);
        // A group goes after what uses it (the VPC Link): AWS refuses before.
        let used = c == SG_VPCLINK && !observed.vpc_links.is_empty();
        if !keep && !used {
            delete(
                format!("security group {} ({c}) is not in the plan", g.id),
                c,
                Deletion::SecurityGroup(g.id.clone()),
            );
        }
    }
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
        for k in observed.kms_keys.iter().filter(|k| k.state.as_deref() != Some("PendingDeletion")) {
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
/// gateways (until AWS reports them deleted), their Elastic IPs, the internet gateway, route
/// tables, security groups, subnets, the VPC; then the alias and the key. What is `kept` stays.
pub fn teardown(observed: &Observed, alias: &str, kept: &Kept) -> Teardown {
    let step = |what: String, component: &str, deletion: Deletion| {
        Teardown::Step(Change { what, component: component.into(), action: Action::Delete(deletion) })
    };
    let name = |tags: &Tags| component(tags).unwrap_or_default().to_string();

    if let Some(l) = observed.vpc_links.iter().find(|l| l.status != "DELETING") {
        return step(format!("deleting the VPC Link {}", l.id), &name(&l.tags), Deletion::VpcLink(l.id.clone()));
    }
    if observed.vpc_links.iter().any(|l| l.status == "DELETING") {
        return Teardown::Waiting("API Gateway is deleting the VPC Link".into());
    }
    let endpoints: Vec<String> =
        observed.vpc_endpoints.iter().filter(|e| !going(&e.state)).map(|e| e.id.clone()).collect();
    if !endpoints.is_empty() {
        return step(
            format!("deleting the VPC endpoints {}", endpoints.join(", ")),
            "vpce",
            Deletion::VpcEndpoints(endpoints),
        );
    }
    if observed.vpc_endpoints.iter().any(|e| e.state == "deleting") {
        return Teardown::Waiting("EC2 is deleting the VPC endpoints".into());
    }
    if let Some(n) = observed.nat_gateways.iter().find(|n| !going(&n.state)) {
        return step(format!("deleting NAT gateway {}", n.id), &name(&n.tags), Deletion::NatGateway(n.id.clone()));
    }
    if let Some(n) = observed.nat_gateways.iter().find(|n| n.state == "deleting") {
        return Teardown::Waiting(format!("EC2 is deleting NAT gateway {}", n.id));
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
    if let Some(k) =
        observed.kms_keys.iter().find(|k| k.state.as_deref() != Some("PendingDeletion") && !kept.contains(&k.key_id))
    {
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
        .filter_map(|n| pick(&observed.nat_gateways, &n.component, |x| &x.tags, |x| !going(&x.state), |x| &x.id))
        .map(|n| n.id.clone())
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
        .filter_map(|e| pick(&observed.vpc_endpoints, &e.component, |x| &x.tags, |x| !going(&x.state), |x| &x.id))
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
        route_table_ids,
        vpc_endpoint_ids,
        app_security_group_id: group(SG_APP),
        vpc_link_id: plan.vpc_link.as_ref().and_then(|l| {
            pick(&observed.vpc_links, &l.component, |x| &x.tags, |x| x.status != "DELETING", |x| &x.id)
                .map(|l| l.id.clone())
        }),
        kms_key_arn: key.map(|k| k.arn.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
