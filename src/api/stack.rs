//! `Stack`: a VPC in one of the two secure patterns, with everything around it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, IMMUTABLE, LocalObjectReference, PlanControls, PlanStatus, conditions_schema};

/// The network a team's application lives in.
// Each printcolumn repeats `type_ = ...`; clippy reads the macro's arguments as attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tinystacks.io",
    version = "v1alpha1",
    kind = "Stack",
    namespaced,
    shortname = "tstack",
    category = "tinystacks",
    status = "StackStatus",
    doc = "A VPC in one of two secure patterns, with gateways, routes, endpoints, a VPC Link and a KMS key.",
    printcolumn(name = "Pattern", type_ = "string", json_path = ".spec.network.pattern"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "VPC", type_ = "string", json_path = ".status.vpcId"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // The name's shape and length, from every name built from it (`MAX_STACK_NAME`).
    validation = kube::core::Rule::new("oldSelf.hasValue() || self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("Stack metadata.name may hold only lowercase letters, digits and '-': it is part of the stack's KMS alias, where AWS refuses '.'").optional_old_self(true),
    validation = super::name_length_rule("Stack", super::MAX_STACK_NAME, "the stack's VPC Link is named tinystacks-<namespace>-<name>, which AWS limits to 128 characters in a namespace of up to 63")
)]
#[x_kube(validation = kube::core::Rule::new("has(self.region) == has(oldSelf.region) && (!has(self.region) || self.region == oldSelf.region)").message("region is immutable").field_path(".region"))]
#[serde(rename_all = "camelCase")]
pub struct StackSpec {
    /// The AwsAccountLink whose account hosts the stack. Immutable.
    #[x_kube(validation = kube::core::Rule::new(IMMUTABLE).message("accountLinkRef is immutable"))]
    pub account_link_ref: LocalObjectReference,

    /// AWS region of the stack; defaults to the link's region. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z]{2}(-[a-z]+)+-[0-9]+$')").message("region must be an AWS region name such as eu-west-1"))]
    #[schemars(length(max = 32))]
    pub region: Option<String>,

    /// The network layout.
    #[serde(default)]
    pub network: Network,

    /// Extra tags on every AWS resource of the stack.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 40))]
    #[x_kube(
        validation = kube::core::Rule::new("self.all(k, !k.startsWith('aws:') && !k.startsWith('tinystacks.io/') && k != 'Name')").message("tags may not use the reserved keys Name, aws:* or tinystacks.io/*"),
        validation = kube::core::Rule::new("self.all(k, size(k) >= 1 && size(k) <= 128 && size(self[k]) <= 256)").message("tag keys are 1-128 characters and values at most 256")
    )]
    pub tags: BTreeMap<String, String>,

    /// On deletion: `Delete` removes every AWS resource of the stack; `Retain` leaves them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `changePolicy`, `approvedPlan` and `management`: whether and when the plan is applied.
    #[serde(flatten)]
    pub controls: PlanControls,
}

/// The VPC layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("!has(self.natGateways) || self.pattern == 'PublicPrivate' || self.natGateways == 'None'").message("natGateways applies only to the PublicPrivate pattern (PrivateIsolated has no route to the internet)").field_path(".natGateways"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.natType) || self.natType == 'Gateway' || self.pattern == 'PublicPrivate'").message("natType Instance applies only to the PublicPrivate pattern (PrivateIsolated has no route to the internet)").field_path(".natType"))]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// `PublicPrivate` (3 public + 2 private subnets) or `PrivateIsolated` (3 private + 3
    /// isolated, no route to the internet). Immutable.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new(IMMUTABLE).message("network.pattern is immutable"))]
    pub pattern: NetworkPattern,

    /// IPv4 CIDR of the VPC, `/16` to `/22`; subnets are carved from it. Immutable.
    #[serde(default = "default_cidr")]
    #[schemars(length(max = 18))]
    #[x_kube(
        validation = kube::core::Rule::new("isCIDR(self) && cidr(self).ip().family() == 4").message("cidr must be an IPv4 CIDR such as 10.0.0.0/16"),
        validation = kube::core::Rule::new("!isCIDR(self) || (cidr(self).prefixLength() >= 16 && cidr(self).prefixLength() <= 22)").message("cidr prefix length must be between /16 and /22"),
        validation = kube::core::Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message("cidr must be a network address (no host bits set), such as 10.0.0.0/16"),
        validation = kube::core::Rule::new(IMMUTABLE).message("network.cidr is immutable")
    )]
    pub cidr: String,

    /// Three availability zone names; default: the region's first three zones. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 3))]
    #[x_kube(
        validation = kube::core::Rule::new("self.all(z, z.matches('^[a-z]{2}(-[a-z]+)+-[0-9]+[a-z]$'))").message("availabilityZones must be zone names such as eu-west-1a"),
        validation = kube::core::Rule::new("self.all(z, self.exists_one(y, y == z))").message("availabilityZones must be distinct"),
        validation = kube::core::Rule::new(IMMUTABLE).message("network.availabilityZones is immutable")
    )]
    pub availability_zones: Option<Vec<ZoneName>>,

    /// NAT gateways for the private subnets: `None`, `Single` (default) or `PerAz`.
    /// `PublicPrivate` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_gateways: Option<NatGateways>,

    /// What does the NAT at each position `natGateways` gives: `Gateway` (default; AWS's managed
    /// NAT gateway) or `Instance` (a small EC2 instance doing NAT: cheaper, not highly available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_type: Option<NatType>,

    /// The instance type of NAT instances (`natType: Instance`), default `t4g.nano`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z][a-z0-9-]*[.][a-z0-9]+$')").message("natInstanceType must be an EC2 instance type such as t4g.nano"))]
    pub nat_instance_type: Option<String>,

    /// An API Gateway (v2) VPC Link into the public (`PublicPrivate`) or private
    /// (`PrivateIsolated`) subnets.
    #[serde(default = "default_true")]
    pub vpc_link: bool,
}

/// An availability zone name.
pub type ZoneName = String;

impl Default for Network {
    fn default() -> Self {
        Self {
            pattern: NetworkPattern::default(),
            cidr: default_cidr(),
            availability_zones: None,
            nat_gateways: None,
            nat_type: None,
            nat_instance_type: None,
            vpc_link: true,
        }
    }
}

impl Network {
    /// The NAT layout in force: `Single` for `PublicPrivate` unless set, never any for
    /// `PrivateIsolated`.
    pub fn nat_gateways(&self) -> NatGateways {
        match self.pattern {
            NetworkPattern::PublicPrivate => self.nat_gateways.unwrap_or(NatGateways::Single),
            NetworkPattern::PrivateIsolated => NatGateways::None,
        }
    }

    /// The NAT type in force (`Gateway` unless set).
    pub fn nat_type(&self) -> NatType {
        self.nat_type.unwrap_or_default()
    }

    /// The instance type of NAT instances in force.
    pub fn nat_instance_type(&self) -> &str {
        self.nat_instance_type.as_deref().unwrap_or(DEFAULT_NAT_INSTANCE_TYPE)
    }
}

/// The default `natInstanceType`: the smallest Graviton type, enough for a small team's egress.
pub const DEFAULT_NAT_INSTANCE_TYPE: &str = "t4g.nano";

fn default_cidr() -> String {
    "10.0.0.0/16".into()
}

fn default_true() -> bool {
    true
}

/// The two secure VPC patterns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum NetworkPattern {
    /// Three public and two private subnets; internet gateway; NAT for the private side.
    #[default]
    PublicPrivate,
    /// Three private and three isolated subnets; no route to the internet at all.
    PrivateIsolated,
}

/// How many NAT gateways serve the private subnets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum NatGateways {
    /// No NAT: private subnets have no route out.
    None,
    /// One NAT gateway shared by all private subnets.
    #[default]
    Single,
    /// One NAT gateway per availability zone.
    PerAz,
}

/// What does NAT for the private subnets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum NatType {
    /// AWS's managed NAT gateway: highly available in its zone, billed per hour and per GB.
    #[default]
    Gateway,
    /// A small EC2 instance doing NAT (IP forwarding and masquerade), replaced when it is
    /// terminated or stopped: a fraction of the cost, without a gateway's availability.
    Instance,
}

/// The tier of a subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SubnetTier {
    /// Routes `0.0.0.0/0` to the internet gateway.
    Public,
    /// Reaches out through NAT (`PublicPrivate`) or VPC endpoints (`PrivateIsolated`).
    Private,
    /// Only the local route.
    Isolated,
}

/// A subnet of the stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackSubnet {
    /// Subnet ID.
    pub id: String,
    /// `Public`, `Private` or `Isolated`.
    pub tier: SubnetTier,
    /// Availability zone of the subnet.
    pub availability_zone: String,
    /// IPv4 CIDR of the subnet.
    pub cidr: String,
}

/// What the operator observed of the stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// VPC ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// The subnets, with tier, zone and CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<StackSubnet>,
    /// Internet gateway ID (`PublicPrivate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet_gateway_id: Option<String>,
    /// NAT gateway IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat_gateway_ids: Vec<String>,
    /// NAT instance IDs (`natType: Instance`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat_instance_ids: Vec<String>,
    /// Route table IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_table_ids: Vec<String>,
    /// VPC endpoint IDs (`PrivateIsolated`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpc_endpoint_ids: Vec<String>,
    /// Security group for the application's workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_security_group_id: Option<String>,
    /// API Gateway v2 VPC Link ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_link_id: Option<String>,
    /// ARN of the stack's KMS key (alias `alias/tinystacks/<namespace>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    /// What the operator would change in AWS, in order; empty when AWS matches the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStatus>,
}
