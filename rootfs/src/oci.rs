//! Reading an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) and applying its
//! layers in order. Every blob is checked against its digest before it is used.

use crate::tarball::{extract, Cap, ExtractStats};
use crate::RootfsError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

/// Compression of a layer, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Maps a layer media type to its compression; `None` for unsupported types.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

fn bad(layout: &Path, message: String) -> RootfsError {
    RootfsError::Invalid {
        source_name: layout.display().to_string(),
        message,
    }
}

/// Opens a blob after checking its sha256 against the digest.
fn open_blob(layout: &Path, digest: &str) -> Result<fs::File, RootfsError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad(layout, format!("unsupported digest {digest:?}")))?;
    let path: PathBuf = layout.join("blobs/sha256").join(hex);
    let mut f = fs::File::open(&path)
        .map_err(RootfsError::io(format!("opening blob {}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(RootfsError::io(format!("reading blob {}", path.display())))?;
    if hex::encode(h.finalize()) != hex.to_ascii_lowercase() {
        return Err(bad(
            layout,
            format!("blob {digest} does not match its digest"),
        ));
    }
    f.rewind().map_err(RootfsError::io(format!(
        "rewinding blob {}",
        path.display()
    )))?;
    Ok(f)
}

fn read_json<T: for<'de> Deserialize<'de>>(
    layout: &Path,
    f: impl Read,
    what: &str,
) -> Result<T, RootfsError> {
    serde_json::from_reader(f).map_err(|e| bad(layout, format!("parsing {what}: {e}")))
}

/// Applies the layers of the first manifest of the layout at `layout` onto `root`.
pub fn apply_layout(
    layout: &Path,
    root: &Path,
    cap: &mut Cap,
) -> Result<ExtractStats, RootfsError> {
    if !layout.join("oci-layout").is_file() {
        return Err(bad(
            layout,
            "not an OCI image layout (no oci-layout file)".into(),
        ));
    }
    let index_path = layout.join("index.json");
    let index: Index = read_json(
        layout,
        fs::File::open(&index_path)
            .map_err(RootfsError::io(format!("opening {}", index_path.display())))?,
        "index.json",
    )?;
    let desc = index
        .manifests
        .first()
        .ok_or_else(|| bad(layout, "index.json lists no manifest".into()))?;
    let manifest: Manifest = read_json(
        layout,
        open_blob(layout, &desc.digest)?,
        "the image manifest",
    )?;
    let mut total = ExtractStats::default();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let comp = layer_compression(&layer.media_type).ok_or_else(|| {
            bad(
                layout,
                format!(
                    "layer {i} has unsupported media type {:?}",
                    layer.media_type
                ),
            )
        })?;
        let blob = std::io::BufReader::new(open_blob(layout, &layer.digest)?);
        let name = format!("{} layer {i} ({})", layout.display(), layer.digest);
        let s = match comp {
            Compression::None => extract(blob, root, &name, true, cap)?,
            Compression::Gzip => {
                extract(flate2::read::GzDecoder::new(blob), root, &name, true, cap)?
            }
            Compression::Zstd => extract(
                zstd::stream::read::Decoder::new(blob)
                    .map_err(RootfsError::io(format!("opening {name}")))?,
                root,
                &name,
                true,
                cap,
            )?,
        };
        total.files += s.files;
        total.dirs += s.dirs;
        total.symlinks += s.symlinks;
        total.hardlinks += s.hardlinks;
        total.specials += s.specials;
        total.whiteouts += s.whiteouts;
    }
    Ok(total)
}
