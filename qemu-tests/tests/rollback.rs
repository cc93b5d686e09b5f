//! Failed updates roll back without anyone touching the machine: a v3 whose initramfs makes
//! the kernel panic (panic=5 reboots), and a v4 whose health check never passes. After the
//! staged slot's tries run out, systemd-boot falls back to slot A, and the updater on A reports
//! the rollback with the failed version.

use imagebuilder::spec::Loader;
use qemu_tests::http::StaticServer;
use qemu_tests::updater::{slot, status};
use qemu_tests::{fixtures, Console};
use std::time::Duration;

#[test]
fn panicking_and_unhealthy_updates_roll_back_systemd_boot() {
    scenario(Loader::SystemdBoot);
}

#[test]
fn panicking_and_unhealthy_updates_roll_back_grub() {
    scenario(Loader::Grub);
}

fn scenario(loader: Loader) {
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let v1 = fixtures::build_default_with(&w("v1"), |s| s.boot.loader = loader);
    // v3: its initramfs /init exits at once: "Attempted to kill init", and panic=5 reboots.
    std::fs::write(w("exit1"), fixtures::exit_elf()).unwrap();
    fixtures::build_default_custom(
        &w("v3"),
        |s| {
            s.version = "3.0.0".into();
            s.boot.loader = loader;
        },
        &w("exit1"),
    );
    // v4: unhealthy. With systemd-boot a service never stays up; with GRUB a health check
    // declared in the spec fails.
    let (unhealthy, health_msg) = match loader {
        Loader::SystemdBoot => (None, "kiln-health: not running: flaky"),
        Loader::Grub => (
            Some("test -e /etc/never-there"),
            "kiln-health: check failed: test -e /etc/never-there",
        ),
    };
    fixtures::build_default_with(&w("v4"), |s| {
        s.version = "4.0.0".into();
        s.boot.loader = loader;
        s.update.health_timeout_secs = 10;
        match unhealthy {
            Some(check) => s.update.health_checks.push(check.into()),
            None => s.services.push(imagebuilder::spec::Service {
                name: "flaky".into(),
                command: "/bin/false".into(),
                restart: imagebuilder::spec::Restart::Always,
            }),
        }
    });
    fixtures::dev_bundle(&w("v3"), &w("www/v3"), 3);
    fixtures::dev_bundle(&w("v4"), &w("www/v4"), 4);
    let server = StaticServer::start(&w("www")).unwrap();

    let mut c = Console::boot(&v1.disk).unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", Duration::from_secs(240))
        .unwrap();

    // v3: kernel panic on every try.
    c.send_line(&format!("kiln-updater install {}", server.guest_url("v3")))
        .unwrap();
    c.expect("kiln-updater: slot b staged", Duration::from_secs(600))
        .unwrap();
    c.expect("Kernel panic", Duration::from_secs(240)).unwrap();
    let fallback = c
        .expect("kiln-ready slot=a version=1.0.0", Duration::from_secs(600))
        .unwrap();
    assert!(
        fallback.contains("slot b (3.0.0) failed to boot; rolled back to slot a"),
        "{fallback}"
    );
    assert!(
        fallback.matches("Kernel panic").count() >= 2,
        "v3 was tried {} times",
        fallback.matches("Kernel panic").count() + 1
    );
    let s = status(&mut c);
    assert_eq!(s["booted"], "a");
    assert_eq!(s["rolled_back_from"], "3.0.0");
    assert_eq!(s["last_install"]["result"], "rolled-back");
    assert_eq!(slot(&s, "a")["state"], "good");
    assert_eq!(slot(&s, "b")["state"], "empty");

    // v4: boots, but its health check fails on every try.
    c.send_line(&format!("kiln-updater install {}", server.guest_url("v4")))
        .unwrap();
    c.expect("kiln-updater: slot b staged", Duration::from_secs(600))
        .unwrap();
    c.expect(health_msg, Duration::from_secs(240)).unwrap();
    let fallback = c
        .expect("kiln-ready slot=a version=1.0.0", Duration::from_secs(900))
        .unwrap();
    assert!(
        fallback.contains("slot b (4.0.0) failed to boot; rolled back to slot a"),
        "{fallback}"
    );
    assert!(
        !fallback.contains("kiln-ready slot=b"),
        "the unhealthy slot must never report ready"
    );
    let s = status(&mut c);
    assert_eq!(s["booted"], "a");
    assert_eq!(s["rolled_back_from"], "4.0.0");
    assert_eq!(slot(&s, "b")["state"], "empty");
}
