//! The node agent's state machine. `step` is pure: (state, event) → (new state, actions). The
//! agent performs the actions, feeding their results back as events, and commits the state to
//! persist ([`StateFile::commit`]) before acting on it, so a reboot in the middle — by design
//! after `FlipAndReboot`, or a power cut anywhere — resumes from the last committed state.
//!
//! Order, as KubeOS and brupop learned it: stage (download + verify into the inactive slot,
//! no flip) before cordoning, so the node is unschedulable only for the drain and the reboot;
//! flip only after the drain succeeded; a failed drain uncordons and reports without flipping.

use crate::rollout::Phase;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub version: String,
    pub bundle_url: String,
    /// The OSUpgrade that handed it out (its drain policy applies).
    #[serde(default)]
    pub osupgrade: Option<String>,
    /// The bundle's manifest digest the OSUpgrade pins (`sha256:HEX`), passed to kiln-updater.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
}

impl Target {
    /// The same target (version and bundle), whoever handed it out.
    pub fn same(&self, o: &Target) -> bool {
        self.version == o.version && self.bundle_url == o.bundle_url
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Idle,
    Staging(Target),
    Draining(Target),
    /// Flipped; rebooting into the target's slot.
    Rebooting(Target),
    /// Booted the target's slot; waiting for mark-good.
    Verifying(Target),
    Done(Target),
    Failed {
        target: Target,
        reason: String,
    },
    RolledBack(Target),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The operator handed this node a target.
    NewTarget(Target),
    Staged,
    StageFailed(String),
    Drained,
    /// Drain gave up (timeout; PodDisruptionBudget refusals until then).
    DrainFailed(String),
    /// Making the staged slot boot next failed (nothing was flipped, or the reboot failed).
    FlipFailed(String),
    /// The operator handed a target this node already runs.
    AlreadyRunning(Target),
    /// The Node names a target no OSUpgrade selecting this node names ([`crate::admit`]).
    Refused(Target, String),
    /// The agent started after a boot, running `version`; `blessed` once mark-good succeeded.
    Booted {
        version: String,
        blessed: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `kiln-updater install --no-activate` of the target's bundle (its version and manifest
    /// digest expected): download and verify, no flip.
    Stage(Target),
    Cordon,
    /// Evict pods through the Eviction API (DaemonSet and mirror pods skipped).
    Drain,
    /// Flip the bootloader to the staged slot and reboot.
    FlipAndReboot,
    Uncordon,
    /// Report the phase (and the running version) on the Node.
    Report(Phase),
}

fn report(p: Phase) -> Action {
    Action::Report(p)
}

/// One transition. Events that do not apply in a state leave it unchanged with no action.
pub fn step(state: &State, event: &Event) -> (State, Vec<Action>) {
    use Action::*;
    match (state, event) {
        // A new target is taken from any resting state (never in the middle of an upgrade).
        (
            State::Idle | State::Done(_) | State::Failed { .. } | State::RolledBack(_),
            Event::NewTarget(t),
        ) => {
            // A refused target is checked again on every change of the Node; once admitted it
            // is taken.
            let same = match state {
                State::Done(d) | State::RolledBack(d) => d.same(t),
                State::Failed { target: d, reason } => d.same(t) && !reason.starts_with(REFUSED),
                _ => false,
            };
            if same {
                // Already handled this target; a failed one is not retried without a change.
                return (state.clone(), vec![]);
            }
            (
                State::Staging(t.clone()),
                vec![report(Phase::Staging), Stage(t.clone())],
            )
        }
        (
            State::Idle | State::Done(_) | State::Failed { .. } | State::RolledBack(_),
            Event::Refused(t, why),
        ) => {
            let reason = format!("{REFUSED}{why}");
            match state {
                State::Failed { target, reason: r } if target.same(t) && *r == reason => {
                    (state.clone(), vec![])
                }
                _ => (
                    State::Failed {
                        target: t.clone(),
                        reason: reason.clone(),
                    },
                    vec![report(Phase::Failed(reason))],
                ),
            }
        }
        (State::Staging(t), Event::Staged) => (
            State::Draining(t.clone()),
            vec![report(Phase::Draining), Cordon, Drain],
        ),
        (State::Staging(t), Event::StageFailed(why)) => (
            State::Failed {
                target: t.clone(),
                reason: format!("staging failed: {why}"),
            },
            vec![report(Phase::Failed(format!("staging failed: {why}")))],
        ),
        (State::Draining(t), Event::Drained) => (
            State::Rebooting(t.clone()),
            vec![report(Phase::Rebooting), FlipAndReboot],
        ),
        (State::Draining(t), Event::DrainFailed(why)) => (
            State::Failed {
                target: t.clone(),
                reason: format!("drain failed: {why}"),
            },
            vec![
                Uncordon,
                report(Phase::Failed(format!("drain failed: {why}"))),
            ],
        ),
        // After the reboot (or a cut before it happened).
        (State::Rebooting(target), Event::Booted { version, blessed }) => {
            if *version != target.version {
                // Either the flip never happened (cut before the reboot) or the loader came
                // back to the old slot after failed tries: the latter is a rollback. The
                // updater records it; the agent reports it and gives the node back.
                return (
                    State::RolledBack(target.clone()),
                    vec![Uncordon, report(Phase::RolledBack)],
                );
            }
            if *blessed {
                (
                    State::Done(target.clone()),
                    vec![Uncordon, report(Phase::Done)],
                )
            } else {
                (
                    State::Verifying(target.clone()),
                    vec![report(Phase::Verifying)],
                )
            }
        }
        (
            State::Verifying(t),
            Event::Booted {
                version,
                blessed: true,
            },
        ) if *version == t.version => (State::Done(t.clone()), vec![Uncordon, report(Phase::Done)]),
        // The new slot never got blessed and the loader went back to the old one.
        (State::Verifying(t), Event::Booted { version, .. }) if *version != t.version => (
            State::RolledBack(t.clone()),
            vec![Uncordon, report(Phase::RolledBack)],
        ),
        (State::Rebooting(t), Event::FlipFailed(why)) => {
            let reason = format!("switching to the new slot failed: {why}");
            (
                State::Failed {
                    target: t.clone(),
                    reason: reason.clone(),
                },
                vec![Uncordon, report(Phase::Failed(reason))],
            )
        }
        (
            State::Idle | State::Done(_) | State::Failed { .. } | State::RolledBack(_),
            Event::AlreadyRunning(t),
        ) => (State::Done(t.clone()), vec![Uncordon, report(Phase::Done)]),
        // A cut while staging or draining: start the step again (staging resumes from the
        // chunks already verified in the slot; the node is still cordoned while draining).
        (State::Staging(t), Event::Booted { .. }) => (
            state.clone(),
            vec![report(Phase::Staging), Stage(t.clone())],
        ),
        (State::Draining(_), Event::Booted { .. }) => {
            (state.clone(), vec![report(Phase::Draining), Cordon, Drain])
        }
        _ => (state.clone(), vec![]),
    }
}

/// Whether a target handed out now would be taken (the state machine rests and has not
/// handled this target already): only then does the agent check it against its OSUpgrade.
pub fn takes_targets(state: &State, t: &Target) -> bool {
    match state {
        State::Idle => true,
        State::Failed { reason, .. } if reason.starts_with(REFUSED) => true,
        State::Done(d) | State::Failed { target: d, .. } | State::RolledBack(d) => !d.same(t),
        _ => false,
    }
}

/// How the reason of a refused target begins (it is checked again, unlike other failures).
pub const REFUSED: &str = "target refused: ";

/// What to do again when the API comes back (after a failed call or a lost connection): every
/// action is idempotent, so the agent redoes the current state's actions and reports it.
pub fn resume(state: &State) -> Vec<Action> {
    use Action::*;
    match state {
        // Tells the operator the running version.
        State::Idle => vec![report(Phase::Idle)],
        State::Staging(t) => vec![report(Phase::Staging), Stage(t.clone())],
        State::Draining(_) => vec![report(Phase::Draining), Cordon, Drain],
        // Still the boot that committed Rebooting (the agent process was restarted, or the API
        // came back before the reboot): flip and reboot again — `kiln-updater activate` is
        // idempotent. After a real boot the Booted event decides instead.
        State::Rebooting(_) => vec![report(Phase::Rebooting), FlipAndReboot],
        State::Verifying(_) => vec![report(Phase::Verifying)],
        State::Done(_) => vec![Uncordon, report(Phase::Done)],
        State::Failed { reason, .. } => vec![Uncordon, report(Phase::Failed(reason.clone()))],
        State::RolledBack(_) => vec![Uncordon, report(Phase::RolledBack)],
    }
}

/// The target a state is about.
pub fn target(state: &State) -> Option<&Target> {
    match state {
        State::Idle => None,
        State::Staging(t)
        | State::Draining(t)
        | State::Rebooting(t)
        | State::Verifying(t)
        | State::Done(t)
        | State::RolledBack(t)
        | State::Failed { target: t, .. } => Some(t),
    }
}

/// The state on persist: JSON, committed by write to a temporary file, fsync, rename, fsync of
/// the directory.
pub struct StateFile {
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct StateError {
    pub path: String,
    pub message: String,
}

impl StateFile {
    pub fn new(path: &Path) -> StateFile {
        StateFile { path: path.into() }
    }

    fn err(&self, m: impl std::fmt::Display) -> StateError {
        StateError {
            path: self.path.display().to_string(),
            message: m.to_string(),
        }
    }

    /// The committed state; `Idle` when there is none yet.
    pub fn load(&self) -> Result<State, StateError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| self.err(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::Idle),
            Err(e) => Err(self.err(e)),
        }
    }

    pub fn commit(&self, s: &State) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(s).map_err(|e| self.err(e))?;
        self.write_durable(&self.path, &bytes)
    }

    /// Where the id of the last boot told to the state machine is kept.
    fn boot_path(&self) -> PathBuf {
        self.path.with_extension("boot")
    }

    /// The boot id recorded by [`StateFile::record_boot`], if any.
    pub fn last_boot(&self) -> Result<Option<String>, StateError> {
        match std::fs::read_to_string(self.boot_path()) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Records that boot `id` has been told to the state machine.
    pub fn record_boot(&self, id: &str) -> Result<(), StateError> {
        self.write_durable(&self.boot_path(), format!("{id}\n").as_bytes())
    }

    /// Temporary file, fsync, rename, fsync of the directory ([`kiln_io::write_durable`]).
    fn write_durable(&self, path: &Path, bytes: &[u8]) -> Result<(), StateError> {
        kiln_io::write_durable(path, bytes).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests;
