//! The operator's reconcile against the tower-test mock of the API server (see common/): the
//! exact requests of a rollout of 5 nodes with maxUnavailable 2, a failing node, a closed
//! maintenance window, an operator restarted mid-rollout, and an invalid spec.

mod common;

use common::*;
use kiln_agent::crd::{MaintenanceWindow, OSUpgrade, OSUpgradeSpec};
use kiln_agent::operator::{reconcile, Outcome};
use kiln_agent::protocol::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Tuesday 2026-11-24 12:00 UTC.
const NOW: i64 = 1_795_392_000 + 86_400 + 12 * 3600;
const LIST: &str = "/api/v1/nodes";
const STATUS: &str = "/apis/kiln.dev/v1alpha1/osupgrades/os-2/status";

fn osu(max: &str) -> OSUpgrade {
    let mut o = OSUpgrade::new(
        "os-2",
        OSUpgradeSpec {
            target_version: "2.0.0".into(),
            bundle_url: "http://repo/2.0.0".into(),
            node_selector: BTreeMap::from([("pool".into(), "workers".into())]),
            max_unavailable: max.into(),
            drain: Default::default(),
            manifest_digest: None,
            maintenance_window: None,
        },
    );
    o.status = None;
    o
}

/// A node as its agent reports it: `(name, running version, target, phase)`.
fn node(name: &str, version: &str, target: Option<&str>, phase: Option<&str>) -> Value {
    let mut a = json!({VERSION: version, HEARTBEAT: rfc3339(NOW - 10), HEALTH: "healthy"});
    if let Some(t) = target {
        a[TARGET_VERSION] = json!(t);
        a[BUNDLE_URL] = json!(format!("http://repo/{t}"));
    }
    if let (Some(t), Some(p)) = (target, phase) {
        a[PHASE] = json!(p);
        a[PHASE_TARGET] = json!(t);
    }
    json!({"metadata": {"name": name, "labels": {"pool": "workers"}, "annotations": a},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

fn list(nodes: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": nodes})
}

/// Serves one reconcile: the node list, then asserts the target patches of `assign` and, when
/// `status` is expected, the status patch (returned).
async fn serve(
    srv: &mut ApiServer,
    nodes: Vec<Value>,
    assign: &[&str],
    status: bool,
) -> Option<Value> {
    let c = srv.expect("GET", LIST).await;
    assert_eq!(c.query, "&labelSelector=pool%3Dworkers");
    c.reply(200, list(nodes));
    for n in assign {
        let c = srv.expect("PATCH", &format!("{LIST}/{n}")).await;
        assert_eq!(c.content_type, "application/merge-patch+json");
        assert_eq!(
            c.body,
            json!({"metadata": {"annotations": {TARGET_VERSION: "2.0.0",
                BUNDLE_URL: "http://repo/2.0.0", OSUPGRADE: "os-2"}}})
        );
        c.reply(200, json!({"metadata": {"name": n}}));
    }
    if !status {
        return None;
    }
    let c = srv.expect("PATCH", STATUS).await;
    let s = c.body["status"].clone();
    c.reply(
        200,
        json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "OSUpgrade",
        "metadata": {"name": "os-2"}, "spec": {"targetVersion": "2.0.0", "bundleUrl": "x"}}),
    );
    Some(s)
}

/// Runs `reconcile` while `server` plays the API; the server's assertions win.
async fn run<F>(o: &OSUpgrade, now: i64, server: F) -> Outcome
where
    F: FnOnce(ApiServer) -> tokio::task::JoinHandle<()>,
{
    let (client, srv) = mock();
    let h = server(srv);
    let out = reconcile(&client, o, now).await;
    h.await.expect("the API server's expectations");
    out.expect("reconcile")
}

fn counts(s: &Value) -> (u64, u64, u64, u64, &str) {
    (
        s["selected"].as_u64().unwrap(),
        s["updated"].as_u64().unwrap(),
        s["inProgress"].as_u64().unwrap(),
        s["pending"].as_u64().unwrap(),
        s["phase"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn rollout_of_five_nodes_two_at_a_time() {
    let mut o = osu("2");
    let v1 = |n| node(n, "1.0.0", None, None);
    let at = |n, p| node(n, "1.0.0", Some("2.0.0"), Some(p));
    let done = |n| node(n, "2.0.0", Some("2.0.0"), Some("Done"));
    // Each round: what the nodes report, who gets the target, the counts.
    type Round = (
        Vec<Value>,
        Vec<&'static str>,
        (u64, u64, u64, u64, &'static str),
    );
    let rounds: Vec<Round> = vec![
        (
            vec![v1("n1"), v1("n2"), v1("n3"), v1("n4"), v1("n5")],
            vec!["n1", "n2"],
            (5, 0, 2, 3, "Progressing"),
        ),
        // n1 and n2 are working: nobody else, and the same status is not written again.
        (
            vec![
                at("n1", "Staging"),
                at("n2", "Draining"),
                v1("n3"),
                v1("n4"),
                v1("n5"),
            ],
            vec![],
            (5, 0, 2, 3, "Progressing"),
        ),
        // n1 finished, n2 rebooted into 2.0.0 but is not blessed yet: one slot free.
        (
            vec![
                done("n1"),
                node("n2", "2.0.0", Some("2.0.0"), Some("Verifying")),
                v1("n3"),
                v1("n4"),
                v1("n5"),
            ],
            vec!["n3"],
            (5, 1, 2, 2, "Progressing"),
        ),
        (
            vec![
                done("n1"),
                done("n2"),
                at("n3", "Rebooting"),
                v1("n4"),
                v1("n5"),
            ],
            vec!["n4"],
            (5, 2, 2, 1, "Progressing"),
        ),
        (
            vec![done("n1"), done("n2"), done("n3"), done("n4"), v1("n5")],
            vec!["n5"],
            (5, 4, 1, 0, "Progressing"),
        ),
        (
            vec![done("n1"), done("n2"), done("n3"), done("n4"), done("n5")],
            vec![],
            (5, 5, 0, 0, "Complete"),
        ),
    ];
    for (i, (nodes, assign, want)) in rounds.into_iter().enumerate() {
        let expect_status = i != 1;
        let out = run(&o, NOW, |mut srv| {
            tokio::spawn(async move {
                let s = serve(&mut srv, nodes, &assign, expect_status).await;
                if let Some(s) = s {
                    assert_eq!(counts(&s), want, "round {i}: {s}");
                }
            })
        })
        .await;
        assert!(out.status.in_progress <= 2);
        o.status = Some(out.status);
    }
    assert_eq!(o.status.unwrap().conditions[0].type_, "Complete");
}

#[tokio::test]
async fn a_failed_node_stops_the_rollout() {
    let o = osu("2");
    let out = run(&o, NOW, |mut srv| {
        tokio::spawn(async move {
            let mut failed = node("n1", "1.0.0", Some("2.0.0"), Some("Failed"));
            failed["metadata"]["annotations"][MESSAGE] =
                json!("drain failed: timed out after 600 s evicting app/web-0");
            let s = serve(
                &mut srv,
                vec![failed, node("n2", "2.0.0", Some("2.0.0"), Some("Done")),
                     node("n3", "1.0.0", None, None), node("n4", "1.0.0", None, None)],
                &[],
                true,
            )
            .await
            .unwrap();
            assert_eq!(s["phase"], "Halted");
            assert_eq!(s["failed"], 1);
            assert_eq!(s["conditions"][0]["type"], "Halted");
            assert_eq!(
                s["conditions"][0]["message"],
                "rollout of 2.0.0 stopped: node n1 failed: drain failed: timed out after 600 s evicting app/web-0"
            );
        })
    })
    .await;
    assert!(out.assigned.is_empty());
    // A node that rolled back stops it the same way.
    let out = run(&o, NOW, |mut srv| {
        tokio::spawn(async move {
            let s = serve(
                &mut srv,
                vec![
                    node("n1", "1.0.0", Some("2.0.0"), Some("RolledBack")),
                    node("n2", "1.0.0", None, None),
                ],
                &[],
                true,
            )
            .await
            .unwrap();
            assert_eq!(
                s["conditions"][0]["message"],
                "rollout of 2.0.0 stopped: node n1 rolled back from 2.0.0"
            );
        })
    })
    .await;
    assert!(out.assigned.is_empty());
}

#[tokio::test]
async fn a_closed_window_hands_out_nothing() {
    let mut o = osu("2");
    // Mondays 02:00–03:00 UTC; NOW is a Tuesday noon.
    o.spec.maintenance_window = Some(MaintenanceWindow {
        days: vec!["Mon".into()],
        start: "02:00".into(),
        duration_minutes: 60,
    });
    let nodes_at = |now: i64| {
        (1..=3)
            .map(|i| {
                let mut n = node(&format!("n{i}"), "1.0.0", None, None);
                n["metadata"]["annotations"][HEARTBEAT] = json!(rfc3339(now - 10));
                n
            })
            .collect::<Vec<_>>()
    };
    let nodes = move || nodes_at(NOW);
    let out = run(&o, NOW, |mut srv| {
        tokio::spawn(async move {
            let s = serve(&mut srv, nodes(), &[], true).await.unwrap();
            assert_eq!(s["phase"], "WaitingForWindow");
            assert_eq!(
                s["conditions"][0]["message"],
                "3 nodes wait for the maintenance window"
            );
        })
    })
    .await;
    assert!(out.assigned.is_empty());
    // Next Monday 02:30 the window is open.
    let monday = NOW - 86_400 + 7 * 86_400 - 12 * 3600 + 2 * 3600 + 1800;
    let out = run(&o, monday, |mut srv| {
        tokio::spawn(async move {
            let s = serve(&mut srv, nodes_at(monday), &["n1", "n2"], true).await;
            assert_eq!(s.unwrap()["phase"], "Progressing");
        })
    })
    .await;
    assert_eq!(out.assigned, vec!["n1", "n2"]);
}

#[tokio::test]
async fn a_restarted_operator_resumes_without_scheduling_twice() {
    // The previous operator handed n1 its target and died before n2 and before any status:
    // n1's agent has not even reported yet. The new operator (no status on the object)
    // counts n1 as in progress and hands out only the second place.
    let o = osu("2");
    let out = run(&o, NOW, |mut srv| {
        tokio::spawn(async move {
            let mut n1 = node("n1", "1.0.0", None, None);
            n1["metadata"]["annotations"][TARGET_VERSION] = json!("2.0.0");
            n1["metadata"]["annotations"][BUNDLE_URL] = json!("http://repo/2.0.0");
            let rest = (2..=5).map(|i| node(&format!("n{i}"), "1.0.0", None, None));
            let s = serve(
                &mut srv,
                std::iter::once(n1).chain(rest).collect(),
                &["n2"],
                true,
            )
            .await
            .unwrap();
            assert_eq!(counts(&s), (5, 0, 2, 3, "Progressing"));
        })
    })
    .await;
    assert_eq!(out.assigned, vec!["n2"]);
}

#[tokio::test]
async fn offline_and_foreign_cordoned_nodes_use_up_the_budget() {
    let o = osu("2");
    run(&o, NOW, |mut srv| {
        tokio::spawn(async move {
            let mut off = node("n1", "1.0.0", None, None);
            off["metadata"]["annotations"][HEARTBEAT] = json!(rfc3339(NOW - 3600));
            let s = serve(
                &mut srv,
                vec![
                    off,
                    node("n2", "1.0.0", None, None),
                    node("n3", "1.0.0", None, None),
                ],
                &["n2"],
                true,
            )
            .await
            .unwrap();
            assert_eq!(s["offline"], 1);
        })
    })
    .await;
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_touches_no_node() {
    let o = osu("0");
    let out = run(&o, NOW, |mut srv| {
        tokio::spawn(async move {
            let c = srv.expect("PATCH", STATUS).await;
            let s = c.body["status"].clone();
            c.reply(200, json!({"metadata": {"name": "os-2"}, "spec": {"targetVersion": "2.0.0", "bundleUrl": "x"}}));
            assert_eq!(s["phase"], "Invalid");
            let m = s["conditions"][0]["message"].as_str().unwrap();
            assert!(m.contains("spec.maxUnavailable \"0\""), "{m}");
        })
    })
    .await;
    assert!(out.assigned.is_empty());
}
