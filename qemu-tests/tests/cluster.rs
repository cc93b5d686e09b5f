//! End to end: the default image's kiln-agent in a QEMU guest, connected through the host alias
//! (10.0.2.2) to a real Kubernetes control plane on the host (kiln_testutil::kube) with Kiln's
//! manifests applied as they ship and kiln-operator running with its ServiceAccount's token.
//! One `kubectl apply` of an OSUpgrade v1 → v2 (its bundle pinned by manifest digest) cordons
//! the guest's Node, evicts its pod, stages, flips and reboots it; the new slot is blessed and
//! reported Done, the Node uncordoned, the OSUpgrade Complete. Then a bundle server that answers
//! the v3 URL with another validly signed bundle (4.0.0): kiln-updater refuses it before
//! touching the inactive slot, the node reports Failed with that reason, nothing flips.
//!
//! No kubelet runs: the test plays its part for the pods (Ready, and deleting a pod once
//! evicted), as kiln_testutil::kube describes.

use kiln_testutil::kube::{Cluster, GUEST_HOST_ALIAS};
use qemu_tests::cluster::{assert_upgraded, operator, Kubectl, Kubelet};
use qemu_tests::http::StaticServer;
use qemu_tests::updater::{slot, status};
use qemu_tests::{fixtures, Console};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const NODE: &str = "kiln-default";

fn node_json(c: &Cluster) -> Value {
    serde_json::from_str(&c.must(&["get", "node", NODE, "-o", "json"])).unwrap()
}

fn phase(c: &Cluster, name: &str) -> String {
    let o = c.kubectl(&["get", "osupgrade", name, "-o", "jsonpath={.status.phase}"]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "{what}: not within {} s",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_kubectl_apply_upgrades_the_guest_node_and_a_substituted_bundle_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let c = Cluster::start();
    for f in ["crd.yaml", "rbac.yaml", "agent-policy.yaml"] {
        let p = fixtures::workspace().join("deploy").join(f);
        c.must(&["apply", "-f", p.to_str().unwrap()]);
    }
    c.must(&[
        "wait",
        "--for=condition=Established",
        "crd/osupgrades.kiln.dev",
        "--timeout=60s",
    ]);
    // The guest's Node (a kubelet would register it) and a pod bound to it, of a ReplicaSet
    // with a PodDisruptionBudget the eviction keeps (its other pod runs on another node).
    for (n, labels) in [(NODE, json!({"pool": "kiln"})), ("other", json!({}))] {
        c.apply(
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "labels": labels}})
                .to_string(),
        );
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "reason": "KubeletReady", "message": "the test plays the kubelet"}]}});
        c.must(&[
            "patch",
            "node",
            n,
            "--subresource=status",
            "--type=merge",
            "-p",
            &ready.to_string(),
        ]);
    }
    c.must(&["create", "namespace", "app"]);
    c.apply(&json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": "app"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "kiln.local/none"}]}}}}).to_string());
    c.apply(&json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web", "namespace": "app"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}).to_string());
    let uid = c.must(&[
        "get",
        "replicaset",
        "web",
        "-n",
        "app",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    for (name, n) in [("web-guest", NODE), ("web-other", "other")] {
        c.apply(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "app", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": uid, "controller": true}]},
            "spec": {"nodeName": n, "containers": [{"name": "c", "image": "kiln.local/none"}]}}).to_string());
    }
    let kubelet = Kubelet::start(c.bin.join("kubectl"), c.admin(), NODE, &[NODE, "other"]);

    // The guest's credentials: its own client certificate, the API server at the host alias.
    let kc = c.kubeconfig_at(
        &format!("kiln-agent:{NODE}"),
        Some("kiln:agents"),
        &format!("https://{GUEST_HOST_ALIAS}:{}", c.port),
    );
    let with_agent = |s: &mut imagebuilder::spec::Spec| fixtures::bake_kubeconfig(s, &kc);
    let v1 = fixtures::build_default_with(&work.path().join("v1"), with_agent);
    let www = work.path().join("www");
    for (v, seq, dir) in [("2.0.0", 2, "v2"), ("4.0.0", 4, "v3")] {
        let b = work.path().join(format!("build-{v}"));
        fixtures::build_default_with(&b, |s| {
            with_agent(s);
            s.version = v.into();
        });
        fixtures::dev_bundle(&b, &www.join(dir), seq);
    }
    // What the OSUpgrade pins: v2's manifest, as `kiln bundle` prints its digest.
    let v2_digest = kiln_updater::bundle::expected::manifest_digest(
        &std::fs::read(www.join("v2/manifest.json")).unwrap(),
    );
    let server = StaticServer::start(&www).unwrap();

    let mut con = Console::boot(&v1.disk).unwrap();
    con.expect("kiln-ready slot=a version=1.0.0", BOOT).unwrap();
    con.expect(
        &format!(
            "kiln-agent: connected to https://{GUEST_HOST_ALIAS}:{}",
            c.port
        ),
        BOOT,
    )
    .unwrap();
    wait_for("the agent reporting 1.0.0", Duration::from_secs(60), || {
        node_json(&c)["metadata"]["annotations"]["kiln.dev/version"] == "1.0.0"
    });
    let _op = operator(
        &c.service_account_kubeconfig("kiln-system", "kiln-operator"),
        &work.path().join("operator.log"),
    );

    // 1. v1 -> v2 from one kubectl apply.
    let osu = |name: &str, version: &str, url: &str, digest: Option<&str>| {
        let mut spec = json!({"targetVersion": version, "bundleUrl": url,
            "nodeSelector": {"pool": "kiln"}, "maxUnavailable": "1", "drain": {"timeoutSeconds": 120}});
        if let Some(d) = digest {
            spec["manifestDigest"] = json!(d);
        }
        c.apply(
            &json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "OSUpgrade",
            "metadata": {"name": name}, "spec": spec})
            .to_string(),
        );
    };
    osu("os-2", "2.0.0", &server.guest_url("v2"), Some(&v2_digest));
    con.expect("kiln-agent: staging 2.0.0", BOOT).unwrap();
    con.expect("kiln-agent: drained (1 evicted", BOOT).unwrap();
    con.expect(
        "kiln-agent: switching to the staged slot and rebooting",
        BOOT,
    )
    .unwrap();
    con.expect("kiln-ready slot=b version=2.0.0", BOOT).unwrap();
    wait_for("the OSUpgrade Complete", Duration::from_secs(240), || {
        phase(&c, "os-2") == "Complete"
    });
    let admin = Kubectl::new(&c.admin());
    assert_upgraded(&admin, NODE, "2.0.0", "web-guest", &kubelet, &mut con);
    let pods = admin.pod_names("app");
    assert!(pods.contains("web-other"), "{pods}");
    let table = c.must(&["get", "osupgrades"]);
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("os-2") && l.contains("Complete")),
        "{table}"
    );

    // 2. The v3 URL answers with another validly signed bundle (4.0.0): refused before the
    // inactive slot (a, still 1.0.0) is touched; nothing flips.
    osu("os-3", "3.0.0", &server.guest_url("v3"), None);
    con.expect("kiln-agent: staging 3.0.0", BOOT).unwrap();
    wait_for("the node Failed", Duration::from_secs(120), || {
        node_json(&c)["metadata"]["annotations"]["kiln.dev/phase"] == "Failed"
    });
    let n = node_json(&c);
    let msg = n["metadata"]["annotations"]["kiln.dev/message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("the bundle is version 4.0.0, not the expected 3.0.0"),
        "{msg}"
    );
    wait_for("the OSUpgrade Halted", Duration::from_secs(60), || {
        phase(&c, "os-3") == "Halted"
    });
    assert_ne!(
        n["spec"]["unschedulable"], true,
        "never cordoned for a refused bundle"
    );
    let s = status(&mut con);
    assert_eq!(
        (s["booted"].as_str(), s["next_boot"].as_str()),
        (Some("b"), Some("b"))
    );
    assert_eq!(slot(&s, "a")["version"], "1.0.0", "slot a untouched");
    assert_eq!(slot(&s, "a")["state"], "good");
    assert!(!con.transcript().contains("version=4.0.0"));
    drop(kubelet);
}
