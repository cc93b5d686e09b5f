//! Looking things up in a staged root tree as the booted system will see them: symlinks are
//! followed inside the tree (an absolute link target is relative to the tree's top, `..` never
//! climbs above it), never on the build host. Used to decide what a base provides
//! (`/sbin/init` → systemd, `lib` → `usr/lib`) before generating files for it.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_LINKS: u32 = 40;

/// Why a path could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("more than {MAX_LINKS} symlinks")]
    Loop,
    #[error("{0} is not a directory")]
    NotDir(String),
}

/// Resolves the absolute in-image path `path` inside `root`; returns the tree-relative path it
/// names once every symlink on the way is followed (the last component too when
/// `follow_last`). Missing components are kept as they are, so the result may not exist.
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, ResolveError> {
    let mut todo: Vec<String> = components(path).into_iter().rev().collect();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let is_last = todo.is_empty();
        match fs::symlink_metadata(root.join(&next)) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(ResolveError::Loop);
                }
                let target = fs::read_link(root.join(&next))
                    .map_err(|_| ResolveError::NotDir(next.display().to_string()))?;
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur = PathBuf::new();
                }
                todo.extend(components(&t).into_iter().rev());
            }
            Ok(m) if !is_last && !m.is_dir() => {
                return Err(ResolveError::NotDir(next.display().to_string()))
            }
            _ => cur = next,
        }
    }
    Ok(cur)
}

/// The normal components of `p` (`.` and empty ones dropped, `..` kept).
fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Whether the in-image path exists (as a file, directory or device; links followed).
pub fn exists(root: &Path, path: &str) -> bool {
    resolve(root, path, true).is_ok_and(|p| fs::metadata(root.join(p)).is_ok())
}

/// The first of `paths` that exists in the image.
pub fn first_existing<'a>(root: &Path, paths: &[&'a str]) -> Option<&'a str> {
    paths.iter().copied().find(|p| exists(root, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A usrmerged tree like Debian's: /sbin → usr/sbin, /lib → usr/lib, and the init chain
    /// /sbin/init → /lib/systemd/systemd (absolute).
    fn debian_like() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
        fs::write(r.join("usr/lib/systemd/systemd"), b"elf").unwrap();
        symlink("usr/sbin", r.join("sbin")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("/lib/systemd/systemd", r.join("usr/sbin/init")).unwrap();
        d
    }

    #[test]
    fn follows_relative_and_absolute_links_inside_the_tree() {
        let d = debian_like();
        assert_eq!(
            resolve(d.path(), "/sbin/init", true).unwrap(),
            PathBuf::from("usr/lib/systemd/systemd")
        );
        assert_eq!(
            resolve(d.path(), "/sbin/init", false).unwrap(),
            PathBuf::from("usr/sbin/init")
        );
        assert_eq!(
            resolve(d.path(), "/lib/modules/6.1", true).unwrap(),
            PathBuf::from("usr/lib/modules/6.1")
        );
        assert!(exists(d.path(), "/sbin/init"));
        assert!(!exists(d.path(), "/lib/modules"));
        assert_eq!(
            first_existing(d.path(), &["/bin/sh", "/lib/systemd/systemd"]),
            Some("/lib/systemd/systemd")
        );
    }

    #[test]
    fn never_leaves_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("a")).unwrap();
        // An absolute link to the host's /etc and a relative one climbing out: both stay
        // inside (the tree has no etc, so the result does not exist).
        symlink("/etc", r.join("a/abs")).unwrap();
        symlink("../../../../etc", r.join("a/rel")).unwrap();
        assert_eq!(
            resolve(r, "/a/abs/passwd", true).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            resolve(r, "/a/rel/passwd", true).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert!(!exists(r, "/a/abs/passwd"));
    }

    #[test]
    fn loops_and_files_as_directories_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        symlink("b", r.join("a")).unwrap();
        symlink("a", r.join("b")).unwrap();
        fs::write(r.join("f"), b"").unwrap();
        assert_eq!(resolve(r, "/a", true), Err(ResolveError::Loop));
        assert_eq!(
            resolve(r, "/f/x", true),
            Err(ResolveError::NotDir("f".into()))
        );
        assert!(!exists(r, "/a"));
    }
}
