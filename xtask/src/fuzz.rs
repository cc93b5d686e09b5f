//! `cargo xtask fuzz`: build the libFuzzer targets with coverage instrumentation and run them.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The targets of `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "manifest",
    "signatures",
    "grubenv",
    "bls_entries",
    "image_toml",
    "tar_layer",
    "http1_response",
    "gpt",
];

/// libFuzzer's coverage hooks without a sanitizer: all stable `-C` options.
const RUSTFLAGS: &str = "--cfg fuzzing -C passes=sancov-module \
    -C llvm-args=-sanitizer-coverage-level=4 \
    -C llvm-args=-sanitizer-coverage-inline-8bit-counters \
    -C llvm-args=-sanitizer-coverage-pc-table \
    -C llvm-args=-sanitizer-coverage-trace-compares \
    -C debug-assertions -C overflow-checks -C codegen-units=1";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

struct Run {
    target: String,
    execs: Option<u64>,
    /// User + system CPU time of the fuzzer process.
    cpu_secs: f64,
    corpus: usize,
    ok: bool,
    note: String,
}

pub fn run(seconds: u64, jobs: usize, only: &[String]) -> Result<()> {
    let root = root();
    let fuzz = root.join("fuzz");
    for t in only {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target {t} (targets: {})", TARGETS.join(", "));
        }
    }
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    let st = Command::new("cargo")
        .current_dir(&fuzz)
        .env("RUSTFLAGS", RUSTFLAGS)
        // With an explicit target the flags reach only the targets, not build scripts.
        .args([
            "build",
            "--release",
            "--bins",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .status()
        .context("running cargo build for fuzz/")?;
    if !st.success() {
        bail!("building the fuzz targets failed");
    }
    let mut runs = Vec::new();
    for batch in targets.chunks(jobs.max(1)) {
        let handles: Vec<_> = batch
            .iter()
            .map(|t| {
                let fuzz = fuzz.clone();
                let t = t.to_string();
                std::thread::spawn(move || run_one(&fuzz, &t, seconds))
            })
            .collect();
        for h in handles {
            runs.push(h.join().expect("fuzz runner thread")?);
        }
    }
    println!("target        wall s   CPU s  executions   corpus  result");
    for r in &runs {
        println!(
            "{:<13} {:>6}  {:>6.0}  {:>10}  {:>7}  {}",
            r.target,
            seconds,
            r.cpu_secs,
            r.execs.map_or("?".into(), |e| e.to_string()),
            r.corpus,
            if r.ok {
                "no crash".to_string()
            } else {
                format!("CRASH {}", r.note)
            }
        );
    }
    if runs.iter().any(|r| !r.ok) {
        bail!("a fuzz target crashed; the input is under fuzz/artifacts/");
    }
    Ok(())
}

fn run_one(fuzz: &Path, target: &str, seconds: u64) -> Result<Run> {
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let bin = fuzz
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    let log_path = fuzz.join("target").join(format!("{target}.log"));
    // GNU time reports the fuzzer's user + system CPU time.
    let cpu_path = fuzz.join("target").join(format!("{target}.cpu"));
    let status = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%U %S")
        .arg("-o")
        .arg(&cpu_path)
        .arg(&bin)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(&seeds)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .status()
        .with_context(|| format!("running {} under /usr/bin/time", bin.display()))?;
    let ok = status.success();
    let cpu_secs = std::fs::read_to_string(&cpu_path)
        .ok()
        .and_then(|t| {
            let last = t.lines().last()?.to_string();
            let mut it = last.split_whitespace().map(|v| v.parse::<f64>().ok());
            Some(it.next()?? + it.next()??)
        })
        .unwrap_or(0.0);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok());
    let note = log
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("Test unit written to"))
        .collect::<Vec<_>>()
        .join(" | ");
    Ok(Run {
        target: target.to_string(),
        execs,
        corpus: std::fs::read_dir(&corpus)?.count(),
        ok,
        cpu_secs,
        note,
    })
}
