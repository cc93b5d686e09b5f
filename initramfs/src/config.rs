//! What the image builder tells `kiln-init`: written as JSON at [`CONFIG_PATH`] in the initramfs.

use kiln_overlays::Layout;
use serde::{Deserialize, Serialize};

/// Path of the config inside the initramfs.
pub const CONFIG_PATH: &str = "etc/kiln/init.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// Image name and version, for console messages.
    pub name: String,
    pub version: String,
    /// Kernel modules to load, as paths inside the initramfs, dependencies first.
    pub modules: Vec<String>,
    /// Filesystem type of the root slots (`erofs` or `ext4`).
    pub root_fstype: String,
    /// GPT partition label of the persist partition (on the same disk as the root).
    pub persist_label: String,
    /// Writable layout applied on top of the read-only root.
    pub layout: Layout,
    /// Program executed in the new root.
    pub init: String,
    /// How long to wait for the root device to appear.
    pub root_wait_secs: u64,
    /// Module parameters by module name (`softdog` → `soft_margin=60`).
    #[serde(default)]
    pub module_params: std::collections::BTreeMap<String, String>,
    /// Arm `/dev/watchdog` for this many seconds before switching root: a boot that hangs
    /// before the image starts feeding it is reset (and counted as a failed try).
    #[serde(default)]
    pub watchdog_secs: Option<u32>,
    /// FAT checker inside the initramfs (`/sbin/fsck.fat`), run with `-a` on the ESP before
    /// anything mounts it: a power cut in the middle of a FAT rename (a loader-entry bless, a
    /// grubenv replace) can leave two directory entries sharing clusters, and deleting either
    /// later frees the other's data.
    #[serde(default)]
    pub esp_fsck: Option<String>,
    /// On a disk larger than the image, grow the persist partition (the last one) and its
    /// filesystem to the end of the disk, once (`partitions.grow_persist`).
    #[serde(default)]
    pub grow_persist: bool,
    /// Modules loaded only for a network boot (`kiln.pxe=`), dependencies first.
    #[serde(default)]
    pub pxe_modules: Vec<String>,
    /// Size of a root slot in bytes: the largest root image a live network boot fetches into
    /// RAM (absent in older images: RAM alone bounds it).
    #[serde(default)]
    pub root_slot_bytes: Option<u64>,
    /// The root slots carry a dm-verity tree (`[rootfs] verity`): the root is mounted only
    /// through dm-verity, with the hash `kiln.verity=` gives, and a command line without one is
    /// refused.
    #[serde(default)]
    pub verity: bool,
}
