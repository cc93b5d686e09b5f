//! Finding the root partition (by PARTUUID, or by its slot's label: [`RootSelector`]) and
//! persist (by label, on the same disk).

use super::{err, InitError};
use crate::cmdline::RootSelector;
use crate::gpt::{parse_entries, parse_header, PartEntry};
use std::fs;
use std::time::{Duration, Instant};

/// Device nodes of the partitions kiln-init needs.
#[derive(Debug)]
pub struct Found {
    /// The whole disk (`/dev/vda`).
    pub disk: String,
    pub root: String,
    pub persist: String,
    /// The EFI system partition of the same disk, when it has one.
    pub esp: Option<String>,
}

/// GPT type GUID of an EFI system partition.
const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

/// Polls the block devices until the root partition shows up, or `timeout`.
pub fn wait_for_root(
    root: &RootSelector,
    persist_label: &str,
    timeout: Duration,
) -> Result<Found, InitError> {
    let start = Instant::now();
    let mut last = String::from("no disks seen");
    loop {
        match scan(root, persist_label) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            return Err(err(
                "waiting for root",
                format!(
                    "no partition with {root} after {} s ({last})",
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whole disks in /sys/block, sorted, without loop and RAM devices.
fn local_disks() -> Result<Vec<String>, String> {
    let mut disks: Vec<String> = fs::read_dir("/sys/block")
        .map_err(|e| format!("/sys/block: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    disks.sort();
    Ok(disks)
}

fn scan(want: &RootSelector, persist_label: &str) -> Result<Option<Found>, String> {
    let mut last_mismatch = None;
    for disk in local_disks()? {
        let Ok(parts) = read_table(&format!("/dev/{disk}")) else {
            continue;
        };
        let Some(root) = parts.iter().find(|p| want.matches(p)) else {
            continue;
        };
        // Found by label: only the slot whose tree matches the signed hash is this machine's.
        if let RootSelector::Label { hash, .. } = want {
            let Some(node) = part_node(&disk, root.number) else {
                return Ok(None); // partition nodes not there yet
            };
            let checked = fs::File::open(&node)
                .map_err(|e| format!("{node}: {e}"))
                .and_then(|f| crate::slot_verity::check_slot(&f, &node, hash));
            if let Err(e) = checked {
                last_mismatch = Some(e);
                continue;
            }
        }
        let persist = parts
            .iter()
            .find(|p| p.name == persist_label)
            .ok_or_else(|| format!("/dev/{disk} has no partition labelled {persist_label}"))?;
        let (Some(r), Some(p)) = (
            part_node(&disk, root.number),
            part_node(&disk, persist.number),
        ) else {
            return Ok(None); // partition nodes not there yet
        };
        let esp = parts
            .iter()
            .find(|p| p.type_guid == ESP_TYPE)
            .and_then(|e| part_node(&disk, e.number));
        return Ok(Some(Found {
            disk: format!("/dev/{disk}"),
            root: r,
            persist: p,
            esp,
        }));
    }
    // A slot of that label whose tree does not match: said when the wait runs out.
    last_mismatch.map_or(Ok(None), Err)
}

/// A partition labelled `label` on any local disk (the persist of an installed Kiln disk, used
/// by a live network boot when present).
pub fn find_labelled(label: &str) -> Option<String> {
    local_disks().ok()?.into_iter().find_map(|disk| {
        let parts = read_table(&format!("/dev/{disk}")).ok()?;
        let p = parts.iter().find(|p| p.name == label)?;
        part_node(&disk, p.number)
    })
}

/// Reads the GPT of a whole disk: the primary, or the backup at the disk's last sector when the
/// primary is damaged (a cut while kiln-init rewrote it to grow persist).
fn read_table(dev: &str) -> Result<Vec<PartEntry>, String> {
    let f = fs::File::open(dev).map_err(|e| format!("{dev}: {e}"))?;
    let primary = read_at(&f, 512, 512).and_then(|lba1| {
        let hdr = parse_header(&lba1).map_err(|e| format!("{dev}: {e}"))?;
        let entries = read_at(&f, hdr.entries_lba * 512, hdr.entries_len())?;
        parse_entries(&hdr, &entries).map_err(|e| format!("{dev}: {e}"))
    });
    primary.or_else(|e| {
        let size = kiln_flash::blkdev::size(&f).map_err(|_| e.clone())?;
        let last = read_at(&f, size - 512, 512)?;
        let hdr = parse_header(&last).map_err(|_| e.clone())?;
        let entries = read_at(&f, hdr.entries_lba * 512, hdr.entries_len())?;
        parse_entries(&hdr, &entries).map_err(|_| e)
    })
}

fn read_at(f: &fs::File, off: u64, len: usize) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).map_err(|e| e.to_string())?;
    Ok(b)
}

/// `/dev/vda2` for partition 2 of `vda` (`/dev/nvme0n1p2` for NVMe), once the node exists.
fn part_node(disk: &str, number: u32) -> Option<String> {
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
