//! Streaming a verified payload into a target (a slot device, or a file), chunk by chunk:
//! fetch the compressed chunk (size-capped), decompress with a hard length limit, check its
//! sha256, and only then write it at its offset. Memory stays bounded by one chunk whatever
//! the payload size. Afterwards the whole written range is re-read and checked.

use crate::bundle::chunk_path;
use crate::bundle::manifest::{Payload, MAX_CHUNK};
use crate::bundle::source::{BundleSource, SourceError};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{payload}: {size} bytes do not fit the {capacity}-byte target")]
    TooBig {
        payload: String,
        size: u64,
        capacity: u64,
    },
    #[error("{payload} chunk {index} ({sha256})")]
    Fetch {
        payload: String,
        index: usize,
        sha256: String,
        #[source]
        source: SourceError,
    },
    #[error("{payload} chunk {index} ({sha256}) is corrupt: {reason}")]
    Corrupt {
        payload: String,
        index: usize,
        sha256: String,
        reason: String,
    },
    #[error("{payload}: written data does not verify (sha256 {actual}, expected {expected})")]
    Verify {
        payload: String,
        expected: String,
        actual: String,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What an install did, for progress and reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Chunks fetched from the bundle.
    pub chunks: u64,
    /// Compressed bytes fetched from the bundle.
    pub fetched: u64,
    /// Uncompressed bytes written to the target.
    pub written: u64,
    /// Chunks already in the target with the right digest (an interrupted install run again):
    /// neither fetched nor written.
    pub present: u64,
    /// Chunks copied from the running slot (the seed) instead of fetched, and their bytes.
    pub reused: u64,
    pub reused_bytes: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, s: Stats) {
        self.chunks += s.chunks;
        self.fetched += s.fetched;
        self.written += s.written;
        self.present += s.present;
        self.reused += s.reused;
        self.reused_bytes += s.reused_bytes;
    }
}

/// Whether `target` already holds chunk `c` at `base` (read back and hashed).
fn already_present(target: &File, base: u64, c: &crate::bundle::manifest::Chunk) -> bool {
    let mut buf = vec![0u8; c.length as usize];
    target.read_exact_at(&mut buf, base + c.offset).is_ok()
        && hex::encode(Sha256::digest(&buf)) == c.sha256
}

/// [`fetch_chunk`] with the source's extra attempts for bodies that did not verify.
fn fetch_verified(
    src: &dyn BundleSource,
    payload: &str,
    index: usize,
    c: &crate::bundle::manifest::Chunk,
) -> Result<(Vec<u8>, u64), InstallError> {
    let mut attempt = 0;
    loop {
        match fetch_chunk(src, payload, index, c) {
            Err(InstallError::Corrupt { reason, .. }) if attempt < src.corrupt_retries() => {
                tracing::warn!("{payload} chunk {index}: {reason}; fetching it again");
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(200 << attempt));
            }
            r => return r,
        }
    }
}

/// log2 of the largest zstd window a stored chunk may use: [`MAX_CHUNK`] (256 KiB) rounded up,
/// with room; zstd's default limit would let a hostile server make each worker allocate 128 MiB.
const CHUNK_WINDOW_LOG: u32 = 20;

/// Fetches, decompresses and verifies one chunk; returns its bytes.
pub fn fetch_chunk(
    src: &dyn BundleSource,
    payload: &str,
    index: usize,
    c: &crate::bundle::manifest::Chunk,
) -> Result<(Vec<u8>, u64), InstallError> {
    let corrupt = |reason: String| InstallError::Corrupt {
        payload: payload.into(),
        index,
        sha256: c.sha256.clone(),
        reason,
    };
    let z = src
        .read(&chunk_path(&c.sha256), c.stored)
        .map_err(|source| InstallError::Fetch {
            payload: payload.into(),
            index,
            sha256: c.sha256.clone(),
            source,
        })?;
    let mut data = Vec::with_capacity(c.length.min(MAX_CHUNK) as usize);
    let mut d =
        zstd::stream::read::Decoder::new(&z[..]).map_err(|e| corrupt(format!("not zstd: {e}")))?;
    // A frame from the server may not ask for more memory than a chunk needs.
    d.window_log_max(CHUNK_WINDOW_LOG)
        .map_err(|e| corrupt(format!("zstd: {e}")))?;
    d.take(u64::from(c.length) + 1)
        .read_to_end(&mut data)
        .map_err(|e| corrupt(format!("decompressing: {e}")))?;
    if data.len() != c.length as usize {
        return Err(corrupt(format!(
            "{} bytes after decompression, expected {}",
            data.len(),
            c.length
        )));
    }
    let actual = hex::encode(Sha256::digest(&data));
    if actual != c.sha256 {
        return Err(corrupt(format!("sha256 is {actual}")));
    }
    Ok((data, z.len() as u64))
}

/// Chunks in flight by default (fetched, decompressed and verified at once by
/// [`write_payload`]). Each worker holds at most one chunk (≤ [`MAX_CHUNK`] bytes, plus its
/// compressed form), so memory is bounded by this times twice the largest chunk.
pub const PARALLEL: usize = 8;
/// The most chunks in flight an install may ask for.
pub const MAX_PARALLEL: usize = 64;

/// Receives progress: bytes of `payload` written so far, out of its size.
pub trait Progress: Sync {
    fn update(&self, payload: &str, done: u64, total: u64);
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&self, _: &str, _: u64, _: u64) {}
}

/// How [`write_payload`] gets the chunks the target lacks.
#[derive(Clone, Copy)]
pub struct WriteOptions<'a> {
    /// The running slot: chunks it holds are copied from it (verified) instead of fetched.
    pub seed: Option<&'a crate::seed::Seed<'a>>,
    /// Chunks in flight (1..=[`MAX_PARALLEL`]).
    pub parallel: usize,
    pub progress: &'a dyn Progress,
}

impl Default for WriteOptions<'_> {
    fn default() -> Self {
        WriteOptions {
            seed: None,
            parallel: PARALLEL,
            progress: &Quiet,
        }
    }
}

/// Writes `payload` at `base` of `target` (at most `capacity` bytes there), then fsyncs.
/// `o.parallel` workers each take the next chunk; a chunk the target already holds (read back
/// and hashed: an interrupted install run again) is skipped; else one the seed holds is copied
/// from it (hashed as read); else it is fetched, verified and written at its offset. Memory
/// holds at most `o.parallel` chunks. The first error stops every worker; nothing unverified is
/// ever written.
pub fn write_payload(
    src: &dyn BundleSource,
    name: &str,
    payload: &Payload,
    target: &File,
    base: u64,
    capacity: u64,
    o: &WriteOptions<'_>,
) -> Result<Stats, InstallError> {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;
    if payload.size > capacity {
        return Err(InstallError::TooBig {
            payload: name.into(),
            size: payload.size,
            capacity,
        });
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let (chunks, fetched, written, present, reused, reused_bytes) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let done = AtomicU64::new(0); // progress: bytes written or found present
    let first_error: Mutex<Option<(usize, InstallError)>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..o
            .parallel
            .clamp(1, MAX_PARALLEL)
            .min(payload.chunks.len().max(1))
        {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if failed.load(Ordering::SeqCst) || i >= payload.chunks.len() {
                    return;
                }
                let c = &payload.chunks[i];
                if already_present(target, base, c) {
                    present.fetch_add(1, Ordering::SeqCst);
                    let n = u64::from(c.length);
                    o.progress
                        .update(name, done.fetch_add(n, Ordering::SeqCst) + n, payload.size);
                    continue;
                }
                let from_seed = o.seed.and_then(|s| s.take(c));
                let was_seeded = from_seed.is_some();
                let got = match from_seed {
                    Some(data) => Ok((data, 0)),
                    None => fetch_verified(src, name, i, c),
                };
                let r = got.and_then(|(data, z)| {
                    target
                        .write_all_at(&data, base + c.offset)
                        .map_err(|source| InstallError::Io {
                            context: format!("writing {name} chunk {i} at {}", base + c.offset),
                            source,
                        })
                        .map(|()| (data.len() as u64, z))
                });
                match r {
                    Ok((n, z)) => {
                        if was_seeded {
                            reused.fetch_add(1, Ordering::SeqCst);
                            reused_bytes.fetch_add(n, Ordering::SeqCst);
                        } else {
                            chunks.fetch_add(1, Ordering::SeqCst);
                            fetched.fetch_add(z, Ordering::SeqCst);
                        }
                        written.fetch_add(n, Ordering::SeqCst);
                        o.progress.update(
                            name,
                            done.fetch_add(n, Ordering::SeqCst) + n,
                            payload.size,
                        );
                    }
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        let mut slot = first_error.lock().expect("error lock");
                        // Report the lowest-numbered failing chunk, whatever the thread timing.
                        if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                            *slot = Some((i, e));
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some((_, e)) = first_error.into_inner().expect("error lock") {
        return Err(e);
    }
    target.sync_all().map_err(|source| InstallError::Io {
        context: format!("syncing {name}"),
        source,
    })?;
    Ok(Stats {
        chunks: chunks.into_inner(),
        fetched: fetched.into_inner(),
        written: written.into_inner(),
        present: present.into_inner(),
        reused: reused.into_inner(),
        reused_bytes: reused_bytes.into_inner(),
    })
}

/// Re-reads `payload.size` bytes at `base` of `target` and checks the payload's sha256;
/// returns the digest read back.
pub fn verify_payload(
    name: &str,
    payload: &Payload,
    target: &File,
    base: u64,
) -> Result<String, InstallError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < payload.size {
        let n = ((payload.size - pos) as usize).min(buf.len());
        target
            .read_exact_at(&mut buf[..n], base + pos)
            .map_err(|source| InstallError::Io {
                context: format!("re-reading {name} at {}", base + pos),
                source,
            })?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    let actual = hex::encode(h.finalize());
    if actual != payload.sha256 {
        return Err(InstallError::Verify {
            payload: name.into(),
            expected: payload.sha256.clone(),
            actual,
        });
    }
    Ok(actual)
}
