//! Where a bundle keeps its chunks, and reading one.
//!
//! Two layouts, told apart by whether `chunks.pack` exists:
//! - **packed** (what `kiln bundle` writes): `chunks.pack` holds every distinct chunk once, its
//!   zstd frame at its first occurrence in payload order (root, kernel, initrd), back to back.
//!   Each chunk's place follows from the signed manifest alone (the `stored` sizes of the
//!   distinct chunks before it), so no index is fetched or trusted; a run of chunks is one
//!   HTTP range request.
//! - **one file per chunk** (`chunks/ab/<sha256>.zst`: bundles written before the pack, or
//!   with `kiln bundle --chunk-files` for updaters that predate it): one request per chunk.
//!
//! Either way every chunk is verified against the manifest's digest after decompression, so
//! the layout is not a security boundary: a forged pack or a wrong probe can only fail the
//! install.

use super::chunk_path;
use super::manifest::{Chunk, Manifest};
use super::source::{BundleSource, SourceError};
use std::collections::HashMap;
use std::io::Read;

/// The packed chunk store's file name inside a bundle.
pub const PACK: &str = "chunks.pack";

/// Where each distinct chunk of `m` lies in `chunks.pack`: `sha256 → (offset, stored)`.
pub fn pack_offsets(m: &Manifest) -> HashMap<&str, (u64, u64)> {
    let mut at = 0u64;
    let mut map = HashMap::new();
    for (_, p) in m.payloads.named() {
        for c in &p.chunks {
            map.entry(c.sha256.as_str()).or_insert_with(|| {
                let here = at;
                at = at.saturating_add(c.stored);
                (here, c.stored)
            });
        }
    }
    map
}

/// A bundle's chunks: its source and, when it has `chunks.pack`, where each chunk lies in it.
pub struct ChunkStore<'a> {
    src: &'a dyn BundleSource,
    pack: Option<HashMap<&'a str, (u64, u64)>>,
}

impl<'a> ChunkStore<'a> {
    /// The chunks of the bundle behind `src`, described by its verified manifest `m`: packed
    /// when the bundle has `chunks.pack` (one probe), else one file per chunk.
    pub fn open(src: &'a dyn BundleSource, m: &'a Manifest) -> Result<Self, SourceError> {
        let pack = src.exists(PACK)?.then(|| pack_offsets(m));
        Ok(ChunkStore { src, pack })
    }

    /// The chunks of a bundle with one file per chunk (no probe).
    pub fn files(src: &'a dyn BundleSource) -> Self {
        ChunkStore { src, pack: None }
    }

    pub fn source(&self) -> &'a dyn BundleSource {
        self.src
    }

    /// Whether the chunks are packed.
    pub fn is_packed(&self) -> bool {
        self.pack.is_some()
    }

    /// `c`'s place in `chunks.pack` (offset, stored length), if the chunks are packed.
    pub fn place(&self, c: &Chunk) -> Option<(u64, u64)> {
        self.pack.as_ref()?.get(c.sha256.as_str()).copied()
    }

    /// `c`'s stored (compressed) bytes, at most `c.stored` of them.
    pub fn read_chunk(&self, c: &Chunk) -> Result<Vec<u8>, SourceError> {
        let Some(pack) = &self.pack else {
            return self.src.read(&chunk_path(&c.sha256), c.stored);
        };
        let &(offset, len) = pack
            .get(c.sha256.as_str())
            .ok_or_else(|| SourceError::NotFound {
                name: format!("{PACK}: chunk {}", c.sha256),
                bundle: self.src.describe(),
            })?;
        let mut buf = vec![0u8; len as usize];
        self.src
            .read_range(PACK, offset, len)?
            .read_exact(&mut buf)
            .map_err(|source| SourceError::Io {
                name: format!("{PACK} bytes {offset}+{len} from {}", self.src.describe()),
                source,
            })?;
        Ok(buf)
    }
}
