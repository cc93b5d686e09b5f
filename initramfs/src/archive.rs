//! Writing the initramfs: an uncompressed newc cpio archive. Building it costs only copies, the
//! kernel unpacks it natively (no decompressor needed), and identical modules and binaries stay
//! byte-identical between versions (good for chunk reuse in updates). The archive is
//! reproducible (fixed times, owners and inode numbers, sorted entries).

use crate::config::{InitConfig, CONFIG_PATH};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One member of the archive.
#[derive(Debug, Clone)]
enum Member {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// What goes into the initramfs.
pub struct Contents {
    members: BTreeMap<String, Member>,
}

impl Contents {
    /// The skeleton every Kiln initramfs has: mount points, `/dev/console`, `/init`, the config.
    pub fn new(init_binary: Vec<u8>, config: &InitConfig) -> io::Result<Contents> {
        let mut c = Contents {
            members: BTreeMap::new(),
        };
        for d in ["dev", "proc", "sys", "sysroot", "run"] {
            c.add_dir(d);
        }
        c.add(
            "dev/console",
            Member::CharDev {
                major: 5,
                minor: 1,
                mode: 0o600,
            },
        );
        c.add(
            "init",
            Member::File {
                data: init_binary,
                mode: 0o755,
            },
        );
        let json = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
        c.add(
            CONFIG_PATH,
            Member::File {
                data: json,
                mode: 0o644,
            },
        );
        Ok(c)
    }

    fn add_dir(&mut self, path: &str) {
        let mut acc = PathBuf::new();
        for comp in Path::new(path).components() {
            acc.push(comp);
            self.members
                .entry(acc.to_string_lossy().into_owned())
                .or_insert(Member::Dir);
        }
    }

    fn add(&mut self, path: &str, m: Member) {
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            self.add_dir(&parent.to_string_lossy());
        }
        self.members.insert(path.to_string(), m);
    }

    /// Adds a regular file (e.g. a kernel module) at `path` inside the archive.
    pub fn add_file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.add(path.trim_start_matches('/'), Member::File { data, mode });
    }

    /// Writes the archive. `mtime` is stamped on every member.
    pub fn write<W: Write>(&self, out: W, mtime: u32) -> io::Result<()> {
        let mut w = out;
        for (ino, (name, m)) in self.members.iter().enumerate() {
            let b = cpio::newc::Builder::new(name)
                .ino(ino as u32 + 1)
                .uid(0)
                .gid(0)
                .mtime(mtime);
            w = match m {
                Member::Dir => b.mode(0o040755).nlink(2).write(w, 0).finish()?,
                Member::File { data, mode } => {
                    let mut fw = b.mode(0o100000 | mode).nlink(1).write(w, data.len() as u32);
                    fw.write_all(data)?;
                    fw.finish()?
                }
                Member::CharDev { major, minor, mode } => b
                    .mode(0o020000 | mode)
                    .nlink(1)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(w, 0)
                    .finish()?,
            };
        }
        cpio::newc::trailer(w)?.flush()
    }

    /// Member names, sorted (for tests and `kiln inspect`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_overlays::Layout;

    fn config() -> InitConfig {
        InitConfig {
            verity: false,
            name: "t".into(),
            version: "1".into(),
            modules: vec![],
            root_fstype: "erofs".into(),
            persist_label: "persist".into(),
            layout: Layout::default(),
            init: "/sbin/init".into(),
            root_wait_secs: 30,
            module_params: Default::default(),
            watchdog_secs: None,
            esp_fsck: None,
            grow_persist: false,
            pxe_modules: vec![],
            root_slot_bytes: None,
        }
    }

    #[test]
    fn archive_is_reproducible_and_readable() {
        let mut c = Contents::new(b"\x7fELF fake".to_vec(), &config()).unwrap();
        c.add_file(
            "/lib/modules/6.1/kernel/fs/erofs/erofs.ko",
            vec![1, 2, 3],
            0o644,
        );
        let mut a = Vec::new();
        let mut b = Vec::new();
        c.write(&mut a, 1000).unwrap();
        c.write(&mut b, 1000).unwrap();
        assert_eq!(a, b);

        // Read it back with the cpio reader.
        let mut r: Box<dyn io::Read> = Box::new(&a[..]);
        let mut seen = Vec::new();
        loop {
            let entry = cpio::newc::Reader::new(r).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            seen.push((entry.entry().name().to_string(), entry.entry().mode()));
            r = Box::new(entry.finish().unwrap());
        }
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"init"));
        assert!(names.contains(&"etc/kiln/init.json"));
        assert!(names.contains(&"lib/modules/6.1/kernel/fs/erofs"));
        let console = seen.iter().find(|(n, _)| n == "dev/console").unwrap();
        assert_eq!(console.1, 0o020600);
        // parents come before children
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("lib/modules/6.1") < pos("lib/modules/6.1/kernel/fs/erofs/erofs.ko"));
    }
}
