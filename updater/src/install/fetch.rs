//! One chunk's bytes, verified, into a buffer the caller reuses: from the target itself (a
//! resumed install), from the running slot (the seed) or from the bundle (fetched, size-capped,
//! decompressed with a hard length and window limit, hashed).

use super::InstallError;
use crate::bundle::manifest::Chunk;
use crate::bundle::store::ChunkStore;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// log2 of the largest zstd window a stored chunk may use: [`MAX_CHUNK`] (256 KiB) rounded up,
/// with room; zstd's default limit would let a hostile server make each worker allocate 128 MiB.
///
/// [`MAX_CHUNK`]: crate::bundle::manifest::MAX_CHUNK
const CHUNK_WINDOW_LOG: u32 = 20;

/// Whether `buf` holds exactly the bytes of `c`.
pub(super) fn matches(buf: &[u8], c: &Chunk) -> bool {
    buf.len() == c.length as usize && hex::encode(Sha256::digest(buf)) == c.sha256
}

/// Reads `c`'s place in `file` (at `base`) into `buf`; whether it holds `c`.
pub(super) fn read_matching(file: &File, base: u64, c: &Chunk, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    buf.resize(c.length as usize, 0);
    file.read_exact_at(buf, base + c.offset).is_ok() && matches(buf, c)
}

/// A worker's zstd context, kept across chunks (no allocation per chunk); frames asking for
/// more than [`CHUNK_WINDOW_LOG`] are refused.
pub(super) struct Decoder(zstd::bulk::Decompressor<'static>);

impl Decoder {
    pub(super) fn new() -> std::io::Result<Decoder> {
        let mut d = zstd::bulk::Decompressor::new()?;
        d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(CHUNK_WINDOW_LOG))?;
        Ok(Decoder(d))
    }
}

/// Fetches chunk `index` (`c`) of `payload` from `store` alone, decompresses it into `buf`
/// (no more than `c.length` bytes) and checks its sha256; returns the compressed size fetched.
pub(super) fn fetch_into(
    store: &ChunkStore<'_>,
    dec: &mut Decoder,
    payload: &str,
    index: usize,
    c: &Chunk,
    buf: &mut Vec<u8>,
) -> Result<u64, InstallError> {
    let z = store.read_chunk(c).map_err(|source| InstallError::Fetch {
        payload: payload.into(),
        index,
        sha256: c.sha256.clone(),
        source,
    })?;
    decode_into(dec, payload, index, c, &z, buf)
}

/// Decompresses the stored bytes `z` of chunk `index` (`c`) of `payload` into `buf` (no more
/// than `c.length` bytes) and checks its sha256; returns the compressed size.
pub(super) fn decode_into(
    dec: &mut Decoder,
    payload: &str,
    index: usize,
    c: &Chunk,
    z: &[u8],
    buf: &mut Vec<u8>,
) -> Result<u64, InstallError> {
    let corrupt = |reason: String| InstallError::Corrupt {
        payload: payload.into(),
        index,
        sha256: c.sha256.clone(),
        reason,
    };
    buf.clear();
    // One-shot decoding writes into the buffer and nowhere else: a frame that decodes to more
    // than its capacity (at least one byte more than the chunk) is an error, not an allocation.
    buf.reserve(c.length as usize + 1);
    dec.0
        .decompress_to_buffer(z, buf)
        .map_err(|e| corrupt(format!("decompressing: {e}")))?;
    if buf.len() != c.length as usize {
        return Err(corrupt(format!(
            "{} bytes after decompression, expected {}",
            buf.len(),
            c.length
        )));
    }
    let actual = hex::encode(Sha256::digest(&buf[..]));
    if actual != c.sha256 {
        return Err(corrupt(format!("sha256 is {actual}")));
    }
    Ok(z.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::chunk_path;
    use crate::bundle::source::DirSource;

    fn store(dir: &std::path::Path, sha: &str, stored: &[u8]) {
        let p = dir.join(chunk_path(sha));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, stored).unwrap();
    }

    #[test]
    fn a_chunk_decoding_past_its_length_is_refused_without_growing_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 64 << 10];
        let sha = hex::encode(Sha256::digest(&data));
        // 16 MiB of zeros in a few hundred bytes, stored under the good chunk's name.
        let bomb = zstd::bulk::compress(&vec![0u8; 16 << 20], 19).unwrap();
        store(dir.path(), &sha, &bomb);
        let c = Chunk {
            offset: 0,
            length: data.len() as u32,
            stored: bomb.len() as u64,
            sha256: sha.clone(),
        };
        let src = DirSource(dir.path().to_path_buf());
        let src = ChunkStore::files(&src);
        let mut dec = Decoder::new().unwrap();
        let mut buf = Vec::new();
        let e = fetch_into(&src, &mut dec, "root", 3, &c, &mut buf).unwrap_err();
        assert!(matches!(e, InstallError::Corrupt { index: 3, .. }), "{e}");
        assert!(buf.capacity() < 2 * data.len(), "{}", buf.capacity());

        // The same context and buffer then decode the real chunk.
        let z = zstd::bulk::compress(&data, 3).unwrap();
        store(dir.path(), &sha, &z);
        let c = Chunk {
            stored: z.len() as u64,
            ..c
        };
        assert_eq!(
            fetch_into(&src, &mut dec, "root", 3, &c, &mut buf).unwrap(),
            z.len() as u64
        );
        assert_eq!(buf, data);
    }
}
