//! Finding the root partition (by PARTUUID) and persist (by label, on the same disk).

use super::{err, InitError};
use crate::gpt::{parse_entries, parse_header, PartEntry};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

/// Device nodes of the partitions kiln-init needs.
#[derive(Debug)]
pub struct Found {
    pub root: String,
    pub persist: String,
    /// The EFI system partition of the same disk, when it has one.
    pub esp: Option<String>,
}

/// GPT type GUID of an EFI system partition.
const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

/// Polls the block devices until the root partition shows up, or `timeout`.
pub fn wait_for_root(
    partuuid: &str,
    persist_label: &str,
    timeout: Duration,
) -> Result<Found, InitError> {
    let start = Instant::now();
    let mut last = String::from("no disks seen");
    loop {
        match scan(partuuid, persist_label) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            return Err(err(
                "waiting for root",
                format!(
                    "no partition with PARTUUID {partuuid} after {} s ({last})",
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scan(partuuid: &str, persist_label: &str) -> Result<Option<Found>, String> {
    let mut disks: Vec<String> = fs::read_dir("/sys/block")
        .map_err(|e| format!("/sys/block: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    disks.sort();
    for disk in disks {
        let Ok(parts) = read_table(&format!("/dev/{disk}")) else {
            continue;
        };
        let Some(root) = parts.iter().find(|p| p.part_guid == partuuid) else {
            continue;
        };
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
            root: r,
            persist: p,
            esp,
        }));
    }
    Ok(None)
}

/// Reads the GPT of a whole disk.
fn read_table(dev: &str) -> Result<Vec<PartEntry>, String> {
    let mut f = fs::File::open(dev).map_err(|e| format!("{dev}: {e}"))?;
    let mut lba1 = vec![0u8; 512];
    f.seek(SeekFrom::Start(512)).map_err(|e| e.to_string())?;
    f.read_exact(&mut lba1).map_err(|e| e.to_string())?;
    let hdr = parse_header(&lba1).map_err(|e| format!("{dev}: {e}"))?;
    let mut entries = vec![0u8; hdr.entries_len()];
    f.seek(SeekFrom::Start(hdr.entries_lba * 512))
        .map_err(|e| e.to_string())?;
    f.read_exact(&mut entries).map_err(|e| e.to_string())?;
    parse_entries(&hdr, &entries).map_err(|e| format!("{dev}: {e}"))
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
