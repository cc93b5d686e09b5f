//! The operator's reconcile of one OSUpgrade: read the selected nodes, plan
//! ([`crate::rollout::plan`]), hand the chosen nodes their target, write the status. Idempotent:
//! everything it decides from is on the Nodes, so a restarted operator resumes the rollout
//! without scheduling a node twice.

use crate::budget::MaxUnavailable;
use crate::crd::{Condition, OSUpgrade, OSUpgradeStatus};
use crate::protocol;
use crate::rollout::{self, Plan, Rollout};
use crate::window::Window;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// What a reconcile did, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: OSUpgradeStatus,
    pub assigned: Vec<String>,
    pub requeue: Duration,
}

fn condition(type_: &str, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message,
    }
}

/// The status for a plan (pure).
pub fn status_of(p: &Plan, target: &str, failed: u32, offline: u32) -> OSUpgradeStatus {
    let (phase, c) = if let Some(why) = &p.halted {
        (
            "Halted",
            condition(
                "Halted",
                "NodeFailed",
                format!("rollout of {target} stopped: {why}"),
            ),
        )
    } else if p.done == p.selected {
        (
            "Complete",
            condition(
                "Complete",
                "AllNodesUpdated",
                format!("{} nodes run {target}", p.done),
            ),
        )
    } else if p.waiting_for_window && p.in_progress.is_empty() {
        (
            "WaitingForWindow",
            condition(
                "WaitingForWindow",
                "WindowClosed",
                format!("{} nodes wait for the maintenance window", p.pending),
            ),
        )
    } else {
        let mut busy = p.in_progress.clone();
        busy.extend(p.assign.iter().cloned());
        let c = if busy.is_empty() {
            condition(
                "Progressing",
                "NodesUnavailable",
                format!(
                    "no node can start: unavailable {}; {} pending",
                    p.unavailable.join(", "),
                    p.pending
                ),
            )
        } else {
            condition(
                "Progressing",
                "NodesUpgrading",
                format!("upgrading {}; {} pending", busy.join(", "), p.pending),
            )
        };
        ("Progressing", c)
    };
    OSUpgradeStatus {
        phase: Some(phase.into()),
        selected: p.selected as u32,
        updated: p.done as u32,
        in_progress: (p.in_progress.len() + p.assign.len()) as u32,
        pending: p.pending as u32,
        failed,
        offline,
        conditions: vec![c],
    }
}

fn invalid(message: String) -> OSUpgradeStatus {
    OSUpgradeStatus {
        phase: Some("Invalid".into()),
        conditions: vec![condition("Invalid", "InvalidSpec", message)],
        ..OSUpgradeStatus::default()
    }
}

fn label_selector(sel: &std::collections::BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn write_status(
    api: &Api<OSUpgrade>,
    name: &str,
    status: &OSUpgradeStatus,
) -> Result<(), Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// Reconciles `osu` at `now_unix` (UTC seconds; the window and heartbeats are judged by it).
pub async fn reconcile(client: &Client, osu: &OSUpgrade, now_unix: i64) -> Result<Outcome, Error> {
    let name = osu.name_any();
    let upgrades: Api<OSUpgrade> = Api::all(client.clone());
    let spec = &osu.spec;
    let parsed = MaxUnavailable::parse(&spec.max_unavailable)
        .map_err(|e| e.to_string())
        .and_then(|max| {
            let window = spec
                .maintenance_window
                .as_ref()
                .map(|w| Window::parse(&w.days, &w.start, w.duration_minutes))
                .transpose()
                .map_err(|e| e.to_string())?;
            if let Some(d) = &spec.manifest_digest {
                if !crate::admit::is_manifest_digest(d) {
                    return Err(format!(
                        "manifestDigest: {d:?} is not sha256: and 64 lowercase hex digits"
                    ));
                }
            }
            Ok((max, window))
        });
    let (max_unavailable, window) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let status = invalid(format!("OSUpgrade {name}: spec.{e}"));
            if osu.status.as_ref() != Some(&status) {
                write_status(&upgrades, &name, &status).await?;
            }
            return Ok(Outcome {
                status,
                assigned: vec![],
                requeue: Duration::from_secs(300),
            });
        }
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let mut lp = ListParams::default();
    if !spec.node_selector.is_empty() {
        lp = lp.labels(&label_selector(&spec.node_selector));
    }
    let list = nodes.list(&lp).await?;
    let views: Vec<_> = list
        .items
        .iter()
        .map(|n| protocol::view(n, now_unix))
        .collect();
    let r = Rollout {
        target: spec.target_version.clone(),
        selector: spec.node_selector.clone(),
        max_unavailable,
    };
    let open = window
        .as_ref()
        .is_none_or(|w| w.is_open(now_unix.max(0) as u64));
    let p = rollout::plan(&r, &views, open);
    for n in &p.assign {
        tracing::info!(osupgrade = %name, node = %n, target = %r.target, "handing the node its target");
        nodes
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(protocol::assign_patch(&r.target, &spec.bundle_url, &name)),
            )
            .await?;
    }
    let failed = views
        .iter()
        .filter(|v| {
            v.target.as_deref() == Some(r.target.as_str())
                && matches!(
                    v.phase,
                    rollout::Phase::Failed(_) | rollout::Phase::RolledBack
                )
        })
        .count() as u32;
    let offline = list
        .items
        .iter()
        .filter(|n| protocol::health_of(n, now_unix) == crate::backoff::Health::Offline)
        .count() as u32;
    let status = status_of(&p, &r.target, failed, offline);
    if osu.status.as_ref() != Some(&status) {
        write_status(&upgrades, &name, &status).await?;
    }
    let requeue = match status.phase.as_deref() {
        Some("Progressing") => Duration::from_secs(10),
        Some("WaitingForWindow") => Duration::from_secs(60),
        _ => Duration::from_secs(300),
    };
    Ok(Outcome {
        status,
        assigned: p.assign,
        requeue,
    })
}
