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
use kiln_boot::grub::{self, GrubEnv};
use kiln_boot::state::{BootState, Health, SlotEntry, VerifiedSlot};
use kiln_boot::systemd_boot::counting::{render, EntryBoot};
use kiln_boot::Slot;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_boot::contract::{LoaderKind, Release};
pub use kiln_boot::contract::{HEALTH, KEYS_DIR, RELEASE};

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
        let mut ctx = Ctx {
            disk,
            esp,
            _lock: lock,
            release,
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
        let line = if self.release.loader == LoaderKind::Grub {
            let (_, vars) = self.grubenv().read().ok()?;
            vars.get(&format!("{}_CMDLINE", slot.to_string().to_uppercase()))?
                .clone()
        } else {
            let (_, entries) = self.esp.entries().read().ok()?;
            entries.into_iter().find(|(s, _)| *s == slot)?.1.options
        };
        kiln_boot::cmdline::verity_arg(&line).map(str::to_string)
    }

    fn grubenv(&self) -> GrubEnv {
        GrubEnv(self.esp.path.join(grub::ENV_PATH))
    }

    /// The A/B state from the loader's own records (grubenv or systemd-boot entries).
    fn read_boot(&self) -> Result<BootState> {
        if self.release.loader == LoaderKind::Grub {
            return Ok(self.grubenv().read().context("reading grubenv")?.0);
        }
        Ok(self
            .esp
            .entries()
            .read()
            .context("reading the loader entries")?
            .0)
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
        if self.release.loader == LoaderKind::Grub {
            return self
                .grubenv()
                .commit(boot, cmd)
                .context("committing grubenv");
        }
        self.esp
            .entries()
            .commit(boot, |s, e| {
                let how = if self.release.uki {
                    EntryBoot::Uki
                } else {
                    EntryBoot::Linux { options: &cmd(s) }
                };
                render(s, e, &self.release.name, how)
            })
            .context("committing the loader entries")
    }
}

/// Passes the `install.root-chunk` failpoint after every root chunk.
struct Failpointed<P>(P);

impl<P: crate::install::Progress> crate::install::Progress for Failpointed<P> {
    fn update(&self, payload: &str, done: u64, total: u64) {
        self.0.update(payload, done, total);
        if payload == "root" {
            hit("install.root-chunk");
        }
    }
}

/// Options of `install`.
pub struct InstallOptions {
    pub allow_downgrade: bool,
    pub tries: u8,
    /// Make the slot boot next (false: write and verify only; `activate` later).
    pub activate: bool,
    /// Chunks in flight.
    pub parallel: usize,
    /// What the bundle must be (the node agent's target): checked before the slot is touched.
    pub expected: crate::bundle::expected::Expected,
}

/// The running slot's `name` as a seed: the opened `file` and where its chunks lie — the
/// payload `recorded` with it, else `index` of it now ([`slot_index::locate`], said on stdout).
/// The seed is optional: `None` (a full download) when the file cannot be opened or located.
fn running_seed(
    file: std::io::Result<fs::File>,
    recorded: Option<&Payload>,
    index: impl FnOnce(&fs::File) -> std::io::Result<Option<Payload>>,
    name: &str,
    slot: Slot,
) -> Option<(fs::File, Payload)> {
    let f = file
        .map_err(|e| tracing::warn!("opening the running {name} of slot {slot}: {e}"))
        .ok()?;
    let (p, took) = slot_index::locate(recorded, || index(&f), &format!("{name} of slot {slot}"))?;
    if let Some(t) = took {
        println!(
            "kiln-updater: indexed the {name} of slot {slot} (no manifest recorded for it): {} chunks, {:.1} MiB in {} ms",
            p.chunks.len(),
            p.size as f64 / 1048576.0,
            t.as_millis()
        );
    }
    Some((f, p))
}

/// A Secure Boot image (`KILN_UKI=1`) boots signed UKIs: a kernel and initrd would leave its
/// entry with nothing bootable, and a UKI bundle for an image that boots kernels would need
/// keys its firmware may not have. Checked before anything is written (`install`) and again
/// before a written slot is made bootable (`activate`, whose manifest is read from persist).
fn boot_kind_matches(release: &Release, m: &crate::bundle::manifest::Manifest) -> Result<()> {
    match (release.uki, m.payloads.is_uki()) {
        (true, false) => bail!(
            "this image boots signed unified kernel images (Secure Boot) and bundle {} carries a kernel and initrd",
            m.version
        ),
        (false, true) => bail!(
            "bundle {} carries signed unified kernel images (Secure Boot) and this image boots a kernel and initrd",
            m.version
        ),
        _ => Ok(()),
    }
}

/// Installs a bundle into the inactive slot and stages it. Returns the staged version.
/// The root hash a staged slot's entry carries: the signed manifest's.
fn root_hash(m: &crate::bundle::manifest::Manifest) -> Option<&str> {
    m.root_verity.as_ref().map(|v| v.root_hash.as_str())
}

pub fn install(source: &str, o: &InstallOptions) -> Result<String> {
    let ctx = Ctx::open()?;
    let booted = ctx.disk.booted;
    let target = booted.other();
    let mut st = state_file::load(&ctx.state_dir)?;
    let src = open_source(source)?;
    let policy = super::policy::device_policy(&ctx.release, &st, o.allow_downgrade, now());
    let v = open_verified(
        src.as_ref(),
        &trusted_keys()?,
        ctx.release.threshold,
        &policy,
        &Limits::default(),
    )
    .with_context(|| format!("verifying {source}"))?;
    o.expected
        .check(&v.manifest, &v.bytes)
        .with_context(|| format!("verifying {source}"))?;
    let m = &v.manifest;
    boot_kind_matches(&ctx.release, m)?;
    let store = ChunkStore::open(src.as_ref(), m)
        .with_context(|| format!("looking for the chunk store of {source}"))?;
    println!(
        "kiln-updater: installing {} (sequence {}) into slot {target}",
        m.version, m.sequence
    );
    // Accepted: the floors rise now (saved with the first state write, before any slot write).
    super::policy::record_accepted(&mut st, m);
    // An earlier run of this install stopped part way (cut: its record still says in-progress;
    // or failed): the slot is read back chunk by chunk and what it holds is kept (each chunk
    // hashed: the record only saves downloads, it is never trusted). Else nothing is read back.
    let resume = st.last_install.as_ref().is_some_and(|l| {
        l.version == m.version && (l.result == "in-progress" || l.result.starts_with("failed"))
    });

    // 1. The target slot is not bootable from here on (committed before any write).
    let mut boot = ctx.read_boot()?;
    boot.clear(target, booted)?;
    ctx.commit(&boot)?;
    hit("install.cleared");
    st.last_install = Some(LastInstall {
        version: m.version.clone(),
        result: "in-progress".into(),
        time: now(),
        ..LastInstall::default()
    });
    st.staged = None;
    st.written = None;
    state_file::save(&ctx.state_dir, &st)?;
    // The manifest's bytes (MiBs for a large root) are not held through the install: written
    // beside their final name now (the state directory exists since the save above), renamed
    // to it once the slot is written.
    let manifest_file = ctx.state_dir.join(format!("slot-{target}.manifest.json"));
    let manifest_new = ctx
        .state_dir
        .join(format!("slot-{target}.manifest.json.new"));
    fs::write(&manifest_new, &v.bytes)
        .with_context(|| format!("writing {}", manifest_new.display()))?;
    drop(v.bytes);

    let progress = Failpointed(super::progress::Reporter::new());
    // What the running slot holds: the manifest recorded when it was installed, else (a slot
    // written at the factory) an index made now by reading it.
    let running: Option<crate::bundle::manifest::Manifest> =
        fs::read(ctx.state_dir.join(format!("slot-{booted}.manifest.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    let mut totals = Stats::default();
    let result = (|| -> Result<String> {
        // 2. Root.
        let part = ctx.disk.part(target.partlabel())?;
        let node = ctx.disk.node(part)?;
        let dev = fs::File::options()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(&node)
            .with_context(|| format!("opening {node} exclusively"))?;
        let running_root = running_seed(
            ctx.disk
                .part(booted.partlabel())
                .and_then(|p| fs::File::open(ctx.disk.node(p)?)),
            running.as_ref().map(|r| &r.payloads.root),
            slot_index::index_slot,
            "root",
            booted,
        );
        let seed = running_root.as_ref().map(|(f, p)| Seed::new(f, 0, p));
        let written = write_payload(
            &store,
            "root",
            &m.payloads.root,
            &dev,
            0,
            BootDisk::size(part),
            &WriteOptions {
                seed: seed.as_ref(),
                parallel: o.parallel,
                progress: &progress,
                resume,
            },
        )?;
        let stats = written.stats;
        totals += stats;
        hit("install.root-written");
        // Verified as written (each chunk's digest and the whole root's, in write order).
        let root_sha = written.sha256;
        println!(
            "kiln-updater: root written and verified ({} chunks fetched ({} bytes), {} reused from slot {booted} ({} bytes), {} already in the slot)",
            stats.chunks, stats.fetched, stats.reused, stats.reused_bytes, stats.present
        );
        // 3. The slot's boot files on the ESP (kernel and initrd, or its signed UKI):
        // temporary name, verify, rename, sync the directory. Seeded by the running slot's
        // file in the same role (a UKI by the running slot's UKI: all but its command line
        // and signature are the same chunks).
        let seeds = m.payloads.esp_files(booted);
        let running_files = running
            .as_ref()
            .map(|r| r.payloads.esp_files(booted))
            .unwrap_or_default();
        for (i, (name, payload, dest)) in m.payloads.esp_files(target).into_iter().enumerate() {
            let running_file = seeds[i].2.clone();
            let running_payload = running_files
                .get(i)
                .filter(|(n, _, _)| n.starts_with("uki") == name.starts_with("uki"))
                .map(|(_, p, _)| *p);
            let running = running_seed(
                fs::File::open(ctx.esp.path.join(&running_file)),
                running_payload,
                |f| slot_index::index_file(f).map(Some),
                name,
                booted,
            );
            let seed = running.as_ref().map(|(f, p)| Seed::new(f, 0, p));
            let fin = ctx.esp.path.join(&dest);
            let dir = fin.parent().expect("slot dir").to_path_buf();
            fs::create_dir_all(&dir)?;
            let tmp = fin.with_extension("new");
            let f = fs::File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&tmp)?;
            let written = write_payload(
                &store,
                name,
                payload,
                &f,
                0,
                u64::MAX,
                &WriteOptions {
                    seed: seed.as_ref(),
                    parallel: o.parallel,
                    progress: &progress,
                    // A new file: nothing of an earlier run is in it.
                    resume: false,
                },
            )?;
            totals += written.stats;
            drop(f);
            // A UKI is the kernel-bearing file: it meets the kernel's failpoints.
            if name != "initrd" {
                hit("install.kernel-written");
            }
            // Not a rename over the old file (unsafe on FAT against a cut): the slot is not
            // bootable, so its old file goes first.
            if fin.exists() {
                fs::remove_file(&fin)?;
                kiln_boot::systemd_boot::counting::sync_dir(&dir)?;
            }
            kiln_boot::rename_durable(
                &tmp,
                &fin,
                if name == "initrd" {
                    "install.initrd-renamed"
                } else {
                    "install.kernel-renamed"
                },
            )?;
        }
        // 4. Stage: committed last.
        let verified = VerifiedSlot::check(target, &m.version, &m.payloads.root.sha256, &root_sha)
            .context("the root read back does not match the manifest")?;
        if o.activate {
            boot.stage(verified, booted, o.tries)?;
            ctx.commit_staging(&boot, Some((target, root_hash(m))))?;
            hit("install.staged");
        }
        Ok(root_sha)
    })();
    let total = totals.fetched + totals.reused_bytes;
    println!(
        "kiln-updater: downloaded {:.1} MiB, reused {:.1} MiB from slot {booted} ({}% of the update reused)",
        totals.fetched as f64 / 1048576.0,
        totals.reused_bytes as f64 / 1048576.0,
        (totals.reused_bytes * 100).checked_div(total).unwrap_or(0)
    );
    match result {
        Ok(_) => {
            fs::rename(&manifest_new, &manifest_file)
                .with_context(|| format!("renaming {} into place", manifest_new.display()))?;
            let done = Staged {
                slot: target.to_string(),
                version: m.version.clone(),
                sequence: m.sequence,
            };
            if o.activate {
                st.staged = Some(done);
            } else {
                st.written = Some(done);
            }
            st.slot_versions
                .insert(target.to_string(), m.version.clone());
            st.last_install = Some(LastInstall {
                version: m.version.clone(),
                result: if o.activate { "staged" } else { "written" }.into(),
                time: now(),
                downloaded: totals.fetched,
                reused: totals.reused_bytes,
            });
            state_file::save(&ctx.state_dir, &st)?;
            if o.activate {
                println!(
                    "kiln-updater: slot {target} staged with {} tries; reboot to try {}",
                    o.tries, m.version
                );
            } else {
                println!(
                    "kiln-updater: slot {target} written and verified with {}; not bootable until `kiln-updater activate`",
                    m.version
                );
            }
            Ok(m.version.clone())
        }
        Err(e) => {
            st.last_install = Some(LastInstall {
                version: m.version.clone(),
                result: format!("failed: {e:#}"),
                time: now(),
                downloaded: totals.fetched,
                reused: totals.reused_bytes,
            });
            state_file::save(&ctx.state_dir, &st)?;
            Err(e.context(format!(
                "installing into slot {target} (left unbootable; slot {booted} untouched)"
            )))
        }
    }
}

/// Makes the slot written by `install --no-activate` boot next (with `tries`), after verifying
/// it again against the manifest recorded with it: root partition, kernel and initrd.
pub fn activate(tries: u8) -> Result<String> {
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
                println!(
                    "kiln-updater: slot {target} is already staged with {}; reboot to try it",
                    s.version
                );
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
    println!(
        "kiln-updater: slot {target} staged with {tries} tries; reboot to try {}",
        m.version
    );
    Ok(m.version)
}

/// Notices a fallback: the staged slot ran out of tries and the loader booted the other one.
pub fn reconcile() -> Result<()> {
    let ctx = Ctx::open()?;
    let mut boot = ctx.read_boot()?;
    let Some((slot, entry)) = boot
        .failed_slot(ctx.disk.booted)
        .map(|(s, e)| (s, e.clone()))
    else {
        return Ok(());
    };
    let mut st = state_file::load(&ctx.state_dir)?;
    println!(
        "kiln-updater: slot {slot} ({}) failed to boot; rolled back to slot {}",
        entry.version, ctx.disk.booted
    );
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
pub fn mark_good() -> Result<bool> {
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
    println!("kiln-updater: slot {booted} marked good");
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
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub booted: String,
    pub next_boot: Option<String>,
    pub slots: Vec<SlotStatus>,
    pub installed_sequence: Option<u64>,
    pub last_install: Option<LastInstall>,
    pub rolled_back_from: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct SlotStatus {
    pub slot: String,
    pub version: Option<String>,
    /// good, pending, bad or empty.
    pub state: String,
    pub tries_left: Option<u8>,
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{Manifest, Payload, Payloads, RootVerity, FORMAT};

    fn release(uki: bool) -> Release {
        Release {
            name: "n".into(),
            version: "1.0.0".into(),
            compatible: "c".into(),
            threshold: 1,
            loader: LoaderKind::SystemdBoot,
            sequence: None,
            built: None,
            uki,
        }
    }

    fn manifest(uki: bool) -> Manifest {
        let p = || Payload {
            size: 0,
            sha256: String::new(),
            chunks: vec![],
        };
        Manifest {
            format: FORMAT,
            compatible: "c".into(),
            version: "2.0.0".into(),
            sequence: 2,
            created: 0,
            expires: 1,
            payloads: Payloads {
                root: p(),
                kernel: (!uki).then(p),
                initrd: (!uki).then(p),
                uki_a: uki.then(p),
                uki_b: uki.then(p),
            },
            root_verity: uki.then(|| RootVerity {
                root_hash: "ab".repeat(32),
                data_blocks: 1,
            }),
        }
    }

    #[test]
    fn a_bundle_must_boot_the_way_the_image_does() {
        assert!(boot_kind_matches(&release(false), &manifest(false)).is_ok());
        assert!(boot_kind_matches(&release(true), &manifest(true)).is_ok());
        let e = boot_kind_matches(&release(true), &manifest(false)).unwrap_err();
        assert!(
            e.to_string().contains("Secure Boot") && e.to_string().contains("kernel and initrd"),
            "{e}"
        );
        let e = boot_kind_matches(&release(false), &manifest(true)).unwrap_err();
        assert!(e.to_string().contains("bundle 2.0.0 carries signed"), "{e}");
    }
}
