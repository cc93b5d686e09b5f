//! Delta installs: the chunks the running slot holds are copied from it (verified as read)
//! instead of downloaded, counted apart; a running slot that does not match its manifest at
//! some chunk makes the install download that chunk, and the result still verifies.

mod common;

use common::{noise, test_bundle};
use kiln_updater::bundle::keys::SecretKey;
use kiln_updater::bundle::manifest::Payload;
use kiln_updater::bundle::source::DirSource;
use kiln_updater::bundle::store::ChunkStore;
use kiln_updater::install::{verify_payload, write_payload, Stats, WriteOptions};
use kiln_updater::seed::{expected_download, Seed};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::empty_target;

/// Installs `payload` seeded from `seed` into a fresh 8 MiB target at `at`, then verifies it.
fn install_verified(src: &ChunkStore<'_>, payload: &Payload, seed: &Seed<'_>, at: &Path) -> Stats {
    let t = empty_target(at, 8 << 20);
    let o = WriteOptions {
        seed: Some(seed),
        ..WriteOptions::default()
    };
    let s = write_payload(src, "root", payload, &t, 0, 8 << 20, &o).unwrap();
    verify_payload("root", payload, &t, 0).unwrap();
    s.stats
}

#[test]
fn chunks_of_the_running_slot_are_copied_not_downloaded() {
    let d = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    // v1: 4 MiB. v2: 300 KiB rewritten at 1 MiB, 512 KiB appended.
    let v1 = noise(4 << 20, 1);
    let mut v2 = v1.clone();
    v2[1 << 20..(1 << 20) + 300 * 1024].copy_from_slice(&noise(300 * 1024, 2));
    v2.extend(noise(512 * 1024, 3));
    let changed = (300 + 512) * 1024u64;
    let m1 = test_bundle(d.path(), "v1", &v1, &key);
    let m2 = test_bundle(d.path(), "v2", &v2, &key);
    let running = d.path().join("running");
    fs::write(&running, &v1).unwrap();
    let running = fs::File::open(&running).unwrap();
    let seed = Seed::new(&running, 0, &m1.payloads.root);
    let dir = DirSource(d.path().join("v2"));
    let src = ChunkStore::open(&dir, &m2).unwrap();
    assert!(src.is_packed());

    let s = install_verified(&src, &m2.payloads.root, &seed, &d.path().join("slot"));
    // Exactly the chunks v1 lacks were downloaded; every other one came from the running slot.
    // (`kiln bundle --from` predicts the same count and bytes.)
    let (fresh, fresh_bytes) = expected_download(&m2.payloads.root, Some(&m1.payloads.root));
    assert_eq!((s.chunks, s.fetched), (fresh, fresh_bytes), "{s:?}");
    assert_eq!(s.reused, m2.payloads.root.chunks.len() as u64 - fresh);
    assert_eq!(s.written, m2.payloads.root.size);
    assert!(
        s.fetched < 3 * changed,
        "downloaded {} bytes for {changed} changed bytes",
        s.fetched
    );
    assert!(s.reused_bytes + 3 * changed > v2.len() as u64, "{s:?}");

    // The running slot differs from its manifest in one reusable chunk: that one is
    // downloaded, the rest still copied, and the slot verifies.
    let c = m2
        .payloads
        .root
        .chunks
        .iter()
        .find(|c| c.offset > 2 << 20)
        .unwrap();
    let damaged = d.path().join("damaged");
    fs::write(&damaged, &v1).unwrap();
    fs::File::options()
        .write(true)
        .open(&damaged)
        .unwrap()
        .write_all_at(b"X", c.offset + 7)
        .unwrap();
    let damaged = fs::File::open(&damaged).unwrap();
    let seed = Seed::new(&damaged, 0, &m1.payloads.root);
    let s2 = install_verified(&src, &m2.payloads.root, &seed, &d.path().join("slot2"));
    assert_eq!(s2.chunks, fresh + 1);
    assert_eq!(s2.reused, s.reused - 1);
}
