//! The GRUB EFI image: `grub-mkstandalone` with the few modules Kiln's grub.cfg needs and that
//! config embedded (see `kiln_boot::grub::grub_cfg`).

use crate::error::BuildError;
use kiln_rootfs::mkfs::run_tool;
use std::path::Path;
use std::process::Command;

const MODULES: &str =
    "part_gpt fat search search_fs_file loadenv linux normal test echo configfile sleep reboot";

/// Builds `BOOTX64.EFI` in `work`; returns its bytes.
pub fn build(work: &Path, epoch: u64) -> Result<Vec<u8>, BuildError> {
    let cfg = work.join("grub.cfg");
    std::fs::write(&cfg, kiln_boot::grub::grub_cfg())
        .map_err(BuildError::io("writing grub.cfg"))?;
    let ts = nix::sys::time::TimeSpec::new(epoch as i64, 0);
    nix::sys::stat::utimensat(
        None,
        &cfg,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| BuildError::Other(format!("setting the time of grub.cfg: {e}")))?;
    let out = work.join("grubx64.efi");
    run_tool(
        Command::new("grub-mkstandalone")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .args(["-O", "x86_64-efi", "--locales=", "--themes=", "--fonts="])
            .arg(format!("--modules={MODULES}"))
            .arg(format!("--install-modules={MODULES}"))
            .arg("-o")
            .arg(&out)
            .arg(format!("boot/grub/grub.cfg={}", cfg.display())),
        "grub-efi-amd64-bin",
    )?;
    std::fs::read(&out).map_err(BuildError::io("reading the GRUB image"))
}
