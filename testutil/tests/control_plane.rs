//! `kiln-control-plane` on the host, for real: the one binary (embedded etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) started on 127.0.0.1 with a fresh data directory,
//! driven with upstream kubectl. The control-plane image runs the same binary under QEMU.

use kiln_testutil::control_plane::{binary, ControlPlane};
use kiln_testutil::kubectl::Kubectl;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(300);
const STOP: Duration = Duration::from_secs(60);

/// Polls `kubectl ARGS` until its output satisfies `ok`, for up to `limit`.
fn eventually(k: &Kubectl, args: &[&str], limit: Duration, ok: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let o = k.run(args, None);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        if o.status.success() && ok(&out) {
            return out;
        }
        assert!(
            t.elapsed() < limit,
            "kubectl {} never satisfied the check; last: {out}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

const NODE: &str = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"NAME","labels":{"kubernetes.io/hostname":"NAME"}}}"#;
const READY_STATUS: &str = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"test","lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z"}],"capacity":{"cpu":"2","memory":"2Gi","pods":"20"},"allocatable":{"cpu":"2","memory":"2Gi","pods":"20"}}}"#;

#[test]
fn one_binary_serves_schedules_keeps_its_ca_and_data_across_a_restart_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bin = binary();
    let mut cp = ControlPlane::start(&bin, &data, &dir.path().join("first.log"));
    cp.wait_ready(READY);
    let admin = Kubectl::new(&cp.admin());

    // Ready: the binary's own check and the API's answer through kubectl agree.
    let r = cp.tool(&["ready"]);
    assert!(
        r.status.success(),
        "ready: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(admin.must(&["get", "--raw=/readyz"]).trim(), "ok");

    // Kiln's own objects apply as an administrator would apply them.
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    admin.must(&[
        "apply",
        "-f",
        ws.join("deploy/crd.yaml").to_str().unwrap(),
        "-f",
        ws.join("deploy/rbac.yaml").to_str().unwrap(),
    ]);

    // A Ready node (no kubelet: its status is written as a kubelet would) and a Deployment: the
    // controller manager makes the ReplicaSet and Pods, the scheduler binds them to the node.
    for n in ["w1", "w2"] {
        admin.apply(&NODE.replace("NAME", n));
        admin.must(&[
            "patch",
            "node",
            n,
            "--subresource=status",
            "--type=merge",
            "-p",
            READY_STATUS,
        ]);
    }
    admin.must(&[
        "create",
        "deployment",
        "web",
        "--image=registry.k8s.io/pause:3.10",
        "--replicas=2",
    ]);
    let bound = eventually(
        &admin,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ],
        Duration::from_secs(120),
        |o| o.lines().filter(|l| *l == "w1" || *l == "w2").count() == 2,
    );
    eprintln!("pods bound to: {}", bound.replace('\n', " "));
    // The ServiceAccount controller (controller manager, with per-controller credentials) made
    // the namespace's default account.
    eventually(
        &admin,
        &["get", "serviceaccount", "default", "-o", "name"],
        Duration::from_secs(60),
        |o| o.trim() == "serviceaccount/default",
    );

    // A node's credentials reach its own Node only: Node authorization with NodeRestriction.
    let w1_path = dir.path().join("w1.kubeconfig");
    let o = cp.tool(&[
        "kubeconfig",
        "--user=system:node:w1",
        "--group=system:nodes",
        &format!("--server=https://127.0.0.1:{}", cp.port),
        &format!("--out={}", w1_path.display()),
    ]);
    assert!(
        o.status.success(),
        "kubeconfig: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&w1_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let w1 = Kubectl::new(&w1_path);
    w1.must(&["label", "node", "w1", "kiln.dev/own=yes"]);
    let o = w1.run(&["label", "node", "w2", "kiln.dev/own=yes"], None);
    assert!(!o.status.success(), "node w1 relabelled node w2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    let o = w1.run(&["get", "node", "w2"], None);
    assert!(!o.status.success(), "node w1 read node w2");
    let o = w1.run(&["get", "secrets", "-A"], None);
    assert!(!o.status.success(), "a node listed every Secret");

    // SIGTERM: a clean exit.
    let ca = std::fs::read(data.join("pki/ca.crt")).unwrap();
    let sa = std::fs::read(data.join("pki/sa.key")).unwrap();
    let t = Instant::now();
    let st = cp.stop(STOP);
    assert!(st.success(), "exit after SIGTERM: {st}");
    eprintln!("stopped {:.1} s after SIGTERM", t.elapsed().as_secs_f64());
    let r = cp.tool(&["ready", "--timeout=3s"]);
    assert!(!r.status.success(), "ready with the control plane stopped");

    // A restart on the same data: the same CA and ServiceAccount key, the objects kept, and
    // credentials issued before it still accepted.
    cp.restart(&dir.path().join("second.log"));
    cp.wait_ready(READY);
    assert_eq!(
        std::fs::read(data.join("pki/ca.crt")).unwrap(),
        ca,
        "a new CA"
    );
    assert_eq!(
        std::fs::read(data.join("pki/sa.key")).unwrap(),
        sa,
        "a new ServiceAccount key"
    );
    assert_eq!(
        w1.must(&["get", "node", "w1", "-o", "name"]).trim(),
        "node/w1"
    );
    let nodes = admin.must(&["get", "nodes", "-o", "name"]);
    assert!(
        nodes.contains("node/w1") && nodes.contains("node/w2"),
        "{nodes}"
    );
    let crd = admin.must(&["get", "crd", "-o", "name"]);
    assert!(crd.contains("osupgrades."), "{crd}");
    assert_eq!(
        admin.must(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "2"
    );
    let st = cp.stop(STOP);
    assert!(st.success(), "second exit after SIGTERM: {st}");
}

#[test]
fn bad_flags_and_half_a_ca_are_refused_by_name_before_anything_starts() {
    let bin = binary();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let data = dir.path().join("data");
    let d = format!("--data-dir={}", data.display());

    let (ok, err) = run(&["run", &d, "--secure-port=0"]);
    assert!(!ok && err.contains("--secure-port 0"), "{err}");
    let (ok, err) = run(&["run", &d, "--service-cidr=10.96.0.0/33"]);
    assert!(!ok && err.contains("--service-cidr"), "{err}");
    let (ok, err) = run(&["run", &d, "--apiserver-arg=--no-such-flag=1"]);
    assert!(
        !ok && err.contains("kube-apiserver flags") && err.contains("no-such-flag"),
        "{err}"
    );
    let (ok, err) = run(&["frobnicate"]);
    assert!(
        !ok && err.contains("unknown command \"frobnicate\""),
        "{err}"
    );
    assert!(!data.exists(), "a refused start wrote {}", data.display());

    // A CA key without its certificate: refused by name, never replaced (that would orphan
    // every credential the old CA issued).
    std::fs::create_dir_all(data.join("pki")).unwrap();
    std::fs::write(data.join("pki/ca.key"), "kept").unwrap();
    let (ok, err) = run(&["run", &d, "--bind-address=127.0.0.1"]);
    assert!(!ok, "started with half a CA");
    assert!(
        err.contains(&format!("{} is missing", data.join("pki/ca.crt").display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("pki/ca.key")).unwrap(),
        "kept"
    );
    assert!(!data.join("pki/ca.crt").exists());

    // Issuing credentials needs the CA a start made.
    let empty = dir.path().join("empty");
    let o = Command::new(&bin)
        .args(["kubeconfig", "--user=u", "--server=https://127.0.0.1:6443"])
        .arg(format!("--data-dir={}", empty.display()))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no CA in"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!empty.exists(), "kubeconfig made a CA");
}
