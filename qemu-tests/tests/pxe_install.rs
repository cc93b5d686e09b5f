//! Network install: QEMU (OVMF) with a blank 1 GiB disk first in the boot order and the NIC
//! second finds nothing on the disk, boots `boot.ipxe` from the network with
//! `kiln.pxe=install`; kiln-init streams disk.raw.zst over HTTP onto /dev/vda with the code of
//! `kiln flash` and reboots; the machine then boots slot A from the disk (persist grown to the
//! end of the larger disk) and takes a normal signed A/B update to v2 on slot B.

use imagebuilder::qemu::{Firmware, VmConfig};
use qemu_tests::http::StaticServer;
use qemu_tests::{fixtures, Console};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);
const MIB: u64 = 1 << 20;

/// The default image with small partitions: a quick install under TCG.
fn small(version: &str) -> impl FnOnce(&mut imagebuilder::spec::Spec) + '_ {
    move |s| {
        s.version = version.into();
        s.partitions.esp = 64 * MIB;
        s.partitions.root = 64 * MIB;
        s.partitions.persist = 64 * MIB;
    }
}

#[test]
fn pxe_install_onto_a_blank_disk_then_boot_it_and_update_it() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = fixtures::build_default_with(&dir.path().join("v1"), small("1.0.0"));
    let v2 = fixtures::build_default_with(&dir.path().join("v2"), small("2.0.0"));
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    fixtures::dev_bundle(v2.disk.parent().unwrap(), &www.join("v2"), 2);
    let server = StaticServer::start(&www).unwrap();
    imagebuilder::pxe::write(
        v1.disk.parent().unwrap(),
        &www,
        &server.guest_url(""),
        Some("/dev/vda"),
    )
    .unwrap();
    let script = std::fs::read_to_string(www.join("boot.ipxe")).unwrap();
    assert!(
        script.contains("kiln.pxe=install kiln.install_disk=/dev/vda"),
        "{script}"
    );

    let disk = dir.path().join("blank.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let cfg = VmConfig {
        pxe_dir: Some(www.clone()),
        ..VmConfig::for_disk(&disk).unwrap()
    };
    assert!(matches!(cfg.firmware, Firmware::Uefi { .. }));
    let mut c = Console::start(&cfg).unwrap();
    let install = c
        .expect("rebooting into it", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    assert!(
        install.contains("kiln-init: installing http://10.0.2.2:"),
        "{install}"
    );
    assert!(
        install.contains("sha256 matches kiln.image_sha256, read back equal"),
        "{install}"
    );
    // Same QEMU process: the firmware now finds the disk bootable.
    let boot = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(boot.contains("kiln-init: root /dev/vda2"), "{boot}");
    assert!(
        boot.contains("persist partition grown to the end of the disk"),
        "{boot}"
    );
    c.ok("true").unwrap();

    // A normal A/B update of the installed machine.
    c.send_line(&format!("kiln-updater install {}", server.guest_url("v2")))
        .unwrap();
    c.expect("kiln-updater: slot b staged", Duration::from_secs(600))
        .unwrap();
    c.expect("kiln-ready slot=b version=2.0.0", BOOT).unwrap();
    c.ok("true").unwrap();
    let s = qemu_tests::updater::status(&mut c);
    assert_eq!(s["booted"], "b", "{s}");
    assert_eq!(qemu_tests::updater::slot(&s, "b")["state"], "good", "{s}");
}
