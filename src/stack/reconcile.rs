//! The Stack's reconcile, which only sequences: resolve the account link (enforcing
//! `allowedNamespaces` before any AWS call), read the account from the shared inventory, plan,
//! pass the whole plan through the gate (`spec.changePolicy`, `spec.management`), make the change
//! the diff names first, look again from the view its response updated, and so on until nothing
//! is left or AWS must be waited for; then report every ID and the plan in status (written once
//! per pass; a pass also ends as soon as what Databases and Bastions need exists, so that they
//! start on it while the Stack goes on). Deletion waits for the Stack's Databases and Bastions,
//! then tears the network down in dependency order (an `ObserveOnly` Stack's is left as it is).

use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::info;

use super::aws::Network;
use super::plan::{self, Diff, Kept, NetworkPlan, Observed, Owner, Previous, Teardown};
use crate::account_link::{self, LinkFor, LinkForCleanup};
use crate::api::{
    AwsAccountLink, Bastion, Database, DeletionPolicy, Management, NatGateways, NatType, PlanStatus, Stack, StackStatus,
};
use crate::aws::image::{self, Arch};
use crate::aws::inventory::KmsKey;
use crate::aws::ownership::owner_uid;
use crate::error::{Error, Result};
use crate::runtime::conditions::{self, Health};
use crate::runtime::context::Context;
use crate::runtime::plan::{DRIFT_DETECTED, Gate, Governance, gate, is_new};
use crate::runtime::reconciler::{self, Cleanup, Managed, Step};

/// One pass makes the changes it can, one after another, each planned from the view the previous
/// one's response updated; it writes the status and yields after this many mutations or this long.
const PASS_MUTATIONS: usize = 64;
const PASS_TIME: Duration = Duration::from_secs(5);
/// The `Ready` reason while drift is being repaired, so that every step of a repair (not only the
/// first) is announced as `DriftRepaired`.
const REPAIRING: &str = "RepairingDrift";
/// Records the image NAT instances boot (`<architecture>:<ami>`), so that a replacement boots the
/// same image rather than whatever is newest that day.
pub const NAT_IMAGE_ANNOTATION: &str = "tinystacks.io/nat-image";

impl Managed for Stack {
    type Status = StackStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Step<Self::Status>> {
        let namespace = self.namespace().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let link = match account_link::resolve_for(ctx, self, &namespace).await? {
            LinkFor::NotReady { message } => {
                return Ok(Step {
                    status,
                    health: Health::progressing("WaitingForAccountLink", message),
                    requeue_after: None,
                });
            }
            LinkFor::Usable(link) => link,
        };
        let region = self.spec.region.clone().unwrap_or_else(|| link.spec.region.clone());
        let network = Network::connect(ctx, &link, &region).await?;
        let nat_image = nat_image(ctx, self, &network).await?;
        Pass::new(self, &status, network, region, nat_image)?.run(ctx).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Cleanup> {
        let namespace = self.namespace().unwrap_or_default();
        let name = self.name_any();
        let lp = ListParams::default();
        let databases = Api::<Database>::namespaced(ctx.client.clone(), &namespace).list(&lp).await?;
        let bastions = Api::<Bastion>::namespaced(ctx.client.clone(), &namespace).list(&lp).await?;
        let dependents: Vec<String> = databases
            .items
            .iter()
            .filter(|d| d.spec.stack_ref.name == name)
            .map(|d| format!("Database/{}", d.name_any()))
            .chain(
                bastions
                    .items
                    .iter()
                    .filter(|b| b.spec.stack_ref.name == name)
                    .map(|b| format!("Bastion/{}", b.name_any())),
            )
            .collect();
        if !dependents.is_empty() {
            return Ok(Cleanup::Pending {
                reason: "DependentsExist",
                message: format!("waiting for these to be deleted first: {}", dependents.join(", ")),
                requeue_after: Duration::from_secs(30),
            });
        }
        // Observing only, the operator never made nor may delete anything of it.
        if self.spec.controls.observe_only() {
            let note = "management is ObserveOnly: every AWS resource of the stack stays as it is (VPC, subnets, gateways, route tables, security groups, endpoints, VPC Link, KMS key)".to_string();
            ctx.event(&self.object_ref(&()), EventType::Normal, "Retained", note).await;
            return Ok(Cleanup::Done);
        }
        if self.spec.deletion_policy == DeletionPolicy::Retain {
            let note = "deletionPolicy is Retain: the AWS resources stay, with their tags".to_string();
            ctx.event(&self.object_ref(&()), EventType::Normal, "Retained", note).await;
            return Ok(Cleanup::Done);
        }
        let link = match account_link::resolve_for_cleanup(ctx, self, &namespace, records_resources(self)).await? {
            LinkForCleanup::Usable(link) => link,
            LinkForCleanup::NothingMade(why) => {
                info!(kind = "Stack", %namespace, %name, %why, "nothing to delete in AWS");
                return Ok(Cleanup::Done);
            }
        };
        teardown(self, ctx, &link).await
    }
}

/// One reconcile pass of a Stack: look, plan, gate, then make the changes in order, each planned
/// from the view the previous one's response updated.
struct Pass<'a> {
    stack: &'a Stack,
    /// The status as the pass found it.
    status: &'a StackStatus,
    network: Network,
    region: String,
    owner: Owner,
    /// The IDs the status knew when the pass began salt the idempotency tokens of the whole
    /// pass: a crash before the status is written repeats the pass with the same tokens.
    previous: Previous,
    governance: Governance<'a>,
    /// A stack that was Ready for this spec and now differs has drifted; anything else is
    /// progress towards the spec.
    drift: bool,
    /// The image NAT instances boot (`natType: Instance`).
    nat_image: Option<String>,
}

/// One look at the account: the network the spec asks for, the Stack's resources, what differs.
struct View {
    plan: NetworkPlan,
    observed: Observed,
    diff: Diff,
}

impl<'a> Pass<'a> {
    fn new(
        stack: &'a Stack,
        status: &'a StackStatus,
        network: Network,
        region: String,
        nat_image: Option<String>,
    ) -> Result<Self> {
        let governance = Governance::from(&stack.spec.controls);
        let drift = conditions::is_ready(&status.conditions, stack.metadata.generation)
            || conditions::ready(&status.conditions).is_some_and(|c| c.reason == REPAIRING);
        let owner = owner(stack)?;
        let previous = Previous::of(status);
        Ok(Self { stack, status, network, region, owner, previous, governance, drift, nat_image })
    }

    async fn run(self, ctx: &Context) -> Result<Step<StackStatus>> {
        let started = Instant::now();
        let mut made = 0;
        let mut note = String::new();
        // The plan this pass may apply (through the gate); every mutation stays within it.
        let mut allowed: Option<PlanStatus> = None;
        loop {
            let view = self.view(ctx).await?;
            let mut status = plan::status_of(&view.plan, &view.observed);
            if made > 0 {
                status = merged(status, self.status, &view.plan);
            }
            // A pass that has just made the last of what the Stack's Databases and Bastions need
            // ends here, so that the status publishes it now and they start while the Stack
            // goes on (its NAT gateways, endpoints and VPC Link).
            let publish = !plan::lists_what_dependents_need(self.status) && plan::lists_what_dependents_need(&status);
            let spent = made >= PASS_MUTATIONS || started.elapsed() >= PASS_TIME || publish;
            let fresh = allowed.is_none() || view.diff.changes.is_empty() || spent;
            if fresh {
                let (plan_status, gate) = self.gate(ctx, &view, allowed.as_ref().or(self.status.plan.as_ref())).await;
                let left = plan_status.changes.len();
                status.plan = Some(plan_status.clone());
                if let Gate::Hold(health) = gate {
                    return Ok(Step { status, health, requeue_after: None });
                }
                if view.diff.changes.is_empty() {
                    return Ok(self.settled(ctx, &view, status).await);
                }
                // A long pass reports its progress now and then (and lets other objects'
                // reconciles run); the next pass goes on at once.
                if spent {
                    let message = format!("{note}; {left} more difference(s) to fix");
                    let health = Health::progressing(if self.drift { REPAIRING } else { "Converging" }, message);
                    return Ok(Step { status, health, requeue_after: Some(Duration::ZERO) });
                }
                allowed = Some(plan_status);
            }

            // Subnets, and a route table's associations, do not depend on one another: a run of
            // them is made at once.
            let first = &view.diff.changes[0].action;
            let together = view.diff.changes.iter().take_while(|c| plan::independent(first, &c.action)).count();
            let batch = &view.diff.changes[..together.max(1)];
            // A change outside the plan the pass was let apply (drift found meanwhile, under
            // `Manual`) is not made: the whole plan is gated again.
            let changes = batch.iter().map(plan::planned_change).collect();
            if !fresh
                && gate(self.governance, self.stack.metadata.generation, changes, allowed.as_ref()).1 != Gate::Apply
            {
                allowed = None;
                continue;
            }
            let ids = futures::future::try_join_all(batch.iter().map(|c| self.network.apply(ctx, &c.action))).await?;
            made += batch.len();
            for (change, id) in batch.iter().zip(ids) {
                note = self.announce(ctx, change, &id).await;
            }
        }
    }

    /// The account as the Stack sees it now; an ownership conflict stops the pass before anything
    /// is planned.
    async fn view(&self, ctx: &Context) -> Result<View> {
        // After the first mutation this is the cached view with the mutations' responses
        // applied: no list is made again.
        let snapshot = self.network.snapshot(ctx).await?;
        // Never a second network beside one whose ownership tags were changed.
        if let Some(foreign) = plan::foreign(&snapshot, &self.owner, self.status).first() {
            return Err(foreign.conflict(&self.owner));
        }
        let observed = Observed::of(&snapshot, &self.owner.uid, &self.owner.kms_alias());
        let zones = plan::choose_zones(
            self.stack.spec.network.availability_zones.as_deref(),
            &self.region,
            &snapshot.zones,
            &observed.zones_in_use(),
        )?;
        // Held no longer than needed: the inventory copies a list a reconcile still holds when a
        // mutation is recorded into it.
        drop(snapshot);
        let mut plan = plan::plan_network(self.owner.clone(), &self.stack.spec, &self.region, zones)
            .map_err(Error::InvalidSpec)?;
        plan.nat_image.clone_from(&self.nat_image);
        let mut diff = plan::diff(&plan, &observed, &self.previous);
        if let Some(conflict) = diff.conflict.take() {
            return Err(conflict);
        }
        Ok(View { plan, observed, diff })
    }

    /// The whole plan from `view`, through the gate. An `ObserveOnly` Stack's new plan is
    /// announced once (a Warning `DriftDetected`).
    async fn gate(&self, ctx: &Context, view: &View, previous: Option<&PlanStatus>) -> (PlanStatus, Gate) {
        let changes = plan::planned(&view.plan, &view.observed, &self.previous, &view.diff);
        let (plan, gate) = gate(self.governance, self.stack.metadata.generation, changes, previous);
        let observing = self.governance.management == Management::ObserveOnly;
        if observing && !plan.changes.is_empty() && is_new(&plan, self.status.plan.as_ref()) {
            let listed: Vec<String> =
                plan.changes.iter().take(3).map(|c| format!("{} ({})", c.name, c.detail)).collect();
            let more = plan.changes.len().saturating_sub(listed.len());
            let note = format!(
                "AWS differs from the spec; plan {} lists {} change(s), none is made (management: ObserveOnly): {}{}",
                plan.id,
                plan.changes.len(),
                listed.join("; "),
                if more > 0 { format!("; and {more} more") } else { String::new() },
            );
            ctx.event(&self.stack.object_ref(&()), EventType::Warning, DRIFT_DETECTED, note).await;
        }
        (plan, gate)
    }

    /// Nothing left to change: waiting for AWS, or Ready.
    async fn settled(&self, ctx: &Context, view: &View, status: StackStatus) -> Step<StackStatus> {
        if !view.diff.waiting.is_empty() {
            self.network.look_again(ctx).await;
            let message = format!("waiting for AWS: {}", view.diff.waiting.join("; "));
            let health = Health::progressing("WaitingForAws", message);
            return Step { status, health, requeue_after: Some(ctx.settings.aws_poll) };
        }
        let message = format!(
            "the {:?} network matches the spec: VPC {}, {} subnets, KMS key {}",
            view.plan.pattern,
            status.vpc_id.as_deref().unwrap_or_default(),
            status.subnets.len(),
            status.kms_key_arn.as_deref().unwrap_or_default(),
        );
        Step { status, health: Health::ready("Converged", message), requeue_after: None }
    }

    /// The Event and log line of one mutation made; returns its note. A repair of drift is a
    /// Warning `DriftRepaired`, as for every kind.
    async fn announce(&self, ctx: &Context, change: &plan::Change, id: &str) -> String {
        let (kind, reason, text) = if self.drift {
            let what = format!("{} ({}: {id})", change.what, change.action.reason());
            (EventType::Warning, "DriftRepaired", format!("repaired {}: {what}", change.component))
        } else {
            (EventType::Normal, change.action.reason(), format!("{}: {id} ({})", change.component, change.what))
        };
        let (namespace, name) = (self.stack.namespace().unwrap_or_default(), self.stack.name_any());
        info!(kind = "Stack", %namespace, %name, reason, note = %text, "AWS mutation");
        ctx.event(&self.stack.object_ref(&()), kind, reason, text.clone()).await;
        text
    }
}

/// The image NAT instances boot, for `natType: Instance`: the one pinned in the annotation for
/// the instance type's architecture; else the latest Amazon Linux 2023 (the public SSM parameter,
/// as for a Bastion), pinned before anything is launched with it, so that a crash in between or a
/// later replacement boots the same one.
async fn nat_image(ctx: &Context, stack: &Stack, network: &Network) -> Result<Option<String>> {
    let spec = &stack.spec.network;
    if spec.nat_type() != NatType::Instance || spec.nat_gateways() == NatGateways::None {
        return Ok(None);
    }
    let arch = Arch::of(spec.nat_instance_type());
    if let Some(pinned) = image::pinned_image(stack.annotations().get(NAT_IMAGE_ANNOTATION).map(String::as_str), arch) {
        return Ok(Some(pinned));
    }
    let parameter = arch.image_parameter();
    let chosen = image::latest_image(&network.ssm, network.calls(ctx), &parameter).await?;
    let pin = serde_json::json!({NAT_IMAGE_ANNOTATION: image::image_annotation(arch, &chosen)});
    reconciler::annotate(stack, ctx, pin).await?;
    let note = format!("chose image {chosen} ({parameter}) for NAT instances");
    ctx.event(&stack.object_ref(&()), EventType::Normal, "ChoseImage", note).await;
    Ok(Some(chosen))
}

/// One step of the teardown.
async fn teardown(stack: &Stack, ctx: &Context, link: &AwsAccountLink) -> Result<Cleanup> {
    let owner = owner(stack)?;
    let region = stack.spec.region.clone().unwrap_or_else(|| link.spec.region.clone());
    let network = Network::connect(ctx, link, &region).await?;
    let snapshot = network.snapshot(ctx).await?;
    // A resource this Stack made whose tag was changed would be left behind: the deletion waits
    // for the tag (resources of an earlier Stack of this name are not this one's to delete).
    let status = stack.status.clone().unwrap_or_default();
    if let Some(foreign) = plan::foreign(&snapshot, &owner, &status).iter().find(|f| f.in_status) {
        return Err(foreign.conflict(&owner));
    }
    let observed = Observed::of(&snapshot, &owner.uid, &owner.kms_alias());
    drop(snapshot);
    let kept = kept(ctx, &network, &observed).await?;
    // While it works, the condition says what it keeps and why.
    let with_kept = |message: String| if kept.is_empty() { message } else { format!("{message}; {}", kept.summary()) };
    match plan::teardown(&observed, &owner.kms_alias(), &kept) {
        Teardown::Done if kept.is_empty() => {
            let note = "every AWS resource of the stack is deleted (the KMS key waits out its deletion window)";
            ctx.event(&stack.object_ref(&()), EventType::Normal, "Deleted", note).await;
            Ok(Cleanup::Done)
        }
        Teardown::Done => {
            for (what, needed_by) in kept.0.values() {
                let note = format!(
                    "kept {what}: {} still use(s) it; delete them, then this resource (tagged with the Stack's owner-uid)",
                    needed_by.join(", ")
                );
                ctx.event(&stack.object_ref(&()), EventType::Warning, "KeptInUse", note).await;
            }
            let note = format!("every other AWS resource of the stack is deleted; {}", kept.summary());
            ctx.event(&stack.object_ref(&()), EventType::Normal, "Deleted", note).await;
            Ok(Cleanup::Done)
        }
        Teardown::Waiting(message) => {
            network.look_again(ctx).await;
            Ok(Cleanup::Pending {
                reason: "WaitingForAws",
                message: with_kept(message),
                requeue_after: ctx.settings.aws_poll,
            })
        }
        Teardown::Step(change) => {
            let id = network.apply(ctx, &change.action).await?;
            let reason = change.action.reason();
            let note = format!("{} ({id})", change.what);
            let (namespace, name) = (stack.namespace().unwrap_or_default(), stack.name_any());
            info!(kind = "Stack", %namespace, %name, reason, %note, "AWS mutation");
            ctx.event(&stack.object_ref(&()), EventType::Normal, reason, note.clone()).await;
            Ok(Cleanup::Pending { reason: "Deleting", message: with_kept(note), requeue_after: Duration::ZERO })
        }
    }
}

/// What the teardown must leave for resources outside the stack (`plan::kept` says what and why).
/// Asked of AWS only while the stack still has a key or a VPC to keep.
async fn kept(ctx: &Context, network: &Network, observed: &Observed) -> Result<Kept> {
    let keys: Vec<&KmsKey> = observed.kms_keys.iter().filter(|k| !k.is_pending_deletion()).collect();
    let vpcs: Vec<&str> = observed.vpcs.iter().map(|v| v.id.as_str()).collect();
    if keys.is_empty() && vpcs.is_empty() {
        return Ok(Kept::default());
    }
    let dependants = network.dependants(ctx, &keys, &vpcs).await?;
    Ok(plan::kept(observed, &dependants))
}

/// Whether the Stack's status names any AWS resource it made.
fn records_resources(stack: &Stack) -> bool {
    stack.status.as_ref().is_some_and(|s| {
        s.vpc_id.is_some() || s.kms_key_arn.is_some() || s.vpc_link_id.is_some() || !s.subnets.is_empty()
    })
}

fn owner(stack: &Stack) -> Result<Owner> {
    Ok(Owner { namespace: stack.namespace().unwrap_or_default(), name: stack.name_any(), uid: owner_uid(stack)? })
}

/// The status after a mutation: what was observed before it, keeping the IDs the status already
/// knew where the observation had none yet, for the resource types the plan still wants. Those IDs
/// salt the idempotency tokens, so they must not vanish from one step to the next; the IDs of a
/// type the spec no longer wants (NAT gateways after `natGateways: None`) go with it.
fn merged(mut observed: StackStatus, previous: &StackStatus, plan: &NetworkPlan) -> StackStatus {
    let instances = plan.nat_gateways.iter().filter(|n| n.instance_type.is_some()).count();
    let gateways = plan.nat_gateways.len() - instances;
    for (now, before, wanted) in [
        (&mut observed.route_table_ids, &previous.route_table_ids, plan.route_tables.len()),
        (&mut observed.nat_gateway_ids, &previous.nat_gateway_ids, gateways),
        (&mut observed.nat_instance_ids, &previous.nat_instance_ids, instances),
        (&mut observed.vpc_endpoint_ids, &previous.vpc_endpoint_ids, plan.endpoints.len()),
    ] {
        if now.is_empty() && wanted > 0 {
            now.clone_from(before);
        }
    }
    observed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_without_a_uid_owns_nothing_rather_than_what_carries_an_empty_one() {
        let spec = serde_json::from_value(serde_json::json!({"accountLinkRef": {"name": "l"}})).unwrap();
        let mut stack = Stack::new("web", spec);
        assert!(matches!(owner(&stack), Err(Error::OwnerUidMissing { .. })));
        stack.metadata.uid = Some("uid-1".into());
        assert_eq!(owner(&stack).unwrap().uid, "uid-1");
    }

    #[test]
    fn ids_of_a_type_the_spec_no_longer_wants_leave_the_status_with_it() {
        let owner = Owner { namespace: "team-a".into(), name: "web".into(), uid: "uid-1".into() };
        let zones: Vec<String> = ["us-east-1a", "us-east-1b", "us-east-1c"].map(String::from).into();
        let plan_for = |network: serde_json::Value| {
            let spec = serde_json::json!({"accountLinkRef": {"name": "l"}, "network": network});
            plan::plan_network(owner.clone(), &serde_json::from_value(spec).unwrap(), "us-east-1", zones.clone())
                .unwrap()
        };
        let previous = StackStatus { nat_gateway_ids: vec!["nat-1".into(), "nat-2".into()], ..Default::default() };
        // Removed by the pass: the IDs go.
        let none = plan_for(serde_json::json!({"natGateways": "None"}));
        assert!(merged(StackStatus::default(), &previous, &none).nat_gateway_ids.is_empty());
        // Replaced by NAT instances: the gateways' IDs go too.
        let instances = plan_for(serde_json::json!({"natGateways": "PerAz", "natType": "Instance"}));
        assert!(merged(StackStatus::default(), &previous, &instances).nat_gateway_ids.is_empty());
        // Still wanted but not seen yet (a create just made): kept, as they salt the tokens.
        let per_az = plan_for(serde_json::json!({"natGateways": "PerAz"}));
        assert_eq!(merged(StackStatus::default(), &previous, &per_az).nat_gateway_ids.len(), 2);
    }
}
