//! Applying the persist layout planned by `kiln-overlays`.

use super::{err, say, sys, InitError, SYSROOT};
use kiln_overlays::{plan, Layout, MountOp, LAYOUT_MARKER};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates the layout on first boot (marker missing), then mounts it under /sysroot.
pub fn apply(layout: &Layout, persist: &str) -> Result<(), InitError> {
    let marker = Path::new(persist).join(LAYOUT_MARKER);
    let first_boot = !marker.exists();
    if first_boot {
        say("first boot: creating the persist layout");
    }
    for op in plan(layout, first_boot) {
        match op {
            MountOp::PersistDir { path } => {
                let p = Path::new(persist).join(&path);
                fs::create_dir_all(&p)
                    .map_err(|e| err("creating persist layout", format!("{}: {e}", p.display())))?;
            }
            MountOp::Seed { from, to } => {
                let src = format!("{SYSROOT}{from}");
                copy_tree(Path::new(&src), &Path::new(persist).join(&to))
                    .map_err(|e| err("seeding persist", format!("{src}: {e}")))?;
            }
            MountOp::Overlay {
                target,
                upper,
                work,
            } => sys::overlay(
                &format!("{SYSROOT}{target}"),
                &format!("{SYSROOT}{upper}"),
                &format!("{SYSROOT}{work}"),
            )?,
            MountOp::Bind { source, target } => {
                sys::bind(&format!("{SYSROOT}{source}"), &format!("{SYSROOT}{target}"))?
            }
            MountOp::Tmpfs { target } => {
                let mode = if target == "/tmp" { "1777" } else { "0755" };
                sys::tmpfs(&format!("{SYSROOT}{target}"), mode)?
            }
        }
    }
    if first_boot {
        let f = fs::File::create(&marker).map_err(|e| err("creating persist layout", e))?;
        f.sync_all()
            .map_err(|e| err("creating persist layout", e))?;
        nix::unistd::sync();
    }
    Ok(())
}

/// Copies a directory tree, keeping modes, owners and symlinks (seeding bind sources).
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let from = e.path();
        let to = dst.join(e.file_name());
        let m = fs::symlink_metadata(&from)?;
        if m.is_dir() {
            copy_tree(&from, &to)?;
        } else if m.file_type().is_symlink() {
            if fs::symlink_metadata(&to).is_err() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            }
        } else if m.is_file() {
            fs::copy(&from, &to)?;
        } else {
            continue; // sockets, fifos, devices are not seeded
        }
        std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()))?;
        if !m.file_type().is_symlink() {
            fs::set_permissions(&to, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        }
    }
    Ok(())
}
