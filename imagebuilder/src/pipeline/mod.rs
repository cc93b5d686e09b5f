//! `kiln build`: from a resolved spec to `disk.raw` (+ `disk.qcow2`), without mounts or loop
//! devices. Everything is written under a temporary directory inside the output directory and
//! renamed into place only once complete (`disk.raw` last), so a failed build leaves nothing
//! under the final names.
//!
//! One function per build thread: [`root::root_job`] (tree, image, verity tree, copied into
//! root-a) and [`root::persist_job`] (mke2fs in place) run beside [`boot::early_job`] (the
//! initramfs and the ESP files that do not carry the root hash); then [`boot::finish_esp`]
//! (slot A's command line, signed UKIs, the ESP written), [`outputs`] (checksum, qcow2, sync)
//! and [`commit`] (renames, `disk.raw` last).

mod boot;
mod root;

use crate::disk::write_gpt;
use crate::error::BuildError;
use crate::layout::{DiskLayout, Ids};
use crate::spec::{FsFormat, OutputFormat};
use crate::validate::Resolved;
use kiln_rootfs::mkfs::RootFormat;
use serde::Serialize;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tracing::info;

/// Inputs of a build besides the spec.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out_dir: PathBuf,
    /// The static `kiln-init` binary.
    pub init_bin: PathBuf,
    /// The static `kiln-updater` binary, baked in when the spec trusts update keys.
    pub updater_bin: Option<PathBuf>,
    /// The static `kiln-agent` binary, baked in when the spec has `[agent]`.
    pub agent_bin: Option<PathBuf>,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
}

impl BuildOptions {
    /// The options every caller builds with: `init_bin`, and the `kiln-updater` and
    /// `kiln-agent` that `scripts/build-device` made, where found
    /// ([`crate::find_device_binary`]).
    pub fn new(out_dir: impl Into<PathBuf>, init_bin: PathBuf, epoch: u64) -> BuildOptions {
        BuildOptions {
            out_dir: out_dir.into(),
            init_bin,
            updater_bin: crate::find_device_binary("kiln-updater"),
            agent_bin: crate::find_device_binary("kiln-agent"),
            epoch,
        }
    }
}

/// What a build wrote; also saved as `build.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub name: String,
    pub version: String,
    pub compatible: String,
    /// The update sequence baked into the root (`[update] sequence`).
    pub sequence: Option<u64>,
    pub kernel_version: String,
    pub cmdline: String,
    pub disk: PathBuf,
    pub disk_size: u64,
    /// The root slot's content: the filesystem image, and with verity its hash tree.
    pub root_image_size: u64,
    pub root_image_sha256: String,
    /// The dm-verity tree after the filesystem image (`[rootfs] verity`).
    pub root_verity: Option<RootVerity>,
    /// `[boot] secure_boot`: the slots boot the signed `uki-a.efi` / `uki-b.efi` of this
    /// directory (`cmdline` is slot A's signed one).
    pub secure_boot: bool,
    pub partitions: Vec<PartReport>,
    pub outputs: Vec<String>,
    pub timings_ms: Vec<(String, u128)>,
}

/// Where a root's dm-verity tree is and what it hashes to (`veritysetup verify ROOT ROOT
/// ROOT_HASH --hash-offset=HASH_OFFSET` checks it).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RootVerity {
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    /// The filesystem image's length: the superblock starts there, the tree a block later.
    pub hash_offset: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
}

/// Step durations, recorded from several threads.
#[derive(Default)]
struct Timer {
    steps: std::sync::Mutex<Vec<(String, u128)>>,
}

impl Timer {
    /// Runs `f` and records how long it took under `step`.
    fn step<T>(&self, step: &str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        let ms = start.elapsed().as_millis();
        info!(step, ms, "done");
        self.steps
            .lock()
            .expect("timer lock")
            .push((step.to_string(), ms));
        out
    }

    fn steps(&self) -> Vec<(String, u128)> {
        self.steps.lock().expect("timer lock").clone()
    }
}
/// What every build thread reads: the spec, the options, where the work goes.
struct Ctx<'a> {
    r: &'a Resolved,
    opts: &'a BuildOptions,
    t: &'a Timer,
    /// The build's work directory (inside the output directory).
    work: &'a Path,
    ids: Ids,
    layout: DiskLayout,
    format: RootFormat,
    root_img: PathBuf,
    disk_path: PathBuf,
}

/// Runs the whole build.
pub fn build(r: &Resolved, opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let spec = &r.spec;
    let t = Timer::default();
    fs::create_dir_all(&opts.out_dir).map_err(BuildError::io(format!(
        "creating {}",
        opts.out_dir.display()
    )))?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-build-")
        .tempdir_in(&opts.out_dir)
        .map_err(BuildError::io(format!(
            "creating a work directory in {}",
            opts.out_dir.display()
        )))?;
    let work = tmp.path();
    let ids = Ids::new(&spec.name, &spec.version);
    let layout = DiskLayout::new(&spec.partitions, &ids);
    let ctx = Ctx {
        r,
        opts,
        t: &t,
        work,
        ids,
        layout,
        format: match spec.rootfs.format {
            FsFormat::Erofs => RootFormat::Erofs,
            FsFormat::Ext4 => RootFormat::Ext4,
        },
        root_img: work.join("root.img"),
        disk_path: work.join("disk.raw"),
    };
    let mut disk = File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&ctx.disk_path)
        .map_err(BuildError::io("creating disk.raw"))?;
    disk.set_len(ctx.layout.size)
        .map_err(BuildError::io("sizing disk.raw"))?;
    t.step("write GPT", || write_gpt(&mut disk, &ctx.layout))
        .map_err(BuildError::io("writing the GPT"))?;

    // Three independent jobs: the root and persist write disjoint parts of the disk; the
    // initramfs and the ESP's early files are built beside them.
    let (root, persist, early) = std::thread::scope(|s| {
        let root = s.spawn(|| root::root_job(&ctx, &disk));
        let persist = s.spawn(|| root::persist_job(&ctx));
        let early = boot::early_job(&ctx);
        (joined(root), joined(persist), early)
    });
    let (root_size, root_verity) = root?;
    persist?;
    // The boot files wait for the root: slot A's command line carries its root hash.
    let (cmdline, secure_boot) = boot::finish_esp(&ctx, &disk, early?, root_verity.as_ref())?;

    let (mut outputs, root_image_sha256) = outputs(&ctx, disk, secure_boot)?;
    let layout = &ctx.layout;
    let report = BuildReport {
        name: spec.name.clone(),
        version: spec.version.clone(),
        compatible: spec.compatible.clone(),
        sequence: spec.update.sequence,
        kernel_version: r.kernel_version.clone(),
        cmdline,
        disk: opts.out_dir.join("disk.raw"),
        disk_size: layout.size,
        root_image_size: root_size,
        secure_boot,
        root_verity,
        root_image_sha256,
        partitions: layout
            .parts()
            .iter()
            .map(|p| PartReport {
                number: p.number,
                label: p.label.to_string(),
                type_guid: p.type_guid.to_ascii_lowercase(),
                guid: p.guid.to_string(),
                offset: p.offset,
                size: p.size,
            })
            .collect(),
        outputs: outputs.clone(),
        timings_ms: t.steps(),
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| BuildError::Other(e.to_string()))?;
    fs::write(work.join("build.json"), json).map_err(BuildError::io("writing build.json"))?;
    outputs.sort_by_key(|o| o == "disk.raw");
    commit(work, &opts.out_dir, &outputs)?;
    Ok(report)
}

/// The other formats and the root's checksum, written while `disk.raw` is synced; returns the
/// names of every output and the root image's sha256.
fn outputs(ctx: &Ctx, disk: File, secure_boot: bool) -> Result<(Vec<String>, String), BuildError> {
    let t = ctx.t;
    let mut outputs = vec![
        "disk.raw".to_string(),
        "root.img".into(),
        "vmlinuz".into(),
        "initrd.img".into(),
        "build.json".into(),
    ];
    if secure_boot {
        outputs.extend(["uki-a.efi".to_string(), "uki-b.efi".into()]);
    }
    let disk_ref = &disk;
    let (qcow2, root_sha, synced) = std::thread::scope(|s| {
        let root_sha = s.spawn(|| t.step("checksum root", || sha256_file(&ctx.root_img)));
        let qcow2 = s.spawn(|| -> Result<bool, BuildError> {
            if !ctx.r.spec.output.formats.contains(&OutputFormat::Qcow2) {
                return Ok(false);
            }
            t.step("write qcow2", || {
                let out = File::options()
                    .create_new(true)
                    .write(true)
                    .open(ctx.work.join("disk.qcow2"))?;
                crate::qcow2::write_from_raw(disk_ref, &out)
            })
            .map_err(BuildError::io("writing disk.qcow2"))?;
            Ok(true)
        });
        let synced = t
            .step("sync disk", || disk_ref.sync_all())
            .map_err(BuildError::io("syncing disk.raw"));
        (joined(qcow2), joined(root_sha), synced)
    });
    synced?;
    let root_sha = root_sha?;
    if qcow2? {
        outputs.push("disk.qcow2".into());
    }
    Ok((outputs, root_sha))
}

/// Renames the outputs into place in their order (`disk.raw` last) and drops the stale firmware
/// variables of an old disk.
fn commit(work: &Path, out_dir: &Path, outputs: &[String]) -> Result<(), BuildError> {
    for o in outputs {
        fs::rename(work.join(o), out_dir.join(o))
            .map_err(BuildError::io(format!("renaming {o} into place")))?;
    }
    let disk = out_dir.join("disk.raw");
    let _ = fs::remove_file(crate::qemu::vars_path(&disk));
    let _ = fs::remove_file(crate::qemu::secure_vars_path(&disk));
    Ok(())
}

/// Joins a build thread, turning a panic into an error.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, Result<T, BuildError>>) -> Result<T, BuildError> {
    h.join()
        .unwrap_or_else(|_| Err(BuildError::Other("a build thread panicked".into())))
}

/// The sha256 (hex) of the file at `p`.
pub fn sha256_file(p: &Path) -> Result<String, BuildError> {
    let f = File::open(p).map_err(BuildError::io(format!("opening {}", p.display())))?;
    kiln_io::sha256_hex(f).map_err(BuildError::io(format!("reading {}", p.display())))
}
