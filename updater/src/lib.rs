//! Kiln's signed A/B updates.
//!
//! [`bundle`] is the bundle format shared by `kiln bundle` (host) and `kiln-updater` (device):
//! a signed JSON manifest listing content-defined, zstd-compressed chunks of the root image,
//! kernel and initrd. [`install`] streams a bundle's payloads into a target slot, verifying
//! every chunk before it is written and the whole payload as it is written, copying the chunks
//! the running slot already holds ([`seed`]) instead of downloading them.

pub mod bundle;
#[cfg(feature = "device")]
pub mod device;
pub use kiln_boot::image_len;
pub mod install;
pub mod seed;
pub mod slot_index;
pub mod status;
