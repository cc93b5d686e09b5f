//! Replacing a file durably: write a temporary file beside it, fsync it, rename it over the
//! file, fsync the directory. After a power cut the path holds the old or the new content.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` durably (the temporary file is `path` + `.tmp`, removed when
/// anything fails).
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_durable_then(path, bytes, || {})
}

/// [`write_durable`], calling `before_rename` once the temporary file is synced and before it
/// is renamed (where the updater's power-cut campaign cuts).
pub fn write_durable_then(
    path: &Path,
    bytes: &[u8],
    before_rename: impl FnOnce(),
) -> io::Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    before_rename();
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// Fsyncs a directory, making the renames and creations in it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory holding `name` with `content`.
    fn with_file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        write_durable(&p, content).unwrap();
        (d, p)
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let (d, p) = with_file("state.json", b"one");
        let mut seen = false;
        write_durable_then(&p, b"two", || {
            // Synced but not yet renamed: the old content is still the file's.
            assert_eq!(fs::read(&p).unwrap(), b"one");
            assert_eq!(fs::read(d.path().join("state.json.tmp")).unwrap(), b"two");
            seen = true;
        })
        .unwrap();
        assert!(seen);
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!d.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let (d, p) = with_file("f", b"old");
        // The rename fails: a directory stands where the file would go.
        let dir_target = d.path().join("sub");
        fs::create_dir_all(dir_target.join("x")).unwrap();
        assert!(write_durable(&dir_target, b"new").is_err());
        assert!(!d.path().join("sub.tmp").exists());
        assert!(write_durable(&d.path().join("missing/f"), b"x").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
    }
}
