//! What every reconcile shares, built once at start-up: the Kubernetes client, the event
//! recorder, the metrics, the settings and the AWS client factory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::EventType;
use tracing::warn;

use super::events::Events;
use super::metrics::Metrics;
use crate::aws::Aws;
use crate::aws::inventory::Inventory;
use crate::aws::limiter::Limiter;

/// The operator's name as a field manager, event reporter and `managed-by` value.
pub const FIELD_MANAGER: &str = "tinystacks-operator";

/// Settings that shape every reconcile.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often an object is reconciled when nothing happens: drift detection and
    /// re-verification run at this period.
    pub resync_period: Duration,
    /// Upper bound of the per-object retry backoff.
    pub max_backoff: Duration,
    /// How often an object waiting for AWS (a CloudFormation stack, a NAT gateway, a VPC Link, an
    /// RDS instance, an EC2 instance in between states) looks again: AWS's waits take from
    /// seconds to minutes, and this bounds how late their end is noticed. Only objects that wait
    /// poll; the calls at steady state do not depend on it.
    pub aws_poll: Duration,
    /// The operator's own namespace (template ConfigMaps, the leader Lease).
    pub namespace: String,
    /// Where an AwsAccountLink's bootstrap Secret may be.
    pub bootstrap_secret_namespaces: SecretNamespaces,
    /// This install's claim, `<namespace>/<lease name>`: the value of `tinystacks.io/claimed-by`
    /// on the objects it acts on.
    pub claim: String,
}

/// The namespaces the operator reads AwsAccountLinks' bootstrap Secrets from. A link is
/// cluster-scoped and may name any namespace's Secret; whoever may create a link must not thereby
/// get the operator to use AWS keys stored in a team's namespace, so by default only the
/// operator's own namespace is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretNamespaces {
    Any,
    Only(Vec<String>),
}

impl SecretNamespaces {
    /// `--bootstrap-secret-namespaces`: `*` for any namespace, else a comma-separated list; empty
    /// means the operator's own namespace.
    pub fn parse(value: &str, operator_namespace: &str) -> Self {
        let names: Vec<String> = value.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
        if names.iter().any(|n| n == "*") {
            return SecretNamespaces::Any;
        }
        if names.is_empty() {
            return SecretNamespaces::Only(vec![operator_namespace.to_string()]);
        }
        SecretNamespaces::Only(names)
    }

    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            SecretNamespaces::Any => true,
            SecretNamespaces::Only(names) => names.iter().any(|n| n == namespace),
        }
    }
}

impl std::fmt::Display for SecretNamespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretNamespaces::Any => f.write_str("every namespace"),
            SecretNamespaces::Only(names) => write!(f, "{}", names.join(", ")),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Every AWS client a reconcile uses comes from here.
    pub aws: Aws,
    /// What the operator's AWS resources look like, per (account, region), shared by all reconciles.
    pub inventory: Inventory,
    /// The rate limiter (and crash-test failpoint) every AWS mutation goes through.
    pub limiter: Limiter,
    recorder: Arc<Events>,
    /// Per object (by UID), the last Event being written: Events are written in the background,
    /// in order per object, off the path of the AWS calls, and waited for before the status.
    events: Mutex<HashMap<String, Shared<BoxFuture<'static, ()>>>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Per object (by UID), the generation whose request AWS refused as invalid: that spec is not
    /// sent again; its next generation is.
    refused: Mutex<HashMap<String, i64>>,
    /// Per object (by UID), what this install's own writes to it left behind.
    written: Mutex<HashMap<String, OwnWrites>>,
}

/// The resourceVersions of one object that this install's own writes replaced, and the newest
/// it wrote. The watch brings a write a moment after it is made, so a pass that starts at once
/// (a requeue without delay) can read the object from before it; such a pass would act on what
/// it already changed: generate a second external ID, rotate a password twice, write back a
/// status it has just moved past.
#[derive(Default)]
struct OwnWrites {
    superseded: Vec<String>,
    newest: Option<String>,
}

impl OwnWrites {
    /// A write that moved the object from `before` (as the pass read it) to `after`; the
    /// version an earlier write of the same pass left is superseded too.
    fn record(&mut self, before: &str, after: &str) {
        if before == after {
            return; // the write changed nothing: no watch event follows
        }
        let replaced = self.newest.replace(after.to_string());
        for version in [Some(before.to_string()), replaced].into_iter().flatten() {
            if version != after && !self.superseded.contains(&version) {
                self.superseded.push(version);
            }
        }
    }

    fn predates(&self, version: &str) -> bool {
        self.superseded.iter().any(|s| s == version)
    }
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Metrics, aws: Aws, instance: Option<String>) -> Self {
        Self {
            recorder: Arc::new(Events::new(client.clone(), FIELD_MANAGER, instance)),
            client,
            settings,
            metrics,
            aws,
            inventory: Inventory::default(),
            limiter: Limiter::from_env(),
            events: Mutex::default(),
            failures: Mutex::default(),
            refused: Mutex::default(),
            written: Mutex::default(),
        }
    }

    /// Publishes an Event about `regarding`, in the background: the reconcile goes on with its next
    /// AWS call while the API server writes it; the Events of one object are written in the order
    /// they were published, and `events_written` waits for them. A failure to publish is logged,
    /// never fatal: events are for people, the conditions are the record.
    pub async fn event(&self, regarding: &ObjectReference, type_: EventType, reason: &str, note: impl Into<String>) {
        let (reason, note) = (reason.to_string(), note.into());
        let (recorder, regarding) = (self.recorder.clone(), regarding.clone());
        let uid = regarding.uid.clone().unwrap_or_default();
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let before = events.remove(&uid);
        let write = async move {
            if let Some(before) = before {
                before.await;
            }
            if let Err(error) = recorder.publish(&regarding, type_, &reason, &note).await {
                warn!(%error, reason, "could not publish event");
            }
        }
        .boxed()
        .shared();
        tokio::spawn(write.clone());
        events.insert(uid, write);
    }

    /// Waits until the Events published about the object with `uid` are written.
    pub async fn events_written(&self, uid: &str) {
        self.recorder.sweep();
        let last = self.events.lock().unwrap_or_else(|p| p.into_inner()).get(uid).cloned();
        if let Some(last) = last {
            last.clone().await;
            let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            if events.get(uid).is_some_and(|l| l.ptr_eq(&last)) {
                events.remove(uid);
            }
        }
    }

    /// Counts one more consecutive failure of the object and returns how many came before it.
    pub(crate) fn record_failure(&self, uid: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(uid.to_string()).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    pub(crate) fn record_success(&self, uid: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    /// Remembers that AWS refused as invalid a request built from this generation of the object.
    pub(crate) fn record_refusal(&self, uid: &str, generation: Option<i64>) {
        if let Some(generation) = generation {
            self.refused.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.to_string(), generation);
        }
    }

    /// Whether AWS refused a request built from this generation of the object: a wake-up of the
    /// watches (its own status write, a referenced object's) would only send it again.
    pub(crate) fn refused(&self, uid: &str, generation: Option<i64>) -> bool {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        generation.is_some() && refused.get(uid).copied() == generation
    }

    /// Records that this install wrote the object read at `before`, which is now at `after`.
    pub(crate) fn wrote(&self, uid: &str, before: Option<&str>, after: Option<&str>) {
        let (Some(before), Some(after)) = (before, after) else { return };
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.entry(uid.to_string()).or_default().record(before, after);
    }

    /// Whether the object, read at `version`, is from before one of this install's own writes:
    /// the write's watch event is still on its way and starts the next pass. Reading a newer
    /// version forgets the older ones (the watch only moves forward).
    pub(crate) fn predates_own_write(&self, uid: &str, version: Option<&str>) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some(own) = written.get(uid) else { return false };
        if version.is_some_and(|v| own.predates(v)) {
            return true;
        }
        written.remove(uid);
        false
    }

    /// Forgets what was recorded about an object that is gone or no longer this install's.
    pub(crate) fn forget(&self, uid: &str) {
        self.record_success(uid);
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::{OwnWrites, SecretNamespaces};

    #[test]
    fn every_version_an_own_write_replaced_predates_it_and_the_newest_does_not() {
        let mut own = OwnWrites::default();
        // A pass read version 10, claimed the object (11), then wrote its status (12).
        own.record("10", "11");
        own.record("10", "12");
        assert!(own.predates("10") && own.predates("11"), "both are from before the status write");
        assert!(!own.predates("12"), "the newest write is what the next pass should read");
        assert!(!own.predates("13"), "someone else's later change is read as it comes");
    }

    #[test]
    fn a_write_that_changed_nothing_leaves_no_version_behind() {
        let mut own = OwnWrites::default();
        own.record("10", "10");
        assert!(!own.predates("10"), "no watch event follows a write that changed nothing");
    }

    #[test]
    fn bootstrap_secrets_are_read_from_the_operators_namespace_unless_configured() {
        let default = SecretNamespaces::parse("", "tinystacks-system");
        assert!(default.allows("tinystacks-system"));
        assert!(!default.allows("team-a"), "a team's namespace is not read by default");
        let listed = SecretNamespaces::parse(" tinystacks-system, accounts ,", "tinystacks-system");
        assert_eq!(listed, SecretNamespaces::Only(vec!["tinystacks-system".into(), "accounts".into()]));
        assert!(listed.allows("accounts") && !listed.allows("team-a"));
        assert_eq!(listed.to_string(), "tinystacks-system, accounts");
        let any = SecretNamespaces::parse("*", "tinystacks-system");
        assert!(any.allows("team-a"));
    }
}
