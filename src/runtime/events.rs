//! Kubernetes Events (events.k8s.io/v1) about the operator's objects, written with series: the same
//! Event (same object, type, reason and note) again within `SERIES_WINDOW` counts up the first
//! one's `series` instead of making a new object, so that a retry loop does not flood etcd.
//!
//! kube's `Recorder` does the same, but keeps each Event whole in its cache, keyed by the object's
//! reference including its resourceVersion, and forgets old ones only when it writes the next.
//! At steady state nothing is written, so everything a convergence published stays: with 1,000
//! Stacks and Databases, tens of thousands of Events and tens of MiB. Here a series is remembered by
//! what it needs (a hash of what makes it the same Event, when its first Event was made, and its
//! count: 48 bytes), and forgotten once its window passed, at the next write or the next `sweep`,
//! which every reconcile calls.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use serde_json::json;

/// How long a repeated Event counts up its series (as kube's recorder and client-go do).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How often `sweep` looks for series whose window passed.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// What makes two Events the same (the object's UID, the type, the reason and the note), hashed
/// to 64 bits: a convergence of 1,000 Stacks publishes tens of thousands of Events, most with notes
/// of a hundred bytes or more, and each is remembered for `SERIES_WINDOW`. Two different Events
/// whose hashes collide (about one chance in ten billion among 30,000) would share a series count,
/// nothing worse.
type Key = u64;

/// A series: when its first Event was made (which names it, with the object's name, in the
/// object's namespace), how many times it happened, and when last.
#[derive(Debug)]
struct Series {
    created: i128,
    count: i32,
    last: Instant,
}

#[derive(Default)]
struct Ledger {
    hasher: RandomState,
    by_key: HashMap<Key, Series>,
    swept: Option<Instant>,
}

pub struct Events {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<Ledger>,
}

/// What to write for one Event: a new object, or a patch counting up a series.
#[derive(Debug, PartialEq)]
enum Write {
    Create,
    Count { created: i128, count: i32 },
}

impl Ledger {
    fn key(&self, uid: &str, warning: bool, reason: &str, note: &str) -> Key {
        self.hasher.hash_one((uid, warning, reason, note))
    }

    /// Forgets the series whose window passed, at most every `SWEEP_EVERY`.
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
            self.by_key.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
            self.swept = Some(now);
        }
    }

    /// Remembers the Event just created as the start of its series.
    fn started(&mut self, key: Key, created: i128, now: Instant) {
        self.sweep(now);
        self.by_key.insert(key, Series { created, count: 1, last: now });
    }

    /// Whether an Event with `key` starts a series or counts one up (and counts it).
    fn next(&mut self, key: Key, now: Instant) -> Write {
        match self.by_key.get_mut(&key) {
            Some(s) if now.duration_since(s.last) < SERIES_WINDOW => {
                s.count = s.count.saturating_add(1);
                s.last = now;
                Write::Count { created: s.created, count: s.count }
            }
            _ => Write::Create,
        }
    }
}

impl Events {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.unwrap_or_else(|| controller.into()),
            series: Mutex::default(),
        }
    }

    /// Forgets the series whose window passed, at most every `SWEEP_EVERY`.
    pub fn sweep(&self) {
        self.series.lock().unwrap_or_else(|p| p.into_inner()).sweep(Instant::now());
    }

    /// Writes one Event about `regarding` (in its namespace, or `default` for a cluster-scoped
    /// object), or counts up the series of the same Event.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> kube::Result<()> {
        let warning = matches!(type_, EventType::Warning);
        let uid = regarding.uid.as_deref().unwrap_or_default();
        let now = Instant::now();
        let (key, write) = {
            let mut ledger = self.series.lock().unwrap_or_else(|p| p.into_inner());
            let key = ledger.key(uid, warning, reason, note);
            (key, ledger.next(key, now))
        };
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        let events = Api::<K8sEvent>::namespaced(self.client.clone(), &namespace);
        match write {
            Write::Count { created, count } => {
                let name = format!("{object}.{created:x}");
                let series = EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) };
                let patch = json!({ "series": series });
                events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            Write::Create => {
                let stamp = Timestamp::now();
                let created = stamp.as_nanosecond();
                let event = K8sEvent {
                    metadata: ObjectMeta {
                        name: Some(format!("{object}.{created:x}")),
                        namespace: Some(namespace),
                        ..Default::default()
                    },
                    action: Some(reason.into()),
                    reason: Some(reason.into()),
                    note: Some(note.into()),
                    event_time: Some(MicroTime(stamp)),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    type_: Some(if warning { "Warning" } else { "Normal" }.into()),
                    ..Default::default()
                };
                events.create(&PostParams::default(), &event).await?;
                self.series.lock().unwrap_or_else(|p| p.into_inner()).started(key, created, now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_event_counts_up_its_series_within_the_window_and_is_forgotten_after() {
        let mut series = Ledger::default();
        let key = |series: &Ledger, note: &str| series.key("u1", true, "AwsThrottled", note);
        let (a, b, c) = (key(&series, "a"), key(&series, "b"), key(&series, "c"));
        assert_ne!(a, b);
        assert_ne!(a, series.key("u2", true, "AwsThrottled", "a"), "another object's is another Event");
        assert_ne!(a, series.key("u1", false, "AwsThrottled", "a"), "so is another type's");
        let start = Instant::now();
        assert_eq!(series.next(a, start), Write::Create);
        series.started(a, 1, start);

        let later = start + Duration::from_secs(60);
        assert_eq!(series.next(a, later), Write::Count { created: 1, count: 2 });
        assert_eq!(series.next(b, later), Write::Create, "another note is another Event");

        // The window runs from the last time it happened.
        let after = later + SERIES_WINDOW - Duration::from_secs(1);
        assert!(matches!(series.next(a, after), Write::Count { count: 3, .. }));
        let gone = after + SERIES_WINDOW;
        assert_eq!(series.next(a, gone), Write::Create);

        // A sweep forgets what is past its window, so nothing stays at steady state; sweeps come at
        // most every `SWEEP_EVERY`.
        series.sweep(gone);
        assert!(series.by_key.is_empty());
        series.started(c, 2, start);
        series.sweep(gone + Duration::from_secs(1));
        assert_eq!(series.by_key.len(), 1, "no second sweep within SWEEP_EVERY");
        series.sweep(gone + SWEEP_EVERY);
        assert!(series.by_key.is_empty());
    }
}
