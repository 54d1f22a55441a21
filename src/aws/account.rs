//! The clients of one (account, region), acting as an account link's role: what every kind reads
//! the shared inventory with and makes its calls through. Knows no kind.

use aws_config::SdkConfig;

use super::call::Calls;
use super::errors::Caller;
use super::inventory::{Clients, Recorded, Scope, Snapshot};
use crate::api::AwsAccountLink;
use crate::error::Result;
use crate::runtime::context::Context;

/// The account-wide client bundle of one link in one region.
pub struct Account {
    pub scope: Scope,
    pub ec2: aws_sdk_ec2::Client,
    pub apigateway: aws_sdk_apigatewayv2::Client,
    pub kms: aws_sdk_kms::Client,
    pub tagging: aws_sdk_resourcegroupstagging::Client,
    pub rds: aws_sdk_rds::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub caller: Caller,
}

impl Account {
    /// The clients of `link`'s role in `region`.
    pub async fn connect(ctx: &Context, link: &AwsAccountLink, region: &str) -> Result<Self> {
        let config = ctx.aws.for_link(link, region).await?;
        let role_arn = link.status.as_ref().and_then(|s| s.role_arn.clone()).unwrap_or_default();
        let scope = Scope { account: link.spec.account_id.clone(), region: region.to_string() };
        Ok(Self::with_config(ctx, &config, role_arn, scope))
    }

    /// The clients for `config` (the link's assumed role in `scope`'s region).
    pub fn with_config(ctx: &Context, config: &SdkConfig, role_arn: String, scope: Scope) -> Self {
        Self {
            scope,
            ec2: ctx.aws.client(config),
            apigateway: ctx.aws.client(config),
            kms: ctx.aws.client(config),
            tagging: ctx.aws.client(config),
            rds: ctx.aws.client(config),
            secrets: ctx.aws.client(config),
            ssm: ctx.aws.client(config),
            caller: Caller::LinkRole { role_arn },
        }
    }

    /// The account's resources, from the shared inventory (listed again when older than the
    /// resync period, fed by every mutation's response).
    pub async fn snapshot(&self, ctx: &Context) -> Result<Snapshot> {
        let clients = Clients {
            ec2: &self.ec2,
            apigateway: &self.apigateway,
            kms: &self.kms,
            tagging: &self.tagging,
            rds: &self.rds,
            secrets: &self.secrets,
            calls: self.calls(ctx),
        };
        ctx.inventory.snapshot(&self.scope, &clients, ctx.settings.resync_period).await
    }

    /// Tells the shared inventory what a mutation (or a read of one resource) found.
    pub async fn record(&self, ctx: &Context, recorded: Recorded) {
        ctx.inventory.record(&self.scope, recorded).await;
    }

    /// The calls of a reconcile, as the link's role, through the shared limiter.
    pub fn calls<'a>(&'a self, ctx: &'a Context) -> Calls<'a> {
        Calls { limiter: &ctx.limiter, account: &self.scope.account, caller: &self.caller }
    }
}
