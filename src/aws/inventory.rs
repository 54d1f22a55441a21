//! What the operator's resources in one (account, region) look like, observed in bulk: one
//! tag-filtered, paginated Describe per resource type, shared by every reconcile of that account
//! and refreshed when older than the resync period (DESIGN §3). Mutations update it from their
//! responses, so AWS calls in steady state grow with the number of resource types, not of objects.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, IpPermission};

use super::errors::{Caller, aws_error};
use super::limiter::{Limiter, Service};
use crate::account_link::template::OWNER_UID_TAG;
use crate::database::aws::observed_instance;
use crate::database::plan::ObservedInstance;
use crate::error::{Error, Result};

/// How long a resource the operator created is believed to exist although a Describe does not show
/// it yet: EC2 and the other APIs are eventually consistent, and a create repeated because a list
/// lagged would be a duplicate.
const CREATE_GRACE: Duration = Duration::from_secs(120);

/// A scope's lists are refreshed no sooner than this many times the last refresh took, after it
/// ended: when listing is slow (many resources, a slow or throttling endpoint), the inventory
/// spends at most about a quarter of its time listing, and reconciles work from the view
/// mutations keep true in between.
const REFRESH_SPACING: u32 = 3;

/// After a refresh failed for a reason that passes (throttling, a timeout, a 5xx), no list is tried
/// again for the scope sooner than this, or than `REFRESH_SPACING` times the failed attempt: the
/// reconciles that wanted it share its outcome instead of each trying again, one after another,
/// against an endpoint that is already struggling.
const FAILED_REFRESH_PAUSE: Duration = Duration::from_secs(1);

pub use super::tags::Tags;

/// The (account, region) an inventory describes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub account: String,
    pub region: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Vpc {
    pub id: String,
    pub cidr: String,
    pub tags: Tags,
    /// `enableDnsSupport` and `enableDnsHostnames`; EC2 reports them only per VPC, so they are
    /// asked once when the VPC is first seen and then kept up to date from the operator's changes.
    pub dns_support: Option<bool>,
    pub dns_hostnames: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub cidr: String,
    pub zone: String,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteTarget {
    Local,
    /// An internet gateway or a gateway VPC endpoint.
    Gateway(String),
    Nat(String),
    /// Anything else (peering, transit gateway, instance, ...): never one of the operator's.
    Other(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// A CIDR, or a prefix list ID for gateway endpoint routes.
    pub destination: String,
    pub target: RouteTarget,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Association {
    pub id: String,
    pub subnet_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: String,
    pub routes: Vec<Route>,
    pub associations: Vec<Association>,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InternetGateway {
    pub id: String,
    pub attached_vpcs: Vec<String>,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Address {
    pub allocation_id: String,
    pub association_id: Option<String>,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NatGateway {
    pub id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    /// Lowercase: `pending`, `available`, `deleting`, `deleted`, `failed`.
    pub state: String,
    pub allocation_ids: Vec<String>,
    pub tags: Tags,
}

/// Where a security group rule admits traffic from (ingress) or to (egress).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Cidr(String),
    CidrV6(String),
    Group(String),
    PrefixList(String),
}

/// One security group rule with a single source: EC2 groups rules by port range, this splits them
/// so that sets can be compared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// `tcp`, `udp`, `icmp` or `-1` (all).
    pub protocol: String,
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SecurityGroup {
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    pub ingress: BTreeSet<Rule>,
    pub egress: BTreeSet<Rule>,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VpcEndpoint {
    pub id: String,
    pub vpc_id: String,
    pub service: String,
    pub gateway: bool,
    /// Lowercase: `pending`, `available`, `deleting`, `deleted`, `failed`, ...
    pub state: String,
    pub subnet_ids: BTreeSet<String>,
    pub route_table_ids: BTreeSet<String>,
    pub group_ids: BTreeSet<String>,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VpcLink {
    pub id: String,
    pub name: String,
    pub subnet_ids: BTreeSet<String>,
    pub group_ids: BTreeSet<String>,
    /// `PENDING`, `AVAILABLE`, `DELETING`, `FAILED`, `INACTIVE`.
    pub status: String,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KmsKey {
    pub key_id: String,
    pub arn: String,
    /// `Enabled`, `PendingDeletion`, ...; asked once per key (DescribeKey), then kept up to date
    /// from the operator's own changes.
    pub state: Option<String>,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KmsAlias {
    pub name: String,
    pub target_key_id: Option<String>,
}

/// A DB subnet group. RDS reports no tags with it: the Database finds its own by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbSubnetGroup {
    pub name: String,
    pub vpc_id: Option<String>,
    pub subnet_ids: Vec<String>,
}

/// A Secrets Manager secret's metadata (never its value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub arn: String,
    pub kms_key_id: Option<String>,
    /// The version labelled `AWSCURRENT`: what a reader gets.
    pub current_version: Option<String>,
    /// Scheduled for deletion (by a person, or an earlier deletion with a recovery window).
    pub scheduled_for_deletion: bool,
    pub tags: Tags,
}

/// The resource types the inventory lists, one bulk call (and its pages) each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Vpcs,
    Subnets,
    RouteTables,
    InternetGateways,
    Addresses,
    NatGateways,
    SecurityGroups,
    VpcEndpoints,
    VpcLinks,
    KmsKeys,
    KmsAliases,
    DbInstances,
    DbSubnetGroups,
    Secrets,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Vpcs,
        Kind::Subnets,
        Kind::RouteTables,
        Kind::InternetGateways,
        Kind::Addresses,
        Kind::NatGateways,
        Kind::SecurityGroups,
        Kind::VpcEndpoints,
        Kind::VpcLinks,
        Kind::KmsKeys,
        Kind::KmsAliases,
        Kind::DbInstances,
        Kind::DbSubnetGroups,
        Kind::Secrets,
    ];

    /// The service its list calls.
    fn service(self) -> Service {
        match self {
            Kind::VpcLinks => Service::ApiGateway,
            Kind::KmsKeys => Service::Tagging,
            Kind::KmsAliases => Service::Kms,
            Kind::DbInstances | Kind::DbSubnetGroups => Service::Rds,
            Kind::Secrets => Service::SecretsManager,
            _ => Service::Ec2,
        }
    }
}

/// A resource the operator just created, taken from the create call's response.
#[derive(Clone, Debug)]
pub enum Created {
    Vpc(Vpc),
    Subnet(Subnet),
    RouteTable(RouteTable),
    InternetGateway(InternetGateway),
    Address(Address),
    NatGateway(NatGateway),
    SecurityGroup(SecurityGroup),
    VpcEndpoint(VpcEndpoint),
    VpcLink(VpcLink),
    KmsKey(KmsKey),
    DbInstance(ObservedInstance),
    DbSubnetGroup(DbSubnetGroup),
    Secret(SecretInfo),
}

impl Created {
    fn kind(&self) -> Kind {
        match self {
            Created::Vpc(_) => Kind::Vpcs,
            Created::Subnet(_) => Kind::Subnets,
            Created::RouteTable(_) => Kind::RouteTables,
            Created::InternetGateway(_) => Kind::InternetGateways,
            Created::Address(_) => Kind::Addresses,
            Created::NatGateway(_) => Kind::NatGateways,
            Created::SecurityGroup(_) => Kind::SecurityGroups,
            Created::VpcEndpoint(_) => Kind::VpcEndpoints,
            Created::VpcLink(_) => Kind::VpcLinks,
            Created::KmsKey(_) => Kind::KmsKeys,
            Created::DbInstance(_) => Kind::DbInstances,
            Created::DbSubnetGroup(_) => Kind::DbSubnetGroups,
            Created::Secret(_) => Kind::Secrets,
        }
    }

    fn id(&self) -> &str {
        match self {
            Created::Vpc(r) => &r.id,
            Created::Subnet(r) => &r.id,
            Created::RouteTable(r) => &r.id,
            Created::InternetGateway(r) => &r.id,
            Created::Address(r) => &r.allocation_id,
            Created::NatGateway(r) => &r.id,
            Created::SecurityGroup(r) => &r.id,
            Created::VpcEndpoint(r) => &r.id,
            Created::VpcLink(r) => &r.id,
            Created::KmsKey(r) => &r.key_id,
            Created::DbInstance(r) => &r.identifier,
            Created::DbSubnetGroup(r) => &r.name,
            Created::Secret(r) => &r.name,
        }
    }
}

/// What a mutation changed, so that the inventory stays true without waiting for its period. Each
/// is applied to the cached view from the mutation's own request and response, so a mutation costs
/// no list: converging N objects makes O(N) calls, not O(N²).
#[derive(Clone, Debug)]
pub enum Recorded {
    /// A new resource, from the create call's response.
    Created(Created),
    /// Resources of this kind changed in a way the response does not tell (a rare repair, or AWS
    /// finishing what a reconcile waits for): the kind is listed again at the next read.
    Changed(Kind),
    /// A resource was deleted: forgotten at once. The kinds AWS deletes asynchronously (NAT
    /// gateways, VPC endpoints, which stay `deleting` a while) are listed again at the next read.
    Deleted(Kind, String),
    /// The DNS attributes of a VPC were set.
    VpcDns { vpc_id: String, support: Option<bool>, hostnames: Option<bool> },
    /// A key's state changed (created, scheduled for deletion).
    KeyState { key_id: String, state: String },
    /// An internet gateway was attached to (`attached`) or detached from a VPC.
    GatewayAttachment { gateway_id: String, vpc_id: String, attached: bool },
    /// A subnet was associated with a route table.
    Associated { route_table_id: String, association_id: String, subnet_id: String },
    /// A route table association was removed.
    Disassociated { association_id: String },
    /// A route was created or replaced (`Some` target) or deleted (`None`).
    Route { route_table_id: String, destination: String, target: Option<RouteTarget> },
    /// A security group rule was authorized (`added`) or revoked.
    Rule { group_id: String, egress: bool, rule: Rule, added: bool },
    /// An alias now points at a key.
    Alias { name: String, target_key_id: String },
    /// Tags were added or removed on a resource of `kind`.
    Tagged { kind: Kind, id: String, add: Tags, remove: Vec<String> },
    /// A resource as a mutation's response or a read of that one resource shows it now (an
    /// instance RDS is working on, a modified subnet group, a secret's new version).
    Observed(Created),
}

/// One consistent view of an (account, region), as a reconcile reads it. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Availability zones in the region, by name.
    pub zones: Arc<Vec<String>>,
    pub vpcs: Arc<Vec<Arc<Vpc>>>,
    pub subnets: Arc<Vec<Arc<Subnet>>>,
    pub route_tables: Arc<Vec<Arc<RouteTable>>>,
    pub internet_gateways: Arc<Vec<Arc<InternetGateway>>>,
    pub addresses: Arc<Vec<Arc<Address>>>,
    pub nat_gateways: Arc<Vec<Arc<NatGateway>>>,
    pub security_groups: Arc<Vec<Arc<SecurityGroup>>>,
    pub vpc_endpoints: Arc<Vec<Arc<VpcEndpoint>>>,
    pub vpc_links: Arc<Vec<Arc<VpcLink>>>,
    pub kms_keys: Arc<Vec<Arc<KmsKey>>>,
    pub kms_aliases: Arc<Vec<Arc<KmsAlias>>>,
    /// The account's DB instances carrying the owner-UID tag, DB subnet groups, and the secrets
    /// carrying the owner-UID tag (those scheduled for deletion too).
    pub db_instances: Arc<Vec<Arc<ObservedInstance>>>,
    pub db_subnet_groups: Arc<Vec<Arc<DbSubnetGroup>>>,
    pub secrets: Arc<Vec<Arc<SecretInfo>>>,
}

impl Snapshot {
    /// The IDs of the view's resources of `kind`, as `Created::id` names them.
    fn each_id(&self, kind: Kind) -> Box<dyn Iterator<Item = &String> + '_> {
        fn of<T>(list: &[T], id: fn(&T) -> &String) -> Box<dyn Iterator<Item = &String> + '_> {
            Box::new(list.iter().map(id))
        }
        match kind {
            Kind::Vpcs => of(&self.vpcs, |r| &r.id),
            Kind::Subnets => of(&self.subnets, |r| &r.id),
            Kind::RouteTables => of(&self.route_tables, |r| &r.id),
            Kind::InternetGateways => of(&self.internet_gateways, |r| &r.id),
            Kind::Addresses => of(&self.addresses, |r| &r.allocation_id),
            Kind::NatGateways => of(&self.nat_gateways, |r| &r.id),
            Kind::SecurityGroups => of(&self.security_groups, |r| &r.id),
            Kind::VpcEndpoints => of(&self.vpc_endpoints, |r| &r.id),
            Kind::VpcLinks => of(&self.vpc_links, |r| &r.id),
            Kind::KmsKeys => of(&self.kms_keys, |r| &r.key_id),
            Kind::KmsAliases => of(&self.kms_aliases, |r| &r.name),
            Kind::DbInstances => of(&self.db_instances, |r| &r.identifier),
            Kind::DbSubnetGroups => of(&self.db_subnet_groups, |r| &r.name),
            Kind::Secrets => of(&self.secrets, |r| &r.name),
        }
    }

    /// Adds a resource the view does not have.
    fn add(&mut self, created: &Created) {
        match created {
            Created::Vpc(r) => Arc::make_mut(&mut self.vpcs).push(Arc::new(r.clone())),
            Created::Subnet(r) => Arc::make_mut(&mut self.subnets).push(Arc::new(r.clone())),
            Created::RouteTable(r) => Arc::make_mut(&mut self.route_tables).push(Arc::new(r.clone())),
            Created::InternetGateway(r) => Arc::make_mut(&mut self.internet_gateways).push(Arc::new(r.clone())),
            Created::Address(r) => Arc::make_mut(&mut self.addresses).push(Arc::new(r.clone())),
            Created::NatGateway(r) => Arc::make_mut(&mut self.nat_gateways).push(Arc::new(r.clone())),
            Created::SecurityGroup(r) => Arc::make_mut(&mut self.security_groups).push(Arc::new(r.clone())),
            Created::VpcEndpoint(r) => Arc::make_mut(&mut self.vpc_endpoints).push(Arc::new(r.clone())),
            Created::VpcLink(r) => Arc::make_mut(&mut self.vpc_links).push(Arc::new(r.clone())),
            Created::KmsKey(r) => Arc::make_mut(&mut self.kms_keys).push(Arc::new(r.clone())),
            Created::DbInstance(r) => Arc::make_mut(&mut self.db_instances).push(Arc::new(r.clone())),
            Created::DbSubnetGroup(r) => Arc::make_mut(&mut self.db_subnet_groups).push(Arc::new(r.clone())),
            Created::Secret(r) => Arc::make_mut(&mut self.secrets).push(Arc::new(r.clone())),
        }
    }
}

/// The clients a refresh uses, all acting as one link's role in the scope's region.
pub struct Clients<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub apigateway: &'a aws_sdk_apigatewayv2::Client,
    pub kms: &'a aws_sdk_kms::Client,
    pub tagging: &'a aws_sdk_resourcegroupstagging::Client,
    pub rds: &'a aws_sdk_rds::Client,
    pub secrets: &'a aws_sdk_secretsmanager::Client,
    pub caller: &'a Caller,
    /// Every list and describe goes through the limiter's adaptive pace for the scope's account.
    pub limiter: &'a Limiter,
    pub account: &'a str,
}

impl Clients<'_> {
    /// Runs the read `call` of `service` through the limiter.
    async fn read<T, F, Fut>(&self, service: Service, call: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.limiter.read(self.account, service, call).await
    }
}

/// The inventories of every (account, region) the operator works in.
#[derive(Default)]
pub struct Inventory {
    /// Each scope's view, and the lock a refresh of it holds.
    scopes: Mutex<HashMap<Scope, ScopeState>>,
}

type ScopeState = (Arc<tokio::sync::Mutex<State>>, Arc<tokio::sync::Mutex<()>>);

#[derive(Default)]
struct State {
    snapshot: Snapshot,
    /// When each kind was last listed, and whether a mutation made that list stale.
    listed: HashMap<Kind, (Instant, bool)>,
    /// Resources created by the operator that a list has not shown yet, with when they were made.
    pending: Vec<(Instant, Created)>,
    /// While a refresh's lists are under way: what the operator changed meanwhile, applied again
    /// over the lists when they come back.
    journal: Option<Vec<Recorded>>,
    /// How long the last refresh took, from its first request to its last answer.
    last_refresh: Duration,
    /// When the last list of each kind began.
    list_began: HashMap<Kind, Instant>,
    /// The last refresh's error, if it failed for a reason that passes, with when it ended and how
    /// long it took.
    failed: Option<(Instant, Duration, Error)>,
    /// DNS attributes per VPC ID and key states per key ID, which the bulk lists do not carry.
    vpc_dns: HashMap<String, (Option<bool>, Option<bool>)>,
    key_states: HashMap<String, String>,
}

impl Inventory {
    fn state(&self, scope: &Scope) -> ScopeState {
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.entry(scope.clone()).or_default().clone()
    }

    /// The scope's resources, listing again each kind older than `max_age` (or than
    /// `REFRESH_SPACING` times the last refresh, when listing is that slow) or changed since. One
    /// refresh at a time per scope. The lists run without holding the view: a reconcile that finds
    /// a refresh under way reads the view as it is (kept true by the mutations' records) instead of
    /// waiting, unless a kind it needs was never listed or is known to be out of date.
    pub async fn snapshot(&self, scope: &Scope, clients: &Clients<'_>, max_age: Duration) -> Result<Snapshot> {
        let (state, refresh) = self.state(scope);
        {
            let mut st = state.lock().await;
            if st.snapshot.zones.is_empty() {
                st.snapshot.zones = Arc::new(clients.read(Service::Ec2, || list_zones(clients)).await?);
            }
            let stale = st.stale(max_age, Instant::now());
            if stale.is_empty() {
                return Ok(st.snapshot.clone());
            }
            if let Some(shared) = st.after_failure(&stale, Instant::now()) {
                return shared;
            }
            let must_wait = st.must_wait(&stale);
            if !must_wait && refresh.try_lock().is_err() {
                return Ok(st.snapshot.clone());
            }
        }
        let _refreshing = refresh.lock().await;
        let (stale, started) = {
            let mut st = state.lock().await;
            let started = Instant::now();
            let stale = st.stale(max_age, started);
            if stale.is_empty() {
                return Ok(st.snapshot.clone());
            }
            // The refresh this call waited for may just have failed.
            if let Some(shared) = st.after_failure(&stale, started) {
                return shared;
            }
            st.journal = Some(Vec::new());
            (stale, started)
        };
        let lists =
            futures::future::try_join_all(stale.iter().map(|k| clients.read(k.service(), || list(*k, clients)))).await;
        let mut st = state.lock().await;
        let journal = st.journal.take().unwrap_or_default();
        let ended = Instant::now();
        let lists = match lists {
            Ok(lists) => lists,
            Err(e) => {
                // The records made meanwhile are in the view already; there are no lists to apply
                // them over.
                st.failed = passing(&e).map(|copy| (ended, ended.duration_since(started), copy));
                return Err(e);
            }
        };
        st.failed = None;
        for (kind, listed) in stale.iter().zip(lists) {
            st.apply(listed);
            st.listed.insert(*kind, (ended, false));
            st.list_began.insert(*kind, started);
        }
        st.last_refresh = ended.duration_since(started);
        // What the operator changed while the lists were under way, which they may not show.
        for recorded in journal {
            st.replay(recorded);
        }
        st.merge_pending(&stale);
        st.fill_details(clients).await?;
        super::tags::forget_unused();
        Ok(st.snapshot.clone())
    }

    /// Records what a mutation did.
    pub async fn record(&self, scope: &Scope, recorded: Recorded) {
        let (state, _) = self.state(scope);
        let mut state = state.lock().await;
        if let Some(journal) = state.journal.as_mut() {
            journal.push(recorded.clone());
        }
        state.record(recorded);
    }
}

impl State {
    /// The kinds to list again: never listed, changed in a way no record told, or older than
    /// `max_age`, or than `REFRESH_SPACING` times the last refresh if that is longer.
    fn stale(&self, max_age: Duration, now: Instant) -> Vec<Kind> {
        let max_age = max_age.max(self.last_refresh * REFRESH_SPACING);
        Kind::ALL
            .into_iter()
            .filter(|k| self.listed.get(k).is_none_or(|(at, dirty)| *dirty || now.duration_since(*at) > max_age))
            .collect()
    }

    /// Whether a reconcile must wait for the `stale` kinds to be listed: one of them was never
    /// listed, or a record says it is out of date. Otherwise the view, kept by the records, serves.
    fn must_wait(&self, stale: &[Kind]) -> bool {
        stale.iter().any(|k| self.listed.get(k).is_none_or(|(_, dirty)| *dirty))
    }

    /// What a reconcile gets while the pause after a failed refresh lasts: the view, if it may work
    /// from the view, or else the refresh's error. `None` when no such pause lasts.
    fn after_failure(&self, stale: &[Kind], now: Instant) -> Option<Result<Snapshot>> {
        let (ended, took, error) = self.failed.as_ref()?;
        let pause = FAILED_REFRESH_PAUSE.max(*took * REFRESH_SPACING);
        if now.duration_since(*ended) >= pause {
            return None;
        }
        // Only an error that passes is kept in `failed`; `passing` copies it.
        Some(match passing(error) {
            Some(error) if self.must_wait(stale) => Err(error),
            _ => Ok(self.snapshot.clone()),
        })
    }

    /// Applies again, after a list that began before it, what a mutation did: the lists may show
    /// the resources as they were. Creations are kept by `pending` already.
    fn replay(&mut self, recorded: Recorded) {
        if !matches!(recorded, Recorded::Created(_)) {
            self.record(recorded);
        }
    }

    fn record(&mut self, recorded: Recorded) {
        let state = self;
        match recorded {
            Recorded::Created(created) => state.add_pending(created),
            Recorded::Changed(kind) => state.mark_changed(kind),
            Recorded::Observed(now) => {
                state.pending.retain(|(_, c)| c.kind() != now.kind() || c.id() != now.id());
                state.forget(now.kind(), now.id());
                state.add_pending(now);
            }
            Recorded::Deleted(kind, id) => {
                state.pending.retain(|(_, c)| c.id() != id && !matches!(c, Created::Secret(s) if s.arn == id));
                state.forget(kind, &id);
                if matches!(kind, Kind::NatGateways | Kind::VpcEndpoints) {
                    state.mark_changed(kind);
                }
                if kind == Kind::VpcEndpoints {
                    // A gateway endpoint's routes go with it.
                    let target = RouteTarget::Gateway(id);
                    change(
                        &mut state.snapshot.route_tables,
                        |t| t.routes.iter().any(|r| r.target == target),
                        |t| t.routes.retain(|r| r.target != target),
                    );
                }
            }
            Recorded::GatewayAttachment { gateway_id, vpc_id, attached } => {
                state.edit(&gateway_id, |s| {
                    change(
                        &mut s.internet_gateways,
                        |g| g.id == gateway_id,
                        |g| {
                            g.attached_vpcs.retain(|v| *v != vpc_id);
                            if attached {
                                g.attached_vpcs.push(vpc_id.clone());
                            }
                        },
                    )
                });
            }
            Recorded::Associated { route_table_id, association_id, subnet_id } => {
                state.edit(&route_table_id, |s| {
                    change(
                        &mut s.route_tables,
                        |t| t.id == route_table_id,
                        |t| {
                            t.associations.retain(|a| a.id != association_id);
                            t.associations
                                .push(Association { id: association_id.clone(), subnet_id: Some(subnet_id.clone()) });
                        },
                    )
                });
            }
            Recorded::Disassociated { association_id } => {
                let has = |t: &RouteTable| t.associations.iter().any(|a| a.id == association_id);
                let Some(table_id) = state.snapshot.route_tables.iter().find(|t| has(t)).map(|t| t.id.clone()) else {
                    return;
                };
                state.edit(&table_id, |s| {
                    change(
                        &mut s.route_tables,
                        |t| t.id == table_id,
                        |t| t.associations.retain(|a| a.id != association_id),
                    )
                });
            }
            Recorded::Route { route_table_id, destination, target } => {
                state.edit(&route_table_id, |s| {
                    change(
                        &mut s.route_tables,
                        |t| t.id == route_table_id,
                        |t| {
                            t.routes.retain(|r| r.destination != destination);
                            if let Some(target) = &target {
                                t.routes.push(Route { destination: destination.clone(), target: target.clone() });
                            }
                        },
                    )
                });
            }
            Recorded::Rule { group_id, egress, rule, added } => {
                state.edit(&group_id, |s| {
                    change(
                        &mut s.security_groups,
                        |g| g.id == group_id,
                        |g| {
                            let rules = if egress { &mut g.egress } else { &mut g.ingress };
                            if added {
                                rules.insert(rule.clone());
                            } else {
                                rules.remove(&rule);
                            }
                        },
                    )
                });
            }
            Recorded::Alias { name, target_key_id } => {
                let aliases = Arc::make_mut(&mut state.snapshot.kms_aliases);
                aliases.retain(|a| a.name != name);
                aliases.push(Arc::new(KmsAlias { name, target_key_id: Some(target_key_id) }));
            }
            Recorded::Tagged { kind, id, add, remove } => {
                let retag = |tags: &mut Tags| {
                    tags.extend(add.iter());
                    tags.retain(|k, _| !remove.iter().any(|r| r == k));
                };
                state.edit(&id, |s| match kind {
                    Kind::Vpcs => change(&mut s.vpcs, |r| r.id == id, |r| retag(&mut r.tags)),
                    Kind::Subnets => change(&mut s.subnets, |r| r.id == id, |r| retag(&mut r.tags)),
                    Kind::RouteTables => change(&mut s.route_tables, |r| r.id == id, |r| retag(&mut r.tags)),
                    Kind::InternetGateways => change(&mut s.internet_gateways, |r| r.id == id, |r| retag(&mut r.tags)),
                    Kind::Addresses => change(&mut s.addresses, |r| r.allocation_id == id, |r| retag(&mut r.tags)),
                    Kind::NatGateways => change(&mut s.nat_gateways, |r| r.id == id, |r| retag(&mut r.tags)),
                    Kind::SecurityGroups => change(&mut s.security_groups, |r| r.id == id, |r| retag(&mut r.tags)),
                    Kind::VpcEndpoints => change(&mut s.vpc_endpoints, |r| r.id == id, |r| retag(&mut r.tags)),
                    Kind::VpcLinks => change(&mut s.vpc_links, |r| r.id == id, |r| retag(&mut r.tags)),
                    Kind::KmsKeys => change(&mut s.kms_keys, |r| r.key_id == id, |r| retag(&mut r.tags)),
                    Kind::KmsAliases | Kind::DbInstances | Kind::DbSubnetGroups | Kind::Secrets => {}
                });
            }
            Recorded::VpcDns { vpc_id, support, hostnames } => {
                let entry = state.vpc_dns.entry(vpc_id.clone()).or_default();
                entry.0 = support.or(entry.0);
                entry.1 = hostnames.or(entry.1);
                let (support, hostnames) = *entry;
                change(
                    &mut state.snapshot.vpcs,
                    |v| v.id == vpc_id,
                    |v| {
                        (v.dns_support, v.dns_hostnames) = (support, hostnames);
                    },
                );
            }
            Recorded::KeyState { key_id, state: key_state } => {
                state.key_states.insert(key_id.clone(), key_state.clone());
                change(&mut state.snapshot.kms_keys, |k| k.key_id == key_id, |k| k.state = Some(key_state.clone()));
            }
        }
    }
}

/// One kind's list, as returned by AWS.
enum Listed {
    Vpcs(Vec<Vpc>),
    Subnets(Vec<Subnet>),
    RouteTables(Vec<RouteTable>),
    InternetGateways(Vec<InternetGateway>),
    Addresses(Vec<Address>),
    NatGateways(Vec<NatGateway>),
    SecurityGroups(Vec<SecurityGroup>),
    VpcEndpoints(Vec<VpcEndpoint>),
    VpcLinks(Vec<VpcLink>),
    KmsKeys(Vec<KmsKey>),
    KmsAliases(Vec<KmsAlias>),
    DbInstances(Vec<ObservedInstance>),
    DbSubnetGroups(Vec<DbSubnetGroup>),
    Secrets(Vec<SecretInfo>),
}

impl State {
    fn apply(&mut self, listed: Listed) {
        let s = &mut self.snapshot;
        match listed {
            Listed::Vpcs(v) => s.vpcs = shared(v),
            Listed::Subnets(v) => s.subnets = shared(v),
            Listed::RouteTables(v) => s.route_tables = shared(v),
            Listed::InternetGateways(v) => s.internet_gateways = shared(v),
            Listed::Addresses(v) => s.addresses = shared(v),
            Listed::NatGateways(v) => s.nat_gateways = shared(v),
            Listed::SecurityGroups(v) => s.security_groups = shared(v),
            Listed::VpcEndpoints(v) => s.vpc_endpoints = shared(v),
            Listed::VpcLinks(v) => s.vpc_links = shared(v),
            Listed::KmsKeys(v) => s.kms_keys = shared(v),
            Listed::KmsAliases(v) => s.kms_aliases = shared(v),
            Listed::DbInstances(v) => s.db_instances = shared(v),
            Listed::DbSubnetGroups(v) => s.db_subnet_groups = shared(v),
            Listed::Secrets(v) => s.secrets = shared(v),
        }
    }

    /// Applies a change to the resource `id` in the view, and to its creation if a list has not
    /// shown it yet (which `merge_pending` would otherwise bring back as it was created).
    fn edit(&mut self, id: &str, change: impl FnOnce(&mut Snapshot)) {
        change(&mut self.snapshot);
        let s = &self.snapshot;
        for (_, created) in self.pending.iter_mut().filter(|(_, c)| c.id() == id) {
            let current = match created {
                Created::Vpc(_) => s.vpcs.iter().find(|r| r.id == id).map(|r| Created::Vpc((**r).clone())),
                Created::Subnet(_) => s.subnets.iter().find(|r| r.id == id).map(|r| Created::Subnet((**r).clone())),
                Created::RouteTable(_) => {
                    s.route_tables.iter().find(|r| r.id == id).map(|r| Created::RouteTable((**r).clone()))
                }
                Created::InternetGateway(_) => {
                    s.internet_gateways.iter().find(|r| r.id == id).map(|r| Created::InternetGateway((**r).clone()))
                }
                Created::Address(_) => {
                    s.addresses.iter().find(|r| r.allocation_id == id).map(|r| Created::Address((**r).clone()))
                }
                Created::NatGateway(_) => {
                    s.nat_gateways.iter().find(|r| r.id == id).map(|r| Created::NatGateway((**r).clone()))
                }
                Created::SecurityGroup(_) => {
                    s.security_groups.iter().find(|r| r.id == id).map(|r| Created::SecurityGroup((**r).clone()))
                }
                Created::VpcEndpoint(_) => {
                    s.vpc_endpoints.iter().find(|r| r.id == id).map(|r| Created::VpcEndpoint((**r).clone()))
                }
                Created::VpcLink(_) => s.vpc_links.iter().find(|r| r.id == id).map(|r| Created::VpcLink((**r).clone())),
                Created::KmsKey(_) => {
                    s.kms_keys.iter().find(|r| r.key_id == id).map(|r| Created::KmsKey((**r).clone()))
                }
                // Not edited in place: recorded whole (`Recorded::Observed`).
                Created::DbInstance(_) | Created::DbSubnetGroup(_) | Created::Secret(_) => None,
            };
            if let Some(current) = current {
                *created = current;
            }
        }
    }

    fn mark_changed(&mut self, kind: Kind) {
        if let Some((_, dirty)) = self.listed.get_mut(&kind) {
            *dirty = true;
        }
    }

    fn forget(&mut self, kind: Kind, id: &str) {
        let s = &mut self.snapshot;
        match kind {
            Kind::Vpcs => Arc::make_mut(&mut s.vpcs).retain(|r| r.id != id),
            Kind::Subnets => Arc::make_mut(&mut s.subnets).retain(|r| r.id != id),
            Kind::RouteTables => Arc::make_mut(&mut s.route_tables).retain(|r| r.id != id),
            Kind::InternetGateways => Arc::make_mut(&mut s.internet_gateways).retain(|r| r.id != id),
            Kind::Addresses => Arc::make_mut(&mut s.addresses).retain(|r| r.allocation_id != id),
            Kind::NatGateways => Arc::make_mut(&mut s.nat_gateways).retain(|r| r.id != id),
            Kind::SecurityGroups => Arc::make_mut(&mut s.security_groups).retain(|r| r.id != id),
            Kind::VpcEndpoints => Arc::make_mut(&mut s.vpc_endpoints).retain(|r| r.id != id),
            Kind::VpcLinks => Arc::make_mut(&mut s.vpc_links).retain(|r| r.id != id),
            Kind::KmsKeys => Arc::make_mut(&mut s.kms_keys).retain(|r| r.key_id != id),
            Kind::KmsAliases => Arc::make_mut(&mut s.kms_aliases).retain(|r| r.name != id),
            Kind::DbInstances => Arc::make_mut(&mut s.db_instances).retain(|r| r.identifier != id),
            Kind::DbSubnetGroups => Arc::make_mut(&mut s.db_subnet_groups).retain(|r| r.name != id),
            // A secret is named by its name or its ARN.
            Kind::Secrets => Arc::make_mut(&mut s.secrets).retain(|r| r.name != id && r.arn != id),
        }
    }

    /// Adds the operator's recent creations to the view. Each is judged only against a list of its
    /// kind that began after it was made and has just been applied (`just_listed`): shown there, the
    /// list is the better record and the entry goes; not shown by a list begun more than the grace
    /// period after it, it is gone; otherwise (a list begun before it, or one that lags) it stays.
    /// So a list that began before a creation and ends after it never hides it, however long the
    /// lists take or are spaced.
    fn merge_pending(&mut self, just_listed: &[Kind]) {
        let pending = std::mem::take(&mut self.pending);
        // The IDs in the view, per kind, built once: a refresh may judge thousands of creations.
        let mut in_view: HashMap<Kind, HashSet<String>> = HashMap::new();
        for (at, created) in pending {
            let kind = created.kind();
            let began = just_listed
                .contains(&kind)
                .then(|| self.list_began.get(&kind).copied())
                .flatten()
                .filter(|began| *began > at);
            let ids = in_view.entry(kind).or_insert_with(|| self.snapshot.each_id(kind).cloned().collect());
            let shown = !ids.insert(created.id().to_string());
            if !shown {
                self.snapshot.add(&created);
            }
            match began {
                Some(_) if shown => {}
                Some(began) if began.duration_since(at) > CREATE_GRACE => {
                    ids.remove(created.id());
                    self.forget(kind, created.id());
                }
                _ => self.pending.push((at, created)),
            }
        }
    }

    /// Keeps a creation until a list shows it, and adds it to the view now.
    fn add_pending(&mut self, created: Created) {
        if !self.snapshot.each_id(created.kind()).any(|id| id == created.id()) {
            self.snapshot.add(&created);
        }
        self.pending.push((Instant::now(), created));
    }

    /// Asks for what the bulk lists lack (VPC DNS attributes, key states) for resources seen for the
    /// first time; later the operator's own changes keep them current.
    async fn fill_details(&mut self, clients: &Clients<'_>) -> Result<()> {
        for vpc in self.snapshot.vpcs.iter() {
            if !self.vpc_dns.contains_key(&vpc.id) {
                let support = vpc_attribute(clients, &vpc.id, aws_sdk_ec2::types::VpcAttributeName::EnableDnsSupport);
                let hostnames =
                    vpc_attribute(clients, &vpc.id, aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames);
                let (support, hostnames) = futures::try_join!(support, hostnames)?;
                self.vpc_dns.insert(vpc.id.clone(), (Some(support), Some(hostnames)));
            }
        }
        for key in self.snapshot.kms_keys.iter() {
            if !self.key_states.contains_key(&key.key_id) {
                let described = clients
                    .read(Service::Kms, || async {
                        let out = clients.kms.describe_key().key_id(&key.key_id).send().await;
                        out.map_err(|e| aws_error("kms:DescribeKey", clients.caller, e))
                    })
                    .await?;
                let state = described.key_metadata().and_then(|m| m.key_state()).map(|s| s.as_str().to_string());
                self.key_states.insert(key.key_id.clone(), state.unwrap_or_default());
            }
        }
        let (dns, states) = (&self.vpc_dns, &self.key_states);
        let dns_of = |v: &Vpc| dns.get(&v.id).copied();
        change(
            &mut self.snapshot.vpcs,
            |v| dns_of(v).is_some_and(|known| known != (v.dns_support, v.dns_hostnames)),
            |v| (v.dns_support, v.dns_hostnames) = dns_of(v).unwrap_or((v.dns_support, v.dns_hostnames)),
        );
        let state_of = |k: &KmsKey| states.get(&k.key_id).filter(|s| !s.is_empty()).cloned();
        change(&mut self.snapshot.kms_keys, |k| k.state != state_of(k), |k| k.state = state_of(k));
        Ok(())
    }
}

/// A listed kind as the view keeps it: each entry shared, so that a change copies only that entry.
fn shared<T>(listed: Vec<T>) -> Arc<Vec<Arc<T>>> {
    Arc::new(listed.into_iter().map(Arc::new).collect())
}

/// Changes in place the entries of `list` that `which` picks. Only those are copied, and the list
/// itself only if one is picked: entries and lists are shared with the snapshots reconciles hold.
fn change<T: Clone>(list: &mut Arc<Vec<Arc<T>>>, which: impl Fn(&T) -> bool, mut how: impl FnMut(&mut T)) {
    if !list.iter().any(|e| which(e)) {
        return;
    }
    for entry in Arc::make_mut(list).iter_mut().filter(|e| which(e)) {
        how(Arc::make_mut(entry));
    }
}

/// A copy of `error` if it is a failure that passes by itself (throttling, a timeout, a 5xx), which
/// the reconciles waiting for the same refresh may share; other errors each reconcile meets itself.
fn passing(error: &Error) -> Option<Error> {
    match error {
        Error::AwsThrottled { action } => Some(Error::AwsThrottled { action: action.clone() }),
        Error::AwsUnavailable { action, detail } => {
            Some(Error::AwsUnavailable { action: action.clone(), detail: detail.clone() })
        }
        _ => None,
    }
}

/// A security group as CreateSecurityGroup leaves it: no ingress, EC2's default egress to
/// everywhere (IPv4).
pub fn new_security_group(id: &str, vpc_id: &str, name: &str, tags: Tags) -> SecurityGroup {
    let everywhere = Rule { protocol: "-1".into(), from: None, to: None, source: Source::Cidr("0.0.0.0/0".into()) };
    SecurityGroup {
        id: id.into(),
        vpc_id: vpc_id.into(),
        name: name.into(),
        ingress: BTreeSet::new(),
        egress: BTreeSet::from([everywhere]),
        tags,
    }
}

/// Only resources that carry the owner-UID tag: the operator's, and not other tools'.
fn owned() -> Filter {
    Filter::builder().name("tag-key").values(OWNER_UID_TAG).build()
}

fn ec2_tags(tags: &[aws_sdk_ec2::types::Tag]) -> Tags {
    tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect()
}

fn is_owned(tags: &Tags) -> bool {
    tags.contains_key(OWNER_UID_TAG)
}

async fn list_zones(clients: &Clients<'_>) -> Result<Vec<String>> {
    let out = clients
        .ec2
        .describe_availability_zones()
        .filters(Filter::builder().name("zone-type").values("availability-zone").build())
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await
        .map_err(|e| aws_error("ec2:DescribeAvailabilityZones", clients.caller, e))?;
    let mut zones: Vec<String> =
        out.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_string)).collect();
    zones.sort();
    Ok(zones)
}

async fn vpc_attribute(
    clients: &Clients<'_>,
    vpc_id: &str,
    attribute: aws_sdk_ec2::types::VpcAttributeName,
) -> Result<bool> {
    let out = clients
        .read(Service::Ec2, || async {
            let out = clients.ec2.describe_vpc_attribute().vpc_id(vpc_id).attribute(attribute.clone()).send().await;
            out.map_err(|e| aws_error("ec2:DescribeVpcAttribute", clients.caller, e))
        })
        .await?;
    let value = match attribute {
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames => out.enable_dns_hostnames(),
        _ => out.enable_dns_support(),
    };
    Ok(value.and_then(|v| v.value()).unwrap_or(false))
}

/// Splits EC2's grouped permissions into one rule per source.
pub fn rules_of(permissions: &[IpPermission]) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for p in permissions {
        let protocol = p.ip_protocol().unwrap_or("-1").to_string();
        let all = protocol == "-1";
        let (from, to) = if all { (None, None) } else { (p.from_port(), p.to_port()) };
        let rule = |source| Rule { protocol: protocol.clone(), from, to, source };
        out.extend(p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).map(|c| rule(Source::Cidr(c.into()))));
        out.extend(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).map(|c| rule(Source::CidrV6(c.into()))));
        out.extend(p.user_id_group_pairs().iter().filter_map(|g| g.group_id()).map(|g| rule(Source::Group(g.into()))));
        out.extend(
            p.prefix_list_ids().iter().filter_map(|l| l.prefix_list_id()).map(|l| rule(Source::PrefixList(l.into()))),
        );
    }
    out
}

/// The EC2 permission that grants exactly `rule`.
pub fn permission_of(rule: &Rule) -> IpPermission {
    use aws_sdk_ec2::types::{IpRange, Ipv6Range, PrefixListId, UserIdGroupPair};
    let mut p = IpPermission::builder().ip_protocol(&rule.protocol).set_from_port(rule.from).set_to_port(rule.to);
    p = match &rule.source {
        Source::Cidr(c) => p.ip_ranges(IpRange::builder().cidr_ip(c).build()),
        Source::CidrV6(c) => p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).build()),
        Source::Group(g) => p.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).build()),
        Source::PrefixList(l) => p.prefix_list_ids(PrefixListId::builder().prefix_list_id(l).build()),
    };
    p.build()
}

pub fn vpc_of(v: &aws_sdk_ec2::types::Vpc) -> Option<Vpc> {
    Some(Vpc {
        id: v.vpc_id()?.into(),
        cidr: v.cidr_block().unwrap_or_default().into(),
        tags: ec2_tags(v.tags()),
        dns_support: None,
        dns_hostnames: None,
    })
}

pub fn subnet_of(s: &aws_sdk_ec2::types::Subnet) -> Option<Subnet> {
    Some(Subnet {
        id: s.subnet_id()?.into(),
        vpc_id: s.vpc_id().unwrap_or_default().into(),
        cidr: s.cidr_block().unwrap_or_default().into(),
        zone: s.availability_zone().unwrap_or_default().into(),
        tags: ec2_tags(s.tags()),
    })
}

pub fn route_table_of(t: &aws_sdk_ec2::types::RouteTable) -> Option<RouteTable> {
    let routes = t
        .routes()
        .iter()
        .filter_map(|r| {
            let destination = r.destination_cidr_block().or(r.destination_prefix_list_id())?.to_string();
            let target = match (r.gateway_id(), r.nat_gateway_id()) {
                (Some("local"), _) => RouteTarget::Local,
                (Some(g), _) => RouteTarget::Gateway(g.into()),
                (None, Some(n)) => RouteTarget::Nat(n.into()),
                _ => RouteTarget::Other(
                    r.transit_gateway_id()
                        .or(r.vpc_peering_connection_id())
                        .or(r.network_interface_id())
                        .or(r.instance_id())
                        .unwrap_or("unknown")
                        .into(),
                ),
            };
            Some(Route { destination, target })
        })
        .collect();
    let associations = t
        .associations()
        .iter()
        .filter(|a| !a.main().unwrap_or(false))
        .filter_map(|a| {
            Some(Association { id: a.route_table_association_id()?.into(), subnet_id: a.subnet_id().map(Into::into) })
        })
        .collect();
    Some(RouteTable {
        id: t.route_table_id()?.into(),
        vpc_id: t.vpc_id().unwrap_or_default().into(),
        routes,
        associations,
        tags: ec2_tags(t.tags()),
    })
}

pub fn internet_gateway_of(g: &aws_sdk_ec2::types::InternetGateway) -> Option<InternetGateway> {
    Some(InternetGateway {
        id: g.internet_gateway_id()?.into(),
        attached_vpcs: g.attachments().iter().filter_map(|a| a.vpc_id().map(Into::into)).collect(),
        tags: ec2_tags(g.tags()),
    })
}

pub fn nat_gateway_of(n: &aws_sdk_ec2::types::NatGateway) -> Option<NatGateway> {
    Some(NatGateway {
        id: n.nat_gateway_id()?.into(),
        vpc_id: n.vpc_id().unwrap_or_default().into(),
        subnet_id: n.subnet_id().unwrap_or_default().into(),
        state: n.state().map(|s| s.as_str().to_ascii_lowercase()).unwrap_or_default(),
        allocation_ids: n.nat_gateway_addresses().iter().filter_map(|a| a.allocation_id().map(Into::into)).collect(),
        tags: ec2_tags(n.tags()),
    })
}

pub fn security_group_of(g: &aws_sdk_ec2::types::SecurityGroup) -> Option<SecurityGroup> {
    Some(SecurityGroup {
        id: g.group_id()?.into(),
        vpc_id: g.vpc_id().unwrap_or_default().into(),
        name: g.group_name().unwrap_or_default().into(),
        ingress: rules_of(g.ip_permissions()),
        egress: rules_of(g.ip_permissions_egress()),
        tags: ec2_tags(g.tags()),
    })
}

pub fn vpc_endpoint_of(e: &aws_sdk_ec2::types::VpcEndpoint) -> Option<VpcEndpoint> {
    Some(VpcEndpoint {
        id: e.vpc_endpoint_id()?.into(),
        vpc_id: e.vpc_id().unwrap_or_default().into(),
        service: e.service_name().unwrap_or_default().into(),
        gateway: e.vpc_endpoint_type().is_some_and(|t| t.as_str().eq_ignore_ascii_case("gateway")),
        state: e.state().map(|s| s.as_str().to_ascii_lowercase()).unwrap_or_default(),
        subnet_ids: e.subnet_ids().iter().cloned().collect(),
        route_table_ids: e.route_table_ids().iter().cloned().collect(),
        group_ids: e.groups().iter().filter_map(|g| g.group_id().map(Into::into)).collect(),
        tags: ec2_tags(e.tags()),
    })
}

pub fn vpc_link_of(l: &aws_sdk_apigatewayv2::types::VpcLink) -> Option<VpcLink> {
    Some(VpcLink {
        id: l.vpc_link_id()?.into(),
        name: l.name().unwrap_or_default().into(),
        subnet_ids: l.subnet_ids().iter().cloned().collect(),
        group_ids: l.security_group_ids().iter().cloned().collect(),
        status: l.vpc_link_status().map(|s| s.as_str().to_ascii_uppercase()).unwrap_or_default(),
        tags: l.tags().map(|t| t.iter().collect()).unwrap_or_default(),
    })
}

pub fn db_subnet_group_of(g: &aws_sdk_rds::types::DbSubnetGroup) -> Option<DbSubnetGroup> {
    Some(DbSubnetGroup {
        name: g.db_subnet_group_name()?.into(),
        vpc_id: g.vpc_id().map(Into::into),
        subnet_ids: g.subnets().iter().filter_map(|s| s.subnet_identifier().map(Into::into)).collect(),
    })
}

/// The version labelled `AWSCURRENT` in a secret's map of versions to stages.
pub fn current_version(versions: Option<&HashMap<String, Vec<String>>>) -> Option<String> {
    versions
        .and_then(|m| m.iter().find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT")))
        .map(|(version, _)| version.clone())
}

pub fn secret_tags(tags: &[aws_sdk_secretsmanager::types::Tag]) -> Tags {
    tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect()
}

/// The IAM action for an EC2 list, for error messages.
fn ec2_action(operation: &str) -> String {
    format!("ec2:{operation}")
}

async fn list(kind: Kind, c: &Clients<'_>) -> Result<Listed> {
    let caller = c.caller;
    Ok(match kind {
        Kind::Vpcs => {
            let pages: Vec<_> = c
                .ec2
                .describe_vpcs()
                .filters(owned())
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error(&ec2_action("DescribeVpcs"), caller, e))?;
            Listed::Vpcs(pages.iter().flat_map(|p| p.vpcs()).filter_map(vpc_of).filter(|v| is_owned(&v.tags)).collect())
        }
        Kind::Subnets => {
            let pages: Vec<_> = c
                .ec2
                .describe_subnets()
                .filters(owned())
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error(&ec2_action("DescribeSubnets"), caller, e))?;
            Listed::Subnets(
                pages.iter().flat_map(|p| p.subnets()).filter_map(subnet_of).filter(|s| is_owned(&s.tags)).collect(),
            )
        }
        Kind::RouteTables => {
            let pages: Vec<_> = c
                .ec2
                .describe_route_tables()
                .filters(owned())
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error(&ec2_action("DescribeRouteTables"), caller, e))?;
            Listed::RouteTables(
                pages
                    .iter()
                    .flat_map(|p| p.route_tables())
                    .filter_map(route_table_of)
                    .filter(|t| is_owned(&t.tags))
                    .collect(),
            )
        }
        Kind::InternetGateways => {
            let pages: Vec<_> = c
                .ec2
                .describe_internet_gateways()
                .filters(owned())
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error(&ec2_action("DescribeInternetGateways"), caller, e))?;
            Listed::InternetGateways(
                pages
                    .iter()
                    .flat_map(|p| p.internet_gateways())
                    .filter_map(internet_gateway_of)
                    .filter(|g| is_owned(&g.tags))
                    .collect(),
            )
        }
        Kind::Addresses => {
            // DescribeAddresses has no pages: an account holds few Elastic IPs.
            let out = c
                .ec2
                .describe_addresses()
                .filters(owned())
                .send()
                .await
                .map_err(|e| aws_error(&ec2_action("DescribeAddresses"), caller, e))?;
            Listed::Addresses(
                out.addresses()
                    .iter()
                    .filter_map(|a| {
                        Some(Address {
                            allocation_id: a.allocation_id()?.into(),
                            association_id: a.association_id().map(Into::into),
                            tags: ec2_tags(a.tags()),
                        })
                    })
                    .filter(|a| is_owned(&a.tags))
                    .collect(),
            )
        }
        Kind::NatGateways => {
            let pages: Vec<_> = c
                .ec2
                .describe_nat_gateways()
                .filter(owned())
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error(&ec2_action("DescribeNatGateways"), caller, e))?;
            Listed::NatGateways(
                pages
                    .iter()
                    .flat_map(|p| p.nat_gateways())
                    .filter_map(nat_gateway_of)
                    .filter(|n| is_owned(&n.tags))
                    .collect(),
            )
        }
        Kind::SecurityGroups => {
            let pages: Vec<_> = c
                .ec2
                .describe_security_groups()
                .filters(owned())
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error(&ec2_action("DescribeSecurityGroups"), caller, e))?;
            Listed::SecurityGroups(
                pages
                    .iter()
                    .flat_map(|p| p.security_groups())
                    .filter_map(security_group_of)
                    .filter(|g| is_owned(&g.tags))
                    .collect(),
            )
        }
        Kind::VpcEndpoints => {
            let pages: Vec<_> = c
                .ec2
                .describe_vpc_endpoints()
                .filters(owned())
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error(&ec2_action("DescribeVpcEndpoints"), caller, e))?;
            Listed::VpcEndpoints(
                pages
                    .iter()
                    .flat_map(|p| p.vpc_endpoints())
                    .filter_map(vpc_endpoint_of)
                    .filter(|e| is_owned(&e.tags))
                    .collect(),
            )
        }
        Kind::VpcLinks => {
            // GetVpcLinks has no tag filter: the account's links are listed and filtered here.
            let mut links = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = c
                    .apigateway
                    .get_vpc_links()
                    .max_results("100")
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| aws_error("apigateway:GET", caller, e))?;
                links.extend(out.items().iter().filter_map(vpc_link_of).filter(|l| is_owned(&l.tags)));
                token = out.next_token().filter(|t| !t.is_empty()).map(Into::into);
                if token.is_none() {
                    break;
                }
            }
            Listed::VpcLinks(links)
        }
        Kind::KmsKeys => {
            // KMS lists keys without tags; the tagging API lists the tagged ones, with their tags.
            let filter = aws_sdk_resourcegroupstagging::types::TagFilter::builder().key(OWNER_UID_TAG).build();
            let pages: Vec<_> = c
                .tagging
                .get_resources()
                .resource_type_filters("kms:key")
                .tag_filters(filter)
                // The largest page AWS gives (its default is 50).
                .resources_per_page(100)
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error("tag:GetResources", caller, e))?;
            Listed::KmsKeys(
                pages
                    .iter()
                    .flat_map(|p| p.resource_tag_mapping_list())
                    .filter_map(|m| {
                        let arn = m.resource_arn()?;
                        let key_id = arn.rsplit_once(":key/")?.1;
                        Some(KmsKey {
                            key_id: key_id.into(),
                            arn: arn.into(),
                            state: None,
                            tags: m.tags().iter().map(|t| (t.key().to_string(), t.value().to_string())).collect(),
                        })
                    })
                    .collect(),
            )
        }
        Kind::DbInstances => {
            // RDS filters by neither tag nor owner: the account's instances, kept if ours.
            let pages: Vec<_> = c
                .rds
                .describe_db_instances()
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error("rds:DescribeDBInstances", caller, e))?;
            Listed::DbInstances(
                pages
                    .iter()
                    .flat_map(|p| p.db_instances())
                    .map(observed_instance)
                    .filter(|i| is_owned(&i.tags))
                    .collect(),
            )
        }
        Kind::DbSubnetGroups => {
            let pages: Vec<_> = c
                .rds
                .describe_db_subnet_groups()
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error("rds:DescribeDBSubnetGroups", caller, e))?;
            Listed::DbSubnetGroups(
                pages.iter().flat_map(|p| p.db_subnet_groups()).filter_map(db_subnet_group_of).collect(),
            )
        }
        Kind::Secrets => {
            let filter = aws_sdk_secretsmanager::types::Filter::builder()
                .key(aws_sdk_secretsmanager::types::FilterNameStringType::TagKey)
                .values(OWNER_UID_TAG)
                .build();
            let pages: Vec<_> = c
                .secrets
                .list_secrets()
                .filters(filter)
                .include_planned_deletion(true)
                // The largest pages the APIs give, here and below: fewer calls per resync.
                .max_results(100)
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error("secretsmanager:ListSecrets", caller, e))?;
            Listed::Secrets(
                pages
                    .iter()
                    .flat_map(|p| p.secret_list())
                    .filter_map(|e| {
                        Some(SecretInfo {
                            name: e.name()?.into(),
                            arn: e.arn()?.into(),
                            kms_key_id: e.kms_key_id().map(Into::into),
                            current_version: current_version(e.secret_versions_to_stages()),
                            scheduled_for_deletion: e.deleted_date().is_some(),
                            tags: secret_tags(e.tags()),
                        })
                    })
                    .filter(|s| is_owned(&s.tags))
                    .collect(),
            )
        }
        Kind::KmsAliases => {
            let pages: Vec<_> = c
                .kms
                .list_aliases()
                .limit(100)
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(|e| aws_error("kms:ListAliases", caller, e))?;
            Listed::KmsAliases(
                pages
                    .iter()
                    .flat_map(|p| p.aliases())
                    .filter_map(|a| {
                        let name = a.alias_name()?;
                        // AWS's own aliases (alias/aws/...) are never the operator's.
                        (!name.starts_with("alias/aws/"))
                            .then(|| KmsAlias { name: name.into(), target_key_id: a.target_key_id().map(Into::into) })
                    })
                    .collect(),
            )
        }
    })
}

/// Errors from a missing response field, for the few values the code cannot go on without.
pub fn missing(action: &str, what: &str) -> Error {
    Error::AwsUnavailable { action: action.into(), detail: format!("the response held no {what}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_split_into_one_rule_per_source_and_back() {
        use aws_sdk_ec2::types::{IpRange, UserIdGroupPair};
        let grouped = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(443)
            .to_port(443)
            .ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/16").build())
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-1").build())
            .build();
        let all = IpPermission::builder()
            .ip_protocol("-1")
            .from_port(-1)
            .to_port(-1)
            .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
            .build();
        let rules = rules_of(&[grouped, all]);
        assert_eq!(rules.len(), 3);
        let everything = Rule { protocol: "-1".into(), from: None, to: None, source: Source::Cidr("0.0.0.0/0".into()) };
        assert!(rules.contains(&everything), "ports of all-protocol rules are ignored: {rules:?}");
        for rule in &rules {
            assert_eq!(rules_of(&[permission_of(rule)]), BTreeSet::from([rule.clone()]));
        }
    }

    #[test]
    fn routes_are_read_with_their_targets() {
        use aws_sdk_ec2::types::{Route as Ec2Route, RouteTableAssociation};
        let table = aws_sdk_ec2::types::RouteTable::builder()
            .route_table_id("rtb-1")
            .vpc_id("vpc-1")
            .routes(Ec2Route::builder().destination_cidr_block("10.0.0.0/16").gateway_id("local").build())
            .routes(Ec2Route::builder().destination_cidr_block("0.0.0.0/0").nat_gateway_id("nat-1").build())
            .routes(Ec2Route::builder().destination_prefix_list_id("pl-1").gateway_id("vpce-1").build())
            .associations(RouteTableAssociation::builder().route_table_association_id("a-1").subnet_id("s-1").build())
            .associations(RouteTableAssociation::builder().route_table_association_id("a-0").main(true).build())
            .build();
        let t = route_table_of(&table).unwrap();
        assert_eq!(
            t.routes.iter().map(|r| (r.destination.as_str(), r.target.clone())).collect::<Vec<_>>(),
            vec![
                ("10.0.0.0/16", RouteTarget::Local),
                ("0.0.0.0/0", RouteTarget::Nat("nat-1".into())),
                ("pl-1", RouteTarget::Gateway("vpce-1".into())),
            ]
        );
        assert_eq!(t.associations, vec![Association { id: "a-1".into(), subnet_id: Some("s-1".into()) }]);
    }

    #[test]
    fn creations_survive_a_list_that_does_not_show_them_yet() {
        let mut state = State::default();
        let vpc = Vpc {
            id: "vpc-1".into(),
            cidr: "10.0.0.0/16".into(),
            tags: Tags::new(),
            dns_support: None,
            dns_hostnames: None,
        };
        let now = Instant::now();
        state.pending.push((now, Created::Vpc(vpc.clone())));
        state.merge_pending(&[]);
        assert_eq!(state.snapshot.vpcs.len(), 1);
        // Other records merge again: it is not taken for shown by a list because it is in the view.
        state.merge_pending(&[]);
        assert_eq!(state.pending.len(), 1);
        // A list that began before it was made and ends after does not hide it...
        state.apply(Listed::Vpcs(vec![]));
        state.list_began.insert(Kind::Vpcs, now - Duration::from_secs(1));
        state.merge_pending(&[Kind::Vpcs]);
        assert_eq!(state.snapshot.vpcs.len(), 1);
        // ...nor does one begun after it that lags (eventual consistency), within the grace...
        state.apply(Listed::Vpcs(vec![]));
        state.list_began.insert(Kind::Vpcs, now + Duration::from_secs(1));
        state.merge_pending(&[Kind::Vpcs]);
        assert_eq!(state.snapshot.vpcs.len(), 1);
        // ...a list begun after it that shows it makes the entry redundant...
        state.apply(Listed::Vpcs(vec![vpc]));
        state.merge_pending(&[Kind::Vpcs]);
        assert!(state.pending.is_empty());
        assert_eq!(state.snapshot.vpcs.len(), 1);
        // ...and a creation that a list begun more than the grace after it does not show is gone,
        // however long ago the last list was.
        let subnet = Created::Subnet(Subnet {
            id: "s".into(),
            vpc_id: "vpc-1".into(),
            cidr: String::new(),
            zone: String::new(),
            tags: Tags::new(),
        });
        state.pending.push((now, subnet));
        state.merge_pending(&[]);
        assert_eq!(state.snapshot.subnets.len(), 1);
        state.apply(Listed::Subnets(vec![]));
        state.list_began.insert(Kind::Subnets, now + CREATE_GRACE + Duration::from_secs(1));
        state.merge_pending(&[Kind::Subnets]);
        assert!(state.pending.is_empty());
        assert!(state.snapshot.subnets.is_empty());
        assert!(state.pending.is_empty());
    }

    #[test]
    fn the_reconciles_after_a_failed_refresh_share_its_outcome_for_a_while() {
        let mut state = State::default();
        let start = Instant::now();
        let timed_out = || Error::AwsUnavailable { action: "ec2:DescribeSubnets".into(), detail: "timed out".into() };
        // A refresh that timed out after 30 s: for 90 s no list is tried again.
        state.failed = Some((start, Duration::from_secs(30), timed_out()));
        let never_listed = state.stale(Duration::from_secs(30), start);
        match state.after_failure(&never_listed, start + Duration::from_secs(60)) {
            Some(Err(Error::AwsUnavailable { action, .. })) => assert_eq!(action, "ec2:DescribeSubnets"),
            other => panic!("a reconcile that needs a kind never listed gets the refresh's error, got {other:?}"),
        }
        assert!(state.after_failure(&never_listed, start + Duration::from_secs(91)).is_none(), "then a list again");

        // A reconcile that may work from the view gets the view.
        for kind in Kind::ALL {
            state.listed.insert(kind, (start, false));
        }
        let old = state.stale(Duration::ZERO, start + Duration::from_secs(1));
        assert!(matches!(state.after_failure(&old, start + Duration::from_secs(1)), Some(Ok(_))));

        // A quick failure (throttled) pauses for a second; an error that does not pass by itself
        // (here: denied) is not shared: each reconcile meets it itself.
        state.failed = Some((start, Duration::from_millis(50), Error::AwsThrottled { action: "x".into() }));
        assert!(state.after_failure(&old, start + Duration::from_millis(900)).is_some());
        assert!(state.after_failure(&old, start + Duration::from_millis(1100)).is_none());
        let denied = Error::AccessDenied { action: "ec2:DescribeSubnets".into(), message: "no".into() };
        assert!(passing(&denied).is_none());
    }

    #[test]
    fn a_slow_refresh_spaces_the_next_and_changes_made_during_its_lists_survive_them() {
        let mut state = State::default();
        let start = Instant::now();
        assert_eq!(state.stale(Duration::from_secs(30), start).len(), Kind::ALL.len(), "never listed");
        for kind in Kind::ALL {
            state.listed.insert(kind, (start, false));
        }
        // A refresh that took 20 s: the next comes 60 s after it ended, not 30 s.
        state.last_refresh = Duration::from_secs(20);
        assert!(state.stale(Duration::from_secs(30), start + Duration::from_secs(45)).is_empty());
        assert_eq!(state.stale(Duration::from_secs(30), start + Duration::from_secs(61)).len(), Kind::ALL.len());
        // A kind a record says is out of date is listed again at once.
        state.mark_changed(Kind::KmsAliases);
        assert_eq!(state.stale(Duration::from_secs(30), start), vec![Kind::KmsAliases]);

        // Lists that began before a route was set and a subnet deleted show them as they were; the
        // journal's records are applied over them again.
        let table = RouteTable {
            id: "rtb-1".into(),
            vpc_id: "vpc-1".into(),
            routes: vec![],
            associations: vec![],
            tags: Tags::new(),
        };
        let subnet = Subnet {
            id: "subnet-1".into(),
            vpc_id: "vpc-1".into(),
            cidr: "10.0.0.0/24".into(),
            zone: "us-east-1a".into(),
            tags: Tags::new(),
        };
        state.apply(Listed::RouteTables(vec![table.clone()]));
        state.apply(Listed::Subnets(vec![subnet.clone()]));
        let route = Recorded::Route {
            route_table_id: "rtb-1".into(),
            destination: "0.0.0.0/0".into(),
            target: Some(RouteTarget::Gateway("igw-1".into())),
        };
        let deleted = Recorded::Deleted(Kind::Subnets, "subnet-1".into());
        state.record(route.clone());
        state.record(deleted.clone());
        state.apply(Listed::RouteTables(vec![table]));
        state.apply(Listed::Subnets(vec![subnet]));
        state.replay(route);
        state.replay(deleted);
        assert_eq!(state.snapshot.route_tables[0].routes.len(), 1);
        assert!(state.snapshot.subnets.is_empty());
    }
}
