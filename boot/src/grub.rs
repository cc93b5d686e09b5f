//! GRUB backend: the A/B state in a 1024-byte grubenv on the ESP, and the embedded grub.cfg
//! that walks `ORDER`, spends a try of a pending slot (an if-chain: GRUB script has no
//! arithmetic) and boots the first slot that is good or has tries left.

use crate::state::{BootState, Health, SlotEntry};
use crate::{esp_initrd, esp_kernel, Slot};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

/// Path of the environment block on the ESP.
pub const ENV_PATH: &str = "EFI/kiln/grubenv";
const HEADER: &str = "# GRUB Environment Block\n";
const SIZE: usize = 1024;
/// Most tries a staged slot can get (the if-chain in grub.cfg goes this far).
pub const MAX_TRIES: u8 = 9;

fn var(slot: Slot, key: &str) -> String {
    format!("{}_{key}", slot.name().to_ascii_uppercase())
}

/// Renders the environment block: `ORDER` (slots by priority, highest first) and per slot
/// `<S>_VERSION`, `<S>_PRIO`, `<S>_STATE` (good | pending), `<S>_TRIES`, `<S>_CMDLINE`.
pub fn render_env(state: &BootState, cmdline: impl Fn(Slot) -> String) -> io::Result<Vec<u8>> {
    let mut order: Vec<(&Slot, &SlotEntry)> = state.entries.iter().collect();
    order.sort_by_key(|(s, e)| (std::cmp::Reverse(e.priority), **s));
    let mut text = String::from(HEADER);
    text.push_str(&format!(
        "ORDER={}\n",
        order
            .iter()
            .map(|(s, _)| s.name())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    for (slot, e) in &order {
        let (st, tries) = match e.health {
            Health::Good => ("good", 0),
            Health::Pending { tries_left, .. } => ("pending", tries_left),
        };
        for (k, v) in [
            ("VERSION", e.version.clone()),
            ("PRIO", e.priority.to_string()),
            ("STATE", st.to_string()),
            ("TRIES", tries.to_string()),
            ("CMDLINE", cmdline(**slot)),
        ] {
            if v.contains(['\n', '\\']) {
                return Err(io::Error::other(format!(
                    "grubenv value for {} cannot hold {v:?}",
                    var(**slot, k)
                )));
            }
            text.push_str(&format!("{}={v}\n", var(**slot, k)));
        }
    }
    if text.len() > SIZE {
        return Err(io::Error::other(format!(
            "grubenv needs {} bytes, the block has {SIZE}",
            text.len()
        )));
    }
    let mut b = text.into_bytes();
    b.resize(SIZE, b'#');
    Ok(b)
}

/// Parses an environment block into its variables.
pub fn parse_vars(block: &[u8]) -> io::Result<BTreeMap<String, String>> {
    let text = std::str::from_utf8(block).map_err(|_| io::Error::other("grubenv is not UTF-8"))?;
    let body = text
        .strip_prefix(HEADER)
        .ok_or_else(|| io::Error::other("grubenv has no header"))?;
    // GRUB splits on '\n' only ('\r' is part of a value): not `str::lines`.
    Ok(body
        .split('\n')
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The state described by an environment block.
pub fn parse_state(vars: &BTreeMap<String, String>) -> BootState {
    let mut state = BootState::default();
    let order = vars.get("ORDER").cloned().unwrap_or_default();
    for name in order.split_whitespace() {
        let Ok(slot) = name.parse::<Slot>() else {
            continue;
        };
        let get = |k: &str| vars.get(&var(slot, k)).cloned().unwrap_or_default();
        let health = match get("STATE").as_str() {
            "good" => Health::Good,
            _ => Health::Pending {
                tries_left: get("TRIES").parse().unwrap_or(0),
                tries_done: 0,
            },
        };
        state.entries.insert(
            slot,
            SlotEntry {
                version: get("VERSION"),
                priority: get("PRIO").parse().unwrap_or(0),
                health,
            },
        );
    }
    state
}

/// The grub.cfg embedded in the GRUB image.
pub fn grub_cfg() -> String {
    let mut c = format!(
        "set timeout=0\n\
         search --no-floppy --set=root --file /{ENV_PATH}\n\
         load_env --file /{ENV_PATH}\n\
         set boot=\"\"\n\
         for s in $ORDER; do\n"
    );
    for slot in Slot::ALL {
        let v = |k: &str| var(slot, k);
        c.push_str(&format!("  if [ \"$s\" = \"{}\" ]; then\n", slot.name()));
        c.push_str(&format!(
            "    if [ \"${}\" = \"good\" ]; then set boot={}; break; fi\n",
            v("STATE"),
            slot.name()
        ));
        for t in (1..=MAX_TRIES).rev() {
            c.push_str(&format!(
                "    if [ \"${tries}\" = \"{t}\" ]; then set {tries}={left}; save_env --file /{ENV_PATH} {tries}; set boot={s}; break; fi\n",
                tries = v("TRIES"),
                left = t - 1,
                s = slot.name()
            ));
        }
        c.push_str("  fi\n");
    }
    c.push_str("done\n");
    for slot in Slot::ALL {
        c.push_str(&format!(
            "if [ \"$boot\" = \"{s}\" ]; then\n  echo \"kiln-grub: booting slot {s} (${ver})\"\n  linux /{kernel} ${cmd}\n  initrd /{initrd}\n  boot\nfi\n",
            s = slot.name(),
            ver = var(slot, "VERSION"),
            cmd = var(slot, "CMDLINE"),
            kernel = esp_kernel(slot),
            initrd = esp_initrd(slot),
        ));
    }
    c.push_str("echo \"kiln-grub: no bootable slot\"\nsleep 10\nreboot\n");
    c
}

/// The grubenv file of a mounted ESP.
#[derive(Debug, Clone)]
pub struct GrubEnv(pub PathBuf);

impl GrubEnv {
    pub fn read(&self) -> io::Result<(BootState, BTreeMap<String, String>)> {
        let vars = parse_vars(&fs::read(&self.0)?)?;
        Ok((parse_state(&vars), vars))
    }

    /// Replaces the block. Like GRUB's own `save_env`, an existing 1024-byte file is rewritten
    /// in place and fsynced (no FAT allocation or directory change: a rename over an existing
    /// file on FAT is not safe against a cut); otherwise temporary file, fsync, rename.
    pub fn commit(&self, state: &BootState, cmdline: impl Fn(Slot) -> String) -> io::Result<()> {
        let block = render_env(state, cmdline)?;
        if fs::metadata(&self.0).is_ok_and(|m| m.len() == SIZE as u64) {
            return crate::systemd_boot::counting::rewrite_in_place(
                &self.0,
                &block,
                "grub.env-written",
            );
        }
        let tmp = self.0.with_extension("new");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&block)?;
        f.sync_all()?;
        crate::rename_durable(&tmp, &self.0, "grub.env-written")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::VerifiedSlot;

    #[test]
    fn carriage_returns_stay_in_values() {
        // Found by the grubenv fuzz target: `str::lines` dropped a '\r' before '\n'.
        let mut block = format!("{HEADER}ORDER=b\nB_VERSION=2.0.0\r\nB_PRIO=2\n").into_bytes();
        block.resize(SIZE, b'#');
        let state = parse_state(&parse_vars(&block).unwrap());
        assert_eq!(state.entries[&Slot::B].version, "2.0.0\r");
        let again = render_env(&state, |_| String::new()).unwrap();
        assert_eq!(parse_state(&parse_vars(&again).unwrap()), state);
    }

    #[test]
    fn env_is_1024_bytes_and_round_trips() {
        let mut st = BootState::default();
        st.entries.insert(
            Slot::A,
            SlotEntry {
                version: "1.0".into(),
                priority: 1,
                health: Health::Good,
            },
        );
        st.clear(Slot::B, Slot::A).unwrap();
        st.stage(
            VerifiedSlot::check(Slot::B, "2.0", "x", "x").unwrap(),
            Slot::A,
            3,
        )
        .unwrap();
        let block = render_env(&st, |s| format!("root=PARTUUID=x kiln.slot={s}")).unwrap();
        assert_eq!(block.len(), 1024);
        let vars = parse_vars(&block).unwrap();
        assert_eq!(vars["ORDER"], "b a");
        assert_eq!(vars["B_TRIES"], "3");
        assert_eq!(vars["A_CMDLINE"], "root=PARTUUID=x kiln.slot=a");
        assert_eq!(parse_state(&vars), st);
        assert!(
            render_env(&st, |_| "x".repeat(600)).is_err(),
            "too big for the block"
        );
    }

    #[test]
    fn cfg_walks_order_and_counts_down() {
        let c = grub_cfg();
        assert!(c.contains("for s in $ORDER; do"));
        assert!(c.contains("if [ \"$B_TRIES\" = \"1\" ]; then set B_TRIES=0; save_env --file /EFI/kiln/grubenv B_TRIES; set boot=b; break; fi"));
        assert!(c.contains("linux /kiln/a/vmlinuz $A_CMDLINE"));
        assert_eq!(c.matches("done").count(), 1);
    }
}
