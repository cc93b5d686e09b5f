//! `kiln flash` onto real loop devices (losetup on sparse files; needs root, as the whole suite
//! does): byte-for-byte result from a raw file and from a zstd image streamed over HTTP, and the
//! refusals (mounted, too small, failing verification — which must leave no partition table).

mod common;

use common::*;
use kiln_testutil::LoopDev;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A loop device attached with partition scanning; detached on drop.
fn attach(file: &Path) -> LoopDev {
    LoopDev::attach(file, &["-P"])
}

/// A sparse file of `size` bytes with garbage (0xAA MiBs) at `garbage` offsets, standing for
/// the old contents of a used disk.
fn used_disk(dir: &Path, name: &str, size: u64, garbage: &[u64]) -> PathBuf {
    let p = dir.join(name);
    let f = File::create(&p).unwrap();
    f.set_len(size).unwrap();
    for &off in garbage {
        f.write_all_at(&vec![0xaa; 1 << 20], off.min(size - (1 << 20)))
            .unwrap();
    }
    p
}

fn build_default_image(out: &Path) -> PathBuf {
    let o = kiln_build(&workspace().join("examples/default/image.toml"), out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("disk.raw")
}

fn flash(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("flash")
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "kiln flash {args:?}: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn sha256sum(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(o.stdout).unwrap()
}

/// `cmp -n LEN image device`: equal bytes over the image's length.
fn same_bytes(image: &Path, dev: &str) -> bool {
    let len = std::fs::metadata(image).unwrap().len();
    Command::new("cmp")
        .args(["-n", &len.to_string()])
        .arg(image)
        .arg(dev)
        .status()
        .unwrap()
        .success()
}

/// The partitions the kernel lists, fsck'ed. The kernel here (Firecracker's) has no GPT parser
/// (CONFIG_EFI_PARTITION unset), so when the re-read found nothing `partx -a` adds them from the
/// table on the device (as libblkid reads it).
fn check_partitions(lo: &LoopDev) {
    if lo.partitions().is_empty() {
        let px = Command::new("partx")
            .args(["-a", &lo.dev])
            .status()
            .unwrap();
        assert!(px.success(), "partx -a {}", lo.dev);
    }
    let parts = lo.partitions();
    assert_eq!(parts.len(), 4, "partitions after the flash: {parts:?}");
    assert_clean("fsck.fat", "-n", &parts[0]);
    assert_clean("e2fsck", "-fn", &parts[3]);
}

/// The flash failed, saying each of `said`, and left no partition table on `lo`.
fn assert_refused_and_wiped(o: &std::process::Output, said: &[&str], lo: &LoopDev) {
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(said.iter().all(|s| err.contains(s)), "{err}");
    assert_no_partition_table(lo);
}

/// Runs a read-only filesystem check on `dev` and asserts it finds nothing.
fn assert_clean(checker: &str, flags: &str, dev: impl AsRef<std::ffi::OsStr>) {
    let o = Command::new(checker).arg(flags).arg(dev).output().unwrap();
    assert!(
        o.status.success(),
        "{checker}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn flashes_a_raw_image_byte_for_byte_over_old_contents() {
    let d = tempfile::tempdir().unwrap();
    let image = build_default_image(&d.path().join("build"));
    let len = std::fs::metadata(&image).unwrap().len();
    // Garbage inside the image's holes (persist, the B slot) and at the device's end.
    let file = used_disk(
        d.path(),
        "disk",
        2 << 30,
        &[0, len / 2, len - (1 << 20), len, 2 << 30],
    );
    let lo = attach(&file);
    let o = flash(&[image.to_str().unwrap(), &lo.dev]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("read back equal") && out.contains("re-read"),
        "{out}"
    );
    assert!(same_bytes(&image, &lo.dev), "device differs from the image");
    check_partitions(&lo);
    // The sparse backing file stayed sparse: holes were zeroed, not written.
    let st = std::fs::metadata(&file).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        st.blocks() * 512 < 200 << 20,
        "{} bytes allocated",
        st.blocks() * 512
    );
}

/// Serves the files of `dir` over HTTP/1.1 on 127.0.0.1 (one thread per connection); 404 for
/// the rest. Returns the base URL.
fn serve(dir: PathBuf) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && conn.read(&mut b).unwrap_or(0) == 1 {
                    req.push(b[0]);
                }
                let line = String::from_utf8_lossy(&req);
                let path = line
                    .split(' ')
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/');
                match File::open(dir.join(path)) {
                    Ok(mut f) => {
                        let len = f.metadata().unwrap().len();
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                        );
                        let _ = std::io::copy(&mut f, &mut conn);
                    }
                    Err(_) => {
                        let _ = write!(
                            conn,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    base
}

#[test]
fn flashes_a_zstd_image_streamed_over_http_and_checks_the_published_sha256() {
    let d = tempfile::tempdir().unwrap();
    let image = build_default_image(&d.path().join("build"));
    let www = d.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let zst = www.join("disk.raw.zst");
    let z = Command::new("zstd")
        .args(["-q", "-1", "-T0"])
        .arg(&image)
        .arg("-o")
        .arg(&zst)
        .status()
        .expect("zstd is needed");
    assert!(z.success());
    std::fs::write(www.join("disk.raw.zst.sha256"), sha256sum(&image)).unwrap();
    let base = serve(www);
    let file = used_disk(d.path(), "disk", 2 << 30, &[0, 1 << 30]);
    let lo = attach(&file);
    let o = flash(&[&format!("{base}/disk.raw.zst"), &lo.dev]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("matches http://"), "{out}");
    assert!(same_bytes(&image, &lo.dev));
    check_partitions(&lo);
}

#[test]
fn refuses_a_mounted_device_and_a_too_small_one() {
    let d = tempfile::tempdir().unwrap();
    let image = build_default_image(&d.path().join("build"));

    let small = attach(&used_disk(d.path(), "small", 64 << 20, &[]));
    let o = flash(&[image.to_str().unwrap(), &small.dev]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&small.dev) && err.contains("smaller than the image"),
        "{err}"
    );

    let busy = attach(&used_disk(d.path(), "busy", 2 << 30, &[]));
    let mk = Command::new("mkfs.ext4")
        .args(["-q", &busy.dev])
        .status()
        .unwrap();
    assert!(mk.success());
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Command::new("mount")
        .arg(&busy.dev)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(m.success());
    let o = flash(&[image.to_str().unwrap(), &busy.dev]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is mounted at") && err.contains(mnt.to_str().unwrap()),
        "{err}"
    );
    // Untouched: the filesystem is still there.
    assert_clean("e2fsck", "-fn", &busy.dev);

    let o = flash(&[image.to_str().unwrap(), image.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a block device"));
}

/// No partition table: LBA 0 is zero, blkid finds no table type, the kernel lists no partitions.
fn assert_no_partition_table(lo: &LoopDev) {
    let mut first = vec![0u8; 1 << 20];
    File::open(&lo.dev).unwrap().read_exact(&mut first).unwrap();
    assert!(first.iter().all(|&b| b == 0), "first MiB not wiped");
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "PTTYPE", &lo.dev])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&blkid.stdout).trim().is_empty(),
        "blkid still finds a partition table: {}",
        String::from_utf8_lossy(&blkid.stdout)
    );
    assert_eq!(lo.partitions(), Vec::<PathBuf>::new());
}

#[test]
fn an_image_failing_verification_leaves_no_partition_table() {
    let d = tempfile::tempdir().unwrap();
    let image = build_default_image(&d.path().join("build"));
    let lo = attach(&used_disk(d.path(), "disk", 2 << 30, &[]));
    // A disk that had a good Kiln image on it.
    assert!(flash(&[image.to_str().unwrap(), &lo.dev]).status.success());
    check_partitions(&lo);

    // A wrong --sha256.
    let o = flash(&[
        image.to_str().unwrap(),
        &lo.dev,
        "--sha256",
        &"0".repeat(64),
    ]);
    assert_refused_and_wiped(&o, &["does not match", "--sha256"], &lo);

    // A corrupted image next to its published checksum.
    let good_sum = sha256sum(&image);
    let bad = d.path().join("bad.raw");
    std::fs::copy(&image, &bad).unwrap();
    let f = OpenOptions::new().write(true).open(&bad).unwrap();
    f.write_all_at(b"flipped", 300 << 20).unwrap();
    std::fs::write(d.path().join("bad.raw.sha256"), good_sum).unwrap();
    assert!(flash(&[image.to_str().unwrap(), &lo.dev]).status.success());
    let o = flash(&[bad.to_str().unwrap(), &lo.dev]);
    assert_refused_and_wiped(&o, &["bad.raw.sha256", "the device was wiped"], &lo);
}

#[test]
fn with_key_only_a_signed_checksum_is_trusted() {
    let d = tempfile::tempdir().unwrap();
    let image = build_default_image(&d.path().join("build"));
    let keys = workspace().join("examples/default/keys");
    let sign = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["sign".as_ref(), image.as_os_str(), "--key".as_ref()])
        .arg(keys.join("dev.key"))
        .output()
        .unwrap();
    assert!(
        sign.status.success(),
        "{}",
        String::from_utf8_lossy(&sign.stderr)
    );
    let sum = std::fs::read_to_string(format!("{}.sha256", image.display())).unwrap();
    assert_eq!(
        sum,
        sha256sum(&image).replace(image.to_str().unwrap(), "disk.raw")
    );

    let lo = attach(&used_disk(d.path(), "disk", 2 << 30, &[]));
    let pubkey = keys.join("dev.pub");
    let flash_signed = || {
        flash(&[
            image.to_str().unwrap(),
            &lo.dev,
            "--key",
            pubkey.to_str().unwrap(),
        ])
    };
    let o = flash_signed();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("disk.raw.sha256, signed by key"));
    assert!(same_bytes(&image, &lo.dev));

    // Another checksum under the old signature: refused before the device is touched.
    std::fs::write(
        format!("{}.sha256", image.display()),
        format!("{}  disk.raw\n", "0".repeat(64)),
    )
    .unwrap();
    let o = flash_signed();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("disk.raw.sha256.sig: the signature over") && err.contains("is not valid"),
        "{err}"
    );
    assert!(
        same_bytes(&image, &lo.dev),
        "a refused flash wrote to the device"
    );

    std::fs::remove_file(format!("{}.sha256.sig", image.display())).unwrap();
    let o = flash_signed();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("disk.raw.sha256.sig is missing"));
}
