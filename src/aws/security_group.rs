//! One security group's lifecycle, shared by the kinds that own one (the Database's, the
//! Bastion's): looked up by its name in the VPC (unique per VPC, so the key that survives a crash
//! between CreateSecurityGroup and anything recorded), created tagged, its ingress authorized and
//! revoked, deleted. Every call goes through `Calls`.

use aws_sdk_ec2::types::{Filter, ResourceType};

use super::call::Calls;
use super::inventory::{Rule, SecurityGroup, Source, missing, permission_of, security_group_of};
use super::limiter::Service;
use crate::error::Result;

/// The outcome of a delete that AWS may refuse for now (the resource is still in use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    Done,
    StillInUse,
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
    pub calls: Calls<'a>,
}

impl SecurityGroups<'_> {
    /// The group named `name` in the VPC.
    pub async fn find(&self, vpc_id: &str, name: &str) -> Result<Option<SecurityGroup>> {
        let read = || {
            self.ec2
                .describe_security_groups()
                .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
                .filters(Filter::builder().name("group-name").values(name).build())
                .send()
        };
        let out = self.calls.read(Service::Ec2, "ec2:DescribeSecurityGroups", read).await?;
        Ok(out.security_groups().iter().filter_map(security_group_of).next())
    }

    pub async fn create(
        &self,
        vpc_id: &str,
        name: &str,
        description: &str,
        tags: &[(String, String)],
    ) -> Result<String> {
        let create = || {
            self.ec2
                .create_security_group()
                .vpc_id(vpc_id)
                .group_name(name)
                .description(description)
                .tag_specifications(ec2_tags(ResourceType::SecurityGroup, tags))
                .send()
        };
        let out = self.calls.mutate(Service::Ec2, "ec2:CreateSecurityGroup", &[], create).await?;
        out.and_then(|o| o.group_id().map(str::to_string)).ok_or_else(|| missing("ec2:CreateSecurityGroup", "GroupId"))
    }

    pub async fn authorize_ingress(&self, group_id: &str, rules: &[Rule]) -> Result<()> {
        let authorize = || {
            self.ec2
                .authorize_security_group_ingress()
                .group_id(group_id)
                .set_ip_permissions(Some(rules.iter().map(permission_of).collect()))
                .send()
        };
        // Already there (a view that lagged behind): what was wanted holds.
        let done = &["InvalidPermission.Duplicate"];
        self.calls.mutate(Service::Ec2, "ec2:AuthorizeSecurityGroupIngress", done, authorize).await?;
        Ok(())
    }

    pub async fn revoke_ingress(&self, group_id: &str, rules: &[Rule]) -> Result<()> {
        let revoke = || {
            self.ec2
                .revoke_security_group_ingress()
                .group_id(group_id)
                .set_ip_permissions(Some(rules.iter().map(permission_of).collect()))
                .send()
        };
        let done = &["InvalidPermission.NotFound"];
        self.calls.mutate(Service::Ec2, "ec2:RevokeSecurityGroupIngress", done, revoke).await?;
        Ok(())
    }

    pub async fn delete(&self, group_id: &str) -> Result<Deleted> {
        let delete = || self.ec2.delete_security_group().group_id(group_id).send();
        // A network interface (an RDS instance's, a terminated instance's) or another group's
        // rule naming it holds it for a while.
        let codes = &["InvalidGroup.NotFound", "DependencyViolation"];
        Ok(match self.calls.mutate_or(Service::Ec2, "ec2:DeleteSecurityGroup", codes, delete).await? {
            Err(code) if code == "DependencyViolation" => Deleted::StillInUse,
            Ok(_) | Err(_) => Deleted::Done,
        })
    }
}
