//! A small GPT reader for kiln-init: find partitions by unique GUID or by label.
//! Parsing only; the caller reads the bytes.

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
}

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

/// Parses the 512-byte sector at LBA 1.
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
        entries_lba: u64_at(lba1, 72),
        num_entries: u32_at(lba1, 80),
        entry_size: u32_at(lba1, 84),
        entries_crc: u32_at(lba1, 88),
    };
    if hdr.entry_size < 128 || hdr.num_entries > 1024 {
        return Err(GptError::Unsupported("entry size or count"));
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

/// Parses the entry array; unused entries (zero type GUID) are skipped.
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
    Ok(out)
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
}
