//! Network boot, live mode: QEMU with no disk boots through its iPXE ROM (`-boot n`, slirp TFTP
//! serving `boot.ipxe`), kernel, initramfs and root image come over HTTP from a server the test
//! runs on 127.0.0.1, and the image reaches kiln-ready running from RAM — under SeaBIOS and
//! under OVMF. A corrupted root image is refused with a clear console error.

use imagebuilder::qemu::{ensure_vars, Firmware, VmConfig};
use qemu_tests::http::StaticServer;
use qemu_tests::{fixtures, Console};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

#[test]
fn live_network_boot_under_seabios_and_ovmf_and_a_corrupted_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let report = fixtures::build_default(&dir.path().join("build"));
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let server = StaticServer::start(&www).unwrap();
    let base = server.guest_url("");
    imagebuilder::pxe::write(report.disk.parent().unwrap(), &www, &base, None).unwrap();
    let script = std::fs::read_to_string(www.join("boot.ipxe")).unwrap();
    assert!(script.contains(&report.root_image_sha256), "{script}");

    for firmware in [
        Firmware::Bios,
        Firmware::Uefi {
            vars: ensure_vars(&dir.path().join("pxe-vm")).unwrap(),
        },
    ] {
        let mut c = Console::start(&VmConfig::for_pxe(&www, firmware.clone())).unwrap();
        let out = c
            .expect("kiln-ready slot=live version=1.0.0", BOOT)
            .unwrap_or_else(|e| panic!("{firmware:?}: {e}\n{}", c.transcript()));
        assert!(
            out.contains("kiln-init: network: eth0 10.0.2.15/255.255.255.0"),
            "{out}"
        );
        assert!(out.contains("sha256 verified"), "{out}");
        assert!(out.contains("persist: tmpfs"), "{out}");
        c.ok("true").unwrap();
        // Running from RAM: the root is the loop device holding the fetched image.
        let root = c.ok("awk '$2==\"/\"{print $1, $3}' /proc/mounts").unwrap();
        assert!(root.trim().starts_with("/dev/loop0 erofs"), "{root}");
        let etc = c
            .ok("echo live > /etc/live-test && cat /etc/live-test")
            .unwrap();
        assert_eq!(etc.trim(), "live");
    }

    // One flipped byte in root.img: refused before anything mounts it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(www.join("root.img"))
        .unwrap();
    f.write_all_at(b"X", 5_000_000).unwrap();
    drop(f);
    let mut c = Console::start(&VmConfig::for_pxe(&www, Firmware::Bios)).unwrap();
    let out = c.expect("rebooting in", BOOT).unwrap();
    assert!(
        out.contains("kiln-init: FATAL: verifying the root image: ")
            && out.contains("does not match kiln.root_sha256")
            && out.contains("refusing to boot it"),
        "{out}"
    );
    assert!(!out.contains("kiln-ready"), "{out}");
}
