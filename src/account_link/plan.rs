//! The pure part of the link's reconcile: what a CloudFormation stack's status means, which event
//! explains a failure, when a failed stack may be tried again, and the template ConfigMap's name.

use std::time::{Duration, SystemTime};

/// What the operator can do with a stack in a given status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackPhase {
    /// CloudFormation is working on it; look again soon.
    InProgress,
    /// The last operation succeeded; the role is there.
    Complete,
    /// An update failed and was rolled back: the previous template is in force and usable.
    UpdateRolledBack,
    /// Creation failed and was rolled back: the stack holds nothing and can only be deleted.
    CreateRolledBack,
    /// Failed in a way that needs a person (a failed rollback or delete).
    Failed,
    /// Being deleted.
    Deleting,
    /// Gone.
    Deleted,
}

/// The phase of a CloudFormation `StackStatus`.
pub fn phase(status: &str) -> StackPhase {
    match status {
        "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" => StackPhase::Complete,
        "UPDATE_ROLLBACK_COMPLETE" | "IMPORT_ROLLBACK_COMPLETE" => StackPhase::UpdateRolledBack,
        "ROLLBACK_COMPLETE" => StackPhase::CreateRolledBack,
        "ROLLBACK_IN_PROGRESS"
        | "CREATE_FAILED"
        | "ROLLBACK_FAILED"
        | "UPDATE_FAILED"
        | "UPDATE_ROLLBACK_FAILED"
        | "DELETE_FAILED"
        | "IMPORT_ROLLBACK_FAILED" => StackPhase::Failed,
        "DELETE_IN_PROGRESS" => StackPhase::Deleting,
        "DELETE_COMPLETE" => StackPhase::Deleted,
        // CREATE_/UPDATE_/IMPORT_IN_PROGRESS, REVIEW_IN_PROGRESS, the cleanup and rollback phases
        // of an update, and any status AWS adds later: wait and look again.
        _ => StackPhase::InProgress,
    }
}

/// What a person should do about a stack in `status`.
pub fn remedy(status: &str, stack: &str) -> String {
    match phase(status) {
        StackPhase::CreateRolledBack => format!(
            "fix the cause; the operator deletes the empty stack {stack} and creates it again at the next resync"
        ),
        StackPhase::UpdateRolledBack => {
            format!("fix the cause; the operator tries the update of {stack} again at the next resync")
        }
        _ => format!(
            "resolve it in the CloudFormation console (continue the rollback, or delete the stack {stack}); the operator looks again at every resync"
        ),
    }
}

/// One event of `DescribeStackEvents`, as much as the failure reason needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackEvent {
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    pub reason: String,
}

/// CloudFormation's own explanation of the latest failure, from events listed newest first: the
/// first resource failure of the latest operation (later ones are usually "cancelled" echoes).
pub fn failure_reason(events: &[StackEvent], stack_status_reason: Option<&str>) -> String {
    let start = events
        .iter()
        .position(|e| e.resource_type == "AWS::CloudFormation::Stack" && e.reason == "User Initiated")
        .unwrap_or(events.len());
    let is_cause = |e: &&StackEvent| {
        e.status.ends_with("_FAILED")
            && !e.reason.is_empty()
            && !e.reason.starts_with("Resource creation cancelled")
            && !e.reason.starts_with("Resource update cancelled")
            && e.resource_type != "AWS::CloudFormation::Stack"
    };
    let cause = events[..start].iter().rev().find(is_cause).or_else(|| events.iter().rev().find(is_cause));
    match (cause, stack_status_reason.filter(|r| !r.is_empty())) {
        (Some(e), _) => format!("{} ({}): {}", e.logical_id, e.resource_type, e.reason),
        (None, Some(reason)) => reason.to_string(),
        (None, None) => "CloudFormation reported no reason".to_string(),
    }
}

/// Whether a failed operation last touched at `changed` may be tried again: once per resync
/// period, so a failure that persists costs one attempt per period instead of a hot loop.
pub fn may_retry(changed: Option<SystemTime>, now: SystemTime, period: Duration) -> bool {
    changed.is_none_or(|c| now.duration_since(c).is_ok_and(|age| age >= period))
}

/// Whether the stack changed recently enough that IAM may still be propagating its role.
pub fn within_grace(changed: Option<SystemTime>, now: SystemTime, grace: Duration) -> bool {
    changed.is_some_and(|c| now.duration_since(c).map_or(true, |age| age < grace))
}

/// Whether two template bodies are the same template (CloudFormation may hand back a body with
/// other whitespace than the one it was given).
pub fn same_template(deployed: &str, desired: &str) -> bool {
    match (serde_json::from_str::<serde_json::Value>(deployed), serde_json::from_str::<serde_json::Value>(desired)) {
        (Ok(a), Ok(b)) => a == b,
        _ => deployed.trim() == desired.trim(),
    }
}

/// The ConfigMap that holds a link's template: `tinystacks-link-<name>`, shortened with a hash
/// suffix when the link's name would make it longer than Kubernetes allows.
pub fn config_map_name(link_name: &str) -> String {
    const PREFIX: &str = "tinystacks-link-";
    const MAX: usize = 253;
    let full = format!("{PREFIX}{link_name}");
    if full.len() <= MAX {
        return full;
    }
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let hash =
        link_name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let keep = MAX - PREFIX.len() - 17;
    let head = link_name[..keep].trim_end_matches(['-', '.']);
    format!("{PREFIX}{head}-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, type_: &str, status: &str, reason: &str) -> StackEvent {
        StackEvent { logical_id: id.into(), resource_type: type_.into(), status: status.into(), reason: reason.into() }
    }

    #[test]
    fn phases_of_the_statuses_that_matter() {
        assert_eq!(phase("CREATE_IN_PROGRESS"), StackPhase::InProgress);
        assert_eq!(phase("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"), StackPhase::InProgress);
        assert_eq!(phase("CREATE_COMPLETE"), StackPhase::Complete);
        assert_eq!(phase("UPDATE_COMPLETE"), StackPhase::Complete);
        assert_eq!(phase("ROLLBACK_COMPLETE"), StackPhase::CreateRolledBack);
        assert_eq!(phase("UPDATE_ROLLBACK_COMPLETE"), StackPhase::UpdateRolledBack);
        for failed in ["ROLLBACK_IN_PROGRESS", "ROLLBACK_FAILED", "DELETE_FAILED", "UPDATE_ROLLBACK_FAILED"] {
            assert_eq!(phase(failed), StackPhase::Failed, "{failed}");
        }
        assert_eq!(phase("DELETE_IN_PROGRESS"), StackPhase::Deleting);
        assert_eq!(phase("DELETE_COMPLETE"), StackPhase::Deleted);
        assert_eq!(phase("SOMETHING_NEW"), StackPhase::InProgress);
    }

    #[test]
    fn the_root_cause_of_the_latest_operation_is_reported() {
        let stack = "AWS::CloudFormation::Stack";
        let events = vec![
            event("TinyStacksRole", stack, "ROLLBACK_COMPLETE", ""),
            event("Boundary", "AWS::IAM::ManagedPolicy", "CREATE_FAILED", "Resource creation cancelled"),
            event("Role", "AWS::IAM::Role", "CREATE_FAILED", "TinyStacksRole already exists in stack other"),
            event("TinyStacksRole", stack, "CREATE_IN_PROGRESS", "User Initiated"),
            event("Old", "AWS::IAM::Role", "CREATE_FAILED", "an older failure"),
        ];
        assert_eq!(
            failure_reason(&events, Some("The following resource(s) failed to create: [Role].")),
            "Role (AWS::IAM::Role): TinyStacksRole already exists in stack other"
        );
        assert_eq!(failure_reason(&[], Some("stack reason")), "stack reason");
        assert_eq!(failure_reason(&[], None), "CloudFormation reported no reason");
    }

    #[test]
    fn failed_stacks_are_retried_once_per_period() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let period = Duration::from_secs(300);
        assert!(!may_retry(Some(now - Duration::from_secs(10)), now, period));
        assert!(may_retry(Some(now - Duration::from_secs(301)), now, period));
        assert!(may_retry(None, now, period));
        assert!(within_grace(Some(now - Duration::from_secs(5)), now, Duration::from_secs(60)));
        assert!(!within_grace(Some(now - Duration::from_secs(61)), now, Duration::from_secs(60)));
        assert!(!within_grace(None, now, Duration::from_secs(60)));
    }

    #[test]
    fn templates_compare_as_json() {
        assert!(same_template("{\"a\": 1, \"b\": [2]}", "{\n  \"b\": [2],\n  \"a\": 1\n}\n"));
        assert!(!same_template("{\"a\": 1}", "{\"a\": 2}"));
        assert!(same_template("a: 1\n", "a: 1"));
    }

    #[test]
    fn config_map_names_fit_kubernetes() {
        assert_eq!(config_map_name("prod"), "tinystacks-link-prod");
        let long = "a".repeat(253);
        let name = config_map_name(&long);
        assert!(name.len() <= 253, "{}", name.len());
        assert_eq!(name, config_map_name(&long));
        assert_ne!(name, config_map_name(&format!("{}b", "a".repeat(252))));
    }
}
