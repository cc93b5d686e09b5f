//! Failpoints: named points between the writes, fsyncs and renames of an install, a flip, a
//! bless and a rollback, where a test can kill the process or cut the machine's power.
//!
//! [`hit`] compiles to nothing unless the `failpoints` feature is on; only the updater built for
//! test images (`scripts/build-device` → `kiln-updater-failpoints`) has it. The spec parser and
//! the list of names are always compiled, so the power-cut campaign can enumerate them.
//!
//! Spec: `name=action[@n]` joined by `;`, e.g. `install.root-chunk=poweroff@5`. Actions:
//! `exit` (the process dies at once, like a kill -9), `poweroff` (`echo o >
//! /proc/sysrq-trigger`: the machine powers off without syncing, like a power cut). `@n` fires
//! on the n-th hit (default 1).

use std::fmt;

/// Every failpoint, in the order an update meets them.
pub const ALL: &[&str] = &[
    // kiln-updater install
    "install.cleared",
    "install.root-chunk",
    "install.root-written",
    "install.kernel-written",
    "install.kernel-renamed",
    "install.initrd-renamed",
    "install.staged",
    // kiln-updater mark-good, rollback, reconcile
    "bless.committed",
    "rollback.committed",
    "reconcile.committed",
    // state file on persist
    "state.written",
    // systemd-boot entries commit
    "sdboot.entry-written",
    "sdboot.entry-renamed",
    "sdboot.stale-removed",
    // grubenv commit (rewritten in place)
    "grub.env-written",
];

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Exit,
    PowerOff,
}

/// One armed failpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    pub name: String,
    pub action: Action,
    /// Fires on this hit (1-based).
    pub nth: u32,
}

impl fmt::Display for Armed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match self.action {
            Action::Exit => "exit",
            Action::PowerOff => "poweroff",
        };
        write!(f, "{}={a}@{}", self.name, self.nth)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("failpoint spec `{0}`: expected name=action[@n]")]
    Syntax(String),
    #[error("unknown failpoint `{0}`")]
    UnknownName(String),
    #[error("failpoint `{0}`: unknown action `{1}` (exit, poweroff)")]
    UnknownAction(String, String),
    #[error("failpoint `{0}`: `@{1}` is not a hit number >= 1")]
    BadCount(String, String),
}

/// Parses a failpoint spec (pure).
pub fn parse(spec: &str) -> Result<Vec<Armed>, SpecError> {
    spec.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, rest) = item
                .split_once('=')
                .ok_or_else(|| SpecError::Syntax(item.to_string()))?;
            let name = name.trim();
            if !ALL.contains(&name) {
                return Err(SpecError::UnknownName(name.to_string()));
            }
            let (action, nth) = match rest.split_once('@') {
                Some((a, n)) => (
                    a,
                    n.parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| SpecError::BadCount(name.into(), n.into()))?,
                ),
                None => (rest, 1),
            };
            let action = match action.trim() {
                "exit" => Action::Exit,
                "poweroff" => Action::PowerOff,
                other => return Err(SpecError::UnknownAction(name.into(), other.into())),
            };
            Ok(Armed {
                name: name.to_string(),
                action,
                nth,
            })
        })
        .collect()
}

#[cfg(feature = "failpoints")]
mod imp {
    use super::{Action, Armed};
    use std::sync::Mutex;

    struct Point {
        armed: Armed,
        hits: u32,
    }

    type Hook = Box<dyn Fn(&Armed) + Send + Sync>;

    static POINTS: Mutex<Vec<Point>> = Mutex::new(Vec::new());
    static BEFORE_FIRE: Mutex<Option<Hook>> = Mutex::new(None);

    /// Arms `points` for this process.
    pub fn arm(points: Vec<Armed>) {
        let mut p = POINTS.lock().unwrap_or_else(|e| e.into_inner());
        p.extend(points.into_iter().map(|armed| Point { armed, hits: 0 }));
    }

    /// Runs `hook` just before a failpoint fires (the updater uses it to disarm a one-shot
    /// failpoint file on persist, so the next boot does not fire it again).
    pub fn before_fire(hook: impl Fn(&Armed) + Send + Sync + 'static) {
        *BEFORE_FIRE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    /// Passes the failpoint `name`: fires it if it is armed and this is its n-th hit.
    pub fn hit(name: &'static str) {
        debug_assert!(super::ALL.contains(&name), "unregistered failpoint {name}");
        let fire = {
            let mut p = POINTS.lock().unwrap_or_else(|e| e.into_inner());
            p.iter_mut().find(|x| x.armed.name == name).and_then(|x| {
                x.hits += 1;
                (x.hits == x.armed.nth).then(|| x.armed.clone())
            })
        };
        let Some(armed) = fire else { return };
        if let Some(h) = BEFORE_FIRE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h(&armed);
        }
        eprintln!("kiln-failpoint: {armed} fires");
        match armed.action {
            Action::Exit => std::process::abort(),
            Action::PowerOff => {
                // Not synced on purpose: whatever is still in the page cache is lost.
                let _ = std::fs::write("/proc/sysrq-trigger", "o");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(60));
                }
            }
        }
    }
}

#[cfg(feature = "failpoints")]
pub use imp::{arm, before_fire, hit};

/// Without the `failpoints` feature a failpoint is nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_actions_and_counts() {
        let a = parse("install.root-chunk=poweroff@5; bless.committed=exit").unwrap();
        assert_eq!(
            a,
            vec![
                Armed {
                    name: "install.root-chunk".into(),
                    action: Action::PowerOff,
                    nth: 5
                },
                Armed {
                    name: "bless.committed".into(),
                    action: Action::Exit,
                    nth: 1
                }
            ]
        );
        assert_eq!(a[0].to_string(), "install.root-chunk=poweroff@5");
        assert_eq!(parse(" ").unwrap(), vec![]);
    }

    #[test]
    fn refuses_bad_specs_by_name() {
        assert_eq!(
            parse("install.nope=exit"),
            Err(SpecError::UnknownName("install.nope".into()))
        );
        assert_eq!(
            parse("install.cleared=halt"),
            Err(SpecError::UnknownAction(
                "install.cleared".into(),
                "halt".into()
            ))
        );
        assert_eq!(
            parse("install.cleared=exit@0"),
            Err(SpecError::BadCount("install.cleared".into(), "0".into()))
        );
        assert_eq!(
            parse("install.cleared"),
            Err(SpecError::Syntax("install.cleared".into()))
        );
    }
}
