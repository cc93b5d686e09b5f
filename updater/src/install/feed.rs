//! The order chunks reach the install's workers in, and, for a packed bundle, their stored
//! bytes: one thread reads runs of chunks from `chunks.pack`, each run one range request,
//! so a fresh install of a 1 GiB root is a few dozen requests instead of one per chunk.
//!
//! [`plan`] (pure) decides which chunks are streamed: those not left to the worker (a resumed
//! run reads each chunk's place in the target first; the seed holds the rest), in runs of
//! chunks that lie back to back in the pack, at most [`RUN_MAX`] bytes each. Only the stored
//! bytes of the chunks installed go over the wire (no gap is read and dropped), so what an
//! install downloads is still the sum of those chunks' stored sizes, as `kiln bundle --from`
//! predicts.

use crate::bundle::manifest::Chunk;
use crate::bundle::source::SourceError;
use crate::bundle::store::{ChunkStore, PACK};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;

/// Largest run (bytes of the pack) one request covers: a request that fails is retried from
/// the chunk it stopped at, and its deadline must fit the run.
pub const RUN_MAX: u64 = 16 << 20;

/// What a worker gets with a chunk index.
pub(super) enum Feed {
    /// The worker gets this chunk itself: kept from the target, copied from the seed, or
    /// fetched alone.
    Local,
    /// Its stored bytes, streamed (or the error that ended the stream).
    Stored(Result<Vec<u8>, SourceError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Local,
    /// Streamed, in this run.
    Run(usize),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    pub steps: Vec<Step>,
    /// Each run's range of the pack: `[start, end)`.
    pub runs: Vec<(u64, u64)>,
}

/// Which chunks of `chunks` are streamed, and in which runs: `place` gives a chunk's range in
/// the pack (none: not packed), `local` says the worker gets it itself.
pub(super) fn plan(
    chunks: &[Chunk],
    place: impl Fn(&Chunk) -> Option<(u64, u64)>,
    local: impl Fn(&Chunk) -> bool,
) -> Plan {
    let mut p = Plan {
        steps: Vec::with_capacity(chunks.len()),
        runs: Vec::new(),
    };
    // A chunk extends the last run if it starts where that run ends (chunks the workers get
    // themselves may come between: the stream does not care).
    for c in chunks {
        let step = match place(c) {
            Some((off, len)) if !local(c) => {
                let end = off.saturating_add(len);
                match p.runs.last_mut() {
                    Some(r) if off == r.1 && end - r.0 <= RUN_MAX => r.1 = end,
                    _ => p.runs.push((off, end)),
                }
                Step::Run(p.runs.len() - 1)
            }
            _ => Step::Local,
        };
        p.steps.push(step);
    }
    p
}

/// The open range request of a run, and the pack offset it yields next.
struct Open<'s> {
    run: usize,
    body: Box<dyn Read + Send + 's>,
    pos: u64,
}

/// Sends every chunk of `chunks` to the workers, in order, as `plan` says; stops at the first
/// stream error (sent in its chunk's place), when `failed` is set, or when the workers are gone.
pub(super) fn feed(
    store: &ChunkStore<'_>,
    chunks: &[Chunk],
    plan: &Plan,
    tx: &SyncSender<(usize, Feed)>,
    failed: &AtomicBool,
) {
    let mut open: Option<Open<'_>> = None;
    for (i, c) in chunks.iter().enumerate() {
        if failed.load(Ordering::SeqCst) {
            return;
        }
        let item = match plan.steps[i] {
            Step::Local => Feed::Local,
            Step::Run(r) => Feed::Stored(streamed(store, plan, r, c, &mut open, failed)),
        };
        let end = matches!(item, Feed::Stored(Err(_)));
        if tx.send((i, item)).is_err() || end {
            return;
        }
    }
}

/// The stored bytes of `c` (in run `r`) from the open request, opening it (again) when needed:
/// a request that fails part way is retried from this chunk, up to the source's retries in a
/// row without progress, unless the install has failed meanwhile.
fn streamed<'s>(
    store: &ChunkStore<'s>,
    plan: &Plan,
    r: usize,
    c: &Chunk,
    open: &mut Option<Open<'s>>,
    failed: &AtomicBool,
) -> Result<Vec<u8>, SourceError> {
    let (off, len) = store.place(c).expect("a streamed chunk is packed");
    let src = store.source();
    let mut failures = 0;
    loop {
        if open.as_ref().is_none_or(|o| o.run != r || o.pos != off) {
            let end = plan.runs[r].1;
            *open = Some(Open {
                run: r,
                body: src.read_range(PACK, off, end - off)?,
                pos: off,
            });
        }
        let o = open.as_mut().expect("opened above");
        let mut z = vec![0u8; len as usize];
        match o.body.read_exact(&mut z) {
            Ok(()) => {
                o.pos = off + len;
                return Ok(z);
            }
            Err(e) => {
                *open = None;
                if failures >= src.corrupt_retries() || failed.load(Ordering::SeqCst) {
                    return Err(SourceError::Io {
                        name: format!("{PACK} bytes {off}+{len} from {}", src.describe()),
                        source: e,
                    });
                }
                failures += 1;
                tracing::warn!("{PACK} at {off}: {e}; asking again from there");
                std::thread::sleep(std::time::Duration::from_millis(200 << failures));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn chunk(sha: &str, stored: u64) -> Chunk {
        Chunk {
            offset: 0,
            length: 1,
            sha256: sha.into(),
            stored,
        }
    }

    #[test]
    fn runs_are_chunks_back_to_back_in_the_pack_up_to_their_size() {
        // Pack: a@0+10, b@10+10, c@20+10, d@30+10, e (big) after.
        let places: HashMap<&str, (u64, u64)> = [
            ("a", (0, 10)),
            ("b", (10, 10)),
            ("c", (20, 10)),
            ("d", (30, 10)),
            ("e", (40, RUN_MAX)),
        ]
        .into();
        let chunks = [
            chunk("a", 10),
            chunk("b", 10),
            chunk("a", 10), // a repeat: its own run
            chunk("c", 10),
            chunk("d", 10),
            chunk("e", RUN_MAX),
            chunk("z", 1), // not in the pack
        ];
        let place = |c: &Chunk| places.get(c.sha256.as_str()).copied();
        let p = plan(&chunks, place, |_| false);
        assert_eq!(
            p.steps,
            [
                Step::Run(0),
                Step::Run(0),
                Step::Run(1),
                Step::Run(2),
                Step::Run(2),
                Step::Run(3),
                Step::Local
            ]
        );
        assert_eq!(p.runs, [(0, 20), (0, 10), (20, 40), (40, 40 + RUN_MAX)]);

        // The seed holds a and c: the run of b ends where c begins, so d starts another.
        let p = plan(&chunks, place, |c| c.sha256 == "c" || c.sha256 == "a");
        assert_eq!(
            p.steps[..5],
            [
                Step::Local,
                Step::Run(0),
                Step::Local,
                Step::Local,
                Step::Run(1)
            ]
        );
        assert_eq!(p.runs[..2], [(10, 20), (30, 40)]);

        // Resuming (every chunk left to the workers) or one file per chunk: nothing streamed.
        assert!(plan(&chunks, place, |_| true).runs.is_empty());
        assert!(plan(&chunks, |_| None, |_| false).runs.is_empty());
    }
}
