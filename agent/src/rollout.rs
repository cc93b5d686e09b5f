//! The operator's planner: from the OSUpgrade and what every node reports, which nodes are
//! handed the target now, and whether the rollout must stop. Pure: the only state is what the
//! nodes report (their target, phase and running version), so a restarted operator computes the
//! same in-progress set and never schedules a node twice.

use crate::budget::MaxUnavailable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node's agent reports for its current target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing to do (or not started on the target it was handed).
    Idle,
    /// Downloading and verifying into the inactive slot.
    Staging,
    /// Cordoned, evicting pods.
    Draining,
    /// Flipped; rebooting into the new slot.
    Rebooting,
    /// Booted the new slot, waiting for `mark-good`.
    Verifying,
    /// Running the target, blessed, uncordoned.
    Done,
    /// Gave up (staging or drain failed); uncordoned, still on the old version.
    Failed(String),
    /// The new slot did not come up and the loader went back.
    RolledBack,
}

/// One node as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The version the node runs (reported by its agent).
    pub version: String,
    /// The target the operator handed it, if any.
    pub target: Option<String>,
    pub phase: Phase,
    /// Not upgrading but unavailable all the same (cordoned by someone else, not Ready, or its
    /// agent offline): counts against maxUnavailable and is not handed a target.
    pub unavailable: bool,
}

/// The part of an OSUpgrade the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub target: String,
    /// Label equality selector; empty selects every node.
    pub selector: BTreeMap<String, String>,
    pub max_unavailable: MaxUnavailable,
}

/// The planner's decision and the counts the OSUpgrade status shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes to hand the target to now.
    pub assign: Vec<String>,
    pub selected: usize,
    pub done: usize,
    pub in_progress: Vec<String>,
    /// Selected nodes unavailable for other reasons (see [`NodeView::unavailable`]).
    pub unavailable: Vec<String>,
    pub pending: usize,
    /// Why the rollout stopped (a node failed or rolled back); nothing is assigned then.
    pub halted: Option<String>,
    /// Nodes would be assigned but the maintenance window is closed.
    pub waiting_for_window: bool,
}

fn selected(r: &Rollout, n: &NodeView) -> bool {
    r.selector.iter().all(|(k, v)| n.labels.get(k) == Some(v))
}

/// Plans one reconcile.
pub fn plan(r: &Rollout, nodes: &[NodeView], window_open: bool) -> Plan {
    let mut sel: Vec<&NodeView> = nodes.iter().filter(|n| selected(r, n)).collect();
    sel.sort_by(|a, b| a.name.cmp(&b.name));
    let mut p = Plan {
        selected: sel.len(),
        ..Plan::default()
    };
    let mut candidates = Vec::new();
    for n in &sel {
        let has_target = n.target.as_deref() == Some(r.target.as_str());
        match (&n.phase, has_target) {
            (Phase::Failed(why), true) => {
                p.halted
                    .get_or_insert(format!("node {} failed: {why}", n.name));
            }
            (Phase::RolledBack, true) => {
                p.halted
                    .get_or_insert(format!("node {} rolled back from {}", n.name, r.target));
            }
            _ if n.version == r.target
                && !matches!(n.phase, Phase::Rebooting | Phase::Verifying) =>
            {
                p.done += 1
            }
            (_, true) => p.in_progress.push(n.name.clone()),
            (_, false) if n.unavailable => p.unavailable.push(n.name.clone()),
            (_, false) => candidates.push(n.name.clone()),
        }
    }
    p.pending = candidates.len();
    if p.halted.is_some() {
        return p;
    }
    let room = r
        .max_unavailable
        .resolve(p.selected)
        .saturating_sub(p.in_progress.len() + p.unavailable.len());
    if room > 0 && !candidates.is_empty() && !window_open {
        p.waiting_for_window = true;
        return p;
    }
    p.assign = candidates.into_iter().take(room).collect();
    p.pending -= p.assign.len();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, version: &str) -> NodeView {
        NodeView {
            name: name.into(),
            labels: BTreeMap::from([("pool".into(), "workers".into())]),
            version: version.into(),
            target: None,
            phase: Phase::Idle,
            unavailable: false,
        }
    }

    fn rollout(max: MaxUnavailable) -> Rollout {
        Rollout {
            target: "2.0.0".into(),
            selector: BTreeMap::from([("pool".into(), "workers".into())]),
            max_unavailable: max,
        }
    }

    /// Applies a plan the way the operator does: assigned nodes get the target.
    fn apply(nodes: &mut [NodeView], p: &Plan) {
        for n in nodes.iter_mut() {
            if p.assign.contains(&n.name) {
                n.target = Some("2.0.0".into());
            }
        }
    }

    #[test]
    fn five_nodes_two_at_a_time_until_done() {
        let r = rollout(MaxUnavailable::Count(2));
        let mut nodes: Vec<NodeView> = (1..=5).map(|i| node(&format!("n{i}"), "1.0.0")).collect();
        let mut rounds = 0;
        loop {
            let p = plan(&r, &nodes, true);
            assert!(p.in_progress.len() + p.assign.len() <= 2, "{p:?}");
            if p.done == 5 {
                break;
            }
            apply(&mut nodes, &p);
            // A restarted operator planning again on the same reports assigns nobody more.
            let again = plan(&r, &nodes, true);
            assert!(again.assign.is_empty(), "double scheduling: {again:?}");
            // The in-progress nodes finish.
            for n in nodes
                .iter_mut()
                .filter(|n| n.target.is_some() && n.version != "2.0.0")
            {
                n.version = "2.0.0".into();
                n.phase = Phase::Done;
            }
            rounds += 1;
            assert!(rounds < 10);
        }
        assert_eq!(rounds, 3); // 2 + 2 + 1
    }

    #[test]
    fn a_failed_or_rolled_back_node_stops_the_rollout() {
        let r = rollout(MaxUnavailable::Count(2));
        let mut nodes: Vec<NodeView> = (1..=5).map(|i| node(&format!("n{i}"), "1.0.0")).collect();
        let p = plan(&r, &nodes, true);
        apply(&mut nodes, &p);
        nodes[0].phase = Phase::Failed("drain timed out after 300 s".into());
        let p = plan(&r, &nodes, true);
        assert!(p.assign.is_empty());
        assert_eq!(
            p.halted.as_deref(),
            Some("node n1 failed: drain timed out after 300 s")
        );
        nodes[0].phase = Phase::Idle;
        nodes[1].phase = Phase::RolledBack;
        let p = plan(&r, &nodes, true);
        assert_eq!(p.halted.as_deref(), Some("node n2 rolled back from 2.0.0"));
        // A failure under an older target does not stop this rollout.
        nodes[1].target = Some("1.5.0".into());
        assert_eq!(plan(&r, &nodes, true).halted, None);
    }

    #[test]
    fn a_closed_window_assigns_nothing_but_lets_running_nodes_finish() {
        let r = rollout(MaxUnavailable::Percent(40));
        let mut nodes: Vec<NodeView> = (1..=5).map(|i| node(&format!("n{i}"), "1.0.0")).collect();
        let p = plan(&r, &nodes, false);
        assert!(p.assign.is_empty() && p.waiting_for_window, "{p:?}");
        nodes[0].target = Some("2.0.0".into());
        nodes[0].phase = Phase::Draining;
        let p = plan(&r, &nodes, false);
        assert_eq!(p.in_progress, vec!["n1".to_string()]);
        assert!(p.waiting_for_window);
    }

    #[test]
    fn nodes_unavailable_for_other_reasons_use_up_the_budget() {
        let r = rollout(MaxUnavailable::Count(2));
        let mut nodes: Vec<NodeView> = (1..=5).map(|i| node(&format!("n{i}"), "1.0.0")).collect();
        nodes[0].unavailable = true; // cordoned by an admin
        let p = plan(&r, &nodes, true);
        assert_eq!(p.assign, vec!["n2".to_string()]);
        assert_eq!(p.unavailable, vec!["n1".to_string()]);
        nodes[1].unavailable = true;
        assert!(plan(&r, &nodes, true).assign.is_empty());
    }

    #[test]
    fn only_selected_nodes_count() {
        let r = rollout(MaxUnavailable::Count(1));
        let mut other = node("cp1", "1.0.0");
        other.labels.clear();
        let nodes = vec![other, node("n1", "1.0.0"), node("n2", "2.0.0")];
        let p = plan(&r, &nodes, true);
        assert_eq!((p.selected, p.done, p.pending), (2, 1, 0));
        assert_eq!(p.assign, vec!["n1".to_string()]);
    }
}
