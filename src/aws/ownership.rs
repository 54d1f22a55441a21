//! Whose an AWS resource is: the tag keys every resource the operator makes carries, and the one
//! judgement every kind makes of a resource found under one of its names ("is this mine, and if not,
//! whose is it"). Kinds build their tags from these keys; the inventory lists by them.

use kube::Resource;

pub use super::tags::Tags;
use crate::error::{Error, Result};

/// Tag key that marks every AWS resource the operator created; `Scoped` grants hinge on it.
pub const MANAGED_BY_TAG: &str = "tinystacks.io/managed-by";
/// The only value of [`MANAGED_BY_TAG`] the `Scoped` policy accepts, so other tools' resources stay out of reach.
pub const MANAGED_BY_VALUE: &str = "tinystacks-operator";
/// Tag key naming the Kubernetes object behind a resource, so a person in the AWS console can trace it back.
pub const OWNER_TAG: &str = "tinystacks.io/owner";
/// Tag key holding the owner's UID, which tells a re-created object of the same name from the original.
pub const OWNER_UID_TAG: &str = "tinystacks.io/owner-uid";

/// Why a resource found under one of an object's names is not that object's own (`None` when it
/// is): made by this operator for this very object, whose UID is `uid`. What an earlier object of
/// the same name left (deleted with `Retain`), or another install or tool made, is not: adopting
/// it would give this object someone else's network, password or data. An empty `uid` (an object
/// not read from the API server) owns nothing, so a resource tagged with an empty UID is never
/// taken for its own.
pub fn claimed_by_other(tags: &Tags, uid: &str) -> Option<String> {
    if tags.get(MANAGED_BY_TAG) != Some(MANAGED_BY_VALUE) {
        return Some("it was not created by tinystacks-operator".into());
    }
    let owner = tags.get(OWNER_TAG).unwrap_or("none");
    match tags.get(OWNER_UID_TAG) {
        _ if uid.is_empty() => Some(format!("this object has no UID, so it owns nothing (owner {owner})")),
        Some(found) if found == uid => None,
        Some(found) => Some(format!("its tag {OWNER_UID_TAG} is {found} (owner {owner}), this object's UID is {uid}")),
        None => Some(format!("it has no {OWNER_UID_TAG} tag (owner {owner})")),
    }
}

/// Whether a resource carries the owner-UID tag at all: one of the operator's, whichever object's.
/// The inventory keeps only these (other tools' resources are never the operator's).
pub fn carries_owner(tags: &Tags) -> bool {
    tags.contains_key(OWNER_UID_TAG)
}

/// The UID of the object that owns what it makes. Every object read from the API server has one;
/// one without is the operator's own fault (an object built in memory), never a spec a person can
/// fix, and must not be taken for the empty UID when ownership is decided.
pub fn owner_uid<K: Resource>(object: &K) -> Result<String> {
    match object.meta().uid.as_deref() {
        Some(uid) if !uid.is_empty() => Ok(uid.to_string()),
        _ => Err(Error::OwnerUidMissing {
            object: format!(
                "{}/{}",
                object.meta().namespace.as_deref().unwrap_or(""),
                object.meta().name.as_deref().unwrap_or("")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(uid: &str) -> Tags {
        Tags::from([(MANAGED_BY_TAG, MANAGED_BY_VALUE), (OWNER_TAG, "Database/ns/db"), (OWNER_UID_TAG, uid)])
    }

    #[test]
    fn a_resource_is_mine_only_if_the_operator_made_it_for_this_uid() {
        assert_eq!(claimed_by_other(&tags("uid-1"), "uid-1"), None);
        let why = claimed_by_other(&tags("uid-1"), "uid-2").expect("another object's");
        assert!(why.contains("uid-1") && why.contains("Database/ns/db") && why.contains("uid-2"), "{why}");
        let mut untagged = tags("uid-1");
        untagged.remove(OWNER_UID_TAG);
        assert!(claimed_by_other(&untagged, "uid-1").is_some_and(|m| m.contains("no tinystacks.io/owner-uid")));
        untagged.remove(MANAGED_BY_TAG);
        assert!(claimed_by_other(&untagged, "uid-1").is_some_and(|m| m.contains("not created by")));
    }

    #[test]
    fn an_empty_uid_owns_nothing_not_even_a_resource_tagged_with_an_empty_uid() {
        assert!(claimed_by_other(&tags(""), "").is_some());
        let object = crate::api::Stack::new(
            "web",
            serde_json::from_value(serde_json::json!({"accountLinkRef": {"name": "l"}})).unwrap(),
        );
        assert!(matches!(owner_uid(&object), Err(Error::OwnerUidMissing { .. })));
        let mut object = object;
        object.metadata.uid = Some("uid-1".into());
        assert_eq!(owner_uid(&object).unwrap(), "uid-1");
    }
}
