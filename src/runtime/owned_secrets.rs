//! The Kubernetes Secrets an object owns, and only those: a Secret is an object's when it carries
//! a controller owner reference with that object's UID and the operator's managed-by label. Any
//! other Secret of the same name (the user's, another object's) is never written nor deleted: the
//! object reports `SecretConflict` and waits for a person. Every kind that writes Secrets (the
//! Database's connection Secret, the Bastion's key Secret) goes through here.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};

use super::context::FIELD_MANAGER;
use crate::aws::ownership::owner_uid;
use crate::error::{Error, Result};

/// The label on every Secret the operator writes (its watches select on it).
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";

/// The Secrets of one namespace, as seen by the object `owner`.
pub struct OwnedSecrets<'a, K> {
    api: Api<Secret>,
    owner: &'a K,
}

/// What became of a create.
#[derive(Debug)]
pub enum Created {
    /// The Secret is new.
    New,
    /// It existed already and is this object's (an earlier create whose answer was lost).
    Existed(Box<Secret>),
}

impl<'a, K> OwnedSecrets<'a, K>
where
    K: Resource<DynamicType = ()>,
{
    pub fn new(client: kube::Client, owner: &'a K) -> Self {
        let namespace = owner.namespace().unwrap_or_default();
        Self { api: Api::namespaced(client, &namespace), owner }
    }

    /// Never the empty UID: a Secret whose controller reference has none would be taken as ours.
    fn uid(&self) -> Result<String> {
        owner_uid(self.owner)
    }

    /// The Secret `name` if it is this object's; `None` if there is none; `SecretConflict` if a
    /// Secret of that name exists and is not this object's.
    pub async fn get(&self, name: &str) -> Result<Option<Secret>> {
        match self.api.get_opt(name).await? {
            None => Ok(None),
            Some(secret) => self.ours(secret).map(Some),
        }
    }

    fn ours(&self, secret: Secret) -> Result<Secret> {
        match holder(&secret, &self.uid()?) {
            None => Ok(secret),
            Some(held_by) => Err(Error::SecretConflict {
                namespace: secret.namespace().unwrap_or_default(),
                name: secret.name_any(),
                owner: format!("{} {}", K::kind(&()), self.owner.name_any()),
                held_by,
            }),
        }
    }

    /// Creates `secret` with this object as its controller and the managed-by label; never
    /// merges into one that exists: if it does, it must be this object's (`Existed`), else
    /// `SecretConflict`.
    pub async fn create(&self, mut secret: Secret) -> Result<Created> {
        let meta = &mut secret.metadata;
        meta.namespace = self.owner.namespace();
        meta.owner_references = self.owner.controller_owner_ref(&()).map(|o| vec![o]);
        meta.labels.get_or_insert_default().insert(MANAGED_LABEL.into(), FIELD_MANAGER.into());
        let name = secret.name_any();
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match self.api.create(&params, &secret).await {
            Ok(_) => Ok(Created::New),
            Err(kube::Error::Api(s)) if s.code == 409 => match self.get(&name).await? {
                Some(existing) => Ok(Created::Existed(Box::new(existing))),
                // Deleted again in between: the next pass creates it.
                None => Err(Error::Kube(kube::Error::Api(s))),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the data of `existing` (a Secret `get` returned as this object's) to exactly that of
    /// `wanted` (keys added by hand are removed), and adds `wanted`'s labels and annotations. The
    /// patch carries `existing`'s resourceVersion, so the API server refuses it if the Secret
    /// changed (or was replaced by someone else's) in between; the next pass looks again.
    pub async fn update(&self, existing: Secret, wanted: Secret) -> Result<()> {
        let name = existing.name_any();
        let mut data = serde_json::Map::new();
        for key in existing.data.unwrap_or_default().into_keys() {
            data.insert(key, serde_json::Value::Null);
        }
        for (key, value) in wanted.data.unwrap_or_default() {
            data.insert(key, serde_json::to_value(value).map_err(kube::Error::SerdeError)?);
        }
        let mut labels = wanted.metadata.labels.unwrap_or_default();
        labels.insert(MANAGED_LABEL.into(), FIELD_MANAGER.into());
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": existing.metadata.resource_version,
                "labels": labels,
                "annotations": wanted.metadata.annotations.unwrap_or_default(),
            },
            "data": data,
        });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        self.api.patch(&name, &params, &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// Deletes the Secret `name` if it is this object's (guarded by its UID, so a Secret put in
    /// its place meanwhile is left alone); leaves any other alone. Whether it deleted one.
    pub async fn delete_if_ours(&self, name: &str) -> Result<bool> {
        let Some(secret) = self.api.get_opt(name).await? else { return Ok(false) };
        if holder(&secret, &self.uid()?).is_some() {
            return Ok(false);
        }
        let preconditions = Preconditions { uid: secret.uid(), resource_version: None };
        let params = DeleteParams { preconditions: Some(preconditions), ..Default::default() };
        match self.api.delete(name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Who holds `secret` when it is not the object with `uid`'s (`None` when it is): its controller,
/// or that the operator did not write it.
pub fn holder(secret: &Secret, uid: &str) -> Option<String> {
    let controller = secret.owner_references().iter().find(|o| o.controller == Some(true));
    let labelled = secret.labels().get(MANAGED_LABEL).map(String::as_str) == Some(FIELD_MANAGER);
    match controller {
        Some(c) if c.uid == uid && labelled => None,
        Some(c) if c.uid == uid => Some(format!("it lacks the label {MANAGED_LABEL}={FIELD_MANAGER}")),
        Some(c) => Some(format!("it is controlled by {} {} (uid {})", c.kind, c.name, c.uid)),
        None if labelled => Some("it has no controller (another install or a copy)".into()),
        None => Some("it was not written by tinystacks-operator".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;

    fn secret(controller: Option<(&str, bool)>, labelled: bool) -> Secret {
        let mut s = Secret::default();
        s.metadata.owner_references = controller.map(|(uid, c)| {
            vec![OwnerReference {
                api_version: "tinystacks.io/v1alpha1".into(),
                kind: "Database".into(),
                name: "orders".into(),
                uid: uid.into(),
                controller: Some(c),
                ..Default::default()
            }]
        });
        if labelled {
            s.metadata.labels = Some(BTreeMap::from([(MANAGED_LABEL.into(), FIELD_MANAGER.into())]));
        }
        s
    }

    #[test]
    fn only_a_labelled_secret_controlled_by_that_uid_is_the_objects() {
        assert_eq!(holder(&secret(Some(("u1", true)), true), "u1"), None);
        assert!(holder(&secret(Some(("u2", true)), true), "u1").is_some_and(|h| h.contains("Database orders")));
        assert!(holder(&secret(Some(("u1", false)), true), "u1").is_some(), "an owner, not the controller");
        assert!(holder(&secret(Some(("u1", true)), false), "u1").is_some_and(|h| h.contains(MANAGED_LABEL)));
        assert!(holder(&secret(None, false), "u1").is_some_and(|h| h.contains("not written")));
        assert!(holder(&secret(None, true), "u1").is_some());
    }
}
