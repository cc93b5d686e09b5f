//! The bundle format.
//!
//! A bundle is a directory that any static HTTP server can serve (or one `.kbundle` tar file):
//!
//! ```text
//! manifest.json            the manifest (exact bytes are signed)
//! manifest.sig             {"signatures":[{"key_id":…,"signature":…}]}
//! chunks/ab/<sha256>.zst   chunk store, named by the sha256 of the uncompressed chunk
//! ```
//!
//! Readers verify the signature over the exact manifest bytes before parsing anything else,
//! then check the manifest's structure and the device policy (compatible string, sequence,
//! expiry); see [`open::open_verified`].

pub mod chunker;
pub mod keys;
pub mod manifest;
pub mod open;
pub mod source;
pub mod writer;

/// Manifest file name inside a bundle.
pub const MANIFEST: &str = "manifest.json";
/// Signature file name inside a bundle.
pub const SIGNATURES: &str = "manifest.sig";

/// Path of a chunk inside a bundle: `chunks/ab/<sha256>.zst`.
pub fn chunk_path(sha256: &str) -> String {
    format!("chunks/{}/{sha256}.zst", &sha256[..2])
}
