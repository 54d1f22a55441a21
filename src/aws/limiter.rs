//! Every mutating AWS call goes through here: a token bucket per (account, service) keeps a burst
//! of reconciles under AWS's request-rate limits (DESIGN §3), and, for the crash-safety tests, a
//! failpoint can end the process right after the Nth mutation that AWS accepted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{error, info};

/// The environment variable that arms the failpoint; inert when unset.
pub const FAILPOINT_ENV: &str = "TINYSTACKS_FAILPOINT_EXIT_AFTER_MUTATIONS";
/// Multiplies every bucket's rate and burst: for accounts whose quotas AWS raised, and for tests
/// against an emulator that has no limits.
pub const RATE_SCALE_ENV: &str = "TINYSTACKS_AWS_MUTATION_RATE_SCALE";

/// The services the operator mutates, each with its own bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Ec2,
    ApiGateway,
    Kms,
    Rds,
    SecretsManager,
    Iam,
    /// The account link's bootstrap stack (CloudFormation mode).
    CloudFormation,
}

impl Service {
    /// Sustained requests per second and burst. Well below AWS's published defaults (EC2's
    /// mutating-action bucket refills at 5/s with a burst of 50 per account; API Gateway's
    /// control plane and KMS's CreateKey allow a few per second), because other tools in the
    /// customer's account draw from the same buckets.
    fn rate(self) -> (f64, f64) {
        match self {
            Service::Ec2 => (4.0, 20.0),
            Service::ApiGateway => (1.0, 5.0),
            Service::Kms => (2.0, 5.0),
            // RDS's control plane throttles per account at a few calls per second; Secrets
            // Manager's write actions allow far more, but a Database writes its secret rarely.
            Service::Rds => (2.0, 10.0),
            Service::SecretsManager => (5.0, 20.0),
            // IAM's control plane is global and slow to propagate; a bastion makes a handful of
            // IAM writes in its whole life.
            Service::Iam => (2.0, 10.0),
            // A link writes its stack a few times in its life.
            Service::CloudFormation => (1.0, 5.0),
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Limiter {
    buckets: Mutex<HashMap<(String, Service), Bucket>>,
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
        Self { buckets: Mutex::default(), exit_after, scale: 1.0, mutations: AtomicU64::new(0) }
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

    /// Runs the mutation `call` for `account` once the service's bucket allows it.
    pub async fn mutate<T, E, F, Fut>(&self, account: &str, service: Service, call: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        loop {
            match self.take(account, service, Instant::now()) {
                None => break,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
        let out = call().await;
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
        let failed: Result<(), &str> = limiter.mutate("1", Service::Kms, || async { Err("no") }).await;
        assert!(failed.is_err());
        let ok: Result<u8, &str> = limiter.mutate("1", Service::Kms, || async { Ok(1) }).await;
        assert_eq!(ok, Ok(1));
        assert_eq!(limiter.mutations.load(Ordering::SeqCst), 1);
    }
}
