//! kiln, the image builder: `image.toml` → GPT disk with ESP, two root slots and persist.
//!
//! Data flow (see docs/architecture.md): [`validate::load`] parses and resolves the spec;
//! [`pipeline::build`] assembles the root tree, makes the read-only root image, the initramfs,
//! the ESP and the GPT, and commits the outputs; [`qemu`] boots a disk.

pub mod bundle;
pub mod disk;
pub mod elf;
mod error;
pub mod esp;
mod esp_fixup;
mod grub_image;
pub mod host_tool;
pub mod inspect;
pub mod keyfiles;
pub mod layout;
pub mod pipeline;
pub mod pxe;
pub mod qcow2;
pub mod qemu;
pub mod root_facts;
pub mod secure_boot;
pub mod services;
pub mod signed_checksum;
pub mod spec;
pub mod uki;
pub mod validate;

pub use error::{BuildError, SpecError};

/// Reads `BUILD/build.json` (what `kiln build` wrote) as `T`, naming the file in errors.
pub fn read_build_json<T: serde::de::DeserializeOwned>(
    build: &std::path::Path,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let path = build.join("build.json");
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (is this a kiln build directory?)",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Finds the static `kiln-init` binary: `$KILN_INIT`, else
/// `<ancestor of this executable>/x86_64-unknown-linux-gnu/release/kiln-init` (where
/// `scripts/build-device` puts it), else `kiln-init` next to this executable.
pub fn find_device_binary(name: &str) -> Option<std::path::PathBuf> {
    let env = format!(
        "KILN_{}",
        name.trim_start_matches("kiln-")
            .replace('-', "_")
            .to_ascii_uppercase()
    );
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    for dir in exe.ancestors().skip(1) {
        let p = dir.join("x86_64-unknown-linux-gnu/release").join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    let sibling = exe.parent()?.join(name);
    sibling.is_file().then_some(sibling)
}
