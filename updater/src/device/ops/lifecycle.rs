//! After an install: `activate`, `reconcile` at boot, `mark-good`, `rollback` and `status`.

use super::install::{boot_kind_matches, root_hash};
use super::*;

/// Makes the slot written by `install --no-activate` boot next (with `tries`), after verifying
/// it again against the manifest recorded with it: root partition, kernel and initrd.
pub fn activate(tries: u8, say: Say) -> Result<String> {
    let ctx = Ctx::open()?;
    let booted = ctx.disk.booted;
    let target = booted.other();
    let mut st = state_file::load(&ctx.state_dir)?;
    // Already activated (a second call, e.g. the node agent restarted before its reboot):
    // nothing to do while that slot is still what boots next.
    if st
        .written
        .as_ref()
        .is_none_or(|w| w.slot != target.to_string())
    {
        if let Some(s) = st.staged.as_ref().filter(|s| s.slot == target.to_string()) {
            if ctx.read_boot()?.next_boot() == Some(target) {
                say(&Event::AlreadyStaged {
                    target,
                    version: s.version.clone(),
                });
                return Ok(s.version.clone());
            }
        }
    }
    let w = st
        .written
        .clone()
        .filter(|w| w.slot == target.to_string())
        .with_context(|| {
            format!("no written update waits in slot {target} (run `kiln-updater install --no-activate` first)")
        })?;
    let mpath = ctx.state_dir.join(format!("slot-{target}.manifest.json"));
    let m: crate::bundle::manifest::Manifest = serde_json::from_slice(
        &fs::read(&mpath).with_context(|| format!("reading {}", mpath.display()))?,
    )
    .with_context(|| format!("parsing {}", mpath.display()))?;
    // Persist is not the signed bundle: what reaches the entry is checked again.
    m.check_structure()
        .with_context(|| format!("checking {}", mpath.display()))?;
    boot_kind_matches(&ctx.release, &m).with_context(|| format!("checking {}", mpath.display()))?;
    if m.version != w.version || m.sequence != w.sequence {
        bail!(
            "{} is not the manifest of the written {}",
            mpath.display(),
            w.version
        );
    }
    let node = ctx.disk.node(ctx.disk.part(target.partlabel())?)?;
    let dev = fs::File::open(&node).with_context(|| format!("opening {node}"))?;
    let root_sha = verify_payload("root", &m.payloads.root, &dev, 0)
        .with_context(|| format!("slot {target} changed since it was written"))?;
    for (name, payload, dest) in m.payloads.esp_files(target) {
        let p = ctx.esp.path.join(&dest);
        let f = fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        verify_payload(name, payload, &f, 0)
            .with_context(|| format!("slot {target} changed since it was written"))?;
    }
    let verified = VerifiedSlot::check(target, &m.version, &m.payloads.root.sha256, &root_sha)
        .context("the root read back does not match the manifest")?;
    let mut boot = ctx.read_boot()?;
    boot.stage(verified, booted, tries)?;
    ctx.commit_staging(&boot, Some((target, root_hash(&m))))?;
    hit("install.staged");
    st.written = None;
    st.staged = Some(w);
    st.last_install = Some(LastInstall {
        version: m.version.clone(),
        result: "staged".into(),
        time: now(),
        ..st.last_install.clone().unwrap_or_default()
    });
    state_file::save(&ctx.state_dir, &st)?;
    say(&Event::Staged {
        target,
        tries,
        version: m.version.clone(),
    });
    Ok(m.version)
}

/// Notices a fallback: the staged slot ran out of tries and the loader booted the other one.
pub fn reconcile(say: Say) -> Result<()> {
    let ctx = Ctx::open()?;
    let mut boot = ctx.read_boot()?;
    let Some((slot, entry)) = boot
        .failed_slot(ctx.disk.booted)
        .map(|(s, e)| (s, e.clone()))
    else {
        return Ok(());
    };
    let mut st = state_file::load(&ctx.state_dir)?;
    say(&Event::RolledBack {
        slot,
        version: entry.version.clone(),
        to: ctx.disk.booted,
    });
    boot.entries.remove(&slot);
    ctx.commit(&boot)?;
    hit("reconcile.committed");
    st.rolled_back_from = Some(entry.version.clone());
    st.staged = None;
    st.last_install = Some(LastInstall {
        version: entry.version,
        result: "rolled-back".into(),
        time: now(),
        ..LastInstall::default()
    });
    state_file::save(&ctx.state_dir, &st)?;
    Ok(())
}

/// A pending slot failed its health check: the caller should reboot so the loader spends a try.
#[derive(Debug, thiserror::Error)]
#[error("health check {HEALTH} failed: slot {0} stays pending")]
pub struct Unhealthy(pub Slot);

/// Runs the health checks, then blesses the booted slot if it is pending.
pub fn mark_good(say: Say) -> Result<bool> {
    let ctx = Ctx::open()?;
    let booted = ctx.disk.booted;
    let mut boot = ctx.read_boot()?;
    match boot.entries.get(&booted).map(|e| e.health) {
        Some(Health::Good) => return Ok(false),
        Some(Health::Pending { .. }) => {}
        None => bail!("the booted slot {booted} has no loader entry"),
    }
    if Path::new(HEALTH).exists() {
        let ok = std::process::Command::new(HEALTH)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(Unhealthy(booted).into());
        }
    }
    boot.bless(booted)?;
    ctx.commit(&boot)?;
    hit("bless.committed");
    let mut st = state_file::load(&ctx.state_dir)?;
    if let Some(s) = st.staged.take().filter(|s| s.slot == booted.to_string()) {
        st.installed_sequence = Some(s.sequence);
        st.last_install = Some(LastInstall {
            version: s.version,
            result: "good".into(),
            time: now(),
            ..st.last_install.clone().unwrap_or_default()
        });
        let m = ctx.state_dir.join(format!("slot-{booted}.manifest.json"));
        if m.exists() {
            fs::copy(&m, ctx.state_dir.join("installed.manifest.json"))?;
        }
    }
    state_file::save(&ctx.state_dir, &st)?;
    say(&Event::MarkedGood { slot: booted });
    Ok(true)
}

/// Makes the other good slot the next boot.
pub fn rollback() -> Result<Slot> {
    let ctx = Ctx::open()?;
    let mut boot = ctx.read_boot()?;
    boot.rollback(ctx.disk.booted)?;
    ctx.commit(&boot)?;
    hit("rollback.committed");
    Ok(ctx.disk.booted.other())
}

/// `status --json`.
pub use crate::status::{SlotStatus, Status};

pub fn status() -> Result<Status> {
    let ctx = Ctx::open()?;
    let boot = ctx.read_boot()?;
    let st: UpdaterState = state_file::load(&ctx.state_dir)?;
    let slots = Slot::ALL
        .iter()
        .map(|s| {
            let e: Option<&SlotEntry> = boot.entries.get(s);
            let (state, tries_left) = match e.map(|e| e.health) {
                Some(Health::Good) => ("good", None),
                Some(Health::Pending { tries_left: 0, .. }) => ("bad", Some(0)),
                Some(Health::Pending { tries_left, .. }) => ("pending", Some(tries_left)),
                None => ("empty", None),
            };
            SlotStatus {
                slot: s.to_string(),
                version: e.map(|e| e.version.clone()),
                state: state.into(),
                tries_left,
            }
        })
        .collect();
    Ok(Status {
        booted: ctx.disk.booted.to_string(),
        next_boot: boot.next_boot().map(|s| s.to_string()),
        slots,
        installed_sequence: st.installed_sequence,
        last_install: st.last_install,
        rolled_back_from: st.rolled_back_from,
    })
}
