//! systemd-boot loader configuration and Boot Loader Specification (type 1) entries.

/// Path of the removable-media loader that firmware boots without any EFI variable.
pub const LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// `loader/loader.conf`: no menu delay, newest entry by version wins.
pub fn loader_conf() -> String {
    "timeout 0\nconsole-mode keep\neditor no\n".to_string()
}

/// Entries with boot counting, as files in `loader/entries/` (see [`counting::EntriesDir`]).
pub mod counting {
    use crate::state::{BootState, Health, SlotEntry};
    use crate::{esp_initrd, esp_kernel, esp_uki, Slot};
    use std::fs;
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};

    /// `kiln-a.conf`, `kiln-b+3.conf`, `kiln-b+2-1.conf`.
    pub fn file_name(slot: Slot, health: Health) -> String {
        match health {
            Health::Good => format!("kiln-{slot}.conf"),
            Health::Pending {
                tries_left,
                tries_done: 0,
            } => format!("kiln-{slot}+{tries_left}.conf"),
            Health::Pending {
                tries_left,
                tries_done,
            } => format!("kiln-{slot}+{tries_left}-{tries_done}.conf"),
        }
    }

    /// Parses an entry file name written by Kiln (and renamed by the loader).
    pub fn parse_file_name(name: &str) -> Option<(Slot, Health)> {
        let stem = name.strip_prefix("kiln-")?.strip_suffix(".conf")?;
        let (slot, counter) = match stem.split_once('+') {
            Some((s, c)) => (s, Some(c)),
            None => (stem, None),
        };
        let slot: Slot = slot.parse().ok()?;
        let health = match counter {
            None => Health::Good,
            Some(c) => {
                let (left, done) = c.split_once('-').unwrap_or((c, "0"));
                Health::Pending {
                    tries_left: left.parse().ok()?,
                    tries_done: done.parse().ok()?,
                }
            }
        };
        Some((slot, health))
    }

    /// What an entry boots.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum EntryBoot<'a> {
        /// The slot's kernel and initrd with this command line.
        Linux { options: &'a str },
        /// The slot's signed unified kernel image ([`crate::esp_uki`]). No `options` line: the
        /// image's own signed command line is the one that counts (under Secure Boot the stub
        /// ignores the loader's, and without it an `options` line would override the signed
        /// one).
        Uki,
    }

    /// Entry text: the loader orders Kiln entries by `version`, which holds the priority.
    pub fn render(slot: Slot, e: &SlotEntry, title: &str, boot: EntryBoot<'_>) -> String {
        let head = format!(
            "# kiln-version {version}\ntitle {title} {version} (slot {slot})\nsort-key kiln\nversion {priority:010}\n",
            version = e.version,
            priority = e.priority,
        );
        match boot {
            EntryBoot::Linux { options } => format!(
                "{head}linux /{kernel}\ninitrd /{initrd}\noptions {options}\n",
                kernel = esp_kernel(slot),
                initrd = esp_initrd(slot),
            ),
            EntryBoot::Uki => format!("{head}efi /{}\n", esp_uki(slot)),
        }
    }

    /// What an entry file says besides its name.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Parsed {
        pub file: String,
        pub version: String,
        pub priority: u32,
        pub title: String,
        pub options: String,
        /// The `efi` line's path (an entry booting a unified kernel image).
        pub efi: Option<String>,
    }

    pub fn parse(file: &str, text: &str) -> Parsed {
        let mut p = Parsed {
            file: file.into(),
            version: String::new(),
            priority: 0,
            title: String::new(),
            options: String::new(),
            efi: None,
        };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("# kiln-version ") {
                p.version = v.trim().into();
            } else if let Some(v) = line.strip_prefix("version ") {
                p.priority = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("options ") {
                p.options = v.trim().into();
            } else if let Some(v) = line.strip_prefix("efi ") {
                p.efi = Some(v.trim().into());
            } else if let Some(v) = line.strip_prefix("title ") {
                p.title = v.split(' ').next().unwrap_or("").into();
            }
        }
        p
    }

    /// The state and each slot's entry details from the entry files `(name, text)` of a
    /// `loader/entries` directory (other names are ignored).
    pub fn read_entries(mut files: Vec<(String, String)>) -> (BootState, Vec<(Slot, Parsed)>) {
        let mut state = BootState::default();
        let mut details = Vec::new();
        files.sort();
        for (name, text) in files {
            let Some((slot, health)) = parse_file_name(&name) else {
                continue;
            };
            let p = parse(&name, &text);
            let entry = SlotEntry {
                version: p.version.clone(),
                priority: p.priority,
                health,
            };
            // Two files for one slot can only come from a cut between rename and unlink:
            // keep the higher priority.
            if state
                .entries
                .get(&slot)
                .is_none_or(|e| e.priority < entry.priority)
            {
                state.entries.insert(slot, entry);
                details.retain(|(s, _)| *s != slot);
                details.push((slot, p));
            }
        }
        (state, details)
    }

    /// The `loader/entries` directory of a mounted ESP.
    #[derive(Debug, Clone)]
    pub struct EntriesDir(pub PathBuf);

    impl EntriesDir {
        /// A new entry: temporary file, fsync, rename to a name that does not exist, fsyncs.
        fn create(&self, name: &str, content: &str) -> io::Result<()> {
            let path = self.0.join(name);
            if path.exists() {
                fs::remove_file(&path)?;
                sync_dir(&self.0)?;
            }
            let tmp = self.0.join(format!(".{name}.tmp"));
            let mut f = fs::File::create(&tmp)?;
            f.write_all(content.as_bytes())?;
            f.sync_all()?;
            crate::failpoint::hit("sdboot.entry-written");
            crate::rename_durable(&tmp, &path, "sdboot.entry-renamed")
        }

        /// Replaces another version's entry: the old file goes first (a slot being replaced is
        /// not the one to fall back to), then [`EntriesDir::create`].
        fn replace(&self, old: &str, name: &str, content: &str) -> io::Result<()> {
            fs::remove_file(self.0.join(old))?;
            sync_dir(&self.0)?;
            crate::failpoint::hit("sdboot.stale-removed");
            self.create(name, content)
        }

        /// Reads the state and each entry's details.
        pub fn read(&self) -> io::Result<(BootState, Vec<(Slot, Parsed)>)> {
            let mut files = Vec::new();
            for e in fs::read_dir(&self.0)? {
                let name = e?.file_name().to_string_lossy().into_owned();
                if parse_file_name(&name).is_some() {
                    let text = fs::read_to_string(self.0.join(&name))?;
                    files.push((name, text));
                }
            }
            Ok(read_entries(files))
        }

        /// Commits `new` over what is on disk: changed entries are written to a temporary
        /// file, fsynced and renamed; stale names are removed; the directory is fsynced.
        /// `text(slot, entry)` renders an entry.
        pub fn commit(
            &self,
            new: &BootState,
            text: impl Fn(Slot, &SlotEntry) -> String,
        ) -> io::Result<()> {
            let (_, on_disk) = self.read()?;
            for slot in Slot::ALL {
                let old_file = on_disk
                    .iter()
                    .find(|(s, _)| *s == slot)
                    .map(|(_, p)| p.file.clone());
                match new.entries.get(&slot) {
                    None => {
                        if let Some(f) = old_file {
                            fs::remove_file(self.0.join(f))?;
                            crate::failpoint::hit("sdboot.stale-removed");
                        }
                    }
                    Some(e) => {
                        let name = file_name(slot, e.health);
                        let old = on_disk.iter().find(|(s, _)| *s == slot).map(|(_, p)| p);
                        // An entry of the same version: never replaced through a rename over
                        // it (on FAT that is not safe against a cut). The priority is edited
                        // in place (fixed width: same length), the counter by a rename to a
                        // name that does not exist.
                        if let Some(p) = old.filter(|p| p.version == e.version) {
                            if p.priority != e.priority {
                                let path = self.0.join(&p.file);
                                let current = fs::read_to_string(&path)?;
                                match with_priority(&current, e.priority) {
                                    Some(t) => rewrite_in_place(
                                        &path,
                                        t.as_bytes(),
                                        "sdboot.entry-written",
                                    )?,
                                    None => {
                                        // Not in Kiln's form: replace it whole.
                                        self.replace(&p.file, &name, &text(slot, e))?;
                                        continue;
                                    }
                                }
                            }
                            if p.file != name {
                                crate::rename_durable(
                                    &self.0.join(&p.file),
                                    &self.0.join(&name),
                                    "sdboot.entry-renamed",
                                )?;
                            }
                            continue;
                        }
                        let content = text(slot, e);
                        match old {
                            Some(p) => self.replace(&p.file, &name, &content)?,
                            None => self.create(&name, &content)?,
                        }
                    }
                }
            }
            // Sweep what a cut can leave behind: a second file for a slot (a torn rename; the
            // boot-time FAT check has already unshared its clusters) and temporary files.
            for name in fs::read_dir(&self.0)?.filter_map(|e| e.ok()) {
                let name = name.file_name().to_string_lossy().into_owned();
                let keep = match parse_file_name(&name) {
                    Some((slot, _)) => new
                        .entries
                        .get(&slot)
                        .is_some_and(|e| file_name(slot, e.health) == name),
                    None => !(name.starts_with(".kiln-") && name.ends_with(".tmp")),
                };
                if !keep {
                    fs::remove_file(self.0.join(&name))?;
                    crate::failpoint::hit("sdboot.stale-removed");
                }
            }
            sync_dir(&self.0)
        }
    }

    /// `text` with its `version` line (the priority, fixed width) set to `priority`; None when
    /// the line is missing or not in Kiln's fixed-width form.
    pub fn with_priority(text: &str, priority: u32) -> Option<String> {
        let start = text.find("\nversion ")? + "\nversion ".len();
        let digits = &text[start..];
        let end = digits.find('\n').unwrap_or(digits.len());
        if end != 10 || !digits[..end].bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(format!(
            "{}{priority:010}{}",
            &text[..start],
            &digits[end..]
        ))
    }

    /// Overwrites the whole content of an existing file of the same length, then fsyncs it;
    /// `hit` names the failpoint between the write and the fsync.
    pub fn rewrite_in_place(path: &Path, data: &[u8], hit: &'static str) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(path)?;
        f.write_all_at(data, 0)?;
        crate::failpoint::hit(hit);
        f.sync_all()
    }

    /// fsyncs a directory so renames and unlinks in it are durable.
    pub fn sync_dir(dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::state::VerifiedSlot;

        #[test]
        fn names_round_trip() {
            for h in [
                Health::Good,
                Health::Pending {
                    tries_left: 3,
                    tries_done: 0,
                },
                Health::Pending {
                    tries_left: 0,
                    tries_done: 3,
                },
            ] {
                assert_eq!(parse_file_name(&file_name(Slot::B, h)), Some((Slot::B, h)));
            }
            assert_eq!(
                parse_file_name("kiln-b+2-1.conf"),
                Some((
                    Slot::B,
                    Health::Pending {
                        tries_left: 2,
                        tries_done: 1
                    }
                ))
            );
            assert_eq!(parse_file_name("other.conf"), None);
            assert_eq!(parse_file_name("kiln-c.conf"), None);
        }

        #[test]
        fn priority_edit_keeps_the_length() {
            let t = "# kiln-version 1\ntitle x\nversion 0000000001\noptions a b\n";
            let n = with_priority(t, 42).unwrap();
            assert_eq!(n.len(), t.len());
            assert!(n.contains("\nversion 0000000042\n"));
            assert_eq!(with_priority("title x\nversion 7\n", 2), None);
        }

        #[test]
        fn a_rollback_rewrites_the_other_entry_in_place() {
            use std::os::unix::fs::MetadataExt;
            let d = tempfile::tempdir().unwrap();
            let dir = EntriesDir(d.path().to_path_buf());
            let good = |v: &str, p: u32| SlotEntry {
                version: v.into(),
                priority: p,
                health: Health::Good,
            };
            let mut st = BootState::default();
            st.entries.insert(Slot::A, good("1", 1));
            st.entries.insert(Slot::B, good("2", 2));
            // Slot A's entry was written by an older renderer (other options): kept as is.
            let text = |s: Slot, e: &SlotEntry| {
                render(
                    s,
                    e,
                    "kiln",
                    EntryBoot::Linux {
                        options: "new options",
                    },
                )
            };
            fs::write(
                d.path().join("kiln-a.conf"),
                render(
                    Slot::A,
                    &good("1", 1),
                    "kiln",
                    EntryBoot::Linux {
                        options: "old options",
                    },
                ),
            )
            .unwrap();
            dir.commit(&st, text).unwrap();
            let a = d.path().join("kiln-a.conf");
            let ino = fs::metadata(&a).unwrap().ino();
            assert!(fs::read_to_string(&a).unwrap().contains("old options"));
            st.rollback(Slot::B).unwrap();
            dir.commit(&st, text).unwrap();
            let after = fs::read_to_string(&a).unwrap();
            assert!(after.contains("version 0000000003") && after.contains("old options"));
            assert_eq!(fs::metadata(&a).unwrap().ino(), ino, "rewritten in place");
            assert_eq!(dir.read().unwrap().0, st);
        }

        #[test]
        fn a_uki_entry_names_the_slot_image_and_no_command_line() {
            let e = SlotEntry {
                version: "2.0.0".into(),
                priority: 7,
                health: Health::Good,
            };
            let t = render(Slot::B, &e, "kiln", EntryBoot::Uki);
            assert_eq!(
                t,
                "# kiln-version 2.0.0\ntitle kiln 2.0.0 (slot b)\nsort-key kiln\nversion 0000000007\nefi /kiln/b/kiln.efi\n"
            );
            let p = parse("kiln-b.conf", &t);
            assert_eq!(
                (p.efi.as_deref(), p.options.as_str(), p.priority),
                (Some("/kiln/b/kiln.efi"), "", 7)
            );
            // The counter's priority edit works on it as on a kernel entry.
            assert!(with_priority(&t, 8)
                .unwrap()
                .contains("\nversion 0000000008\nefi "));
        }

        /// The file names in `dir`, sorted.
        fn names(dir: &Path) -> Vec<String> {
            let mut n: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        }

        #[test]
        fn commit_and_read_back_through_a_loader_rename() {
            let d = tempfile::tempdir().unwrap();
            let dir = EntriesDir(d.path().to_path_buf());
            let text = |s: Slot, e: &SlotEntry| {
                render(
                    s,
                    e,
                    "kiln",
                    EntryBoot::Linux {
                        options: &format!("kiln.slot={s}"),
                    },
                )
            };
            let mut st = BootState::default();
            st.entries.insert(
                Slot::A,
                SlotEntry {
                    version: "1".into(),
                    priority: 1,
                    health: Health::Good,
                },
            );
            dir.commit(&st, text).unwrap();
            st.clear(Slot::B, Slot::A).unwrap();
            st.stage(
                VerifiedSlot::check(Slot::B, "2", "x", "x").unwrap(),
                Slot::A,
                3,
            )
            .unwrap();
            dir.commit(&st, text).unwrap();
            assert!(d.path().join("kiln-b+3.conf").exists());
            // The loader counts one try by renaming.
            fs::rename(
                d.path().join("kiln-b+3.conf"),
                d.path().join("kiln-b+2-1.conf"),
            )
            .unwrap();
            let (mut read, details) = dir.read().unwrap();
            assert_eq!(read.next_boot(), Some(Slot::B));
            assert_eq!(read.entries[&Slot::B].version, "2");
            assert!(details.iter().any(|(_, p)| p.options == "kiln.slot=b"));
            read.bless(Slot::B).unwrap();
            dir.commit(&read, text).unwrap();
            assert_eq!(names(d.path()), ["kiln-a.conf", "kiln-b.conf"]);
            assert_eq!(dir.read().unwrap().0, read);

            // What a torn rename and a cut before a rename leave: a second file for slot B
            // (emptied by the boot-time FAT check) and a temporary file. The next commit
            // keeps only the entries of the state.
            fs::write(d.path().join("kiln-b+1-2.conf"), "").unwrap();
            fs::write(d.path().join(".kiln-b.conf.tmp"), "x").unwrap();
            let (again, _) = dir.read().unwrap();
            assert_eq!(again, read, "an empty duplicate must not win");
            dir.commit(&again, text).unwrap();
            assert_eq!(names(d.path()), ["kiln-a.conf", "kiln-b.conf"]);
        }
    }
}
