//! The updater in a booted guest: reading `kiln-updater status --json`, staging a bundle.

use crate::Console;

/// The guest's updater status.
pub fn status(c: &mut Console) -> serde_json::Value {
    let out = c
        .ok("kiln-updater status --json")
        .unwrap_or_else(|e| panic!("{e}"));
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {out:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// One slot's entry of a status.
pub fn slot<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["slots"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["slot"] == name))
        .unwrap_or_else(|| panic!("no slot {name} in {status}"))
}

/// `kiln-updater install --no-reboot URL` in the guest: (exit status, output).
pub fn install_no_reboot(c: &mut Console, url: &str) -> (i32, String) {
    c.sh(
        &format!("kiln-updater install --no-reboot {url}"),
        std::time::Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}
