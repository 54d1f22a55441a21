//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas can run and only
//! one reconciles. Updates carry the resourceVersion they read, so two candidates can never both
//! believe they won. A leader that cannot renew within the renew deadline (two thirds of the lease
//! duration, each attempt bounded by the retry period) steps down before any other replica may
//! take the lease, so that two leaders never mutate AWS at once; the process keeps running and
//! stands for the lease again (`runtime::run`).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

use crate::error::Result;

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl LeaderElection {
    pub fn new(api: Api<Lease>, name: String, identity: String, lease_duration: Duration) -> Self {
        Self { api, name, identity, lease_duration }
    }

    /// Waits until this process holds the lease.
    pub async fn acquire(&self) -> Result<()> {
        let mut announced = false;
        loop {
            match self.attempt().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return Ok(());
                }
                Ok(false) if !announced => {
                    info!(lease = %self.name, "another replica leads; standing by");
                    announced = true;
                }
                Ok(false) => {}
                Err(error) => warn!(%error, "leader election attempt failed"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the lease until it is lost to another replica or no renewal succeeded for the renew
    /// deadline, then returns: the caller stops acting as leader at once.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.attempt().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "lost the lease to another replica");
                    return;
                }
                Err(error) => {
                    warn!(%error, "lease renewal failed");
                    if last_renewed.elapsed() >= self.renew_deadline() {
                        warn!(lease = %self.name, deadline = ?self.renew_deadline(), "no renewal within the renew deadline");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up on a clean shutdown so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
            warn!(%error, "could not release the lease");
        }
    }

    fn retry_period(&self) -> Duration {
        self.lease_duration / 3
    }

    /// How long a leader goes on without a successful renewal: less than the lease duration, so
    /// that it has stopped before another replica may see the lease expired.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// One try, bounded by the retry period: an API server that accepts the connection and never
    /// answers must not hold a leader past its deadline.
    async fn attempt(&self) -> Result<bool> {
        tokio::time::timeout(self.retry_period(), self.try_acquire_or_renew()).await.unwrap_or_else(|_| {
            Err(crate::error::Error::Kube(kube::Error::Service(
                format!("no answer from the API server within {:?}", self.retry_period()).into(),
            )))
        })
    }

    async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(&self.identity);
        if !ours && !expired(spec, now) {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // `replace` sends the resourceVersion we read: a concurrent winner makes this a conflict.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether nobody holds the lease or its holder stopped renewing it.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(holder) = spec.holder_identity.as_deref() else { return true };
    if holder.is_empty() {
        return true;
    }
    let Some(MicroTime(renewed)) = spec.renew_time else { return true };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed.checked_add(duration).map_or(true, |until| until < now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> (LeaseSpec, Timestamp) {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let renewed = now.checked_sub(SignedDuration::from_secs(renewed_secs_ago)).unwrap();
        let spec = LeaseSpec {
            holder_identity: holder.map(Into::into),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        };
        (spec, now)
    }

    #[test]
    fn a_fresh_lease_is_held_and_a_stale_one_is_free() {
        let (fresh, now) = spec(Some("a"), 5, 15);
        assert!(!expired(&fresh, now));
        let (stale, now) = spec(Some("a"), 16, 15);
        assert!(expired(&stale, now));
        let (released, now) = spec(None, 1, 15);
        assert!(expired(&released, now));
    }
}
