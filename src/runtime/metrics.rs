//! Prometheus metrics, all prefixed `tinystacks_`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ManagedLabels {
    pub kind: String,
    /// `true` or `false`: the object's `Ready` condition.
    pub ready: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

/// One attempt of an AWS API call: the service by its IAM prefix (`sts`, `ec2`, ...), the
/// operation, and how it ended (`success`, `throttled`, `denied`, `client_error`, `server_error`,
/// `timeout`, `transport_error`, or `not_sent` when it failed before reaching AWS).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsRequestLabels {
    pub service: String,
    pub operation: String,
    pub outcome: String,
}

/// One request of the operator's Kubernetes client: the HTTP method (`WATCH` for a watch) and the
/// status code, or `error` when no response came (connection refused, timeout).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

/// The kinds, so that a scrape before the first reconcile already shows each kind's series at 0.
pub(super) const KINDS: [&str; 4] = ["AwsAccountLink", "Stack", "Database", "Bastion"];

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    leader: Gauge,
    in_flight: Family<KindLabels, Gauge>,
    kube_requests: Family<KubeRequestLabels, Counter>,
    kube_duration: Family<MethodLabels, Histogram>,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    aws_requests: Family<AwsRequestLabels, Counter>,
    managed: Family<ManagedLabels, Gauge>,
    time_to_ready: Family<KindLabels, Histogram>,
    claimed_elsewhere: Family<KindLabels, Counter>,
    /// A copy of every controller's work queue (`tinystacks_reconcile_queue_depth`).
    pub queue: super::queue::WorkQueue,
    /// Each managed object by UID: its kind, whether it is Ready, and whether it ever was.
    objects: Arc<Mutex<HashMap<String, Tracked>>>,
}

#[derive(Clone, Debug, PartialEq)]
struct Tracked {
    kind: String,
    ready: bool,
    ever_ready: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        // The process metrics under their usual names, which dashboards and alerts expect.
        root.register_collector(Box::new(super::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("tinystacks");
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        registry.register("build_info", "The operator's version; always 1", build);
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controllers (holds the leader Lease, or runs without leader election)",
            leader.clone(),
        );
        let in_flight = Family::<KindLabels, Gauge>::default();
        registry.register("reconciles_in_flight", "Reconciles running now, by kind", in_flight.clone());
        let kube_requests = Family::<KubeRequestLabels, Counter>::default();
        registry.register(
            "kubernetes_requests",
            "Requests of the operator's Kubernetes client, by method (WATCH for watches) and status code",
            kube_requests.clone(),
        );
        let kube_duration = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "kubernetes_request_duration_seconds",
            "Time until the Kubernetes API server's response headers, by method",
            kube_duration.clone(),
        );
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that ended in an error, by kind and reason", errors.clone());
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile, by kind", duration.clone());
        let aws_requests = Family::<AwsRequestLabels, Counter>::default();
        registry.register(
            "aws_requests",
            "AWS API calls the operator made, by service, operation and outcome",
            aws_requests.clone(),
        );
        let managed = Family::<ManagedLabels, Gauge>::default();
        registry.register("managed_objects", "Objects under management, by kind and readiness", managed.clone());
        let time_to_ready =
            Family::<KindLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 14)));
        registry.register(
            "time_to_ready_seconds",
            "Time from an object's creation to its first Ready, by kind",
            time_to_ready.clone(),
        );
        let claimed_elsewhere = Family::<KindLabels, Counter>::default();
        registry.register(
            "claimed_elsewhere",
            "Reconciles skipped because another install (tinystacks.io/claimed-by) claims the object, by kind",
            claimed_elsewhere.clone(),
        );
        let queue = super::queue::WorkQueue::default();
        registry.register_collector(Box::new(queue.clone()));
        for kind in KINDS {
            let labels = KindLabels { kind: kind.into() };
            let _ = reconciles.get_or_create(&labels);
            let _ = duration.get_or_create(&labels);
            let _ = in_flight.get_or_create(&labels);
            let _ = time_to_ready.get_or_create(&labels);
            for ready in [true, false] {
                let _ = managed.get_or_create(&managed_labels(kind, ready));
            }
        }
        Self {
            registry: Arc::new(root),
            leader,
            in_flight,
            kube_requests,
            kube_duration,
            reconciles,
            errors,
            duration,
            aws_requests,
            managed,
            time_to_ready,
            claimed_elsewhere,
            queue,
            objects: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &str, elapsed: Duration) {
        let labels = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Counts a reconcile of `kind` as running until the returned guard is dropped.
    pub fn reconcile_started(&self, kind: &str) -> InFlight {
        let gauge = self.in_flight.get_or_create(&KindLabels { kind: kind.into() }).clone();
        gauge.inc();
        InFlight(gauge)
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts one request of the Kubernetes client; `code` is `None` when no response came.
    pub fn kube_request(&self, method: &str, code: Option<u16>, elapsed: Duration) {
        let code = code.map_or_else(|| "error".to_string(), |c| c.to_string());
        self.kube_requests.get_or_create(&KubeRequestLabels { method: method.into(), code }).inc();
        self.kube_duration.get_or_create(&MethodLabels { method: method.into() }).observe(elapsed.as_secs_f64());
    }

    pub fn failed(&self, kind: &str, reason: &str) {
        self.errors.get_or_create(&ErrorLabels { kind: kind.into(), reason: reason.into() }).inc();
    }

    /// Counts a reconcile left undone because another install claims the object.
    pub fn claimed_elsewhere(&self, kind: &str) {
        self.claimed_elsewhere.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    /// Counts one attempt of an AWS API call (each SDK retry is one more request against AWS).
    pub fn aws_request(&self, service: &str, operation: &str, outcome: &str) {
        let labels = AwsRequestLabels { service: service.into(), operation: operation.into(), outcome: outcome.into() };
        self.aws_requests.get_or_create(&labels).inc();
    }

    /// Records an object's readiness. `since_creation`: its age, observed as the time to Ready
    /// the first time this process sees it Ready after having seen it not Ready.
    pub fn object(&self, kind: &str, uid: &str, ready: bool, since_creation: Option<Duration>) {
        let Ok(mut objects) = self.objects.lock() else { return };
        let before = objects.get(uid).cloned();
        let ever_ready = before.as_ref().map_or(ready, |b| b.ever_ready || ready);
        if let (Some(b), true, Some(age)) = (&before, ready, since_creation)
            && !b.ever_ready
        {
            self.time_to_ready.get_or_create(&KindLabels { kind: kind.into() }).observe(age.as_secs_f64());
        }
        let now = Tracked { kind: kind.into(), ready, ever_ready };
        if before.as_ref().map(|b| b.ready) != Some(ready) {
            if let Some(b) = &before {
                self.managed.get_or_create(&managed_labels(&b.kind, b.ready)).dec();
            }
            self.managed.get_or_create(&managed_labels(kind, ready)).inc();
        }
        objects.insert(uid.into(), now);
    }

    /// Forgets an object that left management (deleted, its finalizer removed).
    pub fn forget_object(&self, uid: &str) {
        let Ok(mut objects) = self.objects.lock() else { return };
        if let Some(b) = objects.remove(uid) {
            self.managed.get_or_create(&managed_labels(&b.kind, b.ready)).dec();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A running reconcile, counted in `tinystacks_reconciles_in_flight` until dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn managed_labels(kind: &str, ready: bool) -> ManagedLabels {
    ManagedLabels { kind: kind.into(), ready: ready.to_string() }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn gauge(metrics: &Metrics, kind: &str, ready: bool) -> i64 {
        metrics.managed.get_or_create(&managed_labels(kind, ready)).get()
    }

    #[test]
    fn managed_objects_follow_readiness_and_time_to_ready_counts_the_first_ready_only() {
        let m = Metrics::default();
        m.object("Stack", "a", false, None);
        m.object("Stack", "b", false, None);
        m.object("Stack", "a", true, Some(Duration::from_secs(30)));
        assert_eq!((gauge(&m, "Stack", true), gauge(&m, "Stack", false)), (1, 1));
        m.object("Stack", "a", false, None);
        m.object("Stack", "a", true, Some(Duration::from_secs(90)));
        let text = m.encode();
        assert!(text.contains("tinystacks_time_to_ready_seconds_count{kind=\"Stack\"} 1"), "{text}");
        m.forget_object("a");
        m.forget_object("b");
        assert_eq!((gauge(&m, "Stack", true), gauge(&m, "Stack", false)), (0, 0));
        // Ready when first seen (a restart): no time to Ready, it is not known.
        m.object("Database", "c", true, Some(Duration::from_secs(5)));
        assert!(m.encode().contains("tinystacks_time_to_ready_seconds_count{kind=\"Database\"} 0"));
    }

    /// The families served once each has a sample, as the README's table names them.
    fn served_families(m: &Metrics) -> BTreeSet<String> {
        m.reconciled("Stack", Duration::from_millis(1));
        m.failed("Stack", "InvalidSpec");
        m.aws_request("ec2", "DescribeVpcs", "success");
        m.claimed_elsewhere("Stack");
        m.kube_request("GET", Some(200), Duration::from_millis(3));
        m.object("Stack", "a", false, None);
        m.object("Stack", "a", true, Some(Duration::from_secs(1)));
        m.encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let (name, kind) = (parts.next()?, parts.next()?);
                Some(if kind == "counter" { format!("{name}_total") } else { name.to_string() })
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = include_str!("../../README.md");
        let section = readme.split("\n## Metrics").nth(1).unwrap_or_default();
        let section = section.split("\n## ").next().unwrap_or_default();
        let documented: BTreeSet<String> = section
            .lines()
            .filter(|l| l.starts_with("| `tinystacks_") || l.starts_with("| `process_"))
            .filter_map(|l| l.split('`').nth(1).map(String::from))
            .collect();
        assert_eq!(documented, served_families(&Metrics::default()));
    }

    #[test]
    fn a_scrape_before_any_reconcile_has_every_kind_at_zero_and_the_process() {
        let m = Metrics::default();
        let text = m.encode();
        for kind in KINDS {
            for series in [
                format!("tinystacks_reconciles_total{{kind=\"{kind}\"}} 0"),
                format!("tinystacks_reconciles_in_flight{{kind=\"{kind}\"}} 0"),
                format!("tinystacks_managed_objects{{kind=\"{kind}\",ready=\"true\"}} 0"),
            ] {
                assert!(text.contains(&series), "{series} in {text}");
            }
        }
        assert!(text.contains(&format!("tinystacks_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains("tinystacks_leader 0"), "{text}");
        for name in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name} in {text}");
        }
    }

    #[test]
    fn in_flight_reconciles_and_the_leader_are_gauges_that_follow() {
        let m = Metrics::default();
        let running = m.reconcile_started("Stack");
        assert!(m.encode().contains("tinystacks_reconciles_in_flight{kind=\"Stack\"} 1"));
        drop(running);
        assert!(m.encode().contains("tinystacks_reconciles_in_flight{kind=\"Stack\"} 0"));
        m.set_leader(true);
        assert!(m.encode().contains("tinystacks_leader 1"));
        m.kube_request("WATCH", None, Duration::from_millis(1));
        assert!(m.encode().contains("tinystacks_kubernetes_requests_total{method=\"WATCH\",code=\"error\"} 1"));
    }
}
