//! A v2 that hangs after kiln-init (its /sbin/init never starts anything) is reset by the
//! software watchdog kiln-init armed, each reset counts as a failed try, and the machine comes
//! back on v1 by itself, which reports the rollback.

use imagebuilder::spec::{BakedFile, Spec};
use qemu_tests::http::StaticServer;
use qemu_tests::updater::{slot, status};
use qemu_tests::{fixtures, Console};
use std::time::Duration;

fn with_watchdog(s: &mut Spec) {
    s.boot.watchdog_secs = Some(30);
    s.update.health_timeout_secs = 10;
}

#[test]
fn a_hanging_update_is_reset_by_the_watchdog_and_rolls_back() {
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let v1 = fixtures::build_default_with(&w("v1"), with_watchdog);
    let hang = w("hang.sh");
    std::fs::write(
        &hang,
        "#!/bin/sh\necho 'hang: v2 init is stuck' > /dev/console\nwhile :; do sleep 1; done\n",
    )
    .unwrap();
    fixtures::build_default_with(&w("v2"), |s| {
        with_watchdog(s);
        s.version = "2.0.0".into();
        s.files.push(BakedFile {
            source: hang.clone(),
            dest: "/sbin/init".into(),
            mode: "0755".into(),
        });
    });
    fixtures::dev_bundle(&w("v2"), &w("www/v2"), 2);
    let server = StaticServer::start(&w("www")).unwrap();

    let mut c = Console::boot(&v1.disk).unwrap();
    let boot1 = c
        .expect("kiln-ready slot=a version=1.0.0", Duration::from_secs(240))
        .unwrap();
    assert!(
        boot1.contains("kiln-init: watchdog armed: reset unless fed within 30 s"),
        "{boot1}"
    );
    // v1 is fed once ready: it stays up well past the watchdog's 30 s.
    std::thread::sleep(Duration::from_secs(40));
    c.ok("true").unwrap();
    assert!(
        !c.transcript().contains("softdog"),
        "the healthy slot was reset"
    );

    c.send_line(&format!("kiln-updater install {}", server.guest_url("v2")))
        .unwrap();
    c.expect("kiln-updater: slot b staged", Duration::from_secs(600))
        .unwrap();
    c.expect("hang: v2 init is stuck", Duration::from_secs(240))
        .unwrap();
    let fallback = c
        .expect("kiln-ready slot=a version=1.0.0", Duration::from_secs(600))
        .unwrap();
    let hangs = fallback.matches("hang: v2 init is stuck").count() + 1;
    assert!(hangs >= 3, "v2 was tried {hangs} times");
    assert!(
        fallback.contains("slot b (2.0.0) failed to boot; rolled back to slot a"),
        "{fallback}"
    );
    let s = status(&mut c);
    assert_eq!(s["booted"], "a");
    assert_eq!(s["rolled_back_from"], "2.0.0");
    assert_eq!(slot(&s, "b")["state"], "empty");
}
