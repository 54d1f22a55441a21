//! The SSH key the operator generates for an `Ssh` Bastion without `sshPublicKey`: ed25519, written
//! once to the Bastion's Secret in OpenSSH format. The private half exists only in that Secret; its
//! type never prints it.

use std::fmt::Debug;

use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};

/// The Secret keys (`kubernetes.io/ssh-auth` requires `ssh-privatekey`).
pub const PRIVATE_KEY: &str = "ssh-privatekey";
pub const PUBLIC_KEY: &str = "ssh-publickey";

/// An OpenSSH private key; `Debug` shows nothing of it.
pub struct GeneratedKey {
    private_openssh: String,
    /// `ssh-ed25519 AAAA... <comment>`
    pub public_openssh: String,
}

impl Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("private_openssh", &crate::aws::errors::Redacted)
            .field("public_openssh", &self.public_openssh)
            .finish()
    }
}

impl GeneratedKey {
    /// A new ed25519 key pair with `comment` (which ends up in the public key).
    pub fn generate(comment: &str) -> Result<Self, String> {
        let seed: [u8; 32] = rand::random();
        let keypair = Ed25519Keypair::from_seed(&seed);
        let private = PrivateKey::new(KeypairData::Ed25519(keypair), comment)
            .map_err(|e| format!("could not build the key: {e}"))?;
        let private_openssh =
            private.to_openssh(LineEnding::LF).map_err(|e| format!("could not encode the key: {e}"))?.to_string();
        let public_openssh =
            private.public_key().to_openssh().map_err(|e| format!("could not encode the public key: {e}"))?;
        Ok(Self { private_openssh, public_openssh })
    }

    /// The private key's bytes, for the Secret only.
    pub fn private_bytes(&self) -> Vec<u8> {
        self.private_openssh.as_bytes().to_vec()
    }
}

/// The OpenSSH public key of a private key read from the Secret, or why it cannot be read (the
/// reason never quotes the key).
pub fn public_key_of(private_openssh: &[u8]) -> Result<String, String> {
    let private =
        PrivateKey::from_openssh(private_openssh).map_err(|_| "it does not hold an OpenSSH private key".to_string())?;
    if private.is_encrypted() {
        return Err("its private key is encrypted with a passphrase".into());
    }
    private.public_key().to_openssh().map_err(|e| format!("its public key cannot be encoded: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_and_hides_in_debug() {
        let key = GeneratedKey::generate("bastion ops").unwrap();
        assert!(key.public_openssh.starts_with("ssh-ed25519 "), "{}", key.public_openssh);
        let pem = String::from_utf8(key.private_bytes()).unwrap();
        assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert_eq!(public_key_of(pem.as_bytes()).unwrap(), key.public_openssh);
        let debug = format!("{key:?}");
        assert!(!debug.contains("PRIVATE KEY") && debug.contains("redacted"), "{debug}");
        assert_ne!(GeneratedKey::generate("x").unwrap().public_openssh, key.public_openssh);
        assert!(public_key_of(b"garbage").is_err());
    }
}
