//! Secure Boot (issue 17): the default image with `[boot] secure_boot`, keys from `kiln keygen
//! --secure-boot`, booted by OVMF's Secure Boot firmware (SMM; TCG when KVM has no SMM) with
//! those keys enrolled by `virt-fw-vars`. The signed image boots to kiln-ready with the
//! SecureBoot variable on and its root found by label and pinned by the signed hash; a UKI
//! whose command line was edited after signing, and an unsigned one, are refused by the
//! firmware and never run. All real: firmware, signatures, loader, kernel.

use imagebuilder::pipeline::BuildReport;
use imagebuilder::qemu::VmConfig;
use qemu_tests::http::StaticServer;
use qemu_tests::updater::{slot, status};
use qemu_tests::{fixtures, Console};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(300);

/// The enrollment tool from scripts/deps.sh's venv, unless the environment names one.
fn use_venv_virt_fw_vars() {
    if std::env::var_os("KILN_VIRT_FW_VARS").is_none() {
        let p = fixtures::workspace().join(".cache/deps/venv/bin/virt-fw-vars");
        assert!(p.is_file(), "{} missing: run scripts/deps.sh", p.display());
        std::env::set_var("KILN_VIRT_FW_VARS", p);
    }
}

/// Keys and the default image with Secure Boot on, built into `work/v1`.
fn secure_image(work: &Path) -> (PathBuf, BuildReport) {
    let keys = work.join("keys");
    imagebuilder::secure_boot::keygen(&keys, "Kiln test").unwrap();
    let report = secure_version(&keys, &work.join("v1"), "1.0.0");
    (keys, report)
}

/// The default image at `version` with Secure Boot on, signed with `keys`' db.
fn secure_version(keys: &Path, out: &Path, version: &str) -> BuildReport {
    fixtures::build_default_with(out, |s| {
        s.version = version.into();
        s.boot.secure_boot = Some(imagebuilder::spec::SecureBootSpec {
            key: keys.join("db.key"),
            cert: keys.join("db.crt"),
        });
    })
}

/// A sparse copy of `disk` at `to`.
fn copy_disk(disk: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(disk)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Replaces `path` on the ESP of `disk` (its partition 1, at `esp_offset`) with `file`.
fn put_on_esp(disk: &Path, esp_offset: u64, file: &Path, path: &str) {
    let o = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg(file)
        .arg(format!("::/{path}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Boots `disk` under Secure Boot and expects the firmware to refuse slot A's image: the
/// refusal is on the console and nothing of the image runs.
fn refused(disk: &Path, keys: &Path, what: &str) {
    let mut c = Console::start(&VmConfig::for_secure_boot(disk, keys).unwrap()).unwrap();
    c.expect("Access Denied", BOOT)
        .unwrap_or_else(|e| panic!("{what}: no refusal: {e}"));
    // The loader gives up and the firmware finds nothing else to boot: it stops here.
    let _ = c.expect("No bootable option", Duration::from_secs(60));
    let t = c.transcript();
    assert!(
        !t.contains("kiln-init") && !t.contains("kiln-ready"),
        "{what} ran:\n{t}"
    );
}

#[test]
fn a_signed_image_boots_under_secure_boot_and_tampered_or_unsigned_images_are_refused() {
    use_venv_virt_fw_vars();
    let work = tempfile::tempdir().unwrap();
    let (keys, report) = secure_image(work.path());
    let out = work.path().join("v1");
    let hash = report.root_verity.as_ref().unwrap().root_hash.clone();
    assert!(report.secure_boot);
    assert_eq!(
        report.cmdline,
        format!("ro kiln.slot=a kiln.verity={hash} console=ttyS0,115200 quiet panic=5")
    );

    // 1. The signed image boots with Secure Boot on.
    let disk = out.join("disk.raw");
    let good = work.path().join("good.raw");
    copy_disk(&disk, &good);
    let mut c = Console::start(&VmConfig::for_secure_boot(&good, &keys).unwrap()).unwrap();
    c.expect("kiln-init: root /dev/vda2 (label root-a)", BOOT)
        .unwrap();
    c.expect(&format!("root hash {hash}"), BOOT).unwrap();
    c.expect("kiln-ready slot=a version=1.0.0 name=kiln-default", BOOT)
        .unwrap();
    let var = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
    let sb = c
        .ok(&format!(
            "grep -q efivarfs /proc/mounts || mount -t efivarfs efivarfs /sys/firmware/efi/efivars; od -An -tx1 {var}"
        ))
        .unwrap();
    assert_eq!(
        sb.split_whitespace().collect::<Vec<_>>(),
        ["06", "00", "00", "00", "01"],
        "SecureBoot variable: {sb}"
    );
    let cmdline = c.ok("cat /proc/cmdline").unwrap();
    assert!(
        cmdline.contains(&format!("kiln.verity={hash}")) && !cmdline.contains("root="),
        "{cmdline}"
    );
    // The updater finds the boot disk by the same label rule and reads the UKI entry.
    let st = status(&mut c);
    assert_eq!(st["booted"], "a", "{st}");
    assert_eq!(slot(&st, "a")["version"], "1.0.0");
    drop(c);

    let esp = report.partitions[0].offset;
    let signed = std::fs::read(out.join("uki-a.efi")).unwrap();

    // 2. The signed UKI with one byte of its command line changed (panic=5 → panic=6).
    let at = find(&signed, b"quiet panic=5").expect("the command line in uki-a.efi") + 12;
    let mut edited = signed.clone();
    edited[at] = b'6';
    let edited_file = work.path().join("edited.efi");
    std::fs::write(&edited_file, &edited).unwrap();
    let tampered = work.path().join("tampered.raw");
    copy_disk(&disk, &tampered);
    put_on_esp(&tampered, esp, &edited_file, "kiln/a/kiln.efi");
    refused(&tampered, &keys, "a UKI edited after signing");
    std::fs::remove_file(&tampered).unwrap();

    // 3. The same UKI never signed.
    let unsigned_file = work.path().join("unsigned.efi");
    let osrel = imagebuilder::uki::os_release("kiln-default", "1.0.0");
    imagebuilder::uki::assemble(
        Path::new(imagebuilder::uki::STUB),
        &imagebuilder::uki::UkiParts {
            osrel: osrel.as_bytes(),
            cmdline: &report.cmdline,
            linux: &std::fs::read(out.join("vmlinuz")).unwrap(),
            initrd: &std::fs::read(out.join("initrd.img")).unwrap(),
        },
        work.path(),
        &unsigned_file,
        1_700_000_000,
    )
    .unwrap();
    let unsigned = work.path().join("unsigned.raw");
    copy_disk(&disk, &unsigned);
    put_on_esp(&unsigned, esp, &unsigned_file, "kiln/a/kiln.efi");
    refused(&unsigned, &keys, "an unsigned UKI");
}

/// The SecureBoot variable as the guest reads it (hex bytes).
fn secure_boot_var(c: &mut Console) -> Vec<String> {
    let var = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
    c.ok(&format!(
        "grep -q efivarfs /proc/mounts || mount -t efivarfs efivarfs /sys/firmware/efi/efivars; od -An -tx1 {var}"
    ))
    .unwrap()
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// Acceptance 3's update: v1 → v2 over HTTP under Secure Boot, the bundle carrying each slot's
/// signed UKI; v2 boots from slot b with Secure Boot still on. Then v3 is staged on a and its
/// UKI's signed command line changed by one byte: the firmware refuses it on every try, the
/// counter runs out, and the machine is back on b (v2), which reports the rollback.
#[test]
fn a_secure_boot_image_updates_to_signed_ukis_and_falls_back_from_a_refused_one() {
    use_venv_virt_fw_vars();
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let (keys, v1) = secure_image(work.path());
    let v2 = secure_version(&keys, &w("v2"), "2.0.0");
    secure_version(&keys, &w("v3"), "3.0.0");
    let m2 = fixtures::dev_bundle(&w("v2"), &w("www/v2"), 2);
    assert!(m2.payloads.is_uki() && m2.payloads.kernel.is_none());
    let m3 = fixtures::dev_bundle(&w("v3"), &w("www/v3"), 3);
    // The second UKI costs almost nothing: its chunks are nearly all the first one's.
    let (a, b) = (
        m3.payloads.uki_a.as_ref().unwrap(),
        m3.payloads.uki_b.as_ref().unwrap(),
    );
    let shared = b
        .chunks
        .iter()
        .filter(|c| a.chunks.iter().any(|x| x.sha256 == c.sha256))
        .count();
    assert!(
        shared * 10 >= b.chunks.len() * 8,
        "{shared} of {} chunks shared",
        b.chunks.len()
    );
    let server = StaticServer::start(&w("www")).unwrap();
    let hash = |r: &BuildReport| r.root_verity.clone().unwrap().root_hash;

    let cfg = VmConfig::for_secure_boot(&v1.disk, &keys).unwrap();
    let mut c = Console::start(&cfg).unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    c.send_line(&format!("kiln-updater install {}", server.guest_url("v2")))
        .unwrap();
    c.expect("kiln-updater: slot b staged", Duration::from_secs(600))
        .unwrap();
    c.expect("kiln-init: root /dev/vda3 (label root-b)", BOOT)
        .unwrap();
    let boot = c.expect("kiln-ready slot=b version=2.0.0", BOOT).unwrap();
    assert!(boot.contains(&format!("root hash {}", hash(&v2))), "{boot}");
    assert_eq!(secure_boot_var(&mut c), ["06", "00", "00", "00", "01"]);
    let st = status(&mut c);
    assert_eq!(st["booted"], "b", "{st}");
    assert_eq!(slot(&st, "b")["version"], "2.0.0");
    assert_eq!(slot(&st, "b")["state"], "good", "{st}");

    // v3 staged on a, its UKI then changed by one byte in the guest's ESP; then power off.
    let (rc, out) = qemu_tests::updater::install_no_reboot(&mut c, &server.guest_url("v3"));
    assert_eq!(rc, 0, "{out}");
    let uki_a = std::fs::read(w("v3").join("uki-a.efi")).unwrap();
    let at = find(&uki_a, b"quiet panic=5").expect("the command line in v3's uki-a.efi") + 12;
    c.ok(&format!(
        "mkdir -p /tmp/esp && mount -t vfat /dev/vda1 /tmp/esp && printf 6 | dd of=/tmp/esp/kiln/a/kiln.efi bs=1 seek={at} conv=notrunc 2>/dev/null && sync && umount /tmp/esp"
    ))
    .unwrap();
    c.send_line("poweroff").unwrap();
    c.wait_exit(Duration::from_secs(60)).unwrap();

    // Each try: the loader counts it, the firmware refuses the image, nothing of it runs.
    // systemd-boot then exits; OVMF goes on through its boot options and, back at the disk,
    // starts systemd-boot again, which counts the next try — so here the fallback may finish
    // within one power-on. Firmware that stops instead ("No bootable option") gets a power
    // cycle, as a watchdog or an operator would give it.
    let refused = "Error loading \\kiln\\a\\kiln.efi: Access Denied";
    let (mut denied, mut power_ons, mut all) = (0, 0, String::new());
    let fallback = loop {
        power_ons += 1;
        assert!(
            power_ons <= 4,
            "still not back on b after {denied} refusals:\n{all}"
        );
        let mut c = Console::start(&cfg).unwrap();
        let seen = c
            .expect_any(&["kiln-ready", "No bootable option"], BOOT)
            .unwrap();
        let t = c.transcript();
        denied += t.matches(refused).count();
        all.push_str(&t);
        if seen.ends_with("kiln-ready") {
            c.expect("\n", Duration::from_secs(10)).unwrap();
            break c.transcript();
        }
        assert!(!t.contains("kiln-init"), "{t}");
    };
    eprintln!("secure boot fallback: {denied} refusals over {power_ons} power-on(s)");
    assert_eq!(denied, 3, "one refusal per try:\n{all}");
    assert!(!all.contains("3.0.0 slot a"), "v3 ran:\n{all}");
    assert!(
        fallback.contains("kiln-ready slot=b version=2.0.0"),
        "{fallback}"
    );
    assert!(
        fallback.contains("slot a (3.0.0) failed to boot; rolled back to slot b"),
        "{fallback}"
    );
    let mut c = Console::start(&cfg).unwrap();
    c.expect("kiln-ready slot=b version=2.0.0", BOOT).unwrap();
    let st = status(&mut c);
    assert_eq!(st["rolled_back_from"], "3.0.0", "{st}");
    assert_eq!(secure_boot_var(&mut c), ["06", "00", "00", "00", "01"]);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
