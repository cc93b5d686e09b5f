//! The power-cut campaign: install updates into a real image under QEMU, cut the power at a
//! failpoint (`echo o > /proc/sysrq-trigger` from inside the updater, see
//! `boot/src/failpoint.rs`) or at a random moment of an HTTP install (QEMU killed by PID: the
//! guest gets no chance to sync), boot the same disk again with the same firmware variables,
//! and check the invariants:
//!
//! 1. the machine reaches `kiln-ready`, on a slot/version that was good before the cut or on
//!    the new version, and then only if the slot holds exactly the verified root of the bundle
//!    (sha256 of the partition read back in the guest against the manifest);
//! 2. `kiln-updater status --json` is coherent: the booted slot is good with that version; a
//!    good slot only ever holds a version that was good there before, or the new one;
//! 3. files written to `/etc` and `/var` before the first install are intact;
//! 4. running the same install again completes (unless the new version already runs).
//!
//! One disk is used for a whole chain of cuts; every cut installs a bundle with the next
//! sequence number.
//!
//! [`plan`] generates the cuts (pure), [`campaign`] runs them, [`report`] tabulates outcomes.

mod campaign;
mod plan;
mod report;

pub use campaign::Campaign;
pub use plan::{failpoint_cuts, random_cuts, unlisted_failpoints, Cut, Phase};
pub use report::{loader_name, table, Outcome};
