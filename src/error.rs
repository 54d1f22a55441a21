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
    /// A person must fix something the operator does not watch (a failed CloudFormation stack, a
    /// role's trust policy, a bootstrap Secret); `Stalled=True`, rechecked at the resync period.
    External,
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

    #[error(
        "AwsAccountLink {link:?} no longer allows namespace {namespace:?}, so the AWS resources in status cannot be deleted: add the namespace to the link's spec.allowedNamespaces again (the deletion then goes on), or remove the finalizer tinystacks.io/cleanup to leave them in AWS"
    )]
    AccountLinkNoLongerAllows { link: String, namespace: String },

    #[error("Stack {name:?} does not exist in this namespace; create it or fix spec.stackRef.name")]
    StackNotFound { name: String },

    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    #[error("{object} has no UID, so what it owns in AWS cannot be told; the operator retries")]
    OwnerUidMissing { object: String },

    #[error(
        "access Ssh needs a public subnet, and Stack {stack:?} uses the PrivateIsolated pattern, which has none; use access Ssm (Session Manager reaches the instance through the stack's endpoints) or a PublicPrivate Stack"
    )]
    SshNeedsPublicSubnet { stack: String },

    #[error(
        "the Secret {name} holds no usable SSH private key: {why}; delete it and the operator generates a new key pair (the instance is then replaced)"
    )]
    SshKeySecretUnusable { name: String, why: String },

    #[error("AWS throttled {action}; retrying with backoff")]
    AwsThrottled { action: String },

    #[error("AWS could not be reached or failed for {action}: {detail}; retrying with backoff")]
    AwsUnavailable { action: String, detail: String },

    #[error("AWS denied {action}: {message}; grant {action} to that identity")]
    AccessDenied { action: String, message: String },

    #[error("AWS rejected the credentials {whose} used for {action} ({code}); {remedy}")]
    AwsCredentialsRejected { action: String, code: String, whose: String, remedy: String },

    #[error("AWS refused {action} ({code}): {message}")]
    AwsRequestFailed { action: String, code: String, message: String },

    #[error("AWS refused {action} as invalid ({code}): {message}; {remedy}")]
    AwsRejectedValue { action: String, code: String, message: String, remedy: String },

    #[error(
        "spec.allowedCidrs together admit {admitted} to port 22, more than an allow-list may ({limit}); list only the addresses people connect from"
    )]
    AllowedCidrsTooWide { admitted: String, limit: String },

    #[error(
        "bootstrap credentials Secret {namespace}/{name} does not exist; create it with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials), or fix spec.bootstrap.credentialsSecretRef"
    )]
    BootstrapSecretMissing { namespace: String, name: String },

    #[error("bootstrap credentials Secret {namespace}/{name} has no usable key {key}; {why}")]
    BootstrapSecretInvalid { namespace: String, name: String, key: String, why: String },

    #[error(
        "bootstrap credentials Secret {namespace}/{name} is in a namespace the operator does not read bootstrap Secrets from (it reads {allowed}); put the Secret there and change spec.bootstrap.credentialsSecretRef, or have the operator's administrator add {namespace} to --bootstrap-secret-namespaces (TINYSTACKS_BOOTSTRAP_SECRET_NAMESPACES)"
    )]
    BootstrapSecretNamespaceNotAllowed { namespace: String, name: String, allowed: String },

    #[error("{what}: AWS account {actual}, but spec.accountId is {expected}; {remedy}")]
    AccountMismatch { what: String, expected: String, actual: String, remedy: String },

    #[error("CloudFormation stack {stack} is {status}: {reason}; {remedy}")]
    CloudFormationStackFailed { stack: String, status: String, reason: String, remedy: String },

    #[error(
        "the operator ({principal}) may not assume {role_arn} with this link's external ID ({detail}); the role's trust policy must allow exactly that principal with sts:ExternalId equal to status.externalId, as in the template in ConfigMap {config_map}"
    )]
    AssumeRoleDenied { role_arn: String, principal: String, detail: String, config_map: String },

    #[error(
        "AwsAccountLink {link:?} has no verified role yet (its status names none); the operator retries, and the link's own conditions say what it waits for"
    )]
    AccountLinkNotVerified { link: String },

    #[error(
        "region {region} offers {count} available availability zones ({zones}); a Stack needs three: the operator looks again at the resync period (a zone may be impaired), or use a link or spec.region with three zones"
    )]
    TooFewZones { region: String, count: usize, zones: String },

    #[error("the operator's own AWS identity cannot be used: {detail}")]
    OperatorIdentityUnusable { detail: String },

    #[error("the operator failed on its own, not because of the spec or AWS: {detail}; report this as a bug")]
    OperatorFault { detail: String },

    #[error("waiting for the role {role_arn}: {detail}")]
    WaitingForRole { role_arn: String, detail: String },

    #[error(
        "{what} {name:?} already exists but is not this object's: {why}; remove or rename it, or rename this object"
    )]
    NameTaken { what: String, name: String, why: String },

    #[error(
        "{resource} carries tinystacks.io/owner {owner} but tinystacks.io/owner-uid {found}, not this object's UID {uid}: {detail}"
    )]
    OwnershipTagsDisagree {
        /// What and which, e.g. `VPC vpc-0abc`.
        resource: String,
        owner: String,
        found: String,
        uid: String,
        /// Why it is not taken, and what to do.
        detail: String,
    },

    #[error(
        "the Secret {namespace}/{name} exists and is not {owner}'s ({held_by}), so the operator neither writes nor deletes it; delete or rename that Secret, or have {owner} use another name"
    )]
    SecretConflict { namespace: String, name: String, owner: String, held_by: String },

    #[error(
        "{what} {name} is not this object's: {found}; the operator neither uses, changes nor deletes it: delete it if it is a leftover (e.g. of an object deleted with deletionPolicy Retain), or rename this object"
    )]
    ResourceNotOwned { what: String, name: String, found: String },

    #[error("RDS reports the DB instance {identifier} as {status:?}; it needs a person (see its RDS events)")]
    DbInstanceUnhealthy { identifier: String, status: String },

    #[error(
        "the DB instance {identifier} cannot meet the Database's guarantees in place: {why}; replace it (snapshot, delete, re-create)"
    )]
    DbInstanceNotCompliant { identifier: String, why: String },

    #[error(
        "the Secrets Manager secret {name} holds no usable credentials: {why}; restore its value (JSON with engine, host, port, username, password, dbname, dbInstanceIdentifier): a new password is never generated while the secret exists"
    )]
    SecretUnusable { name: String, why: String },

    #[error(
        "the Stack's KMS key {key_id} is scheduled for deletion by someone else; cancel the deletion (kms:CancelKeyDeletion) and enable the key"
    )]
    KmsKeyPendingDeletion { key_id: String },

    #[error("spec.restoreFromSnapshot: the DB snapshot {snapshot:?} {why}")]
    RestoreSnapshotUnusable { snapshot: String, why: String },
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 403)
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // The operator's own RBAC lacks a rule: a person must grant it; retrying sooner
            // than the resync period only repeats the denial.
            Error::Kube(e) if is_forbidden(e) => ErrorKind::Permission,
            Error::Kube(_) => ErrorKind::Transient,
            Error::AccountLinkNotFound { .. }
            | Error::AccountLinkNotAllowed { .. }
            | Error::StackNotFound { .. }
            | Error::InvalidSpec(_)
            | Error::BootstrapSecretNamespaceNotAllowed { .. }
            | Error::SshNeedsPublicSubnet { .. }
            | Error::AwsRejectedValue { .. }
            | Error::AllowedCidrsTooWide { .. }
            | Error::RestoreSnapshotUnusable { .. } => ErrorKind::User,
            Error::AwsThrottled { .. }
            | Error::AwsUnavailable { .. }
            | Error::AwsRequestFailed { .. }
            | Error::WaitingForRole { .. }
            // The link controller writes the role into the link's status; a Stack is woken when it does.
            | Error::AccountLinkNotVerified { .. }
            // The operator's own fault (an object not read from the API server): no spec edit helps.
            | Error::OwnerUidMissing { .. } => ErrorKind::Transient,
            Error::AccessDenied { .. } | Error::AwsCredentialsRejected { .. } => ErrorKind::Permission,
            Error::BootstrapSecretMissing { .. }
            | Error::BootstrapSecretInvalid { .. }
            | Error::AccountMismatch { .. }
            | Error::CloudFormationStackFailed { .. }
            | Error::AssumeRoleDenied { .. }
            | Error::NameTaken { .. }
            | Error::OwnershipTagsDisagree { .. }
            | Error::SecretConflict { .. }
            | Error::ResourceNotOwned { .. }
            | Error::DbInstanceUnhealthy { .. }
            | Error::DbInstanceNotCompliant { .. }
            | Error::SecretUnusable { .. }
            | Error::KmsKeyPendingDeletion { .. }
            | Error::SshKeySecretUnusable { .. }
            // Neither the object's spec nor a retry soon helps: AWS's zones, the operator's
            // deployment (its identity, its code) are fixed elsewhere; looked at again at the
            // resync period.
            | Error::TooFewZones { .. }
            | Error::OperatorIdentityUnusable { .. }
            | Error::OperatorFault { .. }
            // A link change wakes Stacks at once, but not their Databases and Bastions: they look
            // again at the resync period.
            | Error::AccountLinkNoLongerAllows { .. } => ErrorKind::External,
        }
    }

    /// The condition reason, Event reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(e) if is_forbidden(e) => "KubernetesForbidden",
            Error::Kube(_) => "KubernetesApiError",
            Error::AccountLinkNotFound { .. } => "AccountLinkNotFound",
            Error::AccountLinkNotAllowed { .. } | Error::AccountLinkNoLongerAllows { .. } => "AccountLinkNotAllowed",
            Error::StackNotFound { .. } => "StackNotFound",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::OwnerUidMissing { .. } => "OwnerUidMissing",
            Error::SshNeedsPublicSubnet { .. } => "SshNeedsPublicSubnet",
            Error::SshKeySecretUnusable { .. } => "SshKeySecretUnusable",
            Error::AwsThrottled { .. } => "AwsThrottled",
            Error::AwsUnavailable { .. } => "AwsUnavailable",
            Error::AccessDenied { .. } => "AccessDenied",
            Error::AwsCredentialsRejected { .. } => "AwsCredentialsRejected",
            Error::AwsRequestFailed { .. } => "AwsRequestFailed",
            Error::AwsRejectedValue { .. } => "AwsRejectedValue",
            Error::AllowedCidrsTooWide { .. } => "AllowedCidrsTooWide",
            Error::BootstrapSecretMissing { .. } => "BootstrapSecretMissing",
            Error::BootstrapSecretInvalid { .. } => "BootstrapSecretInvalid",
            Error::BootstrapSecretNamespaceNotAllowed { .. } => "BootstrapSecretNamespaceNotAllowed",
            Error::AccountMismatch { .. } => "AccountMismatch",
            Error::CloudFormationStackFailed { .. } => "CloudFormationStackFailed",
            Error::AssumeRoleDenied { .. } => "AssumeRoleDenied",
            Error::WaitingForRole { .. } => "WaitingForRole",
            Error::AccountLinkNotVerified { .. } => "AccountLinkNotVerified",
            Error::TooFewZones { .. } => "TooFewZones",
            Error::OperatorIdentityUnusable { .. } => "OperatorIdentityUnusable",
            Error::OperatorFault { .. } => "OperatorFault",
            Error::NameTaken { .. } => "NameTaken",
            // The reason the Secrets' ownership checks use too: one word for "not this object's".
            Error::OwnershipTagsDisagree { .. } => "OwnershipConflict",
            Error::SecretConflict { .. } => "SecretConflict",
            Error::ResourceNotOwned { .. } => "OwnershipConflict",
            Error::DbInstanceUnhealthy { .. } => "DbInstanceUnhealthy",
            Error::DbInstanceNotCompliant { .. } => "DbInstanceNotCompliant",
            Error::SecretUnusable { .. } => "SecretUnusable",
            Error::KmsKeyPendingDeletion { .. } => "KmsKeyPendingDeletion",
            Error::RestoreSnapshotUnusable { .. } => "RestoreSnapshotUnusable",
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

    #[test]
    fn a_request_aws_refuses_as_invalid_stalls_and_says_what_to_change() {
        let e = Error::AwsRejectedValue {
            action: "rds:CreateDBInstance".into(),
            code: "InvalidParameterCombination".into(),
            message: "Cannot find version 16.99 for postgres".into(),
            remedy: "set spec.engineVersion to a version RDS offers".into(),
        };
        assert_eq!((e.kind(), e.reason()), (ErrorKind::User, "AwsRejectedValue"));
        assert!(e.to_string().ends_with("for postgres; set spec.engineVersion to a version RDS offers"), "{e}");
        let wide = Error::AllowedCidrsTooWide { admitted: "512 IPv4 addresses".into(), limit: "256".into() };
        assert_eq!((wide.kind(), wide.reason()), (ErrorKind::User, "AllowedCidrsTooWide"));
    }

    #[test]
    fn faults_of_aws_or_the_operator_never_stall_as_a_spec_error() {
        let cases = [
            (Error::AccountLinkNotVerified { link: "l".into() }, ErrorKind::Transient, "AccountLinkNotVerified"),
            (
                Error::TooFewZones { region: "r".into(), count: 2, zones: "a, b".into() },
                ErrorKind::External,
                "TooFewZones",
            ),
            (Error::OperatorIdentityUnusable { detail: "d".into() }, ErrorKind::External, "OperatorIdentityUnusable"),
            (Error::OperatorFault { detail: "d".into() }, ErrorKind::External, "OperatorFault"),
            (Error::OwnerUidMissing { object: "n/o".into() }, ErrorKind::Transient, "OwnerUidMissing"),
        ];
        for (e, kind, reason) in cases {
            assert_eq!((e.kind(), e.reason()), (kind, reason), "{e}");
            assert_ne!(e.kind(), ErrorKind::User, "{e}");
        }
    }

    #[test]
    fn a_denial_by_the_api_server_is_a_permission_error_and_other_api_errors_retry() {
        let status = |code: u16| {
            let status = serde_json::json!({"status": "Failure", "code": code, "reason": "x", "message": "m"});
            Error::Kube(kube::Error::Api(serde_json::from_value(status).expect("a Status")))
        };
        assert_eq!((status(403).kind(), status(403).reason()), (ErrorKind::Permission, "KubernetesForbidden"));
        assert_eq!((status(409).kind(), status(409).reason()), (ErrorKind::Transient, "KubernetesApiError"));
    }
}
