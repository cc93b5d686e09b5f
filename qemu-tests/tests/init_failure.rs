//! A kiln-init failure is loud and ends in a reboot (which a boot counter counts as a failed
//! try), never in a silent hang.

use qemu_tests::{fixtures, Console};
use std::time::Duration;

#[test]
fn init_failure_prints_a_fatal_line_and_reboots() {
    let dir = tempfile::tempdir().unwrap();
    let report = fixtures::build_default_with(dir.path(), |s| {
        s.boot.cmdline.push_str(" kiln.init=/sbin/no-such-init");
    });
    let mut c = Console::boot(&report.disk).unwrap();
    c.expect(
        "kiln-init: kiln-default 1.0.0 slot a",
        Duration::from_secs(180),
    )
    .unwrap();
    c.expect(
        "kiln-init: FATAL: switching root: exec /sbin/no-such-init",
        Duration::from_secs(60),
    )
    .unwrap();
    c.expect("rebooting in 10 s", Duration::from_secs(5))
        .unwrap();
    // The firmware runs again, then the same entry: the machine rebooted by itself.
    c.expect("BdsDxe", Duration::from_secs(60)).unwrap();
    c.expect(
        "kiln-init: kiln-default 1.0.0 slot a",
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        !c.transcript().contains("kiln-ready"),
        "the broken image must not report ready"
    );
}
