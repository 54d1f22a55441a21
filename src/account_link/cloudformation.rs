//! The link's CloudFormation calls, all made with the bootstrap credentials from the link's Secret
//! (never with the operator's own identity or the link's role, which the stack creates).

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_config::SdkConfig;
use aws_sdk_cloudformation::types::{Capability, Tag, TemplateStage};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::plan::StackEvent;
use crate::api::{AwsAccountLink, SecretReference};
use crate::aws::call::Calls;
use crate::aws::credentials::StaticCredentials;
use crate::aws::errors::Caller;
use crate::aws::limiter::Service;
use crate::error::{Error, Result};
use crate::runtime::context::Context;

pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// What the operator saw of the stack.
#[derive(Clone, Debug)]
pub struct ObservedStack {
    pub id: String,
    pub status: String,
    pub status_reason: Option<String>,
    /// When the stack last changed (its last update, else its creation).
    pub changed: Option<SystemTime>,
    pub outputs: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

/// The bootstrap side of one link: its Secret's credentials in the link's region.
pub struct Bootstrap {
    config: SdkConfig,
    caller: Caller,
    stack_name: String,
    /// The link's account: the limiter's bucket for the stack's writes.
    account: String,
}

impl Bootstrap {
    /// Reads the link's bootstrap Secret. A missing Secret or key is the user's to fix, and the
    /// error names the Secret and the key, never a value.
    pub async fn connect(ctx: &Context, link: &AwsAccountLink) -> Result<Self> {
        let reference = link.spec.bootstrap.credentials_secret_ref.as_ref().ok_or_else(|| {
            Error::InvalidSpec(
                "spec.bootstrap.credentialsSecretRef is required when bootstrap.mode is CloudFormation".into(),
            )
        })?;
        let allowed = &ctx.settings.bootstrap_secret_namespaces;
        if !allowed.allows(&reference.namespace) {
            return Err(Error::BootstrapSecretNamespaceNotAllowed {
                namespace: reference.namespace.clone(),
                name: reference.name.clone(),
                allowed: allowed.to_string(),
            });
        }
        let credentials = read_credentials(ctx, reference).await?;
        let config = ctx.aws.bootstrap_config(&credentials, &link.spec.region).await;
        Ok(Self {
            config,
            caller: Caller::Bootstrap { secret: format!("{}/{}", reference.namespace, reference.name) },
            stack_name: link.spec.bootstrap.stack_name.clone(),
            account: link.spec.account_id.clone(),
        })
    }

    pub fn secret(&self) -> String {
        match &self.caller {
            Caller::Bootstrap { secret } => secret.clone(),
            _ => String::new(),
        }
    }

    /// Every call, with the bootstrap credentials, through the limiter of the link's account.
    fn calls<'a>(&'a self, ctx: &'a Context) -> Calls<'a> {
        Calls { limiter: &ctx.limiter, account: &self.account, caller: &self.caller }
    }

    /// The account the bootstrap credentials belong to.
    pub async fn account(&self, ctx: &Context) -> Result<String> {
        let sts: aws_sdk_sts::Client = ctx.aws.client(&self.config);
        let read = || sts.get_caller_identity().send();
        let identity = self.calls(ctx).read(Service::Sts, "sts:GetCallerIdentity", read).await?;
        Ok(identity.account().unwrap_or_default().to_string())
    }

    /// The stack by name (or by ID), if it exists and is not deleted.
    pub async fn describe(&self, ctx: &Context, name_or_id: &str) -> Result<Option<ObservedStack>> {
        let cfn: aws_sdk_cloudformation::Client = ctx.aws.client(&self.config);
        let read = || cfn.describe_stacks().stack_name(name_or_id).send();
        let calls = self.calls(ctx);
        let found = calls.find_with(Service::CloudFormation, "cloudformation:DescribeStacks", is_missing, read).await?;
        let Some(out) = found else { return Ok(None) };
        let Some(stack) = out.stacks().first() else { return Ok(None) };
        let status = stack.stack_status().map(|s| s.as_str().to_string()).unwrap_or_default();
        if status == "DELETE_COMPLETE" {
            return Ok(None);
        }
        let changed = stack.last_updated_time().or(stack.creation_time()).and_then(|t| SystemTime::try_from(*t).ok());
        Ok(Some(ObservedStack {
            id: stack.stack_id().unwrap_or(name_or_id).to_string(),
            status,
            status_reason: stack.stack_status_reason().map(str::to_string),
            changed,
            outputs: stack
                .outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
                .collect(),
            tags: stack.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect(),
        }))
    }

    /// Creates the stack; returns its ID. `CAPABILITY_NAMED_IAM` because the role has a fixed name.
    pub async fn create(&self, ctx: &Context, template: &str, tags: &BTreeMap<String, String>) -> Result<String> {
        let cfn: aws_sdk_cloudformation::Client = ctx.aws.client(&self.config);
        let create = || {
            cfn.create_stack()
                .stack_name(&self.stack_name)
                .template_body(template)
                .capabilities(Capability::CapabilityNamedIam)
                .set_tags(Some(stack_tags(tags)))
                .send()
        };
        let out = self.calls(ctx).mutate(Service::CloudFormation, "cloudformation:CreateStack", &[], create).await?;
        Ok(out.as_ref().and_then(|o| o.stack_id()).unwrap_or(&self.stack_name).to_string())
    }

    /// The template the stack was last deployed with.
    pub async fn template(&self, ctx: &Context, stack_id: &str) -> Result<String> {
        let cfn: aws_sdk_cloudformation::Client = ctx.aws.client(&self.config);
        let read = || cfn.get_template().stack_name(stack_id).template_stage(TemplateStage::Original).send();
        let out = self.calls(ctx).read(Service::CloudFormation, "cloudformation:GetTemplate", read).await?;
        Ok(out.template_body().unwrap_or_default().to_string())
    }

    /// Updates the stack to `template`; `false` if CloudFormation found nothing to change.
    pub async fn update(
        &self,
        ctx: &Context,
        stack_id: &str,
        template: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let cfn: aws_sdk_cloudformation::Client = ctx.aws.client(&self.config);
        let update = || {
            cfn.update_stack()
                .stack_name(stack_id)
                .template_body(template)
                .capabilities(Capability::CapabilityNamedIam)
                .set_tags(Some(stack_tags(tags)))
                .send()
        };
        let nothing_to_do = |e: &SdkError<_, _>| message_of(e).contains("No updates are to be performed");
        let action = "cloudformation:UpdateStack";
        Ok(self.calls(ctx).mutate_with(Service::CloudFormation, action, nothing_to_do, update).await?.is_some())
    }

    pub async fn delete(&self, ctx: &Context, stack_id: &str) -> Result<()> {
        let cfn: aws_sdk_cloudformation::Client = ctx.aws.client(&self.config);
        let delete = || cfn.delete_stack().stack_name(stack_id).send();
        self.calls(ctx).mutate(Service::CloudFormation, "cloudformation:DeleteStack", &[], delete).await?;
        Ok(())
    }

    /// The stack's events, newest first (the first page is enough to find the latest failure).
    pub async fn events(&self, ctx: &Context, stack_id: &str) -> Result<Vec<StackEvent>> {
        let cfn: aws_sdk_cloudformation::Client = ctx.aws.client(&self.config);
        let read = || cfn.describe_stack_events().stack_name(stack_id).send();
        let out = self.calls(ctx).read(Service::CloudFormation, "cloudformation:DescribeStackEvents", read).await?;
        Ok(out
            .stack_events()
            .iter()
            .map(|e| StackEvent {
                logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
                resource_type: e.resource_type().unwrap_or_default().to_string(),
                status: e.resource_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
                reason: e.resource_status_reason().unwrap_or_default().to_string(),
            })
            .collect())
    }
}

fn stack_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn message_of<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> String {
    e.as_service_error().and_then(|s| s.message()).unwrap_or_default().to_string()
}

/// CloudFormation answers a DescribeStacks for a stack that does not exist with a `ValidationError`.
fn is_missing<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error().is_some_and(|s| s.code() == Some("ValidationError"))
        && message_of(e).contains("does not exist")
}

/// The credentials in the Secret; values are trimmed because `kubectl create secret --from-file`
/// keeps a file's trailing newline, and AWS keys never contain whitespace.
async fn read_credentials(ctx: &Context, reference: &SecretReference) -> Result<StaticCredentials> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &reference.namespace)
        .get_opt(&reference.name)
        .await?
        .ok_or_else(|| Error::BootstrapSecretMissing {
            namespace: reference.namespace.clone(),
            name: reference.name.clone(),
        })?;
    let data = secret.data.unwrap_or_default();
    let invalid = |key: &str, why: &str| Error::BootstrapSecretInvalid {
        namespace: reference.namespace.clone(),
        name: reference.name.clone(),
        key: key.into(),
        why: why.into(),
    };
    let value = |key: &str| -> Result<Option<String>> {
        let Some(bytes) = data.get(key) else { return Ok(None) };
        let text = std::str::from_utf8(&bytes.0).map_err(|_| invalid(key, "its value is not text"))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(invalid(key, "its value is empty"));
        }
        Ok(Some(text.to_string()))
    };
    let required = |key: &str| -> Result<String> {
        value(key)?.ok_or_else(|| invalid(key, &format!("add the key {key} to the Secret")))
    };
    Ok(StaticCredentials {
        access_key_id: required(ACCESS_KEY_ID)?,
        secret_access_key: required(SECRET_ACCESS_KEY)?,
        session_token: value(SESSION_TOKEN)?,
    })
}
