//! The root and persist build threads: the root tree assembled (base, overlays, baked files,
//! containers, modules), made into an erofs or ext4 image with its verity tree and copied into
//! root-a; persist formatted in place.

use super::{BuildOptions, Ctx, RootVerity};
use crate::disk::copy_file_sparse;
use crate::error::BuildError;
use crate::services;
use crate::spec::Base;
use crate::validate::Resolved;
use kiln_boot::contract;
use kiln_rootfs::mkfs::{self, RootImageOptions};
use kiln_rootfs::{dircopy, oci, tarball};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Tree, image, verity tree, copied into root-a; returns the slot content's length (with the
/// tree) and the verity facts.
pub(super) fn root_job(ctx: &Ctx, disk: &File) -> Result<(u64, Option<RootVerity>), BuildError> {
    let (r, t, layout, ids) = (ctx.r, ctx.t, &ctx.layout, &ctx.ids);
    let verity = r.spec.rootfs.verity;
    let staging = staging_dir(ctx.work, layout.root_a.size)?;
    let tree = staging.path().join("root");
    fs::create_dir(&tree).map_err(BuildError::io("creating the staging root"))?;
    t.step("assemble root tree", || assemble_tree(r, ctx.opts, &tree))?;
    let size = t.step("make root image", || {
        mkfs::make_root_image(
            &tree,
            &ctx.root_img,
            &RootImageOptions {
                format: ctx.format,
                uuid: ids.uuid("fs:root").to_string(),
                epoch: ctx.opts.epoch,
                // With verity the filesystem leaves room for its tree (an ext4 root fills what
                // it is given).
                slot_size: if verity {
                    kiln_boot::verity::Geometry::max_data_blocks(layout.root_a.size)
                        * kiln_boot::verity::BLOCK
                } else {
                    layout.root_a.size
                },
            },
        )
    })?;
    drop(staging);
    let verity = if verity {
        let v = t.step("verity tree", || {
            kiln_rootfs::verity::append_tree(
                &ctx.root_img,
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
        copy_file_sparse(&File::open(&ctx.root_img)?, disk, layout.root_a.offset)
    })
    .map_err(BuildError::io("writing root-a"))?;
    Ok(match verity {
        Some((total, v)) => (total, Some(v)),
        None => (size, None),
    })
}

/// Persist formatted in place (mke2fs at its offset), and the kernel put beside the disk.
pub(super) fn persist_job(ctx: &Ctx) -> Result<(), BuildError> {
    let (r, layout) = (ctx.r, &ctx.layout);
    ctx.t.step("format persist", || {
        mkfs::format_ext4_at(
            &ctx.disk_path,
            layout.persist.offset,
            layout.persist.size,
            &ctx.ids.uuid("fs:persist").to_string(),
            "persist",
            ctx.opts.epoch,
        )
    })?;
    // A hard link when the kernel tree is on the same filesystem, else a copy.
    let out = ctx.work.join("vmlinuz");
    if fs::hard_link(&r.kernel_image, &out).is_err() {
        fs::copy(&r.kernel_image, &out).map_err(BuildError::io("writing vmlinuz"))?;
    }
    Ok(())
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
