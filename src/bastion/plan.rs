//! The Bastion's pure logic: deterministic AWS names, where the instance goes (from the Stack's
//! status and the access mode), the exact ingress of its security group, the image's architecture,
//! the TTL period, the idempotency token and the tunnel command. No I/O, so it is unit-tested here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::account_link::template::{MANAGED_BY_TAG, MANAGED_BY_VALUE, OWNER_TAG, OWNER_UID_TAG};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::api::{
    BastionAccess, NatGateways, NetworkPattern, SSH_MAX_ADDRESSES_V4, SSH_MAX_ADDRESSES_V6, Stack, SubnetTier,
};
pub use crate::aws::image::{Arch, image_annotation, pinned_image};
use crate::aws::inventory::{Rule, Source};
use crate::aws::tags::Tags;
use crate::error::Error;
pub use aws_sdk_ec2::types::InstanceStateName;

mod changes;
pub use changes::*;

/// SSH's port: the only one a bastion's group ever opens, and only for `Ssh`.
pub const SSH_PORT: i32 = 22;
/// PostgreSQL's port, forwarded by the tunnel command.
pub const DB_PORT: i32 = 5432;
/// IAM limits role names to 64 characters (instance profiles to 128).
const MAX_IAM_NAME: usize = 64;
/// The inline policy on the bastion's role.
pub const ROLE_POLICY_NAME: &str = "SessionManagerAgent";
/// Records the image chosen for the bastion (`<architecture>:<ami>`), so a replacement instance
/// boots the same image rather than whatever is newest that day.
pub const IMAGE_ANNOTATION: &str = "tinystacks.io/image";
/// Records the TTL period in force (`<ttl>@<start>`): a change of `spec.ttl` starts a new one.
pub const PERIOD_ANNOTATION: &str = "tinystacks.io/ttl-period";
/// Shown in the tunnel command while the Stack has no Database with an endpoint.
pub const DB_PLACEHOLDER: &str = "<database-endpoint>";

/// How the names of a Bastion's role, instance profile, security group and key pairs begin.
pub const NAME_PREFIX: &str = "bastion-";

/// The names of everything the operator creates for one Bastion. They end in the object's UID, so
/// a Bastion re-created under the same name never adopts what a predecessor left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Security group, IAM role, instance profile, and the prefix of key pair names.
    pub base: String,
    /// The Kubernetes Secret holding a generated private key.
    pub key_secret: String,
    /// The `Name` tag: readable in the AWS console.
    pub display: String,
}

impl Names {
    pub fn new(namespace: &str, stack: &str, name: &str, uid: &str) -> Self {
        let uid_part: String = uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>();
        let uid_part = uid_part.to_ascii_lowercase();
        let mut readable = String::new();
        for c in format!("{namespace}-{stack}-{name}").chars() {
            let c = if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' };
            if !(c == '-' && (readable.is_empty() || readable.ends_with('-'))) {
                readable.push(c);
            }
        }
        readable.truncate(MAX_IAM_NAME - NAME_PREFIX.len() - uid_part.len() - 1);
        let readable = readable.trim_end_matches('-');
        Self {
            base: format!("{NAME_PREFIX}{readable}-{uid_part}"),
            key_secret: format!("{name}-ssh-key"),
            display: format!("{namespace}/{stack}/{name}"),
        }
    }

    /// The EC2 key pair for a public key: a new key is a new name, so changing the key imports it
    /// and replaces the instance instead of editing a key pair in place (EC2 cannot).
    pub fn key_pair(&self, public_key: &str) -> String {
        format!("{}-{:08x}", self.base, fnv1a(normalized_public_key(public_key).as_bytes()) as u32)
    }
}

/// `<type> <base64>` of an OpenSSH public key, without its comment.
pub fn normalized_public_key(key: &str) -> String {
    key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// 64-bit FNV-1a: stable across Rust releases, which names and tokens must be.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The `tinystacks.io/owner` value of a Bastion.
pub fn owner(namespace: &str, name: &str) -> String {
    format!("Bastion/{namespace}/{name}")
}

/// The tags of everything created for the Bastion; the Stack's extra tags too, the operator's own
/// keys winning.
pub fn tags(
    namespace: &str,
    name: &str,
    uid: &str,
    display: &str,
    stack_tags: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut tags = vec![
        (MANAGED_BY_TAG.to_string(), MANAGED_BY_VALUE.to_string()),
        (OWNER_TAG.to_string(), owner(namespace, name)),
        (OWNER_UID_TAG.to_string(), uid.to_string()),
        ("Name".to_string(), display.to_string()),
    ];
    for (k, v) in stack_tags {
        if !tags.iter().any(|(key, _)| key == k) {
            tags.push((k.clone(), v.clone()));
        }
    }
    tags
}

/// Whether a resource found under one of the Bastion's names is its own: made by this operator for
/// this very object.
pub fn ours(tags: &Tags, uid: &str) -> bool {
    claimed_by_other(tags, uid).is_none()
}

/// Why a resource under one of the Bastion's names is not its own, for `NameTaken`.
pub fn claimed_by_other(tags: &Tags, uid: &str) -> Option<String> {
    crate::aws::ownership::claimed_by_other(tags, uid)
}

/// Where the instance goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub vpc_id: String,
    /// The subnet a new instance goes into.
    pub subnet_id: String,
    /// Every subnet of that tier: an instance in any of them is placed right.
    pub tier_subnets: BTreeSet<String>,
    pub tier: SubnetTier,
    /// Whether the instance gets a public IP.
    pub public_ip: bool,
}

/// Why there is no placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoPlacement {
    /// `Ssh` on a `PrivateIsolated` stack: a person's mistake.
    SshNeedsPublicSubnet,
    /// The Stack's status does not list these parts yet: the Bastion waits for them.
    Incomplete(Vec<String>),
}

/// Ssm: the private side, reached through NAT (`PublicPrivate`) or the stack's SSM endpoints
/// (`PrivateIsolated`); with no NAT gateway, a public subnet and a public IP, still without any
/// inbound rule. Ssh: a public subnet and a public IP. Only the VPC and the subnet are needed of
/// the Stack's status: the instance starts while the NAT or the endpoints are still being made
/// (its SSM agent registers once they are).
pub fn placement(stack: &Stack, access: BastionAccess) -> Result<Placement, NoPlacement> {
    let pattern = stack.spec.network.pattern;
    let (tier, public_ip) = match (access, pattern) {
        (BastionAccess::Ssh, NetworkPattern::PrivateIsolated) => return Err(NoPlacement::SshNeedsPublicSubnet),
        (BastionAccess::Ssh, NetworkPattern::PublicPrivate) => (SubnetTier::Public, true),
        (BastionAccess::Ssm, NetworkPattern::PrivateIsolated) => (SubnetTier::Private, false),
        (BastionAccess::Ssm, NetworkPattern::PublicPrivate) => match stack.spec.network.nat_gateways() {
            NatGateways::None => (SubnetTier::Public, true),
            _ => (SubnetTier::Private, false),
        },
    };
    let status = stack.status.clone().unwrap_or_default();
    let mut subnets: Vec<_> = status.subnets.iter().filter(|s| s.tier == tier).collect();
    subnets.sort_by(|a, b| (&a.availability_zone, &a.id).cmp(&(&b.availability_zone, &b.id)));
    let (Some(vpc_id), Some(first)) = (status.vpc_id.clone(), subnets.first()) else {
        let missing = [
            status.vpc_id.is_none().then(|| "its VPC (vpcId)".to_string()),
            subnets.is_empty().then(|| format!("a {tier:?} subnet (subnets)")),
        ];
        return Err(NoPlacement::Incomplete(missing.into_iter().flatten().collect()));
    };
    Ok(Placement {
        vpc_id,
        subnet_id: first.id.clone(),
        tier_subnets: subnets.iter().map(|s| s.id.clone()).collect(),
        tier,
        public_ip,
    })
}

/// The ingress the bastion's group must have, exactly: nothing for `Ssm`; 22 from each allowed
/// CIDR for `Ssh`.
pub fn desired_ingress(access: BastionAccess, allowed: &[String]) -> BTreeSet<Rule> {
    if access == BastionAccess::Ssm {
        return BTreeSet::new();
    }
    allowed
        .iter()
        .map(|c| {
            let source = if c.contains(':') { Source::CidrV6(c.clone()) } else { Source::Cidr(c.clone()) };
            Rule { protocol: "tcp".into(), from: Some(SSH_PORT), to: Some(SSH_PORT), source }
        })
        .collect()
}

/// Refuses `allowedCidrs` whose union admits more addresses than an allow-list may
/// (`SSH_MAX_ADDRESSES_V4`, `SSH_MAX_ADDRESSES_V6`): the exact union, overlaps counted once, so
/// that ranges split to pass the per-entry bound at admission (`0.0.0.0/1` and `128.0.0.0/1`) are
/// refused as what they are together. Entries that do not parse are left to the API server's rule.
pub fn check_allowed_cidrs(allowed: &[String]) -> Result<(), Error> {
    let nets: Vec<IpNet> = allowed.iter().filter_map(|c| c.parse().ok()).collect();
    let v4: Vec<Ipv4Net> = nets.iter().filter_map(|n| if let IpNet::V4(n) = n { Some(*n) } else { None }).collect();
    let v6: Vec<Ipv6Net> = nets.iter().filter_map(|n| if let IpNet::V6(n) = n { Some(*n) } else { None }).collect();
    // Aggregated networks are disjoint, so their sizes add up to the union's.
    let size = |bits: u32, prefix: u8| 1u128.checked_shl(bits - u32::from(prefix)).unwrap_or(u128::MAX);
    let admitted_v4: u128 = Ipv4Net::aggregate(&v4).iter().map(|n| size(32, n.prefix_len())).sum();
    let admitted_v6 =
        Ipv6Net::aggregate(&v6).iter().map(|n| size(128, n.prefix_len())).fold(0u128, u128::saturating_add);
    if admitted_v4 > SSH_MAX_ADDRESSES_V4 {
        return Err(Error::AllowedCidrsTooWide {
            admitted: format!("{admitted_v4} IPv4 addresses"),
            limit: format!("at most {SSH_MAX_ADDRESSES_V4}, one /24"),
        });
    }
    if admitted_v6 > SSH_MAX_ADDRESSES_V6 {
        let networks = admitted_v6 / SSH_MAX_ADDRESSES_V6;
        return Err(Error::AllowedCidrsTooWide {
            admitted: format!("IPv6 ranges the size of {networks} /56 networks"),
            limit: "at most one /56".into(),
        });
    }
    Ok(())
}

pub use crate::aws::security_group::describe_rule;

/// An idempotency token for RunInstances: the same for a retry after a crash, different once an
/// instance it could answer with (`previous`: the one status knew, and every terminated one of
/// this Bastion still listed) is gone, so that a replacement is really launched.
pub fn client_token(uid: &str, previous: &BTreeSet<String>) -> String {
    let mut input = format!("{uid}|instance");
    for id in previous {
        input.push('|');
        input.push_str(id);
    }
    let second = input.bytes().fold(0x8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("ts-{:016x}{second:016x}", fnv1a(input.as_bytes()))
}

/// `8h`, `90m`, `1h30m`, `20s` (the forms the API's CEL rule admits).
pub fn parse_ttl(ttl: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in ttl.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        total = total.checked_add(n.checked_mul(match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        })?)?;
    }
    (number.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

/// The TTL period in force: the `ttl` it was started for and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    pub ttl: String,
    pub start: Timestamp,
}

impl Period {
    pub fn parse(annotation: &str) -> Option<Self> {
        let (ttl, start) = annotation.split_once('@')?;
        Some(Self { ttl: ttl.to_string(), start: start.parse().ok()? })
    }

    pub fn annotation(&self) -> String {
        format!("{}@{}", self.ttl, self.start)
    }

    /// When the period ends.
    pub fn expires_at(&self) -> Option<Timestamp> {
        let ttl = parse_ttl(&self.ttl)?;
        self.start.checked_add(SignedDuration::try_from(ttl).ok()?).ok()
    }
}

/// The period for `ttl`: the recorded one if it was started for this very `ttl`, else a new one
/// from `now` (`true`: it must be recorded).
pub fn period(ttl: &str, recorded: Option<&str>, now: Timestamp) -> (Period, bool) {
    match recorded.and_then(Period::parse) {
        Some(p) if p.ttl == ttl => (p, false),
        _ => (Period { ttl: ttl.to_string(), start: now }, true),
    }
}

/// What a person pastes to forward local port 5432 to the database.
pub fn tunnel_command(
    access: BastionAccess,
    db_host: &str,
    instance_id: &str,
    public_ip: Option<&str>,
    key_file: &str,
    region: &str,
) -> String {
    match access {
        BastionAccess::Ssh => format!(
            "ssh -i {key_file} -N -L {DB_PORT}:{db_host}:{DB_PORT} ec2-user@{}",
            public_ip.unwrap_or("<public-ip>")
        ),
        BastionAccess::Ssm => format!(
            "aws ssm start-session --target {instance_id} --document-name AWS-StartPortForwardingSessionToRemoteHost --parameters host={db_host},portNumber={DB_PORT},localPortNumber={DB_PORT} --region {region}"
        ),
    }
}

/// What EC2 reports about one of the Bastion's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedInstance {
    pub id: String,
    pub state: InstanceStateName,
    pub subnet_id: Option<String>,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub key_name: Option<String>,
    pub instance_type: String,
    pub image_id: Option<String>,
    pub security_groups: BTreeSet<String>,
    pub profile_arn: Option<String>,
    /// For picking the one to keep among duplicates: the oldest.
    pub launch_time: Option<i64>,
}

impl ObservedInstance {
    /// An instance just launched, as RunInstances leaves it before EC2 reports more.
    pub fn launched(id: String) -> Self {
        ObservedInstance {
            id,
            state: InstanceStateName::Pending,
            subnet_id: None,
            public_ip: None,
            private_ip: None,
            key_name: None,
            instance_type: String::new(),
            image_id: None,
            security_groups: BTreeSet::new(),
            profile_arn: None,
            launch_time: None,
        }
    }

    /// Gone, or on its way: a replacement may be launched.
    pub fn is_gone(&self) -> bool {
        match self.state {
            InstanceStateName::ShuttingDown | InstanceStateName::Terminated => true,
            InstanceStateName::Pending
            | InstanceStateName::Running
            | InstanceStateName::Stopping
            | InstanceStateName::Stopped => false,
            // A state newer than the SDK counts as present: it is waited for, never doubled.
            _ => false,
        }
    }
}

/// What the instance must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredInstance {
    pub instance_type: String,
    pub key_name: Option<String>,
    pub security_group: String,
    pub profile_arn: String,
}

/// Why a live instance must be replaced, if it must: bastions hold no state, so a replacement is the
/// simplest repair of any difference.
pub fn replacement_reason(
    observed: &ObservedInstance,
    desired: &DesiredInstance,
    placement: &Placement,
) -> Option<String> {
    let mut why = Vec::new();
    if matches!(observed.state, InstanceStateName::Stopping | InstanceStateName::Stopped) {
        why.push(format!("it is {}", observed.state));
    }
    if !observed.subnet_id.as_ref().is_some_and(|s| placement.tier_subnets.contains(s)) {
        why.push(format!("its subnet {:?} is not one of the stack's {:?} subnets", observed.subnet_id, placement.tier));
    }
    // A pending instance may not have its public IP yet.
    if observed.state == InstanceStateName::Running && observed.public_ip.is_some() != placement.public_ip {
        why.push(if placement.public_ip { "it has no public IP".into() } else { "it has a public IP".into() });
    }
    if observed.instance_type != desired.instance_type {
        why.push(format!("its type is {} instead of {}", observed.instance_type, desired.instance_type));
    }
    if observed.key_name != desired.key_name {
        why.push(format!("its key pair is {:?} instead of {:?}", observed.key_name, desired.key_name));
    }
    if observed.security_groups != BTreeSet::from([desired.security_group.clone()]) {
        why.push(format!(
            "its security groups are [{}] instead of only {}",
            observed.security_groups.iter().cloned().collect::<Vec<_>>().join(", "),
            desired.security_group
        ));
    }
    // IAM reports profile ARNs with the path; compare by the trailing name.
    let name = |arn: &str| arn.rsplit('/').next().unwrap_or_default().to_string();
    if observed.profile_arn.as_deref().map(name) != Some(name(&desired.profile_arn)) {
        why.push(format!("its instance profile is {:?}", observed.profile_arn));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Which of several live instances to keep: the one status knows, else the oldest.
pub fn keeper<'a>(live: &[&'a ObservedInstance], known: Option<&str>) -> Option<&'a ObservedInstance> {
    if let Some(found) = live.iter().find(|i| Some(i.id.as_str()) == known) {
        return Some(found);
    }
    live.iter().min_by_key(|i| (i.launch_time.unwrap_or(i64::MAX), i.id.clone())).copied()
}

/// The trust policy of the bastion's role: EC2 only.
pub fn trust_policy() -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }],
    })
    .to_string()
}

/// The inline policy of the bastion's role: the Session Manager agent's calls (the actions of the
/// AWS managed policy `AmazonSSMManagedInstanceCore`), which the link's boundary also caps.
pub fn role_policy() -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "SessionManagerAgent",
            "Effect": "Allow",
            "Action": crate::account_link::template::BASTION_BOUNDARY_ACTIONS,
            "Resource": "*",
        }],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StackSpec;

    fn stack(pattern: &str, nat: Option<&str>) -> Stack {
        let mut network = serde_json::json!({"pattern": pattern});
        if let Some(n) = nat {
            network["natGateways"] = n.into();
        }
        let spec: StackSpec =
            serde_json::from_value(serde_json::json!({"accountLinkRef": {"name": "l"}, "network": network})).unwrap();
        let mut stack = Stack::new("web", spec);
        stack.status = Some(
            serde_json::from_value(serde_json::json!({
                "vpcId": "vpc-1",
                "subnets": [
                    {"id": "subnet-pub-b", "tier": "Public", "availabilityZone": "us-east-1b", "cidr": "10.0.1.0/24"},
                    {"id": "subnet-pub-a", "tier": "Public", "availabilityZone": "us-east-1a", "cidr": "10.0.0.0/24"},
                    {"id": "subnet-priv-a", "tier": "Private", "availabilityZone": "us-east-1a", "cidr": "10.0.2.0/24"},
                    {"id": "subnet-iso-a", "tier": "Isolated", "availabilityZone": "us-east-1a", "cidr": "10.0.3.0/24"},
                ],
            }))
            .unwrap(),
        );
        stack
    }

    #[test]
    fn placement_follows_access_pattern_and_nat() {
        let p = placement(&stack("PublicPrivate", None), BastionAccess::Ssm).unwrap();
        assert_eq!((p.subnet_id.as_str(), p.public_ip), ("subnet-priv-a", false));
        let p = placement(&stack("PublicPrivate", Some("None")), BastionAccess::Ssm).unwrap();
        assert_eq!((p.subnet_id.as_str(), p.public_ip), ("subnet-pub-a", true));
        let p = placement(&stack("PublicPrivate", None), BastionAccess::Ssh).unwrap();
        assert_eq!((p.subnet_id.as_str(), p.public_ip), ("subnet-pub-a", true));
        assert_eq!(p.tier_subnets.len(), 2);
        let p = placement(&stack("PrivateIsolated", None), BastionAccess::Ssm).unwrap();
        assert_eq!((p.subnet_id.as_str(), p.public_ip), ("subnet-priv-a", false));
        assert_eq!(
            placement(&stack("PrivateIsolated", None), BastionAccess::Ssh),
            Err(NoPlacement::SshNeedsPublicSubnet)
        );
    }

    #[test]
    fn placement_needs_only_the_vpc_and_a_subnet_of_its_tier() {
        // The Stack still making its NAT gateway (no natGatewayIds, not Ready): enough.
        let p = placement(&stack("PublicPrivate", None), BastionAccess::Ssm).unwrap();
        assert_eq!(p.vpc_id, "vpc-1");
        let mut no_private = stack("PublicPrivate", None);
        if let Some(s) = no_private.status.as_mut() {
            s.subnets.retain(|s| s.tier != SubnetTier::Private);
        }
        let Err(NoPlacement::Incomplete(missing)) = placement(&no_private, BastionAccess::Ssm) else {
            panic!("placed without a private subnet")
        };
        assert_eq!(missing, ["a Private subnet (subnets)"]);
        let mut nothing = stack("PublicPrivate", None);
        nothing.status = None;
        let Err(NoPlacement::Incomplete(missing)) = placement(&nothing, BastionAccess::Ssh) else {
            panic!("placed without a status")
        };
        assert_eq!(missing, ["its VPC (vpcId)", "a Public subnet (subnets)"]);
    }

    #[test]
    fn names_fit_iam_and_end_in_the_uid() {
        let n = Names::new(&"n".repeat(63), &"s".repeat(63), &"b".repeat(63), "0b6a4c8e-1f2d-4e5a");
        assert!(n.base.len() <= 64, "{}", n.base);
        assert!(n.base.starts_with("bastion-n") && n.base.ends_with("-0b6a4c8e"), "{}", n.base);
        let n = Names::new("team-a", "web", "ops", "ABCDEF12-3456");
        assert_eq!(n.base, "bastion-team-a-web-ops-abcdef12");
        assert_eq!(n.key_secret, "ops-ssh-key");
        let a = n.key_pair("ssh-ed25519 AAAAC3Nza me@laptop");
        assert_eq!(a, n.key_pair("ssh-ed25519 AAAAC3Nza other comment"), "the comment does not count");
        assert_ne!(a, n.key_pair("ssh-ed25519 AAAAC3Nzb"));
    }

    #[test]
    fn architecture_from_the_instance_type() {
        for t in ["t4g.nano", "m7g.large", "c7gn.xlarge", "r6gd.large", "g5g.xlarge", "a1.medium", "im4gn.large"] {
            assert_eq!(Arch::of(t), Arch::Arm64, "{t}");
        }
        for t in ["t3.micro", "m5.large", "g4dn.xlarge", "c6i.large", "p4d.24xlarge", "t3a.nano"] {
            assert_eq!(Arch::of(t), Arch::X86_64, "{t}");
        }
        assert_eq!(
            Arch::Arm64.image_parameter(),
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
        );
        assert_eq!(pinned_image(Some("arm64:ami-1"), Arch::Arm64).as_deref(), Some("ami-1"));
        assert_eq!(pinned_image(Some("arm64:ami-1"), Arch::X86_64), None);
    }

    #[test]
    fn ingress_is_nothing_for_ssm_and_22_from_the_cidrs_for_ssh() {
        let cidrs = vec!["203.0.113.0/24".to_string(), "2001:db8::/32".to_string()];
        assert!(desired_ingress(BastionAccess::Ssm, &cidrs).is_empty());
        let rules = desired_ingress(BastionAccess::Ssh, &cidrs);
        assert_eq!(rules.len(), 2);
        assert!(rules.iter().all(|r| r.from == Some(22) && r.to == Some(22) && r.protocol == "tcp"));
        assert!(rules.iter().any(|r| r.source == Source::CidrV6("2001:db8::/32".into())));
    }

    #[test]
    fn ttl_periods_restart_when_the_ttl_changes() {
        assert_eq!(parse_ttl("8h"), Some(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_ttl("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_ttl(""), None);
        assert_eq!(parse_ttl("5"), None);
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let (p, new) = period("8h", None, t0);
        assert!(new);
        let recorded = p.annotation();
        assert_eq!(period("8h", Some(&recorded), t1), (p.clone(), false));
        assert_eq!(p.expires_at().map(|t| t.to_string()).as_deref(), Some("2026-01-01T08:00:00Z"));
        let (q, new) = period("2h", Some(&recorded), t1);
        assert!(new);
        assert_eq!(q.start, t1);
    }

    #[test]
    fn tokens_change_when_a_previous_instance_is_gone() {
        let none = client_token("uid", &BTreeSet::new());
        assert_eq!(none, client_token("uid", &BTreeSet::new()));
        assert_ne!(none, client_token("uid", &BTreeSet::from(["i-1".to_string()])));
        assert_ne!(none, client_token("other", &BTreeSet::new()));
        assert!(none.len() <= 64);
    }

    #[test]
    fn tunnel_commands() {
        let ssh = tunnel_command(BastionAccess::Ssh, "db.example", "i-1", Some("198.51.100.7"), "ops.pem", "us-east-1");
        assert_eq!(ssh, "ssh -i ops.pem -N -L 5432:db.example:5432 ec2-user@198.51.100.7");
        let ssm = tunnel_command(BastionAccess::Ssm, "db.example", "i-1", None, "", "eu-west-1");
        assert!(ssm.starts_with(
            "aws ssm start-session --target i-1 --document-name AWS-StartPortForwardingSessionToRemoteHost"
        ));
        assert!(ssm.contains("host=db.example,portNumber=5432,localPortNumber=5432 --region eu-west-1"));
    }

    #[test]
    fn instances_differing_from_the_spec_are_replaced() {
        let placement = placement(&stack("PublicPrivate", None), BastionAccess::Ssh).unwrap();
        let desired = DesiredInstance {
            instance_type: "t4g.nano".into(),
            key_name: Some("k".into()),
            security_group: "sg-1".into(),
            profile_arn: "arn:aws:iam::1:instance-profile/tinystacks/p".into(),
        };
        let ok = ObservedInstance {
            id: "i-1".into(),
            state: InstanceStateName::Running,
            subnet_id: Some("subnet-pub-b".into()),
            public_ip: Some("198.51.100.7".into()),
            key_name: Some("k".into()),
            instance_type: "t4g.nano".into(),
            security_groups: BTreeSet::from(["sg-1".to_string()]),
            profile_arn: Some("arn:aws:iam::1:instance-profile/tinystacks/p".into()),
            ..ObservedInstance::launched("i-1".into())
        };
        assert_eq!(replacement_reason(&ok, &desired, &placement), None);
        let private = ObservedInstance { subnet_id: Some("subnet-priv-a".into()), public_ip: None, ..ok.clone() };
        assert!(replacement_reason(&private, &desired, &placement).is_some());
        let extra_group = ObservedInstance { security_groups: BTreeSet::from(["sg-1".into(), "sg-2".into()]), ..ok };
        assert!(replacement_reason(&extra_group, &desired, &placement).unwrap().contains("sg-2"));
    }

    #[test]
    fn allowed_cidrs_are_refused_when_their_union_is_too_wide() {
        let check = |cidrs: &[&str]| check_allowed_cidrs(&cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        // The whole internet, split so that no single entry is /0.
        let split = check(&["0.0.0.0/1", "128.0.0.0/1"]).expect_err("the whole internet");
        assert_eq!(split.reason(), "AllowedCidrsTooWide");
        assert!(split.to_string().contains("4294967296 IPv4 addresses"), "{split}");
        assert!(check(&["::/1", "8000::/1"]).is_err());
        // Each entry narrow enough, together too wide.
        assert!(check(&["203.0.113.0/24", "198.51.100.0/24"]).is_err());
        let v6 = check(&["2001:db8:0:100::/56", "2001:db8:0:200::/56"]).expect_err("two /56");
        assert!(v6.to_string().contains("2 /56 networks"), "{v6}");
        // Overlaps and repeats count once; halves of one /24 are one /24.
        check(&["203.0.113.0/24", "203.0.113.0/25", "203.0.113.7/32", "203.0.113.0/24"]).expect("one /24");
        check(&["203.0.113.0/25", "203.0.113.128/25"]).expect("one /24 in two halves");
        check(&["203.0.113.0/25", "198.51.100.0/26", "192.0.2.10/32"]).expect("under 256 addresses");
        check(&["2001:db8::/57", "2001:db8:1::/64", "203.0.113.0/24"]).expect("each family within its limit");
        check(&["203.0.113.0/24", "203.0.113.0/24 "]).expect("what does not parse is the API server's to refuse");
        assert!(check(&["203.0.113.0/24", "203.0.114.0/32"]).is_err(), "one address over");
        check(&[]).expect("no ranges");
    }

    #[test]
    fn the_admission_rule_says_the_same_prefixes_as_the_operator() {
        let crd = serde_json::to_string(&<crate::api::Bastion as kube::CustomResourceExt>::crd()).expect("CRD");
        let expected = format!("== 4 ? {} : {}", crate::api::SSH_MIN_PREFIX_V4, crate::api::SSH_MIN_PREFIX_V6);
        assert!(crd.contains(&expected), "no rule with {expected}");
        assert_eq!(SSH_MAX_ADDRESSES_V4, 256);
        assert_eq!(SSH_MAX_ADDRESSES_V6, 1u128 << 72);
    }
}
