//! The default image checked with the standard tools: sgdisk, fsck.fat, fsck.erofs, e2fsck,
//! mtools; reproducibility; sparseness; the ext4 root option.

mod common;

use common::*;
use imagebuilder::pipeline::{build, BuildOptions, BuildReport};
use imagebuilder::spec::FsFormat;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn default_spec() -> std::path::PathBuf {
    workspace().join("examples/default/image.toml")
}

/// Builds the default spec, optionally changed, into `out`.
fn build_default(out: &Path, change: impl FnOnce(&mut imagebuilder::spec::Spec)) -> BuildReport {
    let path = default_spec();
    let mut spec = imagebuilder::validate::load(&path).unwrap().spec;
    change(&mut spec);
    let resolved = imagebuilder::validate::resolve(spec, &path).unwrap();
    build(&resolved, &BuildOptions::new(out, init_bin(), EPOCH)).unwrap()
}

fn sha256(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Copies one partition out of the disk into its own file.
fn extract_part(disk: &Path, offset: u64, size: u64, to: &Path) {
    let mut f = File::open(disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut out = File::create(to).unwrap();
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).unwrap();
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

#[test]
fn disk_passes_sgdisk_and_fsck_with_the_design_layout() {
    let d = tempfile::tempdir().unwrap();
    let r = build_default(d.path(), |_| {});
    let disk = r.disk.to_str().unwrap();

    let (ok, out) = tool("sgdisk", &["-v", disk]);
    assert!(ok && out.contains("No problems found"), "sgdisk -v:\n{out}");

    let expected = [
        (1, "esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        (2, "root-a", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
        (3, "root-b", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
        (4, "persist", "4D21B016-B534-45C2-A9FB-5C16E091FD2D"),
    ];
    let mut root_a_guid = String::new();
    for (n, label, type_guid) in expected {
        let (ok, info) = tool("sgdisk", &["-i", &n.to_string(), disk]);
        assert!(ok, "{info}");
        assert!(
            info.contains(&format!("Partition GUID code: {type_guid}")),
            "partition {n}:\n{info}"
        );
        assert!(
            info.contains(&format!("Partition name: '{label}'")),
            "partition {n}:\n{info}"
        );
        let unique = info
            .lines()
            .find_map(|l| l.strip_prefix("Partition unique GUID: "))
            .unwrap()
            .trim()
            .to_ascii_lowercase();
        let reported = &r.partitions[n - 1];
        assert_eq!(unique, reported.guid, "build.json disagrees with the GPT");
        if label == "root-a" {
            root_a_guid = unique;
        }
    }

    // Our own GPT reader (used by kiln-init) agrees with sgdisk.
    let mut f = File::open(&r.disk).unwrap();
    let mut lba1 = vec![0u8; 512];
    f.seek(SeekFrom::Start(512)).unwrap();
    f.read_exact(&mut lba1).unwrap();
    let hdr = kiln_boot::gpt::parse_header(&lba1).unwrap();
    let mut entries = vec![0u8; hdr.entries_len()];
    f.seek(SeekFrom::Start(hdr.entries_lba * 512)).unwrap();
    f.read_exact(&mut entries).unwrap();
    let parts = kiln_boot::gpt::parse_entries(&hdr, &entries).unwrap();
    assert_eq!(
        parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["esp", "root-a", "root-b", "persist"]
    );
    assert_eq!(parts[1].part_guid, root_a_guid);

    let esp = d.path().join("esp.img");
    let root = d.path().join("root-a.img");
    let persist = d.path().join("persist.img");
    for (p, path) in [
        (&r.partitions[0], &esp),
        (&r.partitions[1], &root),
        (&r.partitions[3], &persist),
    ] {
        extract_part(&r.disk, p.offset, p.size, path);
    }
    let (ok, out) = tool("fsck.fat", &["-n", esp.to_str().unwrap()]);
    // A clean run prints only the version line and the summary line.
    assert!(ok && out.lines().count() == 2, "fsck.fat -n:\n{out}");
    let (ok, out) = tool("fsck.erofs", &[root.to_str().unwrap()]);
    assert!(ok, "fsck.erofs:\n{out}");
    let (ok, out) = tool("e2fsck", &["-fn", persist.to_str().unwrap()]);
    assert!(ok, "e2fsck -fn persist:\n{out}");

    // ESP content, read with mtools: loader, entry for slot A pointing at root-a, slot files.
    let img = esp.to_str().unwrap();
    let (ok, listing) = tool("mdir", &["-i", img, "-/", "-b", "::"]);
    assert!(ok, "{listing}");
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/loader/loader.conf",
        "::/loader/entries/kiln-a.conf",
        "::/kiln/a/vmlinuz",
        "::/kiln/a/initrd.img",
    ] {
        assert!(listing.contains(f), "{f} missing from the ESP:\n{listing}");
    }
    let (ok, entry) = tool("mtype", &["-i", img, "::/loader/entries/kiln-a.conf"]);
    assert!(ok, "{entry}");
    assert!(
        entry.contains(&format!("root=PARTUUID={root_a_guid}")),
        "{entry}"
    );
    assert!(entry.contains("kiln.slot=a"), "{entry}");
    let (ok, dir) = tool("mdir", &["-i", img, "::/kiln/a"]);
    assert!(ok && dir.contains("vmlinuz"), "{dir}");

    // disk.qcow2 (written by Kiln, not qemu-img) is consistent and holds the same disk.
    let qcow2 = r.disk.with_file_name("disk.qcow2");
    let q = qcow2.to_str().unwrap();
    let (ok, out) = tool("qemu-img", &["check", "-f", "qcow2", q]);
    assert!(
        ok && out.contains("No errors were found"),
        "qemu-img check:\n{out}"
    );
    let (ok, out) = tool(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", disk, q],
    );
    assert!(ok, "qemu-img compare:\n{out}");
}

#[test]
fn builds_are_reproducible_and_the_version_changes_the_disk() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let ra = build_default(a.path(), |_| {});
    let rb = build_default(b.path(), |_| {});
    let rc = build_default(c.path(), |s| s.version = "1.0.1".into());
    let (ha, hb, hc) = (sha256(&ra.disk), sha256(&rb.disk), sha256(&rc.disk));
    assert_eq!(ha, hb, "two builds of the same spec differ");
    assert_ne!(ha, hc, "changing the version did not change the disk");
    assert_eq!(
        sha256(&a.path().join("disk.qcow2")),
        sha256(&b.path().join("disk.qcow2"))
    );
    assert_eq!(
        sha256(&a.path().join("initrd.img")),
        sha256(&b.path().join("initrd.img"))
    );
}

#[test]
fn disk_is_sparse() {
    let d = tempfile::tempdir().unwrap();
    let r = build_default(d.path(), |_| {});
    let meta = std::fs::metadata(&r.disk).unwrap();
    let allocated = meta.blocks() * 512;
    let content: u64 = ["root.img", "vmlinuz", "initrd.img"]
        .iter()
        .map(|f| std::fs::metadata(d.path().join(f)).unwrap().len())
        .sum::<u64>()
        + (4 << 20); // the ESP holds vmlinuz + initrd once; FAT, ext4 and GPT metadata < 4 MiB
    assert_eq!(meta.len(), r.disk_size);
    assert!(
        allocated <= content,
        "allocated {allocated} bytes for {content} bytes of content"
    );
    assert!(
        allocated * 20 < meta.len(),
        "allocated {allocated} of nominal {}",
        meta.len()
    );
}

#[test]
fn ext4_root_option_builds_a_clean_filesystem() {
    let d = tempfile::tempdir().unwrap();
    let r = build_default(d.path(), |s| s.rootfs.format = FsFormat::Ext4);
    let root = d.path().join("root-a.img");
    extract_part(&r.disk, r.partitions[1].offset, r.partitions[1].size, &root);
    let (ok, out) = tool("e2fsck", &["-fn", root.to_str().unwrap()]);
    assert!(ok, "e2fsck -fn root-a (ext4):\n{out}");
    let (ok, out) = tool(
        "debugfs",
        &["-R", "stat /sbin/init", root.to_str().unwrap()],
    );
    assert!(ok && out.contains("symlink"), "{out}");
}

#[test]
fn grub_disk_has_a_clean_esp_with_a_1024_byte_grubenv() {
    let d = tempfile::tempdir().unwrap();
    let r = build_default(d.path(), |s| {
        s.boot.loader = imagebuilder::spec::Loader::Grub
    });
    let (ok, out) = tool("sgdisk", &["-v", r.disk.to_str().unwrap()]);
    assert!(ok && out.contains("No problems found"), "{out}");
    let esp = d.path().join("esp.img");
    extract_part(&r.disk, r.partitions[0].offset, r.partitions[0].size, &esp);
    let (ok, out) = tool("fsck.fat", &["-n", esp.to_str().unwrap()]);
    assert!(ok && out.lines().count() == 2, "fsck.fat -n:\n{out}");
    let env = d.path().join("grubenv");
    let (ok, out) = tool(
        "mcopy",
        &[
            "-i",
            esp.to_str().unwrap(),
            "::/EFI/kiln/grubenv",
            env.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let block = std::fs::read(&env).unwrap();
    assert_eq!(block.len(), 1024);
    let vars = kiln_boot::grub::parse_vars(&block).unwrap();
    assert_eq!(vars["ORDER"], "a");
    assert_eq!(vars["A_STATE"], "good");
    assert!(vars["A_CMDLINE"].contains(&format!("root=PARTUUID={}", r.partitions[1].guid)));
    // grub-editenv, GRUB's own tool, reads the same block.
    let (ok, listed) = tool("grub-editenv", &[env.to_str().unwrap(), "list"]);
    assert!(ok && listed.contains("A_VERSION=1.0.0"), "{listed}");
    let (ok, listing) = tool("mdir", &["-i", esp.to_str().unwrap(), "-/", "-b", "::"]);
    assert!(
        ok && listing.contains("::/EFI/BOOT/BOOTX64.EFI") && !listing.contains("::/loader/"),
        "{listing}"
    );
}

/// `veritysetup verify` on root-a's first `len` bytes (the filesystem and its tree) as
/// copied out of the disk: whether it passes, and its output.
fn veritysetup_verify(r: &BuildReport, dir: &Path, flip: Option<u64>) -> (bool, String) {
    let v = r
        .root_verity
        .as_ref()
        .expect("a verity build records its tree");
    let root = dir.join("root-a.verity");
    extract_part(&r.disk, r.partitions[1].offset, r.root_image_size, &root);
    if let Some(at) = flip {
        let mut f = File::options().read(true).write(true).open(&root).unwrap();
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 0x01]).unwrap();
    }
    let p = root.to_str().unwrap();
    tool(
        "veritysetup",
        &[
            "verify",
            p,
            p,
            &v.root_hash,
            &format!("--hash-offset={}", v.hash_offset),
        ],
    )
}

#[test]
fn a_verity_root_passes_veritysetup_and_one_changed_byte_does_not() {
    let d = tempfile::tempdir().unwrap();
    let r = build_default(d.path(), |s| s.rootfs.verity = true);
    let v = r.root_verity.clone().unwrap();
    let g = kiln_boot::verity::Geometry::new(v.data_blocks).unwrap();
    assert_eq!(v.hash_offset, v.data_blocks * 4096);
    assert_eq!(r.root_image_size, g.total_len());
    assert_eq!(
        r.root_image_size,
        std::fs::metadata(d.path().join("root.img")).unwrap().len()
    );
    let (ok, out) = veritysetup_verify(&r, d.path(), None);
    assert!(ok, "veritysetup verify:\n{out}");
    // One bit of file data (block 7), then one bit of the tree's last block.
    let (ok, out) = veritysetup_verify(&r, d.path(), Some(7 * 4096 + 100));
    assert!(!ok, "a changed data block passed:\n{out}");
    let (ok, out) = veritysetup_verify(&r, d.path(), Some(r.root_image_size - 4096 + 5));
    assert!(!ok, "a changed tree block passed:\n{out}");

    // Reproducible: the same spec gives the same root hash; another version another one.
    let d2 = tempfile::tempdir().unwrap();
    let r2 = build_default(d2.path(), |s| s.rootfs.verity = true);
    assert_eq!(r2.root_verity.unwrap(), v);
    assert_eq!(sha256(&r.disk), sha256(&r2.disk));
    let d3 = tempfile::tempdir().unwrap();
    let r3 = build_default(d3.path(), |s| {
        s.rootfs.verity = true;
        s.version = "1.0.1".into();
    });
    assert_ne!(r3.root_verity.unwrap().root_hash, v.root_hash);
}

#[test]
fn an_ext4_root_leaves_room_for_its_tree() {
    let d = tempfile::tempdir().unwrap();
    let r = build_default(d.path(), |s| {
        s.rootfs.format = FsFormat::Ext4;
        s.rootfs.verity = true;
    });
    assert!(r.root_image_size <= r.partitions[1].size);
    let (ok, out) = veritysetup_verify(&r, d.path(), None);
    assert!(ok, "veritysetup verify (ext4):\n{out}");
    let root = d.path().join("root-a.fs");
    let v = r.root_verity.unwrap();
    extract_part(&r.disk, r.partitions[1].offset, v.hash_offset, &root);
    let (ok, out) = tool("e2fsck", &["-fn", root.to_str().unwrap()]);
    assert!(ok, "e2fsck -fn root-a (ext4 under verity):\n{out}");
}

/// `kiln inspect --json` over `disk`.
fn inspect(disk: &Path) -> serde_json::Value {
    let o = kiln(&["inspect".as_ref(), disk.as_os_str(), "--json".as_ref()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn inspect_shows_each_slot_and_whether_its_root_verifies() {
    let d = tempfile::tempdir().unwrap();
    let r = build_default(d.path(), |s| s.rootfs.verity = true);
    let v = r.root_verity.clone().unwrap();
    let before = sha256(&r.disk);
    let i = inspect(&r.disk);
    assert_eq!(i["loader"], "systemd-boot");
    assert_eq!(i["partitions"].as_array().unwrap().len(), 4);
    let (a, b) = (&i["slots"][0], &i["slots"][1]);
    assert_eq!(
        (a["slot"].as_str(), a["state"].as_str()),
        (Some("a"), Some("good"))
    );
    assert_eq!(a["version"], "1.0.0");
    assert_eq!(a["root_hash"], v.root_hash.as_str());
    assert_eq!(a["data_root_hash"], v.root_hash.as_str());
    assert_eq!(a["verity_blocks"], v.data_blocks);
    assert_eq!(a["verifies"], "verified");
    assert_eq!(
        (b["state"].as_str(), b["verifies"].as_str()),
        (Some("empty"), Some("empty"))
    );
    // Text too, and nothing written.
    let o = kiln(&["inspect".as_ref(), r.disk.as_os_str()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("slot a: good 1.0.0\n  root: verified\n"),
        "{text}"
    );
    assert_eq!(sha256(&r.disk), before);

    // One bit of root-a's data (block 7): the slot no longer verifies, and the block is named.
    let root_a = &r.partitions[1];
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&r.disk)
        .unwrap();
    let at = root_a.offset + 7 * 4096 + 100;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 1]).unwrap();
    drop(f);
    let i = inspect(&r.disk);
    assert_eq!(
        i["slots"][0]["verifies"],
        "corrupt: data block 7 does not match the tree"
    );
    assert_ne!(i["slots"][0]["data_root_hash"], v.root_hash.as_str());
}

/// `osslsigncode verify` of a signed PE file against `cert`: (verified, output).
fn signature_verifies(file: &Path, cert: &Path) -> (bool, String) {
    let o = std::process::Command::new("osslsigncode")
        .arg("verify")
        .arg("-CAfile")
        .arg(cert)
        .arg("-in")
        .arg(file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), out)
}

#[test]
fn secure_boot_builds_are_reproducible_with_signed_ukis_and_loader() {
    let keys = tempfile::tempdir().unwrap();
    imagebuilder::secure_boot::keygen(keys.path(), "Kiln test").unwrap();
    let sb = |s: &mut imagebuilder::spec::Spec| {
        s.boot.secure_boot = Some(imagebuilder::spec::SecureBootSpec {
            key: keys.path().join("db.key"),
            cert: keys.path().join("db.crt"),
        })
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ra = build_default(a.path(), sb);
    let rb = build_default(b.path(), sb);
    // Acceptance 4: same bytes (disk, both UKIs) and the same root hash.
    assert_eq!(
        sha256(&ra.disk),
        sha256(&rb.disk),
        "two Secure Boot builds differ"
    );
    for f in ["uki-a.efi", "uki-b.efi"] {
        assert_eq!(sha256(&a.path().join(f)), sha256(&b.path().join(f)), "{f}");
    }
    let hash = ra.root_verity.as_ref().unwrap().root_hash.clone();
    assert_eq!(Some(&hash), rb.root_verity.as_ref().map(|v| &v.root_hash));
    assert!(ra.secure_boot && ra.outputs.contains(&"uki-b.efi".to_string()));

    // Each UKI is signed by db and carries its own slot's signed command line.
    let cert = keys.path().join("db.crt");
    for slot in ["a", "b"] {
        let f = a.path().join(format!("uki-{slot}.efi"));
        let (ok, out) = signature_verifies(&f, &cert);
        assert!(ok, "uki-{slot}.efi: {out}");
        let bytes = std::fs::read(&f).unwrap();
        let want = format!("ro kiln.slot={slot} kiln.verity={hash} console=ttyS0");
        assert!(
            bytes.windows(want.len()).any(|w| w == want.as_bytes()),
            "uki-{slot}.efi lacks {want}"
        );
    }
    // The ESP: the signed loader, slot A's UKI and an entry naming it with no command line.
    let esp = a.path().join("esp.img");
    extract_part(
        &ra.disk,
        ra.partitions[0].offset,
        ra.partitions[0].size,
        &esp,
    );
    let mtype = |path: &str| {
        let o = std::process::Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg(format!("::/{path}"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    let entry = String::from_utf8(mtype("loader/entries/kiln-a.conf")).unwrap();
    assert!(
        entry.ends_with("\nefi /kiln/a/kiln.efi\n") && !entry.contains("options"),
        "{entry}"
    );
    assert_eq!(
        mtype("kiln/a/kiln.efi"),
        std::fs::read(a.path().join("uki-a.efi")).unwrap()
    );
    let loader = a.path().join("BOOTX64.EFI");
    std::fs::write(&loader, mtype("EFI/BOOT/BOOTX64.EFI")).unwrap();
    let (ok, out) = signature_verifies(&loader, &cert);
    assert!(ok, "BOOTX64.EFI: {out}");
    // `kiln inspect` reads slot A's command line and root hash from its signed UKI.
    let i = inspect(&ra.disk);
    let slot_a = &i["slots"][0];
    assert_eq!(slot_a["root_hash"], hash.as_str(), "{i}");
    assert_eq!(slot_a["verifies"], "verified", "{i}");
    assert!(
        slot_a["cmdline"]
            .as_str()
            .is_some_and(|c| c.starts_with("ro kiln.slot=a kiln.verity=")),
        "{i}"
    );
    // Signed by another key: not verified against this db.
    let other = tempfile::tempdir().unwrap();
    imagebuilder::secure_boot::keygen(other.path(), "Other").unwrap();
    assert!(!signature_verifies(&loader, &other.path().join("db.crt")).0);
}

#[test]
fn secure_boot_needs_systemd_boot_and_verity() {
    let keys = tempfile::tempdir().unwrap();
    let path = default_spec();
    let with = |change: &dyn Fn(&mut imagebuilder::spec::Spec)| {
        let mut spec = imagebuilder::validate::load(&path).unwrap().spec;
        spec.boot.secure_boot = Some(imagebuilder::spec::SecureBootSpec {
            key: keys.path().join("db.key"),
            cert: keys.path().join("db.crt"),
        });
        change(&mut spec);
        imagebuilder::validate::resolve(spec, &path)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = with(&|s| s.rootfs.verity = false);
    assert!(
        e.contains("boot.secure_boot") && e.contains("verity"),
        "{e}"
    );
    let e = with(&|s| s.boot.loader = imagebuilder::spec::Loader::Grub);
    assert!(
        e.contains("boot.secure_boot") && e.contains("systemd-boot"),
        "{e}"
    );
    let e = with(&|_| {});
    assert!(
        e.contains("boot.secure_boot.key") && e.contains("db.key"),
        "{e}"
    );
}

/// kiln-init and the updater tell a slot found by label from another disk's by its verity
/// tree: the top block must hash to the signed root hash.
#[test]
fn a_slot_is_recognised_by_its_root_hash() {
    let d = tempfile::tempdir().unwrap();
    let r = build_default(d.path(), |_| {});
    let hash = r.root_verity.clone().unwrap().root_hash;
    let slot = d.path().join("root-a.img");
    extract_part(&r.disk, r.partitions[1].offset, r.partitions[1].size, &slot);
    let check = |h: &str| {
        let f = File::open(&slot).unwrap();
        kiln_boot::slot_verity::check_slot(&f, "root-a", h).map(|c| c.sb.data_blocks)
    };
    assert_eq!(check(&hash), Ok(r.root_verity.clone().unwrap().data_blocks));
    let last = if hash.ends_with('0') { '1' } else { '0' };
    let other = format!("{}{last}", &hash[..63]);
    let e = check(&other).unwrap_err();
    assert!(e.contains("does not match kiln.verity="), "{e}");
    assert!(check("nothex")
        .unwrap_err()
        .contains("not a sha256 root hash"));
    // The slot of another version (root-b, empty here) is not this one either.
    let empty = d.path().join("root-b.img");
    extract_part(&r.disk, r.partitions[2].offset, 1 << 20, &empty);
    let f = File::open(&empty).unwrap();
    assert!(kiln_boot::slot_verity::check_slot(&f, "root-b", &hash).is_err());
}
