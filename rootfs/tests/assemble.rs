//! Root tree assembly from tarballs and OCI layouts, including hostile archives.

use kiln_rootfs::{oci, tarball, RootfsError};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use tar::{EntryType, Header};

/// Appends an entry whose name is written raw (so `..` and absolute names can be made).
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    mode: u32,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = Header::new_gnu();
    let n = name.as_bytes();
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A cap no test archive reaches (the cap has its own test).
fn no_cap() -> tarball::Cap {
    tarball::Cap::new(u64::MAX)
}

fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().unwrap()
}

#[test]
fn every_entry_type_is_extracted() {
    let data = tar_of(|b| {
        raw_entry(b, "./usr/", EntryType::Directory, 0o755, None, b"");
        raw_entry(b, "./usr/bin/", EntryType::Directory, 0o755, None, b"");
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_size(5);
        b.append_data(&mut h, "usr/bin/tool", &b"hello"[..])
            .unwrap();
        raw_entry(
            b,
            "usr/bin/tool-link",
            EntryType::Link,
            0,
            Some("usr/bin/tool"),
            b"",
        );
        raw_entry(b, "bin", EntryType::Symlink, 0o777, Some("/usr/bin"), b"");
        raw_entry(b, "dev/null", EntryType::Char, 0o666, None, b"");
        raw_entry(b, "run/fifo", EntryType::Fifo, 0o600, None, b"");
    });
    let d = tempfile::tempdir().unwrap();
    let stats = tarball::extract(&data[..], d.path(), "t.tar", false, &mut no_cap()).unwrap();
    assert_eq!(
        (stats.files, stats.hardlinks, stats.symlinks, stats.specials),
        (1, 1, 1, 2)
    );
    let tool = fs::metadata(d.path().join("usr/bin/tool")).unwrap();
    assert_eq!(
        tool.permissions().mode() & 0o7777,
        0o4755,
        "set-uid bit kept after chown"
    );
    assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
    let link = fs::metadata(d.path().join("usr/bin/tool-link")).unwrap();
    assert_eq!(link.ino(), tool.ino());
    assert_eq!(
        fs::read_link(d.path().join("bin")).unwrap(),
        Path::new("/usr/bin")
    );
    assert!(fs::symlink_metadata(d.path().join("dev/null"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(fs::symlink_metadata(d.path().join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

fn assert_escape(r: Result<tarball::ExtractStats, RootfsError>, member: &str) {
    match r {
        Err(RootfsError::Escape { member: m, .. }) => assert_eq!(m, member),
        other => panic!("expected an escape refusal for {member}, got {other:?}"),
    }
}

#[test]
fn dotdot_members_are_refused() {
    let data = tar_of(|b| raw_entry(b, "a/../../outside", EntryType::Regular, 0o644, None, b"x"));
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    fs::create_dir(&root).unwrap();
    assert_escape(
        tarball::extract(&data[..], &root, "t.tar", false, &mut no_cap()),
        "a/../../outside",
    );
    assert!(!d.path().join("outside").exists());
}

#[test]
fn writing_through_an_absolute_symlink_is_refused() {
    let host = tempfile::tempdir().unwrap();
    let target = host.path().to_str().unwrap().to_string();
    let data = tar_of(|b| {
        raw_entry(b, "evil", EntryType::Symlink, 0o777, Some(&target), b"");
        raw_entry(b, "evil/pwned", EntryType::Regular, 0o644, None, b"x");
    });
    let d = tempfile::tempdir().unwrap();
    assert_escape(
        tarball::extract(&data[..], d.path(), "t.tar", false, &mut no_cap()),
        "evil/pwned",
    );
    assert!(
        !host.path().join("pwned").exists(),
        "wrote through the symlink"
    );
}

#[test]
fn hard_link_out_of_the_root_is_refused() {
    let data = tar_of(|b| {
        raw_entry(
            b,
            "passwd",
            EntryType::Link,
            0,
            Some("../../etc/passwd"),
            b"",
        )
    });
    let d = tempfile::tempdir().unwrap();
    assert_escape(
        tarball::extract(&data[..], d.path(), "t.tar", false, &mut no_cap()),
        "passwd",
    );
}

/// Writes an OCI image layout with the given layer tars (plain, or gzip by its magic).
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let hex = hex::encode(Sha256::digest(data));
        fs::write(blobs.join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|l| {
            let (d, n) = put(l);
            let media = if l.starts_with(&[0x1f, 0x8b]) {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            format!(r#"{{"mediaType":"{media}","digest":"{d}","size":{n}}}"#)
        })
        .collect();
    let (cfg, cfg_n) = put(b"{}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":{cfg_n}}},"layers":[{}]}}"#,
        layer_descs.join(",")
    );
    let (m, mn) = put(manifest.as_bytes());
    fs::write(
        dir.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{mn}}}]}}"#),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn oci_layers_apply_in_order_with_whiteouts_and_opaque_dirs() {
    let l1 = tar_of(|b| {
        raw_entry(b, "a/", EntryType::Directory, 0o755, None, b"");
        raw_entry(b, "a/old1", EntryType::Regular, 0o644, None, b"1");
        raw_entry(b, "a/old2", EntryType::Regular, 0o644, None, b"2");
        raw_entry(b, "b/", EntryType::Directory, 0o755, None, b"");
        raw_entry(b, "b/gone", EntryType::Regular, 0o644, None, b"g");
        raw_entry(b, "b/stays", EntryType::Regular, 0o644, None, b"s");
        raw_entry(b, "c", EntryType::Regular, 0o644, None, b"v1");
    });
    let l2 = tar_of(|b| {
        raw_entry(b, "a/", EntryType::Directory, 0o755, None, b"");
        raw_entry(b, "a/.wh..wh..opq", EntryType::Regular, 0o644, None, b"");
        raw_entry(b, "a/new", EntryType::Regular, 0o644, None, b"n");
        raw_entry(b, "b/.wh.gone", EntryType::Regular, 0o644, None, b"");
        raw_entry(b, "c", EntryType::Regular, 0o644, None, b"v2");
    });
    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), &[l1, l2]);
    let root = tempfile::tempdir().unwrap();
    let stats = oci::apply_layout(layout.path(), root.path(), &mut no_cap()).unwrap();
    assert_eq!(stats.whiteouts, 2);
    let mut a: Vec<_> = fs::read_dir(root.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    a.sort();
    assert_eq!(
        a,
        ["new"],
        "opaque dir must hide the lower layer's files only"
    );
    assert!(!root.path().join("b/gone").exists());
    assert!(root.path().join("b/stays").exists());
    assert_eq!(fs::read(root.path().join("c")).unwrap(), b"v2");
}

#[test]
fn oci_layer_escaping_the_root_is_refused() {
    let l1 = tar_of(|b| raw_entry(b, "../../oci-escape", EntryType::Regular, 0o644, None, b"x"));
    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), &[l1]);
    let root = tempfile::tempdir().unwrap();
    let e = oci::apply_layout(layout.path(), root.path(), &mut no_cap()).unwrap_err();
    assert!(matches!(e, RootfsError::Escape { .. }), "{e}");
    assert!(e.to_string().contains("layer 0"), "{e}");
}

#[test]
fn oci_blob_not_matching_its_digest_is_refused() {
    let l1 = tar_of(|b| raw_entry(b, "x", EntryType::Regular, 0o644, None, b"x"));
    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), std::slice::from_ref(&l1));
    let hex = hex::encode(Sha256::digest(&l1));
    fs::write(layout.path().join("blobs/sha256").join(&hex), b"tampered").unwrap();
    let root = tempfile::tempdir().unwrap();
    let e = oci::apply_layout(layout.path(), root.path(), &mut no_cap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match its digest"), "{e}");
}

#[test]
fn whiteouts_of_dot_dotdot_and_empty_names_are_refused() {
    for dir in ["", "etc/sub/"] {
        for name in [".wh.", ".wh..", ".wh..."] {
            let member = format!("{dir}{name}");
            let l1 = tar_of(|b| {
                raw_entry(b, "etc/", EntryType::Directory, 0o755, None, b"");
                raw_entry(b, "etc/passwd", EntryType::Regular, 0o644, None, b"root");
                raw_entry(b, "etc/sub/", EntryType::Directory, 0o755, None, b"");
                raw_entry(b, "etc/sub/x", EntryType::Regular, 0o644, None, b"x");
            });
            let l2 = tar_of(|b| raw_entry(b, &member, EntryType::Regular, 0o644, None, b""));
            let layout = tempfile::tempdir().unwrap();
            oci_layout(layout.path(), &[l1, l2]);
            let root = tempfile::tempdir().unwrap();
            let e = oci::apply_layout(layout.path(), root.path(), &mut no_cap()).unwrap_err();
            match &e {
                RootfsError::Whiteout {
                    source_name,
                    member: m,
                    ..
                } => {
                    assert_eq!(m, &member);
                    assert!(source_name.contains("layer 1"), "{e}");
                }
                other => panic!("{member}: expected a whiteout refusal, got {other:?}"),
            }
            assert!(e.to_string().contains(&member), "{e}");
            assert_eq!(fs::read(root.path().join("etc/passwd")).unwrap(), b"root");
            assert!(root.path().join("etc/sub/x").exists(), "{member}");
        }
    }
}

#[test]
fn a_gzip_bomb_layer_stops_at_the_cap() {
    const MIB: u64 = 1 << 20;
    let bomb = tar_of(|b| {
        raw_entry(b, "small", EntryType::Regular, 0o644, None, &[7u8; 4096]);
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(64 * MIB);
        b.append_data(&mut h, "zeros", std::io::repeat(0).take(64 * MIB))
            .unwrap();
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &bomb).unwrap();
    let gz = gz.finish().unwrap();
    assert!(
        gz.len() < (MIB as usize),
        "the layer is a bomb: {} bytes",
        gz.len()
    );
    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), &[gz]);
    let root = tempfile::tempdir().unwrap();
    let mut cap = tarball::Cap::new(16 * MIB);
    let e = oci::apply_layout(layout.path(), root.path(), &mut cap).unwrap_err();
    match &e {
        RootfsError::ExtractCap { member, cap: c, .. } => {
            assert_eq!(member, "zeros");
            assert_eq!(*c, 16 * MIB);
        }
        other => panic!("expected the cap, got {other:?}"),
    }
    assert!(e.to_string().contains("layer 0"), "{e}");
    assert_eq!(cap.used(), 4096);
    let zeros = root.path().join("zeros");
    assert!(
        fs::metadata(&zeros).map(|m| m.len()).unwrap_or(0) == 0,
        "the bomb's member was written"
    );
}

#[test]
fn the_cap_counts_every_layer_of_one_root() {
    let layer =
        |name: &str| tar_of(|b| raw_entry(b, name, EntryType::Regular, 0o644, None, &[1u8; 3000]));
    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), &[layer("a"), layer("b")]);
    let root = tempfile::tempdir().unwrap();
    let e =
        oci::apply_layout(layout.path(), root.path(), &mut tarball::Cap::new(5000)).unwrap_err();
    assert!(
        matches!(&e, RootfsError::ExtractCap { member, .. } if member == "b"),
        "{e}"
    );
    let root = tempfile::tempdir().unwrap();
    let mut cap = tarball::Cap::new(6000);
    oci::apply_layout(layout.path(), root.path(), &mut cap).unwrap();
    assert_eq!(cap.used(), 6000);
}
