//! Wiring: start-up checks, the HTTP endpoints, leader election and one controller per kind,
//! with the watches that let a change of one object wake the objects that depend on it.

mod client;
pub mod conditions;
pub mod context;
mod events;
mod http;
mod leader;
pub mod metrics;
pub mod owned_secrets;
pub mod plan;
mod process;
mod queue;
pub mod reconciler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller, Error as ControllerError};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::api::{AwsAccountLink, Bastion, Database, Stack};
use context::{Context, SecretNamespaces, Settings};
use leader::LeaderElection;
use metrics::Metrics;
use queue::WorkQueue;
use reconciler::{Managed, error_policy, reconcile};

/// How `tinystacks-operator run` was configured.
#[derive(Clone, Debug)]
pub struct Options {
    pub settings: Settings,
    pub concurrency: u16,
    /// Watch namespaced kinds in this namespace only; all namespaces if `None`.
    pub watch_namespace: Option<String>,
    pub metrics_addr: SocketAddr,
    pub leader_election: bool,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub identity: String,
    pub aws: crate::aws::AwsOptions,
}

/// Why the operator could not start. Each reads as one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot load Kubernetes client configuration (KUBECONFIG or in-cluster): {0}")]
    Config(String),
    #[error("cannot reach the Kubernetes API server: {0}")]
    Unreachable(String),
    #[error(
        "the CRD for {0} is not installed; install it with `tinystacks-operator crds | kubectl apply --server-side -f -`"
    )]
    CrdMissing(String),
    #[error(
        "namespace {0:?} (the operator's namespace, for its Lease and ConfigMaps) does not exist; create it or set --namespace"
    )]
    NamespaceMissing(String),
    #[error("Kubernetes API request failed at start-up: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serve metrics and health endpoints: {0}")]
    Http(#[from] std::io::Error),
}

/// Runs the operator until SIGTERM or Ctrl-C; returns an error if it could not start. Losing the
/// leader lease stops the controllers until the lease is held again; the process keeps running.
pub async fn run(options: Options) -> Result<(), StartupError> {
    let metrics = Metrics::default();
    let client = client::counted(&metrics).await.map_err(StartupError::Config)?;
    preflight(&client, &options).await?;

    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(options.metrics_addr).await?;
    tokio::spawn({
        let (metrics, ready) = (metrics.clone(), ready.clone());
        async move {
            if let Err(error) = http::serve(listener, metrics, ready).await {
                error!(%error, "HTTP endpoints stopped");
            }
        }
    });
    ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested; finishing running reconciles");
        let _ = stop_tx.send(true);
    });

    let election = options.leader_election.then(|| {
        LeaderElection::new(
            Api::<Lease>::namespaced(client.clone(), &options.settings.namespace),
            options.lease_name.clone(),
            options.identity.clone(),
            options.lease_duration,
        )
    });
    let aws = crate::aws::Aws::new(options.aws.clone(), metrics.clone());
    // One term of leadership per turn: a leader that loses the lease (another replica took it, or
    // the API server was away past the renew deadline) drops its controllers, cancelling the
    // reconciles under way (each is safe to stop after any call), and stands for the lease again;
    // the next term starts from a fresh context (its AWS view is listed again).
    loop {
        if let Some(election) = &election {
            let mut stopped = stop_rx.clone();
            tokio::select! {
                acquired = election.acquire() => acquired.map_err(|e| StartupError::Unreachable(e.to_string()))?,
                _ = stopped.wait_for(|s| *s) => return Ok(()),
            }
        }
        metrics.set_leader(true);
        let ctx = Arc::new(Context::new(
            client.clone(),
            options.settings.clone(),
            metrics.clone(),
            aws.clone(),
            Some(options.identity.clone()),
        ));
        let controllers = run_controllers(client.clone(), ctx, &options, stop_rx.clone());
        let lost = async {
            match &election {
                Some(election) => election.hold().await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = controllers => {
                if let Some(election) = &election {
                    election.release().await;
                }
                info!("stopped");
                return Ok(());
            }
            _ = lost => {
                metrics.set_leader(false);
                // The controllers' queues went with them: a standby has nothing waiting.
                metrics.queue.clear();
                warn!("lost the leader lease: controllers stopped; standing for the lease again");
            }
        }
    }
}

/// Fails fast, with one clear line, when the API server or the CRDs are missing.
async fn preflight(client: &Client, options: &Options) -> Result<(), StartupError> {
    let version = client.apiserver_version().await.map_err(|e| StartupError::Unreachable(e.to_string()))?;
    info!(version = %version.git_version, "connected to the Kubernetes API server");
    let one = ListParams::default().limit(1);
    check_crd(Api::<AwsAccountLink>::all(client.clone()).list_metadata(&one).await, "AwsAccountLink")?;
    check_crd(namespaced_api::<Stack>(client, options).list_metadata(&one).await, "Stack")?;
    check_crd(namespaced_api::<Database>(client, options).list_metadata(&one).await, "Database")?;
    check_crd(namespaced_api::<Bastion>(client, options).list_metadata(&one).await, "Bastion")?;
    let ns = &options.settings.namespace;
    if Api::<Namespace>::all(client.clone()).get_metadata_opt(ns).await?.is_none() {
        return Err(StartupError::NamespaceMissing(ns.clone()));
    }
    Ok(())
}

fn check_crd<T>(result: kube::Result<T>, kind: &str) -> Result<(), StartupError> {
    match result {
        Ok(_) => Ok(()),
        // An unknown resource path answers a plain-text 404, not a Status with reason NotFound.
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(StartupError::CrdMissing(format!("{kind} (tinystacks.io/v1alpha1)")))
        }
        Err(e) => Err(e.into()),
    }
}

fn namespaced_api<K>(client: &Client, options: &Options) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match &options.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return futures::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

type Guarded<K> = DeserializeGuard<K>;

/// Hands `refs` to the controller of `K`, each entering the copy of its work queue
/// (`tinystacks_reconcile_queue_depth`).
fn enqueue<K: Managed>(
    queue: &WorkQueue,
    refs: impl IntoIterator<Item = ObjectRef<Guarded<K>>>,
) -> Vec<ObjectRef<Guarded<K>>> {
    let kind = K::kind(&());
    refs.into_iter().inspect(|r| queue.triggered(&kind, r.namespace.as_deref(), &r.name)).collect()
}

/// The objects of `K` that own `child`, found as `Controller::owns` finds them (by the owner
/// reference's apiVersion and kind, in the child's namespace).
fn owners<K: Managed>(child: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<Guarded<K>>> {
    let namespace = child.namespace();
    child.owner_references().iter().filter_map(|o| ObjectRef::from_owner_ref(namespace.as_deref(), o, ())).collect()
}

/// The objects in `store` whose reference `refers` to the changed object.
fn referrers<K>(store: &Store<Guarded<K>>, refers: impl Fn(&K) -> bool) -> Vec<ObjectRef<Guarded<K>>>
where
    K: Managed,
{
    store.state().iter().filter(|o| o.0.as_ref().is_ok_and(&refers)).map(|o| ObjectRef::from_obj(o.as_ref())).collect()
}

/// A controller of `K` whose store keeps each object without the bookkeeping that no reconcile
/// reads: `managedFields` (the API server's record of which manager set which field, often larger
/// than the object itself) and kubectl's `last-applied-configuration` annotation (a second copy
/// of the object). At 1,000 Stacks and 1,000 Databases the store holds every one of them.
///
/// Each object its watch brings enters the copy of the work queue.
fn controller<K>(api: Api<Guarded<K>>, queue: &WorkQueue) -> Controller<Guarded<K>>
where
    K: Managed,
{
    let (reader, writer) = reflector::store();
    let (queue, kind) = (queue.clone(), K::kind(&()));
    let objects = reflector(writer, watcher(api, watcher::Config::default()).modify(slim))
        .applied_objects()
        .inspect_ok(move |o| queue.triggered(&kind, o.namespace().as_deref(), &o.name_any()));
    Controller::for_stream(objects, reader)
}

/// Drops what [`controller`] explains no reconcile reads.
fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

async fn run_controllers(client: Client, ctx: Arc<Context>, options: &Options, stop: watch::Receiver<bool>) {
    let wc = watcher::Config::default;
    let config = ControllerConfig::default().concurrency(options.concurrency);
    let backoff = WatchBackoff::default;
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    // This term's controllers start with empty queues; the last term's went with its controllers.
    let queue = ctx.metrics.queue.clone();
    queue.clear();
    let q = || queue.clone();
    let links = Api::<Guarded<AwsAccountLink>>::all(client.clone());
    let stacks = namespaced_api::<Guarded<Stack>>(&client, options);
    let databases = namespaced_api::<Guarded<Database>>(&client, options);
    let bastions = namespaced_api::<Guarded<Bastion>>(&client, options);

    // A link wakes when a Stack that uses it changes (deletion waits for them), and when its
    // bootstrap Secret is created, changed or deleted (a link waiting for it goes on at once).
    let link_controller = controller(links.clone(), &queue).with_config(config.clone()).trigger_backoff(backoff());
    let link_store = link_controller.store();
    let (q1, q2) = (q(), q());
    let link_controller = link_controller
        .watches(stacks.clone(), wc(), move |s: Guarded<Stack>| {
            enqueue(&q1, s.0.ok().map(|s| ObjectRef::new(&s.spec.account_link_ref.name)))
        })
        .watches_stream(bootstrap_secrets(&client, &ctx.settings.bootstrap_secret_namespaces), move |secret| {
            let (name, ns) = (secret.name_any(), secret.namespace().unwrap_or_default());
            enqueue(
                &q2,
                referrers(&link_store, |l: &AwsAccountLink| {
                    l.spec
                        .bootstrap
                        .credentials_secret_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name && r.namespace == ns)
                }),
            )
        })
        .graceful_shutdown_on(stopped());

    // A Stack wakes when its link changes, and when its Databases or Bastions change.
    let stack_controller = controller(stacks.clone(), &queue).with_config(config.clone()).trigger_backoff(backoff());
    let store = stack_controller.store();
    let (q1, q2, q3) = (q(), q(), q());
    let stack_controller = stack_controller
        .watches(links, wc(), move |l: Guarded<AwsAccountLink>| {
            let name = l.name_any();
            enqueue(&q1, referrers(&store, |s: &Stack| s.spec.account_link_ref.name == name))
        })
        .watches(databases.clone(), wc(), move |d: Guarded<Database>| {
            let ns = d.namespace();
            let stack =
                d.0.ok().map(|d| ObjectRef::new(&d.spec.stack_ref.name).within(ns.as_deref().unwrap_or_default()));
            enqueue(&q2, stack)
        })
        .watches(bastions.clone(), wc(), move |b: Guarded<Bastion>| {
            let ns = b.namespace();
            let stack =
                b.0.ok().map(|b| ObjectRef::new(&b.spec.stack_ref.name).within(ns.as_deref().unwrap_or_default()));
            enqueue(&q3, stack)
        })
        .graceful_shutdown_on(stopped());

    // A Database wakes when its Stack changes, when a Bastion of its Stack comes or goes, and when
    // its connection Secret is edited or deleted (so that it is written again at once).
    let databases_for_bastions = databases.clone();
    let database_controller = controller(databases, &queue).with_config(config.clone()).trigger_backoff(backoff());
    let managed = format!("{}={}", crate::database::MANAGED_LABEL, context::FIELD_MANAGER);
    let managed_for_bastions = managed.clone();
    let db_store = database_controller.store();
    let db_store_2 = db_store.clone();
    let (q1, q2, q3) = (q(), q(), q());
    let database_controller = database_controller
        .watches(stacks.clone(), wc(), move |s: Guarded<Stack>| {
            let (name, ns) = (s.name_any(), s.namespace());
            enqueue(&q1, referrers(&db_store, |d: &Database| d.spec.stack_ref.name == name && d.namespace() == ns))
        })
        .watches(bastions.clone(), wc(), move |b: Guarded<Bastion>| {
            let ns = b.namespace();
            let Ok(b) = b.0 else { return Vec::new() };
            let stack = &b.spec.stack_ref.name;
            enqueue(&q2, referrers(&db_store_2, |d: &Database| &d.spec.stack_ref.name == stack && d.namespace() == ns))
        })
        .watches_stream(owned_secrets(&client, options, &managed), move |s| enqueue(&q3, owners::<Database>(&s)))
        .graceful_shutdown_on(stopped());

    // A Bastion wakes when its Stack changes, when a Database of its Stack changes (the tunnel
    // command names its endpoint), and when its generated key's Secret is edited or deleted.
    let bastion_controller = controller(bastions, &queue).with_config(config).trigger_backoff(backoff());
    let bastion_store = bastion_controller.store();
    let bastion_store_2 = bastion_store.clone();
    let (q1, q2, q3) = (q(), q(), q());
    let bastion_controller = bastion_controller
        .watches(stacks, wc(), move |s: Guarded<Stack>| {
            let (name, ns) = (s.name_any(), s.namespace());
            enqueue(&q1, referrers(&bastion_store, |b: &Bastion| b.spec.stack_ref.name == name && b.namespace() == ns))
        })
        .watches(databases_for_bastions, wc(), move |d: Guarded<Database>| {
            let ns = d.namespace();
            let Ok(d) = d.0 else { return Vec::new() };
            let stack = &d.spec.stack_ref.name;
            enqueue(
                &q2,
                referrers(&bastion_store_2, |b: &Bastion| &b.spec.stack_ref.name == stack && b.namespace() == ns),
            )
        })
        .watches_stream(owned_secrets(&client, options, &managed_for_bastions), move |s| {
            enqueue(&q3, owners::<Bastion>(&s))
        })
        .graceful_shutdown_on(stopped());

    info!("controllers started");
    futures::join!(
        drain(link_controller.run(reconcile::<AwsAccountLink>, error_policy::<AwsAccountLink>, ctx.clone()), q()),
        drain(stack_controller.run(reconcile::<Stack>, error_policy::<Stack>, ctx.clone()), q()),
        drain(database_controller.run(reconcile::<Database>, error_policy::<Database>, ctx.clone()), q()),
        drain(bastion_controller.run(reconcile::<Bastion>, error_policy::<Bastion>, ctx), q()),
    );
}

/// The Secrets that links may take bootstrap credentials from, as metadata only (the keys never
/// pass through the watch): the Secrets of the allowed namespaces, so the operator's own namespace
/// alone by default.
fn bootstrap_secrets(
    client: &Client,
    namespaces: &SecretNamespaces,
) -> BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>> {
    let watch = |api: Api<PartialObjectMeta<Secret>>| watcher(api, watcher::Config::default()).touched_objects();
    match namespaces {
        SecretNamespaces::Any => watch(Api::all(client.clone())).boxed(),
        SecretNamespaces::Only(names) => {
            futures::stream::select_all(names.iter().map(|ns| watch(Api::namespaced(client.clone(), ns)).boxed()))
                .boxed()
        }
    }
}

/// The Secrets the operator wrote for `K` (labelled `label`), as metadata: an edit or a deletion
/// wakes their owner, as `Controller::owns` would.
fn owned_secrets(
    client: &Client,
    options: &Options,
    label: &str,
) -> BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>> {
    let api: Api<PartialObjectMeta<Secret>> = match &options.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher(api, watcher::Config::default().labels(label)).touched_objects().boxed()
}

/// The pause after a watch error before a controller polls its watches again: 250 ms, doubling up
/// to 4 s, back to 250 ms after any event.
///
/// kube's default (800 ms doubling to 30 s, with jitter up to twice that) suits one watch, but a
/// controller merges all its watches into one stream with one backoff: while the API server
/// restarts, every failed reconnect of every watch doubles the pause, and each watch's `410 Gone`
/// when the server is back doubles it again. The controller then heard nothing for minutes after
/// the server had returned, and a spec change made then waited for the resync.
#[derive(Clone, Copy, Debug)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (current * 2).min(Self::MAX);
        Some(current)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Runs a controller to its end. A request for an object gone from the controller's store is
/// dropped by kube without a reconcile: it leaves the copy of the work queue here.
async fn drain<S, T, E1, E2>(stream: S, queue: WorkQueue)
where
    S: futures::Stream<Item = Result<T, ControllerError<E1, E2>>>,
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    stream
        .for_each(|result| {
            if let Err(ControllerError::ObjectNotFound(gone)) = &result {
                queue.left(&gone.dyntype.kind, gone.namespace.as_deref(), &gone.name);
            }
            async move {
                if let Err(error) = result {
                    debug!(%error, "controller event");
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::WatchBackoff;
    use kube::runtime::utils::Backoff;
    use std::time::Duration;

    #[test]
    fn the_watch_backoff_is_capped_never_gives_up_and_starts_over_after_an_event() {
        let mut backoff = WatchBackoff::default();
        let pauses: Vec<Duration> = backoff.by_ref().take(8).collect();
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 4000, 4000, 4000]);
        // However many errors an outage brings, the longest deafness after it is one cap.
        assert_eq!(backoff.nth(1000), Some(WatchBackoff::MAX));
        backoff.reset();
        assert_eq!(backoff.next(), Some(WatchBackoff::FIRST));
    }

    #[test]
    fn the_stores_keep_objects_without_managed_fields_or_kubectls_copy() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

        let annotations = [(super::LAST_APPLIED, "{\"spec\":{}}"), ("tinystacks.io/paused", "true")];
        let mut object = ConfigMap {
            metadata: ObjectMeta {
                name: Some("web".into()),
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some("kubectl".into()),
                    ..Default::default()
                }]),
                annotations: Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            data: Some([("a".to_string(), "b".to_string())].into()),
            ..Default::default()
        };
        super::slim(&mut object);
        assert_eq!(object.metadata.managed_fields, None);
        let kept: Vec<&str> = object.metadata.annotations.iter().flatten().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kept, ["tinystacks.io/paused"], "the annotations the reconciles read stay");
        assert_eq!(object.metadata.name.as_deref(), Some("web"));
        assert_eq!(object.data.as_ref().map(|d| d.len()), Some(1), "the rest of the object stays");
    }
}
