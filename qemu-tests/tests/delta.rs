//! Delta updates on a root of more than 200 MiB (issue 7), through the real `kiln-updater`
//! (its `extract`: the install's chunk path into a file) against a real HTTP server on
//! 127.0.0.1: v1 → v2 changing one 4 MiB file and adding a 1 MiB file downloads less than 3×
//! the compressed changed data — from a slot with a recorded manifest and from a factory slot
//! (indexed on the spot) alike — and verifies; memory stays bounded; an install killed half way
//! and run again fetches only the chunks it had not written.

use qemu_tests::delta::{build_pair, extract_cmd, Pair};
use qemu_tests::http::StaticServer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn run_json(mut c: Command) -> Value {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "kiln-updater extract failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// 190 MiB of generated files over the default image: a root of about 224 MiB.
fn pair(work: &Path) -> Pair {
    let p = build_pair(work, 190 << 20);
    assert!(
        p.v2.report.root_image_size >= 200 << 20,
        "root is only {} bytes",
        p.v2.report.root_image_size
    );
    p
}

#[test]
fn a_small_change_downloads_little_from_a_recorded_or_a_factory_slot() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let p = pair(work);
    let server = StaticServer::start(work).unwrap();
    let url = format!("http://{}/v2.bundle", server.addr);
    let v1_root = p.v1.build.join("root.img");
    let signed = file_len(&p.v2.bundle.join("manifest.json.zst"))
        + file_len(&p.v2.bundle.join("manifest.json.zst.sig"));
    let budget = 3 * p.changed_compressed;

    let mut downloaded_root = 0;
    for (case, manifest) in [
        ("recorded manifest", Some(p.v1.bundle.join("manifest.json"))),
        ("factory slot, indexed", None),
    ] {
        server.counters.reset();
        let out = work.join("out.img");
        let _ = std::fs::remove_file(&out);
        let r = run_json(extract_cmd(&url, Some(&v1_root), manifest.as_deref(), &out));
        let downloaded = r["downloaded"].as_u64().unwrap();
        downloaded_root = downloaded;
        eprintln!(
            "{case}: downloaded {downloaded} bytes in {} chunks, reused {} in {} chunks; changed data {} bytes zstd; seed indexed in {} ms; peak RSS {} KiB",
            r["chunks_fetched"], r["reused"], r["chunks_reused"], p.changed_compressed, r["seed_index_ms"], r["peak_rss_kib"]
        );
        assert!(
            downloaded < budget,
            "{case}: downloaded {downloaded} bytes, not under 3 × {} (the compressed changed data)",
            p.changed_compressed
        );
        // The updater's counter is what went over the wire, less the signed manifest.
        assert_eq!(
            server.counters.body_bytes.load(Ordering::SeqCst),
            downloaded + signed,
            "{case}"
        );
        assert_eq!(r["sha256"], p.v2.report.root_image_sha256, "{case}");
        assert_eq!(
            imagebuilder::pipeline::sha256_file(&out).unwrap(),
            p.v2.report.root_image_sha256,
            "{case}"
        );
        assert!(r["chunks_reused"].as_u64().unwrap() > 1000, "{case}: {r}");
        // Memory: a chunk per worker and the indexes, not the payload (217 MiB).
        let rss = r["peak_rss_kib"].as_u64().unwrap();
        assert!(rss > 0 && rss < 32 << 10, "{case}: peak RSS {rss} KiB");
    }

    // `kiln bundle --from v1` predicts exactly what the updater downloaded for the root.
    let m2: kiln_updater::bundle::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(p.v2.bundle.join("manifest.json")).unwrap()).unwrap();
    let e = imagebuilder::bundle::estimate(&m2, &p.v2.bundle, &p.v1.build).unwrap();
    assert_eq!(e.payloads[0], ("root", downloaded_root));
    assert!(e.download < e.full / 20, "{e:?}");
}

#[test]
fn an_install_killed_half_way_resumes_with_only_the_missing_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let p = pair(work);
    let server = StaticServer::start(work).unwrap();
    let url = format!("http://{}/v2.bundle", server.addr);
    let out = work.join("resumed.img");
    let m: kiln_updater::bundle::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(p.v2.bundle.join("manifest.json")).unwrap()).unwrap();
    let chunks = &m.payloads.root.chunks;
    let places = kiln_updater::bundle::store::pack_offsets(&m);
    let place = |c: &kiln_updater::bundle::manifest::Chunk| places[c.sha256.as_str()];
    // The root comes first in the pack: its chunks' bytes, back to back, from offset 0.
    let root_bytes: u64 = chunks.iter().map(|c| c.stored).sum();
    let pack_sent = || {
        let manifest = file_len(&p.v2.bundle.join("manifest.json.zst"))
            + file_len(&p.v2.bundle.join("manifest.json.zst.sig"));
        server.counters.body_bytes.load(Ordering::SeqCst) - manifest
    };
    // No seed: the root streams from the pack, slowly enough (64 KiB per 2 ms) to stop half way.
    server.counters.set_piece_delay(Duration::from_millis(2));
    let mut child = extract_cmd(&url, None, None, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while server.counters.body_bytes.load(Ordering::SeqCst) < root_bytes / 2 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the install never got half way"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the install ended before half way"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, by PID
    child.wait().unwrap();
    // Responses still being sent to the dead process end (in error) before the count.
    let t = Instant::now();
    while server.counters.in_flight.load(Ordering::SeqCst) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "responses never ended"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = pack_sent();
    assert!(!out.exists(), "a killed install left the final name");
    assert!(PathBuf::from(format!("{}.part", out.display())).exists());

    server.counters.reset();
    server.counters.set_piece_delay(Duration::ZERO);
    let r = run_json(extract_cmd(&url, None, None, &out));
    // The second run reads the .part first (it resumes), then fetches each missing chunk alone.
    let again: Vec<u64> = server
        .counters
        .served()
        .iter()
        .filter_map(|s| s.split_once("/chunks.pack bytes=")?.1.split_once('-'))
        .map(|(a, _)| a.parse().unwrap())
        .collect();
    let (present, fetched) = (
        r["chunks_present"].as_u64().unwrap() as usize,
        r["chunks_fetched"].as_u64().unwrap() as usize,
    );
    // What the first run received but had not written when it died: the chunks in its window
    // (taken by workers, waiting in order, queued from the stream) and the socket buffers.
    let slack = 16u64 << 20;
    let surely_written = chunks
        .iter()
        .filter(|c| {
            let (at, len) = place(c);
            at + len + slack <= sent
        })
        .count();
    eprintln!(
        "{} chunks ({root_bytes} bytes in the pack); the first run was sent {sent} bytes; {present} found in the .part, {fetched} fetched ({} requests); {surely_written} chunks lay more than {slack} bytes before the end of what was sent",
        chunks.len(),
        again.len()
    );
    assert_eq!(present + fetched, chunks.len());
    assert_eq!(again.len(), fetched, "one request per missing chunk");
    assert!(surely_written > chunks.len() / 4, "{surely_written}");
    // Kept: everything received well before the kill; fetched again: nothing of that.
    assert!(present >= surely_written, "{present} < {surely_written}");
    assert!(
        again.iter().all(|&at| at + slack >= sent),
        "a chunk received long before the kill was fetched again"
    );
    assert_eq!(r["sha256"], p.v2.report.root_image_sha256);
}
