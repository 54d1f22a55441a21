//! What the operator's resources in one (account, region) look like, observed in bulk: one
//! tag-filtered, paginated Describe per resource type, shared by every reconcile of that account
//! and refreshed when older than the resync period. Mutations update it from their responses, so
//! AWS calls in steady state grow with the number of resource types, not of objects.
//!
//! `types.rs` holds the resources as the plans read them, `convert.rs` the SDK conversions,
//! `view.rs` the view (`Snapshot`), the table of resource types and what a recorded change does to
//! the view, `state.rs` the cache, `list.rs` the listing.

mod convert;
mod list;
mod state;
#[cfg(test)]
mod tests;
mod types;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use convert::*;
use state::State;
pub use types::*;
pub use view::{Created, Kind, Recorded, Resource, Snapshot, Table};

use super::call::Calls;
use crate::error::Result;

/// How long a resource the operator created is believed to exist although a Describe does not show
/// it yet: EC2 and the other APIs are eventually consistent, and a create repeated because a list
/// lagged would be a duplicate.
const CREATE_GRACE: Duration = Duration::from_secs(120);

/// A scope's lists are refreshed no sooner than this many times the last refresh took, after it
/// ended: when listing is slow (many resources, a slow or throttling endpoint), the inventory
/// spends at most about a quarter of its time listing, and reconciles work from the view
/// mutations keep true in between.
const REFRESH_SPACING: u32 = 3;

/// After a refresh failed for a reason that passes (throttling, a timeout, a 5xx), no list is tried
/// again for the scope sooner than this, or than `REFRESH_SPACING` times the failed attempt: the
/// reconciles that wanted it share its outcome instead of each trying again, one after another,
/// against an endpoint that is already struggling.
const FAILED_REFRESH_PAUSE: Duration = Duration::from_secs(1);

pub use super::tags::Tags;

/// The (account, region) an inventory describes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub account: String,
    pub region: String,
}

/// The clients a refresh uses, all acting as one link's role in the scope's region.
pub struct Clients<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub apigateway: &'a aws_sdk_apigatewayv2::Client,
    pub kms: &'a aws_sdk_kms::Client,
    pub tagging: &'a aws_sdk_resourcegroupstagging::Client,
    pub rds: &'a aws_sdk_rds::Client,
    pub secrets: &'a aws_sdk_secretsmanager::Client,
    /// Every list and describe, paced by the limiter for the scope's account.
    pub calls: Calls<'a>,
}

/// The inventories of every (account, region) the operator works in.
#[derive(Default)]
pub struct Inventory {
    /// Each scope's view, and the lock a refresh of it holds.
    scopes: Mutex<HashMap<Scope, ScopeState>>,
}

type ScopeState = (Arc<tokio::sync::Mutex<State>>, Arc<tokio::sync::Mutex<()>>);

impl Inventory {
    fn state(&self, scope: &Scope) -> ScopeState {
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.entry(scope.clone()).or_default().clone()
    }

    /// The scope's resources, listing again each kind older than `max_age` (or than
    /// `REFRESH_SPACING` times the last refresh, when listing is that slow) or changed since. One
    /// refresh at a time per scope. The lists run without holding the view: a reconcile that finds
    /// a refresh under way reads the view as it is (kept true by the mutations' records) instead of
    /// waiting, unless a kind it needs was never listed or is known to be out of date.
    pub async fn snapshot(&self, scope: &Scope, clients: &Clients<'_>, max_age: Duration) -> Result<Snapshot> {
        let (state, refresh) = self.state(scope);
        {
            let st = state.lock().await;
            let stale = st.stale(max_age, Instant::now());
            if stale.is_empty() && !st.snapshot.zones.is_empty() {
                return Ok(st.snapshot.clone());
            }
            if let Some(shared) = st.after_failure(&stale, Instant::now()) {
                return shared;
            }
            let must_wait = st.must_wait(&stale) || st.snapshot.zones.is_empty();
            if !must_wait && refresh.try_lock().is_err() {
                return Ok(st.snapshot.clone());
            }
        }
        let _refreshing = refresh.lock().await;
        self.refresh(&state, clients, max_age).await
    }

    /// Lists the stale kinds, holding the scope's refresh lock but not its state's lock, which is
    /// taken only to read what to list and to apply what came back: no AWS call is made under it.
    async fn refresh(
        &self,
        state: &tokio::sync::Mutex<State>,
        clients: &Clients<'_>,
        max_age: Duration,
    ) -> Result<Snapshot> {
        let (stale, started, zones_known) = {
            let mut st = state.lock().await;
            let started = Instant::now();
            let stale = st.stale(max_age, started);
            let zones_known = !st.snapshot.zones.is_empty();
            if stale.is_empty() && zones_known {
                return Ok(st.snapshot.clone());
            }
            // The refresh this call waited for may just have failed.
            if let Some(shared) = st.after_failure(&stale, started) {
                return shared;
            }
            st.journal = Some(Vec::new());
            (stale, started, zones_known)
        };
        if !zones_known {
            let zones = list::list_zones(clients).await;
            let mut st = state.lock().await;
            match zones {
                Ok(zones) => st.snapshot.zones = Arc::new(zones),
                Err(e) => {
                    st.journal = None;
                    return Err(e);
                }
            }
        }
        let lists = futures::future::try_join_all(stale.iter().map(|k| view::list(*k, clients))).await;
        let lists = match lists {
            Ok(lists) => lists,
            Err(e) => {
                // The records made meanwhile are in the view already; there are no lists to apply
                // them over.
                let mut st = state.lock().await;
                st.journal = None;
                let ended = Instant::now();
                st.failed = state::passing(&e).map(|copy| (ended, ended.duration_since(started), copy));
                return Err(e);
            }
        };
        // The lists are as of now; the details below do not make them older.
        let ended = Instant::now();
        let (vpcs, keys) = state.lock().await.missing_details(&lists);
        let details = list::details(clients, &vpcs, &keys).await;
        let mut st = state.lock().await;
        let journal = st.journal.take().unwrap_or_default();
        st.failed = None;
        for (kind, listed) in stale.iter().zip(lists) {
            st.apply(listed);
            st.listed.insert(*kind, (ended, false));
            st.list_began.insert(*kind, started);
        }
        st.last_refresh = ended.duration_since(started);
        // What the operator changed while the lists were under way, which they may not show.
        for recorded in journal {
            st.replay(recorded);
        }
        st.merge_pending(&stale);
        let details = details?;
        st.fill_details(details);
        super::tags::forget_unused();
        Ok(st.snapshot.clone())
    }

    /// Records what a mutation did.
    pub async fn record(&self, scope: &Scope, recorded: Recorded) {
        let (state, _) = self.state(scope);
        let mut state = state.lock().await;
        if let Some(journal) = state.journal.as_mut() {
            journal.push(recorded.clone());
        }
        state.record(recorded);
    }
}
