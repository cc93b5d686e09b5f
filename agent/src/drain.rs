//! Cordon, drain and uncordon one node through the API, as `kubectl drain` does but bounded:
//! evictions (the Eviction API, so PodDisruptionBudgets are honoured) are retried while a budget
//! refuses them, until the policy's deadline; then the drain fails and the caller uncordons.
//! Mirror pods are never evicted; DaemonSet pods are skipped (per policy); pods that no
//! controller manages are refused unless `force`.

use crate::crd::DrainPolicy;
use crate::protocol;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use std::time::Duration;
use tokio::time::Instant;

/// Pause between evictions a PodDisruptionBudget refused (as kubectl drain).
pub const RETRY: Duration = Duration::from_secs(5);
/// Pause between checks that an evicted pod is gone.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("timed out after {secs} s evicting {pod}: {last}")]
    Timeout {
        secs: u64,
        pod: String,
        last: String,
    },
    #[error("{0} is not managed by a controller (drain.force deletes it)")]
    Unmanaged(String),
    /// An answer that will not change by asking again (e.g. 403: the agent's role lacks a
    /// verb): the drain fails now instead of being retried with the node cordoned.
    #[error("the API server refused to list the node's pods: {0}")]
    Refused(kube::Error),
    /// Anything else (unreachable, 5xx, 429): the caller retries with backoff.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Whether asking again cannot help: a 4xx other than 408 (timeout), 409 (conflict) and 429
/// (too many requests).
pub fn permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code) && ![408, 409, 429].contains(&s.code))
}

/// What a drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    pub evicted: Vec<String>,
    pub skipped: Vec<String>,
}

fn controller_kind(p: &Pod) -> Option<&str> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.as_str())
}

fn id(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

enum Class {
    Evict,
    Skip,
    Unmanaged,
}

fn classify(p: &Pod, policy: &DrainPolicy) -> Class {
    let mirror = p
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let finished = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    match controller_kind(p) {
        _ if mirror || finished => Class::Skip,
        Some("DaemonSet") if policy.skip_daemon_set_pods => Class::Skip,
        None if !policy.force => Class::Unmanaged,
        _ => Class::Evict,
    }
}

/// Cordons `node` unless someone else already did (then their cordon is left to them);
/// returns whether Kiln holds the cordon.
pub async fn cordon(client: &Client, node: &str) -> Result<bool, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get(node).await?;
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) && !protocol::kiln_cordon(&n) {
        tracing::info!(
            node,
            "already cordoned by someone else; leaving their cordon alone"
        );
        return Ok(false);
    }
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(protocol::cordon_patch()),
        )
        .await?;
    Ok(true)
}

/// Undoes Kiln's cordon (only if the node carries Kiln's mark).
pub async fn uncordon(client: &Client, node: &str) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get(node).await?;
    if protocol::kiln_cordon(&n) {
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(protocol::uncordon_patch()),
            )
            .await?;
    }
    Ok(())
}

/// Evicts the node's pods; fails at `policy.timeout_seconds` after the start.
pub async fn drain(
    client: &Client,
    node: &str,
    policy: &DrainPolicy,
) -> Result<Drained, DrainError> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(policy.timeout_seconds.into());
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|e| {
            if permanent(&e) {
                DrainError::Refused(e)
            } else {
                DrainError::Kube(e)
            }
        })?;
    let mut out = Drained::default();
    let mut todo = Vec::new();
    for p in list.items {
        match classify(&p, policy) {
            Class::Skip => out.skipped.push(id(&p)),
            Class::Unmanaged => return Err(DrainError::Unmanaged(id(&p))),
            Class::Evict => todo.push(p),
        }
    }
    for p in todo {
        let name = p.metadata.name.clone().unwrap_or_default();
        let ns = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let timeout = |last: String| DrainError::Timeout {
            secs: policy.timeout_seconds.into(),
            pod: id(&p),
            last,
        };
        // Evict until accepted (or gone). The pod is named by UID too (a precondition, which
        // deploy/agent-policy.yaml requires): a pod recreated under the same name is not this
        // one (409).
        // kube-core 5.0's `Api::evict` writes the delete options as `delete_options`, which the
        // API server ignores (found against a real one): the Eviction is written here.
        let eviction = serde_json::json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
            "deleteOptions": {"preconditions": {"uid": p.metadata.uid}},
        });
        loop {
            let r: Result<serde_json::Value, _> = api
                .create_subresource("eviction", &name, &PostParams::default(), &eviction)
                .await;
            match r {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => break,
                // Refused otherwise (not by a budget): if the pod went meanwhile, that is what
                // the eviction was for (an admission policy may refuse to judge a pod it no
                // longer finds).
                Err(kube::Error::Api(s))
                    if s.code != 429 && matches!(api.get_opt(&name).await, Ok(None)) =>
                {
                    break
                }
                Err(e) => {
                    let why = match &e {
                        kube::Error::Api(s) if s.code == 429 => {
                            format!("refused by a PodDisruptionBudget: {}", s.message)
                        }
                        other => other.to_string(),
                    };
                    tracing::info!(pod = %id(&p), "eviction not possible yet ({why}); retrying in {} s", RETRY.as_secs());
                    if Instant::now() + RETRY > deadline {
                        return Err(timeout(why));
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        // Wait until the pod is gone (or replaced by one with another uid).
        let uid = p.metadata.uid.clone();
        loop {
            match api.get(&name).await {
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Ok(now) if now.metadata.uid != uid => break,
                Ok(_) => {}
                Err(e) => tracing::warn!(pod = %id(&p), "checking eviction: {e}"),
            }
            if Instant::now() + POLL > deadline {
                return Err(timeout("evicted but still terminating".into()));
            }
            tokio::time::sleep(POLL).await;
        }
        out.evicted.push(id(&p));
    }
    Ok(out)
}
