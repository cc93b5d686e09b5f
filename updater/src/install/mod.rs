//! Streaming a verified payload into a target (a slot device, or a file), chunk by chunk:
//! workers fetch each compressed chunk (size-capped), decompress it with a hard length limit
//! and check its sha256 (`fetch.rs`); the calling thread writes them in order (`ordered.rs`)
//! and a thread beside it hashes the whole payload as written. Memory stays bounded by a
//! window of chunks whatever the payload size, and nothing is read back ([`verify_payload`]
//! re-reads a target written earlier, when it may have changed since).

mod feed;
mod fetch;
mod ordered;

use crate::bundle::manifest::{Chunk, Payload};
use crate::bundle::source::SourceError;
use crate::bundle::store::ChunkStore;
use sha2::{Digest, Sha256};
use std::fs::File;
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

/// [`fetch::fetch_into`] with the source's extra attempts for bodies that did not verify.
fn fetch_verified(
    src: &ChunkStore<'_>,
    dec: &mut fetch::Decoder,
    payload: &str,
    index: usize,
    c: &Chunk,
    buf: &mut Vec<u8>,
) -> Result<u64, InstallError> {
    let mut attempt = 0;
    loop {
        match fetch::fetch_into(src, dec, payload, index, c, buf) {
            Err(InstallError::Corrupt { reason, .. })
                if attempt < src.source().corrupt_retries() =>
            {
                tracing::warn!("{payload} chunk {index}: {reason}; fetching it again");
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(200 << attempt));
            }
            r => return r,
        }
    }
}

/// Chunks in flight by default (fetched, decompressed and verified at once by
/// [`write_payload`]). Memory is bounded by [`window`] chunks (≤ [`MAX_CHUNK`](crate::bundle::manifest::MAX_CHUNK) bytes each) plus
/// one compressed chunk per worker, and, streaming from a pack, at most `window + 1` compressed
/// chunks queued by the feeder.
pub const PARALLEL: usize = 8;
/// The most chunks in flight an install may ask for.
pub const MAX_PARALLEL: usize = 64;

/// Receives progress: bytes of each payload written so far, out of its size.
pub use kiln_progress::{Progress, Silent as Quiet};

/// How [`write_payload`] gets the chunks the target lacks.
#[derive(Clone, Copy)]
pub struct WriteOptions<'a> {
    /// The running slot: chunks it holds are copied from it (verified) instead of fetched.
    pub seed: Option<&'a crate::seed::Seed<'a>>,
    /// Chunks in flight (1..=[`MAX_PARALLEL`]).
    pub parallel: usize,
    pub progress: &'a dyn Progress,
    /// An earlier run of this same install stopped part way through this target: each chunk's
    /// place is read and hashed first, and a chunk already there is kept. Only state left by
    /// that run may set it; a fresh install reads nothing back.
    pub resume: bool,
}

impl Default for WriteOptions<'_> {
    fn default() -> Self {
        WriteOptions {
            seed: None,
            parallel: PARALLEL,
            progress: &Quiet,
            resume: false,
        }
    }
}

/// Chunks taken and not yet written, at most, for `parallel` workers: one per worker, and four
/// more, so that a chunk slower than the rest (still in order) does not stall the others at
/// once. Memory is this many chunk buffers.
pub fn window(parallel: usize) -> usize {
    parallel.clamp(1, MAX_PARALLEL) + 4
}

/// What [`write_payload`] wrote: its counts, and the sha256 of the payload as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub stats: Stats,
    /// The digest of every byte written (or found present), in payload order: equal to the
    /// manifest's, or the install failed.
    pub sha256: String,
}

impl std::ops::Deref for Written {
    type Target = Stats;
    fn deref(&self) -> &Stats {
        &self.stats
    }
}

/// A worker's report on one chunk.
type Outcome = (usize, Result<ordered::Ready, InstallError>);

/// Writes `payload` at `base` of `target` (at most `capacity` bytes there), checks its whole
/// digest, then fsyncs.
///
/// `o.parallel` workers take the chunks in order; each gets one verified chunk into a buffer of
/// its own: from the target itself when resuming (read back and hashed), else from the seed
/// (hashed as read), else from the bundle (fetched, decompressed, hashed). The calling thread
/// writes them in payload order, consecutive chunks with one `pwritev`; a thread beside it
/// hashes every written byte, in order, into the payload's digest, then hands the buffers back
/// to the workers, so memory holds at most [`window`] chunks whatever the payload size. Nothing is read back: each chunk's digest and
/// the whole digest, computed over exactly the bytes handed to the kernel, must both match the
/// signed manifest. The first error stops every worker (the lowest-numbered failing chunk is
/// reported); nothing unverified is ever written.
pub fn write_payload(
    src: &ChunkStore<'_>,
    name: &str,
    payload: &Payload,
    target: &File,
    base: u64,
    capacity: u64,
    o: &WriteOptions<'_>,
) -> Result<Written, InstallError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Mutex};
    if payload.size > capacity {
        return Err(InstallError::TooBig {
            payload: name.into(),
            size: payload.size,
            capacity,
        });
    }
    let chunks = &payload.chunks;
    let workers = o.parallel.clamp(1, MAX_PARALLEL).min(chunks.len().max(1));
    let window = window(workers);
    // Buffers are the tokens of the window: a worker takes one, then the next chunk index,
    // under one lock, so chunks are taken in order and never more than `window` are in flight,
    // waiting, being written or being hashed.
    let (free, free_rx) = mpsc::sync_channel::<Vec<u8>>(window);
    for _ in 0..window {
        free.send(Vec::new()).expect("the window has room");
    }
    let mut sha256 = String::new();
    // Which chunks come streamed from the pack, in order, by the feeder thread; the others the
    // workers get themselves.
    let plan = feed::plan(
        chunks,
        |c| src.place(c),
        |c| o.resume || o.seed.is_some_and(|s| s.indexes(c)),
    );
    let (items_tx, items_rx) = mpsc::sync_channel::<(usize, feed::Feed)>(window);
    let take = Mutex::new((free_rx, Some(items_rx)));
    let failed = AtomicBool::new(false);
    let (done_tx, done_rx) = mpsc::channel::<Outcome>();
    let mut stats = Stats::default();
    let mut first_error: Option<(usize, InstallError)> = None;
    let mut out = ordered::Ordered::new(target, base);
    // The payload's digest, in order, on its own thread beside the writes: it takes each
    // chunk after it is written, then hands its buffer back to the workers.
    let (hash_tx, hash_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut whole = Sha256::new();
            for b in hash_rx {
                whole.update(&b);
                // A worker may have stopped: the buffer is then dropped.
                let _ = free.send(b);
            }
            hex::encode(whole.finalize())
        });
        let mut hash_tx = Some(hash_tx);
        {
            let (plan, failed) = (&plan, &failed);
            s.spawn(move || feed::feed(src, chunks, plan, &items_tx, failed));
        }
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (take, failed) = (&take, &failed);
            s.spawn(move || {
                let mut dec = match fetch::Decoder::new() {
                    Ok(d) => d,
                    Err(source) => {
                        failed.store(true, Ordering::SeqCst);
                        let e = InstallError::Io {
                            context: "creating a zstd context".into(),
                            source,
                        };
                        let _ = done_tx.send((usize::MAX, Err(e)));
                        return;
                    }
                };
                loop {
                    let (mut buf, (i, item)) = {
                        let t = take.lock().expect("window lock");
                        let Ok(buf) = t.0.recv() else { return };
                        let Some(Ok(item)) = t.1.as_ref().map(|r| r.recv()) else {
                            return;
                        };
                        (buf, item)
                    };
                    if failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let r = one_chunk(
                        src, &mut dec, name, i, &chunks[i], item, target, base, o, &mut buf,
                    )
                    .map(|origin| ordered::Ready { data: buf, origin });
                    let err = r.is_err();
                    if err {
                        failed.store(true, Ordering::SeqCst);
                    }
                    if done_tx.send((i, r)).is_err() || err {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut done_bytes = 0u64;
        // Until every chunk is written or every worker has stopped (after an error).
        while out.done() < chunks.len() {
            let Ok(first) = done_rx.recv() else { break };
            // Everything that has arrived meanwhile too: longer runs for each pwritev.
            for (i, r) in std::iter::once(first).chain(done_rx.try_iter()) {
                match r {
                    // After an error, verified chunks before it are still written (a resumed
                    // run keeps them); none after it.
                    Ok(ready) if first_error.as_ref().is_none_or(|(j, _)| i < *j) => {
                        out.accept(i, ready)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                            first_error = Some((i, e));
                        }
                        // No buffer goes back: workers waiting for one stop, so the loop ends.
                        failed.store(true, Ordering::SeqCst);
                        drop(hash_tx.take());
                    }
                }
            }
            let drained = out.drain(
                |k| chunks[k].offset,
                |r| {
                    let len = r.data.len() as u64;
                    match r.origin {
                        ordered::Origin::Fetched(z) => {
                            stats.chunks += 1;
                            stats.fetched += z;
                            stats.written += len;
                        }
                        ordered::Origin::Seeded => {
                            stats.reused += 1;
                            stats.reused_bytes += len;
                            stats.written += len;
                        }
                        ordered::Origin::Present => stats.present += 1,
                    }
                    done_bytes += len;
                    o.progress.update(name, done_bytes, Some(payload.size));
                    // After an error nothing more is hashed: the buffer is dropped.
                    if let Some(h) = &hash_tx {
                        let _ = h.send(r.data);
                    }
                },
            );
            if let Err(source) = drained {
                failed.store(true, Ordering::SeqCst);
                drop(hash_tx.take());
                let k = out.done();
                first_error = Some((
                    0,
                    InstallError::Io {
                        context: format!(
                            "writing {name} at {}",
                            base + chunks.get(k).map_or(payload.size, |c| c.offset)
                        ),
                        source,
                    },
                ));
                break;
            }
        }
        // The hasher ends with its input, and with it the window's sender: workers waiting
        // for a buffer wake and stop. The feeder stops when its receiver is gone.
        drop(hash_tx.take());
        take.lock().expect("window lock").1 = None;
        sha256 = hasher.join().expect("the hasher thread");
    });
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    if sha256 != payload.sha256 {
        return Err(InstallError::Verify {
            payload: name.into(),
            expected: payload.sha256.clone(),
            actual: sha256,
        });
    }
    target.sync_all().map_err(|source| InstallError::Io {
        context: format!("syncing {name}"),
        source,
    })?;
    Ok(Written { stats, sha256 })
}

/// Chunk `i` (`c`) of `name`, verified, into `buf`: decoded from the stored bytes the feeder
/// streamed, else kept from the target when resuming, else copied from the seed, else fetched
/// alone.
#[allow(clippy::too_many_arguments)]
fn one_chunk(
    src: &ChunkStore<'_>,
    dec: &mut fetch::Decoder,
    name: &str,
    i: usize,
    c: &Chunk,
    item: feed::Feed,
    target: &File,
    base: u64,
    o: &WriteOptions<'_>,
    buf: &mut Vec<u8>,
) -> Result<ordered::Origin, InstallError> {
    match item {
        feed::Feed::Stored(Ok(z)) => match fetch::decode_into(dec, name, i, c, &z, buf) {
            Ok(n) => return Ok(ordered::Origin::Fetched(n)),
            // A body damaged on the way: asked for again, alone.
            Err(InstallError::Corrupt { reason, .. }) if src.source().corrupt_retries() > 0 => {
                tracing::warn!("{name} chunk {i}: {reason}; fetching it again");
            }
            Err(e) => return Err(e),
        },
        feed::Feed::Stored(Err(source)) => {
            return Err(InstallError::Fetch {
                payload: name.into(),
                index: i,
                sha256: c.sha256.clone(),
                source,
            })
        }
        feed::Feed::Local => {}
    }
    if o.resume && fetch::read_matching(target, base, c, buf) {
        return Ok(ordered::Origin::Present);
    }
    if o.seed.is_some_and(|s| s.take_into(c, buf)) {
        return Ok(ordered::Origin::Seeded);
    }
    fetch_verified(src, dec, name, i, c, buf).map(ordered::Origin::Fetched)
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
