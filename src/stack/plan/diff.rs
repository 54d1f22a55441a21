//! The comparison of the plan with what AWS shows, resource type by resource type, in the order
//! they depend on each other; then what the stack has that the plan does not (or has twice).

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// Component name → ID of what exists.
type Ids<'a> = BTreeMap<&'a str, String>;
/// NAT component → where its routes go (a NAT gateway, a NAT instance's network interface).
type NatTargets<'a> = BTreeMap<&'a str, RouteTarget>;

/// The comparison: what AWS shows against the plan. Works through the resources in the order they
/// depend on each other; a resource whose parent does not exist yet is not mentioned, since the
/// parent's creation comes first. What Databases and Bastions need of the Stack (the key, the
/// subnets, the security groups) comes before the rest, so that they can start while the
/// Stack's NAT gateways, endpoints and VPC Link are still being made.
pub fn diff(plan: &NetworkPlan, observed: &Observed, previous: &Previous) -> Diff {
    let mut differ = Differ { plan, observed, previous, d: Diff::default() };
    if let Some(vpc_id) = differ.vpc() {
        differ.kms();
        let igw_id = differ.internet_gateway(&vpc_id);
        let subnet_ids = differ.subnets(&vpc_id);
        let group_ids = differ.security_groups(&vpc_id);
        let nat_ids = differ.nat_gateways(&vpc_id, &subnet_ids);
        let table_ids = differ.route_tables(&vpc_id, igw_id, &subnet_ids, &nat_ids);
        differ.endpoints(&vpc_id, &table_ids, &subnet_ids, &group_ids);
        differ.vpc_link(&subnet_ids, &group_ids);
        differ.extras(&vpc_id);
    } else {
        differ.kms();
    }
    differ.d
}

struct Differ<'a> {
    plan: &'a NetworkPlan,
    observed: &'a Observed,
    previous: &'a Previous,
    d: Diff,
}

/// The IDs of `components`, if they all exist.
fn ids_of(components: &[String], map: &Ids<'_>) -> Option<Vec<String>> {
    components.iter().map(|c| map.get(c.as_str()).cloned()).collect()
}

impl<'a> Differ<'a> {
    fn change(&mut self, what: String, component: &str, action: Action) {
        self.d.changes.push(Change { what, component: component.to_string(), action });
    }

    fn delete(&mut self, what: String, component: &str, deletion: Deletion) {
        self.change(what, component, Action::Delete(deletion));
    }

    /// The tag call that makes `observed_tags` the component's tags, and what it fixes.
    fn retag(&self, component: &str, resource: Tagged, observed_tags: &Tags) -> Option<(String, Action)> {
        tag_changes(&self.plan.tags_for(component), observed_tags).map(|(add, remove)| {
            (format!("tags of {component}: {}", describe_tags(&add, &remove)), Action::Retag { resource, add, remove })
        })
    }

    /// The VPC's ID, if it exists.
    fn vpc(&mut self) -> Option<String> {
        let (plan, observed) = (self.plan, self.observed);
        // The VPC: everything else hangs off it. Among duplicates, the one with the most subnets.
        let vpc = observed.vpcs.iter().filter(|v| component(&v.tags) == Some(VPC)).max_by(|a, b| {
            let n = |v: &Vpc| observed.subnets.iter().filter(|s| s.vpc_id == v.id).count();
            n(a).cmp(&n(b)).then_with(|| b.id.cmp(&a.id))
        });
        let Some(vpc) = vpc else {
            self.change(
                "the VPC does not exist".into(),
                VPC,
                Action::CreateVpc { cidr: plan.cidr.clone(), tags: plan.tags_for(VPC) },
            );
            return None;
        };
        let vpc_id = vpc.id.clone();
        if vpc.dns_support == Some(false) {
            self.change(
                "DNS support of the VPC is off".into(),
                VPC,
                Action::EnableVpcDns { vpc_id: vpc_id.clone(), hostnames: false },
            );
        }
        if vpc.dns_hostnames == Some(false) {
            self.change(
                "DNS hostnames of the VPC are off".into(),
                VPC,
                Action::EnableVpcDns { vpc_id: vpc_id.clone(), hostnames: true },
            );
        }
        if let Some((what, action)) = self.retag(VPC, Tagged::Ec2(vpc_id.clone()), &vpc.tags) {
            self.change(what, VPC, action);
        }
        Some(vpc_id)
    }

    /// The internet gateway's ID, if it is attached to the VPC.
    fn internet_gateway(&mut self, vpc_id: &str) -> Option<String> {
        let (plan, observed) = (self.plan, self.observed);
        let vpc_id = vpc_id.to_string();
        // Internet gateway.
        let igw = pick(&observed.internet_gateways, IGW, |g| &g.tags, |_| true, |g| &g.id);
        if plan.internet_gateway {
            match igw {
                None => self.change(
                    "the internet gateway does not exist".into(),
                    IGW,
                    Action::CreateInternetGateway { tags: plan.tags_for(IGW) },
                ),
                Some(g) => {
                    if let Some(other) = g.attached_vpcs.iter().find(|v| **v != vpc_id) {
                        self.change(
                            format!("the internet gateway {} is attached to {other}, not the stack's VPC", g.id),
                            IGW,
                            Action::Delete(Deletion::DetachInternetGateway {
                                gateway_id: g.id.clone(),
                                vpc_id: other.clone(),
                            }),
                        );
                    } else if g.attached_vpcs.is_empty() {
                        self.change(
                            format!("the internet gateway {} is not attached to the VPC", g.id),
                            IGW,
                            Action::AttachInternetGateway { gateway_id: g.id.clone(), vpc_id: vpc_id.clone() },
                        );
                    }
                    if let Some((what, action)) = self.retag(IGW, Tagged::Ec2(g.id.clone()), &g.tags) {
                        self.change(what, IGW, action);
                    }
                }
            }
        }
        igw.filter(|g| g.attached_vpcs.contains(&vpc_id)).map(|g| g.id.clone())
    }

    fn subnets(&mut self, vpc_id: &str) -> Ids<'a> {
        let (plan, observed) = (self.plan, self.observed);
        let in_vpc = |v: &str| v == vpc_id;
        let vpc_id = vpc_id.to_string();
        // Subnets.
        let mut subnet_ids: Ids<'a> = BTreeMap::new();
        for s in &plan.subnets {
            match pick(&observed.subnets, &s.component, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id) {
                None => self.change(
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
                    if let Some((what, action)) = self.retag(&s.component, Tagged::Ec2(found.id.clone()), &found.tags) {
                        self.change(what, &s.component, action);
                    }
                }
            }
        }
        subnet_ids
    }

    /// NAT gateways or instances and their addresses (before the routes that point at them).
    fn nat_gateways(&mut self, vpc_id: &str, subnet_ids: &Ids<'a>) -> NatTargets<'a> {
        let (plan, observed, previous) = (self.plan, self.observed, self.previous);
        let in_vpc = |v: &str| v == vpc_id;
        // NAT gateways and their addresses (before the routes that point at them).
        let mut nat_ids: NatTargets<'a> = BTreeMap::new();
        for n in &plan.nat_gateways {
            let address = pick(&observed.addresses, &n.address, |a| &a.tags, |_| true, |a| &a.allocation_id);
            match address {
                None => self.change(
                    format!("the Elastic IP {} does not exist", n.address),
                    &n.address,
                    Action::AllocateAddress { tags: plan.tags_for(&n.address) },
                ),
                Some(a) => {
                    if let Some((what, action)) = self.retag(&n.address, Tagged::Ec2(a.allocation_id.clone()), &a.tags)
                    {
                        self.change(what, &n.address, action);
                    }
                }
            }
            if let Some(instance_type) = &n.instance_type {
                if let Some(target) = self.nat_instance(n, instance_type, address, subnet_ids, vpc_id) {
                    nat_ids.insert(&n.component, target);
                }
                continue;
            }
            let nat = pick(
                &observed.nat_gateways,
                &n.component,
                |x| &x.tags,
                |x| !x.state.is_going() && in_vpc(&x.vpc_id),
                |x| &x.id,
            );
            match (nat, address, subnet_ids.get(n.subnet.as_str())) {
                (Some(found), _, _) => {
                    if found.state != NatGatewayState::Available {
                        self.d.waiting.push(format!("{} ({}) is {}", n.component, found.id, found.state));
                    }
                    nat_ids.insert(&n.component, RouteTarget::Nat(found.id.clone()));
                    if let Some((what, action)) = self.retag(&n.component, Tagged::Ec2(found.id.clone()), &found.tags) {
                        self.change(what, &n.component, action);
                    }
                }
                (None, Some(a), Some(subnet_id)) => self.change(
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
        nat_ids
    }

    /// A NAT instance of position `n`: launched once its subnet, group and image are known; one
    /// stopped by hand, or of another type than the spec's, is terminated and launched again;
    /// its source/destination check off and its Elastic IP on its interface. Returns where the
    /// routes go.
    fn nat_instance(
        &mut self,
        n: &'a NatPlan,
        instance_type: &str,
        address: Option<&Address>,
        subnet_ids: &Ids<'a>,
        vpc_id: &str,
    ) -> Option<RouteTarget> {
        let (plan, observed, previous) = (self.plan, self.observed, self.previous);
        let live = |x: &Instance| !x.state.is_going() && x.vpc_id.as_deref() == Some(vpc_id);
        let Some(found) = pick(&observed.instances, &n.component, |x| &x.tags, live, |x| &x.id) else {
            let group = pick(&observed.security_groups, SG_NAT, |x| &x.tags, |x| x.vpc_id == vpc_id, |x| &x.id);
            if let (Some(subnet_id), Some(group), Some(image)) =
                (subnet_ids.get(n.subnet.as_str()), group, plan.nat_image.as_ref())
            {
                // A replacement gets a new token: the one before answers with the terminated instance.
                let mut salt = previous.nat_instances.clone();
                let of_component = |i: &&Instance| component(&i.tags) == Some(n.component.as_str());
                salt.extend(observed.instances.iter().filter(of_component).map(|i| i.id.clone()));
                self.change(
                    format!("{} does not exist", n.component),
                    &n.component,
                    Action::RunNatInstance(NatInstanceSpec {
                        subnet_id: subnet_id.clone(),
                        group_id: group.id.clone(),
                        image: image.clone(),
                        instance_type: instance_type.to_string(),
                        token: plan.owner.client_token(&n.component, &salt),
                        tags: plan.tags_for(&n.component),
                    }),
                );
            }
            return None;
        };
        let what = format!("{} ({})", n.component, found.id);
        if matches!(found.state, InstanceStateName::Stopped | InstanceStateName::Stopping) {
            let why = format!("{what} is {}; it is replaced", found.state);
            self.delete(why, &n.component, Deletion::Instance(found.id.clone()));
            return None;
        }
        if found.instance_type != instance_type {
            let why = format!("{what} is a {}, not a {instance_type}; it is replaced", found.instance_type);
            self.delete(why, &n.component, Deletion::Instance(found.id.clone()));
            return None;
        }
        if found.state == InstanceStateName::Pending {
            self.d.waiting.push(format!("{what} is pending"));
        }
        if found.source_dest_check != Some(false) {
            self.change(
                format!("the source/destination check of {what} is on"),
                &n.component,
                Action::DisableSourceDestCheck { instance_id: found.id.clone() },
            );
        }
        let eni = found.network_interface_id.clone()?;
        if let Some(a) = address.filter(|a| a.network_interface_id.as_ref() != Some(&eni)) {
            self.change(
                format!("the Elastic IP {} ({}) is not on {what}", n.address, a.allocation_id),
                &n.address,
                Action::AssociateAddress { allocation_id: a.allocation_id.clone(), network_interface_id: eni.clone() },
            );
        }
        if let Some((what, action)) = self.retag(&n.component, Tagged::Ec2(found.id.clone()), &found.tags) {
            self.change(what, &n.component, action);
        }
        Some(RouteTarget::Interface(eni))
    }

    fn route_tables(
        &mut self,
        vpc_id: &str,
        igw_id: Option<String>,
        subnet_ids: &Ids<'a>,
        nat_ids: &NatTargets<'a>,
    ) -> Ids<'a> {
        let (plan, observed, previous) = (self.plan, self.observed, self.previous);
        let in_vpc = |v: &str| v == vpc_id;
        let vpc_id = vpc_id.to_string();
        // Route tables, their routes and associations.
        let mut table_ids: Ids<'a> = BTreeMap::new();
        let gateway_endpoints: BTreeSet<&str> =
            observed.vpc_endpoints.iter().filter(|e| e.gateway && !e.state.is_going()).map(|e| e.id.as_str()).collect();
        for t in &plan.route_tables {
            let Some(table) = pick(&observed.route_tables, &t.component, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id)
            else {
                self.change(
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
                Some(DefaultRoute::Nat(nat)) => nat_ids.get(nat.as_str()).cloned(),
                None => None,
            };
            let current = table.routes.iter().find(|r| r.destination == DEFAULT_ROUTE);
            match (&wanted, current) {
                (Some(target), None) => self.change(
                    format!("route {DEFAULT_ROUTE} of {rtb} is missing"),
                    &t.component,
                    Action::CreateRoute {
                        route_table_id: table.id.clone(),
                        destination: DEFAULT_ROUTE.into(),
                        target: target.clone(),
                    },
                ),
                (Some(target), Some(r)) if r.target != *target => self.change(
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
                let endpoint_route =
                    matches!(&r.target, RouteTarget::Gateway(g) if gateway_endpoints.contains(g.as_str()));
                // The planned default route was dealt with above (replaced, or kept while its target
                // is being made).
                let planned_default = r.destination == DEFAULT_ROUTE && t.default_route.is_some();
                let extra = r.target != RouteTarget::Local && !endpoint_route && !planned_default;
                if extra {
                    self.change(
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
                    Some(a) => self.change(
                        format!("{subnet} ({subnet_id}) is associated with another route table ({})", a.id),
                        &t.component,
                        Action::Delete(Deletion::Disassociate(a.id.clone())),
                    ),
                    None => self.change(
                        format!("{subnet} ({subnet_id}) is not associated with {rtb}"),
                        &t.component,
                        Action::AssociateRouteTable { route_table_id: table.id.clone(), subnet_id: subnet_id.clone() },
                    ),
                }
            }
            let wanted_subnets: BTreeSet<&String> =
                t.subnets.iter().filter_map(|s| subnet_ids.get(s.as_str())).collect();
            for a in &table.associations {
                if a.subnet_id.as_ref().is_some_and(|s| !wanted_subnets.contains(s)) {
                    self.change(
                        format!("{rtb} is associated with {:?}, which is not in the plan", a.subnet_id),
                        &t.component,
                        Action::Delete(Deletion::Disassociate(a.id.clone())),
                    );
                }
            }
            if let Some((what, action)) = self.retag(&t.component, Tagged::Ec2(table.id.clone()), &table.tags) {
                self.change(what, &t.component, action);
            }
        }
        table_ids
    }

    fn security_groups(&mut self, vpc_id: &str) -> Ids<'a> {
        let (plan, observed) = (self.plan, self.observed);
        let in_vpc = |v: &str| v == vpc_id;
        let vpc_id = vpc_id.to_string();
        // Security groups and their rules.
        let mut group_ids: Ids<'a> = BTreeMap::new();
        for g in &plan.security_groups {
            let Some(group) =
                pick(&observed.security_groups, &g.component, |x| &x.tags, |x| in_vpc(&x.vpc_id), |x| &x.id)
            else {
                self.change(
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
                    self.change(
                        format!("{direction} rule {} of {} ({}) is missing", show_rule(rule), g.component, group.id),
                        &g.component,
                        Action::Authorize { group_id: group.id.clone(), egress, rule: rule.clone() },
                    );
                }
                for rule in actual.difference(wanted) {
                    self.change(
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
            if let Some((what, action)) = self.retag(&g.component, Tagged::Ec2(group.id.clone()), &group.tags) {
                self.change(what, &g.component, action);
            }
        }
        group_ids
    }

    fn endpoints(&mut self, vpc_id: &str, table_ids: &Ids<'a>, subnet_ids: &Ids<'a>, group_ids: &Ids<'a>) {
        let (plan, observed, previous) = (self.plan, self.observed, self.previous);
        let in_vpc = |v: &str| v == vpc_id;
        let vpc_id = vpc_id.to_string();
        // VPC endpoints.
        for e in &plan.endpoints {
            let (Some(tables), Some(subnets), Some(groups)) =
                (ids_of(&e.route_tables, table_ids), ids_of(&e.subnets, subnet_ids), ids_of(&e.groups, group_ids))
            else {
                continue;
            };
            let found = pick(
                &observed.vpc_endpoints,
                &e.component,
                |x| &x.tags,
                |x| !x.state.is_going() && in_vpc(&x.vpc_id),
                |x| &x.id,
            );
            let Some(found) = found else {
                self.change(
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
            if found.state != EndpointState::Available {
                self.d.waiting.push(format!("{} ({}) is {}", e.component, found.id, found.state));
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
                self.change(
                    format!(
                        "{} ({}) is not in the planned route tables, subnets or security groups",
                        e.component, found.id
                    ),
                    &e.component,
                    Action::ModifyVpcEndpoint(modify),
                );
            }
            if let Some((what, action)) = self.retag(&e.component, Tagged::Ec2(found.id.clone()), &found.tags) {
                self.change(what, &e.component, action);
            }
        }
    }

    fn vpc_link(&mut self, subnet_ids: &Ids<'a>, group_ids: &Ids<'a>) {
        let (plan, observed) = (self.plan, self.observed);
        // The VPC Link. Its subnets and groups cannot be changed: a link that differs is replaced.
        if let Some(l) = &plan.vpc_link
            && let (Some(subnets), Some(groups)) = (ids_of(&l.subnets, subnet_ids), ids_of(&l.groups, group_ids))
        {
            let alive = |x: &VpcLink| x.is_alive();
            match pick(&observed.vpc_links, &l.component, |x| &x.tags, alive, |x| &x.id) {
                None => self.change(
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
                        self.change(
                            format!(
                                "the VPC Link {} is not in the planned subnets and security group; it is replaced",
                                found.id
                            ),
                            &l.component,
                            Action::Delete(Deletion::VpcLink(found.id.clone())),
                        );
                    } else if found.status != VpcLinkStatus::Available {
                        self.d.waiting.push(format!("the VPC Link {} is {}", found.id, found.status));
                    }
                    if let Some((what, action)) =
                        self.retag(&l.component, Tagged::VpcLink(found.id.clone()), &found.tags)
                    {
                        self.change(what, &l.component, action);
                    }
                }
            }
        }
    }

    /// The key and its alias.
    fn kms(&mut self) {
        let (plan, observed) = (self.plan, self.observed);
        let alias = plan.owner.kms_alias();
        let usable = |k: &&KmsKey| !k.is_pending_deletion();
        let key = match observed.alias.as_ref().and_then(|a| a.target_key_id.as_deref()) {
            Some(target) => match observed.kms_keys.iter().find(|k| k.key_id == target) {
                Some(k) => Some(k),
                None => {
                    self.d.conflict = Some(Error::NameTaken {
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
                self.d.changes.push(change);
                key
            }
        };
        if let Some(k) = key {
            if k.is_pending_deletion() {
                self.d.conflict = Some(Error::KmsKeyPendingDeletion { key_id: k.key_id.clone() });
            }
            if let Some((what, action)) = self.retag(KMS, Tagged::Key(k.key_id.clone()), &k.tags) {
                self.d.changes.push(Change { what, component: KMS.into(), action });
            }
        }
    }

    /// Resources of the stack that the plan no longer has (a spec change: fewer NAT gateways, no
    /// VPC Link) or has twice, removed once nothing depends on them.
    fn extras(&mut self, vpc_id: &str) {
        let planned_actions: Vec<Action> = self.d.changes.iter().map(|c| c.action.clone()).collect();
        self.extra_links_and_nat_gateways(vpc_id);
        self.extra_route_tables(vpc_id, &planned_actions);
        self.extra_gateways_and_endpoints(vpc_id);
        self.extra_keys_vpcs_and_groups(vpc_id);
    }

    fn extra_links_and_nat_gateways(&mut self, vpc_id: &str) {
        let (plan, observed) = (self.plan, self.observed);
        let link_plan = plan.vpc_link.as_ref().map(|l| l.component.as_str());
        let live_links: Vec<&VpcLink> =
            observed.vpc_links.iter().filter(|l| l.status != VpcLinkStatus::Deleting).collect();
        let keep_link = link_plan.and_then(|c| pick(&observed.vpc_links, c, |x| &x.tags, |x| x.is_alive(), |x| &x.id));
        for l in &live_links {
            if !(component(&l.tags).is_some() && keep_link.map(|k| k.id.as_str()) == Some(l.id.as_str())) {
                self.delete(
                    format!("the VPC Link {} is not in the plan", l.id),
                    component(&l.tags).unwrap_or(VPCLINK),
                    Deletion::VpcLink(l.id.clone()),
                );
            }
        }
        if observed.vpc_links.iter().any(|l| l.status == VpcLinkStatus::Deleting) {
            self.d.waiting.push("a VPC Link is being deleted".into());
        }

        let planned_nats: BTreeSet<&str> = plan.nat_gateways.iter().map(|n| n.component.as_str()).collect();
        // A NAT goes only once no route of the stack goes through it: a switch of `natType`
        // replaces the routes first (never a moment without a default route), then removes it.
        let routed = |target: &RouteTarget| {
            observed.route_tables.iter().flat_map(|t| t.routes.iter()).any(|r| r.target == *target)
        };
        let mut live_nat_addresses: BTreeSet<&str> = BTreeSet::new();
        for n in observed.nat_gateways.iter().filter(|n| !n.state.is_gone()) {
            let c = component(&n.tags).unwrap_or_default();
            let keep = planned_nats.contains(c)
                && pick(
                    &observed.nat_gateways,
                    c,
                    |x| &x.tags,
                    |x| !x.state.is_going() && x.vpc_id == vpc_id,
                    |x| &x.id,
                )
                .is_some_and(|k| k.id == n.id);
            if n.state.is_deleting() {
                self.d.waiting.push(format!("NAT gateway {} is being deleted", n.id));
                live_nat_addresses.extend(n.allocation_ids.iter().map(String::as_str));
            } else if keep {
                live_nat_addresses.extend(n.allocation_ids.iter().map(String::as_str));
            } else if routed(&RouteTarget::Nat(n.id.clone())) {
                self.d
                    .waiting
                    .push(format!("NAT gateway {} ({c}) is not in the plan; routes still go through it", n.id));
                live_nat_addresses.extend(n.allocation_ids.iter().map(String::as_str));
            } else {
                self.delete(
                    format!("NAT gateway {} ({c}) is not in the plan", n.id),
                    c,
                    Deletion::NatGateway(n.id.clone()),
                );
                live_nat_addresses.extend(n.allocation_ids.iter().map(String::as_str));
            }
        }
        let live_interfaces = self.extra_nat_instances(vpc_id, &planned_nats, &routed);
        let planned_addresses: BTreeSet<&str> = plan.nat_gateways.iter().map(|n| n.address.as_str()).collect();
        for a in &observed.addresses {
            let c = component(&a.tags).unwrap_or_default();
            let keep = planned_addresses.contains(c)
                && pick(&observed.addresses, c, |x| &x.tags, |_| true, |x| &x.allocation_id)
                    .is_some_and(|k| k.allocation_id == a.allocation_id);
            // EC2 refuses to release an address still on an instance's interface.
            let on_instance = a.network_interface_id.as_ref().is_some_and(|e| live_interfaces.contains(e.as_str()));
            if !keep && !live_nat_addresses.contains(a.allocation_id.as_str()) && !on_instance {
                self.delete(
                    format!("Elastic IP {} ({c}) is not in the plan", a.allocation_id),
                    c,
                    Deletion::Address(a.allocation_id.clone()),
                );
            }
        }
    }

    /// NAT instances the plan no longer has (or has twice), terminated once no route goes through
    /// them. Returns the interfaces of the instances not terminated yet.
    fn extra_nat_instances(
        &mut self,
        vpc_id: &str,
        planned: &BTreeSet<&str>,
        routed: &dyn Fn(&RouteTarget) -> bool,
    ) -> BTreeSet<&'a str> {
        let observed = self.observed;
        let live = |x: &Instance| !x.state.is_going() && x.vpc_id.as_deref() == Some(vpc_id);
        for i in observed.instances.iter().filter(|i| !i.state.is_going()) {
            let c = component(&i.tags).unwrap_or_default();
            let keep = planned.contains(c)
                && pick(&observed.instances, c, |x| &x.tags, live, |x| &x.id).is_some_and(|k| k.id == i.id);
            if keep {
                continue;
            }
            if i.network_interface_id.clone().map(RouteTarget::Interface).is_some_and(|t| routed(&t)) {
                self.d
                    .waiting
                    .push(format!("NAT instance {} ({c}) is not in the plan; routes still go through it", i.id));
            } else {
                self.delete(
                    format!("NAT instance {} ({c}) is not in the plan", i.id),
                    c,
                    Deletion::Instance(i.id.clone()),
                );
            }
        }
        if let Some(i) = observed.instances.iter().find(|i| i.state.is_deleting()) {
            self.d.waiting.push(format!("NAT instance {} is being terminated", i.id));
        }
        observed
            .instances
            .iter()
            .filter(|i| !i.state.is_gone())
            .filter_map(|i| i.network_interface_id.as_deref())
            .collect()
    }

    fn extra_route_tables(&mut self, vpc_id: &str, planned_actions: &[Action]) {
        let (plan, observed) = (self.plan, self.observed);
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
            let routed =
                observed.vpc_endpoints.iter().any(|e| !e.state.is_going() && e.route_table_ids.contains(&t.id));
            if !associations.is_empty() {
                for a in associations {
                    let deletion = Deletion::Disassociate(a.to_string());
                    if !planned_actions.contains(&Action::Delete(deletion.clone())) {
                        self.delete(
                            format!("route table {} ({c}) is {what}; its association {a} goes first", t.id),
                            c,
                            deletion,
                        );
                    }
                }
            } else if routed {
                self.d
                    .waiting
                    .push(format!("route table {} ({c}) is {what}; a VPC endpoint still routes through it", t.id));
            } else {
                self.delete(format!("route table {} ({c}) is {what}", t.id), c, Deletion::RouteTable(t.id.clone()));
            }
        }
    }

    fn extra_gateways_and_endpoints(&mut self, vpc_id: &str) {
        let (plan, observed) = (self.plan, self.observed);
        // A second internet gateway or VPC endpoint of a component: detached, then deleted.
        for g in &observed.internet_gateways {
            let keep = plan.internet_gateway
                && pick(&observed.internet_gateways, IGW, |x| &x.tags, |_| true, |x| &x.id)
                    .is_some_and(|k| k.id == g.id);
            if keep {
                continue;
            }
            match g.attached_vpcs.first() {
                Some(attached) => self.delete(
                    format!("internet gateway {} is not the stack's one; detached from {attached} first", g.id),
                    IGW,
                    Deletion::DetachInternetGateway { gateway_id: g.id.clone(), vpc_id: attached.clone() },
                ),
                None => self.delete(
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
            .filter(|e| !e.state.is_going())
            .filter(|e| {
                let c = component(&e.tags).unwrap_or_default();
                !(planned_endpoints.contains(c)
                    && pick(
                        &observed.vpc_endpoints,
                        c,
                        |x| &x.tags,
                        |x| !x.state.is_going() && x.vpc_id == vpc_id,
                        |x| &x.id,
                    )
                    .is_some_and(|k| k.id == e.id))
            })
            .map(|e| e.id.clone())
            .collect();
        if !surplus_endpoints.is_empty() {
            self.delete(
                format!(
                    "VPC endpoints {} are not in the plan or a second one of their component",
                    surplus_endpoints.join(", ")
                ),
                "vpce",
                Deletion::VpcEndpoints(surplus_endpoints),
            );
        }
    }

    fn extra_keys_vpcs_and_groups(&mut self, vpc_id: &str) {
        let (plan, observed) = (self.plan, self.observed);
        // A second KMS key (CreateKey has no idempotency token): scheduled for deletion once the
        // alias names the kept one.
        if let Some(target) = observed.alias.as_ref().and_then(|a| a.target_key_id.as_deref()) {
            for k in observed.kms_keys.iter().filter(|k| !k.is_pending_deletion()) {
                if k.key_id != target {
                    self.delete(
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
                || observed.nat_gateways.iter().any(|x| !x.state.is_gone() && x.vpc_id == v.id)
                || observed.vpc_endpoints.iter().any(|x| !x.state.is_gone() && x.vpc_id == v.id)
                || observed.internet_gateways.iter().any(|g| g.attached_vpcs.contains(&v.id));
            if used {
                self.d.waiting.push(format!("VPC {} is a second VPC of the stack; what is in it goes first", v.id));
            } else {
                self.delete(format!("VPC {} is a second VPC of the stack", v.id), VPC, Deletion::Vpc(v.id.clone()));
            }
        }

        let planned_groups: BTreeSet<&str> = plan.security_groups.iter().map(|g| g.component.as_str()).collect();
        for g in &observed.security_groups {
            let c = component(&g.tags).unwrap_or_default();
            let keep = planned_groups.contains(c)
                && pick(&observed.security_groups, c, |x| &x.tags, |x| x.vpc_id == vpc_id, |x| &x.id)
                    .is_some_and(|k| k.id == g.id);
            // A group goes after what uses it (the VPC Link): AWS refuses before.
            let used = (c == SG_VPCLINK && !observed.vpc_links.is_empty())
                || observed.instances.iter().any(|i| !i.state.is_gone() && i.security_groups.contains(&g.id));
            if !keep && !used {
                self.delete(
                    format!("security group {} ({c}) is not in the plan", g.id),
                    c,
                    Deletion::SecurityGroup(g.id.clone()),
                );
            }
        }
    }
}
