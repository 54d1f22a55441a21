//! The Stack's AWS calls: each plan action as one EC2, API Gateway v2 or KMS mutation, made
//! through the rate limiter and written back into the shared inventory. Calls that find their work
//! already done (a retry after a crash, a resource someone else removed) count as done.

use aws_sdk_ec2::types::{AttributeBooleanValue, DomainType, InstanceType, ResourceType, Tag, VpcEndpointType};

use super::plan::{
    Action, Deletion, Dependant, EndpointChange, EndpointSpec, KEY_DELETION_WINDOW_DAYS, NatInstanceSpec, Tagged,
};
use crate::api::AwsAccountLink;
use crate::aws::account::Account;
use crate::aws::call::{NOT_FOUND, is_not_found};
use crate::aws::image;
use crate::aws::inventory::{
    self, Address, Created, InternetGateway, KeyState, Kind, KmsKey, Recorded, RouteTarget, Rule, Tags, VpcEndpoint,
    VpcLink, VpcLinkStatus, missing, parse_state,
};
use crate::aws::limiter::Service;
use crate::aws::tags::{ec2_tag_list as ec2_tags, ec2_tags as spec};
use crate::error::{Error, Result};
use crate::runtime::context::Context;

/// What a NAT instance runs at boot (Amazon Linux 2023): IPv4 forwarding on, and everything that
/// leaves through its interface masqueraded behind its address. `iptables-services` keeps the rules
/// across reboots; its install is retried until the instance reaches the internet (its Elastic IP
/// is associated just after launch).
const NAT_USER_DATA: &str = r#"#!/bin/bash
set -u
echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/90-tinystacks-nat.conf
sysctl -w net.ipv4.ip_forward=1
until dnf install -y iptables-services; do sleep 5; done
systemctl enable --now iptables
iface=$(ip -4 route show default | awk '{print $5; exit}')
iptables -t nat -A POSTROUTING -o "$iface" -j MASQUERADE
iptables -F FORWARD
service iptables save
"#;

/// The Stack's calls, made with the account's clients.
pub struct Network {
    account: Account,
}

impl std::ops::Deref for Network {
    type Target = Account;

    fn deref(&self) -> &Account {
        &self.account
    }
}

impl Network {
    pub async fn connect(ctx: &Context, link: &AwsAccountLink, region: &str) -> Result<Self> {
        Ok(Self { account: Account::connect(ctx, link, region).await? })
    }

    /// Has the next snapshot list again the kinds AWS changes on its own (NAT gateways, NAT
    /// instances and the addresses on them, VPC endpoints and VPC Links becoming available or going away), for a stack waiting on them:
    /// the responses that fed the inventory showed them in their in-between states.
    pub async fn look_again(&self, ctx: &Context) {
        for kind in [Kind::NatGateways, Kind::Instances, Kind::Addresses, Kind::VpcEndpoints, Kind::VpcLinks] {
            ctx.inventory.record(&self.scope, Recorded::Changed(kind)).await;
        }
    }

    /// What outside the stack still uses a key or VPC of it: every DB instance encrypted with one
    /// of `keys` or placed in one of `vpcs`, every DB snapshot and every live Secrets Manager
    /// secret encrypted with one of `keys`, whoever made them (a Database deleted with `Retain`, a
    /// `Snapshot` policy's final snapshot, a person). Read at teardown only, never at steady state.
    pub async fn dependants(&self, ctx: &Context, keys: &[&KmsKey], vpcs: &[&str]) -> Result<Vec<Dependant>> {
        let encrypts = |reported: Option<&str>| {
            reported.is_some_and(|r| {
                keys.iter().any(|k| r == k.arn || r == k.key_id || r.ends_with(&format!("/{}", k.key_id)))
            })
        };
        let calls = self.calls(ctx);
        let mut found = Vec::new();

        let list = || self.rds.describe_db_instances().into_paginator().send().try_collect();
        let pages: Vec<_> = calls.read(Service::Rds, "rds:DescribeDBInstances", list).await?;
        for i in pages.iter().flat_map(|p| p.db_instances()) {
            let group = i.db_subnet_group();
            let vpc_id = group.and_then(|g| g.vpc_id()).filter(|v| vpcs.contains(v));
            if !encrypts(i.kms_key_id()) && vpc_id.is_none() {
                continue;
            }
            let own_groups: Vec<String> =
                i.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id().map(str::to_string)).collect();
            found.push(Dependant {
                what: format!("DB instance {}", i.db_instance_identifier().unwrap_or_default()),
                kms_key: i.kms_key_id().filter(|k| encrypts(Some(k))).map(str::to_string),
                vpc_id: vpc_id.map(str::to_string),
                subnet_ids: group
                    .filter(|_| vpc_id.is_some())
                    .map(|g| g.subnets().iter().filter_map(|s| s.subnet_identifier().map(str::to_string)).collect())
                    .unwrap_or_default(),
                admitted_groups: if vpc_id.is_some() { self.admitted_by(ctx, own_groups).await? } else { Vec::new() },
            });
        }

        let list = || self.rds.describe_db_snapshots().into_paginator().send().try_collect();
        let pages: Vec<_> = calls.read(Service::Rds, "rds:DescribeDBSnapshots", list).await?;
        for snap in pages.iter().flat_map(|p| p.db_snapshots()).filter(|s| encrypts(s.kms_key_id())) {
            found.push(Dependant {
                what: format!(
                    "DB snapshot {} (of {})",
                    snap.db_snapshot_identifier().unwrap_or_default(),
                    snap.db_instance_identifier().unwrap_or_default()
                ),
                kms_key: snap.kms_key_id().map(str::to_string),
                ..Default::default()
            });
        }

        // Secrets scheduled for deletion are not listed: their owner let them go.
        let list = || self.secrets.list_secrets().max_results(100).into_paginator().send().try_collect();
        let pages: Vec<_> = calls.read(Service::SecretsManager, "secretsmanager:ListSecrets", list).await?;
        for secret in pages.iter().flat_map(|p| p.secret_list()).filter(|s| encrypts(s.kms_key_id())) {
            found.push(Dependant {
                what: format!("Secrets Manager secret {}", secret.name().unwrap_or_default()),
                kms_key: secret.kms_key_id().map(str::to_string),
                ..Default::default()
            });
        }
        Ok(found)
    }

    /// The security groups that `groups`' ingress rules admit.
    async fn admitted_by(&self, ctx: &Context, groups: Vec<String>) -> Result<Vec<String>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let read = || self.ec2.describe_security_groups().set_group_ids(Some(groups)).send();
        // A group deleted meanwhile admits nothing.
        let Some(out) = self.calls(ctx).find(Service::Ec2, "ec2:DescribeSecurityGroups", &[NOT_FOUND], read).await?
        else {
            return Ok(Vec::new());
        };
        Ok(out
            .security_groups()
            .iter()
            .flat_map(|g| g.ip_permissions())
            .flat_map(|p| p.user_id_group_pairs())
            .filter_map(|pair| pair.group_id().map(str::to_string))
            .collect())
    }

    /// Makes the mutation `action`; returns the ID of what it created or changed, for the Event.
    pub async fn apply(&self, ctx: &Context, action: &Action) -> Result<String> {
        let (id, recorded) = match self.call(ctx, action).await {
            Ok(done) => done,
            Err(error) => {
                // A create whose answer was lost (a dropped connection, a server error) may have
                // been made: that kind is listed again before the plan decides to create it anew
                // (most creates carry no idempotency token).
                if let Some(kind) = action.creates() {
                    ctx.inventory.record(&self.scope, Recorded::Changed(kind)).await;
                }
                return Err(error);
            }
        };
        for r in recorded {
            ctx.inventory.record(&self.scope, r).await;
        }
        Ok(id)
    }

    async fn call(&self, ctx: &Context, action: &Action) -> Result<(String, Vec<Recorded>)> {
        let calls = self.calls(ctx);
        let ec2 = &self.ec2;
        Ok(match action {
            Action::CreateVpc { cidr, tags } => {
                let out = calls
                    .mutate(Service::Ec2, "ec2:CreateVpc", &[], || {
                        ec2.create_vpc().cidr_block(cidr).tag_specifications(spec(ResourceType::Vpc, tags)).send()
                    })
                    .await?;
                let vpc = out.as_ref().and_then(|o| o.vpc()).and_then(inventory::vpc_of);
                let mut vpc = vpc.ok_or_else(|| missing("ec2:CreateVpc", "VPC"))?;
                vpc.tags = tags.clone();
                let id = vpc.id.clone();
                // A new VPC has DNS support on and DNS hostnames off: no need to ask.
                let dns = Recorded::VpcDns { vpc_id: id.clone(), support: Some(true), hostnames: Some(false) };
                (id, vec![Recorded::Created(Created::Vpc(vpc)), dns])
            }
            Action::EnableVpcDns { vpc_id, hostnames } => {
                let on = AttributeBooleanValue::builder().value(true).build();
                calls
                    .mutate(Service::Ec2, "ec2:ModifyVpcAttribute", &[], || {
                        let call = ec2.modify_vpc_attribute().vpc_id(vpc_id);
                        if *hostnames { call.enable_dns_hostnames(on) } else { call.enable_dns_support(on) }.send()
                    })
                    .await?;
                let (support, hostnames) = if *hostnames { (None, Some(true)) } else { (Some(true), None) };
                (vpc_id.clone(), vec![Recorded::VpcDns { vpc_id: vpc_id.clone(), support, hostnames }])
            }
            Action::CreateInternetGateway { tags } => {
                let out = calls
                    .mutate(Service::Ec2, "ec2:CreateInternetGateway", &[], || {
                        ec2.create_internet_gateway()
                            .tag_specifications(spec(ResourceType::InternetGateway, tags))
                            .send()
                    })
                    .await?;
                let id = out
                    .as_ref()
                    .and_then(|o| o.internet_gateway())
                    .and_then(|g| g.internet_gateway_id())
                    .ok_or_else(|| missing("ec2:CreateInternetGateway", "internet gateway ID"))?
                    .to_string();
                let created = InternetGateway { id: id.clone(), attached_vpcs: vec![], tags: tags.clone() };
                (id, vec![Recorded::Created(Created::InternetGateway(created))])
            }
            Action::AttachInternetGateway { gateway_id, vpc_id } => {
                calls
                    .mutate(Service::Ec2, "ec2:AttachInternetGateway", &["Resource.AlreadyAssociated"], || {
                        ec2.attach_internet_gateway().internet_gateway_id(gateway_id).vpc_id(vpc_id).send()
                    })
                    .await?;
                let attached = Recorded::GatewayAttachment {
                    gateway_id: gateway_id.clone(),
                    vpc_id: vpc_id.clone(),
                    attached: true,
                };
                (gateway_id.clone(), vec![attached])
            }
            Action::CreateSubnet { vpc_id, cidr, zone, tags } => {
                let out = calls
                    .mutate(Service::Ec2, "ec2:CreateSubnet", &[], || {
                        ec2.create_subnet()
                            .vpc_id(vpc_id)
                            .cidr_block(cidr)
                            .availability_zone(zone)
                            .tag_specifications(spec(ResourceType::Subnet, tags))
                            .send()
                    })
                    .await?;
                let subnet = out.as_ref().and_then(|o| o.subnet()).and_then(inventory::subnet_of);
                let mut subnet = subnet.ok_or_else(|| missing("ec2:CreateSubnet", "subnet"))?;
                subnet.tags = tags.clone();
                (subnet.id.clone(), vec![Recorded::Created(Created::Subnet(subnet))])
            }
            Action::CreateRouteTable { vpc_id, token, tags } => {
                let out = calls
                    .mutate(Service::Ec2, "ec2:CreateRouteTable", &[], || {
                        ec2.create_route_table()
                            .vpc_id(vpc_id)
                            .client_token(token)
                            .tag_specifications(spec(ResourceType::RouteTable, tags))
                            .send()
                    })
                    .await?;
                let table = out.as_ref().and_then(|o| o.route_table()).and_then(inventory::route_table_of);
                let mut table = table.ok_or_else(|| missing("ec2:CreateRouteTable", "route table"))?;
                table.tags = tags.clone();
                (table.id.clone(), vec![Recorded::Created(Created::RouteTable(table))])
            }
            Action::AssociateRouteTable { route_table_id, subnet_id } => {
                let out = calls
                    .mutate(Service::Ec2, "ec2:AssociateRouteTable", &[], || {
                        ec2.associate_route_table().route_table_id(route_table_id).subnet_id(subnet_id).send()
                    })
                    .await?;
                let association_id = out
                    .as_ref()
                    .and_then(|o| o.association_id())
                    .ok_or_else(|| missing("ec2:AssociateRouteTable", "association ID"))?;
                let associated = Recorded::Associated {
                    route_table_id: route_table_id.clone(),
                    association_id: association_id.to_string(),
                    subnet_id: subnet_id.clone(),
                };
                (format!("{subnet_id} to {route_table_id}"), vec![associated])
            }
            Action::CreateRoute { route_table_id, destination, target } => {
                self.create_route(ctx, route_table_id, destination, target).await?
            }
            Action::ReplaceRoute { route_table_id, destination, target } => {
                self.replace_route(ctx, route_table_id, destination, target).await?
            }
            Action::DeleteRoute { route_table_id, destination } => {
                self.delete_route(ctx, route_table_id, destination).await?
            }
            Action::AllocateAddress { tags } => self.allocate_address(ctx, tags).await?,
            Action::CreateNatGateway { subnet_id, allocation_id, token, tags } => {
                self.create_nat_gateway(ctx, subnet_id, allocation_id, token, tags).await?
            }
            Action::RunNatInstance(spec) => self.run_nat_instance(ctx, spec).await?,
            Action::DisableSourceDestCheck { instance_id } => self.disable_source_dest_check(ctx, instance_id).await?,
            Action::AssociateAddress { allocation_id, network_interface_id } => {
                self.associate_address(ctx, allocation_id, network_interface_id).await?
            }
            Action::CreateSecurityGroup { vpc_id, name, description, tags } => {
                self.create_security_group(ctx, vpc_id, name, description, tags).await?
            }
            Action::Authorize { group_id, egress, rule } => self.authorize(ctx, group_id, egress, rule).await?,
            Action::Revoke { group_id, egress, rule } => self.revoke(ctx, group_id, egress, rule).await?,
            Action::CreateVpcEndpoint(e) => self.create_endpoint(ctx, e).await?,
            Action::ModifyVpcEndpoint(c) => self.modify_endpoint(ctx, c).await?,
            Action::CreateVpcLink { name, subnet_ids, group_ids, tags } => {
                self.create_vpc_link(ctx, name, subnet_ids, group_ids, tags).await?
            }
            Action::CreateKey { description, tags } => self.create_key(ctx, description, tags).await?,
            Action::CreateAlias { alias, key_id } => self.create_alias(ctx, alias, key_id).await?,
            Action::Retag { resource, add, remove } => self.retag(ctx, resource, add, remove).await?,
            Action::Delete(deletion) => self.delete(ctx, deletion).await?,
        })
    }

    async fn create_route(
        &self,
        ctx: &Context,
        route_table_id: &str,
        destination: &str,
        target: &RouteTarget,
    ) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            self.calls(ctx)
                .mutate(Service::Ec2, "ec2:CreateRoute", &["RouteAlreadyExists"], || {
                    let call = ec2.create_route().route_table_id(route_table_id).destination_cidr_block(destination);
                    match target {
                        RouteTarget::Nat(id) => call.nat_gateway_id(id),
                        RouteTarget::Interface(id) => call.network_interface_id(id),
                        RouteTarget::Gateway(id) | RouteTarget::Other(id) => call.gateway_id(id),
                        RouteTarget::Local => call.gateway_id("local"),
                    }
                    .send()
                })
                .await?;
            (format!("{destination} in {route_table_id}"), vec![route(route_table_id, destination, Some(target))])
        })
    }

    async fn replace_route(
        &self,
        ctx: &Context,
        route_table_id: &str,
        destination: &str,
        target: &RouteTarget,
    ) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            self.calls(ctx)
                .mutate(Service::Ec2, "ec2:ReplaceRoute", &[], || {
                    let call = ec2.replace_route().route_table_id(route_table_id).destination_cidr_block(destination);
                    match target {
                        RouteTarget::Nat(id) => call.nat_gateway_id(id),
                        RouteTarget::Interface(id) => call.network_interface_id(id),
                        RouteTarget::Gateway(id) | RouteTarget::Other(id) => call.gateway_id(id),
                        RouteTarget::Local => call.local_target(true),
                    }
                    .send()
                })
                .await?;
            (format!("{destination} in {route_table_id}"), vec![route(route_table_id, destination, Some(target))])
        })
    }

    async fn delete_route(
        &self,
        ctx: &Context,
        route_table_id: &str,
        destination: &str,
    ) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            self.calls(ctx)
                .mutate(Service::Ec2, "ec2:DeleteRoute", &["InvalidRoute.NotFound", NOT_FOUND], || {
                    let call = ec2.delete_route().route_table_id(route_table_id);
                    if destination.starts_with("pl-") {
                        call.destination_prefix_list_id(destination)
                    } else {
                        call.destination_cidr_block(destination)
                    }
                    .send()
                })
                .await?;
            (format!("{destination} in {route_table_id}"), vec![route(route_table_id, destination, None)])
        })
    }

    /// A NAT instance forwards what is not addressed to it.
    async fn disable_source_dest_check(&self, ctx: &Context, instance_id: &str) -> Result<(String, Vec<Recorded>)> {
        let (ec2, off) = (&self.ec2, AttributeBooleanValue::builder().value(false).build());
        self.calls(ctx)
            .mutate(Service::Ec2, "ec2:ModifyInstanceAttribute", &[], || {
                ec2.modify_instance_attribute().instance_id(instance_id).source_dest_check(off).send()
            })
            .await?;
        Ok((instance_id.to_string(), vec![Recorded::Changed(Kind::Instances)]))
    }

    /// Reassociation takes the address from a terminated instance's interface at once.
    async fn associate_address(
        &self,
        ctx: &Context,
        allocation_id: &str,
        network_interface_id: &str,
    ) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        self.calls(ctx)
            .mutate(Service::Ec2, "ec2:AssociateAddress", &[], || {
                ec2.associate_address()
                    .allocation_id(allocation_id)
                    .network_interface_id(network_interface_id)
                    .allow_reassociation(true)
                    .send()
            })
            .await?;
        Ok((format!("{allocation_id} to {network_interface_id}"), vec![Recorded::Changed(Kind::Addresses)]))
    }

    async fn allocate_address(&self, ctx: &Context, tags: &Tags) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            let out = self
                .calls(ctx)
                .mutate(Service::Ec2, "ec2:AllocateAddress", &[], || {
                    ec2.allocate_address()
                        .domain(DomainType::Vpc)
                        .tag_specifications(spec(ResourceType::ElasticIp, tags))
                        .send()
                })
                .await?;
            let id = out
                .as_ref()
                .and_then(|o| o.allocation_id())
                .ok_or_else(|| missing("ec2:AllocateAddress", "allocation ID"))?
                .to_string();
            let created = Address {
                allocation_id: id.clone(),
                association_id: None,
                network_interface_id: None,
                tags: tags.clone(),
            };
            (id, vec![Recorded::Created(Created::Address(created))])
        })
    }

    async fn create_nat_gateway(
        &self,
        ctx: &Context,
        subnet_id: &str,
        allocation_id: &str,
        token: &str,
        tags: &Tags,
    ) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            let out = self
                .calls(ctx)
                .mutate(Service::Ec2, "ec2:CreateNatGateway", &[], || {
                    ec2.create_nat_gateway()
                        .subnet_id(subnet_id)
                        .allocation_id(allocation_id)
                        .client_token(token)
                        .tag_specifications(spec(ResourceType::Natgateway, tags))
                        .send()
                })
                .await?;
            let nat = out.as_ref().and_then(|o| o.nat_gateway()).and_then(inventory::nat_gateway_of);
            let mut nat = nat.ok_or_else(|| missing("ec2:CreateNatGateway", "NAT gateway"))?;
            nat.tags = tags.clone();
            let id = nat.id.clone();
            (id, vec![Recorded::Created(Created::NatGateway(nat))])
        })
    }

    /// Launches a NAT instance: no key pair (nothing logs into it; it is replaced, not patched),
    /// IMDSv2 only, no public IP of its own (its Elastic IP follows), and the instance, its volume
    /// and its interface tagged from the call (the `Scoped` policy requires it).
    async fn run_nat_instance(&self, ctx: &Context, l: &NatInstanceSpec) -> Result<(String, Vec<Recorded>)> {
        let interface = image::primary_interface(&l.subnet_id, &l.group_id, false);
        let metadata = image::imds_v2_only();
        let ec2 = &self.ec2;
        let out = self
            .calls(ctx)
            .mutate(Service::Ec2, "ec2:RunInstances", &[], || {
                ec2.run_instances()
                    .image_id(&l.image)
                    .instance_type(InstanceType::from(l.instance_type.as_str()))
                    .min_count(1)
                    .max_count(1)
                    .client_token(&l.token)
                    .network_interfaces(interface.clone())
                    .metadata_options(metadata.clone())
                    .user_data(aws_smithy_types::base64::encode(NAT_USER_DATA))
                    .tag_specifications(spec(ResourceType::Instance, &l.tags))
                    .tag_specifications(spec(ResourceType::Volume, &l.tags))
                    .tag_specifications(spec(ResourceType::NetworkInterface, &l.tags))
                    .send()
            })
            .await
            .map_err(|e| match e {
                // EC2 answers an unknown type `InvalidParameterValue`: "Invalid value 'x' for InstanceType".
                Error::AwsRejectedValue { action, code, message, .. } if message.contains("InstanceType") => {
                    let remedy = "set spec.network.natInstanceType to a type EC2 offers in this region (aws ec2 describe-instance-type-offerings)".into();
                    Error::AwsRejectedValue { action, code, message, remedy }
                }
                other => other,
            })?;
        let instance = out.as_ref().and_then(|o| o.instances().first()).and_then(inventory::instance_of);
        let mut instance = instance.ok_or_else(|| missing("ec2:RunInstances", "instance"))?;
        instance.tags = l.tags.clone();
        let id = instance.id.clone();
        Ok((id, vec![Recorded::Created(Created::Instance(instance))]))
    }

    async fn create_security_group(
        &self,
        ctx: &Context,
        vpc_id: &str,
        name: &str,
        description: &str,
        tags: &Tags,
    ) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            let out = self
                .calls(ctx)
                .mutate(Service::Ec2, "ec2:CreateSecurityGroup", &[], || {
                    ec2.create_security_group()
                        .vpc_id(vpc_id)
                        .group_name(name)
                        .description(description)
                        .tag_specifications(spec(ResourceType::SecurityGroup, tags))
                        .send()
                })
                .await?;
            let id = out
                .as_ref()
                .and_then(|o| o.group_id())
                .ok_or_else(|| missing("ec2:CreateSecurityGroup", "group ID"))?
                .to_string();
            let created = inventory::new_security_group(&id, vpc_id, name, tags.clone());
            (id, vec![Recorded::Created(Created::SecurityGroup(created))])
        })
    }

    async fn authorize(
        &self,
        ctx: &Context,
        group_id: &str,
        egress: &bool,
        rule: &Rule,
    ) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            let permission = inventory::permission_of(rule);
            if *egress {
                self.calls(ctx)
                    .mutate(Service::Ec2, "ec2:AuthorizeSecurityGroupEgress", &["InvalidPermission.Duplicate"], || {
                        ec2.authorize_security_group_egress().group_id(group_id).ip_permissions(permission).send()
                    })
                    .await?;
            } else {
                self.calls(ctx)
                    .mutate(Service::Ec2, "ec2:AuthorizeSecurityGroupIngress", &["InvalidPermission.Duplicate"], || {
                        ec2.authorize_security_group_ingress().group_id(group_id).ip_permissions(permission).send()
                    })
                    .await?;
            }
            let added =
                Recorded::Rule { group_id: group_id.to_string(), egress: *egress, rule: rule.clone(), added: true };
            (group_id.to_string(), vec![added])
        })
    }

    async fn revoke(
        &self,
        ctx: &Context,
        group_id: &str,
        egress: &bool,
        rule: &Rule,
    ) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            let permission = inventory::permission_of(rule);
            if *egress {
                self.calls(ctx)
                    .mutate(Service::Ec2, "ec2:RevokeSecurityGroupEgress", &["InvalidPermission.NotFound"], || {
                        ec2.revoke_security_group_egress().group_id(group_id).ip_permissions(permission).send()
                    })
                    .await?;
            } else {
                self.calls(ctx)
                    .mutate(Service::Ec2, "ec2:RevokeSecurityGroupIngress", &["InvalidPermission.NotFound"], || {
                        ec2.revoke_security_group_ingress().group_id(group_id).ip_permissions(permission).send()
                    })
                    .await?;
            }
            let removed =
                Recorded::Rule { group_id: group_id.to_string(), egress: *egress, rule: rule.clone(), added: false };
            (group_id.to_string(), vec![removed])
        })
    }

    async fn modify_endpoint(&self, ctx: &Context, c: &EndpointChange) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        Ok({
            let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
            self.calls(ctx)
                .mutate(Service::Ec2, "ec2:ModifyVpcEndpoint", &[], || {
                    ec2.modify_vpc_endpoint()
                        .vpc_endpoint_id(&c.endpoint_id)
                        .set_add_route_table_ids(some(&c.add_route_tables))
                        .set_remove_route_table_ids(some(&c.remove_route_tables))
                        .set_add_subnet_ids(some(&c.add_subnets))
                        .set_remove_subnet_ids(some(&c.remove_subnets))
                        .set_add_security_group_ids(some(&c.add_groups))
                        .set_remove_security_group_ids(some(&c.remove_groups))
                        .send()
                })
                .await?;
            (c.endpoint_id.clone(), vec![Recorded::Changed(Kind::VpcEndpoints), Recorded::Changed(Kind::RouteTables)])
        })
    }

    async fn create_vpc_link(
        &self,
        ctx: &Context,
        name: &str,
        subnet_ids: &[String],
        group_ids: &[String],
        tags: &Tags,
    ) -> Result<(String, Vec<Recorded>)> {
        Ok({
            let apigateway = &self.apigateway;
            let out = self
                .calls(ctx)
                .mutate(Service::ApiGateway, "apigateway:POST", &[], || {
                    apigateway
                        .create_vpc_link()
                        .name(name)
                        .set_subnet_ids(Some(subnet_ids.to_vec()))
                        .set_security_group_ids(Some(group_ids.to_vec()))
                        .set_tags(Some(tags.owned()))
                        .send()
                })
                .await?;
            let out = out.ok_or_else(|| missing("apigateway:POST", "VPC Link"))?;
            let id = out.vpc_link_id().ok_or_else(|| missing("apigateway:POST", "VPC Link ID"))?.to_string();
            let link = VpcLink {
                id: id.clone(),
                name: name.to_string(),
                subnet_ids: subnet_ids.iter().cloned().collect(),
                group_ids: group_ids.iter().cloned().collect(),
                status: parse_state(out.vpc_link_status().map_or("", |s| s.as_str()), VpcLinkStatus::values()),
                tags: tags.clone(),
            };
            (id, vec![Recorded::Created(Created::VpcLink(link))])
        })
    }

    async fn create_key(&self, ctx: &Context, description: &str, tags: &Tags) -> Result<(String, Vec<Recorded>)> {
        Ok({
            let kms = &self.kms;
            let kms_tags = tags
                .iter()
                .map(|(k, v)| aws_sdk_kms::types::Tag::builder().tag_key(k).tag_value(v).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::OperatorFault { detail: format!("a tag cannot be sent to KMS: {e}") })?;
            let out = self
                .calls(ctx)
                .mutate(Service::Kms, "kms:CreateKey", &[], || {
                    kms.create_key().description(description).set_tags(Some(kms_tags)).send()
                })
                .await?;
            let meta = out.as_ref().and_then(|o| o.key_metadata()).ok_or_else(|| missing("kms:CreateKey", "key"))?;
            let key = KmsKey {
                key_id: meta.key_id().to_string(),
                arn: meta.arn().unwrap_or_default().to_string(),
                state: Some(KeyState::Enabled),
                tags: tags.clone(),
            };
            let state = Recorded::KeyState { key_id: key.key_id.clone(), state: KeyState::Enabled };
            (key.key_id.clone(), vec![Recorded::Created(Created::KmsKey(key)), state])
        })
    }

    async fn create_alias(&self, ctx: &Context, alias: &str, key_id: &str) -> Result<(String, Vec<Recorded>)> {
        Ok({
            let kms = &self.kms;
            let made = self
                .calls(ctx)
                .mutate(Service::Kms, "kms:CreateAlias", &["AlreadyExistsException"], || {
                    kms.create_alias().alias_name(alias).target_key_id(key_id).send()
                })
                .await?;
            // An alias that already existed may point elsewhere: only a list tells.
            let recorded = match made {
                Some(_) => Recorded::Alias { name: alias.to_string(), target_key_id: key_id.to_string() },
                None => Recorded::Changed(Kind::KmsAliases),
            };
            (alias.to_string(), vec![recorded])
        })
    }

    async fn create_endpoint(&self, ctx: &Context, e: &EndpointSpec) -> Result<(String, Vec<Recorded>)> {
        let ec2 = &self.ec2;
        let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let out = self
            .calls(ctx)
            .mutate(Service::Ec2, "ec2:CreateVpcEndpoint", &[], || {
                let call = ec2
                    .create_vpc_endpoint()
                    .vpc_id(&e.vpc_id)
                    .service_name(&e.service)
                    .client_token(&e.token)
                    .tag_specifications(spec(ResourceType::VpcEndpoint, &e.tags));
                if e.gateway {
                    call.vpc_endpoint_type(VpcEndpointType::Gateway).set_route_table_ids(some(&e.route_table_ids))
                } else {
                    call.vpc_endpoint_type(VpcEndpointType::Interface)
                        .set_subnet_ids(some(&e.subnet_ids))
                        .set_security_group_ids(some(&e.group_ids))
                        // Workloads reach the service by its usual name, resolved to the endpoint.
                        .private_dns_enabled(true)
                }
                .send()
            })
            .await?;
        let endpoint = out.as_ref().and_then(|o| o.vpc_endpoint()).and_then(inventory::vpc_endpoint_of);
        let mut endpoint: VpcEndpoint = endpoint.ok_or_else(|| missing("ec2:CreateVpcEndpoint", "endpoint"))?;
        endpoint.tags = e.tags.clone();
        let id = endpoint.id.clone();
        // A gateway endpoint adds routes (to its service's prefix list) to the tables it serves; the
        // plan keeps such routes whatever they are, so they need not be known before the next list.
        Ok((id, vec![Recorded::Created(Created::VpcEndpoint(endpoint))]))
    }

    /// One tag call: additions first, removals at the next step.
    async fn retag(
        &self,
        ctx: &Context,
        resource: &Tagged,
        add: &Tags,
        remove: &[String],
    ) -> Result<(String, Vec<Recorded>)> {
        match resource {
            Tagged::Ec2(id) => {
                let ec2 = &self.ec2;
                if !add.is_empty() {
                    self.calls(ctx)
                        .mutate(Service::Ec2, "ec2:CreateTags", &[], || {
                            ec2.create_tags().resources(id).set_tags(Some(ec2_tags(add))).send()
                        })
                        .await?;
                } else {
                    let keys: Vec<Tag> = remove.iter().map(|k| Tag::builder().key(k).build()).collect();
                    self.calls(ctx)
                        .mutate(Service::Ec2, "ec2:DeleteTags", &[], || {
                            ec2.delete_tags().resources(id).set_tags(Some(keys)).send()
                        })
                        .await?;
                }
                Ok((id.clone(), vec![Recorded::retagged(Kind::of_ec2_id(id), id, add, remove)]))
            }
            Tagged::VpcLink(id) => {
                let apigateway = &self.apigateway;
                let arn = format!("arn:aws:apigateway:{}::/vpclinks/{id}", self.scope.region);
                if !add.is_empty() {
                    self.calls(ctx)
                        .mutate(Service::ApiGateway, "apigateway:POST", &[], || {
                            apigateway.tag_resource().resource_arn(&arn).set_tags(Some(add.owned())).send()
                        })
                        .await?;
                } else {
                    self.calls(ctx)
                        .mutate(Service::ApiGateway, "apigateway:DELETE", &[], || {
                            apigateway.untag_resource().resource_arn(&arn).set_tag_keys(Some(remove.to_vec())).send()
                        })
                        .await?;
                }
                Ok((id.clone(), vec![Recorded::retagged(Kind::VpcLinks, id, add, remove)]))
            }
            Tagged::Key(id) => {
                let kms = &self.kms;
                if !add.is_empty() {
                    let tags = add
                        .iter()
                        .map(|(k, v)| aws_sdk_kms::types::Tag::builder().tag_key(k).tag_value(v).build())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Error::OperatorFault { detail: format!("a tag cannot be sent to KMS: {e}") })?;
                    self.calls(ctx)
                        .mutate(Service::Kms, "kms:TagResource", &[], || {
                            kms.tag_resource().key_id(id).set_tags(Some(tags)).send()
                        })
                        .await?;
                } else {
                    self.calls(ctx)
                        .mutate(Service::Kms, "kms:UntagResource", &[], || {
                            kms.untag_resource().key_id(id).set_tag_keys(Some(remove.to_vec())).send()
                        })
                        .await?;
                }
                Ok((id.clone(), vec![Recorded::retagged(Kind::KmsKeys, id, add, remove)]))
            }
        }
    }

    async fn delete(&self, ctx: &Context, deletion: &Deletion) -> Result<(String, Vec<Recorded>)> {
        let calls = self.calls(ctx);
        let ec2 = &self.ec2;
        let gone = &[NOT_FOUND];
        Ok(match deletion {
            Deletion::VpcLink(id) => {
                let apigateway = &self.apigateway;
                calls
                    .mutate(Service::ApiGateway, "apigateway:DELETE", &["NotFoundException"], || {
                        apigateway.delete_vpc_link().vpc_link_id(id).send()
                    })
                    .await?;
                (id.clone(), vec![Recorded::Deleted(Kind::VpcLinks, id.clone())])
            }
            Deletion::VpcEndpoints(ids) => {
                let out = calls
                    .mutate(Service::Ec2, "ec2:DeleteVpcEndpoints", &["InvalidVpcEndpointId.NotFound"], || {
                        ec2.delete_vpc_endpoints().set_vpc_endpoint_ids(Some(ids.clone())).send()
                    })
                    .await?;
                // The call succeeds as a whole and lists the endpoints it could not delete.
                if let Some(failed) = out.as_ref().and_then(|o| o.unsuccessful().first()) {
                    let detail = failed.error().and_then(|e| e.message()).unwrap_or("no reason given");
                    if !failed.error().and_then(|e| e.code()).is_some_and(is_not_found) {
                        return Err(Error::AwsRequestFailed {
                            action: "ec2:DeleteVpcEndpoints".into(),
                            code: failed.error().and_then(|e| e.code()).unwrap_or("Unsuccessful").into(),
                            message: format!("{}: {detail}", failed.resource_id().unwrap_or_default()),
                        });
                    }
                }
                let recorded = ids.iter().map(|id| Recorded::Deleted(Kind::VpcEndpoints, id.clone())).collect();
                (ids.join(", "), recorded)
            }
            Deletion::NatGateway(id) => {
                calls
                    .mutate(Service::Ec2, "ec2:DeleteNatGateway", &["NatGatewayNotFound", NOT_FOUND], || {
                        ec2.delete_nat_gateway().nat_gateway_id(id).send()
                    })
                    .await?;
                (id.clone(), vec![Recorded::Deleted(Kind::NatGateways, id.clone())])
            }
            Deletion::Instance(id) => {
                calls
                    .mutate(Service::Ec2, "ec2:TerminateInstances", &["InvalidInstanceID.NotFound"], || {
                        ec2.terminate_instances().instance_ids(id).send()
                    })
                    .await?;
                // EC2 takes its Elastic IP off as it terminates: both are listed again.
                (id.clone(), vec![Recorded::Changed(Kind::Instances), Recorded::Changed(Kind::Addresses)])
            }
            Deletion::Address(id) => {
                calls
                    .mutate(Service::Ec2, "ec2:ReleaseAddress", gone, || ec2.release_address().allocation_id(id).send())
                    .await?;
                (id.clone(), vec![Recorded::Deleted(Kind::Addresses, id.clone())])
            }
            Deletion::DetachInternetGateway { gateway_id, vpc_id } => {
                calls
                    .mutate(Service::Ec2, "ec2:DetachInternetGateway", &["Gateway.NotAttached", NOT_FOUND], || {
                        ec2.detach_internet_gateway().internet_gateway_id(gateway_id).vpc_id(vpc_id).send()
                    })
                    .await?;
                let detached = Recorded::GatewayAttachment {
                    gateway_id: gateway_id.clone(),
                    vpc_id: vpc_id.clone(),
                    attached: false,
                };
                (gateway_id.clone(), vec![detached])
            }
            Deletion::InternetGateway(id) => {
                calls
                    .mutate(Service::Ec2, "ec2:DeleteInternetGateway", gone, || {
                        ec2.delete_internet_gateway().internet_gateway_id(id).send()
                    })
                    .await?;
                (id.clone(), vec![Recorded::Deleted(Kind::InternetGateways, id.clone())])
            }
            Deletion::Disassociate(id) => {
                calls
                    .mutate(Service::Ec2, "ec2:DisassociateRouteTable", gone, || {
                        ec2.disassociate_route_table().association_id(id).send()
                    })
                    .await?;
                (id.clone(), vec![Recorded::Disassociated { association_id: id.clone() }])
            }
            Deletion::RouteTable(id) => {
                calls
                    .mutate(Service::Ec2, "ec2:DeleteRouteTable", gone, || {
                        ec2.delete_route_table().route_table_id(id).send()
                    })
                    .await?;
                (id.clone(), vec![Recorded::Deleted(Kind::RouteTables, id.clone())])
            }
            Deletion::SecurityGroup(id) => {
                calls
                    .mutate(Service::Ec2, "ec2:DeleteSecurityGroup", gone, || {
                        ec2.delete_security_group().group_id(id).send()
                    })
                    .await?;
                (id.clone(), vec![Recorded::Deleted(Kind::SecurityGroups, id.clone())])
            }
            Deletion::Subnet(id) => {
                calls
                    .mutate(Service::Ec2, "ec2:DeleteSubnet", gone, || ec2.delete_subnet().subnet_id(id).send())
                    .await?;
                (id.clone(), vec![Recorded::Deleted(Kind::Subnets, id.clone())])
            }
            Deletion::Vpc(id) => {
                calls.mutate(Service::Ec2, "ec2:DeleteVpc", gone, || ec2.delete_vpc().vpc_id(id).send()).await?;
                (id.clone(), vec![Recorded::Deleted(Kind::Vpcs, id.clone())])
            }
            Deletion::Alias(name) => {
                let kms = &self.kms;
                calls
                    .mutate(Service::Kms, "kms:DeleteAlias", &["NotFoundException"], || {
                        kms.delete_alias().alias_name(name).send()
                    })
                    .await?;
                (name.clone(), vec![Recorded::Deleted(Kind::KmsAliases, name.clone())])
            }
            Deletion::Key(id) => {
                let kms = &self.kms;
                // Already pending deletion (a retry) answers KMSInvalidStateException.
                calls
                    .mutate(
                        Service::Kms,
                        "kms:ScheduleKeyDeletion",
                        &["NotFoundException", "KMSInvalidStateException"],
                        || {
                            kms.schedule_key_deletion()
                                .key_id(id)
                                .pending_window_in_days(KEY_DELETION_WINDOW_DAYS)
                                .send()
                        },
                    )
                    .await?;
                (id.clone(), vec![Recorded::KeyState { key_id: id.clone(), state: KeyState::PendingDeletion }])
            }
        })
    }
}

fn route(route_table_id: &str, destination: &str, target: Option<&RouteTarget>) -> Recorded {
    Recorded::Route {
        route_table_id: route_table_id.to_string(),
        destination: destination.to_string(),
        target: target.cloned(),
    }
}
