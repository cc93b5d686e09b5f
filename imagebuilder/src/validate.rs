//! Checking a parsed spec against the filesystem and resolving its paths (relative to the
//! spec's directory). Every error names the spec file and the field.

use crate::spec::{Base, Spec};
use crate::SpecError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

mod sections;

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

/// The image's boot loader, resolved.
#[derive(Debug, Clone)]
pub enum ResolvedLoader {
    /// The systemd-boot binary to put on the ESP.
    SystemdBoot { efi: PathBuf },
    /// GRUB, made at build time by `grub-mkstandalone`.
    Grub,
}

impl ResolvedLoader {
    pub fn kind(&self) -> kiln_boot::contract::LoaderKind {
        match self {
            ResolvedLoader::SystemdBoot { .. } => kiln_boot::contract::LoaderKind::SystemdBoot,
            ResolvedLoader::Grub => kiln_boot::contract::LoaderKind::Grub,
        }
    }
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
    pub loader: ResolvedLoader,
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

    let (kernel_version, kernel_image, modules_dir) = sections::kernel(&ctx, &spec)?;
    let (base, overlays) = sections::base(&ctx, &spec)?;
    let files = sections::files(&ctx, &spec)?;
    sections::services(&ctx, &spec)?;
    spec.persist
        .validate()
        .map_err(|e| ctx.err("persist", e.to_string()))?;
    let container_images = containers(&ctx, &spec)?;

    let (loader, secure_boot) = sections::boot(&ctx, &spec)?;
    sections::partitions(&ctx, &spec)?;
    let update_keys = sections::update_keys(&ctx, &spec)?;
    sections::agent(&ctx, &spec, &update_keys)?;

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
        loader,
        secure_boot,
        spec,
    })
}
