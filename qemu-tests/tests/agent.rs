//! The default image's node agent (kiln-agent) in QEMU, with the API server unreachable (a
//! kubeconfig naming a closed port on the host): the image still reaches kiln-ready on time,
//! the agent retries with backoff 1, 2, 4, 8 s… and logs exactly one line per attempt. Then
//! the staging mode the agent upgrades with: `kiln-updater install --no-activate` writes and
//! verifies slot B without making it bootable (a reboot stays on A), `activate` refuses a slot
//! changed since, and `activate --reboot` boots the verified slot. The next update copies the
//! chunks the running slot holds instead of downloading them.

use imagebuilder::bundle::{bundle, BundleArgs};
use qemu_tests::http::StaticServer;
use qemu_tests::updater::{slot, status};
use qemu_tests::{fixtures, Console};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);

/// A kubeconfig as a cluster hands it out: the server's CA (a throwaway self-signed
/// certificate, fixtures/test-ca.pem; nothing ever answers) and a token.
fn kubeconfig(port: u16) -> String {
    use base64::Engine;
    let pem = std::fs::read(fixtures::workspace().join("qemu-tests/fixtures/test-ca.pem")).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://10.0.2.2:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: kiln-agent\n  user:\n    token: test-token\ncontexts:\n- name: test\n  context: {{cluster: test, user: kiln-agent}}\ncurrent-context: test\n"
    )
}

/// `kiln-updater install --no-activate URL` in the guest: (exit status, output).
fn stage(c: &mut Console, url: &str) -> (i32, String) {
    c.sh(
        &format!("kiln-updater install --no-activate {url}"),
        Duration::from_secs(600),
    )
    .unwrap()
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn agent_backs_off_without_delaying_ready_and_stages_without_activating() {
    let work = tempfile::tempdir().unwrap();
    let port = closed_port();
    let kc = work.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig(port)).unwrap();
    // The default image's agent, given a kubeconfig (as provisioning would write it).
    let with_agent = |s: &mut imagebuilder::spec::Spec| fixtures::bake_kubeconfig(s, &kc);
    let v1 = fixtures::build_default_with(&work.path().join("v1"), with_agent);
    let served = work.path().join("www");
    for (v, seq) in [("2.0.0", 2), ("3.0.0", 3)] {
        let b = work.path().join(format!("v{seq}"));
        fixtures::build_default_with(&b, |s| {
            with_agent(s);
            s.version = v.into();
        });
        bundle(&BundleArgs {
            build: &b,
            keys: &[fixtures::workspace().join("examples/default/keys/dev.key")],
            out: &served.join(format!("v{seq}")),
            sequence: seq,
            expires_in: Duration::from_secs(86_400),
            kbundle: None,
            layout: Default::default(),
        })
        .unwrap();
    }
    let server = StaticServer::start(&served).unwrap();

    // 1. Backoff: attempt N is logged once, about 2^(N-1) s after attempt N-1 (lower bounds
    // only: TCG is slow, never fast).
    let mut c = Console::boot(&v1.disk).unwrap();
    let mut seen = vec![];
    for n in 1..=6 {
        c.expect(&format!("attempt {n} failed, next in"), BOOT)
            .unwrap();
        seen.push(Instant::now());
    }
    for (i, w) in seen.windows(2).enumerate() {
        let want = Duration::from_secs(1 << i);
        assert!(
            w[1] - w[0] >= want.mul_f64(0.9),
            "attempt {} came {:?} after attempt {}, expected ≥ {want:?}",
            i + 2,
            w[1] - w[0],
            i + 1
        );
    }
    let t = c.transcript();
    let ready = t
        .find("kiln-ready slot=a version=1.0.0")
        .expect("kiln-ready while the API server is unreachable");
    let fifth = t.find("attempt 5 failed").unwrap();
    assert!(ready < fifth, "kiln-ready waited for the agent:\n{t}");
    for n in 1..=5 {
        let lines: Vec<&str> = t
            .lines()
            .filter(|l| l.contains(&format!("attempt {n} failed")))
            .collect();
        let agent: Vec<&str> = t.lines().filter(|l| l.contains("kiln-agent")).collect();
        assert_eq!(
            lines.len(),
            1,
            "attempt {n}: {lines:?}\nagent lines:\n{}",
            agent.join("\n")
        );
        assert!(
            lines[0].contains(&format!("API server https://10.0.2.2:{port}/ not usable"))
                && lines[0].contains("Connection refused"),
            "{}",
            lines[0]
        );
    }
    assert!(t.contains("kiln-agent: node kiln-default, kubeconfig /etc/kiln/kubeconfig"));

    // 2. Stage without activating: slot B written and verified, still not bootable.
    let out = stage(&mut c, &server.guest_url("v2"));
    assert_eq!(out.0, 0, "{}", out.1);
    assert!(
        out.1.contains("slot b written and verified with 2.0.0"),
        "{}",
        out.1
    );
    let s = status(&mut c);
    assert_eq!(slot(&s, "b")["state"], "empty");
    assert_eq!(s["next_boot"], "a");
    assert_eq!(s["last_install"]["result"], "written");
    c.send_line("reboot").unwrap();
    c.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();

    // 3. A slot changed since it was written is not activated.
    // Partitions: 1 ESP, 2 root-a, 3 root-b, 4 persist.
    let root_b = "/dev/vda3";
    c.ok(&format!(
        "printf 'X' | dd of={root_b} bs=1 seek=70000 conv=notrunc 2>/dev/null; sync"
    ))
    .unwrap();
    let (rc, out) = c
        .sh("kiln-updater activate", Duration::from_secs(120))
        .unwrap();
    assert_ne!(rc, 0, "{out}");
    assert!(out.contains("slot b changed since it was written"), "{out}");
    assert_eq!(status(&mut c)["next_boot"], "a");

    // 4. Written again (only the damaged chunk is fetched), activated, booted. Activating
    // twice (an agent restarted before its reboot does) is no error: the second one only
    // reboots.
    let (rc, out) = stage(&mut c, &server.guest_url("v2"));
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = c
        .sh("kiln-updater activate", Duration::from_secs(120))
        .unwrap();
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("kiln-updater: slot b staged with 3 tries"),
        "{out}"
    );
    c.send_line("kiln-updater activate --reboot").unwrap();
    c.expect(
        "kiln-updater: slot b is already staged with 2.0.0",
        Duration::from_secs(120),
    )
    .unwrap();
    c.expect("kiln-ready slot=b version=2.0.0", BOOT).unwrap();
    let s = status(&mut c);
    assert_eq!(slot(&s, "b")["state"], "good");

    // 5. The next update (v3, into slot a) copies what slot b (v2, installed with a recorded
    // manifest) already holds instead of downloading it.
    let (rc, out) = stage(&mut c, &server.guest_url("v3"));
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("reused from slot b"), "{out}");
    let s = status(&mut c);
    let (down, reused) = (
        s["last_install"]["downloaded"].as_u64().unwrap(),
        s["last_install"]["reused"].as_u64().unwrap(),
    );
    eprintln!("v2 -> v3 install: downloaded {down} bytes, reused {reused} bytes from slot b");
    assert!(
        reused > 4 * down && reused > 1 << 20,
        "downloaded {down} bytes, reused {reused}: {out}"
    );
}
