//! The operator's resources as the inventory keeps them and the plans read them: only what the
//! plans compare, converted once from the SDK's shapes (`convert.rs`).

use std::collections::BTreeSet;

pub use aws_sdk_apigatewayv2::types::VpcLinkStatus;
pub use aws_sdk_ec2::types::InstanceStateName;
pub use aws_sdk_ec2::types::NatGatewayState;
/// A VPC endpoint's state (the SDK names it only `State`).
pub use aws_sdk_ec2::types::State as EndpointState;
pub use aws_sdk_kms::types::KeyState;

use crate::aws::tags::Tags;

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
    /// A network interface (a NAT instance's).
    Interface(String),
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
    /// The network interface it is associated with (a NAT gateway's, a NAT instance's).
    pub network_interface_id: Option<String>,
    pub tags: Tags,
}

/// An EC2 instance the operator launched (a Stack's NAT instance; a Bastion's is listed too, and
/// read by the Bastion directly).
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub id: String,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub state: InstanceStateName,
    pub instance_type: String,
    pub image_id: Option<String>,
    /// Its primary network interface: what routes through it name.
    pub network_interface_id: Option<String>,
    /// EC2's source/destination check, which a NAT instance must have off.
    pub source_dest_check: Option<bool>,
    pub key_name: Option<String>,
    pub security_groups: BTreeSet<String>,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NatGateway {
    pub id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub state: NatGatewayState,
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
    pub state: EndpointState,
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
    pub status: VpcLinkStatus,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KmsKey {
    pub key_id: String,
    pub arn: String,
    /// Asked once per key (DescribeKey), then kept up to date from the operator's own changes.
    pub state: Option<KeyState>,
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

/// What RDS reports about the instance; the `pending_*` values are changes RDS accepted but has
/// not applied yet, which must not be asked for again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedInstance {
    pub identifier: String,
    pub arn: Option<String>,
    pub status: DbInstanceStatus,
    pub endpoint: Option<(String, i32)>,
    pub publicly_accessible: bool,
    pub storage_encrypted: bool,
    pub kms_key_id: Option<String>,
    pub security_groups: Vec<String>,
    pub subnet_group: Option<String>,
    pub deletion_protection: bool,
    pub class: String,
    pub storage_gib: i32,
    pub multi_az: bool,
    pub backup_days: i32,
    pub engine_version: String,
    pub pending_class: Option<String>,
    pub pending_storage_gib: Option<i32>,
    pub pending_multi_az: Option<bool>,
    pub pending_backup_days: Option<i32>,
    pub pending_engine_version: Option<String>,
    pub tags: Tags,
}

/// How far along RDS is with a DB instance: the phases the Database tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbPhase {
    /// Usable, and changes can be made.
    Available,
    /// RDS is working on it (creating, modifying, backing up, ...): look again soon.
    Busy,
    /// Being deleted.
    Deleting,
    /// RDS cannot go on without a person (`failed`, `storage-full`, lost KMS access, ...).
    Broken,
}

/// A DB instance's status: RDS words it as a string (the SDK has no enum for it), parsed once into
/// the phase the Database acts on; the word is kept for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbInstanceStatus {
    pub phase: DbPhase,
    word: String,
}

impl From<&str> for DbInstanceStatus {
    fn from(word: &str) -> Self {
        let phase = match word {
            "available" => DbPhase::Available,
            "deleting" => DbPhase::Deleting,
            "failed"
            | "inaccessible-encryption-credentials"
            | "inaccessible-encryption-credentials-recoverable"
            | "incompatible-network"
            | "incompatible-option-group"
            | "incompatible-parameters"
            | "incompatible-restore"
            | "insufficient-capacity"
            | "restore-error"
            | "storage-full"
            | "stopped" => DbPhase::Broken,
            // Every other status, and one newer than this list, is RDS at work: look again soon.
            _ => DbPhase::Busy,
        };
        DbInstanceStatus { phase, word: word.to_string() }
    }
}

impl Default for DbInstanceStatus {
    /// No status reported: RDS at work.
    fn default() -> Self {
        DbInstanceStatus::from("")
    }
}

impl std::fmt::Display for DbInstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.word)
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

/// Where an EC2 resource that is deleted asynchronously (a NAT gateway, a VPC endpoint) is in its
/// life, as the plans read it.
pub trait Lifecycle {
    /// Gone for good: it no longer holds what it sat in, and another may take its place.
    fn is_gone(&self) -> bool;
    fn is_deleting(&self) -> bool;
    /// Gone, or on its way.
    fn is_going(&self) -> bool {
        self.is_deleting() || self.is_gone()
    }
}

impl Lifecycle for NatGatewayState {
    fn is_gone(&self) -> bool {
        match self {
            Self::Deleted | Self::Failed => true,
            Self::Available | Self::Deleting | Self::Pending => false,
            // A state newer than the SDK counts as present: the plans then wait, never leak.
            _ => false,
        }
    }
    fn is_deleting(&self) -> bool {
        *self == Self::Deleting
    }
}

impl Lifecycle for InstanceStateName {
    fn is_gone(&self) -> bool {
        *self == Self::Terminated
    }
    fn is_deleting(&self) -> bool {
        *self == Self::ShuttingDown
    }
}

impl Lifecycle for EndpointState {
    fn is_gone(&self) -> bool {
        match self {
            Self::Deleted | Self::Failed | Self::Rejected | Self::Expired => true,
            Self::Available | Self::Deleting | Self::Partial | Self::Pending | Self::PendingAcceptance => false,
            // A state newer than the SDK counts as present: the plans then wait, never leak.
            _ => false,
        }
    }
    fn is_deleting(&self) -> bool {
        *self == Self::Deleting
    }
}

impl VpcLink {
    /// Neither being deleted nor unusable for good: the one to keep if it is the Stack's.
    pub fn is_alive(&self) -> bool {
        match self.status {
            VpcLinkStatus::Deleting | VpcLinkStatus::Failed | VpcLinkStatus::Inactive => false,
            VpcLinkStatus::Available | VpcLinkStatus::Pending => true,
            // A status newer than the SDK counts as alive: the plans then wait, never leak.
            _ => true,
        }
    }
}

impl KmsKey {
    /// Scheduled for deletion: no longer usable, and nothing more to do to delete it.
    pub fn is_pending_deletion(&self) -> bool {
        self.state == Some(KeyState::PendingDeletion)
    }
}

/// A state as AWS words it, parsed into the SDK's enum whatever its case: EC2 answers VPC endpoint
/// states in lowercase (`available`) where the SDK's model has `Available`, so the SDK's own parse
/// would make every one `Unknown` (aws/aws-sdk#360). A state the SDK does not know stays `Unknown`.
pub fn parse_state<T: for<'a> From<&'a str>>(raw: &str, known: &[&str]) -> T {
    T::from(known.iter().find(|k| k.eq_ignore_ascii_case(raw)).copied().unwrap_or(raw))
}
