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
    build(&resolved, &BuildOptions::new(out, init_bin(), epoch))
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
    build_default_custom(out, change, &init_bin())
}

/// Like [`build_default_with`], with another program as the initramfs's `/init`.
pub fn build_default_custom(
    out: &Path,
    change: impl FnOnce(&mut imagebuilder::spec::Spec),
    init: &Path,
) -> BuildReport {
    build_default_opts(
        out,
        change,
        init,
        imagebuilder::find_device_binary("kiln-updater").as_deref(),
    )
}

/// Like [`build_default_custom`], with another `kiln-updater` baked in (the failpoint build).
pub fn build_default_opts(
    out: &Path,
    change: impl FnOnce(&mut imagebuilder::spec::Spec),
    init: &Path,
    updater: Option<&Path>,
) -> BuildReport {
    let path = workspace().join("examples/default/image.toml");
    let mut spec = imagebuilder::validate::load(&path)
        .unwrap_or_else(|e| panic!("{e} (did scripts/deps.sh run?)"))
        .spec;
    change(&mut spec);
    let resolved = imagebuilder::validate::resolve(spec, &path).unwrap_or_else(|e| panic!("{e}"));
    build(&resolved, &options(out, init, updater))
        .unwrap_or_else(|e| panic!("building the changed default image: {e}"))
}

/// Build options with these device binaries (and the built kiln-agent) at the tests' epoch.
fn options(out: &Path, init: &Path, updater: Option<&Path>) -> BuildOptions {
    BuildOptions {
        updater_bin: updater.map(Path::to_path_buf),
        ..BuildOptions::new(out, init.to_path_buf(), 1_700_000_000)
    }
}

/// Builds the example `spec` (relative to the workspace, e.g. `examples/debian/image.toml`),
/// changed by `change`, into `out`. Relative paths a change adds resolve against the spec's
/// directory.
pub fn build_example_with(
    spec: &Path,
    out: &Path,
    change: impl FnOnce(&mut imagebuilder::spec::Spec),
) -> BuildReport {
    let path = workspace().join(spec);
    let mut s = imagebuilder::validate::load(&path)
        .unwrap_or_else(|e| panic!("{e} (did scripts/deps.sh and scripts/debian-base.sh run?)"))
        .spec;
    change(&mut s);
    let resolved = imagebuilder::validate::resolve(s, &path).unwrap_or_else(|e| panic!("{e}"));
    let updater = imagebuilder::find_device_binary("kiln-updater");
    build(&resolved, &options(out, &init_bin(), updater.as_deref()))
        .unwrap_or_else(|e| panic!("building {}: {e}", path.display()))
}

/// Writes an OCI image layout at `dir` holding the host's static busybox as `/bin/busybox`
/// with a few applet links (sh, sleep, cat, echo, date, mkdir, true, false) and `cmd` as its
/// command: a container image made by the test itself, no registry involved.
pub fn busybox_oci_layout(dir: &Path, cmd: &[&str]) -> String {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("busybox-static is installed by scripts/deps.sh");
    let data = std::fs::read(busybox).unwrap();
    assert!(
        imagebuilder::elf::is_static_elf64(&data),
        "{} is not static",
        busybox.display()
    );
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_cksum();
    t.append_data(&mut h.clone(), "bin/", std::io::empty())
        .unwrap();
    t.append_data(&mut h, "data/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    h.set_cksum();
    t.append_data(&mut h, "bin/busybox", &data[..]).unwrap();
    for app in [
        "sh", "sleep", "cat", "echo", "date", "mkdir", "true", "false",
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        t.append_link(&mut h, format!("bin/{app}"), "busybox")
            .unwrap();
    }
    let layer = t.into_inner().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    kiln_rootfs::oci_image::write_test_layout(dir, &layer, cmd).unwrap()
}

/// Signs a bundle of the build in `build` with the development key of the default example.
pub fn dev_bundle(
    build: &Path,
    out: &Path,
    sequence: u64,
) -> kiln_updater::bundle::manifest::Manifest {
    dev_bundle_as(build, out, sequence, Default::default())
}

/// [`dev_bundle`] with its chunks stored as `layout` says.
pub fn dev_bundle_as(
    build: &Path,
    out: &Path,
    sequence: u64,
    layout: imagebuilder::bundle::Layout,
) -> kiln_updater::bundle::manifest::Manifest {
    imagebuilder::bundle::bundle(&imagebuilder::bundle::BundleArgs {
        build,
        keys: &[workspace().join("examples/default/keys/dev.key")],
        out,
        sequence,
        expires_in: std::time::Duration::from_secs(30 * 86_400),
        kbundle: None,
        layout,
    })
    .unwrap_or_else(|e| panic!("bundling {}: {e:#}", build.display()))
}

/// A minimal static x86-64 ELF executable that exits with status 1 (`mov eax, 60; mov edi, 1;
/// syscall`). As an initramfs `/init` it makes the kernel panic ("Attempted to kill init").
pub fn exit_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let code: [u8; 12] = [0xb8, 0x3c, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0x0f, 0x05];
    let total = (64 + 56 + code.len()) as u64;
    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(BASE + 64 + 56).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0, BASE, BASE, total, total, 0x1000u64] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&code);
    e
}

/// Bakes `kubeconfig` where the spec's `[agent]` expects it (as provisioning would write it).
pub fn bake_kubeconfig(s: &mut imagebuilder::spec::Spec, kubeconfig: &Path) {
    let dest = s
        .agent
        .as_ref()
        .expect("the image has [agent]")
        .kubeconfig
        .clone();
    s.files.push(imagebuilder::spec::BakedFile {
        source: kubeconfig.to_path_buf(),
        dest,
        mode: "0600".into(),
    });
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn exit_elf_runs_and_exits_1() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("exit1");
        std::fs::write(&p, super::exit_elf()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let st = std::process::Command::new(&p).status().unwrap();
        assert_eq!(st.code(), Some(1));
    }
}
