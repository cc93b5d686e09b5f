//! Opening the root slot through dm-verity: the slot holds the filesystem image, then the
//! verity superblock and hash tree (`kiln_boot::verity`); the command line's `kiln.verity=`
//! is the root hash. The kernel then checks every block read against the tree, and a corrupted
//! one restarts the machine (`restart_on_corruption`), so a pending slot falls back by boot
//! counting and a damaged slot never runs on.
#![allow(unsafe_code)] // device-mapper ioctls; each call has its SAFETY note.

use super::{err, say, InitError};
use crate::dm::{self, Target};
use kiln_boot::image_len::{image_len, HEAD};
use kiln_boot::verity::{table_params, Geometry, Superblock, BLOCK, SUPERBLOCK_LEN};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

nix::ioctl_readwrite_bad!(dm_dev_create, dm::DEV_CREATE, u64);
nix::ioctl_readwrite_bad!(dm_table_load, dm::TABLE_LOAD, u64);
nix::ioctl_readwrite_bad!(dm_dev_suspend, dm::DEV_SUSPEND, u64);

/// The device-mapper name of the verified root.
pub const NAME: &str = "kiln-root";

const STEP: &str = "opening the root with dm-verity";

/// Sets up `root` (a slot partition) as the verity device `kiln-root` checked against
/// `root_hash` (64 hex digits); returns its device node.
pub fn open(root: &str, root_hash: &str) -> Result<String, InitError> {
    let e = |m: String| err(STEP, m);
    if !kiln_boot::contract::is_root_hash(root_hash) {
        return Err(e(format!(
            "kiln.verity={root_hash:?} is not a sha256 root hash"
        )));
    }
    let hash: [u8; 32] = hex::decode(root_hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| e("bad root hash".into()))?;
    let dev = File::open(root).map_err(|x| e(format!("{root}: {x}")))?;
    // Where the tree is: after the filesystem its superblock declares. Untrusted (the root
    // hash binds the salt and every tree block; a forged length only verifies less and fails).
    let mut head = vec![0u8; HEAD];
    dev.read_exact_at(&mut head, 0)
        .map_err(|x| e(format!("{root}: {x}")))?;
    let len = image_len(&head)
        .filter(|l| l.is_multiple_of(BLOCK))
        .ok_or_else(|| {
            e(format!(
                "{root} holds no erofs or ext4 image of whole 4 KiB blocks"
            ))
        })?;
    let mut sb = [0u8; SUPERBLOCK_LEN];
    dev.read_exact_at(&mut sb, len).map_err(|x| {
        e(format!(
            "{root}: reading the verity superblock at {len}: {x}"
        ))
    })?;
    let sb = Superblock::parse(&sb).map_err(|x| e(format!("{root} at {len}: {x}")))?;
    if sb.data_blocks.checked_mul(BLOCK) != Some(len) {
        return Err(e(format!(
            "{root}: the verity superblock covers {} blocks, the filesystem is {len} bytes",
            sb.data_blocks
        )));
    }
    let g = Geometry::new(sb.data_blocks).map_err(|x| e(x.to_string()))?;
    // The top of the tree (or the one data block) against the root hash first: a clear
    // message here rather than a restart on the first read.
    let top_at = if g.levels.is_empty() {
        0
    } else {
        g.hash_start_block() * BLOCK
    };
    let mut top = vec![0u8; BLOCK as usize];
    dev.read_exact_at(&mut top, top_at)
        .map_err(|x| e(format!("{root}: reading the tree at {top_at}: {x}")))?;
    let mut h = Sha256::new();
    h.update(&sb.salt);
    h.update(&top);
    if h.finalize().as_slice() != hash {
        return Err(e(format!(
            "{root}: the hash tree does not match kiln.verity={root_hash}"
        )));
    }
    let rdev = dev
        .metadata()
        .map_err(|x| e(format!("{root}: {x}")))?
        .rdev();
    let devno = format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    let params = table_params(&devno, &g, &hash, &sb.salt);
    let node = activate(&Target {
        start: 0,
        length: sb.data_blocks * (BLOCK / 512),
        kind: "verity",
        params: &params,
    })?;
    say(format!(
        "root verified by dm-verity: {node} ({NAME}) over {root}, {} blocks, root hash {root_hash}",
        sb.data_blocks
    ));
    Ok(node)
}

/// Creates `kiln-root` with the one `target`, read-only, and resumes it; waits for its node.
fn activate(target: &Target<'_>) -> Result<String, InitError> {
    let e = |m: String| err(STEP, m);
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|x| e(format!("/dev/mapper/control (is dm-mod loaded?): {x}")))?;
    let fd = ctl.as_raw_fd();
    let msg = |flags, targets: &[Target<'_>]| {
        dm::message(NAME, flags, targets).map_err(|x| e(x.to_string()))
    };
    let mut create = msg(0, &[])?;
    // SAFETY: the buffer is a whole dm_ioctl (data_size says how long, and it is that long),
    // 8-byte aligned, and outlives the call; the kernel writes the reply into it.
    unsafe { dm_dev_create(fd, create.as_mut_ptr()) }
        .map_err(|x| e(format!("DM_DEV_CREATE {NAME}: {x}")))?;
    let (_, minor) = dm::reply_dev(&create);
    let mut load = msg(dm::READONLY_FLAG, std::slice::from_ref(target))?;
    // SAFETY: as above; the target spec and its NUL-terminated parameters lie inside the
    // buffer's data_size.
    unsafe { dm_table_load(fd, load.as_mut_ptr()) }
        .map_err(|x| e(format!("DM_TABLE_LOAD verity {}: {x}", target.params)))?;
    let mut resume = msg(0, &[])?;
    // SAFETY: as above (no suspend flag: this resumes the device with the loaded table).
    unsafe { dm_dev_suspend(fd, resume.as_mut_ptr()) }
        .map_err(|x| e(format!("resuming {NAME}: {x}")))?;
    let node = format!("/dev/dm-{minor}");
    let start = Instant::now();
    while File::open(&node).is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err(e(format!("{node} did not appear")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(node)
}
