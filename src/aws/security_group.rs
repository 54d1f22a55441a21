//! One security group's lifecycle, shared by the kinds that own one (the Database's, the
//! Bastion's): looked up by its name in the VPC (unique per VPC, so the key that survives a crash
//! between CreateSecurityGroup and anything recorded), created tagged, its ingress authorized and
//! revoked, deleted. Every mutation goes through the shared rate limiter.

use aws_sdk_ec2::types::{Filter, ResourceType};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::errors::{Caller, aws_error};
use super::inventory::{Rule, SecurityGroup, Source, missing, permission_of, security_group_of};
use super::limiter::{Limiter, Service};
use crate::error::{Error, Result};

/// The outcome of a delete that AWS may refuse for now (the resource is still in use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    Done,
    StillInUse,
}

/// The error code of a failed call, if AWS sent one.
pub fn code<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

pub use super::tags::ec2_tags;

/// A rule as people read it, for events and messages.
pub fn describe_rule(rule: &Rule) -> String {
    let ports = match (rule.from, rule.to) {
        (Some(a), Some(b)) if a == b => format!("{}/{a}", rule.protocol),
        (Some(a), Some(b)) => format!("{}/{a}-{b}", rule.protocol),
        _ => "all traffic".to_string(),
    };
    let source = match &rule.source {
        Source::Cidr(c) | Source::CidrV6(c) => c.clone(),
        Source::Group(g) => format!("security group {g}"),
        Source::PrefixList(p) => format!("prefix list {p}"),
    };
    format!("{ports} from {source}")
}

/// The security-group calls of one reconcile, as its link's role.
pub struct SecurityGroups<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub caller: &'a Caller,
    pub account: &'a str,
    pub limiter: &'a Limiter,
}

impl SecurityGroups<'_> {
    fn fail<E>(&self, action: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        aws_error(action, self.caller, e)
    }

    /// The group named `name` in the VPC.
    pub async fn find(&self, vpc_id: &str, name: &str) -> Result<Option<SecurityGroup>> {
        let read = || {
            self.ec2
                .describe_security_groups()
                .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
                .filters(Filter::builder().name("group-name").values(name).build())
                .send()
        };
        let out = self
            .limiter
            .read(self.account, Service::Ec2, read)
            .await
            .map_err(|e| self.fail("ec2:DescribeSecurityGroups", e))?;
        Ok(out.security_groups().iter().filter_map(security_group_of).next())
    }

    pub async fn create(
        &self,
        vpc_id: &str,
        name: &str,
        description: &str,
        tags: &[(String, String)],
    ) -> Result<String> {
        let out = self
            .limiter
            .mutate(self.account, Service::Ec2, || {
                self.ec2
                    .create_security_group()
                    .vpc_id(vpc_id)
                    .group_name(name)
                    .description(description)
                    .tag_specifications(ec2_tags(ResourceType::SecurityGroup, tags))
                    .send()
            })
            .await
            .map_err(|e| self.fail("ec2:CreateSecurityGroup", e))?;
        out.group_id().map(str::to_string).ok_or_else(|| missing("ec2:CreateSecurityGroup", "GroupId"))
    }

    pub async fn authorize_ingress(&self, group_id: &str, rules: &[Rule]) -> Result<()> {
        let result = self
            .limiter
            .mutate(self.account, Service::Ec2, || {
                self.ec2
                    .authorize_security_group_ingress()
                    .group_id(group_id)
                    .set_ip_permissions(Some(rules.iter().map(permission_of).collect()))
                    .send()
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already there (a view that lagged behind): what was wanted holds.
            Err(e) if code(&e) == Some("InvalidPermission.Duplicate") => Ok(()),
            Err(e) => Err(self.fail("ec2:AuthorizeSecurityGroupIngress", e)),
        }
    }

    pub async fn revoke_ingress(&self, group_id: &str, rules: &[Rule]) -> Result<()> {
        let result = self
            .limiter
            .mutate(self.account, Service::Ec2, || {
                self.ec2
                    .revoke_security_group_ingress()
                    .group_id(group_id)
                    .set_ip_permissions(Some(rules.iter().map(permission_of).collect()))
                    .send()
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("InvalidPermission.NotFound") => Ok(()),
            Err(e) => Err(self.fail("ec2:RevokeSecurityGroupIngress", e)),
        }
    }

    pub async fn delete(&self, group_id: &str) -> Result<Deleted> {
        let result = self
            .limiter
            .mutate(self.account, Service::Ec2, || self.ec2.delete_security_group().group_id(group_id).send())
            .await;
        match result {
            Ok(_) => Ok(Deleted::Done),
            Err(e) => match code(&e) {
                Some("InvalidGroup.NotFound") => Ok(Deleted::Done),
                // A network interface (an RDS instance's, a terminated instance's) or another
                // group's rule naming it holds it for a while.
                Some("DependencyViolation") => Ok(Deleted::StillInUse),
                _ => Err(self.fail("ec2:DeleteSecurityGroup", e)),
            },
        }
    }
}
