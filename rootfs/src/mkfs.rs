//! Making filesystem images from a staged tree with the standard tools (no mounts, no loop
//! devices): `mkfs.erofs` for the default read-only root, `mke2fs -d` for ext4 roots and for
//! the empty persist filesystem. Options are chosen for reproducibility: fixed UUIDs, hash
//! seeds and timestamps from SOURCE_DATE_EPOCH.

use crate::RootfsError;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::path::Path;
use std::process::Command;

/// Filesystem of the root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFormat {
    Erofs,
    Ext4,
}

impl RootFormat {
    /// Kernel filesystem type name.
    pub fn fstype(self) -> &'static str {
        match self {
            RootFormat::Erofs => "erofs",
            RootFormat::Ext4 => "ext4",
        }
    }
}

/// How to make a root image.
#[derive(Debug, Clone)]
pub struct RootImageOptions {
    pub format: RootFormat,
    /// Filesystem UUID (canonical text).
    pub uuid: String,
    /// SOURCE_DATE_EPOCH: every timestamp in the image.
    pub epoch: u64,
    /// Size of the slot the image must fit.
    pub slot_size: u64,
}

/// Runs a tool, turning a missing binary or a failure into a clear error.
pub fn run_tool(cmd: &mut Command, package: &str) -> Result<(), RootfsError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| RootfsError::Tool {
        tool: tool.clone(),
        status: "could not start".into(),
        stderr: format!("{e} (install the Debian package {package})"),
    })?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Makes the read-only root image of `tree` at `out`; returns its size in bytes.
pub fn make_root_image(
    tree: &Path,
    out: &Path,
    opts: &RootImageOptions,
) -> Result<u64, RootfsError> {
    match opts.format {
        RootFormat::Erofs => {
            // -x-1: no xattrs (host labels must not leak in); -T: every inode gets the epoch.
            // -E noinline_data: a file's last partial block goes to its data, not next to its
            // inode. Inline tails interleave metadata with data, and every inode after an
            // inserted or grown file then changes (it holds an absolute block address): one
            // changed 4 KiB block per ~2 files, spread over the image, each taints a delta
            // chunk. Without them the metadata packs into a few blocks and an unchanged file's
            // bytes stay identical, only shifted. Costs ~2 KiB per regular file.
            run_tool(
                Command::new("mkfs.erofs")
                    .arg("--quiet")
                    .arg("-x-1")
                    .arg("-Enoinline_data")
                    .arg(format!("-T{}", opts.epoch))
                    .arg(format!("-U{}", opts.uuid))
                    .arg(out)
                    .arg(tree),
                "erofs-utils",
            )?;
        }
        RootFormat::Ext4 => {
            normalise_times(tree, opts.epoch)?;
            let blocks = opts.slot_size / 4096;
            run_tool(
                Command::new("mke2fs")
                    .env("E2FSPROGS_FAKE_TIME", opts.epoch.to_string())
                    .args([
                        "-q",
                        "-F",
                        "-t",
                        "ext4",
                        "-b",
                        "4096",
                        "-O",
                        "^has_journal",
                        "-m",
                        "0",
                    ])
                    .arg("-U")
                    .arg(&opts.uuid)
                    .arg("-E")
                    .arg(format!("hash_seed={},lazy_itable_init=0", opts.uuid))
                    .arg("-d")
                    .arg(tree)
                    .arg(out)
                    .arg(blocks.to_string()),
                "e2fsprogs",
            )?;
        }
    }
    let size = std::fs::metadata(out)
        .map_err(RootfsError::io(format!("reading {}", out.display())))?
        .len();
    if size > opts.slot_size {
        return Err(RootfsError::TooLarge {
            needed: size,
            slot: opts.slot_size,
        });
    }
    Ok(size)
}

/// Formats an empty ext4 filesystem of `size` bytes at `offset` inside the file `disk`.
pub fn format_ext4_at(
    disk: &Path,
    offset: u64,
    size: u64,
    uuid: &str,
    label: &str,
    epoch: u64,
) -> Result<(), RootfsError> {
    run_tool(
        Command::new("mke2fs")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
            .arg("-U")
            .arg(uuid)
            .arg("-L")
            .arg(label)
            .arg("-E")
            .arg(format!("offset={offset},hash_seed={uuid},lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0"))
            .arg(disk)
            .arg((size / 4096).to_string()),
        "e2fsprogs",
    )
}

/// Sets atime and mtime of every entry under `tree` (not following symlinks) to `epoch`.
pub fn normalise_times(tree: &Path, epoch: u64) -> Result<(), RootfsError> {
    let ts = TimeSpec::new(epoch as i64, 0);
    let mut stack = vec![tree.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)
            .map_err(RootfsError::io(format!("reading {}", p.display())))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)
                .map_err(RootfsError::io(format!("reading {}", p.display())))?
            {
                stack.push(
                    e.map_err(RootfsError::io(format!("reading {}", p.display())))?
                        .path(),
                );
            }
        }
        utimensat(None, &p, &ts, &ts, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| RootfsError::io(format!("setting times of {}", p.display()))(e.into()))?;
    }
    Ok(())
}
