//! Building the images the scenarios boot.

use imagebuilder::pipeline::{build, BuildOptions, BuildReport};
use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The static kiln-init, or a panic saying how to build it.
pub fn init_bin() -> PathBuf {
    imagebuilder::find_device_binary("kiln-init")
        .expect("kiln-init not found: run scripts/build-device (scripts/test does)")
}

/// Builds the spec at `spec` (relative to the workspace) into `out`.
pub fn build_spec(spec: &Path, out: &Path, epoch: u64) -> BuildReport {
    let spec = workspace().join(spec);
    let resolved = imagebuilder::validate::load(&spec)
        .unwrap_or_else(|e| panic!("{e} (did scripts/deps.sh run?)"));
    build(
        &resolved,
        &BuildOptions {
            out_dir: out.to_path_buf(),
            init_bin: init_bin(),
            updater_bin: imagebuilder::find_device_binary("kiln-updater"),
            epoch,
        },
    )
    .unwrap_or_else(|e| panic!("building {}: {e}", spec.display()))
}

/// Builds the default example image into `out`.
pub fn build_default(out: &Path) -> BuildReport {
    build_spec(Path::new("examples/default/image.toml"), out, 1_700_000_000)
}

/// Builds the default example image, changed by `change`, into `out`.
pub fn build_default_with(
    out: &Path,
    change: impl FnOnce(&mut imagebuilder::spec::Spec),
) -> BuildReport {
    let path = workspace().join("examples/default/image.toml");
    let mut spec = imagebuilder::validate::load(&path)
        .unwrap_or_else(|e| panic!("{e} (did scripts/deps.sh run?)"))
        .spec;
    change(&mut spec);
    let resolved = imagebuilder::validate::resolve(spec, &path).unwrap_or_else(|e| panic!("{e}"));
    build(
        &resolved,
        &BuildOptions {
            out_dir: out.to_path_buf(),
            init_bin: init_bin(),
            updater_bin: imagebuilder::find_device_binary("kiln-updater"),
            epoch: 1_700_000_000,
        },
    )
    .unwrap_or_else(|e| panic!("building the changed default image: {e}"))
}
