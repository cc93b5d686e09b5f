//! What the operator and the node agents tell each other, all on the Node object:
//!
//! - the operator writes the target ([`TARGET_VERSION`], [`BUNDLE_URL`], [`OSUPGRADE`]);
//! - the agent writes the version it runs ([`VERSION`]), its phase for that target
//!   ([`PHASE`], [`PHASE_TARGET`], [`MESSAGE`]), a heartbeat ([`HEARTBEAT`], RFC 3339, with its
//!   own [`HEALTH`]), [`CORDONED`] while it holds a cordon it made, and a `KilnUpgrade` node
//!   condition for `kubectl describe node`.
//!
//! Pure: Node → [`NodeView`] and the JSON bodies of the patches.

use crate::backoff::{self, Health};
use crate::rollout::{NodeView, Phase};
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};
use std::time::Duration;

pub const TARGET_VERSION: &str = "kiln.dev/target-version";
pub const BUNDLE_URL: &str = "kiln.dev/bundle-url";
pub const OSUPGRADE: &str = "kiln.dev/osupgrade";
pub const VERSION: &str = "kiln.dev/version";
pub const PHASE: &str = "kiln.dev/phase";
pub const PHASE_TARGET: &str = "kiln.dev/phase-target";
pub const MESSAGE: &str = "kiln.dev/message";
pub const HEARTBEAT: &str = "kiln.dev/heartbeat";
pub const HEALTH: &str = "kiln.dev/health";
pub const CORDONED: &str = "kiln.dev/cordoned";
/// The node condition the agent keeps.
pub const CONDITION: &str = "KilnUpgrade";

/// The agent's heartbeat period; the operator classifies ages against it.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

pub fn phase_name(p: &Phase) -> (&'static str, String) {
    match p {
        Phase::Idle => ("Idle", String::new()),
        Phase::Staging => ("Staging", String::new()),
        Phase::Draining => ("Draining", String::new()),
        Phase::Rebooting => ("Rebooting", String::new()),
        Phase::Verifying => ("Verifying", String::new()),
        Phase::Done => ("Done", String::new()),
        Phase::Failed(why) => ("Failed", why.clone()),
        Phase::RolledBack => ("RolledBack", String::new()),
    }
}

pub fn parse_phase(name: &str, message: &str) -> Phase {
    match name {
        "Staging" => Phase::Staging,
        "Draining" => Phase::Draining,
        "Rebooting" => Phase::Rebooting,
        "Verifying" => Phase::Verifying,
        "Done" => Phase::Done,
        "Failed" => Phase::Failed(message.to_string()),
        "RolledBack" => Phase::RolledBack,
        _ => Phase::Idle,
    }
}

fn annotation<'a>(n: &'a Node, key: &str) -> Option<&'a String> {
    n.metadata.annotations.as_ref()?.get(key)
}

/// Whether the node carries Kiln's cordon mark (so Kiln may undo the cordon).
pub fn kiln_cordon(n: &Node) -> bool {
    annotation(n, CORDONED).is_some_and(|v| v == "true")
}

/// The target the operator handed this node: (version, bundle URL).
pub fn target_of(n: &Node) -> Option<(String, String)> {
    Some((
        annotation(n, TARGET_VERSION)?.clone(),
        annotation(n, BUNDLE_URL)?.clone(),
    ))
}

/// Age of the node's last heartbeat at `now_unix` (None: never beat, or unreadable).
pub fn heartbeat_age(n: &Node, now_unix: i64) -> Option<Duration> {
    let t: k8s_openapi::jiff::Timestamp = annotation(n, HEARTBEAT)?.parse().ok()?;
    Some(Duration::from_secs((now_unix - t.as_second()).max(0) as u64))
}

/// The node's health as the operator reads it: offline when the heartbeat is too old (or
/// missing), degraded when late or when the agent says so.
pub fn health_of(n: &Node, now_unix: i64) -> Health {
    let Some(age) = heartbeat_age(n, now_unix) else {
        return Health::Offline;
    };
    match backoff::health(age, HEARTBEAT_INTERVAL) {
        Health::Healthy if annotation(n, HEALTH).is_some_and(|h| h == "degraded") => {
            Health::Degraded
        }
        h => h,
    }
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The operator's view of a node at `now_unix`.
pub fn view(n: &Node, now_unix: i64) -> NodeView {
    let target = annotation(n, TARGET_VERSION).cloned();
    let text = |k| annotation(n, k).map_or("", String::as_str);
    // A phase counts only for the target it was reported for.
    let phase = if annotation(n, PHASE_TARGET).is_some()
        && annotation(n, PHASE_TARGET) == target.as_ref()
    {
        parse_phase(text(PHASE), text(MESSAGE))
    } else {
        Phase::Idle
    };
    let cordoned_by_others =
        n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) && !kiln_cordon(n);
    NodeView {
        name: n.metadata.name.clone().unwrap_or_default(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        version: text(VERSION).to_string(),
        target,
        phase,
        unavailable: cordoned_by_others || !ready(n) || health_of(n, now_unix) == Health::Offline,
    }
}

/// Operator → node: the target (JSON merge patch).
pub fn assign_patch(version: &str, bundle_url: &str, osupgrade: &str) -> Value {
    json!({"metadata": {"annotations": {
        TARGET_VERSION: version, BUNDLE_URL: bundle_url, OSUPGRADE: osupgrade,
    }}})
}

/// Agent → node: the running version and the phase for `target` (JSON merge patch).
pub fn report_patch(running: &str, target: &str, phase: &Phase) -> Value {
    let (name, message) = phase_name(phase);
    json!({"metadata": {"annotations": {
        VERSION: running, PHASE: name, PHASE_TARGET: target, MESSAGE: message,
    }}})
}

/// Agent → node status: the `KilnUpgrade` condition (strategic merge, keyed by type).
pub fn condition_patch(running: &str, target: &str, phase: &Phase, now_rfc3339: &str) -> Value {
    let (name, message) = phase_name(phase);
    let upgrading = !matches!(
        phase,
        Phase::Idle | Phase::Done | Phase::Failed(_) | Phase::RolledBack
    );
    json!({"status": {"conditions": [{
        "type": CONDITION,
        "status": if upgrading { "True" } else { "False" },
        "reason": name,
        "message": if message.is_empty() {
            format!("running {running}, target {target}")
        } else {
            format!("running {running}, target {target}: {message}")
        },
        "lastHeartbeatTime": now_rfc3339,
        "lastTransitionTime": now_rfc3339,
    }]}})
}

/// Agent → node: heartbeat.
pub fn heartbeat_patch(now_rfc3339: &str, health: Health) -> Value {
    json!({"metadata": {"annotations": {
        HEARTBEAT: now_rfc3339,
        HEALTH: match health { Health::Healthy => "healthy", Health::Degraded => "degraded", Health::Offline => "offline" },
    }}})
}

/// Agent → node: cordon, remembering that Kiln did it (so only Kiln's cordon is undone).
pub fn cordon_patch() -> Value {
    json!({"metadata": {"annotations": {CORDONED: "true"}}, "spec": {"unschedulable": true}})
}

pub fn uncordon_patch() -> Value {
    json!({"metadata": {"annotations": {CORDONED: null}}, "spec": {"unschedulable": false}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    const NOW: i64 = 1_795_400_000;

    fn ts(unix: i64) -> String {
        k8s_openapi::jiff::Timestamp::from_second(unix)
            .unwrap()
            .to_string()
    }

    #[test]
    fn reads_what_the_agent_reported_for_the_current_target_only() {
        let n = node(
            json!({"metadata": {"name": "n1", "labels": {"pool": "w"}, "annotations": {
            VERSION: "1.0.0", TARGET_VERSION: "2.0.0", BUNDLE_URL: "http://b",
            PHASE: "Failed", PHASE_TARGET: "2.0.0", MESSAGE: "drain timed out",
            HEARTBEAT: ts(NOW - 10)}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        let v = view(&n, NOW);
        assert_eq!(v.phase, Phase::Failed("drain timed out".into()));
        assert_eq!(v.target.as_deref(), Some("2.0.0"));
        assert!(!v.unavailable);
        assert_eq!(target_of(&n), Some(("2.0.0".into(), "http://b".into())));
        // A phase reported for an older target is not this target's.
        let mut n2 = n.clone();
        n2.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(PHASE_TARGET.into(), "1.5.0".into());
        assert_eq!(view(&n2, NOW).phase, Phase::Idle);
    }

    #[test]
    fn unavailable_when_offline_not_ready_or_cordoned_by_someone_else() {
        let base = json!({"metadata": {"name": "n1", "annotations": {VERSION: "1.0.0", HEARTBEAT: ts(NOW - 5)}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(!view(&node(base.clone()), NOW).unavailable);
        assert_eq!(health_of(&node(base.clone()), NOW), Health::Healthy);
        assert_eq!(health_of(&node(base.clone()), NOW + 100), Health::Degraded);
        assert_eq!(health_of(&node(base.clone()), NOW + 200), Health::Offline);
        assert!(view(&node(base.clone()), NOW + 200).unavailable);
        let mut c = base.clone();
        c["spec"] = json!({"unschedulable": true});
        assert!(view(&node(c.clone()), NOW).unavailable);
        c["metadata"]["annotations"][CORDONED] = json!("true");
        assert!(
            !view(&node(c), NOW).unavailable,
            "Kiln's own cordon is progress, not unavailability"
        );
        let mut nr = base;
        nr["status"]["conditions"][0]["status"] = json!("False");
        assert!(view(&node(nr), NOW).unavailable);
    }

    #[test]
    fn phases_round_trip() {
        for p in [
            Phase::Idle,
            Phase::Staging,
            Phase::Draining,
            Phase::Rebooting,
            Phase::Verifying,
            Phase::Done,
            Phase::Failed("x y".into()),
            Phase::RolledBack,
        ] {
            let (n, m) = phase_name(&p);
            assert_eq!(parse_phase(n, &m), p);
        }
    }
}
