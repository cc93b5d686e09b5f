//! Regenerates `tests/fixtures/` (keys and the named bundle cases; see its INDEX.md):
//!
//!     cargo run -p kiln-updater --example make_fixtures
//!
//! Everything is deterministic (fixed key seeds, fixed payloads), so the output only changes
//! when this program or the bundle format does.

use kiln_updater::bundle::keys::{SecretKey, Signatures};
use kiln_updater::bundle::manifest::Manifest;
use kiln_updater::bundle::writer::{write_bundle_as, BootFiles, BundleInfo, Layout, PayloadFiles};
use kiln_updater::bundle::{chunk_path, MANIFEST, SIGNATURES};
use std::fs;
use std::path::{Path, PathBuf};

const VALID_EXPIRES: u64 = 4_000_000_000;

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half random, half repetitive, so chunks compress a little.
            if (i / 4096) % 2 == 0 {
                x as u8
            } else {
                (i % 251) as u8
            }
        })
        .collect()
}

fn info(version: &str, sequence: u64) -> BundleInfo {
    BundleInfo {
        compatible: "kiln-fixture-x86_64".into(),
        version: version.into(),
        sequence,
        created: 1_700_000_000,
        expires: VALID_EXPIRES,
        root_verity: None,
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let _ = fs::remove_dir_all(&root);
    let keys = root.join("keys");
    fs::create_dir_all(&keys).unwrap();
    let trusted = SecretKey::from_seed([0x11; 32]);
    let second = SecretKey::from_seed([0x22; 32]);
    let stranger = SecretKey::from_seed([0x33; 32]);
    for (name, k) in [
        ("trusted", &trusted),
        ("second", &second),
        ("stranger", &stranger),
    ] {
        fs::write(keys.join(format!("{name}.key")), k.to_file()).unwrap();
        fs::write(keys.join(format!("{name}.pub")), k.public().to_file()).unwrap();
    }

    let work = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = [
        ("root.img", 1, 96 << 10),
        ("vmlinuz", 2, 20 << 10),
        ("initrd.img", 3, 12 << 10),
    ]
    .iter()
    .map(|(n, seed, len)| {
        let p = work.path().join(n);
        fs::write(&p, payload(*seed, *len)).unwrap();
        p
    })
    .collect();
    let pf = PayloadFiles {
        root: &files[0],
        boot: BootFiles::Kernel {
            kernel: &files[1],
            initrd: &files[2],
        },
    };
    let cases = root.join("bundles");
    fs::create_dir_all(&cases).unwrap();
    let make = |name: &str, info: &BundleInfo, keys: &[&SecretKey], expect: &str| -> PathBuf {
        let dir = cases.join(name);
        // One file per chunk: the layout updaters still read (packed bundles are made by
        // the tests themselves).
        write_bundle_as(pf, info, keys, &dir, Layout::Files).unwrap();
        fs::write(dir.join("expect"), format!("{expect}\n")).unwrap();
        dir
    };
    let resign = |dir: &Path, m: &Manifest, keys: &[&SecretKey]| {
        let bytes = serde_json::to_vec_pretty(m).unwrap();
        fs::write(dir.join(MANIFEST), &bytes).unwrap();
        let sigs = Signatures {
            signatures: keys.iter().map(|k| k.sign(&bytes)).collect(),
        };
        fs::write(
            dir.join(SIGNATURES),
            serde_json::to_vec_pretty(&sigs).unwrap(),
        )
        .unwrap();
    };
    let read_manifest = |dir: &Path| -> Manifest {
        serde_json::from_slice(&fs::read(dir.join(MANIFEST)).unwrap()).unwrap()
    };

    make("valid", &info("2.0.0", 11), &[&trusted], "ok");
    make(
        "valid-two-signers",
        &info("2.0.0", 11),
        &[&trusted, &second],
        "ok threshold=2",
    );

    let d = make(
        "bad-signature",
        &info("2.0.0", 11),
        &[&trusted],
        "signature:bad",
    );
    let mut m = fs::read(d.join(MANIFEST)).unwrap();
    let pos = m.windows(7).position(|w| w == b"\"2.0.0\"").unwrap() + 1; // "2.0.0" → "3.0.0"
    m[pos] = b'3';
    fs::write(d.join(MANIFEST), m).unwrap();

    make(
        "unknown-key",
        &info("2.0.0", 11),
        &[&stranger],
        "signature:unknown-key",
    );
    make(
        "duplicate-signatures",
        &info("2.0.0", 11),
        &[&trusted, &trusted],
        "signature:not-enough threshold=2",
    );

    let d = make(
        "tampered-chunk",
        &info("2.0.0", 11),
        &[&trusted],
        "chunk:corrupt",
    );
    let c = read_manifest(&d).payloads.root.chunks[1].clone();
    let fake = zstd::bulk::compress(&vec![0xAA; c.length as usize], 3).unwrap();
    fs::write(d.join(chunk_path(&c.sha256)), fake).unwrap();

    let d = make(
        "truncated-chunk",
        &info("2.0.0", 11),
        &[&trusted],
        "chunk:corrupt",
    );
    let c = read_manifest(&d).payloads.root.chunks[0].clone();
    let p = d.join(chunk_path(&c.sha256));
    let z = fs::read(&p).unwrap();
    fs::write(&p, &z[..z.len() / 2]).unwrap();

    let d = make(
        "missing-chunk",
        &info("2.0.0", 11),
        &[&trusted],
        "chunk:missing",
    );
    let c = read_manifest(&d)
        .payloads
        .kernel
        .expect("a kernel payload")
        .chunks[0]
        .clone();
    fs::remove_file(d.join(chunk_path(&c.sha256))).unwrap();

    make(
        "oversized-manifest",
        &info("2.0.0", 11),
        &[&trusted],
        "source:too-large manifest-cap=1024",
    );
    make(
        "expired",
        &BundleInfo {
            expires: 1_750_000_000,
            root_verity: None,
            ..info("2.0.0", 11)
        },
        &[&trusted],
        "policy:expired",
    );
    make(
        "downgrade",
        &info("0.9.0", 9),
        &[&trusted],
        "policy:downgrade",
    );
    make(
        "same-sequence",
        &info("1.0.0", 10),
        &[&trusted],
        "policy:downgrade",
    );
    make(
        "wrong-compatible",
        &BundleInfo {
            compatible: "other-board-arm64".into(),
            ..info("2.0.0", 11)
        },
        &[&trusted],
        "policy:compatible",
    );

    let d = make(
        "inconsistent-chunks",
        &info("2.0.0", 11),
        &[&trusted],
        "structure",
    );
    let mut m = read_manifest(&d);
    m.payloads.root.chunks[1].offset += 1; // signed, but chunks no longer tile the payload
    resign(&d, &m, &[&trusted]);

    fs::write(root.join("INDEX.md"), INDEX).unwrap();
    println!("wrote {}", root.display());
}

const INDEX: &str = "# Bundle fixtures\n\
\n\
Generated by `cargo run -p kiln-updater --example make_fixtures`; do not edit by hand.\n\
\n\
`keys/`: `trusted` (the device trusts it), `second` (also trusted, for thresholds), `stranger`\n\
(not trusted). Each `bundles/<case>/` is a bundle directory plus `expect`: the outcome, then\n\
options (`threshold=N`, `manifest-cap=BYTES`). The device policy in the tests: compatible\n\
`kiln-fixture-x86_64`, installed sequence 10, now = 1800000000.\n\
\n\
| case | what is wrong | expect |\n\
|---|---|---|\n\
| valid | nothing | ok |\n\
| valid-two-signers | nothing; two trusted keys sign, threshold 2 | ok |\n\
| bad-signature | one manifest byte changed after signing | signature:bad |\n\
| unknown-key | signed by an untrusted key only | signature:unknown-key |\n\
| duplicate-signatures | the same key signs twice, threshold 2 | signature:not-enough |\n\
| tampered-chunk | a root chunk replaced by other data of the same length | chunk:corrupt |\n\
| truncated-chunk | a root chunk file cut in half | chunk:corrupt |\n\
| missing-chunk | a kernel chunk file removed | chunk:missing |\n\
| oversized-manifest | manifest larger than the cap (1024 bytes in this case) | source:too-large |\n\
| expired | expiry before now | policy:expired |\n\
| downgrade | sequence 9 < installed 10 | policy:downgrade |\n\
| same-sequence | sequence 10 = installed 10 | policy:downgrade |\n\
| wrong-compatible | compatible string of another board | policy:compatible |\n\
| inconsistent-chunks | validly signed, but chunks do not tile the root payload | structure |\n\
";
