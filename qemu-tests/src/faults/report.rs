//! The outcome of each cut and the campaign table.

use super::Cut;
use imagebuilder::spec::Loader;

/// The result of one cut.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub loader: Loader,
    pub cut: Cut,
    /// `slot version` booted after the cut.
    pub booted: String,
    pub error: Option<String>,
    pub secs: f64,
    /// What `fsck.fat -n` on the host reported about the ESP right after the cut, before the
    /// next boot (None: clean). FAT is not crash-safe: kiln-init repairs it at boot.
    pub esp_after_cut: Option<String>,
}

impl Outcome {
    pub fn valid(&self) -> bool {
        self.error.is_none()
    }
}

/// Prints the campaign table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "backend       cut                                       booted after    result\n",
    );
    for o in outcomes {
        s.push_str(&format!(
            "{:<13} {:<41} {:<15} {} ({:.0} s)\n",
            loader_name(o.loader),
            o.cut.to_string(),
            o.booted,
            o.error.as_deref().unwrap_or("valid"),
            o.secs
        ));
        if let Some(e) = &o.esp_after_cut {
            s.push_str(&format!("{:<13}   ESP on disk after the cut: {e}\n", ""));
        }
    }
    let valid = outcomes.iter().filter(|o| o.valid()).count();
    s.push_str(&format!(
        "cuts: {}   valid boots: {valid}   failures: {}\n",
        outcomes.len(),
        outcomes.len() - valid
    ));
    s
}

pub fn loader_name(l: Loader) -> &'static str {
    match l {
        Loader::SystemdBoot => "systemd-boot",
        Loader::Grub => "grub",
    }
}
