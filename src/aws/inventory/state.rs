//! The cache of one (account, region): the view, when each kind was listed, the operator's
//! creations a list has not shown yet, and the journal of changes made while a refresh lists.
//! Only bookkeeping and pure view changes: no AWS call is made here, so none is made while the
//! state's lock is held.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::types::KeyState;
use super::view::{Created, Kind, Listed, Recorded, Snapshot, change};
use super::{CREATE_GRACE, FAILED_REFRESH_PAUSE, REFRESH_SPACING};
use crate::error::{Error, Result};

/// What the bulk lists do not carry, asked once per resource first seen: VPC DNS attributes per
/// VPC ID, key states per key ID.
#[derive(Debug, Default)]
pub(super) struct Details {
    pub vpc_dns: HashMap<String, (bool, bool)>,
    pub key_states: HashMap<String, Option<KeyState>>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) snapshot: Snapshot,
    /// When each kind was last listed, and whether a mutation made that list stale.
    pub(super) listed: HashMap<Kind, (Instant, bool)>,
    /// Resources created by the operator that a list has not shown yet, with when they were made.
    pub(super) pending: Vec<(Instant, Created)>,
    /// While a refresh's lists are under way: what the operator changed meanwhile, applied again
    /// over the lists when they come back.
    pub(super) journal: Option<Vec<Recorded>>,
    /// How long the last refresh took, from its first request to its last answer.
    pub(super) last_refresh: Duration,
    /// When the last list of each kind began.
    pub(super) list_began: HashMap<Kind, Instant>,
    /// The last refresh's error, if it failed for a reason that passes, with when it ended and how
    /// long it took.
    pub(super) failed: Option<(Instant, Duration, Error)>,
    /// DNS attributes per VPC ID and key states per key ID, which the bulk lists do not carry.
    vpc_dns: HashMap<String, (Option<bool>, Option<bool>)>,
    key_states: HashMap<String, Option<KeyState>>,
}

impl State {
    /// The kinds to list again: never listed, changed in a way no record told, or older than
    /// `max_age`, or than `REFRESH_SPACING` times the last refresh if that is longer.
    pub(super) fn stale(&self, max_age: Duration, now: Instant) -> Vec<Kind> {
        let max_age = max_age.max(self.last_refresh * REFRESH_SPACING);
        Kind::ALL
            .into_iter()
            .filter(|k| self.listed.get(k).is_none_or(|(at, dirty)| *dirty || now.duration_since(*at) > max_age))
            .collect()
    }

    /// Whether a reconcile must wait for the `stale` kinds to be listed: one of them was never
    /// listed, or a record says it is out of date. Otherwise the view, kept by the records, serves.
    pub(super) fn must_wait(&self, stale: &[Kind]) -> bool {
        stale.iter().any(|k| self.listed.get(k).is_none_or(|(_, dirty)| *dirty))
    }

    /// What a reconcile gets while the pause after a failed refresh lasts: the view, if it may work
    /// from the view, or else the refresh's error. `None` when no such pause lasts.
    pub(super) fn after_failure(&self, stale: &[Kind], now: Instant) -> Option<Result<Snapshot>> {
        let (ended, took, error) = self.failed.as_ref()?;
        let pause = FAILED_REFRESH_PAUSE.max(*took * REFRESH_SPACING);
        if now.duration_since(*ended) >= pause {
            return None;
        }
        // Only an error that passes is kept in `failed`; `passing` copies it.
        Some(match passing(error) {
            Some(error) if self.must_wait(stale) => Err(error),
            _ => Ok(self.snapshot.clone()),
        })
    }

    /// Applies again, after a list that began before it, what a mutation did: the lists may show
    /// the resources as they were. Creations are kept by `pending` already.
    pub(super) fn replay(&mut self, recorded: Recorded) {
        if !matches!(recorded, Recorded::Created(_)) {
            self.record(recorded);
        }
    }

    /// Records what a mutation did: the view changes as `Snapshot::apply` says, and the cache keeps
    /// what a later list must not undo (creations it may not show yet, the details lists lack,
    /// kinds to list again).
    pub(super) fn record(&mut self, recorded: Recorded) {
        match &recorded {
            Recorded::Created(created) => self.pending.push((Instant::now(), created.clone())),
            Recorded::Observed(now) => {
                self.pending.retain(|(_, c)| c.kind() != now.kind() || c.id() != now.id());
                self.pending.push((Instant::now(), now.clone()));
            }
            Recorded::Changed(kind) => self.mark_changed(*kind),
            Recorded::Deleted(kind, id) => {
                self.pending.retain(|(_, c)| !c.named(id));
                if matches!(kind, Kind::NatGateways | Kind::VpcEndpoints) {
                    self.mark_changed(*kind);
                }
            }
            Recorded::VpcDns { vpc_id, support, hostnames } => {
                let entry = self.vpc_dns.entry(vpc_id.clone()).or_default();
                entry.0 = support.or(entry.0);
                entry.1 = hostnames.or(entry.1);
            }
            Recorded::KeyState { key_id, state } => {
                self.key_states.insert(key_id.clone(), Some(state.clone()));
            }
            _ => {}
        }
        let edited = recorded.edits(&self.snapshot);
        self.snapshot.apply(&recorded);
        // A creation a list has not shown yet is kept as the view now has it, or `merge_pending`
        // would bring it back as it was created.
        if let Some(id) = edited {
            let view = &self.snapshot;
            for (_, created) in self.pending.iter_mut().filter(|(_, c)| c.id() == id) {
                if let Some(current) = created.current(view) {
                    *created = current;
                }
            }
        }
    }

    /// Puts a kind's list in the view.
    pub(super) fn apply(&mut self, listed: Listed) {
        listed.replace(&mut self.snapshot);
    }

    /// What the bulk lists lack, for the resources the view will hold once `listed` is applied
    /// (the kinds listed now as listed, the others as the view has them: a refresh whose reads
    /// failed left some without) and the cache has no details of.
    pub(super) fn missing_details(&self, listed: &[Listed]) -> (Vec<String>, Vec<String>) {
        let mut vpcs: Vec<&str> = self.snapshot.vpcs.iter().map(|v| v.id.as_str()).collect();
        let mut keys: Vec<&str> = self.snapshot.kms_keys.iter().map(|k| k.key_id.as_str()).collect();
        for list in listed {
            match list {
                Listed::Vpcs(l) => vpcs = l.iter().map(|v| v.id.as_str()).collect(),
                Listed::KmsKeys(l) => keys = l.iter().map(|k| k.key_id.as_str()).collect(),
                _ => {}
            }
        }
        let vpcs = vpcs.into_iter().filter(|id| !self.vpc_dns.contains_key(*id)).map(str::to_string).collect();
        let keys = keys.into_iter().filter(|id| !self.key_states.contains_key(*id)).map(str::to_string).collect();
        (vpcs, keys)
    }

    /// Keeps the details asked (what a mutation recorded meanwhile wins) and puts every known one
    /// in the view.
    pub(super) fn fill_details(&mut self, asked: Details) {
        for (vpc_id, (support, hostnames)) in asked.vpc_dns {
            self.vpc_dns.entry(vpc_id).or_insert((Some(support), Some(hostnames)));
        }
        for (key_id, state) in asked.key_states {
            self.key_states.entry(key_id).or_insert(state);
        }
        let (dns, states) = (&self.vpc_dns, &self.key_states);
        let dns_of = |v: &super::types::Vpc| dns.get(&v.id).copied();
        change(
            &mut self.snapshot.vpcs,
            |v| dns_of(v).is_some_and(|known| known != (v.dns_support, v.dns_hostnames)),
            |v| (v.dns_support, v.dns_hostnames) = dns_of(v).unwrap_or((v.dns_support, v.dns_hostnames)),
        );
        let state_of = |k: &super::types::KmsKey| states.get(&k.key_id).cloned().flatten();
        change(&mut self.snapshot.kms_keys, |k| k.state != state_of(k), |k| k.state = state_of(k));
    }

    pub(super) fn mark_changed(&mut self, kind: Kind) {
        if let Some((_, dirty)) = self.listed.get_mut(&kind) {
            *dirty = true;
        }
    }

    /// Adds the operator's recent creations to the view. Each is judged only against a list of its
    /// kind that began after it was made and has just been applied (`just_listed`): shown there, the
    /// list is the better record and the entry goes; not shown by a list begun more than the grace
    /// period after it, it is gone; otherwise (a list begun before it, or one that lags) it stays.
    /// So a list that began before a creation and ends after it never hides it, however long the
    /// lists take or are spaced.
    pub(super) fn merge_pending(&mut self, just_listed: &[Kind]) {
        let pending = std::mem::take(&mut self.pending);
        // The IDs in the view, per kind, built once: a refresh may judge thousands of creations.
        let mut in_view: HashMap<Kind, HashSet<String>> = HashMap::new();
        for (at, created) in pending {
            let kind = created.kind();
            let began = just_listed
                .contains(&kind)
                .then(|| self.list_began.get(&kind).copied())
                .flatten()
                .filter(|began| *began > at);
            let ids = in_view.entry(kind).or_insert_with(|| self.snapshot.ids(kind).into_iter().collect());
            let shown = !ids.insert(created.id().to_string());
            if !shown {
                self.snapshot.apply(&Recorded::Created(created.clone()));
            }
            match began {
                Some(_) if shown => {}
                Some(began) if began.duration_since(at) > CREATE_GRACE => {
                    ids.remove(created.id());
                    self.snapshot.forget(kind, created.id());
                }
                _ => self.pending.push((at, created)),
            }
        }
    }
}

/// A copy of `error` if it is a failure that passes by itself (throttling, a timeout, a 5xx), which
/// the reconciles waiting for the same refresh may share; other errors each reconcile meets itself.
pub(super) fn passing(error: &Error) -> Option<Error> {
    match error {
        Error::AwsThrottled { action } => Some(Error::AwsThrottled { action: action.clone() }),
        Error::AwsUnavailable { action, detail } => {
            Some(Error::AwsUnavailable { action: action.clone(), detail: detail.clone() })
        }
        _ => None,
    }
}
