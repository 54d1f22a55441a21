//! One error type for every reconcile. Each variant knows its kind (what to do next) and its
//! reason (the CamelCase word used for the condition, the Event and the metric label).

use std::time::Duration;

/// What the runtime does with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retry with per-object exponential backoff; `Ready=False`, `Reconciling=True`.
    Transient,
    /// A person must change the spec or a referenced object; `Stalled=True`, no retries until
    /// something changes.
    User,
    /// The AWS identity lacks a permission; `Stalled=True`, rechecked at the resync period since
    /// the fix happens outside the cluster.
    Permission,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),

    #[error("AwsAccountLink {name:?} does not exist; create it or fix spec.accountLinkRef.name")]
    AccountLinkNotFound { name: String },

    #[error(
        "AwsAccountLink {link:?} does not allow namespace {namespace:?}; add it to the link's spec.allowedNamespaces"
    )]
    AccountLinkNotAllowed { link: String, namespace: String },

    #[error("Stack {name:?} does not exist in this namespace; create it or fix spec.stackRef.name")]
    StackNotFound { name: String },

    #[error("invalid spec: {0}")]
    InvalidSpec(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Kube(_) => ErrorKind::Transient,
            Error::AccountLinkNotFound { .. }
            | Error::AccountLinkNotAllowed { .. }
            | Error::StackNotFound { .. }
            | Error::InvalidSpec(_) => ErrorKind::User,
        }
    }

    /// The condition reason, Event reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::AccountLinkNotFound { .. } => "AccountLinkNotFound",
            Error::AccountLinkNotAllowed { .. } => "AccountLinkNotAllowed",
            Error::StackNotFound { .. } => "StackNotFound",
            Error::InvalidSpec(_) => "InvalidSpec",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exponential backoff with jitter for the `attempt`-th consecutive failure (0-based):
/// 1 s, 2 s, 4 s ... capped at `max`, each scaled by a random factor in [0.5, 1.0).
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << attempt.min(16));
    let capped = base.min(max);
    capped.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(300);
        for attempt in 0..40 {
            let d = backoff(attempt, max);
            let ceiling = Duration::from_secs(1u64 << attempt.min(16)).min(max);
            assert!(
                d >= ceiling / 2 && d < ceiling,
                "attempt {attempt}: {d:?} outside [{:?}, {ceiling:?})",
                ceiling / 2
            );
        }
    }

    #[test]
    fn user_errors_stall_and_api_errors_retry() {
        let e = Error::AccountLinkNotAllowed { link: "l".into(), namespace: "n".into() };
        assert_eq!(e.kind(), ErrorKind::User);
        assert_eq!(e.reason(), "AccountLinkNotAllowed");
        assert!(e.to_string().contains("allowedNamespaces"));
    }
}
