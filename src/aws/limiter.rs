//! Every AWS call of a reconcile goes through here, per (account, service):
//! - mutations draw from a token bucket at AWS's documented rates, so a burst of reconciles stays
//!   under the account's request-rate limits; a burst passes without waiting;
//! - every call, reads included, is paced by an adaptive limit that is off while AWS answers
//!   normally, is cut by half whenever a call comes back throttled, and grows back additively with
//!   each call that succeeds (AIMD), so that a throttled account sees fewer attempts per second
//!   while an occasional throttle costs almost nothing;
//! - for the crash-safety tests, a failpoint can end the process right after the Nth mutation that
//!   AWS accepted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tracing::{error, info, warn};

use super::errors::{Failure, classify};
use crate::error::Error;

/// The environment variable that arms the failpoint; inert when unset.
pub const FAILPOINT_ENV: &str = "TINYSTACKS_FAILPOINT_EXIT_AFTER_MUTATIONS";
/// Multiplies every bucket's rate and burst: for accounts whose quotas AWS raised, and for tests
/// against an emulator that has no limits.
pub const RATE_SCALE_ENV: &str = "TINYSTACKS_AWS_MUTATION_RATE_SCALE";

/// The adaptive limit never goes below this share of the service's ceiling.
const MIN_SHARE: f64 = 1.0 / 32.0;
/// What each successful call gives back of the ceiling.
const RECOVERY_STEP: f64 = 0.125;
/// Throttled answers within this long of a cut are the same congestion event (calls sent
/// together come back throttled together): one cut for all of them.
const CUT_WINDOW: Duration = Duration::from_millis(500);

/// The services the operator calls, each with its own bucket and adaptive limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Ec2,
    ApiGateway,
    Kms,
    /// The resource groups tagging API (the Stack's key inventory).
    Tagging,
    Rds,
    SecretsManager,
    Iam,
    Ssm,
    /// The account link's bootstrap stack (CloudFormation mode).
    CloudFormation,
    /// The account link's checks of whose credentials it holds (reads only).
    Sts,
    /// The account link's audit trail.
    CloudTrail,
    /// The audit trail's bucket.
    S3,
}

impl Service {
    /// Sustained mutations per second and burst. The sustained rates are below AWS's published
    /// defaults (EC2's mutating-action bucket refills at 5/s with a burst of 50 per account; API
    /// Gateway's control plane and KMS's CreateKey allow a few per second), because other tools in
    /// the customer's account draw from the same buckets; EC2's burst is AWS's own, so that one
    /// whole Stack (about 30 EC2 writes) is built without waiting, and a throttle that other tools
    /// cause slows the operator down through the adaptive limit.
    fn rate(self) -> (f64, f64) {
        match self {
            Service::Ec2 => (4.0, 50.0),
            Service::ApiGateway => (1.0, 5.0),
            Service::Kms | Service::Tagging => (2.0, 5.0),
            // RDS's control plane throttles per account at a few calls per second; Secrets
            // Manager's write actions allow far more, but a Database writes its secret rarely.
            Service::Rds => (2.0, 10.0),
            Service::SecretsManager | Service::Ssm => (5.0, 20.0),
            // IAM's control plane is global and slow to propagate; a bastion makes a handful of
            // IAM writes in its whole life.
            Service::Iam => (2.0, 10.0),
            // A link writes its stack a few times in its life.
            Service::CloudFormation => (1.0, 5.0),
            // The audit trail and its bucket: a handful of writes when enabled, then drift repairs.
            Service::CloudTrail | Service::S3 => (2.0, 10.0),
            // Only read (GetCallerIdentity), so only the adaptive limit applies, from this ceiling.
            Service::Sts => (5.0, 20.0),
        }
    }

    /// Calls per second (reads and mutations) the adaptive limit allows at its full share, once a
    /// throttle switched it on: AWS's non-mutating buckets refill several times faster than the
    /// mutating ones.
    fn ceiling(self) -> f64 {
        self.rate().0 * 5.0
    }
}

/// Whether a call's outcome says that AWS throttled it.
pub trait Throttling {
    fn throttled(&self) -> bool;
}

impl Throttling for Error {
    fn throttled(&self) -> bool {
        matches!(self, Error::AwsThrottled { .. })
    }
}

impl<E: ProvideErrorMetadata> Throttling for SdkError<E, HttpResponse> {
    fn throttled(&self) -> bool {
        match self {
            SdkError::ServiceError(e) => {
                let status = e.raw().status().as_u16();
                classify(e.err().code(), Some(status)) == Failure::Throttled
            }
            _ => false,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The adaptive limit of one (account, service): `share` of the service's ceiling, or no limit
/// at all while `share` is 1 (nothing throttled, or fully recovered).
struct Pace {
    share: f64,
    /// When the next call may start.
    next: Instant,
    cut_at: Option<Instant>,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Self { share: 1.0, next: now, cut_at: None }
    }
}

pub struct Limiter {
    buckets: Mutex<HashMap<(String, Service), Bucket>>,
    paces: Mutex<HashMap<(String, Service), Pace>>,
    /// Exit after this many successful mutations (the failpoint), if set.
    exit_after: Option<u64>,
    scale: f64,
    mutations: AtomicU64,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Limiter {
    pub fn new(exit_after: Option<u64>) -> Self {
        Self {
            buckets: Mutex::default(),
            paces: Mutex::default(),
            exit_after,
            scale: 1.0,
            mutations: AtomicU64::new(0),
        }
    }

    /// A limiter with the failpoint from the environment.
    pub fn from_env() -> Self {
        let exit_after = std::env::var(FAILPOINT_ENV).ok().and_then(|v| v.trim().parse().ok()).filter(|n| *n > 0);
        if let Some(n) = exit_after {
            info!(n, "failpoint armed: the process exits right after mutation number {n}");
        }
        let scale = std::env::var(RATE_SCALE_ENV).ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| *s > 0.0);
        Self { scale: scale.unwrap_or(1.0), ..Self::new(exit_after) }
    }

    /// Runs the mutation `call` for `account` once the service's bucket and adaptive limit allow it.
    pub async fn mutate<T, E, F, Fut>(&self, account: &str, service: Service, call: F) -> Result<T, E>
    where
        E: Throttling,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        loop {
            match self.take(account, service, Instant::now()) {
                None => break,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
        let out = self.read(account, service, call).await;
        if out.is_ok() {
            let n = self.mutations.fetch_add(1, Ordering::SeqCst) + 1;
            if self.exit_after == Some(n) {
                // Abrupt on purpose: no destructor, no status write, no graceful shutdown, as if the
                // process had been killed between AWS's answer and anything the operator records.
                error!(n, "failpoint {FAILPOINT_ENV} reached: exiting");
                std::process::exit(137);
            }
        }
        out
    }

    /// Runs the call `call` (a read, or a mutation already past its bucket) for `account` once the
    /// adaptive limit allows it, and adapts the limit to its outcome.
    pub async fn read<T, E, F, Fut>(&self, account: &str, service: Service, call: F) -> Result<T, E>
    where
        E: Throttling,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(wait) = self.pace(account, service, Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let out = call().await;
        let throttled = out.as_ref().err().is_some_and(Throttling::throttled);
        self.adapt(account, service, throttled, Instant::now());
        out
    }

    /// Takes a token, or says how long to wait for one.
    fn take(&self, account: &str, service: Service, now: Instant) -> Option<Duration> {
        let (rate, burst) = service.rate();
        let (rate, burst) = (rate * self.scale, burst * self.scale);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry((account.to_string(), service)).or_insert(Bucket { tokens: burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Reserves the next slot of the adaptive limit: `None` while it is off, else how long to wait.
    fn pace(&self, account: &str, service: Service, now: Instant) -> Option<Duration> {
        let mut paces = self.paces.lock().unwrap_or_else(|p| p.into_inner());
        let pace = paces.get_mut(&(account.to_string(), service))?;
        if pace.share >= 1.0 {
            return None;
        }
        let start = pace.next.max(now);
        pace.next = start + self.interval(service, pace.share);
        let wait = start.saturating_duration_since(now);
        (!wait.is_zero()).then_some(wait)
    }

    fn interval(&self, service: Service, share: f64) -> Duration {
        Duration::from_secs_f64(1.0 / (service.ceiling() * self.scale * share))
    }

    /// Cuts the limit by half for a throttled call (once per congestion event), or gives some back
    /// for a call that went through.
    fn adapt(&self, account: &str, service: Service, throttled: bool, now: Instant) {
        let mut paces = self.paces.lock().unwrap_or_else(|p| p.into_inner());
        if !throttled {
            if let Some(pace) = paces.get_mut(&(account.to_string(), service)) {
                pace.share = (pace.share + RECOVERY_STEP).min(1.0);
            }
            return;
        }
        let pace = paces.entry((account.to_string(), service)).or_insert_with(|| Pace::new(now));
        if pace.cut_at.is_some_and(|at| now.saturating_duration_since(at) < CUT_WINDOW) {
            return;
        }
        pace.share = (pace.share * 0.5).max(MIN_SHARE);
        pace.cut_at = Some(now);
        pace.next = pace.next.max(now + self.interval(service, pace.share));
        warn!(account, ?service, share = pace.share, "AWS throttled a call: slowing down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_holds() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        let (rate, burst) = Service::Ec2.rate();
        for _ in 0..burst as usize {
            assert_eq!(limiter.take("111", Service::Ec2, t0), None);
        }
        let wait = limiter.take("111", Service::Ec2, t0).expect("the bucket is empty");
        assert!((wait.as_secs_f64() - 1.0 / rate).abs() < 1e-6, "{wait:?}");
        // One token back after 1/rate seconds.
        assert_eq!(limiter.take("111", Service::Ec2, t0 + Duration::from_secs_f64(1.0 / rate)), None);
    }

    #[test]
    fn accounts_and_services_have_their_own_buckets() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.take("111", Service::ApiGateway, t0), None);
        }
        assert!(limiter.take("111", Service::ApiGateway, t0).is_some());
        assert_eq!(limiter.take("222", Service::ApiGateway, t0), None);
        assert_eq!(limiter.take("111", Service::Kms, t0), None);
    }

    #[tokio::test]
    async fn failed_mutations_are_not_counted() {
        let limiter = Limiter::new(Some(2));
        let denied = || Error::InvalidSpec("no".into());
        let failed: Result<(), Error> = limiter.mutate("1", Service::Kms, || async { Err(denied()) }).await;
        assert!(failed.is_err());
        let ok: Result<u8, Error> = limiter.mutate("1", Service::Kms, || async { Ok(1) }).await;
        assert!(matches!(ok, Ok(1)));
        assert_eq!(limiter.mutations.load(Ordering::SeqCst), 1);
    }

    fn share(limiter: &Limiter, account: &str, service: Service) -> f64 {
        limiter.paces.lock().unwrap().get(&(account.to_string(), service)).map_or(1.0, |p| p.share)
    }

    #[test]
    fn nothing_waits_while_nothing_is_throttled() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(limiter.pace("111", Service::Ec2, t0), None);
            limiter.adapt("111", Service::Ec2, false, t0);
        }
        assert_eq!(share(&limiter, "111", Service::Ec2), 1.0);
    }

    #[test]
    fn a_throttle_halves_the_pace_once_per_event_and_successes_bring_it_back() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        // Ten calls sent together, all throttled: one cut.
        for _ in 0..10 {
            limiter.adapt("111", Service::Ec2, true, t0);
        }
        assert_eq!(share(&limiter, "111", Service::Ec2), 0.5);
        // The next call waits one interval at half the ceiling, the one after it two.
        let interval = 1.0 / (Service::Ec2.ceiling() * 0.5);
        let first = limiter.pace("111", Service::Ec2, t0).expect("paced");
        assert!((first.as_secs_f64() - interval).abs() < 1e-6, "{first:?}");
        let second = limiter.pace("111", Service::Ec2, t0).expect("paced");
        assert!((second.as_secs_f64() - 2.0 * interval).abs() < 1e-6, "{second:?}");
        // A later throttle is a new event.
        limiter.adapt("111", Service::Ec2, true, t0 + CUT_WINDOW);
        assert_eq!(share(&limiter, "111", Service::Ec2), 0.25);
        // Successes give back a step each, up to no limit at all.
        for _ in 0..6 {
            limiter.adapt("111", Service::Ec2, false, t0 + CUT_WINDOW);
        }
        assert_eq!(share(&limiter, "111", Service::Ec2), 1.0);
        assert_eq!(limiter.pace("111", Service::Ec2, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn under_constant_throttling_the_pace_bottoms_out_and_other_scopes_are_unaffected() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        for i in 0..100 {
            limiter.adapt("111", Service::Kms, true, t0 + CUT_WINDOW * i);
        }
        assert_eq!(share(&limiter, "111", Service::Kms), MIN_SHARE);
        let later = t0 + CUT_WINDOW * 200;
        assert_eq!(limiter.pace("111", Service::Kms, later), None, "the first slot after a long pause is free");
        let wait = limiter.pace("111", Service::Kms, later).expect("paced");
        assert!((wait.as_secs_f64() - 1.0 / (Service::Kms.ceiling() * MIN_SHARE)).abs() < 1e-6, "{wait:?}");
        assert_eq!(limiter.pace("222", Service::Kms, later), None);
        assert_eq!(limiter.pace("111", Service::Ec2, later), None);
    }

    #[tokio::test]
    async fn throttled_answers_are_recognised_through_the_operator_error() {
        let limiter = Limiter::default();
        let throttled: Result<(), Error> = limiter
            .read("111", Service::Rds, || async {
                Err(Error::AwsThrottled { action: "rds:DescribeDBInstances".into() })
            })
            .await;
        assert!(throttled.is_err());
        assert_eq!(share(&limiter, "111", Service::Rds), 0.5);
        let ok: Result<(), Error> = limiter.read("111", Service::Rds, || async { Ok(()) }).await;
        assert!(ok.is_ok());
        assert_eq!(share(&limiter, "111", Service::Rds), 0.625);
    }
}
