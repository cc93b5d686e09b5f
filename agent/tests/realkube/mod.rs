//! Kiln on a real control plane ([`kiln_testutil::kube::Cluster`]: upstream etcd,
//! kube-apiserver and the disruption controller of kube-controller-manager on 127.0.0.1) with
//! `deploy/crd.yaml`, `rbac.yaml` and `agent-policy.yaml` applied as they ship; `kiln-operator`
//! runs with its ServiceAccount's token (what `deploy/operator.yaml` gives it) and each node's
//! `kiln-agent` with its own client certificate (`kiln-agent:NODE`, group `kiln:agents`, as the
//! README prescribes).
//!
//! Test doubles, both at boundaries covered for real elsewhere:
//! - the device behind each agent: `fixtures/fake-updater.sh` (the QEMU tests run the real
//!   kiln-updater behind the real agent);
//! - the kubelet's part, which no process here plays: [`Kubelet`] marks pods Ready, deletes
//!   evicted pods once they are terminating (their kubelet would stop them) and, for a
//!   ReplicaSet, starts a replacement on a schedulable node that becomes Ready a few seconds
//!   later (as the ReplicaSet controller, the scheduler and the kubelet would).

#![allow(dead_code)]

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kiln_testutil::kube::Cluster;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const AGENT: &str = env!("CARGO_BIN_EXE_kiln-agent");
pub const OPERATOR: &str = env!("CARGO_BIN_EXE_kiln-operator");

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fake_updater() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-updater.sh")
}

/// A control plane with Kiln's manifests applied, and an administrator's client.
pub struct Kiln {
    pub cluster: Cluster,
}

impl Kiln {
    pub fn start() -> Kiln {
        let cluster = Cluster::start();
        for f in ["crd.yaml", "rbac.yaml", "agent-policy.yaml"] {
            let p = workspace().join("deploy").join(f);
            cluster.must(&["apply", "-f", p.to_str().unwrap()]);
        }
        cluster.must(&[
            "wait",
            "--for=condition=Established",
            "crd/osupgrades.kiln.dev",
            "--timeout=60s",
        ]);
        Kiln { cluster }
    }

    pub async fn admin(&self) -> Client {
        client(&self.cluster.admin()).await
    }

    /// Nodes `names` with `labels`, marked Ready (as their kubelet would).
    pub fn add_nodes(&self, names: &[&str], labels: &[(&str, &str)]) {
        let labels: BTreeMap<_, _> = labels.iter().copied().collect();
        for n in names {
            self.cluster.apply(
                &json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": n, "labels": labels}})
                .to_string(),
            );
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "reason": "KubeletReady", "message": "the test plays the kubelet",
                "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
            self.cluster.must(&[
                "patch",
                "node",
                n,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ]);
        }
    }

    /// A ReplicaSet `name` in namespace `ns` (its pods labelled app=NAME; no controller
    /// runs for it: [`Kubelet`] plays its part) with one pod on each of `nodes`, and a
    /// PodDisruptionBudget keeping `min_available` of them.
    pub fn add_workload(&self, ns: &str, name: &str, nodes: &[&str], min_available: u32) {
        let _ = self.cluster.kubectl(&["create", "namespace", ns]);
        self.cluster.apply(
            &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"replicas": nodes.len(), "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "c", "image": "kiln.local/none"}]}}}})
            .to_string(),
        );
        self.cluster.apply(
            &json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": name}}}})
            .to_string(),
        );
        let uid = self.cluster.must(&[
            "get",
            "replicaset",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        for (i, n) in nodes.iter().enumerate() {
            self.cluster
                .apply(&pod_json(ns, name, &uid, &format!("{name}-{i}"), n).to_string());
        }
    }

    /// The OSUpgrade `name` (created or changed) by `kubectl apply`, as a user would.
    pub fn apply_osupgrade(&self, name: &str, spec: Value) {
        self.cluster.apply(
            &json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "OSUpgrade",
                "metadata": {"name": name}, "spec": spec})
            .to_string(),
        );
    }

    /// `.status.phase` of an OSUpgrade ("" before the operator wrote one).
    pub fn osupgrade_phase(&self, name: &str) -> String {
        let o = self
            .cluster
            .kubectl(&["get", "osupgrade", name, "-o", "jsonpath={.status.phase}"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

pub fn pod_json(ns: &str, rs: &str, rs_uid: &str, name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": rs},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                "uid": rs_uid, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "kiln.local/none"}]}})
}

/// Polls `f` every 500 ms until it returns Some, for at most `limit`.
pub async fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < limit,
            "{what}: not within {} s",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One node's kiln-agent as a host process behind the fake device, started again after it
/// ends (as systemd would after the device's "reboot"), stopped by PID.
pub struct AgentProc {
    pub node: String,
    pub dir: PathBuf,
    pid: Arc<Mutex<Option<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentProc {
    pub fn start(cluster: &Cluster, node: &str, version: &str, root: &Path) -> AgentProc {
        let dir = root.join(node);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("version"), version).unwrap();
        std::fs::write(dir.join("calls"), "").unwrap();
        std::fs::copy("/proc/sys/kernel/random/uuid", dir.join("boot_id")).unwrap();
        let kc = cluster.kubeconfig(&format!("kiln-agent:{node}"), Some("kiln:agents"));
        let pid = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, d, n) = (pid.clone(), stop.clone(), dir.clone(), node.to_string());
        let thread = std::thread::spawn(move || {
            let log = d.join("agent.log");
            while !s.load(Ordering::SeqCst) {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                let mut child = Command::new(AGENT)
                    .arg(format!("--kubeconfig={}", kc.display()))
                    .arg(format!("--node={n}"))
                    .arg(format!("--state={}", d.join("state.json").display()))
                    .arg(format!("--updater={}", fake_updater().display()))
                    .arg(format!("--boot-id-file={}", d.join("boot_id").display()))
                    .env("KILN_FAKE_DEVICE", &d)
                    .env("RUST_LOG", "kiln_agent=info,kube_client=off,warn")
                    .stdin(Stdio::null())
                    .stdout(f.try_clone().unwrap())
                    .stderr(f)
                    .spawn()
                    .unwrap();
                *p.lock().unwrap() = Some(child.id());
                if s.load(Ordering::SeqCst) {
                    // Stopped while this one started: the stopper may have missed its PID.
                    let _ = child.kill();
                }
                let _ = child.wait();
                *p.lock().unwrap() = None;
                // The "boot" before systemd starts the agent again.
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        AgentProc {
            node: node.into(),
            dir,
            pid,
            stop,
            thread: Some(thread),
        }
    }

    /// The fake device's record: "stage V …" and "reboot V" lines.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(pid) = *self.pid.lock().unwrap() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// kiln-operator with the credentials of its ServiceAccount (`kiln-system/kiln-operator`).
pub struct OperatorProc {
    child: Child,
}

impl OperatorProc {
    pub fn start(cluster: &Cluster, log: &Path) -> OperatorProc {
        let kc = cluster.service_account_kubeconfig("kiln-system", "kiln-operator");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(OPERATOR)
            .arg("run")
            .env("KUBECONFIG", kc)
            .env("RUST_LOG", "info,kube_client=off")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        OperatorProc { child }
    }

    /// SIGKILL by PID: no chance to finish anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kubelet's (and the ReplicaSet controller's) part for pods bound to the fake nodes.
/// Runs until aborted; errors (the API server restarting) are retried.
pub struct Kubelet;

/// How long a replacement pod takes to become Ready.
pub const POD_START: Duration = Duration::from_secs(6);

impl Kubelet {
    pub fn spawn(client: Client) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut born: BTreeMap<String, Instant> = BTreeMap::new();
            loop {
                let _ = Kubelet::pass(&client, &mut born).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }

    async fn pass(
        client: &Client,
        born: &mut BTreeMap<String, Instant>,
    ) -> Result<(), kube::Error> {
        let pods: Api<Pod> = Api::all(client.clone());
        let nodes: Api<Node> = Api::all(client.clone());
        let list = pods.list(&ListParams::default()).await?;
        let node_list = nodes.list(&ListParams::default()).await?;
        for p in &list.items {
            let ns = p.metadata.namespace.clone().unwrap();
            let name = p.metadata.name.clone().unwrap();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if p.metadata.deletion_timestamp.is_some() {
                // Evicted: the kubelet stops it and the pod goes.
                api.delete(&name, &DeleteParams::default().grace_period(0))
                    .await
                    .map(drop)
                    .or_else(ignore_not_found)?;
                continue;
            }
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let key = format!("{ns}/{name}");
            let started = born.get(&key).is_none_or(|t| t.elapsed() >= POD_START);
            if !ready && started {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}})),
                )
                .await
                .map(drop)
                .or_else(ignore_not_found)?;
            }
        }
        // ReplicaSets: a replacement for each missing pod, on a schedulable node that has none.
        let rss: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::all(client.clone());
        for rs in rss.list(&ListParams::default()).await?.items {
            let ns = rs.metadata.namespace.clone().unwrap();
            let name = rs.metadata.name.clone().unwrap();
            let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) as usize;
            let mine: Vec<&Pod> = list
                .items
                .iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(&ns)
                        && p.metadata.labels.as_ref().and_then(|l| l.get("app")) == Some(&name)
                })
                .collect();
            let live = mine
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count();
            if live >= want {
                continue;
            }
            let taken: Vec<&str> = mine
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
                .collect();
            let free = node_list.items.iter().find(|n| {
                n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true)
                    && !taken.contains(&n.metadata.name.as_deref().unwrap_or(""))
            });
            if let Some(n) = free {
                let node = n.metadata.name.clone().unwrap();
                let pod_name = format!(
                    "{name}-{}",
                    k8s_openapi::jiff::Timestamp::now().as_millisecond()
                );
                let uid = rs.metadata.uid.clone().unwrap();
                let p: Pod =
                    serde_json::from_value(pod_json(&ns, &name, &uid, &pod_name, &node)).unwrap();
                Api::<Pod>::namespaced(client.clone(), &ns)
                    .create(&PostParams::default(), &p)
                    .await?;
                born.insert(format!("{ns}/{pod_name}"), Instant::now());
            }
        }
        Ok(())
    }
}

fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e),
    }
}

/// Watches objects of kind `K` (re-listing after a lost connection) and hands each state of the
/// whole set to `check` after every event; runs until aborted.
pub fn watch_all<K>(
    api: Api<K>,
    mut check: impl FnMut(&BTreeMap<String, K>) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let mut all: BTreeMap<String, K> = BTreeMap::new();
        let mut fresh: BTreeMap<String, K> = BTreeMap::new();
        let mut s = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = s.next().await {
            let key = |o: &K| {
                format!(
                    "{}/{}",
                    o.meta().namespace.clone().unwrap_or_default(),
                    o.meta().name.clone().unwrap_or_default()
                )
            };
            match ev {
                Ok(watcher::Event::Apply(o)) => {
                    all.insert(key(&o), o);
                }
                Ok(watcher::Event::Delete(o)) => {
                    all.remove(&key(&o));
                }
                // A (re)list begins: the set is whole again at InitDone.
                Ok(watcher::Event::Init) => {
                    fresh.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    fresh.insert(key(&o), o);
                    continue;
                }
                Ok(watcher::Event::InitDone) => all = std::mem::take(&mut fresh),
                Err(_) => continue,
            }
            check(&all);
        }
    })
}

/// An annotation of a Node ("" when absent).
pub fn annotation(n: &Node, key: &str) -> String {
    n.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
        .unwrap_or_default()
}

pub fn cordoned(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}
