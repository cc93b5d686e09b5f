//! The length of a filesystem image from its superblock, so that the running slot (a partition
//! larger than the image in it) can be indexed over exactly the bytes its image had.

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
        let log = u32_at(sb, 0x18);
        if log > 6 {
            return None;
        }
        let mut blocks = u64::from(u32_at(sb, 0x04));
        if u32_at(sb, 0x60) & EXT4_64BIT != 0 {
            blocks |= u64::from(u32_at(sb, 0x150)) << 32;
        }
        return Some(blocks << (10 + log));
    }
    None
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
    fn anything_else_is_unknown() {
        assert_eq!(image_len(&head()), None);
        assert_eq!(image_len(&[0u8; 100]), None);
    }
}
