//! Content-defined chunking (FastCDC) of a payload into a zstd-compressed chunk store.

use super::chunk_path;
use super::manifest::{Chunk, Payload};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, BufReader};
use std::path::Path;

/// Chunk size bounds (bytes): small enough that a changed file costs little, large enough
/// that a 512 MiB root has a manifest of a few hundred KiB.
pub const MIN_CHUNK: u32 = 16 << 10;
pub const AVG_CHUNK: u32 = 64 << 10;
pub const MAX_CHUNK: u32 = 256 << 10;
/// zstd level of stored chunks.
pub const ZSTD_LEVEL: i32 = 3;

/// Splits the file at `path` into chunks, storing each (once) under `bundle/chunks/`.
pub fn chunk_file(path: &Path, bundle: &Path) -> io::Result<Payload> {
    let f = fs::File::open(path)?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for c in fastcdc::v2020::StreamCDC::new(BufReader::new(f), MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(io::Error::other)?;
        whole.update(&c.data);
        let sha = hex::encode(Sha256::digest(&c.data));
        let dest = bundle.join(chunk_path(&sha));
        let stored = match fs::metadata(&dest) {
            Ok(m) => m.len(),
            Err(_) => {
                let z = zstd::bulk::compress(&c.data, ZSTD_LEVEL)?;
                fs::create_dir_all(dest.parent().expect("chunk dir"))?;
                let tmp = dest.with_extension("tmp");
                fs::write(&tmp, &z)?;
                fs::rename(&tmp, &dest)?;
                z.len() as u64
            }
        };
        chunks.push(Chunk {
            offset: c.offset,
            length: c.length as u32,
            sha256: sha,
            stored,
        });
        size += c.length as u64;
    }
    Ok(Payload {
        size,
        sha256: hex::encode(whole.finalize()),
        chunks,
    })
}
