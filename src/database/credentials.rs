//! The master credentials and the two places they are written: the Secrets Manager secret (the
//! JSON shape RDS rotation functions use) and the Kubernetes Secret for `envFrom`. The password
//! lives only in [`Password`], whose Debug output is redacted and which has no Display; the secret scan (tests/secret_scan.rs) checks the whole suite for it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::plan::{ENGINE, PORT};
use crate::aws::errors::Redacted;

/// The master password. Neither Debug nor serde errors show it; it reaches text only through
/// [`Password::expose`], at the few places that write it to AWS or to the Secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Redacted.fmt(f)
    }
}

/// The secret's JSON: `{"engine","host","port","username","password","dbname",
/// "dbInstanceIdentifier"}` (API.md). `host` is empty until RDS reports the endpoint.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretDocument {
    pub engine: String,
    pub host: String,
    pub port: i32,
    pub username: String,
    pub password: Password,
    pub dbname: String,
    pub db_instance_identifier: String,
}

impl fmt::Debug for SecretDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretDocument")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &Redacted)
            .field("dbname", &self.dbname)
            .field("dbInstanceIdentifier", &self.db_instance_identifier)
            .finish()
    }
}

impl SecretDocument {
    /// The document of a new instance: no host yet.
    pub fn new(username: &str, password: Password, dbname: &str, instance: &str) -> Self {
        Self {
            engine: ENGINE.into(),
            host: String::new(),
            port: PORT,
            username: username.into(),
            password,
            dbname: dbname.into(),
            db_instance_identifier: instance.into(),
        }
    }

    /// Parses a secret value. The error never quotes the value: serde's messages can.
    pub fn parse(value: &str) -> Result<Self, String> {
        serde_json::from_str(value).map_err(|e| {
            format!("it is not the JSON this operator writes (error at line {}, column {})", e.line(), e.column())
        })
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and an integer always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The same credentials with every field but the password set to what they should be.
    pub fn updated(&self, host: &str, port: i32, username: &str, dbname: &str, instance: &str) -> Self {
        Self {
            engine: ENGINE.into(),
            host: host.into(),
            port,
            username: username.into(),
            password: self.password.clone(),
            dbname: dbname.into(),
            db_instance_identifier: instance.into(),
        }
    }
}

/// The keys of the connection Secret (API.md, and the seed's `PG_*` environment variables).
pub fn connection_data(doc: &SecretDocument, secret_arn: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PG_HOST".into(), doc.host.clone()),
        ("PG_PORT".into(), doc.port.to_string()),
        ("PG_DATABASE".into(), doc.dbname.clone()),
        ("PG_USER".into(), doc.username.clone()),
        ("PG_PASSWORD".into(), doc.password.expose().to_string()),
        ("PG_CREDENTIALS_SECRET".into(), secret_arn.into()),
        ("DATABASE_URL".into(), database_url(doc)),
    ])
}

/// `postgres://user:password@host:port/dbname?sslmode=require`, each part percent-encoded so that
/// any character survives a URL parser (the generated password has none that need it, but the
/// user name and a password rotated by someone else might).
pub fn database_url(doc: &SecretDocument) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{}?sslmode=require",
        encode(&doc.username),
        encode(doc.password.expose()),
        doc.host,
        doc.port,
        encode(&doc.dbname)
    )
}

/// Percent-encoding of everything outside RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(password: &str) -> SecretDocument {
        SecretDocument::new("app", Password::new(password.into()), "app", "db-1").updated(
            "db-1.x.rds.amazonaws.com",
            5432,
            "app",
            "app",
            "db-1",
        )
    }

    #[test]
    fn debug_never_shows_the_password() {
        let d = doc("s3cretValue42");
        assert!(!format!("{d:?}").contains("s3cretValue42"));
        assert!(!format!("{:?}", d.password).contains("s3cretValue42"));
    }

    #[test]
    fn the_json_has_the_rotation_shape_and_round_trips() {
        let d = doc("pw");
        let json: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["dbInstanceIdentifier", "dbname", "engine", "host", "password", "port", "username"]);
        assert_eq!(json["engine"], "postgres");
        assert_eq!(json["port"], 5432);
        assert_eq!(SecretDocument::parse(&d.to_json()).unwrap(), d);
    }

    #[test]
    fn parse_errors_do_not_quote_the_value() {
        let err = SecretDocument::parse(r#"{"password": "hunter2hunter2", "port": "x"}"#).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_url_is_encoded_and_has_every_part() {
        let d = SecretDocument::new("app", Password::new("a/b@c:d%".into()), "app", "db").updated(
            "h.example",
            5432,
            "app",
            "app",
            "db",
        );
        assert_eq!(database_url(&d), "postgres://app:a%2Fb%40c%3Ad%25@h.example:5432/app?sslmode=require");
        let data = connection_data(&d, "arn:secret");
        assert_eq!(data.len(), 7);
        assert_eq!(data["PG_CREDENTIALS_SECRET"], "arn:secret");
        assert_eq!(data["PG_PORT"], "5432");
    }
}
