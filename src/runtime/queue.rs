//! The depth of each controller's work queue, `tinystacks_reconcile_queue_depth`.
//!
//! kube's `Controller` keeps its queue (a scheduler of object references, each with the time it is
//! due) to itself, so the operator keeps a copy of what enters and leaves it:
//! - enters, due now: every object reference a trigger hands the controller (the kind's own watch
//!   event, or a watched object of another kind that maps to it);
//! - enters, due later: the requeue a reconcile or its error policy asks for (resync, retry
//!   backoff, polling);
//! - leaves: the reconcile of that object starts, or the controller finds the object gone from
//!   its store (kube then drops the request without a reconcile).
//!
//! As in kube's scheduler, an object is in the queue once, at its earliest due time. The depth is
//! the number of objects due by now and not yet started: waiting for a free worker
//! (`--concurrency`), or for their own reconcile under way to end (kube never runs two reconciles
//! of one object at once). Requeues still in the future are not counted until they are due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::metrics::{KINDS, KindLabels};

/// An object of a controller: its kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Queued {
    kind: String,
    namespace: String,
    name: String,
}

impl Queued {
    fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        Self { kind: kind.into(), namespace: namespace.unwrap_or_default().into(), name: name.into() }
    }
}

/// The copy of every controller's queue: each object waiting for a reconcile, with when it is due.
#[derive(Clone, Debug, Default)]
pub struct WorkQueue {
    due: Arc<Mutex<HashMap<Queued, Instant>>>,
}

impl WorkQueue {
    /// A trigger handed the controller this object: due now.
    pub fn triggered(&self, kind: &str, namespace: Option<&str>, name: &str) {
        self.schedule(Queued::new(kind, namespace, name), Instant::now());
    }

    /// A reconcile of this object ended asking to be run again after `after`.
    pub fn requeued(&self, kind: &str, namespace: Option<&str>, name: &str, after: Duration) {
        let at = Instant::now().checked_add(after).unwrap_or_else(far_future);
        self.schedule(Queued::new(kind, namespace, name), at);
    }

    /// The reconcile of this object started, or the controller dropped it (gone from its store).
    pub fn left(&self, kind: &str, namespace: Option<&str>, name: &str) {
        self.lock().remove(&Queued::new(kind, namespace, name));
    }

    /// Forgets every object: the controllers stopped (leadership lost) and their queues with them.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Objects of `kind` due by `now` and not yet started.
    fn depth(&self, kind: &str, now: Instant) -> usize {
        self.lock().iter().filter(|(q, due)| q.kind == kind && **due <= now).count()
    }

    /// Keeps the earliest due time, as kube's scheduler does for an object already queued.
    fn schedule(&self, object: Queued, at: Instant) {
        self.lock().entry(object).and_modify(|due| *due = (*due).min(at)).or_insert(at);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Queued, Instant>> {
        // The map holds plain values; one left by a panicking thread is still consistent.
        self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A requeue too far ahead for `Instant` (kube caps it the same way): never due in practice.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(60 * 60 * 24 * 365 * 30)
}

pub const HELP: &str = "Objects waiting for a reconcile to start, by kind: triggered by a watch event, or \
     due for a requeue (resync, retry backoff), and not yet started because every worker \
     (--concurrency) is busy or the object's own reconcile is still running. Requeues not yet \
     due are not counted.";

impl Collector for WorkQueue {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let mut family = encoder.encode_descriptor("reconcile_queue_depth", HELP, None, MetricType::Gauge)?;
        for kind in KINDS {
            let gauge = ConstGauge::new(self.depth(kind, now) as i64);
            gauge.encode(family.encode_family(&KindLabels { kind: kind.into() })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_depth_counts_objects_due_and_not_started_once_each() {
        let q = WorkQueue::default();
        let now = Instant::now();
        q.triggered("Stack", Some("team-a"), "web");
        q.triggered("Stack", Some("team-a"), "web");
        q.triggered("Stack", Some("team-b"), "web");
        q.triggered("AwsAccountLink", None, "sandbox");
        let later = now + Duration::from_millis(1);
        assert_eq!((q.depth("Stack", later), q.depth("AwsAccountLink", later), q.depth("Database", later)), (2, 1, 0));
        q.left("Stack", Some("team-a"), "web");
        assert_eq!(q.depth("Stack", Instant::now()), 1, "a started reconcile leaves the queue");
        q.left("Stack", Some("team-a"), "web");
        assert_eq!(q.depth("Stack", Instant::now()), 1, "leaving twice is harmless");
    }

    #[test]
    fn a_requeue_counts_once_due_and_a_trigger_meanwhile_makes_it_due_now() {
        let q = WorkQueue::default();
        q.requeued("Database", Some("team-a"), "orders", Duration::from_secs(300));
        let now = Instant::now();
        assert_eq!(q.depth("Database", now), 0, "a resync five minutes ahead is not waiting");
        assert_eq!(q.depth("Database", now + Duration::from_secs(301)), 1, "once due, it waits");
        // A watch event before the requeue is due: kube keeps the earlier time.
        q.triggered("Database", Some("team-a"), "orders");
        assert_eq!(q.depth("Database", Instant::now()), 1);
        // A requeue asked for by a reconcile that ran while the trigger waited keeps it due now.
        q.requeued("Database", Some("team-a"), "orders", Duration::from_secs(300));
        assert_eq!(q.depth("Database", Instant::now()), 1);
        q.left("Database", Some("team-a"), "orders");
        assert_eq!(q.depth("Database", now + Duration::from_secs(600)), 0);
        q.requeued("Database", Some("team-a"), "orders", Duration::MAX);
        assert_eq!(q.depth("Database", now + Duration::from_secs(600)), 0, "no overflow");
        q.triggered("Bastion", Some("team-a"), "ssh");
        q.clear();
        assert_eq!(q.depth("Bastion", Instant::now()), 0);
    }

    #[test]
    fn the_gauge_has_every_kind_and_says_what_it_counts() {
        let metrics = super::super::metrics::Metrics::default();
        metrics.queue.triggered("Stack", Some("team-a"), "web");
        let text = metrics.encode();
        assert!(text.contains("# TYPE tinystacks_reconcile_queue_depth gauge"), "{text}");
        assert!(text.contains("tinystacks_reconcile_queue_depth{kind=\"Stack\"} 1"), "{text}");
        for kind in ["AwsAccountLink", "Database", "Bastion"] {
            assert!(text.contains(&format!("tinystacks_reconcile_queue_depth{{kind=\"{kind}\"}} 0")), "{text}");
        }
        assert!(text.contains("not yet started"), "{text}");
    }
}
