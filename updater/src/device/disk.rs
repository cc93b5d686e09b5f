//! The disk the system booted from: its GPT partitions, the booted slot, the ESP mount.

use kiln_boot::Slot;
use kiln_initramfs::cmdline::RootSelector;
use kiln_initramfs::gpt::{parse_entries, parse_header, PartEntry};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The boot disk and what kiln-init was told on the command line.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// e.g. `/dev/vda`.
    pub disk: String,
    pub booted: Slot,
    pub parts: Vec<PartEntry>,
    /// Kernel arguments of the booted entry other than the per-slot words
    /// ([`kiln_boot::contract::image_args`]).
    pub extra_cmdline: String,
    /// The booted root's dm-verity hash (`kiln.verity=`), if it has one.
    pub booted_verity: Option<String>,
}

fn read_table(dev: &str) -> io::Result<Vec<PartEntry>> {
    let mut f = fs::File::open(dev)?;
    let mut lba1 = vec![0u8; 512];
    f.seek(SeekFrom::Start(512))?;
    f.read_exact(&mut lba1)?;
    let hdr = parse_header(&lba1).map_err(io::Error::other)?;
    let mut entries = vec![0u8; hdr.entries_len()];
    f.seek(SeekFrom::Start(hdr.entries_lba * 512))?;
    f.read_exact(&mut entries)?;
    parse_entries(&hdr, &entries).map_err(io::Error::other)
}

/// Device node of partition `number` of `disk` (`/dev/vda3`, `/dev/nvme0n1p3`).
fn partition_node(disk: &str, number: u32) -> String {
    let base = disk.trim_start_matches("/dev/");
    let sep = if base.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    format!("/dev/{base}{sep}{number}")
}

impl BootDisk {
    /// Finds the disk holding the booted root as kiln-init did (`root=PARTUUID=`, or the
    /// slot's label: [`kiln_initramfs::cmdline::RootSelector`]).
    pub fn detect() -> io::Result<BootDisk> {
        let cmdline = fs::read_to_string("/proc/cmdline")?;
        let c = kiln_initramfs::cmdline::parse(&cmdline);
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
        let extra_cmdline = kiln_boot::contract::image_args(&cmdline);
        let booted_verity = kiln_boot::contract::verity_arg(&cmdline).map(str::to_string);
        let mut disks: Vec<String> = fs::read_dir("/sys/block")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
            .collect();
        disks.sort();
        for d in disks {
            let dev = format!("/dev/{d}");
            if let Ok(parts) = read_table(&dev) {
                let Some(root) = parts.iter().find(|p| want.matches(p)) else {
                    continue;
                };
                // By label, as kiln-init chose: the disk whose slot matches the signed hash.
                if let RootSelector::Label { hash, .. } = &want {
                    let node = partition_node(&dev, root.number);
                    let ok = fs::File::open(&node).is_ok_and(|f| {
                        kiln_initramfs::slot_verity::check_slot(&f, &node, hash).is_ok()
                    });
                    if !ok {
                        continue;
                    }
                }
                {
                    return Ok(BootDisk {
                        disk: dev,
                        booted,
                        parts,
                        extra_cmdline,
                        booted_verity,
                    });
                }
            }
        }
        Err(io::Error::other(format!(
            "no disk holds the booted root partition ({want})"
        )))
    }

    pub fn part(&self, label: &str) -> io::Result<&PartEntry> {
        self.parts.iter().find(|p| p.name == label).ok_or_else(|| {
            io::Error::other(format!("{} has no partition labelled {label}", self.disk))
        })
    }

    /// Device node of a partition (`/dev/vda3`, `/dev/nvme0n1p3`).
    pub fn node(&self, p: &PartEntry) -> String {
        partition_node(&self.disk, p.number)
    }

    /// Size in bytes of a partition (`parse_entries` refused any that ends before it starts).
    pub fn size(p: &PartEntry) -> u64 {
        (p.last_lba.saturating_sub(p.first_lba) + 1) * 512
    }

    /// The kernel command line of `slot` whose root has the dm-verity hash `verity`, if any.
    pub fn cmdline(&self, slot: Slot, verity: Option<&str>) -> io::Result<String> {
        let p = self.part(slot.partlabel())?;
        Ok(kiln_boot::contract::slot_cmdline(
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
        let node = disk.node(disk.part("esp")?);
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

    pub fn entries(&self) -> kiln_boot::systemd_boot::counting::EntriesDir {
        kiln_boot::systemd_boot::counting::EntriesDir(self.path.join("loader/entries"))
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

    use kiln_boot::contract::{image_args as extra_args, slot_cmdline, verity_arg};

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
