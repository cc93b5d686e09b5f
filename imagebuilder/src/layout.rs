//! Where everything goes on the disk, and the identifiers derived from the spec. Pure.

use crate::spec::Partitions;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const MIB: u64 = 1 << 20;
pub const SECTOR: u64 = 512;

/// GPT type GUIDs, defined with the GPT reader that finds them on a device.
pub use kiln_boot::gpt::{
    ESP_TYPE as TYPE_ESP, ROOT_X86_64_TYPE as TYPE_ROOT_X86_64, VAR_TYPE as TYPE_VAR,
};

/// One partition of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub label: &'static str,
    pub type_guid: &'static str,
    pub guid: Uuid,
    /// Byte offset and size (1 MiB aligned).
    pub offset: u64,
    pub size: u64,
}

impl Part {
    pub fn first_lba(&self) -> u64 {
        self.offset / SECTOR
    }
    pub fn last_lba(&self) -> u64 {
        (self.offset + self.size) / SECTOR - 1
    }
}

/// The whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    pub size: u64,
    pub disk_guid: Uuid,
    pub esp: Part,
    pub root_a: Part,
    pub root_b: Part,
    pub persist: Part,
}

/// Stable identifiers of one image (name + version), for reproducible builds.
#[derive(Debug, Clone)]
pub struct Ids {
    seed: String,
}

impl Ids {
    pub fn new(name: &str, version: &str) -> Ids {
        Ids {
            seed: format!("kiln\0{name}\0{version}"),
        }
    }

    /// 32 bytes derived from the image and `role` (a salt).
    pub fn digest(&self, role: &str) -> [u8; 32] {
        Sha256::digest(format!("{}\0{role}", self.seed).as_bytes()).into()
    }

    /// A version-4-shaped UUID derived from the image and `role`.
    pub fn uuid(&self, role: &str) -> Uuid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.digest(role)[..16]);
        uuid::Builder::from_random_bytes(b).into_uuid()
    }

    /// A 32-bit id (FAT volume id).
    pub fn u32(&self, role: &str) -> u32 {
        let d = self.digest(role);
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }
}

impl DiskLayout {
    /// Bytes needed for the partitions plus the GPT at both ends (1 MiB each, for alignment).
    pub fn required_size(p: &Partitions) -> u64 {
        MIB + p.esp + 2 * p.root + p.persist + MIB
    }

    /// Lays out ESP, root-a, root-b, persist in that order. With `p.disk` set, the disk has that
    /// size (the rest stays unpartitioned until first boot grows persist).
    pub fn new(p: &Partitions, ids: &Ids) -> DiskLayout {
        let mut offset = MIB;
        let mut next = |number, label, type_guid, size| {
            let part = Part {
                number,
                label,
                type_guid,
                guid: ids.uuid(&format!("part:{label}")),
                offset,
                size,
            };
            offset += size;
            part
        };
        let esp = next(1, "esp", TYPE_ESP, p.esp);
        let root_a = next(2, "root-a", TYPE_ROOT_X86_64, p.root);
        let root_b = next(3, "root-b", TYPE_ROOT_X86_64, p.root);
        let persist = next(4, "persist", TYPE_VAR, p.persist);
        DiskLayout {
            size: p.disk.unwrap_or_else(|| Self::required_size(p)),
            disk_guid: ids.uuid("disk"),
            esp,
            root_a,
            root_b,
            persist,
        }
    }

    pub fn parts(&self) -> [&Part; 4] {
        [&self.esp, &self.root_a, &self.root_b, &self.persist]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_ordered_and_stable() {
        let p = Partitions::default();
        let a = DiskLayout::new(&p, &Ids::new("n", "1"));
        let b = DiskLayout::new(&p, &Ids::new("n", "1"));
        let c = DiskLayout::new(&p, &Ids::new("n", "2"));
        assert_eq!(a, b);
        assert_ne!(a.root_a.guid, c.root_a.guid);
        assert_eq!(a.size, DiskLayout::required_size(&p));
        let parts = a.parts();
        for w in parts.windows(2) {
            assert_eq!(w[0].offset + w[0].size, w[1].offset);
        }
        for part in parts {
            assert_eq!(part.offset % MIB, 0);
        }
        assert_eq!(a.esp.first_lba(), 2048);
        assert!(a.persist.offset + a.persist.size + 33 * SECTOR <= a.size);
        let guids: std::collections::BTreeSet<_> = parts.iter().map(|p| p.guid).collect();
        assert_eq!(guids.len(), 4);
        assert_eq!(a.root_a.guid.get_version_num(), 4);
    }
}
