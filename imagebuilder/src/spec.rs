//! `image.toml`: the declarative image spec. Parsing only (no I/O); [`crate::validate`] checks
//! it against the filesystem.

mod container;
mod size;

pub use container::{Container, ContainerMode, ContainerMount, ContainerRestart};
use kiln_overlays::Layout;
use serde::Deserialize;
pub use size::parse_size;
use size::{de_opt_size, de_size};
use std::path::PathBuf;

/// A whole image spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Image name (also the hostname and the root of all derived GUIDs).
    pub name: String,
    /// Image version, shown by `kiln-ready` and compared by updates.
    pub version: String,
    /// Compatible string: an update is only installed on an image with the same one.
    pub compatible: String,
    pub kernel: KernelSpec,
    pub base: BaseSpec,
    /// Directories copied over the base, in order.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
    /// Files baked into the root (`[[file]]`).
    #[serde(default, rename = "file")]
    pub files: Vec<BakedFile>,
    /// Services started on boot (`[[service]]`).
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    /// Container images baked into the root and run under containerd (`[[container]]`).
    #[serde(default, rename = "container")]
    pub containers: Vec<Container>,
    /// The writable layout over the read-only root.
    #[serde(default)]
    pub persist: Layout,
    #[serde(default)]
    pub partitions: Partitions,
    #[serde(default)]
    pub rootfs: RootfsSpec,
    #[serde(default)]
    pub boot: BootSpec,
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub dev: DevSpec,
    #[serde(default)]
    pub update: UpdateSpec,
    #[serde(default)]
    pub network: NetworkSpec,
    /// The node agent for cluster-triggered upgrades (kiln-agent), when present.
    #[serde(default)]
    pub agent: Option<AgentSpec>,
}

/// Network set-up at boot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Interfaces configured by DHCP (busybox udhcpc), in the background.
    #[serde(default)]
    pub dhcp: Vec<String>,
}

/// `[agent]`: bakes kiln-agent (from scripts/build-device) and runs it as the service
/// `kiln-agent`. It needs the updater (`update.keys`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Absolute path on the device of the kubeconfig naming the API server and the agent's
    /// credentials (provisioned into /etc, which lives on persist; the agent waits for it).
    pub kubeconfig: String,
    /// The node's name in the cluster (default: the hostname).
    #[serde(default)]
    pub node: Option<String>,
}

/// Signed updates: the public keys baked into the read-only root.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// Public key files (`kiln keygen`) trusted to sign bundles for this image.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Signatures from distinct trusted keys a bundle needs.
    #[serde(default = "default_threshold")]
    pub threshold: usize,
    /// How long a boot waits for the services to be healthy before giving up (a pending slot
    /// then reboots and the boot counter decides).
    #[serde(default = "default_health_timeout")]
    pub health_timeout_secs: u64,
    /// Extra health checks (shell command lines) that must all succeed, besides the services
    /// running, before a new slot is blessed.
    #[serde(default)]
    pub health_checks: Vec<String>,
    /// The image's own update sequence, baked into its release file (`kiln build --sequence`
    /// overrides it): a device running the image refuses bundles not above it even with no
    /// state on persist, and `kiln bundle` of the build carries it.
    #[serde(default)]
    pub sequence: Option<u64>,
}

fn default_health_timeout() -> u64 {
    120
}

fn default_threshold() -> usize {
    1
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            keys: Vec::new(),
            threshold: default_threshold(),
            health_timeout_secs: default_health_timeout(),
            health_checks: Vec::new(),
            sequence: None,
        }
    }
}

/// An extracted Debian kernel package: `boot/vmlinuz-<ver>` and `lib/modules/<ver>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    pub dir: PathBuf,
    /// Kernel version; detected from `lib/modules/` when there is exactly one.
    #[serde(default)]
    pub version: Option<String>,
    /// Modules the initramfs loads (their dependencies are added).
    #[serde(default = "default_modules")]
    pub modules: Vec<String>,
}

fn default_modules() -> Vec<String> {
    [
        "virtio_pci",
        "virtio_blk",
        "virtio_net",
        "erofs",
        "overlay",
        "vfat",
        "nls_cp437",
        "nls_ascii",
        "efivarfs",
    ]
    .map(String::from)
    .to_vec()
}

/// The base root: exactly one of `tarball`, `oci` or `dir`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    #[serde(default)]
    pub tarball: Option<PathBuf>,
    #[serde(default)]
    pub oci: Option<PathBuf>,
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// Where a base comes from, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Tarball(PathBuf),
    Oci(PathBuf),
    Dir(PathBuf),
}

/// A file baked into the read-only root.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakedFile {
    pub source: PathBuf,
    /// Absolute path in the image.
    pub dest: String,
    /// Octal mode, e.g. "0755".
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_mode() -> String {
    "0644".into()
}

/// A service started by the image's init.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Command line (run by /bin/sh).
    pub command: String,
    #[serde(default)]
    pub restart: Restart,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Restarted whenever it exits; counted for `kiln-ready`.
    #[default]
    Always,
    /// Run once.
    Never,
}

/// Partition sizes (`"256M"`, `"1G"` or a byte count; whole MiB).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    #[serde(default = "default_esp", deserialize_with = "de_size")]
    pub esp: u64,
    /// Size of each root slot.
    #[serde(default = "default_root", deserialize_with = "de_size")]
    pub root: u64,
    #[serde(default = "default_persist", deserialize_with = "de_size")]
    pub persist: u64,
    /// Total disk size; when set, the partitions must fit in it and persist is unchanged.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub disk: Option<u64>,
    /// On first boot on a larger disk, kiln-init grows persist (partition and ext4) to the
    /// end of the disk and moves the backup GPT there.
    #[serde(default = "yes")]
    pub grow_persist: bool,
}

fn yes() -> bool {
    true
}

const MIB: u64 = 1 << 20;
fn default_esp() -> u64 {
    256 * MIB
}
fn default_root() -> u64 {
    512 * MIB
}
fn default_persist() -> u64 {
    256 * MIB
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions {
            esp: default_esp(),
            root: default_root(),
            persist: default_persist(),
            disk: None,
            grow_persist: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    #[serde(default)]
    pub format: FsFormat,
    /// Append a dm-verity hash tree (sha256, 4 KiB blocks) after the image in its slot, with a
    /// salt derived from the spec; `build.json` records the root hash. On unless a spec turns
    /// it off (`verity = false`): a root that any offline write can change is not immutable.
    #[serde(default = "verity_default")]
    pub verity: bool,
}

fn verity_default() -> bool {
    true
}

impl Default for RootfsSpec {
    fn default() -> Self {
        RootfsSpec {
            format: FsFormat::default(),
            verity: verity_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsFormat {
    #[default]
    Erofs,
    Ext4,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    #[serde(default)]
    pub loader: Loader,
    /// The loader's EFI binary; defaults to Debian's package path for the loader.
    #[serde(default)]
    pub efi: Option<PathBuf>,
    /// Extra kernel command line (root, slot and init are added by Kiln).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Software watchdog (softdog) armed by kiln-init; fed once the boot is healthy and its slot
    /// blessed. Must exceed `update.health_timeout_secs`. Absent: no watchdog.
    #[serde(default)]
    pub watchdog_secs: Option<u32>,
    /// The root's init system: what Kiln generates to start the services and report readiness.
    #[serde(default)]
    pub init: InitChoice,
    /// Secure Boot (systemd-boot with `[rootfs] verity` only): each slot boots a signed unified
    /// kernel image, and the loader is signed, with this db key and certificate.
    #[serde(default)]
    pub secure_boot: Option<SecureBootSpec>,
}

/// `[boot] secure_boot = { key = "db.key", cert = "db.crt" }` (paths relative to the spec;
/// `kiln keygen --secure-boot DIR` makes them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBootSpec {
    /// The db signing key (PEM).
    pub key: PathBuf,
    /// Its certificate (PEM), enrolled in the firmware's db.
    pub cert: PathBuf,
}

/// `[boot] init`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitChoice {
    /// systemd when `/sbin/init` resolves to systemd in the assembled root, else busybox (the
    /// generated inittab; a custom init may read it or ignore it).
    #[default]
    Auto,
    /// busybox `init` with a generated `/etc/inittab`.
    Busybox,
    /// systemd with generated units.
    Systemd,
}

fn default_cmdline() -> String {
    "console=ttyS0,115200 quiet panic=5".into()
}

impl Default for BootSpec {
    fn default() -> Self {
        BootSpec {
            loader: Loader::default(),
            efi: None,
            cmdline: default_cmdline(),
            watchdog_secs: None,
            init: InitChoice::Auto,
            secure_boot: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loader {
    #[default]
    SystemdBoot,
    Grub,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default = "default_formats")]
    pub formats: Vec<OutputFormat>,
}

fn default_formats() -> Vec<OutputFormat> {
    vec![OutputFormat::Raw, OutputFormat::Qcow2]
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec {
            formats: default_formats(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    Raw,
    Qcow2,
}

/// Development settings; off in production images.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevSpec {
    /// A root shell on the serial console.
    #[serde(default)]
    pub serial_shell: bool,
}

impl Spec {
    /// Parses a spec from TOML text. `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Spec, crate::SpecError> {
        toml::from_str(text).map_err(|e| crate::SpecError {
            file: origin.to_string(),
            field: String::new(),
            message: e.to_string().trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
name = "t"
version = "1"
compatible = "t-x86_64"
[kernel]
dir = "k"
[base]
dir = "b"
"#;

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = Spec::parse(MIN, "image.toml").unwrap();
        assert_eq!(s.partitions.esp, 256 * MIB);
        assert_eq!(s.rootfs.format, FsFormat::Erofs);
        assert_eq!(s.boot.loader, Loader::SystemdBoot);
        assert_eq!(s.persist, Layout::default());
        assert_eq!(s.output.formats, [OutputFormat::Raw, OutputFormat::Qcow2]);
        assert!(!s.dev.serial_shell);
        // dm-verity is on unless turned off, with or without a [rootfs] table.
        assert!(s.rootfs.verity);
        let fmt = Spec::parse(&format!("{MIN}[rootfs]\nformat = \"ext4\"\n"), "i").unwrap();
        assert!(fmt.rootfs.verity);
        let off = Spec::parse(&format!("{MIN}[rootfs]\nverity = false\n"), "i").unwrap();
        assert!(!off.rootfs.verity);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 * MIB));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        let e = Spec::parse(
            &format!("{MIN}[partitions]\nroot = \"1000K\"\n"),
            "image.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("whole number of MiB"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = Spec::parse(&format!("{MIN}colour = \"red\"\n"), "x/image.toml").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("x/image.toml") && msg.contains("colour"),
            "{msg}"
        );
    }
}
