//! Chunks the running slot already holds, offered to an install so it copies them instead of
//! downloading them. The index (where each chunk lies in the running slot) comes from the
//! manifest recorded when that slot was installed; it is not trusted: every chunk taken from
//! the seed is read and hashed against the *new* manifest's digest, and a mismatch (a stale
//! index, a damaged slot) falls back to downloading that chunk.

use crate::bundle::manifest::{Chunk, Payload};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

pub struct Seed<'a> {
    file: &'a File,
    base: u64,
    /// sha256 → (offset, length) in `file` from `base`.
    index: HashMap<&'a str, (u64, u32)>,
}

impl<'a> Seed<'a> {
    /// The chunks of `payload` (the running slot's description) in `file` at `base`.
    pub fn new(file: &'a File, base: u64, payload: &'a Payload) -> Seed<'a> {
        let index = payload
            .chunks
            .iter()
            .map(|c| (c.sha256.as_str(), (c.offset, c.length)))
            .collect();
        Seed { file, base, index }
    }

    /// Chunks indexed.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The bytes of `c` from the running slot, if it holds them (verified).
    pub fn take(&self, c: &Chunk) -> Option<Vec<u8>> {
        let &(offset, length) = self.index.get(c.sha256.as_str())?;
        if length != c.length {
            return None;
        }
        let mut buf = vec![0u8; length as usize];
        self.file.read_exact_at(&mut buf, self.base + offset).ok()?;
        if hex::encode(Sha256::digest(&buf)) != c.sha256 {
            tracing::warn!(
                "chunk {} is not where the running slot's manifest says; downloading it",
                c.sha256
            );
            return None;
        }
        Some(buf)
    }
}
