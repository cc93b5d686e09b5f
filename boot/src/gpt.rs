//! A small GPT reader for kiln-init, kiln-updater and `kiln inspect`: find partitions by unique
//! GUID or by label. Parsing only; [`crate::disk`] reads the bytes from a device.
//!
//! Nothing in a header is trusted before it is checked: the entry size (128–4096, a power of
//! two) and count (1–1024) bound what a caller allocates for the entry array (at most 4 MiB),
//! the array's LBA range cannot overflow, and every used entry lies inside the usable range,
//! ends after it starts and overlaps no other.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    #[error("no GPT header (signature missing at LBA 1)")]
    NoHeader,
    #[error("GPT header checksum mismatch")]
    HeaderCrc,
    #[error("GPT partition entries checksum mismatch")]
    EntriesCrc,
    #[error("GPT header describes an unsupported entry array ({0})")]
    Unsupported(&'static str),
    #[error("GPT partition {number}: {why}")]
    BadEntry { number: u32, why: &'static str },
}

/// GPT type GUIDs of a Kiln disk's partitions (Discoverable Partitions Specification), in the
/// lower-case canonical form [`PartEntry::type_guid`] has.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// An x86-64 root partition (both root slots).
pub const ROOT_X86_64_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// `/var` (persist).
pub const VAR_TYPE: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";

/// The entry sizes a header may declare (UEFI: 128 × 2^n).
pub const ENTRY_SIZES: std::ops::RangeInclusive<u32> = 128..=4096;
/// The most entries a header may declare (UEFI asks for room for at least 128).
pub const MAX_ENTRIES: u32 = 1024;

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    /// 1-based partition number.
    pub number: u32,
    /// Type GUID, lower-case canonical form.
    pub type_guid: String,
    /// Unique partition GUID, lower-case canonical form.
    pub part_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// Where the entry array lives, from the header at LBA 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// LBA of this header, of the other copy, and the usable range for partitions.
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    entries_crc: u32,
}

impl Header {
    /// Byte length of the entry array.
    pub fn entries_len(&self) -> usize {
        self.num_entries as usize * self.entry_size as usize
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Parses a GPT header sector (the primary at LBA 1, or the backup at the disk's last LBA).
pub fn parse_header(lba1: &[u8]) -> Result<Header, GptError> {
    if lba1.len() < 92 || &lba1[0..8] != b"EFI PART" {
        return Err(GptError::NoHeader);
    }
    let size = u32_at(lba1, 12) as usize;
    if !(92..=lba1.len()).contains(&size) {
        return Err(GptError::Unsupported("header size"));
    }
    let mut h = lba1[..size].to_vec();
    h[16..20].fill(0);
    if crc32fast::hash(&h) != u32_at(lba1, 16) {
        return Err(GptError::HeaderCrc);
    }
    let hdr = Header {
        my_lba: u64_at(lba1, 24),
        alternate_lba: u64_at(lba1, 32),
        first_usable: u64_at(lba1, 40),
        last_usable: u64_at(lba1, 48),
        entries_lba: u64_at(lba1, 72),
        num_entries: u32_at(lba1, 80),
        entry_size: u32_at(lba1, 84),
        entries_crc: u32_at(lba1, 88),
    };
    if !ENTRY_SIZES.contains(&hdr.entry_size) || !hdr.entry_size.is_power_of_two() {
        return Err(GptError::Unsupported(
            "entry size: not a power of two from 128 to 4096",
        ));
    }
    if !(1..=MAX_ENTRIES).contains(&hdr.num_entries) {
        return Err(GptError::Unsupported("entry count: not from 1 to 1024"));
    }
    if hdr.first_usable > hdr.last_usable {
        return Err(GptError::Unsupported("first usable LBA after the last"));
    }
    let sectors = (hdr.entries_len() as u64).div_ceil(512);
    if hdr.entries_lba < 2
        || hdr
            .entries_lba
            .checked_add(sectors)
            .and_then(|end| end.checked_mul(512))
            .is_none()
    {
        return Err(GptError::Unsupported("entry array LBA out of range"));
    }
    Ok(hdr)
}

/// Formats a mixed-endian on-disk GUID in canonical text form.
pub fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// Parses the entry array; unused entries (zero type GUID) are skipped. Every used entry must
/// end after it starts, lie within the header's usable LBAs and overlap no other.
pub fn parse_entries(hdr: &Header, bytes: &[u8]) -> Result<Vec<PartEntry>, GptError> {
    let bytes = bytes
        .get(..hdr.entries_len())
        .ok_or(GptError::Unsupported("entry array truncated"))?;
    if crc32fast::hash(bytes) != hdr.entries_crc {
        return Err(GptError::EntriesCrc);
    }
    let mut out = Vec::new();
    for (i, e) in bytes.chunks_exact(hdr.entry_size as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(PartEntry {
            number: i as u32 + 1,
            type_guid: guid_string(&e[0..16]),
            part_guid: guid_string(&e[16..32]),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
            name: String::from_utf16_lossy(&units),
        });
    }
    check_ranges(hdr, &out)?;
    Ok(out)
}

fn check_ranges(hdr: &Header, parts: &[PartEntry]) -> Result<(), GptError> {
    let bad = |p: &PartEntry, why| GptError::BadEntry {
        number: p.number,
        why,
    };
    for p in parts {
        if p.last_lba < p.first_lba {
            return Err(bad(p, "last LBA before the first"));
        }
        if p.first_lba < hdr.first_usable || p.last_lba > hdr.last_usable {
            return Err(bad(p, "outside the header's usable LBAs"));
        }
    }
    let mut by_start: Vec<&PartEntry> = parts.iter().collect();
    by_start.sort_by_key(|p| p.first_lba);
    for w in by_start.windows(2) {
        if w[1].first_lba <= w[0].last_lba {
            return Err(bad(w[1], "overlaps another partition"));
        }
    }
    Ok(())
}

/// The primary header rebuilt from a valid backup header (its entry array goes to LBA 2).
pub fn primary_from_backup(backup: &[u8]) -> Result<Vec<u8>, GptError> {
    let b = parse_header(backup)?;
    let size = u32_at(backup, 12) as usize;
    let mut h = backup.to_vec();
    set_u64(&mut h, 24, 1);
    set_u64(&mut h, 32, b.my_lba);
    set_u64(&mut h, 72, 2);
    h[size..].fill(0);
    seal(&mut h);
    Ok(h)
}

/// A partition table rewritten so that the last partition reaches the end of a larger disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    /// New primary header sector (LBA 1) and entry array (at the primary's entries LBA).
    pub primary_header: Vec<u8>,
    pub entries: Vec<u8>,
    pub entries_lba: u64,
    /// New backup: its entry array at `backup_entries_lba`, its header at the disk's last LBA.
    pub backup_header: Vec<u8>,
    pub backup_header_lba: u64,
    pub backup_entries_lba: u64,
    /// The grown partition: number, first LBA, old and new last LBA.
    pub number: u32,
    pub first_lba: u64,
    pub old_last_lba: u64,
    pub new_last_lba: u64,
}

fn set_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn seal(header: &mut [u8]) {
    let size = u32_at(header, 12) as usize;
    header[16..20].fill(0);
    let crc = crc32fast::hash(&header[..size]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// Plans growing partition `name` to the end of a disk of `disk_sectors` 512-byte sectors,
/// from the primary header sector and entry array. `None` when there is nothing to do: the
/// table already ends at the disk's end and the partition reaches it (to a 1 MiB boundary), or
/// the partition is not the last one. The backup GPT moves to the disk's end.
pub fn plan_grow(
    disk_sectors: u64,
    lba1: &[u8],
    entries: &[u8],
    name: &str,
) -> Result<Option<Grown>, GptError> {
    // Every LBA of the new table is a byte offset the reader checks too (found by the `gpt`
    // fuzz target: a backup placed past 2^64 bytes made a table its own reader refused).
    if disk_sectors.checked_mul(512).is_none() {
        return Err(GptError::Unsupported("disk of 2^64 bytes or more"));
    }
    let hdr = parse_header(lba1)?;
    let parts = parse_entries(&hdr, entries)?;
    let entry_sectors = (hdr.entries_len() as u64).div_ceil(512);
    let last = disk_sectors.saturating_sub(1);
    let last_usable = last.saturating_sub(entry_sectors + 1);
    if hdr.alternate_lba > last || hdr.last_usable > last_usable {
        return Err(GptError::Unsupported(
            "disk smaller than its partition table",
        ));
    }
    let Some(p) = parts.iter().find(|p| p.name == name) else {
        return Ok(None);
    };
    if parts.iter().any(|o| o.last_lba > p.last_lba) {
        return Ok(None);
    }
    // End on a 1 MiB boundary (2048 sectors), like the partitions' starts.
    let new_last = ((last_usable + 1) / 2048 * 2048).saturating_sub(1);
    if new_last <= p.last_lba {
        return Ok(None);
    }
    let mut table = entries[..hdr.entries_len()].to_vec();
    let at = (p.number as usize - 1) * hdr.entry_size as usize;
    set_u64(&mut table, at + 40, new_last);
    let crc = crc32fast::hash(&table);

    let size = u32_at(lba1, 12) as usize;
    let mut primary = lba1.to_vec();
    set_u64(&mut primary, 32, last);
    set_u64(&mut primary, 48, last_usable);
    primary[88..92].copy_from_slice(&crc.to_le_bytes());
    primary[size..].fill(0);
    seal(&mut primary);
    let backup_entries_lba = last - entry_sectors;
    let mut backup = primary.clone();
    set_u64(&mut backup, 24, last);
    set_u64(&mut backup, 32, hdr.my_lba);
    set_u64(&mut backup, 72, backup_entries_lba);
    seal(&mut backup);
    Ok(Some(Grown {
        primary_header: primary,
        entries: table,
        entries_lba: hdr.entries_lba,
        backup_header: backup,
        backup_header_lba: last,
        backup_entries_lba,
        number: p.number,
        first_lba: p.first_lba,
        old_last_lba: p.last_lba,
        new_last_lba: new_last,
    }))
}

#[cfg(test)]
mod tests;
