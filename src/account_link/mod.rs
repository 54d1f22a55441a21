//! `AwsAccountLink`: the operator's access to a customer's AWS account. Other kinds reach AWS
//! only through a link resolved here, which also enforces `allowedNamespaces`.

mod audit;
mod cloudformation;
#[cfg(test)]
mod least_privilege;
mod plan;
mod reconcile;
pub mod template;
mod verify;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use crate::api::{AwsAccountLink, Stack};
use crate::error::{Error, Result};
use crate::runtime::conditions;
use crate::runtime::context::Context;

/// A link a Stack may use: it exists, allows the Stack's namespace, and is Ready.
pub enum LinkFor {
    Usable(Box<AwsAccountLink>),
    /// The link exists and allows the namespace, but is not Ready yet.
    NotReady {
        message: String,
    },
}

/// Resolves the Stack's link, or says why it cannot be used. No AWS call is made here, so a
/// Stack in a namespace the link does not allow never reaches AWS.
pub async fn resolve_for(ctx: &Context, stack: &Stack, namespace: &str) -> Result<LinkFor> {
    let name = &stack.spec.account_link_ref.name;
    let link = Api::<AwsAccountLink>::all(ctx.client.clone())
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::AccountLinkNotFound { name: name.clone() })?;
    if !allows(&link, namespace) {
        return Err(Error::AccountLinkNotAllowed { link: name.clone(), namespace: namespace.into() });
    }
    let status = link.status.as_ref();
    let ready = status.is_some_and(|s| conditions::is_ready(&s.conditions, link.metadata.generation));
    if ready {
        return Ok(LinkFor::Usable(Box::new(link)));
    }
    let why = status
        .and_then(|s| conditions::ready(&s.conditions))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "not reconciled yet".into());
    Ok(LinkFor::NotReady { message: format!("AwsAccountLink {name:?} is not Ready ({why})") })
}

/// The link a deletion goes through. Deletion needs less than creation: a link that is itself
/// being deleted (it waits for its Stacks) or briefly failing verification still holds the role
/// the resources were made with.
pub enum LinkForCleanup {
    /// Tear down through this link (it exists, allows the namespace and has a verified role).
    Usable(Box<AwsAccountLink>),
    /// No AWS call was ever made through the link for this namespace: the link is gone, was never
    /// verified, or does not allow the namespace and the object records nothing it created.
    NothingMade(String),
}

/// Resolves the link for deleting what a Stack (or an object on it) made. `records_resources`:
/// the object's status names AWS resources it created. When it does and the link no longer allows
/// the namespace, the deletion is stalled (`AccountLinkNoLongerAllows`): the resources stay until
/// the namespace is allowed again, or the finalizer is removed by hand.
pub async fn resolve_for_cleanup(
    ctx: &Context,
    stack: &Stack,
    namespace: &str,
    records_resources: bool,
) -> Result<LinkForCleanup> {
    let name = &stack.spec.account_link_ref.name;
    let Some(link) = Api::<AwsAccountLink>::all(ctx.client.clone()).get_opt(name).await? else {
        return Ok(LinkForCleanup::NothingMade(format!("AwsAccountLink {name:?} is gone")));
    };
    if !allows(&link, namespace) {
        if records_resources {
            return Err(Error::AccountLinkNoLongerAllows { link: name.clone(), namespace: namespace.into() });
        }
        return Ok(LinkForCleanup::NothingMade(format!(
            "AwsAccountLink {name:?} does not allow namespace {namespace:?}, so no AWS call was ever made"
        )));
    }
    if crate::aws::link_role(&link).is_none() {
        return Ok(LinkForCleanup::NothingMade(format!("AwsAccountLink {name:?} was never verified")));
    }
    Ok(LinkForCleanup::Usable(Box::new(link)))
}

/// The CloudFormation template of the link `name`, as `tinystacks-operator account-template`
/// prints it: rendered from the link in the cluster, with the external ID from its spec or status
/// and the trusted principal from `principal`, else from the ConfigMap the operator wrote.
pub async fn template_for(
    client: &kube::Client,
    operator_namespace: &str,
    name: &str,
    principal: Option<&str>,
) -> std::result::Result<String, String> {
    let link = Api::<AwsAccountLink>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read AwsAccountLink {name:?}: {e}"))?
        .ok_or_else(|| format!("AwsAccountLink {name:?} does not exist"))?;
    let external_id =
        link.spec.external_id.clone().or_else(|| link.status.as_ref().and_then(|s| s.external_id.clone())).ok_or_else(
            || format!("AwsAccountLink {name:?} has no external ID yet: the operator records one in status.externalId when it first reconciles the link (or set spec.externalId)"),
        )?;
    let principal = match principal {
        Some(p) => p.to_string(),
        None => {
            let config_map = plan::config_map_name(name);
            Api::<ConfigMap>::namespaced(client.clone(), operator_namespace)
                .get_opt(&config_map)
                .await
                .map_err(|e| format!("cannot read ConfigMap {operator_namespace}/{config_map}: {e}"))?
                .and_then(|cm| cm.data?.remove(reconcile::PRINCIPAL_KEY))
                .ok_or_else(|| {
                    format!(
                        "the operator's identity is not known yet (ConfigMap {operator_namespace}/{config_map} has none); pass --service-role-arn"
                    )
                })?
        }
    };
    Ok(template::render_string(&reconcile::template_input(&link, &principal, &external_id)))
}

/// Whether the link lets Stacks of `namespace` use its account.
pub fn allows(link: &AwsAccountLink, namespace: &str) -> bool {
    link.spec.allowed_namespaces.iter().any(|n| n == "*" || n == namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AwsAccountLinkSpec;

    fn link(allowed: &[&str]) -> AwsAccountLink {
        let spec: AwsAccountLinkSpec = serde_json::from_value(serde_json::json!({
            "accountId": "123456789012", "region": "us-east-1",
            "allowedNamespaces": allowed,
        }))
        .unwrap();
        AwsAccountLink::new("l", spec)
    }

    #[test]
    fn empty_allows_nothing_and_star_allows_all() {
        assert!(!allows(&link(&[]), "team-a"));
        assert!(allows(&link(&["*"]), "team-a"));
        assert!(allows(&link(&["team-b", "team-a"]), "team-a"));
        assert!(!allows(&link(&["team-b"]), "team-a"));
    }
}
