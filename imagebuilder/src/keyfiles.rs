//! Loading kiln key files named on the command line (`--key`), with errors naming the file.

use anyhow::{bail, Context, Result};
use kiln_updater::bundle::keys::{PublicKey, SecretKey};
use std::fs;
use std::path::PathBuf;

fn load<K>(files: &[PathBuf], what: &str, parse: impl Fn(&str) -> Result<K>) -> Result<Vec<K>> {
    if files.is_empty() {
        bail!("no {what} given (--key)");
    }
    files
        .iter()
        .map(|k| {
            let text = fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?;
            parse(&text).with_context(|| format!("{}: not a kiln {what}", k.display()))
        })
        .collect()
}

/// The signing keys in `files` (at least one).
pub fn secret_keys(files: &[PathBuf]) -> Result<Vec<SecretKey>> {
    load(files, "private key", |t| Ok(SecretKey::from_file(t)?))
}

/// The trusted public keys in `files` (at least one).
pub fn public_keys(files: &[PathBuf]) -> Result<Vec<PublicKey>> {
    load(files, "public key", |t| Ok(PublicKey::from_file(t)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_kind() {
        let d = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let sk = d.path().join("k.key");
        let pk = d.path().join("k.pub");
        fs::write(&sk, key.to_file()).unwrap();
        fs::write(&pk, key.public().to_file()).unwrap();
        assert_eq!(secret_keys(std::slice::from_ref(&sk)).unwrap().len(), 1);
        assert_eq!(public_keys(std::slice::from_ref(&pk)).unwrap().len(), 1);
        let Err(e) = secret_keys(std::slice::from_ref(&pk)) else {
            panic!("a public key loaded as a private key")
        };
        let e = format!("{e:#}");
        assert!(e.contains("k.pub: not a kiln private key"), "{e}");
        let e = format!(
            "{:#}",
            public_keys(&[d.path().join("nope.pub")]).unwrap_err()
        );
        assert!(e.contains("reading") && e.contains("nope.pub"), "{e}");
        let e = format!("{:#}", public_keys(&[]).unwrap_err());
        assert!(e.contains("no public key given"), "{e}");
    }
}
