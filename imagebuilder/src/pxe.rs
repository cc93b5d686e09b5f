//! `kiln pxe`: network-boot artifacts from a build directory: `vmlinuz`, `initrd.img`,
//! `root.img` and `boot.ipxe`. The iPXE script boots the kernel with `kiln.pxe=live`: kiln-init
//! configures the NIC with the address iPXE got by DHCP, fetches `root.img` over HTTP, checks
//! it against the sha256 written into the script, and runs it from RAM. With `--install DISK`
//! the script says `kiln.pxe=install` instead, and `disk.raw.zst` is added: kiln-init streams it
//! onto DISK as `kiln flash` would (checked against the raw image's sha256) and reboots.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

/// Files copied from the build directory.
pub const FILES: [&str; 3] = ["vmlinuz", "initrd.img", "root.img"];

#[derive(serde::Deserialize)]
struct BuildInfo {
    name: String,
    version: String,
    cmdline: String,
    root_image_sha256: String,
}

/// The image's own kernel arguments: the slot's command line without the disk-boot words
/// (`root=`, `ro`, `kiln.slot=`, and `kiln.verity=`: a live root is checked by its sha256).
pub fn extra_args(slot_cmdline: &str) -> String {
    kiln_boot::cmdline::image_args(slot_cmdline)
}

/// What the iPXE script boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Run the root image from RAM; `root_sha256` of root.img.
    Live { root_sha256: String },
    /// Write disk.raw.zst onto `disk`; `image_sha256` of the raw disk image.
    Install { disk: String, image_sha256: String },
}

/// The iPXE script. `base` is where the directory is served over HTTP, as the booting machine
/// reaches it. `initrd=` on the kernel line is required by iPXE under UEFI.
pub fn ipxe_script(base: &str, mode: &Mode, extra: &str, title: &str) -> String {
    let base = base.trim_end_matches('/');
    let (what, args) = match mode {
        Mode::Live { root_sha256 } => (
            "live network boot: kiln-init fetches root.img, checks its sha256 and runs it from RAM".to_string(),
            format!("kiln.pxe=live kiln.slot=live kiln.root_url=${{base}}/root.img kiln.root_sha256={root_sha256}"),
        ),
        Mode::Install { disk, image_sha256 } => (
            format!("network install: kiln-init writes disk.raw.zst onto {disk} as kiln flash does, then reboots"),
            format!("kiln.pxe=install kiln.install_disk={disk} kiln.image_url=${{base}}/disk.raw.zst kiln.image_sha256={image_sha256}"),
        ),
    };
    format!(
        "#!ipxe\n\
         # {title}: {what}.\n\
         # ip/netmask/gateway are what iPXE got by DHCP.\n\
         set base {base}\n\
         echo Kiln: booting {title} from ${{base}}\n\
         kernel ${{base}}/vmlinuz initrd=initrd.img {extra} \
         kiln.ip=${{ip}} kiln.netmask=${{netmask}} kiln.gw=${{gateway}} kiln.mac=${{mac}} {args}\n\
         initrd ${{base}}/initrd.img\n\
         boot\n"
    )
}

/// Compresses `raw` into `zst` (zstd, content size recorded) and returns the raw image's sha256.
fn compress_disk(raw: &Path, zst: &Path) -> Result<String> {
    let src = fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let len = src.metadata()?.len();
    let tmp = zst.with_extension("zst.tmp");
    let mut enc = zstd::stream::write::Encoder::new(
        fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        3,
    )?;
    enc.set_pledged_src_size(Some(len))?;
    enc.include_checksum(true)?;
    let (_, sha) = kiln_io::copy_hashed(src, &mut enc)
        .with_context(|| format!("compressing {} into {}", raw.display(), tmp.display()))?;
    enc.finish()?.sync_all()?;
    fs::rename(&tmp, zst).with_context(|| format!("writing {}", zst.display()))?;
    Ok(sha)
}

/// Writes the PXE directory `out` from `build`; with `install`, for installing onto that disk.
pub fn write(build: &Path, out: &Path, base_url: &str, install: Option<&str>) -> Result<()> {
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        bail!("--url {base_url}: expected http://HOST[:PORT]/PATH, as the booting machine reaches the directory");
    }
    let info: BuildInfo = crate::read_build_json(build)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for f in FILES {
        let src = build.join(f);
        if !src.is_file() {
            bail!("{} is missing from the build directory", src.display());
        }
        let dst = out.join(f);
        let tmp = out.join(format!(".{f}.tmp"));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(&src, &tmp).is_err() {
            fs::copy(&src, &tmp)
                .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        }
        fs::rename(&tmp, &dst).with_context(|| format!("writing {}", dst.display()))?;
    }
    let mode = match install {
        None => Mode::Live {
            root_sha256: info.root_image_sha256.clone(),
        },
        Some(disk) => {
            if !disk.starts_with("/dev/") {
                bail!("--install {disk}: expected the whole disk's device path, e.g. /dev/vda");
            }
            Mode::Install {
                disk: disk.to_string(),
                image_sha256: compress_disk(&build.join("disk.raw"), &out.join("disk.raw.zst"))?,
            }
        }
    };
    let script = ipxe_script(
        base_url,
        &mode,
        &extra_args(&info.cmdline),
        &format!("{} {}", info.name, info.version),
    );
    let tmp = out.join(".boot.ipxe.tmp");
    fs::write(&tmp, script).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out.join("boot.ipxe"))
        .with_context(|| format!("writing {}", out.join("boot.ipxe").display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_disk_boot_words() {
        assert_eq!(
            extra_args("root=PARTUUID=abc ro kiln.slot=a console=ttyS0,115200 quiet panic=5"),
            "console=ttyS0,115200 quiet panic=5"
        );
    }

    #[test]
    fn script_passes_network_and_checksum() {
        let live = Mode::Live {
            root_sha256: "ab12".into(),
        };
        let s = ipxe_script("http://10.0.2.2:8080/pxe/", &live, "console=ttyS0", "t 1");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("set base http://10.0.2.2:8080/pxe\n"), "{s}");
        assert!(s.contains("kernel ${base}/vmlinuz initrd=initrd.img console=ttyS0 kiln.ip=${ip}"));
        assert!(s.contains("kiln.ip=${ip} kiln.netmask=${netmask} kiln.gw=${gateway}"));
        assert!(s.contains(
            "kiln.pxe=live kiln.slot=live kiln.root_url=${base}/root.img kiln.root_sha256=ab12\n"
        ));
        assert!(s.contains("initrd ${base}/initrd.img\nboot\n"));
        let inst = Mode::Install {
            disk: "/dev/vda".into(),
            image_sha256: "cd34".into(),
        };
        let s = ipxe_script("http://h", &inst, "", "t 1");
        assert!(s.contains("kiln.pxe=install kiln.install_disk=/dev/vda kiln.image_url=${base}/disk.raw.zst kiln.image_sha256=cd34\n"), "{s}");
    }
}
