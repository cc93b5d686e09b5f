//! The node agent against the tower-test mock of the API server (see common/), with a fake
//! device (the slots) recording what it was asked: a drain that a PodDisruptionBudget refuses
//! twice, a drain timeout (uncordon, report, no flip), a reboot in the middle of a drain, and,
//! in paused tokio time, the reconnect backoff and the heartbeat period.

mod common;

use common::*;
use kiln_agent::crd::DrainPolicy;
use kiln_agent::daemon::{Agent, Device, DeviceError};
use kiln_agent::drain;
use kiln_agent::node::{Event, State, StateFile, Target};
use kiln_agent::protocol::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Default)]
struct FakeDevice {
    calls: Arc<Mutex<Vec<String>>>,
    running: Arc<Mutex<(String, bool)>>,
}

impl FakeDevice {
    fn running(v: &str, blessed: bool) -> FakeDevice {
        let d = FakeDevice::default();
        *d.running.lock().unwrap() = (v.into(), blessed);
        d
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Device for FakeDevice {
    async fn running(&self) -> Result<(String, bool), DeviceError> {
        Ok(self.running.lock().unwrap().clone())
    }
    async fn stage(&self, t: &Target) -> Result<(), DeviceError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("stage {}", t.bundle_url));
        Ok(())
    }
    async fn flip_and_reboot(&self) -> Result<(), DeviceError> {
        self.calls.lock().unwrap().push("flip".into());
        Ok(())
    }
}

const NODE: &str = "/api/v1/nodes/n1";
const API: &str = "https://10.0.0.1:6443";
const PODS: &str = "/api/v1/pods";
const EVICT: &str = "/api/v1/namespaces/app/pods/web-0/eviction";

fn pods() -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        {"metadata": {"name": "web-0", "namespace": "app", "uid": "u-web",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d", "uid": "rs", "controller": true}]},
         "spec": {"nodeName": "n1", "containers": []}},
        {"metadata": {"name": "ds-1", "namespace": "kube-system",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "d", "controller": true}]},
         "spec": {"nodeName": "n1", "containers": []}},
        {"metadata": {"name": "kube-apiserver-n1", "namespace": "kube-system",
            "annotations": {"kubernetes.io/config.mirror": "x"}},
         "spec": {"nodeName": "n1", "containers": []}}]})
}

fn pdb_refusal() -> Value {
    status_failure(
        429,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    )
}

fn target() -> Target {
    Target {
        version: "2.0.0".into(),
        bundle_url: "http://repo/2.0.0".into(),
        osupgrade: Some("os-2".into()),
        manifest_digest: None,
    }
}

/// The list of the node's pods; asserts the field selector.
async fn serve_pod_list(srv: &mut ApiServer) {
    let c = srv.expect("GET", PODS).await;
    assert_eq!(c.query, "&fieldSelector=spec.nodeName%3Dn1");
    c.reply(200, pods());
}

#[tokio::test(start_paused = true)]
async fn drain_with_a_pdb_that_refuses_twice_then_allows() {
    let (client, mut srv) = mock();
    let server = tokio::spawn(async move {
        serve_pod_list(&mut srv).await;
        let mut times = vec![];
        for code in [429, 429, 201] {
            let c = srv.expect("POST", EVICT).await;
            times.push(Instant::now());
            assert_eq!(c.body["metadata"]["name"], "web-0");
            assert_eq!(c.body["kind"], "Eviction");
            // Named by UID as well (deploy/agent-policy.yaml requires it of agents).
            assert_eq!(c.body["deleteOptions"]["preconditions"]["uid"], "u-web");
            if code == 429 {
                c.reply(429, pdb_refusal());
            } else {
                c.reply(201, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}));
            }
        }
        // Terminating for a second, then gone.
        let c = srv.expect("GET", "/api/v1/namespaces/app/pods/web-0").await;
        c.reply(200, json!({"metadata": {"name": "web-0", "namespace": "app", "uid": "u-web"}, "spec": {"containers": []}}));
        let c = srv.expect("GET", "/api/v1/namespaces/app/pods/web-0").await;
        c.reply(
            404,
            status_failure(404, "NotFound", "pods \"web-0\" not found"),
        );
        times
    });
    let out = drain::drain(&client, "n1", &DrainPolicy::default())
        .await
        .unwrap();
    let times = server.await.unwrap();
    assert_eq!(out.evicted, vec!["app/web-0"]);
    assert_eq!(
        out.skipped,
        vec!["kube-system/ds-1", "kube-system/kube-apiserver-n1"]
    );
    // Retried every 5 s, as kubectl drain does.
    assert_eq!(times[1] - times[0], drain::RETRY);
    assert_eq!(times[2] - times[1], drain::RETRY);
}

#[tokio::test]
async fn unmanaged_pods_fail_the_drain_unless_forced() {
    let (client, mut srv) = mock();
    let server = tokio::spawn(async move {
        let c = srv.expect("GET", PODS).await;
        c.reply(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            {"metadata": {"name": "bare", "namespace": "app"}, "spec": {"containers": []}}]}),
        );
    });
    let e = drain::drain(&client, "n1", &DrainPolicy::default())
        .await
        .unwrap_err();
    server.await.unwrap();
    assert_eq!(
        e.to_string(),
        "app/bare is not managed by a controller (drain.force deletes it)"
    );
}

/// Serves a report: the annotations, then the node condition. Returns the phase reported.
async fn serve_report(srv: &mut ApiServer) -> (String, String) {
    let c = srv.expect("PATCH", NODE).await;
    assert_eq!(c.content_type, "application/merge-patch+json");
    let a = c.body["metadata"]["annotations"].clone();
    assert_eq!(a[PHASE_TARGET], "2.0.0");
    c.reply(200, json!({"metadata": {"name": "n1"}}));
    let c = srv.expect("PATCH", &format!("{NODE}/status")).await;
    assert_eq!(c.content_type, "application/strategic-merge-patch+json");
    assert_eq!(c.body["status"]["conditions"][0]["type"], CONDITION);
    assert_eq!(c.body["status"]["conditions"][0]["reason"], a[PHASE]);
    c.reply(200, json!({"metadata": {"name": "n1"}}));
    (
        a[PHASE].as_str().unwrap().to_string(),
        a[MESSAGE].as_str().unwrap().to_string(),
    )
}

/// What an agent resuming a drain asks (after a boot in `Draining`): the report, its node (still
/// cordoned by Kiln), the cordon again, the OSUpgrade's drain policy (gone: the defaults).
async fn serve_drain_again(srv: &mut ApiServer) {
    assert_eq!(serve_report(srv).await.0, "Draining");
    srv.expect("GET", NODE)
        .await
        .reply(200, node_json(true, true));
    srv.expect("PATCH", NODE).await.ok_echo();
    let c = srv
        .expect("GET", "/apis/kiln.dev/v1alpha1/osupgrades/os-2")
        .await;
    c.reply(404, status_failure(404, "NotFound", "not found"));
}

/// The agent is told it booted, still on 1.0.0 (blessed).
async fn boot_on_1_0_0(agent: &mut Agent<FakeDevice>) -> Result<usize, kiln_agent::daemon::Error> {
    agent
        .apply(Event::Booted {
            version: "1.0.0".into(),
            blessed: true,
        })
        .await
}

fn node_json(unschedulable: bool, kiln_cordon: bool) -> Value {
    let mut n = json!({"metadata": {"name": "n1", "annotations": {}}, "spec": {"unschedulable": unschedulable}});
    if kiln_cordon {
        n["metadata"]["annotations"][CORDONED] = json!("true");
    }
    n
}

/// An agent on node n1 running 1.0.0 (blessed) whose committed state is `state`.
fn agent_in(state: State) -> (tempfile::TempDir, Agent<FakeDevice>, ApiServer, FakeDevice) {
    let d = tempfile::tempdir().unwrap();
    let file = StateFile::new(&d.path().join("agent.json"));
    file.commit(&state).unwrap();
    let (client, srv) = mock();
    let dev = FakeDevice::running("1.0.0", true);
    let agent = Agent::new(client, "n1", dev.clone(), file, API, "boot-1").unwrap();
    (d, agent, srv, dev)
}

#[tokio::test(start_paused = true)]
async fn a_drain_timeout_uncordons_and_reports_without_flipping() {
    let (_d, mut agent, mut srv, dev) = agent_in(State::Staging(target()));
    let server = tokio::spawn(async move {
        assert_eq!(serve_report(&mut srv).await.0, "Draining");
        // Cordon: not cordoned yet, so Kiln cordons and marks it.
        srv.expect("GET", NODE)
            .await
            .reply(200, node_json(false, false));
        let c = srv.expect("PATCH", NODE).await;
        assert_eq!(
            c.body,
            json!({"metadata": {"annotations": {CORDONED: "true"}}, "spec": {"unschedulable": true}})
        );
        c.reply(200, node_json(true, true));
        // The drain policy from the OSUpgrade: 20 s.
        let c = srv
            .expect("GET", "/apis/kiln.dev/v1alpha1/osupgrades/os-2")
            .await;
        c.reply(200, json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "OSUpgrade", "metadata": {"name": "os-2"},
            "spec": {"targetVersion": "2.0.0", "bundleUrl": "http://repo/2.0.0", "drain": {"timeoutSeconds": 20}}}));
        serve_pod_list(&mut srv).await;
        let start = Instant::now();
        let mut refusals = 0;
        loop {
            let c = srv.next().await;
            if c.path != EVICT {
                // The drain gave up: Kiln's cordon is undone.
                assert_eq!(c.line(), format!("GET {NODE}"));
                assert!(Instant::now() - start <= Duration::from_secs(20));
                c.reply(200, node_json(true, true));
                break;
            }
            refusals += 1;
            c.reply(429, pdb_refusal());
        }
        assert_eq!(refusals, 5, "evictions at 0, 5, 10, 15 and 20 s");
        let c = srv.expect("PATCH", NODE).await;
        assert_eq!(
            c.body,
            json!({"metadata": {"annotations": {CORDONED: null}}, "spec": {"unschedulable": false}})
        );
        c.reply(200, node_json(false, false));
        let (phase, msg) = serve_report(&mut srv).await;
        assert_eq!(phase, "Failed");
        msg
    });
    agent.apply(Event::Staged).await.unwrap();
    let msg = server.await.unwrap();
    assert_eq!(
        msg,
        "drain failed: timed out after 20 s evicting app/web-0: refused by a PodDisruptionBudget: \
         Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert!(dev.calls().is_empty(), "never flipped: {:?}", dev.calls());
    assert!(matches!(agent.state, State::Failed { .. }));
    assert!(matches!(agent.file.load().unwrap(), State::Failed { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_reboot_mid_drain_resumes_the_drain_then_flips() {
    // The node rebooted (power cut) while draining: the committed state is Draining; the new
    // agent reports, cordons (its own cordon is still there), drains again, then flips.
    let (_d, mut agent, mut srv, dev) = agent_in(State::Draining(target()));
    let server = tokio::spawn(async move {
        serve_drain_again(&mut srv).await;
        let c = srv.expect("GET", PODS).await;
        c.reply(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        );
        assert_eq!(serve_report(&mut srv).await.0, "Rebooting");
    });
    boot_on_1_0_0(&mut agent).await.unwrap();
    server.await.unwrap();
    assert_eq!(dev.calls(), vec!["flip"]);
    assert_eq!(agent.file.load().unwrap(), State::Rebooting(target()));
}

#[tokio::test(start_paused = true)]
async fn unreachable_api_backs_off_from_1_to_60_s_then_heartbeats_every_30_s() {
    let d = tempfile::tempdir().unwrap();
    let file = StateFile::new(&d.path().join("agent.json"));
    let (client, mut srv) = mock();
    let dev = FakeDevice::running("1.0.0", true);
    let mut agent = Agent::new(client, "n1", dev, file, API, "boot-1").unwrap();
    let runner = tokio::spawn(async move { agent.run().await });
    let mut attempts = vec![];
    for _ in 0..9 {
        let c = srv.expect("GET", NODE).await;
        attempts.push(Instant::now());
        c.fail("connection refused");
    }
    let gaps: Vec<u64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(gaps, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    // The API comes back: the node is read, then watched; heartbeats every 30 s beside.
    srv.expect("GET", NODE).await.reply(
        200,
        json!({"metadata": {"name": "n1", "resourceVersion": "7"}}),
    );
    let mut held = vec![]; // the watch is left open, as a quiet API server does
    let mut beats = vec![];
    let (mut reports, mut conditions) = (0, 0);
    while beats.len() < 3 {
        let c = srv.next().await;
        if c.method == "GET" && c.path == "/api/v1/nodes" {
            assert!(c.query.contains("watch=true"), "{}", c.query);
            assert!(
                c.query.contains("fieldSelector=metadata.name%3Dn1"),
                "{}",
                c.query
            );
            assert!(c.query.contains("resourceVersion=7"), "{}", c.query);
            held.push(c);
            continue;
        }
        if c.line() == format!("PATCH {NODE}/status") {
            assert_eq!(c.body["status"]["conditions"][0]["reason"], "Idle");
            conditions += 1;
            c.ok_echo();
            continue;
        }
        assert_eq!(c.line(), format!("PATCH {NODE}"));
        if c.body["metadata"]["annotations"][PHASE].is_string() {
            // An idle agent tells the operator what it runs.
            assert_eq!(c.body["metadata"]["annotations"][PHASE], "Idle");
            assert_eq!(c.body["metadata"]["annotations"][VERSION], "1.0.0");
            reports += 1;
            c.ok_echo();
            continue;
        }
        assert_eq!(c.body["metadata"]["annotations"][HEALTH], "healthy");
        assert!(c.body["metadata"]["annotations"][HEARTBEAT].is_string());
        beats.push(Instant::now());
        c.ok_echo();
    }
    assert_eq!(held.len(), 1);
    assert_eq!((reports, conditions), (1, 1));
    assert_eq!(beats[1] - beats[0], HEARTBEAT_INTERVAL);
    assert_eq!(beats[2] - beats[1], HEARTBEAT_INTERVAL);
    runner.abort();
}

#[tokio::test(start_paused = true)]
async fn an_agent_restarted_in_the_same_boot_while_rebooting_flips_again() {
    // The agent process died after committing Rebooting, before the machine rebooted, and was
    // started again: same boot id, so no boot happened and nothing rolled back; it reports
    // Rebooting and asks for the flip and reboot again (kiln-updater activate is idempotent).
    let d = tempfile::tempdir().unwrap();
    let file = StateFile::new(&d.path().join("agent.json"));
    file.commit(&State::Rebooting(target())).unwrap();
    file.record_boot("boot-1").unwrap();
    let (client, mut srv) = mock();
    let dev = FakeDevice::running("1.0.0", true);
    let mut agent = Agent::new(client, "n1", dev.clone(), file, API, "boot-1").unwrap();
    assert!(!agent.new_boot());
    let runner = tokio::spawn(async move { agent.run().await });
    let mut n = node_json(true, true);
    n["metadata"]["resourceVersion"] = json!("7");
    srv.expect("GET", NODE).await.reply(200, n);
    let mut phases = vec![];
    loop {
        let c = srv.next().await;
        if c.method == "GET" && c.path == "/api/v1/nodes" {
            break; // watching: the restart's work is done
        }
        if c.line() == format!("PATCH {NODE}") {
            if let Some(p) = c.body["metadata"]["annotations"][PHASE].as_str() {
                phases.push(p.to_string());
            }
        }
        c.ok_echo();
    }
    runner.abort();
    assert_eq!(phases, ["Rebooting"]);
    assert_eq!(dev.calls(), ["flip"]);

    // A new boot id is a boot: the state machine is told (here: still 1.0.0, a rollback).
    let file = StateFile::new(&d.path().join("agent.json"));
    let (client, _srv) = mock();
    let agent = Agent::new(client, "n1", dev, file, API, "boot-2").unwrap();
    assert!(agent.new_boot());
}

#[tokio::test(start_paused = true)]
async fn a_pod_list_the_api_forbids_fails_the_drain_and_uncordons() {
    // 403 on the pod list (the agent's role lacks a verb) will not change by retrying: the
    // drain fails now, the node is given back, nothing flips. A 5xx would be retried instead.
    let (_d, mut agent, mut srv, dev) = agent_in(State::Draining(target()));
    let server = tokio::spawn(async move {
        serve_drain_again(&mut srv).await;
        srv.expect("GET", PODS).await.reply(
            403,
            status_failure(
                403,
                "Forbidden",
                "pods is forbidden: User \"n1\" cannot list resource \"pods\"",
            ),
        );
        // Uncordon (Kiln's cordon is there), then the report.
        srv.expect("GET", NODE)
            .await
            .reply(200, node_json(true, true));
        let c = srv.expect("PATCH", NODE).await;
        assert_eq!(c.body["spec"]["unschedulable"], false);
        c.reply(200, node_json(false, false));
        serve_report(&mut srv).await
    });
    boot_on_1_0_0(&mut agent).await.unwrap();
    let (phase, message) = server.await.unwrap();
    assert_eq!(phase, "Failed");
    assert!(
        message.starts_with("drain failed: the API server refused to list the node's pods:")
            && message.contains("cannot list resource"),
        "{message}"
    );
    assert!(dev.calls().is_empty(), "{:?}", dev.calls());
    assert!(matches!(agent.file.load().unwrap(), State::Failed { .. }));

    // The same with a 503: an error for the session to retry, the node stays in Draining.
    let (_d, mut agent, mut srv, _dev) = agent_in(State::Draining(target()));
    let server = tokio::spawn(async move {
        serve_drain_again(&mut srv).await;
        srv.expect("GET", PODS).await.reply(
            503,
            status_failure(503, "ServiceUnavailable", "etcd is down"),
        );
    });
    let r = boot_on_1_0_0(&mut agent).await;
    server.await.unwrap();
    assert!(r.is_err());
    assert_eq!(agent.file.load().unwrap(), State::Draining(target()));
}
