//! Attaching a file to a free loop device (the root image of a live network boot).
#![allow(unsafe_code)] // loop ioctls; each call has its SAFETY note.

use super::{err, InitError};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

nix::ioctl_none!(loop_ctl_get_free, 0x4c, 0x82);
nix::ioctl_write_int_bad!(loop_set_fd, 0x4c00);

/// Attaches `path` read-only to a free loop device and returns the device's path.
pub fn attach_ro(path: &str) -> Result<String, InitError> {
    let e = |m: String| err("attaching the root image", m);
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|x| {
            e(format!(
                "/dev/loop-control (is the loop module loaded?): {x}"
            ))
        })?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument; the fd is open.
    let n = unsafe { loop_ctl_get_free(ctl.as_raw_fd()) }
        .map_err(|x| e(format!("LOOP_CTL_GET_FREE: {x}")))?;
    let dev = format!("/dev/loop{n}");
    let start = Instant::now();
    let loopf = loop {
        match OpenOptions::new().read(true).open(&dev) {
            Ok(f) => break f,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(x) => return Err(e(format!("{dev}: {x}"))),
        }
    };
    let backing = File::open(path).map_err(|x| e(format!("{path}: {x}")))?;
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor by value; both fds are open, and
    // the kernel takes its own reference to the file.
    unsafe { loop_set_fd(loopf.as_raw_fd(), backing.as_raw_fd()) }
        .map_err(|x| e(format!("LOOP_SET_FD on {dev}: {x}")))?;
    Ok(dev)
}
