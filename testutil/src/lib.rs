//! Helpers shared by Kiln's integration tests (which run as root, as the whole suite does).

pub mod control_plane;
pub mod kube;
pub mod kubectl;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device attached to a file; detached on drop.
pub struct LoopDev {
    pub dev: String,
}

impl LoopDev {
    /// `losetup -f --show ARGS FILE`: e.g. `["-P"]` (partition scan), or
    /// `["-r", "-o", OFFSET, "--sizelimit", LEN]` for one read-only partition.
    pub fn attach(file: &Path, args: &[&str]) -> LoopDev {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .args(args)
            .arg(file)
            .output()
            .expect("losetup (util-linux) is needed");
        assert!(
            out.status.success(),
            "losetup -f --show {} {}: {}",
            args.join(" "),
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDev {
            dev: String::from_utf8(out.stdout)
                .expect("losetup printed UTF-8")
                .trim()
                .to_string(),
        }
    }

    /// A read-only loop over `len` bytes of `file` from `offset` (one partition of an image).
    pub fn slice(file: &Path, offset: u64, len: u64) -> LoopDev {
        let (o, l) = (offset.to_string(), len.to_string());
        LoopDev::attach(file, &["-r", "-o", &o, "--sizelimit", &l])
    }

    /// The partition nodes the kernel lists for this device, sorted.
    pub fn partitions(&self) -> Vec<PathBuf> {
        let name = self.dev.trim_start_matches("/dev/");
        let mut v: Vec<PathBuf> = std::fs::read_dir(format!("/sys/class/block/{name}"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("partition").is_file())
                    .map(|e| Path::new("/dev").join(e.file_name()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
