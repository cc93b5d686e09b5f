use super::*;
use serde_json::Value;

fn layer() -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(5);
    h.set_mode(0o755);
    h.set_cksum();
    t.append_data(&mut h, "bin/hello", &b"hello"[..]).unwrap();
    t.into_inner().unwrap()
}

fn bake_dir(input: &Path) -> Result<(Baked, tempfile::TempDir), RootfsError> {
    let w = tempfile::tempdir().unwrap();
    let out = w.path().join("out.tar");
    let work = w.path().join("work");
    fs::create_dir(&work).unwrap();
    bake(input, "web", &work, &out, 1 << 30).map(|b| (b, w))
}

/// Reads the members of an archive.
fn members(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(fs::File::open(p).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            (name, v)
        })
        .collect()
}

#[test]
fn a_layout_is_baked_with_its_manifest_digest_and_a_containerd_name() {
    let d = tempfile::tempdir().unwrap();
    let digest = write_test_layout(d.path(), &layer(), &["/bin/hello", "x"]).unwrap();
    let (b, w) = bake_dir(d.path()).unwrap();
    assert_eq!(b.manifest_digest, digest);
    assert_eq!(
        b.reference,
        format!("kiln.local/web:sha256-{}", &digest[7..])
    );
    assert_eq!(b.cmd, ["/bin/hello", "x"]);
    assert_eq!(b.env, ["PATH=/bin"]);
    let m = members(&w.path().join("out.tar"));
    assert_eq!(
        m.len(),
        5,
        "oci-layout, index.json, manifest, config, layer"
    );
    let index: Value = serde_json::from_slice(&m["index.json"]).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        b.reference.as_str()
    );
    // Byte-identical when baked again (reproducible roots).
    let (_, w2) = bake_dir(d.path()).unwrap();
    assert_eq!(
        fs::read(w.path().join("out.tar")).unwrap(),
        fs::read(w2.path().join("out.tar")).unwrap()
    );

    // The same layout as an OCI archive (tar of the directory) bakes to the same thing.
    let ar = d.path().parent().unwrap().join(format!(
        "{}.tar",
        d.path().file_name().unwrap().to_string_lossy()
    ));
    let mut t = tar::Builder::new(fs::File::create(&ar).unwrap());
    t.append_dir_all(".", d.path()).unwrap();
    t.finish().unwrap();
    let (b2, w3) = bake_dir(&ar).unwrap();
    assert_eq!(b2, b);
    assert_eq!(
        fs::read(w3.path().join("out.tar")).unwrap(),
        fs::read(w.path().join("out.tar")).unwrap()
    );
    fs::remove_file(ar).unwrap();
}

#[test]
fn a_docker_archive_becomes_an_oci_image() {
    let layer = layer();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(Sha256::digest(&layer)))]},
    }))
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let ar = d.path().join("img.tar");
    let mut t = tar::Builder::new(fs::File::create(&ar).unwrap());
    let mut put = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, data).unwrap();
    };
    put("abc.json", &config);
    put("l1/layer.tar", &layer);
    put(
        "manifest.json",
        br#"[{"Config":"abc.json","RepoTags":["web:1"],"Layers":["l1/layer.tar"]}]"#,
    );
    t.finish().unwrap();
    drop(t);
    let (b, w) = bake_dir(&ar).unwrap();
    assert_eq!(b.entrypoint, ["/bin/hello"]);
    let m = members(&w.path().join("out.tar"));
    let man: Value =
        serde_json::from_slice(&m[&format!("blobs/sha256/{}", &b.manifest_digest[7..])]).unwrap();
    assert_eq!(
        man["layers"][0]["digest"],
        format!("sha256:{}", hex::encode(Sha256::digest(&layer)))
    );
    assert_eq!(man["config"]["mediaType"], OCI_CONFIG);
}

#[test]
fn bad_images_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    // A directory that is not a layout.
    let e = bake_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("not an OCI image layout"), "{e}");
    // A file that is not a tar.
    let f = d.path().join("junk");
    fs::write(&f, vec![7u8; 3000]).unwrap();
    let e = bake_dir(&f).unwrap_err().to_string();
    assert!(
        e.contains("junk") && (e.contains("tar") || e.contains("archive")),
        "{e}"
    );
    // A tampered layer.
    let l = d.path().join("layout");
    fs::create_dir(&l).unwrap();
    write_test_layout(&l, &layer(), &["/bin/hello"]).unwrap();
    let lay = l
        .join("blobs/sha256")
        .join(hex::encode(Sha256::digest(layer())));
    let mut bytes = fs::read(&lay).unwrap();
    bytes[600] ^= 1;
    fs::write(&lay, bytes).unwrap();
    let e = bake_dir(&l).unwrap_err().to_string();
    assert!(e.contains("does not match its digest"), "{e}");
    // Over the cap.
    let l2 = d.path().join("layout2");
    fs::create_dir(&l2).unwrap();
    write_test_layout(&l2, &layer(), &["/bin/hello"]).unwrap();
    let w = tempfile::tempdir().unwrap();
    let e = bake(&l2, "web", w.path(), &w.path().join("o.tar"), 100)
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than 100 bytes"), "{e}");
}
