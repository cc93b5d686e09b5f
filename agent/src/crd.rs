//! The `OSUpgrade` custom resource (cluster-scoped, `kiln.dev/v1alpha1`). `deploy/crd.yaml` is
//! generated from these types (`kiln-operator crd`); a test fails when the two drift.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upgrade the selected nodes to `targetVersion`, a few at a time.
// `printcolumn(...)` repeats by design (one per column); clippy reads the repeated `type_`
// keys as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "OSUpgrade",
    plural = "osupgrades",
    shortname = "osu",
    status = "OSUpgradeStatus",
    derive = "PartialEq",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetVersion"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Selected", type_ = "integer", json_path = ".status.selected"),
    printcolumn(name = "Updated", type_ = "integer", json_path = ".status.updated"),
    printcolumn(
        name = "InProgress",
        type_ = "integer",
        json_path = ".status.inProgress"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OSUpgradeSpec {
    /// The version the selected nodes should run (the bundle's version).
    pub target_version: String,
    /// Where nodes fetch the signed update bundle (http(s) URL of the bundle directory).
    pub bundle_url: String,
    /// Label equality selector of the nodes to upgrade; empty selects every node.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Nodes upgrading (or otherwise unavailable) at once: a number ("2") or a percentage of
    /// the selected nodes ("25%", rounded down, at least 1).
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: String,
    #[serde(default)]
    pub drain: DrainPolicy,
    /// Pins the bundle: `sha256:` and the hex SHA-256 of its `manifest.json` (`kiln bundle`
    /// prints it). Nodes refuse any other bundle, whatever the server at `bundleUrl` answers;
    /// without it they still refuse any version but `targetVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Nodes only start upgrading inside this window; nodes already upgrading finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
}

fn default_max_unavailable() -> String {
    "1".into()
}

/// How a node is drained before it reboots into the new version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainPolicy {
    /// Give up (uncordon, report the node failed, stop the rollout) after this long.
    #[serde(default = "default_drain_timeout")]
    pub timeout_seconds: u32,
    /// Also delete pods no controller manages (they are lost).
    #[serde(default)]
    pub force: bool,
    /// Leave DaemonSet pods in place (their controller would recreate them at once).
    #[serde(default = "yes")]
    pub skip_daemon_set_pods: bool,
}

fn default_drain_timeout() -> u32 {
    600
}

fn yes() -> bool {
    true
}

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy {
            timeout_seconds: default_drain_timeout(),
            force: false,
            skip_daemon_set_pods: true,
        }
    }
}

/// Weekly window in UTC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Weekdays the window opens ("Mon" … "Sun"); empty = every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Opening time, "HH:MM" UTC.
    pub start: String,
    pub duration_minutes: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OSUpgradeStatus {
    /// Progressing, WaitingForWindow, Halted, Complete or Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default)]
    pub selected: u32,
    #[serde(default)]
    pub updated: u32,
    #[serde(default)]
    pub in_progress: u32,
    #[serde(default)]
    pub pending: u32,
    #[serde(default)]
    pub failed: u32,
    /// Selected nodes whose agent's heartbeat is too old (counted as unavailable).
    #[serde(default)]
    pub offline: u32,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A status condition (`Progressing`, `Halted`, `WaitingForWindow`, `Complete`, `Invalid`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True" or "False".
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// `deploy/crd.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let body = serde_saphyr::to_string(&OSUpgrade::crd()).expect("the CRD serializes");
    format!("# Generated by `kiln-operator crd` from agent/src/crd.rs; do not edit.\n{body}")
}
