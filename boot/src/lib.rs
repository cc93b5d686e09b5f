//! The on-device contract, one home for each fact the builder, kiln-init and the updater share:
//! slot names, the content of the EFI system partition (loader entries, grubenv), the kernel
//! command line ([`cmdline`]), the release file and paths ([`contract`]), GPT reading
//! ([`gpt`]), filesystem superblocks ([`image_len`]), a slot's verity tree ([`slot_verity`],
//! [`verity`]) and finding the boot disk among the local disks ([`disk`]).
//!
//! Renderers and parsers are pure; [`disk`], [`slot_verity`] and the ESP's durable rename read
//! and write devices and files.

pub mod cmdline;
pub mod contract;
pub mod disk;
pub mod failpoint;
pub mod gpt;
pub mod grub;
pub mod image_len;
pub mod loader;
mod slot;
pub mod slot_verity;
pub mod state;
pub mod systemd_boot;
pub mod verity;

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

/// Path on the ESP of a slot's signed unified kernel image (Secure Boot images): kernel,
/// initrd, command line and os-release in one signed PE file. Not under `EFI/Linux`, so
/// systemd-boot lists it only through Kiln's entry (with its boot counter), never twice.
pub fn esp_uki(slot: Slot) -> String {
    format!("{}/kiln.efi", esp_slot_dir(slot))
}

/// Renames `from` over `to` on the ESP and makes it durable. On FAT a rename over an existing
/// file frees the old file's clusters at once, but the directory slot only gets the new file's
/// first cluster and size when the *renamed file's* inode is written back: fsyncing only the
/// directory can persist the freed clusters while the slot still points at them (after a cut:
/// "cluster chain length is 0", the file is lost). So the renamed file is fsynced first, then
/// the directory. `hit` names the failpoint between the rename and the syncs.
pub fn rename_durable(
    from: &std::path::Path,
    to: &std::path::Path,
    hit: &'static str,
) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    failpoint::hit(hit);
    std::fs::File::open(to)?.sync_all()?;
    systemd_boot::counting::sync_dir(to.parent().unwrap_or(std::path::Path::new(".")))
}
