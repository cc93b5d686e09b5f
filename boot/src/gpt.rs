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
mod tests {
    use super::*;

    fn guid_bytes() -> [u8; 16] {
        // 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 as stored on disk
        [
            0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84,
            0xb7, 0x09,
        ]
    }

    fn table() -> (Vec<u8>, Vec<u8>) {
        let mut entries = vec![0u8; 128 * 4];
        let e = &mut entries[128..256];
        e[0..16].copy_from_slice(&guid_bytes());
        e[16..32].copy_from_slice(&[0x11; 16]);
        e[32..40].copy_from_slice(&2048u64.to_le_bytes());
        e[40..48].copy_from_slice(&4095u64.to_le_bytes());
        for (i, u) in "root-a".encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        let mut h = vec![0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&8158u64.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&4u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        (h, entries)
    }

    #[test]
    fn parses_a_table() {
        let (h, entries) = table();
        let hdr = parse_header(&h).unwrap();
        let parts = parse_entries(&hdr, &entries).unwrap();
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert_eq!(p.number, 2);
        assert_eq!(p.type_guid, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        assert_eq!(p.part_guid, "11111111-1111-1111-1111-111111111111");
        assert_eq!((p.first_lba, p.last_lba), (2048, 4095));
        assert_eq!(p.name, "root-a");
    }

    /// A 1-partition table for a disk of 8192 sectors: primary at 1/2, backup at 8191/8159,
    /// partition "persist" 2048..=6143, the last whole MiB (after a smaller one in entry 1).
    fn small_disk_table() -> (Vec<u8>, Vec<u8>) {
        let (mut h, mut entries) = table();
        let e = &mut entries[0..128];
        e[0..16].copy_from_slice(&guid_bytes());
        e[16..32].copy_from_slice(&[0x22; 16]);
        e[32..40].copy_from_slice(&34u64.to_le_bytes());
        e[40..48].copy_from_slice(&2047u64.to_le_bytes());
        let e = &mut entries[128..256];
        e[56..128].fill(0);
        e[40..48].copy_from_slice(&6143u64.to_le_bytes());
        for (i, u) in "persist".encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        set_u64(&mut h, 24, 1);
        set_u64(&mut h, 32, 8191);
        set_u64(&mut h, 40, 34);
        set_u64(&mut h, 48, 8191 - 2 - 1);
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        seal(&mut h);
        (h, entries)
    }

    #[test]
    fn grows_the_last_partition_and_moves_the_backup() {
        let (h, entries) = small_disk_table();
        assert_eq!(plan_grow(8192, &h, &entries, "persist").unwrap(), None);
        let g = plan_grow(100_000, &h, &entries, "persist")
            .unwrap()
            .unwrap();
        assert_eq!((g.number, g.first_lba, g.old_last_lba), (2, 2048, 6143));
        // 4 entries = 1 sector: backup entries at 99998, header at 99999, last usable 99997.
        assert_eq!(
            (g.backup_header_lba, g.backup_entries_lba),
            (99_999, 99_998)
        );
        assert_eq!(g.new_last_lba, 98_303); // 48 MiB boundary - 1
        let p = parse_header(&g.primary_header).unwrap();
        assert_eq!(
            (p.my_lba, p.alternate_lba, p.last_usable),
            (1, 99_999, 99_997)
        );
        let b = parse_header(&g.backup_header).unwrap();
        assert_eq!(
            (b.my_lba, b.alternate_lba, b.entries_lba),
            (99_999, 1, 99_998)
        );
        let parts = parse_entries(&b, &g.entries).unwrap();
        assert_eq!(parts[1].last_lba, 98_303);
        assert_eq!((parts[0].first_lba, parts[0].last_lba), (34, 2047));
        // Grown once: planning again on the new table has nothing to do.
        assert_eq!(
            plan_grow(100_000, &g.primary_header, &g.entries, "persist").unwrap(),
            None
        );
        // Not the last partition, or another label: nothing to do.
        assert_eq!(plan_grow(100_000, &h, &entries, "root-a").unwrap(), None);
        // A torn primary is rebuilt from the backup.
        let rebuilt = primary_from_backup(&g.backup_header).unwrap();
        assert_eq!(rebuilt, g.primary_header);
        // A disk smaller than the table is an error, not a shrink.
        assert!(plan_grow(4096, &h, &entries, "persist").is_err());
    }

    #[test]
    fn corrupt_tables_are_refused() {
        let (mut h, mut entries) = table();
        entries[200] ^= 1;
        let hdr = parse_header(&h).unwrap();
        assert_eq!(parse_entries(&hdr, &entries), Err(GptError::EntriesCrc));
        h[80] = 5;
        assert_eq!(parse_header(&h), Err(GptError::HeaderCrc));
        assert_eq!(parse_header(&[0u8; 512]), Err(GptError::NoHeader));
    }

    /// `table()` with `edit` applied to the header (then resealed).
    fn header_with(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let (mut h, _) = table();
        edit(&mut h);
        seal(&mut h);
        h
    }

    /// A change to a header sector.
    type Edit = fn(&mut Vec<u8>);

    #[test]
    fn hostile_headers_are_refused_before_anything_is_allocated() {
        let cases: [(&str, Edit); 6] = [
            (
                "entry size 0xFFFFFFFF",
                (|h| h[84..88].copy_from_slice(&u32::MAX.to_le_bytes())),
            ),
            (
                "entry size 8192",
                (|h| h[84..88].copy_from_slice(&8192u32.to_le_bytes())),
            ),
            (
                "entry size 129",
                (|h| h[84..88].copy_from_slice(&129u32.to_le_bytes())),
            ),
            (
                "no entries",
                (|h| h[80..84].copy_from_slice(&0u32.to_le_bytes())),
            ),
            ("first usable after last", (|h| set_u64(h, 40, 9000))),
            (
                "entry array at the end of u64",
                (|h| set_u64(h, 72, u64::MAX - 1)),
            ),
        ];
        for (what, edit) in cases {
            let h = header_with(edit);
            match parse_header(&h) {
                Err(GptError::Unsupported(why)) => assert!(!why.is_empty(), "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        let max = header_with(|h| {
            h[80..84].copy_from_slice(&MAX_ENTRIES.to_le_bytes());
            h[84..88].copy_from_slice(&4096u32.to_le_bytes());
        });
        assert_eq!(parse_header(&max).unwrap().entries_len(), 4 << 20);
    }

    #[test]
    fn entries_out_of_range_are_refused_with_their_number() {
        let check = |edit: &dyn Fn(&mut [u8]), why: &str| {
            let (mut h, mut entries) = table();
            edit(&mut entries);
            h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
            seal(&mut h);
            let hdr = parse_header(&h).unwrap();
            let e = parse_entries(&hdr, &entries).unwrap_err();
            assert!(
                matches!(e, GptError::BadEntry { number: 2, why: w } if w.contains(why)),
                "{e}"
            );
            assert!(e.to_string().starts_with("GPT partition 2: "), "{e}");
        };
        // last_lba < first_lba
        check(&|e| set_u64(e, 128 + 40, 2047), "before the first");
        // past the last usable LBA, and before the first
        check(&|e| set_u64(e, 128 + 40, 8159), "usable");
        check(&|e| set_u64(e, 128 + 32, 33), "usable");
        // overlapping the partition in entry 1
        check(
            &|e| {
                e[0..16].copy_from_slice(&guid_bytes());
                set_u64(e, 32, 34);
                set_u64(e, 40, 2048);
            },
            "overlaps",
        );
    }
}
