//! The Bastion's plan: from the spec, the Stack's placement and what AWS and the API server show
//! ([`Observed`]), the ordered changes that bring AWS to the spec ([`plan`]), hold it while the
//! Stack is not Ready ([`guarded`]) or take it all away ([`teardown`]). Pure (no client, no I/O):
//! `status.plan` shows these changes before any is made, and every decision is unit-tested.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;

use super::{
    DesiredInstance, InstanceStateName, Names, ObservedInstance, Placement, ROLE_POLICY_NAME, claimed_by_other,
    describe_rule, desired_ingress, keeper, ours, replacement_reason,
};
use crate::api::{BastionAccess, BastionSpec, ChangeAction, PlannedChange};
use crate::aws::inventory::{Rule, SecurityGroup};
use crate::aws::tags::Tags;
use crate::error::{Error, Result};

/// The Bastion's IAM role as IAM shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedRole {
    pub tags: Tags,
    /// Inline policy names.
    pub policies: BTreeSet<String>,
    /// Attached managed policy ARNs (read only for deletion).
    pub attached: BTreeSet<String>,
}

/// An IAM instance profile as IAM shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedProfile {
    pub arn: String,
    pub tags: Tags,
    pub roles: Vec<String>,
}

/// An EC2 key pair under the Bastion's name prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedKeyPair {
    pub name: String,
    pub tags: Tags,
}

/// What the Bastion's AWS side (and its key Secret) look like now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub role: Option<ObservedRole>,
    pub profile: Option<ObservedProfile>,
    pub group: Option<SecurityGroup>,
    pub key_pairs: Vec<ObservedKeyPair>,
    /// The public half of the key in the Bastion's own key Secret (`Ssh` without `sshPublicKey`),
    /// if that Secret exists. The private half never enters the plan.
    pub generated_key: Option<String>,
    /// Every instance tagged with the Bastion's UID, terminated ones included.
    pub instances: Vec<ObservedInstance>,
}

impl Observed {
    pub fn live(&self) -> Vec<&ObservedInstance> {
        self.instances.iter().filter(|i| !i.is_gone()).collect()
    }
}

/// What the plan is computed for.
#[derive(Clone, Copy, Debug)]
pub struct Desired<'a> {
    pub spec: &'a BastionSpec,
    pub names: &'a Names,
    pub uid: &'a str,
    pub placement: &'a Placement,
    /// The instance the status names: the one kept among duplicates.
    pub known_instance: Option<&'a str>,
    /// The end of the TTL period in force.
    pub expires: Option<Timestamp>,
    pub now: Timestamp,
}

/// Why instances are terminated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Termination {
    /// The TTL ended at this time.
    Expired(Timestamp),
    /// More than one instance runs; these are the extra ones.
    Duplicate,
    /// The instance differs from the spec; a new one is launched after.
    Replace(String),
    /// The Bastion is being deleted.
    Deleting,
}

/// One change, with what its apply needs. Each is one AWS call (the key Secret aside, which is a
/// Kubernetes write made just before the key pair's import).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Terminate {
        ids: Vec<String>,
        reason: Termination,
    },
    CreateRole,
    PutRolePolicy,
    CreateInstanceProfile,
    AddRoleToInstanceProfile,
    CreateSecurityGroup,
    RevokeIngress(Vec<Rule>),
    AuthorizeIngress(Vec<Rule>),
    /// Write a new key to the key Secret; its public half is then imported.
    GenerateKey,
    ImportKeyPair {
        name: String,
        public_key: String,
    },
    Launch {
        key_name: Option<String>,
    },
    DeleteKeyPair(String),
    DeleteSecurityGroup(String),
    RemoveRoleFromInstanceProfile(String),
    DeleteInstanceProfile,
    DeleteRolePolicy(String),
    DetachRolePolicy(String),
    DeleteRole,
}

/// The plan towards the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// The TTL ended: once the live instances are terminated the Bastion is `Expired`.
    pub expired: Option<Timestamp>,
}

fn claim(what: &str, name: &str, tags: &Tags, uid: &str) -> Result<()> {
    match claimed_by_other(tags, uid) {
        None => Ok(()),
        Some(why) => Err(Error::NameTaken { what: what.into(), name: name.into(), why }),
    }
}

/// The key pair the instance must have: none for `Ssm`; for `Ssh`, the given public key's or the
/// generated one's (`None` inside while the generated key does not exist yet).
fn desired_key(d: &Desired<'_>, o: &Observed) -> Option<Option<(String, String)>> {
    match (d.spec.access, &d.spec.ssh_public_key) {
        (BastionAccess::Ssm, _) => None,
        (BastionAccess::Ssh, Some(public)) => Some(Some((d.names.key_pair(public), public.clone()))),
        (BastionAccess::Ssh, None) => Some(o.generated_key.as_ref().map(|p| (d.names.key_pair(p), p.clone()))),
    }
}

/// The changes that bring AWS to the spec, in the order they are made: the TTL first (past it,
/// only terminations), then role, its policy, instance profile, security group and its exact
/// ingress, the key pair, the instance (duplicates, replacement, launch), and last the key pairs
/// an earlier spec left. Resources found under the Bastion's names that are not its own are
/// refused (`NameTaken`), never changed.
pub fn plan(d: &Desired<'_>, o: &Observed) -> Result<Plan> {
    let live = o.live();
    if let Some(at) = d.expires.filter(|at| *at <= d.now) {
        let ids: Vec<String> = live.iter().map(|i| i.id.clone()).collect();
        let changes =
            if ids.is_empty() { vec![] } else { vec![Change::Terminate { ids, reason: Termination::Expired(at) }] };
        return Ok(Plan { changes, expired: Some(at) });
    }
    let base = &d.names.base;
    let mut changes = Vec::new();
    match &o.role {
        None => changes.extend([Change::CreateRole, Change::PutRolePolicy]),
        Some(role) => {
            claim("IAM role", base, &role.tags, d.uid)?;
            if !role.policies.contains(ROLE_POLICY_NAME) {
                changes.push(Change::PutRolePolicy);
            }
        }
    }
    match &o.profile {
        None => changes.extend([Change::CreateInstanceProfile, Change::AddRoleToInstanceProfile]),
        Some(profile) => {
            claim("IAM instance profile", base, &profile.tags, d.uid)?;
            if !profile.roles.iter().any(|r| r == base) {
                changes.push(Change::AddRoleToInstanceProfile);
            }
        }
    }
    let rules = desired_ingress(d.spec.access, &d.spec.allowed_cidrs);
    let observed_rules = match &o.group {
        None => {
            changes.push(Change::CreateSecurityGroup);
            BTreeSet::new()
        }
        Some(group) => {
            claim("security group", base, &group.tags, d.uid)?;
            group.ingress.clone()
        }
    };
    let revoke: Vec<Rule> = observed_rules.difference(&rules).cloned().collect();
    let authorize: Vec<Rule> = rules.difference(&observed_rules).cloned().collect();
    if !revoke.is_empty() {
        changes.push(Change::RevokeIngress(revoke));
    }
    if !authorize.is_empty() {
        changes.push(Change::AuthorizeIngress(authorize));
    }
    let key = desired_key(d, o);
    match &key {
        Some(None) => changes.push(Change::GenerateKey),
        Some(Some((name, public))) if !o.key_pairs.iter().any(|k| &k.name == name) => {
            changes.push(Change::ImportKeyPair { name: name.clone(), public_key: public.clone() });
        }
        _ => {}
    }
    // A key still to be generated has no name yet: no instance can have it.
    let key_name = key.clone().map(|k| k.map_or_else(|| format!("{base}-<generated>"), |(name, _)| name));
    changes.extend(instance_changes(d, o, &live, key_name));
    let wanted = key.flatten().map(|(name, _)| name);
    for stale in o.key_pairs.iter().filter(|k| Some(&k.name) != wanted.as_ref() && ours(&k.tags, d.uid)) {
        changes.push(Change::DeleteKeyPair(stale.name.clone()));
    }
    Ok(Plan { changes, expired: None })
}

/// Exactly one instance as the spec says: extra ones terminated, one that differs replaced (a
/// bastion holds no state), none launched.
fn instance_changes(
    d: &Desired<'_>,
    o: &Observed,
    live: &[&ObservedInstance],
    key_name: Option<String>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let kept = keeper(live, d.known_instance);
    let extra: Vec<String> =
        live.iter().filter(|i| Some(i.id.as_str()) != kept.map(|k| k.id.as_str())).map(|i| i.id.clone()).collect();
    if !extra.is_empty() {
        changes.push(Change::Terminate { ids: extra, reason: Termination::Duplicate });
    }
    let launch = Change::Launch { key_name: key_name.clone().filter(|_| d.spec.access == BastionAccess::Ssh) };
    let Some(instance) = kept else {
        changes.push(launch);
        return changes;
    };
    let desired = DesiredInstance {
        instance_type: d.spec.instance_type.clone(),
        key_name,
        security_group: o.group.as_ref().map_or_else(|| "<new security group>".into(), |g| g.id.clone()),
        // Compared by name: a profile still to be made is named after the Bastion.
        profile_arn: o.profile.as_ref().map_or_else(|| d.names.base.clone(), |p| p.arn.clone()),
    };
    if let Some(why) = replacement_reason(instance, &desired, d.placement) {
        changes.push(Change::Terminate { ids: vec![instance.id.clone()], reason: Termination::Replace(why) });
        changes.push(launch);
    }
    changes
}

/// While the Stack is not Ready nothing is made, but the TTL still ends and the group keeps only
/// the rules the spec asks for (22 from anywhere else than `allowedCidrs` is revoked).
pub fn guarded(d: &Desired<'_>, o: &Observed) -> Plan {
    if let Some(at) = d.expires.filter(|at| *at <= d.now) {
        let ids: Vec<String> = o.live().iter().map(|i| i.id.clone()).collect();
        let changes =
            if ids.is_empty() { vec![] } else { vec![Change::Terminate { ids, reason: Termination::Expired(at) }] };
        return Plan { changes, expired: Some(at) };
    }
    let mut changes = Vec::new();
    if let Some(group) = o.group.as_ref().filter(|g| ours(&g.tags, d.uid)) {
        let rules = desired_ingress(d.spec.access, &d.spec.allowed_cidrs);
        let revoke: Vec<Rule> = group.ingress.difference(&rules).cloned().collect();
        if !revoke.is_empty() {
            changes.push(Change::RevokeIngress(revoke));
        }
    }
    Plan { changes, expired: None }
}

/// What deletion removes, in order: the instances (and, before anything else goes, their
/// termination confirmed: `waiting` names one not yet `terminated`), the key pairs, the security
/// group, the instance profile (its role out first), the role (its policies first). Only what is
/// the Bastion's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    pub changes: Vec<Change>,
    pub waiting: Option<String>,
}

pub fn teardown(uid: &str, o: &Observed) -> Teardown {
    let mut changes = Vec::new();
    let live: Vec<String> = o.live().iter().map(|i| i.id.clone()).collect();
    if !live.is_empty() {
        changes.push(Change::Terminate { ids: live, reason: Termination::Deleting });
    }
    let waiting = o
        .instances
        .iter()
        .find(|i| i.state != InstanceStateName::Terminated)
        .map(|i| format!("{} ({})", i.id, i.state));
    changes.extend(o.key_pairs.iter().filter(|k| ours(&k.tags, uid)).map(|k| Change::DeleteKeyPair(k.name.clone())));
    if let Some(group) = o.group.as_ref().filter(|g| ours(&g.tags, uid)) {
        changes.push(Change::DeleteSecurityGroup(group.id.clone()));
    }
    if let Some(profile) = o.profile.as_ref().filter(|p| ours(&p.tags, uid)) {
        changes.extend(profile.roles.iter().map(|r| Change::RemoveRoleFromInstanceProfile(r.clone())));
        changes.push(Change::DeleteInstanceProfile);
    }
    if let Some(role) = o.role.as_ref().filter(|r| ours(&r.tags, uid)) {
        changes.extend(role.policies.iter().map(|p| Change::DeleteRolePolicy(p.clone())));
        changes.extend(role.attached.iter().map(|a| Change::DetachRolePolicy(a.clone())));
        changes.push(Change::DeleteRole);
    }
    Teardown { changes, waiting }
}

fn rules(rules: &[Rule]) -> String {
    rules.iter().map(describe_rule).collect::<Vec<_>>().join(", ")
}

impl Change {
    /// The change as `status.plan` shows it: never the key's private half (only public keys and
    /// names ever reach a change).
    pub fn planned(
        &self,
        names: &Names,
        spec: &BastionSpec,
        placement: Option<&Placement>,
        o: &Observed,
    ) -> PlannedChange {
        use ChangeAction::{Create, Delete, Update};
        let base = &names.base;
        let group = o.group.as_ref().map(|g| g.id.clone());
        let (action, resource, name, id, detail) = match self {
            Change::Terminate { ids, reason } => {
                let (name, detail) = match reason {
                    Termination::Expired(at) => ("instance", format!("terminate: the ttl ended at {at}")),
                    Termination::Duplicate => ("instance/extra", "terminate: only one instance may run".to_string()),
                    Termination::Replace(why) => ("instance", format!("terminate to replace it: {why}")),
                    Termination::Deleting => ("instance", "terminate: the Bastion is being deleted".to_string()),
                };
                (Delete, "ec2:Instance", name.to_string(), Some(ids.join(",")), detail)
            }
            Change::CreateRole => {
                (Create, "iam:Role", "role".into(), None, format!("role {base}, trusted by EC2 only"))
            }
            Change::PutRolePolicy => (
                Update,
                "iam:RolePolicy",
                "role/policy".into(),
                None,
                format!("inline policy {ROLE_POLICY_NAME}: the Session Manager agent's calls"),
            ),
            Change::CreateInstanceProfile => {
                (Create, "iam:InstanceProfile", "instance-profile".into(), None, format!("instance profile {base}"))
            }
            Change::AddRoleToInstanceProfile => {
                (Update, "iam:InstanceProfile", "instance-profile/role".into(), None, format!("add role {base}"))
            }
            Change::CreateSecurityGroup => {
                (Create, "ec2:SecurityGroup", "security-group".into(), None, format!("group {base}, no inbound rule"))
            }
            Change::RevokeIngress(r) => (
                Delete,
                "ec2:SecurityGroupIngress",
                "security-group/ingress".into(),
                group,
                format!("revoke {}", rules(r)),
            ),
            Change::AuthorizeIngress(r) => (
                Create,
                "ec2:SecurityGroupIngress",
                "security-group/ingress".into(),
                group,
                format!("allow {}", rules(r)),
            ),
            Change::GenerateKey => (
                Create,
                "ec2:KeyPair",
                "key-pair".into(),
                None,
                format!("import a new ed25519 key, its private half written first to the Secret {}", names.key_secret),
            ),
            Change::ImportKeyPair { name, .. } => {
                (Create, "ec2:KeyPair", "key-pair".into(), Some(name.clone()), "import the public key".into())
            }
            Change::Launch { key_name } => {
                let place = placement.map_or_else(String::new, |p| {
                    let ip = if p.public_ip { "with" } else { "without" };
                    format!(" in subnet {} ({:?}, {ip} a public IP)", p.subnet_id, p.tier)
                });
                let key = key_name.as_ref().map_or_else(String::new, |k| format!(", key pair {k}"));
                (Create, "ec2:Instance", "instance".into(), None, format!("launch {}{place}{key}", spec.instance_type))
            }
            Change::DeleteKeyPair(name) => {
                (Delete, "ec2:KeyPair", format!("key-pair/{name}"), Some(name.clone()), "no longer used".into())
            }
            Change::DeleteSecurityGroup(id) => {
                (Delete, "ec2:SecurityGroup", "security-group".into(), Some(id.clone()), String::new())
            }
            Change::RemoveRoleFromInstanceProfile(role) => {
                (Update, "iam:InstanceProfile", "instance-profile/role".into(), None, format!("remove role {role}"))
            }
            Change::DeleteInstanceProfile => {
                (Delete, "iam:InstanceProfile", "instance-profile".into(), None, base.clone())
            }
            Change::DeleteRolePolicy(p) => (Delete, "iam:RolePolicy", format!("role/policy/{p}"), None, p.clone()),
            Change::DetachRolePolicy(arn) => {
                (Delete, "iam:RolePolicy", format!("role/attached/{arn}"), None, arn.clone())
            }
            Change::DeleteRole => (Delete, "iam:Role", "role".into(), None, base.clone()),
        };
        PlannedChange { action, resource: resource.into(), name, id, detail }
    }
}

#[cfg(test)]
mod tests;
