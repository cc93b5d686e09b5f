//! The two archive inputs made into an OCI layout directory: any archive unpacked (capped,
//! symlinks recorded, never created), and a docker archive's `manifest.json` turned into OCI
//! descriptors.

use super::*;

/// A docker archive's `manifest.json` entry.
#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Unpacks the regular files and directories of an archive into `dir` (capped); symlinks are
/// recorded, not created (docker archives link repeated layers), and returned.
pub(super) fn unpack(
    archive: &Path,
    dir: &Path,
    cap: u64,
    origin: &str,
) -> Result<HashMap<PathBuf, PathBuf>, RootfsError> {
    let bad = |message: String| RootfsError::Invalid {
        source_name: origin.to_string(),
        message,
    };
    let f = fs::File::open(archive)
        .map_err(RootfsError::io(format!("opening {}", archive.display())))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    let mut links = HashMap::new();
    let mut total = 0u64;
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not an OCI or docker archive (a tar file): {e}")))?;
    for (n, e) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} members")));
        }
        let mut e =
            e.map_err(|e| bad(format!("not an OCI or docker archive (a tar file): {e}")))?;
        let name = e
            .path()
            .map_err(|e| bad(format!("member name: {e}")))?
            .into_owned();
        let Some(rel) = crate::safe_path::normalise(&name)
            .map_err(|why| bad(format!("member {:?}: {}", name.display(), why.why())))?
        else {
            continue;
        };
        let kind = e.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if kind.is_symlink() {
            let target = e
                .link_name()
                .map_err(|e| bad(format!("member {}: {e}", rel.display())))?
                .ok_or_else(|| bad(format!("member {}: link without target", rel.display())))?;
            let joined = rel.parent().unwrap_or(Path::new("")).join(target);
            let resolved = crate::safe_path::normalise(&joined)
                .ok()
                .flatten()
                .ok_or_else(|| bad(format!("member {}: link leaves the archive", rel.display())))?;
            links.insert(rel, resolved);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        total += e.size();
        if total > cap {
            return Err(bad(format!("the image is larger than {cap} bytes")));
        }
        let dest = dir.join(&rel);
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).map_err(RootfsError::io(format!("creating {}", p.display())))?;
        }
        let mut out = fs::File::create(&dest)
            .map_err(RootfsError::io(format!("creating {}", dest.display())))?;
        let copied = std::io::copy(&mut (&mut e).take(cap + 1), &mut out)
            .map_err(RootfsError::io(format!("unpacking {}", rel.display())))?;
        if copied > cap {
            return Err(bad(format!("the image is larger than {cap} bytes")));
        }
    }
    Ok(links)
}

/// Turns a docker archive unpacked in `dir` into an OCI layout there (manifest and config
/// descriptors written from the archive's `manifest.json`).
pub(super) fn docker_to_layout(
    dir: &Path,
    links: &HashMap<PathBuf, PathBuf>,
    origin: &str,
) -> Result<(), RootfsError> {
    let bad = |message: String| RootfsError::Invalid {
        source_name: origin.to_string(),
        message,
    };
    let entries: Vec<DockerEntry> = read_small_json(&dir.join("manifest.json"), origin)?;
    let [entry] = entries.as_slice() else {
        return Err(bad(format!(
            "manifest.json lists {} images; keep one",
            entries.len()
        )));
    };
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(RootfsError::io(format!("creating {}", blobs.display())))?;
    // Stores the member `name` (through the archive's links) as a blob; returns its descriptor.
    let store = |name: &str, media_type: &str| -> Result<Descriptor, RootfsError> {
        let mut rel = crate::safe_path::normalise(Path::new(name))
            .ok()
            .flatten()
            .ok_or_else(|| bad(format!("manifest.json names {name:?}")))?;
        for _ in 0..16 {
            match links.get(&rel) {
                Some(t) => rel = t.clone(),
                None => break,
            }
        }
        let src = dir.join(&rel);
        let mut f = fs::File::open(&src).map_err(|e| bad(format!("{name}: {e}")))?;
        let mut h = Sha256::new();
        let size =
            std::io::copy(&mut f, &mut h).map_err(RootfsError::io(format!("reading {name}")))?;
        let hex = hex::encode(h.finalize());
        let mut media_type = media_type.to_string();
        if media_type.ends_with(".tar") {
            let mut magic = [0u8; 2];
            let _ = fs::File::open(&src).and_then(|mut f| f.read(&mut magic));
            if magic == [0x1f, 0x8b] {
                media_type.push_str("+gzip");
            }
        }
        let dest = blobs.join(&hex);
        if !dest.exists() {
            fs::copy(&src, &dest).map_err(RootfsError::io(format!("copying {name}")))?;
        }
        Ok(Descriptor {
            media_type,
            digest: format!("sha256:{hex}"),
            size,
            platform: None,
            annotations: None,
        })
    };
    let config = store(&entry.config, OCI_CONFIG)?;
    let layers = entry
        .layers
        .iter()
        .map(|l| store(l, "application/vnd.oci.image.layer.v1.tar"))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
    let hex = hex::encode(Sha256::digest(&bytes));
    fs::write(blobs.join(&hex), &bytes).map_err(RootfsError::io("writing the manifest"))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": format!("sha256:{hex}"), "size": bytes.len()}],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).map_err(|e| bad(e.to_string()))?,
    )
    .map_err(RootfsError::io("writing index.json"))?;
    Ok(())
}
