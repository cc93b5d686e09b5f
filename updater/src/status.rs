//! `kiln-updater status --json`, defined once: the updater renders it, the node agent (and
//! anything else driving a device) reads it with the same types.

use serde::{Deserialize, Serialize};

/// The A/B state of a device and its last install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The slot running now (`a`, `b`).
    pub booted: String,
    pub next_boot: Option<String>,
    pub slots: Vec<SlotStatus>,
    // Missing options read as None (serde's default for Option).
    pub installed_sequence: Option<u64>,
    pub last_install: Option<LastInstall>,
    pub rolled_back_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub slot: String,
    pub version: Option<String>,
    /// good, pending, bad or empty.
    pub state: String,
    pub tries_left: Option<u8>,
}

/// The outcome of the last install (also kept in the device's state file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastInstall {
    pub version: String,
    pub result: String,
    pub time: u64,
    /// Compressed bytes downloaded, and bytes copied from the running slot instead.
    #[serde(default)]
    pub downloaded: u64,
    #[serde(default)]
    pub reused: u64,
}

impl Status {
    /// The booted slot's entry.
    pub fn booted_slot(&self) -> Option<&SlotStatus> {
        self.slots.iter().find(|s| s.slot == self.booted)
    }
}

impl SlotStatus {
    /// Blessed: the slot is good (not pending, bad or empty).
    pub fn is_good(&self) -> bool {
        self.state == "good"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_json() {
        let s = Status {
            booted: "b".into(),
            next_boot: Some("b".into()),
            slots: vec![
                SlotStatus {
                    slot: "a".into(),
                    version: Some("1.0.0".into()),
                    state: "good".into(),
                    tries_left: None,
                },
                SlotStatus {
                    slot: "b".into(),
                    version: Some("2.0.0".into()),
                    state: "pending".into(),
                    tries_left: Some(2),
                },
            ],
            installed_sequence: Some(2),
            last_install: None,
            rolled_back_from: None,
        };
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let b = back.booted_slot().unwrap();
        assert_eq!((b.version.as_deref(), b.is_good()), (Some("2.0.0"), false));
    }
}
