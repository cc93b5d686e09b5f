//! ed25519 keys and manifest signatures.
//!
//! Key files are one line of text: `kiln-ed25519-secret-v1 <hex>` or `kiln-ed25519-public-v1
//! <hex>`. A key id is the first 16 hex digits of the sha256 of the public key. Signatures are
//! counted once per key id, whatever the number of entries that name it.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

const SECRET_TAG: &str = "kiln-ed25519-secret-v1";
const PUBLIC_TAG: &str = "kiln-ed25519-public-v1";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a Kiln {0} key file")]
    Format(&'static str),
    #[error("invalid key bytes")]
    Bytes,
    #[error("cannot get randomness: {0}")]
    Random(String),
}

/// Why a signature file does not vouch for a manifest.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("manifest.sig is malformed: {0}")]
    Malformed(String),
    #[error("signature by key {0} does not verify over the manifest")]
    BadSignature(String),
    #[error("manifest is signed only by unknown keys {0:?}")]
    UnknownKeys(Vec<String>),
    #[error("manifest has {valid} valid signature(s) from distinct trusted keys, {needed} needed")]
    NotEnough { valid: usize, needed: usize },
}

/// The 32 key bytes of a key file `<tag> <hex>`.
fn key_bytes(text: &str, tag: &str, kind: &'static str) -> Result<[u8; 32], KeyError> {
    let hexed = text
        .trim()
        .strip_prefix(tag)
        .ok_or(KeyError::Format(kind))?;
    hex::decode(hexed.trim())
        .map_err(|_| KeyError::Bytes)?
        .try_into()
        .map_err(|_| KeyError::Bytes)
}

fn key_id(public: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(public.as_bytes()))[..16].to_string()
}

/// A private signing key.
pub struct SecretKey(SigningKey);

/// A trusted public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(seed))
    }

    /// A key from a fixed seed (tests and fixtures).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn to_file(&self) -> String {
        format!("{SECRET_TAG} {}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn from_file(text: &str) -> Result<SecretKey, KeyError> {
        Ok(SecretKey::from_seed(key_bytes(text, SECRET_TAG, "secret")?))
    }

    /// Signs the exact manifest bytes.
    pub fn sign(&self, manifest: &[u8]) -> SignatureEntry {
        SignatureEntry {
            key_id: self.public().key_id(),
            signature: hex::encode(self.0.sign(manifest).to_bytes()),
        }
    }
}

impl PublicKey {
    pub fn key_id(&self) -> String {
        key_id(&self.0)
    }

    pub fn to_file(&self) -> String {
        format!("{PUBLIC_TAG} {}\n", hex::encode(self.0.as_bytes()))
    }

    pub fn from_file(text: &str) -> Result<PublicKey, KeyError> {
        VerifyingKey::from_bytes(&key_bytes(text, PUBLIC_TAG, "public")?)
            .map(PublicKey)
            .map_err(|_| KeyError::Bytes)
    }
}

/// One signature in `manifest.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub key_id: String,
    pub signature: String,
}

/// The content of `manifest.sig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    pub signatures: Vec<SignatureEntry>,
}

/// Verifies `sig_file` over the exact `manifest` bytes. Succeeds when at least `threshold`
/// distinct trusted key ids have a valid signature; returns those key ids.
pub fn verify(
    manifest: &[u8],
    sig_file: &[u8],
    trusted: &[PublicKey],
    threshold: usize,
) -> Result<BTreeSet<String>, SignatureError> {
    let sigs: Signatures =
        serde_json::from_slice(sig_file).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let mut valid = BTreeSet::new();
    let mut unknown = Vec::new();
    let mut bad = None;
    for entry in &sigs.signatures {
        let Some(key) = trusted.iter().find(|k| k.key_id() == entry.key_id) else {
            unknown.push(entry.key_id.clone());
            continue;
        };
        let ok = hex::decode(&entry.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .is_some_and(|sig| key.0.verify_strict(manifest, &sig).is_ok());
        if ok {
            valid.insert(entry.key_id.clone());
        } else {
            bad.get_or_insert_with(|| entry.key_id.clone());
        }
    }
    let needed = threshold.max(1);
    if valid.len() >= needed {
        return Ok(valid);
    }
    if let Some(k) = bad {
        return Err(SignatureError::BadSignature(k));
    }
    if valid.is_empty() && !unknown.is_empty() {
        return Err(SignatureError::UnknownKeys(unknown));
    }
    Err(SignatureError::NotEnough {
        valid: valid.len(),
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig_file(entries: Vec<SignatureEntry>) -> Vec<u8> {
        serde_json::to_vec(&Signatures {
            signatures: entries,
        })
        .unwrap()
    }

    #[test]
    fn key_files_round_trip() {
        let k = SecretKey::from_seed([7; 32]);
        let again = SecretKey::from_file(&k.to_file()).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(
            PublicKey::from_file(&k.public().to_file()).unwrap(),
            k.public()
        );
        assert_eq!(k.public().key_id().len(), 16);
        assert!(
            PublicKey::from_file(&k.to_file()).is_err(),
            "a secret key is not a public key"
        );
    }

    #[test]
    fn verification_cases() {
        let a = SecretKey::from_seed([1; 32]);
        let b = SecretKey::from_seed([2; 32]);
        let stranger = SecretKey::from_seed([3; 32]);
        let m = b"{\"manifest\":1}";
        let trusted = [a.public(), b.public()];
        assert!(verify(m, &sig_file(vec![a.sign(m)]), &trusted, 1).is_ok());
        // Tampered manifest.
        assert_eq!(
            verify(b"{\"manifest\":2}", &sig_file(vec![a.sign(m)]), &trusted, 1),
            Err(SignatureError::BadSignature(a.public().key_id()))
        );
        // Unknown key only.
        assert_eq!(
            verify(m, &sig_file(vec![stranger.sign(m)]), &trusted, 1),
            Err(SignatureError::UnknownKeys(vec![stranger
                .public()
                .key_id()]))
        );
        // Duplicates of one key id count once.
        assert_eq!(
            verify(m, &sig_file(vec![a.sign(m), a.sign(m)]), &trusted, 2),
            Err(SignatureError::NotEnough {
                valid: 1,
                needed: 2
            })
        );
        assert_eq!(
            verify(m, &sig_file(vec![a.sign(m), b.sign(m)]), &trusted, 2)
                .unwrap()
                .len(),
            2
        );
        // Garbage.
        assert!(matches!(
            verify(m, b"nope", &trusted, 1),
            Err(SignatureError::Malformed(_))
        ));
    }
}
