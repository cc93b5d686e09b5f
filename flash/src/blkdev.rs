//! Block-device and filesystem ioctls on an open file descriptor, shared by `kiln flash` and
//! kiln-init (which grows persist on first boot).
#![allow(unsafe_code)] // each ioctl call has its SAFETY note.

use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd};

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_none!(blkrrpart, 0x12, 95);
nix::ioctl_none!(blkflsbuf, 0x12, 97);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// `struct blkpg_partition` (linux/blkpg.h).
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` (linux/blkpg.h).
#[repr(C)]
pub struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG_RESIZE_PARTITION: i32 = 3;

/// Size in bytes of a block device.
pub fn size(fd: impl AsFd) -> Result<u64, Errno> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `size`, alive for
    // the call; the fd is borrowed, so open.
    unsafe { blkgetsize64(fd.as_fd().as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// BLKZEROOUT: `[start, start+len)` reads as zeros (the kernel may write zeros).
pub fn zero_out(fd: impl AsFd, start: u64, len: u64) -> Result<(), Errno> {
    let range = [start, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer, which points to
    // `range`, alive for the call; the fd is borrowed, so open.
    unsafe { blkzeroout(fd.as_fd().as_raw_fd(), &range) }?;
    Ok(())
}

/// BLKFLSBUF: write back and drop the device's buffer cache.
pub fn flush_buffers(fd: impl AsFd) -> Result<(), Errno> {
    // SAFETY: BLKFLSBUF takes no argument; the fd is borrowed, so open.
    unsafe { blkflsbuf(fd.as_fd().as_raw_fd()) }?;
    Ok(())
}

/// BLKRRPART: the kernel re-reads the partition table (EBUSY while a partition is open).
pub fn reread_partitions(fd: impl AsFd) -> Result<(), Errno> {
    // SAFETY: BLKRRPART takes no argument; the fd is borrowed, so open.
    unsafe { blkrrpart(fd.as_fd().as_raw_fd()) }?;
    Ok(())
}

/// BLKPG_RESIZE_PARTITION: partition `pno` of the disk `fd` now spans `length` bytes from
/// `start` (which must not change). Works while the partition is in use.
pub fn resize_partition(fd: impl AsFd, pno: u32, start: u64, length: u64) -> Result<(), Errno> {
    let mut part = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: pno as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    // SAFETY: BLKPG reads `arg` and the `blkpg_partition` it points to (`part`, `datalen`
    // bytes); both are repr(C) as in linux/blkpg.h and alive for the call; the fd is borrowed.
    unsafe { blkpg(fd.as_fd().as_raw_fd(), &arg) }?;
    Ok(())
}

/// EXT4_IOC_RESIZE_FS on a mounted ext4 (fd of any file or directory on it): grow to `blocks`
/// filesystem blocks, online and journaled, so a cut in the middle leaves a consistent
/// filesystem of the old size or of part of the new one.
pub fn ext4_resize(fd: impl AsFd, blocks: u64) -> Result<(), Errno> {
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 through the pointer, which points to `blocks`,
    // alive for the call; the fd is borrowed, so open.
    unsafe { ext4_resize_fs(fd.as_fd().as_raw_fd(), &blocks) }?;
    Ok(())
}
