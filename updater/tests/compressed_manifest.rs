//! The compressed manifest pair (`manifest.json.zst` + its signatures): preferred when present,
//! its signature checked before a byte is decompressed, decompression capped, and the plain
//! pair used for bundles that lack it.

mod common;

use common::{noise, test_bundle};
use kiln_updater::bundle::keys::{SecretKey, SignatureError, Signatures};
use kiln_updater::bundle::manifest::Policy;
use kiln_updater::bundle::open::{open_verified, Limits, OpenError};
use kiln_updater::bundle::source::{BundleSource, DirSource, SourceError};
use kiln_updater::bundle::{MANIFEST, MANIFEST_ZST, SIGNATURES_ZST};
use std::fs;
use std::path::Path;
use std::sync::Mutex;

/// A directory source that logs what is read.
struct Logged(DirSource, Mutex<Vec<String>>);

impl BundleSource for Logged {
    fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>, SourceError> {
        self.1.lock().unwrap().push(name.to_string());
        self.0.read(name, cap)
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

fn policy() -> Policy {
    Policy {
        compatible: "test".into(),
        installed_sequence: None,
        allow_downgrade: false,
        now: 1,
        ..Policy::default()
    }
}

fn bundle(dir: &Path, key: &SecretKey) -> std::path::PathBuf {
    test_bundle(dir, "b", &noise(3 << 20, 7), key);
    dir.join("b")
}

fn open(b: &Path, key: &SecretKey) -> (Result<Vec<u8>, OpenError>, Vec<String>) {
    let src = Logged(DirSource(b.to_path_buf()), Mutex::new(Vec::new()));
    let r = open_verified(&src, &[key.public()], 1, &policy(), &Limits::default()).map(|v| v.bytes);
    (r, src.1.into_inner().unwrap())
}

/// Writes `data` as the compressed manifest, signed by `key`.
fn sign_zst(b: &Path, key: &SecretKey, data: &[u8]) {
    fs::write(b.join(MANIFEST_ZST), data).unwrap();
    let sigs = Signatures {
        signatures: vec![key.sign(data)],
    };
    fs::write(b.join(SIGNATURES_ZST), serde_json::to_vec(&sigs).unwrap()).unwrap();
}

#[test]
fn the_compressed_pair_is_preferred_and_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let b = bundle(dir.path(), &key);
    let (r, read) = open(&b, &key);
    assert_eq!(r.unwrap(), fs::read(b.join(MANIFEST)).unwrap());
    assert_eq!(read, [MANIFEST_ZST, SIGNATURES_ZST]);
    let (z, plain) = (
        fs::metadata(b.join(MANIFEST_ZST)).unwrap().len(),
        fs::metadata(b.join(MANIFEST)).unwrap().len(),
    );
    assert!(z * 3 < plain, "{z} compressed vs {plain}");
}

#[test]
fn a_bundle_without_it_opens_through_the_plain_pair() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let b = bundle(dir.path(), &key);
    fs::remove_file(b.join(MANIFEST_ZST)).unwrap();
    fs::remove_file(b.join(SIGNATURES_ZST)).unwrap();
    let (r, read) = open(&b, &key);
    assert_eq!(r.unwrap(), fs::read(b.join(MANIFEST)).unwrap());
    assert_eq!(read, [MANIFEST_ZST, MANIFEST, "manifest.sig"]);
}

#[test]
fn a_tampered_compressed_manifest_is_refused_before_decompression() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let b = bundle(dir.path(), &key);
    let mut z = fs::read(b.join(MANIFEST_ZST)).unwrap();
    let n = z.len();
    z[n / 2] ^= 1;
    fs::write(b.join(MANIFEST_ZST), z).unwrap();
    let (r, read) = open(&b, &key);
    assert!(
        matches!(
            r,
            Err(OpenError::Signature(SignatureError::BadSignature(_)))
        ),
        "{r:?}"
    );
    // The (intact) plain pair is not a way around it.
    assert_eq!(read, [MANIFEST_ZST, SIGNATURES_ZST]);
    // Nor is a missing signature file.
    fs::remove_file(b.join(SIGNATURES_ZST)).unwrap();
    assert!(matches!(
        open(&b, &key).0,
        Err(OpenError::Source(SourceError::NotFound { .. }))
    ));
}

#[test]
fn signed_garbage_and_a_decompression_bomb_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let b = bundle(dir.path(), &key);
    sign_zst(&b, &key, b"not zstd at all");
    let e = open(&b, &key).0.unwrap_err();
    assert!(matches!(e, OpenError::Decompress(_)), "{e:?}");
    // 9 MiB of zeros compress to a few hundred bytes; the cap is 8 MiB.
    let bomb = zstd::bulk::compress(&vec![b' '; 9 << 20], 19).unwrap();
    assert!(bomb.len() < 4096);
    sign_zst(&b, &key, &bomb);
    let e = open(&b, &key).0.unwrap_err();
    assert!(
        e.to_string()
            .contains("more than 8388608 bytes decompressed"),
        "{e}"
    );
}
