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

/// A docker archive's `manifest.json` entry.
#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
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

/// Unpacks the regular files and directories of an archive into `dir` (capped); symlinks are
/// recorded, not created (docker archives link repeated layers), and returned.
fn unpack(
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
fn docker_to_layout(
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
mod tests {
    use super::*;
    use serde_json::Value;

    fn layer() -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o755);
        h.set_cksum();
        t.append_data(&mut h, "bin/hello", &b"hello"[..]).unwrap();
        t.into_inner().unwrap()
    }

    fn bake_dir(input: &Path) -> Result<(Baked, tempfile::TempDir), RootfsError> {
        let w = tempfile::tempdir().unwrap();
        let out = w.path().join("out.tar");
        let work = w.path().join("work");
        fs::create_dir(&work).unwrap();
        bake(input, "web", &work, &out, 1 << 30).map(|b| (b, w))
    }

    /// Reads the members of an archive.
    fn members(p: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(fs::File::open(p).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                (name, v)
            })
            .collect()
    }

    #[test]
    fn a_layout_is_baked_with_its_manifest_digest_and_a_containerd_name() {
        let d = tempfile::tempdir().unwrap();
        let digest = write_test_layout(d.path(), &layer(), &["/bin/hello", "x"]).unwrap();
        let (b, w) = bake_dir(d.path()).unwrap();
        assert_eq!(b.manifest_digest, digest);
        assert_eq!(
            b.reference,
            format!("kiln.local/web:sha256-{}", &digest[7..])
        );
        assert_eq!(b.cmd, ["/bin/hello", "x"]);
        assert_eq!(b.env, ["PATH=/bin"]);
        let m = members(&w.path().join("out.tar"));
        assert_eq!(
            m.len(),
            5,
            "oci-layout, index.json, manifest, config, layer"
        );
        let index: Value = serde_json::from_slice(&m["index.json"]).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            b.reference.as_str()
        );
        // Byte-identical when baked again (reproducible roots).
        let (_, w2) = bake_dir(d.path()).unwrap();
        assert_eq!(
            fs::read(w.path().join("out.tar")).unwrap(),
            fs::read(w2.path().join("out.tar")).unwrap()
        );

        // The same layout as an OCI archive (tar of the directory) bakes to the same thing.
        let ar = d.path().parent().unwrap().join(format!(
            "{}.tar",
            d.path().file_name().unwrap().to_string_lossy()
        ));
        let mut t = tar::Builder::new(fs::File::create(&ar).unwrap());
        t.append_dir_all(".", d.path()).unwrap();
        t.finish().unwrap();
        let (b2, w3) = bake_dir(&ar).unwrap();
        assert_eq!(b2, b);
        assert_eq!(
            fs::read(w3.path().join("out.tar")).unwrap(),
            fs::read(w.path().join("out.tar")).unwrap()
        );
        fs::remove_file(ar).unwrap();
    }

    #[test]
    fn a_docker_archive_becomes_an_oci_image() {
        let layer = layer();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(Sha256::digest(&layer)))]},
        }))
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let ar = d.path().join("img.tar");
        let mut t = tar::Builder::new(fs::File::create(&ar).unwrap());
        let mut put = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, name, data).unwrap();
        };
        put("abc.json", &config);
        put("l1/layer.tar", &layer);
        put(
            "manifest.json",
            br#"[{"Config":"abc.json","RepoTags":["web:1"],"Layers":["l1/layer.tar"]}]"#,
        );
        t.finish().unwrap();
        drop(t);
        let (b, w) = bake_dir(&ar).unwrap();
        assert_eq!(b.entrypoint, ["/bin/hello"]);
        let m = members(&w.path().join("out.tar"));
        let man: Value =
            serde_json::from_slice(&m[&format!("blobs/sha256/{}", &b.manifest_digest[7..])])
                .unwrap();
        assert_eq!(
            man["layers"][0]["digest"],
            format!("sha256:{}", hex::encode(Sha256::digest(&layer)))
        );
        assert_eq!(man["config"]["mediaType"], OCI_CONFIG);
    }

    #[test]
    fn bad_images_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        // A directory that is not a layout.
        let e = bake_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("not an OCI image layout"), "{e}");
        // A file that is not a tar.
        let f = d.path().join("junk");
        fs::write(&f, vec![7u8; 3000]).unwrap();
        let e = bake_dir(&f).unwrap_err().to_string();
        assert!(
            e.contains("junk") && (e.contains("tar") || e.contains("archive")),
            "{e}"
        );
        // A tampered layer.
        let l = d.path().join("layout");
        fs::create_dir(&l).unwrap();
        write_test_layout(&l, &layer(), &["/bin/hello"]).unwrap();
        let lay = l
            .join("blobs/sha256")
            .join(hex::encode(Sha256::digest(layer())));
        let mut bytes = fs::read(&lay).unwrap();
        bytes[600] ^= 1;
        fs::write(&lay, bytes).unwrap();
        let e = bake_dir(&l).unwrap_err().to_string();
        assert!(e.contains("does not match its digest"), "{e}");
        // Over the cap.
        let l2 = d.path().join("layout2");
        fs::create_dir(&l2).unwrap();
        write_test_layout(&l2, &layer(), &["/bin/hello"]).unwrap();
        let w = tempfile::tempdir().unwrap();
        let e = bake(&l2, "web", w.path(), &w.path().join("o.tar"), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 100 bytes"), "{e}");
    }
}
