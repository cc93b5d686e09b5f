//! dm-verity roots (issue 17): an image built with `[rootfs] verity` boots with its root on a
//! verity device whose root hash is the one on the slot's command line, and one changed byte of
//! a file in the slot makes the kernel report the corrupted block and restart the machine when
//! the file is read.

use imagebuilder::spec::BakedFile;
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

    // One byte of the probe's data changed in root-a, offline.
    let root_img = std::fs::read(w("v1").join("root.img")).unwrap();
    let at = find_block(&root_img, &probe[8192..12288]).expect("the probe's third block");
    let root_a = r.partitions.iter().find(|p| p.label == "root-a").unwrap();
    let disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&r.disk)
        .unwrap();
    let mut b = [0u8; 1];
    disk.read_exact_at(&mut b, root_a.offset + at as u64 + 100)
        .unwrap();
    disk.write_all_at(&[b[0] ^ 0x01], root_a.offset + at as u64 + 100)
        .unwrap();
    disk.sync_all().unwrap();

    // It boots (nothing reads the probe on the way), then reading the file restarts it.
    let mut c = Console::boot(&r.disk).unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    c.send_line(&format!("cat {PROBE} > /dev/null; echo read-done"))
        .unwrap();
    let out = c.expect("kiln-init: ", Duration::from_secs(120)).unwrap();
    assert!(out.contains("is corrupted"), "{out}");
    assert!(
        !out.lines().any(|l| l.trim() == "read-done"),
        "the corrupted file was read: {out}"
    );
    // The machine came back by itself (a restart, not a hang), on slot a.
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
}
