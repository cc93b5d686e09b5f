//! The write side of an install: verified chunks arrive in any order from the workers; they
//! leave in payload order, consecutive ones written with one `pwritev`, and then go on, in
//! order, to the payload's sha256 (its own thread, [`super::write_payload`]). That digest, with
//! each chunk's own, is what proves the target holds the payload, without reading it back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::IoSlice;

/// Where a verified chunk's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Fetched from the bundle: this many compressed bytes.
    Fetched(u64),
    /// Copied from the running slot.
    Seeded,
    /// Already in the target (a resumed install): hashed, not written again.
    Present,
}

/// A chunk that verified, waiting for its turn.
pub(super) struct Ready {
    pub data: Vec<u8>,
    pub origin: Origin,
}

/// Chunks written per `pwritev` at most (Linux's IOV_MAX is 1024).
const BATCH: usize = 64;

/// The reorder buffer of one payload.
pub(super) struct Ordered<'a> {
    target: &'a File,
    base: u64,
    /// The next chunk to leave.
    next: usize,
    pending: BTreeMap<usize, Ready>,
}

impl<'a> Ordered<'a> {
    pub(super) fn new(target: &'a File, base: u64) -> Ordered<'a> {
        Ordered {
            target,
            base,
            next: 0,
            pending: BTreeMap::new(),
        }
    }

    /// Chunks that have left the buffer.
    pub(super) fn done(&self) -> usize {
        self.next
    }

    /// Takes chunk `index` (verified); it leaves once all before it have.
    pub(super) fn accept(&mut self, index: usize, r: Ready) {
        debug_assert!(index >= self.next && !self.pending.contains_key(&index));
        self.pending.insert(index, r);
    }

    /// Writes every chunk that can leave now: consecutive runs of them at `offsets[i]` from
    /// the base, one `pwritev` per run. Each chunk then goes to `left`, in order.
    pub(super) fn drain(
        &mut self,
        offsets: impl Fn(usize) -> u64,
        mut left: impl FnMut(Ready),
    ) -> std::io::Result<()> {
        loop {
            let mut run: Vec<(usize, Ready)> = Vec::new();
            while run.len() < BATCH {
                let Some(r) = self.pending.remove(&self.next) else {
                    break;
                };
                let present = r.origin == Origin::Present;
                run.push((self.next, r));
                self.next += 1;
                // A present chunk is not written: it ends the run.
                if present {
                    break;
                }
            }
            let Some(&(first, _)) = run.first() else {
                return Ok(());
            };
            let to_write: Vec<IoSlice<'_>> = run
                .iter()
                .filter(|(_, r)| r.origin != Origin::Present)
                .map(|(_, r)| IoSlice::new(&r.data))
                .collect();
            write_all_vectored_at(self.target, to_write, self.base + offsets(first))?;
            for (_, r) in run {
                left(r);
            }
        }
    }
}

/// `pwritev` until every slice is written (a short write continues where it stopped).
fn write_all_vectored_at(
    f: &File,
    mut slices: Vec<IoSlice<'_>>,
    mut at: u64,
) -> std::io::Result<()> {
    let mut s = &mut slices[..];
    while !s.is_empty() {
        let offset = i64::try_from(at).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset beyond 2^63")
        })?;
        let n = match nix::sys::uio::pwritev(f, s, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        at += n as u64;
        IoSlice::advance_slices(&mut s, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn ready(b: &[u8], origin: Origin) -> Ready {
        Ready {
            data: b.to_vec(),
            origin,
        }
    }

    #[test]
    fn chunks_leave_in_order_and_only_what_is_not_present_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("t"))
            .unwrap();
        // "pre" is already in the target at its place (a resumed install).
        f.write_all_at(b"pre", 10 + 5).unwrap();
        let parts: [&[u8]; 4] = [b"hello", b"pre", b"world", b"!"];
        let offsets = [0u64, 5, 8, 13];
        let mut o = Ordered::new(&f, 10);
        let mut order = Vec::new();
        o.accept(3, ready(parts[3], Origin::Fetched(1)));
        o.accept(2, ready(parts[2], Origin::Seeded));
        o.drain(|i| offsets[i], |r| order.push((r.data, r.origin)))
            .unwrap();
        assert!(order.is_empty(), "nothing may leave before chunk 0");
        assert_eq!(o.done(), 0);
        o.accept(1, ready(parts[1], Origin::Present));
        o.accept(0, ready(parts[0], Origin::Fetched(4)));
        o.drain(|i| offsets[i], |r| order.push((r.data, r.origin)))
            .unwrap();
        let origins: Vec<Origin> = order.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            origins,
            [
                Origin::Fetched(4),
                Origin::Present,
                Origin::Seeded,
                Origin::Fetched(1)
            ]
        );
        let left: Vec<u8> = order.into_iter().flat_map(|(d, _)| d).collect();
        assert_eq!(&left, b"hellopreworld!");
        assert_eq!(o.done(), 4);
        let mut back = vec![0u8; 14];
        f.read_exact_at(&mut back, 10).unwrap();
        assert_eq!(&back, b"hellopreworld!");
    }

    #[test]
    fn a_present_chunk_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        // Read-only: any write fails.
        std::fs::write(dir.path().join("t"), b"abcdef").unwrap();
        let f = File::open(dir.path().join("t")).unwrap();
        let mut o = Ordered::new(&f, 0);
        o.accept(0, ready(b"abc", Origin::Present));
        o.accept(1, ready(b"def", Origin::Present));
        let mut n = 0;
        o.drain(|i| [0, 3][i], |_| n += 1).unwrap();
        assert_eq!(n, 2);
        let mut o = Ordered::new(&f, 0);
        o.accept(0, ready(b"xyz", Origin::Fetched(3)));
        assert!(o.drain(|_| 0, |_| {}).is_err(), "a write happened");
    }
}
