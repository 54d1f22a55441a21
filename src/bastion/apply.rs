//! Reading the Bastion's AWS side into the plan's [`Observed`] view, and making one planned change:
//! one AWS call through `BastionAws`, its Event and log line, and its effect recorded in the view
//! so that the next plan of the same pass starts from it without reading AWS again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::aws::{BastionAws, Deleted, Launch};
use super::keys::{self, GeneratedKey};
use super::plan::{
    self, Arch, Change, InstanceStateName, Names, Observed, ObservedInstance, ObservedKeyPair, ObservedProfile,
    ObservedRole, Placement, Termination,
};
use crate::api::{Bastion, BastionAccess};
use crate::aws::inventory::new_security_group;
use crate::aws::ownership::owner_uid;
use crate::error::{Error, Result};
use crate::runtime::context::Context;
use crate::runtime::owned_secrets::{Created, OwnedSecrets};
use crate::runtime::reconciler;

/// What a change left to do.
pub enum Applied {
    /// Its effect is in the view: plan again in this pass.
    Continue,
    /// AWS is working (or must be read again): look again after the delay.
    Later { reason: &'static str, message: String, after: Duration },
}

/// Reads everything the plan looks at. `vpc`: where the group is looked for (none known, none
/// read). `full`: the role's and profile's details too (not needed while the Stack is not Ready).
pub async fn observe(
    aws: &BastionAws<'_>,
    bastion: &Bastion,
    ctx: &Context,
    names: &Names,
    vpc: Option<&str>,
    full: bool,
) -> Result<Observed> {
    let uid = owner_uid(bastion)?;
    let mut observed = Observed { instances: aws.instances(&uid).await?, ..Default::default() };
    if let Some(vpc) = vpc {
        observed.group = aws.groups().find(vpc, &names.base).await?;
    }
    if !full {
        return Ok(observed);
    }
    let base = &names.base;
    let deleting = bastion.meta().deletion_timestamp.is_some();
    if let Some(role) = aws.role(base).await? {
        let ours = plan::ours(&role.tags, &uid);
        let policies = if ours { aws.role_policies(base).await? } else { Default::default() };
        // Attached policies matter only to deletion (the operator attaches none): one call fewer
        // per resync.
        let attached = if ours && deleting { aws.attached_policies(base).await? } else { Default::default() };
        observed.role = Some(ObservedRole { tags: role.tags, policies, attached });
    }
    observed.profile =
        aws.instance_profile(base).await?.map(|p| ObservedProfile { arn: p.arn, tags: p.tags, roles: p.roles });
    observed.key_pairs =
        aws.key_pairs(base).await?.into_iter().map(|k| ObservedKeyPair { name: k.name, tags: k.tags }).collect();
    // Deletion needs no key (and a Secret of that name that is not the Bastion's must not block it).
    if bastion.spec.access == BastionAccess::Ssh && bastion.spec.ssh_public_key.is_none() && !deleting {
        let secrets = OwnedSecrets::new(ctx.client.clone(), bastion);
        if let Some(secret) = secrets.get(&names.key_secret).await? {
            observed.generated_key = Some(public_key_of(&names.key_secret, &secret)?);
        }
    }
    Ok(observed)
}

/// The public half of the private key a key Secret holds.
fn public_key_of(name: &str, secret: &Secret) -> Result<String> {
    let private = secret.data.as_ref().and_then(|d| d.get(keys::PRIVATE_KEY)).map(|v| v.0.as_slice());
    let private = private.ok_or_else(|| Error::SshKeySecretUnusable {
        name: name.to_string(),
        why: format!("it has no key {}", keys::PRIVATE_KEY),
    })?;
    keys::public_key_of(private).map_err(|why| Error::SshKeySecretUnusable { name: name.to_string(), why })
}

/// Makes planned changes for one Bastion.
pub struct Applier<'a> {
    pub bastion: &'a Bastion,
    pub ctx: &'a Context,
    pub aws: BastionAws<'a>,
    pub names: Names,
    pub uid: String,
    pub tags: Vec<(String, String)>,
    /// The permissions boundary for the role (`Scoped` links).
    pub boundary: Option<String>,
    /// Where a launched instance goes (none during deletion).
    pub placement: Option<Placement>,
    /// Whether the spec changed since the status was written: a difference is then the spec's
    /// doing, not drift (the Events say which).
    pub spec_changed: bool,
    /// The instance the status names.
    pub known_instance: Option<String>,
    pub observed: Observed,
}

impl Applier<'_> {
    pub async fn event(&self, type_: EventType, reason: &str, note: String) {
        log_change(self.bastion, reason, &note);
        self.ctx.event(&self.bastion.object_ref(&()), type_, reason, note).await;
    }

    pub async fn annotate(&self, key: &str, value: Option<&str>) -> Result<()> {
        reconciler::annotate(self.bastion, self.ctx, json!({key: value})).await
    }

    fn group_id(&self) -> Result<String> {
        self.observed.group.as_ref().map(|g| g.id.clone()).ok_or_else(|| Error::AwsUnavailable {
            action: "ec2:DescribeSecurityGroups".into(),
            detail: "the bastion's security group is not known yet".into(),
        })
    }

    /// Makes one change.
    pub async fn apply(&mut self, change: &Change) -> Result<Applied> {
        let base = self.names.base.clone();
        match change {
            Change::Terminate { ids, reason } => return self.terminate(ids, reason).await,
            Change::CreateRole => {
                let description = format!("Bastion {}: Session Manager agent only", self.names.display);
                self.aws.create_role(&base, &description, self.boundary.as_deref(), &self.tags).await?;
                self.event(EventType::Normal, "CreatedRole", format!("created IAM role {base}")).await;
                let tags = self.tags.iter().cloned().collect();
                self.observed.role = Some(ObservedRole { tags, ..Default::default() });
            }
            Change::PutRolePolicy => {
                self.aws.put_role_policy(&base, plan::ROLE_POLICY_NAME, &plan::role_policy()).await?;
                let note = format!("allowed the Session Manager agent's calls to IAM role {base}");
                self.event(EventType::Normal, "PutRolePolicy", note).await;
                if let Some(role) = self.observed.role.as_mut() {
                    role.policies.insert(plan::ROLE_POLICY_NAME.into());
                }
            }
            Change::CreateInstanceProfile => {
                self.aws.create_instance_profile(&base, &self.tags).await?;
                let note = format!("created instance profile {base}");
                self.event(EventType::Normal, "CreatedInstanceProfile", note).await;
                // Read back for its ARN; IAM may not show it yet.
                let Some(p) = self.aws.instance_profile(&base).await? else {
                    let message = format!("created instance profile {base}");
                    return Ok(Applied::Later { reason: "CreatingInstanceProfile", message, after: Duration::ZERO });
                };
                self.observed.profile = Some(ObservedProfile { arn: p.arn, tags: p.tags, roles: p.roles });
            }
            Change::AddRoleToInstanceProfile => {
                self.aws.add_role_to_instance_profile(&base, &base).await?;
                if let Some(p) = self.observed.profile.as_mut() {
                    p.roles.push(base);
                }
            }
            Change::CreateSecurityGroup => self.create_group().await?,
            Change::RevokeIngress(rules) => {
                let group = self.group_id()?;
                self.aws.groups().revoke_ingress(&group, rules).await?;
                let what: Vec<String> = rules.iter().map(plan::describe_rule).collect();
                let note = format!("revoked ingress on the bastion's security group {group}: {}", what.join(", "));
                if self.spec_changed {
                    self.event(EventType::Normal, "RevokedSecurityGroupRule", note).await;
                } else {
                    self.event(EventType::Warning, "DriftRepaired", note).await;
                }
                if let Some(g) = self.observed.group.as_mut() {
                    g.ingress.retain(|r| !rules.contains(r));
                }
            }
            Change::AuthorizeIngress(rules) => {
                let group = self.group_id()?;
                self.aws.groups().authorize_ingress(&group, rules).await?;
                let what: Vec<String> = rules.iter().map(plan::describe_rule).collect();
                self.event(
                    EventType::Normal,
                    "AuthorizedSecurityGroupRule",
                    format!("allowed on {group}: {}", what.join(", ")),
                )
                .await;
                if let Some(g) = self.observed.group.as_mut() {
                    g.ingress.extend(rules.iter().cloned());
                }
            }
            Change::GenerateKey => self.observed.generated_key = Some(self.generate_key().await?),
            Change::ImportKeyPair { name, public_key } => {
                self.aws.import_key_pair(name, public_key, &self.tags).await?;
                let note = format!("imported the public key as key pair {name}");
                self.event(EventType::Normal, "ImportedKeyPair", note).await;
                let tags = self.tags.iter().cloned().collect();
                self.observed.key_pairs.push(ObservedKeyPair { name: name.clone(), tags });
            }
            Change::Launch { key_name } => return self.launch(key_name.as_deref()).await,
            Change::DeleteKeyPair(name) => {
                self.aws.delete_key_pair(name).await?;
                let deleting = self.bastion.meta().deletion_timestamp.is_some();
                let note = if deleting {
                    format!("deleted key pair {name}")
                } else {
                    format!("deleted key pair {name} (no longer used)")
                };
                self.event(EventType::Normal, "DeletedKeyPair", note).await;
                self.observed.key_pairs.retain(|k| &k.name != name);
            }
            _ => return self.apply_deletion(change).await,
        }
        Ok(Applied::Continue)
    }

    async fn create_group(&mut self) -> Result<()> {
        let vpc = self.placement.as_ref().map(|p| p.vpc_id.clone()).unwrap_or_default();
        let description = match self.bastion.spec.access {
            BastionAccess::Ssm => format!("Bastion {}: no inbound traffic (Session Manager)", self.names.display),
            BastionAccess::Ssh => format!("Bastion {}: SSH from allowedCidrs only", self.names.display),
        };
        let id = self.aws.groups().create(&vpc, &self.names.base, &description, &self.tags).await?;
        self.event(EventType::Normal, "CreatedSecurityGroup", format!("created security group {id}")).await;
        let tags = self.tags.iter().cloned().collect();
        self.observed.group = Some(new_security_group(&id, &vpc, &self.names.base, tags));
        Ok(())
    }

    async fn terminate(&mut self, ids: &[String], reason: &Termination) -> Result<Applied> {
        self.aws.terminate(ids).await?;
        let list = ids.join(", ");
        let (type_, event, note) = match reason {
            Termination::Expired(at) => {
                let ttl = self.bastion.spec.ttl.clone().unwrap_or_default();
                let waiting = if self.placement.is_none() { " (the Stack is not Ready)" } else { "" };
                let note = format!("the ttl of {ttl} ended at {at}: terminated instance {list}{waiting}");
                (EventType::Normal, "TerminatedInstance", note)
            }
            Termination::Duplicate => {
                (EventType::Warning, "DriftRepaired", format!("terminated extra instances {list}"))
            }
            Termination::Replace(why) => {
                let note = format!("terminated instance {list} to replace it: {why}");
                // Without a spec change the instance drifted (stopped, moved, regrouped by hand):
                // a repair, named as every kind names one.
                if self.spec_changed {
                    (EventType::Normal, "ReplacingInstance", note)
                } else {
                    (EventType::Warning, "DriftRepaired", note)
                }
            }
            Termination::Deleting => (EventType::Normal, "TerminatingInstance", format!("terminating instance {list}")),
        };
        self.event(type_, event, note).await;
        for i in self.observed.instances.iter_mut().filter(|i| ids.contains(&i.id)) {
            i.state = InstanceStateName::ShuttingDown;
        }
        if matches!(reason, Termination::Replace(_)) {
            self.known_instance = None;
        }
        if *reason == Termination::Deleting {
            let message = format!("terminating {list}");
            return Ok(Applied::Later { reason: "TerminatingInstance", message, after: poll(self.ctx) });
        }
        Ok(Applied::Continue)
    }

    /// Writes a new key to the Bastion's key Secret (create, never overwrite: a Secret of this
    /// Bastion's that appeared meanwhile holds the key to keep); returns its public half.
    async fn generate_key(&self) -> Result<String> {
        let name = &self.names.key_secret;
        let secrets = OwnedSecrets::new(self.ctx.client.clone(), self.bastion);
        let comment = format!("bastion {}", self.names.display);
        let key =
            GeneratedKey::generate(&comment).map_err(|why| Error::SshKeySecretUnusable { name: name.clone(), why })?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([("tinystacks.io/bastion".to_string(), self.bastion.name_any())])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/ssh-auth".into()),
            data: Some(BTreeMap::from([
                (keys::PRIVATE_KEY.to_string(), ByteString(key.private_bytes())),
                (keys::PUBLIC_KEY.to_string(), ByteString(key.public_openssh.clone().into_bytes())),
            ])),
            ..Default::default()
        };
        if let Created::Existed(existing) = secrets.create(secret).await? {
            return public_key_of(name, &existing);
        }
        let note = format!("generated an ed25519 key pair; the private key is in the Secret {name}");
        self.event(EventType::Normal, "GeneratedSshKey", note).await;
        Ok(key.public_openssh)
    }

    /// Launches the instance into the planned subnet with the pinned image.
    async fn launch(&mut self, key_name: Option<&str>) -> Result<Applied> {
        let spec = &self.bastion.spec;
        let placement = self.placement.clone().ok_or_else(|| Error::AwsUnavailable {
            action: "ec2:RunInstances".into(),
            detail: "no placement for the instance".into(),
        })?;
        let arch = Arch::of(&spec.instance_type);
        let pinned = self.bastion.annotations().get(plan::IMAGE_ANNOTATION).map(String::as_str);
        // The image is pinned in an annotation before the launch, so that a crash in between
        // launches the same one.
        let image = match plan::pinned_image(pinned, arch) {
            Some(image) => image,
            None => {
                let parameter = arch.image_parameter();
                let image = self.aws.latest_image(&parameter).await?;
                self.annotate(plan::IMAGE_ANNOTATION, Some(&plan::image_annotation(arch, &image))).await?;
                self.event(EventType::Normal, "ChoseImage", format!("chose image {image} ({parameter})")).await;
                image
            }
        };
        let instances = &self.observed.instances;
        let mut previous: BTreeSet<String> = instances.iter().filter(|i| i.is_gone()).map(|i| i.id.clone()).collect();
        let known = self.bastion.status.as_ref().and_then(|s| s.instance_id.clone());
        previous.extend(known.clone());
        let token = plan::client_token(&self.uid, &previous);
        if let Some(old) = &known
            && instances.iter().any(|i| &i.id == old && i.is_gone())
            && !self.spec_changed
            && self.known_instance.is_some()
        {
            let note = format!("instance {old} was terminated outside the operator; launching a replacement");
            self.event(EventType::Warning, "InstanceReplaced", note).await;
        }
        let group = self.group_id()?;
        let launch = Launch {
            image: &image,
            instance_type: &spec.instance_type,
            subnet: &placement.subnet_id,
            security_group: &group,
            public_ip: placement.public_ip,
            key_name,
            profile_name: &self.names.base,
            token: &token,
            tags: &self.tags,
        };
        let id = self.aws.run_instance(&launch).await?;
        let where_ = if placement.public_ip { "with a public IP" } else { "without a public IP" };
        let note = format!(
            "launched instance {id} ({}, {image}) in subnet {} ({:?}, {where_})",
            spec.instance_type, placement.subnet_id, placement.tier
        );
        self.event(EventType::Normal, "LaunchedInstance", note).await;
        self.known_instance = Some(id.clone());
        self.observed.instances.push(ObservedInstance::launched(id.clone()));
        Ok(Applied::Later {
            reason: "InstancePending",
            message: format!("launched instance {id}"),
            after: poll(self.ctx),
        })
    }

    /// The changes only deletion makes; each is looked at again in the next pass.
    async fn apply_deletion(&mut self, change: &Change) -> Result<Applied> {
        let base = self.names.base.clone();
        let done = |reason: &'static str, message: String| Applied::Later { reason, message, after: Duration::ZERO };
        let in_use = |reason: &'static str, message: String, after| Applied::Later { reason, message, after };
        Ok(match change {
            Change::DeleteSecurityGroup(group) => match self.aws.groups().delete(group).await? {
                Deleted::Done => {
                    let note = format!("deleted security group {group}");
                    self.event(EventType::Normal, "DeletedSecurityGroup", note.clone()).await;
                    done("DeletingSecurityGroup", note)
                }
                Deleted::StillInUse => {
                    let message = format!(
                        "security group {group} is still in use (the terminated instance's interface, or a Database's rule being withdrawn)"
                    );
                    in_use("DeletingSecurityGroup", message, self.backoff())
                }
            },
            Change::RemoveRoleFromInstanceProfile(role) => {
                self.aws.remove_role_from_instance_profile(&base, role).await?;
                done("DeletingInstanceProfile", format!("removed role {role} from {base}"))
            }
            Change::DeleteInstanceProfile => match self.aws.delete_instance_profile(&base).await? {
                Deleted::Done => {
                    let note = format!("deleted instance profile {base}");
                    self.event(EventType::Normal, "DeletedInstanceProfile", note.clone()).await;
                    done("DeletingInstanceProfile", note)
                }
                Deleted::StillInUse => {
                    in_use("DeletingInstanceProfile", format!("instance profile {base} is in use"), self.backoff())
                }
            },
            Change::DeleteRolePolicy(policy) => {
                self.aws.delete_role_policy(&base, policy).await?;
                done("DeletingRole", format!("deleted policy {policy} of role {base}"))
            }
            Change::DetachRolePolicy(arn) => {
                self.aws.detach_role_policy(&base, arn).await?;
                done("DeletingRole", format!("detached {arn} from role {base}"))
            }
            Change::DeleteRole => match self.aws.delete_role(&base).await? {
                Deleted::Done => {
                    self.event(EventType::Normal, "DeletedRole", format!("deleted IAM role {base}")).await;
                    done("DeletingRole", format!("deleted IAM role {base}"))
                }
                Deleted::StillInUse => in_use("DeletingRole", format!("IAM role {base} is in use"), self.backoff()),
            },
            other => {
                return Err(Error::AwsUnavailable {
                    action: "plan".into(),
                    detail: format!("{other:?} is not a deletion"),
                });
            }
        })
    }

    /// How long to wait for AWS to let go of something: a quarter of the time deletion has taken
    /// so far, between 2 s and the maximum backoff, so a long wait (a Database slow to withdraw its
    /// rule) polls less and less.
    pub fn backoff(&self) -> Duration {
        let since = self.bastion.meta().deletion_timestamp.as_ref();
        let since = since.map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0));
        let elapsed = since.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default();
        (elapsed / 4).clamp(Duration::from_secs(2), self.ctx.settings.max_backoff.max(Duration::from_secs(2)))
    }
}

/// How soon to look again while EC2 is working.
pub fn poll(ctx: &Context) -> Duration {
    ctx.settings.resync_period.min(ctx.settings.aws_poll)
}

/// Every change the Bastion's reconcile or cleanup makes (each has its Event) is logged at info,
/// as the Stack's AWS mutations are.
pub fn log_change(bastion: &Bastion, reason: &str, note: &str) {
    let (namespace, name) = (bastion.namespace().unwrap_or_default(), bastion.name_any());
    info!(kind = "Bastion", %namespace, %name, reason, %note, "change made");
}
