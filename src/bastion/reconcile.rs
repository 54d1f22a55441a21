//! The Bastion's reconcile, which only sequences: wait for what it needs of the Stack (its VPC
//! and subnet in the Stack's status; no AWS mutation but the guarded ones until then), refuse
//! `Ssh` on an isolated Stack, then observe (`apply::observe`), plan (`plan::plan`, pure), pass
//! the gate (`status.plan`, `changePolicy`, `management`), apply one change (`Applier::apply`)
//! and plan again from its recorded effect. Deletion follows `plan::teardown` one change per pass.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::info;

use super::apply::{Applied, Applier, observe, poll};
use super::aws::BastionAws;
use super::keys;
use super::plan::{self, Change, Desired, Names, NoPlacement, Placement};
use crate::account_link::template::bastion_boundary_policy_name;
use crate::account_link::{self, LinkFor, LinkForCleanup};
use crate::api::{AwsAccountLink, Bastion, BastionAccess, BastionStatus, Database, Permissions, Stack};
use crate::aws::ownership::owner_uid;
use crate::error::{Error, Result};
use crate::runtime::conditions::Health;
use crate::runtime::context::Context;
use crate::runtime::owned_secrets::OwnedSecrets;
use crate::runtime::plan::{self as runtime_plan, Gate, Governance};
use crate::runtime::reconciler::{Cleanup, Managed, Step};
use crate::stack::{self, StackFor};

/// The Ready reason once the TTL ended; the Database stops admitting the Bastion's group then.
pub const EXPIRED: &str = crate::api::BASTION_EXPIRED;

impl Managed for Bastion {
    type Status = BastionStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Step<Self::Status>> {
        // Before any AWS call: the API server bounds each range, only the union tells how wide
        // port 22 would open.
        if self.spec.access == BastionAccess::Ssh {
            plan::check_allowed_cidrs(&self.spec.allowed_cidrs)?;
        }
        let namespace = self.namespace().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let stack = match stack::resolve(ctx, &namespace, &self.spec.stack_ref.name).await? {
            StackFor::Deleting { stack, message } => return guarded_wait(self, ctx, &stack, status, message).await,
            StackFor::Usable(stack) => stack,
        };
        let placement = match plan::placement(&stack, self.spec.access) {
            Ok(p) => p,
            Err(NoPlacement::SshNeedsPublicSubnet) => {
                return Err(Error::SshNeedsPublicSubnet { stack: stack.name_any() });
            }
            Err(NoPlacement::Incomplete(missing)) => {
                let message = stack::missing_message(&stack, &missing);
                return guarded_wait(self, ctx, &stack, status, message).await;
            }
        };
        let link = match account_link::resolve_for(ctx, &stack, &namespace).await? {
            LinkFor::NotReady { message } => return guarded_wait(self, ctx, &stack, status, message).await,
            LinkFor::Usable(link) => link,
        };
        let aws = connect(ctx, &stack, &link).await?;
        let names = names(self)?;
        let uid = owner_uid(self)?;
        let tags = plan::tags(&namespace, &self.name_any(), &uid, &names.display, &stack.spec.tags);
        let vpc = placement.vpc_id.clone();
        let observed = observe(&aws, self, ctx, &names, Some(&vpc), true).await?;
        let applier = Applier {
            bastion: self,
            ctx,
            aws,
            names,
            uid,
            tags,
            boundary: boundary_arn(&link),
            placement: Some(placement.clone()),
            spec_changed: status.observed_generation != self.metadata.generation,
            known_instance: status.instance_id.clone(),
            observed,
        };
        let region = region(&stack, &link);
        Converge { applier, stack: &stack, placement, region, status }.run().await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Cleanup> {
        let namespace = self.namespace().unwrap_or_default();
        let reference = self.object_ref(&());
        let names = names(self)?;
        let stacks = Api::<Stack>::namespaced(ctx.client.clone(), &namespace);
        let Some(stack) = stacks.get_opt(&self.spec.stack_ref.name).await? else {
            // Stacks wait for their Bastions, so this takes a Stack removed by force.
            let note = format!(
                "Stack {:?} is gone, so its AWS account cannot be reached; the instance, role {} and security group {} may remain",
                self.spec.stack_ref.name, names.base, names.base
            );
            ctx.event(&reference, EventType::Warning, "StackGone", note).await;
            return Ok(Cleanup::Done);
        };
        let records = self.status.as_ref().is_some_and(|s| s.instance_id.is_some() || s.security_group_id.is_some());
        let link = match account_link::resolve_for_cleanup(ctx, &stack, &namespace, records).await? {
            LinkForCleanup::Usable(link) => link,
            LinkForCleanup::NothingMade(why) => {
                info!(kind = "Bastion", %namespace, name = %self.name_any(), %why, "nothing to delete in AWS");
                forget_key_secret(self, ctx).await?;
                return Ok(Cleanup::Done);
            }
        };
        let aws = connect(ctx, &stack, &link).await?;
        let vpc_id = stack.status.as_ref().and_then(|s| s.vpc_id.clone());
        let applier = Applier {
            bastion: self,
            ctx,
            aws,
            names,
            uid: owner_uid(self)?,
            tags: Vec::new(),
            boundary: None,
            placement: None,
            spec_changed: false,
            known_instance: None,
            observed: Default::default(),
        };
        teardown(applier, vpc_id.as_deref()).await
    }
}

fn names(bastion: &Bastion) -> Result<Names> {
    let namespace = bastion.namespace().unwrap_or_default();
    Ok(Names::new(&namespace, &bastion.spec.stack_ref.name, &bastion.name_any(), &owner_uid(bastion)?))
}

fn waiting(status: BastionStatus, message: String) -> Step<BastionStatus> {
    Step { status, health: Health::progressing("WaitingForStack", message), requeue_after: None }
}

/// Waiting for the Stack or its link: nothing is made, but whenever the account can still be
/// reached (the link's role is verified, which is all deletion needs too) the TTL and the
/// security group hold (`plan::guarded`): past `expiresAt` the instance is terminated, and the
/// group loses every rule the spec does not ask for. Those changes pass the gate like any other.
async fn guarded_wait(
    bastion: &Bastion,
    ctx: &Context,
    stack: &Stack,
    status: BastionStatus,
    message: String,
) -> Result<Step<BastionStatus>> {
    let namespace = bastion.namespace().unwrap_or_default();
    let link = match account_link::resolve_for_cleanup(ctx, stack, &namespace, true).await {
        Ok(LinkForCleanup::Usable(link)) => link,
        // The namespace no longer allowed: nothing can be reached; wait as before.
        Ok(LinkForCleanup::NothingMade(_)) | Err(Error::AccountLinkNoLongerAllows { .. }) => {
            return Ok(waiting(status, message));
        }
        Err(error) => return Err(error),
    };
    let aws = connect(ctx, stack, &link).await?;
    let names = names(bastion)?;
    let now = Timestamp::now();
    // Only a period already recorded can end: one not started yet has no instance to stop.
    let recorded = bastion.annotations().get(plan::PERIOD_ANNOTATION).map(String::as_str);
    let expires = match (&bastion.spec.ttl, recorded) {
        (Some(ttl), Some(_)) => {
            Some(plan::period(ttl, recorded, now)).filter(|(_, new)| !new).and_then(|(p, _)| p.expires_at())
        }
        _ => None,
    };
    let vpc = stack.status.as_ref().and_then(|s| s.vpc_id.clone());
    let observed = observe(&aws, bastion, ctx, &names, vpc.as_deref(), false).await?;
    // Placement is not needed for these changes; the group's VPC stands in.
    let placement = Placement {
        vpc_id: vpc.unwrap_or_default(),
        subnet_id: String::new(),
        tier_subnets: Default::default(),
        tier: crate::api::SubnetTier::Private,
        public_ip: false,
    };
    let mut step = waiting(status, message);
    step.status.expires_at = expires.map(Time);
    let uid = owner_uid(bastion)?;
    let mut applier = Applier {
        bastion,
        ctx,
        aws,
        names: names.clone(),
        uid: uid.clone(),
        tags: Vec::new(),
        boundary: None,
        placement: None,
        spec_changed: false,
        known_instance: None,
        observed,
    };
    loop {
        let desired = Desired {
            spec: &bastion.spec,
            names: &names,
            uid: &uid,
            placement: &placement,
            known_instance: None,
            expires,
            now,
        };
        let planned = plan::guarded(&desired, &applier.observed);
        let held = gate_plan(bastion, ctx, &mut step.status, &planned.changes, &names, None, &applier.observed).await;
        if let Some(health) = held {
            // Both are said: why nothing is made, and what would be.
            let health = match (health, &step.health) {
                (Health::Held { reason, message: held }, Health::Progressing { message, .. }) => {
                    Health::held(&reason, format!("{message}; meanwhile {held}"))
                }
                (health, _) => health,
            };
            return Ok(Step { status: step.status, health, requeue_after: None });
        }
        let Some(change) = planned.changes.first() else {
            if let Some(at) = planned.expired {
                let ttl = bastion.spec.ttl.clone().unwrap_or_default();
                return Ok(expired(step.status, &ttl, at));
            }
            break;
        };
        if let Applied::Later { .. } = applier.apply(change).await? {
            break;
        }
    }
    if let Some(left) = expires.and_then(|at| Duration::try_from(at.duration_since(now)).ok()) {
        step.requeue_after = Some(ctx.settings.resync_period.min(left + Duration::from_millis(200)));
    }
    Ok(step)
}

/// Writes the plan of `changes` to `status.plan` through the gate; `Some(health)` when the gate
/// holds (no AWS mutation may be made). An `ObserveOnly` Bastion reports a new plan once as a
/// `DriftDetected` Warning.
async fn gate_plan(
    bastion: &Bastion,
    ctx: &Context,
    status: &mut BastionStatus,
    changes: &[Change],
    names: &Names,
    placement: Option<&Placement>,
    observed: &plan::Observed,
) -> Option<Health> {
    let spec = &bastion.spec;
    let planned: Vec<_> = changes.iter().map(|c| c.planned(names, spec, placement, observed)).collect();
    let governance = Governance::from(&spec.controls);
    let previous = status.plan.take();
    let (plan, gate) = runtime_plan::gate(governance, bastion.metadata.generation, planned, previous.as_ref());
    if spec.controls.observe_only() && !plan.changes.is_empty() && runtime_plan::is_new(&plan, previous.as_ref()) {
        let what: Vec<String> =
            plan.changes.iter().map(|c| format!("{:?} {} {}: {}", c.action, c.resource, c.name, c.detail)).collect();
        let note = format!("AWS differs from the spec; plan {} would make: {}", plan.id, what.join("; "));
        ctx.event(&bastion.object_ref(&()), EventType::Warning, runtime_plan::DRIFT_DETECTED, note).await;
    }
    status.plan = Some(plan);
    match gate {
        Gate::Apply => None,
        Gate::Hold(health) => Some(health),
    }
}

/// The status after expiry: `Ready=False`, reason `Expired`, until `ttl` changes.
fn expired(mut status: BastionStatus, ttl: &str, at: Timestamp) -> Step<BastionStatus> {
    status.instance_id = None;
    status.public_ip = None;
    status.private_ip = None;
    status.tunnel_command = None;
    let message = format!(
        "the ttl of {ttl} ended at {at}: the instance is terminated and the Stack's databases no longer admit this bastion; change spec.ttl to start a new period"
    );
    Step { status, health: Health::stalled(EXPIRED, message), requeue_after: None }
}

fn region(stack: &Stack, link: &AwsAccountLink) -> String {
    stack.spec.region.clone().unwrap_or_else(|| link.spec.region.clone())
}

/// The permissions boundary a `Scoped` link's stack made for bastion roles (its `Scoped` policy
/// allows CreateRole only with it); a `Full` link has none and needs none.
fn boundary_arn(link: &AwsAccountLink) -> Option<String> {
    (link.spec.permissions == Permissions::Scoped).then(|| {
        format!(
            "arn:aws:iam::{}:policy{}{}",
            link.spec.account_id,
            crate::account_link::template::IAM_PATH,
            bastion_boundary_policy_name(&link.spec.role_name)
        )
    })
}

async fn connect<'a>(ctx: &'a Context, stack: &Stack, link: &AwsAccountLink) -> Result<BastionAws<'a>> {
    let config = ctx.aws.for_link(link, &region(stack, link)).await?;
    let role_arn = link.status.as_ref().and_then(|s| s.role_arn.clone()).unwrap_or_default();
    Ok(BastionAws::new(&ctx.aws, &config, role_arn, link.spec.account_id.clone(), &ctx.limiter))
}

/// Deletes the generated key's Secret if it is this Bastion's: the garbage collector would too,
/// but only after the Bastion is gone, and a private key should not outlive its use.
async fn forget_key_secret(bastion: &Bastion, ctx: &Context) -> Result<bool> {
    OwnedSecrets::new(ctx.client.clone(), bastion).delete_if_ours(&names(bastion)?.key_secret).await
}

/// One pass towards the spec: observe, plan, gate, apply one change, plan again from its
/// recorded effect, until the plan is empty or AWS needs time; then the status of what runs.
struct Converge<'a> {
    applier: Applier<'a>,
    stack: &'a Stack,
    placement: Placement,
    region: String,
    status: BastionStatus,
}

/// How many changes one pass makes at most before looking at AWS afresh.
const CHANGES_PER_PASS: usize = 16;

impl<'a> Converge<'a> {
    async fn run(mut self) -> Result<Step<BastionStatus>> {
        let bastion = self.applier.bastion;
        let spec = &bastion.spec;
        let now = Timestamp::now();
        if spec.ttl.is_none() && bastion.annotations().contains_key(plan::PERIOD_ANNOTATION) {
            // No ttl any more: forget the period (a Kubernetes write), so that a ttl set again
            // later starts afresh.
            self.applier.annotate(plan::PERIOD_ANNOTATION, None).await?;
        }
        let recorded = bastion.annotations().get(plan::PERIOD_ANNOTATION).map(String::as_str);
        let period = spec.ttl.as_ref().map(|ttl| plan::period(ttl, recorded, now));
        let expires = period.as_ref().and_then(|(p, _)| p.expires_at());
        self.status.expires_at = expires.map(Time);
        let mut period_to_record = period.filter(|(_, new)| *new).map(|(p, _)| p);
        let names = self.applier.names.clone();
        let uid = self.applier.uid.clone();
        for _ in 0..CHANGES_PER_PASS {
            let known = self.applier.known_instance.clone();
            let desired = Desired {
                spec,
                names: &names,
                uid: &uid,
                placement: &self.placement,
                known_instance: known.as_deref(),
                expires,
                now,
            };
            let planned = plan::plan(&desired, &self.applier.observed)?;
            let ctx = self.applier.ctx;
            let (placement, observed) = (Some(&self.placement), &self.applier.observed);
            if let Some(health) =
                gate_plan(bastion, ctx, &mut self.status, &planned.changes, &names, placement, observed).await
            {
                return Ok(Step { status: self.status, health, requeue_after: None });
            }
            // The TTL period starts when the Bastion is first let make its changes (a Manual
            // Bastion's period does not run out while it awaits approval).
            if let Some(period) = period_to_record.take() {
                self.applier.annotate(plan::PERIOD_ANNOTATION, Some(&period.annotation())).await?;
                let (ttl, at) = (&period.ttl, period.expires_at().map(|t| t.to_string()).unwrap_or_default());
                let note = format!("a ttl period of {ttl} starts now; the instance is terminated at {at}");
                self.applier.event(EventType::Normal, "TtlPeriodStarted", note).await;
            }
            let Some(change) = planned.changes.first() else {
                if let Some(at) = planned.expired {
                    let ttl = spec.ttl.clone().unwrap_or_default();
                    return Ok(expired(self.status, &ttl, at));
                }
                return self.settled(now, expires).await;
            };
            if let Applied::Later { reason, message, after } = self.applier.apply(change).await? {
                self.record_instance();
                let health = Health::progressing(reason, message);
                return Ok(Step { status: self.status, health, requeue_after: Some(after) });
            }
        }
        self.record_instance();
        let health = Health::progressing("Converging", "more changes to make");
        Ok(Step { status: self.status, health, requeue_after: Some(Duration::ZERO) })
    }

    /// What status says of the instance: the one kept, once it runs; none while replaced.
    fn record_instance(&mut self) {
        self.status.security_group_id = self.applier.observed.group.as_ref().map(|g| g.id.clone());
        let known = self.applier.known_instance.clone();
        if known != self.status.instance_id {
            self.status.instance_id = known;
            self.status.public_ip = None;
            self.status.private_ip = None;
            self.status.tunnel_command = None;
        }
    }

    /// AWS matches the spec: the leftovers on the Kubernetes side, then what the instance says.
    async fn settled(mut self, now: Timestamp, expires: Option<Timestamp>) -> Result<Step<BastionStatus>> {
        let bastion = self.applier.bastion;
        let spec = &bastion.spec;
        let generated = spec.access == BastionAccess::Ssh && spec.ssh_public_key.is_none();
        self.status.security_group_id = self.applier.observed.group.as_ref().map(|g| g.id.clone());
        self.status.key_secret_name = generated.then(|| self.applier.names.key_secret.clone());
        let live = self.applier.observed.live();
        let Some(instance) = plan::keeper(&live, self.applier.known_instance.as_deref()).cloned() else {
            return Err(Error::AwsUnavailable {
                action: "ec2:DescribeInstances".into(),
                detail: "the plan is empty but no instance is live".into(),
            });
        };
        self.status.instance_id = Some(instance.id.clone());
        self.status.private_ip = instance.private_ip.clone();
        self.status.public_ip = instance.public_ip.clone();
        if instance.state != plan::InstanceStateName::Running {
            let message = format!("instance {} is {}", instance.id, instance.state);
            let health = Health::progressing("InstancePending", message);
            return Ok(Step { status: self.status, health, requeue_after: Some(poll(self.applier.ctx)) });
        }
        if !generated && forget_key_secret(bastion, self.applier.ctx).await? {
            let note = format!("deleted the Secret {} (its key is no longer used)", self.applier.names.key_secret);
            self.applier.event(EventType::Normal, "DeletedKeySecret", note).await;
        }
        let (db_host, db_note) = self.database_host().await?;
        let names = &self.applier.names;
        let key_file = if generated { format!("{}.pem", names.key_secret) } else { "<private-key-file>".into() };
        let public_ip = instance.public_ip.as_deref();
        let command = plan::tunnel_command(spec.access, &db_host, &instance.id, public_ip, &key_file, &self.region);
        self.status.tunnel_command = Some(command);
        let reach = match spec.access {
            BastionAccess::Ssm => {
                format!("through Session Manager (no inbound rule) in {:?} subnet", self.placement.tier)
            }
            BastionAccess::Ssh => {
                format!("over SSH from {} at {}", spec.allowed_cidrs.join(", "), public_ip.unwrap_or_default())
            }
        };
        let mut message = format!("instance {} is running, reachable {reach}; see status.tunnelCommand", instance.id);
        if generated {
            let (secret, key) = (&names.key_secret, keys::PRIVATE_KEY);
            message.push_str(&format!(
                " (the private key is in Secret {secret} under {key}: kubectl get secret {secret} -o jsonpath='{{.data.{key}}}' | base64 -d > {key_file}; chmod 600 {key_file})"
            ));
        }
        if let Some(note) = db_note {
            message.push_str(&format!("; {note}"));
        }
        if let Some(at) = expires {
            message.push_str(&format!("; it is terminated at {at}"));
        }
        let mut requeue = self.applier.ctx.settings.resync_period;
        if let Some(at) = expires
            && let Ok(left) = Duration::try_from(at.duration_since(now))
        {
            requeue = requeue.min(left + Duration::from_millis(200));
        }
        Ok(Step { status: self.status, health: Health::ready("Running", message), requeue_after: Some(requeue) })
    }

    /// The address the tunnel forwards to: the Stack's first Database (by name) with an endpoint,
    /// from the Database objects' status.
    async fn database_host(&self) -> Result<(String, Option<String>)> {
        let namespace = self.applier.bastion.namespace().unwrap_or_default();
        let stack = self.stack.name_any();
        let mut dbs: Vec<Database> = Api::<Database>::namespaced(self.applier.ctx.client.clone(), &namespace)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|d| d.spec.stack_ref.name == stack)
            .collect();
        dbs.sort_by_key(|d| d.name_any());
        let Some(db) = dbs.first() else {
            let note = format!("Stack {stack:?} has no Database yet, so the command names {}", plan::DB_PLACEHOLDER);
            return Ok((plan::DB_PLACEHOLDER.to_string(), Some(note)));
        };
        match db.status.as_ref().and_then(|s| s.endpoint.as_ref()) {
            Some(e) => Ok((e.address.clone(), None)),
            None => {
                let note = format!(
                    "Database {:?} has no endpoint yet, so the command names {}",
                    db.name_any(),
                    plan::DB_PLACEHOLDER
                );
                Ok((plan::DB_PLACEHOLDER.to_string(), Some(note)))
            }
        }
    }
}

/// One pass of deletion (`plan::teardown`): the instances first, confirmed `terminated`; then the
/// key pairs, the security group, the instance profile, the role; last the key Secret. Under
/// `ObserveOnly` nothing in AWS is touched: an Event lists what is left.
async fn teardown(mut applier: Applier<'_>, vpc_id: Option<&str>) -> Result<Cleanup> {
    let (bastion, ctx) = (applier.bastion, applier.ctx);
    applier.observed = observe(&applier.aws, bastion, ctx, &applier.names, vpc_id, true).await?;
    let planned = plan::teardown(&applier.uid, &applier.observed);
    if bastion.spec.controls.observe_only() {
        if !planned.changes.is_empty() {
            let spec = &bastion.spec;
            let left: Vec<String> = planned
                .changes
                .iter()
                .map(|c| c.planned(&applier.names, spec, None, &applier.observed))
                .filter(|c| c.action == crate::api::ChangeAction::Delete)
                .map(|c| format!("{} {}", c.resource, c.id.unwrap_or(c.detail)))
                .collect();
            let note = format!("management is ObserveOnly: left in AWS {}", left.join(", "));
            applier.event(EventType::Normal, "Retained", note).await;
        }
        forget_key_secret(bastion, ctx).await?;
        return Ok(Cleanup::Done);
    }
    let Some(change) = planned.changes.first() else {
        forget_key_secret(bastion, ctx).await?;
        return Ok(Cleanup::Done);
    };
    if let Some(instance) = planned.waiting.filter(|_| !matches!(change, Change::Terminate { .. })) {
        let message = format!("waiting for instance {instance} to be terminated");
        return Ok(Cleanup::Pending { reason: "TerminatingInstance", message, requeue_after: poll(ctx) });
    }
    Ok(match applier.apply(change).await? {
        Applied::Later { reason, message, after } => Cleanup::Pending { reason, message, requeue_after: after },
        Applied::Continue => {
            let done = change.planned(&applier.names, &bastion.spec, None, &applier.observed);
            let message = format!("{:?} {} {}", done.action, done.resource, done.id.unwrap_or_default());
            Cleanup::Pending { reason: "Deleting", message, requeue_after: Duration::ZERO }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bastion_without_a_uid_has_no_names_rather_than_names_ending_in_nothing() {
        let spec = serde_json::from_value(serde_json::json!({"stackRef": {"name": "web"}})).unwrap();
        let mut bastion = Bastion::new("jump", spec);
        assert!(matches!(names(&bastion), Err(Error::OwnerUidMissing { .. })));
        bastion.metadata.uid = Some("0f2a-uid".into());
        assert!(names(&bastion).is_ok());
    }
}
