//! `kiln keygen` and `kiln bundle`: keys and signed update bundles from a build's outputs.

use anyhow::{bail, Context, Result};
use kiln_updater::bundle::keys::SecretKey;
use kiln_updater::bundle::manifest::Manifest;
use kiln_updater::bundle::manifest::RootVerity;
pub use kiln_updater::bundle::writer::Layout;
use kiln_updater::bundle::writer::{pack, write_bundle_as, BootFiles, BundleInfo, PayloadFiles};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Writes `PREFIX.key` (0600, created exclusively) and `PREFIX.pub`.
pub fn keygen(prefix: &Path) -> Result<()> {
    let key = SecretKey::generate()?;
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let mut f = fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("creating {}", secret.display()))?;
    f.write_all(key.to_file().as_bytes())?;
    f.sync_all()?;
    fs::write(&public, key.public().to_file())
        .with_context(|| format!("writing {}", public.display()))?;
    println!("{} (key id {})", public.display(), key.public().key_id());
    Ok(())
}

/// The file of a build directory that a bundle carries as payload `name`: the root, and the
/// kernel and initrd or (Secure Boot) each slot's signed UKI.
fn payload_file(name: &str) -> &'static str {
    match name {
        "root" => "root.img",
        "kernel" => "vmlinuz",
        "initrd" => "initrd.img",
        "uki-a" => "uki-a.efi",
        _ => "uki-b.efi",
    }
}

/// Inputs of `kiln bundle`.
pub struct BundleArgs<'a> {
    pub build: &'a Path,
    pub keys: &'a [std::path::PathBuf],
    pub out: &'a Path,
    pub sequence: u64,
    pub expires_in: Duration,
    pub kbundle: Option<&'a Path>,
    /// How the chunks are stored (packed unless asked for one file each).
    pub layout: Layout,
}

/// What a device running an older build downloads to install a bundle (`kiln bundle --from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    pub from_version: String,
    /// Signed manifest (compressed pair) and the chunks the old build lacks.
    pub download: u64,
    pub chunks: u64,
    /// The same for a device with nothing to reuse.
    pub full: u64,
    pub full_chunks: u64,
    /// Chunk bytes to download, per payload (root, then kernel and initrd or the one UKI a
    /// device installs).
    pub payloads: Vec<(&'static str, u64)>,
}

/// Indexes `old` (a build directory) the way a device running it indexes its slot, and counts
/// what installing the bundle at `bundle_dir` (manifest `m`) fetches.
pub fn estimate(m: &Manifest, bundle_dir: &Path, old: &Path) -> Result<Estimate> {
    use kiln_updater::bundle::{MANIFEST_ZST, SIGNATURES_ZST};
    use kiln_updater::seed::expected_download;
    use kiln_updater::slot_index;
    let info: BuildInfo = crate::read_build_json(old)?;
    let mut signed = 0;
    for f in [MANIFEST_ZST, SIGNATURES_ZST] {
        signed += fs::metadata(bundle_dir.join(f))
            .with_context(|| format!("{}", bundle_dir.join(f).display()))?
            .len();
    }
    let mut e = Estimate {
        from_version: info.version,
        download: signed,
        chunks: 0,
        full: signed,
        full_chunks: 0,
        payloads: Vec::new(),
    };
    for (name, p) in m.payloads.named() {
        // A device installs one UKI, the other slot's, seeded by its running one: counted as a
        // device on slot a does (uki-b from the old build's uki-a; slot b's is the mirror).
        let seed_file = match name {
            "uki-a" => continue,
            "uki-b" => "uki-a.efi",
            other => payload_file(other),
        };
        let path = old.join(seed_file);
        let f = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // As the device indexes its running slot (the root over its superblock's length).
        let index = if name == "root" {
            slot_index::index_image(&f)
        } else {
            slot_index::index_file(&f)
        }
        .with_context(|| format!("indexing {} ({name})", path.display()))?;
        let (n, b) = expected_download(p, Some(&index));
        let (fn_, fb) = expected_download(p, None);
        e.chunks += n;
        e.download += b;
        e.full_chunks += fn_;
        e.full += fb;
        e.payloads.push((name, b));
    }
    Ok(e)
}

#[derive(serde::Deserialize)]
struct BuildInfo {
    compatible: String,
    version: String,
    /// The sequence baked into the build's root (absent in older builds).
    #[serde(default)]
    sequence: Option<u64>,
    /// The root's dm-verity tree, when the build made one.
    #[serde(default)]
    root_verity: Option<crate::pipeline::RootVerity>,
    /// A Secure Boot build: its slots boot `uki-a.efi` / `uki-b.efi`.
    #[serde(default)]
    secure_boot: bool,
}

/// The sequence of a bundle of `build`: the one given, else the build's own.
pub fn sequence_for(build: &Path, given: Option<u64>) -> Result<u64> {
    let info: BuildInfo = crate::read_build_json(build)?;
    match (given, info.sequence) {
        (Some(s), _) | (None, Some(s)) => Ok(s),
        (None, None) => bail!(
            "{}: the build has no sequence ([update] sequence or kiln build --sequence); give --sequence",
            build.display()
        ),
    }
}

pub fn bundle(a: &BundleArgs<'_>) -> Result<Manifest> {
    let info: BuildInfo = crate::read_build_json(a.build)?;
    if let Some(baked) = info.sequence.filter(|&b| b != a.sequence) {
        bail!(
            "{}: the image was built with sequence {baked} (baked into its root as its floor); a bundle of it must carry {baked}, not {}",
            a.build.display(),
            a.sequence
        );
    }
    let keys = crate::keyfiles::secret_keys(a.keys)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let names: &[&str] = if info.secure_boot {
        &["root", "uki-a", "uki-b"]
    } else {
        &["root", "kernel", "initrd"]
    };
    let paths: Vec<std::path::PathBuf> = names
        .iter()
        .map(|n| a.build.join(payload_file(n)))
        .collect();
    for p in &paths {
        if !p.is_file() {
            bail!("{} is missing from the build directory", p.display());
        }
    }
    let files = PayloadFiles {
        root: &paths[0],
        boot: if info.secure_boot {
            BootFiles::Uki {
                a: &paths[1],
                b: &paths[2],
            }
        } else {
            BootFiles::Kernel {
                kernel: &paths[1],
                initrd: &paths[2],
            }
        },
    };
    let manifest = write_bundle_as(
        files,
        &BundleInfo {
            compatible: info.compatible,
            version: info.version,
            sequence: a.sequence,
            created: now,
            expires: now + a.expires_in.as_secs(),
            root_verity: info.root_verity.map(|v| RootVerity {
                root_hash: v.root_hash,
                data_blocks: v.data_blocks,
            }),
        },
        &keys.iter().collect::<Vec<_>>(),
        a.out,
        a.layout,
    )
    .with_context(|| format!("writing the bundle {}", a.out.display()))?;
    if let Some(k) = a.kbundle {
        pack(a.out, k).with_context(|| format!("packing {}", k.display()))?;
    }
    Ok(manifest)
}
