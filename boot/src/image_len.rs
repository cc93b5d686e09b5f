//! Filesystem superblocks, read in one place: the length of an erofs or ext4 image (so that the
//! running slot, a partition larger than the image in it, is indexed and verified over exactly
//! the bytes its image had) and the ext4 geometry kiln-init needs to grow persist.

/// Bytes the superblocks need: both erofs and ext4 keep theirs at 1024.
pub const HEAD: usize = 2048;

const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_64BIT: u32 = 0x80;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// The image length that the erofs or ext4 superblock in `head` (the first [`HEAD`] bytes of a
/// volume) declares; `None` for anything else or an implausible geometry.
pub fn image_len(head: &[u8]) -> Option<u64> {
    if head.len() < HEAD {
        return None;
    }
    let sb = &head[1024..];
    if u32_at(sb, 0) == EROFS_MAGIC {
        let bits = u32::from(sb[12]);
        if !(9..=16).contains(&bits) {
            return None;
        }
        return Some(u64::from(u32_at(sb, 36)) << bits);
    }
    if u16_at(sb, 0x38) == EXT4_MAGIC {
        return ext4_geometry(sb).ok().map(|(blocks, size)| blocks * size);
    }
    None
}

/// An ext4 superblock that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuperblockError {
    #[error("not an ext4 superblock (magic {0:#06x})")]
    Magic(u16),
    #[error("superblock truncated")]
    Short,
    #[error("ext4 block size 1024 << {0} is out of range")]
    BlockSize(u32),
}

/// Block count and block size of an ext4 superblock (`sb`: the bytes at offset 1024).
pub fn ext4_geometry(sb: &[u8]) -> Result<(u64, u64), SuperblockError> {
    if sb.len() < 0x158 {
        return Err(SuperblockError::Short);
    }
    let magic = u16_at(sb, 0x38);
    if magic != EXT4_MAGIC {
        return Err(SuperblockError::Magic(magic));
    }
    let log = u32_at(sb, 0x18);
    if log > 6 {
        return Err(SuperblockError::BlockSize(log));
    }
    let mut blocks = u64::from(u32_at(sb, 0x04));
    if u32_at(sb, 0x60) & EXT4_64BIT != 0 {
        blocks |= u64::from(u32_at(sb, 0x150)) << 32;
    }
    Ok((blocks, 1024 << log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Vec<u8> {
        vec![0u8; HEAD]
    }

    #[test]
    fn erofs_blocks_times_block_size() {
        let mut h = head();
        h[1024..1028].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        h[1024 + 12] = 12;
        h[1024 + 36..1024 + 40].copy_from_slice(&6811u32.to_le_bytes());
        assert_eq!(image_len(&h), Some(6811 * 4096));
        h[1024 + 12] = 40;
        assert_eq!(image_len(&h), None);
    }

    #[test]
    fn ext4_with_and_without_64bit() {
        let mut h = head();
        h[1024 + 0x38..1024 + 0x3a].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        h[1024 + 0x18..1024 + 0x1c].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB
        h[1024 + 4..1024 + 8].copy_from_slice(&131072u32.to_le_bytes());
        h[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(image_len(&h), Some(512 << 20)); // hi word ignored without 64bit
        h[1024 + 0x60..1024 + 0x64].copy_from_slice(&EXT4_64BIT.to_le_bytes());
        assert_eq!(image_len(&h), Some((131072 + (1 << 32)) * 4096));
    }

    #[test]
    fn ext4_geometry_of_a_real_superblock() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let ok = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
            .arg(&img)
            .status()
            .expect("mke2fs (e2fsprogs)");
        assert!(ok.success());
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(ext4_geometry(&bytes[1024..2048]), Ok((16384, 4096)));
        assert_eq!(image_len(&bytes[..HEAD]), Some(64 << 20));
        assert_eq!(ext4_geometry(&[0u8; 1024]), Err(SuperblockError::Magic(0)));
        assert_eq!(
            ext4_geometry(&bytes[1024..1100]),
            Err(SuperblockError::Short)
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        assert_eq!(image_len(&head()), None);
        assert_eq!(image_len(&[0u8; 100]), None);
    }
}
