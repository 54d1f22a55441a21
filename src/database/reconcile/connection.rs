//! The endpoint in the Secrets Manager secret, and the connection Secret for `envFrom`: written
//! only if it is this Database's (`runtime::owned_secrets`), and written again whenever it no
//! longer holds what the operator wrote. That is told locally, on every pass, from a digest of the
//! data written (an annotation) and the secret version it came from; Secrets Manager is read only
//! when something differs.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::Converge;
use crate::api::{Database, Endpoint as StatusEndpoint};
use crate::aws::inventory::SecretInfo;
use crate::database::credentials::{self, SecretDocument};
use crate::error::{Error, Result};
use crate::runtime::owned_secrets::{Created, OwnedSecrets};

/// The Secrets Manager version a connection Secret was written from: a rotation outside the
/// operator makes it stale, which is noticed without reading the secret's value on every pass.
const VERSION_ANNOTATION: &str = "tinystacks.io/secret-version";
/// A digest (SHA-256, hex) of the data the operator wrote: any edit by hand shows as a mismatch.
const DIGEST_ANNOTATION: &str = "tinystacks.io/data-digest";
/// The connection Secret keys that do not hold the password, compared on every pass.
const PLAIN_KEYS: [&str; 5] = ["PG_HOST", "PG_PORT", "PG_DATABASE", "PG_USER", "PG_CREDENTIALS_SECRET"];

impl Converge<'_> {
    /// Whether the Secrets Manager secret holds the instance's endpoint. Told without a call when
    /// the status records that endpoint and the connection Secret is what was written from the
    /// secret's current version; else the secret's value is read.
    pub(super) async fn endpoint_in_secret(&self, secret: &SecretInfo, host: &str, port: i32) -> Result<bool> {
        let recorded = self.status.endpoint.as_ref().is_some_and(|e| e.address == host && e.port == port);
        if recorded && self.connection_secret_current(secret, host, port).await? {
            return Ok(true);
        }
        // A value that cannot be read holds no endpoint: the plan says so, and a rotation asked for
        // (the reset path for a secret spoiled by hand) comes first.
        let value = self.aws.secret_value(&secret.arn).await?;
        Ok(value.document.is_ok_and(|document| self.with_endpoint(&document, host, port) == document))
    }

    /// The secret's document as it should read: the instance's endpoint, the spec's database name.
    fn with_endpoint(&self, document: &SecretDocument, host: &str, port: i32) -> SecretDocument {
        document.updated(host, port, &document.username, &self.db.spec.database_name, &self.names.instance)
    }

    /// Writes the endpoint into the secret (a new version, same password).
    pub(super) async fn write_endpoint(&mut self, secret: &SecretInfo, host: &str, port: i32) -> Result<()> {
        let value = self.aws.secret_value(&secret.arn).await?;
        let document = value.document.map_err(|why| Error::SecretUnusable { name: self.names.secret.clone(), why })?;
        let wanted = self.with_endpoint(&document, host, port);
        if wanted != document {
            let version = self.aws.put_secret_value(&secret.arn, &wanted, None).await?;
            // The password is the one RDS has: the new version is as good as the old.
            self.record_password_version(secret, version.as_deref()).await?;
            let note = format!("wrote the endpoint {host}:{port} into the secret {}", self.names.secret);
            self.event(EventType::Normal, "UpdatedSecret", note).await;
        }
        self.status.endpoint = Some(StatusEndpoint { address: host.to_string(), port });
        Ok(())
    }

    /// Whether the connection Secret needs no write (or none is wanted). A Secret of that name
    /// that is not this Database's stops here (`SecretConflict`).
    async fn connection_secret_current(&self, secret: &SecretInfo, host: &str, port: i32) -> Result<bool> {
        if !self.db.spec.connection_secret.enabled {
            return Ok(true);
        }
        let owned = OwnedSecrets::new(self.ctx.client.clone(), self.db);
        let expected = plain_keys(host, port, &self.db.spec.database_name, &self.db.spec.master_username, &secret.arn);
        let existing = owned.get(&self.names.connection_secret).await?;
        let version = secret.current_version.as_deref();
        Ok(existing.is_some_and(|s| connection_secret_current(&s, &expected, version)))
    }

    /// The connection Secret (Kubernetes-side, so also under a plan on hold): written from what
    /// the secret holds, with the instance's endpoint, whenever it is missing, edited, or written
    /// from an older version of the secret; one no longer wanted under its name is deleted.
    pub(super) async fn publish(&self, secret: &SecretInfo, host: &str, port: i32) -> Result<()> {
        let owned = OwnedSecrets::new(self.ctx.client.clone(), self.db);
        self.remove_stale_connection_secret(&owned).await?;
        if self.connection_secret_current(secret, host, port).await? {
            return Ok(());
        }
        let existing = owned.get(&self.names.connection_secret).await?;
        let value = self.aws.secret_value(&secret.arn).await?;
        let document = value.document.map_err(|why| Error::SecretUnusable { name: self.names.secret.clone(), why })?;
        let wanted = self.with_endpoint(&document, host, port);
        self.write_connection_secret(&owned, existing, &wanted, &secret.arn, value.version.as_deref()).await
    }

    async fn write_connection_secret(
        &self,
        owned: &OwnedSecrets<'_, Database>,
        existing: Option<Secret>,
        document: &SecretDocument,
        arn: &str,
        version: Option<&str>,
    ) -> Result<()> {
        let name = &self.names.connection_secret;
        let data: BTreeMap<String, ByteString> = credentials::connection_data(document, arn)
            .into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes())))
            .collect();
        let mut annotations = BTreeMap::from([(DIGEST_ANNOTATION.to_string(), data_digest(&data))]);
        if let Some(v) = version {
            annotations.insert(VERSION_ANNOTATION.to_string(), v.to_string());
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([("tinystacks.io/database".to_string(), self.db.name_any())])),
                annotations: Some(annotations),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        };
        // The payload holds the password: only the name goes to logs and events.
        let edited = existing.as_ref().is_some_and(|s| !digest_matches(s));
        match existing {
            Some(existing) => owned.update(existing, secret).await?,
            None => match owned.create(secret.clone()).await? {
                Created::New => {}
                Created::Existed(existing) => owned.update(*existing, secret).await?,
            },
        }
        debug!(secret = %name, "connection Secret written");
        if edited {
            let note = format!("the connection Secret {name} was changed by hand; wrote the credentials again");
            self.event(EventType::Warning, "DriftRepaired", note).await;
        } else {
            let note = format!("wrote the connection Secret {name} (for envFrom)");
            self.event(EventType::Normal, "WroteConnectionSecret", note).await;
        }
        Ok(())
    }

    /// Deletes the connection Secret the status names when it is no longer wanted under that name
    /// (renamed, or disabled), if it is this Database's.
    async fn remove_stale_connection_secret(&self, owned: &OwnedSecrets<'_, Database>) -> Result<()> {
        let Some(old) = self.db.status.as_ref().and_then(|s| s.connection_secret_name.clone()) else {
            return Ok(());
        };
        if self.db.spec.connection_secret.enabled && old == self.names.connection_secret {
            return Ok(());
        }
        if owned.delete_if_ours(&old).await? {
            self.event(EventType::Normal, "DeletedConnectionSecret", format!("deleted the Secret {old}")).await;
        }
        Ok(())
    }
}

/// The connection Secret's keys that carry no password.
fn plain_keys(host: &str, port: i32, dbname: &str, user: &str, arn: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("PG_HOST", host.to_string()),
        ("PG_PORT", port.to_string()),
        ("PG_DATABASE", dbname.to_string()),
        ("PG_USER", user.to_string()),
        ("PG_CREDENTIALS_SECRET", arn.to_string()),
    ])
}

/// Whether a connection Secret needs no rewrite: its data is what the operator wrote (the digest),
/// its plain keys are as expected, and it was written from the secret's current version.
fn connection_secret_current(
    secret: &Secret,
    expected: &BTreeMap<&'static str, String>,
    version: Option<&str>,
) -> bool {
    let Some(data) = &secret.data else { return false };
    let value = |k: &str| data.get(k).map(|v| v.0.as_slice());
    let plain = PLAIN_KEYS.iter().all(|k| value(k) == expected.get(k).map(|v| v.as_bytes()));
    let annotated = secret.annotations().get(VERSION_ANNOTATION).map(String::as_str);
    plain && digest_matches(secret) && (version.is_none() || annotated == version)
}

/// Whether the Secret's data is exactly what its digest annotation says was written.
fn digest_matches(secret: &Secret) -> bool {
    let written = secret.annotations().get(DIGEST_ANNOTATION);
    let data = secret.data.clone().unwrap_or_default();
    written.is_some_and(|d| *d == data_digest(&data))
}

/// SHA-256 over every key and value, each length-prefixed so that no two maps read the same.
fn data_digest(data: &BTreeMap<String, ByteString>) -> String {
    let mut hash = Sha256::new();
    for (key, value) in data {
        hash.update((key.len() as u64).to_be_bytes());
        hash.update(key.as_bytes());
        hash.update((value.0.len() as u64).to_be_bytes());
        hash.update(&value.0);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(data: &[(&str, &str)], version: &str) -> Secret {
        let data: BTreeMap<String, ByteString> =
            data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect();
        let mut s = Secret::default();
        s.metadata.annotations = Some(BTreeMap::from([
            (DIGEST_ANNOTATION.to_string(), data_digest(&data)),
            (VERSION_ANNOTATION.to_string(), version.to_string()),
        ]));
        s.data = Some(data);
        s
    }

    #[test]
    fn an_edit_of_any_key_or_a_newer_version_makes_it_stale() {
        let expected = plain_keys("h", 5432, "app", "app", "arn");
        let mut data: Vec<(&str, &str)> = expected.iter().map(|(k, v)| (*k, v.as_str())).collect();
        data.extend([("PG_PASSWORD", "pw"), ("DATABASE_URL", "postgres://app:pw@h:5432/app")]);
        let secret = written(&data, "v1");
        assert!(connection_secret_current(&secret, &expected, Some("v1")));
        assert!(!connection_secret_current(&secret, &expected, Some("v2")), "a newer version");
        for key in ["PG_PASSWORD", "DATABASE_URL", "PG_HOST"] {
            let mut edited = secret.clone();
            edited.data.as_mut().unwrap().insert(key.into(), ByteString(b"other".to_vec()));
            assert!(!connection_secret_current(&edited, &expected, Some("v1")), "{key} edited");
        }
        let mut added = secret.clone();
        added.data.as_mut().unwrap().insert("EXTRA".into(), ByteString(b"x".to_vec()));
        assert!(!connection_secret_current(&added, &expected, Some("v1")), "a key added");
        let mut unannotated = secret;
        unannotated.metadata.annotations = None;
        assert!(!connection_secret_current(&unannotated, &expected, Some("v1")), "written before digests");
    }

    #[test]
    fn the_digest_separates_keys_from_values() {
        let one = BTreeMap::from([("ab".to_string(), ByteString(b"c".to_vec()))]);
        let two = BTreeMap::from([("a".to_string(), ByteString(b"bc".to_vec()))]);
        assert_ne!(data_digest(&one), data_digest(&two));
        assert_eq!(data_digest(&one).len(), 64);
    }
}
