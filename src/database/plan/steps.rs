//! The Database's plan: from the spec, the Stack's placement and one observed view of its AWS side,
//! the ordered changes that bring AWS to the spec (or take it down), each shown to people as a
//! [`PlannedChange`]. Pure: no client, no async; `reconcile.rs` observes, gates and applies.

use std::collections::BTreeSet;

use super::{
    DesiredInstance, InstanceChanges, Names, ObservedInstance, Phase, Placement, claimed_by_other, describe_rule,
    desired_ingress, ingress_changes, instance_changes, placement_faults, same_key,
};
use crate::api::{ChangeAction, DatabaseSpec, PlannedChange};
use crate::aws::inventory::{Rule, SecretInfo, SecurityGroup};
use crate::aws::tags::Tags;
use crate::database::aws::{PASSWORD_FROM_SNAPSHOT, PASSWORD_TAG, SnapshotInfo};
use crate::error::{Error, Result};

/// On the secret: the version whose password RDS was last given (see `reconcile/password.rs`).
pub const RDS_VERSION_TAG: &str = "tinystacks.io/rds-password-version";
/// The annotation that asks for a new master password (README).
pub const ROTATE_ANNOTATION: &str = "tinystacks.io/rotate-password";

/// What one pass observed of the Database's AWS side, and what its status recorded.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The security group of the Database's name in the Stack's VPC.
    pub group: Option<SecurityGroup>,
    pub subnet_group: Option<ObservedSubnetGroup>,
    /// The secret's metadata (never its value).
    pub secret: Option<SecretInfo>,
    pub instance: Option<ObservedInstance>,
    /// The snapshot `spec.restoreFromSnapshot` names, looked up while there is no instance
    /// (`None`: it does not exist).
    pub restore_snapshot: Option<SnapshotInfo>,
    /// The security groups of the Stack's Bastions that may reach the database.
    pub bastion_groups: BTreeSet<String>,
    /// The token of a password rotation asked for with the annotation and not carried out yet.
    pub rotation: Option<String>,
    /// The status records an endpoint (the secret was given one before).
    pub endpoint_recorded: bool,
    /// The secret holds the instance's endpoint (told from the status and the connection Secret
    /// when they are in step, else read from the secret).
    pub endpoint_in_secret: bool,
}

/// A DB subnet group of the Database's name.
#[derive(Clone, Debug, Default)]
pub struct ObservedSubnetGroup {
    pub subnet_ids: BTreeSet<String>,
    /// Its tags, read while the status does not yet record it as this Database's (`None` then
    /// means: known to be its own).
    pub tags: Option<Tags>,
}

/// One change to the Database's AWS side; `reconcile/apply.rs` makes each with one AWS call
/// (a few reads around it at most).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    CreateSecurityGroup,
    RevokeIngress {
        rules: Vec<Rule>,
    },
    AuthorizeIngress {
        rules: Vec<Rule>,
    },
    CreateSubnetGroup,
    SetSubnets {
        from: BTreeSet<String>,
    },
    /// Generated master credentials; with a rotation token when a lost secret is made again.
    CreateSecret {
        rotation: Option<String>,
    },
    RestoreSecret,
    SetSecretKey {
        from: String,
    },
    CreateInstance,
    RestoreInstance {
        snapshot: String,
    },
    /// A restored instance gets the secret's master password in place of its snapshot's.
    SetRestoredPassword,
    ModifyInstance(InstanceChanges),
    /// A new password in the secret, as the version `token`.
    RotatePassword {
        token: String,
    },
    /// RDS gets the password of the secret's current version.
    FollowSecretPassword,
    /// The instance's endpoint into the secret.
    WriteEndpoint {
        endpoint: Option<(String, i32)>,
    },
}

/// One step of deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    LiftDeletionProtection,
    DeleteInstance { final_snapshot: Option<String> },
    DeleteSecurityGroup { id: String },
    DeleteSubnetGroup,
    DeleteSecret { arn: String },
}

/// RDS is working on the instance (or a snapshot): the changes from `at` on wait for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    pub at: usize,
    pub reason: &'static str,
    pub message: String,
}

/// The ordered changes, and where they must wait for RDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<C = Change> {
    pub changes: Vec<C>,
    pub wait: Option<Wait>,
}

impl<C> Default for Plan<C> {
    fn default() -> Self {
        Self { changes: Vec::new(), wait: None }
    }
}

impl<C> Plan<C> {
    /// The change to make now, unless RDS must finish first.
    pub fn next(&self) -> Option<&C> {
        if self.wait.as_ref().is_some_and(|w| w.at == 0) { None } else { self.changes.first() }
    }

    fn wait(&mut self, reason: &'static str, message: String) {
        self.wait = Some(Wait { at: self.changes.len(), reason, message });
    }
}

/// What the Database should be: its spec, its names and UID, and where its Stack puts it.
pub struct Desired<'a> {
    pub spec: &'a DatabaseSpec,
    pub names: &'a Names,
    pub uid: &'a str,
    pub placement: &'a Placement,
}

/// Only what carries this object's UID is used, changed or deleted.
fn claim(what: &str, name: &str, tags: &Tags, uid: &str) -> Result<()> {
    match claimed_by_other(tags, uid) {
        None => Ok(()),
        Some(found) => Err(Error::ResourceNotOwned { what: what.into(), name: name.into(), found }),
    }
}

/// The changes that bring the Database's AWS side to its spec, in the order they are made: the
/// security group and its ingress, the subnet group, the secret (before the instance, so that its
/// password can never be lost), the instance, drift and in-place changes, the password, and last
/// the endpoint in the secret. Errors are what no change can mend (someone else's resource, a
/// broken instance, a spec RDS cannot meet).
pub fn plan(d: &Desired<'_>, v: &View) -> Result<Plan> {
    let mut p = Plan::default();
    let name = &d.names.instance;
    if let Some(group) = &v.group {
        claim("security group", name, &group.tags, d.uid)?;
    } else {
        p.changes.push(Change::CreateSecurityGroup);
    }
    let wanted = desired_ingress(&d.placement.app_security_group, v.bastion_groups.iter().map(String::as_str));
    let ingress = ingress_changes(&v.group.as_ref().map(|g| g.ingress.clone()).unwrap_or_default(), &wanted);
    if !ingress.revoke.is_empty() {
        p.changes.push(Change::RevokeIngress { rules: ingress.revoke });
    }
    if !ingress.authorize.is_empty() {
        p.changes.push(Change::AuthorizeIngress { rules: ingress.authorize });
    }
    match &v.subnet_group {
        None => p.changes.push(Change::CreateSubnetGroup),
        Some(found) => {
            if let Some(tags) = &found.tags {
                claim("DB subnet group", name, tags, d.uid)?;
            }
            if found.subnet_ids != d.placement.subnet_ids {
                p.changes.push(Change::SetSubnets { from: found.subnet_ids.clone() });
            }
        }
    }
    let Some(secret) = &v.secret else {
        return lost_or_new_secret(d, v, p);
    };
    claim("Secrets Manager secret", &d.names.secret, &secret.tags, d.uid)?;
    if secret.scheduled_for_deletion {
        p.changes.push(Change::RestoreSecret);
    }
    if let Some(key) = secret.kms_key_id.as_deref().filter(|k| *k != d.placement.kms_key_arn) {
        p.changes.push(Change::SetSecretKey { from: key.to_string() });
    }
    match &v.instance {
        None => new_instance(d, v, &mut p)?,
        Some(instance) => existing_instance(d, v, secret, instance, &mut p)?,
    }
    Ok(p)
}

/// No secret: made for a new instance, or, asked for with the rotation annotation, for an
/// instance whose secret was lost (its password is nowhere else).
fn lost_or_new_secret(d: &Desired<'_>, v: &View, mut p: Plan) -> Result<Plan> {
    let Some(instance) = &v.instance else {
        p.changes.push(Change::CreateSecret { rotation: v.rotation.clone() });
        new_instance(d, v, &mut p)?;
        return Ok(p);
    };
    claim("DB instance", &d.names.instance, &instance.tags, d.uid)?;
    let Some(token) = v.rotation.clone() else {
        return Err(Error::SecretUnusable {
            name: d.names.secret.clone(),
            why: format!(
                "it was deleted while the DB instance {} exists; to give the instance a new password, set the annotation {ROTATE_ANNOTATION} to a new value",
                d.names.instance
            ),
        });
    };
    p.changes.push(Change::CreateSecret { rotation: Some(token.clone()) });
    p.changes.push(Change::RotatePassword { token });
    p.changes.push(Change::FollowSecretPassword);
    Ok(p)
}

/// The instance to make: empty, or from `spec.restoreFromSnapshot`; then its endpoint into the
/// secret (listed now, so that an approved plan covers it).
fn new_instance(d: &Desired<'_>, v: &View, p: &mut Plan) -> Result<()> {
    let Some(snapshot) = d.spec.restore_from_snapshot.clone() else {
        p.changes.push(Change::CreateInstance);
        p.changes.push(Change::WriteEndpoint { endpoint: None });
        return Ok(());
    };
    let unusable = |why: String| Error::RestoreSnapshotUnusable { snapshot: snapshot.clone(), why };
    let Some(found) = &v.restore_snapshot else {
        return Err(unusable("does not exist in the Stack's account and region".into()));
    };
    if found.engine != super::ENGINE {
        return Err(unusable(format!("is a snapshot of engine {:?}, not {}", found.engine, super::ENGINE)));
    }
    // A restore keeps the snapshot's key, and the Database promises the Stack's.
    let key = &d.placement.kms_key_arn;
    if !found.encrypted || !found.kms_key_id.as_deref().is_some_and(|k| same_key(k, key)) {
        let with = found.kms_key_id.as_deref().filter(|_| found.encrypted).unwrap_or("no key (unencrypted)");
        return Err(unusable(format!(
            "is encrypted with {with}, not the Stack's KMS key {key}: copy it with that key first (aws rds copy-db-snapshot --kms-key-id {key}) and name the copy"
        )));
    }
    if !found.available {
        p.wait(
            "SnapshotNotAvailable",
            format!("waiting for the DB snapshot {snapshot} to be available (it is {})", found.status),
        );
    }
    p.changes.push(Change::RestoreInstance { snapshot });
    p.changes.push(Change::SetRestoredPassword);
    p.changes.push(Change::WriteEndpoint { endpoint: None });
    Ok(())
}

fn existing_instance(
    d: &Desired<'_>,
    v: &View,
    secret: &SecretInfo,
    instance: &ObservedInstance,
    p: &mut Plan,
) -> Result<()> {
    let name = &d.names.instance;
    claim("DB instance", name, &instance.tags, d.uid)?;
    let restored = instance.tags.get(PASSWORD_TAG) == Some(PASSWORD_FROM_SNAPSHOT);
    match instance.status.phase {
        Phase::Available => {}
        Phase::Busy | Phase::Deleting => {
            p.wait("InstanceNotAvailable", format!("RDS reports the DB instance {name} as \"{}\"", instance.status));
            // What follows a create or restore is listed, so that an approved plan covers it.
            if restored {
                p.changes.push(Change::SetRestoredPassword);
            }
            if !v.endpoint_recorded {
                p.changes.push(Change::WriteEndpoint { endpoint: None });
            }
            return Ok(());
        }
        Phase::Broken => {
            return Err(Error::DbInstanceUnhealthy { identifier: name.clone(), status: instance.status.to_string() });
        }
    }
    if restored {
        p.changes.push(Change::SetRestoredPassword);
        p.changes.push(Change::WriteEndpoint { endpoint: instance.endpoint.clone() });
        return Ok(());
    }
    // Without its group (to be made first) the instance is judged on the next look.
    let Some(group) = &v.group else { return Ok(()) };
    let changes =
        instance_changes(&DesiredInstance::from_spec(d.spec), &group.id, instance).map_err(Error::InvalidSpec)?;
    if !changes.is_empty() {
        p.changes.push(Change::ModifyInstance(changes));
        return Ok(());
    }
    let faults = placement_faults(instance, name, &d.placement.kms_key_arn);
    if !faults.is_empty() {
        return Err(Error::DbInstanceNotCompliant { identifier: name.clone(), why: faults.join("; ") });
    }
    if let Some(token) = v.rotation.clone() {
        p.changes.push(Change::RotatePassword { token });
        p.changes.push(Change::FollowSecretPassword);
        return Ok(());
    }
    if secret.current_version.as_deref().is_some_and(|c| secret.tags.get(RDS_VERSION_TAG) != Some(c)) {
        p.changes.push(Change::FollowSecretPassword);
    }
    let Some(endpoint) = instance.endpoint.clone() else {
        p.wait("InstanceNotAvailable", format!("RDS reports no endpoint for {name} yet"));
        return Ok(());
    };
    if !v.endpoint_in_secret {
        p.changes.push(Change::WriteEndpoint { endpoint: Some(endpoint) });
    }
    Ok(())
}

/// The repairs made while the Stack is not Ready: only what keeps the security guarantees (no
/// address range into the group; the instance private and behind its own group). Rules naming
/// groups are left for a pass that knows the Stack's app group and Bastions.
pub fn guarded_plan(v: &View) -> Plan {
    let mut p = Plan::default();
    if let Some(group) = &v.group {
        let holes: Vec<Rule> = group.ingress.iter().filter(|r| super::is_hole(r)).cloned().collect();
        if !holes.is_empty() {
            p.changes.push(Change::RevokeIngress { rules: holes });
        }
    }
    if let Some(instance) = v.instance.as_ref().filter(|i| i.status.phase == Phase::Available) {
        let mut changes = InstanceChanges::default();
        if instance.publicly_accessible {
            changes.publicly_accessible = Some(false);
            changes.drift.push("PubliclyAccessible true → false".into());
        }
        if let Some(group) = v.group.as_ref().filter(|g| instance.security_groups != [g.id.clone()]) {
            changes.security_groups = Some(vec![group.id.clone()]);
            changes.drift.push(format!("security groups [{}] → [{}]", instance.security_groups.join(", "), group.id));
        }
        if !changes.is_empty() {
            p.changes.push(Change::ModifyInstance(changes));
        }
    }
    p
}

/// Deletion (policies `Snapshot` and `Delete`): the instance first, with deletion protection
/// lifted only now; then, once RDS no longer lists it, the security group, the subnet group and
/// the secret. Only what carries this object's UID is deleted (the view holds nothing else).
pub fn teardown(v: &View, final_snapshot: Option<&str>) -> Plan<Removal> {
    let mut p = Plan::default();
    if let Some(instance) = &v.instance {
        match instance.status.phase {
            Phase::Deleting => {
                p.wait("DeletingInstance", format!("RDS is deleting the DB instance {}", instance.identifier))
            }
            Phase::Busy => p.wait(
                "DeletingInstance",
                format!(
                    "waiting for RDS to finish \"{}\" on {} before deleting it",
                    instance.status, instance.identifier
                ),
            ),
            Phase::Available | Phase::Broken => {}
        }
        if instance.deletion_protection {
            p.changes.push(Removal::LiftDeletionProtection);
        }
        if instance.status.phase != Phase::Deleting {
            p.changes.push(Removal::DeleteInstance { final_snapshot: final_snapshot.map(str::to_string) });
        }
    }
    if let Some(group) = &v.group {
        p.changes.push(Removal::DeleteSecurityGroup { id: group.id.clone() });
    }
    if v.subnet_group.is_some() {
        p.changes.push(Removal::DeleteSubnetGroup);
    }
    if let Some(secret) = v.secret.as_ref().filter(|s| !s.scheduled_for_deletion) {
        p.changes.push(Removal::DeleteSecret { arn: secret.arn.clone() });
    }
    p
}

fn rules(rules: &[Rule]) -> String {
    rules.iter().map(describe_rule).collect::<Vec<_>>().join(", ")
}

fn join(ids: &BTreeSet<String>) -> String {
    ids.iter().cloned().collect::<Vec<_>>().join(", ")
}

impl Change {
    /// The change as `status.plan` shows it: what, which, and what differs. Never a password.
    pub fn planned(&self, d: &Desired<'_>, v: &View) -> PlannedChange {
        use ChangeAction::{Create, Delete, Update};
        let (names, spec, placement) = (d.names, d.spec, d.placement);
        let group_id = v.group.as_ref().map(|g| g.id.clone());
        let secret_arn = v.secret.as_ref().map(|s| s.arn.clone());
        let instance = Some(names.instance.clone());
        let (action, resource, name, id, detail) = match self {
            Change::CreateSecurityGroup => (
                Create,
                "ec2:SecurityGroup",
                "security-group",
                None,
                format!(
                    "{} in {}: 5432 from the Stack's app and Bastion groups only",
                    names.instance, placement.vpc_id
                ),
            ),
            Change::RevokeIngress { rules: r } => (Delete, "ec2:SecurityGroupIngress", "ingress", group_id, rules(r)),
            Change::AuthorizeIngress { rules: r } => {
                (Create, "ec2:SecurityGroupIngress", "ingress", group_id, rules(r))
            }
            Change::CreateSubnetGroup => (
                Create,
                "rds:DBSubnetGroup",
                "subnet-group",
                instance,
                format!("subnets {}", join(&placement.subnet_ids)),
            ),
            Change::SetSubnets { from } => (
                Update,
                "rds:DBSubnetGroup",
                "subnet-group",
                instance,
                format!("subnets {} → {}", join(from), join(&placement.subnet_ids)),
            ),
            Change::CreateSecret { rotation } => (
                Create,
                "secretsmanager:Secret",
                "secret",
                Some(names.secret.clone()),
                match rotation {
                    None => format!("generated master credentials, encrypted with {}", placement.kms_key_arn),
                    Some(_) => {
                        format!("a new master password ({ROTATE_ANNOTATION}), encrypted with {}", placement.kms_key_arn)
                    }
                },
            ),
            Change::RestoreSecret => {
                (Update, "secretsmanager:Secret", "secret", secret_arn, "scheduled for deletion → restored".into())
            }
            Change::SetSecretKey { from } => (
                Update,
                "secretsmanager:Secret",
                "secret",
                secret_arn,
                format!("kmsKeyId {from} → {}", placement.kms_key_arn),
            ),
            Change::CreateInstance => (
                Create,
                "rds:DBInstance",
                "instance",
                instance,
                format!(
                    "PostgreSQL {}, {}, {} GiB, multiAz {}, backups {} days, encrypted, not public",
                    spec.engine_version,
                    spec.instance_class,
                    spec.allocated_storage_gi_b,
                    spec.multi_az,
                    spec.backup_retention_days
                ),
            ),
            Change::RestoreInstance { snapshot } => (
                Create,
                "rds:DBInstance",
                "instance",
                instance,
                format!("restored from the DB snapshot {snapshot}, {}, encrypted, not public", spec.instance_class),
            ),
            Change::SetRestoredPassword => (
                Update,
                "rds:DBInstance",
                "master-password",
                instance,
                "the secret's master password replaces the snapshot's".into(),
            ),
            Change::ModifyInstance(c) => {
                let what: Vec<&str> = c.drift.iter().chain(&c.updates).map(String::as_str).collect();
                (Update, "rds:DBInstance", "instance", instance, what.join("; "))
            }
            Change::RotatePassword { .. } => (
                Update,
                "secretsmanager:Secret",
                "secret-password",
                secret_arn,
                format!("a new master password, asked for with {ROTATE_ANNOTATION}"),
            ),
            Change::FollowSecretPassword => (
                Update,
                "rds:DBInstance",
                "master-password",
                instance,
                "the master password of the secret's current version".into(),
            ),
            Change::WriteEndpoint { endpoint } => (
                Update,
                "secretsmanager:Secret",
                "secret-endpoint",
                secret_arn,
                match endpoint {
                    Some((host, port)) => format!("endpoint {host}:{port}"),
                    None => "the instance's endpoint, once RDS reports it".into(),
                },
            ),
        };
        PlannedChange { action, resource: resource.into(), name: name.into(), id, detail }
    }
}

#[cfg(test)]
mod tests;
