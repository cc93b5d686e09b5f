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

/// Stops `child` by its PID: SIGTERM, then up to `grace` for it to exit; SIGKILL after that.
/// Its exit status, or None when it had to be killed.
pub fn terminate(
    child: &mut std::process::Child,
    grace: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = std::time::Instant::now();
    while t.elapsed() < grace {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The last line a build script printed on stdout (the path it built), or `$ENV` when set.
pub(crate) fn built_by(env: &str, script: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    let out = Command::new(kube::workspace().join(script))
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    let s = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        s.lines()
            .last()
            .unwrap_or_else(|| panic!("{script} printed no path"))
            .trim(),
    )
}
