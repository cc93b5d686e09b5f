//! The flash itself: partition table area last, verified, wiped on any failure.

use crate::progress::Progress;
use crate::source::Source;
use crate::target::Target;
use crate::FlashError;
use sha2::{Digest, Sha256};
use std::io::Read;

/// The area written last: protective MBR, primary GPT header and entries (and the rest of the
/// first MiB, where partitions never start).
pub const HEAD: u64 = 1 << 20;
const BLOCK: usize = 1 << 20;
/// Granularity of zero detection: all-zero runs of this size become zero-outs, not writes.
const ZERO_GRAIN: usize = 64 << 10;

/// A checksum the image must have, and where it came from (for the message).
pub struct Expected {
    pub sha256: [u8; 32],
    pub from: String,
}

/// What a flash did.
#[derive(Debug)]
pub struct Report {
    /// Image size.
    pub bytes: u64,
    /// Bytes written as data.
    pub written: u64,
    /// Bytes zeroed (all-zero blocks of the image).
    pub zeroed: u64,
    pub sha256: [u8; 32],
    /// Whether an expected checksum was checked (else the device was checked against the
    /// image as read).
    pub checked: bool,
    /// Whether the kernel re-read the partition table.
    pub partitions_reread: bool,
    /// Partitions the kernel lists on the device afterwards.
    pub kernel_partitions: usize,
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Zeroes the partition table areas: the device's first and last MiB, and the MiB before each of
/// `ends` (where an image's backup GPT is or would be). Then syncs.
pub fn wipe(dev: &Target, ends: &[u64]) -> Result<(), FlashError> {
    let mut areas = vec![(0, HEAD.min(dev.size))];
    let tail = |end: u64| {
        let start = end.saturating_sub(HEAD) / 512 * 512;
        (start, end / 512 * 512 - start)
    };
    areas.push(tail(dev.size));
    areas.extend(ends.iter().filter(|&&l| l <= dev.size).map(|&l| tail(l)));
    for (off, len) in areas {
        dev.zero(off, len)?;
    }
    dev.sync()
}

/// Flashes `src` onto `dev`. Before anything is written the old partition table is wiped; the
/// image's first MiB is written only after everything else was written, synced, and read back
/// equal to the image (and the image matched `expected`). On any error the device is wiped again,
/// so a failed flash leaves no partition table.
pub fn flash(
    src: &mut Source,
    dev: &Target,
    expected: Option<&Expected>,
    progress: &dyn Progress,
) -> Result<Report, FlashError> {
    if let Some(len) = src.len {
        if len > dev.size {
            return Err(FlashError::TooSmall {
                device: dev.path.clone(),
                device_size: dev.size,
                image_size: len,
            });
        }
        if len < HEAD {
            return Err(FlashError::ImageTooShort {
                image: src.name.clone(),
                len,
            });
        }
    }
    wipe(dev, &[])?;
    let mut seen = None;
    match write_verified(src, dev, expected, progress, &mut seen) {
        Ok(r) => Ok(r),
        Err(e) => {
            let ends: Vec<u64> = seen.into_iter().chain(src.len).collect();
            if let Err(w) = wipe(dev, &ends) {
                tracing::error!("wiping {} after a failed flash: {w}", dev.path.display());
            }
            // The kernel forgets the old partitions too.
            if let Err(w) = dev.reread_partitions() {
                tracing::warn!("{w}");
            }
            Err(e)
        }
    }
}

fn write_verified(
    src: &mut Source,
    dev: &Target,
    expected: Option<&Expected>,
    progress: &dyn Progress,
    seen: &mut Option<u64>,
) -> Result<Report, FlashError> {
    let read_err = FlashError::io("reading image", &src.name);
    let mut head = vec![0u8; HEAD as usize];
    let n = read_full(&mut src.reader, &mut head).map_err(read_err)?;
    if (n as u64) < HEAD {
        return Err(FlashError::ImageTooShort {
            image: src.name.clone(),
            len: n as u64,
        });
    }
    let mut hash = Sha256::new();
    hash.update(&head);
    let (mut written, mut zeroed) = (0u64, 0u64);
    let mut pos = HEAD;
    let mut zero_run: Option<(u64, u64)> = None;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = read_full(&mut src.reader, &mut buf)
            .map_err(FlashError::io("reading image", &src.name))?;
        if n == 0 {
            break;
        }
        if pos + n as u64 > dev.size {
            return Err(FlashError::TooSmall {
                device: dev.path.clone(),
                device_size: dev.size,
                image_size: src.len.unwrap_or(pos + n as u64),
            });
        }
        hash.update(&buf[..n]);
        for (i, grain) in buf[..n].chunks(ZERO_GRAIN).enumerate() {
            let off = pos + (i * ZERO_GRAIN) as u64;
            let len = grain.len() as u64;
            if grain.iter().all(|&b| b == 0) {
                zero_run = match zero_run {
                    Some((s, l)) if s + l == off => Some((s, l + len)),
                    other => {
                        if let Some((s, l)) = other {
                            dev.zero(s, l)?;
                        }
                        Some((off, len))
                    }
                };
                zeroed += len;
            } else {
                if let Some((s, l)) = zero_run.take() {
                    dev.zero(s, l)?;
                }
                dev.write_at(grain, off)?;
                written += len;
            }
        }
        pos += n as u64;
        *seen = Some(pos);
        progress.update("write", pos, src.len);
        if n < BLOCK {
            break;
        }
    }
    if let Some((s, l)) = zero_run.take() {
        dev.zero(s, l)?;
    }
    let len = pos;
    if src.len.is_some_and(|l| l != len) {
        return Err(FlashError::Io {
            what: "reading image",
            path: src.name.clone(),
            source: std::io::Error::other(format!(
                "ended after {len} bytes, expected {}",
                src.len.unwrap_or(0)
            )),
        });
    }
    let digest: [u8; 32] = hash.finalize().into();
    if let Some(exp) = expected {
        if exp.sha256 != digest {
            return Err(FlashError::Checksum {
                image: src.name.clone(),
                expected: hex::encode(exp.sha256),
                actual: hex::encode(digest),
                from: exp.from.clone(),
            });
        }
    }
    dev.sync()?;
    dev.drop_cache()?;

    let mut back = Sha256::new();
    back.update(&head);
    let mut off = HEAD;
    while off < len {
        let n = (len - off).min(BLOCK as u64) as usize;
        dev.read_at(&mut buf[..n], off)?;
        back.update(&buf[..n]);
        off += n as u64;
        progress.update("verify", off, Some(len));
    }
    let back: [u8; 32] = back.finalize().into();
    if back != digest {
        return Err(FlashError::Readback {
            device: dev.path.clone(),
            expected: hex::encode(digest),
            actual: hex::encode(back),
        });
    }

    dev.write_at(&head, 0)?;
    dev.sync()?;
    dev.drop_cache()?;
    dev.read_at(&mut buf[..HEAD as usize], 0)?;
    if buf[..HEAD as usize] != head[..] {
        return Err(FlashError::Readback {
            device: dev.path.clone(),
            expected: hex::encode(Sha256::digest(&head)),
            actual: hex::encode(Sha256::digest(&buf[..HEAD as usize])),
        });
    }
    let partitions_reread = dev.reread_partitions()?;
    Ok(Report {
        bytes: len,
        written,
        zeroed,
        sha256: digest,
        checked: expected.is_some(),
        partitions_reread,
        kernel_partitions: dev.kernel_partitions(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use std::io::Cursor;

    fn image(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for (i, b) in v.iter_mut().enumerate() {
            // Data in the head, a hole, data, a hole, data at the very end.
            let region = i / (512 << 10);
            if region % 3 != 1 {
                *b = (i % 253) as u8 + 1;
            }
        }
        v
    }

    fn source(data: &[u8], known_len: bool) -> Source {
        Source {
            name: "test.img".into(),
            reader: Box::new(Cursor::new(data.to_vec())),
            len: known_len.then_some(data.len() as u64),
            zstd: false,
        }
    }

    fn device(len: u64, fill: u8) -> (tempfile::NamedTempFile, Target) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![fill; len as usize]).unwrap();
        let t = Target::open_file(f.path()).unwrap();
        (f, t)
    }

    #[test]
    fn writes_every_byte_including_zeros_over_old_contents() {
        let data = image(5 << 20);
        for known in [true, false] {
            let (f, dev) = device(8 << 20, 0xee);
            let r = flash(&mut source(&data, known), &dev, None, &Silent).unwrap();
            let out = std::fs::read(f.path()).unwrap();
            assert!(out[..data.len()] == data[..], "known length: {known}");
            assert_eq!(r.bytes, data.len() as u64);
            assert_eq!(r.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
            assert!(
                r.zeroed > 0 && r.written + r.zeroed == r.bytes - HEAD,
                "{r:?}"
            );
            // The device's own tail (an old backup GPT) was wiped.
            assert!(out[(7 << 20)..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_wrong_checksum_leaves_no_partition_table() {
        let data = image(3 << 20);
        let (f, dev) = device(4 << 20, 0xee);
        let exp = Expected {
            sha256: [1; 32],
            from: "disk.raw.sha256".into(),
        };
        let e = flash(&mut source(&data, true), &dev, Some(&exp), &Silent).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("test.img") && msg.contains("disk.raw.sha256"),
            "{msg}"
        );
        let out = std::fs::read(f.path()).unwrap();
        assert!(
            out[..HEAD as usize].iter().all(|&b| b == 0),
            "head written or not wiped"
        );
        assert!(
            out[(2 << 20)..(3 << 20)].iter().all(|&b| b == 0),
            "image tail not wiped"
        );

        let ok = Expected {
            sha256: Sha256::digest(&data).into(),
            from: "x".into(),
        };
        let r = flash(&mut source(&data, true), &dev, Some(&ok), &Silent).unwrap();
        assert!(r.checked);
    }

    #[test]
    fn refuses_too_small_devices_and_short_images() {
        let data = image(3 << 20);
        let (f, dev) = device(2 << 20, 0xee);
        let e = flash(&mut source(&data, true), &dev, None, &Silent).unwrap_err();
        assert!(matches!(e, FlashError::TooSmall { image_size, .. } if image_size == 3 << 20));
        // Nothing written when the size was known up front.
        assert!(std::fs::read(f.path()).unwrap().iter().all(|&b| b == 0xee));
        // A stream of unknown length is caught when it passes the end, and the device wiped.
        let e = flash(&mut source(&data, false), &dev, None, &Silent).unwrap_err();
        assert!(matches!(e, FlashError::TooSmall { .. }), "{e}");
        assert!(std::fs::read(f.path()).unwrap()[..HEAD as usize]
            .iter()
            .all(|&b| b == 0));

        let e = flash(&mut source(&data[..1000], false), &dev, None, &Silent).unwrap_err();
        assert!(
            matches!(e, FlashError::ImageTooShort { len: 1000, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_stream_that_fails_midway_wipes_the_device() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("connection reset"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(9);
                self.0 -= n;
                Ok(n)
            }
        }
        let (f, dev) = device(8 << 20, 0xee);
        let mut src = Source {
            name: "http://x/disk.raw".into(),
            reader: Box::new(Failing(3 << 20)),
            len: Some(6 << 20),
            zstd: false,
        };
        let e = flash(&mut src, &dev, None, &Silent).unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
        let out = std::fs::read(f.path()).unwrap();
        assert!(out[..HEAD as usize].iter().all(|&b| b == 0));
        // The end of what was written, and where the image's backup GPT would have been.
        assert!(out[(2 << 20)..(3 << 20)].iter().all(|&b| b == 0));
        assert!(out[(5 << 20)..(6 << 20)].iter().all(|&b| b == 0));
    }
}
