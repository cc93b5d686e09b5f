//! A root slot's dm-verity tree as kiln-init and the updater find it: after the filesystem
//! its superblock declares ([`crate::image_len`]), with the tree's top block checked against
//! a root hash. Read-only; kiln-init then opens the slot through device-mapper
//! (`init/verity.rs`), the updater uses it to tell the boot disk's slot from another disk's.

use crate::image_len::{image_len, HEAD};
use crate::verity::{read_tree, Geometry, Superblock, BLOCK};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// A slot whose verity tree's top matches a root hash: its superblock, geometry and the hash.
pub struct Checked {
    pub sb: Superblock,
    pub geometry: Geometry,
    pub hash: [u8; 32],
}

/// Finds the verity tree of the slot `dev` (named `root` in messages) after the filesystem its
/// superblock declares, and checks the tree's top block (or the one data block) against
/// `root_hash` (64 hex digits) — a clear error rather than a restart on the first read, and
/// how a slot found by label is told apart from another disk's. Read-only.
pub fn check_slot(dev: &File, root: &str, root_hash: &str) -> Result<Checked, String> {
    if !crate::cmdline::is_root_hash(root_hash) {
        return Err(format!(
            "kiln.verity={root_hash:?} is not a sha256 root hash"
        ));
    }
    let hash: [u8; 32] = hex::decode(root_hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| "bad root hash".to_string())?;
    // Where the tree is: after the filesystem its superblock declares. Untrusted (the root
    // hash binds the salt and every tree block; a forged length only verifies less and fails).
    let mut head = vec![0u8; HEAD];
    dev.read_exact_at(&mut head, 0)
        .map_err(|x| format!("{root}: {x}"))?;
    let len = image_len(&head)
        .filter(|l| l.is_multiple_of(BLOCK))
        .ok_or_else(|| format!("{root} holds no erofs or ext4 image of whole 4 KiB blocks"))?;
    let (sb, geometry) = read_tree(dev, 0, len).map_err(|x| format!("{root}: {x}"))?;
    let top_at = if geometry.levels.is_empty() {
        0
    } else {
        geometry.hash_start_block() * BLOCK
    };
    let mut top = vec![0u8; BLOCK as usize];
    dev.read_exact_at(&mut top, top_at)
        .map_err(|x| format!("{root}: reading the tree at {top_at}: {x}"))?;
    let mut h = Sha256::new();
    h.update(&sb.salt);
    h.update(&top);
    if h.finalize().as_slice() != hash {
        return Err(format!(
            "{root}: the hash tree does not match kiln.verity={root_hash}"
        ));
    }
    Ok(Checked { sb, geometry, hash })
}
