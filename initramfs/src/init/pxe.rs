//! Network boot, live mode (`kiln.pxe=live`): the network is configured from the values iPXE
//! passed, the root image is fetched over HTTP into RAM and checked against
//! `kiln.root_sha256`, attached to a loop device and mounted like a slot; persist is the local
//! disk's persist partition when one exists, else a tmpfs. The layout and `switch_root` are the
//! same as for a disk boot.

use super::{err, loopdev, net, say, sys, InitError};
use crate::cmdline::Cmdline;
use crate::config::InitConfig;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// Where the fetched root image is kept (in the initramfs, i.e. in RAM).
const ROOT_IMAGE: &str = "/kiln-root.img";

/// Fetches `url` into `dest`, hashing it; returns (bytes, sha256 hex).
fn fetch(url: &str, dest: &str) -> Result<(u64, String), InitError> {
    let e = |m: String| err("fetching the root image", m);
    let mut src = kiln_flash::source::open(url).map_err(|x| e(x.to_string()))?;
    let mut out = std::fs::File::create(dest).map_err(|x| e(format!("{dest}: {x}")))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = src
            .reader
            .read(&mut buf)
            .map_err(|x| e(format!("{url}: {x}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|x| e(format!("{dest}: {x}")))?;
        total += n as u64;
    }
    Ok((total, hex::encode(h.finalize())))
}

/// Mounts the live root at SYSROOT and persist; returns the persist mount point.
pub fn live(cmd: &Cmdline, cfg: &InitConfig) -> Result<String, InitError> {
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
    let started = std::time::Instant::now();
    let (bytes, got) = fetch(url, ROOT_IMAGE)?;
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
