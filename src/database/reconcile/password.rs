//! The master password: the Secrets Manager secret is its source, and RDS follows it.
//!
//! The secret carries a tag naming the version whose password RDS was last given. A version made
//! by someone else (a password changed in the console) differs from it: RDS is given that
//! password (ModifyDBInstance) unless it is the password of the tagged version (the operator's
//! own endpoint writes), then the tag is moved, then the connection Secret, written from an older
//! version, is written again. Each step is found again after a crash: giving RDS the same
//! password twice is harmless. The comparison reads only the inventory (ListSecrets returns tags
//! and the current version), so a steady state costs no call per Database.
//!
//! The annotation `tinystacks.io/rotate-password` asks for a new password: each new value once
//! (the value carried out is recorded in `tinystacks.io/password-rotated`). The new password goes
//! into Secrets Manager first, as a version whose ID (the idempotency token) is derived from the
//! Database's UID and the annotation's value, then RDS follows as above. When the secret itself
//! was lost while the instance lives, a new value creates it again with a new password (the only
//! case where a password is made for an existing instance).

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Converge;
use crate::api::DatabaseStatus;
use crate::aws::inventory::SecretInfo;
use crate::database::credentials::SecretDocument;
use crate::database::plan::{RDS_VERSION_TAG, ROTATE_ANNOTATION};
use crate::error::{Error, Result};
use crate::runtime::conditions::Health;
use crate::runtime::reconciler::{self, Step};

/// The value of `ROTATE_ANNOTATION` last carried out, written by the operator.
const ROTATED_ANNOTATION: &str = "tinystacks.io/password-rotated";

/// The token of the rotation asked for with the annotation value `value` on the object `uid`: a
/// version ID for Secrets Manager (32 to 64 characters), the same for the same request.
pub fn rotation_token(uid: &str, value: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(ROTATE_ANNOTATION.as_bytes());
    hash.update([0]);
    hash.update(uid.as_bytes());
    hash.update([0]);
    hash.update(value.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Converge<'_> {
    /// The token of the rotation the annotation asks for, if it asks for one not carried out yet.
    pub(super) fn rotation_request(&self) -> Option<String> {
        let annotations = self.db.annotations();
        let value = annotations.get(ROTATE_ANNOTATION).filter(|v| !v.is_empty())?;
        (annotations.get(ROTATED_ANNOTATION) != Some(value)).then(|| rotation_token(&self.uid, value))
    }

    /// Records on the secret that RDS has (or is about to get) the password of `version`.
    pub(super) async fn record_password_version(&self, secret: &SecretInfo, version: Option<&str>) -> Result<()> {
        match version {
            Some(v) if secret.tags.get(RDS_VERSION_TAG) != Some(v) => {
                self.aws.tag_secret(&secret.arn, &[(RDS_VERSION_TAG, v)]).await
            }
            _ => Ok(()),
        }
    }

    /// RDS gets the password of the secret's current version (the plan saw the secret's current
    /// version differ from the one tagged as RDS's).
    pub(super) async fn follow_password(mut self, secret: &SecretInfo) -> Result<Step<DatabaseStatus>> {
        let value = self.aws.secret_value(&secret.arn).await?;
        let document = value.document.map_err(|why| Error::SecretUnusable { name: self.names.secret.clone(), why })?;
        let Some(version) = value.version else {
            return self.next("Observing", format!("the secret {} has no current version", self.names.secret));
        };
        // The operator's own writes (the endpoint) make versions with the password RDS has: then
        // only the tag moves. Each of the two steps is one mutation, so an operator that crashes
        // after every mutation still gets on.
        let given = match secret.tags.get(RDS_VERSION_TAG) {
            Some(old) => self.aws.secret_version_value(&secret.arn, old).await?.and_then(|v| v.document.ok()),
            None => None,
        };
        let changed = given.is_none_or(|old| old.password != document.password);
        if changed {
            self.aws.set_master_password(&self.names.instance, &document.password).await?;
        }
        self.aws.tag_secret(&secret.arn, &[(RDS_VERSION_TAG, &version)]).await?;
        if !changed {
            return self
                .next("RecordingPasswordVersion", format!("the secret {} has a new version", self.names.secret));
        }
        let note = format!(
            "gave the DB instance {} the password of version {version} of the secret {}; the connection Secret follows",
            self.names.instance, self.names.secret
        );
        self.event(EventType::Normal, "UpdatedMasterPassword", note).await;
        let message =
            format!("RDS is applying the password of the secret {} to {}", self.names.secret, self.names.instance);
        self.busy("UpdatingPassword", message)
    }

    /// Writes a new password into the secret as the version `token` (once: a version of that ID
    /// means it was written, by a pass that may have crashed since), and records the request as
    /// carried out; RDS follows on the next pass.
    pub(super) async fn rotate(self, secret: &SecretInfo, token: &str) -> Result<Step<DatabaseStatus>> {
        if secret.current_version.as_deref() != Some(token) {
            let password = self.aws.random_password().await?;
            let spec = &self.db.spec;
            // A value that cannot be read is replaced whole: the reset path for a secret spoiled by hand.
            let document = match self.aws.secret_value(&secret.arn).await?.document {
                Ok(document) => SecretDocument { password, ..document },
                Err(_) => {
                    SecretDocument::new(&spec.master_username, password, &spec.database_name, &self.names.instance)
                }
            };
            self.aws.put_secret_value(&secret.arn, &document, Some(token)).await?;
        }
        let value = self.db.annotations().get(ROTATE_ANNOTATION).cloned().unwrap_or_default();
        reconciler::annotate(self.db, self.ctx, json!({ROTATED_ANNOTATION: value})).await?;
        let note = format!(
            "wrote a new master password into the secret {} (annotation {ROTATE_ANNOTATION}); the DB instance {} follows",
            self.names.secret, self.names.instance
        );
        self.event(EventType::Normal, "RotatedPassword", note).await;
        // Not on in this pass: the object it holds does not show the record yet; the patch's own
        // watch event starts the next pass.
        let message = format!("wrote a new password into the secret {}", self.names.secret);
        let health = Health::progressing("RotatingPassword", message);
        Ok(Step { status: self.status, health, requeue_after: Some(Duration::from_secs(1)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_stable_per_request_and_a_valid_version_id() {
        let token = rotation_token("uid-1", "2026-12-03");
        assert_eq!(token, rotation_token("uid-1", "2026-12-03"));
        assert_ne!(token, rotation_token("uid-1", "2026-12-04"), "a new value, a new password");
        assert_ne!(token, rotation_token("uid-2", "2026-12-03"), "another object, another token");
        assert!((32..=64).contains(&token.len()) && token.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
