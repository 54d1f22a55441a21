//! The gate between a kind's plan and its apply, shared by every kind: the plan becomes
//! `status.plan` (with an id a person can approve), and `spec.changePolicy` and
//! `spec.management` decide whether its changes are made now. Pure, so it is unit-tested here.
//!
//! A kind computes its plan (spec + observed AWS → ordered [`PlannedChange`]s) and calls [`gate`]
//! before any AWS mutation. [`Gate::Apply`] lets it make the changes; [`Gate::Hold`] means none
//! may be made, and carries what `Ready` says meanwhile.

use sha2::{Digest, Sha256};

use crate::api::{ApprovedPlan, ChangePolicy, Management, PlanControls, PlanStatus, PlannedChange};
use crate::runtime::conditions::Health;

/// The `Ready` reason while a plan waits for `spec.approvedPlan`.
pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
/// The `Ready` reason while an `ObserveOnly` object's AWS side differs from its spec.
pub const DRIFTED: &str = "Drifted";
/// The Warning Event an `ObserveOnly` object reports a new plan with.
pub const DRIFT_DETECTED: &str = "DriftDetected";

/// The spec fields that govern a plan.
#[derive(Clone, Copy, Debug, Default)]
pub struct Governance<'a> {
    pub change_policy: ChangePolicy,
    pub approved_plan: Option<&'a str>,
    pub management: Management,
}

impl<'a> From<&'a PlanControls> for Governance<'a> {
    fn from(controls: &'a PlanControls) -> Self {
        Governance {
            change_policy: controls.change_policy,
            approved_plan: controls.approved_plan.as_deref(),
            management: controls.management,
        }
    }
}

/// Whether the plan's changes are made now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Make the changes (there may be none: AWS matches the spec).
    Apply,
    /// Make no AWS mutation at all; `Ready` reports this.
    Hold(Health),
}

/// The plan to write to `status.plan`, and whether to apply it. `previous` is the plan the status
/// holds: a plan whose changes are the same keeps its id (approving it edits the spec, which must
/// not make the approval stale), and an approved plan under way goes on while what is left of it
/// stays within what was approved.
pub fn gate(
    governance: Governance<'_>,
    generation: Option<i64>,
    changes: Vec<PlannedChange>,
    previous: Option<&PlanStatus>,
) -> (PlanStatus, Gate) {
    let id = match previous {
        Some(p) if p.changes == changes && !p.id.is_empty() => p.id.clone(),
        _ => plan_id(generation, &changes),
    };
    let mut plan = PlanStatus { id, observed_generation: generation, changes, applying: None };
    if governance.management == Management::ObserveOnly {
        return if plan.changes.is_empty() {
            (plan, Gate::Apply)
        } else {
            let message = format!(
                "AWS differs from the spec: plan {} lists {}; management is ObserveOnly, so nothing is changed",
                plan.id,
                count(plan.changes.len())
            );
            (plan, Gate::Hold(Health::held(DRIFTED, message)))
        };
    }
    if governance.change_policy == ChangePolicy::Automatic || plan.changes.is_empty() {
        return (plan, Gate::Apply);
    }
    let keys: Vec<String> = plan.changes.iter().map(key).collect();
    let under_way = previous
        .and_then(|p| p.applying.as_ref())
        .filter(|a| governance.approved_plan == Some(a.id.as_str()) && keys.iter().all(|k| a.changes.contains(k)));
    if let Some(approved) = under_way {
        plan.applying = Some(approved.clone());
        return (plan, Gate::Apply);
    }
    if governance.approved_plan == Some(plan.id.as_str()) {
        plan.applying = Some(ApprovedPlan { id: plan.id.clone(), changes: keys });
        return (plan, Gate::Apply);
    }
    let message = format!(
        "plan {} ({}) awaits approval: set spec.approvedPlan to {} to apply it",
        plan.id,
        count(plan.changes.len()),
        plan.id
    );
    (plan, Gate::Hold(Health::held(AWAITING_APPROVAL, message)))
}

/// Whether `plan` is new since `previous` (another id): what an Event about it is sent for once.
pub fn is_new(plan: &PlanStatus, previous: Option<&PlanStatus>) -> bool {
    previous.is_none_or(|p| p.id != plan.id)
}

/// A change's identity within a plan: `<action> <resource> <name>`.
pub fn key(change: &PlannedChange) -> String {
    format!("{:?} {} {}", change.action, change.resource, change.name)
}

/// The plan's id: the first 16 hex digits of a SHA-256 over the generation and the changes.
fn plan_id(generation: Option<i64>, changes: &[PlannedChange]) -> String {
    let mut hash = Sha256::new();
    hash.update(generation.unwrap_or_default().to_be_bytes());
    for change in changes {
        for part in [key(change).as_str(), change.id.as_deref().unwrap_or(""), change.detail.as_str()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
    }
    hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn count(n: usize) -> String {
    if n == 1 { "1 change".into() } else { format!("{n} changes") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ChangeAction;

    fn change(action: ChangeAction, name: &str) -> PlannedChange {
        PlannedChange { action, resource: "ec2:Subnet".into(), name: name.into(), id: None, detail: String::new() }
    }

    fn two() -> Vec<PlannedChange> {
        vec![change(ChangeAction::Create, "subnet/private/1"), change(ChangeAction::Create, "subnet/private/2")]
    }

    fn manual(approved: Option<&str>) -> Governance<'_> {
        Governance { change_policy: ChangePolicy::Manual, approved_plan: approved, ..Default::default() }
    }

    fn held_reason(gate: &Gate) -> Option<&str> {
        match gate {
            Gate::Hold(Health::Held { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn automatic_applies_and_still_reports_the_plan() {
        let (plan, gate) = gate(Governance::default(), Some(1), two(), None);
        assert_eq!((plan.changes.len(), gate), (2, Gate::Apply));
        assert_eq!(plan.id.len(), 16);
        assert_eq!(plan.observed_generation, Some(1));
    }

    #[test]
    fn manual_holds_until_the_plan_is_approved_and_approving_keeps_the_id() {
        let (first, gate1) = gate(manual(None), Some(1), two(), None);
        assert_eq!(held_reason(&gate1), Some(AWAITING_APPROVAL));
        // Setting spec.approvedPlan is a spec edit: generation 2, same changes, same id.
        let (second, gate2) = gate(manual(Some(&first.id)), Some(2), two(), Some(&first));
        assert_eq!(second.id, first.id);
        assert_eq!(second.observed_generation, Some(2));
        assert_eq!(gate2, Gate::Apply);
        assert_eq!(second.applying.as_ref().map(|a| a.changes.len()), Some(2));
        // One change made: what is left is within the approval, so it goes on, under a new id.
        let rest = vec![two().remove(1)];
        let (third, gate3) = gate(manual(Some(&first.id)), Some(2), rest, Some(&second));
        assert_ne!(third.id, first.id);
        assert_eq!(gate3, Gate::Apply);
        // Done: nothing left, nothing under way.
        let (done, gate4) = gate(manual(Some(&first.id)), Some(2), vec![], Some(&third));
        assert_eq!((done.applying, gate4), (None, Gate::Apply));
    }

    #[test]
    fn an_approval_of_an_outdated_plan_does_nothing() {
        let (first, _) = gate(manual(None), Some(1), two(), None);
        // AWS moved: another change joins; the old id no longer applies.
        let mut moved = two();
        moved.push(change(ChangeAction::Delete, "route/public/0"));
        let (second, gate2) = gate(manual(Some(&first.id)), Some(2), moved.clone(), Some(&first));
        assert_ne!(second.id, first.id);
        assert_eq!(held_reason(&gate2), Some(AWAITING_APPROVAL));
        // And a change outside an approval under way stops it.
        let (approved, _) = gate(manual(Some(&first.id)), Some(2), two(), Some(&first));
        let (stopped, gate3) = gate(manual(Some(&first.id)), Some(2), moved, Some(&approved));
        assert_eq!((stopped.applying, held_reason(&gate3)), (None, Some(AWAITING_APPROVAL)));
    }

    #[test]
    fn observe_only_never_applies_a_change_and_reports_drift() {
        let observe = Governance { management: Management::ObserveOnly, ..Default::default() };
        let (plan, gate1) = gate(observe, Some(3), two(), None);
        assert_eq!(held_reason(&gate1), Some(DRIFTED));
        assert!(is_new(&plan, None));
        let (again, _) = gate(observe, Some(3), two(), Some(&plan));
        assert!(!is_new(&again, Some(&plan)));
        let (matching, gate2) = gate(observe, Some(3), vec![], Some(&plan));
        assert_eq!((matching.changes.len(), gate2), (0, Gate::Apply));
        // Even an approved Manual plan is not applied under ObserveOnly.
        let both = Governance { management: Management::ObserveOnly, ..manual(Some(&plan.id)) };
        assert_eq!(held_reason(&gate(both, Some(3), two(), Some(&plan)).1), Some(DRIFTED));
    }

    #[test]
    fn the_id_follows_the_changes_and_the_generation() {
        let a = plan_id(Some(1), &two());
        assert_eq!(a, plan_id(Some(1), &two()));
        assert_ne!(a, plan_id(Some(2), &two()));
        assert_ne!(a, plan_id(Some(1), &two()[..1]));
    }
}
