//! dm-verity's on-disk format for a root slot, as `veritysetup format` writes it with the hash
//! tree in the data device: the filesystem image (`N` blocks of 4 KiB), then cryptsetup's
//! superblock in a block of its own, then the hash tree (sha256, format version 1: each digest
//! is `sha256(salt ‖ block)`), its top level first. The kernel's
//! `Documentation/admin-guide/device-mapper/verity.rst` and cryptsetup's `lib/verity/` define it.
//!
//! Pure: the tree's geometry, the superblock's bytes and the kernel table's parameters. The
//! tree itself is hashed by `kiln_rootfs::verity` at build time and checked by the kernel on
//! every read. The superblock makes a slot self-describing (block count, salt), so a boot entry
//! carries only the root hash; nothing read from it is trusted, because the root hash covers
//! the salt and every block of the tree.

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
/// sha256.
pub const DIGEST: u64 = 32;
/// Digests per hash block.
const FANOUT: u64 = BLOCK / DIGEST;
/// The superblock's length (it takes a whole block on disk).
pub const SUPERBLOCK_LEN: usize = 512;
const MAGIC: &[u8; 8] = b"verity\0\0";
/// The longest salt the superblock holds.
pub const MAX_SALT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerityError {
    #[error("a verity device needs at least one data block")]
    Empty,
    #[error("{0} data blocks are more than a verity tree of 4 KiB blocks can cover")]
    TooManyBlocks(u64),
    #[error("the salt is {0} bytes; at most {MAX_SALT}")]
    Salt(usize),
    #[error("not a verity superblock: {0}")]
    Superblock(&'static str),
}

/// Where a tree's levels lie for `data_blocks` data blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub data_blocks: u64,
    /// Blocks of each level, level 0 (the digests of the data blocks) first. Empty for a single
    /// data block, whose own digest is the root hash.
    pub levels: Vec<u64>,
}

impl Geometry {
    pub fn new(data_blocks: u64) -> Result<Geometry, VerityError> {
        if data_blocks == 0 {
            return Err(VerityError::Empty);
        }
        // cryptsetup's hash_levels: the fewest levels L with (N - 1) >> (7 L) == 0.
        let mut levels = Vec::new();
        let mut covered = 1u64; // data blocks one digest at the current level covers
        while (data_blocks - 1) / covered > 0 {
            covered = covered
                .checked_mul(FANOUT)
                .ok_or(VerityError::TooManyBlocks(data_blocks))?;
            levels.push(data_blocks.div_ceil(covered));
        }
        Ok(Geometry {
            data_blocks,
            levels,
        })
    }

    /// Blocks of the tree (not counting the superblock).
    pub fn tree_blocks(&self) -> u64 {
        self.levels.iter().sum()
    }

    /// Where level `i` starts, in blocks from the start of the tree: the top level comes first.
    pub fn level_start(&self, i: usize) -> u64 {
        self.levels[i + 1..].iter().sum()
    }

    /// Bytes from the end of the data to the end of the tree: the superblock's block and the
    /// tree.
    pub fn area_len(&self) -> u64 {
        BLOCK * (1 + self.tree_blocks())
    }

    /// The whole slot content: data, superblock, tree.
    pub fn total_len(&self) -> u64 {
        self.data_blocks * BLOCK + self.area_len()
    }

    /// The kernel table's hash start block: the first tree block, counted on the hash device
    /// (the same partition as the data).
    pub fn hash_start_block(&self) -> u64 {
        self.data_blocks + 1
    }

    /// The most data blocks whose data and tree fit in `slot_bytes`.
    pub fn max_data_blocks(slot_bytes: u64) -> u64 {
        let (mut lo, mut hi) = (0u64, slot_bytes / BLOCK);
        // total_len grows with the block count: the largest that fits, by bisection.
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            let fits = Geometry::new(mid).is_ok_and(|g| g.total_len() <= slot_bytes);
            if fits {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

/// What cryptsetup's superblock holds that Kiln uses (the rest is fixed: version 1, hash
/// type 1, sha256, 4 KiB blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl Superblock {
    /// The 512 bytes (little-endian, `struct verity_sb`).
    pub fn encode(&self) -> Result<[u8; SUPERBLOCK_LEN], VerityError> {
        if self.salt.len() > MAX_SALT {
            return Err(VerityError::Salt(self.salt.len()));
        }
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
        b[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal
        b[16..32].copy_from_slice(&self.uuid);
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        b[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        Ok(b)
    }

    /// Parses a superblock Kiln could have written: anything else is refused.
    pub fn parse(b: &[u8]) -> Result<Superblock, VerityError> {
        let bad = VerityError::Superblock;
        if b.len() < SUPERBLOCK_LEN {
            return Err(bad("shorter than 512 bytes"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        if &b[0..8] != MAGIC {
            return Err(bad("no \"verity\" signature"));
        }
        if u32_at(8) != 1 || u32_at(12) != 1 {
            return Err(bad("not version 1 with hash type 1"));
        }
        let alg = &b[32..64];
        if &alg[..6] != b"sha256" || alg[6..].iter().any(|&c| c != 0) {
            return Err(bad("not sha256"));
        }
        if u64::from(u32_at(64)) != BLOCK || u64::from(u32_at(68)) != BLOCK {
            return Err(bad("blocks are not 4 KiB"));
        }
        let data_blocks = u64::from_le_bytes(b[72..80].try_into().expect("8 bytes"));
        let salt_len = usize::from(u16::from_le_bytes([b[80], b[81]]));
        if salt_len > MAX_SALT {
            return Err(bad("salt longer than 256 bytes"));
        }
        if data_blocks == 0 {
            return Err(bad("no data blocks"));
        }
        Ok(Superblock {
            uuid: b[16..32].try_into().expect("16 bytes"),
            data_blocks,
            salt: b[88..88 + salt_len].to_vec(),
        })
    }
}

/// Lower-case hex.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why no verity tree follows a filesystem.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("reading the verity superblock at {at}: {source}")]
    Read {
        at: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("at {at}: {source}")]
    Superblock {
        at: u64,
        #[source]
        source: VerityError,
    },
    #[error("the verity superblock covers {blocks} blocks, the filesystem is {len} bytes")]
    Covers { blocks: u64, len: u64 },
}

/// The verity superblock right after a filesystem of `data_len` bytes at `base` of `dev`, and
/// the tree geometry it declares — found the one way the builder's check, kiln-init, the
/// updater's slot indexing and `kiln inspect` all look for it. The superblock must cover
/// exactly the filesystem's whole 4 KiB blocks. Read-only; nothing in it is trusted beyond
/// that (the root hash binds the salt and every tree block).
pub fn read_tree(
    dev: &std::fs::File,
    base: u64,
    data_len: u64,
) -> Result<(Superblock, Geometry), TreeError> {
    use std::os::unix::fs::FileExt;
    let at = base + data_len;
    let mut sb = [0u8; SUPERBLOCK_LEN];
    dev.read_exact_at(&mut sb, at)
        .map_err(|source| TreeError::Read { at, source })?;
    let sb = Superblock::parse(&sb).map_err(|source| TreeError::Superblock { at, source })?;
    if sb.data_blocks.checked_mul(BLOCK) != Some(data_len) {
        return Err(TreeError::Covers {
            blocks: sb.data_blocks,
            len: data_len,
        });
    }
    let g = Geometry::new(sb.data_blocks).map_err(|source| TreeError::Superblock { at, source })?;
    Ok((sb, g))
}

/// The `verity` target's parameters for a slot holding data and tree (`dev` as `MAJOR:MINOR`
/// for both), with `restart_on_corruption`: a corrupted block restarts the machine, so a
/// pending slot falls back by boot counting and a damaged one never runs on.
pub fn table_params(dev: &str, g: &Geometry, root_hash: &[u8; 32], salt: &[u8]) -> String {
    format!(
        "1 {dev} {dev} {BLOCK} {BLOCK} {} {} sha256 {} {} 1 restart_on_corruption",
        g.data_blocks,
        g.hash_start_block(),
        hex(root_hash),
        if salt.is_empty() {
            "-".to_string()
        } else {
            hex(salt)
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_cryptsetups_geometry() {
        let levels = |n| Geometry::new(n).unwrap().levels;
        assert_eq!(levels(1), Vec::<u64>::new());
        assert_eq!(levels(2), [1]);
        assert_eq!(levels(128), [1]);
        assert_eq!(levels(129), [2, 1]);
        assert_eq!(levels(16384), [128, 1]);
        assert_eq!(levels(16385), [129, 2, 1]);
        assert_eq!(Geometry::new(0), Err(VerityError::Empty));
        let g = Geometry::new(16385).unwrap();
        // Top level first: level 2 at 0, level 1 after it, level 0 after both.
        assert_eq!(
            (g.level_start(2), g.level_start(1), g.level_start(0)),
            (0, 1, 3)
        );
        assert_eq!(g.tree_blocks(), 132);
        assert_eq!(g.hash_start_block(), 16386);
        assert_eq!(g.total_len(), (16385 + 1 + 132) * BLOCK);
    }

    #[test]
    fn the_largest_image_whose_tree_fits_the_slot() {
        let slot = 512 << 20;
        let n = Geometry::max_data_blocks(slot);
        assert!(Geometry::new(n).unwrap().total_len() <= slot);
        assert!(Geometry::new(n + 1).unwrap().total_len() > slot);
        // 512 MiB: about 0.8 % goes to the superblock and the tree.
        assert_eq!(n, 130_046);
        assert_eq!(Geometry::max_data_blocks(8192), 1);
        assert_eq!(Geometry::max_data_blocks(4096), 0);
    }

    #[test]
    fn superblocks_round_trip_and_foreign_ones_are_refused() {
        let sb = Superblock {
            uuid: [7; 16],
            data_blocks: 130_015,
            salt: vec![0xab; 32],
        };
        let b = sb.encode().unwrap();
        assert_eq!(Superblock::parse(&b).unwrap(), sb);
        let mut bad = b;
        bad[32..38].copy_from_slice(b"sha512");
        assert!(Superblock::parse(&bad).is_err());
        let mut bad = b;
        bad[0] = b'V';
        assert!(Superblock::parse(&bad).is_err());
        let mut bad = b;
        bad[80..82].copy_from_slice(&300u16.to_le_bytes());
        assert!(Superblock::parse(&bad).is_err());
        assert_eq!(
            Superblock {
                salt: vec![0; 257],
                ..sb
            }
            .encode(),
            Err(VerityError::Salt(257))
        );
    }

    #[test]
    fn the_table_names_the_tree_after_the_superblock() {
        let g = Geometry::new(129).unwrap();
        let t = table_params("254:2", &g, &[0x11; 32], &[0xab, 0xcd]);
        assert_eq!(
            t,
            format!(
                "1 254:2 254:2 4096 4096 129 130 sha256 {} abcd 1 restart_on_corruption",
                "11".repeat(32)
            )
        );
    }
}
