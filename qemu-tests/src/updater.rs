//! Reading `kiln-updater status --json` in a booted guest.

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
