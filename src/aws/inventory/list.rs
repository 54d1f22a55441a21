//! The listing: one bulk, tag-filtered (where the API allows), paginated call per resource type,
//! keeping only the operator's resources; and the few reads of one resource the lists lack. Each
//! is one read through `Calls` (a list's pages together), on the service the list calls.

use std::collections::HashMap;

use aws_sdk_apigatewayv2::error::SdkError;
use aws_sdk_apigatewayv2::operation::get_vpc_links::GetVpcLinksError;
use aws_sdk_ec2::types::Filter;

use super::Clients;
use super::convert::*;
use super::state::Details;
use super::types::*;
use crate::aws::limiter::Service;
use crate::aws::ownership::{OWNER_UID_TAG, carries_owner};
use crate::aws::tags::Tags;
use crate::error::Result;

/// Only resources that carry the owner-UID tag: the operator's, and not other tools'.
fn owned() -> Filter {
    Filter::builder().name("tag-key").values(OWNER_UID_TAG).build()
}

/// The operator's resources among those listed (EC2 applies the tag filter already; moto and
/// eventual consistency may not).
fn operators<T>(listed: impl Iterator<Item = T>, tags: impl Fn(&T) -> &Tags) -> Vec<T> {
    listed.filter(|r| carries_owner(tags(r))).collect()
}

pub(super) async fn vpcs(c: &Clients<'_>) -> Result<Vec<Vpc>> {
    let list = || c.ec2.describe_vpcs().filters(owned()).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Ec2, "ec2:DescribeVpcs", list).await?;
    Ok(operators(pages.iter().flat_map(|p| p.vpcs()).filter_map(vpc_of), |r| &r.tags))
}

pub(super) async fn subnets(c: &Clients<'_>) -> Result<Vec<Subnet>> {
    let list = || c.ec2.describe_subnets().filters(owned()).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Ec2, "ec2:DescribeSubnets", list).await?;
    Ok(operators(pages.iter().flat_map(|p| p.subnets()).filter_map(subnet_of), |r| &r.tags))
}

pub(super) async fn route_tables(c: &Clients<'_>) -> Result<Vec<RouteTable>> {
    let list = || c.ec2.describe_route_tables().filters(owned()).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Ec2, "ec2:DescribeRouteTables", list).await?;
    Ok(operators(pages.iter().flat_map(|p| p.route_tables()).filter_map(route_table_of), |r| &r.tags))
}

pub(super) async fn internet_gateways(c: &Clients<'_>) -> Result<Vec<InternetGateway>> {
    let list = || c.ec2.describe_internet_gateways().filters(owned()).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Ec2, "ec2:DescribeInternetGateways", list).await?;
    Ok(operators(pages.iter().flat_map(|p| p.internet_gateways()).filter_map(internet_gateway_of), |r| &r.tags))
}

pub(super) async fn nat_gateways(c: &Clients<'_>) -> Result<Vec<NatGateway>> {
    let list = || c.ec2.describe_nat_gateways().filter(owned()).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Ec2, "ec2:DescribeNatGateways", list).await?;
    Ok(operators(pages.iter().flat_map(|p| p.nat_gateways()).filter_map(nat_gateway_of), |r| &r.tags))
}

pub(super) async fn security_groups(c: &Clients<'_>) -> Result<Vec<SecurityGroup>> {
    let list = || c.ec2.describe_security_groups().filters(owned()).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Ec2, "ec2:DescribeSecurityGroups", list).await?;
    Ok(operators(pages.iter().flat_map(|p| p.security_groups()).filter_map(security_group_of), |r| &r.tags))
}

pub(super) async fn vpc_endpoints(c: &Clients<'_>) -> Result<Vec<VpcEndpoint>> {
    let list = || c.ec2.describe_vpc_endpoints().filters(owned()).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Ec2, "ec2:DescribeVpcEndpoints", list).await?;
    Ok(operators(pages.iter().flat_map(|p| p.vpc_endpoints()).filter_map(vpc_endpoint_of), |r| &r.tags))
}

pub(super) async fn instances(c: &Clients<'_>) -> Result<Vec<Instance>> {
    let list = || c.ec2.describe_instances().filters(owned()).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Ec2, "ec2:DescribeInstances", list).await?;
    let listed = pages.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()).filter_map(instance_of);
    Ok(operators(listed, |r| &r.tags))
}

pub(super) async fn addresses(c: &Clients<'_>) -> Result<Vec<Address>> {
    // DescribeAddresses has no pages: an account holds few Elastic IPs.
    let list = || c.ec2.describe_addresses().filters(owned()).send();
    let out = c.calls.read(Service::Ec2, "ec2:DescribeAddresses", list).await?;
    Ok(out
        .addresses()
        .iter()
        .filter_map(|a| {
            Some(Address {
                allocation_id: a.allocation_id()?.into(),
                association_id: a.association_id().map(Into::into),
                network_interface_id: a.network_interface_id().map(Into::into),
                tags: Tags::from_ec2(a.tags()),
            })
        })
        .filter(|a| carries_owner(&a.tags))
        .collect())
}

pub(super) async fn vpc_links(c: &Clients<'_>) -> Result<Vec<VpcLink>> {
    // GetVpcLinks has no tag filter: the account's links are listed and filtered here. Its pages
    // are one read for the limiter, as a paginator's are.
    let list = || async {
        let mut links = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = c.apigateway.get_vpc_links().max_results("100").set_next_token(token.clone()).send().await?;
            links.extend(out.items().iter().filter_map(vpc_link_of).filter(|l| carries_owner(&l.tags)));
            token = out.next_token().filter(|t| !t.is_empty()).map(Into::into);
            if token.is_none() {
                return Ok::<_, SdkError<GetVpcLinksError>>(links);
            }
        }
    };
    c.calls.read(Service::ApiGateway, "apigateway:GET", list).await
}

pub(super) async fn kms_keys(c: &Clients<'_>) -> Result<Vec<KmsKey>> {
    // KMS lists keys without tags; the tagging API lists the tagged ones, with their tags.
    let filter = aws_sdk_resourcegroupstagging::types::TagFilter::builder().key(OWNER_UID_TAG).build();
    let list = || {
        c.tagging
            .get_resources()
            .resource_type_filters("kms:key")
            .tag_filters(filter)
            // The largest page AWS gives (its default is 50).
            .resources_per_page(100)
            .into_paginator()
            .send()
            .try_collect()
    };
    let pages: Vec<_> = c.calls.read(Service::Tagging, "tag:GetResources", list).await?;
    Ok(pages
        .iter()
        .flat_map(|p| p.resource_tag_mapping_list())
        .filter_map(|m| {
            let arn = m.resource_arn()?;
            let key_id = arn.rsplit_once(":key/")?.1;
            Some(KmsKey {
                key_id: key_id.into(),
                arn: arn.into(),
                state: None,
                tags: m.tags().iter().map(|t| (t.key(), t.value())).collect(),
            })
        })
        .collect())
}

pub(super) async fn kms_aliases(c: &Clients<'_>) -> Result<Vec<KmsAlias>> {
    let list = || c.kms.list_aliases().limit(100).into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Kms, "kms:ListAliases", list).await?;
    Ok(pages
        .iter()
        .flat_map(|p| p.aliases())
        .filter_map(|a| {
            let name = a.alias_name()?;
            // AWS's own aliases (alias/aws/...) are never the operator's.
            (!name.starts_with("alias/aws/"))
                .then(|| KmsAlias { name: name.into(), target_key_id: a.target_key_id().map(Into::into) })
        })
        .collect())
}

pub(super) async fn db_instances(c: &Clients<'_>) -> Result<Vec<ObservedInstance>> {
    // RDS filters by neither tag nor owner: the account's instances, kept if ours.
    let list = || c.rds.describe_db_instances().into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Rds, "rds:DescribeDBInstances", list).await?;
    Ok(pages.iter().flat_map(|p| p.db_instances()).map(observed_instance).filter(|i| carries_owner(&i.tags)).collect())
}

pub(super) async fn db_subnet_groups(c: &Clients<'_>) -> Result<Vec<DbSubnetGroup>> {
    let list = || c.rds.describe_db_subnet_groups().into_paginator().send().try_collect();
    let pages: Vec<_> = c.calls.read(Service::Rds, "rds:DescribeDBSubnetGroups", list).await?;
    Ok(pages.iter().flat_map(|p| p.db_subnet_groups()).filter_map(db_subnet_group_of).collect())
}

pub(super) async fn secrets(c: &Clients<'_>) -> Result<Vec<SecretInfo>> {
    let filter = aws_sdk_secretsmanager::types::Filter::builder()
        .key(aws_sdk_secretsmanager::types::FilterNameStringType::TagKey)
        .values(OWNER_UID_TAG)
        .build();
    let list = || {
        c.secrets
            .list_secrets()
            .filters(filter)
            .include_planned_deletion(true)
            // The largest pages the APIs give, here and above: fewer calls per resync.
            .max_results(100)
            .into_paginator()
            .send()
            .try_collect()
    };
    let pages: Vec<_> = c.calls.read(Service::SecretsManager, "secretsmanager:ListSecrets", list).await?;
    Ok(pages
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
        .filter(|s| carries_owner(&s.tags))
        .collect())
}

pub(super) async fn list_zones(clients: &Clients<'_>) -> Result<Vec<String>> {
    let list = || {
        clients
            .ec2
            .describe_availability_zones()
            .filters(Filter::builder().name("zone-type").values("availability-zone").build())
            .filters(Filter::builder().name("state").values("available").build())
            .send()
    };
    let out = clients.calls.read(Service::Ec2, "ec2:DescribeAvailabilityZones", list).await?;
    let mut zones: Vec<String> =
        out.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_string)).collect();
    zones.sort();
    Ok(zones)
}

/// Asks for what the bulk lists lack (VPC DNS attributes, key states) of the resources seen for
/// the first time; later the operator's own changes keep them current. Made without the state's
/// lock: the refresh that asks holds only the scope's refresh lock.
pub(super) async fn details(clients: &Clients<'_>, vpcs: &[String], keys: &[String]) -> Result<Details> {
    use aws_sdk_ec2::types::VpcAttributeName;
    let mut details = Details::default();
    for vpc_id in vpcs {
        let support = vpc_attribute(clients, vpc_id, VpcAttributeName::EnableDnsSupport);
        let hostnames = vpc_attribute(clients, vpc_id, VpcAttributeName::EnableDnsHostnames);
        let (support, hostnames) = futures::try_join!(support, hostnames)?;
        details.vpc_dns.insert(vpc_id.clone(), (support, hostnames));
    }
    let mut key_states = HashMap::new();
    for key_id in keys {
        let read = || clients.kms.describe_key().key_id(key_id).send();
        let described = clients.calls.read(Service::Kms, "kms:DescribeKey", read).await?;
        let state = described.key_metadata().and_then(|m| m.key_state()).cloned();
        key_states.insert(key_id.clone(), state);
    }
    details.key_states = key_states;
    Ok(details)
}

async fn vpc_attribute(
    clients: &Clients<'_>,
    vpc_id: &str,
    attribute: aws_sdk_ec2::types::VpcAttributeName,
) -> Result<bool> {
    let read = || clients.ec2.describe_vpc_attribute().vpc_id(vpc_id).attribute(attribute.clone()).send();
    let out = clients.calls.read(Service::Ec2, "ec2:DescribeVpcAttribute", read).await?;
    let value = match attribute {
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames => out.enable_dns_hostnames(),
        _ => out.enable_dns_support(),
    };
    Ok(value.and_then(|v| v.value()).unwrap_or(false))
}
