//! Chunks the running slot already holds, offered to an install so it copies them instead of
//! downloading them. The index (where each chunk lies in the running slot) comes from the
//! manifest recorded when that slot was installed; it is not trusted: every chunk taken from
//! the seed is read and hashed against the *new* manifest's digest, and a mismatch (a stale
//! index, a damaged slot) falls back to downloading that chunk. A slot with no recorded
//! manifest (written at the factory, or its record lost) is indexed instead
//! ([`crate::slot_index`]).

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

    /// Whether the index says the running slot holds `c` (not yet read or verified).
    pub fn indexes(&self, c: &Chunk) -> bool {
        self.index
            .get(c.sha256.as_str())
            .is_some_and(|&(_, length)| length == c.length)
    }

    /// The bytes of `c` from the running slot, if it holds them (verified).
    pub fn take(&self, c: &Chunk) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        self.take_into(c, &mut buf).then_some(buf)
    }

    /// Reads `c` from the running slot into `buf`; whether it was there (verified).
    pub fn take_into(&self, c: &Chunk, buf: &mut Vec<u8>) -> bool {
        let Some(&(offset, length)) = self.index.get(c.sha256.as_str()) else {
            return false;
        };
        if length != c.length {
            return false;
        }
        buf.clear();
        buf.resize(length as usize, 0);
        if self.file.read_exact_at(buf, self.base + offset).is_err() {
            return false;
        }
        if hex::encode(Sha256::digest(&buf[..])) != c.sha256 {
            tracing::warn!(
                "chunk {} is not where the running slot's manifest says; downloading it",
                c.sha256
            );
            return false;
        }
        true
    }
}

/// What installing `new` costs a device whose running slot holds `old` (its chunks indexed the
/// way [`Seed`] indexes them): the chunks [`crate::install::write_payload`] fetches — every
/// occurrence of a digest `old` lacks — and their stored (compressed) bytes.
pub fn expected_download(new: &Payload, old: Option<&Payload>) -> (u64, u64) {
    let have: std::collections::HashSet<&str> = old
        .map(|o| o.chunks.iter().map(|c| c.sha256.as_str()).collect())
        .unwrap_or_default();
    new.chunks
        .iter()
        .filter(|c| !have.contains(c.sha256.as_str()))
        .fold((0, 0), |(n, b), c| (n + 1, b + c.stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(chunks: &[(&str, u64)]) -> Payload {
        let mut off = 0;
        Payload {
            size: 0,
            sha256: String::new(),
            chunks: chunks
                .iter()
                .map(|&(s, stored)| {
                    off += 10;
                    Chunk {
                        offset: off - 10,
                        length: 10,
                        sha256: s.into(),
                        stored,
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn chunks_the_old_slot_lacks_count_at_each_occurrence() {
        let old = payload(&[("a", 0), ("b", 0)]);
        let new = payload(&[("a", 5), ("c", 7), ("c", 7), ("b", 3), ("d", 11)]);
        assert_eq!(expected_download(&new, Some(&old)), (3, 25));
        assert_eq!(expected_download(&new, None), (5, 33));
    }
}
