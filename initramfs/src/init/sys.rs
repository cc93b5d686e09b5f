//! Thin wrappers over mount, module loading, reboot and switch_root.

use super::{err, say, InitError, SYSROOT};
use nix::mount::{mount, MsFlags};
use std::path::Path;
use std::time::Duration;

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    std::fs::create_dir_all(target)
        .map_err(|e| err("creating mount point", format!("{target}: {e}")))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(|e| err("mounting", format!("{fstype} {src} on {target}: {e}")))
}

/// proc, sysfs and devtmpfs (Debian's kernel does not mount devtmpfs for an initramfs).
pub fn early_mounts() -> Result<(), InitError> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", nodev, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// Loads one module file; a module already loaded (or built in) is fine, and so is one whose
/// device is absent (ENODEV: efivarfs on a BIOS network boot).
pub fn load_module(path: &str, params: &str) -> Result<(), InitError> {
    let f =
        std::fs::File::open(path).map_err(|e| err("loading modules", format!("{path}: {e}")))?;
    let params = std::ffi::CString::new(params).map_err(|e| err("loading modules", e))?;
    match nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(nix::errno::Errno::ENODEV) => {
            say(format!("{path}: no such device here, skipped"));
            Ok(())
        }
        Err(e) => Err(err("loading modules", format!("{path}: {e}"))),
    }
}

/// Arms the watchdog: open, one keepalive, close without the magic 'V', so the countdown goes
/// on after this process has exec'd the root's init.
pub fn arm_watchdog(secs: u32) -> Result<(), InitError> {
    use std::io::Write;
    let start = std::time::Instant::now();
    let mut f = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/watchdog")
        {
            Ok(f) => break f,
            Err(e) if start.elapsed() > Duration::from_secs(2) => {
                return Err(err("arming the watchdog", format!("/dev/watchdog: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    f.write_all(b"1")
        .map_err(|e| err("arming the watchdog", e))?;
    say(format!("watchdog armed: reset unless fed within {secs} s"));
    Ok(())
}

/// The root slot, read-only, at /sysroot.
/// Runs the FAT checker on the ESP in automatic-repair mode. Never fatal: a clean check is
/// silent; a repair or a failure is printed and the boot goes on (the loader already read the
/// ESP, and the updater refuses to write a filesystem it cannot mount read-write).
pub fn check_esp(fsck: &str, esp: &str) {
    match std::process::Command::new(fsck)
        .args(["-a", "-w", esp])
        .output()
    {
        Ok(o) if o.status.code() == Some(0) => {}
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                super::say(format!("ESP check: {line}"));
            }
            let what = if o.status.code() == Some(1) {
                "repaired".to_string()
            } else {
                format!("failed ({})", o.status)
            };
            super::say(format!("ESP {esp} {what}"));
        }
        Err(e) => super::say(format!("ESP check: cannot run {fsck}: {e}")),
    }
}

pub fn mount_root(dev: &str, fstype: &str) -> Result<(), InitError> {
    mount_fs(dev, SYSROOT, fstype, MsFlags::MS_RDONLY, None)
}

/// The persist partition (ext4), read-write.
pub fn mount_persist(dev: &str, target: &str) -> Result<(), InitError> {
    if !Path::new(target).is_dir() {
        return Err(err(
            "mounting persist",
            format!("{target} is missing in the root image"),
        ));
    }
    mount(
        Some(dev),
        target,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| err("mounting persist", format!("ext4 {dev} on {target}: {e}")))
}

pub fn bind(src: &str, target: &str) -> Result<(), InitError> {
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| err("applying layout", format!("bind {src} on {target}: {e}")))
}

pub fn overlay(target: &str, upper: &str, work: &str) -> Result<(), InitError> {
    let data = format!("lowerdir={target},upperdir={upper},workdir={work}");
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| {
        err(
            "applying layout",
            format!("overlay on {target} ({data}): {e}"),
        )
    })
}

pub fn tmpfs(target: &str, mode: &str) -> Result<(), InitError> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode={mode}").as_str()),
    )
    .map_err(|e| err("applying layout", format!("tmpfs on {target}: {e}")))
}

/// Moves /dev, /proc and /sys into the new root, makes it `/`, and execs its init.
pub fn switch_root(init: &str) -> Result<super::Never, InitError> {
    for m in ["/dev", "/proc", "/sys"] {
        let target = format!("{SYSROOT}{m}");
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| err("switching root", format!("moving {m}: {e}")))?;
    }
    nix::unistd::chdir(SYSROOT).map_err(|e| err("switching root", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| err("switching root", format!("moving {SYSROOT} to /: {e}")))?;
    nix::unistd::chroot(".").map_err(|e| err("switching root", e))?;
    nix::unistd::chdir("/").map_err(|e| err("switching root", e))?;
    let prog = std::ffi::CString::new(init).map_err(|e| err("switching root", e))?;
    let e = nix::unistd::execv(&prog, &[&prog]).unwrap_err();
    Err(err("switching root", format!("exec {init}: {e}")))
}

/// After a fatal error: wait so the message can be read, then reboot.
pub fn fatal_reboot(pause: Duration) -> ! {
    std::thread::sleep(pause);
    nix::unistd::sync();
    let e = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    say(format!("reboot failed: {e:?}; halting"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
