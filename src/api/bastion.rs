//! `Bastion`: a host through which people reach a Stack's Database.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{IMMUTABLE, LocalObjectReference, PlanControls, PlanStatus, conditions_schema};

/// A way in for people: Session Manager, or SSH from allowed addresses only.
// Each printcolumn repeats `type_ = ...`; clippy reads the macro's arguments as attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "tinystacks.io",
    version = "v1alpha1",
    kind = "Bastion",
    namespaced,
    category = "tinystacks",
    status = "BastionStatus",
    doc = "A host for reaching a Stack's Database from a person's machine, through Session Manager or SSH.",
    printcolumn(name = "Access", type_ = "string", json_path = ".spec.access"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Instance", type_ = "string", json_path = ".status.instanceId"),
    // A string, not a date: kubectl shows a date column as an age, and a time still to come as
    // `<invalid>`.
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Every name built from the object's name fits (`MAX_BASTION_NAME`).
    validation = super::name_length_rule("Bastion", super::MAX_BASTION_NAME, "the name is the value of the label tinystacks.io/bastion on the key Secret, and label values are limited to 63")
)]
#[x_kube(
    validation = kube::core::Rule::new("self.access != 'Ssh' || (has(self.allowedCidrs) && size(self.allowedCidrs) > 0)").message("allowedCidrs is required and must not be empty when access is Ssh").field_path(".allowedCidrs"),
    validation = kube::core::Rule::new("!has(self.sshPublicKey) || self.access == 'Ssh'").message("sshPublicKey applies only to Ssh access").field_path(".sshPublicKey")
)]
#[serde(rename_all = "camelCase")]
pub struct BastionSpec {
    /// The Stack, in this namespace, the bastion reaches into. Immutable.
    #[x_kube(validation = kube::core::Rule::new(IMMUTABLE).message("stackRef is immutable"))]
    pub stack_ref: LocalObjectReference,

    /// `Ssm` (default): no inbound port, Session Manager port forwarding. `Ssh`: a public
    /// instance with port 22 open to `allowedCidrs` only (`PublicPrivate` stacks only).
    #[serde(default)]
    pub access: BastionAccess,

    /// CIDRs allowed to reach port 22 (`Ssh` only): each IPv4 range /24 or narrower and each IPv6
    /// range /56 or narrower, and all of them together at most 256 IPv4 addresses and one /56 of
    /// IPv6 (checked by the operator: `Stalled`, `AllowedCidrsTooWide`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(max = 43)))]
    #[x_kube(
        validation = kube::core::Rule::new("self.all(c, isCIDR(c))").message("allowedCidrs must hold CIDRs such as 203.0.113.0/24"),
        validation = kube::core::Rule::new("self.all(c, !isCIDR(c) || cidr(c).prefixLength() > 0)").message("allowedCidrs must not admit the whole internet (0.0.0.0/0 or ::/0)"),
        validation = kube::core::Rule::new(format!("self.all(c, !isCIDR(c) || cidr(c).prefixLength() >= (cidr(c).ip().family() == 4 ? {SSH_MIN_PREFIX_V4} : {SSH_MIN_PREFIX_V6}))")).message(format!("allowedCidrs entries must be /{SSH_MIN_PREFIX_V4} or narrower (IPv4) and /{SSH_MIN_PREFIX_V6} or narrower (IPv6): a wider range is not an allow-list").as_str())
    )]
    pub allowed_cidrs: Vec<CidrBlock>,

    /// OpenSSH public key to install (`Ssh` only). If absent, the operator generates an ed25519
    /// key pair and writes the private key to the Secret `<name>-ssh-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( .*)?$')").message("sshPublicKey must be an OpenSSH public key (ssh-ed25519, ssh-rsa or ecdsa)"))]
    pub ssh_public_key: Option<String>,

    /// EC2 instance type.
    #[serde(default = "default_instance_type")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z][a-z0-9-]*[.][a-z0-9]+$')").message("instanceType must be an EC2 instance type such as t4g.nano"))]
    pub instance_type: String,

    /// Lifetime of the instance, such as `8h` or `30m`; it is terminated at `status.expiresAt`.
    /// Changing it starts a new period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) > duration('0s')").message("ttl must be a positive duration such as 8h, 90m or 1h30m"))]
    pub ttl: Option<String>,

    /// `changePolicy`, `approvedPlan` and `management`: whether and when the plan is applied.
    #[serde(flatten)]
    pub controls: PlanControls,
}

/// A CIDR block.
pub type CidrBlock = String;

/// The widest IPv4 entry of `allowedCidrs`: a /24 (256 addresses). Security scanners call a public
/// range wider than /24 open to a port "wide open" (Prowler's
/// `ec2_securitygroup_allow_wide_open_public_ipv4`); the addresses people connect from (an
/// office's or a VPN's egress) fit in one.
pub const SSH_MIN_PREFIX_V4: u8 = 24;
/// The widest IPv6 entry of `allowedCidrs`: a /56, what an ISP assigns one subscriber (RIPE-690);
/// wider ranges hold many subscribers' networks.
pub const SSH_MIN_PREFIX_V6: u8 = 56;
/// The most IPv4 addresses all of `allowedCidrs` together may admit to port 22: one /24's worth.
/// The property is about who can reach the port, not how the ranges are spelled, so what is too
/// wide as one range is too wide as many (`0.0.0.0/1` and `128.0.0.0/1` are the whole internet).
/// The API server cannot compute a union; the operator checks it before any AWS call.
pub const SSH_MAX_ADDRESSES_V4: u128 = 1 << (32 - SSH_MIN_PREFIX_V4);
/// The most IPv6 addresses all of `allowedCidrs` together may admit: one /56's worth.
pub const SSH_MAX_ADDRESSES_V6: u128 = 1 << (128 - SSH_MIN_PREFIX_V6);

fn default_instance_type() -> String {
    "t4g.nano".into()
}

/// How people reach the bastion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum BastionAccess {
    /// Session Manager port forwarding; no inbound port at all.
    #[default]
    Ssm,
    /// SSH to a public instance from `allowedCidrs` only.
    Ssh,
}

/// What the operator observed of the bastion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BastionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// EC2 instance ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Public IP (`Ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Private IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// The bastion's security group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group_id: Option<String>,
    /// Secret holding the generated SSH private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_name: Option<String>,
    /// When the instance is terminated (`spec.ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// A ready-to-paste command forwarding local port 5432 to the Stack's Database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_command: Option<String>,
    /// What the operator would change in AWS, in order; empty when AWS matches the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStatus>,
}

/// The `Ready` reason of a Bastion whose TTL ended.
pub const BASTION_EXPIRED: &str = "Expired";

impl Bastion {
    /// Whether the Bastion's security group is admitted to its Stack's Databases: not once its TTL
    /// ended (the instance is terminated, and nothing may reach the database through that group).
    /// Read from its status alone, so that the Database needs nothing of the Bastion's code.
    pub fn grants_database_access(&self) -> bool {
        let Some(status) = self.status.as_ref() else { return true };
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let expired_reason = ready.is_some_and(|c| c.reason == BASTION_EXPIRED);
        let past_expiry = status.expires_at.as_ref().is_some_and(|t| t.0 <= k8s_openapi::jiff::Timestamp::now());
        !(expired_reason || past_expiry)
    }
}
