//! The link's reconcile steps, one mutation per pass: settle the external ID, render the template
//! into its ConfigMap, deploy the CloudFormation stack (`CloudFormation` mode) or wait for the
//! role (`Manual`), then assume the role and check whose it is. Deletion waits until no Stack uses
//! the link, then removes the stack unless the policy retains it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use tracing::info;

use super::audit;
use super::cloudformation::{Bootstrap, ObservedStack};
use super::plan::{self, StackPhase};
use super::template::{self, MANAGED_BY_TAG, MANAGED_BY_VALUE, OWNER_TAG, TemplateInput};
use super::verify;
use crate::api::{AwsAccountLink, AwsAccountLinkStatus, BootstrapMode, DeletionPolicy, Stack};
use crate::aws::credentials::LinkRole;
use crate::aws::identity;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::conditions::{self, Health};
use crate::runtime::context::{Context, FIELD_MANAGER};
use crate::runtime::reconciler::{Cleanup, Managed, Step};

/// Length of a generated external ID; AWS recommends at least 32 characters of entropy.
const EXTERNAL_ID_LEN: usize = 40;
/// The key of the template in its ConfigMap.
pub const TEMPLATE_KEY: &str = "template.json";
/// The key of the trusted principal in the template's ConfigMap (read by `account-template`).
pub const PRINCIPAL_KEY: &str = "trustedPrincipal";

impl Managed for AwsAccountLink {
    type Status = AwsAccountLinkStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Step<Self::Status>> {
        let mut status = self.status.clone().unwrap_or_default();
        let external_id = external_id(self);
        if status.external_id.as_deref() != Some(external_id.as_str()) {
            // Recorded before anything uses it, so that a crash cannot lead to a second one.
            status.external_id = Some(external_id);
            return Ok(next(status, "ExternalIdRecorded", "the external ID is recorded in status.externalId"));
        }

        let principal = ctx.aws.operator_principal().await?;
        let template = template::render_string(&template_input(self, &principal, &external_id));
        let config_map = plan::config_map_name(&self.name_any());
        let template_changed = apply_config_map(ctx, self, &config_map, &template, &principal).await?;
        if status.template_config_map.as_deref() != Some(config_map.as_str()) {
            status.template_config_map = Some(config_map.clone());
            let message = format!("the template is in ConfigMap {}/{config_map}", ctx.settings.namespace);
            return Ok(next(status, "TemplateRendered", message));
        }

        // Nothing changed since a recent verification: no AWS call (Stack changes wake the link too).
        if !template_changed && let Some(step) = recently_verified(self, &status, ctx.settings.resync_period) {
            return Ok(step);
        }

        let (role_arn, stack_changed) = match self.spec.bootstrap.mode {
            BootstrapMode::Manual => {
                (identity::role_arn(&self.spec.account_id, &self.spec.role_name, &self.spec.region), None)
            }
            BootstrapMode::CloudFormation => match deploy(self, ctx, &template, status.clone()).await? {
                Deployment::Progressing(step) => return Ok(*step),
                Deployment::Complete { status: observed, role_arn, changed } => {
                    status = *observed;
                    (role_arn, changed)
                }
            },
        };
        if status.role_arn.as_deref() != Some(role_arn.as_str()) {
            status.role_arn = Some(role_arn.clone());
            return Ok(next(status, "Verifying", format!("assuming {role_arn} with the link's external ID")));
        }

        let role = LinkRole {
            link_name: self.name_any(),
            link_uid: self.uid().unwrap_or_default(),
            role_arn: role_arn.clone(),
            external_id,
        };
        if let Err(error) = ctx.aws.assume(&role, &self.spec.region).await {
            let waiting = Waiting {
                link: self,
                ctx,
                principal: &principal,
                config_map: &config_map,
                stack_changed,
                verified_before: status.verified_identity.is_some(),
            };
            return Err(waiting.explain(error, &role_arn));
        }
        let who = verify::identity(ctx, &role, &self.spec.account_id, &self.spec.region).await?;
        if who.account != self.spec.account_id {
            ctx.aws.forget(&role.link_uid);
            return Err(Error::AccountMismatch {
                what: format!("the role {role_arn} (assumed as {})", who.arn),
                expected: self.spec.account_id.clone(),
                actual: who.account,
                remedy: "deploy the role into the account named by spec.accountId".into(),
            });
        }
        // Ready for this generation before this pass: whatever the audit trail needs now is drift.
        let drift = conditions::is_ready(&status.conditions, self.metadata.generation);
        status.verified_identity = Some(who.arn.clone());
        status.last_verified_time = Some(Time(Timestamp::now()));
        let audit = match audit::reconcile(ctx, self, &role, &mut status, drift).await? {
            audit::Outcome::Recorded(message) => return Ok(next(status, "CreatingAuditTrail", message)),
            audit::Outcome::Done(note) => note.map(|n| format!("; {n}")).unwrap_or_default(),
        };
        let message = format!(
            "assumed {role_arn} with the link's external ID as {}; account {}, {} availability zones in {}{audit}",
            who.arn, who.account, who.zones, self.spec.region
        );
        Ok(Step { status, health: Health::ready("Verified", message), requeue_after: None })
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Cleanup> {
        let name = self.name_any();
        let stacks = Api::<Stack>::all(ctx.client.clone()).list(&ListParams::default()).await?;
        let users: Vec<String> = stacks
            .items
            .iter()
            .filter(|s| s.spec.account_link_ref.name == name)
            .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        if !users.is_empty() {
            return Ok(Cleanup::Pending {
                reason: "DependentsExist",
                message: format!("waiting for the Stacks that use this link to be deleted: {}", users.join(", ")),
                requeue_after: Duration::from_secs(30),
            });
        }
        ctx.aws.forget(&self.uid().unwrap_or_default());
        if self.spec.bootstrap.mode == BootstrapMode::Manual || self.spec.deletion_policy == DeletionPolicy::Retain {
            audit::cleanup(ctx, self).await?;
            ctx.aws.forget(&self.uid().unwrap_or_default());
            return Ok(Cleanup::Done);
        }
        let bootstrap = match Bootstrap::connect(ctx, self).await {
            Ok(bootstrap) => bootstrap,
            // Without bootstrap credentials nothing can have been created. Once something was
            // (a stack ID or a role in status), the deletion waits for the Secret with that error.
            Err(e) if e.kind() != ErrorKind::Transient && !made_anything(self) => {
                info!(kind = "AwsAccountLink", %name, error = %e, "no bootstrap credentials and nothing created; nothing to delete");
                return Ok(Cleanup::Done);
            }
            Err(e) => return Err(e),
        };
        let stack_name = &self.spec.bootstrap.stack_name;
        let Some(stack) = bootstrap.describe(ctx, stack_name).await? else {
            return Ok(Cleanup::Done);
        };
        if !owned_by(&stack, &name) {
            info!(kind = "AwsAccountLink", %name, cloudformation_stack = %stack_name, "the stack does not carry this link's tags; leaving it");
            return Ok(Cleanup::Done);
        }
        match plan::phase(&stack.status) {
            StackPhase::Deleting => Ok(Cleanup::Pending {
                reason: "DeletingStack",
                message: format!("CloudFormation is deleting the stack {stack_name}"),
                requeue_after: ctx.settings.aws_poll,
            }),
            _ if stack.status == "DELETE_FAILED" => Err(stack_failed(ctx, &bootstrap, &stack, stack_name).await),
            _ => {
                // The audit trail goes through the role, so before the stack that holds the role.
                audit::cleanup(ctx, self).await?;
                ctx.aws.forget(&self.uid().unwrap_or_default());
                bootstrap.delete(ctx, &stack.id).await?;
                let note = format!("deleting CloudFormation stack {stack_name} ({}), which revokes the role", stack.id);
                ctx.event(&self.object_ref(&()), EventType::Normal, "DeletedCloudFormationStack", note).await;
                Ok(Cleanup::Pending {
                    reason: "DeletingStack",
                    message: format!("CloudFormation is deleting the stack {stack_name}"),
                    requeue_after: ctx.settings.aws_poll,
                })
            }
        }
    }
}

/// Whether the link's status records anything made in AWS for it.
fn made_anything(link: &AwsAccountLink) -> bool {
    link.status.as_ref().is_some_and(|s| s.cloud_formation_stack_id.is_some() || s.role_arn.is_some())
}

/// A step that made progress and wants the next one at once.
fn next(status: AwsAccountLinkStatus, reason: &str, message: impl Into<String>) -> Step<AwsAccountLinkStatus> {
    Step { status, health: Health::progressing(reason, message), requeue_after: Some(Duration::ZERO) }
}

/// The external ID in force: the spec's, else the one generated earlier, else a new one.
fn external_id(link: &AwsAccountLink) -> String {
    link.spec
        .external_id
        .clone()
        .or_else(|| link.status.as_ref().and_then(|s| s.external_id.clone()))
        .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), EXTERNAL_ID_LEN))
}

/// What the template needs from the link.
pub(super) fn template_input(link: &AwsAccountLink, principal: &str, external_id: &str) -> TemplateInput {
    TemplateInput::new(
        link.name_any(),
        link.uid().as_deref().unwrap_or_default(),
        link.spec.role_name.clone(),
        principal,
        external_id,
        link.spec.permissions,
    )
}

/// The still-valid result of a verification within the last resync period, if the link is Ready
/// for its current generation.
fn recently_verified(
    link: &AwsAccountLink,
    status: &AwsAccountLinkStatus,
    period: Duration,
) -> Option<Step<AwsAccountLinkStatus>> {
    if !conditions::is_ready(&status.conditions, link.metadata.generation) {
        return None;
    }
    let ready = conditions::ready(&status.conditions)?;
    let verified = status.last_verified_time.as_ref()?;
    let age = Timestamp::now().duration_since(verified.0);
    let age = Duration::try_from(age).ok()?;
    let left = period.checked_sub(age).filter(|d| !d.is_zero())?;
    Some(Step {
        status: status.clone(),
        health: Health::ready(&ready.reason, ready.message.clone()),
        requeue_after: Some(left),
    })
}

/// Writes the template ConfigMap (server-side apply, owned by the link so that it goes with it);
/// returns whether it changed.
async fn apply_config_map(
    ctx: &Context,
    link: &AwsAccountLink,
    name: &str,
    template: &str,
    principal: &str,
) -> Result<bool> {
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let data = BTreeMap::from([
        (TEMPLATE_KEY.to_string(), template.to_string()),
        (PRINCIPAL_KEY.to_string(), principal.to_string()),
    ]);
    let owner = OwnerReference {
        api_version: AwsAccountLink::api_version(&()).into_owned(),
        kind: AwsAccountLink::kind(&()).into_owned(),
        name: link.name_any(),
        uid: link.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    if let Some(existing) = api.get_opt(name).await?
        && existing.data.as_ref() == Some(&data)
        && existing.metadata.owner_references.as_deref().is_some_and(|o| o.contains(&owner))
    {
        return Ok(false);
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": ctx.settings.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": FIELD_MANAGER,
                "tinystacks.io/account-link": link.name_any(),
            },
            "ownerReferences": [owner],
        },
        "data": data,
    });
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(true)
}

/// Where the CloudFormation stack stands.
enum Deployment {
    /// CloudFormation is working, or the operator just asked it to: this step is the reconcile's.
    Progressing(Box<Step<AwsAccountLinkStatus>>),
    /// The stack is complete with the current template.
    Complete { status: Box<AwsAccountLinkStatus>, role_arn: String, changed: Option<SystemTime> },
}

/// One step towards a complete stack with the current template.
async fn deploy(
    link: &AwsAccountLink,
    ctx: &Context,
    template: &str,
    mut status: AwsAccountLinkStatus,
) -> Result<Deployment> {
    let bootstrap = Bootstrap::connect(ctx, link).await?;
    let stack_name = &link.spec.bootstrap.stack_name;
    let name = link.name_any();
    let tags = stack_tags(link);
    let reference = link.object_ref(&());
    let progressing = |status: AwsAccountLinkStatus, reason: &str, message: String| {
        Ok(Deployment::Progressing(Box::new(Step {
            status,
            health: Health::progressing(reason, message),
            requeue_after: Some(ctx.settings.aws_poll),
        })))
    };

    let Some(stack) = bootstrap.describe(ctx, stack_name).await? else {
        // Creating a role in the wrong account is worse than not creating it: check first.
        let account = bootstrap.account(ctx).await?;
        if account != link.spec.account_id {
            return Err(Error::AccountMismatch {
                what: format!("the bootstrap credentials in Secret {}", bootstrap.secret()),
                expected: link.spec.account_id.clone(),
                actual: account,
                remedy:
                    "put credentials of the link's account into the Secret, or fix spec.accountId; no stack was created"
                        .into(),
            });
        }
        let id = bootstrap.create(ctx, template, &tags).await?;
        let note = format!("created CloudFormation stack {stack_name} ({id}) in account {account}");
        ctx.event(&reference, EventType::Normal, "CreatedCloudFormationStack", note).await;
        status.cloud_formation_stack_id = Some(id);
        return progressing(status, "CreatingStack", format!("CloudFormation is creating the stack {stack_name}"));
    };
    if !owned_by(&stack, &name) {
        return Err(Error::CloudFormationStackFailed {
            stack: stack_name.clone(),
            status: stack.status.clone(),
            reason: "the stack exists but was not created by the operator for this link (its tags say otherwise)"
                .into(),
            remedy: "choose another spec.bootstrap.stackName, or delete that stack".into(),
        });
    }
    status.cloud_formation_stack_id = Some(stack.id.clone());
    let now = SystemTime::now();
    let period = ctx.settings.resync_period;
    match plan::phase(&stack.status) {
        StackPhase::InProgress | StackPhase::Deleted => {
            progressing(status, "StackInProgress", format!("CloudFormation stack {stack_name} is {}", stack.status))
        }
        StackPhase::Deleting => {
            progressing(status, "StackDeleting", format!("waiting for CloudFormation to finish deleting {stack_name}"))
        }
        StackPhase::CreateRolledBack if plan::may_retry(stack.changed, now, period) => {
            // An empty stack that can only be deleted: delete it so that the next pass creates it
            // again, at most once per resync period.
            bootstrap.delete(ctx, &stack.id).await?;
            let note =
                format!("deleted the failed CloudFormation stack {stack_name} ({}) to create it again", stack.id);
            ctx.event(&reference, EventType::Normal, "DeletedCloudFormationStack", note).await;
            progressing(status, "RecreatingStack", format!("deleting the failed stack {stack_name} to create it again"))
        }
        StackPhase::CreateRolledBack | StackPhase::Failed => {
            Err(stack_failed(ctx, &bootstrap, &stack, stack_name).await)
        }
        phase @ (StackPhase::Complete | StackPhase::UpdateRolledBack) => {
            let deployed = bootstrap.template(ctx, &stack.id).await?;
            if !plan::same_template(&deployed, template) {
                if phase == StackPhase::UpdateRolledBack && !plan::may_retry(stack.changed, now, period) {
                    return Err(stack_failed(ctx, &bootstrap, &stack, stack_name).await);
                }
                if bootstrap.update(ctx, &stack.id, template, &tags).await? {
                    let note = format!("updated CloudFormation stack {stack_name} to the current template");
                    ctx.event(&reference, EventType::Normal, "UpdatedCloudFormationStack", note).await;
                    return progressing(status, "UpdatingStack", format!("CloudFormation is updating {stack_name}"));
                }
            }
            let Some(role_arn) = stack.outputs.get(template::ROLE_ARN_OUTPUT) else {
                return Err(Error::CloudFormationStackFailed {
                    stack: stack_name.clone(),
                    status: stack.status.clone(),
                    reason: format!("it has no output {}", template::ROLE_ARN_OUTPUT),
                    remedy: "delete the stack; the operator creates it again".into(),
                });
            };
            Ok(Deployment::Complete { status: Box::new(status), role_arn: role_arn.clone(), changed: stack.changed })
        }
    }
}

/// The tags of the stack: the link's ownership tags and a readable name.
fn stack_tags(link: &AwsAccountLink) -> BTreeMap<String, String> {
    let mut tags = template::link_tags(&link.name_any(), link.uid().as_deref().unwrap_or_default());
    tags.insert("Name".into(), link.spec.bootstrap.stack_name.clone());
    tags
}

/// Whether the operator made the stack for this link. By name rather than UID, so that a link
/// deleted with `Retain` and created again adopts its stack (the next update re-tags it).
fn owned_by(stack: &ObservedStack, link_name: &str) -> bool {
    stack.tags.get(MANAGED_BY_TAG).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && stack.tags.get(OWNER_TAG).is_some_and(|o| *o == format!("AwsAccountLink//{link_name}"))
}

/// The error for a failed stack, with CloudFormation's own reason.
async fn stack_failed(ctx: &Context, bootstrap: &Bootstrap, stack: &ObservedStack, stack_name: &str) -> Error {
    let reason = match bootstrap.events(ctx, &stack.id).await {
        Ok(events) => plan::failure_reason(&events, stack.status_reason.as_deref()),
        Err(_) => stack.status_reason.clone().unwrap_or_else(|| "CloudFormation reported no reason".into()),
    };
    Error::CloudFormationStackFailed {
        stack: stack_name.to_string(),
        status: stack.status.clone(),
        reason,
        remedy: plan::remedy(&stack.status, stack_name),
    }
}

/// Explains a failed AssumeRole: in `Manual` mode the role may simply not be there yet (AWS says
/// the same for a missing role and a refusing one), unless the operator assumed it before; after
/// a stack change IAM may still be propagating; otherwise the trust policy refuses the operator.
struct Waiting<'a> {
    link: &'a AwsAccountLink,
    ctx: &'a Context,
    principal: &'a str,
    config_map: &'a str,
    stack_changed: Option<SystemTime>,
    verified_before: bool,
}

impl Waiting<'_> {
    fn explain(&self, error: Error, role_arn: &str) -> Error {
        let Error::AccessDenied { message, .. } = &error else { return error };
        let config_map = format!("{}/{}", self.ctx.settings.namespace, self.config_map);
        let denied = || Error::AssumeRoleDenied {
            role_arn: role_arn.into(),
            principal: self.principal.into(),
            detail: message.clone(),
            config_map: config_map.clone(),
        };
        match self.link.spec.bootstrap.mode {
            BootstrapMode::Manual if self.verified_before => denied(),
            BootstrapMode::Manual => Error::WaitingForRole {
                role_arn: role_arn.into(),
                detail: format!(
                    "AWS does not let the operator assume it yet ({message}); deploy the template from ConfigMap {config_map} (or `tinystacks-operator account-template {}`) in account {}",
                    self.link.name_any(),
                    self.link.spec.account_id
                ),
            },
            BootstrapMode::CloudFormation => {
                let grace = self.ctx.aws.options().role_propagation_grace;
                if plan::within_grace(self.stack_changed, SystemTime::now(), grace) {
                    Error::WaitingForRole {
                        role_arn: role_arn.into(),
                        detail: "IAM is still propagating the role the stack just created or changed".into(),
                    }
                } else {
                    denied()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AwsAccountLinkSpec;

    fn link(external_id: Option<&str>) -> AwsAccountLink {
        let mut spec: AwsAccountLinkSpec =
            serde_json::from_value(serde_json::json!({"accountId": "123456789012", "region": "us-east-1"})).unwrap();
        spec.external_id = external_id.map(Into::into);
        AwsAccountLink::new("l", spec)
    }

    #[test]
    fn external_id_is_generated_once_and_kept() {
        let mut l = link(None);
        let generated = external_id(&l);
        assert_eq!(generated.len(), EXTERNAL_ID_LEN);
        assert!(generated.chars().all(|c| c.is_ascii_alphanumeric()));
        l.status = Some(AwsAccountLinkStatus { external_id: Some(generated.clone()), ..Default::default() });
        assert_eq!(external_id(&l), generated);
        assert_ne!(external_id(&link(None)), generated);
    }

    #[test]
    fn spec_external_id_wins() {
        assert_eq!(external_id(&link(Some("given-id"))), "given-id");
    }

    #[test]
    fn the_link_s_template_trusts_the_operator_with_the_external_id() {
        let l = link(Some("ext-id-of-the-link"));
        let rendered = template::render(&template_input(&l, "arn:aws:iam::111122223333:role/op", "ext-id-of-the-link"));
        let trust = &rendered["Resources"]["Role"]["Properties"]["AssumeRolePolicyDocument"]["Statement"];
        assert_eq!(trust.as_array().map(Vec::len), Some(1));
        assert_eq!(trust[0]["Principal"]["AWS"], "arn:aws:iam::111122223333:role/op");
        assert_eq!(trust[0]["Condition"]["StringEquals"]["sts:ExternalId"], "ext-id-of-the-link");
        assert_eq!(rendered["Resources"]["Role"]["Properties"]["RoleName"], "TinyStacksRole");
    }

    #[test]
    fn only_stacks_tagged_for_the_link_are_its_own() {
        let stack = |tags: &[(&str, &str)]| ObservedStack {
            id: "id".into(),
            status: "CREATE_COMPLETE".into(),
            status_reason: None,
            changed: None,
            outputs: BTreeMap::new(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        assert!(owned_by(&stack(&[(MANAGED_BY_TAG, MANAGED_BY_VALUE), (OWNER_TAG, "AwsAccountLink//l")]), "l"));
        assert!(!owned_by(&stack(&[(MANAGED_BY_TAG, MANAGED_BY_VALUE), (OWNER_TAG, "AwsAccountLink//m")]), "l"));
        assert!(!owned_by(&stack(&[(OWNER_TAG, "AwsAccountLink//l")]), "l"));
    }
}
