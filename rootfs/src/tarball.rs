//! Extracting tar streams (rootfs tarballs and OCI layers) into the staging root.
//!
//! Every entry type is handled: regular files, directories, symlinks, hard links, character and
//! block devices, FIFOs. Owners and modes come from the archive; times are normalised later by
//! the filesystem builder. With `whiteouts` on (OCI layers), `.wh.NAME` removes `NAME` from lower
//! layers and `.wh..wh..opq` hides everything lower layers put in that directory; a whiteout
//! whose target is not a plain name (`.wh.`, `.wh..`, `.wh...`, `.wh..wh.x`) is refused, since
//! removing `parent/..` would remove the parent's parent.
//!
//! Every stream of one root draws its file data from one [`Cap`] (the build uses the root
//! partition's size): a compression bomb stops at the cap with the member named, not when the
//! staging disk is full.

use crate::safe_path::{check_parents, normalise, Refusal};
use crate::RootfsError;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tar::EntryType;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// What a whiteout member asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// `.wh..wh..opq`: hide what lower layers put in this directory.
    Opaque,
    /// `.wh.NAME`: remove `NAME` (a plain name) from lower layers.
    Remove(&'a OsStr),
}

/// Reads a member's file name as a whiteout: `None` if it is not one, an error (why) if its
/// target is not a plain name.
pub fn whiteout(file_name: &OsStr) -> Option<Result<Whiteout<'_>, &'static str>> {
    let b = file_name.as_bytes();
    let target = b.strip_prefix(WHITEOUT_PREFIX)?;
    Some(if b == OPAQUE {
        Ok(Whiteout::Opaque)
    } else if target.is_empty() {
        Err("a whiteout with an empty target")
    } else if target == b"." || target == b".." {
        Err("a whiteout of `.` or `..`")
    } else if target.starts_with(WHITEOUT_PREFIX) {
        Err("a whiteout of a reserved `.wh.` name")
    } else {
        Ok(Whiteout::Remove(OsStr::from_bytes(target)))
    })
}

/// The file data every archive of one root may extract, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    limit: u64,
    used: u64,
}

impl Cap {
    pub fn new(limit: u64) -> Cap {
        Cap { limit, used: 0 }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes extracted so far.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn left(&self) -> u64 {
        self.limit - self.used
    }
}

/// Counts of what was extracted, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub specials: u64,
    pub whiteouts: u64,
}

/// Extracts one tar stream into `root`. `source_name` names the archive in errors; file data
/// is drawn from `cap`.
pub fn extract(
    reader: impl Read,
    root: &Path,
    source_name: &str,
    whiteouts: bool,
    cap: &mut Cap,
) -> Result<ExtractStats, RootfsError> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = ExtractStats::default();
    // Paths written by this stream: an opaque marker hides only what lower layers wrote.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(RootfsError::io(format!("reading {source_name}")))?;
    for entry in entries {
        let mut entry = entry.map_err(RootfsError::io(format!("reading {source_name}")))?;
        let raw = entry
            .path()
            .map_err(RootfsError::io(format!(
                "reading a member name in {source_name}"
            )))?
            .into_owned();
        let escape = |why: Refusal| RootfsError::Escape {
            source_name: source_name.to_string(),
            member: raw.display().to_string(),
            why: why.why(),
        };
        let Some(rel) = normalise(&raw).map_err(escape)? else {
            continue; // the root directory itself
        };
        check_parents(root, &rel).map_err(escape)?;
        let file_name = rel.file_name().unwrap_or_default();
        if let Some(w) = whiteout(file_name).filter(|_| whiteouts) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            match w {
                Ok(Whiteout::Opaque) => clear_lower(root, parent, &written)?,
                Ok(Whiteout::Remove(name)) => remove_any(&root.join(parent).join(name))?,
                Err(why) => {
                    return Err(RootfsError::Whiteout {
                        source_name: source_name.to_string(),
                        member: raw.display().to_string(),
                        why,
                    })
                }
            }
            stats.whiteouts += 1;
            continue;
        }
        let dest = root.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(RootfsError::io(format!("creating {}", parent.display())))?;
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );
        let existing = fs::symlink_metadata(&dest).ok();
        let keep_dir =
            kind == EntryType::Directory && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keep_dir {
            remove_any(&dest)?;
        }
        let ctx = |what: &str| format!("{source_name}: {what} {}", raw.display());
        // A symlink's or hard link's target, which it must have.
        let link_target = |what: &str| {
            header
                .link_name()
                .map_err(RootfsError::io(ctx("reading link target of")))?
                .ok_or_else(|| {
                    invalid(
                        source_name,
                        format!("{what} {} has no target", raw.display()),
                    )
                })
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let over = || RootfsError::ExtractCap {
                    source_name: source_name.to_string(),
                    member: raw.display().to_string(),
                    cap: cap.limit(),
                };
                if entry.size() > cap.left() {
                    return Err(over());
                }
                let mut f = fs::File::create(&dest).map_err(RootfsError::io(ctx("creating")))?;
                // The header's size is checked above; the read is bounded as well, since a
                // sparse member's data can expand past it.
                let n = std::io::copy(&mut (&mut entry).take(cap.left().saturating_add(1)), &mut f)
                    .map_err(RootfsError::io(ctx("writing")))?;
                if n > cap.left() {
                    return Err(over());
                }
                cap.used += n;
                stats.files += 1;
            }
            EntryType::Directory => {
                if !keep_dir {
                    fs::create_dir(&dest).map_err(RootfsError::io(ctx("creating directory")))?;
                }
                stats.dirs += 1;
            }
            EntryType::Symlink => {
                let target = link_target("symlink")?;
                std::os::unix::fs::symlink(&target, &dest)
                    .map_err(RootfsError::io(ctx("creating symlink")))?;
                stats.symlinks += 1;
            }
            EntryType::Link => {
                let target = link_target("hard link")?;
                let target_rel = normalise(&target).map_err(escape)?.ok_or_else(|| {
                    invalid(
                        source_name,
                        format!("hard link {} to the root", raw.display()),
                    )
                })?;
                check_parents(root, &target_rel).map_err(escape)?;
                fs::hard_link(root.join(&target_rel), &dest)
                    .map_err(RootfsError::io(ctx("creating hard link")))?;
                stats.hardlinks += 1;
                written.insert(rel);
                continue; // shares the target's inode: owner and mode are the target's
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = makedev(
                    header.device_major().ok().flatten().unwrap_or(0).into(),
                    header.device_minor().ok().flatten().unwrap_or(0).into(),
                );
                mknod(&dest, sflag, Mode::from_bits_truncate(mode), dev)
                    .map_err(|e| RootfsError::io(ctx("creating device node"))(e.into()))?;
                stats.specials += 1;
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            other => {
                return Err(invalid(
                    source_name,
                    format!("member {} has unsupported type {other:?}", raw.display()),
                ))
            }
        }
        set_owner_mode(&dest, uid, gid, mode, kind == EntryType::Symlink)?;
        written.insert(rel);
    }
    Ok(stats)
}

fn invalid(source_name: &str, message: String) -> RootfsError {
    RootfsError::Invalid {
        source_name: source_name.to_string(),
        message,
    }
}

/// Sets owner (without following symlinks) then mode (chown clears set-id bits).
pub(crate) fn set_owner_mode(
    path: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
    is_symlink: bool,
) -> Result<(), RootfsError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(RootfsError::io(format!(
        "setting owner of {}",
        path.display()
    )))?;
    if !is_symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(RootfsError::io(
            format!("setting mode of {}", path.display()),
        ))?;
    }
    Ok(())
}

/// Removes a file, symlink or whole directory; missing is fine.
pub(crate) fn remove_any(path: &Path) -> Result<(), RootfsError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    }
    .map_err(RootfsError::io(format!("removing {}", path.display())))
}

/// Opaque directory: drop every child that this layer did not write.
fn clear_lower(root: &Path, dir: &Path, written: &HashSet<PathBuf>) -> Result<(), RootfsError> {
    let full = root.join(dir);
    let Ok(rd) = fs::read_dir(&full) else {
        return Ok(());
    };
    for child in rd.flatten() {
        let rel = dir.join(child.file_name());
        if !written.contains(&rel) {
            remove_any(&child.path())?;
        }
    }
    Ok(())
}

/// Extracts a rootfs tarball file, plain or compressed (gzip or zstd, detected by magic).
pub fn extract_file(path: &Path, root: &Path, cap: &mut Cap) -> Result<ExtractStats, RootfsError> {
    let name = path.display().to_string();
    let mut f = fs::File::open(path).map_err(RootfsError::io(format!("opening {name}")))?;
    let mut head = [0u8; 4];
    let n = f
        .read(&mut head)
        .map_err(RootfsError::io(format!("reading {name}")))?;
    drop(f);
    let reader = std::io::BufReader::new(
        fs::File::open(path).map_err(RootfsError::io(format!("opening {name}")))?,
    );
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        extract(
            flate2::read::GzDecoder::new(reader),
            root,
            &name,
            false,
            cap,
        )
    } else if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = zstd::stream::read::Decoder::with_buffer(reader)
            .map_err(RootfsError::io(format!("opening {name}")))?;
        extract(d, root, &name, false, cap)
    } else {
        extract(reader, root, &name, false, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str) -> Option<Result<Whiteout<'_>, &'static str>> {
        whiteout(OsStr::new(name))
    }

    #[test]
    fn whiteout_targets_must_be_plain_names() {
        assert_eq!(w("passwd"), None);
        assert_eq!(w(".whatever"), None);
        assert_eq!(w(".wh..wh..opq"), Some(Ok(Whiteout::Opaque)));
        assert_eq!(
            w(".wh.passwd"),
            Some(Ok(Whiteout::Remove(OsStr::new("passwd"))))
        );
        assert_eq!(
            w(".wh..hidden"),
            Some(Ok(Whiteout::Remove(OsStr::new(".hidden"))))
        );
        for bad in [".wh.", ".wh..", ".wh...", ".wh..wh.plnk", ".wh..wh..opq.x"] {
            assert!(matches!(w(bad), Some(Err(_))), "{bad} accepted");
        }
    }
}
