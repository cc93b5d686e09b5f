//! The operations of `kiln-updater`. Order of commits in `install` (see docs/architecture.md):
//! verify the manifest → remove the target slot's loader entry (committed) → write and verify
//! the root → write kernel/initrd under temporary names, verify, rename → stage the slot with
//! a try counter (committed last) → record on persist → reboot.

use super::disk::{BootDisk, Esp};
use super::state_file::{self, LastInstall, Staged, UpdaterState};
use crate::bundle::keys::PublicKey;
use crate::bundle::manifest::Payload;
use crate::bundle::open::{open_verified, Limits};
use crate::bundle::source::{BundleSource, DirSource, KbundleSource};
use crate::bundle::store::ChunkStore;
use crate::install::{verify_payload, write_payload, Stats, WriteOptions};
use crate::seed::Seed;
use crate::slot_index;
use anyhow::{bail, Context, Result};
use kiln_boot::failpoint::hit;
use kiln_boot::loader::Loader;
use kiln_boot::state::{BootState, Health, SlotEntry, VerifiedSlot};
use kiln_boot::Slot;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_boot::contract::Release;
pub use kiln_boot::contract::{HEALTH, KEYS_DIR, RELEASE};

mod event;
mod install;
mod lifecycle;

pub use event::Event;

/// Where an operation reports its [`Event`]s (the binary prints them).
pub type Say<'a> = &'a dyn Fn(&Event);

pub use install::{install, InstallOptions};
pub use lifecycle::{
    activate, mark_good, reconcile, rollback, status, SlotStatus, Status, Unhealthy,
};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn release() -> Result<Release> {
    let text = fs::read_to_string(RELEASE).with_context(|| format!("reading {RELEASE}"))?;
    Ok(Release::parse(&text)?)
}

/// A public key file (`kiln keygen`'s `.pub`).
pub fn read_public_key(p: &Path) -> Result<PublicKey> {
    let text = fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    PublicKey::from_file(&text).with_context(|| p.display().to_string())
}

fn trusted_keys() -> Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    let rd = fs::read_dir(KEYS_DIR)
        .with_context(|| format!("reading {KEYS_DIR} (the image trusts no update key)"))?;
    for e in rd {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "pub") {
            keys.push(read_public_key(&p)?);
        }
    }
    if keys.is_empty() {
        bail!("no trusted keys in {KEYS_DIR}");
    }
    Ok(keys)
}

/// A bundle from a URL, a `.kbundle` file or a directory.
pub fn open_source(arg: &str) -> Result<Box<dyn BundleSource>> {
    if arg.starts_with("http://") || arg.starts_with("https://") {
        return Ok(Box::new(super::http::HttpSource::new(arg)?));
    }
    let p = Path::new(arg);
    if p.is_dir() {
        Ok(Box::new(DirSource(p.to_path_buf())))
    } else if p.is_file() {
        Ok(Box::new(KbundleSource::open(p)?))
    } else {
        bail!("{arg}: not a URL, bundle directory or .kbundle file")
    }
}

/// One updater operation at a time (the boot-time reconcile/mark-good and an install must not
/// interleave): an exclusive `flock` on /run/kiln/updater.lock, waited for.
fn lock() -> Result<nix::fcntl::Flock<fs::File>> {
    fs::create_dir_all("/run/kiln").context("creating /run/kiln")?;
    let f = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/kiln/updater.lock")
        .context("opening /run/kiln/updater.lock")?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking /run/kiln/updater.lock: {e}"))
}

struct Ctx {
    // Field order is drop order: the ESP is unmounted before the lock is released.
    disk: BootDisk,
    esp: Esp,
    _lock: nix::fcntl::Flock<fs::File>,
    release: Release,
    loader: Loader,
    /// Each slot's root hash as its entry carries it now: the booted slot's from the kernel's
    /// command line, the other's from its loader record (GRUB re-renders both slots' lines on
    /// every commit, so the other slot's hash must come back from somewhere other than the
    /// booted line).
    verity: [(Slot, Option<String>); 2],
    state_dir: PathBuf,
}

impl Ctx {
    fn open() -> Result<Ctx> {
        let lock = lock()?;
        let disk = BootDisk::detect().context("finding the boot disk")?;
        let esp = Esp::mount(&disk)?;
        let release = release()?;
        let loader = Loader::new(release.loader, &esp.path, &release.name, release.uki);
        let mut ctx = Ctx {
            disk,
            esp,
            _lock: lock,
            release,
            loader,
            verity: [(Slot::A, None), (Slot::B, None)],
            state_dir: PathBuf::from(state_file::DIR),
        };
        let booted = ctx.disk.booted;
        ctx.verity = [Slot::A, Slot::B].map(|s| {
            let h = if s == booted {
                ctx.disk.booted_verity.clone()
            } else {
                ctx.recorded_verity(s)
            };
            (s, h.filter(|h| kiln_boot::cmdline::is_root_hash(h)))
        });
        Ok(ctx)
    }

    /// The root hash in `slot`'s loader record (its GRUB command line, or its entry's options).
    fn recorded_verity(&self, slot: Slot) -> Option<String> {
        let line = self.loader.recorded_cmdline(slot)?;
        kiln_boot::cmdline::verity_arg(&line).map(str::to_string)
    }

    /// The A/B state from the loader's own records (grubenv or systemd-boot entries).
    fn read_boot(&self) -> Result<BootState> {
        self.loader
            .read()
            .with_context(|| format!("reading {}", self.loader.describe()))
    }

    fn commit(&self, boot: &BootState) -> Result<()> {
        self.commit_staging(boot, None)
    }

    /// Commits `boot`; `staged`: a slot just written, and its new root's hash.
    fn commit_staging(&self, boot: &BootState, staged: Option<(Slot, Option<&str>)>) -> Result<()> {
        let hash = |s: Slot| match staged {
            Some((t, h)) if t == s => h.map(str::to_string),
            _ => self
                .verity
                .iter()
                .find(|(x, _)| *x == s)
                .and_then(|(_, h)| h.clone()),
        };
        let lines = [Slot::A, Slot::B].map(|s| self.disk.cmdline(s, hash(s).as_deref()));
        let cmd = |s: Slot| {
            lines[usize::from(s == Slot::B)]
                .as_ref()
                .map(|c| c.clone())
                .unwrap_or_default()
        };
        self.loader
            .commit(boot, cmd)
            .with_context(|| format!("committing {}", self.loader.describe()))
    }
}
