//! The plan and the diff, driven to convergence against an in-memory account: every step the
//! diff asks for is applied the way AWS would, until nothing differs; then drift is made and the
//! diff must name it and repair it; then the teardown must leave nothing.

use super::*;
use crate::api::ChangeAction;
use crate::aws::inventory::{Created, KeyState, Kind, Recorded, Route, Snapshot, Table, new_security_group};

fn owner() -> Owner {
    Owner { namespace: "team-a".into(), name: "web".into(), uid: "uid-1".into() }
}

fn spec(json: serde_json::Value) -> StackSpec {
    serde_json::from_value(json).unwrap()
}

fn zones() -> Vec<String> {
    vec!["us-east-1a".into(), "us-east-1b".into(), "us-east-1c".into()]
}

fn plan_of(json: serde_json::Value) -> NetworkPlan {
    plan_network(owner(), &spec(json), "us-east-1", zones()).unwrap()
}

fn public_private() -> NetworkPlan {
    plan_of(
        serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"pattern": "PublicPrivate", "cidr": "10.20.0.0/16"}, "tags": {"team": "a"}}),
    )
}

fn private_isolated() -> NetworkPlan {
    plan_of(
        serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"pattern": "PrivateIsolated", "cidr": "10.30.0.0/22"}}),
    )
}

/// Changes an instance as EC2 does behind the operator's back (it learns of it from a list).
fn change_instance(view: &mut Snapshot, id: &str, how: impl Fn(&mut Instance)) {
    let list = Arc::make_mut(&mut view.instances);
    for i in list.iter_mut().filter(|i| i.id == id) {
        how(Arc::make_mut(i));
    }
}

/// An account that does what the actions say, handing out sequential IDs. Each action's effect on
/// what the plan sees is the records the operator makes of its response, applied by the
/// inventory's own `Snapshot::apply`; only what AWS does beyond what the response tells (and the
/// operator learns from its next list) is written here.
#[derive(Default)]
struct Account {
    observed: Observed,
    next: u32,
    mutations: usize,
}

impl Account {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}-{:04}", self.next)
    }

    fn apply(&mut self, action: &Action) {
        self.mutations += 1;
        let recorded = self.call(action);
        let mut view = self.view();
        for r in &recorded {
            view.apply(r);
        }
        self.see(view);
    }

    /// What the plan sees, as the inventory's view.
    fn view(&self) -> Snapshot {
        fn table<T: Clone>(list: &[T]) -> Table<T> {
            Arc::new(list.iter().cloned().map(Arc::new).collect())
        }
        let o = &self.observed;
        Snapshot {
            vpcs: table(&o.vpcs),
            subnets: table(&o.subnets),
            route_tables: table(&o.route_tables),
            internet_gateways: table(&o.internet_gateways),
            addresses: table(&o.addresses),
            nat_gateways: table(&o.nat_gateways),
            instances: table(&o.instances),
            security_groups: table(&o.security_groups),
            vpc_endpoints: table(&o.vpc_endpoints),
            vpc_links: table(&o.vpc_links),
            kms_keys: table(&o.kms_keys),
            kms_aliases: table(o.alias.as_slice()),
            ..Snapshot::default()
        }
    }

    fn see(&mut self, view: Snapshot) {
        fn list<T: Clone>(table: &Table<T>) -> Vec<T> {
            table.iter().map(|e| T::clone(e)).collect()
        }
        self.observed = Observed {
            vpcs: list(&view.vpcs),
            subnets: list(&view.subnets),
            route_tables: list(&view.route_tables),
            internet_gateways: list(&view.internet_gateways),
            addresses: list(&view.addresses),
            nat_gateways: list(&view.nat_gateways),
            instances: list(&view.instances),
            security_groups: list(&view.security_groups),
            vpc_endpoints: list(&view.vpc_endpoints),
            vpc_links: list(&view.vpc_links),
            kms_keys: list(&view.kms_keys),
            alias: view.kms_aliases.first().map(|a| KmsAlias::clone(a)),
        };
    }

    /// EC2 starts the instance with source/dest check on; the response names it.
    fn run_nat_instance(&mut self, spec: NatInstanceSpec) -> Vec<Recorded> {
        let id = self.id("i");
        let eni = self.id("eni");
        let vpc_id = self.observed.subnets.iter().find(|s| s.id == spec.subnet_id).map(|s| s.vpc_id.clone());
        vec![Recorded::Created(Created::Instance(Instance {
            id,
            vpc_id,
            subnet_id: Some(spec.subnet_id),
            state: InstanceStateName::Running,
            instance_type: spec.instance_type,
            image_id: Some(spec.image),
            network_interface_id: Some(eni),
            source_dest_check: Some(true),
            key_name: None,
            security_groups: BTreeSet::from([spec.group_id]),
            tags: spec.tags,
        }))]
    }

    /// The response tells nothing: the operator lists instances again.
    fn disable_source_dest_check(&mut self, instance_id: &str) -> Vec<Recorded> {
        let mut view = self.view();
        change_instance(&mut view, instance_id, |i| i.source_dest_check = Some(false));
        self.see(view);
        vec![Recorded::Changed(Kind::Instances)]
    }

    /// Makes the call: checks what AWS would refuse, does what AWS does beyond what its response
    /// tells, and returns the records the operator makes of the response (as `stack::aws` does).
    fn call(&mut self, action: &Action) -> Vec<Recorded> {
        let o = &mut self.observed;
        match action.clone() {
            Action::CreateVpc { cidr, tags } => {
                let id = self.id("vpc");
                let dns = Recorded::VpcDns { vpc_id: id.clone(), support: Some(true), hostnames: Some(false) };
                let vpc = Vpc { id, cidr, tags, dns_support: None, dns_hostnames: None };
                vec![Recorded::Created(Created::Vpc(vpc)), dns]
            }
            Action::EnableVpcDns { vpc_id, hostnames } => {
                let (support, hostnames) = if hostnames { (None, Some(true)) } else { (Some(true), None) };
                vec![Recorded::VpcDns { vpc_id, support, hostnames }]
            }
            Action::CreateInternetGateway { tags } => {
                let id = self.id("igw");
                vec![Recorded::Created(Created::InternetGateway(InternetGateway { id, attached_vpcs: vec![], tags }))]
            }
            Action::AttachInternetGateway { gateway_id, vpc_id } => {
                vec![Recorded::GatewayAttachment { gateway_id, vpc_id, attached: true }]
            }
            Action::CreateSubnet { vpc_id, cidr, zone, tags } => {
                let id = self.id("subnet");
                vec![Recorded::Created(Created::Subnet(Subnet { id, vpc_id, cidr, zone, tags }))]
            }
            Action::CreateRouteTable { vpc_id, tags, .. } => {
                let id = self.id("rtb");
                let routes = vec![Route { destination: "10.0.0.0/8".into(), target: RouteTarget::Local }];
                vec![Recorded::Created(Created::RouteTable(RouteTable {
                    id,
                    vpc_id,
                    routes,
                    associations: vec![],
                    tags,
                }))]
            }
            Action::AssociateRouteTable { route_table_id, subnet_id } => {
                let association_id = self.id("rtbassoc");
                vec![Recorded::Associated { route_table_id, association_id, subnet_id }]
            }
            Action::CreateRoute { route_table_id, destination, target } => {
                let t = o.route_tables.iter().find(|t| t.id == route_table_id).unwrap();
                assert!(!t.routes.iter().any(|r| r.destination == destination), "route exists");
                vec![Recorded::Route { route_table_id, destination, target: Some(target) }]
            }
            Action::ReplaceRoute { route_table_id, destination, target } => {
                let t = o.route_tables.iter().find(|t| t.id == route_table_id).unwrap();
                assert!(t.routes.iter().any(|r| r.destination == destination), "no route to replace");
                vec![Recorded::Route { route_table_id, destination, target: Some(target) }]
            }
            Action::DeleteRoute { route_table_id, destination } => {
                vec![Recorded::Route { route_table_id, destination, target: None }]
            }
            Action::AllocateAddress { tags } => {
                let allocation_id = self.id("eipalloc");
                let address = Address { allocation_id, association_id: None, network_interface_id: None, tags };
                vec![Recorded::Created(Created::Address(address))]
            }
            Action::CreateNatGateway { subnet_id, allocation_id, tags, .. } => {
                let id = self.id("nat");
                let o = &mut self.observed;
                let vpc_id = o.subnets.iter().find(|s| s.id == subnet_id).unwrap().vpc_id.clone();
                // AWS associates the address with the gateway; the response does not say so.
                let a = o.addresses.iter_mut().find(|a| a.allocation_id == allocation_id).unwrap();
                assert!(a.association_id.is_none(), "address in use");
                a.association_id = Some(format!("assoc-{id}"));
                let state = NatGatewayState::Available;
                let nat = NatGateway { id, vpc_id, subnet_id, state, allocation_ids: vec![allocation_id], tags };
                vec![Recorded::Created(Created::NatGateway(nat))]
            }
            Action::RunNatInstance(spec) => self.run_nat_instance(spec),
            Action::DisableSourceDestCheck { instance_id } => self.disable_source_dest_check(&instance_id),
            Action::AssociateAddress { allocation_id, network_interface_id } => {
                let a = o.addresses.iter_mut().find(|a| a.allocation_id == allocation_id).unwrap();
                a.association_id = Some(format!("eipassoc-{network_interface_id}"));
                a.network_interface_id = Some(network_interface_id);
                vec![Recorded::Changed(Kind::Addresses)]
            }
            Action::CreateSecurityGroup { vpc_id, name, tags, .. } => {
                let id = self.id("sg");
                vec![Recorded::Created(Created::SecurityGroup(new_security_group(&id, &vpc_id, &name, tags)))]
            }
            Action::Authorize { group_id, egress, rule } => {
                vec![Recorded::Rule { group_id, egress, rule, added: true }]
            }
            Action::Revoke { group_id, egress, rule } => vec![Recorded::Rule { group_id, egress, rule, added: false }],
            Action::CreateVpcEndpoint(e) => {
                let id = self.id("vpce");
                if e.gateway {
                    // AWS adds the service's routes to the endpoint's tables.
                    for t in self.observed.route_tables.iter_mut().filter(|t| e.route_table_ids.contains(&t.id)) {
                        t.routes.push(Route { destination: "pl-s3".into(), target: RouteTarget::Gateway(id.clone()) });
                    }
                }
                vec![Recorded::Created(Created::VpcEndpoint(VpcEndpoint {
                    id,
                    vpc_id: e.vpc_id,
                    service: e.service,
                    gateway: e.gateway,
                    state: EndpointState::Available,
                    subnet_ids: e.subnet_ids.into_iter().collect(),
                    route_table_ids: e.route_table_ids.into_iter().collect(),
                    group_ids: e.group_ids.into_iter().collect(),
                    tags: e.tags,
                }))]
            }
            Action::ModifyVpcEndpoint(c) => {
                // The response does not tell the result: the operator lists endpoints again, and
                // sees what AWS made of it.
                let e = o.vpc_endpoints.iter_mut().find(|e| e.id == c.endpoint_id).unwrap();
                e.subnet_ids.extend(c.add_subnets);
                e.subnet_ids.retain(|s| !c.remove_subnets.contains(s));
                e.route_table_ids.extend(c.add_route_tables);
                e.route_table_ids.retain(|s| !c.remove_route_tables.contains(s));
                e.group_ids.extend(c.add_groups);
                e.group_ids.retain(|s| !c.remove_groups.contains(s));
                vec![Recorded::Changed(Kind::VpcEndpoints), Recorded::Changed(Kind::RouteTables)]
            }
            Action::CreateVpcLink { name, subnet_ids, group_ids, tags } => {
                let id = self.id("vl");
                vec![Recorded::Created(Created::VpcLink(VpcLink {
                    id,
                    name,
                    subnet_ids: subnet_ids.into_iter().collect(),
                    group_ids: group_ids.into_iter().collect(),
                    status: VpcLinkStatus::Available,
                    tags,
                }))]
            }
            Action::CreateKey { tags, .. } => {
                let key_id = self.id("key");
                let arn = format!("arn:aws:kms:us-east-1:111:key/{key_id}");
                let state = Recorded::KeyState { key_id: key_id.clone(), state: KeyState::Enabled };
                vec![Recorded::Created(Created::KmsKey(KmsKey { key_id, arn, state: None, tags })), state]
            }
            Action::CreateAlias { alias, key_id } => vec![Recorded::Alias { name: alias, target_key_id: key_id }],
            Action::Retag { resource, add, remove } => {
                let (kind, id) = match &resource {
                    Tagged::Ec2(id) => (Kind::of_ec2_id(id), id),
                    Tagged::VpcLink(id) => (Kind::VpcLinks, id),
                    Tagged::Key(id) => (Kind::KmsKeys, id),
                };
                vec![Recorded::retagged(kind, id, &add, &remove)]
            }
            Action::Delete(d) => self.delete(d),
        }
    }

    fn delete(&mut self, d: Deletion) -> Vec<Recorded> {
        let o = &mut self.observed;
        match d {
            Deletion::VpcLink(id) => vec![Recorded::Deleted(Kind::VpcLinks, id)],
            Deletion::VpcEndpoints(ids) => {
                ids.into_iter().map(|id| Recorded::Deleted(Kind::VpcEndpoints, id)).collect()
            }
            Deletion::NatGateway(id) => {
                // AWS releases the gateway's addresses as it deletes it.
                let n = o.nat_gateways.iter().find(|n| n.id == id).unwrap();
                for a in o.addresses.iter_mut().filter(|a| n.allocation_ids.contains(&a.allocation_id)) {
                    a.association_id = None;
                }
                vec![Recorded::Deleted(Kind::NatGateways, id)]
            }
            Deletion::Instance(id) => {
                // EC2 takes the address off the interface as the instance terminates.
                let eni = o.instances.iter().find(|i| i.id == id).unwrap().network_interface_id.clone();
                for a in o.addresses.iter_mut().filter(|a| a.network_interface_id == eni) {
                    a.association_id = None;
                    a.network_interface_id = None;
                }
                let mut view = self.view();
                change_instance(&mut view, &id, |i| i.state = InstanceStateName::Terminated);
                self.see(view);
                vec![Recorded::Changed(Kind::Instances)]
            }
            Deletion::Address(id) => {
                assert!(o.addresses.iter().any(|a| a.allocation_id == id && a.association_id.is_none()), "in use");
                vec![Recorded::Deleted(Kind::Addresses, id)]
            }
            Deletion::DetachInternetGateway { gateway_id, vpc_id } => {
                vec![Recorded::GatewayAttachment { gateway_id, vpc_id, attached: false }]
            }
            Deletion::InternetGateway(id) => {
                assert!(o.internet_gateways.iter().any(|g| g.id == id && g.attached_vpcs.is_empty()), "attached");
                vec![Recorded::Deleted(Kind::InternetGateways, id)]
            }
            Deletion::Disassociate(association_id) => vec![Recorded::Disassociated { association_id }],
            Deletion::RouteTable(id) => {
                assert!(o.route_tables.iter().any(|t| t.id == id && t.associations.is_empty()), "associated");
                vec![Recorded::Deleted(Kind::RouteTables, id)]
            }
            Deletion::SecurityGroup(id) => {
                assert!(
                    !o.instances.iter().any(|i| i.security_groups.contains(&id) && !i.state.is_gone()),
                    "group in use by an instance"
                );
                assert!(!o.vpc_links.iter().any(|l| l.group_ids.contains(&id)), "group in use by a VPC Link");
                assert!(
                    !o.vpc_endpoints.iter().any(|e| e.group_ids.contains(&id) && !e.state.is_gone()),
                    "group in use"
                );
                vec![Recorded::Deleted(Kind::SecurityGroups, id)]
            }
            Deletion::Subnet(id) => {
                assert!(!o.nat_gateways.iter().any(|n| n.subnet_id == id && !n.state.is_gone()), "subnet in use");
                assert!(
                    !o.instances.iter().any(|i| i.subnet_id.as_ref() == Some(&id) && !i.state.is_gone()),
                    "subnet in use by an instance"
                );
                vec![Recorded::Deleted(Kind::Subnets, id)]
            }
            Deletion::Vpc(id) => {
                assert!(!o.subnets.iter().any(|s| s.vpc_id == id), "VPC has subnets");
                vec![Recorded::Deleted(Kind::Vpcs, id)]
            }
            Deletion::Alias(name) => {
                assert_eq!(o.alias.as_ref().map(|a| a.name.clone()), Some(name.clone()));
                vec![Recorded::Deleted(Kind::KmsAliases, name)]
            }
            Deletion::Key(key_id) => vec![Recorded::KeyState { key_id, state: KeyState::PendingDeletion }],
        }
    }

    /// Applies the diff's first change until there is none; returns the reasons of the steps.
    fn converge(&mut self, plan: &NetworkPlan) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        for _ in 0..200 {
            let d = diff(plan, &self.observed, &Previous::default());
            assert!(d.conflict.is_none(), "{:?}", d.conflict);
            let Some(first) = d.changes.first() else {
                assert!(d.waiting.is_empty(), "{:?}", d.waiting);
                return reasons;
            };
            reasons.push(first.action.reason());
            self.apply(&first.action);
        }
        panic!("no convergence after 200 steps: {:?}", diff(plan, &self.observed, &Previous::default()).changes);
    }

    fn tear_down(&mut self, alias: &str) -> usize {
        self.tear_down_keeping(alias, &Kept::default())
    }

    fn tear_down_keeping(&mut self, alias: &str, kept: &Kept) -> usize {
        for n in 0..200 {
            match teardown(&self.observed, alias, kept) {
                Teardown::Done => return n,
                Teardown::Waiting(w) => panic!("nothing should wait in memory: {w}"),
                Teardown::Step(change) => self.apply(&change.action),
            }
        }
        panic!("teardown does not end");
    }
}

#[test]
fn cidrs_are_carved_deterministically_from_16_to_22() {
    assert_eq!(carve("10.0.0.0/16", 3).unwrap(), vec!["10.0.0.0/19", "10.0.32.0/19", "10.0.64.0/19"]);
    assert_eq!(carve("10.30.0.0/22", 6).unwrap().last().unwrap(), "10.30.2.128/25");
    assert!(carve("10.0.0.0/15", 5).unwrap_err().contains("/16 to /22"));
    assert!(carve("10.0.0.0/23", 5).is_err());
    assert!(carve("10.0.0.1/16", 5).unwrap_err().contains("host bits"));
    assert!(carve("nonsense", 5).is_err());
}

#[test]
fn public_private_has_three_public_and_two_private_subnets() {
    let plan = public_private();
    let layout: Vec<(&str, &str, &str)> =
        plan.subnets.iter().map(|s| (s.component.as_str(), s.zone.as_str(), s.cidr.as_str())).collect();
    assert_eq!(
        layout,
        vec![
            ("subnet/public/0", "us-east-1a", "10.20.0.0/19"),
            ("subnet/public/1", "us-east-1b", "10.20.32.0/19"),
            ("subnet/public/2", "us-east-1c", "10.20.64.0/19"),
            ("subnet/private/0", "us-east-1a", "10.20.96.0/19"),
            ("subnet/private/1", "us-east-1b", "10.20.128.0/19"),
        ]
    );
    assert!(plan.internet_gateway);
    assert_eq!(plan.nat_gateways.len(), 1, "Single by default");
    assert_eq!(plan.route_tables[0].default_route, Some(DefaultRoute::InternetGateway));
    assert_eq!(plan.route_tables[1].default_route, Some(DefaultRoute::Nat("nat/0".into())));
    assert_eq!(plan.route_tables[2].default_route, Some(DefaultRoute::Nat("nat/0".into())));
    assert!(plan.endpoints.is_empty());
    assert_eq!(plan.vpc_link.as_ref().unwrap().subnets, vec!["subnet/public/0", "subnet/public/1", "subnet/public/2"]);
    let groups: Vec<&str> = plan.security_groups.iter().map(|g| g.component.as_str()).collect();
    assert_eq!(groups, vec![SG_APP, SG_VPCLINK]);
}

#[test]
fn per_az_nat_gateways_serve_each_private_zone() {
    let plan = plan_of(
        serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"natGateways": "PerAz", "vpcLink": false}}),
    );
    assert_eq!(
        plan.nat_gateways.iter().map(|n| n.subnet.as_str()).collect::<Vec<_>>(),
        vec!["subnet/public/0", "subnet/public/1"]
    );
    assert_eq!(plan.route_tables[2].default_route, Some(DefaultRoute::Nat("nat/1".into())));
    assert!(plan.vpc_link.is_none());
    assert_eq!(plan.security_groups.len(), 1);
    let none = plan_of(serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"natGateways": "None"}}));
    assert!(none.nat_gateways.is_empty());
    assert!(none.route_tables.iter().skip(1).all(|t| t.default_route.is_none()));
}

#[test]
fn private_isolated_has_no_way_out_and_endpoints_behind_443_from_the_vpc() {
    let plan = private_isolated();
    assert!(!plan.internet_gateway);
    assert!(plan.nat_gateways.is_empty());
    assert!(plan.route_tables.iter().all(|t| t.default_route.is_none()));
    assert_eq!(plan.subnets.iter().filter(|s| s.tier == SubnetTier::Isolated).count(), 3);
    assert_eq!(plan.subnets.iter().filter(|s| s.tier == SubnetTier::Private).count(), 3);
    let services: Vec<&str> = plan.endpoints.iter().map(|e| e.service.as_str()).collect();
    assert_eq!(
        services,
        vec![
            "com.amazonaws.us-east-1.s3",
            "com.amazonaws.us-east-1.secretsmanager",
            "com.amazonaws.us-east-1.ssm",
            "com.amazonaws.us-east-1.ssmmessages",
            "com.amazonaws.us-east-1.ec2messages",
            "com.amazonaws.us-east-1.logs",
        ]
    );
    assert_eq!(plan.endpoints[0].route_tables, vec!["rtb/private/0", "rtb/private/1", "rtb/private/2"]);
    let endpoints_sg = plan.security_groups.iter().find(|g| g.component == SG_ENDPOINTS).unwrap();
    assert_eq!(
        endpoints_sg.ingress,
        BTreeSet::from([Rule {
            protocol: "tcp".into(),
            from: Some(443),
            to: Some(443),
            source: Source::Cidr("10.30.0.0/22".into())
        }])
    );
    assert!(endpoints_sg.egress.is_empty());
    assert_eq!(
        plan.vpc_link.as_ref().unwrap().subnets,
        vec!["subnet/private/0", "subnet/private/1", "subnet/private/2"]
    );
}

#[test]
fn zones_come_from_the_spec_else_stay_where_subnets_are() {
    let region: Vec<String> = ["a", "b", "c", "d"].iter().map(|z| format!("us-east-1{z}")).collect();
    let r = "us-east-1";
    assert_eq!(choose_zones(None, r, &region, &BTreeMap::new()).unwrap(), region[..3].to_vec());
    let existing = BTreeMap::from([(0, "us-east-1d".to_string())]);
    assert_eq!(choose_zones(None, r, &region, &existing).unwrap(), vec!["us-east-1d", "us-east-1a", "us-east-1b"]);
    let spec = vec!["x".to_string(), "y".into(), "z".into()];
    assert_eq!(choose_zones(Some(&spec), r, &region, &existing).unwrap(), spec);
}

#[test]
fn too_few_zones_in_the_region_is_awss_doing_not_an_invalid_spec() {
    let region: Vec<String> = ["a", "b"].iter().map(|z| format!("us-east-1{z}")).collect();
    let e = choose_zones(None, "us-east-1", &region, &BTreeMap::new()).unwrap_err();
    assert!(matches!(e, Error::TooFewZones { count: 2, .. }), "{e}");
    assert_eq!((e.kind(), e.reason()), (crate::error::ErrorKind::External, "TooFewZones"));
    assert!(e.to_string().contains("us-east-1a, us-east-1b") && e.to_string().contains("needs three"), "{e}");
}

#[test]
fn every_resource_carries_identity_component_name_and_user_tags() {
    let plan = public_private();
    let tags = plan.tags_for("subnet/public/0");
    assert_eq!(&tags[MANAGED_BY_TAG], "tinystacks-operator");
    assert_eq!(&tags[OWNER_TAG], "Stack/team-a/web");
    assert_eq!(&tags[OWNER_UID_TAG], "uid-1");
    assert_eq!(&tags[COMPONENT_TAG], "subnet/public/0");
    assert_eq!(&tags["Name"], "team-a-web-subnet-public-0");
    assert_eq!(&tags["team"], "a");
}

#[test]
fn tokens_are_stable_and_change_with_the_previous_ids() {
    let o = owner();
    assert_eq!(o.client_token("nat/0", &[]), o.client_token("nat/0", &[]));
    assert_ne!(o.client_token("nat/0", &[]), o.client_token("nat/1", &[]));
    assert_ne!(o.client_token("nat/0", &[]), o.client_token("nat/0", &["nat-1".into()]));
    assert!(o.client_token("nat/0", &[]).len() <= 64);
}

#[test]
fn public_private_converges_one_step_at_a_time_and_tears_down() {
    let plan = public_private();
    let mut account = Account::default();
    let reasons = account.converge(&plan);
    assert_eq!(reasons[0], "CreatedVpc");
    // What Databases and Bastions need (the key, the subnets, the groups) before what AWS takes
    // minutes to make, so that they can start while the Stack waits for it.
    let at = |reason: &str| reasons.iter().position(|r| *r == reason).unwrap_or(usize::MAX);
    let last = |reason: &str| reasons.iter().rposition(|r| *r == reason).unwrap_or(usize::MAX);
    let slow = at("CreatedNatGateway").min(at("CreatedVpcLink"));
    assert!(last("CreatedKmsAlias").max(last("CreatedSubnet")).max(last("CreatedSecurityGroup")) < slow, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| **r == "CreatedSubnet").count(), 5);
    assert_eq!(reasons.iter().filter(|r| **r == "AssociatedRouteTable").count(), 5);
    assert_eq!(reasons.iter().filter(|r| **r == "CreatedRoute").count(), 3);
    let o = &account.observed;
    assert_eq!((o.vpcs.len(), o.subnets.len(), o.route_tables.len(), o.nat_gateways.len()), (1, 5, 3, 1));
    let status = status_of(&plan, o);
    assert_eq!(status.subnets.len(), 5);
    assert_eq!(status.nat_gateway_ids.len(), 1);
    assert!(status.internet_gateway_id.is_some() && status.vpc_link_id.is_some() && status.kms_key_arn.is_some());
    assert!(status.vpc_endpoint_ids.is_empty());
    // The public table routes out through the gateway, the private ones through NAT.
    let igw = status.internet_gateway_id.clone().unwrap();
    let nat = status.nat_gateway_ids[0].clone();
    let default_targets: Vec<RouteTarget> = o
        .route_tables
        .iter()
        .map(|t| t.routes.iter().find(|r| r.destination == DEFAULT_ROUTE).unwrap().target.clone())
        .collect();
    assert_eq!(default_targets, vec![RouteTarget::Gateway(igw), RouteTarget::Nat(nat.clone()), RouteTarget::Nat(nat)]);

    let steps = account.tear_down(&owner().kms_alias());
    assert!(account.observed.is_empty(), "{:?}", account.observed);
    assert!(steps > 20, "{steps}");
}

#[test]
fn private_isolated_converges_and_tears_down() {
    let plan = private_isolated();
    let mut account = Account::default();
    account.converge(&plan);
    let o = &account.observed;
    assert!(o.internet_gateways.is_empty() && o.nat_gateways.is_empty() && o.addresses.is_empty());
    assert_eq!(o.vpc_endpoints.len(), 6);
    assert!(o.route_tables.iter().all(|t| !t.routes.iter().any(|r| r.destination == DEFAULT_ROUTE)));
    let s3 = o.vpc_endpoints.iter().find(|e| e.gateway).unwrap();
    assert_eq!(s3.route_table_ids.len(), 3);
    let status = status_of(&plan, o);
    assert_eq!(status.vpc_endpoint_ids.len(), 6);
    assert_eq!(status.route_table_ids.len(), 4);
    assert!(status.internet_gateway_id.is_none());
    account.tear_down(&owner().kms_alias());
    assert!(account.observed.is_empty());
}

/// Converges, applies `drift`, and checks that the diff names it and that converging again
/// repairs it with the expected first step.
fn repaired(plan: &NetworkPlan, drift: impl FnOnce(&mut Observed), first: &str, named: &str) {
    let mut account = Account::default();
    account.converge(plan);
    drift(&mut account.observed);
    let d = diff(plan, &account.observed, &Previous::default());
    let change = d.changes.first().unwrap_or_else(|| panic!("drift not seen: {named}"));
    assert_eq!(change.action.reason(), first, "{change:?}");
    assert!(change.what.contains(named), "{:?} should name {named}", change.what);
    account.converge(plan);
}

#[test]
fn drift_is_named_and_repaired() {
    let pp = public_private();
    repaired(
        &pp,
        |o| o.route_tables[0].routes.retain(|r| r.destination != DEFAULT_ROUTE),
        "CreatedRoute",
        "rtb/public",
    );
    repaired(&pp, |o| o.internet_gateways[0].attached_vpcs.clear(), "AttachedInternetGateway", "not attached");
    repaired(
        &pp,
        |o| o.subnets.retain(|s| &s.tags[COMPONENT_TAG] != "subnet/private/1"),
        "CreatedSubnet",
        "subnet/private/1",
    );
    repaired(
        &pp,
        |o| {
            o.subnets[0].tags.remove("team");
        },
        "UpdatedTags",
        "team",
    );
    repaired(
        &pp,
        |o| {
            o.vpcs[0].tags.insert("extra", "x");
        },
        "UpdatedTags",
        "extra",
    );
    let ssh = Rule { protocol: "tcp".into(), from: Some(22), to: Some(22), source: Source::Cidr("0.0.0.0/0".into()) };
    repaired(
        &pp,
        |o| {
            o.security_groups.iter_mut().find(|g| &g.tags[COMPONENT_TAG] == SG_APP).unwrap().ingress.insert(ssh);
        },
        "RevokedSecurityGroupRule",
        "port 22",
    );
    repaired(
        &pp,
        |o| {
            o.route_tables[1].routes.iter_mut().find(|r| r.destination == DEFAULT_ROUTE).unwrap().target =
                RouteTarget::Other("pcx-1".into())
        },
        "ReplacedRoute",
        "rtb/private/0",
    );
    let pi = private_isolated();
    repaired(
        &pi,
        |o| o.vpc_endpoints.retain(|e| e.service != "com.amazonaws.us-east-1.ssm"),
        "CreatedVpcEndpoint",
        "vpce/ssm",
    );
    repaired(
        &pi,
        |o| {
            let isolated = o.route_tables.iter_mut().find(|t| &t.tags[COMPONENT_TAG] == "rtb/isolated").unwrap();
            isolated
                .routes
                .push(Route { destination: DEFAULT_ROUTE.into(), target: RouteTarget::Gateway("igw-foreign".into()) });
        },
        "DeletedRoute",
        "rtb/isolated",
    );
    repaired(
        &pi,
        |o| o.subnets.retain(|s| &s.tags[COMPONENT_TAG] != "subnet/private/2"),
        "CreatedSubnet",
        "subnet/private/2",
    );
}

#[test]
fn spec_changes_converge_in_place() {
    let single = public_private();
    let mut account = Account::default();
    account.converge(&single);
    let vpc = account.observed.vpcs[0].id.clone();

    let per_az = plan_of(
        serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"cidr": "10.20.0.0/16", "natGateways": "PerAz"}, "tags": {"team": "b", "cost": "1"}}),
    );
    account.converge(&per_az);
    let live: Vec<&NatGateway> =
        account.observed.nat_gateways.iter().filter(|n| n.state == NatGatewayState::Available).collect();
    assert_eq!(live.len(), 2);
    assert_eq!(account.observed.vpcs[0].id, vpc, "the VPC stays");
    assert!(account.observed.subnets.iter().all(|s| &s.tags["team"] == "b" && &s.tags["cost"] == "1"));

    let none = plan_of(
        serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"cidr": "10.20.0.0/16", "natGateways": "None", "vpcLink": false}}),
    );
    account.converge(&none);
    assert!(account.observed.nat_gateways.iter().all(|n| n.state == NatGatewayState::Deleted));
    assert!(account.observed.addresses.is_empty(), "Elastic IPs released");
    assert!(account.observed.vpc_links.is_empty());
    assert!(!account.observed.security_groups.iter().any(|g| &g.tags[COMPONENT_TAG] == SG_VPCLINK));
    assert!(
        account.observed.route_tables.iter().skip(1).all(|t| !t.routes.iter().any(|r| r.destination == DEFAULT_ROUTE))
    );
    assert!(account.observed.subnets.iter().all(|s| !s.tags.contains_key("team")));
}

#[test]
fn an_unaliased_key_is_found_by_its_tags_and_a_foreign_alias_is_a_conflict() {
    let plan = public_private();
    let mut account = Account::default();
    account.converge(&plan);
    let key = account.observed.kms_keys[0].key_id.clone();
    account.observed.alias = None;
    let d = diff(&plan, &account.observed, &Previous::default());
    assert_eq!(d.changes[0].action, Action::CreateAlias { alias: owner().kms_alias(), key_id: key });
    account.observed.alias = Some(KmsAlias { name: owner().kms_alias(), target_key_id: Some("someone-else".into()) });
    assert!(
        diff(&plan, &account.observed, &Previous::default()).conflict.unwrap().to_string().contains("did not create")
    );
}

#[test]
fn waiting_states_keep_the_stack_from_ready() {
    let plan = public_private();
    let mut account = Account::default();
    account.converge(&plan);
    account.observed.nat_gateways[0].state = NatGatewayState::Pending;
    let d = diff(&plan, &account.observed, &Previous::default());
    assert!(d.changes.is_empty());
    assert!(d.waiting[0].contains("pending"));
    account.observed.nat_gateways[0].state = NatGatewayState::Deleting;
    assert_eq!(
        teardown(&account.observed, "a", &Kept::default()),
        Teardown::Step(Change {
            what: format!("deleting the VPC Link {}", account.observed.vpc_links[0].id),
            component: VPCLINK.into(),
            action: Action::Delete(Deletion::VpcLink(account.observed.vpc_links[0].id.clone())),
        })
    );
    account.observed.vpc_links.clear();
    assert!(matches!(teardown(&account.observed, "a", &Kept::default()), Teardown::Waiting(w) if w.contains("NAT")));
}

#[test]
fn only_the_owner_s_resources_are_observed() {
    let mut snapshot = Snapshot::default();
    let tagged = |uid: &str| Tags::from([(OWNER_UID_TAG.to_string(), uid.to_string())]);
    snapshot.vpcs = std::sync::Arc::new(vec![
        Vpc { id: "vpc-1".into(), cidr: String::new(), tags: tagged("uid-1"), dns_support: None, dns_hostnames: None }
            .into(),
        Vpc { id: "vpc-2".into(), cidr: String::new(), tags: tagged("uid-2"), dns_support: None, dns_hostnames: None }
            .into(),
    ]);
    snapshot.kms_aliases =
        std::sync::Arc::new(vec![KmsAlias { name: "alias/tinystacks/team-a/web".into(), target_key_id: None }.into()]);
    let o = Observed::of(&snapshot, "uid-1", "alias/tinystacks/team-a/web");
    assert_eq!(o.vpcs.len(), 1);
    assert_eq!(o.vpcs[0].id, "vpc-1");
    assert!(o.alias.is_some());
}

/// Counts of what a converged account holds, per kind, for comparing two runs.
fn counts(o: &Observed) -> [usize; 10] {
    let live_nats = o.nat_gateways.iter().filter(|n| !n.state.is_gone()).count();
    let live_keys = o.kms_keys.iter().filter(|k| !k.is_pending_deletion()).count();
    [
        o.vpcs.len(),
        o.subnets.len(),
        o.route_tables.len(),
        o.internet_gateways.len(),
        o.addresses.len(),
        live_nats,
        o.security_groups.len(),
        o.vpc_endpoints.len(),
        o.vpc_links.len(),
        live_keys,
    ]
}

#[test]
fn creates_repeated_after_a_lost_answer_converge_to_one_of_each() {
    for plan in [public_private(), private_isolated()] {
        let mut clean = Account::default();
        clean.converge(&plan);
        // Every create that AWS does not make idempotent by name or token is made twice, as when
        // the answer is lost and the SDK sends the request again.
        let mut account = Account::default();
        for _ in 0..300 {
            let d = diff(&plan, &account.observed, &Previous::default());
            let Some(first) = d.changes.first() else { break };
            let action = first.action.clone();
            account.apply(&action);
            if matches!(
                action,
                Action::CreateVpc { .. }
                    | Action::CreateRouteTable { .. }
                    | Action::CreateInternetGateway { .. }
                    | Action::CreateVpcEndpoint(_)
                    | Action::CreateKey { .. }
            ) {
                account.apply(&action);
            }
        }
        account.converge(&plan);
        assert_eq!(counts(&account.observed), counts(&clean.observed), "{:?}", plan.pattern);
        let o = &account.observed;
        for s in &o.subnets {
            let tables =
                o.route_tables.iter().filter(|t| t.associations.iter().any(|a| a.subnet_id.as_ref() == Some(&s.id)));
            assert_eq!(tables.count(), 1, "{} is associated once", s.id);
        }
        account.tear_down(&owner().kms_alias());
        assert!(account.observed.is_empty());
    }
}

#[test]
fn a_surplus_table_with_the_lower_id_takes_over_and_the_other_is_disassociated_then_deleted() {
    let plan = public_private();
    let mut account = Account::default();
    account.converge(&plan);
    let private = account.observed.route_tables.iter().find(|t| component(&t.tags) == Some("rtb/private/0")).unwrap();
    let (old_id, subnets) = (private.id.clone(), private.associations.len());
    assert!(subnets > 0);
    let mut twin = private.clone();
    twin.id = "rtb-0000".into();
    twin.associations.clear();
    twin.routes.retain(|r| r.target == RouteTarget::Local);
    account.observed.route_tables.push(twin);

    let d = diff(&plan, &account.observed, &Previous::default());
    assert!(
        !d.changes.iter().any(|c| c.action == Action::Delete(Deletion::RouteTable(old_id.clone())))
            && d.changes.iter().any(|c| matches!(c.action, Action::Delete(Deletion::Disassociate(_)))),
        "the associated surplus is disassociated before it is deleted: {:?}",
        d.changes
    );
    account.converge(&plan);
    let tables: Vec<&RouteTable> =
        account.observed.route_tables.iter().filter(|t| component(&t.tags) == Some("rtb/private/0")).collect();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].id, "rtb-0000");
    assert_eq!(tables[0].associations.len(), subnets);
    assert!(tables[0].routes.iter().any(|r| r.destination == DEFAULT_ROUTE));
    assert_eq!(account.observed.route_tables.len(), 3);
}

#[test]
fn only_subnets_and_one_tables_associations_are_made_together() {
    let subnet = |cidr: &str| Action::CreateSubnet {
        vpc_id: "vpc-1".into(),
        cidr: cidr.into(),
        zone: "us-east-1a".into(),
        tags: Tags::new(),
    };
    let associate = |table: &str, subnet: &str| Action::AssociateRouteTable {
        route_table_id: table.into(),
        subnet_id: subnet.into(),
    };
    assert!(independent(&subnet("10.0.0.0/19"), &subnet("10.0.32.0/19")));
    assert!(independent(&associate("rtb-1", "subnet-1"), &associate("rtb-1", "subnet-2")));
    assert!(!independent(&associate("rtb-1", "subnet-1"), &associate("rtb-2", "subnet-2")));
    assert!(!independent(&subnet("10.0.0.0/19"), &associate("rtb-1", "subnet-1")));
    let vpc = Action::CreateVpc { cidr: "10.0.0.0/16".into(), tags: Tags::new() };
    assert!(!independent(&vpc, &vpc));
}

fn vpc(id: &str, tags: &[(&str, &str)]) -> Arc<Vpc> {
    Arc::new(Vpc {
        id: id.into(),
        cidr: "10.20.0.0/16".into(),
        tags: tags.iter().copied().collect(),
        dns_support: Some(true),
        dns_hostnames: Some(true),
    })
}

#[test]
fn a_resource_with_this_stacks_owner_tag_and_another_uid_is_a_conflict_and_says_what_to_do() {
    let owner = owner();
    let theirs = [(OWNER_TAG, "Stack/team-a/web"), (OWNER_UID_TAG, "uid-0"), (COMPONENT_TAG, "vpc")];
    let snapshot = Snapshot { vpcs: Arc::new(vec![vpc("vpc-old", &theirs)]), ..Default::default() };

    // Not named in status: an earlier Stack of this name (Retain, created again), or an edit.
    let found = foreign(&snapshot, &owner, &StackStatus::default());
    assert_eq!(found, vec![Foreign { what: "VPC", id: "vpc-old".into(), uid: "uid-0".into(), in_status: false }]);
    let error = found[0].conflict(&owner);
    assert_eq!((error.reason(), error.kind()), ("OwnershipConflict", crate::error::ErrorKind::External));
    let message = error.to_string();
    for part in ["vpc-old", "uid-0", "uid-1", "Retain", "not supported yet", "delete"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }

    // Named in status: this Stack made it, and the tag was changed.
    let status = StackStatus { vpc_id: Some("vpc-old".into()), ..Default::default() };
    let found = foreign(&snapshot, &owner, &status);
    assert!(found[0].in_status);
    let message = found[0].conflict(&owner).to_string();
    assert!(message.contains("set the tag back") && message.contains("Value=uid-1"), "{message}");

    // Named in status, with every ownership tag changed: still this Stack's.
    let renamed = Snapshot { vpcs: Arc::new(vec![vpc("vpc-old", &[(OWNER_UID_TAG, "other")])]), ..Default::default() };
    assert_eq!(foreign(&renamed, &owner, &status).len(), 1);
}

#[test]
fn own_resources_other_stacks_and_resources_on_their_way_out_are_no_conflict() {
    let owner = owner();
    let mine = [(OWNER_TAG, "Stack/team-a/web"), (OWNER_UID_TAG, "uid-1"), (COMPONENT_TAG, "vpc")];
    let other_name = [(OWNER_TAG, "Stack/team-a/api"), (OWNER_UID_TAG, "uid-9"), (COMPONENT_TAG, "vpc")];
    let other_ns = [(OWNER_TAG, "Stack/team-b/web"), (OWNER_UID_TAG, "uid-8"), (COMPONENT_TAG, "vpc")];
    let key = |state: KeyState| {
        Arc::new(KmsKey {
            key_id: "k-old".into(),
            arn: "arn:aws:kms:us-east-1:1:key/k-old".into(),
            tags: [(OWNER_TAG, "Stack/team-a/web"), (OWNER_UID_TAG, "uid-0"), (COMPONENT_TAG, KMS)].into(),
            state: Some(state),
        })
    };
    let snapshot = Snapshot {
        vpcs: Arc::new(vec![vpc("vpc-1", &mine), vpc("vpc-2", &other_name), vpc("vpc-3", &other_ns)]),
        // An earlier Stack of this name deleted with `Delete`: its key waits out its window.
        kms_keys: Arc::new(vec![key(KeyState::PendingDeletion)]),
        ..Default::default()
    };
    assert_eq!(foreign(&snapshot, &owner, &StackStatus::default()), vec![]);
    let retained = Snapshot { kms_keys: Arc::new(vec![key(KeyState::Enabled)]), ..Default::default() };
    assert_eq!(foreign(&retained, &owner, &StackStatus::default()).len(), 1, "a retained key is a conflict");
}

#[test]
fn teardown_keeps_what_a_retained_instance_and_a_snapshot_need_and_deletes_the_rest() {
    let plan = public_private();
    let mut account = Account::default();
    account.converge(&plan);
    let o = &account.observed;
    let key = o.kms_keys[0].clone();
    let vpc = o.vpcs[0].id.clone();
    let private: Vec<String> = o
        .subnets
        .iter()
        .filter(|s| component(&s.tags).is_some_and(|c| c.starts_with("subnet/private/")))
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(private.len(), 2);
    let app = o.security_groups.iter().find(|g| component(&g.tags) == Some(SG_APP)).unwrap().id.clone();
    let retained = Dependant {
        what: "DB instance kept".into(),
        kms_key: Some(key.arn.clone()),
        vpc_id: Some(vpc.clone()),
        subnet_ids: private.clone(),
        admitted_groups: vec![app.clone(), "sg-of-someone-else".into()],
    };
    // A final snapshot names the key by ID; a secret of another key needs nothing of the stack.
    let snapshot =
        Dependant { what: "DB snapshot final".into(), kms_key: Some(key.key_id.clone()), ..Default::default() };
    let other = Dependant {
        what: "Secrets Manager secret x".into(),
        kms_key: Some("arn:aws:kms:r:1:key/other".into()),
        ..Default::default()
    };
    let kept = kept(&account.observed, &[retained, snapshot.clone(), other]);
    let mut ids: Vec<&str> = kept.0.keys().map(String::as_str).collect();
    ids.sort_unstable();
    let mut wanted: Vec<&str> = vec![key.key_id.as_str(), vpc.as_str(), app.as_str()];
    wanted.extend(private.iter().map(String::as_str));
    wanted.sort_unstable();
    assert_eq!(ids, wanted);
    assert_eq!(kept.0[&key.key_id].1, ["DB instance kept", "DB snapshot final"]);
    assert!(kept.summary().contains("KMS key") && kept.summary().contains("DB snapshot final"));

    account.tear_down_keeping(&owner().kms_alias(), &kept);
    let o = &account.observed;
    assert_eq!(o.vpcs.iter().map(|v| v.id.clone()).collect::<Vec<_>>(), [vpc]);
    assert_eq!(o.subnets.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), private);
    assert_eq!(o.security_groups.iter().map(|g| g.id.clone()).collect::<Vec<_>>(), [app]);
    assert_eq!(o.kms_keys[0].state, key.state, "the key is not scheduled for deletion");
    assert!(o.route_tables.is_empty() && o.internet_gateways.is_empty() && o.addresses.is_empty());
    assert!(o.nat_gateways.iter().all(|n| n.state.is_gone()) && o.vpc_links.is_empty() && o.alias.is_none());

    // Only a snapshot: the key stays, the whole network goes.
    let mut account = Account::default();
    account.converge(&plan);
    let kept = super::kept(&account.observed, &[snapshot]);
    account.tear_down_keeping(&owner().kms_alias(), &kept);
    let o = &account.observed;
    assert!(o.vpcs.is_empty() && o.subnets.is_empty() && o.security_groups.is_empty());
    assert_eq!(o.kms_keys[0].state, key.state);
}

/// The changes the simulated account is taken through, one diff's first change at a time, as
/// `<action> <resource> <name>`.
fn converged_keys(account: &mut Account, plan: &NetworkPlan) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(first) = diff(plan, &account.observed, &Previous::default()).changes.first().cloned() {
        keys.push(crate::runtime::plan::key(&planned_change(&first)));
        account.apply(&first.action);
        assert!(keys.len() < 200, "no convergence");
    }
    keys
}

fn plan_now(plan: &NetworkPlan, observed: &Observed) -> Vec<crate::api::PlannedChange> {
    let previous = Previous::default();
    planned(plan, observed, &previous, &diff(plan, observed, &previous))
}

#[test]
fn a_new_stack_s_plan_lists_every_change_convergence_then_makes_in_that_order() {
    for plan in [public_private(), private_isolated()] {
        let changes = plan_now(&plan, &Observed::default());
        let keys: Vec<String> = changes.iter().map(crate::runtime::plan::key).collect();
        let mut account = Account::default();
        assert_eq!(keys, converged_keys(&mut account, &plan), "the plan is what convergence does, in order");
        assert_eq!(keys[0], "Create ec2:Vpc vpc");
        // Nothing exists yet: no change names an ID, and no placeholder shows.
        assert!(changes.iter().all(|c| c.id.is_none()), "{changes:?}");
        assert!(changes.iter().all(|c| !c.detail.contains("new:") && !c.detail.is_empty()), "{changes:?}");
        let creates = |resource: &str| changes.iter().filter(|c| c.resource == resource).count();
        assert_eq!(creates("ec2:Subnet"), if plan.pattern == NetworkPattern::PublicPrivate { 5 } else { 6 });
        assert_eq!(creates("kms:Key") + creates("kms:Alias"), 2);
        assert!(plan_now(&plan, &account.observed).is_empty(), "converged: nothing planned");
    }
    let pp = plan_now(&public_private(), &Observed::default());
    let routes: Vec<&str> = pp.iter().filter(|c| c.resource == "ec2:Route").map(|c| c.name.as_str()).collect();
    assert_eq!(routes, ["rtb/public", "rtb/private/0", "rtb/private/1"]);
    let nat = pp.iter().position(|c| c.resource == "ec2:NatGateway").unwrap();
    let nat_route = pp.iter().position(|c| c.resource == "ec2:Route" && c.name == "rtb/private/0").unwrap();
    assert!(nat < nat_route, "the NAT gateway before the route to it");
}

#[test]
fn drift_is_planned_with_the_ids_of_what_exists_and_what_differs() {
    let plan = public_private();
    let mut account = Account::default();
    account.converge(&plan);
    let table = account.observed.route_tables.iter().find(|t| component(&t.tags) == Some("rtb/public")).unwrap();
    let table_id = table.id.clone();
    account
        .observed
        .route_tables
        .iter_mut()
        .find(|t| t.id == table_id)
        .unwrap()
        .routes
        .retain(|r| r.destination != DEFAULT_ROUTE);
    let changes = plan_now(&plan, &account.observed);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let c = &changes[0];
    assert_eq!((c.action, c.resource.as_str(), c.name.as_str()), (ChangeAction::Create, "ec2:Route", "rtb/public"));
    assert_eq!(c.id.as_deref(), Some(table_id.as_str()));
    assert!(c.detail.contains("0.0.0.0/0") && c.detail.contains("missing"), "{}", c.detail);

    // A deleted subnet: made again, then associated with its (existing) table; the new subnet
    // shows as "new" in the association's detail.
    let subnet = account.observed.subnets.iter().position(|s| component(&s.tags) == Some("subnet/private/1")).unwrap();
    let old = account.observed.subnets.remove(subnet);
    for t in &mut account.observed.route_tables {
        t.associations.retain(|a| a.subnet_id.as_ref() != Some(&old.id));
    }
    let changes = plan_now(&plan, &account.observed);
    let keys: Vec<String> = changes.iter().map(crate::runtime::plan::key).collect();
    assert_eq!(
        keys,
        [
            "Create ec2:Subnet subnet/private/1",
            "Create ec2:Route rtb/public",
            "Create ec2:SubnetRouteTableAssociation rtb/private/1"
        ]
    );
    let association = changes.iter().find(|c| c.resource == "ec2:SubnetRouteTableAssociation").unwrap();
    assert_eq!(association.name, "rtb/private/1");
    assert!(association.id.as_deref().is_some_and(|id| id.starts_with("rtb-")), "{association:?}");
    assert!(association.detail.contains("subnet/private/1 (new)"), "{}", association.detail);
    assert_eq!(keys, converged_keys(&mut account, &plan));
}

#[test]
fn a_spec_edit_is_planned_before_it_is_made() {
    let plan = public_private();
    let mut account = Account::default();
    account.converge(&plan);
    let per_az = plan_of(
        serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"pattern": "PublicPrivate", "cidr": "10.20.0.0/16", "natGateways": "PerAz"}, "tags": {"team": "a"}}),
    );
    let changes = plan_now(&per_az, &account.observed);
    let keys: Vec<String> = changes.iter().map(crate::runtime::plan::key).collect();
    assert_eq!(
        keys,
        ["Create ec2:ElasticIp eip/nat/1", "Create ec2:NatGateway nat/1", "Update ec2:Route rtb/private/1"],
        "{changes:?}"
    );
    assert!(changes[2].id.is_some() && changes[2].detail.contains("new"), "{:?}", changes[2]);
    assert_eq!(keys, converged_keys(&mut account, &per_az));
}

/// What the Stack's reconcile does under `changePolicy: Manual`: the whole plan is held until
/// approved; then every batch the reconcile makes (the diff's first change, with the independent
/// ones beside it) passes the gate against the approved plan, to the end; a change the approval
/// did not name (a rule added by hand meanwhile) is held.
#[test]
fn an_approved_plan_is_applied_batch_by_batch_to_the_end_and_a_change_outside_it_is_held() {
    use crate::api::{ChangePolicy, Management};
    use crate::runtime::plan::{Gate, Governance, gate};
    fn manual(approved: Option<&str>) -> Governance<'_> {
        Governance { change_policy: ChangePolicy::Manual, approved_plan: approved, management: Management::Full }
    }
    let plan = public_private();
    let mut account = Account::default();
    let (held, first) = gate(manual(None), Some(1), plan_now(&plan, &account.observed), None);
    assert!(matches!(first, Gate::Hold(_)), "{first:?}");
    let (approved, go) = gate(manual(Some(&held.id)), Some(2), plan_now(&plan, &account.observed), Some(&held));
    assert_eq!(go, Gate::Apply);
    let mut batches = 0;
    while let Some(first) = diff(&plan, &account.observed, &Previous::default()).changes.first().cloned() {
        let d = diff(&plan, &account.observed, &Previous::default());
        let n = d.changes.iter().take_while(|c| independent(&first.action, &c.action)).count().max(1);
        let batch: Vec<_> = d.changes[..n].iter().map(planned_change).collect();
        assert_eq!(gate(manual(Some(&held.id)), Some(2), batch, Some(&approved)).1, Gate::Apply, "{:?}", d.changes[0]);
        d.changes[..n].iter().for_each(|c| account.apply(&c.action));
        batches += 1;
    }
    assert!(batches > 10 && plan_now(&plan, &account.observed).is_empty(), "{batches}");

    let app = account.observed.security_groups.iter_mut().find(|g| component(&g.tags) == Some(SG_APP)).unwrap();
    app.ingress.insert(Rule {
        protocol: "tcp".into(),
        from: Some(22),
        to: Some(22),
        source: Source::Cidr("0.0.0.0/0".into()),
    });
    let outside: Vec<_> =
        diff(&plan, &account.observed, &Previous::default()).changes.iter().map(planned_change).collect();
    assert_eq!(crate::runtime::plan::key(&outside[0]), "Delete ec2:SecurityGroupIngress sg/app");
    assert!(matches!(gate(manual(Some(&held.id)), Some(2), outside, Some(&approved)).1, Gate::Hold(_)));
}

fn nat_instances(nat_gateways: &str) -> NetworkPlan {
    let mut plan = plan_of(serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {
        "cidr": "10.20.0.0/16", "natGateways": nat_gateways, "natType": "Instance"}}));
    plan.nat_image = Some("ami-0123".into());
    plan
}

/// Each private table's default route, in table order.
fn private_defaults(o: &Observed) -> Vec<Option<RouteTarget>> {
    let private = o.route_tables.iter().filter(|t| component(&t.tags).is_some_and(|c| c.starts_with("rtb/private/")));
    private.map(|t| t.routes.iter().find(|r| r.destination == DEFAULT_ROUTE).map(|r| r.target.clone())).collect()
}

fn live_instances(o: &Observed) -> Vec<&Instance> {
    o.instances.iter().filter(|i| !i.state.is_going()).collect()
}

#[test]
fn nat_instances_route_the_private_side_through_their_interfaces_and_tear_down() {
    for (layout, count) in [("Single", 1), ("PerAz", 2)] {
        let plan = nat_instances(layout);
        let mut account = Account::default();
        let reasons = account.converge(&plan);
        assert_eq!(reasons.iter().filter(|r| **r == "LaunchedNatInstance").count(), count);
        let o = &account.observed;
        let instances = live_instances(o);
        assert_eq!(instances.len(), count, "{layout}");
        assert!(o.nat_gateways.is_empty());
        let group = o.security_groups.iter().find(|g| component(&g.tags) == Some(SG_NAT)).unwrap();
        let private: BTreeSet<Source> = plan
            .subnets
            .iter()
            .filter(|s| s.tier == SubnetTier::Private)
            .map(|s| Source::Cidr(s.cidr.clone()))
            .collect();
        assert_eq!(group.ingress.iter().map(|r| r.source.clone()).collect::<BTreeSet<_>>(), private);
        assert!(group.ingress.iter().all(|r| r.protocol == "-1"));
        for (n, i) in plan.nat_gateways.iter().zip(&instances) {
            assert_eq!(i.source_dest_check, Some(false));
            assert_eq!(i.key_name, None);
            assert!(i.security_groups.contains(&group.id));
            let public = o.subnets.iter().find(|s| component(&s.tags) == Some(n.subnet.as_str())).unwrap();
            assert_eq!(i.subnet_id.as_ref(), Some(&public.id));
            let address = o.addresses.iter().find(|a| component(&a.tags) == Some(n.address.as_str())).unwrap();
            assert_eq!(address.network_interface_id, i.network_interface_id);
        }
        let eni = |k: usize| Some(RouteTarget::Interface(instances[k].network_interface_id.clone().unwrap()));
        let expected = if count == 1 { vec![eni(0), eni(0)] } else { vec![eni(0), eni(1)] };
        assert_eq!(private_defaults(o), expected);
        assert_eq!(status_of(&plan, o).nat_instance_ids.len(), count);

        account.tear_down(&owner().kms_alias());
        assert!(account.observed.is_empty(), "{:?}", account.observed);
    }
}

#[test]
fn a_nat_instance_terminated_or_stopped_by_hand_is_replaced_and_the_routes_follow() {
    let plan = nat_instances("Single");
    for (state, first) in
        [(InstanceStateName::Terminated, "LaunchedNatInstance"), (InstanceStateName::Stopped, "TerminatedNatInstance")]
    {
        let mut account = Account::default();
        account.converge(&plan);
        let old = live_instances(&account.observed)[0].id.clone();
        let mut view = account.view();
        change_instance(&mut view, &old, |i| i.state = state.clone());
        account.see(view);
        let d = diff(&plan, &account.observed, &Previous::default());
        assert_eq!(d.changes[0].action.reason(), first, "{:?}", d.changes);
        account.converge(&plan);
        let now = live_instances(&account.observed);
        assert_eq!(now.len(), 1);
        assert_ne!(now[0].id, old);
        let eni = now[0].network_interface_id.clone().map(RouteTarget::Interface);
        assert_eq!(private_defaults(&account.observed), vec![eni.clone(), eni]);
        let address = account.observed.addresses.iter().find(|a| a.network_interface_id.is_some()).unwrap();
        assert_eq!(address.network_interface_id, now[0].network_interface_id);
    }
}

#[test]
fn a_switch_of_nat_type_moves_the_routes_before_it_removes_the_other_type() {
    let gateway = plan_of(serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"cidr": "10.20.0.0/16"}}));
    let instance = nat_instances("Single");
    let mut account = Account::default();
    account.converge(&gateway);
    for (to, nat) in [(&instance, "nat-instance/0"), (&gateway, "nat/0")] {
        // Step by step: every private table keeps a default route throughout.
        for _ in 0..100 {
            let d = diff(to, &account.observed, &Previous::default());
            let Some(first) = d.changes.first() else { break };
            account.apply(&first.action);
            assert!(private_defaults(&account.observed).iter().all(Option::is_some), "after {first:?}");
        }
        let o = &account.observed;
        assert!(diff(to, o, &Previous::default()).changes.is_empty());
        let live_gateways = o.nat_gateways.iter().filter(|n| !n.state.is_going()).count();
        let addresses: Vec<&str> = o.addresses.iter().filter_map(|a| component(&a.tags)).collect();
        assert_eq!(addresses, vec![format!("eip/{nat}").as_str()]);
        if nat == "nat/0" {
            assert_eq!((live_gateways, live_instances(o).len()), (1, 0));
            assert!(!o.security_groups.iter().any(|g| component(&g.tags) == Some(SG_NAT)));
            assert!(private_defaults(o).iter().all(|t| matches!(t, Some(RouteTarget::Nat(_)))));
        } else {
            assert_eq!((live_gateways, live_instances(o).len()), (0, 1));
            assert!(private_defaults(o).iter().all(|t| matches!(t, Some(RouteTarget::Interface(_)))));
        }
    }
}

#[test]
fn nat_instances_without_an_image_yet_are_not_launched() {
    let mut plan = nat_instances("Single");
    plan.nat_image = None;
    let mut account = Account::default();
    account.converge(&plan);
    assert!(account.observed.instances.is_empty());
}
