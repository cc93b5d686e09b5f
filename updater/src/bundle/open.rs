//! Opening a bundle: signature first, then structure, then policy.

use super::keys::{verify, PublicKey, SignatureError};
use super::manifest::{
    Manifest, Policy, PolicyError, StructureError, MANIFEST_CAP, SIGNATURES_CAP,
};
use super::source::{BundleSource, SourceError};
use super::{MANIFEST, SIGNATURES};
use std::collections::BTreeSet;

/// Why a bundle was refused before anything was written.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("reading the bundle")]
    Source(#[from] SourceError),
    #[error("signature check failed")]
    Signature(#[from] SignatureError),
    #[error("manifest.json is not a valid manifest: {0}")]
    Parse(String),
    #[error("manifest.json is inconsistent")]
    Structure(#[from] StructureError),
    #[error("bundle refused")]
    Policy(#[from] PolicyError),
}

/// A manifest that passed every check, with the exact bytes that were signed.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
    pub key_ids: BTreeSet<String>,
}

/// Size caps for what is read before the signature is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub manifest: u64,
    pub signatures: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            manifest: MANIFEST_CAP,
            signatures: SIGNATURES_CAP,
        }
    }
}

/// Reads and checks a bundle's manifest: size caps, signatures (over the exact bytes, before
/// parsing them), structure, then the device `policy`.
pub fn open_verified(
    src: &dyn BundleSource,
    trusted: &[PublicKey],
    threshold: usize,
    policy: &Policy,
    limits: &Limits,
) -> Result<Verified, OpenError> {
    let bytes = src.read(MANIFEST, limits.manifest)?;
    let sigs = src.read(SIGNATURES, limits.signatures)?;
    let key_ids = verify(&bytes, &sigs, trusted, threshold)?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| OpenError::Parse(e.to_string()))?;
    manifest.check_structure()?;
    manifest.check_policy(policy)?;
    Ok(Verified {
        manifest,
        bytes,
        key_ids,
    })
}
