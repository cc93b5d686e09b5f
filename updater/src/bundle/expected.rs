//! What the caller says the bundle must be, checked after the signatures and the device policy
//! and before anything is written: the node agent passes the version (and, when the OSUpgrade
//! names one, the manifest's digest) of the target it was handed, so a bundle server (or a man
//! in the middle of plain HTTP) answering with another validly signed bundle is refused.

use super::manifest::Manifest;
use sha2::{Digest, Sha256};

/// The digest of a bundle's manifest as `kiln bundle` prints it and an OSUpgrade names it:
/// `sha256:` and the hex SHA-256 of the bundle's `manifest.json` bytes.
pub fn manifest_digest(manifest_json: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(manifest_json)))
}

/// Whether `s` is a well-formed manifest digest (`sha256:` + 64 lowercase hex digits).
pub fn is_manifest_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub version: Option<String>,
    /// [`manifest_digest`] form.
    pub manifest_digest: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ExpectedError {
    #[error("the bundle is version {bundle}, not the expected {expected} (a different bundle was served)")]
    Version { bundle: String, expected: String },
    #[error("the bundle's manifest is {bundle}, not the expected {expected} (a different bundle was served)")]
    Digest { bundle: String, expected: String },
}

impl Expected {
    /// Checks the verified manifest `m` and the exact manifest bytes it was parsed from.
    pub fn check(&self, m: &Manifest, manifest_json: &[u8]) -> Result<(), ExpectedError> {
        if let Some(v) = &self.version {
            if *v != m.version {
                return Err(ExpectedError::Version {
                    bundle: m.version.clone(),
                    expected: v.clone(),
                });
            }
        }
        if let Some(d) = &self.manifest_digest {
            let got = manifest_digest(manifest_json);
            if got != *d {
                return Err(ExpectedError::Digest {
                    bundle: got,
                    expected: d.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{Payload, Payloads};

    fn manifest(version: &str) -> Manifest {
        let p = Payload {
            size: 0,
            sha256: String::new(),
            chunks: vec![],
        };
        Manifest {
            format: crate::bundle::manifest::FORMAT,
            compatible: "kiln-test".into(),
            version: version.into(),
            sequence: 2,
            created: 0,
            expires: 10,
            payloads: Payloads {
                root: p.clone(),
                kernel: Some(p.clone()),
                initrd: Some(p),
                uki_a: None,
                uki_b: None,
            },
            root_verity: None,
        }
    }

    #[test]
    fn refuses_another_version_or_manifest() {
        let m = manifest("2.0.0");
        let bytes = serde_json::to_vec(&m).unwrap();
        let d = manifest_digest(&bytes);
        assert!(is_manifest_digest(&d));
        let ok = Expected {
            version: Some("2.0.0".into()),
            manifest_digest: Some(d.clone()),
        };
        assert_eq!(ok.check(&m, &bytes), Ok(()));
        assert_eq!(Expected::default().check(&m, &bytes), Ok(()));
        let v3 = Expected {
            version: Some("3.0.0".into()),
            ..Expected::default()
        };
        assert!(matches!(
            v3.check(&m, &bytes),
            Err(ExpectedError::Version { .. })
        ));
        let other = serde_json::to_vec(&manifest("2.0.0-other")).unwrap();
        let wrong = Expected {
            version: None,
            manifest_digest: Some(manifest_digest(&other)),
        };
        let e = wrong.check(&m, &bytes).unwrap_err();
        assert!(e.to_string().contains(&d), "{e}");
        assert!(!is_manifest_digest("sha256:ABC"));
        assert!(!is_manifest_digest(&d.to_uppercase()));
    }
}
