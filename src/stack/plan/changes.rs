//! The Stack's plan as people read it: the diff gives only what can be made now (a subnet is not
//! mentioned before its VPC exists), so the whole plan is found by projecting each change onto a
//! copy of the view, as AWS would make it, and comparing again, until nothing differs. Resources
//! the projection creates get a placeholder ID (`new:<component>`), shown as "new" and never as a
//! planned change's `id`. Pure.

use std::collections::BTreeSet;

use super::{Action, Change, Deletion, Diff, NatInstanceSpec, NetworkPlan, Observed, Previous, Tagged, diff};
use crate::api::{ChangeAction, PlannedChange};
use crate::aws::inventory::{
    Address, Association, EndpointState, Instance, InstanceStateName, InternetGateway, KeyState, KmsAlias, KmsKey,
    NatGateway, NatGatewayState, Route, RouteTable, RouteTarget, Subnet, Vpc, VpcEndpoint, VpcLink, VpcLinkStatus,
    new_security_group,
};

/// Placeholder IDs of resources the projection creates start with this; no AWS ID does.
const NEW: &str = "new:";
/// A bound on the projection (a PublicPrivate stack from nothing takes about 40 steps); reached
/// only if a projected change failed to remove its difference, which would otherwise repeat.
const MAX_STEPS: usize = 400;

/// Every change that brings AWS to the plan, in the order they would be made: `now` (the diff of
/// the view as it is) first, then what each change makes possible.
pub fn planned(plan: &NetworkPlan, observed: &Observed, previous: &Previous, now: &Diff) -> Vec<PlannedChange> {
    let mut view = observed.clone();
    let mut out = Vec::new();
    let mut next = now.changes.first().cloned();
    while let Some(change) = next.filter(|_| out.len() < MAX_STEPS) {
        view.project(&change);
        out.push(change);
        next = diff(plan, &view, previous).changes.into_iter().next();
    }
    out.iter().map(planned_change).collect()
}

/// One change as `status.plan` shows it. `id` is the AWS ID of the existing resource the change
/// acts on (the route table of a route, the group of a rule), none for what is to be created.
pub fn planned_change(change: &Change) -> PlannedChange {
    let (action, resource, id) = describe(&change.action);
    PlannedChange {
        action,
        resource: resource.to_string(),
        name: change.component.clone(),
        id: id.filter(|i| !i.starts_with(NEW)),
        detail: readable(&change.what),
    }
}

fn describe(action: &Action) -> (ChangeAction, &'static str, Option<String>) {
    use ChangeAction::{Create, Delete, Update};
    let some = |id: &String| Some(id.clone());
    match action {
        Action::CreateVpc { .. } => (Create, "ec2:Vpc", None),
        Action::EnableVpcDns { vpc_id, .. } => (Update, "ec2:Vpc", some(vpc_id)),
        Action::CreateInternetGateway { .. } => (Create, "ec2:InternetGateway", None),
        Action::AttachInternetGateway { gateway_id, .. } => (Update, "ec2:InternetGateway", some(gateway_id)),
        Action::CreateSubnet { .. } => (Create, "ec2:Subnet", None),
        Action::CreateRouteTable { .. } => (Create, "ec2:RouteTable", None),
        Action::AssociateRouteTable { route_table_id, .. } => {
            (Create, "ec2:SubnetRouteTableAssociation", some(route_table_id))
        }
        Action::CreateRoute { route_table_id, .. } => (Create, "ec2:Route", some(route_table_id)),
        Action::ReplaceRoute { route_table_id, .. } => (Update, "ec2:Route", some(route_table_id)),
        Action::DeleteRoute { route_table_id, .. } => (Delete, "ec2:Route", some(route_table_id)),
        Action::AllocateAddress { .. } => (Create, "ec2:ElasticIp", None),
        Action::CreateNatGateway { .. } => (Create, "ec2:NatGateway", None),
        Action::RunNatInstance(_) => (Create, "ec2:Instance", None),
        Action::DisableSourceDestCheck { instance_id } => (Update, "ec2:Instance", some(instance_id)),
        Action::AssociateAddress { allocation_id, .. } => (Update, "ec2:ElasticIp", some(allocation_id)),
        Action::CreateSecurityGroup { .. } => (Create, "ec2:SecurityGroup", None),
        Action::Authorize { group_id, egress, .. } => (Create, rule_type(*egress), some(group_id)),
        Action::Revoke { group_id, egress, .. } => (Delete, rule_type(*egress), some(group_id)),
        Action::CreateVpcEndpoint(_) => (Create, "ec2:VpcEndpoint", None),
        Action::ModifyVpcEndpoint(c) => (Update, "ec2:VpcEndpoint", some(&c.endpoint_id)),
        Action::CreateVpcLink { .. } => (Create, "apigateway:VpcLink", None),
        Action::CreateKey { .. } => (Create, "kms:Key", None),
        Action::CreateAlias { key_id, .. } => (Create, "kms:Alias", some(key_id)),
        Action::Retag { resource, .. } => match resource {
            Tagged::Ec2(id) => (Update, ec2_type(id), some(id)),
            Tagged::VpcLink(id) => (Update, "apigateway:VpcLink", some(id)),
            Tagged::Key(id) => (Update, "kms:Key", some(id)),
        },
        Action::Delete(d) => match d {
            Deletion::VpcLink(id) => (Delete, "apigateway:VpcLink", some(id)),
            Deletion::VpcEndpoints(ids) => (Delete, "ec2:VpcEndpoint", Some(ids.join(", "))),
            Deletion::NatGateway(id) => (Delete, "ec2:NatGateway", some(id)),
            Deletion::Instance(id) => (Delete, "ec2:Instance", some(id)),
            Deletion::Address(id) => (Delete, "ec2:ElasticIp", some(id)),
            Deletion::DetachInternetGateway { gateway_id, .. } => (Update, "ec2:InternetGateway", some(gateway_id)),
            Deletion::InternetGateway(id) => (Delete, "ec2:InternetGateway", some(id)),
            Deletion::Disassociate(id) => (Delete, "ec2:SubnetRouteTableAssociation", some(id)),
            Deletion::RouteTable(id) => (Delete, "ec2:RouteTable", some(id)),
            Deletion::SecurityGroup(id) => (Delete, "ec2:SecurityGroup", some(id)),
            Deletion::Subnet(id) => (Delete, "ec2:Subnet", some(id)),
            Deletion::Vpc(id) => (Delete, "ec2:Vpc", some(id)),
            Deletion::Alias(name) => (Delete, "kms:Alias", some(name)),
            Deletion::Key(id) => (Delete, "kms:Key", some(id)),
        },
    }
}

fn rule_type(egress: bool) -> &'static str {
    if egress { "ec2:SecurityGroupEgress" } else { "ec2:SecurityGroupIngress" }
}

/// The type of an EC2 resource, from its ID's prefix.
fn ec2_type(id: &str) -> &'static str {
    match id.split('-').next().unwrap_or_default() {
        "vpc" => "ec2:Vpc",
        "subnet" => "ec2:Subnet",
        "rtb" => "ec2:RouteTable",
        "igw" => "ec2:InternetGateway",
        "eipalloc" => "ec2:ElasticIp",
        "nat" => "ec2:NatGateway",
        "i" => "ec2:Instance",
        "sg" => "ec2:SecurityGroup",
        _ => "ec2:VpcEndpoint",
    }
}

/// `what` with each placeholder ID written as "new".
fn readable(what: &str) -> String {
    let mut out = String::with_capacity(what.len());
    let mut rest = what;
    while let Some(at) = rest.find(NEW) {
        out.push_str(&rest[..at]);
        out.push_str("new");
        let after = &rest[at + NEW.len()..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || "/-_.".contains(c))).unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

impl Observed {
    /// The view after `change`, as AWS makes it (a new VPC has DNS support on and hostnames off,
    /// a new group allows all egress, a new route table routes its VPC locally, one tag call adds
    /// or else removes); what AWS finishes later (a NAT gateway deleting) is taken as finished.
    fn project(&mut self, change: &Change) {
        let new = format!("{NEW}{}", change.component);
        match change.action.clone() {
            Action::CreateVpc { cidr, tags } => {
                self.vpcs.push(Vpc { id: new, cidr, tags, dns_support: Some(true), dns_hostnames: Some(false) })
            }
            Action::EnableVpcDns { vpc_id, hostnames } => {
                if let Some(v) = self.vpcs.iter_mut().find(|v| v.id == vpc_id) {
                    if hostnames { v.dns_hostnames = Some(true) } else { v.dns_support = Some(true) }
                }
            }
            Action::CreateInternetGateway { tags } => {
                self.internet_gateways.push(InternetGateway { id: new, attached_vpcs: vec![], tags })
            }
            Action::AttachInternetGateway { gateway_id, vpc_id } => {
                if let Some(g) = self.internet_gateways.iter_mut().find(|g| g.id == gateway_id) {
                    g.attached_vpcs.push(vpc_id);
                }
            }
            Action::CreateSubnet { vpc_id, cidr, zone, tags } => {
                self.subnets.push(Subnet { id: new, vpc_id, cidr, zone, tags })
            }
            Action::CreateRouteTable { vpc_id, tags, .. } => {
                let cidr = self.vpcs.iter().find(|v| v.id == vpc_id).map(|v| v.cidr.clone()).unwrap_or_default();
                let routes = vec![Route { destination: cidr, target: RouteTarget::Local }];
                self.route_tables.push(RouteTable { id: new, vpc_id, routes, associations: vec![], tags });
            }
            Action::AssociateRouteTable { route_table_id, subnet_id } => {
                if let Some(t) = self.route_tables.iter_mut().find(|t| t.id == route_table_id) {
                    let id = format!("{new}/{subnet_id}");
                    t.associations.push(Association { id, subnet_id: Some(subnet_id) });
                }
            }
            Action::CreateRoute { route_table_id, destination, target }
            | Action::ReplaceRoute { route_table_id, destination, target } => {
                if let Some(t) = self.route_tables.iter_mut().find(|t| t.id == route_table_id) {
                    t.routes.retain(|r| r.destination != destination);
                    t.routes.push(Route { destination, target });
                }
            }
            Action::DeleteRoute { route_table_id, destination } => {
                if let Some(t) = self.route_tables.iter_mut().find(|t| t.id == route_table_id) {
                    t.routes.retain(|r| r.destination != destination);
                }
            }
            Action::AllocateAddress { tags } => self.addresses.push(Address {
                allocation_id: new,
                association_id: None,
                network_interface_id: None,
                tags,
            }),
            Action::RunNatInstance(spec) => self.project_nat_instance(new, spec),
            Action::DisableSourceDestCheck { instance_id } => {
                if let Some(i) = self.instances.iter_mut().find(|i| i.id == instance_id) {
                    i.source_dest_check = Some(false);
                }
            }
            Action::AssociateAddress { allocation_id, network_interface_id } => {
                if let Some(a) = self.addresses.iter_mut().find(|a| a.allocation_id == allocation_id) {
                    a.association_id = Some(format!("{new}/association"));
                    a.network_interface_id = Some(network_interface_id);
                }
            }
            Action::CreateNatGateway { subnet_id, allocation_id, tags, .. } => {
                let vpc_id = self.subnets.iter().find(|s| s.id == subnet_id).map(|s| s.vpc_id.clone());
                self.nat_gateways.push(NatGateway {
                    id: new,
                    vpc_id: vpc_id.unwrap_or_default(),
                    subnet_id,
                    state: NatGatewayState::Pending,
                    allocation_ids: vec![allocation_id],
                    tags,
                });
            }
            Action::CreateSecurityGroup { vpc_id, name, tags, .. } => {
                self.security_groups.push(new_security_group(&new, &vpc_id, &name, tags))
            }
            Action::Authorize { group_id, egress, rule } | Action::Revoke { group_id, egress, rule } => {
                let add = matches!(change.action, Action::Authorize { .. });
                if let Some(g) = self.security_groups.iter_mut().find(|g| g.id == group_id) {
                    let rules = if egress { &mut g.egress } else { &mut g.ingress };
                    if add {
                        rules.insert(rule)
                    } else {
                        rules.remove(&rule)
                    };
                }
            }
            Action::CreateVpcEndpoint(e) => self.vpc_endpoints.push(VpcEndpoint {
                id: new,
                vpc_id: e.vpc_id,
                service: e.service,
                gateway: e.gateway,
                state: EndpointState::Pending,
                subnet_ids: e.subnet_ids.into_iter().collect(),
                route_table_ids: e.route_table_ids.into_iter().collect(),
                group_ids: e.group_ids.into_iter().collect(),
                tags: e.tags,
            }),
            Action::ModifyVpcEndpoint(c) => {
                if let Some(e) = self.vpc_endpoints.iter_mut().find(|e| e.id == c.endpoint_id) {
                    let apply = |set: &mut BTreeSet<String>, add: Vec<String>, remove: &[String]| {
                        set.extend(add);
                        set.retain(|x| !remove.contains(x));
                    };
                    apply(&mut e.route_table_ids, c.add_route_tables, &c.remove_route_tables);
                    apply(&mut e.subnet_ids, c.add_subnets, &c.remove_subnets);
                    apply(&mut e.group_ids, c.add_groups, &c.remove_groups);
                }
            }
            Action::CreateVpcLink { name, subnet_ids, group_ids, tags } => self.vpc_links.push(VpcLink {
                id: new,
                name,
                subnet_ids: subnet_ids.into_iter().collect(),
                group_ids: group_ids.into_iter().collect(),
                status: VpcLinkStatus::Pending,
                tags,
            }),
            Action::CreateKey { tags, .. } => {
                self.kms_keys.push(KmsKey { key_id: new.clone(), arn: new, state: Some(KeyState::Enabled), tags })
            }
            Action::CreateAlias { alias, key_id } => {
                self.alias = Some(KmsAlias { name: alias, target_key_id: Some(key_id) })
            }
            Action::Retag { resource, add, remove } => {
                if let Some(tags) = self.tags_mut(&resource) {
                    if add.is_empty() {
                        remove.iter().for_each(|k| {
                            tags.remove(k);
                        });
                    } else {
                        add.iter().for_each(|(k, v)| tags.insert(k, v));
                    }
                }
            }
            Action::Delete(deletion) => self.project_deletion(deletion),
        }
    }

    /// A NAT instance as EC2 starts it: pending, source/dest check on until it is turned off.
    fn project_nat_instance(&mut self, id: String, spec: NatInstanceSpec) {
        let vpc_id = self.subnets.iter().find(|s| s.id == spec.subnet_id).map(|s| s.vpc_id.clone());
        self.instances.push(Instance {
            network_interface_id: Some(format!("{id}/eni")),
            id,
            vpc_id,
            subnet_id: Some(spec.subnet_id),
            state: InstanceStateName::Pending,
            instance_type: spec.instance_type,
            image_id: Some(spec.image),
            source_dest_check: Some(true),
            key_name: None,
            security_groups: BTreeSet::from([spec.group_id]),
            tags: spec.tags,
        });
    }

    fn project_deletion(&mut self, deletion: Deletion) {
        match deletion {
            Deletion::VpcLink(id) => self.vpc_links.retain(|l| l.id != id),
            Deletion::VpcEndpoints(ids) => self.vpc_endpoints.retain(|e| !ids.contains(&e.id)),
            Deletion::NatGateway(id) => {
                let freed: Vec<String> =
                    self.nat_gateways.iter().filter(|n| n.id == id).flat_map(|n| n.allocation_ids.clone()).collect();
                self.nat_gateways.retain(|n| n.id != id);
                for a in self.addresses.iter_mut().filter(|a| freed.contains(&a.allocation_id)) {
                    a.association_id = None;
                }
            }
            Deletion::Instance(id) => {
                let interfaces: Vec<String> = self
                    .instances
                    .iter()
                    .filter(|i| i.id == id)
                    .filter_map(|i| i.network_interface_id.clone())
                    .collect();
                for i in self.instances.iter_mut().filter(|i| i.id == id) {
                    i.state = InstanceStateName::Terminated;
                }
                for a in self.addresses.iter_mut() {
                    if a.network_interface_id.as_ref().is_some_and(|e| interfaces.contains(e)) {
                        a.association_id = None;
                        a.network_interface_id = None;
                    }
                }
            }
            Deletion::Address(id) => self.addresses.retain(|a| a.allocation_id != id),
            Deletion::DetachInternetGateway { gateway_id, vpc_id } => {
                if let Some(g) = self.internet_gateways.iter_mut().find(|g| g.id == gateway_id) {
                    g.attached_vpcs.retain(|v| *v != vpc_id);
                }
            }
            Deletion::InternetGateway(id) => self.internet_gateways.retain(|g| g.id != id),
            Deletion::Disassociate(id) => {
                for t in &mut self.route_tables {
                    t.associations.retain(|a| a.id != id);
                }
            }
            Deletion::RouteTable(id) => self.route_tables.retain(|t| t.id != id),
            Deletion::SecurityGroup(id) => self.security_groups.retain(|g| g.id != id),
            Deletion::Subnet(id) => self.subnets.retain(|s| s.id != id),
            Deletion::Vpc(id) => self.vpcs.retain(|v| v.id != id),
            Deletion::Alias(_) => self.alias = None,
            Deletion::Key(id) => {
                for k in self.kms_keys.iter_mut().filter(|k| k.key_id == id) {
                    k.state = Some(KeyState::PendingDeletion);
                }
            }
        }
    }

    fn tags_mut(&mut self, resource: &Tagged) -> Option<&mut crate::aws::inventory::Tags> {
        match resource {
            Tagged::VpcLink(id) => self.vpc_links.iter_mut().find(|x| x.id == *id).map(|x| &mut x.tags),
            Tagged::Key(id) => self.kms_keys.iter_mut().find(|x| x.key_id == *id).map(|x| &mut x.tags),
            Tagged::Ec2(id) => {
                let id = id.as_str();
                self.vpcs
                    .iter_mut()
                    .find(|x| x.id == id)
                    .map(|x| &mut x.tags)
                    .or(self.subnets.iter_mut().find(|x| x.id == id).map(|x| &mut x.tags))
                    .or(self.route_tables.iter_mut().find(|x| x.id == id).map(|x| &mut x.tags))
                    .or(self.internet_gateways.iter_mut().find(|x| x.id == id).map(|x| &mut x.tags))
                    .or(self.addresses.iter_mut().find(|x| x.allocation_id == id).map(|x| &mut x.tags))
                    .or(self.nat_gateways.iter_mut().find(|x| x.id == id).map(|x| &mut x.tags))
                    .or(self.instances.iter_mut().find(|x| x.id == id).map(|x| &mut x.tags))
                    .or(self.security_groups.iter_mut().find(|x| x.id == id).map(|x| &mut x.tags))
                    .or(self.vpc_endpoints.iter_mut().find(|x| x.id == id).map(|x| &mut x.tags))
            }
        }
    }
}
