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
    use crate::{esp_initrd, esp_kernel, Slot};
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

    /// Entry text: the loader orders Kiln entries by `version`, which holds the priority.
    pub fn render(slot: Slot, e: &SlotEntry, title: &str, options: &str) -> String {
        format!(
            "# kiln-version {version}\ntitle {title} {version} (slot {slot})\nsort-key kiln\nversion {priority:010}\nlinux /{kernel}\ninitrd /{initrd}\noptions {options}\n",
            version = e.version,
            priority = e.priority,
            kernel = esp_kernel(slot),
            initrd = esp_initrd(slot),
        )
    }

    /// What an entry file says besides its name.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Parsed {
        pub file: String,
        pub version: String,
        pub priority: u32,
        pub title: String,
        pub options: String,
    }

    pub fn parse(file: &str, text: &str) -> Parsed {
        let mut p = Parsed {
            file: file.into(),
            version: String::new(),
            priority: 0,
            title: String::new(),
            options: String::new(),
        };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("# kiln-version ") {
                p.version = v.trim().into();
            } else if let Some(v) = line.strip_prefix("version ") {
                p.priority = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("options ") {
                p.options = v.trim().into();
            } else if let Some(v) = line.strip_prefix("title ") {
                p.title = v.split(' ').next().unwrap_or("").into();
            }
        }
        p
    }

    /// The `loader/entries` directory of a mounted ESP.
    pub struct EntriesDir(pub PathBuf);

    impl EntriesDir {
        /// Reads the state and each entry's details.
        pub fn read(&self) -> io::Result<(BootState, Vec<(Slot, Parsed)>)> {
            let mut state = BootState::default();
            let mut details = Vec::new();
            let mut names: Vec<String> = fs::read_dir(&self.0)?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            names.sort();
            for name in names {
                let Some((slot, health)) = parse_file_name(&name) else {
                    continue;
                };
                let p = parse(&name, &fs::read_to_string(self.0.join(&name))?);
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
            Ok((state, details))
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
                        let content = text(slot, e);
                        let same_text = old_file.as_ref().is_some_and(|o| {
                            fs::read_to_string(self.0.join(o)).is_ok_and(|t| t == content)
                        });
                        match &old_file {
                            Some(o) if same_text && *o == name => continue,
                            // Only the counter changed (a bless): one atomic rename.
                            Some(o) if same_text => {
                                crate::rename_durable(
                                    &self.0.join(o),
                                    &self.0.join(&name),
                                    "sdboot.entry-renamed",
                                )?;
                                continue;
                            }
                            _ => {}
                        }
                        let tmp = self.0.join(format!(".{name}.tmp"));
                        let mut f = fs::File::create(&tmp)?;
                        f.write_all(content.as_bytes())?;
                        f.sync_all()?;
                        crate::failpoint::hit("sdboot.entry-written");
                        crate::rename_durable(&tmp, &self.0.join(&name), "sdboot.entry-renamed")?;
                        if let Some(old) = old_file.filter(|o| *o != name) {
                            fs::remove_file(self.0.join(old))?;
                            crate::failpoint::hit("sdboot.stale-removed");
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
        fn commit_and_read_back_through_a_loader_rename() {
            let d = tempfile::tempdir().unwrap();
            let dir = EntriesDir(d.path().to_path_buf());
            let text = |s: Slot, e: &SlotEntry| render(s, e, "kiln", &format!("kiln.slot={s}"));
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
            let mut names: Vec<_> = fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["kiln-a.conf", "kiln-b.conf"]);
            assert_eq!(dir.read().unwrap().0, read);

            // What a torn rename and a cut before a rename leave: a second file for slot B
            // (emptied by the boot-time FAT check) and a temporary file. The next commit
            // keeps only the entries of the state.
            fs::write(d.path().join("kiln-b+1-2.conf"), "").unwrap();
            fs::write(d.path().join(".kiln-b.conf.tmp"), "x").unwrap();
            let (again, _) = dir.read().unwrap();
            assert_eq!(again, read, "an empty duplicate must not win");
            dir.commit(&again, text).unwrap();
            let mut names: Vec<_> = fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["kiln-a.conf", "kiln-b.conf"]);
        }
    }
}
