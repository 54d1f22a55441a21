//! The one place where controllers get AWS clients. Built once at start-up from the SDK's default
//! chain (so `AWS_ENDPOINT_URL`, web identity and instance roles work as usual); every client it
//! builds counts its calls; a link's clients act as the link's role, assumed with its external ID.

pub mod account;
pub mod call;
pub mod credentials;
pub mod errors;
pub mod identity;
pub mod image;
mod interceptor;
pub mod inventory;
pub mod limiter;
pub mod ownership;
mod retry;
pub mod security_group;
pub mod tags;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::identity::IdentityCache;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_types::timeout::TimeoutConfig;
use tokio::sync::OnceCell;

use crate::api::AwsAccountLink;
use crate::error::{Error, Result};
use crate::runtime::metrics::Metrics;
use credentials::{LinkCredentials, LinkRole, SESSION_DURATION_SECONDS, Session, SessionCache, StaticCredentials};
use errors::Caller;
pub use interceptor::CallCounter;

/// How the operator reaches AWS, from the command line.
#[derive(Clone, Debug)]
pub struct AwsOptions {
    /// The principal that link roles trust; derived from `sts:GetCallerIdentity` when absent.
    pub service_role_arn: Option<String>,
    /// After a CloudFormation stack created or changed the role, a denied AssumeRole is taken for
    /// IAM still propagating (it takes seconds) rather than for a wrong trust policy.
    pub role_propagation_grace: Duration,
}

impl Default for AwsOptions {
    fn default() -> Self {
        Self { service_role_arn: None, role_propagation_grace: Duration::from_secs(60) }
    }
}

/// An SDK client this factory can build (with the call counter and the retry guard attached).
pub trait ServiceClient {
    fn build(config: &SdkConfig, counter: CallCounter) -> Self;
}

macro_rules! service_clients {
    ($($krate:ident),*) => {$(
        impl ServiceClient for $krate::Client {
            fn build(config: &SdkConfig, counter: CallCounter) -> Self {
                $krate::Client::from_conf($krate::config::Builder::from(config).interceptor(counter).interceptor(retry::NoBlindRetry).build())
            }
        }
    )*};
}
service_clients!(aws_sdk_sts, aws_sdk_cloudformation, aws_sdk_ec2);
// The Stack's VPC Link, key and key inventory.
service_clients!(aws_sdk_apigatewayv2, aws_sdk_kms, aws_sdk_resourcegroupstagging);
// The Database's instance, subnet group and credentials.
service_clients!(aws_sdk_rds, aws_sdk_secretsmanager);
// The Bastion's instance role and profile, and the public Amazon Linux image parameter.
service_clients!(aws_sdk_iam, aws_sdk_ssm);
// The link's audit trail.
service_clients!(aws_sdk_cloudtrail);

/// The audit trail's bucket. S3 names a bucket in the host name (virtual-hosted style) by
/// default, which needs DNS for `<bucket>.<endpoint>`: AWS's endpoints have it, an endpoint
/// override (`AWS_ENDPOINT_URL`, such as a local S3-compatible server on 127.0.0.1) does not. So
/// the bucket goes in the path only when an endpoint is given, and AWS keeps its default.
impl ServiceClient for aws_sdk_s3::Client {
    fn build(config: &SdkConfig, counter: CallCounter) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .interceptor(counter)
            .interceptor(retry::NoBlindRetry)
            .build();
        aws_sdk_s3::Client::from_conf(s3)
    }
}

/// The AWS client factory held by the reconcile [`crate::runtime::context::Context`].
#[derive(Clone)]
pub struct Aws {
    inner: Arc<Inner>,
}

struct Inner {
    options: AwsOptions,
    counter: CallCounter,
    base: OnceCell<SdkConfig>,
    principal: OnceCell<String>,
    sessions: SessionCache,
}

impl Aws {
    pub fn new(options: AwsOptions, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                counter: CallCounter::new(metrics),
                base: OnceCell::new(),
                principal: OnceCell::new(),
                sessions: SessionCache::default(),
            }),
        }
    }

    pub fn options(&self) -> &AwsOptions {
        &self.inner.options
    }

    /// The operator's own configuration (its credentials from the default chain), loaded once.
    async fn base(&self) -> &SdkConfig {
        self.inner
            .base
            .get_or_init(|| async {
                // Bounded so that a hung endpoint cannot hold a reconcile (and its object) forever.
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .operation_timeout(Duration::from_secs(90))
                    .build();
                aws_config::defaults(BehaviorVersion::latest())
                    .http_client(shared_http_client())
                    .timeout_config(timeouts)
                    .load()
                    .await
            })
            .await
    }

    /// A client of any supported service for `config`, counting its calls.
    pub fn client<C: ServiceClient>(&self, config: &SdkConfig) -> C {
        C::build(config, self.inner.counter.clone())
    }

    /// The operator's own identity in `region`.
    pub async fn operator_config(&self, region: &str) -> SdkConfig {
        self.base().await.to_builder().region(Region::new(region.to_string())).build()
    }

    /// The bootstrap credentials of a link in `region`; nothing caches them beyond this config.
    pub async fn bootstrap_config(&self, credentials: &StaticCredentials, region: &str) -> SdkConfig {
        self.base()
            .await
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(credentials.to_credentials()))
            .identity_cache(IdentityCache::no_cache())
            .region(Region::new(region.to_string()))
            .build()
    }

    /// The principal that link roles must trust: `--service-role-arn`, else the operator's own
    /// identity as `sts:GetCallerIdentity` reports it (asked once, then cached).
    pub async fn operator_principal(&self) -> Result<String> {
        if let Some(arn) = &self.inner.options.service_role_arn {
            return Ok(arn.clone());
        }
        self.inner
            .principal
            .get_or_try_init(|| async {
                let base = self.base().await;
                let region = base.region().map_or_else(|| "us-east-1".to_string(), |r| r.to_string());
                let sts: aws_sdk_sts::Client = self.client(&self.operator_config(&region).await);
                let identity =
                    call::outside_limiter(&Caller::Operator, "sts:GetCallerIdentity", sts.get_caller_identity().send())
                        .await?;
                let arn = identity.arn().unwrap_or_default();
                identity::principal_from_caller_arn(arn).map_err(|detail| Error::OperatorIdentityUnusable { detail })
            })
            .await
            .cloned()
    }

    /// Assumes the link's role now, whatever the cache holds, and caches the new session: the
    /// verification of a link must prove that the trust policy still admits the operator.
    pub async fn assume(&self, role: &LinkRole, region: &str) -> Result<Session> {
        let sts: aws_sdk_sts::Client = self.client(&self.operator_config(region).await);
        let assume = sts
            .assume_role()
            .role_arn(&role.role_arn)
            .role_session_name(role.session_name())
            .external_id(&role.external_id)
            .duration_seconds(SESSION_DURATION_SECONDS)
            .send();
        let out = call::outside_limiter(&Caller::Operator, "sts:AssumeRole", assume).await?;
        let creds = out.credentials().ok_or_else(|| Error::AwsUnavailable {
            action: "sts:AssumeRole".into(),
            detail: "the response held no credentials".into(),
        })?;
        let expires = SystemTime::try_from(*creds.expiration())
            .unwrap_or_else(|_| SystemTime::now() + Duration::from_secs(SESSION_DURATION_SECONDS as u64));
        let session = Session {
            credentials: aws_credential_types::Credentials::new(
                creds.access_key_id(),
                creds.secret_access_key(),
                Some(creds.session_token().to_string()),
                Some(expires),
                "tinystacks-link-role",
            ),
            expires,
        };
        self.inner.sessions.store(role.clone(), session.clone());
        Ok(session)
    }

    /// A session for the role: the cached one while it has time left, else a new one.
    pub async fn session(&self, role: &LinkRole) -> Result<Session> {
        if let Some(session) = self.inner.sessions.fresh(role, SystemTime::now()) {
            return Ok(session);
        }
        let region = self.base().await.region().map_or_else(|| "us-east-1".to_string(), |r| r.to_string());
        self.assume(role, &region).await
    }

    /// Configuration that acts as the link's role in `region`. The role is assumed here if no
    /// session is cached, so that a failure shows up as this call's error, not inside a later one.
    pub async fn role_config(&self, role: &LinkRole, region: &str) -> Result<SdkConfig> {
        self.session(role).await?;
        let provider = LinkCredentials { aws: self.clone(), role: role.clone() };
        Ok(self
            .base()
            .await
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .identity_cache(IdentityCache::no_cache())
            .region(Region::new(region.to_string()))
            .build())
    }

    /// Configuration for a Stack (or anything else) that acts through `link` in `region`. The link
    /// must have been verified: its status names the role and the external ID.
    pub async fn for_link(&self, link: &AwsAccountLink, region: &str) -> Result<SdkConfig> {
        let role = link_role(link)
            .ok_or_else(|| Error::AccountLinkNotVerified { link: link.metadata.name.clone().unwrap_or_default() })?;
        self.role_config(&role, region).await
    }

    /// Forgets the sessions of a deleted link.
    pub fn forget(&self, link_uid: &str) {
        self.inner.sessions.forget(link_uid);
    }

    /// How many role sessions are cached (for tests and diagnostics).
    pub fn cached_sessions(&self) -> usize {
        self.inner.sessions.len()
    }
}

/// The role a verified link's status names.
pub fn link_role(link: &AwsAccountLink) -> Option<LinkRole> {
    let status = link.status.as_ref()?;
    Some(LinkRole {
        link_name: link.metadata.name.clone()?,
        link_uid: link.metadata.uid.clone()?,
        role_arn: status.role_arn.clone()?,
        external_id: status.external_id.clone()?,
    })
}

/// The HTTP client of every AWS client the operator builds, as the SDK's default one is made
/// (hyper with rustls on aws-lc, the proxy from the environment), but made once. Without it, each
/// service client (several per reconcile) made its own: its own connection pool, so no connection
/// was reused from one reconcile to the next, and its own TLS set-up, loading the trusted roots.
fn shared_http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector = ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}
