//! `kiln build`: from a resolved spec to `disk.raw` (+ `disk.qcow2`), without mounts or loop
//! devices. Everything is written under a temporary directory inside the output directory and
//! renamed into place only once complete (`disk.raw` last), so a failed build leaves nothing
//! under the final names.

use crate::disk::{copy_file_sparse, write_gpt};
use crate::error::BuildError;
use crate::layout::{DiskLayout, Ids};
use crate::services;
use crate::spec::{Base, FsFormat, OutputFormat};
use crate::validate::Resolved;
use kiln_boot::contract;
use kiln_boot::grub;
use kiln_boot::state::{BootState, Health, SlotEntry};
use kiln_boot::systemd_boot::counting::EntryBoot;
use kiln_boot::systemd_boot::{self, counting};
use kiln_boot::Slot;
use kiln_initramfs::archive::Contents;
use kiln_initramfs::config::InitConfig;
use kiln_initramfs::modules::ModulesDep;
use kiln_rootfs::mkfs::{self, RootFormat, RootImageOptions};
use kiln_rootfs::{dircopy, oci, tarball};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Read;
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

    let format = match spec.rootfs.format {
        FsFormat::Erofs => RootFormat::Erofs,
        FsFormat::Ext4 => RootFormat::Ext4,
    };
    let root_img = work.join("root.img");
    let disk_path = work.join("disk.raw");
    let mut disk = File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(BuildError::io("creating disk.raw"))?;
    disk.set_len(layout.size)
        .map_err(BuildError::io("sizing disk.raw"))?;
    t.step("write GPT", || write_gpt(&mut disk, &layout))
        .map_err(BuildError::io("writing the GPT"))?;

    // Three independent jobs: the root (tree, image, verity tree, copy into root-a) and persist
    // (mke2fs in place) write disjoint parts of the disk; the initramfs and the ESP's early
    // files are built beside them.
    let disk_ref = &disk;
    let (root, persist, boot) = std::thread::scope(|s| {
        let root = s.spawn(|| -> Result<(u64, Option<RootVerity>), BuildError> {
            let staging = staging_dir(work, layout.root_a.size)?;
            let tree = staging.path().join("root");
            fs::create_dir(&tree).map_err(BuildError::io("creating the staging root"))?;
            t.step("assemble root tree", || assemble_tree(r, opts, &tree))?;
            let size = t.step("make root image", || {
                mkfs::make_root_image(
                    &tree,
                    &root_img,
                    &RootImageOptions {
                        format,
                        uuid: ids.uuid("fs:root").to_string(),
                        epoch: opts.epoch,
                        // With verity the filesystem leaves room for its tree (an ext4 root
                        // fills what it is given).
                        slot_size: if spec.rootfs.verity {
                            kiln_boot::verity::Geometry::max_data_blocks(layout.root_a.size)
                                * kiln_boot::verity::BLOCK
                        } else {
                            layout.root_a.size
                        },
                    },
                )
            })?;
            drop(staging);
            let verity = if spec.rootfs.verity {
                let v = t.step("verity tree", || {
                    kiln_rootfs::verity::append_tree(
                        &root_img,
                        ids.digest("verity-salt"),
                        *ids.uuid("verity:root").as_bytes(),
                        layout.root_a.size,
                    )
                })?;
                Some((
                    v.total_len,
                    RootVerity {
                        root_hash: hex::encode(v.root_hash),
                        salt: hex::encode(v.salt),
                        data_blocks: v.data_blocks,
                        hash_offset: v.hash_offset,
                    },
                ))
            } else {
                None
            };
            t.step("write root-a", || {
                copy_file_sparse(&File::open(&root_img)?, disk_ref, layout.root_a.offset)
            })
            .map_err(BuildError::io("writing root-a"))?;
            Ok(match verity {
                Some((total, v)) => (total, Some(v)),
                None => (size, None),
            })
        });
        let persist = s.spawn(|| -> Result<(), BuildError> {
            t.step("format persist", || {
                mkfs::format_ext4_at(
                    &disk_path,
                    layout.persist.offset,
                    layout.persist.size,
                    &ids.uuid("fs:persist").to_string(),
                    "persist",
                    opts.epoch,
                )
            })?;
            // A hard link when the kernel tree is on the same filesystem, else a copy.
            let out = work.join("vmlinuz");
            if fs::hard_link(&r.kernel_image, &out).is_err() {
                fs::copy(&r.kernel_image, &out).map_err(BuildError::io("writing vmlinuz"))?;
            }
            Ok(())
        });
        // Beside them too: the initramfs, then the ESP's files that do not carry the root
        // hash (loader, kernel, initrd), written into the in-memory volume.
        let boot = (|| -> Result<_, BuildError> {
            let initrd = t.step("build initramfs", || build_initramfs(r, opts, format))?;
            let kernel = fs::read(&r.kernel_image).map_err(BuildError::io(format!(
                "reading {}",
                r.kernel_image.display()
            )))?;
            let (esp, early_bytes) = t.step("prepare ESP", || {
                let files = esp_early_files(r, work, opts.epoch, &kernel, &initrd)?;
                let bytes: u64 = files.iter().map(|f| f.data.len() as u64).sum();
                esp_room(r, layout.esp.size, bytes)?;
                let esp = crate::esp::prepare(layout.esp.size, ids.u32("esp"), opts.epoch, &files)
                    .map_err(BuildError::io("building the ESP"))?;
                Ok::<_, BuildError>((esp, bytes))
            })?;
            Ok((initrd, kernel, esp, early_bytes))
        })();
        (joined(root), joined(persist), boot)
    });
    let (root_size, root_verity) = root?;
    persist?;
    let (initrd, kernel, esp, early_bytes) = boot?;
    // The boot files wait for the root: slot A's command line carries its root hash.
    let line = kiln_boot::cmdline::slot_cmdline(
        layout.root_a.guid,
        Slot::A,
        root_verity.as_ref().map(|v| v.root_hash.as_str()),
        &spec.boot.cmdline,
    );
    // Secure Boot: each slot's signed UKI (the factory ESP holds slot A's; both go to the
    // build directory for bundles), and the signed loader.
    let signed = match &r.secure_boot {
        Some(sb) => Some(t.step("sign UKIs", || {
            secure_boot_files(
                r,
                work,
                opts.epoch,
                sb,
                &kernel,
                &initrd,
                root_verity.as_ref(),
            )
        })?),
        None => None,
    };
    let line = match &signed {
        Some(s) => s.cmdline_a.clone(),
        None => line,
    };
    let esp_files = esp_late_files(r, &line, signed.as_ref().map(|s| s.uki_a.as_slice()))?;
    esp_room(
        r,
        layout.esp.size,
        early_bytes + esp_files.iter().map(|f| f.data.len() as u64).sum::<u64>(),
    )?;
    t.step("write ESP", || {
        esp.finish(&disk, layout.esp.offset, &esp_files)
    })
    .map_err(BuildError::io("building the ESP"))?;
    fs::write(work.join("initrd.img"), &initrd).map_err(BuildError::io("writing initrd.img"))?;

    // 5. Other formats, written while disk.raw is synced.
    let mut outputs = vec![
        "disk.raw".to_string(),
        "root.img".into(),
        "vmlinuz".into(),
        "initrd.img".into(),
        "build.json".into(),
    ];
    if signed.is_some() {
        outputs.extend(["uki-a.efi".to_string(), "uki-b.efi".into()]);
    }
    let disk_ref = &disk;
    let (qcow2, root_sha, synced) = std::thread::scope(|s| {
        let root_sha = s.spawn(|| t.step("checksum root", || sha256_file(&root_img)));
        let qcow2 = s.spawn(|| -> Result<bool, BuildError> {
            if !spec.output.formats.contains(&OutputFormat::Qcow2) {
                return Ok(false);
            }
            t.step("write qcow2", || {
                let out = File::options()
                    .create_new(true)
                    .write(true)
                    .open(work.join("disk.qcow2"))?;
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
    let root_image_sha256 = root_sha?;
    drop(disk);
    if qcow2? {
        outputs.push("disk.qcow2".into());
    }
    let report = BuildReport {
        name: spec.name.clone(),
        version: spec.version.clone(),
        compatible: spec.compatible.clone(),
        sequence: spec.update.sequence,
        kernel_version: r.kernel_version.clone(),
        cmdline: line,
        disk: opts.out_dir.join("disk.raw"),
        disk_size: layout.size,
        root_image_size: root_size,
        secure_boot: signed.is_some(),
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

    // 6. Commit: rename into place, disk.raw last; drop the stale firmware vars of an old disk.
    outputs.sort_by_key(|o| o == "disk.raw");
    for o in &outputs {
        fs::rename(work.join(o), opts.out_dir.join(o))
            .map_err(BuildError::io(format!("renaming {o} into place")))?;
    }
    let _ = fs::remove_file(crate::qemu::vars_path(&opts.out_dir.join("disk.raw")));
    let _ = fs::remove_file(crate::qemu::secure_vars_path(
        &opts.out_dir.join("disk.raw"),
    ));
    Ok(report)
}

/// Where the root tree is staged: `$KILN_STAGING_DIR`, else `/dev/shm` when it is a tmpfs with
/// room for twice the root slot (creating thousands of small files and symlinks there is far
/// cheaper than on a journaled disk), else the build's work directory.
fn staging_dir(work: &Path, slot: u64) -> Result<tempfile::TempDir, BuildError> {
    let shm = Path::new("/dev/shm");
    let base = match std::env::var_os("KILN_STAGING_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let roomy = nix::sys::statvfs::statvfs(shm)
                .map(|v| v.blocks_available() * v.fragment_size() > 2 * slot)
                .unwrap_or(false);
            if roomy {
                shm.to_path_buf()
            } else {
                work.to_path_buf()
            }
        }
    };
    tempfile::Builder::new()
        .prefix(".kiln-stage-")
        .tempdir_in(&base)
        .map_err(BuildError::io(format!(
            "creating a staging directory in {}",
            base.display()
        )))
}

/// Joins a build thread, turning a panic into an error.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, Result<T, BuildError>>) -> Result<T, BuildError> {
    h.join()
        .unwrap_or_else(|_| Err(BuildError::Other("a build thread panicked".into())))
}

/// The sha256 (hex) of the file at `p`.
pub fn sha256_file(p: &Path) -> Result<String, BuildError> {
    let mut f = File::open(p).map_err(BuildError::io(format!("opening {}", p.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(BuildError::io(format!("reading {}", p.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A device binary to bake: it must exist (scripts/build-device) and be static.
fn static_device_binary<'a>(
    bin: Option<&'a Path>,
    field: &str,
    name: &str,
) -> Result<&'a Path, BuildError> {
    let bin = bin.ok_or_else(|| {
        BuildError::Other(format!(
            "{field} is set but {name} was not found (run scripts/build-device)"
        ))
    })?;
    let is_static = crate::elf::is_static_elf64_file(bin)
        .map_err(BuildError::io(format!("reading {}", bin.display())))?;
    if !is_static {
        return Err(BuildError::Other(format!(
            "{} is not a static x86-64 binary",
            bin.display()
        )));
    }
    Ok(bin)
}

/// Base, overlays, baked files, generated files, mount points.
fn assemble_tree(r: &Resolved, opts: &BuildOptions, tree: &Path) -> Result<(), BuildError> {
    let spec = &r.spec;
    // Whatever a base archive expands to, more than the root partition could never be imaged.
    let mut cap = tarball::Cap::new(spec.partitions.root);
    match &r.base {
        Base::Tarball(p) => {
            tarball::extract_file(p, tree, &mut cap)?;
        }
        Base::Oci(p) => {
            oci::apply_layout(p, tree, &mut cap)?;
        }
        Base::Dir(p) => {
            dircopy::copy_tree(p, tree)?;
        }
    }
    for o in &r.overlays {
        dircopy::copy_tree(o, tree)?;
    }
    for f in &r.files {
        dircopy::install_file(&f.source, tree, &f.dest, f.mode)?;
    }
    if !r.update_keys.is_empty() {
        let bin = static_device_binary(opts.updater_bin.as_deref(), "update.keys", "kiln-updater")?;
        dircopy::install_file(
            bin,
            tree,
            Path::new(contract::in_tree(contract::UPDATER)),
            0o755,
        )?;
    }
    if spec.agent.is_some() {
        let bin = static_device_binary(opts.agent_bin.as_deref(), "[agent]", "kiln-agent")?;
        dircopy::install_file(
            bin,
            tree,
            Path::new(contract::in_tree(contract::AGENT)),
            0o755,
        )?;
    }
    for (id, text) in &r.update_keys {
        let rel = format!("{}/{id}.pub", contract::in_tree(contract::KEYS_DIR));
        dircopy::write_file(tree, Path::new(&rel), text.as_bytes(), 0o644)?;
    }
    let facts = crate::root_facts::inspect(spec, &r.spec_path.display().to_string(), tree)?;
    if facts.init == services::InitSystem::Systemd {
        // kiln-init writes a fresh id through the /etc overlay on first boot (so it lives on
        // persist); an id shipped in the base would be every device's.
        dircopy::write_file(tree, Path::new("etc/machine-id"), b"", 0o444)?;
        copy_modules(r, tree)?;
    }
    let images = bake_containers(r, &facts, tree)?;
    let gen = services::generated(spec, &facts, &images, opts.epoch);
    for g in &gen.files {
        dircopy::write_file(tree, Path::new(&g.path), g.content.as_bytes(), g.mode)?;
    }
    for l in &gen.links {
        dircopy::write_symlink(tree, Path::new(&l.path), &l.target)?;
    }
    let mut dirs: Vec<(String, u32)> = ["/proc", "/sys", "/dev"]
        .iter()
        .map(|d| (d.to_string(), 0o755))
        .collect();
    dirs.extend(gen.dirs.iter().map(|d| (d.clone(), 0o755)));
    dirs.extend(
        spec.persist
            .mount_points()
            .map(|d| (d.to_string(), if d == "/tmp" { 0o1777 } else { 0o755 })),
    );
    for (d, mode) in dirs {
        dircopy::ensure_dir(tree, Path::new(d.trim_start_matches('/')), mode)?;
    }
    Ok(())
}

/// Bakes each `[[container]]`'s image into `/usr/lib/kiln/containers/<name>.tar` (systemd
/// roots with containerd only); returns them in spec order.
fn bake_containers(
    r: &Resolved,
    facts: &services::RootFacts,
    tree: &Path,
) -> Result<Vec<services::BakedImage>, BuildError> {
    let spec = &r.spec;
    if spec.containers.is_empty() {
        return Ok(Vec::new());
    }
    let err = |field: String, message: String| crate::SpecError {
        file: r.spec_path.display().to_string(),
        field,
        message,
    };
    if facts.init != services::InitSystem::Systemd {
        return Err(err(
            "container".into(),
            format!(
                "containers run under systemd and containerd; this root's init is {}",
                facts.init.name()
            ),
        )
        .into());
    }
    let missing: Vec<&str> = ["/usr/bin/containerd", "/usr/bin/ctr"]
        .into_iter()
        .filter(|p| !kiln_rootfs::tree::exists(tree, p))
        .collect();
    if !missing.is_empty() {
        return Err(err(
            "container".into(),
            format!(
                "the root has no containerd ({} missing)",
                missing.join(", ")
            ),
        )
        .into());
    }
    let dir = Path::new(services::containers::DIR);
    dircopy::ensure_dir(tree, dir, 0o755)?;
    let mut out = Vec::new();
    for (i, (c, input)) in spec.containers.iter().zip(&r.container_images).enumerate() {
        let work = tempfile::tempdir_in(tree.parent().unwrap_or(tree))
            .map_err(BuildError::io("creating a directory for a container image"))?;
        let baked = kiln_rootfs::oci_image::bake(
            input,
            &c.name,
            work.path(),
            &tree.join(dir).join(format!("{}.tar", c.name)),
            spec.partitions.root,
        )
        .map_err(|e| err(format!("container[{i}].image"), e.to_string()))?;
        let argv = services::containers::argv(c, &baked.entrypoint, &baked.cmd);
        if argv.is_empty() {
            return Err(err(
                format!("container[{i}].command"),
                "the image has no entrypoint or cmd: set command".into(),
            )
            .into());
        }
        out.push(services::BakedImage {
            reference: baked.reference,
            digest: baked.manifest_digest,
            argv,
        });
    }
    Ok(out)
}

/// The kernel's modules (`lib/modules/<version>` of `[kernel] dir`, with `modules.dep`) at
/// `/lib/modules/<version>` of the root, wherever `/lib` leads there: udev and modprobe load
/// what kiln-init did not (bridge, br_netfilter, nf_conntrack…).
fn copy_modules(r: &Resolved, tree: &Path) -> Result<(), BuildError> {
    let at = format!("/lib/modules/{}", r.kernel_version);
    let rel = kiln_rootfs::tree::resolve(tree, &at, true).map_err(|e| crate::SpecError {
        file: r.spec_path.display().to_string(),
        field: "base".into(),
        message: format!("{at}: {e}"),
    })?;
    let dest = tree.join(&rel);
    fs::create_dir_all(&dest).map_err(BuildError::io(format!("creating {}", dest.display())))?;
    dircopy::copy_tree(&r.modules_dir, &dest)?;
    Ok(())
}

/// Where the initramfs holds the FAT checker kiln-init runs on the ESP.
const ESP_FSCK: &str = "/sbin/fsck.fat";

fn build_initramfs(
    r: &Resolved,
    opts: &BuildOptions,
    format: RootFormat,
) -> Result<Vec<u8>, BuildError> {
    let init = fs::read(&opts.init_bin).map_err(BuildError::io(format!(
        "reading {}",
        opts.init_bin.display()
    )))?;
    if !crate::elf::is_static_elf64(&init) {
        return Err(BuildError::Other(format!(
            "{} is not a static x86-64 ELF binary (build it with scripts/build-device)",
            opts.init_bin.display()
        )));
    }
    let dep_path = r.modules_dir.join("modules.dep");
    let dep = fs::read_to_string(&dep_path)
        .map_err(BuildError::io(format!("reading {}", dep_path.display())))?;
    let spec_err = |message: String| crate::SpecError {
        file: r.spec_path.display().to_string(),
        field: "kernel.modules".into(),
        message,
    };
    let mut wanted = r.spec.kernel.modules.clone();
    if r.spec.rootfs.verity {
        wanted.push("dm-verity".into());
    }
    let mut module_params = std::collections::BTreeMap::new();
    if let Some(secs) = r.spec.boot.watchdog_secs {
        wanted.push("softdog".into());
        module_params.insert("softdog".to_string(), format!("soft_margin={secs}"));
    }
    let deps = ModulesDep::parse(&dep).map_err(|e| spec_err(e.to_string()))?;
    let closure = deps.closure(&wanted).map_err(|e| spec_err(e.to_string()))?;
    // Loaded only by a network boot (kiln pxe): the loop device for the root image in RAM.
    // Kernels with loop built in have no module to add.
    let pxe_only: Vec<String> = deps
        .closure(&["loop".to_string()])
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !closure.contains(m))
        .collect();
    let in_initrd = |m: &str| format!("/lib/modules/{}/{m}", r.kernel_version);
    let config = InitConfig {
        name: r.spec.name.clone(),
        version: r.spec.version.clone(),
        modules: closure.iter().map(|m| in_initrd(m)).collect(),
        root_fstype: format.fstype().to_string(),
        persist_label: "persist".into(),
        layout: r.spec.persist.clone(),
        init: "/sbin/init".into(),
        root_wait_secs: 30,
        module_params,
        watchdog_secs: r.spec.boot.watchdog_secs,
        esp_fsck: Some(ESP_FSCK.into()),
        grow_persist: r.spec.partitions.grow_persist,
        pxe_modules: pxe_only.iter().map(|m| in_initrd(m)).collect(),
        root_slot_bytes: Some(r.spec.partitions.root),
        verity: r.spec.rootfs.verity,
    };
    let mut c = Contents::new(init, &config).map_err(BuildError::io("building the initramfs"))?;
    for m in closure.iter().chain(&pxe_only) {
        let p = r.modules_dir.join(m);
        let data =
            fs::read(&p).map_err(BuildError::io(format!("reading module {}", p.display())))?;
        c.add_file(&in_initrd(m), data, 0o644);
    }
    let fsck = crate::host_tool::find(&["/usr/sbin/fsck.fat", "/sbin/fsck.fat"], "dosfstools")?;
    for (path, data, mode) in crate::host_tool::with_libs(&fsck, ESP_FSCK)? {
        c.add_file(&path, data, mode);
    }
    let mut out = Vec::new();
    c.write(&mut out, opts.epoch.min(u64::from(u32::MAX)) as u32)
        .map_err(BuildError::io("writing the initramfs"))?;
    Ok(out)
}

/// Whether an ESP of `size` bytes holds `need` bytes of boot files for each of two slots, plus
/// FAT overhead (checked on the early files before any is written, then on all of them).
fn esp_room(r: &Resolved, size: u64, need: u64) -> Result<(), BuildError> {
    if need * 2 + (8 << 20) > size {
        return Err(crate::SpecError {
            file: r.spec_path.display().to_string(),
            field: "partitions.esp".into(),
            message: format!(
                "{size} bytes is too small for two slots of {need} bytes of boot files"
            ),
        }
        .into());
    }
    Ok(())
}

/// What Secure Boot adds once the root hash is known: each slot's signed UKI (written to
/// `work` as `uki-a.efi` and `uki-b.efi`) and slot A's signed command line.
struct SecureBootFiles {
    uki_a: Vec<u8>,
    cmdline_a: String,
}

fn secure_boot_files(
    r: &Resolved,
    work: &Path,
    epoch: u64,
    sb: &crate::spec::SecureBootSpec,
    kernel: &[u8],
    initrd: &[u8],
    verity: Option<&RootVerity>,
) -> Result<SecureBootFiles, BuildError> {
    let hash = verity
        .map(|v| v.root_hash.as_str())
        .ok_or_else(|| BuildError::Other("Secure Boot needs the root's verity hash".into()))?;
    let osrel = crate::uki::os_release(&r.spec.name, &r.spec.version);
    let mut cmdline_a = String::new();
    for slot in Slot::ALL {
        let cmdline = kiln_boot::cmdline::uki_cmdline(slot, hash, &r.spec.boot.cmdline);
        let unsigned = work.join(format!("uki-{slot}.unsigned.efi"));
        crate::uki::assemble(
            Path::new(crate::uki::STUB),
            &crate::uki::UkiParts {
                osrel: osrel.as_bytes(),
                cmdline: &cmdline,
                linux: kernel,
                initrd,
            },
            work,
            &unsigned,
            epoch,
        )?;
        let out = work.join(format!("uki-{slot}.efi"));
        crate::secure_boot::sign(&unsigned, &out, &sb.key, &sb.cert, epoch)?;
        fs::remove_file(&unsigned).map_err(BuildError::io("removing the unsigned UKI"))?;
        if slot == Slot::A {
            cmdline_a = cmdline;
        }
    }
    let uki = work.join("uki-a.efi");
    Ok(SecureBootFiles {
        uki_a: fs::read(&uki).map_err(BuildError::io(format!("reading {}", uki.display())))?,
        cmdline_a,
    })
}

/// The factory ESP's files that do not carry the root hash: the loader (systemd-boot, signed
/// under Secure Boot, or the GRUB image), `loader.conf`, and slot A's kernel and initrd
/// (none under Secure Boot: they are inside the UKI).
fn esp_early_files<'a>(
    r: &Resolved,
    work: &Path,
    epoch: u64,
    kernel: &'a [u8],
    initrd: &'a [u8],
) -> Result<Vec<crate::esp::EspFile<'a>>, BuildError> {
    use crate::esp::EspFile;
    let loader_conf = || EspFile {
        path: "loader/loader.conf".into(),
        data: systemd_boot::loader_conf().into_bytes().into(),
    };
    let read = |p: &Path| fs::read(p).map_err(BuildError::io(format!("reading {}", p.display())));
    let mut files = match (&r.loader_efi, &r.secure_boot) {
        (Some(efi), Some(sb)) => {
            let signed = work.join("loader.signed.efi");
            crate::secure_boot::sign(efi, &signed, &sb.key, &sb.cert, epoch)?;
            let data = read(&signed)?;
            fs::remove_file(&signed).map_err(BuildError::io("removing the signed loader copy"))?;
            return Ok(vec![
                EspFile {
                    path: systemd_boot::LOADER_PATH.into(),
                    data: data.into(),
                },
                loader_conf(),
            ]);
        }
        (Some(efi), None) => vec![
            EspFile {
                path: systemd_boot::LOADER_PATH.into(),
                data: read(efi)?.into(),
            },
            loader_conf(),
        ],
        (None, _) => vec![EspFile {
            path: systemd_boot::LOADER_PATH.into(),
            data: crate::grub_image::build(work, epoch)?.into(),
        }],
    };
    files.push(EspFile {
        path: kiln_boot::esp_kernel(Slot::A),
        data: kernel.into(),
    });
    files.push(EspFile {
        path: kiln_boot::esp_initrd(Slot::A),
        data: initrd.into(),
    });
    Ok(files)
}

/// The factory ESP's files that carry slot A's root hash: its entry (or grubenv) with
/// `cmdline`, and under Secure Boot its signed UKI.
fn esp_late_files<'a>(
    r: &Resolved,
    cmdline: &str,
    uki: Option<&'a [u8]>,
) -> Result<Vec<crate::esp::EspFile<'a>>, BuildError> {
    use crate::esp::EspFile;
    let entry = SlotEntry {
        version: r.spec.version.clone(),
        priority: 1,
        health: Health::Good,
    };
    let entry_file = |how: EntryBoot<'_>| EspFile {
        path: format!(
            "loader/entries/{}",
            counting::file_name(Slot::A, entry.health)
        ),
        data: counting::render(Slot::A, &entry, &r.spec.name, how)
            .into_bytes()
            .into(),
    };
    Ok(match (&r.loader_efi, uki) {
        (Some(_), Some(uki)) => vec![
            entry_file(EntryBoot::Uki),
            EspFile {
                path: kiln_boot::esp_uki(Slot::A),
                data: uki.into(),
            },
        ],
        (Some(_), None) => vec![entry_file(EntryBoot::Linux { options: cmdline })],
        (None, _) => {
            let mut state = BootState::default();
            state.entries.insert(Slot::A, entry.clone());
            vec![EspFile {
                path: grub::ENV_PATH.into(),
                data: grub::render_env(&state, |_| cmdline.to_string())
                    .map_err(BuildError::io("rendering grubenv"))?
                    .into(),
            }]
        }
    })
}
