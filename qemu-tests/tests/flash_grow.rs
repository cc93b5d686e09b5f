//! A 2 GiB disk flashed (with the code of `kiln flash`, onto a loop device) from the ~1.5 GiB
//! default image boots; kiln-init grows persist to the end of the disk on the first boot, only
//! then; data written beyond persist's original size survives a reboot; the disk checks clean.
//! And a disk grown under an installed image, with the power cut while kiln-init rewrote the
//! primary GPT: the next boot uses the backup, restores the primary, grows, and keeps persist.

use kiln_testutil::LoopDev;
use qemu_tests::{fixtures, Console};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const DISK: u64 = 2 << 30;

fn flash_onto_loop(image: &Path, disk: &Path) {
    std::fs::File::create(disk).unwrap().set_len(DISK).unwrap();
    let lo = LoopDev::attach(disk, &[]);
    let r = (|| {
        let target = kiln_flash::target::Target::open_device(Path::new(&lo.dev))?;
        let mut src = kiln_flash::source::open(
            image.to_str().unwrap(),
            &kiln_flash::source::Bounds::for_device(target.size),
        )?;
        kiln_flash::write::flash(&mut src, &target, None, &kiln_flash::progress::Silent)
    })();
    drop(lo);
    let r = r.unwrap();
    assert_eq!(r.bytes, std::fs::metadata(image).unwrap().len());
}

/// `sgdisk -v`: the table is sound and its backup sits at the end of the disk.
fn sgdisk_verify(disk: &Path) -> String {
    let o = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// After the VM: the GPT is sound with its backup at the end of the 2 GiB disk, and the grown
/// persist filesystem (to the last whole MiB before the backup) checks clean.
fn check_grown_disk(disk: &Path, report: &imagebuilder::pipeline::BuildReport) {
    let v = sgdisk_verify(disk);
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    let start = report
        .partitions
        .iter()
        .find(|p| p.label == "persist")
        .unwrap()
        .offset
        / 512;
    fsck_persist(disk, start, 4192256 - start);
}

/// `e2fsck -fn` of the persist filesystem (partition 4) through a loop device at its offset.
fn fsck_persist(disk: &Path, start_lba: u64, sectors: u64) {
    let lo = LoopDev::slice(disk, start_lba * 512, sectors * 512);
    let fsck = Command::new("e2fsck")
        .args(["-fn", &lo.dev])
        .output()
        .unwrap();
    drop(lo);
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

    check_grown_disk(&disk, &report);
}

#[test]
fn a_cut_while_the_primary_gpt_is_rewritten_keeps_persist() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let report = fixtures::build_default(&dir.path().join("build"));
    let disk = report.disk.clone();

    // Installed and used at its own size: nothing to grow.
    let mut c = Console::boot(&disk).unwrap();
    let boot1 = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(!boot1.contains("grown"), "{boot1}");
    c.ok("echo before-the-cut > /var/cut-mark && echo etc-mark > /etc/cut-mark && sync")
        .unwrap();
    c.send_line("poweroff").unwrap();
    c.wait_exit(Duration::from_secs(60)).unwrap();

    // The volume grows to 2 GiB; kiln-init's growth then gets as far as the new backup GPT and
    // part of the primary (its entries) before the power goes: the primary's header no longer
    // matches its entries.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    f.set_len(DISK).unwrap();
    let mut lba1 = vec![0u8; 512];
    f.read_exact_at(&mut lba1, 512).unwrap();
    let hdr = kiln_boot::gpt::parse_header(&lba1).unwrap();
    let mut entries = vec![0u8; hdr.entries_len()];
    f.read_exact_at(&mut entries, hdr.entries_lba * 512)
        .unwrap();
    let g = kiln_boot::gpt::plan_grow(DISK / 512, &lba1, &entries, "persist")
        .unwrap()
        .expect("a larger disk has something to grow");
    f.write_all_at(&g.entries, g.backup_entries_lba * 512)
        .unwrap();
    f.write_all_at(&g.backup_header, g.backup_header_lba * 512)
        .unwrap();
    f.write_all_at(&g.entries, g.entries_lba * 512).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(
        kiln_boot::gpt::parse_entries(&hdr, &g.entries).is_err(),
        "the primary must be torn (entries CRC mismatch)"
    );

    let mut c = Console::boot(&disk).unwrap();
    let boot2 = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    // OVMF's partition driver restores a damaged primary from a valid backup before the loader
    // runs (UEFI spec, GPT validation); kiln-init would otherwise (`restored the primary GPT
    // from the backup`). Either way the grown table is the one in force, without a warning.
    assert!(!boot2.contains("WARNING"), "{boot2}");
    assert!(
        boot2.contains("kiln-init: persist filesystem grown: 256 -> "),
        "{boot2}"
    );
    c.ok("true").unwrap();
    assert_eq!(c.ok("cat /var/cut-mark").unwrap().trim(), "before-the-cut");
    assert_eq!(c.ok("cat /etc/cut-mark").unwrap().trim(), "etc-mark");
    let end = c
        .ok("echo $(( $(cat /sys/class/block/vda4/start) + $(cat /sys/class/block/vda4/size) ))")
        .unwrap();
    assert_eq!(end.trim(), "4192256");
    c.send_line("poweroff").unwrap();
    c.wait_exit(Duration::from_secs(60)).unwrap();
    check_grown_disk(&disk, &report);
}
