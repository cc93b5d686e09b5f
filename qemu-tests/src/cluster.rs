//! The parts of a Kubernetes cluster the cluster scenarios play on the host: a stand-in for the
//! kubelet's pod bookkeeping (no kubelet runs on a Kiln test node) and kiln-operator.

pub use kiln_testutil::kubectl::Kubectl;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The kubelet's part for the pods of the test's nodes, and a record of one Node's cordon:
/// every 500 ms, pods not Ready are marked Ready, pods being deleted (evicted) are deleted for
/// good, and whether the Node `node` is unschedulable is noted. Every 10 s the node Leases of
/// `alive` are renewed (kube-node-lease), as each node's kubelet would: a controller manager
/// running the node lifecycle controller would otherwise taint them unreachable and evict
/// their pods.
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    pub cordoned_seen: Arc<Mutex<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl Kubelet {
    pub fn start(kubectl: PathBuf, admin: PathBuf, node: &str, alive: &[&str]) -> Kubelet {
        let node = node.to_string();
        let alive: Vec<String> = alive.iter().map(|n| n.to_string()).collect();
        let mut renewed: Option<std::time::Instant> = None;
        let stop = Arc::new(AtomicBool::new(false));
        let cordoned_seen = Arc::new(Mutex::new(false));
        let (s, seen) = (stop.clone(), cordoned_seen.clone());
        let thread = std::thread::spawn(move || {
            let k = |args: &[&str]| {
                Command::new(&kubectl)
                    .arg(format!("--kubeconfig={}", admin.display()))
                    .arg("--request-timeout=10s")
                    .args(args)
                    .output()
                    .unwrap()
            };
            while !s.load(Ordering::SeqCst) {
                if renewed.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    for n in &alive {
                        renew_lease(&kubectl, &admin, n);
                    }
                    renewed = Some(std::time::Instant::now());
                }
                let o = k(&["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"]);
                if String::from_utf8_lossy(&o.stdout).trim() == "true" {
                    *seen.lock().unwrap() = true;
                }
                let o = k(&["get", "pods", "-A", "-o", "json"]);
                let pods: Value = serde_json::from_slice(&o.stdout).unwrap_or(json!({}));
                for p in pods["items"].as_array().into_iter().flatten() {
                    let (ns, name) = (
                        p["metadata"]["namespace"].as_str().unwrap(),
                        p["metadata"]["name"].as_str().unwrap(),
                    );
                    if p["metadata"]["deletionTimestamp"].is_string() {
                        k(&[
                            "delete",
                            "pod",
                            "-n",
                            ns,
                            name,
                            "--grace-period=0",
                            "--force",
                        ]);
                        continue;
                    }
                    let ready = p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                    if !ready {
                        let patch = json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True"}]}});
                        k(&[
                            "patch",
                            "pod",
                            "-n",
                            ns,
                            name,
                            "--subresource=status",
                            "--type=merge",
                            "-p",
                            &patch.to_string(),
                        ]);
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Kubelet {
            stop,
            cordoned_seen,
            thread: Some(thread),
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Renews (or makes) the Lease `kube-node-lease/NODE`, as the node's kubelet does.
fn renew_lease(kubectl: &Path, admin: &Path, node: &str) {
    use std::io::Write;
    let now = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .unwrap();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
            "renewTime": String::from_utf8_lossy(&now.stdout).trim()}});
    let mut c = Command::new(kubectl)
        .arg(format!("--kubeconfig={}", admin.display()))
        .args(["--request-timeout=10s", "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = c
        .stdin
        .take()
        .unwrap()
        .write_all(lease.to_string().as_bytes());
    let _ = c.wait();
}

/// kiln-operator on the host; killed by PID when dropped.
pub struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts kiln-operator with `kubeconfig` (its ServiceAccount's token, as in a cluster), its
/// output in `log`.
pub fn operator(kubeconfig: &Path, log: &Path) -> Operator {
    let bin = imagebuilder::find_device_binary("kiln-operator")
        .expect("kiln-operator not found: run scripts/build-device (scripts/test does)");
    let f = std::fs::File::create(log).unwrap();
    Operator(
        Command::new(bin)
            .arg("run")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube_client=off")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

/// The control-plane image's data directory on the device.
pub const CONTROL_PLANE_DATA: &str = "/var/lib/kiln-control-plane";

/// A kubeconfig for `user` in `groups`, issued on the control-plane guest behind `con` by
/// `kiln-control-plane kubeconfig` (from the cluster's CA), reaching the API at `server`;
/// fetched over the serial console into `out` (mode 0600).
pub fn issue_kubeconfig(
    con: &mut crate::Console,
    user: &str,
    groups: &[&str],
    server: &str,
    out: &Path,
) -> PathBuf {
    let groups: String = groups.iter().map(|g| format!(" --group={g}")).collect();
    let body = con
        .ok(&format!(
            "kiln-control-plane kubeconfig --data-dir={CONTROL_PLANE_DATA} --user={user}{groups} --server={server}"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let start = body.find("apiVersion: v1").expect("a kubeconfig");
    std::fs::write(out, &body[start..]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).unwrap();
    out.to_path_buf()
}

/// A kubeconfig holding a token of the ServiceAccount `namespace/name` (TokenRequest, 2 h), for
/// the API server and CA of `admin`'s kubeconfig: the credentials a Deployment running as that
/// account gets.
pub fn service_account_kubeconfig(admin: &Kubectl, namespace: &str, name: &str, out: &Path) {
    let token = admin.must(&["create", "token", name, "-n", namespace, "--duration=2h"]);
    let field = |key: &str| -> String {
        admin
            .must(&[
                "config",
                "view",
                "--raw",
                "--minify",
                "-o",
                &format!("jsonpath={{.clusters[0].cluster.{key}}}"),
            ])
            .trim()
            .to_string()
    };
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {name}\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {name}, namespace: {namespace}}}\ncurrent-context: c\n",
        field("server"),
        field("certificate-authority-data"),
        token.trim()
    );
    std::fs::write(out, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A Node named `name` with `labels`, Ready as a kubelet would report it (none runs).
pub fn ready_node(k: &Kubectl, name: &str, labels: Value) {
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
            .to_string(),
    );
    // Capacity too: a scheduler places nothing on a node that can hold no pods.
    let room = json!({"cpu": "2", "memory": "2Gi", "pods": "20"});
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "message": "the test plays the kubelet"}],
        "capacity": room, "allocatable": room}});
    k.must(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &ready.to_string(),
    ]);
}

/// Boots the control-plane image `disk` with 2 GiB and the guest's API port 6443 forwarded to
/// the host's 127.0.0.1:`port`; returns once it printed `kiln-ready slot=a version=1.0.0` (the
/// console up to there with it).
pub fn boot_control_plane(disk: &Path, port: u16, limit: Duration) -> (crate::Console, String) {
    let mut cfg = imagebuilder::qemu::VmConfig::for_disk(disk).unwrap();
    cfg.memory_mb = 2048;
    cfg.forwards = vec![imagebuilder::qemu::Forward {
        host: port,
        guest: 6443,
    }];
    let mut c = crate::Console::start(&cfg).unwrap();
    let boot = c
        .expect(
            "kiln-ready slot=a version=1.0.0 name=kiln-control-plane",
            limit,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    (c, boot)
}

/// After an OSUpgrade to `version` completed on `node` (the guest behind `con`): the Node reports
/// `version` and Done and is uncordoned, it was cordoned on the way (`kubelet` saw it), the pod
/// `evicted` (namespace `app`) is gone, and the guest booted slot b and blessed it.
pub fn assert_upgraded(
    k: &Kubectl,
    node: &str,
    version: &str,
    evicted: &str,
    kubelet: &Kubelet,
    con: &mut crate::Console,
) {
    let n: Value = serde_json::from_str(&k.must(&["get", "node", node, "-o", "json"])).unwrap();
    let ann = &n["metadata"]["annotations"];
    assert_eq!(ann["kiln.dev/version"], version);
    assert_eq!(ann["kiln.dev/phase"], "Done");
    assert_ne!(
        n["spec"]["unschedulable"], true,
        "uncordoned after the upgrade"
    );
    assert!(
        *kubelet.cordoned_seen.lock().unwrap(),
        "the Node was cordoned during the upgrade"
    );
    let pods = k.pod_names("app");
    assert!(
        !pods.contains(evicted),
        "the pod {evicted} was evicted: {pods}"
    );
    let s = crate::updater::status(con);
    assert_eq!(s["booted"], "b");
    assert_eq!(
        crate::updater::slot(&s, "b")["state"],
        "good",
        "blessed by mark-good"
    );
}

/// Adds `arg` to the control-plane image's `kiln-control-plane run` service command.
pub fn control_plane_arg(s: &mut imagebuilder::spec::Spec, arg: &str) {
    let svc = s
        .services
        .iter_mut()
        .find(|x| x.name == "control-plane")
        .expect("the control-plane service");
    svc.command.push(' ');
    svc.command.push_str(arg);
}
