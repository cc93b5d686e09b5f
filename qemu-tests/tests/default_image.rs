//! The default image in QEMU under OVMF + systemd-boot: boots to kiln-ready, runs and restarts
//! its services, has a read-only root with the persist layout, and keeps /etc and /var across
//! reboots (a guest reboot and a fresh QEMU process on the same disk and firmware variables).

use qemu_tests::{fixtures, Console};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

fn pid_of(c: &mut Console, svc: &str) -> String {
    c.ok(&format!("cat /run/kiln/svc/{svc}.pid"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn default_image_boots_persists_and_restarts_services() {
    let dir = tempfile::tempdir().unwrap();
    let report = fixtures::build_default(dir.path());
    let disk = report.disk.clone();

    // Boot 1 (first boot).
    let mut c = Console::boot(&disk).unwrap();
    let boot1 = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(
        boot1.contains("kiln-init: first boot: creating the persist layout"),
        "{boot1}"
    );
    let t = c.transcript();
    assert!(
        t.contains("control-plane: started pid"),
        "control-plane marker missing"
    );
    assert!(
        t.contains("kiln-agent: node kiln-default, kubeconfig /etc/kiln/kubeconfig"),
        "kiln-agent did not start"
    );
    c.ok("true").unwrap();

    // The control-plane stand-in is restarted when it exits.
    let old = pid_of(&mut c, "control-plane");
    c.ok(&format!("kill {old}")).unwrap();
    c.expect("control-plane: started pid", Duration::from_secs(30))
        .unwrap();
    let mut new = pid_of(&mut c, "control-plane");
    for _ in 0..20 {
        if new != old {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        new = pid_of(&mut c, "control-plane");
    }
    assert_ne!(new, old, "control-plane was not restarted");
    c.ok(&format!("kill -0 {new}")).unwrap();

    // Read-only root.
    let (rc, out) = c
        .sh("echo x > /usr/kiln-write-test", Duration::from_secs(20))
        .unwrap();
    assert_ne!(rc, 0, "writing under /usr succeeded: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let root_line = c.ok("awk '$2==\"/\"{print $3, $4}' /proc/mounts").unwrap();
    assert!(root_line.contains("erofs ro"), "{root_line}");

    // /etc: overlay with its upper on persist.
    let etc = c.ok("awk '$2==\"/etc\"' /proc/mounts").unwrap();
    assert!(etc.starts_with("overlay /etc overlay"), "{etc}");
    assert!(
        etc.contains("upperdir=/sysroot/persist/overlay/etc/upper"),
        "{etc}"
    );

    // /var: bound from persist (same device, root /bind/var).
    let var = c
        .ok("awk '$5==\"/var\"{print $3, $4}' /proc/self/mountinfo")
        .unwrap();
    let persist_dev = c
        .ok("awk '$5==\"/persist\"{print $3}' /proc/self/mountinfo")
        .unwrap();
    assert_eq!(
        var.trim(),
        format!("{} /bind/var", persist_dev.trim()),
        "/var is not bound from persist"
    );

    // /tmp: writable tmpfs.
    let tmp = c.ok("awk '$2==\"/tmp\"{print $3}' /proc/mounts").unwrap();
    assert_eq!(tmp.trim(), "tmpfs");
    c.ok("echo scratch > /tmp/kiln-scratch").unwrap();

    // Files written in this boot.
    let token = format!("token-{}", std::process::id());
    c.ok(&format!(
        "echo {token} > /etc/kiln-etc-test && echo {token} > /var/kiln-var-test && sync"
    ))
    .unwrap();
    let upper = c
        .ok("cat /persist/overlay/etc/upper/kiln-etc-test")
        .unwrap();
    assert_eq!(
        upper.trim(),
        token,
        "the /etc write did not land in the overlay upper"
    );

    // Boot 2: guest reboot in the same QEMU process.
    c.send_line("reboot").unwrap();
    let boot2 = c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert!(
        !boot2.contains("first boot"),
        "persist layout was created again: {boot2}"
    );
    c.ok("true").unwrap();
    assert_eq!(c.ok("cat /etc/kiln-etc-test").unwrap().trim(), token);
    assert_eq!(c.ok("cat /var/kiln-var-test").unwrap().trim(), token);
    let (rc, _) = c
        .sh("test -e /tmp/kiln-scratch", Duration::from_secs(20))
        .unwrap();
    assert_ne!(rc, 0, "/tmp survived a reboot: it is not a tmpfs");
    // The stand-in logs each start under /var: both boots' starts are there.
    let starts = c.ok("wc -l < /var/lib/control-plane/starts").unwrap();
    assert!(
        starts.trim().parse::<u32>().unwrap() >= 3,
        "starts: {starts}"
    );
    c.send_line("poweroff").unwrap();
    c.wait_exit(Duration::from_secs(60)).unwrap();

    // Boot 3: a new QEMU process on the same disk and firmware variables.
    let mut c = Console::boot(&disk).unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    c.ok("true").unwrap();
    assert_eq!(c.ok("cat /etc/kiln-etc-test").unwrap().trim(), token);
    assert_eq!(c.ok("cat /var/kiln-var-test").unwrap().trim(), token);
}
