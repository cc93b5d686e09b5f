//! The on-device side: finding the slots, the ESP, the persist state, HTTP bundles, and the
//! operations behind `kiln-updater install | status | mark-good | rollback | reconcile`, and
//! `extract` (one payload into a file, also on a host).

pub mod disk;
pub mod extract;
pub mod http;
pub mod ops;
pub mod policy;
pub mod progress;
pub mod state_file;
