//! Installs over HTTP against a fault-injecting server on 127.0.0.1: HTTP 500, a connection
//! dropped mid-body, a stalled response, a wrong body. The install retries with backoff, never
//! writes an unverified byte, and a second run fetches only what the first did not verify.

mod common;

use kiln_updater::bundle::chunk_path;
use kiln_updater::bundle::keys::PublicKey;
use kiln_updater::bundle::manifest::{Manifest, Policy};
use kiln_updater::bundle::open::{open_verified, Limits};
use kiln_updater::bundle::store::{ChunkStore, PACK};
use kiln_updater::device::http::{HttpOptions, HttpSource};
use kiln_updater::install::{verify_payload, write_payload, InstallError, Stats, WriteOptions};
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Status500,
    DropMidBody,
    Stall,
    WrongBody,
    /// A chunked body that never ends (until the client hangs up, or 20 s).
    Endless,
    /// A Content-Length of 1 TB.
    HugeLength,
    /// A range request answered with the whole file (200).
    IgnoreRange,
}

/// Per path: the faults of successive requests (then the file is served), or `always`.
#[derive(Default)]
struct Plan {
    faults: HashMap<String, Vec<Fault>>,
    always: HashMap<String, Fault>,
    requests: HashMap<String, u32>,
}

struct FaultServer {
    port: u16,
    plan: Arc<Mutex<Plan>>,
}

impl FaultServer {
    fn start(root: PathBuf, plan: Plan) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let plan = Arc::new(Mutex::new(plan));
        let p2 = plan.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, plan) = (root.clone(), p2.clone());
                std::thread::spawn(move || serve(conn, &root, &plan));
            }
        });
        FaultServer { port, plan }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
    fn requests(&self, path: &str) -> u32 {
        self.plan
            .lock()
            .unwrap()
            .requests
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn serve(conn: TcpStream, root: &Path, plan: &Mutex<Plan>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some(v) = h
                .strip_prefix("range: bytes=")
                .or(h.strip_prefix("Range: bytes="))
            {
                let (a, b) = v.trim().split_once('-').unwrap();
                range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
            }
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .trim_start_matches('/')
            .to_string();
        if line.starts_with("HEAD ") {
            // The packed-store probe: counted apart, never faulted.
            *plan
                .lock()
                .unwrap()
                .requests
                .entry(format!("HEAD {path}"))
                .or_default() += 1;
            let _ = match fs::metadata(root.join(&path)) {
                Ok(m) => write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    m.len()
                ),
                Err(_) => write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            };
            continue;
        }
        let fault = {
            let mut p = plan.lock().unwrap();
            *p.requests.entry(path.clone()).or_default() += 1;
            let always = p.always.get(&path).copied();
            always.or_else(|| {
                p.faults
                    .get_mut(&path)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.remove(0))
            })
        };
        let body = match fs::File::open(root.join(&path)) {
            Ok(mut f) => {
                let mut b = Vec::new();
                f.read_to_end(&mut b).unwrap();
                b
            }
            Err(_) => {
                let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
        };
        let whole = body.len();
        let (body, head) = match range {
            Some((a, b)) if fault != Some(Fault::IgnoreRange) => {
                let b = b.min(whole - 1);
                let range = format!("Content-Range: bytes {a}-{b}/{whole}\r\n");
                (body[a..=b].to_vec(), ("206 Partial Content", range))
            }
            _ => (body, ("200 OK", String::new())),
        };
        let head = |n: usize| {
            format!(
                "HTTP/1.1 {}\r\n{}Content-Length: {n}\r\n\r\n",
                head.0, head.1
            )
        };
        match fault {
            Some(Fault::Status500) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
                );
            }
            Some(Fault::DropMidBody) => {
                let _ = out.write_all(head(body.len()).as_bytes());
                let _ = out.write_all(&body[..body.len() / 2]);
                return; // connection closed mid-body
            }
            Some(Fault::Stall) => {
                std::thread::sleep(Duration::from_secs(3));
                return;
            }
            Some(Fault::WrongBody) => {
                let mut bad = body.clone();
                for b in bad.iter_mut() {
                    *b ^= 0x55;
                }
                let _ = out.write_all(head(bad.len()).as_bytes());
                let _ = out.write_all(&bad);
            }
            Some(Fault::Endless) => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                let t = std::time::Instant::now();
                let piece = [b'z'; 4096];
                while t.elapsed() < Duration::from_secs(20) {
                    let sent = out
                        .write_all(b"1000\r\n")
                        .and_then(|()| out.write_all(&piece))
                        .and_then(|()| out.write_all(b"\r\n"));
                    if sent.is_err() {
                        return;
                    }
                }
                return;
            }
            Some(Fault::HugeLength) => {
                let _ = out.write_all(head(1 << 40).as_bytes());
                let _ = out.write_all(&body);
                return;
            }
            Some(Fault::IgnoreRange) | None => {
                let _ = out.write_all(head(body.len()).as_bytes());
                let _ = out.write_all(&body);
            }
        }
        let _ = out.flush();
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn source(server: &FaultServer) -> HttpSource {
    HttpSource::with_options(
        &server.url(),
        HttpOptions {
            timeout: Duration::from_secs(1),
            retries: 4,
            backoff: Duration::from_millis(50),
        },
    )
    .unwrap()
}

fn manifest(src: &HttpSource) -> Manifest {
    let key =
        PublicKey::from_file(&fs::read_to_string(fixtures().join("keys/trusted.pub")).unwrap())
            .unwrap();
    let policy = Policy {
        compatible: "kiln-fixture-x86_64".into(),
        installed_sequence: None,
        allow_downgrade: false,
        now: 1_800_000_000,
        ..Policy::default()
    };
    open_verified(src, &[key], 1, &policy, &Limits::default())
        .unwrap()
        .manifest
}

/// Installs the root payload into `target` (1 MiB file); `resume`: an earlier run of it
/// stopped part way.
fn install_root(
    src: &HttpSource,
    m: &Manifest,
    target: &fs::File,
    resume: bool,
) -> Result<Stats, InstallError> {
    let o = WriteOptions {
        resume,
        ..WriteOptions::default()
    };
    let store = ChunkStore::open(src, m).unwrap();
    write_payload(&store, "root", &m.payloads.root, target, 0, 1 << 20, &o).map(|w| w.stats)
}

fn target(dir: &Path) -> fs::File {
    let f = fs::File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(dir.join("slot"))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    f
}

fn valid_manifest() -> Manifest {
    serde_json::from_slice(&fs::read(fixtures().join("bundles/valid/manifest.json")).unwrap())
        .unwrap()
}

#[test]
fn each_fault_is_retried_and_the_install_verifies() {
    let m0 = valid_manifest();
    let chunk =
        |p: &kiln_updater::bundle::manifest::Payload, i: usize| chunk_path(&p.chunks[i].sha256);
    let faulty = [
        (chunk(&m0.payloads.root, 0), Fault::Status500),
        (chunk(&m0.payloads.root, 1), Fault::DropMidBody),
        (chunk(m0.payloads.kernel.as_ref().unwrap(), 0), Fault::Stall),
        (
            chunk(m0.payloads.initrd.as_ref().unwrap(), 0),
            Fault::WrongBody,
        ),
    ];
    let mut plan = Plan::default();
    for (p, f) in &faulty {
        plan.faults.insert(p.clone(), vec![*f]);
    }
    let server = FaultServer::start(fixtures().join("bundles/valid"), plan);
    let src = source(&server);
    let m = manifest(&src);
    let store = ChunkStore::open(&src, &m).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, p) in m.payloads.named() {
        let f = common::empty_target(&dir.path().join(name), 0);
        let stats = write_payload(&store, name, p, &f, 0, 1 << 20, &WriteOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stats.written, p.size);
        verify_payload(name, p, &f, 0).unwrap();
    }
    for (p, f) in &faulty {
        assert_eq!(
            server.requests(p),
            2,
            "{f:?} on {p} was not retried exactly once"
        );
    }
}

#[test]
fn a_chunk_that_never_verifies_is_never_written() {
    let m0 = valid_manifest();
    let bad = &m0.payloads.root.chunks[1];
    let mut plan = Plan::default();
    plan.always
        .insert(chunk_path(&bad.sha256), Fault::WrongBody);
    let server = FaultServer::start(fixtures().join("bundles/valid"), plan);
    let src = source(&server);
    let m = manifest(&src);
    let dir = tempfile::tempdir().unwrap();
    let t = target(dir.path());
    let e = install_root(&src, &m, &t, false).unwrap_err();
    assert!(matches!(e, InstallError::Corrupt { index: 1, .. }), "{e}");
    assert_eq!(
        server.requests(&chunk_path(&bad.sha256)),
        3,
        "one fetch and two retries"
    );
    let mut region = vec![0u8; bad.length as usize];
    std::os::unix::fs::FileExt::read_exact_at(&t, &mut region, bad.offset).unwrap();
    assert!(
        region.iter().all(|&b| b == 0),
        "unverified bytes reached the target"
    );
}

#[test]
fn a_second_run_fetches_only_what_is_missing() {
    let m0 = valid_manifest();
    let chunks = &m0.payloads.root.chunks;
    let last = chunk_path(&chunks[chunks.len() - 1].sha256);
    let mut plan = Plan::default();
    plan.always.insert(last.clone(), Fault::Status500);
    let server = FaultServer::start(fixtures().join("bundles/valid"), plan);
    let src = source(&server);
    let m = manifest(&src);
    let dir = tempfile::tempdir().unwrap();
    let t = target(dir.path());
    assert!(
        install_root(&src, &m, &t, false).is_err(),
        "the last chunk cannot be had"
    );
    let first: Vec<u32> = chunks
        .iter()
        .map(|c| server.requests(&chunk_path(&c.sha256)))
        .collect();

    // The server recovers; the same install runs again on the same target.
    server.plan.lock().unwrap().always.clear();
    let stats = install_root(&src, &m, &t, true).unwrap();
    verify_payload("root", &m.payloads.root, &t, 0).unwrap();
    assert_eq!(stats.present, chunks.len() as u64 - 1);
    assert_eq!(stats.chunks, 1);
    for (i, c) in chunks.iter().enumerate() {
        let more = server.requests(&chunk_path(&c.sha256)) - first[i];
        let expected = if i == chunks.len() - 1 { 1 } else { 0 };
        assert_eq!(
            more, expected,
            "chunk {i} fetched {more} more times on the second run"
        );
    }

    // Without state saying an earlier run stopped part way, nothing is read back: the same,
    // complete target gets every chunk fetched again.
    let stats = install_root(&src, &m, &t, false).unwrap();
    assert_eq!((stats.present, stats.chunks), (0, chunks.len() as u64));
}

#[test]
fn a_body_past_its_cap_is_refused_whatever_its_framing_and_not_retried() {
    use kiln_updater::bundle::source::{BundleSource, SourceError};
    let mut plan = Plan::default();
    plan.always.insert("manifest.json".into(), Fault::Endless);
    plan.always.insert("manifest.sig".into(), Fault::HugeLength);
    let server = FaultServer::start(fixtures().join("bundles/valid"), plan);
    let src = source(&server);
    for name in ["manifest.json", "manifest.sig"] {
        let t = std::time::Instant::now();
        match src.read(name, 100_000) {
            Err(SourceError::TooLarge { cap: 100_000, .. }) => {}
            other => panic!("{name}: {:?}", other.map(|b| b.len())),
        }
        assert_eq!(server.requests(name), 1, "{name} was retried");
        // Well inside the 20 s the endless body lasts: the reader stopped at the cap.
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{name}: {:?}",
            t.elapsed()
        );
    }
}

/// A packed bundle (root: 1 MiB of noise, several runs' worth of chunks) served by a fault
/// server, and its verified manifest.
fn packed(plan: Plan) -> (tempfile::TempDir, FaultServer, HttpSource, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let key = kiln_updater::bundle::keys::SecretKey::generate().unwrap();
    common::test_bundle(dir.path(), "b", &common::noise(1 << 20, 7), &key);
    assert!(dir.path().join("b").join(PACK).exists());
    let server = FaultServer::start(dir.path().join("b"), plan);
    let src = source(&server);
    let policy = Policy {
        compatible: "test".into(),
        now: 1_800_000_000,
        ..Policy::default()
    };
    let m = open_verified(&src, &[key.public()], 1, &policy, &Limits::default())
        .unwrap()
        .manifest;
    (dir, server, src, m)
}

#[test]
fn a_packed_payload_is_one_range_request_and_each_fault_in_it_is_retried_where_it_stopped() {
    // Clean: one probe, then the root in one range request (its chunks lie back to back).
    let (_d, server, src, m) = packed(Plan::default());
    let dir = tempfile::tempdir().unwrap();
    let t = target(dir.path());
    let stats = install_root(&src, &m, &t, false).unwrap();
    assert!(
        m.payloads.root.chunks.len() >= 8,
        "{:?}",
        m.payloads.root.chunks.len()
    );
    assert_eq!(stats.chunks, m.payloads.root.chunks.len() as u64);
    assert_eq!(
        stats.fetched,
        m.payloads.root.chunks.iter().map(|c| c.stored).sum::<u64>()
    );
    assert_eq!(
        (
            server.requests(&format!("HEAD {PACK}")),
            server.requests(PACK)
        ),
        (1, 1)
    );
    verify_payload("root", &m.payloads.root, &t, 0).unwrap();

    // Each fault once, on successive requests of the pack: a 500 (asked again), a connection
    // dropped half way (asked again from the chunk it stopped in), a stall past the deadline
    // (asked again), then a damaged body (each chunk of it fails its digest and is fetched
    // alone).
    let mut plan = Plan::default();
    plan.faults.insert(
        PACK.into(),
        vec![
            Fault::Status500,
            Fault::DropMidBody,
            Fault::Stall,
            Fault::WrongBody,
        ],
    );
    let (_d, server, src, m) = packed(plan);
    let dir = tempfile::tempdir().unwrap();
    let t = target(dir.path());
    let stats = install_root(&src, &m, &t, false).unwrap();
    verify_payload("root", &m.payloads.root, &t, 0).unwrap();
    assert_eq!(stats.written, m.payloads.root.size);
    // The four faulted requests, then one for each chunk of the damaged body, fetched alone.
    let n = m.payloads.root.chunks.len() as u32;
    let requests = server.requests(PACK);
    assert!(
        (5..=4 + n).contains(&requests),
        "{requests} requests of the pack"
    );
}

#[test]
fn a_server_that_ignores_ranges_is_a_clear_error_not_a_wrong_read() {
    let mut plan = Plan::default();
    plan.always.insert(PACK.into(), Fault::IgnoreRange);
    let (_d, server, src, m) = packed(plan);
    let store = ChunkStore::open(&src, &m).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The kernel lies after the root in the pack: its range does not start at 0, and the
    // whole file (200) is refused, not read from its start.
    let t = target(dir.path());
    let e = write_payload(
        &store,
        "kernel",
        m.payloads.kernel.as_ref().unwrap(),
        &t,
        0,
        1 << 20,
        &WriteOptions::default(),
    )
    .unwrap_err();
    let msg = chain(&e);
    assert!(matches!(e, InstallError::Fetch { index: 0, .. }), "{msg}");
    assert!(msg.contains("range request"), "{msg}");
    assert_eq!(server.requests(PACK), 1, "not retried: {msg}");
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}
