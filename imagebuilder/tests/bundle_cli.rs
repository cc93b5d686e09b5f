//! `kiln keygen`, trusted keys baked into the image, and `kiln bundle` from a build.

mod common;

use common::*;
use kiln_updater::bundle::keys::PublicKey;
use kiln_updater::bundle::manifest::Policy;
use kiln_updater::bundle::open::{open_verified, Limits};
use kiln_updater::bundle::source::{DirSource, KbundleSource};
use std::fs;
use std::os::unix::fs::PermissionsExt;

#[test]
fn keygen_build_with_keys_and_bundle() {
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("dev");
    let o = kiln(&["keygen".as_ref(), "--out".as_ref(), prefix.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let secret = d.path().join("dev.key");
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
    let spec = d.path().join("image.toml");
    fs::write(
        &spec,
        spec_text(
            "",
            &format!(
                "[update]\nkeys = [\"{}\"]\n",
                d.path().join("dev.pub").display()
            ),
        ),
    )
    .unwrap();
    let out = d.path().join("out");
    let o = kiln_build(&spec, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = d.path().join("tree");
    let (ok, msg) = tool(
        "fsck.erofs",
        &[
            &format!("--extract={}", tree.display()),
            out.join("root.img").to_str().unwrap(),
        ],
    );
    assert!(ok, "{msg}");
    let baked = fs::read_to_string(tree.join(format!("usr/lib/kiln/keys/{}.pub", public.key_id())))
        .unwrap();
    assert_eq!(PublicKey::from_file(&baked).unwrap(), public);

    // A bundle of that build verifies against the key, as a directory and as a .kbundle.
    let bundle = d.path().join("bundle");
    let kb = d.path().join("v1.kbundle");
    let o = kiln(&[
        "bundle".as_ref(),
        out.as_os_str(),
        "--key".as_ref(),
        secret.as_os_str(),
        "--out".as_ref(),
        bundle.as_os_str(),
        "--sequence".as_ref(),
        "7".as_ref(),
        "--kbundle".as_ref(),
        kb.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let policy = Policy {
        compatible: "t-x86_64".into(),
        installed_sequence: Some(6),
        allow_downgrade: false,
        now: 1_800_000_000,
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
        &[public],
        1,
        &policy,
        &Limits::default()
    )
    .is_ok());

    // The output directory is never overwritten.
    let o = kiln(&[
        "bundle".as_ref(),
        out.as_os_str(),
        "--key".as_ref(),
        secret.as_os_str(),
        "--out".as_ref(),
        bundle.as_os_str(),
        "--sequence".as_ref(),
        "8".as_ref(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}
