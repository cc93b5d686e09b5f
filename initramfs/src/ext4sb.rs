//! The two fields of an ext4 superblock kiln-init needs to grow persist: block count and size.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuperblockError {
    #[error("not an ext4 superblock (magic {0:#06x})")]
    Magic(u16),
    #[error("superblock truncated")]
    Short,
}

/// Block count and block size of the superblock (the 1024 bytes at offset 1024).
pub fn parse(sb: &[u8]) -> Result<(u64, u64), SuperblockError> {
    if sb.len() < 0x158 {
        return Err(SuperblockError::Short);
    }
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes"));
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    if magic != 0xef53 {
        return Err(SuperblockError::Magic(magic));
    }
    let block_size = 1024u64 << u32_at(24).min(6);
    let mut blocks = u64::from(u32_at(4));
    const INCOMPAT_64BIT: u32 = 0x80;
    if u32_at(0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(0x150)) << 32;
    }
    Ok((blocks, block_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_superblock() {
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
        assert_eq!(parse(&bytes[1024..2048]), Ok((16384, 4096)));
        assert_eq!(parse(&[0u8; 1024]), Err(SuperblockError::Magic(0)));
        assert_eq!(parse(&bytes[1024..1100]), Err(SuperblockError::Short));
    }
}
