//! Two versions of a large root for the delta-update test and benchmark (issue 7): the default
//! image plus a generated tree (`extra` bytes in files of 1 KiB to 4 MiB, sizes log-uniform);
//! v2 (version 2.0.0) replaces one 4 MiB file and adds one 1 MiB file whose name sorts first,
//! so every later file's data shifts in the image.

use crate::fixtures::{build_default_with, dev_bundle};
use imagebuilder::pipeline::BuildReport;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file v2 rewrites (4 MiB) and the one it adds (1 MiB).
pub const CHANGED: &str = "usr/lib/extra/libbig.so.4";
pub const ADDED: &str = "usr/bin/aaa-added";

pub struct Version {
    pub build: PathBuf,
    pub report: BuildReport,
    pub bundle: PathBuf,
}

pub struct Pair {
    pub v1: Version,
    pub v2: Version,
    /// zstd (level 3) size of the data v2 changed: the new 4 MiB and the added 1 MiB.
    pub changed_compressed: u64,
}

/// xorshift64: reproducible bytes without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Fills `buf` with bytes no compressor shrinks.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            c.copy_from_slice(&x[..c.len()]);
        }
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `len` bytes that look like program data: tokens from a small per-seed vocabulary (skewed
/// towards a few), with runs of noise; zstd compresses them about 2-3×.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let vocab: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let n = 2 + (r.next() % 15) as usize;
            (0..n).map(|_| r.next() as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let x = r.next();
        if x.is_multiple_of(10) {
            out.extend((0..48).map(|_| r.next() as u8));
        } else {
            let i = ((x >> 8) % 512).min((x >> 20) % 512) as usize;
            out.extend_from_slice(&vocab[i]);
        }
    }
    out.truncate(len);
    out
}

/// The generated tree of about `extra` bytes under `dir` (v1's files).
fn write_tree(dir: &Path, extra: u64) {
    let mut r = Rng(0x5eed);
    let mut total = 0u64;
    let mut i = 0u32;
    while total < extra {
        // log-uniform from 1 KiB to 4 MiB
        let bits = 10 + (r.next() % 12);
        let len = (1u64 << bits) + r.next() % (1u64 << bits);
        let path = dir.join(format!("usr/lib/extra/d{:02}/f{i:05}.bin", i % 40));
        fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        fs::write(&path, content(len as usize, u64::from(i))).expect("write tree");
        total += len;
        i += 1;
    }
    fs::create_dir_all(dir.join("usr/bin")).expect("mkdir");
    fs::write(dir.join(CHANGED), content(4 << 20, 1_000_001)).expect("write");
}

fn version(work: &Path, name: &str, tree: &Path, version: &str, sequence: u64) -> Version {
    let build = work.join(name);
    let tree = tree.to_path_buf();
    let version_s = version.to_string();
    let report = build_default_with(&build, move |s| {
        s.version = version_s;
        s.overlays.push(tree);
    });
    let bundle = work.join(format!("{name}.bundle"));
    dev_bundle(&build, &bundle, sequence);
    Version {
        build,
        report,
        bundle,
    }
}

/// Builds and bundles v1 and v2 under `work` with about `extra` bytes of generated files.
pub fn build_pair(work: &Path, extra: u64) -> Pair {
    let tree = work.join("tree");
    write_tree(&tree, extra);
    let v1 = version(work, "v1", &tree, "1.0.0", 1);
    let new4 = content(4 << 20, 2_000_002);
    let new1 = content(1 << 20, 3_000_003);
    fs::write(tree.join(CHANGED), &new4).expect("write");
    fs::write(tree.join(ADDED), &new1).expect("write");
    let v2 = version(work, "v2", &tree, "2.0.0", 2);
    fs::remove_dir_all(&tree).expect("remove tree");
    let z = |b: &[u8]| zstd::bulk::compress(b, 3).expect("zstd").len() as u64;
    Pair {
        v1,
        v2,
        changed_compressed: z(&new4) + z(&new1),
    }
}

/// `kiln-updater extract` (the device build, static: it runs on the host) of the root of the
/// bundle at `url` into `out`, trusting the default example's key, with JSON output.
pub fn extract_cmd(
    url: &str,
    seed: Option<&Path>,
    seed_manifest: Option<&Path>,
    out: &Path,
) -> Command {
    let updater = imagebuilder::find_device_binary("kiln-updater")
        .expect("kiln-updater not found: run scripts/build-device (scripts/test does)");
    let mut c = Command::new(updater);
    c.arg("extract")
        .arg(url)
        .arg("--key")
        .arg(crate::fixtures::workspace().join("examples/default/keys/dev.pub"))
        .args(["--compatible", "kiln-default-x86_64", "--json", "--out"])
        .arg(out);
    if let Some(s) = seed {
        c.arg("--seed").arg(s);
    }
    if let Some(m) = seed_manifest {
        c.arg("--seed-manifest").arg(m);
    }
    c
}
