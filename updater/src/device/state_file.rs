//! The updater's record on persist (`/persist/kiln/updater/state.json`): installed manifest
//! sequence and the highest sequence and creation time accepted (floors that only rise; the
//! image's own, baked in its release file, apply even without this file), the last install's
//! result, and rollbacks noticed.
//! Written atomically (temporary file, fsync, rename, fsync of the directory).

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const DIR: &str = "/persist/kiln/updater";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdaterState {
    /// Sequence of the last blessed bundle: bundles must be above it.
    #[serde(default)]
    pub installed_sequence: Option<u64>,
    /// Highest sequence and newest `created` of a manifest accepted for install.
    #[serde(default)]
    pub seen_sequence: Option<u64>,
    #[serde(default)]
    pub seen_created: Option<u64>,
    /// Version per slot as last written (`a`, `b`).
    #[serde(default)]
    pub slot_versions: std::collections::BTreeMap<String, String>,
    /// Sequence of the bundle staged in a slot, blessed → becomes installed_sequence.
    #[serde(default)]
    pub staged: Option<Staged>,
    /// A slot written and verified by `install --no-activate`, not bootable until `activate`.
    #[serde(default)]
    pub written: Option<Staged>,
    #[serde(default)]
    pub last_install: Option<LastInstall>,
    /// Version that failed to boot and was rolled back from, if any.
    #[serde(default)]
    pub rolled_back_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub slot: String,
    pub version: String,
    pub sequence: u64,
}

pub use crate::status::LastInstall;

fn path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn load(dir: &Path) -> io::Result<UpdaterState> {
    match fs::read(path(dir)) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| io::Error::other(format!("{}: {e}", path(dir).display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UpdaterState::default()),
        Err(e) => Err(e),
    }
}

pub fn save(dir: &Path, s: &UpdaterState) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec_pretty(s).map_err(io::Error::other)?;
    kiln_io::write_durable_then(&path(dir), &bytes, || {
        kiln_boot::failpoint::hit("state.written")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_is_default() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), UpdaterState::default());
        let s = UpdaterState {
            installed_sequence: Some(3),
            rolled_back_from: Some("3.0".into()),
            ..Default::default()
        };
        save(d.path(), &s).unwrap();
        assert_eq!(load(d.path()).unwrap(), s);
    }
}
