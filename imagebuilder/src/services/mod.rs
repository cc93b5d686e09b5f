//! Files generated into the root from the spec: what starts the declared services under the
//! root's init system (busybox `inittab` or systemd units), the health check and the readiness
//! reporter shared by both (`health.rs`), and `/usr/lib/kiln/release`. Pure: what the root
//! provides comes in as [`RootFacts`], found by the pipeline.

mod busybox;
pub mod containers;
mod health;
pub mod systemd;

pub use containers::BakedImage;

use crate::spec::{Restart, Spec};

use kiln_boot::contract::{self, in_tree};

/// Path (in the root) of the wrapper that records a service's pid, then execs it.
pub const SVC: &str = "usr/lib/kiln/svc";
/// Path of the early boot script.
pub const SYSINIT: &str = "usr/lib/kiln/sysinit";
/// The node agent's service name.
pub const AGENT_SERVICE: &str = "kiln-agent";
/// Path of the DHCP client's event script (busybox udhcpc).
pub const UDHCPC: &str = "usr/lib/kiln/udhcpc";
/// Where systemd units for Kiln go (`/lib` may be a link to it; systemd searches both).
pub const UNIT_DIR: &str = "usr/lib/systemd/system";

/// The init system the root runs after kiln-init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitSystem {
    Busybox,
    Systemd,
}

impl InitSystem {
    pub fn name(self) -> &'static str {
        match self {
            InitSystem::Busybox => "busybox",
            InitSystem::Systemd => "systemd",
        }
    }
}

/// What the assembled root provides, as far as the generated files depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootFacts {
    pub init: InitSystem,
    /// systemd-networkd is in the root (DHCP through it instead of busybox udhcpc).
    pub networkd: bool,
    /// The root has an `/etc/hosts` (else a systemd root gets one: resolvers and containers
    /// run with the host's network bind-mount it).
    pub hosts: bool,
}

/// The declared services plus the node agent's when `[agent]` is set.
pub fn all_services(spec: &Spec) -> Vec<crate::spec::Service> {
    let mut v = spec.services.clone();
    if let Some(a) = &spec.agent {
        let mut command = format!("{} --kubeconfig {}", contract::AGENT, a.kubeconfig);
        if let Some(n) = &a.node {
            command.push_str(&format!(" --node {n}"));
        }
        v.push(crate::spec::Service {
            name: AGENT_SERVICE.into(),
            command,
            restart: Restart::Always,
        });
    }
    v
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Path relative to the root.
    pub path: String,
    pub content: String,
    pub mode: u32,
}

/// One generated symlink (a unit's `.wants` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub path: String,
    pub target: String,
}

/// Everything generated for the root tree.
#[derive(Debug, Default)]
pub struct Output {
    pub files: Vec<Generated>,
    pub links: Vec<Link>,
    /// Directories to create (e.g. `/var/log/journal`), mode 0755.
    pub dirs: Vec<String>,
}

impl Output {
    fn file(&mut self, path: impl Into<String>, content: String, mode: u32) {
        self.files.push(Generated {
            path: path.into(),
            content,
            mode,
        });
    }
}

pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The release file; `built` is the build's epoch (0: none recorded).
pub fn release(spec: &Spec, built: u64) -> String {
    contract::Release {
        name: spec.name.clone(),
        version: spec.version.clone(),
        compatible: spec.compatible.clone(),
        threshold: spec.update.threshold,
        loader: match spec.boot.loader {
            crate::spec::Loader::SystemdBoot => contract::LoaderKind::SystemdBoot,
            crate::spec::Loader::Grub => contract::LoaderKind::Grub,
        },
        sequence: spec.update.sequence,
        built: (built > 0).then_some(built),
        uki: spec.boot.secure_boot.is_some(),
    }
    .render()
}

/// Everything generated for a root with `facts`; `images[i]` is the baked image of
/// `spec.containers[i]` (containers need systemd: the pipeline refuses them otherwise).
pub fn generated(spec: &Spec, facts: &RootFacts, images: &[BakedImage], built: u64) -> Output {
    let mut out = Output::default();
    out.file(in_tree(contract::RELEASE), release(spec, built), 0o644);
    out.file(
        in_tree(contract::HEALTH),
        health::health(spec, facts.init, images),
        0o755,
    );
    out.file(
        in_tree(contract::READY),
        health::ready(spec, facts.init),
        0o755,
    );
    match facts.init {
        InitSystem::Busybox => busybox::add(spec, &mut out),
        InitSystem::Systemd => {
            systemd::add(spec, facts, &mut out);
            containers::add(spec, images, &mut out);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn spec(shell: bool) -> Spec {
        let text = format!(
            r#"
name = "n"
version = "1.2"
compatible = "c"
[kernel]
dir = "k"
[base]
dir = "b"
[dev]
serial_shell = {shell}
[[service]]
name = "cp"
command = "/usr/bin/cp-stand-in --flag"
[[service]]
name = "setup"
command = "/bin/true"
restart = "never"
"#
        );
        Spec::parse(&text, "t").unwrap()
    }

    #[test]
    fn release_file() {
        assert_eq!(
            release(&spec(false), 0),
            "KILN_NAME='n'\nKILN_VERSION='1.2'\nKILN_COMPATIBLE='c'\nKILN_UPDATE_THRESHOLD=1\nKILN_LOADER=systemd-boot\n"
        );
        let mut s = spec(false);
        s.update.sequence = Some(4);
        assert!(release(&s, 1_700_000_000).ends_with("KILN_SEQUENCE=4\nKILN_BUILT=1700000000\n"));
    }

    #[test]
    fn busybox_and_systemd_roots_get_their_own_files() {
        let paths = |init| {
            let o = generated(
                &spec(false),
                &RootFacts {
                    init,
                    networkd: false,
                    hosts: true,
                },
                &[],
                0,
            );
            o.files.into_iter().map(|f| f.path).collect::<Vec<_>>()
        };
        let bb = paths(InitSystem::Busybox);
        let sd = paths(InitSystem::Systemd);
        for common in [contract::RELEASE, contract::HEALTH, contract::READY].map(in_tree) {
            assert!(bb.iter().any(|p| p == common) && sd.iter().any(|p| p == common));
        }
        assert!(bb.iter().any(|p| p == "etc/inittab"));
        assert!(!sd.iter().any(|p| p == "etc/inittab"), "{sd:?}");
        assert!(sd.iter().any(|p| p == "usr/lib/systemd/system/cp.service"));
        assert!(!bb.iter().any(|p| p.contains("systemd")), "{bb:?}");
    }
}
