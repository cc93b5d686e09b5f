//! Every named case under tests/fixtures/bundles gets exactly its expected outcome. A refused
//! bundle is refused before anything is written (manifest-level cases) or before the payload
//! is complete and verified (chunk-level cases).

mod common;

use kiln_updater::bundle::keys::PublicKey;
use kiln_updater::bundle::keys::SignatureError;
use kiln_updater::bundle::manifest::Policy;
use kiln_updater::bundle::manifest::PolicyError;
use kiln_updater::bundle::open::{open_verified, Limits, OpenError};
use kiln_updater::bundle::source::{BundleSource, DirSource, KbundleSource, SourceError};
use kiln_updater::bundle::store::{pack_offsets, ChunkStore, PACK};
use kiln_updater::install::{verify_payload, write_payload, InstallError};
use std::fs;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn trusted() -> Vec<PublicKey> {
    ["trusted", "second"]
        .iter()
        .map(|k| {
            PublicKey::from_file(
                &fs::read_to_string(fixtures().join(format!("keys/{k}.pub"))).unwrap(),
            )
            .unwrap()
        })
        .collect()
}

fn policy() -> Policy {
    Policy {
        compatible: "kiln-fixture-x86_64".into(),
        installed_sequence: Some(10),
        allow_downgrade: false,
        now: 1_800_000_000,
        ..Policy::default()
    }
}

/// Opens and installs a bundle into fresh target files; returns the outcome class.
fn outcome(src: &dyn BundleSource, threshold: usize, limits: &Limits) -> String {
    let v = match open_verified(src, &trusted(), threshold, &policy(), limits) {
        Ok(v) => v,
        Err(e) => {
            return match e {
                OpenError::Source(SourceError::TooLarge { .. }) => "source:too-large",
                OpenError::Source(_) => "source:other",
                OpenError::Signature(SignatureError::BadSignature(_)) => "signature:bad",
                OpenError::Signature(SignatureError::UnknownKeys(_)) => "signature:unknown-key",
                OpenError::Signature(SignatureError::NotEnough { .. }) => "signature:not-enough",
                OpenError::Signature(SignatureError::Malformed(_)) => "signature:malformed",
                OpenError::Parse(_) => "parse",
                OpenError::Decompress(_) => "decompress",
                OpenError::Structure(_) => "structure",
                OpenError::Policy(PolicyError::Expired { .. }) => "policy:expired",
                OpenError::Policy(PolicyError::Downgrade { .. }) => "policy:downgrade",
                OpenError::Policy(PolicyError::BelowSeen { .. }) => "policy:below-seen",
                OpenError::Policy(PolicyError::CreatedBeforeFloor { .. }) => "policy:too-old",
                OpenError::Policy(PolicyError::WrongCompatible { .. }) => "policy:compatible",
            }
            .into()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(src, &v.manifest).unwrap();
    for (name, p) in v.manifest.payloads.named() {
        let target = common::empty_target(&dir.path().join(name), 1 << 20);
        let base = 4096; // payloads go at an offset, as into a partition of a disk
        match write_payload(
            &store,
            name,
            p,
            &target,
            base,
            (1 << 20) - base,
            &kiln_updater::install::WriteOptions::default(),
        ) {
            Ok(stats) => assert_eq!(stats.written, p.size),
            Err(InstallError::Corrupt { .. }) => return "chunk:corrupt".into(),
            Err(InstallError::Fetch {
                source: SourceError::NotFound { .. },
                ..
            }) => return "chunk:missing".into(),
            Err(e) => return format!("install:{e}"),
        }
        verify_payload(name, p, &target, base).unwrap();
    }
    "ok".into()
}

fn parse_expect(dir: &Path) -> (String, usize, Limits) {
    let text = fs::read_to_string(dir.join("expect")).unwrap();
    let mut words = text.split_whitespace();
    let class = words.next().unwrap().to_string();
    let mut threshold = 1;
    let mut limits = Limits::default();
    for w in words {
        match w.split_once('=') {
            Some(("threshold", n)) => threshold = n.parse().unwrap(),
            Some(("manifest-cap", n)) => limits.manifest = n.parse().unwrap(),
            _ => panic!("unknown option {w} in {}", dir.display()),
        }
    }
    (class, threshold, limits)
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(fixtures().join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn every_fixture_case_has_its_expected_outcome() {
    let cases = cases();
    assert!(
        cases.len() >= 14,
        "fixtures missing: run the make_fixtures example"
    );
    let mut failures = Vec::new();
    for dir in cases {
        let (want, threshold, limits) = parse_expect(&dir);
        let got = outcome(&DirSource(dir.clone()), threshold, &limits);
        if got != want {
            failures.push(format!(
                "{}: expected {want}, got {got}",
                dir.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kbundle_files_behave_like_directories() {
    use kiln_updater::bundle::writer::pack;
    let tmp = tempfile::tempdir().unwrap();
    for case in ["valid", "tampered-chunk", "bad-signature"] {
        let dir = fixtures().join("bundles").join(case);
        let file = tmp.path().join(format!("{case}.kbundle"));
        pack(&dir, &file).unwrap();
        let (want, threshold, limits) = parse_expect(&dir);
        assert_eq!(
            outcome(&KbundleSource::open(&file).unwrap(), threshold, &limits),
            want,
            "{case}"
        );
    }
}

#[test]
fn a_fresh_bundle_of_the_fixture_payloads_verifies_and_installs() {
    use kiln_updater::bundle::keys::SecretKey;
    use kiln_updater::bundle::writer::{write_bundle, BootFiles, BundleInfo, PayloadFiles};
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes())
        .collect();
    for n in ["root", "kernel", "initrd"] {
        fs::write(tmp.path().join(n), &data[..data.len() / 2]).unwrap();
    }
    let key =
        SecretKey::from_file(&fs::read_to_string(fixtures().join("keys/trusted.key")).unwrap())
            .unwrap();
    let out = tmp.path().join("bundle");
    let p = |n: &str| tmp.path().join(n);
    let (r, k, i) = (p("root"), p("kernel"), p("initrd"));
    let m = write_bundle(
        PayloadFiles {
            root: &r,
            boot: BootFiles::Kernel {
                kernel: &k,
                initrd: &i,
            },
        },
        &BundleInfo {
            compatible: "kiln-fixture-x86_64".into(),
            version: "3".into(),
            sequence: 12,
            created: 0,
            expires: 4_000_000_000,
            root_verity: None,
        },
        &[&key],
        &out,
    )
    .unwrap();
    assert!(
        m.payloads.root.chunks.len() > 2,
        "a 600 KB payload is several chunks"
    );
    // Identical payloads share chunks: the pack holds each chunk once, back to back.
    let distinct = pack_offsets(&m);
    assert_eq!(distinct.len(), m.payloads.root.chunks.len());
    assert_eq!(
        fs::metadata(out.join(PACK)).unwrap().len(),
        distinct.values().map(|&(_, n)| n).sum::<u64>()
    );
    assert!(!out.join("chunks").exists());
    assert_eq!(
        outcome(&DirSource(out.clone()), 1, &Limits::default()),
        "ok"
    );
    assert!(
        write_bundle(
            PayloadFiles {
                root: &r,
                boot: BootFiles::Kernel {
                    kernel: &k,
                    initrd: &i
                },
            },
            &BundleInfo {
                compatible: "x".into(),
                version: "3".into(),
                sequence: 12,
                created: 0,
                expires: 1,
                root_verity: None,
            },
            &[&key],
            &out
        )
        .is_err(),
        "refuses to overwrite"
    );
}

#[test]
fn chunks_are_fetched_in_parallel_with_bounded_concurrency() {
    use kiln_updater::bundle::keys::SecretKey;
    use kiln_updater::install::{WriteOptions, PARALLEL};
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Slow {
        inner: DirSource,
        now: AtomicUsize,
        max: AtomicUsize,
    }
    impl BundleSource for Slow {
        fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>, SourceError> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            let r = self.inner.read(name, cap);
            self.now.fetch_sub(1, Ordering::SeqCst);
            r
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }
    // A root of 2 MiB of noise: about 30 chunks, more than any worker count below, one file
    // each (a packed bundle streams its chunks over one request, decoded in parallel).
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let m = common::test_bundle_as(
        dir.path(),
        "b",
        &common::noise(2 << 20, 11),
        &key,
        kiln_updater::bundle::writer::Layout::Files,
    );
    let root = &m.payloads.root;
    assert!(root.chunks.len() >= 16, "{} chunks", root.chunks.len());
    let src = Slow {
        inner: DirSource(dir.path().join("b")),
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    };
    for (parallel, at_least) in [(1, 1), (3, 2), (PARALLEL, 2)] {
        let target = common::empty_target(&dir.path().join(format!("t{parallel}")), 0);
        src.max.store(0, Ordering::SeqCst);
        let o = WriteOptions {
            parallel,
            ..WriteOptions::default()
        };
        write_payload(
            &ChunkStore::files(&src),
            "root",
            root,
            &target,
            0,
            4 << 20,
            &o,
        )
        .unwrap();
        verify_payload("root", root, &target, 0).unwrap();
        let max = src.max.load(Ordering::SeqCst);
        assert!(
            (at_least..=parallel).contains(&max),
            "parallel {parallel}: {max} fetches at once"
        );
    }
}

/// Version and compatible strings that could inject loader-entry or grubenv lines: `kiln
/// bundle` (`write_bundle`) refuses them before creating anything, and a device refuses a
/// validly signed manifest carrying them before anything is written (the outcome is decided
/// in `open_verified`, ahead of `write_payload`).
#[test]
fn labels_outside_their_character_set_are_refused_by_the_writer_and_the_device() {
    use kiln_updater::bundle::keys::{SecretKey, Signatures};
    use kiln_updater::bundle::manifest::Manifest;
    use kiln_updater::bundle::writer::{write_bundle, BootFiles, BundleInfo, PayloadFiles};
    use kiln_updater::bundle::{MANIFEST, MANIFEST_ZST, SIGNATURES, SIGNATURES_ZST};
    let tmp = tempfile::tempdir().unwrap();
    let data = common::noise(200_000, 5);
    for n in ["root", "kernel", "initrd"] {
        fs::write(tmp.path().join(n), &data).unwrap();
    }
    let key =
        SecretKey::from_file(&fs::read_to_string(fixtures().join("keys/trusted.key")).unwrap())
            .unwrap();
    let p = |n: &str| tmp.path().join(n);
    let (r, k, i) = (p("root"), p("kernel"), p("initrd"));
    let files = PayloadFiles {
        root: &r,
        boot: BootFiles::Kernel {
            kernel: &k,
            initrd: &i,
        },
    };
    let info = |version: &str, compatible: &str| BundleInfo {
        compatible: compatible.into(),
        version: version.into(),
        sequence: 12,
        created: 1_700_000_000,
        expires: 4_000_000_000,
        root_verity: None,
    };
    let good = tmp.path().join("good");
    write_bundle(files, &info("3.0.0", "kiln-fixture-x86_64"), &[&key], &good).unwrap();
    assert_eq!(
        outcome(&DirSource(good.clone()), 1, &Limits::default()),
        "ok"
    );

    let long = "3".repeat(300);
    let bad_labels = [
        ("version", "3.0.0\ntitle evil"),
        ("version", "3.0.0=x"),
        ("version", long.as_str()),
        ("compatible", "kiln-fixture-x86_64\nx"),
    ];
    for (n, (field, bad)) in bad_labels.into_iter().enumerate() {
        // The writer: an error naming the field, and no directory (final or temporary).
        let out = tmp.path().join(format!("refused-{n}"));
        let i = if field == "version" {
            info(bad, "kiln-fixture-x86_64")
        } else {
            info("3.0.0", bad)
        };
        let e = write_bundle(files, &i, &[&key], &out).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains(field), "{e}");
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("refused"))
            .collect();
        assert!(left.is_empty(), "{bad:?}: left {left:?}");

        // The device: the same label in a manifest the trusted key signed.
        let forged = tmp.path().join(format!("forged-{n}"));
        fs::create_dir(&forged).unwrap();
        fs::copy(good.join(PACK), forged.join(PACK)).unwrap();
        let mut m: Manifest =
            serde_json::from_slice(&fs::read(good.join(MANIFEST)).unwrap()).unwrap();
        if field == "version" {
            m.version = bad.into();
        } else {
            m.compatible = bad.into();
        }
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        fs::write(forged.join(MANIFEST), &bytes).unwrap();
        let sigs = Signatures {
            signatures: vec![key.sign(&bytes)],
        };
        fs::write(
            forged.join(SIGNATURES),
            serde_json::to_vec_pretty(&sigs).unwrap(),
        )
        .unwrap();
        assert!(!forged.join(MANIFEST_ZST).exists() && !forged.join(SIGNATURES_ZST).exists());
        assert_eq!(
            outcome(&DirSource(forged.clone()), 1, &Limits::default()),
            "structure",
            "{bad:?}"
        );
        let e = open_verified(
            &DirSource(forged),
            &trusted(),
            1,
            &policy(),
            &Limits::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains(&format!("manifest field {field}")), "{e}");
    }
}

/// Without a read-back, the whole payload's digest computed as it is written is what proves the
/// chunks arrived complete and in order: a payload whose chunks each verify but whose order or
/// whole digest differs from what was signed fails the install, and is not synced as done.
#[test]
fn chunks_that_each_verify_in_the_wrong_order_fail_the_whole_digest() {
    use kiln_updater::bundle::keys::SecretKey;
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let m = common::test_bundle(dir.path(), "b", &common::noise(1 << 20, 5), &key);
    let dir_src = DirSource(dir.path().join("b"));
    let src = ChunkStore::open(&dir_src, &m).unwrap();
    assert!(src.is_packed());
    let good = &m.payloads.root;
    assert!(good.chunks.len() >= 3, "{} chunks", good.chunks.len());
    let target = |n: &str| common::empty_target(&dir.path().join(n), 0);
    let o = kiln_updater::install::WriteOptions::default();

    // The first two chunks swapped (offsets re-tiled): every chunk digest still matches.
    let mut swapped = good.clone();
    swapped.chunks.swap(0, 1);
    swapped.chunks[0].offset = 0;
    swapped.chunks[1].offset = u64::from(swapped.chunks[0].length);
    let e = write_payload(&src, "root", &swapped, &target("t1"), 0, 2 << 20, &o).unwrap_err();
    match e {
        InstallError::Verify {
            expected, actual, ..
        } => {
            assert_eq!(expected, good.sha256);
            assert_ne!(actual, good.sha256);
        }
        e => panic!("{e}"),
    }

    // A whole digest that no order of these chunks gives.
    let mut wrong = good.clone();
    wrong.sha256 = "00".repeat(32);
    let e = write_payload(&src, "root", &wrong, &target("t2"), 0, 2 << 20, &o).unwrap_err();
    assert!(
        matches!(&e, InstallError::Verify { actual, .. } if *actual == good.sha256),
        "{e}"
    );

    // The signed payload itself installs, and its digest as written is the manifest's.
    let t = target("t3");
    let w = write_payload(&src, "root", good, &t, 0, 2 << 20, &o).unwrap();
    assert_eq!(w.sha256, good.sha256);
    assert_eq!(verify_payload("root", good, &t, 0).unwrap(), good.sha256);
}
