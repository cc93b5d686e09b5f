//! Opening the root slot through dm-verity: the slot holds the filesystem image, then the
//! verity superblock and hash tree (`kiln_boot::verity`); the command line's `kiln.verity=`
//! is the root hash. The kernel then checks every block read against the tree, and a corrupted
//! one restarts the machine (`restart_on_corruption`), so a pending slot falls back by boot
//! counting and a damaged slot never runs on.
#![allow(unsafe_code)] // device-mapper ioctls; each call has its SAFETY note.

use super::{err, say, InitError};
use crate::dm::{self, Target};
use kiln_boot::verity::{table_params, BLOCK};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
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
    let dev = File::open(root).map_err(|x| e(format!("{root}: {x}")))?;
    let kiln_boot::slot_verity::Checked {
        sb,
        geometry: g,
        hash,
    } = kiln_boot::slot_verity::check_slot(&dev, root, root_hash).map_err(e)?;
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
