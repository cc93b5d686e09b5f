//! Writing a disk image to a block device so that a half-written disk is never taken for a good
//! one (the approach of coreos-installer):
//!
//! 1. [`target`]: refuse a device that is mounted, used as swap, held by another device (LVM,
//!    dm, md) or smaller than the image; then open it exclusively (`O_EXCL`).
//! 2. [`write`]: wipe the old partition table (first and last MiB), write everything but the
//!    first MiB (all-zero blocks as zero-outs, so holes of a sparse image read back as zeros),
//!    check the image's sha256 when one is expected, read the device back and compare, and only
//!    then write the first MiB (protective MBR + primary GPT) and sync. Any failure wipes the
//!    table again. Finally the kernel re-reads the partition table (with retries).
//!
//! Images come from [`source`]: a raw file, a zstd-compressed one, or an http(s) URL streamed
//! without being stored.

pub mod blkdev;
pub mod http1;
pub mod progress;
pub mod source;
pub mod sysblock;
pub mod target;
pub mod write;

use std::path::PathBuf;

/// Why a flash was refused or failed. Every variant names the device or image concerned.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("{0}: not a block device (give a disk such as /dev/sdX, /dev/nvme0n1 or /dev/loopN)")]
    NotBlockDevice(PathBuf),
    #[error("{device}: {part} is mounted at {mountpoint}; unmount it first")]
    Mounted {
        device: PathBuf,
        part: String,
        mountpoint: String,
    },
    #[error("{device}: {part} is in use as swap; swapoff it first")]
    Swap { device: PathBuf, part: String },
    #[error("{device}: {part} is held by {holder} (device-mapper, LVM or RAID); release it first")]
    Held {
        device: PathBuf,
        part: String,
        holder: String,
    },
    #[error("{device}: the device holds {device_size} bytes, smaller than the image ({image_size} bytes)")]
    TooSmall {
        device: PathBuf,
        device_size: u64,
        image_size: u64,
    },
    #[error(
        "{device}: busy (opened exclusively by someone else: mounted, or in use by the kernel)"
    )]
    Busy { device: PathBuf },
    #[error(
        "{image}: {len} bytes is not a disk image (shorter than the 1 MiB partition table area)"
    )]
    ImageTooShort { image: String, len: u64 },
    #[error("{image}: sha256 {actual} does not match the expected {expected} (from {from}); the device was wiped")]
    Checksum {
        image: String,
        expected: String,
        actual: String,
        from: String,
    },
    #[error("{device}: the bytes read back differ from the image (sha256 {actual}, wrote {expected}); the device was wiped")]
    Readback {
        device: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{0}: expected a sha256 of 64 hex digits")]
    BadChecksum(String),
}

impl FlashError {
    pub(crate) fn io(
        what: &'static str,
        path: impl ToString,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_string();
        move |source| FlashError::Io { what, path, source }
    }
}

/// Parses a sha256 given as 64 hex digits, optionally followed by a file name as `sha256sum`
/// prints it.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], FlashError> {
    let word = text.split_whitespace().next().unwrap_or("");
    let mut out = [0u8; 32];
    hex::decode_to_slice(word, &mut out)
        .map_err(|_| FlashError::BadChecksum(text.trim().chars().take(80).collect()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256sum_lines() {
        let h = "ab".repeat(32);
        assert_eq!(parse_sha256(&h).unwrap(), [0xab; 32]);
        assert_eq!(
            parse_sha256(&format!("{h}  disk.raw\n")).unwrap(),
            [0xab; 32]
        );
        assert!(matches!(
            parse_sha256("abc"),
            Err(FlashError::BadChecksum(_))
        ));
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
        assert!(parse_sha256("").is_err());
    }
}
