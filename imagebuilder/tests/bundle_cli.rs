//! `kiln keygen`, trusted keys baked into the image, and `kiln bundle` from a build.

mod common;

use common::*;
use kiln_updater::bundle::keys::PublicKey;
use kiln_updater::bundle::manifest::Policy;
use kiln_updater::bundle::open::{open_verified, Limits};
use kiln_updater::bundle::source::{BundleSource, DirSource, KbundleSource};
use kiln_updater::bundle::store::{ChunkStore, PACK};
use kiln_updater::install::{write_payload, WriteOptions};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `kiln keygen` into `dir/dev.{key,pub}` and a spec trusting that key at `dir/image.toml`;
/// returns (secret key, spec).
fn keyed_spec(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let prefix = dir.join("dev");
    let o = kiln(&["keygen".as_ref(), "--out".as_ref(), prefix.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spec = dir.join("image.toml");
    fs::write(
        &spec,
        spec_text(
            "",
            &format!("[update]\nkeys = [\"{}\"]\n", dir.join("dev.pub").display()),
        ),
    )
    .unwrap();
    (dir.join("dev.key"), spec)
}

/// The root image of the build at `out`, extracted into `tree` with fsck.erofs.
fn extract_root(out: &std::path::Path, tree: &std::path::Path) {
    let (ok, msg) = tool(
        "fsck.erofs",
        &[
            &format!("--extract={}", tree.display()),
            out.join("root.img").to_str().unwrap(),
        ],
    );
    assert!(ok, "{msg}");
}

/// `kiln bundle BUILD --key SECRET --out OUT [--sequence N] EXTRA…`.
fn bundle_cmd(
    out: &Path,
    secret: &Path,
    to: &Path,
    sequence: Option<&str>,
    extra: &[&std::ffi::OsStr],
) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "bundle".as_ref(),
        out.as_os_str(),
        "--key".as_ref(),
        secret.as_os_str(),
        "--out".as_ref(),
        to.as_os_str(),
    ];
    if let Some(n) = sequence {
        args.extend([std::ffi::OsStr::new("--sequence"), std::ffi::OsStr::new(n)]);
    }
    args.extend_from_slice(extra);
    kiln(&args)
}

#[test]
fn keygen_build_with_keys_and_bundle() {
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("dev");
    let (secret, spec) = keyed_spec(d.path());
    assert_eq!(
        fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let public =
        PublicKey::from_file(&fs::read_to_string(d.path().join("dev.pub")).unwrap()).unwrap();
    // keygen never overwrites a key.
    assert!(
        !kiln(&["keygen".as_ref(), "--out".as_ref(), prefix.as_os_str()])
            .status
            .success()
    );

    // An image trusting that key carries it in its read-only root.
    let out = d.path().join("out");
    let o = kiln_build(&spec, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = d.path().join("tree");
    extract_root(&out, &tree);
    let baked = fs::read_to_string(tree.join(format!("usr/lib/kiln/keys/{}.pub", public.key_id())))
        .unwrap();
    assert_eq!(PublicKey::from_file(&baked).unwrap(), public);

    // A bundle of that build verifies against the key, as a directory and as a .kbundle.
    let bundle = d.path().join("bundle");
    let kb = d.path().join("v1.kbundle");
    let o = bundle_cmd(
        &out,
        &secret,
        &bundle,
        Some("7"),
        &["--kbundle".as_ref(), kb.as_os_str()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let policy = Policy {
        compatible: "t-x86_64".into(),
        installed_sequence: Some(6),
        allow_downgrade: false,
        now: 1_800_000_000,
        ..Policy::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let policy = Policy { now, ..policy };
    let v = open_verified(
        &DirSource(bundle.clone()),
        std::slice::from_ref(&public),
        1,
        &policy,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!((v.manifest.version.as_str(), v.manifest.sequence), ("1", 7));
    // The digest an OSUpgrade pins (`manifestDigest`) is printed, and is that of the exact
    // manifest bytes the device verifies.
    let printed = String::from_utf8_lossy(&o.stdout);
    let digest = kiln_updater::bundle::expected::manifest_digest(&v.bytes);
    assert!(
        printed.contains(&format!("manifest {digest}\n")),
        "{printed}"
    );
    let pinned = kiln_updater::bundle::expected::Expected {
        version: Some("1".into()),
        manifest_digest: Some(digest),
    };
    assert_eq!(pinned.check(&v.manifest, &v.bytes), Ok(()));
    assert_eq!(
        v.manifest.payloads.root.size,
        fs::metadata(out.join("root.img")).unwrap().len()
    );
    assert!(open_verified(
        &KbundleSource::open(&kb).unwrap(),
        std::slice::from_ref(&public),
        1,
        &policy,
        &Limits::default()
    )
    .is_ok());

    // The chunks are packed; the root installs from the directory and from the .kbundle
    // (the pack inside the tar) alike. `--chunk-files` stores one file per chunk instead, for
    // older updaters, and installs the same root.
    assert!(bundle.join(PACK).is_file() && !bundle.join("chunks").exists());
    let files = d.path().join("bundle-files");
    let o = bundle_cmd(
        &out,
        &secret,
        &files,
        Some("7"),
        &["--chunk-files".as_ref()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!files.join(PACK).exists() && files.join("chunks").is_dir());
    let want = imagebuilder::pipeline::sha256_file(&out.join("root.img")).unwrap();
    let sources: [(&str, Box<dyn BundleSource>, bool); 3] = [
        ("directory", Box::new(DirSource(bundle.clone())), true),
        (
            ".kbundle",
            Box::new(KbundleSource::open(&kb).unwrap()),
            true,
        ),
        ("--chunk-files", Box::new(DirSource(files.clone())), false),
    ];
    for (case, src, packed) in sources {
        let v = open_verified(
            src.as_ref(),
            std::slice::from_ref(&public),
            1,
            &policy,
            &Limits::default(),
        )
        .unwrap();
        let store = ChunkStore::open(src.as_ref(), &v.manifest).unwrap();
        assert_eq!(store.is_packed(), packed, "{case}");
        let root = &v.manifest.payloads.root;
        let t = tempfile::tempfile().unwrap();
        let w = write_payload(
            &store,
            "root",
            root,
            &t,
            0,
            root.size,
            &WriteOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(
            (w.written, w.sha256.as_str()),
            (root.size, want.as_str()),
            "{case}"
        );
    }

    // The output directory is never overwritten.
    let o = bundle_cmd(&out, &secret, &bundle, Some("8"), &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

/// `kiln build --sequence N` bakes the image's own floor into its release file (with the build
/// time from SOURCE_DATE_EPOCH); `kiln bundle` of it carries N without being told, refuses
/// another number, and refuses labels a device would refuse — each before writing anything.
#[test]
fn a_build_bakes_its_sequence_and_bundles_of_it_carry_it() {
    let d = tempfile::tempdir().unwrap();
    let (secret, spec) = keyed_spec(d.path());
    let out = d.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "build".as_ref(),
            spec.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
        .args(["--sequence", "5"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("KILN_INIT", init_bin())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = d.path().join("tree");
    extract_root(&out, &tree);
    let release = fs::read_to_string(tree.join("usr/lib/kiln/release")).unwrap();
    assert!(
        release.contains("KILN_SEQUENCE=5\n") && release.contains("KILN_BUILT=1700000000\n"),
        "{release}"
    );

    let bundle = |name: &str, extra: &[&str]| {
        let dir = d.path().join(name);
        let extra: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
        (bundle_cmd(&out, &secret, &dir, None, &extra), dir)
    };
    let (o, dir) = bundle("carried", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("sequence 5,"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(dir.join("manifest.json").is_file());
    let (o, dir) = bundle("contradicted", &["--sequence", "4"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("built with sequence 5"),
        "{err}"
    );
    assert!(!dir.exists());

    // A version a device would refuse (here put into build.json after the build).
    let info = out.join("build.json");
    let text = fs::read_to_string(&info).unwrap();
    fs::write(
        &info,
        text.replace("\"version\": \"1\"", "\"version\": \"1\\ntitle x\""),
    )
    .unwrap();
    let (o, dir) = bundle("injected", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("version"), "{err}");
    assert!(!dir.exists());
    let left: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("injected") || n.contains("contradicted"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
