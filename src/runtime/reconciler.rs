//! The reconcile loop every kind shares: skip malformed objects, honour the pause annotation,
//! hold the finalizer, run the kind's own steps, turn the outcome or error into conditions,
//! events, metrics and a requeue. A kind only says what its AWS side looks like.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::Request;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, info, warn};

use super::conditions::{self, Health};
use super::context::{Context, FIELD_MANAGER};
use crate::api::{CLAIM_ANNOTATION, FINALIZER, HasConditions, PAUSED_ANNOTATION};
use crate::error::{Error, ErrorKind, Result};

/// What a kind's reconcile found and did.
pub struct Step<S> {
    /// The kind's status fields (conditions and generation are filled in by the runtime).
    pub status: S,
    pub health: Health,
    /// When to look again; the resync period if `None`.
    pub requeue_after: Option<Duration>,
}

/// What a kind's cleanup found.
pub enum Cleanup {
    /// Everything is gone (or retained): the finalizer can go.
    Done,
    /// Still waiting; the object keeps its finalizer and says why.
    Pending { reason: &'static str, message: String, requeue_after: Duration },
}

/// A kind the operator manages.
pub trait Managed:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    type Status: HasConditions + Clone + Default + Debug + PartialEq + Serialize + Send + Sync;

    fn status(&self) -> Option<&Self::Status>;

    /// Converges the AWS side towards the spec, one step at a time.
    fn reconcile(&self, ctx: &Context) -> impl Future<Output = Result<Step<Self::Status>>> + Send;

    /// Removes (or releases) the AWS side after deletion was requested.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Cleanup>> + Send;
}

/// The entry point handed to `kube::runtime::Controller::run`. The object leaves the copy of the
/// work queue as its reconcile starts, and enters it again with the requeue it asks for.
pub async fn reconcile<K: Managed>(guard: Arc<DeserializeGuard<K>>, ctx: Arc<Context>) -> Result<Action> {
    let (kind, namespace, name) = (K::kind(&()), guard.namespace(), guard.name_any());
    ctx.metrics.queue.left(&kind, namespace.as_deref(), &name);
    let again = reconcile_once(&guard, &ctx).await?;
    Ok(match again {
        Some(after) => {
            ctx.metrics.queue.requeued(&kind, namespace.as_deref(), &name, after);
            Action::requeue(after)
        }
        None => Action::await_change(),
    })
}

/// One reconcile; returns when to reconcile again, `None` to wait for a change.
async fn reconcile_once<K: Managed>(guard: &DeserializeGuard<K>, ctx: &Arc<Context>) -> Result<Option<Duration>> {
    let obj = match &guard.0 {
        Ok(obj) => obj,
        Err(invalid) => {
            let (name, namespace) = (&invalid.metadata.name, &invalid.metadata.namespace);
            warn!(kind = %K::kind(&()), namespace = namespace.as_deref().unwrap_or_default(),
                name = name.as_deref().unwrap_or_default(), error = %invalid.error, "skipping malformed object");
            return Ok(None);
        }
    };
    let kind = K::kind(&());
    let uid = obj.uid().unwrap_or_default();
    let generation = obj.meta().generation;
    // A pause, or a deletion, is acted on (the pause's pass forgets the refusal).
    if ctx.predates_own_write(&uid, obj.resource_version().as_deref()) {
        debug!(%kind, namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(),
            "read from before this install's own write; its watch event starts the next pass");
        return Ok(None);
    }
    let paused = obj.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    if obj.meta().deletion_timestamp.is_none() && !paused && ctx.refused(&uid, generation) {
        debug!(%kind, namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(),
            "AWS refused this spec as invalid; nothing is sent until it changes");
        return Ok(None);
    }
    let started = Instant::now();
    let in_flight = ctx.metrics.reconcile_started(&kind);
    let outcome = drive(obj, ctx).await;
    drop(in_flight);
    ctx.metrics.reconciled(&kind, started.elapsed());
    match outcome {
        Ok(Some(step)) => {
            ctx.record_success(&uid);
            let requeue = step.requeue_after.unwrap_or(ctx.settings.resync_period);
            publish(obj, ctx, step.status, &step.health, true).await?;
            Ok(Some(requeue))
        }
        Ok(None) => {
            ctx.events_written(&uid).await;
            ctx.forget(&uid);
            ctx.metrics.forget_object(&uid);
            Ok(None)
        }
        Err(error) => {
            ctx.metrics.failed(&kind, error.reason());
            let reference = obj.object_ref(&());
            let namespace = obj.namespace().unwrap_or_default();
            ctx.event(&reference, EventType::Warning, error.reason(), error.to_string()).await;
            let (health, again) = match error.kind() {
                ErrorKind::Transient => {
                    let delay = crate::error::backoff(ctx.record_failure(&uid), ctx.settings.max_backoff);
                    warn!(%kind, namespace = %namespace, name = %obj.name_any(), %error, retry_in = ?delay, "reconcile failed");
                    (Health::progressing(error.reason(), error.to_string()), Some(delay))
                }
                ErrorKind::User => {
                    if matches!(error, Error::AwsRejectedValue { .. }) {
                        ctx.record_refusal(&uid, generation);
                    }
                    info!(%kind, namespace = %namespace, name = %obj.name_any(), %error, "stalled until the spec or a referenced object changes");
                    (Health::stalled(error.reason(), error.to_string()), None)
                }
                ErrorKind::Permission => {
                    warn!(%kind, namespace = %namespace, name = %obj.name_any(), %error, "stalled on a missing permission");
                    (Health::stalled(error.reason(), error.to_string()), Some(ctx.settings.resync_period))
                }
                ErrorKind::External => {
                    warn!(%kind, namespace = %namespace, name = %obj.name_any(), %error, "stalled until a person fixes it outside the cluster");
                    (Health::stalled(error.reason(), error.to_string()), Some(ctx.settings.resync_period))
                }
            };
            let status = obj.status().cloned().unwrap_or_default();
            publish(obj, ctx, status, &health, false).await?;
            Ok(again)
        }
    }
}

/// Requeues after a failed status write; reconcile errors themselves are handled above.
pub fn error_policy<K: Managed>(guard: Arc<DeserializeGuard<K>>, error: &Error, ctx: Arc<Context>) -> Action {
    let uid = guard.uid().unwrap_or_default();
    let delay = crate::error::backoff(ctx.record_failure(&uid), ctx.settings.max_backoff);
    let namespace = guard.namespace().unwrap_or_default();
    warn!(kind = %K::kind(&()), %namespace, name = %guard.name_any(), %error, retry_in = ?delay, "status write failed");
    ctx.metrics.queue.requeued(&K::kind(&()), guard.namespace().as_deref(), &guard.name_any(), delay);
    Action::requeue(delay)
}

/// Runs the steps; `Ok(None)` means nothing more is to be written (the object is on its way out,
/// or another install acts on it).
async fn drive<K: Managed>(obj: &K, ctx: &Context) -> Result<Option<Step<K::Status>>> {
    match claim(obj, ctx).await? {
        Claim::Ours => {}
        Claim::Elsewhere(holder) => {
            ctx.metrics.claimed_elsewhere(&K::kind(&()));
            info!(kind = %K::kind(&()), name = %obj.name_any(), namespace = %obj.namespace().unwrap_or_default(), %holder,
                ours = %ctx.settings.claim, "claimed by another install; left alone (no AWS call, no status write)");
            return Ok(None);
        }
        Claim::Raced => {
            // The object changed since it was read: its watch event brings the fresh one, with
            // whichever claim won.
            debug!(kind = %K::kind(&()), name = %obj.name_any(), "the object changed while claiming it; looking again");
            return Ok(None);
        }
    }
    let paused = obj.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    let existing = obj.status().cloned().unwrap_or_default();
    // Deletion comes before the pause: the pause holds convergence, not a deletion someone asked
    // for later; the cleanup follows the object's deletionPolicy as it would unpaused.
    if obj.meta().deletion_timestamp.is_some() {
        if !obj.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(None);
        }
        if paused {
            info!(kind = %K::kind(&()), namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(), "deleted while paused: cleaning up as the deletion policy says");
        }
        return match obj.cleanup(ctx).await? {
            Cleanup::Done => {
                remove_finalizer(obj, ctx).await?;
                info!(kind = %K::kind(&()), namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(),
                    "cleanup finished, finalizer removed");
                Ok(None)
            }
            Cleanup::Pending { reason, message, requeue_after } => Ok(Some(Step {
                status: existing,
                health: Health::progressing(reason, message),
                requeue_after: Some(requeue_after),
            })),
        };
    }
    if paused {
        debug!(kind = %K::kind(&()), namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(), "paused");
        return Ok(Some(Step { status: existing, health: Health::Paused, requeue_after: None }));
    }
    obj.reconcile(ctx).await.map(Some)
}

/// Which install acts on an object.
enum Claim {
    /// This one (it holds the claim, or nothing is to be done that needs one).
    Ours,
    /// Another install, named by the annotation's value.
    Elsewhere(String),
    /// The claim could not be written: the object changed since it was read.
    Raced,
}

/// Finds whose the object is, and claims it (with the finalizer, in one patch guarded by the
/// resourceVersion) before this install acts on it. Of two installs that read the same version,
/// one writes its claim and the other's patch fails its `test`; the loser sees the winner's claim
/// on its next look. A paused object is not claimed (nothing is done to it), nor one being deleted
/// without the finalizer (nothing is left to do).
async fn claim<K: Managed>(obj: &K, ctx: &Context) -> Result<Claim> {
    let ours = &ctx.settings.claim;
    let holder = obj.annotations().get(CLAIM_ANNOTATION);
    if let Some(holder) = holder
        && holder != ours
    {
        return Ok(Claim::Elsewhere(holder.clone()));
    }
    let paused = obj.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    let deleting = obj.meta().deletion_timestamp.is_some();
    let finalized = obj.finalizers().iter().any(|f| f == FINALIZER);
    if (paused && !deleting) || (deleting && !finalized) {
        return Ok(Claim::Ours);
    }
    let mut ops = vec![json!({ "op": "test", "path": "/metadata/resourceVersion", "value": obj.resource_version() })];
    if holder.is_none() {
        ops.push(match &obj.meta().annotations {
            Some(_) => json!({ "op": "add", "path": annotation_path(CLAIM_ANNOTATION), "value": ours }),
            None => json!({ "op": "add", "path": "/metadata/annotations", "value": { CLAIM_ANNOTATION: ours } }),
        });
    }
    if !deleting && !finalized {
        ops.push(match &obj.meta().finalizers {
            Some(list) if !list.is_empty() => {
                json!({ "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER })
            }
            _ => json!({ "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }),
        });
    }
    if ops.len() == 1 {
        return Ok(Claim::Ours);
    }
    match patch_json(obj, ctx, serde_json::Value::Array(ops)).await {
        Ok(()) => Ok(Claim::Ours),
        // A failed `test` (the resourceVersion moved on) answers 422; a conflict, 409.
        Err(Error::Kube(kube::Error::Api(status))) if status.code == 409 || status.code == 422 => Ok(Claim::Raced),
        Err(error) => Err(error),
    }
}

/// The JSON pointer of an annotation (`/` in a key is written `~1`).
fn annotation_path(key: &str) -> String {
    format!("/metadata/annotations/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// PATCHes the object (or one of its subresources) through its own URL, whatever its scope.
async fn patch<K: Managed, P: Serialize + Debug>(
    obj: &K,
    ctx: &Context,
    subresource: Option<&str>,
    params: &PatchParams,
    patch: &Patch<P>,
) -> Result<()> {
    let request = Request::new(K::url_path(&(), obj.namespace().as_deref()));
    let name = obj.name_any();
    let request = match subresource {
        Some(sub) => request.patch_subresource(sub, &name, params, patch),
        None => request.patch(&name, params, patch),
    }
    .map_err(kube::Error::BuildRequest)?;
    let written = ctx.client.request::<serde_json::Value>(request).await?;
    let after = written.pointer("/metadata/resourceVersion").and_then(|v| v.as_str());
    ctx.wrote(&obj.uid().unwrap_or_default(), obj.resource_version().as_deref(), after);
    Ok(())
}

/// Sets (or, with `null`, removes) annotations of the object: what a kind records on its own
/// object beside the status (a pinned image, a rotation carried out).
pub async fn annotate<K: Managed>(obj: &K, ctx: &Context, annotations: serde_json::Value) -> Result<()> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let body = json!({"metadata": {"annotations": annotations}});
    patch(obj, ctx, None, &params, &Patch::Merge(&body)).await
}

async fn remove_finalizer<K: Managed>(obj: &K, ctx: &Context) -> Result<()> {
    let Some(index) = obj.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch = json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]);
    match patch_json(obj, ctx, patch).await {
        // Already gone: someone else finished the job.
        Err(Error::Kube(kube::Error::Api(status))) if status.is_not_found() => Ok(()),
        other => other,
    }
}

async fn patch_json<K: Managed>(obj: &K, ctx: &Context, patch: serde_json::Value) -> Result<()> {
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    self::patch(obj, ctx, None, &PatchParams::default(), &Patch::<()>::Json(patch)).await
}

/// Writes the status with server-side apply under the operator's field manager, unless it would
/// change nothing; with `announce`, a change of `Ready` becomes a Normal Event.
async fn publish<K: Managed>(
    obj: &K,
    ctx: &Context,
    mut status: K::Status,
    health: &Health,
    announce: bool,
) -> Result<()> {
    let previous = obj.status();
    let previous_conditions = previous.map(|s| s.conditions().to_vec()).unwrap_or_default();
    let now = Time(Timestamp::now());
    let generation = obj.meta().generation;
    let conditions = conditions::compute(&previous_conditions, health, generation, &now);
    status.set_conditions(conditions, conditions::observed_generation(&previous_conditions, health, generation));
    let ready = conditions::ready(status.conditions()).is_some_and(|c| c.status == "True");
    let age = obj.meta().creation_timestamp.as_ref().and_then(|t| Duration::try_from(now.0.duration_since(t.0)).ok());
    ctx.metrics.object(&K::kind(&()), &obj.uid().unwrap_or_default(), ready, age);
    // The Events of this pass come before the status that sums it up.
    ctx.events_written(&obj.uid().unwrap_or_default()).await;
    if previous == Some(&status) {
        return Ok(());
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    patch(obj, ctx, Some("status"), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;

    // Errors publish their own Warning event; here only progress and readiness are announced.
    let was = conditions::ready(&previous_conditions).map(|c| (c.status.as_str(), c.reason.as_str()));
    if announce
        && let Some(ready) = conditions::ready(status.conditions())
        && was != Some((ready.status.as_str(), ready.reason.as_str()))
    {
        ctx.event(&obj.object_ref(&()), EventType::Normal, &ready.reason, ready.message.clone()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_annotation_key_is_escaped_in_its_json_pointer() {
        assert_eq!(
            super::annotation_path("tinystacks.io/claimed-by"),
            "/metadata/annotations/tinystacks.io~1claimed-by"
        );
        assert_eq!(super::annotation_path("a~b/c"), "/metadata/annotations/a~0b~1c");
    }
}
