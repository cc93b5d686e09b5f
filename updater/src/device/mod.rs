//! The on-device side: finding the slots, the ESP, the persist state, HTTP bundles, and the
//! operations behind `kiln-updater install | status | mark-good | rollback | reconcile`.

pub mod disk;
pub mod http;
pub mod ops;
pub mod progress;
pub mod state_file;
