//! The boot files: the initramfs and the ESP's early files (loader, kernel, initrd) built beside
//! the root, then — once the root hash is known — slot A's command line, the signed UKIs of a
//! Secure Boot image, and the ESP written into the disk.

use super::{BuildOptions, Ctx, RootVerity};
use crate::error::BuildError;
use crate::validate::{Resolved, ResolvedLoader};
use kiln_boot::loader::Loader;

use kiln_boot::state::{BootState, Health, SlotEntry};
use kiln_boot::systemd_boot;
use kiln_boot::Slot;
use kiln_initramfs::config::InitConfig;
use kiln_rootfs::mkfs::RootFormat;
use std::fs;
use std::path::Path;

/// What the early boot job made.
pub(super) struct Early {
    initrd: Vec<u8>,
    kernel: Vec<u8>,
    esp: crate::esp::Prepared,
    bytes: u64,
}

/// The initramfs, then the ESP's files that do not carry the root hash (loader, kernel,
/// initrd), written into the in-memory volume.
pub(super) fn early_job(ctx: &Ctx) -> Result<Early, BuildError> {
    let (r, t) = (ctx.r, ctx.t);
    let initrd = t.step("build initramfs", || {
        build_initramfs(r, ctx.opts, ctx.format)
    })?;
    let kernel = fs::read(&r.kernel_image).map_err(BuildError::io(format!(
        "reading {}",
        r.kernel_image.display()
    )))?;
    let size = ctx.layout.esp.size;
    let (esp, bytes) = t.step("prepare ESP", || {
        let files = esp_early_files(r, ctx.work, ctx.opts.epoch, &kernel, &initrd)?;
        let bytes: u64 = files.iter().map(|f| f.data.len() as u64).sum();
        esp_room(r, size, bytes)?;
        let esp = crate::esp::prepare(size, ctx.ids.u32("esp"), ctx.opts.epoch, &files)
            .map_err(BuildError::io("building the ESP"))?;
        Ok::<_, BuildError>((esp, bytes))
    })?;
    Ok(Early {
        initrd,
        kernel,
        esp,
        bytes,
    })
}

/// Slot A's command line (with its root hash), the signed UKIs of a Secure Boot image (slot
/// A's on the factory ESP, both in the build directory for bundles), the ESP written into the
/// disk and `initrd.img` beside it. Returns the command line and whether the image is signed.
pub(super) fn finish_esp(
    ctx: &Ctx,
    disk: &fs::File,
    early: Early,
    root_verity: Option<&RootVerity>,
) -> Result<(String, bool), BuildError> {
    let (r, t, layout) = (ctx.r, ctx.t, &ctx.layout);
    let line = kiln_boot::cmdline::slot_cmdline(
        layout.root_a.guid,
        Slot::A,
        root_verity.map(|v| v.root_hash.as_str()),
        &r.spec.boot.cmdline,
    );
    let signed = match &r.secure_boot {
        Some(sb) => Some(t.step("sign UKIs", || {
            secure_boot_files(
                r,
                ctx.work,
                ctx.opts.epoch,
                sb,
                &early.kernel,
                &early.initrd,
                root_verity,
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
        early.bytes + esp_files.iter().map(|f| f.data.len() as u64).sum::<u64>(),
    )?;
    t.step("write ESP", || {
        early.esp.finish(disk, layout.esp.offset, &esp_files)
    })
    .map_err(BuildError::io("building the ESP"))?;
    fs::write(ctx.work.join("initrd.img"), &early.initrd)
        .map_err(BuildError::io("writing initrd.img"))?;
    Ok((line, signed.is_some()))
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
    let mut wanted = r.spec.kernel.modules.clone();
    if r.spec.rootfs.verity {
        wanted.push("dm-verity".into());
    }
    let mut module_params = std::collections::BTreeMap::new();
    if let Some(secs) = r.spec.boot.watchdog_secs {
        wanted.push("softdog".into());
        module_params.insert("softdog".to_string(), format!("soft_margin={secs}"));
    }
    let config = InitConfig {
        name: r.spec.name.clone(),
        version: r.spec.version.clone(),
        modules: Vec::new(),
        root_fstype: format.fstype().to_string(),
        persist_label: "persist".into(),
        layout: r.spec.persist.clone(),
        init: "/sbin/init".into(),
        root_wait_secs: 30,
        module_params,
        watchdog_secs: r.spec.boot.watchdog_secs,
        esp_fsck: Some(ESP_FSCK.into()),
        grow_persist: r.spec.partitions.grow_persist,
        pxe_modules: Vec::new(),
        root_slot_bytes: Some(r.spec.partitions.root),
        verity: r.spec.rootfs.verity,
    };
    let fsck = crate::host_tool::find(&["/usr/sbin/fsck.fat", "/sbin/fsck.fat"], "dosfstools")?;
    let extra = crate::host_tool::with_libs(&fsck, ESP_FSCK)?;
    kiln_initramfs::build::build(kiln_initramfs::build::Inputs {
        init,
        config,
        modules_dir: &r.modules_dir,
        kernel_version: &r.kernel_version,
        wanted: &wanted,
        extra,
        epoch: opts.epoch.min(u64::from(u32::MAX)) as u32,
    })
    .map_err(|e| match e {
        kiln_initramfs::build::BuildError::Modules(e) => crate::SpecError {
            file: r.spec_path.display().to_string(),
            field: "kernel.modules".into(),
            message: e.to_string(),
        }
        .into(),
        kiln_initramfs::build::BuildError::Io { what, source } => BuildError::io(what)(source),
    })
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
    let mut files = match (&r.loader, &r.secure_boot) {
        (ResolvedLoader::SystemdBoot { efi }, Some(sb)) => {
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
        (ResolvedLoader::SystemdBoot { efi }, None) => vec![
            EspFile {
                path: systemd_boot::LOADER_PATH.into(),
                data: read(efi)?.into(),
            },
            loader_conf(),
        ],
        (ResolvedLoader::Grub, _) => vec![EspFile {
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
    let mut state = BootState::default();
    state.entries.insert(
        Slot::A,
        SlotEntry {
            version: r.spec.version.clone(),
            priority: 1,
            health: Health::Good,
        },
    );
    let records =
        Loader::render_files(r.loader.kind(), &state, &r.spec.name, uki.is_some(), |_| {
            cmdline.to_string()
        })
        .map_err(BuildError::io("rendering the loader records"))?;
    let mut files: Vec<EspFile<'a>> = records
        .into_iter()
        .map(|(path, data)| EspFile {
            path,
            data: data.into(),
        })
        .collect();
    if let Some(uki) = uki {
        files.push(EspFile {
            path: kiln_boot::esp_uki(Slot::A),
            data: uki.into(),
        });
    }
    Ok(files)
}
