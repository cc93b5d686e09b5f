//! Helpers shared by the image builder's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const EPOCH: u64 = 1_700_000_000;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn deps() -> PathBuf {
    let d = workspace().join(".cache/deps");
    assert!(
        d.join("kernel.done").exists(),
        "{} missing: run scripts/deps.sh",
        d.display()
    );
    d
}

pub fn init_bin() -> PathBuf {
    imagebuilder::find_device_binary("kiln-init")
        .expect("kiln-init not found: run scripts/build-device")
}

/// Runs `kiln ARGS`, with kiln-init found and a fixed SOURCE_DATE_EPOCH.
pub fn kiln(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_INIT", init_bin())
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .output()
        .unwrap()
}

/// `kiln build SPEC --out OUT`.
pub fn kiln_build(spec: &Path, out: &Path) -> Output {
    kiln(&[
        "build".as_ref(),
        spec.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
}

/// A spec (TOML text) that builds with the default inputs, with absolute paths so it can be
/// written anywhere; `extra_top` goes before the tables, `extra` after them.
pub fn spec_text(extra_top: &str, extra: &str) -> String {
    let deps = deps();
    format!(
        r#"name = "t"
version = "1"
compatible = "t-x86_64"
{extra_top}
[kernel]
dir = "{kernel}"
[base]
tarball = "{base}"
[[service]]
name = "svc"
command = "/bin/sleep 1000"
{extra}
"#,
        kernel = deps.join("kernel").display(),
        base = deps.join("busybox-rootfs.tar").display(),
    )
}

/// Runs a host tool; returns (success, stdout + stderr).
pub fn tool(cmd: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}
