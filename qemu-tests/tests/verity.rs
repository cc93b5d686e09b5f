//! dm-verity roots (issue 17): an image built with `[rootfs] verity` boots with its root on a
//! verity device whose root hash is the one on the slot's command line; one changed byte of a
//! file's data, or of the hash tree over it, makes the kernel report the corrupted block and
//! restart the machine when the file is read; updates stage each new root's hash (both
//! loaders), and a pending slot that reads a corrupted block at boot rolls back.

use imagebuilder::pipeline::BuildReport;
use imagebuilder::spec::{BakedFile, Loader};
use qemu_tests::http::StaticServer;
use qemu_tests::updater::status;
use qemu_tests::{fixtures, Console};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(300);
const PROBE: &str = "/usr/share/kiln-verity-probe.bin";

/// Where `needle` (a 4 KiB block) lies in `hay`, on a 4 KiB boundary.
fn find_block(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.chunks_exact(4096)
        .position(|b| b == needle)
        .map(|i| i * 4096)
}

#[test]
fn a_verity_root_boots_verified_and_a_changed_byte_restarts_the_machine() {
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    // 1 MiB of noise: found in the image by its blocks, read only when the test asks.
    let mut probe = vec![0u8; 1 << 20];
    qemu_tests::delta::Rng::new(0x7e41).fill(&mut probe);
    std::fs::write(w("probe.bin"), &probe).unwrap();
    let r = fixtures::build_default_with(&w("v1"), |s| {
        s.rootfs.verity = true;
        s.files.push(BakedFile {
            source: w("probe.bin"),
            dest: PROBE.into(),
            mode: "0644".into(),
        });
    });
    let v = r
        .root_verity
        .clone()
        .expect("a verity build records its tree");

    let mut c = Console::boot(&r.disk).unwrap();
    let boot = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(
        boot.contains(&format!(
            "root verified by dm-verity: /dev/dm-0 (kiln-root) over /dev/vda2, {} blocks, root hash {}",
            v.data_blocks, v.root_hash
        )),
        "{boot}"
    );
    // The root is the verity device, with the hash the entry's command line gave.
    assert_eq!(
        c.ok("cat /sys/block/dm-0/dm/name").unwrap().trim(),
        "kiln-root"
    );
    assert!(c
        .ok("cat /proc/cmdline")
        .unwrap()
        .contains(&format!("kiln.verity={}", v.root_hash)));
    let mounts = c.ok("cat /proc/mounts").unwrap();
    assert!(
        mounts.lines().any(|l| l.starts_with("/dev/dm-0 / ")),
        "{mounts}"
    );
    // Read through the tree: the file's bytes are what was built.
    let sum = c.ok(&format!("sha256sum {PROBE}")).unwrap();
    let want = imagebuilder::pipeline::sha256_file(&w("probe.bin")).unwrap();
    assert!(sum.contains(&want), "{sum}");
    c.send_line("poweroff").unwrap();
    c.wait_exit(Duration::from_secs(60)).unwrap();

    // Two copies of the disk, each with one byte of root-a changed offline: one in the probe's
    // data, one in the hash tree where it covers the probe.
    let root_img = std::fs::read(w("v1").join("root.img")).unwrap();
    let first = find_block(&root_img, &probe[..4096]).expect("the probe's first block") as u64;
    // Its 256 blocks lie in order (an erofs file's data is contiguous).
    assert_eq!(
        find_block(&root_img, &probe[(255 << 12)..]),
        Some(first as usize + (255 << 12))
    );
    let root_a = r.partitions.iter().find(|p| p.label == "root-a").unwrap();
    let g = kiln_boot::verity::Geometry::new(v.data_blocks).unwrap();
    // A level-0 tree block whose 128 data blocks all belong to the probe (256 blocks long).
    let j = (first / 4096).div_ceil(128);
    assert!((j + 1) * 128 <= first / 4096 + 256);
    let tree_block = (g.hash_start_block() + g.level_start(0) + j) * 4096;
    let tree_disk = w("tree-changed.raw");
    std::fs::copy(&r.disk, &tree_disk).unwrap();
    let third = find_block(&root_img, &probe[8192..12288]).expect("the probe's third block") as u64;
    flip_byte(&r.disk, root_a.offset + third + 100);
    flip_byte(&tree_disk, root_a.offset + tree_block + 100);
    for disk in [&r.disk, &tree_disk] {
        read_restarts(disk);
    }
}

/// Changes one bit of the byte at `at` of `disk`, offline.
fn flip_byte(disk: &std::path::Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    f.sync_all().unwrap();
}

/// Boots `disk` (nothing reads the probe on the way), then reads the probe: the kernel reports
/// a corrupted block and restarts the machine, which comes back by itself.
fn read_restarts(disk: &std::path::Path) {
    let mut c = Console::boot(disk).unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    c.send_line(&format!("cat {PROBE} > /dev/null; echo read-done"))
        .unwrap();
    let out = c.expect("kiln-init: ", Duration::from_secs(120)).unwrap();
    assert!(out.contains("is corrupted"), "{}: {out}", disk.display());
    assert!(
        !out.lines().any(|l| l.trim() == "read-done"),
        "the corrupted file was read: {out}"
    );
    // The machine came back by itself (a restart, not a hang), on slot a.
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
}

fn verity_image(out: &std::path::Path, version: &str, loader: Loader) -> BuildReport {
    fixtures::build_default_with(out, |s| {
        s.rootfs.verity = true;
        s.boot.loader = loader;
        s.version = version.into();
    })
}

#[test]
fn an_update_stages_the_new_root_hash_and_a_corrupted_pending_slot_rolls_back_systemd_boot() {
    update_scenario(Loader::SystemdBoot);
}

#[test]
fn an_update_stages_the_new_root_hash_and_a_corrupted_pending_slot_rolls_back_grub() {
    update_scenario(Loader::Grub);
}

/// v1 → v2 over HTTP: slot b boots through dm-verity with v2's hash; a rollback then boots
/// slot a with v1's (each slot keeps its own hash through every commit, GRUB's included).
/// Then v3 is staged on b and one byte of a file read at boot is changed in root-b offline:
/// the pending slot restarts on that read until its tries run out, and the machine is back on
/// a, which reports the rollback.
fn update_scenario(loader: Loader) {
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let v1 = verity_image(&w("v1"), "1.0.0", loader);
    let v2 = verity_image(&w("v2"), "2.0.0", loader);
    let v3 = verity_image(&w("v3"), "3.0.0", loader);
    let hash = |r: &BuildReport| r.root_verity.clone().unwrap().root_hash;
    assert_ne!(hash(&v1), hash(&v2));
    fixtures::dev_bundle(&w("v2"), &w("www/v2"), 2);
    let m3 = fixtures::dev_bundle(&w("v3"), &w("www/v3"), 3);
    assert_eq!(m3.root_verity.unwrap().root_hash, hash(&v3));
    let server = StaticServer::start(&w("www")).unwrap();
    let verified = |r: &BuildReport| format!("root hash {}", hash(r));

    let mut c = Console::boot(&v1.disk).unwrap();
    let boot = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(boot.contains(&verified(&v1)), "{boot}");
    c.send_line(&format!("kiln-updater install {}", server.guest_url("v2")))
        .unwrap();
    c.expect("kiln-updater: slot b staged", Duration::from_secs(600))
        .unwrap();
    let boot = c.expect("kiln-ready slot=b version=2.0.0", BOOT).unwrap();
    assert!(boot.contains(&verified(&v2)), "{boot}");
    assert!(boot.contains("kiln-updater: slot b marked good"), "{boot}");
    let out = c.ok("kiln-updater rollback").unwrap();
    assert!(out.contains("slot a boots next"), "{out}");
    c.send_line("reboot").unwrap();
    let boot = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(boot.contains(&verified(&v1)), "{boot}");

    // v3 staged on b, not booted; then the machine is off.
    let (rc, out) = qemu_tests::updater::install_no_reboot(&mut c, &server.guest_url("v3"));
    assert_eq!(rc, 0, "{out}");
    c.send_line("poweroff").unwrap();
    c.wait_exit(Duration::from_secs(60)).unwrap();
    // One byte of v3's release file (read on every boot) changed in root-b.
    let root_img = std::fs::read(w("v3").join("root.img")).unwrap();
    let needle = b"\nKILN_VERSION='3.0.0'\n";
    let at = root_img
        .windows(needle.len())
        .position(|x| x == needle)
        .expect("v3's release file") as u64;
    let root_b = v1.partitions.iter().find(|p| p.label == "root-b").unwrap();
    flip_byte(&v1.disk, root_b.offset + at + 2);

    let mut c = Console::boot(&v1.disk).unwrap();
    let fallback = c
        .expect("kiln-ready slot=a version=1.0.0", Duration::from_secs(900))
        .unwrap();
    assert!(
        fallback.contains(&verified(&v3)),
        "v3 never ran: {fallback}"
    );
    assert!(fallback.contains("is corrupted"), "{fallback}");
    assert!(
        fallback.contains("slot b (3.0.0) failed to boot; rolled back to slot a"),
        "{fallback}"
    );
    assert!(fallback.contains(&verified(&v1)), "{fallback}");
    let s = status(&mut c);
    assert_eq!(s["booted"], "a");
    assert_eq!(s["rolled_back_from"], "3.0.0");
}
