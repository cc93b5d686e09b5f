//! Test bundles made on the spot.

use kiln_updater::bundle::keys::SecretKey;
use kiln_updater::bundle::manifest::Manifest;
use kiln_updater::bundle::writer::{write_bundle_as, BootFiles, BundleInfo, Layout, PayloadFiles};
use std::fs;
use std::path::Path;

/// An empty target of `len` bytes at `p` (created or truncated), open for reading and writing.
#[allow(dead_code)] // not every test crate writes into a target
pub fn empty_target(p: &Path, len: u64) -> fs::File {
    let f = fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    f.set_len(len).unwrap();
    f
}

/// Incompressible, reproducible bytes.
pub fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes the bundle `dir/name` (compatible "test", version `name`, sequence 1, never
/// expires) of `root` and a tiny kernel and initrd, signed by `key`, its chunks packed.
#[allow(dead_code)] // not every test file uses every helper
pub fn test_bundle(dir: &Path, name: &str, root: &[u8], key: &SecretKey) -> Manifest {
    test_bundle_as(dir, name, root, key, Layout::Pack)
}

/// [`test_bundle`] with its chunks stored as `layout` says.
pub fn test_bundle_as(
    dir: &Path,
    name: &str,
    root: &[u8],
    key: &SecretKey,
    layout: Layout,
) -> Manifest {
    let d = dir.join(format!("{name}-files"));
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("root"), root).unwrap();
    fs::write(d.join("kernel"), b"kernel").unwrap();
    fs::write(d.join("initrd"), b"initrd").unwrap();
    write_bundle_as(
        PayloadFiles {
            root: &d.join("root"),
            boot: BootFiles::Kernel {
                kernel: &d.join("kernel"),
                initrd: &d.join("initrd"),
            },
        },
        &BundleInfo {
            compatible: "test".into(),
            version: name.into(),
            sequence: 1,
            created: 0,
            expires: u64::MAX,
            root_verity: None,
        },
        &[key],
        &dir.join(name),
        layout,
    )
    .unwrap()
}
