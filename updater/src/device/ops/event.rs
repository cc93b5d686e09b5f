//! What the operations report as they go. The library hands each [`Event`] to the caller's
//! `say`; `kiln-updater` prints it as `kiln-updater: <event>` (the lines the QEMU tests and
//! the readiness script wait for).

use kiln_boot::Slot;
use std::fmt;

const MIB: f64 = 1048576.0;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The running slot's payload `name` was indexed for a delta (no manifest recorded).
    Indexed {
        name: String,
        slot: Slot,
        chunks: usize,
        bytes: u64,
        ms: u128,
    },
    Installing {
        version: String,
        sequence: u64,
        target: Slot,
    },
    /// The root is written and verified.
    RootWritten {
        chunks: u64,
        fetched: u64,
        reused: u64,
        reused_bytes: u64,
        present: u64,
        booted: Slot,
    },
    /// What the install downloaded and reused, whatever its outcome.
    Downloaded {
        fetched: u64,
        reused_bytes: u64,
        booted: Slot,
    },
    Staged {
        target: Slot,
        tries: u8,
        version: String,
    },
    /// Written with `--no-activate`.
    WrittenOnly {
        target: Slot,
        version: String,
    },
    AlreadyStaged {
        target: Slot,
        version: String,
    },
    /// A staged slot ran out of tries and the loader fell back.
    RolledBack {
        slot: Slot,
        version: String,
        to: Slot,
    },
    MarkedGood {
        slot: Slot,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Indexed {
                name,
                slot,
                chunks,
                bytes,
                ms,
            } => write!(
                f,
                "indexed the {name} of slot {slot} (no manifest recorded for it): {chunks} chunks, {:.1} MiB in {ms} ms",
                *bytes as f64 / MIB
            ),
            Event::Installing {
                version,
                sequence,
                target,
            } => write!(f, "installing {version} (sequence {sequence}) into slot {target}"),
            Event::RootWritten {
                chunks,
                fetched,
                reused,
                reused_bytes,
                present,
                booted,
            } => write!(
                f,
                "root written and verified ({chunks} chunks fetched ({fetched} bytes), {reused} reused from slot {booted} ({reused_bytes} bytes), {present} already in the slot)"
            ),
            Event::Downloaded {
                fetched,
                reused_bytes,
                booted,
            } => write!(
                f,
                "downloaded {:.1} MiB, reused {:.1} MiB from slot {booted} ({}% of the update reused)",
                *fetched as f64 / MIB,
                *reused_bytes as f64 / MIB,
                (reused_bytes * 100)
                    .checked_div(fetched + reused_bytes)
                    .unwrap_or(0)
            ),
            Event::Staged {
                target,
                tries,
                version,
            } => write!(f, "slot {target} staged with {tries} tries; reboot to try {version}"),
            Event::WrittenOnly { target, version } => write!(
                f,
                "slot {target} written and verified with {version}; not bootable until `kiln-updater activate`"
            ),
            Event::AlreadyStaged { target, version } => write!(
                f,
                "slot {target} is already staged with {version}; reboot to try it"
            ),
            Event::RolledBack { slot, version, to } => write!(
                f,
                "slot {slot} ({version}) failed to boot; rolled back to slot {to}"
            ),
            Event::MarkedGood { slot } => write!(f, "slot {slot} marked good"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_the_lines_the_tests_and_scripts_wait_for() {
        let staged = Event::Staged {
            target: Slot::B,
            tries: 3,
            version: "2.0.0".into(),
        };
        assert_eq!(
            staged.to_string(),
            "slot b staged with 3 tries; reboot to try 2.0.0"
        );
        let back = Event::RolledBack {
            slot: Slot::B,
            version: "3.0.0".into(),
            to: Slot::A,
        };
        assert_eq!(
            back.to_string(),
            "slot b (3.0.0) failed to boot; rolled back to slot a"
        );
        let d = Event::Downloaded {
            fetched: 3 << 20,
            reused_bytes: 1 << 20,
            booted: Slot::A,
        };
        assert_eq!(
            d.to_string(),
            "downloaded 3.0 MiB, reused 1.0 MiB from slot a (25% of the update reused)"
        );
        let none = Event::Downloaded {
            fetched: 0,
            reused_bytes: 0,
            booted: Slot::A,
        };
        assert!(none.to_string().ends_with("(0% of the update reused)"));
    }
}
