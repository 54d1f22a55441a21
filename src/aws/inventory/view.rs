//! The view of an (account, region) and what a mutation does to it, as pure functions: the
//! inventory's record path and the unit tests' simulated accounts apply changes through
//! `Snapshot::apply`, so the two cannot drift apart.
//!
//! Every resource type is one line of the table in `resources!` (its `Kind`, its `Created`
//! variant, its type, its field in the view, its list function in `list.rs`, which names the
//! service it calls) and one `Resource` implementation (its ID, and its tags if a tagging call
//! may change them).

use std::sync::Arc;

use super::types::*;
use super::{Clients, list};
use crate::aws::tags::Tags;
use crate::error::Result;

/// One resource type's entries in the view, each shared (`Arc`) with the snapshots reconciles
/// hold, so that a recorded change copies the one entry it changes.
pub type Table<T> = Arc<Vec<Arc<T>>>;

/// What the inventory needs to know of a resource type to keep it.
pub trait Resource: Clone {
    /// The name a mutation gives the resource by (`Recorded::Deleted`, `Recorded::Tagged`).
    fn id(&self) -> &str;
    /// Whether `id` names it; a secret is also named by its ARN.
    fn named(&self, id: &str) -> bool {
        self.id() == id
    }
    /// Its tags, if a tagging call (`Recorded::Tagged`) may change them in place.
    fn tags_mut(&mut self) -> Option<&mut Tags> {
        None
    }
}

macro_rules! tagged_by_id {
    ($($ty:ty => $id:ident),* $(,)?) => {$(
        impl Resource for $ty {
            fn id(&self) -> &str {
                &self.$id
            }
            fn tags_mut(&mut self) -> Option<&mut Tags> {
                Some(&mut self.tags)
            }
        }
    )*};
}

tagged_by_id! {
    Vpc => id, Subnet => id, RouteTable => id, InternetGateway => id, Address => allocation_id,
    NatGateway => id, Instance => id, SecurityGroup => id, VpcEndpoint => id, VpcLink => id, KmsKey => key_id,
}

impl Resource for KmsAlias {
    fn id(&self) -> &str {
        &self.name
    }
}

/// Recorded whole (`Recorded::Observed`), never retagged in place.
impl Resource for ObservedInstance {
    fn id(&self) -> &str {
        &self.identifier
    }
}

impl Resource for DbSubnetGroup {
    fn id(&self) -> &str {
        &self.name
    }
}

impl Resource for SecretInfo {
    fn id(&self) -> &str {
        &self.name
    }
    fn named(&self, id: &str) -> bool {
        self.name == id || self.arn == id
    }
}

macro_rules! resources {
    ($($kind:ident, $variant:ident: $ty:ty => $field:ident, $list:path;)*) => {
        /// The resource types the inventory lists, one bulk call (and its pages) each.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($kind,)*
        }

        impl Kind {
            pub const ALL: [Kind; [$(stringify!($kind)),*].len()] = [$(Kind::$kind),*];
        }

        /// A resource the operator just created (from the create call's response), or one read
        /// again whole.
        #[derive(Clone, Debug)]
        pub enum Created {
            $($variant($ty),)*
        }

        impl Created {
            pub fn kind(&self) -> Kind {
                match self {
                    $(Created::$variant(_) => Kind::$kind,)*
                }
            }

            pub fn id(&self) -> &str {
                match self {
                    $(Created::$variant(r) => r.id(),)*
                }
            }

            pub(super) fn named(&self, id: &str) -> bool {
                match self {
                    $(Created::$variant(r) => r.named(id),)*
                }
            }

            /// The resource as the view has it now, if it does.
            pub(super) fn current(&self, view: &Snapshot) -> Option<Created> {
                match self {
                    $(Created::$variant(r) => {
                        view.$field.iter().find(|e| e.id() == r.id()).map(|e| Created::$variant((**e).clone()))
                    })*
                }
            }

            fn add_to(&self, view: &mut Snapshot) {
                match self {
                    $(Created::$variant(r) => Arc::make_mut(&mut view.$field).push(Arc::new(r.clone())),)*
                }
            }
        }

        /// One consistent view of an (account, region), as a reconcile reads it. Cheap to clone.
        /// The DB instances and secrets are those carrying the owner-UID tag (secrets scheduled for
        /// deletion too); DB subnet groups carry no tags in RDS's lists, so all are kept.
        #[derive(Clone, Debug, Default)]
        pub struct Snapshot {
            /// Availability zones in the region, by name.
            pub zones: Arc<Vec<String>>,
            $(pub $field: Table<$ty>,)*
        }

        impl Snapshot {
            pub(super) fn has(&self, kind: Kind, id: &str) -> bool {
                match kind {
                    $(Kind::$kind => self.$field.iter().any(|r| r.id() == id),)*
                }
            }

            /// The IDs of the view's resources of `kind`.
            pub(super) fn ids(&self, kind: Kind) -> Vec<String> {
                match kind {
                    $(Kind::$kind => self.$field.iter().map(|r| r.id().to_string()).collect(),)*
                }
            }

            pub(super) fn forget(&mut self, kind: Kind, id: &str) {
                match kind {
                    $(Kind::$kind => {
                        if self.$field.iter().any(|r| r.named(id)) {
                            Arc::make_mut(&mut self.$field).retain(|r| !r.named(id));
                        }
                    })*
                }
            }

            fn retag(&mut self, kind: Kind, id: &str, how: impl Fn(&mut Tags)) {
                match kind {
                    $(Kind::$kind => change(&mut self.$field, |r| r.id() == id, |r| {
                        if let Some(tags) = r.tags_mut() {
                            how(tags)
                        }
                    }),)*
                }
            }
        }

        /// One kind's list, as returned by AWS.
        pub(super) enum Listed {
            $($kind(Vec<$ty>),)*
        }

        /// Lists the operator's resources of `kind`, one bulk call and its pages.
        pub(super) async fn list(kind: Kind, clients: &Clients<'_>) -> Result<Listed> {
            Ok(match kind {
                $(Kind::$kind => Listed::$kind($list(clients).await?),)*
            })
        }

        impl Listed {
            /// Puts the list in the view in place of the kind's entries.
            pub(super) fn replace(self, view: &mut Snapshot) {
                match self {
                    $(Listed::$kind(list) => view.$field = Arc::new(list.into_iter().map(Arc::new).collect()),)*
                }
            }
        }
    };
}

resources! {
    Vpcs, Vpc: Vpc => vpcs, list::vpcs;
    Subnets, Subnet: Subnet => subnets, list::subnets;
    RouteTables, RouteTable: RouteTable => route_tables, list::route_tables;
    InternetGateways, InternetGateway: InternetGateway => internet_gateways, list::internet_gateways;
    Addresses, Address: Address => addresses, list::addresses;
    NatGateways, NatGateway: NatGateway => nat_gateways, list::nat_gateways;
    Instances, Instance: Instance => instances, list::instances;
    SecurityGroups, SecurityGroup: SecurityGroup => security_groups, list::security_groups;
    VpcEndpoints, VpcEndpoint: VpcEndpoint => vpc_endpoints, list::vpc_endpoints;
    VpcLinks, VpcLink: VpcLink => vpc_links, list::vpc_links;
    KmsKeys, KmsKey: KmsKey => kms_keys, list::kms_keys;
    KmsAliases, KmsAlias: KmsAlias => kms_aliases, list::kms_aliases;
    DbInstances, DbInstance: ObservedInstance => db_instances, list::db_instances;
    DbSubnetGroups, DbSubnetGroup: DbSubnetGroup => db_subnet_groups, list::db_subnet_groups;
    Secrets, Secret: SecretInfo => secrets, list::secrets;
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
    KeyState { key_id: String, state: super::types::KeyState },
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

impl Kind {
    /// The kind of an EC2 resource the operator tags, from its ID's prefix (`vpc-`, `subnet-`, ...).
    pub fn of_ec2_id(id: &str) -> Kind {
        match id.split('-').next().unwrap_or_default() {
            "vpc" => Kind::Vpcs,
            "subnet" => Kind::Subnets,
            "rtb" => Kind::RouteTables,
            "igw" => Kind::InternetGateways,
            "eipalloc" => Kind::Addresses,
            "nat" => Kind::NatGateways,
            "i" => Kind::Instances,
            "sg" => Kind::SecurityGroups,
            _ => Kind::VpcEndpoints,
        }
    }
}

impl Recorded {
    /// One tagging call: the additions, or, when there are none, the removals (the services tag
    /// and untag in separate calls; the removals come at the next step).
    pub fn retagged(kind: Kind, id: &str, add: &Tags, remove: &[String]) -> Recorded {
        let remove = if add.is_empty() { remove.to_vec() } else { Vec::new() };
        Recorded::Tagged { kind, id: id.to_string(), add: add.clone(), remove }
    }

    /// The resource whose entry the change edits in place, if it edits one: a creation the lists
    /// have not shown yet is kept as the view now has it.
    pub(super) fn edits(&self, view: &Snapshot) -> Option<String> {
        match self {
            Recorded::GatewayAttachment { gateway_id: id, .. }
            | Recorded::Associated { route_table_id: id, .. }
            | Recorded::Route { route_table_id: id, .. }
            | Recorded::Rule { group_id: id, .. }
            | Recorded::Tagged { id, .. } => Some(id.clone()),
            Recorded::Disassociated { association_id } => view
                .route_tables
                .iter()
                .find(|t| t.associations.iter().any(|a| a.id == *association_id))
                .map(|t| t.id.clone()),
            _ => None,
        }
    }
}

impl Snapshot {
    /// What `recorded` does to the view: the one definition, used by the inventory for every
    /// mutation's record and by the tests' simulated accounts. `Changed` changes nothing here (the
    /// inventory lists the kind again).
    pub fn apply(&mut self, recorded: &Recorded) {
        match recorded {
            Recorded::Created(created) => {
                if !self.has(created.kind(), created.id()) {
                    created.add_to(self);
                }
            }
            Recorded::Observed(now) => {
                self.forget(now.kind(), now.id());
                now.add_to(self);
            }
            Recorded::Changed(_) => {}
            Recorded::Deleted(kind, id) => {
                self.forget(*kind, id);
                if *kind == Kind::VpcEndpoints {
                    // A gateway endpoint's routes go with it.
                    let target = RouteTarget::Gateway(id.clone());
                    change(
                        &mut self.route_tables,
                        |t| t.routes.iter().any(|r| r.target == target),
                        |t| t.routes.retain(|r| r.target != target),
                    );
                }
            }
            Recorded::GatewayAttachment { gateway_id, vpc_id, attached } => change(
                &mut self.internet_gateways,
                |g| g.id == *gateway_id,
                |g| {
                    g.attached_vpcs.retain(|v| v != vpc_id);
                    if *attached {
                        g.attached_vpcs.push(vpc_id.clone());
                    }
                },
            ),
            Recorded::Associated { route_table_id, association_id, subnet_id } => change(
                &mut self.route_tables,
                |t| t.id == *route_table_id,
                |t| {
                    t.associations.retain(|a| a.id != *association_id);
                    t.associations.push(Association { id: association_id.clone(), subnet_id: Some(subnet_id.clone()) });
                },
            ),
            Recorded::Disassociated { association_id } => change(
                &mut self.route_tables,
                |t| t.associations.iter().any(|a| a.id == *association_id),
                |t| t.associations.retain(|a| a.id != *association_id),
            ),
            Recorded::Route { route_table_id, destination, target } => change(
                &mut self.route_tables,
                |t| t.id == *route_table_id,
                |t| {
                    t.routes.retain(|r| r.destination != *destination);
                    if let Some(target) = target {
                        t.routes.push(Route { destination: destination.clone(), target: target.clone() });
                    }
                },
            ),
            Recorded::Rule { group_id, egress, rule, added } => change(
                &mut self.security_groups,
                |g| g.id == *group_id,
                |g| {
                    let rules = if *egress { &mut g.egress } else { &mut g.ingress };
                    if *added {
                        rules.insert(rule.clone());
                    } else {
                        rules.remove(rule);
                    }
                },
            ),
            Recorded::Alias { name, target_key_id } => {
                let aliases = Arc::make_mut(&mut self.kms_aliases);
                aliases.retain(|a| a.name != *name);
                aliases.push(Arc::new(KmsAlias { name: name.clone(), target_key_id: Some(target_key_id.clone()) }));
            }
            Recorded::Tagged { kind, id, add, remove } => self.retag(*kind, id, |tags| {
                tags.extend(add.iter());
                tags.retain(|k, _| !remove.iter().any(|r| r == k));
            }),
            Recorded::VpcDns { vpc_id, support, hostnames } => change(
                &mut self.vpcs,
                |v| v.id == *vpc_id,
                |v| (v.dns_support, v.dns_hostnames) = (support.or(v.dns_support), hostnames.or(v.dns_hostnames)),
            ),
            Recorded::KeyState { key_id, state } => {
                change(&mut self.kms_keys, |k| k.key_id == *key_id, |k| k.state = Some(state.clone()))
            }
        }
    }
}

/// Changes in place the entries of `list` that `which` picks. Only those are copied, and the list
/// itself only if one is picked: entries and lists are shared with the snapshots reconciles hold.
pub(super) fn change<T: Clone>(list: &mut Table<T>, which: impl Fn(&T) -> bool, mut how: impl FnMut(&mut T)) {
    if !list.iter().any(|e| which(e)) {
        return;
    }
    for entry in Arc::make_mut(list).iter_mut().filter(|e| which(e)) {
        how(Arc::make_mut(entry));
    }
}
