//! The Bastion's reconcile steps, one AWS mutation per pass: wait for the Stack (no AWS call until
//! it is Ready), refuse `Ssh` on an isolated Stack, then the TTL period, the instance's role, its
//! inline policy and instance profile, the security group and its exact ingress, the SSH key (the
//! Secret before the EC2 key pair), the image, the instance, and last the leftovers of an earlier
//! spec. Deletion terminates the instance first and confirms it before removing the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::aws::{BastionAws, Deleted, Launch};
use super::keys::{self, GeneratedKey};
use super::plan::{self, Arch, DesiredInstance, Names, NoPlacement, Placement};
use crate::account_link::template::bastion_boundary_policy_name;
use crate::account_link::{self, LinkFor, LinkForCleanup};
use crate::api::{AwsAccountLink, Bastion, BastionAccess, BastionStatus, Database, Permissions, Stack};
use crate::aws::inventory::new_security_group;
use crate::aws::tags::Tags;
use crate::error::{Error, Result};
use crate::runtime::conditions::Health;
use crate::runtime::context::{Context, FIELD_MANAGER};
use crate::runtime::owned_secrets::{Created, OwnedSecrets};
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
            StackFor::NotReady { stack, message } => return guarded_wait(self, ctx, &stack, status, message).await,
            StackFor::Usable(stack) => stack,
        };
        let placement = match plan::placement(&stack, self.spec.access) {
            Ok(p) => p,
            Err(NoPlacement::SshNeedsPublicSubnet) => {
                return Err(Error::SshNeedsPublicSubnet { stack: stack.name_any() });
            }
            Err(NoPlacement::Incomplete(why)) => {
                let message = format!("Stack {:?} is Ready, but {why}", stack.name_any());
                return guarded_wait(self, ctx, &stack, status, message).await;
            }
        };
        let link = match account_link::resolve_for(ctx, &stack, &namespace).await? {
            LinkFor::NotReady { message } => return guarded_wait(self, ctx, &stack, status, message).await,
            LinkFor::Usable(link) => link,
        };
        let aws = connect(ctx, &stack, &link).await?;
        let region = region(&stack, &link);
        let boundary = boundary_arn(&link);
        Converge::new(self, ctx, &stack, placement, aws, region, boundary, status).run().await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Cleanup> {
        let namespace = self.namespace().unwrap_or_default();
        let reference = self.object_ref(&());
        let names = names(self);
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
        Teardown { bastion: self, ctx, aws, names, vpc_id }.run().await
    }
}

fn names(bastion: &Bastion) -> Names {
    let namespace = bastion.namespace().unwrap_or_default();
    Names::new(&namespace, &bastion.spec.stack_ref.name, &bastion.name_any(), &bastion.uid().unwrap_or_default())
}

fn waiting(status: BastionStatus, message: String) -> Step<BastionStatus> {
    Step { status, health: Health::progressing("WaitingForStack", message), requeue_after: None }
}

/// Waiting for the Stack or its link: nothing is made, but whenever the account can still be
/// reached (the link's role is verified, which is all deletion needs too) the TTL and the
/// security group hold: past `expiresAt` the instance is terminated, and the group loses every
/// rule the spec does not ask for (22 from anywhere else than `allowedCidrs`).
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
    let (names, uid, now) = (names(bastion), bastion.uid().unwrap_or_default(), Timestamp::now());
    let reference = bastion.object_ref(&());
    // Only a period already recorded can end: one not started yet has no instance to stop.
    let recorded = bastion.annotations().get(plan::PERIOD_ANNOTATION).map(String::as_str);
    let expires = match (&bastion.spec.ttl, recorded) {
        (Some(ttl), Some(_)) => {
            Some(plan::period(ttl, recorded, now)).filter(|(_, new)| !new).and_then(|(p, _)| p.expires_at())
        }
        _ => None,
    };
    let mut step = waiting(status, message);
    step.status.expires_at = expires.map(Time);
    if let Some(at) = expires
        && at <= now
    {
        let live: Vec<String> = aws.instances(&uid).await?.into_iter().filter(|i| !i.is_gone()).map(|i| i.id).collect();
        let ttl = bastion.spec.ttl.clone().unwrap_or_default();
        if !live.is_empty() {
            aws.terminate(&live).await?;
            let note = format!(
                "the ttl of {ttl} ended at {at}: terminated instance {} (the Stack is not Ready)",
                live.join(", ")
            );
            ctx.event(&reference, EventType::Normal, "TerminatedInstance", note).await;
        }
        return Ok(expired(step.status, &ttl, at));
    }
    if let Some(vpc) = stack.status.as_ref().and_then(|s| s.vpc_id.as_deref())
        && let Some(group) = aws.groups().find(vpc, &names.base).await?.filter(|g| plan::ours(&g.tags, &uid))
    {
        let desired = plan::desired_ingress(bastion.spec.access, &bastion.spec.allowed_cidrs);
        let revoke: Vec<_> = group.ingress.difference(&desired).cloned().collect();
        if !revoke.is_empty() {
            aws.groups().revoke_ingress(&group.id, &revoke).await?;
            let what: Vec<String> = revoke.iter().map(plan::describe_rule).collect();
            let note = format!(
                "revoked ingress on the bastion's security group {} while waiting: {}",
                group.id,
                what.join(", ")
            );
            ctx.event(&reference, EventType::Warning, "DriftRepaired", note).await;
        }
    }
    if let Some(left) = expires.and_then(|at| Duration::try_from(at.duration_since(now)).ok()) {
        step.requeue_after = Some(ctx.settings.resync_period.min(left + Duration::from_millis(200)));
    }
    Ok(step)
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

/// How soon to look again while EC2 is working.
fn poll(ctx: &Context) -> Duration {
    ctx.settings.resync_period.min(Duration::from_secs(5))
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
    OwnedSecrets::new(ctx.client.clone(), bastion).delete_if_ours(&names(bastion).key_secret).await
}

/// One pass towards the spec.
struct Converge<'a> {
    bastion: &'a Bastion,
    ctx: &'a Context,
    stack: &'a Stack,
    placement: Placement,
    aws: BastionAws<'a>,
    region: String,
    boundary: Option<String>,
    names: Names,
    uid: String,
    tags: Vec<(String, String)>,
    status: BastionStatus,
    /// Whether the spec changed since the status was written: a difference is then the spec's
    /// doing, not drift.
    spec_changed: bool,
}

impl<'a> Converge<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        bastion: &'a Bastion,
        ctx: &'a Context,
        stack: &'a Stack,
        placement: Placement,
        aws: BastionAws<'a>,
        region: String,
        boundary: Option<String>,
        status: BastionStatus,
    ) -> Self {
        let namespace = bastion.namespace().unwrap_or_default();
        let names = names(bastion);
        let uid = bastion.uid().unwrap_or_default();
        let tags = plan::tags(&namespace, &bastion.name_any(), &uid, &names.display, &stack.spec.tags);
        let spec_changed = status.observed_generation != bastion.metadata.generation;
        Self { bastion, ctx, stack, placement, aws, region, boundary, names, uid, tags, status, spec_changed }
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        log_change(self.bastion, reason, &note);
        self.ctx.event(&self.bastion.object_ref(&()), type_, reason, note).await;
    }

    /// A change was made: record it and look again at once.
    fn next(&mut self, reason: &str, message: String) -> Result<Step<BastionStatus>> {
        let status = std::mem::take(&mut self.status);
        Ok(Step { status, health: Health::progressing(reason, message), requeue_after: Some(Duration::ZERO) })
    }

    /// EC2 is working: look again in a while.
    fn busy(&mut self, reason: &str, message: String) -> Result<Step<BastionStatus>> {
        let (status, requeue_after) = (std::mem::take(&mut self.status), Some(poll(self.ctx)));
        Ok(Step { status, health: Health::progressing(reason, message), requeue_after })
    }

    fn claim(&self, what: &str, name: &str, tags: &Tags) -> Result<()> {
        match plan::claimed_by_other(tags, &self.uid) {
            None => Ok(()),
            Some(why) => Err(Error::NameTaken { what: what.into(), name: name.into(), why }),
        }
    }

    fn bastions(&self) -> Api<Bastion> {
        Api::namespaced(self.ctx.client.clone(), &self.bastion.namespace().unwrap_or_default())
    }

    async fn annotate(&self, key: &str, value: &str) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        self.bastions().patch(&self.bastion.name_any(), &params, &Patch::Merge(&patch)).await?;
        Ok(())
    }

    fn clear_instance(&mut self) {
        self.status.instance_id = None;
        self.status.public_ip = None;
        self.status.private_ip = None;
        self.status.tunnel_command = None;
    }

    async fn run(mut self) -> Result<Step<BastionStatus>> {
        let now = Timestamp::now();
        let spec = &self.bastion.spec;

        // 1. The TTL period: a new one starts when `ttl` is set or changed.
        let mut expires = None;
        if let Some(ttl) = &spec.ttl {
            let recorded = self.bastion.annotations().get(plan::PERIOD_ANNOTATION).map(String::as_str);
            let (period, new) = plan::period(ttl, recorded, now);
            if new {
                self.annotate(plan::PERIOD_ANNOTATION, &period.annotation()).await?;
                let at = period.expires_at().map(|t| t.to_string()).unwrap_or_default();
                let note = format!("a ttl period of {ttl} starts now; the instance is terminated at {at}");
                self.event(EventType::Normal, "TtlPeriodStarted", note).await;
                return self.next("StartingTtlPeriod", format!("started a ttl period of {ttl}"));
            }
            expires = period.expires_at();
        } else if self.bastion.annotations().contains_key(plan::PERIOD_ANNOTATION) {
            // No ttl any more: forget the period, so that a ttl set again later starts afresh.
            let patch = json!({"metadata": {"annotations": {plan::PERIOD_ANNOTATION: null}}});
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            self.bastions().patch(&self.bastion.name_any(), &params, &Patch::Merge(&patch)).await?;
            return self.next("EndingTtlPeriod", "spec.ttl was removed; the instance no longer expires".into());
        }
        self.status.expires_at = expires.map(Time);
        let instances = self.aws.instances(&self.uid).await?;
        let live: Vec<_> = instances.iter().filter(|i| !i.is_gone()).collect();
        if let Some(at) = expires
            && at <= now
        {
            return self.expire(&live, at).await;
        }

        // 2. The instance's role, trusted by EC2 only. What a create leaves is known from it, so the
        // steps that follow a create go on in the same pass without reading it back.
        let role = &self.names.base;
        let has_policy = match self.aws.role(role).await? {
            Some(found) => {
                self.claim("IAM role", role, &found.tags)?;
                self.aws.role_policies(role).await?.contains(plan::ROLE_POLICY_NAME)
            }
            None => {
                let description = format!("Bastion {}: Session Manager agent only", self.names.display);
                self.aws.create_role(role, &description, self.boundary.as_deref(), &self.tags).await?;
                self.event(EventType::Normal, "CreatedRole", format!("created IAM role {role}")).await;
                false
            }
        };
        if !has_policy {
            self.aws.put_role_policy(role, plan::ROLE_POLICY_NAME, &plan::role_policy()).await?;
            let note = format!("allowed the Session Manager agent's calls to IAM role {role}");
            self.event(EventType::Normal, "PutRolePolicy", note).await;
        }

        // 3. Its instance profile (read back after a create for its ARN; IAM may not show it yet).
        let profile = match self.aws.instance_profile(role).await? {
            Some(profile) => profile,
            None => {
                self.aws.create_instance_profile(role, &self.tags).await?;
                let note = format!("created instance profile {role}");
                self.event(EventType::Normal, "CreatedInstanceProfile", note).await;
                let Some(profile) = self.aws.instance_profile(role).await? else {
                    return self.next("CreatingInstanceProfile", format!("created instance profile {role}"));
                };
                profile
            }
        };
        self.claim("IAM instance profile", role, &profile.tags)?;
        if !profile.roles.iter().any(|r| r == role) {
            self.aws.add_role_to_instance_profile(role, role).await?;
        }

        // 4. The security group and its exact ingress.
        let vpc = self.placement.vpc_id.clone();
        let group = match self.aws.groups().find(&vpc, &self.names.base).await? {
            Some(group) => group,
            None => {
                let description = match spec.access {
                    BastionAccess::Ssm => {
                        format!("Bastion {}: no inbound traffic (Session Manager)", self.names.display)
                    }
                    BastionAccess::Ssh => format!("Bastion {}: SSH from allowedCidrs only", self.names.display),
                };
                let id = self.aws.groups().create(&vpc, &self.names.base, &description, &self.tags).await?;
                self.event(EventType::Normal, "CreatedSecurityGroup", format!("created security group {id}")).await;
                let tags = self.tags.iter().cloned().collect();
                new_security_group(&id, &vpc, &self.names.base, tags)
            }
        };
        self.claim("security group", &self.names.base, &group.tags)?;
        self.status.security_group_id = Some(group.id.clone());
        let desired = plan::desired_ingress(spec.access, &spec.allowed_cidrs);
        let revoke: Vec<_> = group.ingress.difference(&desired).cloned().collect();
        if !revoke.is_empty() {
            self.aws.groups().revoke_ingress(&group.id, &revoke).await?;
            let what: Vec<String> = revoke.iter().map(plan::describe_rule).collect();
            let note = format!("revoked ingress on the bastion's security group {}: {}", group.id, what.join(", "));
            if self.spec_changed {
                self.event(EventType::Normal, "RevokedIngress", note).await;
            } else {
                self.event(EventType::Warning, "DriftRepaired", note).await;
            }
            return self.next("UpdatingSecurityGroup", format!("revoked ingress on {}", group.id));
        }
        let authorize: Vec<_> = desired.difference(&group.ingress).cloned().collect();
        if !authorize.is_empty() {
            self.aws.groups().authorize_ingress(&group.id, &authorize).await?;
            let what: Vec<String> = authorize.iter().map(plan::describe_rule).collect();
            let note = format!("allowed on {}: {}", group.id, what.join(", "));
            self.event(EventType::Normal, "AuthorizedIngress", note).await;
        }

        // 5. The SSH key: the Secret first (so a crash never leaves a key pair whose private key is
        // lost), then the EC2 key pair.
        let secrets = OwnedSecrets::new(self.ctx.client.clone(), self.bastion);
        let key_pairs = self.aws.key_pairs(&self.names.base).await?;
        let key_name = match (spec.access, &spec.ssh_public_key) {
            (BastionAccess::Ssm, _) => None,
            (BastionAccess::Ssh, Some(public)) => Some((self.names.key_pair(public), public.clone())),
            (BastionAccess::Ssh, None) => {
                let Some(public) = self.generated_public_key(&secrets).await? else {
                    return self.next("GeneratingSshKey", format!("wrote a new SSH key to {}", self.names.key_secret));
                };
                self.status.key_secret_name = Some(self.names.key_secret.clone());
                Some((self.names.key_pair(&public), public))
            }
        };
        if let Some((name, public)) = &key_name
            && !key_pairs.iter().any(|k| &k.name == name)
        {
            self.aws.import_key_pair(name, public, &self.tags).await?;
            self.event(EventType::Normal, "ImportedKeyPair", format!("imported the public key as key pair {name}"))
                .await;
        }
        let key_name = key_name.map(|(name, _)| name);

        // 6. The instance: exactly one, as the spec says.
        let desired = DesiredInstance {
            instance_type: spec.instance_type.clone(),
            key_name: key_name.clone(),
            security_group: group.id.clone(),
            profile_arn: profile.arn.clone(),
        };
        if live.len() > 1 {
            let keep = plan::keeper(&live, self.status.instance_id.as_deref()).map(|i| i.id.clone());
            let extra: Vec<String> = live.iter().map(|i| i.id.clone()).filter(|id| Some(id) != keep.as_ref()).collect();
            self.aws.terminate(&extra).await?;
            let note = format!("terminated extra instances {}", extra.join(", "));
            self.event(EventType::Warning, "DriftRepaired", note).await;
            return self.next("RemovingDuplicates", format!("terminated {}", extra.join(", ")));
        }
        let Some(instance) = live.first().copied() else {
            return self.launch(&instances, key_name.as_deref()).await;
        };
        if let Some(why) = plan::replacement_reason(instance, &desired, &self.placement) {
            self.aws.terminate(std::slice::from_ref(&instance.id)).await?;
            let note = format!("terminated instance {} to replace it: {why}", instance.id);
            let type_ = if self.spec_changed { EventType::Normal } else { EventType::Warning };
            self.event(type_, "ReplacingInstance", note).await;
            self.clear_instance();
            return self.next("ReplacingInstance", format!("replacing instance {}: {why}", instance.id));
        }
        self.status.instance_id = Some(instance.id.clone());
        self.status.private_ip = instance.private_ip.clone();
        self.status.public_ip = instance.public_ip.clone();
        if instance.state != "running" {
            let message = format!("instance {} is {}", instance.id, instance.state);
            return self.busy("InstancePending", message);
        }

        // 7. Leftovers of an earlier spec: key pairs of another key, a key Secret no longer used.
        if let Some(stale) =
            key_pairs.iter().find(|k| Some(&k.name) != key_name.as_ref() && plan::ours(&k.tags, &self.uid))
        {
            self.aws.delete_key_pair(&stale.name).await?;
            let note = format!("deleted key pair {} (no longer used)", stale.name);
            self.event(EventType::Normal, "DeletedKeyPair", note).await;
            return self.next("RemovingLeftovers", format!("deleted key pair {}", stale.name));
        }
        if !(spec.access == BastionAccess::Ssh && spec.ssh_public_key.is_none()) {
            self.status.key_secret_name = None;
            if forget_key_secret(self.bastion, self.ctx).await? {
                let note = format!("deleted the Secret {} (its key is no longer used)", self.names.key_secret);
                self.event(EventType::Normal, "DeletedKeySecret", note).await;
            }
        }

        // 8. Ready: the tunnel command, and a look again at expiry.
        let (db_host, db_note) = self.database_host().await?;
        let key_file = match (&spec.ssh_public_key, spec.access) {
            (None, BastionAccess::Ssh) => format!("{}.pem", self.names.key_secret),
            _ => "<private-key-file>".to_string(),
        };
        let command = plan::tunnel_command(
            spec.access,
            &db_host,
            &instance.id,
            instance.public_ip.as_deref(),
            &key_file,
            &self.region,
        );
        self.status.tunnel_command = Some(command);
        let reach = match spec.access {
            BastionAccess::Ssm => {
                format!("through Session Manager (no inbound rule) in {:?} subnet", self.placement.tier)
            }
            BastionAccess::Ssh => format!(
                "over SSH from {} at {}",
                spec.allowed_cidrs.join(", "),
                instance.public_ip.as_deref().unwrap_or_default()
            ),
        };
        let mut message = format!("instance {} is running, reachable {reach}; see status.tunnelCommand", instance.id);
        if spec.access == BastionAccess::Ssh && spec.ssh_public_key.is_none() {
            message.push_str(&format!(
                " (the private key is in Secret {} under {}: kubectl get secret {} -o jsonpath='{{.data.{}}}' | base64 -d > {key_file}; chmod 600 {key_file})",
                self.names.key_secret,
                keys::PRIVATE_KEY,
                self.names.key_secret,
                keys::PRIVATE_KEY
            ));
        }
        if let Some(note) = db_note {
            message.push_str(&format!("; {note}"));
        }
        if let Some(at) = expires {
            message.push_str(&format!("; it is terminated at {at}"));
        }
        let mut requeue = self.ctx.settings.resync_period;
        if let Some(at) = expires
            && let Ok(left) = Duration::try_from(at.duration_since(now))
        {
            requeue = requeue.min(left + Duration::from_millis(200));
        }
        Ok(Step { status: self.status, health: Health::ready("Running", message), requeue_after: Some(requeue) })
    }

    /// The public half of the generated key, from its Secret; `None` after writing a new Secret.
    /// A Secret of that name that is not this Bastion's is never used nor replaced
    /// (`SecretConflict`).
    async fn generated_public_key(&self, secrets: &OwnedSecrets<'_, Bastion>) -> Result<Option<String>> {
        let name = &self.names.key_secret;
        if let Some(secret) = secrets.get(name).await? {
            return self.public_key_of(&secret).map(Some);
        }
        let comment = format!("bastion {}", self.names.display);
        let key =
            GeneratedKey::generate(&comment).map_err(|why| Error::SshKeySecretUnusable { name: name.clone(), why })?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([("tinystacks.io/bastion".to_string(), self.bastion.name_any())])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/ssh-auth".into()),
            data: Some(BTreeMap::from([
                (keys::PRIVATE_KEY.to_string(), ByteString(key.private_bytes())),
                (keys::PUBLIC_KEY.to_string(), ByteString(key.public_openssh.clone().into_bytes())),
            ])),
            ..Default::default()
        };
        // Create, never overwrite: a Secret of this Bastion's that appeared meanwhile holds the key to keep.
        if let Created::Existed(existing) = secrets.create(secret).await? {
            return self.public_key_of(&existing).map(Some);
        }
        let note = format!("generated an ed25519 key pair; the private key is in the Secret {name}");
        self.event(EventType::Normal, "GeneratedSshKey", note).await;
        Ok(None)
    }

    /// The public half of the private key the Bastion's key Secret holds.
    fn public_key_of(&self, secret: &Secret) -> Result<String> {
        let name = &self.names.key_secret;
        let private = secret.data.as_ref().and_then(|d| d.get(keys::PRIVATE_KEY)).map(|v| v.0.as_slice());
        let private = private.ok_or_else(|| Error::SshKeySecretUnusable {
            name: name.clone(),
            why: format!("it has no key {}", keys::PRIVATE_KEY),
        })?;
        keys::public_key_of(private).map_err(|why| Error::SshKeySecretUnusable { name: name.clone(), why })
    }

    /// Launches the instance into the planned subnet with the pinned image.
    async fn launch(
        mut self,
        instances: &[plan::ObservedInstance],
        key_name: Option<&str>,
    ) -> Result<Step<BastionStatus>> {
        let spec = &self.bastion.spec;
        let arch = Arch::of(&spec.instance_type);
        let pinned = self.bastion.annotations().get(plan::IMAGE_ANNOTATION).map(String::as_str);
        // The image is pinned in an annotation before the launch, so that a crash in between
        // launches the same one.
        let image = match plan::pinned_image(pinned, arch) {
            Some(image) => image,
            None => {
                let parameter = arch.image_parameter();
                let image = self.aws.latest_image(&parameter).await?;
                self.annotate(plan::IMAGE_ANNOTATION, &plan::image_annotation(arch, &image)).await?;
                let note = format!("chose image {image} ({parameter})");
                self.event(EventType::Normal, "ChoseImage", note).await;
                image
            }
        };
        let mut previous: BTreeSet<String> = instances.iter().filter(|i| i.is_gone()).map(|i| i.id.clone()).collect();
        let known = self.status.instance_id.clone();
        previous.extend(known.clone());
        let token = plan::client_token(&self.uid, &previous);
        if let Some(old) = &known
            && instances.iter().any(|i| &i.id == old && i.is_gone())
            && !self.spec_changed
        {
            let note = format!("instance {old} was terminated outside the operator; launching a replacement");
            self.event(EventType::Warning, "InstanceReplaced", note).await;
        }
        let id = self
            .aws
            .run_instance(&Launch {
                image: &image,
                instance_type: &spec.instance_type,
                subnet: &self.placement.subnet_id,
                security_group: self.status.security_group_id.as_deref().unwrap_or_default(),
                public_ip: self.placement.public_ip,
                key_name,
                profile_name: &self.names.base,
                token: &token,
                tags: &self.tags,
            })
            .await?;
        let where_ = if self.placement.public_ip { "with a public IP" } else { "without a public IP" };
        let note = format!(
            "launched instance {id} ({}, {image}) in subnet {} ({:?}, {where_})",
            spec.instance_type, self.placement.subnet_id, self.placement.tier
        );
        self.event(EventType::Normal, "LaunchedInstance", note).await;
        self.clear_instance();
        self.status.instance_id = Some(id.clone());
        self.busy("InstancePending", format!("launched instance {id}"))
    }

    /// At expiry: terminate what runs; then `Ready=False`, reason `Expired`, until `ttl` changes.
    async fn expire(self, live: &[&plan::ObservedInstance], at: Timestamp) -> Result<Step<BastionStatus>> {
        let ttl = self.bastion.spec.ttl.clone().unwrap_or_default();
        if !live.is_empty() {
            let ids: Vec<String> = live.iter().map(|i| i.id.clone()).collect();
            self.aws.terminate(&ids).await?;
            let note = format!("the ttl of {ttl} ended at {at}: terminated instance {}", ids.join(", "));
            self.event(EventType::Normal, "TerminatedInstance", note).await;
        }
        Ok(expired(self.status, &ttl, at))
    }

    /// The address the tunnel forwards to: the Stack's first Database (by name) with an endpoint.
    async fn database_host(&self) -> Result<(String, Option<String>)> {
        let namespace = self.bastion.namespace().unwrap_or_default();
        let stack = self.stack.name_any();
        let mut dbs: Vec<Database> = Api::<Database>::namespaced(self.ctx.client.clone(), &namespace)
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

/// One pass of deletion: the instances first, confirmed `terminated`; then the key pairs, the
/// security group, the instance profile, the role; last the key Secret.
struct Teardown<'a> {
    bastion: &'a Bastion,
    ctx: &'a Context,
    aws: BastionAws<'a>,
    names: Names,
    vpc_id: Option<String>,
}

impl Teardown<'_> {
    /// How long to wait for AWS to let go of something: a quarter of the time deletion has taken
    /// so far, between 2 s and the maximum backoff, so a long wait (a Database slow to withdraw its
    /// rule) polls less and less.
    fn backoff(&self) -> Duration {
        let since = self.bastion.meta().deletion_timestamp.as_ref().map(|t| Timestamp::now().duration_since(t.0));
        let elapsed = since.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default();
        (elapsed / 4).clamp(Duration::from_secs(2), self.ctx.settings.max_backoff.max(Duration::from_secs(2)))
    }

    fn pending(&self, reason: &'static str, message: String, requeue_after: Duration) -> Result<Cleanup> {
        Ok(Cleanup::Pending { reason, message, requeue_after })
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        log_change(self.bastion, reason, &note);
        self.ctx.event(&self.bastion.object_ref(&()), type_, reason, note).await;
    }

    async fn run(self) -> Result<Cleanup> {
        let uid = self.bastion.uid().unwrap_or_default();
        let base = &self.names.base;
        let instances = self.aws.instances(&uid).await?;
        let running: Vec<String> = instances.iter().filter(|i| !i.is_gone()).map(|i| i.id.clone()).collect();
        if !running.is_empty() {
            self.aws.terminate(&running).await?;
            let note = format!("terminating instance {}", running.join(", "));
            self.event(EventType::Normal, "TerminatingInstance", note).await;
            return self.pending("TerminatingInstance", format!("terminating {}", running.join(", ")), poll(self.ctx));
        }
        if let Some(i) = instances.iter().find(|i| i.state != "terminated") {
            let message = format!("waiting for instance {} to be terminated ({})", i.id, i.state);
            return self.pending("TerminatingInstance", message, poll(self.ctx));
        }

        for pair in self.aws.key_pairs(base).await? {
            if plan::ours(&pair.tags, &uid) {
                self.aws.delete_key_pair(&pair.name).await?;
                self.event(EventType::Normal, "DeletedKeyPair", format!("deleted key pair {}", pair.name)).await;
                return self.pending("DeletingKeyPair", format!("deleted key pair {}", pair.name), Duration::ZERO);
            }
        }

        if let Some(vpc_id) = &self.vpc_id
            && let Some(group) = self.aws.groups().find(vpc_id, base).await?.filter(|g| plan::ours(&g.tags, &uid))
        {
            return match self.aws.groups().delete(&group.id).await? {
                Deleted::Done => {
                    let note = format!("deleted security group {}", group.id);
                    self.event(EventType::Normal, "DeletedSecurityGroup", note).await;
                    self.pending(
                        "DeletingSecurityGroup",
                        format!("deleted security group {}", group.id),
                        Duration::ZERO,
                    )
                }
                Deleted::StillInUse => {
                    let message = format!(
                        "security group {} is still in use (the terminated instance's interface, or a Database's rule being withdrawn)",
                        group.id
                    );
                    self.pending("DeletingSecurityGroup", message, self.backoff())
                }
            };
        }

        if let Some(profile) = self.aws.instance_profile(base).await?.filter(|p| plan::ours(&p.tags, &uid)) {
            if let Some(role) = profile.roles.first() {
                self.aws.remove_role_from_instance_profile(base, role).await?;
                return self.pending(
                    "DeletingInstanceProfile",
                    format!("removed role {role} from {base}"),
                    Duration::ZERO,
                );
            }
            return match self.aws.delete_instance_profile(base).await? {
                Deleted::Done => {
                    self.event(EventType::Normal, "DeletedInstanceProfile", format!("deleted instance profile {base}"))
                        .await;
                    self.pending("DeletingInstanceProfile", format!("deleted instance profile {base}"), Duration::ZERO)
                }
                Deleted::StillInUse => self.pending(
                    "DeletingInstanceProfile",
                    format!("instance profile {base} is in use"),
                    self.backoff(),
                ),
            };
        }

        if self.aws.role(base).await?.is_some_and(|r| plan::ours(&r.tags, &uid)) {
            if let Some(policy) = self.aws.role_policies(base).await?.into_iter().next() {
                self.aws.delete_role_policy(base, &policy).await?;
                return self.pending("DeletingRole", format!("deleted policy {policy} of role {base}"), Duration::ZERO);
            }
            if let Some(arn) = self.aws.attached_policies(base).await?.into_iter().next() {
                self.aws.detach_role_policy(base, &arn).await?;
                return self.pending("DeletingRole", format!("detached {arn} from role {base}"), Duration::ZERO);
            }
            return match self.aws.delete_role(base).await? {
                Deleted::Done => {
                    self.event(EventType::Normal, "DeletedRole", format!("deleted IAM role {base}")).await;
                    self.pending("DeletingRole", format!("deleted IAM role {base}"), Duration::ZERO)
                }
                Deleted::StillInUse => {
                    self.pending("DeletingRole", format!("IAM role {base} is in use"), self.backoff())
                }
            };
        }

        forget_key_secret(self.bastion, self.ctx).await?;
        Ok(Cleanup::Done)
    }
}

/// Every change the Bastion's reconcile or cleanup makes (each has its Event) is logged at info,
/// as the Stack's AWS mutations are.
fn log_change(bastion: &Bastion, reason: &str, note: &str) {
    let (namespace, name) = (bastion.namespace().unwrap_or_default(), bastion.name_any());
    info!(kind = "Bastion", %namespace, %name, reason, %note, "change made");
}
