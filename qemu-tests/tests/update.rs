//! A signed A/B update end to end under OVMF + systemd-boot: disk v1 on slot A installs v2
//! from a bundle served over HTTP by this test, reboots into slot B, blesses it; persist data
//! survives; a tampered bundle is then refused, leaving the booted slot untouched and the
//! inactive slot unbootable.

use imagebuilder::bundle::{bundle, BundleArgs};
use imagebuilder::spec::Loader;
use qemu_tests::http::StaticServer;
use qemu_tests::updater::{slot, status};
use qemu_tests::{fixtures, Console};
use std::fs;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

#[test]
fn signed_update_over_http_then_a_tampered_bundle_is_refused_systemd_boot() {
    scenario(Loader::SystemdBoot);
}

#[test]
fn signed_update_over_http_then_a_tampered_bundle_is_refused_grub() {
    scenario(Loader::Grub);
}

fn scenario(loader: Loader) {
    let work = tempfile::tempdir().unwrap();
    let v1 = fixtures::build_default_with(&work.path().join("v1"), |s| s.boot.loader = loader);
    fixtures::build_default_with(&work.path().join("v2"), |s| {
        s.version = "2.0.0".into();
        s.boot.loader = loader;
    });
    let served = work.path().join("www");
    let key = fixtures::workspace().join("examples/default/keys/dev.key");
    let m = bundle(&BundleArgs {
        build: &work.path().join("v2"),
        keys: &[key],
        out: &served.join("v2"),
        sequence: 2,
        expires_in: Duration::from_secs(30 * 86_400),
        kbundle: None,
        layout: Default::default(),
    })
    .unwrap();
    // v3 (sequence 3) with one root chunk replaced by other bytes of the same length. The chunk
    // is one v2 does not have: chunks a slot already holds are not fetched again, so tampering
    // with a chunk of v2 would go unnoticed here, rightly (the slot's bytes match the manifest).
    fixtures::build_default_with(&work.path().join("v3"), |s| {
        s.version = "3.0.0".into();
        s.boot.loader = loader;
    });
    let m3 = fixtures::dev_bundle(&work.path().join("v3"), &served.join("tampered"), 3);
    let in_v2: std::collections::HashSet<&str> = m
        .payloads
        .root
        .chunks
        .iter()
        .map(|c| c.sha256.as_str())
        .collect();
    let c0 = m3
        .payloads
        .root
        .chunks
        .iter()
        .find(|c| !in_v2.contains(c.sha256.as_str()))
        .expect("v3's root differs from v2's somewhere");
    // Its stored bytes in the pack replaced by a valid zstd frame of other data (same size).
    let offsets = kiln_updater::bundle::store::pack_offsets(&m3);
    let (at, stored) = offsets[c0.sha256.as_str()];
    let fake = zstd::bulk::compress(&vec![0x5a; c0.length as usize], 3).unwrap();
    assert!(
        (fake.len() as u64) < stored,
        "a frame of one repeated byte is smaller"
    );
    let mut frame = fake.clone();
    // Padded with a skippable frame to the chunk's stored size.
    let pad = stored as usize - fake.len();
    assert!(pad >= 8, "room for a skippable frame header");
    frame.extend_from_slice(&0x184D2A50u32.to_le_bytes());
    frame.extend_from_slice(&((pad - 8) as u32).to_le_bytes());
    frame.resize(stored as usize, 0);
    let pack = fs::OpenOptions::new()
        .write(true)
        .open(
            served
                .join("tampered")
                .join(kiln_updater::bundle::store::PACK),
        )
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&pack, &frame, at).unwrap();
    let server = StaticServer::start(&served).unwrap();

    let mut c = Console::boot(&v1.disk).unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    c.ok("echo before-update > /etc/kiln-upd && echo before-update > /var/kiln-upd && sync")
        .unwrap();
    let s = status(&mut c);
    assert_eq!(s["booted"], "a");
    assert_eq!(slot(&s, "b")["state"], "empty");

    // Install v2 over HTTP; the updater reboots into slot B, which blesses itself.
    c.send_line(&format!("kiln-updater install {}", server.guest_url("v2")))
        .unwrap();
    let out = c
        .expect("kiln-updater: slot b staged", Duration::from_secs(600))
        .unwrap();
    // Slot A was written at build time (no manifest recorded for it): indexed, then reused.
    assert!(
        out.contains("kiln-updater: indexed the root of slot a (no manifest recorded for it)"),
        "{out}"
    );
    let boot2 = c.expect("kiln-ready slot=b version=2.0.0", BOOT).unwrap();
    assert!(
        boot2.contains("kiln-updater: slot b marked good"),
        "{boot2}"
    );
    let s = status(&mut c);
    assert_eq!(s["booted"], "b");
    assert_eq!(
        (
            slot(&s, "b")["state"].as_str(),
            slot(&s, "b")["version"].as_str()
        ),
        (Some("good"), Some("2.0.0"))
    );
    assert_eq!(
        (
            slot(&s, "a")["state"].as_str(),
            slot(&s, "a")["version"].as_str()
        ),
        (Some("good"), Some("1.0.0"))
    );
    assert_eq!(s["installed_sequence"], 2);
    let (down, reused) = (
        s["last_install"]["downloaded"].as_u64().unwrap(),
        s["last_install"]["reused"].as_u64().unwrap(),
    );
    assert!(reused > 4 * down, "downloaded {down}, reused {reused}");
    assert_eq!(
        c.ok("cat /etc/kiln-upd /var/kiln-upd").unwrap().trim(),
        "before-update\nbefore-update"
    );
    assert!(
        server
            .counters
            .body_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );

    // `rollback` makes the other good slot the next boot; after a reboot A runs v1 again.
    let out = c.ok("kiln-updater rollback").unwrap();
    assert!(out.contains("slot a boots next"), "{out}");
    assert_eq!(status(&mut c)["next_boot"], "a");
    c.send_line("reboot").unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    let s = status(&mut c);
    assert_eq!(s["booted"], "a");
    assert_eq!(slot(&s, "b")["state"], "good");

    // A tampered bundle: refused, the booted slot untouched, the inactive slot not bootable.
    let (rc, out) = qemu_tests::updater::install_no_reboot(&mut c, &server.guest_url("tampered"));
    assert_ne!(rc, 0, "tampered bundle accepted: {out}");
    assert!(out.contains("is corrupt"), "{out}");
    let s = status(&mut c);
    assert_eq!(s["booted"], "a");
    assert_eq!(slot(&s, "a")["state"], "good");
    assert_eq!(slot(&s, "b")["state"], "empty");
    assert_eq!(s["next_boot"], "a");
    // With no good other slot, rollback is refused.
    let (rc, out) = c
        .sh("kiln-updater rollback", Duration::from_secs(60))
        .unwrap();
    assert_ne!(rc, 0);
    assert!(out.contains("slot b has no good entry"), "{out}");
    // The v2 bundle again is not above the blessed sequence 2.
    let (rc, out) = c
        .sh(
            &format!(
                "kiln-updater install --no-reboot {}",
                server.guest_url("v2")
            ),
            Duration::from_secs(120),
        )
        .unwrap();
    assert_ne!(rc, 0);
    assert!(out.contains("not above the installed sequence 2"), "{out}");
}
