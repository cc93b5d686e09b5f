//! Opening a bundle: signature first, then structure, then policy.

use super::keys::{verify, PublicKey, SignatureError};
use super::manifest::{
    Manifest, Policy, PolicyError, StructureError, MANIFEST_CAP, SIGNATURES_CAP,
};
use super::source::{BundleSource, SourceError};
use super::{MANIFEST, MANIFEST_ZST, SIGNATURES, SIGNATURES_ZST};
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
    #[error("manifest.json.zst (signed) does not decompress: {0}")]
    Decompress(String),
    #[error("manifest.json is inconsistent: {0}")]
    Structure(#[from] StructureError),
    #[error("bundle refused")]
    Policy(#[from] PolicyError),
}

/// A manifest that passed every check, with its bytes (the signed bytes, or what the signed
/// compressed bytes decompress to).
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
    let (bytes, key_ids) = match src.read(MANIFEST_ZST, limits.manifest) {
        Ok(z) => {
            let sigs = src.read(SIGNATURES_ZST, limits.signatures)?;
            let key_ids = verify(&z, &sigs, trusted, threshold)?;
            (decompress(&z, limits.manifest)?, key_ids)
        }
        // A bundle without the compressed pair (older `kiln bundle`): the plain one.
        Err(SourceError::NotFound { .. }) => {
            let bytes = src.read(MANIFEST, limits.manifest)?;
            let sigs = src.read(SIGNATURES, limits.signatures)?;
            let key_ids = verify(&bytes, &sigs, trusted, threshold)?;
            (bytes, key_ids)
        }
        Err(e) => return Err(e.into()),
    };
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

/// log2 of the largest zstd window a compressed manifest may use (8 MiB: `MANIFEST_CAP`).
const MANIFEST_WINDOW_LOG: u32 = 23;

/// The signed, compressed manifest decompressed, at most `cap` bytes. A frame that declares
/// its size (as `kiln bundle` writes it) is decoded in one shot into exactly that many bytes,
/// with no window buffer beside them; another is streamed under [`MANIFEST_WINDOW_LOG`].
fn decompress(z: &[u8], cap: u64) -> Result<Vec<u8>, OpenError> {
    let bad = |e: &dyn std::fmt::Display| OpenError::Decompress(e.to_string());
    if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(z) {
        if n > cap {
            return Err(bad(&format!("more than {cap} bytes decompressed")));
        }
        let mut out = Vec::with_capacity(n as usize);
        // The output cannot outgrow the buffer: more data than declared is an error.
        zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(z, &mut out))
            .map_err(|e| bad(&e))?;
        return Ok(out);
    }
    let mut d = zstd::stream::read::Decoder::new(z).map_err(|e| bad(&e))?;
    // The window (memory) a frame may ask for: the cap's size, not zstd's default 128 MiB.
    d.window_log_max(MANIFEST_WINDOW_LOG).map_err(|e| bad(&e))?;
    kiln_io::read_capped(d, cap).map_err(|e| match e {
        kiln_io::CappedError::TooLarge { cap } => {
            bad(&format!("more than {cap} bytes decompressed"))
        }
        kiln_io::CappedError::Io(e) => bad(&e),
    })
}
