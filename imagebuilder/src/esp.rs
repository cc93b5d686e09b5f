//! Building the EFI system partition in userspace (fatfs), directly inside the disk file.

use fatfs::{Date, DateTime, FatType, FormatVolumeOptions, FsOptions, Time, TimeProvider};
use std::fs::File;
use std::io::{self, Write};

/// One file to put on the ESP.
pub struct EspFile<'a> {
    /// Path on the ESP, `/`-separated, no leading slash.
    pub path: String,
    /// Borrowed for the big files (kernel, initrd), which the builder already holds.
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// Fixed timestamps (SOURCE_DATE_EPOCH) for reproducible FAT directory entries.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// Converts a UNIX time to a FAT date-time (UTC, clamped to FAT's 1980..2107 range).
pub fn fat_time(epoch: u64) -> DateTime {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    if year < 1980 {
        return DateTime {
            date: Date {
                year: 1980,
                month: 1,
                day: 1,
            },
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        };
    }
    DateTime {
        date: Date {
            year: year.min(2107),
            month,
            day,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs % 3600 / 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Largest cluster size that keeps FAT32 above its minimum cluster count.
fn cluster_size(size: u64) -> u32 {
    [4096u32, 2048, 1024, 512]
        .into_iter()
        .find(|c| size / u64::from(*c) >= 66_000)
        .unwrap_or(512)
}

/// An in-memory volume that remembers how far it was written. `fatfs` issues tens of thousands
/// of tiny reads, writes and seeks (FAT cells, one cluster at a time); doing them in memory and
/// writing the result once is much faster than doing them on the disk file.
struct MemVolume {
    buf: Vec<u8>,
    pos: usize,
    high: usize,
}

impl io::Read for MemVolume {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(self.buf.len().saturating_sub(self.pos));
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl io::Write for MemVolume {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.buf.len().saturating_sub(self.pos));
        if n == 0 && !data.is_empty() {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "ESP is full"));
        }
        self.buf[self.pos..self.pos + n].copy_from_slice(&data[..n]);
        self.pos += n;
        self.high = self.high.max(self.pos);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for MemVolume {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let new = match to {
            io::SeekFrom::Start(n) => n as i64,
            io::SeekFrom::Current(d) => self.pos as i64 + d,
            io::SeekFrom::End(d) => self.buf.len() as i64 + d,
        };
        if new < 0 || new as usize > self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the ESP",
            ));
        }
        self.pos = new as usize;
        Ok(self.pos as u64)
    }
}

/// Formats FAT32 over `size` bytes at `offset` of `disk` and writes `files`. The region of
/// `disk` must read as zeros (a freshly created sparse disk file): only written blocks are
/// copied.
pub fn build(
    disk: &File,
    offset: u64,
    size: u64,
    volume_id: u32,
    epoch: u64,
    files: &[EspFile<'_>],
) -> io::Result<()> {
    prepare(size, volume_id, epoch, files)?.finish(disk, offset, &[])
}

/// An ESP built in memory, not yet on the disk: the builder writes the big files that do not
/// depend on the root (kernel, initrd, loader) while the root is still being made, and the
/// few that carry its hash afterwards ([`Prepared::finish`]).
pub struct Prepared {
    vol: MemVolume,
    time: &'static FixedTime,
}

/// Formats a FAT32 volume of `size` bytes in memory and writes `files` into it.
pub fn prepare(
    size: u64,
    volume_id: u32,
    epoch: u64,
    files: &[EspFile<'_>],
) -> io::Result<Prepared> {
    let mut vol = MemVolume {
        buf: vec![0u8; usize::try_from(size).map_err(io::Error::other)?],
        pos: 0,
        high: 0,
    };
    fatfs::format_volume(
        &mut vol,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .bytes_per_cluster(cluster_size(size))
            .volume_id(volume_id)
            .volume_label(*b"ESP        "),
    )?;
    let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    write_files(&mut vol, time, files)?;
    Ok(Prepared { vol, time })
}

/// Mounts the in-memory volume, writes `files` (creating their directories) and unmounts it.
fn write_files(
    vol: &mut MemVolume,
    time: &'static FixedTime,
    files: &[EspFile<'_>],
) -> io::Result<()> {
    // The boot sector is read from where the stream is: the start.
    vol.pos = 0;
    let fs = fatfs::FileSystem::new(vol, FsOptions::new().time_provider(time))?;
    {
        let root = fs.root_dir();
        for f in files {
            let (dir, name) = match f.path.rsplit_once('/') {
                Some((d, n)) => (Some(d), n),
                None => (None, f.path.as_str()),
            };
            let mut d = root.clone();
            for comp in dir.into_iter().flat_map(|d| d.split('/')) {
                d = d.create_dir(comp)?;
            }
            let mut file = d.create_file(name)?;
            file.truncate()?;
            file.write_all(&f.data)?;
            file.flush()?;
        }
    }
    fs.unmount()
}

impl Prepared {
    /// Writes `files` too, then the volume into `disk` at `offset` (whose region must read as
    /// zeros: only written blocks are copied).
    pub fn finish(mut self, disk: &File, offset: u64, files: &[EspFile<'_>]) -> io::Result<()> {
        if !files.is_empty() {
            write_files(&mut self.vol, self.time, files)?;
        }
        crate::esp_fixup::repair(&mut self.vol)?;
        crate::disk::copy_sparse(&mut &self.vol.buf[..self.vol.high], disk, offset)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_to_fat_time() {
        let t = fat_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        assert_eq!(fat_time(0).date.year, 1980);
    }

    #[test]
    fn cluster_sizes_keep_fat32_valid() {
        assert_eq!(cluster_size(256 << 20), 2048);
        assert_eq!(cluster_size(64 << 20), 512);
        assert_eq!(cluster_size(1 << 30), 4096);
    }
}

#[cfg(test)]
mod fsck_tests {
    use super::*;

    #[test]
    fn esp_is_fsck_clean() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("esp.img");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let size = 256u64 << 20;
        f.set_len(size).unwrap();
        let files = vec![
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                data: vec![1; 1000].into(),
            },
            EspFile {
                path: "loader/loader.conf".into(),
                data: b"timeout 0\n".to_vec().into(),
            },
            EspFile {
                path: "loader/entries/kiln-a.conf".into(),
                data: b"x\n".to_vec().into(),
            },
            EspFile {
                path: "kiln/a/vmlinuz".into(),
                data: vec![2; 100_000].into(),
            },
        ];
        build(&f, 0, size, 0x1234, 1_700_000_000, &files).unwrap();
        drop(f);
        let o = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&p)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.lines().count() == 2, "{out}");
    }
}
