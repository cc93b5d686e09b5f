//! The kernel command line, defined once: the builder and the updater render a slot's line
//! ([`slot_cmdline`], [`uki_cmdline`]) and kiln-init and the updater parse it ([`parse`]).

use crate::Slot;

/// What kiln-init takes from `/proc/cmdline`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `root=PARTUUID=<guid>` (lower-cased).
    pub root_partuuid: Option<String>,
    /// `kiln.slot=a|b`.
    pub slot: Option<String>,
    /// `kiln.verity=<root hash>`: the root slot is opened through dm-verity.
    pub verity: Option<String>,
    /// `kiln.init=/path` overrides the configured init (debugging).
    pub init: Option<String>,
    /// `kiln.pxe=live`: network boot, root image fetched over HTTP and run from RAM.
    pub pxe: Option<String>,
    /// Network settings for `kiln.pxe` (as iPXE knows them: `kiln.ip=${ip}`
    /// `kiln.netmask=${netmask}` `kiln.gw=${gateway}` `kiln.mac=${mac}`).
    pub ip: Option<String>,
    pub netmask: Option<String>,
    pub gateway: Option<String>,
    pub mac: Option<String>,
    /// `kiln.root_url=` and `kiln.root_sha256=`: the root image of a live boot.
    pub root_url: Option<String>,
    pub root_sha256: Option<String>,
    /// `kiln.pxe=install`: `kiln.image_url=` (raw or zstd disk image), `kiln.image_sha256=` (of
    /// the raw image) and the whole disk to write, `kiln.install_disk=/dev/vda`.
    pub image_url: Option<String>,
    pub image_sha256: Option<String>,
    pub install_disk: Option<String>,
    /// `kiln.fetch_timeout=SECS`: the deadline of a network boot's download (the root image of
    /// a live boot, the disk image of an install); unparsable values are ignored.
    pub fetch_timeout_secs: Option<u64>,
}

/// Which partition is the root slot. `root=PARTUUID=` when given; else the GPT label of the
/// `kiln.slot=` slot (`root-a`, `root-b`) — the form of a signed unified kernel image's
/// command line, which cannot know a device's partition GUIDs (they are its factory image's)
/// — and then only with a root hash (`kiln.verity=`): the root is the first local disk's
/// partition of that label whose verity tree matches the hash, so another Kiln disk (an
/// installer stick, a clone of another version) is passed over, and what is mounted is bound
/// by the signed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSelector {
    PartUuid(String),
    Label { label: &'static str, hash: String },
}

impl RootSelector {
    pub fn matches(&self, p: &crate::gpt::PartEntry) -> bool {
        match self {
            RootSelector::PartUuid(u) => p.part_guid == *u,
            RootSelector::Label { label, .. } => p.name == *label,
        }
    }
}

impl std::fmt::Display for RootSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootSelector::PartUuid(u) => write!(f, "PARTUUID {u}"),
            RootSelector::Label { label, .. } => write!(f, "label {label}"),
        }
    }
}

impl Cmdline {
    /// The root partition this command line names (see [`RootSelector`]); None when it names
    /// none (no `root=PARTUUID=`, and no slot with a root hash).
    pub fn root(&self) -> Option<RootSelector> {
        if let Some(u) = &self.root_partuuid {
            return Some(RootSelector::PartUuid(u.clone()));
        }
        let hash = self.verity.clone()?;
        let slot: Slot = self.slot.as_deref()?.parse().ok()?;
        Some(RootSelector::Label {
            label: slot.partlabel(),
            hash,
        })
    }
}

/// The command-line word that carries a slot's dm-verity root hash (hex sha256) to kiln-init.
/// Not `roothash=`: systemd's veritysetup generator in a distro root would act on that.
pub const VERITY_ARG: &str = "kiln.verity=";

/// The kernel command line of a slot: its root partition, read-only, the slot name (kiln-init,
/// the updater and the readiness script read `kiln.slot=`), the root's dm-verity hash when it
/// has one, then the image's own arguments.
pub fn slot_cmdline(
    partuuid: impl std::fmt::Display,
    slot: Slot,
    verity: Option<&str>,
    extra: &str,
) -> String {
    let verity = verity
        .map(|h| format!(" {VERITY_ARG}{h}"))
        .unwrap_or_default();
    format!("root=PARTUUID={partuuid} ro kiln.slot={slot}{verity} {extra}")
        .trim()
        .to_string()
}

/// The command line signed into a slot's unified kernel image: like [`slot_cmdline`] but with
/// no `root=`. A bundle's image is built without knowing the device's partition GUIDs (they
/// are the factory image's), so kiln-init and the updater find the root by its GPT label
/// (`root-a`, `root-b`) on the boot disk; the root hash, signed here, then binds its content.
pub fn uki_cmdline(slot: Slot, verity: &str, extra: &str) -> String {
    format!("ro kiln.slot={slot} {VERITY_ARG}{verity} {extra}")
        .trim()
        .to_string()
}

/// The image's own kernel arguments in a command line: without the per-slot words (`root=`,
/// `ro`, `kiln.slot=`, `kiln.verity=`) and without what the loaders add at boot (`BOOT_IMAGE=`
/// from GRUB, `initrd=` from systemd-boot for each initrd). Slot entries are rebuilt from this
/// on every install, so anything a loader adds would otherwise accumulate — which the 200-cut
/// campaign found: after ~110 updates systemd-boot's `initrd=` words made the command line
/// longer than the EFI stub's 2 KiB and `console=` was cut off — and one slot's root hash
/// would be copied into the other's entry.
pub fn image_args(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter(|w| {
            !w.starts_with("root=")
                && !w.starts_with("kiln.slot=")
                && !w.starts_with(VERITY_ARG)
                && !w.starts_with("BOOT_IMAGE=")
                && !w.starts_with("initrd=")
                && *w != "ro"
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The root hash a command line gives (`kiln.verity=`; the last one counts, as the kernel's
/// own parameters do).
pub fn verity_arg(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(VERITY_ARG))
        .next_back()
}

/// Whether `s` is a root hash as the command line carries it: 64 lower-case hex digits.
pub fn is_root_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a command line; unknown words are ignored, the last occurrence of a key wins.
pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for word in text.split_ascii_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k {
            "root" => {
                if let Some(u) = v.strip_prefix("PARTUUID=") {
                    c.root_partuuid = Some(u.to_ascii_lowercase());
                }
            }
            "kiln.slot" => c.slot = Some(v.to_string()),
            "kiln.init" => c.init = Some(v.to_string()),
            "kiln.verity" => c.verity = Some(v.to_string()),
            "kiln.pxe" => c.pxe = Some(v.to_string()),
            "kiln.ip" => c.ip = Some(v.to_string()),
            "kiln.netmask" => c.netmask = Some(v.to_string()),
            "kiln.gw" => c.gateway = Some(v.to_string()),
            "kiln.mac" => c.mac = Some(v.to_ascii_lowercase()),
            "kiln.root_url" => c.root_url = Some(v.to_string()),
            "kiln.root_sha256" => c.root_sha256 = Some(v.to_ascii_lowercase()),
            "kiln.image_url" => c.image_url = Some(v.to_string()),
            "kiln.image_sha256" => c.image_sha256 = Some(v.to_ascii_lowercase()),
            "kiln.install_disk" => c.install_disk = Some(v.to_string()),
            "kiln.fetch_timeout" => c.fetch_timeout_secs = v.parse().ok().filter(|&s| s > 0),
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_command_line() {
        assert_eq!(
            slot_cmdline("abc", Slot::B, None, "console=ttyS0 quiet"),
            "root=PARTUUID=abc ro kiln.slot=b console=ttyS0 quiet"
        );
        assert_eq!(
            slot_cmdline("abc", Slot::A, None, ""),
            "root=PARTUUID=abc ro kiln.slot=a"
        );
        let h = "ab".repeat(32);
        let line = slot_cmdline("abc", Slot::A, Some(&h), "quiet");
        assert_eq!(
            line,
            format!("root=PARTUUID=abc ro kiln.slot=a kiln.verity={h} quiet")
        );
        assert_eq!(verity_arg(&line), Some(h.as_str()));
        assert!(is_root_hash(&h) && !is_root_hash(&h.to_uppercase()) && !is_root_hash("ab"));
        // What a loader booted, back to the image's own words: no slot's hash stays in them.
        let booted = format!("BOOT_IMAGE=/kiln/a/vmlinuz {line} initrd=\\kiln\\a\\initrd.img");
        assert_eq!(image_args(&booted), "quiet");
        assert_eq!(verity_arg("quiet"), None);
        let uki = uki_cmdline(Slot::B, &h, "console=ttyS0 quiet");
        assert_eq!(
            uki,
            format!("ro kiln.slot=b kiln.verity={h} console=ttyS0 quiet")
        );
        assert_eq!(image_args(&uki), "console=ttyS0 quiet");
    }

    #[test]
    fn takes_root_slot_and_ignores_the_rest() {
        let c = parse("BOOT_IMAGE=/x console=ttyS0 root=PARTUUID=ABCD-01 quiet kiln.slot=b rw\n");
        assert_eq!(c.root_partuuid.as_deref(), Some("abcd-01"));
        assert_eq!(c.slot.as_deref(), Some("b"));
        assert_eq!(c.init, None);
        assert_eq!(parse("root=/dev/vda2").root_partuuid, None);
    }

    #[test]
    fn takes_the_pxe_keys() {
        let c = parse(
            "initrd=initrd.img console=ttyS0 kiln.pxe=live kiln.slot=live kiln.ip=10.0.2.15 \
             kiln.netmask=255.255.255.0 kiln.gw=10.0.2.2 kiln.mac=52:54:00:AB:CD:EF \
             kiln.root_url=http://10.0.2.2:8000/root.img kiln.root_sha256=ABCD",
        );
        assert_eq!(c.pxe.as_deref(), Some("live"));
        assert_eq!(c.ip.as_deref(), Some("10.0.2.15"));
        assert_eq!(c.netmask.as_deref(), Some("255.255.255.0"));
        assert_eq!(c.gateway.as_deref(), Some("10.0.2.2"));
        assert_eq!(c.mac.as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(c.root_url.as_deref(), Some("http://10.0.2.2:8000/root.img"));
        assert_eq!(c.root_sha256.as_deref(), Some("abcd"));
        let c = parse("kiln.pxe=install kiln.install_disk=/dev/vda kiln.image_url=http://h/d.zst kiln.image_sha256=EF");
        assert_eq!(c.pxe.as_deref(), Some("install"));
        assert_eq!(c.install_disk.as_deref(), Some("/dev/vda"));
        assert_eq!(c.image_url.as_deref(), Some("http://h/d.zst"));
        assert_eq!(c.image_sha256.as_deref(), Some("ef"));
        assert_eq!(c.fetch_timeout_secs, None);
        assert_eq!(parse("kiln.fetch_timeout=20").fetch_timeout_secs, Some(20));
        assert_eq!(parse("kiln.fetch_timeout=0").fetch_timeout_secs, None);
        assert_eq!(parse("kiln.fetch_timeout=x").fetch_timeout_secs, None);
    }

    #[test]
    fn the_root_is_named_by_partuuid_or_by_the_slot_label_with_a_hash() {
        let h = "ab".repeat(32);
        let by_uuid = parse(&format!("root=PARTUUID=AB-1 kiln.slot=b kiln.verity={h}"));
        assert_eq!(by_uuid.root(), Some(RootSelector::PartUuid("ab-1".into())));
        let by_label = parse(&format!("ro kiln.slot=b kiln.verity={h} quiet"));
        assert_eq!(
            by_label.root(),
            Some(RootSelector::Label {
                label: "root-b",
                hash: h.clone()
            })
        );
        assert_eq!(by_label.root().unwrap().to_string(), "label root-b");
        // Without a hash a label alone never picks a root (nothing would bind its content).
        assert_eq!(parse("ro kiln.slot=b quiet").root(), None);
        assert_eq!(parse(&format!("kiln.slot=c kiln.verity={h}")).root(), None);
        assert_eq!(parse(&format!("kiln.verity={h}")).root(), None);
    }
}
