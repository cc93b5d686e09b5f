//! `kiln inspect DISK`: what a Kiln disk (an image file, or a device) holds, read-only — its
//! partitions, the loader's A/B state (each slot's version, health, tries, command line and
//! root hash), and whether each slot's root still matches its entry's dm-verity root hash
//! (the tree recomputed from the slot's data, as the kernel would check it block by block).

use anyhow::{bail, Context, Result};
use kiln_boot::gpt::{parse_entries, parse_header};
use kiln_boot::state::Health;
use kiln_boot::{grub, systemd_boot, Slot};
use serde::Serialize;

/// A partition as `build.json` reports it.
pub use crate::pipeline::PartReport as Partition;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub disk: String,
    pub partitions: Vec<Partition>,
    /// `systemd-boot`, `grub`, or `none` (no ESP or no Kiln loader state on it).
    pub loader: String,
    pub slots: Vec<SlotReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotReport {
    pub slot: String,
    /// `good`, `pending` or `empty` (no loader entry: not bootable).
    pub state: String,
    pub version: Option<String>,
    /// Boots left for a pending slot.
    pub tries: Option<u8>,
    pub cmdline: Option<String>,
    /// The root hash the slot's entry gives (`kiln.verity=`).
    pub root_hash: Option<String>,
    /// Length of the filesystem image in the slot (from its erofs or ext4 superblock).
    pub image_bytes: Option<u64>,
    /// The slot's dm-verity tree: blocks covered and the root hash of the data as it is now.
    pub verity_blocks: Option<u64>,
    pub data_root_hash: Option<String>,
    /// `verified`, `corrupt: …`, `no tree`, `no hash in the entry`, `empty`.
    pub verifies: String,
}

/// A partition of an open disk as a volume for `fatfs`: reads within it, refuses writes.
struct Volume<'a> {
    f: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Volume<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.f.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Write for Volume<'_> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "kiln inspect is read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Volume<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

/// What the loader on the ESP says: its kind, and per slot (health, version, tries, cmdline).
type LoaderState = (String, Vec<(Slot, Health, String, String)>);

fn loader_state(f: &File, esp: &Partition) -> Result<LoaderState> {
    let vol = Volume {
        f,
        start: esp.offset,
        len: esp.size,
        pos: 0,
    };
    let fs =
        fatfs::FileSystem::new(vol, fatfs::FsOptions::new()).context("reading the ESP (FAT)")?;
    let root = fs.root_dir();
    let read = |path: &str| -> Option<Vec<u8>> {
        let mut b = Vec::new();
        root.open_file(path).ok()?.read_to_end(&mut b).ok()?;
        Some(b)
    };
    if let Some(env) = read(grub::ENV_PATH) {
        let vars = grub::parse_vars(&env).context("parsing grubenv")?;
        let state = grub::parse_state(&vars);
        let slots = state
            .entries
            .iter()
            .map(|(s, e)| {
                let cmd = vars
                    .get(&format!("{}_CMDLINE", s.to_string().to_uppercase()))
                    .cloned()
                    .unwrap_or_default();
                (*s, e.health, e.version.clone(), cmd)
            })
            .collect();
        return Ok(("grub".into(), slots));
    }
    let Ok(dir) = root.open_dir("loader/entries") else {
        return Ok(("none".into(), Vec::new()));
    };
    let mut files = Vec::new();
    for e in dir.iter() {
        let e = e.context("listing loader/entries")?;
        let name = e.file_name();
        if systemd_boot::counting::parse_file_name(&name).is_some() {
            let mut text = String::new();
            e.to_file()
                .read_to_string(&mut text)
                .with_context(|| format!("reading loader/entries/{name}"))?;
            files.push((name, text));
        }
    }
    let (state, details) = systemd_boot::counting::read_entries(files);
    let slots = details
        .into_iter()
        .filter_map(|(s, p)| {
            let e = state.entries.get(&s)?;
            // A UKI entry has no options: the command line is the image's signed one.
            let cmdline = match &p.efi {
                Some(efi) => read(efi.trim_start_matches('/'))
                    .and_then(|pe| {
                        crate::uki::section(&pe, ".cmdline").map(|c| {
                            String::from_utf8_lossy(c)
                                .trim_end_matches('\0')
                                .trim()
                                .to_string()
                        })
                    })
                    .unwrap_or_else(|| format!("(no command line: {efi} is missing or not a UKI)")),
                None => p.options,
            };
            Some((s, e.health, e.version.clone(), cmdline))
        })
        .collect();
    Ok(("systemd-boot".into(), slots))
}

/// Inspects the disk at `path` without writing to it.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lba1 = vec![0u8; 512];
    f.read_exact_at(&mut lba1, 512)
        .with_context(|| format!("{}: reading the GPT header", path.display()))?;
    let hdr = parse_header(&lba1).with_context(|| format!("{}: GPT header", path.display()))?;
    let mut entries = vec![0u8; hdr.entries_len()];
    f.read_exact_at(&mut entries, hdr.entries_lba * 512)
        .with_context(|| format!("{}: reading the GPT entries", path.display()))?;
    let parts = parse_entries(&hdr, &entries)
        .with_context(|| format!("{}: GPT entries", path.display()))?;
    let partitions: Vec<Partition> = parts
        .iter()
        .map(|p| Partition {
            number: p.number,
            label: p.name.clone(),
            type_guid: p.type_guid.clone(),
            guid: p.part_guid.clone(),
            offset: p.first_lba * 512,
            size: (p.last_lba - p.first_lba + 1) * 512,
        })
        .collect();
    let esp = partitions
        .iter()
        .find(|p| p.type_guid.eq_ignore_ascii_case(crate::layout::TYPE_ESP));
    let (loader, entries) = match esp {
        Some(esp) => loader_state(&f, esp)?,
        None => ("none".into(), Vec::new()),
    };
    let mut slots = Vec::new();
    for slot in [Slot::A, Slot::B] {
        let Some(part) = partitions.iter().find(|p| p.label == slot.partlabel()) else {
            bail!(
                "{}: no partition labelled {}",
                path.display(),
                slot.partlabel()
            );
        };
        let entry = entries.iter().find(|(s, ..)| *s == slot);
        let root_hash = entry
            .and_then(|(.., cmd)| kiln_boot::cmdline::verity_arg(cmd))
            .map(str::to_string);
        let mut head = vec![0u8; kiln_boot::image_len::HEAD];
        f.read_exact_at(&mut head, part.offset)
            .with_context(|| format!("{}: reading {}", path.display(), part.label))?;
        let image_bytes = kiln_boot::image_len::image_len(&head).filter(|&l| l <= part.size);
        let tree = match image_bytes {
            Some(len) => kiln_rootfs::verity::check_tree(&f, part.offset, len, part.size)
                .with_context(|| format!("{}: reading {}", path.display(), part.label))?,
            None => None,
        };
        let data_root_hash = tree.as_ref().map(|t| hex::encode(t.root_hash));
        let verifies = match (&image_bytes, &tree, &root_hash) {
            (None, ..) => "empty".to_string(),
            (Some(_), None, _) => "no tree".into(),
            (Some(_), Some(_), None) => "no hash in the entry".into(),
            (Some(_), Some(t), Some(h)) => {
                if data_root_hash.as_deref() == Some(h) && t.tree_matches {
                    "verified".into()
                } else if let Some(b) = t.bad_data_block {
                    format!("corrupt: data block {b} does not match the tree")
                } else if !t.tree_matches {
                    "corrupt: the hash tree does not match the data".into()
                } else {
                    "corrupt: the data's root hash is not the entry's".into()
                }
            }
        };
        slots.push(SlotReport {
            slot: slot.to_string(),
            state: match entry.map(|(_, h, ..)| h) {
                None => "empty".into(),
                Some(Health::Good) => "good".into(),
                Some(Health::Pending { .. }) => "pending".into(),
            },
            version: entry.map(|(_, _, v, _)| v.clone()),
            tries: entry.and_then(|(_, h, ..)| match h {
                Health::Pending { tries_left, .. } => Some(*tries_left),
                Health::Good => None,
            }),
            cmdline: entry.map(|(.., c)| c.clone()),
            root_hash,
            image_bytes,
            verity_blocks: tree.as_ref().map(|t| t.data_blocks),
            data_root_hash,
            verifies,
        });
    }
    Ok(Inspection {
        disk: path.display().to_string(),
        partitions,
        loader,
        slots,
    })
}

/// The inspection as text, one line per partition and a block per slot.
pub fn render(i: &Inspection) -> String {
    let mut s = format!("{} (loader: {})\n", i.disk, i.loader);
    for p in &i.partitions {
        s += &format!(
            "  {} {:<8} {:>12} bytes at {:>12}  {}\n",
            p.number, p.label, p.size, p.offset, p.guid
        );
    }
    for sl in &i.slots {
        s += &format!(
            "slot {}: {} {}{}\n  root: {}\n",
            sl.slot,
            sl.state,
            sl.version.as_deref().unwrap_or("-"),
            sl.tries
                .map(|t| format!(" ({t} tries left)"))
                .unwrap_or_default(),
            sl.verifies
        );
        if let Some(h) = &sl.root_hash {
            s += &format!("  root hash: {h}\n");
        }
        if let Some(c) = &sl.cmdline {
            s += &format!("  cmdline: {c}\n");
        }
    }
    s
}
