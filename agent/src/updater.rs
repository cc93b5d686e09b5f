//! [`Device`] on a Kiln node: the slots through `kiln-updater` (status, install --no-activate,
//! activate --reboot).

use crate::daemon::{Device, DeviceError};
use crate::node::Target;
use kiln_updater::status::Status;
use std::path::PathBuf;
use tokio::process::Command;

pub struct Updater {
    pub bin: PathBuf,
}

async fn run(bin: &PathBuf, args: &[&str]) -> Result<String, DeviceError> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .await
        .map_err(|source| DeviceError::Spawn {
            program: bin.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(DeviceError::Failed {
            command: format!("{} {}", bin.display(), args.join(" ")),
            message: err.lines().last().unwrap_or("failed").trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (running version, blessed) from `kiln-updater status --json`.
pub fn parse_status(json: &str) -> Result<(String, bool), DeviceError> {
    let s: Status = serde_json::from_str(json).map_err(|e| DeviceError::Status(e.to_string()))?;
    let slot = s
        .booted_slot()
        .ok_or_else(|| DeviceError::Status(format!("no slot {}", s.booted)))?;
    Ok((slot.version.clone().unwrap_or_default(), slot.is_good()))
}

/// `kiln-updater` arguments that stage `t`: its version (and manifest digest, when the
/// OSUpgrade pins one) required of whatever the bundle URL serves.
pub fn stage_args(t: &Target) -> Vec<&str> {
    let mut a = vec!["install", "--no-activate", "--expect-version", &t.version];
    if let Some(d) = &t.manifest_digest {
        a.extend(["--expect-manifest", d]);
    }
    // The URL is the annotation's: after `--` it can only be the source.
    a.extend(["--", &t.bundle_url]);
    a
}

impl Device for Updater {
    async fn running(&self) -> Result<(String, bool), DeviceError> {
        parse_status(&run(&self.bin, &["status", "--json"]).await?)
    }

    async fn stage(&self, t: &Target) -> Result<(), DeviceError> {
        run(&self.bin, &stage_args(t)).await.map(drop)
    }

    async fn flip_and_reboot(&self) -> Result<(), DeviceError> {
        run(&self.bin, &["activate", "--reboot"]).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_booted_slot() {
        let j = r#"{"booted":"b","next_boot":"b","slots":[
            {"slot":"a","version":"1.0.0","state":"good","tries_left":null},
            {"slot":"b","version":"2.0.0","state":"pending","tries_left":2}]}"#;
        assert_eq!(parse_status(j).unwrap(), ("2.0.0".into(), false));
        let j = j.replace("\"pending\"", "\"good\"");
        assert_eq!(parse_status(&j).unwrap(), ("2.0.0".into(), true));
        assert!(parse_status("{}").is_err());
    }

    #[test]
    fn stages_with_the_expected_version_and_digest() {
        let mut t = Target {
            version: "2.0.0".into(),
            bundle_url: "http://repo/2".into(),
            osupgrade: Some("os-2".into()),
            manifest_digest: None,
        };
        assert_eq!(
            stage_args(&t),
            [
                "install",
                "--no-activate",
                "--expect-version",
                "2.0.0",
                "--",
                "http://repo/2"
            ]
        );
        t.manifest_digest = Some("sha256:ab".into());
        assert_eq!(
            stage_args(&t)[4..],
            ["--expect-manifest", "sha256:ab", "--", "http://repo/2"]
        );
    }
}
