//! Project tasks.
//!
//! `cargo xtask fuzz --seconds N`: builds the fuzz targets of `fuzz/` with libFuzzer coverage
//! instrumentation (stable Rust: `-C passes=sancov-module`, no sanitizer) and runs each for N
//! seconds from its seeds (`fuzz/seeds/<target>`; new inputs go to `fuzz/corpus/<target>`,
//! crashes to `fuzz/artifacts/<target>`). Prints a table of runs and exits non-zero on a crash.
//!
//! `cargo xtask faults --cuts N`: the power-cut campaign (qemu-tests/src/faults.rs).
//!
//! For each boot backend, on one disk: every failpoint that backend meets, then random
//! wall-clock cuts during HTTP installs, until N cuts; both backends run at once. Prints a
//! table (cut, slot and version booted after it, result) and exits non-zero on any invalid
//! boot. A random cut is replayed with `--seed` (its seed is printed) and `--cuts`.
//! Needs scripts/deps.sh and scripts/build-device (for `kiln-updater-failpoints`).
//!
//! `cargo xtask delta-bench`: delta installs against casync (xtask/src/delta.rs; bench/delta.sh).
//!
//! `cargo xtask install-bench`: a full install against `curl | zstd -d | dd`
//! (xtask/src/install_bench.rs; bench/install.sh).
//!
//! `cargo xtask suite`: the whole test suite, as `scripts/test` runs it (xtask/src/suite.rs).

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use imagebuilder::spec::Loader;
use qemu_tests::faults::{self, Campaign, Cut, Outcome};

mod delta;
mod fuzz;
mod install_bench;
mod suite;

#[derive(Parser)]
#[command(about = "Kiln project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every fuzz target (or those named) for N seconds each.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets run at once.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Only these targets.
        targets: Vec<String>,
    },
    /// Power-cut campaign in QEMU.
    Faults {
        /// Cuts per backend: the failpoints first, then random cuts.
        #[arg(long, default_value_t = 200)]
        cuts: usize,
        #[arg(long, value_enum, default_value_t = Backend::Both)]
        loader: Backend,
        /// Seed of the random cuts (cut i uses seed + i).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Random cuts fall within this many milliseconds after `install` is typed.
        #[arg(long, default_value_t = 15_000)]
        span_ms: u64,
        /// Only random cuts (skip the failpoints).
        #[arg(long)]
        random_only: bool,
        /// Only the failpoint cuts whose description contains this (e.g. `Rollback:`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Every test binary of the workspace, the Debian image's test beside the rest.
    Suite,
    /// Delta install benchmark against `casync extract --seed`.
    DeltaBench {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// Delays per request (ms), one table block each.
        #[arg(long, value_delimiter = ',', default_value = "0,10")]
        delay_ms: Vec<u64>,
        /// Work directory (kept); default a temporary one.
        #[arg(long)]
        work: Option<std::path::PathBuf>,
    },
    /// Full install over HTTP (nginx) against `curl | zstd -d | dd conv=fsync`.
    InstallBench {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// Debian's nginx binary (bench/install.sh unpacks it).
        #[arg(long)]
        nginx: std::path::PathBuf,
        /// kiln-updater's chunks in flight.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Another kiln-updater binary (an earlier build, for before/after figures); default
        /// the device build of scripts/build-device.
        #[arg(long)]
        updater: Option<std::path::PathBuf>,
        /// Work directory, kept: the root is built there once and used again by later runs.
        #[arg(long)]
        work: Option<std::path::PathBuf>,
        /// Serve the bundle with one file per chunk (`kiln bundle --chunk-files`), the layout
        /// of bundles made before the pack, instead of `chunks.pack`.
        #[arg(long)]
        chunk_files: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Both,
    SystemdBoot,
    Grub,
}

fn plan(
    loader: Loader,
    cuts: usize,
    seed: u64,
    span_ms: u64,
    random_only: bool,
    only: Option<&str>,
) -> Vec<Cut> {
    let mut plan: Vec<Cut> = if random_only {
        Vec::new()
    } else {
        faults::failpoint_cuts(loader)
            .into_iter()
            .filter(|c| only.is_none_or(|o| c.to_string().contains(o)))
            .collect()
    };
    plan.truncate(cuts);
    let rest = cuts - plan.len();
    plan.extend(faults::random_cuts(seed, rest, span_ms));
    plan
}

fn run(loader: Loader, cuts: Vec<Cut>) -> Vec<Outcome> {
    let mut c = match Campaign::start(loader) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("campaign setup failed: {e}");
            return Vec::new();
        }
    };
    let total = cuts.len();
    cuts.iter()
        .enumerate()
        .map(|(i, cut)| {
            let o = c.cut(cut);
            eprintln!(
                "[{i:>3}/{total}] {} {cut}: {} ({:.0} s)",
                faults::loader_name(o.loader),
                o.error.as_deref().unwrap_or("valid"),
                o.secs
            );
            o
        })
        .collect()
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Fuzz {
            seconds,
            jobs,
            targets,
        } => fuzz::run(seconds, jobs, &targets),
        Cmd::Suite => suite::run(),
        Cmd::InstallBench {
            runs,
            nginx,
            parallel,
            updater,
            work,
            chunk_files,
        } => install_bench::run(runs as usize, &nginx, parallel, updater, work, chunk_files),
        Cmd::DeltaBench {
            runs,
            delay_ms,
            work,
        } => delta::run(runs as usize, &delay_ms, work),
        Cmd::Faults {
            cuts,
            loader,
            seed,
            span_ms,
            random_only,
            only,
        } => {
            let loaders = match loader {
                Backend::Both => vec![Loader::SystemdBoot, Loader::Grub],
                Backend::SystemdBoot => vec![Loader::SystemdBoot],
                Backend::Grub => vec![Loader::Grub],
            };
            let outcomes: Vec<Outcome> = std::thread::scope(|s| {
                let hs: Vec<_> = loaders
                    .iter()
                    .map(|l| {
                        let p = plan(*l, cuts, seed, span_ms, random_only, only.as_deref());
                        s.spawn(move || run(*l, p))
                    })
                    .collect();
                hs.into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            println!("{}", faults::table(&outcomes));
            let expected = cuts * loaders.len();
            let valid = outcomes.iter().filter(|o| o.valid()).count();
            if valid != expected {
                bail!("{valid}/{expected} cuts ended in a valid boot");
            }
            Ok(())
        }
    }
}
