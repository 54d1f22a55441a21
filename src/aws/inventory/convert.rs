//! The SDK's shapes turned into the inventory's (`types.rs`), for its lists and for the kinds' reads
//! and mutation responses.

use std::collections::{BTreeSet, HashMap};

use aws_sdk_ec2::types::IpPermission;

use super::types::*;
use crate::aws::tags::Tags;
use crate::error::Error;

/// The port an instance's endpoint has when RDS does not say (PostgreSQL's, the only engine).
const POSTGRES_PORT: i32 = 5432;

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
        tags: Tags::from_ec2(v.tags()),
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
        tags: Tags::from_ec2(s.tags()),
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
                _ => match (r.transit_gateway_id().or(r.vpc_peering_connection_id()), r.network_interface_id()) {
                    (None, Some(eni)) => RouteTarget::Interface(eni.into()),
                    (other, _) => RouteTarget::Other(other.or(r.instance_id()).unwrap_or("unknown").into()),
                },
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
        tags: Tags::from_ec2(t.tags()),
    })
}

pub fn instance_of(i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
    let primary = i.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0));
    Some(Instance {
        id: i.instance_id()?.into(),
        vpc_id: i.vpc_id().map(Into::into),
        subnet_id: i.subnet_id().map(Into::into),
        state: parse_state(i.state().and_then(|s| s.name()).map_or("", |n| n.as_str()), InstanceStateName::values()),
        instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
        image_id: i.image_id().map(Into::into),
        network_interface_id: primary
            .or(i.network_interfaces().first())
            .and_then(|n| n.network_interface_id())
            .map(Into::into),
        source_dest_check: i.source_dest_check(),
        key_name: i.key_name().filter(|k| !k.is_empty()).map(Into::into),
        // The instance's groups and its interfaces' (the same in EC2; some emulators fill only the
        // latter for instances launched with an interface).
        security_groups: i
            .security_groups()
            .iter()
            .chain(i.network_interfaces().iter().flat_map(|n| n.groups()))
            .filter_map(|g| g.group_id().map(Into::into))
            .collect(),
        tags: Tags::from_ec2(i.tags()),
    })
}

pub fn internet_gateway_of(g: &aws_sdk_ec2::types::InternetGateway) -> Option<InternetGateway> {
    Some(InternetGateway {
        id: g.internet_gateway_id()?.into(),
        attached_vpcs: g.attachments().iter().filter_map(|a| a.vpc_id().map(Into::into)).collect(),
        tags: Tags::from_ec2(g.tags()),
    })
}

pub fn nat_gateway_of(n: &aws_sdk_ec2::types::NatGateway) -> Option<NatGateway> {
    Some(NatGateway {
        id: n.nat_gateway_id()?.into(),
        vpc_id: n.vpc_id().unwrap_or_default().into(),
        subnet_id: n.subnet_id().unwrap_or_default().into(),
        state: parse_state(n.state().map_or("", |s| s.as_str()), NatGatewayState::values()),
        allocation_ids: n.nat_gateway_addresses().iter().filter_map(|a| a.allocation_id().map(Into::into)).collect(),
        tags: Tags::from_ec2(n.tags()),
    })
}

pub fn security_group_of(g: &aws_sdk_ec2::types::SecurityGroup) -> Option<SecurityGroup> {
    Some(SecurityGroup {
        id: g.group_id()?.into(),
        vpc_id: g.vpc_id().unwrap_or_default().into(),
        name: g.group_name().unwrap_or_default().into(),
        ingress: rules_of(g.ip_permissions()),
        egress: rules_of(g.ip_permissions_egress()),
        tags: Tags::from_ec2(g.tags()),
    })
}

pub fn vpc_endpoint_of(e: &aws_sdk_ec2::types::VpcEndpoint) -> Option<VpcEndpoint> {
    Some(VpcEndpoint {
        id: e.vpc_endpoint_id()?.into(),
        vpc_id: e.vpc_id().unwrap_or_default().into(),
        service: e.service_name().unwrap_or_default().into(),
        gateway: e.vpc_endpoint_type().is_some_and(|t| t.as_str().eq_ignore_ascii_case("gateway")),
        state: parse_state(e.state().map_or("", |s| s.as_str()), EndpointState::values()),
        subnet_ids: e.subnet_ids().iter().cloned().collect(),
        route_table_ids: e.route_table_ids().iter().cloned().collect(),
        group_ids: e.groups().iter().filter_map(|g| g.group_id().map(Into::into)).collect(),
        tags: Tags::from_ec2(e.tags()),
    })
}

pub fn vpc_link_of(l: &aws_sdk_apigatewayv2::types::VpcLink) -> Option<VpcLink> {
    Some(VpcLink {
        id: l.vpc_link_id()?.into(),
        name: l.name().unwrap_or_default().into(),
        subnet_ids: l.subnet_ids().iter().cloned().collect(),
        group_ids: l.security_group_ids().iter().cloned().collect(),
        status: parse_state(l.vpc_link_status().map_or("", |s| s.as_str()), VpcLinkStatus::values()),
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
    tags.iter().filter_map(|t| Some((t.key()?, t.value().unwrap_or_default()))).collect()
}

/// A DB instance as RDS reports it.
pub fn observed_instance(i: &aws_sdk_rds::types::DbInstance) -> ObservedInstance {
    let pending = i.pending_modified_values();
    ObservedInstance {
        identifier: i.db_instance_identifier().unwrap_or_default().to_string(),
        arn: i.db_instance_arn().map(str::to_string),
        status: i.db_instance_status().unwrap_or_default().into(),
        endpoint: i.endpoint().and_then(|e| Some((e.address()?.to_string(), e.port().unwrap_or(POSTGRES_PORT)))),
        publicly_accessible: i.publicly_accessible().unwrap_or(false),
        storage_encrypted: i.storage_encrypted().unwrap_or(false),
        kms_key_id: i.kms_key_id().map(str::to_string),
        security_groups: i
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
            .collect(),
        subnet_group: i.db_subnet_group().and_then(|g| g.db_subnet_group_name()).map(str::to_string),
        deletion_protection: i.deletion_protection().unwrap_or(false),
        class: i.db_instance_class().unwrap_or_default().to_string(),
        storage_gib: i.allocated_storage().unwrap_or_default(),
        multi_az: i.multi_az().unwrap_or(false),
        backup_days: i.backup_retention_period().unwrap_or_default(),
        engine_version: i.engine_version().unwrap_or_default().to_string(),
        pending_class: pending.and_then(|p| p.db_instance_class()).map(str::to_string),
        pending_storage_gib: pending.and_then(|p| p.allocated_storage()),
        pending_multi_az: pending.and_then(|p| p.multi_az()),
        pending_backup_days: pending.and_then(|p| p.backup_retention_period()),
        pending_engine_version: pending.and_then(|p| p.engine_version()).map(str::to_string),
        tags: i.tag_list().iter().filter_map(|t| Some((t.key()?, t.value().unwrap_or_default()))).collect(),
    }
}

/// Errors from a missing response field, for the few values the code cannot go on without.
pub fn missing(action: &str, what: &str) -> Error {
    Error::AwsUnavailable { action: action.into(), detail: format!("the response held no {what}") }
}
