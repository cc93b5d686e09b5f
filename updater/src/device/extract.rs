//! `kiln-updater extract`: one payload of a signed bundle into a file, reusing the chunks a
//! seed (an older image) holds — what `casync extract --seed` does, with Kiln's verification.
//! The same code path as an install (`install::write_payload`), without a device: it runs on
//! a host too, for mirrors, tests and the delta benchmark. Written to `OUT.part`, verified,
//! then renamed; a `.part` left by an interrupted run is resumed (chunks it holds are kept).
//! Verified as written: each chunk's digest and the whole payload's, computed in write order.

use crate::bundle::manifest::{Manifest, Payload, Policy};
use crate::bundle::open::{open_verified, Limits};
use crate::bundle::store::ChunkStore;
use crate::install::{write_payload, WriteOptions};
use crate::seed::Seed;
use crate::slot_index;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct ExtractOptions {
    /// Public key files trusted for the bundle's signature.
    pub keys: Vec<PathBuf>,
    pub threshold: usize,
    /// The bundle must be for this compatible string.
    pub compatible: String,
    /// `root`, `kernel` or `initrd`.
    pub payload: String,
    pub out: PathBuf,
    /// An older image (file or block device) whose chunks are reused.
    pub seed: Option<PathBuf>,
    /// The manifest of the seed's bundle: where its chunks lie, instead of indexing the seed.
    pub seed_manifest: Option<PathBuf>,
    pub parallel: usize,
    pub progress: bool,
}

/// What an extraction did.
#[derive(Debug, serde::Serialize)]
pub struct Extracted {
    pub version: String,
    pub size: u64,
    pub sha256: String,
    /// Chunks and compressed bytes downloaded.
    pub chunks_fetched: u64,
    pub downloaded: u64,
    /// Chunks and bytes copied from the seed.
    pub chunks_reused: u64,
    pub reused: u64,
    /// Chunks an interrupted run had already written.
    pub chunks_present: u64,
    /// Time spent indexing the seed (0 with a seed manifest).
    pub seed_index_ms: u64,
    pub total_ms: u64,
    /// Peak resident memory of this program (VmHWM: unlike getrusage's maxrss, not inherited
    /// from the process that spawned it).
    pub peak_rss_kib: u64,
}

fn pick<'a>(m: &'a Manifest, name: &str) -> Result<&'a Payload> {
    m.payloads
        .named()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| p)
        .with_context(|| {
            let names: Vec<&str> = m.payloads.named().iter().map(|(n, _)| *n).collect();
            format!("--payload {name}: this bundle has {}", names.join(", "))
        })
}

/// The `.part` file an extraction into `out` writes first.
pub fn part_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

pub fn extract(source: &str, o: &ExtractOptions) -> Result<Extracted> {
    let t0 = Instant::now();
    let keys = o
        .keys
        .iter()
        .map(|k| super::ops::read_public_key(k))
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        bail!("no --key given: extract trusts no key by default");
    }
    let src = super::ops::open_source(source)?;
    let policy = Policy {
        compatible: o.compatible.clone(),
        allow_downgrade: true,
        now: super::ops::now(),
        ..Policy::default()
    };
    // Only the parsed manifest is kept: its bytes (MiBs for a large root) go now.
    let manifest = open_verified(
        src.as_ref(),
        &keys,
        o.threshold,
        &policy,
        &Limits::default(),
    )
    .with_context(|| format!("verifying {source}"))?
    .manifest;
    let payload = pick(&manifest, &o.payload)?;
    let store = ChunkStore::open(src.as_ref(), &manifest)
        .with_context(|| format!("looking for the chunk store of {source}"))?;

    let seed_file = match &o.seed {
        Some(p) => {
            Some(fs::File::open(p).with_context(|| format!("opening the seed {}", p.display()))?)
        }
        None => None,
    };
    let recorded = match (&seed_file, &o.seed_manifest) {
        (Some(_), Some(mp)) => {
            let m: Manifest = serde_json::from_slice(
                &fs::read(mp).with_context(|| format!("reading {}", mp.display()))?,
            )
            .with_context(|| format!("{}: not a bundle manifest", mp.display()))?;
            Some(pick(&m, &o.payload)?.clone())
        }
        (None, Some(_)) => bail!("--seed-manifest needs --seed"),
        _ => None,
    };
    // As an install: the seed is optional, a seed that cannot be indexed means a full download.
    let (index, took) = match &seed_file {
        Some(f) => slot_index::locate(
            recorded.as_ref(),
            || slot_index::index_image(f).map(Some),
            "seed",
        )
        .map_or((None, None), |(p, t)| (Some(p), t)),
        None => (None, None),
    };
    let seed_index_ms = took.map_or(0, |t| t.as_millis() as u64);
    let seed = index
        .as_ref()
        .zip(seed_file.as_ref())
        .map(|(p, f)| Seed::new(f, 0, p));

    let part = part_path(&o.out);
    // A `.part` already there is the state an interrupted run left: only then is the target
    // read back (chunks it holds are kept).
    let resume = part.exists();
    let f = fs::File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .with_context(|| format!("opening {}", part.display()))?;
    f.set_len(payload.size)
        .with_context(|| format!("sizing {}", part.display()))?;
    let reporter = super::progress::reporter();
    let quiet = crate::install::Quiet;
    let written = write_payload(
        &store,
        &o.payload,
        payload,
        &f,
        0,
        payload.size,
        &WriteOptions {
            seed: seed.as_ref(),
            parallel: o.parallel,
            progress: if o.progress { &reporter } else { &quiet },
            resume,
        },
    )?;
    let (stats, sha256) = (written.stats, written.sha256);
    drop(f);
    fs::rename(&part, &o.out)
        .with_context(|| format!("renaming {} to {}", part.display(), o.out.display()))?;
    Ok(Extracted {
        version: manifest.version.clone(),
        size: payload.size,
        sha256,
        chunks_fetched: stats.chunks,
        downloaded: stats.fetched,
        chunks_reused: stats.reused,
        reused: stats.reused_bytes,
        chunks_present: stats.present,
        seed_index_ms,
        total_ms: t0.elapsed().as_millis() as u64,
        peak_rss_kib: peak_rss_kib().unwrap_or(0),
    })
}

/// `VmHWM` of /proc/self/status, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
