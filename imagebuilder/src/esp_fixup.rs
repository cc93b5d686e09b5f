//! Post-formatting repair of two FAT32 details that `fatfs` 0.3 gets wrong, so that the ESP is
//! clean under `fsck.fat -n`:
//! - it writes a long-file-name entry before the `.` and `..` entries of every directory (they
//!   must come first, as plain short entries);
//! - the `..` entry of a top-level directory points at the root's cluster (FAT32 wants 0);
//! - the FSInfo free-cluster count is left "unknown"; it is filled in.
//!
//! Works on the raw volume after `fatfs` has unmounted it.

use std::io::{self, Read, Seek, SeekFrom, Write};

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;
const DELETED: u8 = 0xe5;

struct Geometry {
    bytes_per_sector: u64,
    fs_info_sector: u64,
    clusters: u32,
    fat_offset: u64,
    data_offset: u64,
    cluster_size: u64,
    root_cluster: u32,
}

fn geometry(boot: &[u8]) -> io::Result<Geometry> {
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([boot[o], boot[o + 1]]));
    let u32_at = |o: usize| u32::from_le_bytes([boot[o], boot[o + 1], boot[o + 2], boot[o + 3]]);
    let bps = u16_at(11);
    let spc = u64::from(boot[13]);
    let reserved = u16_at(14);
    let fats = u64::from(boot[16]);
    let fat_size = u64::from(u32_at(36));
    if bps == 0 || spc == 0 || fat_size == 0 {
        return Err(io::Error::other("not a FAT32 volume"));
    }
    let total_sectors = u64::from(u32_at(32));
    let data_sectors = total_sectors.saturating_sub(reserved + fats * fat_size);
    Ok(Geometry {
        bytes_per_sector: bps,
        fs_info_sector: u16_at(48),
        clusters: (data_sectors / spc) as u32,
        fat_offset: reserved * bps,
        data_offset: (reserved + fats * fat_size) * bps,
        cluster_size: bps * spc,
        root_cluster: u32_at(44),
    })
}

fn cluster_of(e: &[u8]) -> u32 {
    u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
        | u32::from(u16::from_le_bytes([e[26], e[27]]))
}

fn set_cluster(e: &mut [u8], c: u32) {
    e[20..22].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(c as u16).to_le_bytes());
}

/// Moves `.`/`..` to the front of a directory's first cluster and fixes `..`; pure.
/// Returns true if the cluster changed.
pub fn fix_dot_entries(cluster: &mut [u8], parent_is_root: bool) -> bool {
    let name = |i: usize, c: &[u8]| c[i * ENTRY..i * ENTRY + 11].to_vec();
    let attr = |i: usize, c: &[u8]| c[i * ENTRY + 11];
    let dot = b".          ".to_vec();
    let dotdot = b"..         ".to_vec();
    let mut changed = false;
    if cluster.len() >= 4 * ENTRY
        && attr(0, cluster) == ATTR_LFN
        && name(1, cluster) == dot
        && attr(2, cluster) == ATTR_LFN
        && name(3, cluster) == dotdot
    {
        let d = cluster[ENTRY..2 * ENTRY].to_vec();
        let dd = cluster[3 * ENTRY..4 * ENTRY].to_vec();
        cluster[..ENTRY].copy_from_slice(&d);
        cluster[ENTRY..2 * ENTRY].copy_from_slice(&dd);
        for i in 2..4 {
            let e = &mut cluster[i * ENTRY..(i + 1) * ENTRY];
            e.fill(0);
            e[0] = DELETED;
        }
        changed = true;
    }
    if parent_is_root && name(1, cluster) == dotdot && cluster_of(&cluster[ENTRY..2 * ENTRY]) != 0 {
        set_cluster(&mut cluster[ENTRY..2 * ENTRY], 0);
        changed = true;
    }
    changed
}

fn read_at<D: Read + Seek>(d: &mut D, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    d.seek(SeekFrom::Start(off))?;
    d.read_exact(&mut b)?;
    Ok(b)
}

fn chain<D: Read + Seek>(d: &mut D, g: &Geometry, first: u32) -> io::Result<Vec<u32>> {
    let mut out = vec![first];
    let mut c = first;
    while out.len() < 65_536 {
        let v = read_at(d, g.fat_offset + u64::from(c) * 4, 4)?;
        c = u32::from_le_bytes([v[0], v[1], v[2], v[3]]) & 0x0fff_ffff;
        if !(2..0x0fff_fff8).contains(&c) {
            break;
        }
        out.push(c);
    }
    Ok(out)
}

/// Repairs every directory of the FAT32 volume in `dev` (positioned at the volume start 0).
pub fn repair<D: Read + Write + Seek>(dev: &mut D) -> io::Result<()> {
    let g = geometry(&read_at(dev, 0, 512)?)?;
    let mut stack = vec![(g.root_cluster, true, false)]; // (cluster, is_root, parent_is_root)
    while let Some((first, is_root, parent_is_root)) = stack.pop() {
        let clusters = chain(dev, &g, first)?;
        for (n, c) in clusters.iter().enumerate() {
            let off = g.data_offset + u64::from(c - 2) * g.cluster_size;
            let mut data = read_at(dev, off, g.cluster_size as usize)?;
            if n == 0 && !is_root && fix_dot_entries(&mut data, parent_is_root) {
                dev.seek(SeekFrom::Start(off))?;
                dev.write_all(&data)?;
            }
            for e in data.chunks_exact(ENTRY) {
                if e[0] == 0 {
                    break;
                }
                if e[0] == DELETED || e[11] == ATTR_LFN || e[11] & ATTR_DIR == 0 || e[0] == b'.' {
                    continue;
                }
                stack.push((cluster_of(e), false, is_root));
            }
        }
    }
    write_fs_info(dev, &g)?;
    dev.flush()
}

/// Counts free clusters in the first FAT and records the count and a next-free hint.
fn write_fs_info<D: Read + Write + Seek>(dev: &mut D, g: &Geometry) -> io::Result<()> {
    let fat = read_at(dev, g.fat_offset, (g.clusters as usize + 2) * 4)?;
    let entry = |c: usize| {
        u32::from_le_bytes([fat[c * 4], fat[c * 4 + 1], fat[c * 4 + 2], fat[c * 4 + 3]])
            & 0x0fff_ffff
    };
    let free: Vec<usize> = (2..g.clusters as usize + 2)
        .filter(|&c| entry(c) == 0)
        .collect();
    let off = g.fs_info_sector * g.bytes_per_sector;
    let mut info = read_at(dev, off, 512)?;
    if info[0..4] != [0x52, 0x52, 0x61, 0x41] || info[484..488] != [0x72, 0x72, 0x41, 0x61] {
        return Err(io::Error::other("FSInfo sector missing"));
    }
    info[488..492].copy_from_slice(&(free.len() as u32).to_le_bytes());
    let next = free.first().map_or(0xffff_ffff, |&c| c as u32);
    info[492..496].copy_from_slice(&next.to_le_bytes());
    dev.seek(SeekFrom::Start(off))?;
    dev.write_all(&info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_dots_first_and_zeroes_root_parent() {
        let mut c = vec![0u8; 4 * ENTRY + ENTRY];
        c[11] = ATTR_LFN;
        c[ENTRY..ENTRY + 11].copy_from_slice(b".          ");
        c[ENTRY + 11] = ATTR_DIR;
        c[2 * ENTRY + 11] = ATTR_LFN;
        c[3 * ENTRY..3 * ENTRY + 11].copy_from_slice(b"..         ");
        c[3 * ENTRY + 11] = ATTR_DIR;
        set_cluster(&mut c[3 * ENTRY..4 * ENTRY], 2);
        assert!(fix_dot_entries(&mut c, true));
        assert_eq!(&c[..11], b".          ");
        assert_eq!(&c[ENTRY..ENTRY + 11], b"..         ");
        assert_eq!(cluster_of(&c[ENTRY..2 * ENTRY]), 0);
        assert_eq!(c[2 * ENTRY], DELETED);
        assert_eq!(c[3 * ENTRY], DELETED);
        assert!(
            !fix_dot_entries(&mut c, true),
            "second pass changes nothing"
        );
    }
}
