//! Container images baked into a root for containerd: an OCI image layout directory, an OCI
//! archive (a tar of such a layout) or a docker archive (`docker save`) becomes one normalised
//! OCI archive holding exactly the linux/amd64 image — `oci-layout`, an `index.json` with one
//! manifest named for containerd (`io.containerd.image.name`), and the manifest, config and
//! layer blobs, each checked against its digest and size. The reference names the manifest
//! digest, so the device imports an image only when its store lacks that exact content.
//! Reading is capped (bytes and entries) and nothing is followed outside the input.

use crate::RootfsError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

mod input;

use input::{docker_to_layout, unpack};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Members of an archive input at most (a docker archive of a large image has a few hundred).
const MAX_ENTRIES: usize = 100_000;
/// index.json, manifests and configs at most (tough's metadata limit is 1 MiB too).
const MAX_JSON: u64 = 1 << 20;

/// The image as baked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baked {
    /// `sha256:<hex>` of the image manifest.
    pub manifest_digest: String,
    /// The name containerd gives it on import: `kiln.local/<name>:sha256-<hex>`.
    pub reference: String,
    /// From the image config: `Entrypoint`, `Cmd`, `Env`, `WorkingDir`.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Bytes of the normalised archive.
    pub archive_size: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

/// Where the blobs of the input are: a layout directory (as given, or an archive unpacked
/// into a work directory).
struct Blobs {
    dir: PathBuf,
    /// Bytes read so far, against the cap.
    read: u64,
    cap: u64,
    origin: String,
}

impl Blobs {
    fn bad(&self, message: String) -> RootfsError {
        RootfsError::Invalid {
            source_name: self.origin.clone(),
            message,
        }
    }

    fn path(&self, digest: &str) -> Result<PathBuf, RootfsError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| self.bad(format!("unsupported digest {digest:?}")))?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    /// Checks a blob's size and sha256 against its descriptor (reading it once).
    fn verify(&mut self, d: &Descriptor) -> Result<PathBuf, RootfsError> {
        let path = self.path(&d.digest)?;
        let meta =
            fs::symlink_metadata(&path).map_err(|e| self.bad(format!("blob {}: {e}", d.digest)))?;
        if !meta.is_file() || meta.len() != d.size {
            return Err(self.bad(format!(
                "blob {} is {} bytes, its descriptor says {}",
                d.digest,
                meta.len(),
                d.size
            )));
        }
        self.read += d.size;
        if self.read > self.cap {
            return Err(self.bad(format!("the image is larger than {} bytes", self.cap)));
        }
        let mut h = Sha256::new();
        let mut f = fs::File::open(&path)
            .map_err(RootfsError::io(format!("opening {}", path.display())))?;
        std::io::copy(&mut f, &mut h)
            .map_err(RootfsError::io(format!("reading {}", path.display())))?;
        if format!("sha256:{}", hex::encode(h.finalize())) != d.digest {
            return Err(self.bad(format!("blob {} does not match its digest", d.digest)));
        }
        Ok(path)
    }

    fn json<T: for<'de> Deserialize<'de>>(
        &mut self,
        d: &Descriptor,
        what: &str,
    ) -> Result<T, RootfsError> {
        if d.size > MAX_JSON {
            return Err(self.bad(format!(
                "{what} {} is larger than {MAX_JSON} bytes",
                d.digest
            )));
        }
        let p = self.verify(d)?;
        let bytes = fs::read(&p).map_err(RootfsError::io(format!("reading {}", p.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.bad(format!("parsing {what} {}: {e}", d.digest)))
    }
}

fn read_small_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    origin: &str,
) -> Result<T, RootfsError> {
    let bad = |message: String| RootfsError::Invalid {
        source_name: origin.to_string(),
        message,
    };
    let f = fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(RootfsError::io(format!("reading {}", path.display())))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(bad(format!(
            "{} is larger than {MAX_JSON} bytes",
            path.display()
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("parsing {}: {e}", path.display())))
}

fn is_amd64(p: &Platform) -> bool {
    p.os == "linux" && p.architecture == "amd64"
}

/// The linux/amd64 image manifest of the layout: the only one, or the only one whose platform
/// says linux/amd64 (nested indexes, as multi-platform images have, are looked into once).
fn pick_manifest(b: &mut Blobs) -> Result<Descriptor, RootfsError> {
    let index: Index = read_small_json(&b.dir.join("index.json"), &b.origin)?;
    let mut candidates = Vec::new();
    for d in index.manifests {
        match d.media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                let nested: Index = b.json(&d, "nested index")?;
                candidates.extend(nested.manifests);
            }
            _ => candidates.push(d),
        }
    }
    candidates.retain(|d| {
        d.media_type.is_empty() || d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST
    });
    if candidates.len() > 1 {
        candidates.retain(|d| d.platform.as_ref().is_some_and(is_amd64));
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(b.bad("index.json names no linux/amd64 image manifest".into())),
        n => Err(b.bad(format!(
            "index.json names {n} linux/amd64 image manifests; keep one"
        ))),
    }
}

/// Bakes the image at `input` for the container `name` into the OCI archive `out` (created;
/// `work` is an empty directory for an archive's contents). At most `cap` bytes are read.
pub fn bake(
    input: &Path,
    name: &str,
    work: &Path,
    out: &Path,
    cap: u64,
) -> Result<Baked, RootfsError> {
    let origin = input.display().to_string();
    let meta = fs::metadata(input).map_err(RootfsError::io(format!("reading {origin}")))?;
    let dir = if meta.is_dir() {
        if !input.join("oci-layout").is_file() {
            return Err(RootfsError::Invalid {
                source_name: origin,
                message: "not an OCI image layout (no oci-layout file)".into(),
            });
        }
        input.to_path_buf()
    } else {
        let links = unpack(input, work, cap, &origin)?;
        if work.join("oci-layout").is_file() && work.join("index.json").is_file() {
            work.to_path_buf()
        } else if work.join("manifest.json").is_file() {
            docker_to_layout(work, &links, &origin)?;
            work.to_path_buf()
        } else {
            return Err(RootfsError::Invalid {
                source_name: origin,
                message: "neither an OCI archive (no oci-layout and index.json) nor a docker archive (no manifest.json)".into(),
            });
        }
    };
    let mut b = Blobs {
        dir,
        read: 0,
        cap,
        origin,
    };
    let desc = pick_manifest(&mut b)?;
    let manifest: Manifest = b.json(&desc, "image manifest")?;
    let config: ImageConfig = b.json(&manifest.config, "image config")?;
    if config.os != "linux" || config.architecture != "amd64" {
        return Err(b.bad(format!(
            "the image is for {}/{}, not linux/amd64",
            config.os, config.architecture
        )));
    }
    let mut members = vec![(desc.digest.clone(), b.path(&desc.digest)?)];
    members.push((
        manifest.config.digest.clone(),
        b.path(&manifest.config.digest)?,
    ));
    for l in &manifest.layers {
        if crate::oci::layer_compression(&l.media_type).is_none() {
            return Err(b.bad(format!(
                "layer {} has unsupported media type {:?}",
                l.digest, l.media_type
            )));
        }
        let p = b.verify(l)?;
        members.push((l.digest.clone(), p));
    }
    let hex = desc.digest.trim_start_matches("sha256:").to_string();
    let reference = format!("kiln.local/{name}:sha256-{hex}");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": if desc.media_type.is_empty() { OCI_MANIFEST } else { desc.media_type.as_str() },
            "digest": desc.digest,
            "size": desc.size,
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": format!("sha256-{hex}"),
            },
        }],
    });
    write_archive(
        out,
        &serde_json::to_vec(&index).map_err(|e| b.bad(e.to_string()))?,
        &members,
    )?;
    let run = config.config.unwrap_or_default();
    Ok(Baked {
        manifest_digest: desc.digest,
        reference,
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        archive_size: fs::metadata(out).map(|m| m.len()).unwrap_or(0),
    })
}

/// Writes the normalised archive: fixed owners, modes and times, blobs in manifest order
/// (each once).
fn write_archive(out: &Path, index: &[u8], blobs: &[(String, PathBuf)]) -> Result<(), RootfsError> {
    let f =
        fs::File::create(out).map_err(RootfsError::io(format!("creating {}", out.display())))?;
    let mut t = tar::Builder::new(std::io::BufWriter::new(f));
    let header = |size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let io = |e| RootfsError::Io {
        context: format!("writing {}", out.display()),
        source: e,
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    t.append_data(&mut header(layout.len() as u64), "oci-layout", &layout[..])
        .map_err(io)?;
    t.append_data(&mut header(index.len() as u64), "index.json", index)
        .map_err(io)?;
    let mut seen = std::collections::HashSet::new();
    for (digest, path) in blobs {
        if !seen.insert(digest) {
            continue;
        }
        let f =
            fs::File::open(path).map_err(RootfsError::io(format!("opening {}", path.display())))?;
        let size = f.metadata().map_err(io)?.len();
        let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        t.append_data(&mut header(size), name, f).map_err(io)?;
    }
    t.into_inner()
        .and_then(|mut w| w.flush().map(|_| w))
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(io)?
        .sync_all()
        .map_err(io)?;
    Ok(())
}

/// The config and manifest JSON of a one-layer image (for tests and examples): returns the
/// OCI layout written at `dir` with `layer` (an uncompressed tar) and `cmd`.
pub fn write_test_layout(dir: &Path, layer: &[u8], cmd: &[&str]) -> std::io::Result<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> std::io::Result<(String, usize)> {
        let hex = hex::encode(Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(layer)));
    let (layer_digest, layer_size) = put(layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(manifest_digest)
}

#[cfg(test)]
mod tests;
