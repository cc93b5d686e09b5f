//! The device being written: refusal checks, exclusive open, zero-outs, cache drops and the
//! partition re-read.

use crate::blkdev;
use crate::sysblock::{self, BlockInfo, DevNum};
use crate::FlashError;
use nix::errno::Errno;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A device (or, for tests and file output, a regular file) opened for writing an image.
pub struct Target {
    pub path: PathBuf,
    file: File,
    /// Bytes the device holds.
    pub size: u64,
    block: bool,
    dev: Option<DevNum>,
}

fn devnum(rdev: u64) -> DevNum {
    (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
}

/// Refuses a disk any of whose members (the disk or a partition) is mounted, swap, or held.
/// `swaps` are the device numbers of the active swap areas that are block devices.
pub fn refuse_in_use(
    path: &Path,
    info: &BlockInfo,
    mounts: &[(DevNum, String)],
    swaps: &[DevNum],
) -> Result<(), FlashError> {
    for (name, num) in &info.members {
        if let Some((_, mp)) = mounts.iter().find(|(d, _)| d == num) {
            return Err(FlashError::Mounted {
                device: path.into(),
                part: name.clone(),
                mountpoint: mp.clone(),
            });
        }
        if swaps.contains(num) {
            return Err(FlashError::Swap {
                device: path.into(),
                part: name.clone(),
            });
        }
    }
    if let Some((part, holder)) = info.holders.first() {
        return Err(FlashError::Held {
            device: path.into(),
            part: part.clone(),
            holder: holder.clone(),
        });
    }
    Ok(())
}

fn swap_devnums() -> Vec<DevNum> {
    let text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    sysblock::parse_swaps(&text)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .filter(|m| m.file_type().is_block_device())
        .map(|m| devnum(m.rdev()))
        .collect()
}

impl Target {
    /// Checks `path` is a whole block device nobody uses, and opens it exclusively.
    pub fn open_device(path: &Path) -> Result<Target, FlashError> {
        let meta =
            std::fs::metadata(path).map_err(FlashError::io("opening device", path.display()))?;
        if !meta.file_type().is_block_device() {
            return Err(FlashError::NotBlockDevice(path.into()));
        }
        let info = sysblock::inspect(Path::new("/sys"), devnum(meta.rdev()))
            .map_err(FlashError::io("reading sysfs for", path.display()))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(FlashError::io("reading", "/proc/self/mountinfo"))?;
        refuse_in_use(
            path,
            &info,
            &sysblock::parse_mountinfo(&mountinfo),
            &swap_devnums(),
        )?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc_ebusy) if libc_ebusy == Errno::EBUSY as i32 => FlashError::Busy {
                    device: path.into(),
                },
                _ => FlashError::io("opening device", path.display())(e),
            })?;
        let size = blkdev::size(&file)
            .map_err(|e| FlashError::io("reading the size of", path.display())(e.into()))?;
        Ok(Target {
            path: path.into(),
            file,
            size,
            block: true,
            dev: Some(devnum(meta.rdev())),
        })
    }

    /// A regular file of a fixed size standing in for a device (tests; writing to a file).
    pub fn open_file(path: &Path) -> Result<Target, FlashError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(FlashError::io("opening", path.display()))?;
        let size = file
            .metadata()
            .map_err(FlashError::io("reading", path.display()))?
            .len();
        Ok(Target {
            path: path.into(),
            file,
            size,
            block: false,
            dev: None,
        })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(io::Error) -> FlashError {
        FlashError::io(what, self.path.display().to_string())
    }

    pub fn write_at(&self, buf: &[u8], off: u64) -> Result<(), FlashError> {
        self.file
            .write_all_at(buf, off)
            .map_err(self.err("writing"))
    }

    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<(), FlashError> {
        self.file
            .read_exact_at(buf, off)
            .map_err(self.err("reading back"))
    }

    /// Makes `[off, off+len)` read as zeros without writing zeros where the device can avoid
    /// it. On a block device, fallocate(PUNCH_HOLE) is a zero-out that may unmap (WRITE ZEROES
    /// with unmap on disks, a hole in a loop device's backing file) and never falls back to
    /// writing; where it is not supported, BLKZEROOUT (which may write zeros). On a file: a hole.
    pub fn zero(&self, off: u64, len: u64) -> Result<(), FlashError> {
        use nix::fcntl::{fallocate, FallocateFlags};
        if len == 0 {
            return Ok(());
        }
        if !off.is_multiple_of(512) || !len.is_multiple_of(512) {
            return self.write_at(&vec![0u8; len as usize], off);
        }
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_raw_fd(), punch, off as i64, len as i64) {
            Ok(()) => return Ok(()),
            Err(Errno::EOPNOTSUPP) if self.block => {}
            Err(e) => return Err(self.err("zeroing")(e.into())),
        }
        blkdev::zero_out(&self.file, off, len).map_err(|e| self.err("zeroing")(e.into()))
    }

    /// fsync: every byte written so far is on the device.
    pub fn sync(&self) -> Result<(), FlashError> {
        self.file.sync_all().map_err(self.err("syncing"))
    }

    /// Drops cached pages so that what is read next comes from the device itself.
    pub fn drop_cache(&self) -> Result<(), FlashError> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        posix_fadvise(
            self.file.as_raw_fd(),
            0,
            0,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(|e| self.err("dropping the cache of")(e.into()))?;
        if self.block {
            blkdev::flush_buffers(&self.file)
                .map_err(|e| self.err("flushing buffers of")(e.into()))?;
        }
        Ok(())
    }

    /// How many partitions the kernel knows on this device (sysfs); 0 for a file.
    pub fn kernel_partitions(&self) -> usize {
        self.dev
            .and_then(|d| sysblock::inspect(Path::new("/sys"), d).ok())
            .map_or(0, |i| i.members.len() - 1)
    }

    /// Asks the kernel to re-read the partition table, retrying while the device is busy (udev
    /// may still hold it after the writes). `Ok(false)`: the device has no partition support
    /// (a loop device attached without `-P`), which is not an error.
    pub fn reread_partitions(&self) -> Result<bool, FlashError> {
        if !self.block {
            return Ok(false);
        }
        let mut last = Errno::EBUSY;
        for attempt in 0..20 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250));
            }
            match blkdev::reread_partitions(&self.file) {
                Ok(_) => return Ok(true),
                Err(Errno::EINVAL) => return Ok(false),
                Err(e @ Errno::EBUSY) => last = e,
                Err(e) => return Err(self.err("re-reading the partition table of")(e.into())),
            }
        }
        Err(self.err("re-reading the partition table of")(last.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> BlockInfo {
        BlockInfo {
            name: "loop3".into(),
            members: vec![("loop3".into(), (7, 3)), ("loop3p2".into(), (259, 1))],
            holders: vec![],
        }
    }

    #[test]
    fn refuses_mounted_swap_and_held_members() {
        let p = Path::new("/dev/loop3");
        assert!(refuse_in_use(p, &disk(), &[((8, 1), "/".into())], &[(8, 2)]).is_ok());
        let e = refuse_in_use(p, &disk(), &[((259, 1), "/mnt/x".into())], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/loop3: loop3p2 is mounted at /mnt/x; unmount it first"
        );
        let e = refuse_in_use(p, &disk(), &[], &[(7, 3)]).unwrap_err();
        assert!(
            matches!(e, FlashError::Swap { ref part, .. } if part == "loop3"),
            "{e}"
        );
        let mut held = disk();
        held.holders.push(("loop3p2".into(), "dm-0".into()));
        let e = refuse_in_use(p, &held, &[], &[]).unwrap_err();
        assert!(e.to_string().contains("loop3p2 is held by dm-0"), "{e}");
    }

    #[test]
    fn a_regular_file_is_not_a_device() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = Target::open_device(f.path()).err().unwrap();
        assert!(matches!(e, FlashError::NotBlockDevice(_)), "{e}");
    }
}
