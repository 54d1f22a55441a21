//! The AWS calls a Bastion makes, as its Stack's account link: EC2 (instance, security group, key
//! pair), IAM (the instance's role and profile) and SSM (the public Amazon Linux image parameter).
//! Lookups answer `None` (or an empty list) for "not there"; every call goes through `Calls`.

use std::collections::BTreeSet;

use aws_config::SdkConfig;
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{Filter, IamInstanceProfileSpecification, InstanceType, ResourceType};

use super::plan::{InstanceStateName, ObservedInstance};
use crate::account_link::template::{IAM_PATH, OWNER_UID_TAG};
use crate::aws::call::Calls;
use crate::aws::errors::Caller;
use crate::aws::image;
use crate::aws::inventory::{missing, parse_state};
use crate::aws::limiter::{Limiter, Service};
pub use crate::aws::security_group::Deleted;
use crate::aws::security_group::{SecurityGroups, ec2_tags};
use crate::aws::tags::Tags;
use crate::error::{Error, Result};

/// The clients of one Bastion's reconcile, acting as its Stack's link in the Stack's region.
pub struct BastionAws<'a> {
    ec2: aws_sdk_ec2::Client,
    iam: aws_sdk_iam::Client,
    ssm: aws_sdk_ssm::Client,
    caller: Caller,
    account: String,
    limiter: &'a Limiter,
}

/// An IAM role or instance profile as IAM reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IamEntity {
    pub arn: String,
    pub tags: Tags,
    /// The roles in an instance profile (empty for a role).
    pub roles: Vec<String>,
}

/// An EC2 key pair of the Bastion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    pub name: String,
    pub tags: Tags,
}

/// Everything RunInstances needs.
pub struct Launch<'a> {
    pub image: &'a str,
    pub instance_type: &'a str,
    pub subnet: &'a str,
    pub security_group: &'a str,
    pub public_ip: bool,
    pub key_name: Option<&'a str>,
    pub profile_name: &'a str,
    pub token: &'a str,
    pub tags: &'a [(String, String)],
}

/// IAM's "not there": a role, a profile or a policy someone else (or an earlier pass) removed.
const NO_SUCH_ENTITY: &[&str] = &["NoSuchEntity"];
/// IAM's "already there": made by an earlier pass whose answer was lost.
const ALREADY_EXISTS: &[&str] = &["EntityAlreadyExists"];
/// What IAM may answer a deletion: gone already, or still held (a role in a profile, a profile
/// on an instance).
const DELETE_ANSWERS: &[&str] = &["NoSuchEntity", "DeleteConflict"];

fn deleted<T>(answer: Result<T, String>) -> Deleted {
    match answer {
        Err(code) if code == "DeleteConflict" => Deleted::StillInUse,
        Ok(_) | Err(_) => Deleted::Done,
    }
}

fn iam_tags(tags: &[(String, String)]) -> Result<Vec<aws_sdk_iam::types::Tag>> {
    tags.iter()
        .map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder().key(k).value(v).build().map_err(|e| Error::AwsUnavailable {
                action: "iam:TagRole".into(),
                detail: format!("a tag could not be built: {e}"),
            })
        })
        .collect()
}

fn iam_tag_map(tags: &[aws_sdk_iam::types::Tag]) -> Tags {
    tags.iter().map(|t| (t.key().to_string(), t.value().to_string())).collect()
}

impl<'a> BastionAws<'a> {
    pub fn new(
        aws: &crate::aws::Aws,
        config: &SdkConfig,
        role_arn: String,
        account: String,
        limiter: &'a Limiter,
    ) -> Self {
        Self {
            ec2: aws.client(config),
            iam: aws.client(config),
            ssm: aws.client(config),
            caller: Caller::LinkRole { role_arn },
            account,
            limiter,
        }
    }

    /// Every call of the reconcile, as the link's role, through the shared limiter.
    fn calls(&self) -> Calls<'_> {
        Calls { limiter: self.limiter, account: &self.account, caller: &self.caller }
    }

    // ----- SSM: the image -----

    /// The image ID the public parameter names today.
    pub async fn latest_image(&self, parameter: &str) -> Result<String> {
        image::latest_image(&self.ssm, self.calls(), parameter).await
    }

    // ----- EC2: instances -----

    /// Every instance tagged with the Bastion's UID, in any state (terminated ones included, while
    /// EC2 still lists them).
    pub async fn instances(&self, uid: &str) -> Result<Vec<ObservedInstance>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let read = || {
                self.ec2
                    .describe_instances()
                    .filters(Filter::builder().name(format!("tag:{OWNER_UID_TAG}")).values(uid).build())
                    .set_next_token(token)
                    .send()
            };
            let page = self.calls().read(Service::Ec2, "ec2:DescribeInstances", read).await?;
            for r in page.reservations() {
                for i in r.instances() {
                    let Some(id) = i.instance_id() else { continue };
                    out.push(ObservedInstance {
                        id: id.to_string(),
                        state: parse_state(
                            i.state().and_then(|s| s.name()).map_or("", |n| n.as_str()),
                            InstanceStateName::values(),
                        ),
                        subnet_id: i.subnet_id().map(str::to_string),
                        public_ip: i.public_ip_address().filter(|ip| !ip.is_empty()).map(str::to_string),
                        private_ip: i.private_ip_address().map(str::to_string),
                        key_name: i.key_name().filter(|k| !k.is_empty()).map(str::to_string),
                        instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
                        image_id: i.image_id().map(str::to_string),
                        // The instance's groups and its interfaces' (the same in EC2; some
                        // emulators fill only the latter for instances launched with an interface).
                        security_groups: i
                            .security_groups()
                            .iter()
                            .chain(i.network_interfaces().iter().flat_map(|n| n.groups()))
                            .filter_map(|g| g.group_id().map(str::to_string))
                            .collect(),
                        profile_arn: i.iam_instance_profile().and_then(|p| p.arn()).map(str::to_string),
                        launch_time: i.launch_time().map(|t| t.secs()),
                    });
                }
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Launches the instance; returns its ID. The client token makes a retry after a crash answer
    /// with the instance the first call launched.
    pub async fn run_instance(&self, l: &Launch<'_>) -> Result<String> {
        let interface = image::primary_interface(l.subnet, l.security_group, l.public_ip);
        let metadata = image::imds_v2_only();
        let run = || {
            self.ec2
                .run_instances()
                .image_id(l.image)
                .instance_type(InstanceType::from(l.instance_type))
                .min_count(1)
                .max_count(1)
                .client_token(l.token)
                .set_key_name(l.key_name.map(str::to_string))
                .iam_instance_profile(IamInstanceProfileSpecification::builder().name(l.profile_name).build())
                .network_interfaces(interface)
                .metadata_options(metadata)
                .tag_specifications(ec2_tags(ResourceType::Instance, l.tags))
                .tag_specifications(ec2_tags(ResourceType::Volume, l.tags))
                // The `Scoped` policy lets RunInstances create only resources tagged as ours.
                .tag_specifications(ec2_tags(ResourceType::NetworkInterface, l.tags))
                .send()
        };
        let out = self.calls().mutate(Service::Ec2, "ec2:RunInstances", &[], run).await.map_err(|e| match e {
                // EC2 answers an unknown type `InvalidParameterValue`: "Invalid value 'x' for InstanceType".
                Error::AwsRejectedValue { action, code, message, remedy } => {
                    let remedy = if message.contains("InstanceType") {
                        "set spec.instanceType to a type EC2 offers in this region (aws ec2 describe-instance-type-offerings)".into()
                    } else {
                        remedy
                    };
                    Error::AwsRejectedValue { action, code, message, remedy }
                }
                other => other,
        })?;
        out.as_ref()
            .and_then(|o| o.instances().first())
            .and_then(|i| i.instance_id())
            .map(str::to_string)
            .ok_or_else(|| missing("ec2:RunInstances", "InstanceId"))
    }

    pub async fn terminate(&self, ids: &[String]) -> Result<()> {
        let terminate = || self.ec2.terminate_instances().set_instance_ids(Some(ids.to_vec())).send();
        let done = &["InvalidInstanceID.NotFound"];
        self.calls().mutate(Service::Ec2, "ec2:TerminateInstances", done, terminate).await?;
        Ok(())
    }

    /// Its security group's calls.
    pub fn groups(&self) -> SecurityGroups<'_> {
        SecurityGroups { ec2: &self.ec2, calls: self.calls() }
    }

    // ----- EC2: key pairs -----

    /// The key pairs whose name starts with `prefix` (the Bastion's base name, which ends in its UID).
    pub async fn key_pairs(&self, prefix: &str) -> Result<Vec<KeyPair>> {
        let read = || self.ec2.describe_key_pairs().send();
        let out = self.calls().read(Service::Ec2, "ec2:DescribeKeyPairs", read).await?;
        Ok(out
            .key_pairs()
            .iter()
            .filter_map(|k| {
                let name = k.key_name()?;
                name.starts_with(prefix).then(|| KeyPair {
                    name: name.to_string(),
                    tags: k
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                        .collect(),
                })
            })
            .collect())
    }

    pub async fn import_key_pair(&self, name: &str, public_key: &str, tags: &[(String, String)]) -> Result<()> {
        let import = || {
            self.ec2
                .import_key_pair()
                .key_name(name)
                .public_key_material(Blob::new(public_key.as_bytes()))
                .tag_specifications(ec2_tags(ResourceType::KeyPair, tags))
                .send()
        };
        // The name holds the key's hash: an existing pair of that name holds this very key.
        let done = &["InvalidKeyPair.Duplicate"];
        self.calls().mutate(Service::Ec2, "ec2:ImportKeyPair", done, import).await?;
        Ok(())
    }

    pub async fn delete_key_pair(&self, name: &str) -> Result<()> {
        let delete = || self.ec2.delete_key_pair().key_name(name).send();
        self.calls().mutate(Service::Ec2, "ec2:DeleteKeyPair", &["InvalidKeyPair.NotFound"], delete).await?;
        Ok(())
    }

    // ----- IAM: the role -----

    pub async fn role(&self, name: &str) -> Result<Option<IamEntity>> {
        let read = || self.iam.get_role().role_name(name).send();
        let found = self.calls().find(Service::Iam, "iam:GetRole", NO_SUCH_ENTITY, read).await?;
        Ok(found.and_then(|out| {
            out.role().map(|r| IamEntity { arn: r.arn().to_string(), tags: iam_tag_map(r.tags()), roles: Vec::new() })
        }))
    }

    /// Creates the role under the operator's IAM path, trusted by EC2 only, with the link's
    /// permissions boundary when it has one (`Scoped`).
    pub async fn create_role(
        &self,
        name: &str,
        description: &str,
        boundary: Option<&str>,
        tags: &[(String, String)],
    ) -> Result<()> {
        let tags = iam_tags(tags)?;
        let trust = super::plan::trust_policy();
        let create = || {
            self.iam
                .create_role()
                .role_name(name)
                .path(IAM_PATH)
                .description(description)
                .assume_role_policy_document(trust)
                .set_permissions_boundary(boundary.map(str::to_string))
                .set_tags(Some(tags))
                .send()
        };
        self.calls().mutate(Service::Iam, "iam:CreateRole", ALREADY_EXISTS, create).await?;
        Ok(())
    }

    /// The names of the role's inline policies.
    pub async fn role_policies(&self, role: &str) -> Result<BTreeSet<String>> {
        let read = || self.iam.list_role_policies().role_name(role).send();
        let found = self.calls().find(Service::Iam, "iam:ListRolePolicies", NO_SUCH_ENTITY, read).await?;
        Ok(found.map(|out| out.policy_names().iter().cloned().collect()).unwrap_or_default())
    }

    /// The ARNs of the managed policies attached to the role.
    pub async fn attached_policies(&self, role: &str) -> Result<BTreeSet<String>> {
        let read = || self.iam.list_attached_role_policies().role_name(role).send();
        let found = self.calls().find(Service::Iam, "iam:ListAttachedRolePolicies", NO_SUCH_ENTITY, read).await?;
        Ok(found
            .map(|out| out.attached_policies().iter().filter_map(|p| p.policy_arn().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    pub async fn put_role_policy(&self, role: &str, policy: &str, document: &str) -> Result<()> {
        let put = || self.iam.put_role_policy().role_name(role).policy_name(policy).policy_document(document).send();
        self.calls().mutate(Service::Iam, "iam:PutRolePolicy", &[], put).await?;
        Ok(())
    }

    pub async fn delete_role_policy(&self, role: &str, policy: &str) -> Result<()> {
        let delete = || self.iam.delete_role_policy().role_name(role).policy_name(policy).send();
        self.calls().mutate(Service::Iam, "iam:DeleteRolePolicy", NO_SUCH_ENTITY, delete).await?;
        Ok(())
    }

    pub async fn detach_role_policy(&self, role: &str, arn: &str) -> Result<()> {
        let detach = || self.iam.detach_role_policy().role_name(role).policy_arn(arn).send();
        self.calls().mutate(Service::Iam, "iam:DetachRolePolicy", NO_SUCH_ENTITY, detach).await?;
        Ok(())
    }

    pub async fn delete_role(&self, role: &str) -> Result<Deleted> {
        let delete = || self.iam.delete_role().role_name(role).send();
        let answer = self.calls().mutate_or(Service::Iam, "iam:DeleteRole", DELETE_ANSWERS, delete).await?;
        Ok(deleted(answer))
    }

    // ----- IAM: the instance profile -----

    pub async fn instance_profile(&self, name: &str) -> Result<Option<IamEntity>> {
        let read = || self.iam.get_instance_profile().instance_profile_name(name).send();
        let found = self.calls().find(Service::Iam, "iam:GetInstanceProfile", NO_SUCH_ENTITY, read).await?;
        Ok(found.and_then(|out| {
            out.instance_profile().map(|p| IamEntity {
                arn: p.arn().to_string(),
                tags: iam_tag_map(p.tags()),
                roles: p.roles().iter().map(|r| r.role_name().to_string()).collect(),
            })
        }))
    }

    pub async fn create_instance_profile(&self, name: &str, tags: &[(String, String)]) -> Result<()> {
        let tags = iam_tags(tags)?;
        let create = || {
            self.iam.create_instance_profile().instance_profile_name(name).path(IAM_PATH).set_tags(Some(tags)).send()
        };
        self.calls().mutate(Service::Iam, "iam:CreateInstanceProfile", ALREADY_EXISTS, create).await?;
        Ok(())
    }

    pub async fn add_role_to_instance_profile(&self, profile: &str, role: &str) -> Result<()> {
        let add = || self.iam.add_role_to_instance_profile().instance_profile_name(profile).role_name(role).send();
        // A profile holds one role: the earlier call (before a crash) added it.
        self.calls().mutate(Service::Iam, "iam:AddRoleToInstanceProfile", &["LimitExceeded"], add).await?;
        Ok(())
    }

    pub async fn remove_role_from_instance_profile(&self, profile: &str, role: &str) -> Result<()> {
        let remove =
            || self.iam.remove_role_from_instance_profile().instance_profile_name(profile).role_name(role).send();
        self.calls().mutate(Service::Iam, "iam:RemoveRoleFromInstanceProfile", NO_SUCH_ENTITY, remove).await?;
        Ok(())
    }

    pub async fn delete_instance_profile(&self, profile: &str) -> Result<Deleted> {
        let delete = || self.iam.delete_instance_profile().instance_profile_name(profile).send();
        let answer = self.calls().mutate_or(Service::Iam, "iam:DeleteInstanceProfile", DELETE_ANSWERS, delete).await?;
        Ok(deleted(answer))
    }
}
