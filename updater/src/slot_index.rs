//! Where the chunks of a slot (or of a kernel or initrd file) lie when no manifest was recorded
//! for it — a slot written at the factory, or its record lost: it is chunked now with the
//! bundle's own boundaries ([`chunker::index`]), so the same image bytes give the same chunks.
//! That costs one read of the image. A slot device is indexed over the length its superblock
//! declares ([`image_len`]), not the whole partition.

use crate::bundle::chunker;
use crate::bundle::manifest::Payload;
use crate::image_len::{image_len, HEAD};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Indexes the image in `dev` over the length its erofs or ext4 superblock declares. `Ok(None)`
/// when it holds no such image, or declares a length it cannot hold.
pub fn index_slot(dev: &File) -> io::Result<Option<Payload>> {
    let mut head = vec![0u8; HEAD];
    if dev.read_exact_at(&mut head, 0).is_err() {
        return Ok(None);
    }
    let mut f = dev.try_clone()?;
    let size = f.seek(SeekFrom::End(0))?;
    let Some(len) = image_len(&head).filter(|&l| l >= HEAD as u64 && l <= size) else {
        return Ok(None);
    };
    let len = with_verity_tree(dev, len, size);
    f.seek(SeekFrom::Start(0))?;
    chunker::index(BufReader::with_capacity(1 << 20, f.take(len))).map(Some)
}

/// The length of a filesystem image of `len` bytes in a slot of `size` bytes, with the dm-verity
/// superblock and tree that follow it if they do (a root built with `[rootfs] verity`): a
/// bundle's root payload holds the tree too, so the seed must cover it. Untrusted like the rest
/// of the index: every chunk taken from the seed is verified.
fn with_verity_tree(dev: &File, len: u64, size: u64) -> u64 {
    kiln_boot::verity::read_tree(dev, 0, len)
        .ok()
        .map(|(_, g)| g.total_len())
        .filter(|&total| total <= size)
        .unwrap_or(len)
}

/// Indexes a whole file (a kernel or initrd on the ESP).
pub fn index_file(f: &File) -> io::Result<Payload> {
    let mut f = f.try_clone()?;
    f.seek(SeekFrom::Start(0))?;
    chunker::index(BufReader::with_capacity(1 << 20, f))
}

/// A root image file or slot by its superblock, anything else whole.
pub fn index_image(f: &File) -> io::Result<Payload> {
    match index_slot(f)? {
        Some(p) => Ok(p),
        None => index_file(f),
    }
}

/// Where the chunks of the running slot's `name` lie: the payload `recorded` with it, else an
/// index made now by `index` (with the time it took). `None` (everything is downloaded) when
/// neither works; the reason is logged.
pub fn locate(
    recorded: Option<&Payload>,
    index: impl FnOnce() -> io::Result<Option<Payload>>,
    name: &str,
) -> Option<(Payload, Option<Duration>)> {
    if let Some(p) = recorded {
        return Some((p.clone(), None));
    }
    let t = Instant::now();
    match index() {
        Ok(Some(p)) => Some((p, Some(t.elapsed()))),
        Ok(None) => {
            tracing::warn!(
                "the running {name} holds no image Kiln can index; downloading all of it"
            );
            None
        }
        Err(e) => {
            tracing::warn!("indexing the running {name}: {e}; downloading all of it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An erofs superblock declaring `blocks` 4 KiB blocks, then `data`.
    fn erofs(blocks: u32, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        v[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        v[1024 + 12] = 12;
        v[1024 + 36..1024 + 40].copy_from_slice(&blocks.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 88172645463325252u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn a_slot_is_indexed_over_its_image_only() {
        let image = erofs(255, &noise(254 * 4096));
        assert_eq!(image.len(), 255 * 4096);
        let alone = chunker::index(&image[..]).unwrap();
        // The partition holds the image, then unrelated bytes (an older, longer image).
        let mut part = image.clone();
        part.extend_from_slice(&noise(3 << 20));
        let got = index_slot(&file(&part)).unwrap().unwrap();
        assert_eq!(got, alone);
        assert_eq!(got.size, image.len() as u64);
    }

    #[test]
    fn a_superblock_declaring_more_than_the_device_holds_is_not_trusted() {
        let image = erofs(1000, &noise(8192));
        assert_eq!(index_slot(&file(&image)).unwrap(), None);
        // index_image falls back to the whole file.
        assert_eq!(index_image(&file(&image)).unwrap().size, image.len() as u64);
        assert_eq!(index_slot(&file(&noise(100_000))).unwrap(), None);
    }

    #[test]
    fn locate_prefers_the_record_and_survives_a_failing_index() {
        let p = chunker::index(&noise(100_000)[..]).unwrap();
        let (got, took) = locate(Some(&p), || panic!("not indexed"), "root").unwrap();
        assert_eq!((got, took), (p.clone(), None));
        let (got, took) = locate(None, || Ok(Some(p.clone())), "root").unwrap();
        assert!(got == p && took.is_some());
        assert!(locate(None, || Err(io::Error::other("EIO")), "root").is_none());
        assert!(locate(None, || Ok(None), "root").is_none());
    }
}
