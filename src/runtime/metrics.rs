//! Prometheus metrics, all prefixed `tinystacks_`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
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

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    aws_requests: Family<AwsRequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tinystacks");
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
        Self { registry: Arc::new(registry), reconciles, errors, duration, aws_requests }
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &str, elapsed: Duration) {
        let labels = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    pub fn failed(&self, kind: &str, reason: &str) {
        self.errors.get_or_create(&ErrorLabels { kind: kind.into(), reason: reason.into() }).inc();
    }

    /// Counts one attempt of an AWS API call (each SDK retry is one more request against AWS).
    pub fn aws_request(&self, service: &str, operation: &str, outcome: &str) {
        let labels = AwsRequestLabels { service: service.into(), operation: operation.into(), outcome: outcome.into() };
        self.aws_requests.get_or_create(&labels).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
