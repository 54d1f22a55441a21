//! The three conditions every kind reports (`Ready`, `Reconciling`, `Stalled`, following the
//! kstatus convention), computed from what a reconcile found. Pure, so it is unit-tested here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Where an object stands after a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The AWS side matches the spec and is usable.
    Ready { reason: String, message: String },
    /// The operator is still making changes, or waits for something that will happen by itself.
    Progressing { reason: String, message: String },
    /// No progress is possible until a person changes something.
    Stalled { reason: String, message: String },
    /// `tinystacks.io/paused` is set: `Ready` keeps its status, with reason `Paused`.
    Paused,
    /// Nothing is made until a person acts, yet nothing is wrong: a plan awaits approval
    /// (`AwaitingApproval`), or an `ObserveOnly` object's AWS side differs from its spec
    /// (`Drifted`). `Ready=False`, neither `Reconciling` nor `Stalled`.
    Held { reason: String, message: String },
}

impl Health {
    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Health::Ready { reason: reason.into(), message: message.into() }
    }
    pub fn progressing(reason: &str, message: impl Into<String>) -> Self {
        Health::Progressing { reason: reason.into(), message: message.into() }
    }
    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Health::Stalled { reason: reason.into(), message: message.into() }
    }
    pub fn held(reason: &str, message: impl Into<String>) -> Self {
        Health::Held { reason: reason.into(), message: message.into() }
    }
}

/// The generation the conditions (and `status.observedGeneration`) describe: the object's own,
/// except while paused, when it stays the last one a reconcile applied. A spec change made while
/// paused is not applied, and tools that follow kstatus (Flux, Argo CD, `kubectl wait`) must see it
/// as not observed yet rather than as Current (`Ready=True` at the new generation).
pub fn observed_generation(previous: &[Condition], health: &Health, generation: Option<i64>) -> Option<i64> {
    match health {
        Health::Paused => find(previous, READY).and_then(|c| c.observed_generation),
        _ => generation,
    }
}

/// The new condition list: `previous` with the three standard conditions replaced.
/// `lastTransitionTime` moves only when a condition's status changes, so a reconcile that finds
/// the same state produces an identical list and its status write is skipped. `generation` is the
/// object's; the conditions carry [`observed_generation`].
pub fn compute(previous: &[Condition], health: &Health, generation: Option<i64>, now: &Time) -> Vec<Condition> {
    let prev_ready = find(previous, READY);
    let observed = observed_generation(previous, health, generation);
    let (ready, reconciling, stalled) = match health {
        Health::Ready { reason, message } => (("True", reason.as_str(), message.clone()), "False", "False"),
        Health::Progressing { reason, message } => (("False", reason.as_str(), message.clone()), "True", "False"),
        Health::Stalled { reason, message } => (("False", reason.as_str(), message.clone()), "False", "True"),
        Health::Held { reason, message } => (("False", reason.as_str(), message.clone()), "False", "False"),
        Health::Paused => {
            let status = prev_ready.map_or("Unknown", |c| c.status.as_str());
            let mut message =
                "reconciliation is paused by the annotation tinystacks.io/paused; no AWS call is made".to_string();
            if let Some(current) = generation.filter(|g| observed != Some(*g)) {
                message.push_str(&match observed {
                    Some(applied) => format!("; generation {current} is not applied (the last applied is {applied})"),
                    None => format!("; generation {current} is not applied"),
                });
            }
            ((status, "Paused", message), "False", "False")
        }
    };
    let (ready_status, ready_reason, ready_message) = ready;
    let detail = match health {
        Health::Progressing { reason, message } | Health::Stalled { reason, message } => {
            Some((reason.as_str(), message.as_str()))
        }
        _ => None,
    };
    let (flag_reason, flag_message) = detail.unwrap_or((ready_reason, ""));

    let mut out: Vec<Condition> =
        previous.iter().filter(|c| ![READY, RECONCILING, STALLED].contains(&c.type_.as_str())).cloned().collect();
    out.push(condition(prev_ready, READY, ready_status, ready_reason, &ready_message, observed, now));
    let (rec_reason, rec_message) = if reconciling == "True" { (flag_reason, flag_message) } else { ("Idle", "") };
    out.push(condition(find(previous, RECONCILING), RECONCILING, reconciling, rec_reason, rec_message, observed, now));
    let (st_reason, st_message) = if stalled == "True" { (flag_reason, flag_message) } else { ("NotStalled", "") };
    out.push(condition(find(previous, STALLED), STALLED, stalled, st_reason, st_message, observed, now));
    out
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn condition(
    previous: Option<&Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: truncate(message, 32 * 1024),
        observed_generation: generation,
        last_transition_time,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The `Ready` condition of a list, if any.
pub fn ready(conditions: &[Condition]) -> Option<&Condition> {
    find(conditions, READY)
}

/// Whether `Ready` is `True` and describes the current generation.
pub fn is_ready(conditions: &[Condition], generation: Option<i64>) -> bool {
    ready(conditions)
        .is_some_and(|c| c.status == "True" && (generation.is_none() || c.observed_generation == generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn get<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter().find(|x| x.type_ == t).unwrap()
    }

    #[test]
    fn progressing_sets_reconciling_with_the_reason() {
        let c = compute(&[], &Health::progressing("WaitingForStack", "stack web is not Ready"), Some(3), &at(10));
        assert_eq!(get(&c, READY).status, "False");
        assert_eq!(get(&c, READY).reason, "WaitingForStack");
        assert_eq!(get(&c, RECONCILING).status, "True");
        assert_eq!(get(&c, RECONCILING).message, "stack web is not Ready");
        assert_eq!(get(&c, STALLED).status, "False");
        assert!(c.iter().all(|x| x.observed_generation == Some(3)));
    }

    #[test]
    fn stalled_clears_reconciling() {
        let c = compute(&[], &Health::stalled("AccountLinkNotAllowed", "add ns"), Some(1), &at(10));
        assert_eq!(get(&c, STALLED).status, "True");
        assert_eq!(get(&c, STALLED).reason, "AccountLinkNotAllowed");
        assert_eq!(get(&c, RECONCILING).status, "False");
        assert_eq!(get(&c, READY).reason, "AccountLinkNotAllowed");
    }

    #[test]
    fn same_state_keeps_transition_times_so_the_write_is_skipped() {
        let first = compute(&[], &Health::ready("Verified", "ok"), Some(1), &at(10));
        let second = compute(&first, &Health::ready("Verified", "ok"), Some(1), &at(99));
        assert_eq!(first, second);
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let first = compute(&[], &Health::progressing("Creating", "a"), Some(1), &at(10));
        let second = compute(&first, &Health::progressing("Creating", "b"), Some(1), &at(20));
        assert_eq!(get(&second, READY).last_transition_time, at(10));
        let third = compute(&second, &Health::ready("Ready", "done"), Some(1), &at(30));
        assert_eq!(get(&third, READY).last_transition_time, at(30));
        assert_eq!(get(&third, STALLED).last_transition_time, at(10));
    }

    #[test]
    fn paused_keeps_ready_status() {
        let ready = compute(&[], &Health::ready("Verified", "ok"), Some(1), &at(10));
        let paused = compute(&ready, &Health::Paused, Some(2), &at(20));
        assert_eq!(get(&paused, READY).status, "True");
        assert_eq!(get(&paused, READY).reason, "Paused");
        assert_eq!(get(&paused, READY).last_transition_time, at(10));
        assert_eq!(get(&paused, RECONCILING).status, "False");
        let fresh = compute(&[], &Health::Paused, Some(1), &at(10));
        assert_eq!(get(&fresh, READY).status, "Unknown");
    }

    #[test]
    fn a_spec_change_while_paused_is_not_reported_as_observed() {
        let ready = compute(&[], &Health::ready("Verified", "ok"), Some(1), &at(10));
        let paused = compute(&ready, &Health::Paused, Some(2), &at(20));
        assert!(paused.iter().all(|c| c.observed_generation == Some(1)), "{paused:?}");
        assert_eq!(observed_generation(&ready, &Health::Paused, Some(2)), Some(1));
        assert!(get(&paused, READY).message.ends_with("generation 2 is not applied (the last applied is 1)"));
        assert!(!is_ready(&paused, Some(2)));
        // Paused with nothing changed: the generation is the applied one, the message says no more.
        let unchanged = compute(&ready, &Health::Paused, Some(1), &at(20));
        assert!(unchanged.iter().all(|c| c.observed_generation == Some(1)));
        assert!(!get(&unchanged, READY).message.contains("not applied"));
        // Paused before any reconcile: nothing was observed.
        let fresh = compute(&[], &Health::Paused, Some(1), &at(10));
        assert!(fresh.iter().all(|c| c.observed_generation.is_none()));
        assert_eq!(observed_generation(&paused, &Health::ready("Verified", "ok"), Some(2)), Some(2));
    }

    #[test]
    fn foreign_conditions_are_kept() {
        let mut other = compute(&[], &Health::ready("Verified", "ok"), Some(1), &at(10));
        other[0].type_ = "Custom".into();
        let c = compute(&other, &Health::ready("Verified", "ok"), Some(1), &at(10));
        assert_eq!(c.len(), 4);
        assert!(c.iter().any(|x| x.type_ == "Custom"));
    }

    #[test]
    fn readiness_needs_the_current_generation() {
        let c = compute(&[], &Health::ready("Verified", "ok"), Some(1), &at(10));
        assert!(is_ready(&c, Some(1)));
        assert!(!is_ready(&c, Some(2)));
    }
}
