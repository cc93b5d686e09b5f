//! `resolve`, one function per spec section: each checks its section and returns what it
//! resolved (paths made absolute against the spec's directory).

use super::{check_name, Ctx, ResolvedFile, ResolvedLoader, MIB, SYSTEMD_BOOT_EFI};
use crate::spec::{Base, Loader, OutputFormat, SecureBootSpec, Spec};
use crate::SpecError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `[kernel]`: the kernel version (named, or the tree's only one), its image and modules.
pub(super) fn kernel(ctx: &Ctx, spec: &Spec) -> Result<(String, PathBuf, PathBuf), SpecError> {
    // Kernel tree.
    let kdir = ctx.existing("kernel.dir", &spec.kernel.dir, true)?;
    let kernel_version = match &spec.kernel.version {
        Some(v) => v.clone(),
        None => {
            let mods = kdir.join("lib/modules");
            let mut vs: Vec<String> = std::fs::read_dir(&mods)
                .map_err(|e| ctx.err("kernel.dir", format!("{}: {e}", mods.display())))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            vs.sort();
            match vs.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(ctx.err("kernel.dir", format!("{} holds no kernel", mods.display())))
                }
                many => {
                    return Err(ctx.err(
                        "kernel.version",
                        format!("several kernels in {}: {many:?}; name one", mods.display()),
                    ))
                }
            }
        }
    };
    let kernel_image = kdir.join(format!("boot/vmlinuz-{kernel_version}"));
    if !kernel_image.is_file() {
        return Err(ctx.err(
            "kernel.dir",
            format!("{} is missing", kernel_image.display()),
        ));
    }
    let modules_dir = kdir.join("lib/modules").join(&kernel_version);
    if !modules_dir.join("modules.dep").is_file() {
        return Err(ctx.err(
            "kernel.dir",
            format!(
                "{}/modules.dep is missing (run `depmod -b {} {kernel_version}`)",
                modules_dir.display(),
                kdir.display()
            ),
        ));
    }
    Ok((kernel_version, kernel_image, modules_dir))
}

/// `[base]` (exactly one of tarball, oci, dir) and `overlays`.
pub(super) fn base(ctx: &Ctx, spec: &Spec) -> Result<(Base, Vec<PathBuf>), SpecError> {
    // Base.
    let b = &spec.base;
    let base = match (&b.tarball, &b.oci, &b.dir) {
        (Some(t), None, None) => Base::Tarball(ctx.existing("base.tarball", t, false)?),
        (None, Some(o), None) => Base::Oci(ctx.existing("base.oci", o, true)?),
        (None, None, Some(d)) => Base::Dir(ctx.existing("base.dir", d, true)?),
        _ => return Err(ctx.err("base", "give exactly one of tarball, oci or dir")),
    };

    let overlays = spec
        .overlays
        .iter()
        .enumerate()
        .map(|(i, o)| ctx.existing(&format!("overlays[{i}]"), o, true))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((base, overlays))
}

/// `[[file]]`: sources exist, destinations absolute, normalised and distinct, octal modes.
pub(super) fn files(ctx: &Ctx, spec: &Spec) -> Result<Vec<ResolvedFile>, SpecError> {
    // Baked files.
    let mut dests = BTreeSet::new();
    let mut files = Vec::new();
    for (i, f) in spec.files.iter().enumerate() {
        let source = ctx.existing(&format!("file[{i}].source"), &f.source, false)?;
        let field = format!("file[{i}].dest");
        let rel = f
            .dest
            .strip_prefix('/')
            .filter(|r| {
                !r.is_empty() && r.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            })
            .ok_or_else(|| {
                ctx.err(
                    &field,
                    format!("{:?} must be an absolute, normalised path", f.dest),
                )
            })?;
        if !dests.insert(rel.to_string()) {
            return Err(ctx.err(&field, format!("duplicate destination {:?}", f.dest)));
        }
        let mode = u32::from_str_radix(f.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                ctx.err(
                    format!("file[{i}].mode"),
                    format!("{:?} is not an octal mode", f.mode),
                )
            })?;
        files.push(ResolvedFile {
            source,
            dest: PathBuf::from(rel),
            mode,
        });
    }
    Ok(files)
}

/// `[[service]]`: distinct names, one-line commands.
pub(super) fn services(ctx: &Ctx, spec: &Spec) -> Result<(), SpecError> {
    // Services.
    let mut names = BTreeSet::new();
    for (i, s) in spec.services.iter().enumerate() {
        check_name(ctx, &format!("service[{i}].name"), &s.name, false)?;
        if !names.insert(s.name.clone()) {
            return Err(ctx.err(
                format!("service[{i}].name"),
                format!("duplicate service {:?}", s.name),
            ));
        }
        if s.command.trim().is_empty() || s.command.contains('\n') {
            return Err(ctx.err(
                format!("service[{i}].command"),
                "must be one non-empty line",
            ));
        }
    }
    Ok(())
}

/// `[boot]`: the loader's EFI binary, Secure Boot's key and certificate, the watchdog and
/// the command line (without the per-slot words).
pub(super) fn boot(
    ctx: &Ctx,
    spec: &Spec,
) -> Result<(ResolvedLoader, Option<SecureBootSpec>), SpecError> {
    let loader = match (spec.boot.loader, &spec.boot.efi) {
        (Loader::Grub, Some(_)) => {
            return Err(ctx.err(
                "boot.efi",
                "is for systemd-boot; GRUB is made with grub-mkstandalone",
            ))
        }
        (Loader::Grub, None) => ResolvedLoader::Grub,
        (Loader::SystemdBoot, Some(p)) => ResolvedLoader::SystemdBoot {
            efi: ctx.existing("boot.efi", p, false)?,
        },
        (Loader::SystemdBoot, None) => ResolvedLoader::SystemdBoot {
            efi: ctx
                .existing("boot.efi", Path::new(SYSTEMD_BOOT_EFI), false)
                .map_err(|e| {
                    ctx.err(
                        "boot.efi",
                        format!("{} (install systemd-boot-efi)", e.message),
                    )
                })?,
        },
    };
    let secure_boot =
        match &spec.boot.secure_boot {
            None => None,
            Some(_) if spec.boot.loader != Loader::SystemdBoot => {
                return Err(ctx.err(
                    "boot.secure_boot",
                    "needs loader = \"systemd-boot\" (signed unified kernel images)",
                ))
            }
            Some(_) if !spec.rootfs.verity => return Err(ctx.err(
                "boot.secure_boot",
                "needs [rootfs] verity = true: the signed command line pins the root by its hash",
            )),
            Some(sb) => Some(SecureBootSpec {
                key: ctx.existing("boot.secure_boot.key", &sb.key, false)?,
                cert: ctx.existing("boot.secure_boot.cert", &sb.cert, false)?,
            }),
        };
    if let Some(w) = spec.boot.watchdog_secs {
        if u64::from(w) < spec.update.health_timeout_secs + 20 {
            return Err(ctx.err(
                "boot.watchdog_secs",
                format!(
                    "{w} must exceed update.health_timeout_secs ({}) by at least 20",
                    spec.update.health_timeout_secs
                ),
            ));
        }
    }
    if spec.boot.cmdline.contains('\n') {
        return Err(ctx.err("boot.cmdline", "must be one line"));
    }
    // The per-slot words are the builder's and the updater's to write.
    if let Some(w) = spec.boot.cmdline.split_whitespace().find(|w| {
        w.starts_with("root=")
            || w.starts_with("kiln.slot=")
            || w.starts_with(kiln_boot::cmdline::VERITY_ARG)
    }) {
        return Err(ctx.err(
            "boot.cmdline",
            format!("{w:?} is set per slot by kiln; leave it out"),
        ));
    }
    Ok((loader, secure_boot))
}

/// `[partitions]` sizes and `[output]` formats.
pub(super) fn partitions(ctx: &Ctx, spec: &Spec) -> Result<(), SpecError> {
    // Partitions.
    let p = &spec.partitions;
    if p.esp < 64 * MIB {
        return Err(ctx.err(
            "partitions.esp",
            "must be at least 64M (two kernels and initrds, FAT32)",
        ));
    }
    if p.persist < 64 * MIB {
        return Err(ctx.err("partitions.persist", "must be at least 64M"));
    }
    if p.root < 16 * MIB {
        return Err(ctx.err("partitions.root", "must be at least 16M"));
    }
    if let Some(disk) = p.disk {
        let need = crate::layout::DiskLayout::required_size(p);
        if need > disk {
            return Err(ctx.err(
                "partitions.disk",
                format!("partitions do not fit: esp + 2 × root + persist + GPT need {need} bytes, disk is {disk}"),
            ));
        }
    }
    if !spec.output.formats.contains(&OutputFormat::Raw) {
        return Err(ctx.err(
            "output.formats",
            "must include \"raw\" (disk.raw is always written)",
        ));
    }
    Ok(())
}

/// `[update]`: the trusted keys, read and parsed, and a threshold they can meet.
pub(super) fn update_keys(ctx: &Ctx, spec: &Spec) -> Result<Vec<(String, String)>, SpecError> {
    let mut update_keys = Vec::new();
    for (i, k) in spec.update.keys.iter().enumerate() {
        let field = format!("update.keys[{i}]");
        let path = ctx.existing(&field, k, false)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ctx.err(&field, format!("{}: {e}", path.display())))?;
        let key = kiln_updater::bundle::keys::PublicKey::from_file(&text)
            .map_err(|e| ctx.err(&field, format!("{}: {e}", path.display())))?;
        update_keys.push((key.key_id(), key.to_file()));
    }
    if spec.update.threshold == 0
        || (!update_keys.is_empty() && spec.update.threshold > update_keys.len())
    {
        return Err(ctx.err(
            "update.threshold",
            format!(
                "must be between 1 and the number of keys ({})",
                update_keys.len()
            ),
        ));
    }
    Ok(update_keys)
}

/// `[agent]`: an absolute kubeconfig path, update keys to upgrade with, and its binary's path
/// and service name left to it.
pub(super) fn agent(
    ctx: &Ctx,
    spec: &Spec,
    update_keys: &[(String, String)],
) -> Result<(), SpecError> {
    if let Some(a) = &spec.agent {
        if !a.kubeconfig.starts_with('/') || a.kubeconfig.contains(char::is_whitespace) {
            return Err(ctx.err(
                "agent.kubeconfig",
                format!(
                    "{:?}: must be an absolute path on the device, without spaces",
                    a.kubeconfig
                ),
            ));
        }
        if let Some(n) = &a.node {
            check_name(ctx, "agent.node", n, true)?;
        }
        if update_keys.is_empty() {
            return Err(ctx.err(
                "agent",
                "the node agent upgrades through kiln-updater: set update.keys",
            ));
        }
        let at = kiln_boot::contract::AGENT;
        if let Some(i) = spec.files.iter().position(|f| f.dest == at) {
            return Err(ctx.err(
                format!("file[{i}].dest"),
                format!("{at} is where [agent] bakes kiln-agent"),
            ));
        }
        if spec
            .services
            .iter()
            .any(|s| s.name == crate::services::AGENT_SERVICE)
        {
            return Err(ctx.err(
                "service",
                format!(
                    "the service name {:?} is taken by [agent]",
                    crate::services::AGENT_SERVICE
                ),
            ));
        }
    }
    Ok(())
}
