//! A 2 GiB disk flashed (with the code of `kiln flash`, onto a loop device) from the ~1.5 GiB
//! default image boots; kiln-init grows persist to the end of the disk on the first boot, only
//! then; data written beyond persist's original size survives a reboot; the disk checks clean.

use qemu_tests::{fixtures, Console};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const DISK: u64 = 2 << 30;

fn flash_onto_loop(image: &Path, disk: &Path) {
    std::fs::File::create(disk).unwrap().set_len(DISK).unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(disk)
        .output()
        .expect("losetup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = (|| {
        let target = kiln_flash::target::Target::open_device(Path::new(&dev))?;
        let mut src = kiln_flash::source::open(image.to_str().unwrap())?;
        kiln_flash::write::flash(&mut src, &target, None, &kiln_flash::progress::Silent)
    })();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    let r = r.unwrap();
    assert_eq!(r.bytes, std::fs::metadata(image).unwrap().len());
}

/// `sgdisk -v`: the table is sound and its backup sits at the end of the disk.
fn sgdisk_verify(disk: &Path) -> String {
    let o = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `e2fsck -fn` of the persist filesystem (partition 4) through a loop device at its offset.
fn fsck_persist(disk: &Path, start_lba: u64, sectors: u64) {
    let out = Command::new("losetup")
        .args(["-f", "--show", "-r", "-o"])
        .arg((start_lba * 512).to_string())
        .arg("--sizelimit")
        .arg((sectors * 512).to_string())
        .arg(disk)
        .output()
        .unwrap();
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let fsck = Command::new("e2fsck").args(["-fn", &dev]).output().unwrap();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn a_flashed_larger_disk_grows_persist_once_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let report = fixtures::build_default(&dir.path().join("build"));
    let disk = dir.path().join("disk2g.raw");
    flash_onto_loop(&report.disk, &disk);
    assert!(
        sgdisk_verify(&disk).contains("end of the disk")
            || !sgdisk_verify(&disk).contains("No problems found"),
        "before the first boot the backup GPT is where the image ended"
    );

    // First boot: the table and the filesystem grow.
    let mut c = Console::boot(&disk).unwrap();
    let boot1 = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(
        boot1.contains("kiln-init: persist partition grown to the end of the disk: 256 -> "),
        "{boot1}"
    );
    assert!(
        boot1.contains("kiln-init: persist filesystem grown: 256 -> "),
        "{boot1}"
    );
    c.ok("true").unwrap();
    let end = c
        .ok("echo $(( $(cat /sys/class/block/vda4/start) + $(cat /sys/class/block/vda4/size) ))")
        .unwrap();
    // 2 GiB = 4194304 sectors; backup entries and header take the last 33; persist ends on
    // the last whole MiB before them.
    assert_eq!(
        end.trim(),
        "4192256",
        "persist does not reach the end of the disk"
    );
    let df = c.ok("df -k /persist | awk 'NR==2{print $2}'").unwrap();
    let kib: u64 = df.trim().parse().unwrap();
    assert!(kib > 600 << 10, "persist filesystem is {kib} KiB");
    // More data than the original 256 MiB persist could hold.
    c.sh(
        "dd if=/dev/zero of=/var/big bs=1M count=300 2>&1 && echo grown-data > /var/grow-mark && sync",
        Duration::from_secs(240),
    )
    .map(|(rc, out)| assert_eq!(rc, 0, "{out}"))
    .unwrap();

    // Second boot: nothing grows again; the data is there.
    c.send_line("reboot").unwrap();
    let boot2 = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(!boot2.contains("grown"), "grew again: {boot2}");
    c.ok("true").unwrap();
    assert_eq!(c.ok("cat /var/grow-mark").unwrap().trim(), "grown-data");
    assert_eq!(
        c.ok("stat -c %s /var/big").unwrap().trim(),
        (300u64 << 20).to_string()
    );
    c.send_line("poweroff").unwrap();
    c.wait_exit(Duration::from_secs(60)).unwrap();

    let v = sgdisk_verify(&disk);
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    let start = report
        .partitions
        .iter()
        .find(|p| p.label == "persist")
        .unwrap()
        .offset
        / 512;
    fsck_persist(&disk, start, 4192256 - start);
}
