//! Content-defined chunking (FastCDC) of a payload into a zstd-compressed chunk store (a pack,
//! or one file per chunk).

use super::chunk_path;
use super::manifest::{Chunk, Payload};
use super::store::PACK;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Chunk size bounds (bytes): small enough that a changed file costs little, large enough
/// that a 512 MiB root has a manifest of a few hundred KiB.
pub const MIN_CHUNK: u32 = 16 << 10;
pub const AVG_CHUNK: u32 = 64 << 10;
pub const MAX_CHUNK: u32 = 256 << 10;
/// zstd level of stored chunks.
pub const ZSTD_LEVEL: i32 = 3;

/// One content-defined chunk of a stream: where it starts, its bytes and their sha256 (hex).
pub struct Cut {
    pub offset: u64,
    pub data: Vec<u8>,
    pub sha256: String,
}

/// The chunks of `r`, in order, with Kiln's boundaries: the same bytes always give the same
/// chunks, so a bundle's chunks and an index of a slot holding the same image coincide.
pub fn cuts<R: Read>(r: R) -> impl Iterator<Item = io::Result<Cut>> {
    fastcdc::v2020::StreamCDC::new(r, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).map(|c| {
        let c = c.map_err(io::Error::other)?;
        Ok(Cut {
            offset: c.offset,
            sha256: hex::encode(Sha256::digest(&c.data)),
            data: c.data,
        })
    })
}

/// Where each chunk of `r` lies (nothing stored: `stored` is 0), and the digest of the whole.
pub fn index<R: Read>(r: R) -> io::Result<Payload> {
    tile(r, |_| Ok(0))
}

/// Where [`chunk_file`] stores the chunks of a bundle being written (see [`super::store`]).
pub enum Store {
    /// `chunks.pack`: each distinct chunk appended once, in the order first seen.
    Pack {
        out: io::BufWriter<fs::File>,
        seen: HashMap<String, u64>,
    },
    /// `chunks/ab/<sha256>.zst` under the bundle directory.
    Files(PathBuf),
}

impl Store {
    /// A new `chunks.pack` in `bundle`.
    pub fn pack(bundle: &Path) -> io::Result<Store> {
        Ok(Store::Pack {
            out: io::BufWriter::with_capacity(1 << 20, fs::File::create(bundle.join(PACK))?),
            seen: HashMap::new(),
        })
    }

    /// Stores `c` zstd-compressed unless it is there; returns its stored size.
    fn put(&mut self, c: &Cut) -> io::Result<u64> {
        match self {
            Store::Pack { out, seen } => {
                if let Some(&n) = seen.get(&c.sha256) {
                    return Ok(n);
                }
                let z = zstd::bulk::compress(&c.data, ZSTD_LEVEL)?;
                out.write_all(&z)?;
                seen.insert(c.sha256.clone(), z.len() as u64);
                Ok(z.len() as u64)
            }
            Store::Files(bundle) => store_file(c, bundle),
        }
    }

    /// Flushes and syncs the pack.
    pub fn finish(self) -> io::Result<()> {
        if let Store::Pack { out, .. } = self {
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        Ok(())
    }
}

/// Splits the file at `path` into chunks, storing each distinct one once in `store`.
pub fn chunk_file(path: &Path, store: &mut Store) -> io::Result<Payload> {
    tile(BufReader::new(fs::File::open(path)?), |c| store.put(c))
}

/// The payload of `r`: its chunks in order, `stored` given by `store` for each.
fn tile<R: Read>(r: R, mut store: impl FnMut(&Cut) -> io::Result<u64>) -> io::Result<Payload> {
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for c in cuts(r) {
        let c = c?;
        whole.update(&c.data);
        size += c.data.len() as u64;
        chunks.push(Chunk {
            offset: c.offset,
            length: c.data.len() as u32,
            stored: store(&c)?,
            sha256: c.sha256,
        });
    }
    Ok(Payload {
        size,
        sha256: hex::encode(whole.finalize()),
        chunks,
    })
}

/// Stores `c` zstd-compressed under `bundle/chunks/` unless it is there; returns its stored size.
fn store_file(c: &Cut, bundle: &Path) -> io::Result<u64> {
    let dest = bundle.join(chunk_path(&c.sha256));
    if let Ok(m) = fs::metadata(&dest) {
        return Ok(m.len());
    }
    let z = zstd::bulk::compress(&c.data, ZSTD_LEVEL)?;
    fs::create_dir_all(dest.parent().expect("chunk dir"))?;
    let tmp = dest.with_extension("tmp");
    fs::write(&tmp, &z)?;
    fs::rename(&tmp, &dest)?;
    Ok(z.len() as u64)
}
