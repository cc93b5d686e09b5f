//! The disk the system booted from: its GPT partitions, the booted slot, the ESP mount.

use kiln_boot::disk::Disk;
use kiln_boot::gpt::PartEntry;
use kiln_boot::Slot;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The boot disk and what kiln-init was told on the command line.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// e.g. `/dev/vda`.
    pub disk: String,
    pub booted: Slot,
    pub parts: Vec<PartEntry>,
    /// Kernel arguments of the booted entry other than the per-slot words
    /// ([`kiln_boot::cmdline::image_args`]).
    pub extra_cmdline: String,
    /// The booted root's dm-verity hash (`kiln.verity=`), if it has one.
    pub booted_verity: Option<String>,
}

impl BootDisk {
    /// Finds the disk holding the booted root as kiln-init did (`root=PARTUUID=`, or the
    /// slot's label: [`kiln_boot::cmdline::RootSelector`], found by [`Disk::find_root`]).
    pub fn detect() -> io::Result<BootDisk> {
        let cmdline = fs::read_to_string("/proc/cmdline")?;
        let c = kiln_boot::cmdline::parse(&cmdline);
        let want = c.root().ok_or_else(|| {
            io::Error::other(
                "no root=PARTUUID=, nor kiln.slot= with kiln.verity=, on the kernel command line",
            )
        })?;
        let booted: Slot = c
            .slot
            .as_deref()
            .unwrap_or("")
            .parse()
            .map_err(|_| io::Error::other("no kiln.slot= on the kernel command line"))?;
        let extra_cmdline = kiln_boot::cmdline::image_args(&cmdline);
        let booted_verity = kiln_boot::cmdline::verity_arg(&cmdline).map(str::to_string);
        let found = Disk::find_root(&want).map_err(io::Error::other)?;
        let (disk, _) = found.ok_or_else(|| {
            io::Error::other(format!("no disk holds the booted root partition ({want})"))
        })?;
        Ok(BootDisk {
            disk: disk.dev(),
            booted,
            parts: disk.parts,
            extra_cmdline,
            booted_verity,
        })
    }

    pub fn part(&self, label: &str) -> io::Result<&PartEntry> {
        self.parts.iter().find(|p| p.name == label).ok_or_else(|| {
            io::Error::other(format!("{} has no partition labelled {label}", self.disk))
        })
    }

    /// Device node of a partition (`/dev/vda3`, `/dev/nvme0n1p3`).
    pub fn node(&self, p: &PartEntry) -> io::Result<String> {
        kiln_boot::disk::part_node(self.disk.trim_start_matches("/dev/"), p.number).ok_or_else(
            || {
                io::Error::other(format!(
                    "{}: no device node for partition {}",
                    self.disk, p.number
                ))
            },
        )
    }

    /// Size in bytes of a partition.
    pub fn size(p: &PartEntry) -> u64 {
        kiln_boot::disk::part_size(p)
    }

    /// The kernel command line of `slot` whose root has the dm-verity hash `verity`, if any.
    pub fn cmdline(&self, slot: Slot, verity: Option<&str>) -> io::Result<String> {
        let p = self.part(slot.partlabel())?;
        Ok(kiln_boot::cmdline::slot_cmdline(
            &p.part_guid,
            slot,
            verity,
            &self.extra_cmdline,
        ))
    }
}

/// The ESP, mounted for the duration of an operation (unmounted on drop if we mounted it).
pub struct Esp {
    pub path: PathBuf,
    mounted_here: bool,
}

impl Esp {
    pub fn mount(disk: &BootDisk) -> io::Result<Esp> {
        let path = PathBuf::from("/run/kiln/esp");
        if is_mountpoint(&path) {
            return Ok(Esp {
                path,
                mounted_here: false,
            });
        }
        fs::create_dir_all(&path)?;
        let node = disk.node(disk.part("esp")?)?;
        nix::mount::mount(
            Some(node.as_str()),
            &path,
            Some("vfat"),
            nix::mount::MsFlags::MS_NOATIME
                | nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV,
            Some("flush"),
        )
        .map_err(|e| io::Error::other(format!("mounting the ESP {node}: {e}")))?;
        Ok(Esp {
            path,
            mounted_here: true,
        })
    }
}

impl Drop for Esp {
    fn drop(&mut self) {
        if self.mounted_here {
            nix::unistd::sync();
            let _ = nix::mount::umount(&self.path);
        }
    }
}

fn is_mountpoint(p: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    use kiln_boot::cmdline::{image_args as extra_args, slot_cmdline, verity_arg};

    #[test]
    fn loader_added_words_do_not_accumulate_over_updates() {
        let extra = "console=ttyS0,115200 quiet panic=5";
        let h = |i: usize| format!("{i:064x}");
        let mut options = slot_cmdline("aa", Slot::A, Some(&h(0)), extra);
        for i in 0..300 {
            let slot = if i % 2 == 0 { "a" } else { "b" };
            // What the kernel sees: systemd-boot appends initrd= for the entry's initrd,
            // GRUB prepends BOOT_IMAGE=.
            let proc_cmdline = format!(
                "BOOT_IMAGE=/kiln/{slot}/vmlinuz {options} initrd=\\kiln\\{slot}\\initrd.img\n"
            );
            assert_eq!(verity_arg(&proc_cmdline), Some(h(i).as_str()));
            // Each update's entry carries the new root's hash, and only that one.
            let next = if slot == "a" { Slot::B } else { Slot::A };
            options = slot_cmdline("bb", next, Some(&h(i + 1)), &extra_args(&proc_cmdline));
        }
        assert_eq!(
            options,
            format!(
                "root=PARTUUID=bb ro kiln.slot=a kiln.verity={} {extra}",
                h(300)
            )
        );
        assert_eq!(extra_args("root=x ro kiln.slot=b"), "");
    }
}
