//! Finding the root partition (by PARTUUID, or by its slot's label: [`RootSelector`]) and
//! persist (by label, on the same disk).

use super::{err, InitError};
use kiln_boot::cmdline::RootSelector;
use kiln_boot::disk::{local_disks, Disk};
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

fn scan(want: &RootSelector, persist_label: &str) -> Result<Option<Found>, String> {
    let Some((disk, root)) = Disk::find_root(want)? else {
        return Ok(None);
    };
    let persist = disk
        .part(persist_label)
        .ok_or_else(|| format!("{} has no partition labelled {persist_label}", disk.dev()))?;
    let (Some(r), Some(p)) = (disk.node(root.number), disk.node(persist.number)) else {
        return Ok(None); // partition nodes not there yet
    };
    let esp = disk.esp().and_then(|e| disk.node(e.number));
    Ok(Some(Found {
        disk: disk.dev(),
        root: r,
        persist: p,
        esp,
    }))
}

/// A partition labelled `label` on any local disk (the persist of an installed Kiln disk, used
/// by a live network boot when present).
pub fn find_labelled(label: &str) -> Option<String> {
    local_disks().ok()?.into_iter().find_map(|name| {
        let disk = Disk::open(&name).ok()?;
        disk.node(disk.part(label)?.number)
    })
}
