//! The GPT reader kiln-init and the updater share (`kiln_boot::gpt`), fed any header sector and
//! entry array, with their checksums made right so the checks behind them are reached: no
//! panic, a parsed table keeps every partition inside the usable range and apart from the
//! others, and a planned grow (kiln-init's first boot) or a primary rebuilt from the backup
//! parses again.
//!
//! Input: one flag byte (bit 0: leave the checksums as given), the disk's size in sectors (u64,
//! little endian), the 512-byte header sector, then the entry array.
#![no_main]

use kiln_boot::gpt::{parse_entries, parse_header, plan_grow, primary_from_backup};
use libfuzzer_sys::fuzz_target;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Writes the entry array's and the header's CRC32 where the header says they go, as far as
/// the input holds the bytes they cover.
fn seal(header: &mut [u8], entries: &[u8]) {
    let len = u64::from(u32_at(header, 80)) * u64::from(u32_at(header, 84));
    if let Some(array) = usize::try_from(len).ok().and_then(|l| entries.get(..l)) {
        header[88..92].copy_from_slice(&crc32fast::hash(array).to_le_bytes());
    }
    let size = u32_at(header, 12) as usize;
    if (92..=header.len()).contains(&size) {
        header[16..20].fill(0);
        let crc = crc32fast::hash(&header[..size]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
    }
}

fn check_table(lba1: &[u8], entries: &[u8]) {
    let Ok(hdr) = parse_header(lba1) else {
        return;
    };
    assert!(
        hdr.entries_len() <= 4 << 20,
        "entry array of {} bytes",
        hdr.entries_len()
    );
    let Ok(parts) = parse_entries(&hdr, entries) else {
        return;
    };
    for p in &parts {
        assert!(hdr.first_usable <= p.first_lba && p.first_lba <= p.last_lba);
        assert!(p.last_lba <= hdr.last_usable);
    }
    let mut spans: Vec<(u64, u64)> = parts.iter().map(|p| (p.first_lba, p.last_lba)).collect();
    spans.sort();
    assert!(
        spans.windows(2).all(|w| w[0].1 < w[1].0),
        "overlap in {spans:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 + 512 {
        return;
    }
    let keep_crcs = data[0] & 1 == 1;
    let sectors = u64::from_le_bytes(data[1..9].try_into().unwrap());
    let mut lba1 = data[9..9 + 512].to_vec();
    let entries = &data[9 + 512..];
    if !keep_crcs {
        seal(&mut lba1, entries);
    }
    check_table(&lba1, entries);
    if let Ok(primary) = primary_from_backup(&lba1) {
        let hdr = parse_header(&primary).expect("a rebuilt primary parses");
        assert_eq!((hdr.my_lba, hdr.entries_lba), (1, 2));
    }
    for name in ["persist", "root-a"] {
        let Ok(Some(g)) = plan_grow(sectors, &lba1, entries, name) else {
            continue;
        };
        assert!(g.new_last_lba > g.old_last_lba);
        assert!(g.backup_header_lba < sectors && g.backup_entries_lba < g.backup_header_lba);
        for header in [&g.primary_header, &g.backup_header] {
            let hdr = parse_header(header).expect("a grown header parses");
            let parts = parse_entries(&hdr, &g.entries).expect("grown entries parse");
            assert!(parts.iter().any(|p| p.last_lba == g.new_last_lba));
            check_table(header, &g.entries);
        }
    }
});
