//! The Database's pure logic: deterministic AWS names, where the instance goes (from the Stack's
//! status), and what differs between the spec and what RDS and EC2 report. No I/O, so the odd
//! cases (long names, version strings, drift) are unit-tested here.

use std::collections::BTreeSet;

use crate::account_link::template::{MANAGED_BY_TAG, MANAGED_BY_VALUE, OWNER_TAG, OWNER_UID_TAG};
use crate::api::{DatabaseSpec, NetworkPattern, Stack, SubnetTier};
use crate::aws::inventory::{Rule, Source};
use crate::aws::tags::Tags;

mod steps;
pub use steps::{
    Change, Desired, ObservedSubnetGroup, RDS_VERSION_TAG, ROTATE_ANNOTATION, Removal, View, guarded_plan, plan,
    teardown,
};

/// PostgreSQL's port; RDS's default for the engine, and the only port the security group opens.
pub const PORT: i32 = 5432;
/// The engine name as RDS and the rotation functions' secret JSON spell it.
pub const ENGINE: &str = "postgres";
/// RDS limits DB instance identifiers to 63 characters.
const MAX_IDENTIFIER: usize = 63;

/// The names of everything the operator creates for one Database. Deterministic, so that a
/// restart after any crash finds what an earlier run created instead of creating it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// DB instance identifier; also the name of the subnet group and of the security group.
    pub instance: String,
    /// `tinystacks/<namespace>/<stack>/<database>` (API.md).
    pub secret: String,
    /// The final snapshot of the `Snapshot` policy: unique per object, so that a Database re-created
    /// under the same name never collides with the snapshot its predecessor left.
    pub final_snapshot: String,
    /// The Kubernetes Secret for `envFrom`.
    pub connection_secret: String,
    /// The `Name` tag: readable in the AWS console.
    pub display: String,
}

impl Names {
    pub fn new(namespace: &str, stack: &str, name: &str, uid: &str, spec: &DatabaseSpec) -> Self {
        let instance = instance_identifier(namespace, stack, name);
        let uid_part: String = uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
        Self {
            final_snapshot: format!("{instance}-final-{}", uid_part.to_ascii_lowercase()),
            instance,
            secret: format!("tinystacks/{namespace}/{stack}/{name}"),
            connection_secret: spec.connection_secret.name.clone().unwrap_or_else(|| format!("{name}-connection")),
            display: format!("{namespace}/{stack}/{name}"),
        }
    }
}

/// The DB instance identifier of a Database: readable (`<namespace>-<stack>-<name>` in RDS's
/// alphabet), cut to fit 63 characters, and always ending in a hash of the exact triple, because
/// different triples can read the same once `.` and `--` are folded (`a-b/c/d` and `a/b-c/d`).
pub fn instance_identifier(namespace: &str, stack: &str, name: &str) -> String {
    let hash = format!("{:08x}", fnv1a(format!("{namespace}/{stack}/{name}").as_bytes()) as u32);
    let mut readable = String::new();
    for c in format!("{namespace}-{stack}-{name}").chars() {
        let c = if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' };
        if !(c == '-' && (readable.is_empty() || readable.ends_with('-'))) {
            readable.push(c);
        }
    }
    // The first character must be a letter; namespaces may start with a digit.
    if !readable.starts_with(|c: char| c.is_ascii_lowercase()) {
        readable.insert_str(0, "db-");
    }
    readable.truncate(MAX_IDENTIFIER - hash.len() - 1);
    let readable = readable.trim_end_matches('-');
    format!("{readable}-{hash}")
}

/// What to change when RDS refuses a CreateDBInstance or ModifyDBInstance as invalid, from the
/// words of its answer: `Cannot find version 16.99 for postgres` names the engine version,
/// `... combination: DBInstanceClass=db.x, Engine=postgres, EngineVersion=16.4 ...` the class;
/// otherwise every spec field the request carries.
pub fn fields_to_change(message: &str) -> String {
    if message.contains("DBInstanceClass") || message.to_ascii_lowercase().contains("instance class") {
        return "set spec.instanceClass to a class RDS offers for this engine version in this region (aws rds describe-orderable-db-instance-options --engine postgres --engine-version <version>)".into();
    }
    if message.to_ascii_lowercase().contains("version") {
        return "set spec.engineVersion to a version RDS offers for postgres in this region (aws rds describe-db-engine-versions --engine postgres)".into();
    }
    "the request carries spec.engineVersion, spec.instanceClass, spec.allocatedStorageGiB, spec.multiAz, spec.backupRetentionDays, spec.databaseName and spec.masterUsername: change the one AWS names".into()
}

/// 64-bit FNV-1a: tiny, and stable across Rust releases (unlike `DefaultHasher`), which a name
/// that must come out the same after an upgrade needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The tags of everything created for the Database (API.md, common to every kind).
pub fn tags(namespace: &str, name: &str, uid: &str, display: &str) -> Vec<(String, String)> {
    vec![
        (MANAGED_BY_TAG.into(), MANAGED_BY_VALUE.into()),
        (OWNER_TAG.into(), owner(namespace, name)),
        (OWNER_UID_TAG.into(), uid.into()),
        ("Name".into(), display.into()),
    ]
}

/// The `tinystacks.io/owner` value of a Database.
pub fn owner(namespace: &str, name: &str) -> String {
    format!("Database/{namespace}/{name}")
}

/// Why a resource found under one of the Database's deterministic names is not its own (`None`
/// when it is): made by this operator for this very object, its UID. What an earlier object of
/// the same name left (deleted with `Retain`), or another install made, is not: adopting it would
/// give this Database someone else's password, network or data.
pub fn claimed_by_other(tags: &Tags, uid: &str) -> Option<String> {
    crate::aws::ownership::claimed_by_other(tags, uid)
}

/// Where the instance goes, read from the Stack's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub vpc_id: String,
    /// The private subnets (`PublicPrivate`) or the isolated ones (`PrivateIsolated`).
    pub subnet_ids: BTreeSet<String>,
    pub app_security_group: String,
    pub kms_key_arn: String,
}

/// The placement from the Stack's status, or the parts still missing from it: the subnets of
/// the private side (at least two, RDS wants two zones; both patterns give two or three), the app
/// security group and the KMS key. Nothing else of the Stack (NAT, endpoints, the VPC Link) is
/// needed, so a Database does not wait for it.
pub fn placement(stack: &Stack) -> Result<Placement, Vec<String>> {
    let status = stack.status.clone().unwrap_or_default();
    let tier = match stack.spec.network.pattern {
        NetworkPattern::PublicPrivate => SubnetTier::Private,
        NetworkPattern::PrivateIsolated => SubnetTier::Isolated,
    };
    let subnet_ids: BTreeSet<String> = status.subnets.iter().filter(|s| s.tier == tier).map(|s| s.id.clone()).collect();
    let mut missing = Vec::new();
    if status.vpc_id.is_none() {
        missing.push("its VPC (vpcId)".to_string());
    }
    if subnet_ids.len() < 2 {
        missing.push(format!("its {tier:?} subnets (subnets: {} of at least 2)", subnet_ids.len()));
    }
    if status.app_security_group_id.is_none() {
        missing.push("its app security group (appSecurityGroupId)".to_string());
    }
    if status.kms_key_arn.is_none() {
        missing.push("its KMS key (kmsKeyArn)".to_string());
    }
    match (status.vpc_id, status.app_security_group_id, status.kms_key_arn) {
        (Some(vpc_id), Some(app_security_group), Some(kms_key_arn)) if missing.is_empty() => {
            Ok(Placement { vpc_id, subnet_ids, app_security_group, kms_key_arn })
        }
        _ => Err(missing),
    }
}

/// The ingress the database's security group must have, exactly: 5432 from the app group and
/// from each Bastion's group.
pub fn desired_ingress<'a>(app_group: &'a str, bastion_groups: impl IntoIterator<Item = &'a str>) -> BTreeSet<Rule> {
    std::iter::once(app_group)
        .chain(bastion_groups)
        .map(|g| Rule { protocol: "tcp".into(), from: Some(PORT), to: Some(PORT), source: Source::Group(g.into()) })
        .collect()
}

/// The rules to revoke and to add so that the group holds exactly `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressChanges {
    pub revoke: Vec<Rule>,
    pub authorize: Vec<Rule>,
}

pub fn ingress_changes(observed: &BTreeSet<Rule>, desired: &BTreeSet<Rule>) -> IngressChanges {
    IngressChanges {
        revoke: observed.difference(desired).cloned().collect(),
        authorize: desired.difference(observed).cloned().collect(),
    }
}

/// Whether a rule is a hole rather than a stale entry: anything that is not a security-group
/// source (a CIDR or prefix list: `0.0.0.0/0` most of all) was never the operator's.
pub fn is_hole(rule: &Rule) -> bool {
    !matches!(rule.source, Source::Group(_))
}

pub use crate::aws::security_group::describe_rule;

/// What the instance should be, from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredInstance {
    pub class: String,
    pub storage_gib: i32,
    pub multi_az: bool,
    pub backup_days: i32,
    pub engine_version: String,
}

impl DesiredInstance {
    pub fn from_spec(spec: &DatabaseSpec) -> Self {
        Self {
            class: spec.instance_class.clone(),
            storage_gib: spec.allocated_storage_gi_b,
            multi_az: spec.multi_az,
            backup_days: spec.backup_retention_days,
            engine_version: spec.engine_version.clone(),
        }
    }
}

/// What RDS reports about the instance: the inventory's view of it (`aws::inventory`).
pub use crate::aws::inventory::ObservedInstance;

/// How far along RDS is with the instance.
pub use crate::aws::inventory::DbPhase as Phase;

/// One ModifyDBInstance call: security repairs (drift) and in-place changes from the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceChanges {
    pub publicly_accessible: Option<bool>,
    pub security_groups: Option<Vec<String>>,
    pub deletion_protection: Option<bool>,
    pub class: Option<String>,
    pub storage_gib: Option<i32>,
    pub multi_az: Option<bool>,
    pub backup_days: Option<i32>,
    pub engine_version: Option<String>,
    pub allow_major_upgrade: bool,
    /// The security holes being closed, for the Warning event.
    pub drift: Vec<String>,
    /// The spec changes being applied, for the Normal event.
    pub updates: Vec<String>,
}

impl InstanceChanges {
    pub fn is_empty(&self) -> bool {
        self.drift.is_empty() && self.updates.is_empty()
    }
}

/// What must change on an available instance, or why the spec cannot be met in place.
pub fn instance_changes(
    desired: &DesiredInstance,
    security_group: &str,
    observed: &ObservedInstance,
) -> Result<InstanceChanges, String> {
    let mut c = InstanceChanges::default();
    if observed.publicly_accessible {
        c.publicly_accessible = Some(false);
        c.drift.push("PubliclyAccessible true → false".into());
    }
    if observed.security_groups != [security_group] {
        c.security_groups = Some(vec![security_group.to_string()]);
        c.drift.push(format!("security groups [{}] → [{security_group}]", observed.security_groups.join(", ")));
    }
    if !observed.deletion_protection {
        c.deletion_protection = Some(true);
        c.drift.push("deletionProtection false → true".into());
    }
    let class = observed.pending_class.as_ref().unwrap_or(&observed.class);
    if *class != desired.class {
        c.class = Some(desired.class.clone());
        c.updates.push(format!("instanceClass {class} → {}", desired.class));
    }
    // Storage only grows (the API's CEL rule); a larger instance than the spec (grown by hand or
    // by RDS storage autoscaling) is left alone.
    let storage = observed.pending_storage_gib.unwrap_or(observed.storage_gib);
    if desired.storage_gib > storage {
        c.storage_gib = Some(desired.storage_gib);
        c.updates.push(format!("allocatedStorageGiB {storage} → {}", desired.storage_gib));
    }
    let multi_az = observed.pending_multi_az.unwrap_or(observed.multi_az);
    if multi_az != desired.multi_az {
        c.multi_az = Some(desired.multi_az);
        c.updates.push(format!("multiAz {multi_az} → {}", desired.multi_az));
    }
    let backup = observed.pending_backup_days.unwrap_or(observed.backup_days);
    if backup != desired.backup_days {
        c.backup_days = Some(desired.backup_days);
        c.updates.push(format!("backupRetentionDays {backup} → {}", desired.backup_days));
    }
    let version = observed.pending_engine_version.as_ref().unwrap_or(&observed.engine_version);
    match version_change(&desired.engine_version, version) {
        VersionChange::None => {}
        VersionChange::Minor => {
            c.engine_version = Some(desired.engine_version.clone());
            c.updates.push(format!("engineVersion {version} → {}", desired.engine_version));
        }
        VersionChange::Major => {
            c.engine_version = Some(desired.engine_version.clone());
            c.allow_major_upgrade = true;
            c.updates.push(format!("engineVersion {version} → {} (major upgrade)", desired.engine_version));
        }
        VersionChange::Downgrade => {
            return Err(format!(
                "engineVersion {:?} is older than the instance's {version}; RDS cannot downgrade, so set it to {version} or later",
                desired.engine_version
            ));
        }
    }
    Ok(c)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionChange {
    None,
    Minor,
    Major,
    Downgrade,
}

/// How `running` must change to satisfy `wanted`. `"16"` means any 16.x; `"16.4"` means 16.4 or a
/// later 16.x (RDS applies minor upgrades on its own, and they are never undone).
pub fn version_change(wanted: &str, running: &str) -> VersionChange {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map_while(|p| p.parse().ok()).collect() };
    let (w, r) = (parse(wanted), parse(running));
    let (Some(wm), Some(rm)) = (w.first(), r.first()) else { return VersionChange::None };
    if wm > rm {
        return VersionChange::Major;
    }
    if wm < rm {
        return VersionChange::Downgrade;
    }
    match (w.get(1), r.get(1)) {
        (Some(wn), Some(rn)) if wn > rn => VersionChange::Minor,
        (Some(_), None) => VersionChange::Minor,
        _ => VersionChange::None,
    }
}

/// Whether the placement guarantees hold for an instance: private, encrypted with the stack's
/// key, in its subnet group; each is a reason not to call it Ready.
pub fn placement_faults(observed: &ObservedInstance, subnet_group: &str, kms_key_arn: &str) -> Vec<String> {
    let mut faults = Vec::new();
    if !observed.storage_encrypted {
        faults.push("its storage is not encrypted".to_string());
    } else if let Some(key) = &observed.kms_key_id
        && !same_key(key, kms_key_arn)
    {
        faults.push(format!("its storage is encrypted with {key}, not the Stack's key {kms_key_arn}"));
    }
    if observed.subnet_group.as_deref() != Some(subnet_group) {
        faults.push(format!(
            "it is in the subnet group {:?}, not {subnet_group:?}",
            observed.subnet_group.as_deref().unwrap_or("none")
        ));
    }
    faults
}

/// KMS keys are named by ARN or by bare key ID, depending on who reports them.
pub fn same_key(a: &str, b: &str) -> bool {
    let id = |k: &str| k.rsplit_once(":key/").map_or(k, |(_, id)| id).to_string();
    id(a) == id(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DatabaseSpec {
        serde_json::from_value(serde_json::json!({"stackRef": {"name": "web"}})).unwrap()
    }

    #[test]
    fn placement_needs_the_private_subnets_the_app_group_and_the_key_and_nothing_else() {
        let spec = serde_json::json!({"accountLinkRef": {"name": "l"}, "network": {"pattern": "PublicPrivate"}});
        let mut stack = Stack::new("web", serde_json::from_value(spec).unwrap());
        let subnet = |id: &str, tier: &str| serde_json::json!({"id": id, "tier": tier, "availabilityZone": "us-east-1a", "cidr": "10.0.0.0/24"});
        // Mid-create: the VPC and subnets, no group, no key, no NAT gateway, no VPC Link.
        let status = serde_json::json!({"vpcId": "vpc-1", "subnets": [
            subnet("subnet-pub", "Public"), subnet("subnet-a", "Private"), subnet("subnet-b", "Private"),
        ]});
        stack.status = Some(serde_json::from_value(status).unwrap());
        assert_eq!(
            placement(&stack).unwrap_err(),
            ["its app security group (appSecurityGroupId)", "its KMS key (kmsKeyArn)"]
        );
        if let Some(s) = stack.status.as_mut() {
            s.app_security_group_id = Some("sg-app".into());
            s.kms_key_arn = Some("arn:aws:kms:us-east-1:123456789012:key/k".into());
        }
        // Enough, although the Stack is not Ready and lists no NAT gateway nor VPC Link.
        let p = placement(&stack).unwrap();
        assert_eq!(p.subnet_ids, ["subnet-a".to_string(), "subnet-b".to_string()].into());
        assert_eq!(p.app_security_group, "sg-app");
        if let Some(s) = stack.status.as_mut() {
            s.subnets.truncate(2);
        }
        assert_eq!(placement(&stack).unwrap_err(), ["its Private subnets (subnets: 1 of at least 2)"]);
        stack.status = None;
        assert_eq!(placement(&stack).unwrap_err().len(), 4);
    }

    fn valid_identifier(id: &str) -> bool {
        id.len() <= 63
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !id.contains("--")
            && !id.ends_with('-')
    }

    #[test]
    fn identifiers_are_readable_valid_and_distinct() {
        let id = instance_identifier("team-a", "web", "orders");
        assert!(id.starts_with("team-a-web-orders-"), "{id}");
        assert!(valid_identifier(&id), "{id}");
        assert_eq!(id, instance_identifier("team-a", "web", "orders"), "deterministic");
        // Same readable part, different objects.
        assert_ne!(instance_identifier("a-b", "c", "d"), instance_identifier("a", "b-c", "d"));
        let long = "x".repeat(63);
        for (ns, stack, name) in
            [(long.as_str(), "web", "orders"), ("1team", "web.v2", "db"), ("a", "b", "c--d."), ("9", "9", "9")]
        {
            let id = instance_identifier(ns, stack, name);
            assert!(valid_identifier(&id), "{ns}/{stack}/{name} → {id}");
        }
        assert_ne!(instance_identifier(&long, "web", "a"), instance_identifier(&long, "web", "b"));
    }

    #[test]
    fn names_follow_the_api() {
        let names = Names::new("team-a", "web", "orders", "0123abcd-4567", &spec());
        assert_eq!(names.secret, "tinystacks/team-a/web/orders");
        assert_eq!(names.connection_secret, "orders-connection");
        assert_eq!(names.final_snapshot, format!("{}-final-0123abcd", names.instance));
        let mut custom = spec();
        custom.connection_secret.name = Some("pg".into());
        assert_eq!(Names::new("n", "s", "d", "u", &custom).connection_secret, "pg");
    }

    #[test]
    fn ownership_needs_the_operator_and_this_objects_uid() {
        let mut tags: Tags = tags("ns", "db", "uid-1", "x").into_iter().collect();
        assert_eq!(claimed_by_other(&tags, "uid-1"), None);
        // The same namespace and name, another object (one deleted with Retain, re-created).
        let why = claimed_by_other(&tags, "uid-2").expect("another object's");
        assert!(why.contains("uid-1") && why.contains("Database/ns/db") && why.contains("uid-2"), "{why}");
        tags.remove(OWNER_UID_TAG);
        assert!(claimed_by_other(&tags, "uid-1").is_some_and(|m| m.contains("no tinystacks.io/owner-uid")));
        tags.remove(MANAGED_BY_TAG);
        assert!(claimed_by_other(&tags, "uid-1").is_some_and(|m| m.contains("not created by")));
    }

    #[test]
    fn ingress_is_exactly_the_app_and_bastion_groups() {
        let desired = desired_ingress("sg-app", ["sg-b1"]);
        let open =
            Rule { protocol: "tcp".into(), from: Some(5432), to: Some(5432), source: Source::Cidr("0.0.0.0/0".into()) };
        let old_bastion = Rule { source: Source::Group("sg-b0".into()), ..open.clone() };
        let app = Rule { source: Source::Group("sg-app".into()), ..open.clone() };
        let observed = BTreeSet::from([open.clone(), old_bastion.clone(), app]);
        let changes = ingress_changes(&observed, &desired);
        assert_eq!(changes.revoke, vec![open.clone(), old_bastion.clone()]);
        assert_eq!(changes.authorize.len(), 1);
        assert!(is_hole(&open) && !is_hole(&old_bastion));
        assert_eq!(describe_rule(&open), "tcp/5432 from 0.0.0.0/0");
    }

    fn observed() -> ObservedInstance {
        ObservedInstance {
            identifier: "db".into(),
            status: "available".into(),
            security_groups: vec!["sg-db".into()],
            deletion_protection: true,
            storage_encrypted: true,
            kms_key_id: Some("arn:aws:kms:us-east-1:1:key/k1".into()),
            subnet_group: Some("db".into()),
            class: "db.t4g.micro".into(),
            storage_gib: 20,
            backup_days: 7,
            engine_version: "16.4".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_matching_instance_needs_nothing() {
        let desired = DesiredInstance::from_spec(&spec());
        assert_eq!(instance_changes(&desired, "sg-db", &observed()), Ok(InstanceChanges::default()));
        assert!(placement_faults(&observed(), "db", "k1").is_empty());
        assert_eq!(placement_faults(&observed(), "other", "k2").len(), 2);
    }

    #[test]
    fn security_drift_is_repaired_and_named() {
        let desired = DesiredInstance::from_spec(&spec());
        let mut o = observed();
        o.publicly_accessible = true;
        o.security_groups = vec!["sg-db".into(), "sg-open".into()];
        let c = instance_changes(&desired, "sg-db", &o).unwrap();
        assert_eq!(c.publicly_accessible, Some(false));
        assert_eq!(c.security_groups, Some(vec!["sg-db".to_string()]));
        assert_eq!(c.drift.len(), 2);
        assert!(c.updates.is_empty());
    }

    #[test]
    fn spec_changes_are_applied_once() {
        let mut spec = spec();
        spec.instance_class = "db.t4g.small".into();
        spec.allocated_storage_gi_b = 30;
        spec.multi_az = true;
        spec.backup_retention_days = 3;
        spec.engine_version = "17".into();
        let desired = DesiredInstance::from_spec(&spec);
        let c = instance_changes(&desired, "sg-db", &observed()).unwrap();
        assert_eq!(c.class.as_deref(), Some("db.t4g.small"));
        assert_eq!(c.storage_gib, Some(30));
        assert_eq!(c.multi_az, Some(true));
        assert_eq!(c.backup_days, Some(3));
        assert_eq!(c.engine_version.as_deref(), Some("17"));
        assert!(c.allow_major_upgrade);
        assert_eq!(c.updates.len(), 5);
        // Accepted by RDS but still pending: not asked for again.
        let mut pending = observed();
        pending.pending_class = Some("db.t4g.small".into());
        pending.pending_storage_gib = Some(30);
        pending.pending_multi_az = Some(true);
        pending.pending_backup_days = Some(3);
        pending.pending_engine_version = Some("17.2".into());
        assert_eq!(instance_changes(&desired, "sg-db", &pending), Ok(InstanceChanges::default()));
    }

    #[test]
    fn storage_never_shrinks_and_versions_never_go_back() {
        let mut o = observed();
        o.storage_gib = 100;
        let desired = DesiredInstance::from_spec(&spec());
        assert_eq!(instance_changes(&desired, "sg-db", &o).unwrap().storage_gib, None);
        let mut old = spec();
        old.engine_version = "15".into();
        assert!(instance_changes(&DesiredInstance::from_spec(&old), "sg-db", &o).is_err());
    }

    #[test]
    fn versions_compare_by_major_then_minor() {
        assert_eq!(version_change("16", "16.4"), VersionChange::None);
        assert_eq!(version_change("16.4", "16.4"), VersionChange::None);
        assert_eq!(version_change("16.3", "16.4"), VersionChange::None);
        assert_eq!(version_change("16.5", "16.4"), VersionChange::Minor);
        assert_eq!(version_change("16.1", "16"), VersionChange::Minor);
        assert_eq!(version_change("17", "16.4"), VersionChange::Major);
        assert_eq!(version_change("15", "16.4"), VersionChange::Downgrade);
    }

    #[test]
    fn phases() {
        let phase = |word: &str| crate::aws::inventory::DbInstanceStatus::from(word).phase;
        assert_eq!(phase("available"), Phase::Available);
        for busy in ["creating", "modifying", "backing-up", "rebooting", "upgrading", "storage-optimization"] {
            assert_eq!(phase(busy), Phase::Busy, "{busy}");
        }
        assert_eq!(phase("deleting"), Phase::Deleting);
        assert_eq!(phase("storage-full"), Phase::Broken);
        assert_eq!(phase("some-new-status"), Phase::Busy, "a status newer than the list is RDS at work");
        assert_eq!(crate::aws::inventory::DbInstanceStatus::from("storage-full").to_string(), "storage-full");
    }
    #[test]
    fn a_refused_engine_version_or_class_names_its_field() {
        let version = fields_to_change("Cannot find version 16.99 for postgres");
        assert!(version.starts_with("set spec.engineVersion"), "{version}");
        let class = fields_to_change(
            "RDS does not support creating a DB instance with the following combination: DBInstanceClass=db.t4g.nope, Engine=postgres, EngineVersion=16.4, LicenseModel=postgresql-license.",
        );
        assert!(class.starts_with("set spec.instanceClass"), "{class}");
        let other = fields_to_change("Invalid storage size for engine name postgres and storage type gp3: 20");
        assert!(other.contains("spec.allocatedStorageGiB"), "{other}");
    }
}
