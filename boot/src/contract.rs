//! The on-device contract between the builder, kiln-init and the updater, defined once: where
//! Kiln's files are in the read-only root, the release file (written by the builder, read by
//! the updater and the readiness script) and the slot's kernel command line.

use crate::Slot;

/// Image identity and update settings, sourced by shell scripts and read by the updater. In
/// the read-only root: /etc is writable through its overlay and must not decide what to trust.
pub const RELEASE: &str = "/usr/lib/kiln/release";
/// Directory of the public keys trusted to sign update bundles.
pub const KEYS_DIR: &str = "/usr/lib/kiln/keys";
/// Health check run by `kiln-updater mark-good` before blessing a slot.
pub const HEALTH: &str = "/usr/lib/kiln/health";
/// Waits for health, reconciles and blesses, prints `kiln-ready`.
pub const READY: &str = "/usr/lib/kiln/ready";
/// Where the updater is baked.
pub const UPDATER: &str = "/usr/bin/kiln-updater";
/// Where the node agent is baked.
pub const AGENT: &str = "/usr/bin/kiln-agent";

/// A contract path relative to the root (for writing it into a staged tree).
pub fn in_tree(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// The boot loader an image uses (`KILN_LOADER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderKind {
    SystemdBoot,
    Grub,
}

impl LoaderKind {
    pub fn name(self) -> &'static str {
        match self {
            LoaderKind::SystemdBoot => "systemd-boot",
            LoaderKind::Grub => "grub",
        }
    }
}

/// The release file: `KEY='value'` lines (a shell can source it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub name: String,
    pub version: String,
    pub compatible: String,
    /// Signatures from distinct trusted keys a bundle needs.
    pub threshold: usize,
    pub loader: LoaderKind,
}

/// A release file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("{RELEASE} has no {0}")]
    Missing(&'static str),
    #[error("{RELEASE}: {0} is not a number")]
    BadNumber(&'static str),
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The value of `KEY='value'` in release-file text.
pub fn release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('\'').replace(r"'\''", "'"))
}

impl Release {
    pub fn render(&self) -> String {
        format!(
            "KILN_NAME={}\nKILN_VERSION={}\nKILN_COMPATIBLE={}\nKILN_UPDATE_THRESHOLD={}\nKILN_LOADER={}\n",
            shell_quote(&self.name),
            shell_quote(&self.version),
            shell_quote(&self.compatible),
            self.threshold,
            self.loader.name(),
        )
    }

    pub fn parse(text: &str) -> Result<Release, ReleaseError> {
        let get = |k: &'static str| release_value(text, k).ok_or(ReleaseError::Missing(k));
        Ok(Release {
            name: get("KILN_NAME")?,
            version: get("KILN_VERSION")?,
            compatible: get("KILN_COMPATIBLE")?,
            threshold: get("KILN_UPDATE_THRESHOLD")?
                .parse()
                .map_err(|_| ReleaseError::BadNumber("KILN_UPDATE_THRESHOLD"))?,
            loader: match release_value(text, "KILN_LOADER").as_deref() {
                Some("grub") => LoaderKind::Grub,
                _ => LoaderKind::SystemdBoot,
            },
        })
    }
}

/// The kernel command line of a slot: its root partition, read-only, the slot name (kiln-init,
/// the updater and the readiness script read `kiln.slot=`), then the image's own arguments.
pub fn slot_cmdline(partuuid: impl std::fmt::Display, slot: Slot, extra: &str) -> String {
    format!("root=PARTUUID={partuuid} ro kiln.slot={slot} {extra}")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_round_trips_through_its_text() {
        let r = Release {
            name: "n".into(),
            version: "1.2".into(),
            compatible: "it's-c".into(),
            threshold: 2,
            loader: LoaderKind::Grub,
        };
        let text = r.render();
        assert_eq!(
            text,
            "KILN_NAME='n'\nKILN_VERSION='1.2'\nKILN_COMPATIBLE='it'\\''s-c'\nKILN_UPDATE_THRESHOLD=2\nKILN_LOADER=grub\n"
        );
        assert_eq!(Release::parse(&text), Ok(r));
        assert_eq!(
            Release::parse("KILN_NAME='n'\n"),
            Err(ReleaseError::Missing("KILN_VERSION"))
        );
        // A key that is a prefix of another is not confused with it.
        assert_eq!(
            release_value("KILN_NAMES='x'\nKILN_NAME='y'\n", "KILN_NAME").as_deref(),
            Some("y")
        );
    }

    #[test]
    fn slot_command_line() {
        assert_eq!(
            slot_cmdline("abc", Slot::B, "console=ttyS0 quiet"),
            "root=PARTUUID=abc ro kiln.slot=b console=ttyS0 quiet"
        );
        assert_eq!(
            slot_cmdline("abc", Slot::A, ""),
            "root=PARTUUID=abc ro kiln.slot=a"
        );
        assert_eq!(in_tree(RELEASE), "usr/lib/kiln/release");
    }
}
