//! Network boot. Both modes configure the network from the values iPXE passed.
//!
//! Live (`kiln.pxe=live`): the root image is fetched over HTTP into RAM and checked against
//! `kiln.root_sha256`, attached to a loop device and mounted like a slot; persist is the local
//! disk's persist partition when one exists, else a tmpfs. The layout and `switch_root` are the
//! same as for a disk boot.
//!
//! Install (`kiln.pxe=install`): the disk image is streamed from `kiln.image_url` onto
//! `kiln.install_disk` exactly as `kiln flash` writes it (same code: refusals, partition table
//! last, `kiln.image_sha256` checked, read back, wiped on failure), then the machine reboots
//! into it.
//!
//! Both downloads are bounded (`kiln_flash::http1`): lines and heads, a stall of
//! [`STALL`] without a byte, a deadline (`kiln.fetch_timeout=SECS`, default
//! [`DEFAULT_DEADLINE`]), and a size: the install disk's for an install; for a live root the
//! root slot's size (`InitConfig::root_slot_bytes`) and never more than the RAM left (less a
//! reserve for the system it boots). A server that drips, stalls or sends too much fails the
//! boot with the reason on the console, and kiln-init reboots (`init::main`).

use super::{err, loopdev, net, say, sys, InitError};
use crate::config::InitConfig;
use kiln_boot::cmdline::Cmdline;
use kiln_flash::source::Bounds;
use std::time::Duration;

/// Where the fetched root image is kept (in the initramfs, i.e. in RAM).
const ROOT_IMAGE: &str = "/kiln-root.img";
/// Longest wait for the next byte of a download.
const STALL: Duration = Duration::from_secs(30);
/// Deadline of a download when the command line sets none.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// RAM kept free when a live root is fetched into it.
const RAM_RESERVE: u64 = 128 << 20;

fn deadline(cmd: &Cmdline) -> Duration {
    cmd.fetch_timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_DEADLINE)
}

/// `MemAvailable` of /proc/meminfo text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let kib = l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok()?.checked_mul(1024)
    })
}

/// The most a live root may take in RAM: the slot size, and the RAM available less a reserve.
/// Unknown RAM (no /proc/meminfo) leaves the slot size; neither known is an error, not an
/// unbounded fetch.
pub fn live_root_cap(slot: Option<u64>, available: Option<u64>) -> Result<u64, String> {
    let ram = available.map(|a| a.saturating_sub(RAM_RESERVE));
    match (slot, ram) {
        (Some(s), Some(r)) => Ok(s.min(r)),
        (Some(s), None) => Ok(s),
        (None, Some(r)) => Ok(r),
        (None, None) => Err("neither the root slot size nor the available RAM is known".into()),
    }
}

/// Fetches `url` into `dest`, hashing it; returns (bytes, sha256 hex).
fn fetch(url: &str, dest: &str, bounds: &Bounds) -> Result<(u64, String), InitError> {
    let e = |m: String| err("fetching the root image", m);
    let mut src = kiln_flash::source::open(url, bounds).map_err(|x| e(x.to_string()))?;
    let out = std::fs::File::create(dest).map_err(|x| e(format!("{dest}: {x}")))?;
    kiln_io::copy_hashed(&mut src.reader, out).map_err(|x| {
        let _ = std::fs::remove_file(dest);
        match x {
            kiln_io::CopyError::Read(x) => e(format!("{url}: {x}")),
            kiln_io::CopyError::Write(x) => e(format!("{dest}: {x}")),
        }
    })
}

fn network(cmd: &Cmdline, cfg: &InitConfig) -> Result<(), InitError> {
    for m in &cfg.pxe_modules {
        sys::load_module(m, "")?;
    }
    let netcfg = net::parse(
        cmd.ip.as_deref(),
        cmd.netmask.as_deref(),
        cmd.gateway.as_deref(),
        cmd.mac.as_deref(),
    )
    .map_err(|m| err("kernel command line", m))?;
    let ifname = net::configure(&netcfg)?;
    say(format!(
        "network: {ifname} {}/{}{}",
        netcfg.ip,
        netcfg.netmask,
        netcfg
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default()
    ));
    Ok(())
}

fn sha256_arg(v: Option<&str>, key: &str) -> Result<[u8; 32], InitError> {
    let mut out = [0u8; 32];
    v.and_then(|s| hex::decode_to_slice(s, &mut out).ok())
        .ok_or_else(|| {
            err(
                "kernel command line",
                format!("{key}= must be a sha256 (64 hex digits)"),
            )
        })?;
    Ok(out)
}

/// Writes the disk image onto the install disk, then reboots into it.
pub fn install(cmd: &Cmdline, cfg: &InitConfig) -> Result<super::Never, InitError> {
    network(cmd, cfg)?;
    let need = |v: &Option<String>, key: &str| {
        v.clone().ok_or_else(|| {
            err(
                "kernel command line",
                format!("kiln.pxe=install needs {key}="),
            )
        })
    };
    let disk = need(&cmd.install_disk, "kiln.install_disk")?;
    let url = need(&cmd.image_url, "kiln.image_url")?;
    let sha256 = sha256_arg(cmd.image_sha256.as_deref(), "kiln.image_sha256")?;
    let start = std::time::Instant::now();
    while !std::path::Path::new(&disk).exists() {
        if start.elapsed() > std::time::Duration::from_secs(30) {
            return Err(err("installing", format!("{disk} did not appear in 30 s")));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let e = |m: kiln_flash::FlashError| err("installing", m);
    let target = kiln_flash::target::Target::open_device(std::path::Path::new(&disk)).map_err(e)?;
    let bounds = Bounds {
        max_bytes: target.size,
        stall: STALL,
        deadline: deadline(cmd),
    };
    let mut src = kiln_flash::source::open(&url, &bounds).map_err(e)?;
    say(format!("installing {url} onto {disk}"));
    let expected = kiln_flash::write::Expected {
        sha256,
        from: "kiln.image_sha256".into(),
    };
    let r = kiln_flash::write::flash(
        &mut src,
        &target,
        Some(&expected),
        &kiln_flash::progress::reporter(),
    )
    .map_err(e)?;
    drop(target);
    say(format!(
        "installed {:.1} MiB onto {disk} in {} s: sha256 matches kiln.image_sha256, read back equal; rebooting into it",
        r.bytes as f64 / (1 << 20) as f64,
        start.elapsed().as_secs()
    ));
    nix::unistd::sync();
    let e = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT).unwrap_err();
    Err(err("rebooting after the install", e))
}

/// Mounts the live root at SYSROOT and persist; returns the persist mount point.
pub fn live(cmd: &Cmdline, cfg: &InitConfig) -> Result<String, InitError> {
    network(cmd, cfg)?;
    let url = cmd
        .root_url
        .as_deref()
        .ok_or_else(|| err("kernel command line", "kiln.pxe=live needs kiln.root_url="))?;
    let want = cmd
        .root_sha256
        .as_deref()
        .filter(|s| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| {
            err(
                "kernel command line",
                "kiln.pxe=live needs kiln.root_sha256= (64 hex digits)",
            )
        })?;
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_available(&m));
    let cap = live_root_cap(cfg.root_slot_bytes, available)
        .map_err(|m| err("fetching the root image", m))?;
    let bounds = Bounds {
        max_bytes: cap,
        stall: STALL,
        deadline: deadline(cmd),
    };
    let started = std::time::Instant::now();
    let (bytes, got) = fetch(url, ROOT_IMAGE, &bounds)?;
    if got != want {
        let _ = std::fs::remove_file(ROOT_IMAGE);
        return Err(err(
            "verifying the root image",
            format!(
                "{url}: sha256 {got} does not match kiln.root_sha256 {want}; refusing to boot it"
            ),
        ));
    }
    say(format!(
        "root image {url}: {:.1} MiB in {} ms, sha256 verified",
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_millis()
    ));
    let dev = loopdev::attach_ro(ROOT_IMAGE)?;
    sys::mount_root(&dev, &cfg.root_fstype)?;
    let persist = format!("{}{}", super::SYSROOT, kiln_overlays::PERSIST_MOUNT);
    match super::disk::find_labelled(&cfg.persist_label) {
        Some(p) => {
            sys::mount_persist(&p, &persist)?;
            say(format!("persist: {p} (local disk)"));
        }
        None => {
            sys::tmpfs(&persist, "0755")?;
            say("persist: tmpfs (no local persist partition; nothing written survives a reboot)");
        }
    }
    Ok(persist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_root_fits_the_slot_and_the_ram() {
        let info = "MemTotal:        2000000 kB\nMemAvailable:    1000000 kB\n";
        let avail = mem_available(info);
        assert_eq!(avail, Some(1_024_000_000));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        let ram = 1_024_000_000 - RAM_RESERVE;
        assert_eq!(live_root_cap(Some(512 << 20), avail), Ok(512 << 20));
        assert_eq!(live_root_cap(Some(4 << 30), avail), Ok(ram));
        assert_eq!(live_root_cap(None, avail), Ok(ram));
        assert_eq!(live_root_cap(Some(7), None), Ok(7));
        assert!(live_root_cap(None, None).is_err());
    }
}
