//! Kubernetes Events (events.k8s.io/v1) about the operator's objects, written with series: the same
//! Event (same object, type, reason and note) again within `SERIES_WINDOW` counts up the first
//! one's `series` instead of making a new object, so that a retry loop does not flood etcd.
//!
//! kube's `Recorder` does the same, but keeps each Event whole in its cache, keyed by the object's
//! reference including its resourceVersion, and forgets old ones only when it writes the next.
//! At steady state nothing is written, so everything a convergence published stays: with 1,000
//! Stacks and Databases, tens of thousands of Events and tens of MiB. Here a series is remembered by
//! what it needs (the Event's name and count), and forgotten once its window passed, at the next
//! write or the next `sweep`, which every reconcile calls.

use std::collections::HashMap;
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

/// What makes two Events the same: the object, the type, the reason and the note.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    warning: bool,
    reason: String,
    note: String,
}

/// A series: the first Event's name and namespace, how many times it happened, and when last.
#[derive(Debug)]
struct Series {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

#[derive(Default)]
struct Ledger {
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
    Count { namespace: String, name: String, count: i32 },
}

impl Ledger {
    /// Forgets the series whose window passed, at most every `SWEEP_EVERY`.
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
            self.by_key.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
            self.swept = Some(now);
        }
    }

    /// Remembers the Event just created as the start of its series.
    fn started(&mut self, key: Key, namespace: String, name: String, now: Instant) {
        self.sweep(now);
        self.by_key.insert(key, Series { namespace, name, count: 1, last: now });
    }

    /// Whether an Event with `key` starts a series or counts one up (and counts it).
    fn next(&mut self, key: &Key, now: Instant) -> Write {
        match self.by_key.get_mut(key) {
            Some(s) if now.duration_since(s.last) < SERIES_WINDOW => {
                s.count = s.count.saturating_add(1);
                s.last = now;
                Write::Count { namespace: s.namespace.clone(), name: s.name.clone(), count: s.count }
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
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            warning: matches!(type_, EventType::Warning),
            reason: reason.into(),
            note: note.into(),
        };
        let now = Instant::now();
        let write = self.series.lock().unwrap_or_else(|p| p.into_inner()).next(&key, now);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        match write {
            Write::Count { namespace, name, count } => {
                let events = Api::<K8sEvent>::namespaced(self.client.clone(), &namespace);
                let series = EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) };
                let patch = json!({ "series": series });
                events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            Write::Create => {
                let stamp = Timestamp::now();
                let name =
                    format!("{}.{:x}", regarding.name.as_deref().unwrap_or(&self.controller), stamp.as_nanosecond());
                let event = K8sEvent {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    action: Some(reason.into()),
                    reason: Some(reason.into()),
                    note: Some(note.into()),
                    event_time: Some(MicroTime(stamp)),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    type_: Some(if key.warning { "Warning" } else { "Normal" }.into()),
                    ..Default::default()
                };
                let events = Api::<K8sEvent>::namespaced(self.client.clone(), &namespace);
                events.create(&PostParams::default(), &event).await?;
                self.series.lock().unwrap_or_else(|p| p.into_inner()).started(key, namespace, name, now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(note: &str) -> Key {
        Key { uid: "u1".into(), warning: true, reason: "AwsThrottled".into(), note: note.into() }
    }

    #[test]
    fn the_same_event_counts_up_its_series_within_the_window_and_is_forgotten_after() {
        let mut series = Ledger::default();
        let start = Instant::now();
        assert_eq!(series.next(&key("a"), start), Write::Create);
        series.started(key("a"), "ns".into(), "s.1".into(), start);

        let later = start + Duration::from_secs(60);
        let counted = Write::Count { namespace: "ns".into(), name: "s.1".into(), count: 2 };
        assert_eq!(series.next(&key("a"), later), counted);
        assert_eq!(series.next(&key("b"), later), Write::Create, "another note is another Event");

        // The window runs from the last time it happened.
        let after = later + SERIES_WINDOW - Duration::from_secs(1);
        assert!(matches!(series.next(&key("a"), after), Write::Count { count: 3, .. }));
        let gone = after + SERIES_WINDOW;
        assert_eq!(series.next(&key("a"), gone), Write::Create);

        // A sweep forgets what is past its window, so nothing stays at steady state; sweeps come at
        // most every `SWEEP_EVERY`.
        series.sweep(gone);
        assert!(series.by_key.is_empty());
        series.by_key.insert(key("c"), Series { namespace: "ns".into(), name: "s.2".into(), count: 1, last: start });
        series.sweep(gone + Duration::from_secs(1));
        assert_eq!(series.by_key.len(), 1, "no second sweep within SWEEP_EVERY");
        series.sweep(gone + SWEEP_EVERY);
        assert!(series.by_key.is_empty());
    }
}
