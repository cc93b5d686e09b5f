//! Running a campaign: one disk, a chain of installs each cut at its point, each followed by a
//! boot and the invariant checks of the module's documentation.

use super::{loader_name, Cut, Outcome, Phase};
use crate::http::StaticServer;
use crate::updater::{slot, status};
use crate::{fixtures, Console, ConsoleError};
use imagebuilder::spec::Loader;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(300);
const INSTALL: Duration = Duration::from_secs(600);
const PERSIST_MARK: &str = "written-before-the-cuts";

/// One disk and the bundles it is updated with.
pub struct Campaign {
    loader: Loader,
    work: tempfile::TempDir,
    server: StaticServer,
    disk: PathBuf,
    console: Option<Console>,
    next_sequence: u64,
    /// (slot, version) pairs that were good at some point, or fully installed and verified
    /// there (staged): a booted or good slot must be one of them.
    known_good: BTreeSet<(String, String)>,
    /// Offset and size of the ESP in the disk file.
    esp: (u64, u64),
    esp_after_cut: Option<String>,
    pub log: Vec<String>,
}

type Res<T> = Result<T, String>;

fn ce(e: ConsoleError) -> String {
    e.to_string()
}

impl Campaign {
    /// Builds v1 for `loader` with the failpoint-enabled updater, boots it and writes the
    /// persist marker files.
    pub fn start(loader: Loader) -> Res<Campaign> {
        let updater = imagebuilder::find_device_binary("kiln-updater-failpoints")
            .ok_or("kiln-updater-failpoints not found: run scripts/build-device")?;
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let v1 = build(work.path(), loader, 1, &updater, &fixtures::init_bin());
        let www = work.path().join("www");
        std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
        let server = StaticServer::start(&www).map_err(|e| e.to_string())?;
        let mut c = Campaign {
            loader,
            server,
            disk: v1.disk.clone(),
            console: None,
            next_sequence: 2,
            known_good: BTreeSet::from([("a".to_string(), "1.0.0".to_string())]),
            esp: v1
                .partitions
                .iter()
                .find(|p| p.label == "esp")
                .map(|p| (p.offset, p.size))
                .ok_or("v1 has no esp partition")?,
            esp_after_cut: None,
            log: Vec::new(),
            work,
        };
        let con = c.boot()?;
        let (slot, version) = ready(con)?;
        if (slot.as_str(), version.as_str()) != ("a", "1.0.0") {
            return Err(format!("v1 booted as {slot} {version}"));
        }
        con.ok(&format!(
            "echo {PERSIST_MARK} > /etc/kiln-pc && echo {PERSIST_MARK} > /var/kiln-pc && sync"
        ))
        .map_err(ce)?;
        Ok(c)
    }

    fn boot(&mut self) -> Res<&mut Console> {
        self.console = None;
        let con = Console::boot(&self.disk).map_err(|e| format!("starting QEMU: {e}"))?;
        Ok(self.console.insert(con))
    }

    fn con(&mut self) -> &mut Console {
        self.console.as_mut().expect("a running VM")
    }

    /// Builds and bundles the next version (`bad`: with an initramfs that panics); returns
    /// (sequence, version, root sha256).
    fn next_bundle(&mut self, bad: bool) -> Res<(u64, String, String)> {
        let seq = self.next_sequence;
        self.next_sequence += 1;
        let updater = imagebuilder::find_device_binary("kiln-updater-failpoints")
            .ok_or("kiln-updater-failpoints not found")?;
        let init = if bad {
            let p = self.work.path().join("exit-init");
            std::fs::write(&p, fixtures::exit_elf()).map_err(|e| e.to_string())?;
            p
        } else {
            fixtures::init_bin()
        };
        let b = build(self.work.path(), self.loader, seq, &updater, &init);
        let out = self.work.path().join("www").join(format!("v{seq}"));
        let m = fixtures::dev_bundle(b.disk.parent().expect("build dir"), &out, seq);
        Ok((seq, format!("{seq}.0.0"), m.payloads.root.sha256.clone()))
    }

    /// Runs one cut and checks the invariants after it.
    pub fn cut(&mut self, cut: &Cut) -> Outcome {
        let start = Instant::now();
        let mut booted = String::from("-");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.cut_inner(cut, &mut booted)
        }))
        .unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()))
        });
        let o = Outcome {
            loader: self.loader,
            cut: cut.clone(),
            booted,
            error: r.err(),
            secs: start.elapsed().as_secs_f64(),
            esp_after_cut: self.esp_after_cut.take(),
        };
        eprintln!(
            "power cut {} {cut}: booted {} — {} ({:.0} s){}",
            loader_name(self.loader),
            o.booted,
            o.error.as_deref().unwrap_or("valid"),
            o.secs,
            o.esp_after_cut
                .as_deref()
                .map(|e| format!("; ESP after the cut: {e}"))
                .unwrap_or_default()
        );
        if !o.valid() {
            // Continue the chain from a fresh boot of the same disk.
            if let Some(c) = &self.console {
                self.log.push(format!("--- {cut} ---\n{}", c.transcript()));
            }
            // The chain goes on from whatever the recovery boot runs (the failure is reported).
            if let Ok(con) = self.boot() {
                if let Ok(pair) = ready(con) {
                    self.known_good.insert(pair);
                }
            }
        }
        o
    }

    fn cut_inner(&mut self, cut: &Cut, booted_out: &mut String) -> Res<()> {
        let bad = matches!(
            cut,
            Cut::Failpoint {
                phase: Phase::Reconcile,
                ..
            }
        );
        let (seq, version, root_sha) = self.next_bundle(bad)?;
        let url = self.server.guest_url(&format!("v{seq}"));
        let before = status(self.con());
        let booted_before = before["booted"].as_str().unwrap_or("").to_string();
        let target = if booted_before == "a" { "b" } else { "a" };
        let install = |fp: &str| format!("{fp}kiln-updater install --no-reboot {url}");
        let arm_file = |name: &str, nth: u32| {
            format!("echo '{name}=poweroff@{nth}' > /persist/kiln/failpoints && sync")
        };
        match cut {
            Cut::Failpoint {
                phase: Phase::Install,
                name,
                nth,
            } => {
                self.run_until_poweroff(
                    &install(&format!("KILN_FAILPOINTS='{name}=poweroff@{nth}' ")),
                    INSTALL,
                )?;
            }
            Cut::Failpoint {
                phase: Phase::Bless,
                name,
                nth,
            } => {
                self.install_ok(&install(""))?;
                self.known_good
                    .insert((target.to_string(), version.clone()));
                self.con().ok(&arm_file(name, *nth)).map_err(ce)?;
                self.reboot_until_poweroff(BOOT)?;
            }
            Cut::Failpoint {
                phase: Phase::Rollback,
                name,
                nth,
            } => {
                // Rollback needs a second good slot: install, boot and bless it first.
                self.install_ok(&install(""))?;
                let con = self.con();
                con.send_line("reboot").map_err(ce)?;
                let (s, v) = ready(con)?;
                if (s.as_str(), v.as_str()) != (target, version.as_str()) {
                    return Err(format!("the staged {version} booted as {s} {v}"));
                }
                self.known_good.insert((s, v));
                self.run_until_poweroff(
                    &format!("KILN_FAILPOINTS='{name}=poweroff@{nth}' kiln-updater rollback"),
                    INSTALL,
                )?;
            }
            Cut::Failpoint {
                phase: Phase::Reconcile,
                name,
                nth,
            } => {
                // A bundle whose initramfs panics: it uses up its tries, the loader falls back
                // and the reconcile of that boot meets the failpoint.
                self.install_ok(&install(""))?;
                self.con().ok(&arm_file(name, *nth)).map_err(ce)?;
                self.reboot_until_poweroff(Duration::from_secs(900))?;
            }
            Cut::Random { after_ms, .. } => {
                let con = self.con();
                con.send_line(&install("")).map_err(ce)?;
                std::thread::sleep(Duration::from_millis(*after_ms));
                self.console = None; // QEMU killed by PID: the plug is pulled.
            }
        }

        self.esp_after_cut = self.check_esp_on_host();
        // Power back on: same disk, same firmware variables.
        self.boot()?;
        let (slot_now, version_now) = ready(self.con())?;
        *booted_out = format!("{slot_now} {version_now}");
        let is_new = version_now == version;
        if is_new {
            if slot_now != target {
                return Err(format!(
                    "{version} booted from slot {slot_now}, not {target}"
                ));
            }
            // Only the fully verified root may run: read it back and compare.
            let size = root_size(self.work.path(), seq)?;
            let dev = if slot_now == "a" {
                "/dev/vda2"
            } else {
                "/dev/vda3"
            };
            let out = self
                .con()
                .ok(&format!("head -c {size} {dev} | sha256sum"))
                .map_err(ce)?;
            if !out.contains(&root_sha) {
                return Err(format!(
                    "slot {slot_now} runs {version} but its root does not match the manifest: {out}"
                ));
            }
        } else if !self
            .known_good
            .contains(&(slot_now.clone(), version_now.clone()))
        {
            return Err(format!(
                "booted {slot_now} {version_now}, which was never good there"
            ));
        }
        self.known_good
            .insert((slot_now.clone(), version_now.clone()));

        // Status coherent.
        let s = status(self.con());
        if s["booted"] != slot_now.as_str() {
            return Err(format!(
                "status says booted {}, console {slot_now}",
                s["booted"]
            ));
        }
        let me = slot(&s, &slot_now);
        if me["state"] != "good" || me["version"] != version_now.as_str() {
            return Err(format!("booted slot not good with {version_now}: {s}"));
        }
        for sl in ["a", "b"] {
            let x = slot(&s, sl);
            if x["state"] == "good" {
                let v = x["version"].as_str().unwrap_or("").to_string();
                let pair = (sl.to_string(), v.clone());
                let new_here = v == version && sl == target && is_new;
                if !new_here && !self.known_good.contains(&pair) {
                    return Err(format!(
                        "slot {sl} good with {v}, never verified there: {s}"
                    ));
                }
            }
        }

        // Persist data intact.
        let marks = self.con().ok("cat /etc/kiln-pc /var/kiln-pc").map_err(ce)?;
        if marks.trim() != format!("{PERSIST_MARK}\n{PERSIST_MARK}") {
            return Err(format!("persist files changed: {marks:?}"));
        }

        // The same install completes, unless the new version already runs or was blessed
        // before the cut (a rollback), or is the bundle that cannot boot.
        let blessed = s["installed_sequence"].as_u64().is_some_and(|n| n >= seq);
        if !is_new && !bad && !blessed {
            let (rc, out) = self.con().sh(&install(""), INSTALL).map_err(ce)?;
            if rc != 0 || !out.contains("staged") {
                return Err(format!("install after the cut did not complete: {out}"));
            }
            // The install goes to the slot not booted now, which is not the one planned before
            // the cut when the cut came before the install touched anything and the machine
            // booted the slot an earlier install had staged.
            let target_now = if slot_now == "a" { "b" } else { "a" };
            let s = status(self.con());
            let t = slot(&s, target_now);
            if t["version"] != version.as_str() {
                return Err(format!(
                    "after the re-install slot {target_now} is not {version}: {s}"
                ));
            }
            // Staged and verified: a cut before the next install touches it boots it (its
            // tries), which is the fully verified new version of that install.
            self.known_good
                .insert((target_now.to_string(), version.clone()));
        }
        Ok(())
    }

    /// `fsck.fat -n` of the ESP as the cut left it (a copy of its bytes); None when clean.
    fn check_esp_on_host(&self) -> Option<String> {
        let run = || -> std::io::Result<Option<String>> {
            let disk = std::fs::File::open(&self.disk)?;
            let copy = self.work.path().join("esp-after-cut.img");
            let out = std::fs::File::create(&copy)?;
            out.set_len(self.esp.1)?;
            let (off, len) = self.esp;
            for (a, b) in imagebuilder::disk::data_extents(&disk)? {
                let (a, b) = (a.max(off), b.min(off + len));
                if a < b {
                    imagebuilder::disk::copy_range(&disk, a, &out, a - off, b - a)?;
                }
            }
            drop(out);
            let o = std::process::Command::new("fsck.fat")
                .arg("-n")
                .arg(&copy)
                .output()?;
            let _ = std::fs::remove_file(&copy);
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            // What an unclean unmount always shows (the dirty flag, set while mounted, in the
            // boot sector but not its backup; the free-cluster hint) is not a finding.
            const BENIGN: &[&str] = &[
                "fsck.fat ",
                "differences between boot sector and its backup",
                "mostly harmless",
                "65:01/00",
                "Not automatically fixing this",
                "Dirty bit is set",
                "removing dirty bit",
                "Free cluster summary wrong",
                "Auto-correcting",
                "Leaving filesystem unchanged",
                " files, ",
            ];
            let findings: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !BENIGN.iter().any(|b| l.contains(b)))
                .collect();
            Ok((!findings.is_empty()).then(|| findings.join(" / ")))
        };
        run().unwrap_or_else(|e| Some(format!("cannot check: {e}")))
    }

    /// Runs `cmd`, which must end with the failpoint powering the machine off.
    fn run_until_poweroff(&mut self, cmd: &str, timeout: Duration) -> Res<()> {
        match self.con().sh(cmd, timeout) {
            Ok((rc, out)) => Err(format!(
                "the failpoint never fired: `{cmd}` ended with {rc}: {}",
                tail(&out)
            )),
            Err(_) => {
                let con = self.console.take().expect("a running VM");
                con.wait_exit(Duration::from_secs(30))
                    .map_err(|e| format!("the failpoint did not power off: {e}"))
            }
        }
    }

    /// Reboots; the failpoint must power the machine off before the next `kiln-ready`.
    fn reboot_until_poweroff(&mut self, timeout: Duration) -> Res<()> {
        let con = self.con();
        con.send_line("reboot").map_err(ce)?;
        match con.expect("kiln-ready", timeout) {
            Ok(_) => Err("the failpoint never fired: the next boot reached kiln-ready".into()),
            Err(_) => {
                let con = self.console.take().expect("a running VM");
                con.wait_exit(Duration::from_secs(30))
                    .map_err(|e| format!("the failpoint did not power off: {e}"))
            }
        }
    }

    fn install_ok(&mut self, cmd: &str) -> Res<()> {
        let (rc, out) = self.con().sh(cmd, INSTALL).map_err(ce)?;
        if rc != 0 || !out.contains("staged") {
            return Err(format!("`{cmd}` failed: {}", tail(&out)));
        }
        Ok(())
    }
}

/// Waits for `kiln-ready` and returns (slot, version).
fn ready(con: &mut Console) -> Res<(String, String)> {
    con.expect("kiln-ready slot=", BOOT).map_err(ce)?;
    let rest = con.expect("\n", Duration::from_secs(10)).map_err(ce)?;
    let mut it = rest.split_whitespace();
    let slot = it.next().unwrap_or("").to_string();
    let version = it
        .next()
        .and_then(|v| v.strip_prefix("version="))
        .unwrap_or("")
        .to_string();
    Ok((slot, version))
}

fn build(
    work: &Path,
    loader: Loader,
    seq: u64,
    updater: &Path,
    init: &Path,
) -> imagebuilder::pipeline::BuildReport {
    fixtures::build_default_opts(
        &work.join(format!("build-{seq}")),
        |s| {
            s.version = format!("{seq}.0.0");
            s.boot.loader = loader;
        },
        init,
        Some(updater),
    )
}

/// The last lines of a command's output, for error messages.
fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

fn root_size(work: &Path, seq: u64) -> Res<u64> {
    let m =
        std::fs::metadata(work.join(format!("build-{seq}/root.img"))).map_err(|e| e.to_string())?;
    Ok(m.len())
}
