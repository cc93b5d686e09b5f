//! Writing the disk file: sparse allocation, the GPT (gpt crate) and partition contents.

use crate::layout::{DiskLayout, SECTOR};
use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::str::FromStr;

/// Writes the protective MBR and both GPT headers and entry arrays.
pub fn write_gpt(file: &mut File, layout: &DiskLayout) -> io::Result<()> {
    let sectors = layout.size / SECTOR;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(file).map_err(io::Error::other)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(layout.disk_guid))
        .map_err(io::Error::other)?;
    let mut parts = BTreeMap::new();
    for p in layout.parts() {
        parts.insert(
            p.number,
            Partition {
                part_type_guid: Type {
                    guid: uuid::Uuid::from_str(p.type_guid).map_err(io::Error::other)?,
                    os: OperatingSystem::None,
                },
                part_guid: p.guid,
                first_lba: p.first_lba(),
                last_lba: p.last_lba(),
                flags: 0,
                name: p.label.to_string(),
            },
        );
    }
    disk.update_partitions(parts).map_err(io::Error::other)?;
    disk.write().map_err(io::Error::other)?;
    Ok(())
}

/// Copies `src` into `disk` at `offset`, skipping all-zero blocks so the disk stays sparse.
/// Returns the number of bytes copied (zeros included).
pub fn copy_sparse(src: &mut impl Read, disk: &File, offset: u64) -> io::Result<u64> {
    const BLOCK: usize = 64 << 10;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = src.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(pos);
        }
        for (i, block) in buf[..filled].chunks(BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                disk.write_all_at(block, offset + pos + (i * BLOCK) as u64)?;
            }
        }
        pos += filled as u64;
        if filled < buf.len() {
            return Ok(pos);
        }
    }
}

/// The data extents `(start, end)` of `file` (SEEK_DATA/SEEK_HOLE), in order.
pub fn data_extents(file: &File) -> io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let size = file.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < size {
        let start = match lseek(fd, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = lseek(fd, start, Whence::SeekHole)?;
        out.push((start as u64, end as u64));
        pos = end;
    }
    Ok(out)
}

/// Copies `len` bytes of `src` at `from` into `dst` at `to` inside the kernel
/// (`copy_file_range`: no copy through userspace).
pub fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsFd;
    let (mut from, mut to, mut left) = (from as i64, to as i64, len as usize);
    while left > 0 {
        let n = nix::fcntl::copy_file_range(
            src.as_fd(),
            Some(&mut from),
            dst.as_fd(),
            Some(&mut to),
            left,
        )?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source ended before the range was copied",
            ));
        }
        left -= n;
    }
    Ok(())
}

/// Copies the data extents of `src` into `disk` at `offset`; holes stay holes.
pub fn copy_file_sparse(src: &File, disk: &File, offset: u64) -> io::Result<()> {
    for (start, end) in data_extents(src)? {
        copy_range(src, start, disk, offset + start, end - start)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_holes_and_content() {
        let d = tempfile::tempdir().unwrap();
        let disk = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(d.path().join("d"))
            .unwrap();
        disk.set_len(8 << 20).unwrap();
        let mut src = vec![0u8; 4 << 20];
        src[100] = 7;
        src[(3 << 20) + 5] = 9;
        let n = copy_sparse(&mut &src[..], &disk, 1 << 20).unwrap();
        assert_eq!(n, 4 << 20);
        let mut back = vec![0u8; 4 << 20];
        disk.read_exact_at(&mut back, 1 << 20).unwrap();
        assert_eq!(back, src);
        // two 64 KiB blocks written, the rest are holes
        assert!(disk.metadata().unwrap().blocks() * 512 <= 256 << 10);
    }

    #[test]
    fn file_copy_follows_extents() {
        let d = tempfile::tempdir().unwrap();
        let open = |n: &str| {
            File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(d.path().join(n))
                .unwrap()
        };
        let (src, disk) = (open("src"), open("disk"));
        src.set_len(8 << 20).unwrap();
        src.write_all_at(b"head", 10).unwrap();
        src.write_all_at(&[5u8; 70_000], 5 << 20).unwrap();
        let ext = data_extents(&src).unwrap();
        assert_eq!(ext.len(), 2, "{ext:?}");
        assert!(ext[0].0 == 0 && ext[1].0 <= 5 << 20 && ext[1].1 >= (5 << 20) + 70_000);
        disk.set_len(16 << 20).unwrap();
        copy_file_sparse(&src, &disk, 1 << 20).unwrap();
        let mut back = vec![0u8; 8 << 20];
        disk.read_exact_at(&mut back, 1 << 20).unwrap();
        let mut want = vec![0u8; 8 << 20];
        src.read_exact_at(&mut want, 0).unwrap();
        assert!(back == want);
        assert!(disk.metadata().unwrap().blocks() * 512 <= 1 << 20);
    }
}
