//! The Debian example (bookworm + systemd + containerd, base from scripts/debian-base.sh) as a
//! container-OS node, end to end under OVMF + systemd-boot:
//! v1 boots to `kiln-ready` through the generated systemd units (running, hostname, DHCP by
//! networkd, modules loadable after switch_root); a container made by this test (an OCI layout
//! of the host's static busybox — no registry) runs under containerd with its output in the
//! journal, is restarted when killed, comes back over a snapshot a reboot left without its
//! container, and writes to its persist mount; after a reboot the
//! machine id is the same and the previous boot's journal is readable; v2 (a new container
//! image and a changed file under /usr) is installed A/B and blessed through systemd; v3, whose
//! essential container exits at once, never becomes healthy and the loader falls back to v2,
//! which garbage-collects v3's image.

use imagebuilder::bundle::{bundle, BundleArgs};
use imagebuilder::spec::{BakedFile, Container, ContainerMode, ContainerMount, ContainerRestart};
use qemu_tests::http::StaticServer;
use qemu_tests::updater::{slot, status};
use qemu_tests::{fixtures, Console};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(300);
const SPEC: &str = "examples/debian/image.toml";

/// One version of the test image: its container prints `marker` and writes to its persist
/// mount; `/usr/share/kiln-test/note` holds `note`.
/// Returns the build directory and the container's reference in containerd.
fn build(
    work: &Path,
    version: &str,
    container_cmd: &[&str],
    note: &str,
    health_secs: Option<u64>,
) -> (PathBuf, String) {
    let out = work.join(version);
    let layout = work.join(format!("image-{version}"));
    let digest = fixtures::busybox_oci_layout(&layout, container_cmd);
    let note_file = work.join(format!("note-{version}"));
    std::fs::write(&note_file, note).unwrap();
    fixtures::build_example_with(Path::new(SPEC), &out, |s| {
        s.version = version.into();
        s.files.push(BakedFile {
            source: note_file.clone(),
            dest: "/usr/share/kiln-test/note".into(),
            mode: "0644".into(),
        });
        s.containers.push(Container {
            name: "hello".into(),
            image: layout.clone(),
            command: None,
            args: None,
            env: [("GREETING".to_string(), format!("from {version}"))].into(),
            mounts: vec![ContainerMount {
                source: "/var/lib/hello".into(),
                target: "/data".into(),
                read_only: false,
            }],
            restart: Default::default(),
            mode: Default::default(),
            essential: true,
        });
        // A bootstrap container: runs to completion once per device and image.
        s.containers.push(Container {
            name: "setup".into(),
            image: layout.clone(),
            command: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo kiln-setup-ran; date >> /data/runs".into(),
            ]),
            args: None,
            env: Default::default(),
            mounts: vec![ContainerMount {
                source: "/var/lib/setup".into(),
                target: "/data".into(),
                read_only: false,
            }],
            restart: ContainerRestart::OnFailure,
            mode: ContainerMode::Once,
            essential: true,
        });
        if let Some(secs) = health_secs {
            s.update.health_timeout_secs = secs;
        }
    });
    let reference = format!(
        "kiln.local/hello:sha256-{}",
        digest.trim_start_matches("sha256:")
    );
    (out, reference)
}

fn out(c: &mut Console, cmd: &str) -> String {
    c.ok(cmd)
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .to_string()
}

/// Waits until the system finished booting and says `running`.
fn assert_running(c: &mut Console) {
    let (rc, o) = c
        .sh(
            "systemctl is-system-running --wait",
            Duration::from_secs(120),
        )
        .unwrap();
    if rc != 0 || !o.contains("running") {
        let failed = out(c, "systemctl --failed --no-legend --no-pager");
        panic!("is-system-running: {o:?} (rc {rc}); failed units: {failed}");
    }
}

/// Waits (in the guest) until `cmd` succeeds, up to `secs`.
fn until(c: &mut Console, cmd: &str, secs: u32) {
    let line = format!("for i in $(seq {secs}); do {cmd} && break; sleep 1; done; {cmd}");
    let (rc, o) = c
        .sh(&line, Duration::from_secs(u64::from(secs) + 60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rc, 0, "not true after {secs} s: {cmd}\n{o}");
}

#[test]
fn debian_node_runs_systemd_and_containers_and_updates_ab() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let script = |v: &str| {
        format!("echo kiln-marker-$GREETING; echo written-by-{v} > /data/{v}; exec sleep 1000000")
    };
    let (v1, v1_ref) = build(
        w,
        "1.0.0",
        &["/bin/sh", "-c", &script("v1")],
        "note v1",
        None,
    );
    let (v2, v2_ref) = build(
        w,
        "2.0.0",
        &["/bin/sh", "-c", &script("v2")],
        "note v2",
        None,
    );
    // v3: the essential container exits at once; 20 s of health wait per try.
    let (v3, v3_ref) = build(w, "3.0.0", &["/bin/false"], "note v3", Some(20));
    let served = w.join("www");
    let key = fixtures::workspace().join("examples/default/keys/dev.key");
    for (build, seq, name) in [(&v2, 2, "v2"), (&v3, 3, "v3")] {
        bundle(&BundleArgs {
            build,
            keys: std::slice::from_ref(&key),
            out: &served.join(name),
            sequence: seq,
            expires_in: Duration::from_secs(30 * 86_400),
            kbundle: None,
            layout: Default::default(),
        })
        .unwrap();
    }
    let server = StaticServer::start(&served).unwrap();

    // v1: systemd, hostname, network, modules, container.
    let mut c = Console::boot(&v1.join("disk.raw")).unwrap();
    c.expect("kiln-ready slot=a version=1.0.0 name=kiln-debian", BOOT)
        .unwrap();
    assert_running(&mut c);
    assert_eq!(out(&mut c, "hostname"), "kiln-debian");
    assert!(out(&mut c, "ip -4 -o addr show eth0").contains("10.0.2.15"));
    out(
        &mut c,
        "modprobe br_netfilter && grep -q '^br_netfilter ' /proc/modules",
    );
    let id1 = out(&mut c, "cat /etc/machine-id");
    assert_eq!(id1.len(), 32, "{id1:?}");
    let marker = "journalctl -u kiln-container-hello -o cat | grep -c 'kiln-marker-from 1.0.0'";
    until(&mut c, &format!("[ \"$({marker})\" -ge 1 ]"), 60);
    assert_eq!(out(&mut c, "cat /var/lib/hello/v1"), "written-by-v1");
    let setup_runs = "wc -l < /var/lib/setup/runs";
    assert_eq!(out(&mut c, setup_runs), "1");

    // Killed, the container is started again by its restart policy.
    out(
        &mut c,
        "kill -9 $(ctr -n kiln task ls | grep '^hello ' | tr -s ' ' | cut -d' ' -f2)",
    );
    until(&mut c, &format!("[ \"$({marker})\" -ge 2 ]"), 60);
    until(
        &mut c,
        "ctr -n kiln task ls | grep -q '^hello .*RUNNING'",
        60,
    );
    assert!(
        out(
            &mut c,
            "systemctl show -p NRestarts --value kiln-container-hello"
        )
        .parse::<u32>()
        .unwrap()
            >= 1
    );
    // A snapshot left without its container (a reboot between `ctr run` preparing it and
    // creating the container) would make every later `ctr run hello` fail with "already
    // exists"; the unit's prep removes it and the container comes back.
    out(
        &mut c,
        "systemctl stop kiln-container-hello && ctr -n kiln containers delete --keep-snapshot hello && ctr -n kiln snapshots ls | grep -q '^hello '",
    );
    out(&mut c, "systemctl start kiln-container-hello");
    until(
        &mut c,
        "ctr -n kiln task ls | grep -q '^hello .*RUNNING'",
        60,
    );

    // Reboot: same machine id, the previous boot's journal, the container's file.
    c.send_line("reboot").unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    assert_running(&mut c);
    assert_eq!(out(&mut c, "cat /etc/machine-id"), id1);
    assert!(
        out(
            &mut c,
            "journalctl -b -1 -u kiln-container-hello -o cat | grep -c 'kiln-marker-from 1.0.0'"
        )
        .parse::<u32>()
        .unwrap()
            >= 2
    );
    assert_eq!(out(&mut c, "cat /var/lib/hello/v1"), "written-by-v1");
    assert_eq!(out(&mut c, setup_runs), "1", "a once container ran again");

    // A/B to v2: new container image, new /usr file, blessed through systemd.
    c.send_line(&format!("kiln-updater install {}", server.guest_url("v2")))
        .unwrap();
    c.expect("kiln-updater: slot b staged", Duration::from_secs(600))
        .unwrap();
    let boot = c.expect("kiln-ready slot=b version=2.0.0", BOOT).unwrap();
    assert!(boot.contains("kiln-updater: slot b marked good"), "{boot}");
    assert_running(&mut c);
    assert_eq!(out(&mut c, "cat /usr/share/kiln-test/note"), "note v2");
    until(
        &mut c,
        "journalctl -b -u kiln-container-hello -o cat | grep -q 'kiln-marker-from 2.0.0'",
        60,
    );
    assert_eq!(out(&mut c, "cat /var/lib/hello/v2"), "written-by-v2");
    assert_eq!(out(&mut c, "cat /var/lib/hello/v1"), "written-by-v1");
    assert_eq!(out(&mut c, "cat /etc/machine-id"), id1);
    assert_eq!(
        out(&mut c, setup_runs),
        "2",
        "a new image runs its once container again"
    );
    let s = status(&mut c);
    assert_eq!(s["booted"], "b");
    assert_eq!(slot(&s, "b")["state"], "good");
    let (down, reused) = (
        s["last_install"]["downloaded"].as_u64().unwrap(),
        s["last_install"]["reused"].as_u64().unwrap(),
    );
    eprintln!("debian v1 -> v2: downloaded {down} bytes, reused {reused} bytes");
    assert!(reused > 4 * down, "downloaded {down}, reused {reused}");
    assert!(out(&mut c, "cat /usr/lib/kiln/containers/refs")
        .lines()
        .any(|l| l == v2_ref));
    // v1's image stays while slot a (v1, the fallback) references it.
    let images = out(&mut c, "ctr -n kiln images ls -q");
    assert!(
        images.contains(&v1_ref) && images.contains(&v2_ref),
        "{images}"
    );

    // v3's essential container exits at once: never healthy, three tries, back to v2.
    c.send_line(&format!("kiln-updater install {}", server.guest_url("v3")))
        .unwrap();
    c.expect("kiln-updater: slot a staged", Duration::from_secs(600))
        .unwrap();
    let tries = c
        .expect("kiln-ready slot=b version=2.0.0", Duration::from_secs(900))
        .unwrap();
    assert!(
        tries.contains("kiln-not-ready: the pending slot is unhealthy"),
        "{tries}"
    );
    assert_running(&mut c);
    let s = status(&mut c);
    assert_eq!(s["booted"], "b");
    assert_eq!(s["rolled_back_from"], "3.0.0");
    // v3's image was imported on its tries; nothing references it now: collected.
    let images = out(&mut c, "ctr -n kiln images ls -q");
    assert!(images.lines().any(|l| l.trim() == v2_ref), "{images}");
    assert!(!images.contains(&v3_ref), "{images}");
}
