//! `kiln pxe`: network-boot artifacts from a build directory: `vmlinuz`, `initrd.img`,
//! `root.img` and `boot.ipxe`. The iPXE script boots the kernel with `kiln.pxe=live`: kiln-init
//! configures the NIC with the address iPXE got by DHCP, fetches `root.img` over HTTP, checks
//! it against the sha256 written into the script, and runs it from RAM.

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
/// (`root=`, `ro`, `kiln.slot=`).
pub fn extra_args(slot_cmdline: &str) -> String {
    slot_cmdline
        .split_whitespace()
        .filter(|w| !w.starts_with("root=") && *w != "ro" && !w.starts_with("kiln.slot="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The iPXE script. `base` is where the directory is served over HTTP, as the booting machine
/// reaches it. `initrd=` on the kernel line is required by iPXE under UEFI.
pub fn ipxe_script(base: &str, root_sha256: &str, extra: &str, title: &str) -> String {
    let base = base.trim_end_matches('/');
    format!(
        "#!ipxe\n\
         # {title}: live network boot (kiln pxe). kiln-init fetches root.img, checks its sha256\n\
         # and runs it from RAM; ip/netmask/gateway are what iPXE got by DHCP.\n\
         set base {base}\n\
         echo Kiln: booting {title} from ${{base}}\n\
         kernel ${{base}}/vmlinuz initrd=initrd.img {extra} kiln.pxe=live kiln.slot=live \
         kiln.ip=${{ip}} kiln.netmask=${{netmask}} kiln.gw=${{gateway}} kiln.mac=${{mac}} \
         kiln.root_url=${{base}}/root.img kiln.root_sha256={root_sha256}\n\
         initrd ${{base}}/initrd.img\n\
         boot\n"
    )
}

/// Writes the PXE directory `out` (created; must not hold a previous `boot.ipxe`) from `build`.
pub fn write(build: &Path, out: &Path, base_url: &str) -> Result<()> {
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        bail!("--url {base_url}: expected http://HOST[:PORT]/PATH, as the booting machine reaches the directory");
    }
    let info_path = build.join("build.json");
    let info: BuildInfo = serde_json::from_slice(&fs::read(&info_path).with_context(|| {
        format!(
            "reading {} (is this a kiln build directory?)",
            info_path.display()
        )
    })?)
    .with_context(|| format!("parsing {}", info_path.display()))?;
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
    let script = ipxe_script(
        base_url,
        &info.root_image_sha256,
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
        let s = ipxe_script("http://10.0.2.2:8080/pxe/", "ab12", "console=ttyS0", "t 1");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("set base http://10.0.2.2:8080/pxe\n"), "{s}");
        assert!(s.contains("kernel ${base}/vmlinuz initrd=initrd.img console=ttyS0 kiln.pxe=live"));
        assert!(s.contains("kiln.ip=${ip} kiln.netmask=${netmask} kiln.gw=${gateway}"));
        assert!(s.contains("kiln.root_url=${base}/root.img kiln.root_sha256=ab12\n"));
        assert!(s.contains("initrd ${base}/initrd.img\nboot\n"));
    }
}
