//! The body of `kiln-init`, PID 1 of the initramfs.
//!
//! Steps (see docs/architecture.md): early mounts → modules → find root by PARTUUID → mount it
//! read-only → mount persist (creating the layout on first boot) → overlay/bind/tmpfs layout →
//! `switch_root` into the root's init. Any failure prints one `kiln-init: FATAL:` line and
//! reboots after a pause, so a boot counter sees a failed try instead of a silent hang.

mod disk;
mod grow;
mod layout;
mod loopdev;
mod machine_id;
mod net;
mod pxe;
mod sys;
mod verity;

use crate::config::{InitConfig, CONFIG_PATH};
use kiln_boot::cmdline;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the root is mounted before `switch_root`.
pub const SYSROOT: &str = "/sysroot";

/// An error with the step it happened in.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct InitError {
    pub step: &'static str,
    pub message: String,
}

pub(crate) fn err(step: &'static str, message: impl std::fmt::Display) -> InitError {
    InitError {
        step,
        message: message.to_string(),
    }
}

/// Prints a console line prefixed with `kiln-init:`.
pub fn say(msg: impl std::fmt::Display) {
    println!("kiln-init: {msg}");
}

/// Runs PID 1; never returns.
pub fn main() -> ! {
    let started = Instant::now();
    let e = match run(started) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    say(format!("FATAL: {e}"));
    say("rebooting in 10 s; the boot counter will count this as a failed try");
    sys::fatal_reboot(Duration::from_secs(10))
}

pub(crate) enum Never {}

fn run(started: Instant) -> Result<Never, InitError> {
    sys::early_mounts()?;
    let cfg: InitConfig = serde_json::from_slice(
        &std::fs::read(Path::new("/").join(CONFIG_PATH)).map_err(|e| err("reading config", e))?,
    )
    .map_err(|e| err("parsing config", e))?;
    let cmd = cmdline::parse(
        &std::fs::read_to_string("/proc/cmdline").map_err(|e| err("reading /proc/cmdline", e))?,
    );
    say(format!(
        "{} {} slot {}",
        cfg.name,
        cfg.version,
        cmd.slot.as_deref().unwrap_or("?")
    ));

    for m in &cfg.modules {
        let name = crate::modules::module_name(m);
        sys::load_module(m, cfg.module_params.get(&name).map_or("", String::as_str))?;
    }
    say(format!("loaded {} modules", cfg.modules.len()));
    if let Some(secs) = cfg.watchdog_secs {
        sys::arm_watchdog(secs)?;
    }

    let persist = match cmd.pxe.as_deref() {
        Some("live") => pxe::live(&cmd, &cfg)?,
        Some("install") => match pxe::install(&cmd, &cfg)? {},
        Some(other) => {
            return Err(err(
                "kernel command line",
                format!("kiln.pxe={other}: expected live or install"),
            ))
        }
        None => disk_boot(&cmd, &cfg)?,
    };
    layout::apply(&cfg.layout, &persist)?;
    machine_id::ensure(SYSROOT);
    say(format!(
        "switching root after {} ms",
        started.elapsed().as_millis()
    ));
    let init = cmd.init.clone().unwrap_or(cfg.init.clone());
    sys::switch_root(&init)
}

/// Root slot and persist from the local disk; returns the persist mount point.
fn disk_boot(cmd: &cmdline::Cmdline, cfg: &InitConfig) -> Result<String, InitError> {
    let want = cmd.root().ok_or_else(|| {
        err(
            "kernel command line",
            "no root=PARTUUID=… given, and no kiln.slot= with kiln.verity=",
        )
    })?;
    let found = disk::wait_for_root(
        &want,
        &cfg.persist_label,
        Duration::from_secs(cfg.root_wait_secs),
    )?;
    let shown = match &want {
        kiln_boot::cmdline::RootSelector::PartUuid(u) => u.clone(),
        label => label.to_string(),
    };
    say(format!(
        "root {} ({shown}), persist {}",
        found.root, found.persist
    ));

    if cfg.grow_persist {
        grow::grow_table(&found.disk, &cfg.persist_label);
    }
    if let (Some(fsck), Some(esp)) = (&cfg.esp_fsck, &found.esp) {
        sys::check_esp(fsck, esp);
    }
    // A root hash on the command line, or an image built with verity: the root is mounted only
    // through dm-verity, never unverified (a missing hash is fatal, so boot counting falls back).
    let root = match (&cmd.verity, cfg.verity) {
        (Some(hash), _) => verity::open(&found.root, hash)?,
        (None, true) => {
            return Err(err(
                "opening the root with dm-verity",
                "this image verifies its root, and the command line gives no kiln.verity=",
            ))
        }
        (None, false) => found.root.clone(),
    };
    sys::mount_root(&root, &cfg.root_fstype)?;
    let persist = format!("{SYSROOT}{}", kiln_overlays::PERSIST_MOUNT);
    let fs_size = cfg
        .grow_persist
        .then(|| grow::fs_size(&found.persist))
        .flatten();
    sys::mount_persist(&found.persist, &persist)?;
    if let Some(size) = fs_size {
        grow::grow_fs(&found.persist, &persist, size);
    }
    Ok(persist)
}
