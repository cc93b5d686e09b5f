//! Harness for Kiln's end-to-end tests: builds images, boots them in QEMU (OVMF, per-disk
//! firmware variables) and talks to the serial console with expect-style waits. Every wait has
//! its own timeout; a failed wait reports what it waited for and the last console lines.

pub mod cluster;
mod console;
pub mod delta;
pub mod faults;
pub mod fixtures;
pub mod http;
pub mod updater;

pub use console::{Console, ConsoleError};
