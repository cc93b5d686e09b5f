//! Checking a parsed spec against the filesystem and resolving its paths (relative to the
//! spec's directory). Every error names the spec file and the field.

use crate::spec::{Base, Loader, OutputFormat, Spec};
use crate::SpecError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
/// Debian's systemd-boot (package systemd-boot-efi).
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// A baked file, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedFile {
    pub source: PathBuf,
    /// Relative path inside the root.
    pub dest: PathBuf,
    pub mode: u32,
}

/// A validated spec with absolute paths.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub spec: Spec,
    pub spec_path: PathBuf,
    pub kernel_image: PathBuf,
    pub kernel_version: String,
    /// `lib/modules/<version>` of the kernel tree.
    pub modules_dir: PathBuf,
    pub base: Base,
    pub overlays: Vec<PathBuf>,
    pub files: Vec<ResolvedFile>,
    /// The systemd-boot binary (None for GRUB, which is made at build time).
    pub loader_efi: Option<PathBuf>,
    /// Secure Boot's db key and certificate (`[boot] secure_boot`), resolved.
    pub secure_boot: Option<crate::spec::SecureBootSpec>,
    /// Trusted update keys: (key id, public key file text).
    pub update_keys: Vec<(String, String)>,
    /// The image input of each `[[container]]`, in order, resolved.
    pub container_images: Vec<PathBuf>,
}

struct Ctx<'a> {
    file: &'a str,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
    fn existing(&self, field: &str, p: &Path, want_dir: bool) -> Result<PathBuf, SpecError> {
        let full = self.path(p);
        match std::fs::metadata(&full) {
            Ok(m) if m.is_dir() == want_dir => Ok(full),
            Ok(_) => Err(self.err(
                field,
                format!(
                    "{} is not a {}",
                    full.display(),
                    if want_dir { "directory" } else { "file" }
                ),
            )),
            Err(e) => Err(self.err(field, format!("{}: {e}", full.display()))),
        }
    }
}

fn check_name(ctx: &Ctx, field: &str, v: &str, allow_dots: bool) -> Result<(), SpecError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c == '-'
                || c == '_'
                || (allow_dots && (c == '.' || c == '+'))
        });
    if ok {
        Ok(())
    } else {
        Err(ctx.err(
            field,
            format!(
                "{v:?} must be 1-64 characters of [A-Za-z0-9-_{}]",
                if allow_dots { ".+" } else { "" }
            ),
        ))
    }
}

/// An absolute path with no empty, `.` or `..` component (and not `/` itself).
fn normalised_abs(p: &str) -> bool {
    p.strip_prefix('/').is_some_and(|r| {
        !r.is_empty() && r.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
    })
}

/// One argument, environment value or path: no control characters (they would break the
/// generated unit lines) and at most 4 KiB.
fn plain_text(ctx: &Ctx, field: &str, v: &str) -> Result<(), SpecError> {
    if v.len() > 4096 || v.chars().any(char::is_control) {
        return Err(ctx.err(
            field,
            format!("{v:?}: control characters or more than 4096 bytes"),
        ));
    }
    Ok(())
}

/// Checks `[[container]]` entries; returns their image paths, resolved.
fn containers(ctx: &Ctx, spec: &Spec) -> Result<Vec<PathBuf>, SpecError> {
    use crate::spec::{ContainerMode, ContainerRestart};
    let mut names = BTreeSet::new();
    let mut images = Vec::new();
    // Where a container may mount from: persist itself and the persisted layout paths.
    let persisted: Vec<&str> = std::iter::once(kiln_overlays::PERSIST_MOUNT)
        .chain(spec.persist.overlay.iter().map(String::as_str))
        .chain(spec.persist.bind.iter().map(String::as_str))
        .collect();
    for (i, c) in spec.containers.iter().enumerate() {
        let f = |k: &str| format!("container[{i}].{k}");
        check_name(ctx, &f("name"), &c.name, false)?;
        if !names.insert(c.name.clone()) {
            return Err(ctx.err(f("name"), format!("duplicate container {:?}", c.name)));
        }
        let image = ctx.path(&c.image);
        if std::fs::symlink_metadata(&image).is_err() {
            return Err(ctx.err(
                f("image"),
                format!("{}: no such file or directory", image.display()),
            ));
        }
        images.push(image);
        for (k, list) in [("command", &c.command), ("args", &c.args)] {
            if let Some(list) = list {
                for (j, a) in list.iter().enumerate() {
                    plain_text(ctx, &format!("{}[{j}]", f(k)), a)?;
                }
            }
        }
        if c.command.as_ref().is_some_and(Vec::is_empty) {
            return Err(ctx.err(f("command"), "must name a program"));
        }
        for (k, v) in &c.env {
            let ok = !k.is_empty()
                && !k.starts_with(|ch: char| ch.is_ascii_digit())
                && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if !ok {
                return Err(ctx.err(format!("{}.{k}", f("env")), "not a valid variable name"));
            }
            plain_text(ctx, &format!("{}.{k}", f("env")), v)?;
        }
        for (j, m) in c.mounts.iter().enumerate() {
            let mf = |k: &str| format!("{}[{j}].{k}", f("mounts"));
            if !normalised_abs(&m.source) || m.source.contains(char::is_whitespace) {
                return Err(ctx.err(
                    mf("source"),
                    format!(
                        "{:?} must be an absolute, normalised path without spaces",
                        m.source
                    ),
                ));
            }
            let on_persist = persisted.iter().any(|p| {
                m.source
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            });
            if !on_persist {
                return Err(ctx.err(
                    mf("source"),
                    format!(
                        "{:?} is not on persist (allowed: under {})",
                        m.source,
                        persisted.join(", ")
                    ),
                ));
            }
            if !normalised_abs(&m.target)
                || m.target.contains(char::is_whitespace)
                || m.target.contains(',')
            {
                return Err(ctx.err(
                    mf("target"),
                    format!(
                        "{:?} must be an absolute, normalised path without spaces or commas",
                        m.target
                    ),
                ));
            }
        }
        if c.mode == ContainerMode::Once && c.restart == ContainerRestart::Always {
            return Err(ctx.err(
                f("restart"),
                "a container run once runs to completion: restart must be \"on-failure\" or \"never\"",
            ));
        }
    }
    Ok(images)
}

/// Parses and resolves the spec file at `spec_path`.
pub fn load(spec_path: &Path) -> Result<Resolved, SpecError> {
    let origin = spec_path.display().to_string();
    let text = std::fs::read_to_string(spec_path).map_err(|e| SpecError {
        file: origin.clone(),
        field: String::new(),
        message: format!("reading the spec: {e}"),
    })?;
    let spec = Spec::parse(&text, &origin)?;
    resolve(spec, spec_path)
}

/// Validates `spec` (read from `spec_path`) and resolves its paths.
pub fn resolve(spec: Spec, spec_path: &Path) -> Result<Resolved, SpecError> {
    let file = spec_path.display().to_string();
    let dir = spec_path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let ctx = Ctx { file: &file, dir };

    check_name(&ctx, "name", &spec.name, false)?;
    for (field, v) in [("version", &spec.version), ("compatible", &spec.compatible)] {
        kiln_boot::contract::check_label(v).map_err(|e| ctx.err(field, e.to_string()))?;
    }

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

    // Services.
    let mut names = BTreeSet::new();
    for (i, s) in spec.services.iter().enumerate() {
        check_name(&ctx, &format!("service[{i}].name"), &s.name, false)?;
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

    spec.persist
        .validate()
        .map_err(|e| ctx.err("persist", e.to_string()))?;
    let container_images = containers(&ctx, &spec)?;

    // Boot.
    let loader_efi = match (spec.boot.loader, &spec.boot.efi) {
        (Loader::Grub, Some(_)) => {
            return Err(ctx.err(
                "boot.efi",
                "is for systemd-boot; GRUB is made with grub-mkstandalone",
            ))
        }
        (Loader::Grub, None) => None,
        (Loader::SystemdBoot, Some(p)) => Some(ctx.existing("boot.efi", p, false)?),
        (Loader::SystemdBoot, None) => Some(
            ctx.existing("boot.efi", Path::new(SYSTEMD_BOOT_EFI), false)
                .map_err(|e| {
                    ctx.err(
                        "boot.efi",
                        format!("{} (install systemd-boot-efi)", e.message),
                    )
                })?,
        ),
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
            Some(sb) => Some(crate::spec::SecureBootSpec {
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
            check_name(&ctx, "agent.node", n, true)?;
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

    Ok(Resolved {
        update_keys,
        container_images,
        spec_path: spec_path.to_path_buf(),
        kernel_image,
        kernel_version,
        modules_dir,
        base,
        overlays,
        files,
        loader_efi,
        secure_boot,
        spec,
    })
}
