//! The local disks as kiln-init and the updater see them, and the one that holds the booted
//! root: whole disks from `/sys/block` (no loop or RAM devices), each disk's GPT (the backup
//! copy when the primary is damaged, as after a cut while kiln-init grew persist), partition
//! nodes from sysfs (so `/dev/nvme0n1p3` and `/dev/vda3` alike, and only once udev-less devtmpfs
//! has made them), and the root chosen by a [`RootSelector`] — by label only where the slot's
//! verity tree matches the signed root hash.

use crate::cmdline::RootSelector;
use crate::gpt::{parse_entries, parse_header, PartEntry, ESP_TYPE};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// A whole disk and its partitions.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The kernel's name for it (`vda`, `nvme0n1`).
    pub name: String,
    pub parts: Vec<PartEntry>,
}

impl Disk {
    /// Reads the partition table of the disk named `name` (`vda`).
    pub fn open(name: &str) -> Result<Disk, String> {
        Ok(Disk {
            name: name.to_string(),
            parts: read_table(&format!("/dev/{name}"))?,
        })
    }

    /// Its device node (`/dev/vda`).
    pub fn dev(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// The partition labelled `label`.
    pub fn part(&self, label: &str) -> Option<&PartEntry> {
        self.parts.iter().find(|p| p.name == label)
    }

    /// The EFI system partition, when the disk has one.
    pub fn esp(&self) -> Option<&PartEntry> {
        self.parts.iter().find(|p| p.type_guid == ESP_TYPE)
    }

    /// The device node of partition `number`, once it exists.
    pub fn node(&self, number: u32) -> Option<String> {
        part_node(&self.name, number)
    }

    /// Finds the disk holding the root `want` names, first in `/sys/block` order. `Ok(None)`:
    /// no disk has it (yet), or its partition node is not there yet. By label, only a slot
    /// whose verity tree matches the hash counts; when a slot of that label exists but none
    /// matches, the last mismatch is the error.
    pub fn find_root(want: &RootSelector) -> Result<Option<(Disk, PartEntry)>, String> {
        let mut last_mismatch = None;
        for name in local_disks()? {
            let Ok(disk) = Disk::open(&name) else {
                continue;
            };
            let Some(root) = disk.parts.iter().find(|p| want.matches(p)).cloned() else {
                continue;
            };
            if let RootSelector::Label { hash, .. } = want {
                let Some(node) = disk.node(root.number) else {
                    return Ok(None);
                };
                let checked = File::open(&node)
                    .map_err(|e| format!("{node}: {e}"))
                    .and_then(|f| crate::slot_verity::check_slot(&f, &node, hash));
                if let Err(e) = checked {
                    last_mismatch = Some(e);
                    continue;
                }
            }
            return Ok(Some((disk, root)));
        }
        last_mismatch.map_or(Ok(None), Err)
    }
}

/// Size in bytes of a partition (`parse_entries` refused any that ends before it starts).
pub fn part_size(p: &PartEntry) -> u64 {
    (p.last_lba.saturating_sub(p.first_lba) + 1) * 512
}

/// Whole disks in /sys/block, sorted, without loop and RAM devices.
pub fn local_disks() -> Result<Vec<String>, String> {
    let mut disks: Vec<String> = fs::read_dir("/sys/block")
        .map_err(|e| format!("/sys/block: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    disks.sort();
    Ok(disks)
}

/// Reads the GPT of a whole disk: the primary, or the backup at the disk's last sector when the
/// primary is damaged.
pub fn read_table(dev: &str) -> Result<Vec<PartEntry>, String> {
    let mut f = File::open(dev).map_err(|e| format!("{dev}: {e}"))?;
    let primary = read_at(&f, 512, 512).and_then(|lba1| {
        let hdr = parse_header(&lba1).map_err(|e| format!("{dev}: {e}"))?;
        let entries = read_at(&f, hdr.entries_lba * 512, hdr.entries_len())?;
        parse_entries(&hdr, &entries).map_err(|e| format!("{dev}: {e}"))
    });
    primary.or_else(|e| {
        // A block device's size is where its end seeks to.
        let size = f.seek(SeekFrom::End(0)).map_err(|_| e.clone())?;
        let last = read_at(&f, size.checked_sub(512).ok_or_else(|| e.clone())?, 512)?;
        let hdr = parse_header(&last).map_err(|_| e.clone())?;
        let entries = read_at(&f, hdr.entries_lba * 512, hdr.entries_len())?;
        parse_entries(&hdr, &entries).map_err(|_| e)
    })
}

fn read_at(f: &File, off: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).map_err(|e| e.to_string())?;
    Ok(b)
}

/// `/dev/vda2` for partition 2 of `vda` (`/dev/nvme0n1p2` for NVMe), once the node exists.
pub fn part_node(disk: &str, number: u32) -> Option<String> {
    let rd = fs::read_dir(format!("/sys/block/{disk}")).ok()?;
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with(disk) {
            continue;
        }
        let num = fs::read_to_string(e.path().join("partition")).ok()?;
        if num.trim() == number.to_string() {
            let node = format!("/dev/{n}");
            return std::path::Path::new(&node).exists().then_some(node);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::VAR_TYPE;

    #[test]
    fn a_damaged_primary_table_is_read_from_the_backup() {
        let (_d, img) = sparse_file("disk", 16 << 20);
        let ok = std::process::Command::new("sgdisk")
            .args(["-n", "1:2048:+4M", "-c", "1:persist", "-t"])
            .arg(format!("1:{VAR_TYPE}"))
            .arg(&img)
            .output()
            .expect("sgdisk (gdisk)");
        assert!(ok.status.success(), "{ok:?}");
        let path = img.to_str().unwrap();
        let parts = read_table(path).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].type_guid.as_str()),
            ("persist", VAR_TYPE)
        );
        assert_eq!(part_size(&parts[0]), 4 << 20);
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0u8; 512], 512).unwrap();
        assert_eq!(read_table(path).unwrap(), parts);
        let end = 16 << 20;
        f.write_all_at(&[0u8; 512], end - 512).unwrap();
        assert!(read_table(path).unwrap_err().contains("no GPT header"));
    }

    /// A sparse file of `len` bytes in a scratch directory.
    fn sparse_file(name: &str, len: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        File::create(&p).unwrap().set_len(len).unwrap();
        (d, p)
    }
}
