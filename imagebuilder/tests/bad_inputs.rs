//! Every bad input gets a clear error naming the field or file, and leaves nothing under the
//! final output names. One test per case, through the `kiln` binary.

mod common;

use common::*;
use std::fs;
use std::path::Path;

const OUTPUTS: [&str; 6] = [
    "disk.raw",
    "disk.qcow2",
    "root.img",
    "vmlinuz",
    "initrd.img",
    "build.json",
];

/// Builds `spec` (written into a temp dir with `files`) and asserts failure with every
/// `needles` in the error and no output left behind.
fn assert_refused(spec: &str, files: &[(&str, Vec<u8>)], needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    for (name, data) in files {
        let p = d.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    let spec_path = d.path().join("image.toml");
    fs::write(&spec_path, spec).unwrap();
    let out = d.path().join("out");
    let o = kiln_build(&spec_path, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "build succeeded: {stderr}");
    for n in needles {
        assert!(
            stderr.contains(n),
            "error does not mention {n:?}:\n{stderr}"
        );
    }
    for name in OUTPUTS {
        assert!(
            !out.join(name).exists(),
            "{name} left behind after a failed build"
        );
    }
    if out.exists() {
        let left: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "work files left behind: {left:?}");
    }
}

/// The standard test spec with another base tarball path.
fn spec_with_base(tarball: &str) -> String {
    spec_text("", "").replace(
        &deps().join("busybox-rootfs.tar").display().to_string(),
        tarball,
    )
}

fn raw_tar(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        h.set_size(if *kind == tar::EntryType::Regular {
            1
        } else {
            0
        });
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            b"x"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn unknown_spec_field() {
    assert_refused(
        &spec_text("colour = \"red\"", ""),
        &[],
        &["image.toml", "unknown field `colour`"],
    );
}

#[test]
fn missing_kernel() {
    let s = spec_text("", "").replace(
        &deps().join("kernel").display().to_string(),
        "/nonexistent/kernel",
    );
    assert_refused(
        &s,
        &[],
        &["image.toml", "kernel.dir", "/nonexistent/kernel"],
    );
}

#[test]
fn missing_base() {
    let s = spec_with_base("/nonexistent/base.tar");
    assert_refused(&s, &[], &["base.tarball", "/nonexistent/base.tar"]);
}

#[test]
fn missing_baked_file() {
    let s = spec_text(
        "",
        "[[file]]\nsource = \"files/nope\"\ndest = \"/usr/bin/nope\"\n",
    );
    assert_refused(&s, &[], &["file[0].source", "files/nope"]);
}

#[test]
fn duplicate_destination() {
    let s = spec_text(
        "",
        "[[file]]\nsource = \"a\"\ndest = \"/usr/bin/x\"\n[[file]]\nsource = \"b\"\ndest = \"/usr/bin/x\"\n",
    );
    assert_refused(
        &s,
        &[("a", b"a".to_vec()), ("b", b"b".to_vec())],
        &["file[1].dest", "duplicate destination"],
    );
}

#[test]
fn tar_member_with_dotdot_escapes() {
    let t = raw_tar(&[("sbin/../../escape", tar::EntryType::Regular, None)]);
    let s = spec_with_base("evil.tar");
    assert_refused(
        &s,
        &[("evil.tar", t)],
        &["evil.tar", "sbin/../../escape", "escapes the root"],
    );
}

#[test]
fn tar_absolute_symlink_followed_during_extraction() {
    let host = tempfile::tempdir().unwrap();
    let target = host.path().display().to_string();
    let t = raw_tar(&[
        ("etc", tar::EntryType::Symlink, Some(target.as_str())),
        ("etc/passwd", tar::EntryType::Regular, None),
    ]);
    let s = spec_with_base("evil.tar");
    assert_refused(
        &s,
        &[("evil.tar", t)],
        &["evil.tar", "etc/passwd", "symlink"],
    );
    assert!(
        !host.path().join("passwd").exists(),
        "extraction wrote through the symlink"
    );
}

#[test]
fn oci_layer_path_escapes() {
    use sha2::{Digest, Sha256};
    let layer = raw_tar(&[("../../../oci-escape", tar::EntryType::Regular, None)]);
    let hex = |d: &[u8]| hex::encode(Sha256::digest(d));
    let manifest = format!(
        r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        hex(&layer),
        layer.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{}","size":{}}}]}}"#,
        hex(manifest.as_bytes()),
        manifest.len()
    );
    let files = vec![
        (
            "oci/oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("oci/index.json", index.into_bytes()),
        (
            Box::leak(format!("oci/blobs/sha256/{}", hex(manifest.as_bytes())).into_boxed_str())
                as &str,
            manifest.clone().into_bytes(),
        ),
        (
            Box::leak(format!("oci/blobs/sha256/{}", hex(&layer)).into_boxed_str()) as &str,
            layer.clone(),
        ),
    ];
    let s = spec_text("", "").replace(
        &format!(
            "tarball = \"{}\"",
            deps().join("busybox-rootfs.tar").display()
        ),
        "oci = \"oci\"",
    );
    assert_refused(
        &s,
        &files,
        &["layer 0", "../../../oci-escape", "escapes the root"],
    );
}

#[test]
fn partitions_that_do_not_fit() {
    let s = spec_text(
        "",
        "[partitions]\nesp = \"256M\"\nroot = \"512M\"\npersist = \"256M\"\ndisk = \"1G\"\n",
    );
    assert_refused(&s, &[], &["partitions.disk", "do not fit"]);
}

#[test]
fn root_tree_larger_than_its_slot() {
    // 24 MiB of incompressible data in a 16 MiB slot.
    let mut big = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let s = spec_text(
        "",
        "[[file]]\nsource = \"big\"\ndest = \"/usr/share/big\"\n[partitions]\nroot = \"16M\"\n",
    );
    assert_refused(&s, &[("big", big)], &["root slot", "partitions.root"]);
}

#[test]
fn unknown_kernel_module() {
    let s = spec_text("", "").replace(
        "[base]",
        "modules = [\"virtio_blk\", \"no_such_module\"]\n[base]",
    );
    assert_refused(&s, &[], &["kernel.modules", "no_such_module"]);
}

#[test]
fn success_is_the_control_case() {
    // The same helper with a good spec builds: the refusals above are about their inputs.
    let d = tempfile::tempdir().unwrap();
    let spec = d.path().join("image.toml");
    fs::write(&spec, spec_text("", "[output]\nformats = [\"raw\"]\n")).unwrap();
    let o = kiln_build(&spec, &d.path().join("out"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(Path::new(&d.path().join("out/disk.raw")).is_file());
}

#[test]
fn update_key_that_is_not_a_public_key() {
    let s = spec_text("", "[update]\nkeys = [\"keys/dev.pub\"]\n");
    assert_refused(
        &s,
        &[("keys/dev.pub", b"not a key".to_vec())],
        &["update.keys[0]", "keys/dev.pub"],
    );
}

#[test]
fn watchdog_shorter_than_the_health_timeout() {
    let s = spec_text(
        "",
        "[boot]\nwatchdog_secs = 60\n[update]\nhealth_timeout_secs = 120\n",
    );
    assert_refused(&s, &[], &["boot.watchdog_secs", "health_timeout_secs"]);
}

#[test]
fn agent_without_the_updater() {
    let s = spec_text("", "[agent]\nkubeconfig = \"/etc/kiln/kubeconfig\"\n");
    assert_refused(&s, &[], &["agent", "set update.keys"]);
}

#[test]
fn agent_kubeconfig_that_is_not_absolute() {
    let s = spec_text("", "[agent]\nkubeconfig = \"etc/kubeconfig\"\n");
    assert_refused(&s, &[], &["agent.kubeconfig", "absolute path"]);
}

#[test]
fn unknown_init() {
    let s = spec_text("", "[boot]\ninit = \"openrc\"\n");
    assert_refused(&s, &[], &["image.toml", "init", "unknown variant `openrc`"]);
}

/// A tarball of a stand-in systemd root (the builder only looks at these paths): `/sbin/init`
/// → systemd, systemctl, and containerd + ctr when `containerd`.
fn systemd_base(containerd: bool) -> Vec<u8> {
    use tar::EntryType::{Directory, Regular, Symlink};
    let mut e = vec![
        ("usr/", Directory, None),
        ("usr/bin/", Directory, None),
        ("usr/sbin/", Directory, None),
        ("usr/lib/", Directory, None),
        ("usr/lib/systemd/", Directory, None),
        ("usr/lib/systemd/systemd", Regular, None),
        ("usr/bin/systemctl", Regular, None),
        ("sbin", Symlink, Some("usr/sbin")),
        ("lib", Symlink, Some("usr/lib")),
        ("usr/sbin/init", Symlink, Some("/lib/systemd/systemd")),
    ];
    if containerd {
        e.push(("usr/bin/containerd", Regular, None));
        e.push(("usr/bin/ctr", Regular, None));
    }
    raw_tar(&e)
}

/// The test spec on a stand-in systemd root, with `extra` (containers) after it.
fn systemd_spec(extra: &str) -> String {
    spec_with_base("base.tar").replace("[[service]]", &format!("{extra}\n[[service]]"))
}

#[test]
fn container_whose_image_is_not_an_image() {
    assert_refused(
        &systemd_spec("[[container]]\nname = \"web\"\nimage = \"web.tar\"\n"),
        &[
            ("base.tar", systemd_base(true)),
            ("web.tar", b"this is no archive".repeat(100)),
        ],
        &["container[0].image", "web.tar", "archive"],
    );
    assert_refused(
        &systemd_spec("[[container]]\nname = \"web\"\nimage = \"web-layout\"\n"),
        &[
            ("base.tar", systemd_base(true)),
            ("web-layout/index.json", b"{}".to_vec()),
        ],
        &[
            "container[0].image",
            "web-layout",
            "not an OCI image layout",
        ],
    );
}

#[test]
fn container_whose_image_is_missing() {
    assert_refused(
        &systemd_spec("[[container]]\nname = \"web\"\nimage = \"nope.tar\"\n"),
        &[("base.tar", systemd_base(true))],
        &["container[0].image", "nope.tar", "no such file"],
    );
}

#[test]
fn two_containers_with_one_name() {
    assert_refused(
        &systemd_spec("[[container]]\nname = \"web\"\nimage = \"a.tar\"\n[[container]]\nname = \"web\"\nimage = \"a.tar\"\n"),
        &[("base.tar", systemd_base(true)), ("a.tar", Vec::new())],
        &["container[1].name", "duplicate container \"web\""],
    );
}

#[test]
fn container_mount_outside_persist() {
    assert_refused(
        &systemd_spec("[[container]]\nname = \"web\"\nimage = \"a.tar\"\nmounts = [{ source = \"/usr/lib/web\", target = \"/data\" }]\n"),
        &[("base.tar", systemd_base(true)), ("a.tar", Vec::new())],
        &["container[0].mounts[0].source", "/usr/lib/web", "not on persist"],
    );
}

#[test]
fn container_in_a_root_without_containerd() {
    assert_refused(
        &systemd_spec("[[container]]\nname = \"web\"\nimage = \"a.tar\"\n"),
        &[("base.tar", systemd_base(false)), ("a.tar", Vec::new())],
        &["container", "the root has no containerd", "/usr/bin/ctr"],
    );
    // The busybox test root: containers need systemd.
    assert_refused(
        &spec_text("", "[[container]]\nname = \"web\"\nimage = \"a.tar\"\n"),
        &[("a.tar", Vec::new())],
        &["container", "init is busybox"],
    );
}
