//! Signed image checksums: `kiln sign IMAGE --key K` writes `IMAGE.sha256` (as `sha256sum`
//! prints it, of the image as `kiln flash` reads it, i.e. decompressed) and `IMAGE.sha256.sig`
//! (ed25519 signatures over the exact bytes of `IMAGE.sha256`, the bundle signature format);
//! `kiln flash IMAGE DEV --key PUB` accepts the checksum only with a valid signature by a
//! trusted key, then checks the image against it.

use anyhow::{Context, Result};
use kiln_updater::bundle::keys::{self, Signatures};
use std::path::{Path, PathBuf};

/// Replaced durably (fsynced before and after the rename): a cut never leaves a checksum file
/// torn or empty beside its image.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    kiln_io::write_durable(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Writes `IMAGE.sha256` and `IMAGE.sha256.sig`; returns the sha256 (hex).
pub fn sign(image: &Path, key_files: &[PathBuf]) -> Result<String> {
    let keys = crate::keyfiles::secret_keys(key_files)?;
    let name = image.to_str().context("image path is not UTF-8")?;
    // The image is hashed whole, whatever its size (it is the builder's own output).
    let mut src =
        kiln_flash::source::open(name, &kiln_flash::source::Bounds::for_device(u64::MAX))?;
    let hex = kiln_io::sha256_hex(&mut src.reader).with_context(|| format!("reading {name}"))?;
    let base = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let line = format!("{hex}  {base}\n");
    let sigs = Signatures {
        signatures: keys.iter().map(|k| k.sign(line.as_bytes())).collect(),
    };
    write_atomic(Path::new(&format!("{name}.sha256")), line.as_bytes())?;
    write_atomic(
        Path::new(&format!("{name}.sha256.sig")),
        &serde_json::to_vec_pretty(&sigs)?,
    )?;
    Ok(hex)
}

/// The checksum text of `IMAGE.sha256` (file or URL), accepted only with a valid signature in
/// `IMAGE.sha256.sig` by one of `trusted`; returns (text, description for messages).
pub fn verified(image: &str, trusted: &[PathBuf]) -> Result<(String, String)> {
    let keys = crate::keyfiles::public_keys(trusted)?;
    let (text, from) = kiln_flash::source::sidecar(image, ".sha256")?
        .with_context(|| format!("{image}.sha256 is missing (make it with kiln sign)"))?;
    let (sig, sig_from) = kiln_flash::source::sidecar(image, ".sha256.sig")?
        .with_context(|| format!("{image}.sha256.sig is missing (make it with kiln sign)"))?;
    let ids = keys::verify(text.as_bytes(), sig.as_bytes(), &keys, 1)
        .with_context(|| format!("{sig_from}: the signature over {from} is not valid"))?;
    let ids: Vec<String> = ids.into_iter().collect();
    Ok((text, format!("{from}, signed by key {}", ids.join(", "))))
}
