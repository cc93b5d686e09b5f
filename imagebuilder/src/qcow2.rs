//! Writing `disk.qcow2` straight from the finished `disk.raw`, without `qemu-img`.
//!
//! The layout is planned first (pure: [`Plan::new`] from the virtual size and the indices of the
//! clusters that hold data), then written ([`write_from_raw`]): header, L1 table, refcount
//! table and blocks, L2 tables, data clusters in guest order. qcow2 version 3, 64 KiB clusters,
//! 16-bit refcounts, no compression, no snapshots — the same format `qemu-img convert -O qcow2`
//! produces, checked by `qemu-img check` and `qemu-img compare` in the tests.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const CLUSTER_BITS: u32 = 16;
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// 8-byte L2 entries per cluster.
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts per refcount block.
const REFS_PER_BLOCK: u64 = CLUSTER / 2;
/// Entry flag: refcount is exactly one (no snapshots share the cluster).
const COPIED: u64 = 1 << 63;

/// Where every structure of the image goes, in clusters of the qcow2 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub virtual_size: u64,
    /// Guest cluster indices holding data, ascending.
    pub data: Vec<u64>,
    pub l1_entries: u64,
    pub l1_cluster: u64,
    pub l1_clusters: u64,
    pub reftable_cluster: u64,
    pub reftable_clusters: u64,
    pub refblock_cluster: u64,
    pub refblocks: u64,
    /// (L1 index, host cluster of its L2 table) for every L2 table that maps data.
    pub l2: Vec<(u64, u64)>,
    /// Host cluster of the first data cluster; data follows in the order of `data`.
    pub data_cluster: u64,
    /// Total clusters of the file.
    pub total: u64,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

impl Plan {
    /// Plans an image of `virtual_size` bytes whose non-zero clusters are `data` (ascending,
    /// deduplicated guest cluster indices).
    pub fn new(virtual_size: u64, data: Vec<u64>) -> Plan {
        let guest_clusters = div_ceil(virtual_size, CLUSTER);
        let l1_entries = div_ceil(guest_clusters, L2_ENTRIES).max(1);
        let l1_clusters = div_ceil(l1_entries * 8, CLUSTER);
        let mut l2_indices: Vec<u64> = data.iter().map(|c| c / L2_ENTRIES).collect();
        l2_indices.dedup();
        // Fixed point: the refcount structures must count themselves.
        let fixed = 1 + l1_clusters + l2_indices.len() as u64 + data.len() as u64;
        let (mut reftable_clusters, mut refblocks) = (1u64, 1u64);
        loop {
            let total = fixed + reftable_clusters + refblocks;
            let need_blocks = div_ceil(total, REFS_PER_BLOCK);
            let need_table = div_ceil(need_blocks * 8, CLUSTER);
            if need_blocks <= refblocks && need_table <= reftable_clusters {
                break;
            }
            refblocks = refblocks.max(need_blocks);
            reftable_clusters = reftable_clusters.max(need_table);
        }
        let l1_cluster = 1;
        let reftable_cluster = l1_cluster + l1_clusters;
        let refblock_cluster = reftable_cluster + reftable_clusters;
        let l2_start = refblock_cluster + refblocks;
        let l2 = l2_indices
            .iter()
            .enumerate()
            .map(|(i, l1)| (*l1, l2_start + i as u64))
            .collect::<Vec<_>>();
        let data_cluster = l2_start + l2.len() as u64;
        let total = data_cluster + data.len() as u64;
        Plan {
            virtual_size,
            data,
            l1_entries,
            l1_cluster,
            l1_clusters,
            reftable_cluster,
            reftable_clusters,
            refblock_cluster,
            refblocks,
            l2,
            data_cluster,
            total,
        }
    }

    /// The image header (version 3) followed by an empty header-extension list.
    pub fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(112);
        h.extend_from_slice(b"QFI\xfb");
        h.extend_from_slice(&3u32.to_be_bytes()); // version
        h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
        h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
        h.extend_from_slice(&self.virtual_size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
        h.extend_from_slice(&(self.l1_entries as u32).to_be_bytes());
        h.extend_from_slice(&(self.l1_cluster * CLUSTER).to_be_bytes());
        h.extend_from_slice(&(self.reftable_cluster * CLUSTER).to_be_bytes());
        h.extend_from_slice(&(self.reftable_clusters as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
        h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
        h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit
        h.extend_from_slice(&104u32.to_be_bytes()); // header length
        h.extend_from_slice(&[0u8; 8]); // end of header extensions
        h
    }

    pub fn l1_table(&self) -> Vec<u8> {
        let mut t = vec![0u8; (self.l1_clusters * CLUSTER) as usize];
        for (idx, host) in &self.l2 {
            let e = (host * CLUSTER) | COPIED;
            let o = (*idx * 8) as usize;
            t[o..o + 8].copy_from_slice(&e.to_be_bytes());
        }
        t
    }

    /// The L2 tables, in the order of `self.l2`, one cluster each.
    pub fn l2_tables(&self) -> Vec<u8> {
        let mut t = vec![0u8; self.l2.len() * CLUSTER as usize];
        let mut table = 0usize;
        for (i, guest) in self.data.iter().enumerate() {
            let l1 = guest / L2_ENTRIES;
            while self.l2[table].0 != l1 {
                table += 1;
            }
            let host = self.data_cluster + i as u64;
            let o = table * CLUSTER as usize + ((guest % L2_ENTRIES) * 8) as usize;
            t[o..o + 8].copy_from_slice(&((host * CLUSTER) | COPIED).to_be_bytes());
        }
        t
    }

    /// The refcount table followed by the refcount blocks: every cluster of the file is used
    /// exactly once.
    pub fn refcounts(&self) -> Vec<u8> {
        let table_len = (self.reftable_clusters * CLUSTER) as usize;
        let mut t = vec![0u8; table_len + (self.refblocks * CLUSTER) as usize];
        for b in 0..self.refblocks {
            let o = (b * 8) as usize;
            let e = (self.refblock_cluster + b) * CLUSTER;
            t[o..o + 8].copy_from_slice(&e.to_be_bytes());
        }
        for c in 0..self.total {
            let o = table_len + (c * 2) as usize;
            t[o..o + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        t
    }
}

/// Guest clusters of `raw` that hold data: a cluster is allocated when any of its blocks is.
/// The builder never writes runs of zeros into the disk (sparse copies skip them), so this
/// matches the clusters that hold non-zero bytes, without reading them.
fn data_clusters(raw: &File) -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = Vec::new();
    for (start, end) in crate::disk::data_extents(raw)? {
        let (first, last) = (start / CLUSTER, (end - 1) / CLUSTER);
        let from = match out.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        out.extend(from..=last);
    }
    Ok(out)
}

/// Writes a qcow2 image of `raw` (its full length is the virtual size) into `out`, which must
/// be empty. Data moves with `copy_file_range` (no copy through userspace). Not synced: like
/// the other secondary outputs, only `disk.raw` is fsynced.
pub fn write_from_raw(raw: &File, out: &File) -> io::Result<Plan> {
    let size = raw.metadata()?.len();
    let plan = Plan::new(size, data_clusters(raw)?);
    out.write_all_at(&plan.header(), 0)?;
    out.write_all_at(&plan.l1_table(), plan.l1_cluster * CLUSTER)?;
    out.write_all_at(&plan.refcounts(), plan.reftable_cluster * CLUSTER)?;
    if let Some((_, first)) = plan.l2.first() {
        out.write_all_at(&plan.l2_tables(), first * CLUSTER)?;
    }
    // Data clusters, copied in runs that are contiguous in the guest.
    let mut i = 0;
    while i < plan.data.len() {
        let mut j = i + 1;
        while j < plan.data.len() && plan.data[j] == plan.data[j - 1] + 1 {
            j += 1;
        }
        let src = plan.data[i] * CLUSTER;
        // The raw file's last cluster may be short: the rest reads as zeros.
        let len = ((j - i) as u64 * CLUSTER).min(size - src);
        crate::disk::copy_range(raw, src, out, (plan.data_cluster + i as u64) * CLUSTER, len)?;
        i = j;
    }
    out.set_len(plan.total * CLUSTER)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_image_has_only_metadata() {
        let p = Plan::new(1 << 30, vec![]);
        assert_eq!(p.l1_entries, 2); // 1 GiB / (8192 * 64 KiB)
        assert!(p.l2.is_empty());
        assert_eq!(p.total, 4); // header, L1, reftable, one refblock
    }

    #[test]
    fn one_l2_table_per_512_mib_that_holds_data() {
        let per_l2 = L2_ENTRIES;
        let p = Plan::new(4 << 30, vec![0, 1, per_l2 * 3 + 5]);
        assert_eq!(p.l2.len(), 2);
        assert_eq!(p.l2[0].0, 0);
        assert_eq!(p.l2[1].0, 3);
        assert_eq!(p.total, p.data_cluster + 3);
        let l2 = p.l2_tables();
        let entry = |t: usize, i: u64| {
            let o = t * CLUSTER as usize + i as usize * 8;
            u64::from_be_bytes(l2[o..o + 8].try_into().unwrap())
        };
        assert_eq!(entry(0, 1), ((p.data_cluster + 1) * CLUSTER) | COPIED);
        assert_eq!(entry(1, 5), ((p.data_cluster + 2) * CLUSTER) | COPIED);
        assert_eq!(entry(0, 2), 0);
    }

    #[test]
    fn refcounts_cover_every_cluster_including_themselves() {
        // Enough data clusters to need a second refcount block.
        let data: Vec<u64> = (0..REFS_PER_BLOCK + 10).collect();
        let p = Plan::new((REFS_PER_BLOCK + 10) * CLUSTER, data);
        assert_eq!(p.refblocks, 2);
        assert!(p.refblocks * REFS_PER_BLOCK >= p.total);
        let r = p.refcounts();
        let table = (p.reftable_clusters * CLUSTER) as usize;
        let count =
            |c: u64| u16::from_be_bytes(r[table + c as usize * 2..][..2].try_into().unwrap());
        assert_eq!(count(p.total - 1), 1);
        assert_eq!(count(p.total), 0);
    }

    fn qemu_img(args: &[&str]) -> std::process::Output {
        std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (qemu-utils) is installed")
    }

    #[test]
    fn qemu_img_checks_and_compares_clean() {
        let d = tempfile::tempdir().unwrap();
        let raw_path = d.path().join("d.raw");
        let raw = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&raw_path)
            .unwrap();
        // 1.5 GiB + a partial cluster: data at the start, across an L2 boundary, and in the
        // short last cluster.
        let size = (3u64 << 29) + 4096;
        raw.set_len(size).unwrap();
        raw.write_all_at(b"start", 0).unwrap();
        raw.write_all_at(&vec![7u8; 200_000], (512 << 20) - 100_000)
            .unwrap();
        raw.write_all_at(b"end", size - 3).unwrap();
        let q_path = d.path().join("d.qcow2");
        let q = File::create(&q_path).unwrap();
        let plan = write_from_raw(&raw, &q).unwrap();
        assert_eq!(plan.data.len(), 1 + 4 + 1);
        let (raw_s, q_s) = (raw_path.to_str().unwrap(), q_path.to_str().unwrap());
        let check = qemu_img(&["check", "-f", "qcow2", q_s]);
        let out = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success(), "{out}");
        assert!(out.contains("No errors were found"), "{out}");
        let cmp = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", raw_s, q_s]);
        assert!(
            cmp.status.success(),
            "{}",
            String::from_utf8_lossy(&cmp.stdout)
        );
        // A different raw no longer compares equal: the comparison can fail.
        raw.write_all_at(b"X", 1000).unwrap();
        let cmp = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", raw_s, q_s]);
        assert!(!cmp.status.success());
    }
}
