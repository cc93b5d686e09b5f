//! One initramfs from its inputs: kiln-init, its configuration, the kernel-module closure of
//! what the image asks for (plus what only a network boot loads) and host files (the ESP's
//! FAT checker and its libraries). The builder gathers the inputs; this assembles the cpio.

use crate::archive::Contents;
use crate::config::InitConfig;
use crate::modules::{ModulesDep, ModulesError};
use std::path::Path;

/// Loaded only by a network boot (`kiln pxe`): the loop device for a root image in RAM.
const PXE_ONLY: &str = "loop";

/// What goes into the initramfs.
pub struct Inputs<'a> {
    /// The static `kiln-init` binary.
    pub init: Vec<u8>,
    /// kiln-init's configuration; `modules` and `pxe_modules` are filled in here.
    pub config: InitConfig,
    /// `lib/modules/<version>` of the kernel tree (with `modules.dep`).
    pub modules_dir: &'a Path,
    pub kernel_version: &'a str,
    /// Module names the image asks for; their dependency closure goes in.
    pub wanted: &'a [String],
    /// Other files: (path in the initramfs, content, mode).
    pub extra: Vec<(String, Vec<u8>, u32)>,
    /// The mtime of every entry.
    pub epoch: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The wanted modules cannot be resolved against `modules.dep`.
    #[error("{0}")]
    Modules(#[from] ModulesError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// Assembles the initramfs (newc cpio) from `inputs`.
pub fn build(inputs: Inputs<'_>) -> Result<Vec<u8>, BuildError> {
    let dep_path = inputs.modules_dir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path)
        .map_err(io(format!("reading {}", dep_path.display())))?;
    let deps = ModulesDep::parse(&dep)?;
    let closure = deps.closure(inputs.wanted)?;
    // Kernels with loop built in have no module to add.
    let pxe_only: Vec<String> = deps
        .closure(&[PXE_ONLY.to_string()])
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !closure.contains(m))
        .collect();
    let in_initrd = |m: &str| format!("/lib/modules/{}/{m}", inputs.kernel_version);
    let config = InitConfig {
        modules: closure.iter().map(|m| in_initrd(m)).collect(),
        pxe_modules: pxe_only.iter().map(|m| in_initrd(m)).collect(),
        ..inputs.config
    };
    let mut c = Contents::new(inputs.init, &config).map_err(io("building the initramfs"))?;
    for m in closure.iter().chain(&pxe_only) {
        let p = inputs.modules_dir.join(m);
        let data = std::fs::read(&p).map_err(io(format!("reading module {}", p.display())))?;
        c.add_file(&in_initrd(m), data, 0o644);
    }
    for (path, data, mode) in inputs.extra {
        c.add_file(&path, data, mode);
    }
    let mut out = Vec::new();
    c.write(&mut out, inputs.epoch)
        .map_err(io("writing the initramfs"))?;
    Ok(out)
}
