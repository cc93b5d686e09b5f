use super::*;

fn guid_bytes() -> [u8; 16] {
    // 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 as stored on disk
    [
        0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7,
        0x09,
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
fn a_disk_past_2_pow_64_bytes_is_refused_not_grown() {
    let (h, entries) = small_disk_table();
    let largest = u64::MAX / 512;
    let g = plan_grow(largest, &h, &entries, "persist")
        .unwrap()
        .unwrap();
    for header in [&g.primary_header, &g.backup_header] {
        parse_entries(&parse_header(header).unwrap(), &g.entries).unwrap();
    }
    assert_eq!(
        plan_grow(largest + 1, &h, &entries, "persist"),
        Err(GptError::Unsupported("disk of 2^64 bytes or more"))
    );
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
