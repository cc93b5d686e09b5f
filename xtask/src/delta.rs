//! `cargo xtask delta-bench`: Kiln's delta install against `casync extract --seed`, same two
//! root images (qemu_tests::delta: a 217 MiB root, one 4 MiB file rewritten and 1 MiB added),
//! same HTTP/1.1 keep-alive server on 127.0.0.1 (which counts the bytes and connections), with
//! an optional delay per request standing in for the network round trip. Prints medians of N
//! runs and the ratios Kiln / casync. Run by bench/delta.sh.

use anyhow::{bail, Context, Result};
use qemu_tests::http::StaticServer;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Row {
    tool: &'static str,
    bytes: u64,
    requests: u64,
    connections: u64,
    wall: Duration,
    /// Kiln's own report of its peak memory (VmHWM), when it printed one.
    rss_kib: Option<u64>,
}

pub(crate) fn run_checked(c: &mut Command) -> Result<std::process::Output> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `c` `runs` times against `server` (counters reset before each; `prepare` before each
/// too); bytes and requests of the last run, median wall time.
fn measure(
    tool: &'static str,
    server: &StaticServer,
    runs: usize,
    prepare: &dyn Fn(),
    make: &dyn Fn() -> Command,
) -> Result<Row> {
    let mut walls = Vec::new();
    let mut stdout = Vec::new();
    for _ in 0..runs {
        prepare();
        server.counters.reset();
        let t = Instant::now();
        stdout = run_checked(&mut make())?.stdout;
        walls.push(t.elapsed());
    }
    let rss_kib = serde_json::from_slice::<serde_json::Value>(&stdout)
        .ok()
        .and_then(|v| v["peak_rss_kib"].as_u64());
    let c = &server.counters;
    Ok(Row {
        tool,
        bytes: c.body_bytes.load(Ordering::SeqCst),
        requests: c.requests.load(Ordering::SeqCst),
        connections: c.connections.load(Ordering::SeqCst),
        wall: median(walls),
        rss_kib,
    })
}

pub fn run(runs: usize, delays_ms: &[u64], work: Option<PathBuf>) -> Result<()> {
    if Command::new("casync").arg("--version").output().is_err() {
        bail!("casync is not installed (scripts/deps.sh installs it)");
    }
    if imagebuilder::find_device_binary("kiln-updater").is_none() {
        bail!("kiln-updater not found: run scripts/build-device");
    }
    let tmp;
    let work = match work {
        Some(w) => w,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    fs::create_dir_all(&work)?;
    // The work directory is served whole: nothing else must be in it.
    if fs::read_dir(&work)?.next().is_some() {
        bail!("{}: not empty", work.display());
    }
    eprintln!("building v1 and v2 in {} …", work.display());
    let pair = qemu_tests::delta::build_pair(&work, 190 << 20);
    let v1_root = pair.v1.build.join("root.img");
    let v2_root = pair.v2.build.join("root.img");
    let srv = work.join("casync");
    fs::create_dir_all(&srv)?;
    for (v, root) in [("v1", &v1_root), ("v2", &v2_root)] {
        run_checked(
            Command::new("casync")
                .arg("make")
                .arg(format!("--store={}", srv.join("store").display()))
                .arg(srv.join(format!("{v}.caibx")))
                .arg(root),
        )?;
    }
    let server = StaticServer::start(&work)?;
    let base = format!("http://{}", server.addr);
    let out = work.join("out.img");
    let clear = || {
        let _ = fs::remove_file(&out);
        let _ = fs::remove_file(work.join("out.img.part"));
    };
    let casync = || {
        let mut c = Command::new("casync");
        c.arg("extract")
            .arg(format!("--store={base}/casync/store"))
            .arg(format!("--seed={}", v1_root.display()))
            .arg(format!("{base}/casync/v2.caibx"))
            .arg(&out);
        c
    };
    let kiln = |manifest: Option<&Path>| {
        qemu_tests::delta::extract_cmd(&format!("{base}/v2.bundle"), Some(&v1_root), manifest, &out)
    };
    let v1_manifest = pair.v1.bundle.join("manifest.json");
    let want = &pair.v2.report.root_image_sha256;

    println!(
        "delta v1 → v2: root {:.1} MiB, one 4 MiB file rewritten + 1 MiB added ({:.2} MiB zstd changed data); medians of {runs} runs",
        pair.v2.report.root_image_size as f64 / 1048576.0,
        pair.changed_compressed as f64 / 1048576.0
    );
    println!(
        "{:>6}  {:<34} {:>10} {:>8} {:>6} {:>9} {:>7} {:>7} {:>9}",
        "delay", "tool", "MiB", "requests", "conns", "wall s", "bytes×", "time×", "RSS MiB"
    );
    for &d in delays_ms {
        server.counters.set_delay(Duration::from_millis(d));
        let mut rows = vec![measure(
            "casync extract --seed (baseline)",
            &server,
            runs,
            &clear,
            &casync,
        )?];
        check(&out, want, "casync")?;
        rows.push(measure(
            "kiln-updater (recorded manifest)",
            &server,
            runs,
            &clear,
            &|| kiln(Some(&v1_manifest)),
        )?);
        check(&out, want, "kiln")?;
        rows.push(measure(
            "kiln-updater (factory: indexes v1)",
            &server,
            runs,
            &clear,
            &|| kiln(None),
        )?);
        check(&out, want, "kiln")?;
        let b = (rows[0].bytes as f64, rows[0].wall.as_secs_f64());
        for r in &rows {
            println!(
                "{:>4}ms  {:<34} {:>10.2} {:>8} {:>6} {:>9.3} {:>6.2}x {:>6.2}x {:>9}",
                d,
                r.tool,
                r.bytes as f64 / 1048576.0,
                r.requests,
                r.connections,
                r.wall.as_secs_f64(),
                r.bytes as f64 / b.0,
                r.wall.as_secs_f64() / b.1,
                r.rss_kib
                    .map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
            );
        }
    }
    println!("goal: kiln ≤ 1.00x casync on bytes and on time");
    Ok(())
}

/// That `tool` wrote the root whose sha256 is `want` into `out` (outside the timing).
pub(crate) fn check(out: &Path, want: &str, tool: &str) -> Result<()> {
    let got = imagebuilder::pipeline::sha256_file(out).map_err(|e| anyhow::anyhow!("{e}"))?;
    if got != want {
        bail!("{tool} wrote {got}, not the expected root {want}");
    }
    Ok(())
}
