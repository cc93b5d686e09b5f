//! systemd-boot loader configuration and Boot Loader Specification (type 1) entries.

use crate::{esp_initrd, esp_kernel, Slot};

/// Path of the removable-media loader that firmware boots without any EFI variable.
pub const LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// `loader/loader.conf`: no menu delay, newest entry by version wins.
pub fn loader_conf() -> String {
    "timeout 0\nconsole-mode keep\neditor no\n".to_string()
}

/// File name of a slot's entry under `loader/entries/`, without boot counting.
pub fn entry_file_name(slot: Slot) -> String {
    format!("kiln-{}.conf", slot.name())
}

/// What goes into one slot's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub slot: Slot,
    /// Human name shown in the menu (image name).
    pub title: String,
    /// Image version booted by this entry.
    pub version: String,
    /// Kernel command line, complete.
    pub options: String,
}

/// Renders a BLS type 1 entry. All Kiln entries share `sort-key kiln`, so the loader orders
/// them by `version`; kernel and initrd are the slot's own files on the ESP.
pub fn render_entry(e: &Entry) -> String {
    format!(
        "title {title} ({version}, slot {slot})\nsort-key kiln\nversion {version}\nlinux /{kernel}\ninitrd /{initrd}\noptions {options}\n",
        title = e.title,
        version = e.version,
        slot = e.slot,
        kernel = esp_kernel(e.slot),
        initrd = esp_initrd(e.slot),
        options = e.options,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_slot_files_and_options() {
        let text = render_entry(&Entry {
            slot: Slot::B,
            title: "kiln".into(),
            version: "2.0".into(),
            options: "root=PARTUUID=x kiln.slot=b".into(),
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"linux /kiln/b/vmlinuz"));
        assert!(lines.contains(&"initrd /kiln/b/initrd.img"));
        assert!(lines.contains(&"options root=PARTUUID=x kiln.slot=b"));
        assert!(lines.contains(&"version 2.0"));
        assert_eq!(entry_file_name(Slot::A), "kiln-a.conf");
    }
}
