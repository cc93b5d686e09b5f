//! `[[containers]]`: containers baked into the root and run under containerd.

use serde::Deserialize;
use std::path::PathBuf;

/// A container run under containerd (systemd roots with containerd only): the image is baked
/// into the read-only root, imported into containerd's store on persist when missing, and run
/// by a generated unit with its output in the journal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub name: String,
    /// An OCI image layout directory, or an OCI or docker archive (tar) on the build host.
    pub image: PathBuf,
    /// Replaces the image's entrypoint (and then its cmd too, unless `args` is given).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Environment added to the image's.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Directories on persist bind-mounted into the container.
    #[serde(default)]
    pub mounts: Vec<ContainerMount>,
    #[serde(default)]
    pub restart: ContainerRestart,
    #[serde(default)]
    pub mode: ContainerMode,
    /// An essential container that is not running (or, run `once`, did not succeed) makes the
    /// slot unhealthy: a new slot is then not blessed and the loader falls back.
    #[serde(default)]
    pub essential: bool,
}

/// A bind mount from persist into a container.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerMount {
    /// Absolute path on the device, on persist: under `/persist` or a persisted layout path
    /// (`/var/lib/app`); created when missing.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerRestart {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// When a container runs (Bottlerocket's host and bootstrap containers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerMode {
    /// Started on every boot, kept running by its restart policy.
    #[default]
    Always,
    /// Run to completion once per device and image, before the services and the other
    /// containers (a bootstrap container).
    Once,
}
