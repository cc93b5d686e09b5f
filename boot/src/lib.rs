//! A/B boot: slot names and the content of the EFI system partition.
//!
//! Everything here is pure: it renders file names and file contents; the image builder writes
//! them into the FAT filesystem and (later) the updater commits them on the device.

pub mod grub;
mod slot;
pub mod state;
pub mod systemd_boot;

pub use slot::{Slot, SlotParseError};

/// Directory on the ESP holding a slot's kernel and initrd (`kiln/a`, `kiln/b`).
pub fn esp_slot_dir(slot: Slot) -> String {
    format!("kiln/{}", slot.name())
}

/// Path on the ESP of a slot's kernel.
pub fn esp_kernel(slot: Slot) -> String {
    format!("{}/vmlinuz", esp_slot_dir(slot))
}

/// Path on the ESP of a slot's initrd.
pub fn esp_initrd(slot: Slot) -> String {
    format!("{}/initrd.img", esp_slot_dir(slot))
}
