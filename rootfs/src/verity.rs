//! The dm-verity hash tree of a root image, appended to the image itself: data, cryptsetup's
//! superblock, tree (the layout of [`kiln_boot::verity`]), so that `veritysetup verify IMG IMG
//! ROOT_HASH --hash-offset=DATA_BYTES` accepts it and the kernel's `verity` target reads it
//! from the same partition. Written here rather than by running `veritysetup format`: the
//! same geometry code serves the builder, the updater and kiln-init, the output depends on
//! nothing but the image, the salt and the uuid (reproducible builds), and there is no tool
//! output to parse. The tests check it against veritysetup.

use crate::RootfsError;
use kiln_boot::verity::{Geometry, Superblock, BLOCK, SUPERBLOCK_LEN};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// What the tree of an image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityInfo {
    pub root_hash: [u8; 32],
    pub salt: [u8; 32],
    pub data_blocks: u64,
    /// Where the superblock starts (the data's length); the tree follows one block later.
    pub hash_offset: u64,
    /// Data, superblock and tree.
    pub total_len: u64,
}

/// `sha256(salt ‖ block)`: a verity version 1 digest.
fn digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Digests packed into hash blocks, zero-padded (128 per 4 KiB block).
fn pack(digests: &[[u8; 32]]) -> Vec<u8> {
    let blocks = digests.len().div_ceil((BLOCK / 32) as usize);
    let mut out = vec![0u8; blocks * BLOCK as usize];
    for (i, d) in digests.iter().enumerate() {
        out[i * 32..i * 32 + 32].copy_from_slice(d);
    }
    out
}

/// Level 0: the digests of the `blocks` data blocks `r` yields, read once, in order, in
/// batches of 8 MiB whose blocks are hashed on up to four threads (the digests are the tree's
/// whole cost; the build waits for them).
fn level0(mut r: impl Read, blocks: u64, salt: &[u8]) -> std::io::Result<Vec<[u8; 32]>> {
    const BATCH: usize = 2048;
    let bs = BLOCK as usize;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut digests = Vec::with_capacity(blocks as usize);
    let mut buf = vec![0u8; BATCH * bs];
    let mut left = blocks as usize;
    while left > 0 {
        let n = left.min(BATCH);
        let data = &mut buf[..n * bs];
        r.read_exact(data)?;
        let per = n.div_ceil(threads) * bs;
        let data = &*data;
        std::thread::scope(|s| {
            let parts: Vec<_> = data
                .chunks(per)
                .map(|part| {
                    s.spawn(move || part.chunks(bs).map(|b| digest(salt, b)).collect::<Vec<_>>())
                })
                .collect();
            for p in parts {
                digests.extend(p.join().expect("a hashing thread panicked"));
            }
        });
        left -= n;
    }
    Ok(digests)
}

/// The tree of the `g.data_blocks` blocks `r` yields: its levels (level 0 first, each packed
/// into hash blocks) and the root hash.
fn compute(
    mut r: impl Read,
    g: &Geometry,
    salt: &[u8],
) -> std::io::Result<(Vec<Vec<u8>>, [u8; 32])> {
    let mut digests = level0(&mut r, g.data_blocks, salt)?;
    // Each level packs the digests of the one below; the top one has a single block.
    let mut levels = Vec::with_capacity(g.levels.len());
    for &blocks in &g.levels {
        let packed = pack(&digests);
        debug_assert_eq!(packed.len() as u64, blocks * BLOCK);
        digests = packed
            .chunks(BLOCK as usize)
            .map(|b| digest(salt, b))
            .collect();
        levels.push(packed);
    }
    // With no level (one data block) the root is that block's digest; else the top block's.
    Ok((levels, digests[0]))
}

/// A slot's dm-verity tree as found after its filesystem, checked against its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTree {
    pub data_blocks: u64,
    /// The root hash of the data as it is now (equal to the entry's, or the slot is damaged).
    pub root_hash: [u8; 32],
    /// The first data block whose digest differs from the tree on disk (damaged data), if any.
    pub bad_data_block: Option<u64>,
    /// Whether the tree on disk is exactly the tree of the data.
    pub tree_matches: bool,
}

/// Reads the verity superblock `data_len` bytes into the volume at `base` of `f` (at most
/// `avail` bytes long) and recomputes the tree from the data: `None` when no superblock for
/// that length is there. Read-only.
pub fn check_tree(
    f: &File,
    base: u64,
    data_len: u64,
    avail: u64,
) -> std::io::Result<Option<FoundTree>> {
    use std::os::unix::fs::FileExt;
    let Ok((sb, g)) = kiln_boot::verity::read_tree(f, base, data_len) else {
        return Ok(None);
    };
    if g.total_len() > avail {
        return Ok(None);
    }
    let mut data = f.try_clone()?;
    data.seek(SeekFrom::Start(base))?;
    let (levels, root_hash) = compute(
        BufReader::with_capacity(1 << 20, data.take(data_len)),
        &g,
        &sb.salt,
    )?;
    // On disk: the top level first, then down to level 0.
    let mut at = base + data_len + BLOCK;
    let mut tree_matches = true;
    let mut bad_data_block = None;
    for (i, level) in levels.iter().enumerate().rev() {
        let mut disk = vec![0u8; level.len()];
        f.read_exact_at(&mut disk, at)?;
        if disk != *level {
            tree_matches = false;
            if i == 0 {
                bad_data_block = disk
                    .chunks(32)
                    .zip(level.chunks(32))
                    .position(|(a, b)| a != b)
                    .map(|k| k as u64);
            }
        }
        at += level.len() as u64;
    }
    Ok(Some(FoundTree {
        data_blocks: sb.data_blocks,
        root_hash,
        bad_data_block,
        tree_matches,
    }))
}

/// Appends the superblock and hash tree to the image at `path` (padded to 4 KiB first) with
/// `salt` and `uuid`; the whole must fit in `cap` bytes (the slot).
pub fn append_tree(
    path: &Path,
    salt: [u8; 32],
    uuid: [u8; 16],
    cap: u64,
) -> Result<VerityInfo, RootfsError> {
    let io = |what: &str, e: std::io::Error| RootfsError::Verity {
        path: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    };
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io("opening", e))?;
    let len = f.metadata().map_err(|e| io("reading its size", e))?.len();
    let data_len = len.div_ceil(BLOCK) * BLOCK;
    let g = Geometry::new(data_len / BLOCK).map_err(|e| RootfsError::Verity {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if g.total_len() > cap {
        return Err(RootfsError::Verity {
            path: path.to_path_buf(),
            reason: format!(
                "the image ({data_len} bytes) and its hash tree ({} bytes) do not fit the {cap}-byte slot",
                g.area_len()
            ),
        });
    }
    f.set_len(data_len).map_err(|e| io("padding to 4 KiB", e))?;
    let (levels, root_hash) = compute(BufReader::with_capacity(1 << 20, &mut f), &g, &salt)
        .map_err(|e| io("reading the image", e))?;

    let sb = Superblock {
        uuid,
        data_blocks: g.data_blocks,
        salt: salt.to_vec(),
    }
    .encode()
    .map_err(|e| RootfsError::Verity {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut sb_block = vec![0u8; BLOCK as usize];
    sb_block[..SUPERBLOCK_LEN].copy_from_slice(&sb);
    f.seek(SeekFrom::Start(data_len))
        .map_err(|e| io("seeking", e))?;
    f.write_all(&sb_block)
        .map_err(|e| io("writing the superblock", e))?;
    for level in levels.iter().rev() {
        f.write_all(level)
            .map_err(|e| io("writing the hash tree", e))?;
    }
    f.sync_all().map_err(|e| io("syncing", e))?;
    Ok(VerityInfo {
        root_hash,
        salt,
        data_blocks: g.data_blocks,
        hash_offset: data_len,
        total_len: g.total_len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, blocks: usize, seed: u8) -> std::path::PathBuf {
        let p = dir.join(format!("img{blocks}-{seed}"));
        let data: Vec<u8> = (0..blocks * BLOCK as usize)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn one_block_has_its_own_digest_as_root_and_no_tree() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), 1, 1);
        let first = std::fs::read(&p).unwrap();
        let v = append_tree(&p, [9; 32], [1; 16], 1 << 20).unwrap();
        assert_eq!(v.root_hash, digest(&[9; 32], &first));
        assert_eq!(v.total_len, 2 * BLOCK);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 * BLOCK);
    }

    #[test]
    fn the_top_block_is_first_and_covers_the_level_below() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), 129, 2);
        let v = append_tree(&p, [3; 32], [1; 16], 1 << 20).unwrap();
        let all = std::fs::read(&p).unwrap();
        let b = BLOCK as usize;
        // data 129, superblock 1, top level 1, level 0 of 2 blocks.
        assert_eq!(all.len(), (129 + 1 + 1 + 2) * b);
        let top = &all[130 * b..131 * b];
        let level0 = &all[131 * b..133 * b];
        assert_eq!(v.root_hash, digest(&[3; 32], top));
        assert_eq!(&top[..32], &digest(&[3; 32], &level0[..b]));
        assert_eq!(&level0[32..64], &digest(&[3; 32], &all[b..2 * b]));
        assert!(top[64..].iter().all(|&x| x == 0));
        let sb = Superblock::parse(&all[129 * b..]).unwrap();
        assert_eq!((sb.data_blocks, sb.salt), (129, vec![3; 32]));
    }

    #[test]
    fn a_tree_that_does_not_fit_the_slot_is_refused_and_nothing_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), 128, 3);
        let e = append_tree(&p, [0; 32], [0; 16], 129 * BLOCK).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 128 * BLOCK);
    }
}
