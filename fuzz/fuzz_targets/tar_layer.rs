//! The tar / OCI layer walk: whatever the archive says, nothing is created outside the root
//! (`../`, absolute paths, symlinks followed, hard links out, whiteouts of outside paths or of
//! `.`/`..`), and no more file data than the cap.
#![no_main]

use kiln_rootfs::tarball::{extract, Cap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, tar)) = data.split_first() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let outside = d.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"keep").unwrap();
    let mut cap = Cap::new(64 << 20);
    let _ = extract(tar, &root, "fuzz.tar", mode & 1 == 1, &mut cap);
    assert!(cap.used() <= 64 << 20, "past the cap");
    let mut top: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["outside", "root"],
        "something was created next to the root"
    );
    let out: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert_eq!(out.len(), 1, "something was created outside the root");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
});
