//! `kiln-updater install`: a verified bundle written into the other slot (delta from the
//! running one), checked, and staged to boot next.

use super::*;

/// Passes the `install.root-chunk` failpoint after every root chunk.
struct Failpointed<P>(P);

impl<P: crate::install::Progress> crate::install::Progress for Failpointed<P> {
    fn update(&self, payload: &str, done: u64, total: Option<u64>) {
        self.0.update(payload, done, total);
        if payload == "root" {
            hit("install.root-chunk");
        }
    }
}

/// Options of `install`.
pub struct InstallOptions {
    pub allow_downgrade: bool,
    pub tries: u8,
    /// Make the slot boot next (false: write and verify only; `activate` later).
    pub activate: bool,
    /// Chunks in flight.
    pub parallel: usize,
    /// What the bundle must be (the node agent's target): checked before the slot is touched.
    pub expected: crate::bundle::expected::Expected,
}

/// The running slot's `name` as a seed: the opened `file` and where its chunks lie — the
/// payload `recorded` with it, else `index` of it now ([`slot_index::locate`], said on stdout).
/// The seed is optional: `None` (a full download) when the file cannot be opened or located.
fn running_seed(
    file: std::io::Result<fs::File>,
    recorded: Option<&Payload>,
    index: impl FnOnce(&fs::File) -> std::io::Result<Option<Payload>>,
    name: &str,
    slot: Slot,
    say: Say,
) -> Option<(fs::File, Payload)> {
    let f = file
        .map_err(|e| tracing::warn!("opening the running {name} of slot {slot}: {e}"))
        .ok()?;
    let (p, took) = slot_index::locate(recorded, || index(&f), &format!("{name} of slot {slot}"))?;
    if let Some(t) = took {
        say(&Event::Indexed {
            name: name.to_string(),
            slot,
            chunks: p.chunks.len(),
            bytes: p.size,
            ms: t.as_millis(),
        });
    }
    Some((f, p))
}

/// A Secure Boot image (`KILN_UKI=1`) boots signed UKIs: a kernel and initrd would leave its
/// entry with nothing bootable, and a UKI bundle for an image that boots kernels would need
/// keys its firmware may not have. Checked before anything is written (`install`) and again
/// before a written slot is made bootable (`activate`, whose manifest is read from persist).
pub(super) fn boot_kind_matches(
    release: &Release,
    m: &crate::bundle::manifest::Manifest,
) -> Result<()> {
    match (release.uki, m.payloads.is_uki()) {
        (true, false) => bail!(
            "this image boots signed unified kernel images (Secure Boot) and bundle {} carries a kernel and initrd",
            m.version
        ),
        (false, true) => bail!(
            "bundle {} carries signed unified kernel images (Secure Boot) and this image boots a kernel and initrd",
            m.version
        ),
        _ => Ok(()),
    }
}

/// Installs a bundle into the inactive slot and stages it. Returns the staged version.
/// The root hash a staged slot's entry carries: the signed manifest's.
pub(super) fn root_hash(m: &crate::bundle::manifest::Manifest) -> Option<&str> {
    m.root_verity.as_ref().map(|v| v.root_hash.as_str())
}

pub fn install(source: &str, o: &InstallOptions, say: Say) -> Result<String> {
    let ctx = Ctx::open()?;
    let booted = ctx.disk.booted;
    let target = booted.other();
    let mut st = state_file::load(&ctx.state_dir)?;
    let src = open_source(source)?;
    let policy = crate::device::policy::device_policy(&ctx.release, &st, o.allow_downgrade, now());
    let v = open_verified(
        src.as_ref(),
        &trusted_keys()?,
        ctx.release.threshold,
        &policy,
        &Limits::default(),
    )
    .with_context(|| format!("verifying {source}"))?;
    o.expected
        .check(&v.manifest, &v.bytes)
        .with_context(|| format!("verifying {source}"))?;
    let m = &v.manifest;
    boot_kind_matches(&ctx.release, m)?;
    let store = ChunkStore::open(src.as_ref(), m)
        .with_context(|| format!("looking for the chunk store of {source}"))?;
    say(&Event::Installing {
        version: m.version.clone(),
        sequence: m.sequence,
        target,
    });
    // Accepted: the floors rise now (saved with the first state write, before any slot write).
    crate::device::policy::record_accepted(&mut st, m);
    // An earlier run of this install stopped part way (cut: its record still says in-progress;
    // or failed): the slot is read back chunk by chunk and what it holds is kept (each chunk
    // hashed: the record only saves downloads, it is never trusted). Else nothing is read back.
    let resume = st.last_install.as_ref().is_some_and(|l| {
        l.version == m.version && (l.result == "in-progress" || l.result.starts_with("failed"))
    });

    // 1. The target slot is not bootable from here on (committed before any write).
    let mut boot = ctx.read_boot()?;
    boot.clear(target, booted)?;
    ctx.commit(&boot)?;
    hit("install.cleared");
    st.last_install = Some(LastInstall {
        version: m.version.clone(),
        result: "in-progress".into(),
        time: now(),
        ..LastInstall::default()
    });
    st.staged = None;
    st.written = None;
    state_file::save(&ctx.state_dir, &st)?;
    // The manifest's bytes (MiBs for a large root) are not held through the install: written
    // beside their final name now (the state directory exists since the save above), renamed
    // to it once the slot is written.
    let manifest_file = ctx.state_dir.join(format!("slot-{target}.manifest.json"));
    let manifest_new = ctx
        .state_dir
        .join(format!("slot-{target}.manifest.json.new"));
    fs::write(&manifest_new, &v.bytes)
        .with_context(|| format!("writing {}", manifest_new.display()))?;
    drop(v.bytes);

    let progress = Failpointed(crate::device::progress::reporter());
    // What the running slot holds: the manifest recorded when it was installed, else (a slot
    // written at the factory) an index made now by reading it.
    let running: Option<crate::bundle::manifest::Manifest> =
        fs::read(ctx.state_dir.join(format!("slot-{booted}.manifest.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    let mut totals = Stats::default();
    let result = (|| -> Result<String> {
        // 2. Root.
        let part = ctx.disk.part(target.partlabel())?;
        let node = ctx.disk.node(part)?;
        let dev = fs::File::options()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(&node)
            .with_context(|| format!("opening {node} exclusively"))?;
        let running_root = running_seed(
            ctx.disk
                .part(booted.partlabel())
                .and_then(|p| fs::File::open(ctx.disk.node(p)?)),
            running.as_ref().map(|r| &r.payloads.root),
            slot_index::index_slot,
            "root",
            booted,
            say,
        );
        let seed = running_root.as_ref().map(|(f, p)| Seed::new(f, 0, p));
        let written = write_payload(
            &store,
            "root",
            &m.payloads.root,
            &dev,
            0,
            BootDisk::size(part),
            &WriteOptions {
                seed: seed.as_ref(),
                parallel: o.parallel,
                progress: &progress,
                resume,
            },
        )?;
        let stats = written.stats;
        totals += stats;
        hit("install.root-written");
        // Verified as written (each chunk's digest and the whole root's, in write order).
        let root_sha = written.sha256;
        say(&Event::RootWritten {
            chunks: stats.chunks,
            fetched: stats.fetched,
            reused: stats.reused,
            reused_bytes: stats.reused_bytes,
            present: stats.present,
            booted,
        });
        // 3. The slot's boot files on the ESP (kernel and initrd, or its signed UKI):
        // temporary name, verify, rename, sync the directory. Seeded by the running slot's
        // file in the same role (a UKI by the running slot's UKI: all but its command line
        // and signature are the same chunks).
        let seeds = m.payloads.esp_files(booted);
        let running_files = running
            .as_ref()
            .map(|r| r.payloads.esp_files(booted))
            .unwrap_or_default();
        for (i, (name, payload, dest)) in m.payloads.esp_files(target).into_iter().enumerate() {
            let running_file = seeds[i].2.clone();
            let running_payload = running_files
                .get(i)
                .filter(|(n, _, _)| n.starts_with("uki") == name.starts_with("uki"))
                .map(|(_, p, _)| *p);
            let running = running_seed(
                fs::File::open(ctx.esp.path.join(&running_file)),
                running_payload,
                |f| slot_index::index_file(f).map(Some),
                name,
                booted,
                say,
            );
            let seed = running.as_ref().map(|(f, p)| Seed::new(f, 0, p));
            let fin = ctx.esp.path.join(&dest);
            let dir = fin.parent().expect("slot dir").to_path_buf();
            fs::create_dir_all(&dir)?;
            let tmp = fin.with_extension("new");
            let f = fs::File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&tmp)?;
            let written = write_payload(
                &store,
                name,
                payload,
                &f,
                0,
                u64::MAX,
                &WriteOptions {
                    seed: seed.as_ref(),
                    parallel: o.parallel,
                    progress: &progress,
                    // A new file: nothing of an earlier run is in it.
                    resume: false,
                },
            )?;
            totals += written.stats;
            drop(f);
            // A UKI is the kernel-bearing file: it meets the kernel's failpoints.
            if name != "initrd" {
                hit("install.kernel-written");
            }
            // Not a rename over the old file (unsafe on FAT against a cut): the slot is not
            // bootable, so its old file goes first.
            if fin.exists() {
                fs::remove_file(&fin)?;
                kiln_boot::systemd_boot::counting::sync_dir(&dir)?;
            }
            kiln_boot::rename_durable(
                &tmp,
                &fin,
                if name == "initrd" {
                    "install.initrd-renamed"
                } else {
                    "install.kernel-renamed"
                },
            )?;
        }
        // 4. Stage: committed last.
        let verified = VerifiedSlot::check(target, &m.version, &m.payloads.root.sha256, &root_sha)
            .context("the root read back does not match the manifest")?;
        if o.activate {
            boot.stage(verified, booted, o.tries)?;
            ctx.commit_staging(&boot, Some((target, root_hash(m))))?;
            hit("install.staged");
        }
        Ok(root_sha)
    })();
    say(&Event::Downloaded {
        fetched: totals.fetched,
        reused_bytes: totals.reused_bytes,
        booted,
    });
    match result {
        Ok(_) => {
            fs::rename(&manifest_new, &manifest_file)
                .with_context(|| format!("renaming {} into place", manifest_new.display()))?;
            let done = Staged {
                slot: target.to_string(),
                version: m.version.clone(),
                sequence: m.sequence,
            };
            if o.activate {
                st.staged = Some(done);
            } else {
                st.written = Some(done);
            }
            st.slot_versions
                .insert(target.to_string(), m.version.clone());
            st.last_install = Some(LastInstall {
                version: m.version.clone(),
                result: if o.activate { "staged" } else { "written" }.into(),
                time: now(),
                downloaded: totals.fetched,
                reused: totals.reused_bytes,
            });
            state_file::save(&ctx.state_dir, &st)?;
            if o.activate {
                say(&Event::Staged {
                    target,
                    tries: o.tries,
                    version: m.version.clone(),
                });
            } else {
                say(&Event::WrittenOnly {
                    target,
                    version: m.version.clone(),
                });
            }
            Ok(m.version.clone())
        }
        Err(e) => {
            st.last_install = Some(LastInstall {
                version: m.version.clone(),
                result: format!("failed: {e:#}"),
                time: now(),
                downloaded: totals.fetched,
                reused: totals.reused_bytes,
            });
            state_file::save(&ctx.state_dir, &st)?;
            Err(e.context(format!(
                "installing into slot {target} (left unbootable; slot {booted} untouched)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{Manifest, Payload, Payloads, RootVerity, FORMAT};
    use kiln_boot::contract::LoaderKind;

    fn release(uki: bool) -> Release {
        Release {
            name: "n".into(),
            version: "1.0.0".into(),
            compatible: "c".into(),
            threshold: 1,
            loader: LoaderKind::SystemdBoot,
            sequence: None,
            built: None,
            uki,
        }
    }

    fn manifest(uki: bool) -> Manifest {
        let p = || Payload {
            size: 0,
            sha256: String::new(),
            chunks: vec![],
        };
        Manifest {
            format: FORMAT,
            compatible: "c".into(),
            version: "2.0.0".into(),
            sequence: 2,
            created: 0,
            expires: 1,
            payloads: Payloads {
                root: p(),
                kernel: (!uki).then(p),
                initrd: (!uki).then(p),
                uki_a: uki.then(p),
                uki_b: uki.then(p),
            },
            root_verity: uki.then(|| RootVerity {
                root_hash: "ab".repeat(32),
                data_blocks: 1,
            }),
        }
    }

    #[test]
    fn a_bundle_must_boot_the_way_the_image_does() {
        assert!(boot_kind_matches(&release(false), &manifest(false)).is_ok());
        assert!(boot_kind_matches(&release(true), &manifest(true)).is_ok());
        let e = boot_kind_matches(&release(true), &manifest(false)).unwrap_err();
        assert!(
            e.to_string().contains("Secure Boot") && e.to_string().contains("kernel and initrd"),
            "{e}"
        );
        let e = boot_kind_matches(&release(false), &manifest(true)).unwrap_err();
        assert!(e.to_string().contains("bundle 2.0.0 carries signed"), "{e}");
    }
}
