//! `/etc/machine-id` for systemd roots: the builder ships it empty (an id in the image would be
//! every device's); on the first boot kiln-init writes a random one through the `/etc` overlay,
//! so it lands on persist and stays the same across reboots and A/B updates (the journal's
//! directory and every other per-machine id derive from it). A root without the file (busybox)
//! is left alone.

use super::say;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;

/// Whether `content` (of an existing machine-id file) needs a new id: empty, systemd's
/// `uninitialized`, or anything that is not 32 lowercase hex digits and a newline.
pub fn needs_new(content: &[u8]) -> bool {
    let t = content.strip_suffix(b"\n").unwrap_or(content);
    !(t.len() == 32 && t.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

/// Formats 16 random bytes as a machine id (a version-4 UUID's bits, as systemd makes them).
pub fn format(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s: String = b.iter().map(|x| format!("{x:02x}")).collect();
    s.push('\n');
    s
}

/// Makes sure `<sysroot>/etc/machine-id` holds an id when the root has that file. Failures are
/// printed, not fatal: systemd then runs with a transient id.
pub fn ensure(sysroot: &str) {
    let path = Path::new(sysroot).join("etc/machine-id");
    let Ok(content) = fs::read(&path) else {
        return;
    };
    if !needs_new(&content) {
        return;
    }
    match write_new(&path) {
        Ok(id) => say(format!("first boot: machine id {}", id.trim())),
        Err(e) => say(format!("could not write {}: {e}", path.display())),
    }
}

fn write_new(path: &Path) -> std::io::Result<String> {
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let id = format(b);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(".machine-id.kiln-tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(id.as_bytes())?;
        f.sync_all()?;
    }
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_uninitialized_ids_are_replaced_valid_ones_kept() {
        assert!(needs_new(b""));
        assert!(needs_new(b"uninitialized\n"));
        assert!(needs_new(b"0123456789ABCDEF0123456789abcdef\n"));
        assert!(needs_new(b"0123456789abcdef0123456789abcde\n"));
        assert!(!needs_new(b"0123456789abcdef0123456789abcdef\n"));
        assert!(!needs_new(b"0123456789abcdef0123456789abcdef"));
        let id = format([0xff; 16]);
        assert_eq!(id, "ffffffffffff4fffbfffffffffffffff\n");
        assert!(!needs_new(id.as_bytes()));
    }

    #[test]
    fn ensure_writes_once_and_leaves_roots_without_the_file() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_str().unwrap();
        ensure(root); // no etc/machine-id: nothing happens
        assert!(!d.path().join("etc/machine-id").exists());
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/machine-id"), b"").unwrap();
        ensure(root);
        let first = fs::read(d.path().join("etc/machine-id")).unwrap();
        assert!(!needs_new(&first));
        ensure(root);
        assert_eq!(fs::read(d.path().join("etc/machine-id")).unwrap(), first);
        assert!(!d.path().join("etc/.machine-id.kiln-tmp").exists());
    }
}
