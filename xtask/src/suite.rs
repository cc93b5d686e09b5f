//! `cargo xtask suite`: every test binary of the workspace (release), as `scripts/test` runs them.
//!
//! Why not one `cargo test -- --test-threads=2`: the QEMU tests run under TCG, one busy core per
//! VM, on a 2-core machine. The Debian image's test (`BESIDE`) keeps one VM going for ≈ 8 min;
//! run in sequence, the second core idles all that time. Here it starts at once in its own
//! process, and the other binaries run one after another in a main lane: with one test thread
//! while it runs (two VMs on two cores, single-test binaries first, so that nothing is lost by
//! the one thread), with two after it. Never three VMs at once: beside two more, the Debian node
//! missed its 120 s health timeout (CI of 32c072b).
//!
//! The binaries come from `cargo test --no-run --message-format=json`; each runs in its
//! package's directory, as cargo runs it, under a deadline. Doc tests run last through cargo.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The tests that run beside the main lane, by source path.
const BESIDE: &[&str] = &["qemu-tests/tests/debian.rs"];
/// A test binary that runs longer than this is killed (with its VMs) and counts as failed.
const DEADLINE: Duration = Duration::from_secs(1800);

/// One test binary from cargo's build messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Binary {
    /// Source path relative to the workspace, e.g. `qemu-tests/tests/debian.rs`.
    pub label: String,
    pub exe: PathBuf,
    /// The package's directory: cargo runs tests there.
    pub dir: PathBuf,
    /// Number of tests (`--list`); filled in after the build.
    pub tests: usize,
}

/// The test executables in `cargo test --no-run --message-format=json` output (one JSON
/// object per line; lines that are not artifacts are skipped).
pub fn parse_artifacts(json_lines: &str, workspace: &Path) -> Result<Vec<Binary>> {
    let mut out = Vec::new();
    for (n, line) in json_lines.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let field = |p: &Value, what: &str| -> Result<PathBuf> {
            p.as_str()
                .map(PathBuf::from)
                .with_context(|| format!("cargo message {}: no {what}", n + 1))
        };
        let src = field(&v["target"]["src_path"], "target.src_path")?;
        let manifest = field(&v["manifest_path"], "manifest_path")?;
        let label = src
            .strip_prefix(workspace)
            .unwrap_or(&src)
            .display()
            .to_string();
        let dir = manifest
            .parent()
            .with_context(|| format!("manifest path {}", manifest.display()))?
            .to_path_buf();
        out.push(Binary {
            label,
            exe: exe.into(),
            dir,
            tests: 0,
        });
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    out.dedup_by(|a, b| a.exe == b.exe);
    Ok(out)
}

/// Counts the lines `--list --format terse` prints for tests (`name: test`).
pub fn count_tests(list: &str) -> usize {
    list.lines().filter(|l| l.ends_with(": test")).count()
}

/// Tests that boot two VMs at once (a cluster of Kiln nodes): they wait for the beside test to
/// end, which would make them three.
const TWO_VMS: &[&str] = &["qemu-tests/tests/kiln_cluster.rs"];

/// Index of the main lane's next binary: while the beside test runs, one with at most one test
/// (its single thread costs nothing) and one VM; after it, one with several (they gain from two
/// threads). None while only two-VM binaries remain and the beside test still runs.
pub fn next(remaining: &[Binary], beside_running: bool) -> Option<usize> {
    let eligible = |b: &Binary| !(beside_running && TWO_VMS.contains(&b.label.as_str()));
    let preferred = remaining
        .iter()
        .position(|b| eligible(b) && (b.tests <= 1) == beside_running);
    preferred.or_else(|| remaining.iter().position(eligible))
}

/// A test binary running in its own process group (its VMs go with it on a kill).
struct Running {
    bin: Binary,
    threads: usize,
    child: Child,
    started: Instant,
}

struct Done {
    label: String,
    tests: usize,
    threads: usize,
    secs: f64,
    ok: bool,
    beside: bool,
}

fn start(bin: &Binary, threads: usize, output: Option<&File>) -> Result<Running> {
    let mut cmd = Command::new(&bin.exe);
    cmd.arg(format!("--test-threads={threads}"))
        .current_dir(&bin.dir)
        .env("CARGO_MANIFEST_DIR", &bin.dir)
        .process_group(0);
    if let Some(f) = output {
        cmd.stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f.try_clone()?));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.exe.display()))?;
    Ok(Running {
        bin: bin.clone(),
        threads,
        child,
        started: Instant::now(),
    })
}

/// Polls `r`: its exit status once it ended, or a failure once it outlived the deadline (the
/// whole process group is killed).
fn poll(r: &mut Running) -> Result<Option<bool>> {
    if let Some(st) = r.child.try_wait()? {
        return Ok(Some(st.success()));
    }
    if r.started.elapsed() > DEADLINE {
        eprintln!(
            "suite: {} still running after {} s: killed",
            r.bin.label,
            DEADLINE.as_secs()
        );
        kill_group(&mut r.child);
        return Ok(Some(false));
    }
    Ok(None)
}

fn kill_group(child: &mut Child) {
    // The group id is the child's pid (process_group(0)); `kill` the command avoids unsafe libc.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}

fn done(r: &Running, ok: bool, beside: bool) -> Done {
    Done {
        label: r.bin.label.clone(),
        tests: r.bin.tests,
        threads: r.threads,
        secs: r.started.elapsed().as_secs_f64(),
        ok,
        beside,
    }
}

fn build(workspace: &Path) -> Result<Vec<Binary>> {
    let out = Command::new("cargo")
        .args([
            "test",
            "--release",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut bins = parse_artifacts(&String::from_utf8_lossy(&out.stdout), workspace)?;
    for b in &mut bins {
        let list = Command::new(&b.exe)
            .args(["--list", "--format", "terse"])
            .current_dir(&b.dir)
            .output()
            .with_context(|| format!("listing the tests of {}", b.exe.display()))?;
        if !list.status.success() {
            bail!("{} --list failed ({})", b.exe.display(), list.status);
        }
        b.tests = count_tests(&String::from_utf8_lossy(&list.stdout));
    }
    Ok(bins)
}

fn doc_tests(workspace: &Path) -> Result<ExitStatus> {
    Command::new("cargo")
        .args(["test", "--release", "--workspace", "--doc"])
        .current_dir(workspace)
        .status()
        .context("running cargo test --doc")
}

pub fn run() -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let mut main_lane = build(&workspace)?;
    let mut beside = Vec::new();
    for label in BESIDE {
        let i = main_lane
            .iter()
            .position(|b| b.label == *label)
            .with_context(|| format!("no test binary built from {label}"))?;
        beside.push(main_lane.remove(i));
    }

    let log_dir = tempfile::tempdir()?;
    let mut results: Vec<Done> = Vec::new();
    let mut beside_runs = Vec::new();
    for b in &beside {
        let log = log_dir.path().join(b.label.replace('/', "_"));
        let f = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!(
            "     Started {} beside the suite ({})",
            b.label,
            b.exe.display()
        );
        beside_runs.push((start(b, 1, Some(&f))?, log));
    }

    let mut current: Option<Running> = None;
    loop {
        let mut i = 0;
        while i < beside_runs.len() {
            if let Some(ok) = poll(&mut beside_runs[i].0)? {
                let (r, log) = beside_runs.remove(i);
                println!("\n--- {} (ran beside the suite) ---", r.bin.label);
                print!("{}", std::fs::read_to_string(&log).unwrap_or_default());
                results.push(done(&r, ok, true));
            } else {
                i += 1;
            }
        }
        if let Some(r) = current.as_mut() {
            if let Some(ok) = poll(r)? {
                results.push(done(r, ok, false));
                current = None;
            }
        }
        if current.is_none() {
            match next(&main_lane, !beside_runs.is_empty()) {
                Some(i) => {
                    let b = main_lane.remove(i);
                    let threads = if beside_runs.is_empty() { 2 } else { 1 };
                    println!("     Running {} ({})", b.label, b.exe.display());
                    current = Some(start(&b, threads, None)?);
                }
                None if beside_runs.is_empty() => break,
                None => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let docs = doc_tests(&workspace)?;

    println!("\nsuite: binary, tests, threads, seconds");
    for r in &results {
        println!(
            "  {:<8} {:<45} {:>3} {:>2} {:>7.1}{}",
            if r.ok { "ok" } else { "FAILED" },
            r.label,
            r.tests,
            r.threads,
            r.secs,
            if r.beside { "  (beside)" } else { "" }
        );
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() || !docs.success() {
        bail!(
            "failed: {}{}",
            failed.join(", "),
            if docs.success() { "" } else { " doc tests" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(label: &str, tests: usize) -> Binary {
        Binary {
            label: label.into(),
            exe: PathBuf::from("/x").join(label),
            dir: "/w".into(),
            tests,
        }
    }

    #[test]
    fn artifacts_keep_test_executables_only() {
        let lines = [
            r#"{"reason":"compiler-artifact","manifest_path":"/w/qemu-tests/Cargo.toml","target":{"src_path":"/w/qemu-tests/tests/debian.rs"},"profile":{"test":true},"executable":"/w/target/release/deps/debian-1"}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/w/agent/Cargo.toml","target":{"src_path":"/w/agent/src/bin/kiln-agent.rs"},"profile":{"test":false},"executable":"/w/target/release/kiln-agent"}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/w/agent/Cargo.toml","target":{"src_path":"/w/agent/src/lib.rs"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        let got = parse_artifacts(&lines, Path::new("/w")).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].label, "qemu-tests/tests/debian.rs");
        assert_eq!(got[0].dir, Path::new("/w/qemu-tests"));
        assert_eq!(got[0].exe, Path::new("/w/target/release/deps/debian-1"));
    }

    #[test]
    fn an_artifact_without_its_manifest_is_an_error() {
        let line = r#"{"reason":"compiler-artifact","target":{"src_path":"/w/a/tests/t.rs"},"profile":{"test":true},"executable":"/w/t"}"#;
        let e = parse_artifacts(line, Path::new("/w")).unwrap_err();
        assert!(e.to_string().contains("manifest_path"), "{e}");
    }

    #[test]
    fn terse_list_counts_tests_not_benches() {
        let list = "a::b: test\nc: test\nd: bench\n";
        assert_eq!(count_tests(list), 2);
        assert_eq!(count_tests(""), 0);
    }

    #[test]
    fn single_test_binaries_go_beside_multi_test_ones_after() {
        let rest = [bin("power_cut", 2), bin("watchdog", 1), bin("rollback", 2)];
        assert_eq!(next(&rest, true), Some(1));
        assert_eq!(next(&rest, false), Some(0));
        let only_multi = [bin("power_cut", 2)];
        assert_eq!(next(&only_multi, true), Some(0));
        let only_single = [bin("watchdog", 1)];
        assert_eq!(next(&only_single, false), Some(0));
        assert_eq!(next(&[], true), None);
    }

    #[test]
    fn a_two_vm_binary_waits_for_the_beside_test() {
        let two = bin("qemu-tests/tests/kiln_cluster.rs", 1);
        let rest = [two.clone(), bin("power_cut", 2)];
        assert_eq!(next(&rest, true), Some(1), "the multi-test one goes first");
        assert_eq!(next(&rest[..1], true), None, "alone, it waits");
        assert_eq!(next(&rest[..1], false), Some(0));
    }
}
