//! The Database's reconcile steps, read from the account's shared inventory, as many in one pass
//! as can be made (each reads the view its predecessor's response updated): wait for the Stack
//! (no AWS call until it is Ready), then the security group and its ingress, the subnet group,
//! the secret (before the instance, so that its password can never be lost), the instance, drift
//! and in-place changes, and last the endpoint in both secrets. Deletion follows `deletionPolicy`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::aws::{
    CreateInstance, DatabaseAws, Deleted, PASSWORD_FROM_SNAPSHOT, PASSWORD_TAG, RestoreInstance, SecretInfo,
};
use super::credentials::SecretDocument;
use super::plan::{self, DesiredInstance, Names, ObservedInstance, Phase, Placement};
use crate::account_link::{self, LinkFor, LinkForCleanup};
use crate::api::{
    AwsAccountLink, Bastion, Database, DatabaseDeletionPolicy, DatabaseStatus, Endpoint as StatusEndpoint, Stack,
};
use crate::aws::inventory::{self, Created, Kind, Recorded, Rule, Scope, SecurityGroup};
use crate::aws::tags::Tags;
use crate::error::{Error, Result};
use crate::runtime::conditions::Health;
use crate::runtime::context::Context;
/// The label on connection Secrets; the controller watches Secrets with it (and owned by a
/// Database) so that one deleted or edited by hand is written again at once.
pub use crate::runtime::owned_secrets::MANAGED_LABEL;
use crate::runtime::owned_secrets::OwnedSecrets;
use crate::runtime::reconciler::{Cleanup, Managed, Step};
use crate::stack::{self, StackFor};

mod connection;
mod password;

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
            StackFor::NotReady { stack, message } => return guarded_wait(self, ctx, &stack, status, message).await,
            StackFor::Usable(stack) => stack,
        };
        let placement = match plan::placement(&stack) {
            Ok(p) => p,
            Err(why) => {
                let message = format!("Stack {:?} is Ready, but {why}", stack.name_any());
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
            let step = Converge::new(self, ctx, &stack, placement.clone(), &aws, status).run().await?;
            if step.requeue_after != Some(Duration::ZERO) || started.elapsed() >= PASS_TIME {
                return Ok(step);
            }
            status = step.status;
        }
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Cleanup> {
        let namespace = self.namespace().unwrap_or_default();
        let reference = self.object_ref(&());
        let names = names(self);
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
        Teardown { db: self, ctx, aws, names, vpc_id }.run().await
    }
}

/// The Database's names, from its namespace, Stack, name and UID.
fn names(db: &Database) -> Names {
    let namespace = db.namespace().unwrap_or_default();
    Names::new(&namespace, &db.spec.stack_ref.name, &db.name_any(), &db.uid().unwrap_or_default(), &db.spec)
}

fn waiting(status: DatabaseStatus, message: String) -> Step<DatabaseStatus> {
    Step { status, health: Health::progressing("WaitingForStack", message), requeue_after: None }
}

/// Waiting for the Stack or its link: nothing is made, but whenever the account can still be
/// reached (the link's role is verified, which is all deletion needs too) what exists keeps its
/// security guarantees: an instance made public is made private again and put back behind its
/// own security group, and that group loses every rule admitting an address range. Rules naming
/// groups are left for the next converged pass, which knows the Stack's app group and Bastions.
async fn guarded_wait(
    db: &Database,
    ctx: &Context,
    stack: &Stack,
    status: DatabaseStatus,
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
    let names = names(db);
    let uid = db.uid().unwrap_or_default();
    let ours = |tags: &Tags| plan::claimed_by_other(tags, &uid).is_none();
    let event =
        |note: String| async move { ctx.event(&db.object_ref(&()), EventType::Warning, "DriftRepaired", note).await };
    let snapshot = aws.snapshot().await?;
    let group = snapshot.security_groups.iter().find(|g| g.name == names.instance && ours(&g.tags)).cloned();
    let instance = snapshot.db_instances.iter().find(|i| i.identifier == names.instance && ours(&i.tags)).cloned();
    drop(snapshot);

    if let Some(group) = &group {
        let holes: Vec<Rule> = group.ingress.iter().filter(|r| plan::is_hole(r)).cloned().collect();
        if !holes.is_empty() {
            aws.groups().revoke_ingress(&group.id, &holes).await?;
            for rule in &holes {
                let recorded =
                    Recorded::Rule { group_id: group.id.clone(), egress: false, rule: rule.clone(), added: false };
                aws.record(recorded).await;
            }
            let what: Vec<String> = holes.iter().map(plan::describe_rule).collect();
            event(format!(
                "revoked ingress on the database's security group {} while waiting: {}",
                group.id,
                what.join(", ")
            ))
            .await;
        }
    }
    if let Some(instance) = instance.filter(|i| plan::phase(&i.status) == Phase::Available) {
        let mut changes = plan::InstanceChanges::default();
        if instance.publicly_accessible {
            changes.publicly_accessible = Some(false);
            changes.drift.push("PubliclyAccessible was turned on; turned off".into());
        }
        if let Some(group) = group.as_ref().filter(|g| instance.security_groups != [g.id.clone()]) {
            changes.security_groups = Some(vec![group.id.clone()]);
            changes.drift.push(format!(
                "the instance had the security groups [{}]; only {} is allowed",
                instance.security_groups.join(", "),
                group.id
            ));
        }
        if !changes.is_empty() {
            aws.modify_instance(&names.instance, &changes).await?;
            event(format!("DB instance {} while waiting: {}", names.instance, changes.drift.join("; "))).await;
        }
    }
    Ok(waiting(status, message))
}

/// How soon to look again while RDS is working: soon enough to notice `available` quickly, never
/// later than the resync period.
fn poll(ctx: &Context) -> Duration {
    ctx.settings.resync_period.min(Duration::from_secs(15))
}

/// The AWS clients of the Stack's account and region, acting as its link's role.
async fn connect<'a>(ctx: &'a Context, stack: &Stack, link: &AwsAccountLink) -> Result<DatabaseAws<'a>> {
    let region = stack.spec.region.clone().unwrap_or_else(|| link.spec.region.clone());
    let config = ctx.aws.for_link(link, &region).await?;
    let role_arn = link.status.as_ref().and_then(|s| s.role_arn.clone()).unwrap_or_default();
    let scope = Scope { account: link.spec.account_id.clone(), region };
    Ok(DatabaseAws::new(ctx, &config, role_arn, scope))
}

/// One pass towards the spec.
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
    ) -> Self {
        let namespace = db.namespace().unwrap_or_default();
        let names = names(db);
        let mut tags = plan::tags(&namespace, &db.name_any(), &db.uid().unwrap_or_default(), &names.display);
        // The Stack's extra tags go on everything of the stack; the operator's own keys win.
        for (k, v) in &stack.spec.tags {
            if !tags.iter().any(|(key, _)| key == k) {
                tags.push((k.clone(), v.clone()));
            }
        }
        status.db_instance_identifier = Some(names.instance.clone());
        Self { db, ctx, stack, placement, aws, uid: db.uid().unwrap_or_default(), names, tags, status }
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        log_change(self.db, reason, &note);
        self.ctx.event(&self.db.object_ref(&()), type_, reason, note).await;
    }

    /// A mutation was made: record it and look again at once.
    fn next(&mut self, reason: &str, message: String) -> Result<Step<DatabaseStatus>> {
        let status = std::mem::take(&mut self.status);
        Ok(Step { status, health: Health::progressing(reason, message), requeue_after: Some(Duration::ZERO) })
    }

    /// RDS is working: look again in a while.
    fn busy(&mut self, reason: &str, message: String) -> Result<Step<DatabaseStatus>> {
        let (status, requeue_after) = (std::mem::take(&mut self.status), Some(poll(self.ctx)));
        Ok(Step { status, health: Health::progressing(reason, message), requeue_after })
    }

    /// Tells the inventory which ingress rules were authorized (`added`) or revoked.
    async fn record_rules(&self, group_id: &str, rules: &[Rule], added: bool) {
        for rule in rules {
            let rule = rule.clone();
            self.aws.record(Recorded::Rule { group_id: group_id.to_string(), egress: false, rule, added }).await;
        }
    }

    /// Only what carries this object's UID is used, changed or deleted.
    fn claim(&self, what: &str, name: &str, tags: &Tags) -> Result<()> {
        match plan::claimed_by_other(tags, &self.uid) {
            None => Ok(()),
            Some(found) => Err(Error::ResourceNotOwned { what: what.into(), name: name.into(), found }),
        }
    }

    /// Creates the dedicated security group (no ingress yet) and records it.
    async fn create_group(&mut self) -> Result<SecurityGroup> {
        let description =
            format!("PostgreSQL of Database {}: 5432 from the stack's app and bastion groups only", self.names.display);
        let vpc = &self.placement.vpc_id;
        let id = self.aws.groups().create(vpc, &self.names.instance, &description, &self.tags).await?;
        let tags = self.tags.iter().cloned().collect();
        let created = inventory::new_security_group(&id, vpc, &self.names.instance, tags);
        self.aws.record(Recorded::Created(Created::SecurityGroup(created.clone()))).await;
        self.event(EventType::Normal, "CreatedSecurityGroup", format!("created security group {id}")).await;
        Ok(created)
    }

    async fn run(mut self) -> Result<Step<DatabaseStatus>> {
        // Everything is read from the account's shared inventory; only what it does not show (yet)
        // and an instance RDS is working on are read one by one.
        let snapshot = self.aws.snapshot().await?;
        // 1. The dedicated security group (a group of that name that is not the operator's is not
        // in the inventory: looked for directly before creating one).
        let vpc = &self.placement.vpc_id;
        let listed = snapshot.security_groups.iter().find(|g| g.vpc_id == *vpc && g.name == self.names.instance);
        let group = match listed {
            Some(g) => Some(SecurityGroup::clone(g)),
            None => self.aws.groups().find(vpc, &self.names.instance).await?,
        };
        // What a create leaves is known from it: the steps after a create go on in the same pass.
        let group = match group {
            Some(group) => group,
            None => self.create_group().await?,
        };
        self.claim("security group", &self.names.instance, &group.tags)?;
        self.status.security_group_id = Some(group.id.clone());

        // 2. Its ingress: exactly 5432 from the app group and the Bastions' groups.
        let bastions = bastion_groups(self.ctx, self.db, &self.stack.name_any()).await?;
        let desired = plan::desired_ingress(&self.placement.app_security_group, bastions.iter().map(String::as_str));
        let changes = plan::ingress_changes(&group.ingress, &desired);
        if !changes.revoke.is_empty() {
            self.aws.groups().revoke_ingress(&group.id, &changes.revoke).await?;
            self.record_rules(&group.id, &changes.revoke, false).await;
            let (holes, stale): (Vec<_>, Vec<_>) = changes.revoke.iter().partition(|r| plan::is_hole(r));
            if !holes.is_empty() {
                let what: Vec<String> = holes.iter().map(|r| plan::describe_rule(r)).collect();
                let note =
                    format!("revoked ingress on the database's security group {}: {}", group.id, what.join(", "));
                self.event(EventType::Warning, "DriftRepaired", note).await;
            }
            if !stale.is_empty() {
                let what: Vec<String> = stale.iter().map(|r| plan::describe_rule(r)).collect();
                let note = format!("revoked ingress no longer wanted on {}: {}", group.id, what.join(", "));
                self.event(EventType::Normal, "RevokedIngress", note).await;
            }
        }
        if !changes.authorize.is_empty() {
            self.aws.groups().authorize_ingress(&group.id, &changes.authorize).await?;
            self.record_rules(&group.id, &changes.authorize, true).await;
            let what: Vec<String> = changes.authorize.iter().map(plan::describe_rule).collect();
            let note = format!("allowed on {}: {}", group.id, what.join(", "));
            self.event(EventType::Normal, "AuthorizedIngress", note).await;
        }

        // 3. The subnet group over the private (or isolated) subnets.
        let subnets: Vec<String> = self.placement.subnet_ids.iter().cloned().collect();
        let listed = snapshot.db_subnet_groups.iter().find(|g| g.name == self.names.instance);
        if listed.is_some() && self.status.subnet_group_name.as_ref() != Some(&self.names.instance) {
            // Not known as this object's yet (RDS lists subnet groups without tags): read its tags
            // once before using it; the status remembers the answer.
            let Some(tags) = self.aws.subnet_group_tags(&self.names.instance).await? else {
                return self.next("CreatingSubnetGroup", format!("{} is gone; looking again", self.names.instance));
            };
            self.claim("DB subnet group", &self.names.instance, &tags)?;
            self.status.subnet_group_name = Some(self.names.instance.clone());
        }
        match listed {
            None => {
                let description = format!("Database {}: the stack's private side", self.names.display);
                if !self.aws.create_subnet_group(&self.names.instance, &description, &subnets, &self.tags).await? {
                    // One of that name existed: its tags are read on the next step.
                    let message = format!("a DB subnet group {} exists already", self.names.instance);
                    return self.next("CreatingSubnetGroup", message);
                }
                let note = format!("created DB subnet group {} over {}", self.names.instance, subnets.join(", "));
                self.event(EventType::Normal, "CreatedDbSubnetGroup", note).await;
                self.status.subnet_group_name = Some(self.names.instance.clone());
            }
            Some(found) if found.subnet_ids.iter().cloned().collect::<BTreeSet<_>>() != self.placement.subnet_ids => {
                self.aws.modify_subnet_group(&self.names.instance, &subnets).await?;
                let note = format!(
                    "DB subnet group {} had the subnets {}; set to {}",
                    self.names.instance,
                    found.subnet_ids.join(", "),
                    subnets.join(", ")
                );
                self.event(EventType::Warning, "DriftRepaired", note).await;
                return self.next("UpdatingSubnetGroup", format!("set the subnets of {}", self.names.instance));
            }
            Some(_) => {}
        }

        // 4. The secret, before the instance: the password exists in AWS before anything uses it.
        let Some(secret) = snapshot.secrets.iter().find(|s| s.name == self.names.secret).cloned() else {
            return self.create_secret().await;
        };
        self.claim("Secrets Manager secret", &self.names.secret, &secret.tags)?;
        self.status.secret_arn = Some(secret.arn.clone());
        if secret.scheduled_for_deletion {
            self.aws.restore_secret(&secret.arn).await?;
            let note = format!("the secret {} was scheduled for deletion; restored it", self.names.secret);
            self.event(EventType::Warning, "DriftRepaired", note).await;
            return self.next("RestoringSecret", format!("restored the secret {}", self.names.secret));
        }
        if secret.kms_key_id.as_deref().is_some_and(|k| k != self.placement.kms_key_arn) {
            self.aws.set_secret_key(&secret.arn, &self.placement.kms_key_arn).await?;
            let note = format!("the secret {} is encrypted with the Stack's key again", self.names.secret);
            self.event(EventType::Warning, "DriftRepaired", note).await;
            return self.next("UpdatingSecret", format!("set the KMS key of {}", self.names.secret));
        }

        // 5. The instance.
        let listed = snapshot.db_instances.iter().find(|i| i.identifier == self.names.instance);
        // RDS is working on it (or it is new): its state now, not as the last list saw it.
        let instance = match listed {
            Some(i) if plan::phase(&i.status) == Phase::Available => Some(ObservedInstance::clone(i)),
            _ => self.aws.instance(&self.names.instance).await?,
        };
        let Some(instance) = instance else {
            if let Some(snapshot) = self.db.spec.restore_from_snapshot.clone() {
                return self.restore_instance(&snapshot).await;
            }
            self.announce_earlier_snapshots().await?;
            return self.create_instance(&secret).await;
        };
        self.claim("DB instance", &self.names.instance, &instance.tags)?;
        self.status.arn = instance.arn.clone();
        match plan::phase(&instance.status) {
            Phase::Available => {}
            Phase::Busy | Phase::Deleting => {
                let message = format!("RDS reports the DB instance {} as {:?}", self.names.instance, instance.status);
                return self.busy("InstanceNotAvailable", message);
            }
            Phase::Broken => {
                return Err(Error::DbInstanceUnhealthy {
                    identifier: self.names.instance.clone(),
                    status: instance.status.clone(),
                });
            }
        }
        // A restored instance still has its snapshot's master password: the secret's replaces it.
        if instance.tags.get(PASSWORD_TAG) == Some(PASSWORD_FROM_SNAPSHOT) {
            return self.set_master_password(&secret, &instance).await;
        }

        // 6. Security drift and in-place changes, in one ModifyDBInstance.
        let desired = DesiredInstance::from_spec(&self.db.spec);
        let changes = plan::instance_changes(&desired, &group.id, &instance).map_err(Error::InvalidSpec)?;
        if !changes.is_empty() {
            self.aws.modify_instance(&self.names.instance, &changes).await?;
            if !changes.drift.is_empty() {
                let note = format!("DB instance {}: {}", self.names.instance, changes.drift.join("; "));
                self.event(EventType::Warning, "DriftRepaired", note).await;
            }
            if !changes.updates.is_empty() {
                let note = format!("DB instance {}: {}", self.names.instance, changes.updates.join("; "));
                self.event(EventType::Normal, "ModifyingDbInstance", note).await;
            }
            let what: Vec<String> = changes.drift.iter().chain(&changes.updates).cloned().collect();
            return self.busy("ModifyingInstance", format!("applying to {}: {}", self.names.instance, what.join("; ")));
        }
        let faults = plan::placement_faults(&instance, &self.names.instance, &self.placement.kms_key_arn);
        if !faults.is_empty() {
            return Err(Error::DbInstanceNotCompliant {
                identifier: self.names.instance.clone(),
                why: faults.join("; "),
            });
        }

        // 7. The password RDS has is the secret's (a rotation asked for, or one made by hand).
        if let Some(step) = self.sync_password(&secret).await? {
            return Ok(step);
        }

        // 8. The endpoint in the secret, and the connection Secret.
        let Some((host, port)) = instance.endpoint.clone() else {
            return self
                .busy("InstanceNotAvailable", format!("RDS reports no endpoint for {} yet", self.names.instance));
        };
        self.sync_credentials(&secret, &host, port).await?;
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

    /// Where a password is made when no secret exists under the Database's name: for a new
    /// instance, or, asked for with the rotation annotation, for an instance whose secret was lost
    /// (RDS then follows the new secret, see password.rs). Once the secret exists, its password is
    /// the one the instance gets, whatever crashes when.
    async fn create_secret(mut self) -> Result<Step<DatabaseStatus>> {
        let request = self.rotation_request();
        if let Some(instance) = self.aws.instance(&self.names.instance).await? {
            self.claim("DB instance", &self.names.instance, &instance.tags)?;
            // An instance whose password is nowhere: a new one is made only when asked for.
            if request.is_none() {
                return Err(Error::SecretUnusable {
                    name: self.names.secret.clone(),
                    why: format!(
                        "it was deleted while the DB instance {} exists; to give the instance a new password, set the annotation {} to a new value",
                        self.names.instance,
                        password::ROTATE_ANNOTATION
                    ),
                });
            }
        }
        let password = self.aws.random_password().await?;
        let spec = &self.db.spec;
        let document = SecretDocument::new(&spec.master_username, password, &spec.database_name, &self.names.instance);
        let description = format!("Master credentials of Database {} (RDS PostgreSQL)", self.names.display);
        self.aws
            .create_secret(
                &self.names.secret,
                &description,
                &self.placement.kms_key_arn,
                &document,
                &self.tags,
                request.as_deref(),
            )
            .await?;
        let note = format!("stored generated master credentials in the Secrets Manager secret {}", self.names.secret);
        self.event(EventType::Normal, "CreatedSecret", note).await;
        self.next("CreatingSecret", format!("created the secret {}", self.names.secret))
    }

    async fn create_instance(mut self, secret: &SecretInfo) -> Result<Step<DatabaseStatus>> {
        let value = self.aws.secret_value(&secret.arn).await?;
        let document = value.document.map_err(|why| Error::SecretUnusable { name: self.names.secret.clone(), why })?;
        // The secret records which version's password RDS gets before RDS gets it, so that a
        // crash after the create never leaves the instance looking out of step (password.rs).
        self.record_password_version(secret, value.version.as_deref()).await?;
        let spec = &self.db.spec;
        self.aws
            .create_instance(&CreateInstance {
                identifier: &self.names.instance,
                engine_version: &spec.engine_version,
                class: &spec.instance_class,
                storage_gib: spec.allocated_storage_gi_b,
                db_name: &spec.database_name,
                username: &document.username,
                password: &document.password,
                subnet_group: &self.names.instance,
                security_group: self.status.security_group_id.as_deref().unwrap_or_default(),
                kms_key_arn: &self.placement.kms_key_arn,
                multi_az: spec.multi_az,
                backup_days: spec.backup_retention_days,
                tags: &self.tags,
            })
            .await?;
        let note = format!(
            "creating DB instance {} (PostgreSQL {}, {}, {} GiB, encrypted, not public)",
            self.names.instance, spec.engine_version, spec.instance_class, spec.allocated_storage_gi_b
        );
        self.event(EventType::Normal, "CreatingDbInstance", note).await;
        self.busy("InstanceNotAvailable", format!("RDS is creating the DB instance {}", self.names.instance))
    }

    /// Before an empty instance is made under an identifier that had one before (a Database
    /// deleted and created again, e.g. by `kubectl replace --force`), says which snapshots of the
    /// earlier instance exist and how to start from one: the new instance has none of that data.
    async fn announce_earlier_snapshots(&self) -> Result<()> {
        let snapshots = self.aws.manual_snapshots_of(&self.names.instance).await?;
        if let Some(latest) = snapshots.last() {
            let note = format!(
                "DB snapshot(s) of an earlier DB instance {} exist: {}. This Database starts empty, without their data; to start from {latest} instead, create the Database again with spec.restoreFromSnapshot: {latest}",
                self.names.instance,
                snapshots.join(", ")
            );
            self.event(EventType::Warning, "EarlierSnapshotExists", note).await;
        }
        Ok(())
    }

    /// `spec.restoreFromSnapshot`: the instance from the snapshot, in the Stack's subnet group and
    /// the Database's security group, not public. Refused (`Stalled`) when the snapshot does not
    /// exist, is not PostgreSQL, or is not encrypted with the Stack's key: a restore keeps the
    /// snapshot's key, and the Database promises the Stack's.
    async fn restore_instance(mut self, snapshot: &str) -> Result<Step<DatabaseStatus>> {
        let unusable = |why: String| Error::RestoreSnapshotUnusable { snapshot: snapshot.into(), why };
        let Some(found) = self.aws.db_snapshot(snapshot).await? else {
            return Err(unusable("does not exist in the Stack's account and region".into()));
        };
        if found.engine != plan::ENGINE {
            return Err(unusable(format!("is a snapshot of engine {:?}, not {}", found.engine, plan::ENGINE)));
        }
        let key = &self.placement.kms_key_arn;
        if !found.encrypted || !found.kms_key_id.as_deref().is_some_and(|k| plan::same_key(k, key)) {
            let with = found.kms_key_id.as_deref().filter(|_| found.encrypted).unwrap_or("no key (unencrypted)");
            return Err(unusable(format!(
                "is encrypted with {with}, not the Stack's KMS key {key}: copy it with that key first (aws rds copy-db-snapshot --kms-key-id {key}) and name the copy"
            )));
        }
        if found.status != "available" {
            let message = format!("waiting for the DB snapshot {snapshot} to be available (it is {})", found.status);
            return self.busy("SnapshotNotAvailable", message);
        }
        let spec = &self.db.spec;
        let mut tags = self.tags.clone();
        tags.push((PASSWORD_TAG.to_string(), PASSWORD_FROM_SNAPSHOT.to_string()));
        self.aws
            .restore_instance(&RestoreInstance {
                identifier: &self.names.instance,
                snapshot,
                class: &spec.instance_class,
                subnet_group: &self.names.instance,
                security_group: self.status.security_group_id.as_deref().unwrap_or_default(),
                multi_az: spec.multi_az,
                tags: &tags,
            })
            .await?;
        let note = format!(
            "restoring DB instance {} from the DB snapshot {snapshot} (encrypted, not public); its master password is then set to the secret's",
            self.names.instance
        );
        self.event(EventType::Normal, "RestoringDbInstance", note).await;
        self.busy(
            "InstanceNotAvailable",
            format!("RDS is restoring the DB instance {} from {snapshot}", self.names.instance),
        )
    }

    /// Gives a restored instance the secret's master password in place of its snapshot's.
    async fn set_master_password(
        mut self,
        secret: &SecretInfo,
        instance: &ObservedInstance,
    ) -> Result<Step<DatabaseStatus>> {
        let value = self.aws.secret_value(&secret.arn).await?;
        let document = value.document.map_err(|why| Error::SecretUnusable { name: self.names.secret.clone(), why })?;
        self.aws.set_restored_master_password(instance, &document.password).await?;
        let note = format!(
            "set the master password of the restored DB instance {} to the one in the secret {} (the snapshot's no longer works)",
            self.names.instance, self.names.secret
        );
        self.event(EventType::Normal, "SetMasterPassword", note).await;
        self.busy("SettingMasterPassword", format!("RDS is setting the master password of {}", self.names.instance))
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
        .filter(crate::bastion::grants_database_access)
        .filter_map(|b| b.status?.security_group_id)
        .collect())
}

/// One pass of deletion (policies `Snapshot` and `Delete`): the instance first, with deletion
/// protection lifted only now; then, once RDS no longer lists it, the subnet group, the security
/// group and the secret. Every step is confirmed by a lookup on a later pass.
struct Teardown<'a> {
    db: &'a Database,
    ctx: &'a Context,
    aws: DatabaseAws<'a>,
    names: Names,
    vpc_id: Option<String>,
}

impl Teardown<'_> {
    fn pending(&self, reason: &'static str, message: String, requeue_after: Duration) -> Result<Cleanup> {
        Ok(Cleanup::Pending { reason, message, requeue_after })
    }

    /// Only what carries this object's UID is deleted; anything else of its names is left alone.
    fn ours(&self, tags: &Tags) -> bool {
        plan::claimed_by_other(tags, &self.db.uid().unwrap_or_default()).is_none()
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        log_change(self.db, reason, &note);
        self.ctx.event(&self.db.object_ref(&()), type_, reason, note).await;
    }

    async fn run(self) -> Result<Cleanup> {
        let names = &self.names;
        if let Some(instance) = self.aws.instance(&names.instance).await?.filter(|i| self.ours(&i.tags)) {
            let phase = plan::phase(&instance.status);
            if phase == Phase::Deleting {
                let message = format!("RDS is deleting the DB instance {}", names.instance);
                return self.pending("DeletingInstance", message, poll(self.ctx));
            }
            if phase == Phase::Busy {
                let message =
                    format!("waiting for RDS to finish {:?} on {} before deleting it", instance.status, names.instance);
                return self.pending("DeletingInstance", message, poll(self.ctx));
            }
            if instance.deletion_protection {
                self.aws.allow_deletion(&names.instance).await?;
                let note = format!("lifted deletion protection of {} to delete it", names.instance);
                self.event(EventType::Normal, "DeletionProtectionLifted", note).await;
                return self.pending(
                    "DeletingInstance",
                    format!("lifted deletion protection of {}", names.instance),
                    Duration::ZERO,
                );
            }
            let snapshot = (self.db.spec.deletion_policy == DatabaseDeletionPolicy::Snapshot)
                .then_some(names.final_snapshot.as_str());
            if self.aws.delete_instance(&names.instance, snapshot).await? {
                let note = match snapshot {
                    Some(s) => format!("deleting DB instance {} after a final snapshot named {s}", names.instance),
                    None => format!("deleting DB instance {} without a final snapshot", names.instance),
                };
                self.event(EventType::Normal, "DeletingDbInstance", note).await;
            }
            return self.pending(
                "DeletingInstance",
                format!("RDS is deleting the DB instance {}", names.instance),
                poll(self.ctx),
            );
        }

        if let Some(vpc_id) = &self.vpc_id
            && let Some(group) = self.aws.groups().find(vpc_id, &names.instance).await?.filter(|g| self.ours(&g.tags))
        {
            return match self.aws.groups().delete(&group.id).await? {
                Deleted::Done => {
                    self.aws.record(Recorded::Deleted(Kind::SecurityGroups, group.id.clone())).await;
                    self.event(
                        EventType::Normal,
                        "DeletedSecurityGroup",
                        format!("deleted security group {}", group.id),
                    )
                    .await;
                    self.pending(
                        "DeletingSecurityGroup",
                        format!("deleted security group {}", group.id),
                        Duration::ZERO,
                    )
                }
                Deleted::StillInUse => {
                    let message = format!(
                        "security group {} is still in use (network interfaces of the deleted instance)",
                        group.id
                    );
                    self.pending("DeletingSecurityGroup", message, poll(self.ctx))
                }
            };
        }

        if self.aws.subnet_group_tags(&names.instance).await?.is_some_and(|tags| self.ours(&tags)) {
            return match self.aws.delete_subnet_group(&names.instance).await? {
                Deleted::Done => {
                    let note = format!("deleted DB subnet group {}", names.instance);
                    self.event(EventType::Normal, "DeletedDbSubnetGroup", note).await;
                    self.pending(
                        "DeletingSubnetGroup",
                        format!("deleted DB subnet group {}", names.instance),
                        Duration::ZERO,
                    )
                }
                Deleted::StillInUse => {
                    let message = format!("DB subnet group {} is still in use", names.instance);
                    self.pending("DeletingSubnetGroup", message, poll(self.ctx))
                }
            };
        }

        if let Some(secret) =
            self.aws.secret(&names.secret).await?.filter(|s| self.ours(&s.tags) && !s.scheduled_for_deletion)
        {
            self.aws.delete_secret(&secret.arn).await?;
            self.event(
                EventType::Normal,
                "DeletedSecret",
                format!("deleted the Secrets Manager secret {}", names.secret),
            )
            .await;
            return self.pending("DeletingSecret", format!("deleted the secret {}", names.secret), Duration::ZERO);
        }
        if let Err(error) = self.forget_connection_secret().await {
            warn!(%error, "could not delete the connection Secret; the garbage collector will");
        }
        Ok(Cleanup::Done)
    }

    /// The owner reference would have the garbage collector delete it too, but only after the
    /// Database is gone; deleting it now keeps the password from outliving the database. Only a
    /// Secret that is this Database's is deleted, under the name the status or the spec gives.
    async fn forget_connection_secret(&self) -> Result<()> {
        let owned = OwnedSecrets::new(self.ctx.client.clone(), self.db);
        let recorded = self.db.status.as_ref().and_then(|s| s.connection_secret_name.clone());
        for name in recorded.into_iter().chain([self.names.connection_secret.clone()]) {
            owned.delete_if_ours(&name).await?;
        }
        Ok(())
    }
}

/// Every change the Database's reconcile or cleanup makes (each has its Event) is logged at info,
/// as the Stack's AWS mutations are.
fn log_change(db: &Database, reason: &str, note: &str) {
    let (namespace, name) = (db.namespace().unwrap_or_default(), db.name_any());
    info!(kind = "Database", %namespace, %name, reason, %note, "change made");
}
