//! `cargo xtask install-bench`: a full install of a large root over HTTP against the plain
//! pipe that installs the same bytes with no verification: `curl | zstd -d | dd conv=fsync`.
//!
//! - The root: the default image with about 760 MiB of generated program-like files
//!   (`qemu_tests::delta::content`, zstd shrinks them 2-3×) and 150 MiB of random bytes, in a
//!   1280 MiB slot: a root image of more than 900 MiB.
//! - The server: Debian's nginx (`bench/install.sh` unpacks the package under `.cache/deps`,
//!   no service), started here on 127.0.0.1 and stopped by PID, serving the signed bundle and
//!   the root image compressed by the zstd CLI at the bundle's level (3).
//! - Each run writes a new file on the same filesystem; both tools' outputs are checked against
//!   the build's sha256 (not timed). `sync` before each run, the order alternating.
//! - Prints medians of N runs, the ratio kiln / pipe (goal ≤ 1.15×) and peak RSS (GNU time's
//!   maxrss: kiln-updater's own; the pipe's largest stage).

use crate::delta::{check, median, run_checked};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generated program-like bytes and random bytes in the root.
const PROGRAM_BYTES: u64 = 760 << 20;
const RANDOM_BYTES: u64 = 150 << 20;

/// nginx from Debian, serving `dir` on 127.0.0.1; stopped (by PID) when dropped.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(bin: &Path, work: &Path, dir: &Path) -> Result<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let prefix = work.join("nginx");
        fs::create_dir_all(prefix.join("tmp"))?;
        // Run as the caller (root keeps root: nginx would otherwise switch to nobody, who
        // cannot read a private temporary directory).
        let user = if is_root() { "user root root;" } else { "" };
        let conf = format!(
            "{user}
daemon off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  default_type application/octet-stream;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
",
            p = prefix.display(),
            root = dir.display()
        );
        let conf_path = prefix.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut n = Nginx { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = n.child.try_wait()? {
                bail!(
                    "nginx exited ({st}): {}",
                    fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT is nginx's graceful stop; its master ends its worker.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The default image with the generated files, bundled at sequence 1.
fn build_root(work: &Path) -> Result<(PathBuf, String, u64)> {
    let tree = work.join("tree");
    let mut total = 0u64;
    let mut i = 0u64;
    // Program-like files of 64 KiB to 8 MiB.
    while total < PROGRAM_BYTES {
        let len = (64u64 << 10) << (i % 8);
        let p = tree.join(format!("usr/lib/bench/d{:02}/f{i:05}.so", i % 16));
        fs::create_dir_all(p.parent().expect("dir"))?;
        fs::write(&p, qemu_tests::delta::content(len as usize, i))?;
        total += len;
        i += 1;
    }
    let mut rng = qemu_tests::delta::Rng::new(0xb1b1);
    let mut buf = vec![0u8; 15 << 20];
    for j in 0..RANDOM_BYTES / buf.len() as u64 {
        rng.fill(&mut buf);
        let p = tree.join(format!("usr/share/bench/random{j:02}.bin"));
        fs::create_dir_all(p.parent().expect("dir"))?;
        fs::write(&p, &buf)?;
    }
    let build = work.join("build");
    let t = tree.clone();
    let report = qemu_tests::fixtures::build_default_with(&build, move |s| {
        s.partitions.root = 1280 << 20;
        s.overlays.push(t);
    });
    fs::remove_dir_all(&tree)?;
    qemu_tests::fixtures::dev_bundle(&build, &work.join("srv/bundle"), 1);
    Ok((
        build.join("root.img"),
        report.root_image_sha256,
        report.root_image_size,
    ))
}

/// The bench's bundle again with one file per chunk, signed with the same key and sequence.
fn files_bundle(build: &Path, out: &Path) -> Result<()> {
    let tmp = out.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    qemu_tests::fixtures::dev_bundle_as(build, &tmp, 1, imagebuilder::bundle::Layout::Files);
    fs::rename(&tmp, out)?;
    Ok(())
}

struct Sample {
    wall: Duration,
    rss_kib: u64,
}

/// Runs `script` under bash (pipefail), each stage wrapped in GNU time writing its maxrss to
/// `rss/N`; returns the wall time and the largest maxrss.
fn timed(script: &str, rss_dir: &Path) -> Result<Sample> {
    let _ = fs::remove_dir_all(rss_dir);
    fs::create_dir_all(rss_dir)?;
    run_checked(&mut Command::new("sync"))?;
    let t = Instant::now();
    run_checked(Command::new("bash").args(["-o", "pipefail", "-c", script]))?;
    let wall = t.elapsed();
    let mut rss_kib = 0;
    for e in fs::read_dir(rss_dir)? {
        let s = fs::read_to_string(e?.path())?;
        let k: u64 = s
            .trim()
            .parse()
            .with_context(|| format!("GNU time wrote {s:?}"))?;
        rss_kib = rss_kib.max(k);
    }
    Ok(Sample { wall, rss_kib })
}

pub fn run(
    runs: usize,
    nginx: &Path,
    parallel: usize,
    updater: Option<PathBuf>,
    work: Option<PathBuf>,
    chunk_files: bool,
) -> Result<()> {
    let updater = match updater {
        Some(u) => u,
        None => imagebuilder::find_device_binary("kiln-updater")
            .context("kiln-updater not found: run scripts/build-device")?,
    };
    for tool in ["curl", "zstd", "dd"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed");
        }
    }
    let tmp = tempfile::tempdir()?;
    let work = work.as_deref().unwrap_or(tmp.path());
    let srv = work.join("srv");
    let built = work.join("built.json");
    // A work directory kept from an earlier run (--work) is used again as it is.
    let (want, size) = match fs::read(&built) {
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            (
                v["sha256"]
                    .as_str()
                    .context("built.json: sha256")?
                    .to_string(),
                v["size"].as_u64().context("built.json: size")?,
            )
        }
        Err(_) => {
            fs::create_dir_all(work)?;
            if fs::read_dir(work)?.next().is_some() {
                bail!("{}: not empty", work.display());
            }
            eprintln!("building the root in {} …", work.display());
            let (root, want, size) = build_root(work)?;
            run_checked(
                Command::new("zstd")
                    .args(["-q", "-3", "-T0", "-f"])
                    .arg(&root)
                    .arg("-o")
                    .arg(srv.join("root.img.zst")),
            )?;
            fs::write(
                &built,
                serde_json::json!({ "sha256": want, "size": size }).to_string(),
            )?;
            (want, size)
        }
    };
    let zsize = fs::metadata(srv.join("root.img.zst"))?.len();
    let bundle = if chunk_files {
        // Made on first use from the kept build, so a --work directory serves both layouts.
        let files = srv.join("bundle-files");
        if !files.exists() {
            files_bundle(&work.join("build"), &files)?;
        }
        "bundle-files"
    } else {
        "bundle"
    };
    let bundle_bytes: u64 = walk_size(&srv.join(bundle))?;
    let server = Nginx::start(nginx, work, &srv)?;
    let base = format!("http://127.0.0.1:{}", server.port);
    let out = work.join("out.img");
    let rss = work.join("rss");
    let t = |stage: &str, n: usize| format!("/usr/bin/time -f %M -o {}/{n} {stage}", rss.display());
    let pipe = format!(
        "{} -sSf {base}/root.img.zst | {} -d -q | {} of={} bs=1M iflag=fullblock conv=fsync status=none",
        t("curl", 0),
        t("zstd", 1),
        t("dd", 2),
        out.display()
    );
    let key = qemu_tests::fixtures::workspace().join("examples/default/keys/dev.pub");
    let kiln = format!(
        "{} extract {base}/{bundle} --key {} --compatible kiln-default-x86_64 --parallel {parallel} --out {} > /dev/null",
        t(&updater.display().to_string(), 0),
        key.display(),
        out.display()
    );
    // Each run starts with the last one's output gone and nothing dirty left to write back, so
    // neither side's fsync pays for the other's pages.
    let clear = || {
        let _ = fs::remove_file(&out);
        let _ = fs::remove_file(work.join("out.img.part"));
        let _ = Command::new("sync").status();
    };
    let (mut p, mut k) = (Vec::new(), Vec::new());
    for r in 0..runs {
        // Alternate which goes first.
        for first in [r % 2 == 0, r % 2 == 1] {
            clear();
            if first {
                p.push(timed(&pipe, &rss)?);
                check(&out, &want, "the pipe")?;
            } else {
                k.push(timed(&kiln, &rss)?);
                check(&out, &want, "kiln-updater")?;
            }
        }
        eprintln!(
            "run {}: pipe {:.3} s, kiln-updater {:.3} s",
            r + 1,
            p[r].wall.as_secs_f64(),
            k[r].wall.as_secs_f64()
        );
    }
    clear();
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "install of a {:.1} MiB root from nginx on 127.0.0.1 (bundle {:.1} MiB, {}, root.img.zst {:.1} MiB, zstd level 3); medians of {runs}",
        mib(size),
        mib(bundle_bytes),
        if chunk_files { "one file per chunk" } else { "chunks.pack" },
        mib(zsize)
    );
    println!(
        "{:<44} {:>8} {:>7} {:>8} {:>9}",
        "", "wall s", "time×", "best s", "RSS MiB"
    );
    let pm = median(p.iter().map(|s| s.wall).collect());
    let km = median(k.iter().map(|s| s.wall).collect());
    let rss_max = |v: &[Sample]| v.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    // The fastest run of each too: the pipe's fsync of 941 MiB varies twofold from run to run
    // on a virtual disk, and the median alone hides how close the two can come.
    let best = |v: &[Sample]| {
        v.iter()
            .map(|s| s.wall)
            .min()
            .unwrap_or_default()
            .as_secs_f64()
    };
    println!(
        "{:<44} {:>8.3} {:>6.2}x {:>8.3} {:>9.1}",
        "curl | zstd -d | dd conv=fsync (baseline)",
        pm.as_secs_f64(),
        1.0,
        best(&p),
        rss_max(&p)
    );
    println!(
        "{:<44} {:>8.3} {:>6.2}x {:>8.3} {:>9.1}",
        format!("kiln-updater extract (--parallel {parallel})"),
        km.as_secs_f64(),
        km.as_secs_f64() / pm.as_secs_f64(),
        best(&k),
        rss_max(&k)
    );
    println!("kiln-updater: {}", updater.display());
    println!("goal: kiln-updater ≤ 1.15x the pipe, ≤ 16 MiB peak RSS");
    let _ = std::io::stdout().flush();
    drop(server);
    Ok(())
}

fn walk_size(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() {
            walk_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}
