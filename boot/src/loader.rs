//! The A/B records of a mounted ESP, as the image's boot loader keeps them: systemd-boot's
//! loader entries (boot counting in the file names) or GRUB's grubenv (both slots' command
//! lines in it). The updater reads and commits through this one type and never asks which
//! loader it is; both backends commit with the durability rules of their own module.

use crate::contract::LoaderKind;
use crate::grub::{self, GrubEnv};
use crate::state::BootState;
use crate::systemd_boot::counting::{file_name, render, EntriesDir, EntryBoot};
use crate::Slot;
use std::io;
use std::path::Path;

/// One image's loader records on its mounted ESP.
#[derive(Debug, Clone)]
pub struct Loader {
    backend: Backend,
    /// Entry titles (`KILN_NAME`).
    title: String,
    /// Entries boot the slot's signed UKI (no command line in them).
    uki: bool,
}

#[derive(Debug, Clone)]
enum Backend {
    SystemdBoot(EntriesDir),
    Grub(GrubEnv),
}

impl Loader {
    /// The records of `kind` on the ESP mounted at `esp`.
    pub fn new(kind: LoaderKind, esp: &Path, title: &str, uki: bool) -> Loader {
        let backend = match kind {
            LoaderKind::SystemdBoot => Backend::SystemdBoot(EntriesDir(esp.join("loader/entries"))),
            LoaderKind::Grub => Backend::Grub(GrubEnv(esp.join(grub::ENV_PATH))),
        };
        Loader {
            backend,
            title: title.to_string(),
            uki,
        }
    }

    /// The A/B state the records hold.
    pub fn read(&self) -> io::Result<BootState> {
        match &self.backend {
            Backend::SystemdBoot(d) => Ok(d.read()?.0),
            Backend::Grub(env) => Ok(env.read()?.0),
        }
    }

    /// The command line `slot`'s record carries (its grubenv line, or its entry's options);
    /// `None` when there is no record or it cannot be read.
    pub fn recorded_cmdline(&self, slot: Slot) -> Option<String> {
        match &self.backend {
            Backend::SystemdBoot(d) => {
                let (_, entries) = d.read().ok()?;
                Some(entries.into_iter().find(|(s, _)| *s == slot)?.1.options)
            }
            Backend::Grub(env) => {
                let (_, vars) = env.read().ok()?;
                vars.get(&format!("{}_CMDLINE", slot.to_string().to_uppercase()))
                    .cloned()
            }
        }
    }

    /// Commits `boot` over the records; `cmdline(slot)` is each slot's kernel command line
    /// (unused by entries that boot a signed UKI).
    pub fn commit(&self, boot: &BootState, cmdline: impl Fn(Slot) -> String) -> io::Result<()> {
        match &self.backend {
            Backend::Grub(env) => env.commit(boot, cmdline),
            Backend::SystemdBoot(d) => d.commit(boot, |s, e| {
                let options = cmdline(s);
                let how = if self.uki {
                    EntryBoot::Uki
                } else {
                    EntryBoot::Linux { options: &options }
                };
                render(s, e, &self.title, how)
            }),
        }
    }

    /// The records of `boot` as the files of a new ESP (path on the ESP, content): what the
    /// builder writes into a factory image, rendered as [`Loader::commit`] renders them.
    pub fn render_files(
        kind: LoaderKind,
        boot: &BootState,
        title: &str,
        uki: bool,
        cmdline: impl Fn(Slot) -> String,
    ) -> io::Result<Vec<(String, Vec<u8>)>> {
        Ok(match kind {
            LoaderKind::Grub => {
                vec![(grub::ENV_PATH.to_string(), grub::render_env(boot, cmdline)?)]
            }
            LoaderKind::SystemdBoot => boot
                .entries
                .iter()
                .map(|(&s, e)| {
                    let options = cmdline(s);
                    let how = if uki {
                        EntryBoot::Uki
                    } else {
                        EntryBoot::Linux { options: &options }
                    };
                    (
                        format!("loader/entries/{}", file_name(s, e.health)),
                        render(s, e, title, how).into_bytes(),
                    )
                })
                .collect(),
        })
    }

    /// What the records are called in messages.
    pub fn describe(&self) -> &'static str {
        match self.backend {
            Backend::SystemdBoot(_) => "the loader entries",
            Backend::Grub(_) => "grubenv",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Health, SlotEntry};

    fn state() -> BootState {
        let mut b = BootState::default();
        b.entries.insert(
            Slot::A,
            SlotEntry {
                version: "1.0.0".into(),
                health: Health::Good,
                priority: 10,
            },
        );
        b
    }

    #[test]
    fn both_loaders_round_trip_the_state_and_the_command_lines() {
        for kind in [LoaderKind::SystemdBoot, LoaderKind::Grub] {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(d.path().join("loader/entries")).unwrap();
            std::fs::create_dir_all(d.path().join(grub::ENV_PATH).parent().unwrap()).unwrap();
            let l = Loader::new(kind, d.path(), "kiln", false);
            let line = |s: Slot| format!("root=PARTUUID=x ro kiln.slot={s}");
            l.commit(&state(), line).unwrap();
            assert_eq!(l.read().unwrap(), state(), "{kind:?}");
            assert_eq!(l.recorded_cmdline(Slot::A), Some(line(Slot::A)), "{kind:?}");
            assert!(!l.describe().is_empty());
            // A factory ESP's files are what a commit writes.
            let files = Loader::render_files(kind, &state(), "kiln", false, line).unwrap();
            for (path, data) in &files {
                assert_eq!(&std::fs::read(d.path().join(path)).unwrap(), data, "{path}");
            }
            assert_eq!(files.len(), 1);
        }
    }
}
