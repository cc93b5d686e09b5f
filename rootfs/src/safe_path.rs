//! Keeping archive members inside the staging root.
//!
//! Two rules: a member name is normalised to a relative path with no `..` (anything that would
//! climb out is refused), and no existing parent of the destination may be a symlink (a member
//! like `lib -> /usr/lib` followed by `lib/x` would otherwise write through the link, possibly
//! onto the host). Symlinks themselves are created as they are and never followed.

use std::path::{Component, Path, PathBuf};

/// Why a member name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ParentDir,
    ThroughSymlink,
    Empty,
}

impl Refusal {
    pub fn why(self) -> &'static str {
        match self {
            Refusal::ParentDir => "`..` component",
            Refusal::ThroughSymlink => "a parent directory is a symlink that would be followed",
            Refusal::Empty => "empty name",
        }
    }
}

/// Normalises an archive member name: strips leading `/` and `./`, drops `.` components,
/// refuses `..`. Returns `None` for the root itself (`./`, `/`).
pub fn normalise(name: &Path) -> Result<Option<PathBuf>, Refusal> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::ParentDir),
            Component::Normal(n) => out.push(n),
        }
    }
    if name.as_os_str().is_empty() {
        return Err(Refusal::Empty);
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Checks that no existing ancestor of `rel` inside `root` is a symlink (`rel` itself may be).
pub fn check_parents(root: &Path, rel: &Path) -> Result<(), Refusal> {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(Refusal::ThroughSymlink),
            Ok(_) => {}
            Err(_) => return Ok(()), // missing: created as a real directory later
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses_parent() {
        let n = |s: &str| normalise(Path::new(s));
        assert_eq!(n("./usr/bin/x").unwrap(), Some(PathBuf::from("usr/bin/x")));
        assert_eq!(n("/etc/passwd").unwrap(), Some(PathBuf::from("etc/passwd")));
        assert_eq!(n("./").unwrap(), None);
        assert_eq!(n("a/../../etc"), Err(Refusal::ParentDir));
        assert_eq!(n("../x"), Err(Refusal::ParentDir));
        assert_eq!(n(""), Err(Refusal::Empty));
    }

    #[test]
    fn symlinked_parent_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("lib")).unwrap();
        assert_eq!(
            check_parents(d.path(), Path::new("lib/passwd")),
            Err(Refusal::ThroughSymlink)
        );
        assert_eq!(check_parents(d.path(), Path::new("lib")), Ok(()));
        assert_eq!(check_parents(d.path(), Path::new("usr/lib/x")), Ok(()));
    }
}
