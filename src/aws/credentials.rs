//! Credentials the operator holds besides its own: the assumed-role sessions of each link (cached,
//! refreshed before they expire) and bootstrap credentials read from a Secret. Neither type shows
//! its values in Debug output.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};

use super::errors::Redacted;

/// Sessions are renewed when less than this is left, so that no call starts with credentials that
/// expire while it runs, and a slow AssumeRole still finishes in time.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(10 * 60);

/// How long a session lasts; the template caps the role's sessions at this too.
pub const SESSION_DURATION_SECONDS: i32 = 3600;

/// Which role a link's sessions are for. A change of any part (a new role ARN from the stack, a
/// re-created link with a new UID) means a different session.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LinkRole {
    pub link_name: String,
    pub link_uid: String,
    pub role_arn: String,
    pub external_id: String,
}

impl fmt::Debug for LinkRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkRole").field("link", &self.link_name).field("role_arn", &self.role_arn).finish()
    }
}

impl LinkRole {
    /// The session name AWS records in CloudTrail: the operator and the link, within STS's limits
    /// (64 characters of `[\w+=,.@-]`, which Kubernetes names satisfy).
    pub fn session_name(&self) -> String {
        let mut name = format!("tinystacks-{}", self.link_name);
        name.truncate(64);
        name
    }
}

/// An assumed-role session.
#[derive(Clone)]
pub struct Session {
    pub credentials: Credentials,
    pub expires: SystemTime,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("credentials", &Redacted).field("expires", &self.expires).finish()
    }
}

impl Session {
    /// Whether the session is too close to its end to hand out.
    pub fn needs_refresh(&self, now: SystemTime) -> bool {
        self.expires.duration_since(now).map_or(true, |left| left < REFRESH_MARGIN)
    }
}

/// The sessions of all links, by role.
#[derive(Default)]
pub struct SessionCache {
    sessions: Mutex<HashMap<LinkRole, Session>>,
}

impl SessionCache {
    /// A session that is still good at `now`.
    pub fn fresh(&self, role: &LinkRole, now: SystemTime) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(role).filter(|s| !s.needs_refresh(now)).cloned()
    }

    pub fn store(&self, role: LinkRole, session: Session) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // A link's earlier roles (another ARN or external ID) are of no use any more.
        sessions.retain(|k, _| k.link_uid != role.link_uid || *k == role);
        sessions.insert(role, session);
    }

    /// Drops every session of the link with this UID.
    pub fn forget(&self, link_uid: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| k.link_uid != link_uid);
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Credentials read from a bootstrap Secret: used only to deploy and delete the link's
/// CloudFormation stack.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &Redacted)
            .field("secret_access_key", &Redacted)
            .field("session_token", &self.session_token.as_ref().map(|_| Redacted))
            .finish()
    }
}

impl StaticCredentials {
    pub fn to_credentials(&self) -> Credentials {
        Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
            self.session_token.clone(),
            None,
            "tinystacks-bootstrap-secret",
        )
    }
}

/// The credentials provider of a link's SdkConfig: hands out the cached session and assumes the
/// role again when it runs out, so that clients built once keep working for hours.
pub struct LinkCredentials {
    pub(super) aws: super::Aws,
    pub(super) role: LinkRole,
}

impl fmt::Debug for LinkCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCredentials").field("role", &self.role).finish()
    }
}

impl ProvideCredentials for LinkCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            self.aws
                .session(&self.role)
                .await
                .map(|s| s.credentials)
                .map_err(|e| CredentialsError::provider_error(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(uid: &str, arn: &str) -> LinkRole {
        LinkRole { link_name: "l".into(), link_uid: uid.into(), role_arn: arn.into(), external_id: "x".into() }
    }

    fn session(expires: SystemTime) -> Session {
        Session {
            credentials: Credentials::new("AKIDEXAMPLE", "very-secret", Some("token".into()), None, "t"),
            expires,
        }
    }

    #[test]
    fn sessions_are_refreshed_before_they_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!session(now + Duration::from_secs(3600)).needs_refresh(now));
        assert!(session(now + REFRESH_MARGIN - Duration::from_secs(1)).needs_refresh(now));
        assert!(session(now - Duration::from_secs(1)).needs_refresh(now));
    }

    #[test]
    fn cache_keeps_one_role_per_link_and_forgets_links() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cache = SessionCache::default();
        let later = now + Duration::from_secs(3600);
        cache.store(role("a", "arn:1"), session(later));
        cache.store(role("b", "arn:1"), session(later));
        assert!(cache.fresh(&role("a", "arn:1"), now).is_some());
        cache.store(role("a", "arn:2"), session(later));
        assert!(cache.fresh(&role("a", "arn:1"), now).is_none());
        assert_eq!(cache.len(), 2);
        assert!(cache.fresh(&role("a", "arn:2"), later).is_none(), "expired sessions are not handed out");
        cache.forget("a");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn debug_output_holds_no_credential() {
        let creds = StaticCredentials {
            access_key_id: "AKIAABCDEFGHIJKLMNOP".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG".into(),
            session_token: Some("FwoGZXIvYXdzEJr".into()),
        };
        let shown = format!("{creds:?} {:?}", session(SystemTime::now()));
        for secret in
            ["AKIAABCDEFGHIJKLMNOP", "wJalrXUtnFEMI", "FwoGZXIvYXdzEJr", "very-secret", "AKIDEXAMPLE", "token\""]
        {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
