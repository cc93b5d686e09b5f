//! Making a bundle (host side, `kiln bundle`).

use super::chunker::{chunk_file, Store};
use super::keys::{SecretKey, Signatures};
use super::manifest::{check_labels, Manifest, Payloads, RootVerity, FORMAT};
use super::store::PACK;
use super::{MANIFEST, MANIFEST_ZST, MANIFEST_ZSTD_LEVEL, SIGNATURES, SIGNATURES_ZST};
use std::fs;
use std::io;
use std::path::Path;

/// Identity and validity of a bundle.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    pub compatible: String,
    pub version: String,
    pub sequence: u64,
    pub created: u64,
    pub expires: u64,
    /// The root's dm-verity description (the root payload then holds the tree).
    pub root_verity: Option<RootVerity>,
}

/// The payload files: the root and what boots it.
#[derive(Debug, Clone, Copy)]
pub struct PayloadFiles<'a> {
    pub root: &'a Path,
    pub boot: BootFiles<'a>,
}

/// What boots the root: a kernel and an initrd, or each slot's signed UKI (Secure Boot).
#[derive(Debug, Clone, Copy)]
pub enum BootFiles<'a> {
    Kernel { kernel: &'a Path, initrd: &'a Path },
    Uki { a: &'a Path, b: &'a Path },
}

/// How a bundle stores its chunks (see [`super::store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `chunks.pack`: a run of chunks is one range request.
    #[default]
    Pack,
    /// One file per chunk, for updaters that predate the pack.
    Files,
}

/// Writes a signed bundle directory at `out` (which must not exist), its chunks packed.
pub fn write_bundle(
    files: PayloadFiles<'_>,
    info: &BundleInfo,
    keys: &[&SecretKey],
    out: &Path,
) -> io::Result<Manifest> {
    write_bundle_as(files, info, keys, out, Layout::Pack)
}

/// Writes a signed bundle directory at `out` (which must not exist) with its chunks stored as
/// `layout` says. Built under a temporary name and renamed when complete; labels outside their
/// character set are refused before anything is created.
pub fn write_bundle_as(
    files: PayloadFiles<'_>,
    info: &BundleInfo,
    keys: &[&SecretKey],
    out: &Path,
    layout: Layout,
) -> io::Result<Manifest> {
    check_labels(&info.compatible, &info.version)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if out.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", out.display()),
        ));
    }
    let name = out
        .file_name()
        .ok_or_else(|| io::Error::other("bundle path has no name"))?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let result = (|| {
        let mut store = match layout {
            Layout::Pack => Store::pack(&tmp)?,
            Layout::Files => Store::Files(tmp.clone()),
        };
        // In this order: the pack's layout is the chunks' first occurrences, root first.
        let root = chunk_file(files.root, &mut store)?;
        let mut payloads = Payloads {
            root,
            kernel: None,
            initrd: None,
            uki_a: None,
            uki_b: None,
        };
        match files.boot {
            BootFiles::Kernel { kernel, initrd } => {
                payloads.kernel = Some(chunk_file(kernel, &mut store)?);
                payloads.initrd = Some(chunk_file(initrd, &mut store)?);
            }
            BootFiles::Uki { a, b } => {
                payloads.uki_a = Some(chunk_file(a, &mut store)?);
                payloads.uki_b = Some(chunk_file(b, &mut store)?);
            }
        }
        store.finish()?;
        let manifest = Manifest {
            format: FORMAT,
            compatible: info.compatible.clone(),
            version: info.version.clone(),
            sequence: info.sequence,
            created: info.created,
            expires: info.expires,
            payloads,
            root_verity: info.root_verity.clone(),
        };
        manifest
            .check_structure()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        let z = zstd::bulk::compress(&bytes, MANIFEST_ZSTD_LEVEL)?;
        for (name, sig_name, data) in [
            (MANIFEST, SIGNATURES, &bytes),
            (MANIFEST_ZST, SIGNATURES_ZST, &z),
        ] {
            let sigs = Signatures {
                signatures: keys.iter().map(|k| k.sign(data)).collect(),
            };
            fs::write(tmp.join(name), data)?;
            fs::write(
                tmp.join(sig_name),
                serde_json::to_vec_pretty(&sigs).map_err(io::Error::other)?,
            )?;
        }
        fs::rename(&tmp, out)?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Packs a bundle directory into one `.kbundle` file (uncompressed tar, manifest first).
pub fn pack(dir: &Path, file: &Path) -> io::Result<()> {
    let tmp = file.with_extension("kbundle.tmp");
    let mut b = tar::Builder::new(fs::File::create(&tmp)?);
    b.mode(tar::HeaderMode::Deterministic);
    for name in [MANIFEST, SIGNATURES] {
        b.append_path_with_name(dir.join(name), name)?;
    }
    // The compressed pair, unless the bundle predates it.
    if dir.join(MANIFEST_ZST).exists() {
        for name in [MANIFEST_ZST, SIGNATURES_ZST] {
            b.append_path_with_name(dir.join(name), name)?;
        }
    }
    if dir.join(PACK).exists() {
        b.append_path_with_name(dir.join(PACK), PACK)?;
    }
    let mut chunk_files = Vec::new();
    if dir.join("chunks").exists() {
        for d in fs::read_dir(dir.join("chunks"))? {
            for f in fs::read_dir(d?.path())? {
                chunk_files.push(f?.path());
            }
        }
    }
    chunk_files.sort();
    for p in chunk_files {
        let rel = p.strip_prefix(dir).map_err(io::Error::other)?.to_path_buf();
        b.append_path_with_name(&p, rel)?;
    }
    b.into_inner()?.sync_all()?;
    fs::rename(tmp, file)
}
