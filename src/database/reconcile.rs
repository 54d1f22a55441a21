//! The Database's reconcile, which only sequences: wait for what it needs of the Stack (its
//! subnets, app security group and key in the Stack's status; no AWS call until then but the
//! guarded repairs), then observe (`View`), plan (`plan::plan`, pure), put the plan
//! through `runtime::plan::gate` (written to `status.plan` every pass), apply its first change
//! (`apply.rs`), and plan again from the view that change's response updated, as many in one pass
//! as can be made. Deletion (`teardown.rs`) follows `deletionPolicy`, and leaves AWS alone under
//! `ObserveOnly`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::info;

use super::aws::{DatabaseAws, SecretInfo};
use super::plan::{self, Change, Desired, Names, ObservedInstance, ObservedSubnetGroup, Phase, Placement, View};
use crate::account_link::{self, LinkFor, LinkForCleanup};
use crate::api::{
    AwsAccountLink, Bastion, Database, DatabaseDeletionPolicy, DatabaseStatus, Endpoint as StatusEndpoint,
    PlannedChange, Stack,
};
use crate::aws::inventory::{Recorded, Rule, Scope, SecurityGroup};
use crate::aws::ownership::owner_uid;
use crate::aws::tags::Tags;
use crate::error::{Error, Result};
use crate::runtime::conditions::Health;
use crate::runtime::context::Context;
/// The label on connection Secrets; the controller watches Secrets with it (and owned by a
/// Database) so that one deleted or edited by hand is written again at once.
pub use crate::runtime::owned_secrets::MANAGED_LABEL;
use crate::runtime::plan::{self as runtime_plan, Gate, Governance};
use crate::runtime::reconciler::{Cleanup, Managed, Step};
use crate::stack::{self, StackFor};
use teardown::Teardown;

mod apply;
mod connection;
mod password;
mod teardown;

/// How long one pass goes on making changes before it writes the status and yields.
const PASS_TIME: Duration = Duration::from_secs(5);

impl Managed for Database {
    type Status = DatabaseStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Step<Self::Status>> {
        let namespace = self.namespace().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let stack = match stack::resolve(ctx, &namespace, &self.spec.stack_ref.name).await? {
            StackFor::Deleting { stack, message } => return guarded_wait(self, ctx, &stack, status, message).await,
            StackFor::Usable(stack) => stack,
        };
        // What the Database needs of its Stack, not the whole Stack being Ready.
        let placement = match plan::placement(&stack) {
            Ok(p) => p,
            Err(missing) => {
                let message = stack::missing_message(&stack, &missing);
                return guarded_wait(self, ctx, &stack, status, message).await;
            }
        };
        let link = match account_link::resolve_for(ctx, &stack, &namespace).await? {
            LinkFor::NotReady { message } => return guarded_wait(self, ctx, &stack, status, message).await,
            LinkFor::Usable(link) => link,
        };
        let aws = connect(ctx, &stack, &link).await?;
        // One pass makes every change it can, one after another, each step reading the inventory
        // its predecessor's response updated; the status is written once, at the end (or when the
        // pass has run for `PASS_TIME`).
        let started = Instant::now();
        let mut status = status;
        loop {
            let step = Converge::new(self, ctx, &stack, placement.clone(), &aws, status)?.run().await?;
            if step.requeue_after != Some(Duration::ZERO) || started.elapsed() >= PASS_TIME {
                return Ok(step);
            }
            status = step.status;
        }
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Cleanup> {
        let namespace = self.namespace().unwrap_or_default();
        let reference = self.object_ref(&());
        let names = names(self)?;
        if self.spec.controls.observe_only() {
            let note = format!(
                "management ObserveOnly: left the DB instance {}, its subnet group and security group, and the secret {} in AWS",
                names.instance, names.secret
            );
            ctx.event(&reference, EventType::Normal, "Retained", note).await;
            return Ok(Cleanup::Done);
        }
        if self.spec.deletion_policy == DatabaseDeletionPolicy::Retain {
            let note = format!(
                "deletionPolicy Retain: left the DB instance {} and the secret {} in AWS",
                names.instance, names.secret
            );
            ctx.event(&reference, EventType::Normal, "Retained", note).await;
            return Ok(Cleanup::Done);
        }
        let stacks = Api::<Stack>::namespaced(ctx.client.clone(), &namespace);
        let Some(stack) = stacks.get_opt(&self.spec.stack_ref.name).await? else {
            // Stacks wait for their Databases, so this takes a Stack removed by force: there is no
            // way left to reach the account, and holding the finalizer would block the namespace.
            let note = format!(
                "Stack {:?} is gone, so its AWS account cannot be reached; the DB instance {} and secret {} may remain",
                self.spec.stack_ref.name, names.instance, names.secret
            );
            ctx.event(&reference, EventType::Warning, "StackGone", note).await;
            return Ok(Cleanup::Done);
        };
        let records = self.status.as_ref().is_some_and(|s| {
            s.secret_arn.is_some() || s.security_group_id.is_some() || s.db_instance_identifier.is_some()
        });
        let link = match account_link::resolve_for_cleanup(ctx, &stack, &namespace, records).await? {
            LinkForCleanup::Usable(link) => link,
            LinkForCleanup::NothingMade(why) => {
                info!(kind = "Database", %namespace, name = %self.name_any(), %why, "nothing to delete in AWS");
                return Ok(Cleanup::Done);
            }
        };
        let aws = connect(ctx, &stack, &link).await?;
        let vpc_id = stack.status.as_ref().and_then(|s| s.vpc_id.clone());
        let uid = owner_uid(self)?;
        Teardown { db: self, ctx, aws, names, uid, vpc_id }.run().await
    }
}

/// The Database's names, from its namespace, Stack, name and UID.
fn names(db: &Database) -> Result<Names> {
    let namespace = db.namespace().unwrap_or_default();
    Ok(Names::new(&namespace, &db.spec.stack_ref.name, &db.name_any(), &owner_uid(db)?, &db.spec))
}

fn waiting(status: DatabaseStatus, message: String) -> Step<DatabaseStatus> {
    Step { status, health: Health::progressing("WaitingForStack", message), requeue_after: None }
}

/// Waiting for the Stack or its link: nothing is made, but whenever the account can still be
/// reached (the link's role is verified, which is all deletion needs too) what exists keeps its
/// security guarantees (`plan::guarded_plan`), through the same gate as every plan: under
/// `ObserveOnly` or an unapproved `Manual` plan nothing is repaired.
async fn guarded_wait(
    db: &Database,
    ctx: &Context,
    stack: &Stack,
    mut status: DatabaseStatus,
    message: String,
) -> Result<Step<DatabaseStatus>> {
    let namespace = db.namespace().unwrap_or_default();
    let link = match account_link::resolve_for_cleanup(ctx, stack, &namespace, true).await {
        Ok(LinkForCleanup::Usable(link)) => link,
        // The namespace no longer allowed: nothing can be reached; wait as before.
        Ok(LinkForCleanup::NothingMade(_)) | Err(Error::AccountLinkNoLongerAllows { .. }) => {
            return Ok(waiting(status, message));
        }
        Err(error) => return Err(error),
    };
    let aws = connect(ctx, stack, &link).await?;
    let names = names(db)?;
    let uid = owner_uid(db)?;
    let ours = |tags: &Tags| plan::claimed_by_other(tags, &uid).is_none();
    let snapshot = aws.snapshot().await?;
    let view = View {
        group: snapshot
            .security_groups
            .iter()
            .find(|g| g.name == names.instance && ours(&g.tags))
            .map(|g| SecurityGroup::clone(g)),
        instance: snapshot
            .db_instances
            .iter()
            .find(|i| i.identifier == names.instance && ours(&i.tags))
            .map(|i| ObservedInstance::clone(i)),
        ..View::default()
    };
    drop(snapshot);
    let repairs = plan::guarded_plan(&view);
    // The repairs while waiting read nothing of the placement, which is not known now.
    let placement = Placement::default();
    let desired = Desired { spec: &db.spec, names: &names, uid: &uid, placement: &placement };
    let planned = repairs.changes.iter().map(|c| c.planned(&desired, &view)).collect();
    if let Gate::Hold(health) = gate(db, ctx, &mut status, planned).await {
        return Ok(Step { status, health, requeue_after: None });
    }
    for change in &repairs.changes {
        match change {
            Change::RevokeIngress { rules } => {
                if let Some(group) = &view.group {
                    revoke_ingress(db, ctx, &aws, &group.id, rules, " while waiting").await?;
                }
            }
            Change::ModifyInstance(changes) => {
                aws.modify_instance(&names.instance, changes).await?;
                let note = format!("DB instance {} while waiting: {}", names.instance, changes.drift.join("; "));
                event(db, ctx, EventType::Warning, "DriftRepaired", note).await;
            }
            // The guarded plan holds nothing else; were it to, the next converged pass makes it.
            _ => break,
        }
    }
    Ok(waiting(status, message))
}

/// The governance of the Database's plans, from its spec.
fn governance(db: &Database) -> Governance<'_> {
    Governance::from(&db.spec.controls)
}

/// Puts the plan through the gate, writes it to the status, and reports new drift under
/// `ObserveOnly` (a `DriftDetected` Warning Event, once per plan).
async fn gate(db: &Database, ctx: &Context, status: &mut DatabaseStatus, changes: Vec<PlannedChange>) -> Gate {
    let previous = status.plan.take();
    let (plan, gate) = runtime_plan::gate(governance(db), db.metadata.generation, changes, previous.as_ref());
    if db.spec.controls.observe_only() && !plan.changes.is_empty() && runtime_plan::is_new(&plan, previous.as_ref()) {
        let what: Vec<String> =
            plan.changes.iter().map(|c| format!("{:?} {} {}: {}", c.action, c.resource, c.name, c.detail)).collect();
        let note = format!(
            "AWS differs from the spec (management ObserveOnly, nothing changed): plan {}: {}",
            plan.id,
            what.join("; ")
        );
        event(db, ctx, EventType::Warning, runtime_plan::DRIFT_DETECTED, note).await;
    }
    status.plan = Some(plan);
    gate
}

/// Revokes ingress rules: holes (an address range) are drift, reported as a Warning; rules of
/// groups no longer wanted (a Bastion gone) are a Normal change.
async fn revoke_ingress(
    db: &Database,
    ctx: &Context,
    aws: &DatabaseAws<'_>,
    group_id: &str,
    rules: &[Rule],
    when: &str,
) -> Result<()> {
    aws.groups().revoke_ingress(group_id, rules).await?;
    for rule in rules {
        let recorded =
            Recorded::Rule { group_id: group_id.to_string(), egress: false, rule: rule.clone(), added: false };
        aws.record(recorded).await;
    }
    let (holes, stale): (Vec<_>, Vec<_>) = rules.iter().partition(|r| plan::is_hole(r));
    if !holes.is_empty() {
        let what: Vec<String> = holes.iter().map(|r| plan::describe_rule(r)).collect();
        let note = format!("revoked ingress on the database's security group {group_id}{when}: {}", what.join(", "));
        event(db, ctx, EventType::Warning, "DriftRepaired", note).await;
    }
    if !stale.is_empty() {
        let what: Vec<String> = stale.iter().map(|r| plan::describe_rule(r)).collect();
        let note = format!("revoked ingress no longer wanted on {group_id}: {}", what.join(", "));
        event(db, ctx, EventType::Normal, "RevokedSecurityGroupRule", note).await;
    }
    Ok(())
}

/// Every change the Database's reconcile or cleanup makes has its Event, and is logged at info.
async fn event(db: &Database, ctx: &Context, type_: EventType, reason: &str, note: String) {
    log_change(db, reason, &note);
    ctx.event(&db.object_ref(&()), type_, reason, note).await;
}

/// How soon to look again while RDS is working (one DescribeDBInstances of the instance): soon
/// enough to notice `available` within seconds, never later than the resync period.
fn poll(ctx: &Context) -> Duration {
    ctx.settings.resync_period.min(ctx.settings.aws_poll)
}

/// The AWS clients of the Stack's account and region, acting as its link's role.
async fn connect<'a>(ctx: &'a Context, stack: &Stack, link: &AwsAccountLink) -> Result<DatabaseAws<'a>> {
    let region = stack.spec.region.clone().unwrap_or_else(|| link.spec.region.clone());
    let config = ctx.aws.for_link(link, &region).await?;
    let role_arn = link.status.as_ref().and_then(|s| s.role_arn.clone()).unwrap_or_default();
    let scope = Scope { account: link.spec.account_id.clone(), region };
    Ok(DatabaseAws::new(ctx, &config, role_arn, scope))
}

/// One step towards the spec: observe, plan, gate, apply the first change.
struct Converge<'a> {
    db: &'a Database,
    ctx: &'a Context,
    stack: &'a Stack,
    placement: Placement,
    aws: &'a DatabaseAws<'a>,
    names: Names,
    uid: String,
    tags: Vec<(String, String)>,
    status: DatabaseStatus,
}

impl<'a> Converge<'a> {
    fn new(
        db: &'a Database,
        ctx: &'a Context,
        stack: &'a Stack,
        placement: Placement,
        aws: &'a DatabaseAws<'a>,
        mut status: DatabaseStatus,
    ) -> Result<Self> {
        let namespace = db.namespace().unwrap_or_default();
        let names = names(db)?;
        let uid = owner_uid(db)?;
        let mut tags = plan::tags(&namespace, &db.name_any(), &uid, &names.display);
        // The Stack's extra tags go on everything of the stack; the operator's own keys win.
        for (k, v) in &stack.spec.tags {
            if !tags.iter().any(|(key, _)| key == k) {
                tags.push((k.clone(), v.clone()));
            }
        }
        status.db_instance_identifier = Some(names.instance.clone());
        Ok(Self { db, ctx, stack, placement, aws, uid, names, tags, status })
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        event(self.db, self.ctx, type_, reason, note).await;
    }

    /// A mutation was made: look again at once.
    fn next(&mut self, reason: &str, message: String) -> Result<Step<DatabaseStatus>> {
        let status = std::mem::take(&mut self.status);
        Ok(Step { status, health: Health::progressing(reason, message), requeue_after: Some(Duration::ZERO) })
    }

    /// RDS is working: look again in a while.
    fn busy(&mut self, reason: &str, message: String) -> Result<Step<DatabaseStatus>> {
        let (status, requeue_after) = (std::mem::take(&mut self.status), Some(poll(self.ctx)));
        Ok(Step { status, health: Health::progressing(reason, message), requeue_after })
    }

    async fn run(mut self) -> Result<Step<DatabaseStatus>> {
        let view = self.observe().await?;
        let desired = Desired { spec: &self.db.spec, names: &self.names, uid: &self.uid, placement: &self.placement };
        let plan = plan::plan(&desired, &view)?;
        let planned = plan.changes.iter().map(|c| c.planned(&desired, &view)).collect();
        if let Gate::Hold(health) = gate(self.db, self.ctx, &mut self.status, planned).await {
            // Kubernetes-side: the connection Secret may still be written from what exists.
            if let (Some(secret), Some(instance)) = (&view.secret, &view.instance)
                && let Some((host, port)) = instance.endpoint.clone()
                && instance.status.phase == Phase::Available
            {
                self.publish(secret, &host, port).await?;
            }
            return Ok(Step { status: self.status, health, requeue_after: None });
        }
        if let Some(change) = plan.next() {
            return self.apply(change, &view).await;
        }
        if let Some(wait) = &plan.wait {
            return self.busy(wait.reason, wait.message.clone());
        }
        self.ready(&view).await
    }

    /// What exists of the Database in AWS, read from the account's shared inventory; only what
    /// it does not show (yet), an instance RDS is working on, and what a decision needs from a
    /// secret's value are read one by one.
    async fn observe(&mut self) -> Result<View> {
        let snapshot = self.aws.snapshot().await?;
        let name = &self.names.instance;
        let vpc = &self.placement.vpc_id;
        // A group of that name that is not the operator's is not in the inventory: looked for
        // directly before one is created.
        let listed = snapshot.security_groups.iter().find(|g| g.vpc_id == *vpc && g.name == *name);
        let group = match listed {
            Some(g) => Some(SecurityGroup::clone(g)),
            None => self.aws.groups().find(vpc, name).await?,
        };
        let subnet_group = match snapshot.db_subnet_groups.iter().find(|g| g.name == *name) {
            None => None,
            // Recorded as this Database's by the status: its tags were read before.
            Some(found) if self.status.subnet_group_name.as_ref() == Some(name) => {
                Some(ObservedSubnetGroup { subnet_ids: found.subnet_ids.iter().cloned().collect(), tags: None })
            }
            // RDS lists subnet groups without tags: read them once before using it.
            Some(found) => self.aws.subnet_group_tags(name).await?.map(|tags| ObservedSubnetGroup {
                subnet_ids: found.subnet_ids.iter().cloned().collect(),
                tags: Some(tags),
            }),
        };
        let secret = snapshot.secrets.iter().find(|s| s.name == self.names.secret).map(|s| SecretInfo::clone(s));
        let listed = snapshot.db_instances.iter().find(|i| i.identifier == *name);
        // RDS is working on it (or it is new): its state now, not as the last list saw it.
        let instance = match listed {
            Some(i) if i.status.phase == Phase::Available => Some(ObservedInstance::clone(i)),
            _ => self.aws.instance(name).await?,
        };
        drop(snapshot);
        let restore_snapshot = match (&instance, &self.db.spec.restore_from_snapshot) {
            (None, Some(id)) => self.aws.db_snapshot(id).await?,
            _ => None,
        };
        let mut view = View {
            group,
            subnet_group,
            secret,
            instance,
            restore_snapshot,
            bastion_groups: bastion_groups(self.ctx, self.db, &self.stack.name_any()).await?,
            rotation: self.rotation_request(),
            endpoint_recorded: self.status.endpoint.is_some(),
            endpoint_in_secret: false,
        };
        self.record_ids(&view);
        if let (Some(secret), Some(instance)) = (&view.secret, &view.instance)
            && let Some((host, port)) = &instance.endpoint
            && instance.status.phase == Phase::Available
        {
            view.endpoint_in_secret = self.endpoint_in_secret(secret, host, *port).await?;
        }
        Ok(view)
    }

    /// What the status names, from what exists and is this Database's.
    fn record_ids(&mut self, view: &View) {
        let ours = |tags: &Tags| plan::claimed_by_other(tags, &self.uid).is_none();
        if let Some(group) = view.group.as_ref().filter(|g| ours(&g.tags)) {
            self.status.security_group_id = Some(group.id.clone());
        }
        if view.subnet_group.as_ref().is_some_and(|g| g.tags.as_ref().is_none_or(ours)) {
            self.status.subnet_group_name = Some(self.names.instance.clone());
        }
        if let Some(secret) = view.secret.as_ref().filter(|s| ours(&s.tags)) {
            self.status.secret_arn = Some(secret.arn.clone());
        }
        if let Some(instance) = view.instance.as_ref().filter(|i| ours(&i.tags)) {
            self.status.arn = instance.arn.clone();
        }
    }

    /// Nothing left to change: the connection Secret, and `Ready`.
    async fn ready(mut self, view: &View) -> Result<Step<DatabaseStatus>> {
        let (Some(secret), Some(instance)) = (&view.secret, &view.instance) else {
            return self.next("Observing", "looking again".into());
        };
        let Some((host, port)) = instance.endpoint.clone() else {
            return self
                .busy("InstanceNotAvailable", format!("RDS reports no endpoint for {} yet", self.names.instance));
        };
        self.publish(secret, &host, port).await?;
        self.status.endpoint = Some(StatusEndpoint { address: host.clone(), port });
        self.status.connection_secret_name =
            self.db.spec.connection_secret.enabled.then(|| self.names.connection_secret.clone());
        let message = format!(
            "PostgreSQL {} is available at {host}:{port}; credentials in the Secrets Manager secret {}{}",
            instance.engine_version,
            self.names.secret,
            match &self.status.connection_secret_name {
                Some(name) => format!(" and the Secret {name}"),
                None => String::new(),
            }
        );
        Ok(Step { status: self.status, health: Health::ready("Available", message), requeue_after: None })
    }
}

/// The security groups of the Stack's Bastions that are not being deleted: a Bastion on its way
/// out loses its access first, so that its own group can then be deleted; an expired one has none.
async fn bastion_groups(ctx: &Context, db: &Database, stack: &str) -> Result<BTreeSet<String>> {
    let namespace = db.namespace().unwrap_or_default();
    let bastions = Api::<Bastion>::namespaced(ctx.client.clone(), &namespace).list(&ListParams::default()).await?;
    Ok(bastions
        .items
        .into_iter()
        .filter(|b| b.spec.stack_ref.name == stack && b.metadata.deletion_timestamp.is_none())
        .filter(Bastion::grants_database_access)
        .filter_map(|b| b.status?.security_group_id)
        .collect())
}

/// Every change the Database's reconcile or cleanup makes (each has its Event) is logged at info,
/// as the Stack's AWS mutations are.
fn log_change(db: &Database, reason: &str, note: &str) {
    let (namespace, name) = (db.namespace().unwrap_or_default(), db.name_any());
    info!(kind = "Database", %namespace, %name, reason, %note, "change made");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_without_a_uid_has_no_names_rather_than_names_ending_in_nothing() {
        let spec = serde_json::from_value(serde_json::json!({"stackRef": {"name": "web"}})).unwrap();
        let mut db = Database::new("orders", spec);
        assert!(matches!(names(&db), Err(Error::OwnerUidMissing { .. })));
        db.metadata.uid = Some("0f2a-uid".into());
        assert!(names(&db).is_ok());
    }
}
