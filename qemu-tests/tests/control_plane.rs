//! The control-plane image (examples/control-plane: kiln-control-plane baked as a service) in
//! QEMU, reached from the host through `kiln run --forward`'s hostfwd on 127.0.0.1 with upstream
//! kubectl, as a user would:
//! - it boots to `kiln-ready` only once its API server answers `/readyz`; Kiln's CRD and RBAC
//!   apply; a kubeconfig issued in the guest by `kiln-control-plane kubeconfig` works from the
//!   host;
//! - it updates itself A/B v1 → v2: after the reboot into slot B the same CA serves and the
//!   objects made before (an OSUpgrade, a worker's Node) are still there;
//! - a v3 whose control plane never becomes ready (its API server pointed at a dead etcd port)
//!   is never blessed: the boot counter falls back to v2, which serves again.

use kiln_testutil::kube;
use qemu_tests::cluster::{
    boot_control_plane, control_plane_arg, issue_kubeconfig, Kubectl, CONTROL_PLANE_DATA as DATA,
};
use qemu_tests::http::StaticServer;
use qemu_tests::updater::{install_no_reboot, slot, status};
use qemu_tests::{fixtures, Console};
use std::path::Path;
use std::time::Duration;

const SPEC: &str = "examples/control-plane/image.toml";
/// To `kiln-ready` under TCG: firmware, kernel, then the control plane's first start.
const BOOT: Duration = Duration::from_secs(900);

fn ca_digest(c: &mut Console) -> String {
    let out = c.ok(&format!("sha256sum {DATA}/pki/ca.crt")).unwrap();
    out.split_whitespace()
        .find(|w| w.len() == 64)
        .unwrap_or_else(|| panic!("no digest in {out:?}"))
        .to_string()
}

const WORKER: &str = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"kiln-worker-1","labels":{"node-role.kubernetes.io/worker":""}}}"#;

#[test]
fn the_control_plane_image_serves_through_a_forward_updates_ab_keeping_its_cluster_and_an_unready_update_rolls_back(
) {
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);
    let v1 = fixtures::build_example_with(Path::new(SPEC), &w("v1"), |_| {});
    fixtures::build_example_with(Path::new(SPEC), &w("v2"), |s| s.version = "2.0.0".into());
    // v3: the API server is pointed at a port where no etcd listens, so /readyz never answers
    // ok. A shorter health timeout than the image's keeps the test's fallback quick.
    fixtures::build_example_with(Path::new(SPEC), &w("v3"), |s| {
        s.version = "3.0.0".into();
        s.update.health_timeout_secs = 150;
        control_plane_arg(s, "--apiserver-arg=--etcd-servers=http://127.0.0.1:9");
    });
    fixtures::dev_bundle(&w("v2"), &w("www/v2"), 2);
    fixtures::dev_bundle(&w("v3"), &w("www/v3"), 3);
    let server = StaticServer::start(&w("www")).unwrap();

    let port = kube::free_port();
    let (mut c, boot) = boot_control_plane(&v1.disk, port, BOOT);
    // Ready means the API answered: the control plane's own line came first.
    let cp = boot
        .find("kiln-control-plane: ready")
        .unwrap_or_else(|| panic!("no ready line before kiln-ready:\n{boot}"));
    assert!(cp < boot.find("kiln-ready slot=a").unwrap());

    // From the host, through the forward, as the administrator: a kubeconfig issued in the
    // guest from the cluster's CA, for the forward's address.
    let admin = issue_kubeconfig(
        &mut c,
        "kiln-test-admin",
        &["system:masters"],
        &format!("https://127.0.0.1:{port}"),
        &w("admin.kubeconfig"),
    );
    let k = Kubectl::new(&admin);
    assert_eq!(k.must(&["get", "--raw=/readyz"]).trim(), "ok");
    let ws = fixtures::workspace();
    k.must(&[
        "apply",
        "-f",
        ws.join("deploy/crd.yaml").to_str().unwrap(),
        "-f",
        ws.join("deploy/rbac.yaml").to_str().unwrap(),
    ]);
    k.apply(WORKER);
    k.must(&[
        "apply",
        "-f",
        ws.join("deploy/osupgrade-example.yaml").to_str().unwrap(),
    ]);
    let ca = ca_digest(&mut c);

    // A/B: v2 on slot B, the cluster's state on persist carried across.
    let (rc, out) = install_no_reboot(&mut c, &server.guest_url("v2"));
    assert_eq!(rc, 0, "{out}");
    c.send_line("reboot").unwrap();
    c.expect("kiln-ready slot=b version=2.0.0", BOOT)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    let s = status(&mut c);
    assert_eq!(s["booted"], "b");
    assert_eq!(slot(&s, "b")["state"], "good");
    assert_eq!(ca_digest(&mut c), ca, "v2 made a new CA");
    // The kubeconfig issued on v1 still works: same CA, same cluster.
    assert_eq!(k.must(&["get", "--raw=/readyz"]).trim(), "ok");
    assert_eq!(
        k.must(&["get", "osupgrade", "-o", "name"]).trim(),
        "osupgrade.kiln.dev/workers-2.0.0"
    );
    assert_eq!(
        k.must(&["get", "node", "kiln-worker-1", "-o", "name"])
            .trim(),
        "node/kiln-worker-1"
    );

    // v3 never becomes ready: never blessed, and the loader falls back to v2 by itself.
    c.send_line(&format!(
        "kiln-updater install --tries 1 {}",
        server.guest_url("v3")
    ))
    .unwrap();
    c.expect("kiln-updater: slot a staged", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    c.expect("kiln-init: kiln-control-plane 3.0.0 slot a", BOOT)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    let fallback = c
        .expect("kiln-ready slot=b version=2.0.0", Duration::from_secs(1200))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.transcript()));
    assert!(
        fallback.contains("kiln-not-ready: the pending slot is unhealthy"),
        "{fallback}"
    );
    assert!(
        fallback.contains("slot a (3.0.0) failed to boot; rolled back to slot b"),
        "{fallback}"
    );
    assert!(!fallback.contains("kiln-ready slot=a"), "{fallback}");
    let s = status(&mut c);
    assert_eq!(s["booted"], "b");
    assert_eq!(s["rolled_back_from"], "3.0.0");
    assert_eq!(slot(&s, "b")["state"], "good");
    assert_eq!(k.must(&["get", "--raw=/readyz"]).trim(), "ok");
    assert_eq!(
        k.must(&["get", "osupgrade", "-o", "name"]).trim(),
        "osupgrade.kiln.dev/workers-2.0.0"
    );
    assert_eq!(ca_digest(&mut c), ca);
}
