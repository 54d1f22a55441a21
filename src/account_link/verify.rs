//! Verification of a link, made as the link's role: who AWS says the role is, and whether it can
//! see the link's region. Every call here must be allowed by the `Scoped` permission set.

use crate::aws::call::Calls;
use crate::aws::credentials::LinkRole;
use crate::aws::errors::Caller;
use crate::aws::limiter::Service;
use crate::error::Result;
use crate::runtime::context::Context;

/// What AWS reported under the assumed role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub arn: String,
    pub account: String,
    /// Availability zones the role sees in the link's region.
    pub zones: usize,
}

/// `sts:GetCallerIdentity` and `ec2:DescribeAvailabilityZones` as the role. The second one proves
/// that the role's permissions (not only its trust policy) work in the region the Stacks will use,
/// and finds regions that are not enabled in the account before a Stack does. The calls draw from
/// the limiter of `account`, the link's.
pub async fn identity(ctx: &Context, role: &LinkRole, account: &str, region: &str) -> Result<Identity> {
    let config = ctx.aws.role_config(role, region).await?;
    let caller = Caller::LinkRole { role_arn: role.role_arn.clone() };
    let calls = Calls { limiter: &ctx.limiter, account, caller: &caller };
    let sts: aws_sdk_sts::Client = ctx.aws.client(&config);
    let who = calls.read(Service::Sts, "sts:GetCallerIdentity", || sts.get_caller_identity().send()).await?;
    let ec2: aws_sdk_ec2::Client = ctx.aws.client(&config);
    let read = || ec2.describe_availability_zones().send();
    let zones = calls.read(Service::Ec2, "ec2:DescribeAvailabilityZones", read).await?;
    Ok(Identity {
        arn: who.arn().unwrap_or_default().to_string(),
        account: who.account().unwrap_or_default().to_string(),
        zones: zones.availability_zones().len(),
    })
}
