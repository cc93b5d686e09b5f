//! Secure Boot (issue 17): the default image with `[boot] secure_boot`, keys from `kiln keygen
//! --secure-boot`, booted by OVMF's Secure Boot firmware (SMM; TCG when KVM has no SMM) with
//! those keys enrolled by `virt-fw-vars`. The signed image boots to kiln-ready with the
//! SecureBoot variable on and its root found by label and pinned by the signed hash; a UKI
//! whose command line was edited after signing, and an unsigned one, are refused by the
//! firmware and never run. All real: firmware, signatures, loader, kernel.

use imagebuilder::pipeline::BuildReport;
use imagebuilder::qemu::VmConfig;
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
    let report = fixtures::build_default_with(&work.join("v1"), |s| {
        s.boot.secure_boot = Some(imagebuilder::spec::SecureBootSpec {
            key: keys.join("db.key"),
            cert: keys.join("db.crt"),
        });
    });
    (keys, report)
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
    let st = qemu_tests::updater::status(&mut c);
    assert_eq!(st["booted"], "a", "{st}");
    assert_eq!(qemu_tests::updater::slot(&st, "a")["version"], "1.0.0");
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
