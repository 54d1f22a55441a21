//! Verification of a link, made as the link's role: who AWS says the role is, and whether it can
//! see the link's region. Every call here must be allowed by the `Scoped` permission set.

use crate::aws::credentials::LinkRole;
use crate::aws::errors::{Caller, aws_error};
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
/// and finds regions that are not enabled in the account before a Stack does.
pub async fn identity(ctx: &Context, role: &LinkRole, region: &str) -> Result<Identity> {
    let config = ctx.aws.role_config(role, region).await?;
    let caller = Caller::LinkRole { role_arn: role.role_arn.clone() };
    let sts: aws_sdk_sts::Client = ctx.aws.client(&config);
    let who = sts.get_caller_identity().send().await.map_err(|e| aws_error("sts:GetCallerIdentity", &caller, e))?;
    let ec2: aws_sdk_ec2::Client = ctx.aws.client(&config);
    let zones = ec2
        .describe_availability_zones()
        .send()
        .await
        .map_err(|e| aws_error("ec2:DescribeAvailabilityZones", &caller, e))?;
    Ok(Identity {
        arn: who.arn().unwrap_or_default().to_string(),
        account: who.account().unwrap_or_default().to_string(),
        zones: zones.availability_zones().len(),
    })
}
