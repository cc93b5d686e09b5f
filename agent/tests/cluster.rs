//! Cluster upgrades against a real Kubernetes control plane (see realkube/ for what runs and the
//! two test doubles): what RBAC and Kiln's admission policy refuse to one node's credentials; a
//! rollout over five nodes with maxUnavailable 2 while a PodDisruptionBudget, the operator
//! being killed and the API server (with etcd) being restarted get in its way; a drain that
//! never gets its budget.

mod realkube;

use crate::realkube::*;
use ::kube::api::{Api, Patch, PatchParams};
use k8s_openapi::api::core::v1::{Node, Pod};
use kiln_agent::protocol::{CORDONED, MESSAGE, PHASE, PHASE_TARGET, TARGET_VERSION, VERSION};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `kubectl` arguments of a merge patch of Node `node`.
fn merge_patch<'a>(node: &'a str, body: &'a str) -> [&'a str; 6] {
    ["patch", "node", node, "--type=merge", "-p", body]
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts `o` was refused by the API server with a message containing `why`.
#[track_caller]
fn refused(o: std::process::Output, why: &str) {
    assert!(!o.status.success(), "allowed, expected a refusal ({why})");
    let e = stderr(&o);
    assert!(e.contains(why), "refused, but not for {why:?}: {e}");
}

#[track_caller]
fn allowed(o: std::process::Output) {
    assert!(o.status.success(), "refused: {}", stderr(&o));
}

fn merge(annotations: serde_json::Value) -> String {
    json!({"metadata": {"annotations": annotations}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_s_credentials_change_only_that_node() {
    let k = Kiln::start();
    let c = &k.cluster;
    k.add_nodes(&["n1", "n2"], &[("pool", "w")]);
    k.add_workload("app", "web", &["n1", "n2"], 0);
    let n1 = c.kubeconfig("kiln-agent:n1", Some("kiln:agents"));
    let heartbeat = merge(json!({"kiln.dev/heartbeat": "2026-11-29T10:00:00Z"}));
    // The policies take effect once the API server has loaded and type-checked them: probed
    // with server-side dry runs (admission runs, nothing is stored).
    until("the node policy in force", Duration::from_secs(60), || {
        let o = c.kubectl_as(
            &n1,
            &[
                "patch",
                "node",
                "n2",
                "--dry-run=server",
                "--type=merge",
                "-p",
                &heartbeat,
            ],
        );
        (!o.status.success()).then_some(())
    })
    .await;
    let uid = |pod: &str| {
        c.must(&[
            "get",
            "pod",
            "-n",
            "app",
            pod,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    let (web0, web1) = (uid("web-0"), uid("web-1"));
    let evict = |pod: &str, uid: Option<&str>, dry_run: bool| {
        let mut body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": "app"}});
        if let Some(u) = uid {
            body["deleteOptions"] = json!({"preconditions": {"uid": u}});
        }
        let f = c.dir.path().join(format!("evict-{pod}.json"));
        std::fs::write(&f, body.to_string()).unwrap();
        let dry = if dry_run { "?dryRun=All" } else { "" };
        c.kubectl_as(
            &n1,
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/app/pods/{pod}/eviction{dry}"),
                "-f",
                f.to_str().unwrap(),
            ],
        )
    };
    until(
        "the eviction policy in force",
        Duration::from_secs(60),
        || (!evict("web-1", Some(&web1), true).status.success()).then_some(()),
    )
    .await;

    // Another node: refused by the policy (RBAC alone would allow it).
    refused(
        c.kubectl_as(&n1, &merge_patch("n2", &heartbeat)),
        "kiln agent kiln-agent:n1 may change only its own Node, not n2",
    );
    // (`kubectl cordon` exits 0 even when refused: the patch it sends, directly.)
    let cordon =
        json!({"metadata": {"annotations": {CORDONED: "true"}}, "spec": {"unschedulable": true}})
            .to_string();
    refused(
        c.kubectl_as(&n1, &merge_patch("n2", &cordon)),
        "may change only its own Node, not n2",
    );
    // Its own node: its heartbeat and the cordon, yes.
    allowed(c.kubectl_as(&n1, &merge_patch("n1", &heartbeat)));
    allowed(c.kubectl_as(&n1, &merge_patch("n1", &cordon)));
    // Its own target (the operator's annotation), labels, taints, other annotations: no.
    refused(
        c.kubectl_as(
            &n1,
            &merge_patch("n1", &merge(json!({TARGET_VERSION: "9.9.9"}))),
        ),
        "may change only the annotations kiln.dev/version, kiln.dev/phase",
    );
    refused(
        c.kubectl_as(
            &n1,
            &[
                "label",
                "node",
                "n1",
                "node-role.kubernetes.io/control-plane=",
            ],
        ),
        "may not change the labels",
    );
    refused(
        c.kubectl_as(&n1, &["taint", "node", "n1", "dedicated=kiln:NoSchedule"]),
        "may change only spec.unschedulable",
    );
    refused(
        c.kubectl_as(
            &n1,
            &["annotate", "node", "n1", "example.com/owner=mallory"],
        ),
        "may change only the annotations",
    );
    // Status: its own KilnUpgrade condition only (patched as the agent does: kubectl would
    // first read nodes/status, which the agent's role does not grant).
    let nodes: Api<Node> = Api::all(client(&n1).await);
    let status_patch =
        |cond: serde_json::Value| Patch::Strategic(json!({"status": {"conditions": [cond]}}));
    let kiln_condition = json!({"type": "KilnUpgrade", "status": "False", "reason": "Idle", "message": "running 1.0.0"});
    let pp = PatchParams::default();
    nodes
        .patch_status("n1", &pp, &status_patch(kiln_condition.clone()))
        .await
        .expect("its own KilnUpgrade condition");
    let e = nodes
        .patch_status("n2", &pp, &status_patch(kiln_condition))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("may change only its own Node, not n2"),
        "{e}"
    );
    let e = nodes
        .patch_status(
            "n1",
            &pp,
            &status_patch(
                json!({"type": "Ready", "status": "False", "reason": "x", "message": "x"}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("may change only the KilnUpgrade condition"),
        "{e}"
    );
    // nodes/status stores metadata too: the same limits hold there.
    let e = nodes
        .patch_status(
            "n1",
            &pp,
            &Patch::Merge(
                json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""},
                "annotations": {TARGET_VERSION: "9.9.9"}}}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("may change only the annotations"),
        "{e}"
    );
    // Kiln's own cordon comes off; a cordon an administrator made is theirs.
    let uncordon =
        json!({"metadata": {"annotations": {CORDONED: null}}, "spec": {"unschedulable": false}})
            .to_string();
    allowed(c.kubectl_as(&n1, &merge_patch("n1", &uncordon)));
    c.must(&["cordon", "n1"]);
    refused(
        c.kubectl_as(&n1, &merge_patch("n1", &uncordon)),
        "only with the kiln.dev/cordoned mark",
    );
    refused(
        c.kubectl_as(&n1, &merge_patch("n1", &merge(json!({CORDONED: "true"})))),
        "only with the kiln.dev/cordoned mark",
    );
    c.must(&["uncordon", "n1"]);
    // Evictions: only pods bound to n1.
    refused(
        evict("web-1", Some(&web1), false),
        "may evict only pods bound to its own node; app/web-1 is on n2",
    );
    refused(
        evict("web-0", None, false),
        "must name the pod by UID (deleteOptions.preconditions.uid)",
    );
    allowed(evict("web-0", Some(&web0), false));
    // Deleting pods is not granted at all (RBAC).
    refused(
        c.kubectl_as(
            &n1,
            &["delete", "pod", "-n", "app", "web-1", "--wait=false"],
        ),
        "forbidden",
    );
    // The operator (its ServiceAccount, patching as kiln-operator does) still hands out
    // targets; an administrator still labels.
    let op = c.service_account_kubeconfig("kiln-system", "kiln-operator");
    Api::<Node>::all(client(&op).await)
        .patch(
            "n2",
            &pp,
            &Patch::Merge(json!({"metadata": {"annotations": {TARGET_VERSION: "2.0.0"}}})),
        )
        .await
        .expect("the operator hands n2 a target");
    allowed(c.kubectl(&["label", "node", "n2", "zone=b"]));
    // And n1's heartbeat reached only n1.
    let n2 = c.must(&[
        "get",
        "node",
        "n2",
        "-o",
        "jsonpath={.metadata.annotations}",
    ]);
    assert!(!n2.contains("kiln.dev/heartbeat"), "{n2}");
}

/// What the node watcher saw over a rollout.
#[derive(Default, Debug)]
struct Seen {
    /// Most nodes cordoned or mid-upgrade (draining, rebooting, verifying) at one time.
    max_busy: usize,
    /// The busy nodes at that time.
    busiest: Vec<String>,
    /// Fewest Ready, not terminating pods of the web ReplicaSet at one time (after the first
    /// time all were up).
    min_web_ready: Option<usize>,
}

fn busy(n: &Node) -> bool {
    cordoned(n)
        || (annotation(n, PHASE_TARGET) == "2.0.0"
            && ["Draining", "Rebooting", "Verifying"].contains(&annotation(n, PHASE).as_str()))
}

fn nodes_done(k: &Kiln) -> usize {
    let o = k.cluster.must(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.annotations.kiln\\.dev/phase}{\"\\n\"}{end}",
    ]);
    o.lines().filter(|l| *l == "Done").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_keeps_max_unavailable_through_a_pdb_an_operator_kill_and_an_api_server_restart()
{
    let mut k = Kiln::start();
    let names = ["n1", "n2", "n3", "n4", "n5"];
    k.add_nodes(&names, &[("pool", "w")]);
    // Three replicas on n1..n3, at least two available: while a replacement starts, the
    // budget refuses the next eviction (the disruption controller computes it).
    k.add_workload("app", "web", &["n1", "n2", "n3"], 2);
    let admin = k.admin().await;
    let kubelet = Kubelet::spawn(admin.clone());
    let work = tempfile::tempdir().unwrap();
    let agents: Vec<AgentProc> = names
        .iter()
        .map(|n| AgentProc::start(&k.cluster, n, "1.0.0", work.path()))
        .collect();
    until(
        "every agent reporting 1.0.0",
        Duration::from_secs(60),
        || {
            let o = k.cluster.must(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.annotations.kiln\\.dev/version}{\"\\n\"}{end}",
        ]);
            (o.lines().filter(|l| *l == "1.0.0").count() == names.len()).then_some(())
        },
    )
    .await;
    until("all web pods Ready", Duration::from_secs(30), || {
        let o = k.cluster.must(&[
            "get",
            "pods",
            "-n",
            "app",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (o.split_whitespace().filter(|s| *s == "True").count() == 3).then_some(())
    })
    .await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let node_watch = watch_all(Api::<Node>::all(admin.clone()), move |all| {
        let b: Vec<String> = all
            .values()
            .filter(|n| busy(n))
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        let mut s = s.lock().unwrap();
        if b.len() > s.max_busy {
            s.max_busy = b.len();
            s.busiest = b;
        }
    });
    let s = seen.clone();
    let pod_watch = watch_all(Api::<Pod>::namespaced(admin.clone(), "app"), move |all| {
        let ready = all
            .values()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
            })
            .count();
        let mut s = s.lock().unwrap();
        s.min_web_ready = Some(s.min_web_ready.map_or(ready, |m| m.min(ready)));
    });

    let op_log = work.path().join("operator.log");
    let operator = OperatorProc::start(&k.cluster, &op_log);
    k.apply_osupgrade(
        "os-2",
        json!({"targetVersion": "2.0.0", "bundleUrl": "http://127.0.0.1:9/bundles/2.0.0",
            "nodeSelector": {"pool": "w"}, "maxUnavailable": "2",
            "drain": {"timeoutSeconds": 180}}),
    );

    // The operator is killed (SIGKILL) once the first nodes have their target and started
    // again: it resumes from what the Nodes say.
    until("a node handed its target", Duration::from_secs(60), || {
        let o = k.cluster.must(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].metadata.annotations.kiln\\.dev/target-version}",
        ]);
        o.contains("2.0.0").then_some(())
    })
    .await;
    operator.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _operator = OperatorProc::start(&k.cluster, &op_log);

    // The API server and etcd are restarted (data kept) once two nodes are done.
    until("two nodes done", Duration::from_secs(180), || {
        (nodes_done(&k) >= 2).then_some(())
    })
    .await;
    k.cluster.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    k.cluster.start_again();

    until("the OSUpgrade Complete", Duration::from_secs(300), || {
        (k.osupgrade_phase("os-2") == "Complete").then_some(())
    })
    .await;
    node_watch.abort();
    pod_watch.abort();
    kubelet.abort();

    let table = k.cluster.must(&["get", "osupgrades"]);
    eprintln!("{table}");
    let row = table.lines().find(|l| l.starts_with("os-2")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], ["2.0.0", "Complete", "5", "5"], "{table}");

    let seen = seen.lock().unwrap();
    eprintln!("watched: {seen:?}");
    assert_eq!(
        seen.max_busy, 2,
        "at most maxUnavailable nodes cordoned or upgrading at once, and the rollout used both: {:?}",
        seen.busiest
    );
    assert_eq!(
        seen.min_web_ready,
        Some(2),
        "the budget kept 2 of 3 web pods available"
    );

    let mut refusals = 0;
    let mut reconnects = 0;
    for a in &agents {
        // Each node staged and rebooted exactly once: the restarted operator handed no node
        // its target twice, and no agent redid a finished upgrade.
        let calls = a.calls();
        let stages = calls
            .iter()
            .filter(|c| c.starts_with("stage 2.0.0"))
            .count();
        let reboots = calls.iter().filter(|c| *c == "reboot 2.0.0").count();
        assert_eq!((stages, reboots), (1, 1), "{}: {calls:?}", a.node);
        assert!(
            calls[0].contains("--expect-version 2.0.0"),
            "the agent names the version it expects: {calls:?}"
        );
        let log = a.log();
        refusals += log.matches("refused by a PodDisruptionBudget").count();
        if log.contains("attempts") {
            reconnects += 1;
        }
    }
    for n in names {
        let a = k.cluster.must(&["get", "node", n, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        let ann = &v["metadata"]["annotations"];
        assert_eq!(ann[VERSION], "2.0.0", "{n}");
        assert_eq!(ann[PHASE], "Done", "{n}");
        assert!(ann[CORDONED].is_null(), "{n} still carries Kiln's cordon");
        assert_ne!(v["spec"]["unschedulable"], true, "{n} left cordoned");
    }
    assert!(
        refusals >= 1,
        "the eviction API answered 429 while the budget was spent (agent logs)"
    );
    assert!(
        reconnects >= 1,
        "agents reconnected after the API server restart (agent logs)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_never_gets_its_budget_times_out_uncordons_and_halts_the_rollout() {
    let k = Kiln::start();
    let names = ["n1", "n2", "n3"];
    k.add_nodes(&names, &[("pool", "w")]);
    // Every db pod must stay: no eviction is ever allowed.
    k.add_workload("data", "db", &names, 3);
    let admin = k.admin().await;
    let kubelet = Kubelet::spawn(admin.clone());
    let work = tempfile::tempdir().unwrap();
    // n4 is not in the pool: an administrator's annotation hands it os-2's target anyway.
    k.add_nodes(&["n4"], &[]);
    let mut agents: BTreeMap<&str, AgentProc> = names
        .iter()
        .chain(&["n4"])
        .map(|n| (*n, AgentProc::start(&k.cluster, n, "1.0.0", work.path())))
        .collect();
    let _operator = OperatorProc::start(&k.cluster, &work.path().join("operator.log"));
    k.apply_osupgrade(
        "os-2",
        json!({"targetVersion": "2.0.0", "bundleUrl": "http://127.0.0.1:9/bundles/2.0.0",
            "nodeSelector": {"pool": "w"}, "maxUnavailable": "1",
            "drain": {"timeoutSeconds": 15}}),
    );
    k.cluster.must(&[
        "annotate",
        "node",
        "n4",
        "kiln.dev/target-version=2.0.0",
        "kiln.dev/bundle-url=http://127.0.0.1:9/bundles/2.0.0",
        "kiln.dev/osupgrade=os-2",
    ]);
    until("n4 refusing the target", Duration::from_secs(60), || {
        let m = k.cluster.must(&[
            "get",
            "node",
            "n4",
            "-o",
            "jsonpath={.metadata.annotations.kiln\\.dev/message}",
        ]);
        m.contains(
            "target refused: OSUpgrade os-2 does not select this node (it needs label pool=w)",
        )
        .then_some(())
    })
    .await;
    assert!(agents["n4"].calls().is_empty(), "n4 staged nothing");
    drop(agents.remove("n4"));
    // The CRD as generated: the server defaults what the spec left out and refuses what the
    // schema forbids.
    let drain = k
        .cluster
        .must(&["get", "osupgrade", "os-2", "-o", "jsonpath={.spec.drain}"]);
    let drain: serde_json::Value = serde_json::from_str(&drain).unwrap();
    assert_eq!(
        drain,
        json!({"timeoutSeconds": 15, "force": false, "skipDaemonSetPods": true})
    );
    let bad = k.cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "OSUpgrade", "metadata": {"name": "bad"},
            "spec": {"bundleUrl": "http://x/y", "maxUnavailable": 2}})
        .to_string(),
    );
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        e.contains("spec.targetVersion: Required value") && e.contains("spec.maxUnavailable"),
        "{e}"
    );
    until("the OSUpgrade Halted", Duration::from_secs(180), || {
        (k.osupgrade_phase("os-2") == "Halted").then_some(())
    })
    .await;
    // Another round of the operator: still halted, nobody else handed the target.
    tokio::time::sleep(Duration::from_secs(12)).await;
    kubelet.abort();
    assert_eq!(k.osupgrade_phase("os-2"), "Halted");
    let msg = k.cluster.must(&[
        "get",
        "osupgrade",
        "os-2",
        "-o",
        "jsonpath={.status.conditions[0].message}",
    ]);
    assert!(msg.contains("drain failed"), "{msg}");
    // n1 (first by name) failed its drain; it is given back, still on 1.0.0.
    let v: serde_json::Value =
        serde_json::from_str(&k.cluster.must(&["get", "node", "n1", "-o", "json"])).unwrap();
    let ann = &v["metadata"]["annotations"];
    assert_eq!(ann[PHASE], "Failed");
    let m = ann[MESSAGE].as_str().unwrap();
    assert!(
        m.contains("timed out after 15 s") && m.contains("refused by a PodDisruptionBudget"),
        "{m}"
    );
    assert_ne!(v["spec"]["unschedulable"], true, "n1 uncordoned");
    assert!(ann[CORDONED].is_null());
    assert_eq!(ann[VERSION], "1.0.0");
    let n1 = agents["n1"].calls();
    assert_eq!(n1.len(), 1, "staged, never rebooted: {n1:?}");
    for n in ["n2", "n3"] {
        assert!(
            agents[n].calls().is_empty(),
            "{n} was never started: {:?}",
            agents[n].calls()
        );
        let t = k.cluster.must(&[
            "get",
            "node",
            n,
            "-o",
            "jsonpath={.metadata.annotations.kiln\\.dev/target-version}",
        ]);
        assert_eq!(t, "", "{n} was handed no target");
    }
    let pods = k.cluster.must(&["get", "pods", "-n", "data", "-o", "name"]);
    assert_eq!(pods.lines().count(), 3, "no db pod was evicted: {pods}");
}
