//! Copying host directories (directory bases, overlay directories) and baked files into the
//! staging root. Host files belong to whoever ran the build, so owners are normalised to root.

use crate::safe_path::{check_parents, Refusal};
use crate::tarball::{remove_any, set_owner_mode};
use crate::RootfsError;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Copies the tree at `src` over `root` (files replace, directories merge).
pub fn copy_tree(src: &Path, root: &Path) -> Result<u64, RootfsError> {
    let mut count = 0;
    copy_dir(src, root, Path::new(""), &mut count)?;
    Ok(count)
}

fn copy_dir(src_root: &Path, root: &Path, rel: &Path, count: &mut u64) -> Result<(), RootfsError> {
    let dir = src_root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(RootfsError::io(format!("reading {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(RootfsError::io(format!("reading {}", dir.display())))?;
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let src = src_root.join(&r);
        let dest = root.join(&r);
        check_parents(root, &r).map_err(|why: Refusal| RootfsError::Escape {
            source_name: src_root.display().to_string(),
            member: r.display().to_string(),
            why: why.why(),
        })?;
        let meta = fs::symlink_metadata(&src)
            .map_err(RootfsError::io(format!("reading {}", src.display())))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let existing = fs::symlink_metadata(&dest).ok();
        if ft.is_dir() {
            if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                remove_any(&dest)?;
                fs::create_dir(&dest)
                    .map_err(RootfsError::io(format!("creating {}", dest.display())))?;
            }
            set_owner_mode(&dest, 0, 0, mode, false)?;
            copy_dir(src_root, root, &r, count)?;
        } else if ft.is_symlink() {
            remove_any(&dest)?;
            let target = fs::read_link(&src)
                .map_err(RootfsError::io(format!("reading {}", src.display())))?;
            std::os::unix::fs::symlink(target, &dest)
                .map_err(RootfsError::io(format!("creating {}", dest.display())))?;
            set_owner_mode(&dest, 0, 0, 0, true)?;
        } else if ft.is_file() {
            install_file(&src, root, &r, mode)?;
        } else {
            return Err(RootfsError::Invalid {
                source_name: src_root.display().to_string(),
                message: format!("{} is not a file, directory or symlink", r.display()),
            });
        }
        *count += 1;
    }
    Ok(())
}

/// Makes room for `rel` inside `root`: no parent may be a symlink (`source_name` is named in
/// the refusal), parents are created, whatever is at `rel` is removed; returns the full path.
fn make_room(root: &Path, rel: &Path, source_name: &str) -> Result<PathBuf, RootfsError> {
    check_parents(root, rel).map_err(|why| RootfsError::Escape {
        source_name: source_name.to_string(),
        member: rel.display().to_string(),
        why: why.why(),
    })?;
    let dest = root.join(rel);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .map_err(RootfsError::io(format!("creating {}", parent.display())))?;
    }
    remove_any(&dest)?;
    Ok(dest)
}

/// Installs one host file at `rel` inside `root` with `mode`, owned by root; parent
/// directories are created (0755).
pub fn install_file(src: &Path, root: &Path, rel: &Path, mode: u32) -> Result<(), RootfsError> {
    let dest = make_room(root, rel, &src.display().to_string())?;
    fs::copy(src, &dest).map_err(RootfsError::io(format!(
        "copying {} to {}",
        src.display(),
        dest.display()
    )))?;
    set_owner_mode(&dest, 0, 0, mode, false)
}

/// Writes generated content at `rel` inside `root` (mode, owned by root).
pub fn write_file(root: &Path, rel: &Path, content: &[u8], mode: u32) -> Result<(), RootfsError> {
    let dest = make_room(root, rel, "generated file")?;
    fs::write(&dest, content).map_err(RootfsError::io(format!("writing {}", dest.display())))?;
    set_owner_mode(&dest, 0, 0, mode, false)
}

/// Creates the symlink `rel` → `target` inside `root` (replacing what is there), owned by root.
pub fn write_symlink(root: &Path, rel: &Path, target: &str) -> Result<(), RootfsError> {
    let dest = make_room(root, rel, "generated link")?;
    std::os::unix::fs::symlink(target, &dest)
        .map_err(RootfsError::io(format!("creating {}", dest.display())))?;
    set_owner_mode(&dest, 0, 0, 0, true)
}

/// Makes sure `rel` is a directory in `root` (for mount points).
pub fn ensure_dir(root: &Path, rel: &Path, mode: u32) -> Result<(), RootfsError> {
    check_parents(root, rel).map_err(|why| RootfsError::Escape {
        source_name: "mount point".into(),
        member: rel.display().to_string(),
        why: why.why(),
    })?;
    let dest = root.join(rel);
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(RootfsError::Invalid {
            source_name: "root tree".into(),
            message: format!(
                "/{} must be a directory (it is a mount point)",
                rel.display()
            ),
        }),
        Err(_) => {
            fs::create_dir_all(&dest)
                .map_err(RootfsError::io(format!("creating {}", dest.display())))?;
            set_owner_mode(&dest, 0, 0, mode, false)
        }
    }
}
