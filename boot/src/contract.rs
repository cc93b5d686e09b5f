//! The on-device contract between the builder, kiln-init and the updater, defined once: where
//! Kiln's files are in the read-only root, the release file (written by the builder, read by
//! the updater and the readiness script) and the slot's kernel command line.

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

/// Longest version or compatible string.
pub const LABEL_MAX: usize = 64;

/// A version or compatible string outside the documented character set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not 1-{LABEL_MAX} characters of A-Z a-z 0-9 . _ + -, starting with a letter or digit")]
pub struct LabelError {
    /// The value, quoted and escaped, cut at 80 characters.
    shown: String,
}

/// Checks a version or compatible string: 1–64 characters of `A–Z a–z 0–9 . _ + -`, the first
/// a letter or digit. The image spec, `kiln bundle` and the device (on every verified
/// manifest, before anything is written) check with this one function, so nothing else ever
/// reaches a loader entry line, a grubenv value or the release file.
pub fn check_label(v: &str) -> Result<(), LabelError> {
    let ok = (1..=LABEL_MAX).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok {
        return Ok(());
    }
    let mut shown = format!("{v:?}");
    if shown.len() > 80 {
        let cut = (0..=77)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown = format!("{}... ({} bytes)", &shown[..cut], v.len());
    }
    Err(LabelError { shown })
}

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
    /// The image's own update sequence (`KILN_SEQUENCE`): a device running it refuses bundles
    /// not above it, whatever its state file says (`None`: an image built without one).
    pub sequence: Option<u64>,
    /// The image's build time (`KILN_BUILT`, UNIX seconds, from SOURCE_DATE_EPOCH): the
    /// device's time floor starts there (`None` when the build had no epoch).
    pub built: Option<u64>,
    /// The image boots signed unified kernel images (`KILN_UKI=1`, Secure Boot): its entries
    /// name `kiln/<slot>/kiln.efi` and carry no command line, and an update must bring one.
    pub uki: bool,
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

fn optional_number(text: &str, key: &'static str) -> Result<Option<u64>, ReleaseError> {
    release_value(text, key)
        .map(|v| v.parse().map_err(|_| ReleaseError::BadNumber(key)))
        .transpose()
}

/// The value of `KEY='value'` in release-file text.
pub fn release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('\'').replace(r"'\''", "'"))
}

impl Release {
    pub fn render(&self) -> String {
        let mut s = format!(
            "KILN_NAME={}\nKILN_VERSION={}\nKILN_COMPATIBLE={}\nKILN_UPDATE_THRESHOLD={}\nKILN_LOADER={}\n",
            shell_quote(&self.name),
            shell_quote(&self.version),
            shell_quote(&self.compatible),
            self.threshold,
            self.loader.name(),
        );
        if let Some(n) = self.sequence {
            s.push_str(&format!("KILN_SEQUENCE={n}\n"));
        }
        if let Some(t) = self.built {
            s.push_str(&format!("KILN_BUILT={t}\n"));
        }
        if self.uki {
            s.push_str("KILN_UKI=1\n");
        }
        s
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
            // Absent in older images; present but unreadable fails (a floor is never dropped).
            sequence: optional_number(text, "KILN_SEQUENCE")?,
            built: optional_number(text, "KILN_BUILT")?,
            uki: release_value(text, "KILN_UKI").as_deref() == Some("1"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_a_documented_character_set() {
        let (n64, n65, long) = ("9".repeat(64), "9".repeat(65), "1".repeat(300));
        for ok in [
            "1.0.0",
            "2.0.0-rc1+build.7",
            "kiln-fixture-x86_64",
            "a",
            n64.as_str(),
        ] {
            assert_eq!(check_label(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1.0\ntitle x",
            "1.0\n",
            "a=b",
            "-1",
            ".1",
            "1 0",
            "1'0",
            "é1",
            long.as_str(),
            n65.as_str(),
        ] {
            assert!(check_label(bad).is_err(), "{bad:?} accepted");
        }
        let e = check_label(&long).unwrap_err().to_string();
        assert!(e.contains("(300 bytes)") && e.len() < 200, "{e}");
        assert!(check_label("1\n")
            .unwrap_err()
            .to_string()
            .contains(r#""1\n""#));
    }

    #[test]
    fn release_round_trips_through_its_text() {
        assert_eq!(in_tree(RELEASE), "usr/lib/kiln/release");
        let r = Release {
            name: "n".into(),
            version: "1.2".into(),
            compatible: "it's-c".into(),
            threshold: 2,
            loader: LoaderKind::Grub,
            sequence: None,
            built: None,
            uki: false,
        };
        let text = r.render();
        assert_eq!(
            text,
            "KILN_NAME='n'\nKILN_VERSION='1.2'\nKILN_COMPATIBLE='it'\\''s-c'\nKILN_UPDATE_THRESHOLD=2\nKILN_LOADER=grub\n"
        );
        assert_eq!(Release::parse(&text), Ok(r.clone()));
        assert_eq!(
            Release::parse("KILN_NAME='n'\n"),
            Err(ReleaseError::Missing("KILN_VERSION"))
        );
        // The baked floors round-trip; an unreadable one is an error, not a missing floor.
        let floors = Release {
            sequence: Some(7),
            built: Some(1_700_000_000),
            ..r.clone()
        };
        let text = floors.render();
        assert!(
            text.ends_with("KILN_SEQUENCE=7\nKILN_BUILT=1700000000\n"),
            "{text}"
        );
        assert_eq!(Release::parse(&text), Ok(floors));
        let uki = Release {
            uki: true,
            ..r.clone()
        };
        assert!(uki.render().ends_with("KILN_UKI=1\n"));
        assert_eq!(Release::parse(&uki.render()), Ok(uki));
        assert_eq!(
            Release::parse(&text.replace("=7", "=seven")),
            Err(ReleaseError::BadNumber("KILN_SEQUENCE"))
        );
        // A key that is a prefix of another is not confused with it.
        assert_eq!(
            release_value("KILN_NAMES='x'\nKILN_NAME='y'\n", "KILN_NAME").as_deref(),
            Some("y")
        );
    }
}
