//! First boot on a disk larger than the image (`kiln flash` onto a bigger disk): persist grows
//! to the end of the disk, once. The A/B slots keep their size.
//!
//! Order, so that a cut at any point leaves a bootable disk and persist's data:
//! 1. the backup GPT (entries, then header) is written at the disk's new end and synced: the
//!    primary still describes the old layout and stays valid;
//! 2. the primary (entries and header at LBA 1–33) is rewritten and synced; a torn primary is
//!    caught by its CRC and the new backup is used instead (by the kernel, the firmware and
//!    [`super::disk`]), and the next boot rebuilds the primary from it;
//! 3. the kernel is told the new partition size (BLKPG, no re-read needed);
//! 4. after mounting, the filesystem grows online (EXT4_IOC_RESIZE_FS, journaled). A cut in the
//!    middle leaves a smaller but consistent filesystem, grown further at the next boot.
//!
//! Growth is best effort: a failure is reported on the console and the boot goes on with
//! persist at its previous size.

use super::say;
use kiln_boot::gpt::{parse_entries, parse_header, plan_grow, primary_from_backup};
use kiln_flash::blkdev;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

fn read_at(f: &File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off)?;
    Ok(b)
}

fn write_synced(f: &File, parts: &[(&[u8], u64)]) -> std::io::Result<()> {
    for (bytes, lba) in parts {
        f.write_all_at(bytes, lba * 512)?;
    }
    f.sync_data()
}

/// Steps 1–3 on the whole disk `disk`, before any of its partitions is mounted.
pub fn grow_table(disk: &str, persist_label: &str) {
    if let Err(e) = try_grow_table(disk, persist_label) {
        say(format!(
            "WARNING: growing persist on {disk}: {e}; keeping its size"
        ));
    }
}

fn try_grow_table(disk: &str, label: &str) -> Result<(), String> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io("opening"))?;
    let size = blkdev::size(&f).map_err(|e| format!("size: {e}"))?;
    let sectors = size / 512;
    let mut lba1 = read_at(&f, 512, 512).map_err(io("reading LBA 1"))?;
    let primary_ok = parse_header(&lba1).is_ok_and(|h| {
        read_at(&f, h.entries_lba * 512, h.entries_len())
            .is_ok_and(|e| parse_entries(&h, &e).is_ok())
    });
    if !primary_ok {
        // A cut while the primary was rewritten: restore it from the backup.
        let backup = read_at(&f, size - 512, 512).map_err(io("reading the backup GPT"))?;
        let hdr = parse_header(&backup).map_err(|e| format!("primary and backup GPT: {e}"))?;
        let entries = read_at(&f, hdr.entries_lba * 512, hdr.entries_len())
            .map_err(io("reading the backup entries"))?;
        let primary = primary_from_backup(&backup).map_err(|e| e.to_string())?;
        write_synced(&f, &[(&entries, 2), (&primary, 1)]).map_err(io("restoring the primary"))?;
        say("restored the primary GPT from the backup");
        lba1 = primary;
    }
    let hdr = parse_header(&lba1).map_err(|e| e.to_string())?;
    let entries =
        read_at(&f, hdr.entries_lba * 512, hdr.entries_len()).map_err(io("reading entries"))?;
    let Some(g) = plan_grow(sectors, &lba1, &entries, label).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    write_synced(
        &f,
        &[
            (&g.entries, g.backup_entries_lba),
            (&g.backup_header, g.backup_header_lba),
        ],
    )
    .map_err(io("writing the backup GPT"))?;
    write_synced(&f, &[(&g.entries, g.entries_lba), (&g.primary_header, 1)])
        .map_err(io("writing the primary GPT"))?;
    let len = (g.new_last_lba - g.first_lba + 1) * 512;
    blkdev::resize_partition(&f, g.number, g.first_lba * 512, len)
        .map_err(|e| format!("telling the kernel (BLKPG): {e}"))?;
    let mib = |lbas: u64| lbas / 2048;
    say(format!(
        "persist partition grown to the end of the disk: {} -> {} MiB",
        mib(g.old_last_lba - g.first_lba + 1),
        mib(g.new_last_lba - g.first_lba + 1)
    ));
    Ok(())
}

/// The filesystem's (blocks, block size), read before it is mounted.
pub fn fs_size(part: &str) -> Option<(u64, u64)> {
    let f = File::open(part).ok()?;
    kiln_boot::image_len::ext4_geometry(&read_at(&f, 1024, 1024).ok()?).ok()
}

/// Step 4: grows the mounted ext4 at `mountpoint` to fill `part`, when it is smaller.
pub fn grow_fs(part: &str, mountpoint: &str, (blocks, block_size): (u64, u64)) {
    let r = (|| -> Result<Option<u64>, String> {
        let size = blkdev::size(File::open(part).map_err(|e| e.to_string())?)
            .map_err(|e| format!("size: {e}"))?;
        let target = size / block_size;
        if target <= blocks {
            return Ok(None);
        }
        let dir = File::open(mountpoint).map_err(|e| format!("{mountpoint}: {e}"))?;
        blkdev::ext4_resize(&dir, target).map_err(|e| format!("EXT4_IOC_RESIZE_FS: {e}"))?;
        Ok(Some(target))
    })();
    let mib = |b: u64| (b * block_size) >> 20;
    match r {
        Ok(Some(target)) => say(format!(
            "persist filesystem grown: {} -> {} MiB",
            mib(blocks),
            mib(target)
        )),
        Ok(None) => {}
        Err(e) => say(format!(
            "WARNING: growing the persist filesystem on {part}: {e}; keeping its size"
        )),
    }
}
