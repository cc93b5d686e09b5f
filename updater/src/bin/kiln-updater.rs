//! kiln-updater: signed A/B updates on the device. Thin CLI over `kiln_updater::device::ops`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use kiln_updater::bundle::expected::{is_manifest_digest, Expected};
use kiln_updater::device::ops;

#[derive(Parser)]
#[command(
    name = "kiln-updater",
    version,
    about = "Install signed A/B updates, bless and roll back slots"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Verify a bundle (URL, directory or .kbundle), write it into the inactive slot, stage it, reboot.
    Install {
        source: String,
        #[arg(long)]
        allow_downgrade: bool,
        /// Do not reboot after staging.
        #[arg(long)]
        no_reboot: bool,
        /// Write and verify the slot only: it does not boot until `activate` (implies
        /// --no-reboot). The node agent stages before draining this way.
        #[arg(long)]
        no_activate: bool,
        /// Boot tries before the loader falls back.
        #[arg(long, default_value_t = 3)]
        tries: u8,
        /// Chunks fetched at once.
        #[arg(long, default_value_t = kiln_updater::install::PARALLEL, value_parser = parallel)]
        parallel: usize,
        /// Refuse (before writing anything) a bundle of any other version.
        #[arg(long)]
        expect_version: Option<String>,
        /// Refuse a bundle whose manifest has another digest (`sha256:HEX` of its
        /// manifest.json, as `kiln bundle` prints it).
        #[arg(long, value_parser = manifest_digest)]
        expect_manifest: Option<String>,
    },
    /// Write one payload of a signed bundle into a file, reusing the chunks an older image
    /// holds (like `casync extract --seed`); also runs on a host. An interrupted run resumes.
    Extract {
        source: String,
        /// Public key file to trust (repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<std::path::PathBuf>,
        /// Signatures needed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// The compatible string the bundle must carry.
        #[arg(long)]
        compatible: String,
        /// root, kernel or initrd (uki-a or uki-b in a Secure Boot bundle).
        #[arg(long, default_value = "root")]
        payload: String,
        /// Older image whose chunks are reused (indexed first unless --seed-manifest).
        #[arg(long)]
        seed: Option<std::path::PathBuf>,
        /// Manifest of the seed's bundle (where its chunks lie).
        #[arg(long)]
        seed_manifest: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = kiln_updater::install::PARALLEL, value_parser = parallel)]
        parallel: usize,
        /// Print what was done as JSON on stdout (no progress lines).
        #[arg(long)]
        json: bool,
        /// Output file (written as OUT.part, renamed once verified).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Make the slot written by `install --no-activate` boot next (verified again first).
    Activate {
        /// Boot tries before the loader falls back.
        #[arg(long, default_value_t = 3)]
        tries: u8,
        /// Reboot into it.
        #[arg(long)]
        reboot: bool,
    },
    /// Booted slot, each slot's version and state, last install, rollbacks.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run the health checks and bless the booted slot (exit status 3: pending and unhealthy).
    MarkGood,
    /// Make the other good slot the default for the next boot.
    Rollback,
    /// Notice a fallback after a failed update (run on every boot).
    Reconcile,
}

/// Prints `kiln-updater: error: …` in one write: stderr is unbuffered, and `eprintln!` would
/// write each piece separately, letting another writer on the console split the line.
fn error_line(e: &anyhow::Error) {
    use std::io::Write;
    let line = format!("kiln-updater: error: {e:#}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    #[cfg(feature = "failpoints")]
    if let Err(e) = failpoints::arm() {
        error_line(&e);
        std::process::exit(1);
    }
    if let Err(e) = run() {
        error_line(&e);
        // 3: a pending slot is unhealthy (the boot script reboots so the loader spends a try).
        let code = if e.downcast_ref::<ops::Unhealthy>().is_some() {
            3
        } else {
            1
        };
        std::process::exit(code);
    }
}

fn parallel(s: &str) -> Result<usize, String> {
    let max = kiln_updater::install::MAX_PARALLEL;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: expected 1 to {max}")),
    }
}

fn manifest_digest(s: &str) -> Result<String, String> {
    if is_manifest_digest(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: expected sha256: and 64 lowercase hex digits"
        ))
    }
}

/// Prints an operation's event as `kiln-updater: <event>`.
fn say(e: &ops::Event) {
    println!("kiln-updater: {e}");
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Install {
            source,
            allow_downgrade,
            no_reboot,
            no_activate,
            tries,
            parallel,
            expect_version,
            expect_manifest,
        } => {
            ops::install(
                &source,
                &ops::InstallOptions {
                    allow_downgrade,
                    tries,
                    activate: !no_activate,
                    parallel,
                    expected: Expected {
                        version: expect_version,
                        manifest_digest: expect_manifest,
                    },
                },
                &say,
            )?;
            if !no_reboot && !no_activate {
                println!("kiln-updater: rebooting");
                let _ = std::process::Command::new("reboot").status();
            }
        }
        Cmd::Extract {
            source,
            keys,
            threshold,
            compatible,
            payload,
            seed,
            seed_manifest,
            parallel,
            json,
            out,
        } => {
            let r = kiln_updater::device::extract::extract(
                &source,
                &kiln_updater::device::extract::ExtractOptions {
                    keys,
                    threshold,
                    compatible,
                    payload,
                    out: out.clone(),
                    seed,
                    seed_manifest,
                    parallel,
                    progress: !json,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "kiln-updater: {} {} verified into {}: downloaded {:.1} MiB in {} chunks, reused {:.1} MiB in {} chunks, {} chunks already there",
                    r.version,
                    r.sha256,
                    out.display(),
                    r.downloaded as f64 / 1048576.0,
                    r.chunks_fetched,
                    r.reused as f64 / 1048576.0,
                    r.chunks_reused,
                    r.chunks_present
                );
            }
        }
        Cmd::Activate { tries, reboot } => {
            ops::activate(tries, &say)?;
            if reboot {
                println!("kiln-updater: rebooting");
                let _ = std::process::Command::new("reboot").status();
            }
        }
        Cmd::Status { json } => {
            let s = ops::status()?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!(
                    "booted slot {} (next boot {})",
                    s.booted,
                    s.next_boot.as_deref().unwrap_or("-")
                );
                for sl in &s.slots {
                    println!(
                        "slot {}: {} {}",
                        sl.slot,
                        sl.state,
                        sl.version.as_deref().unwrap_or("")
                    );
                }
                if let Some(l) = &s.last_install {
                    println!("last install: {} {}", l.version, l.result);
                }
                if let Some(r) = &s.rolled_back_from {
                    println!("rolled back from {r}");
                }
            }
        }
        Cmd::MarkGood => {
            ops::mark_good(&say)?;
        }
        Cmd::Rollback => {
            let s = ops::rollback()?;
            println!("kiln-updater: slot {s} boots next");
        }
        Cmd::Reconcile => ops::reconcile(&say)?,
    }
    Ok(())
}

/// Arming the failpoints of a test image: `$KILN_FAILPOINTS`, and the one-shot file
/// `/persist/kiln/failpoints` (for the boot-time `reconcile` and `mark-good`), which is removed
/// and its removal made durable just before one of its points fires.
#[cfg(feature = "failpoints")]
mod failpoints {
    use anyhow::{Context, Result};
    use kiln_boot::failpoint;

    pub const FILE: &str = "/persist/kiln/failpoints";

    pub fn arm() -> Result<()> {
        if let Ok(spec) = std::env::var("KILN_FAILPOINTS") {
            failpoint::arm(failpoint::parse(&spec).context("KILN_FAILPOINTS")?);
        }
        if let Ok(spec) = std::fs::read_to_string(FILE) {
            let points = failpoint::parse(&spec).context(FILE)?;
            let names: Vec<String> = points.iter().map(|p| p.name.clone()).collect();
            failpoint::arm(points);
            failpoint::before_fire(move |p| {
                if names.contains(&p.name) {
                    let _ = std::fs::remove_file(FILE);
                    if let Ok(d) = std::fs::File::open("/persist/kiln") {
                        let _ = d.sync_all();
                    }
                }
            });
        }
        Ok(())
    }
}
