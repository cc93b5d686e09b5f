//! A cluster of Kiln nodes, two QEMU guests: the control-plane image (examples/control-plane,
//! kiln-control-plane) and a worker, the default image, whose kiln-agent reaches the API server
//! through the host (10.0.2.2, the host alias of user-mode networking, then `kiln run
//! --forward`'s hostfwd on the host's 127.0.0.1 into the control-plane guest). The worker's
//! credentials are issued on the control-plane guest from the cluster's CA
//! (`kiln-control-plane kubeconfig`, user `kiln-agent:NODE`); Kiln's manifests are applied as
//! they ship and kiln-operator runs on the host with its ServiceAccount's token, as it would in a
//! Deployment. The worker's Node reports healthy through the agent's heartbeat; one OSUpgrade
//! applied to the control plane upgrades the worker v1 → v2 end to end.
//!
//! No kubelet runs on either guest: the test registers the worker's Node and plays the
//! kubelet's part for pods (qemu_tests::cluster::Kubelet), as in cluster.rs.

use kiln_testutil::kube::{free_port, GUEST_HOST_ALIAS};
use qemu_tests::cluster::{
    assert_upgraded, boot_control_plane, control_plane_arg, issue_kubeconfig, operator, ready_node,
    service_account_kubeconfig, Kubectl, Kubelet,
};
use qemu_tests::http::StaticServer;
use qemu_tests::{fixtures, Console};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const CONTROL_PLANE_BOOT: Duration = Duration::from_secs(900);
const BOOT: Duration = Duration::from_secs(300);
const NODE: &str = "kiln-default";

/// Polls `f` until it holds; on a timeout the panic shows the cluster's nodes and pods.
fn wait_for(k: &Kubectl, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            let o = k.run(&["get", "nodes,pods", "-A", "-o", "wide"], None);
            panic!(
                "{what}: not within {} s\n{}",
                limit.as_secs(),
                String::from_utf8_lossy(&o.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn node_json(k: &Kubectl) -> Value {
    serde_json::from_str(&k.must(&["get", "node", NODE, "-o", "json"])).unwrap()
}

#[test]
fn an_osupgrade_on_a_kiln_control_plane_upgrades_a_kiln_worker_through_the_host() {
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);

    // The control plane, with the host alias among its serving certificate's names: the
    // worker reaches it as https://10.0.2.2:PORT.
    let cp_build = fixtures::build_example_with(
        Path::new("examples/control-plane/image.toml"),
        &w("cp"),
        |s| control_plane_arg(s, &format!("--tls-san={GUEST_HOST_ALIAS}")),
    );
    let port = free_port();
    let (mut cp, _) = boot_control_plane(&cp_build.disk, port, CONTROL_PLANE_BOOT);

    let admin = issue_kubeconfig(
        &mut cp,
        "kiln-test-admin",
        &["system:masters"],
        &format!("https://127.0.0.1:{port}"),
        &w("admin.kubeconfig"),
    );
    let k = Kubectl::new(&admin);
    for f in ["crd.yaml", "rbac.yaml", "agent-policy.yaml"] {
        let p = fixtures::workspace().join("deploy").join(f);
        k.must(&["apply", "-f", p.to_str().unwrap()]);
    }
    k.must(&[
        "wait",
        "--for=condition=Established",
        "crd/osupgrades.kiln.dev",
        "--timeout=120s",
    ]);

    // The worker's Node (a kubelet would register it), a second node, and a ReplicaSet of two
    // pods, one per node (anti-affinity), with a PodDisruptionBudget the eviction keeps: the
    // control plane's controller manager makes the pods and its scheduler places them.
    ready_node(
        &k,
        NODE,
        json!({"pool": "kiln", "kubernetes.io/hostname": NODE}),
    );
    ready_node(&k, "other", json!({"kubernetes.io/hostname": "other"}));
    let kubelet = Kubelet::start(k.bin.clone(), admin.clone(), NODE, &[NODE, "other"]);
    k.must(&["create", "namespace", "app"]);
    k.apply(&json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": "app"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}},
                "containers": [{"name": "c", "image": "kiln.local/none"}]}}}}).to_string());
    k.apply(&json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web", "namespace": "app"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}).to_string());
    let mut on_worker = String::new();
    wait_for(
        &k,
        "a web pod scheduled on each node",
        Duration::from_secs(180),
        || {
            let out = k.must(&[
                "get",
                "pods",
                "-n",
                "app",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
            ]);
            let placed: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once(' ')).collect();
            if let Some((name, _)) = placed.iter().find(|(_, n)| *n == NODE) {
                on_worker = name.to_string();
            }
            placed.iter().any(|(_, n)| *n == NODE) && placed.iter().any(|(_, n)| *n == "other")
        },
    );

    // The worker's credentials, from the cluster's CA on the control-plane guest.
    let agent_kc = issue_kubeconfig(
        &mut cp,
        &format!("kiln-agent:{NODE}"),
        &["kiln:agents"],
        &format!("https://{GUEST_HOST_ALIAS}:{port}"),
        &w("agent.kubeconfig"),
    );
    let with_agent = |s: &mut imagebuilder::spec::Spec| fixtures::bake_kubeconfig(s, &agent_kc);
    let v1 = fixtures::build_default_with(&w("v1"), with_agent);
    fixtures::build_default_with(&w("v2"), |s| {
        with_agent(s);
        s.version = "2.0.0".into();
    });
    fixtures::dev_bundle(&w("v2"), &w("www/v2"), 2);
    let v2_digest = kiln_updater::bundle::expected::manifest_digest(
        &std::fs::read(w("www/v2/manifest.json")).unwrap(),
    );
    let server = StaticServer::start(&w("www")).unwrap();

    let mut worker = Console::boot(&v1.disk).unwrap();
    worker
        .expect("kiln-ready slot=a version=1.0.0 name=kiln-default", BOOT)
        .unwrap_or_else(|e| panic!("{e}\n{}", worker.transcript()));
    worker
        .expect(
            &format!("kiln-agent: connected to https://{GUEST_HOST_ALIAS}:{port}"),
            BOOT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", worker.transcript()));
    // The agent's report and heartbeat on its Node, read from the control plane.
    wait_for(
        &k,
        "the worker reporting 1.0.0, healthy",
        Duration::from_secs(120),
        || {
            let ann = &node_json(&k)["metadata"]["annotations"];
            ann["kiln.dev/version"] == "1.0.0"
                && ann["kiln.dev/health"] == "healthy"
                && ann["kiln.dev/heartbeat"].is_string()
        },
    );

    let sa = w("operator.kubeconfig");
    service_account_kubeconfig(&k, "kiln-system", "kiln-operator", &sa);
    let _op = operator(&sa, &w("operator.log"));

    k.apply(
        &json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "OSUpgrade", "metadata": {"name": "os-2"},
            "spec": {"targetVersion": "2.0.0", "bundleUrl": server.guest_url("v2"), "manifestDigest": v2_digest,
                "nodeSelector": {"pool": "kiln"}, "maxUnavailable": "1", "drain": {"timeoutSeconds": 120}}})
        .to_string(),
    );
    for step in [
        "kiln-agent: staging 2.0.0",
        "kiln-agent: drained (1 evicted",
        "kiln-agent: switching to the staged slot and rebooting",
        "kiln-ready slot=b version=2.0.0",
    ] {
        worker.expect(step, BOOT).unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\noperator: {}",
                worker.transcript(),
                std::fs::read_to_string(w("operator.log")).unwrap_or_default()
            )
        });
    }
    wait_for(
        &k,
        "the OSUpgrade Complete",
        Duration::from_secs(300),
        || {
            k.must(&["get", "osupgrade", "os-2", "-o", "jsonpath={.status.phase}"])
                .trim()
                == "Complete"
        },
    );
    assert_upgraded(&k, NODE, "2.0.0", &on_worker, &kubelet, &mut worker);
    // The control plane served throughout, on its first boot.
    assert_eq!(k.must(&["get", "--raw=/readyz"]).trim(), "ok");
    assert!(!cp.transcript().contains("kiln-ready slot=b"));
    drop(kubelet);
}
