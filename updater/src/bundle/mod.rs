//! The bundle format.
//!
//! A bundle is a directory that any static HTTP server can serve (or one `.kbundle` tar file):
//!
//! ```text
//! manifest.json            the manifest (exact bytes are signed)
//! manifest.sig             {"signatures":[{"key_id":…,"signature":…}]}
//! manifest.json.zst        the same manifest, zstd-compressed (a quarter of the bytes to fetch)
//! manifest.json.zst.sig    signatures over the exact compressed bytes
//! chunks.pack              chunk store: each distinct chunk's zstd frame once, in manifest order
//! ```
//!
//! (or, instead of the pack, `chunks/ab/<sha256>.zst`: one file per chunk, named by the sha256
//! of the uncompressed chunk; see [`store`].)
//!
//! Readers take the compressed pair when the bundle has it, else the plain one. They verify the
//! signature over the exact bytes read before decompressing or parsing anything, then check the
//! manifest's structure and the device policy (compatible string, sequence, expiry); see
//! [`open::open_verified`].

pub mod chunker;
pub mod expected;
pub mod keys;
pub mod manifest;
pub mod open;
pub mod source;
pub mod store;
pub mod writer;

/// Manifest file name inside a bundle.
pub const MANIFEST: &str = "manifest.json";
/// Signature file name inside a bundle.
pub const SIGNATURES: &str = "manifest.sig";
/// The compressed manifest and the signatures over its bytes.
pub const MANIFEST_ZST: &str = "manifest.json.zst";
pub const SIGNATURES_ZST: &str = "manifest.json.zst.sig";
/// zstd level of the compressed manifest (sha256 digests compress about 2×, the rest far more).
pub const MANIFEST_ZSTD_LEVEL: i32 = 19;

/// Path of a chunk inside a bundle: `chunks/ab/<sha256>.zst`.
pub fn chunk_path(sha256: &str) -> String {
    format!("chunks/{}/{sha256}.zst", &sha256[..2])
}
