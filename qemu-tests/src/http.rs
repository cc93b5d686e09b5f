//! A small static-file HTTP/1.1 server on 127.0.0.1 for update tests (the guest reaches it at
//! slirp's host alias 10.0.2.2) and the delta benchmark. Keep-alive with TCP_NODELAY (no
//! Nagle stall between a client's requests), an optional delay per request (a stand-in for
//! network round trips) or per 64 KiB of body (a slow link), single byte ranges (206) and HEAD,
//! counters of requests, body bytes and connections, and a log of the paths (and ranges)
//! served; it stops when dropped.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters of what the server sent.
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    pub connections: AtomicU64,
    /// Paths answered with a body, in order (logged before the body is sent); a range request
    /// is logged as `PATH bytes=FIRST-LAST`.
    pub served: Mutex<Vec<String>>,
    /// Responses being sent now.
    pub in_flight: AtomicU64,
    /// Delay before each response, in microseconds.
    pub delay_us: AtomicU64,
    /// Delay before each 64 KiB piece of a body, in microseconds (a slow link).
    pub piece_delay_us: AtomicU64,
}

impl Counters {
    /// Zeroes the counters and the log (between benchmark runs).
    pub fn reset(&self) {
        self.requests.store(0, Ordering::SeqCst);
        self.body_bytes.store(0, Ordering::SeqCst);
        self.connections.store(0, Ordering::SeqCst);
        self.served.lock().expect("log").clear();
    }

    /// The paths served so far.
    pub fn served(&self) -> Vec<String> {
        self.served.lock().expect("log").clone()
    }

    /// Waits `d` before every response from now on.
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Waits `d` before every 64 KiB of a body from now on.
    pub fn set_piece_delay(&self, d: Duration) {
        self.piece_delay_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }
}

pub struct StaticServer {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl StaticServer {
    /// Serves files under `root` on an ephemeral port of 127.0.0.1.
    pub fn start(root: &Path) -> std::io::Result<StaticServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (root, stop2, c2) = (root.to_path_buf(), stop.clone(), counters.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                c2.connections.fetch_add(1, Ordering::SeqCst);
                let (root, c) = (root.clone(), c2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &c);
                });
            }
        });
        Ok(StaticServer {
            addr,
            counters,
            stop,
        })
    }

    /// URL of `path` as the guest sees it.
    pub fn guest_url(&self, path: &str) -> String {
        guest_url(self.addr, path)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        stop(&self.stop, self.addr);
    }
}

/// URL of `path` on the server at `addr` as the guest sees it (slirp's host alias).
fn guest_url(addr: SocketAddr, path: &str) -> String {
    format!(
        "http://10.0.2.2:{}/{}",
        addr.port(),
        path.trim_start_matches('/')
    )
}

/// Ends a server's accept loop.
fn stop(flag: &AtomicBool, addr: SocketAddr) {
    flag.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(addr); // wake the accept loop
}

/// A hostile server on 127.0.0.1: answers every request with `head`, then one byte per
/// `every` for as long as the client stays (a slow drip that never stalls long enough for a
/// stall timeout). Stops when dropped.
pub struct DripServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DripServer {
    pub fn start(head: &[u8], every: Duration) -> std::io::Result<DripServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (head, stop2) = (head.to_vec(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (head, stop3) = (head.clone(), stop2.clone());
                std::thread::spawn(move || drip(conn, &head, every, &stop3));
            }
        });
        Ok(DripServer { addr, stop })
    }

    /// URL of `path` as the guest sees it.
    pub fn guest_url(&self, path: &str) -> String {
        guest_url(self.addr, path)
    }
}

impl Drop for DripServer {
    fn drop(&mut self) {
        stop(&self.stop, self.addr);
    }
}

fn drip(conn: TcpStream, head: &[u8], every: Duration, stop: &AtomicBool) {
    let Ok(read) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read);
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut out = conn;
    if out.write_all(head).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(every);
        if out.write_all(b"x").is_err() {
            return;
        }
    }
}

fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = Path::new(url_path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

/// `Range: bytes=A-B` (one range, both ends given: what the updater sends).
fn parse_range(header: &str) -> Option<(u64, u64)> {
    let (name, value) = header.split_once(':')?;
    if !name.trim().eq_ignore_ascii_case("range") {
        return None;
    }
    let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b).then_some((a, b))
}

fn serve(conn: TcpStream, root: &Path, c: &Counters) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("/").to_string(),
        );
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            range = range.or_else(|| parse_range(&h));
        }
        c.requests.fetch_add(1, Ordering::SeqCst);
        let delay = c.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        let file = resolve(root, &path).filter(|p| p.is_file());
        let size = file
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        match (method.as_str(), file) {
            ("HEAD", Some(_)) => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\n\r\n"
                )?;
            }
            ("GET", Some(_)) if range.is_some_and(|(a, _)| a >= size) => {
                write!(out, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n\r\n")?;
            }
            ("GET", Some(p)) => {
                let (start, len, head) = match range {
                    Some((a, b)) => {
                        let b = b.min(size - 1);
                        (
                            a,
                            b - a + 1,
                            format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{size}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n", b - a + 1),
                        )
                    }
                    None => (
                        0,
                        size,
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\n\r\n"),
                    ),
                };
                let mut f = std::fs::File::open(&p)?;
                f.seek(SeekFrom::Start(start))?;
                let logged = match range {
                    Some(_) => format!("{path} bytes={start}-{}", start + len - 1),
                    None => path.clone(),
                };
                c.served.lock().expect("log").push(logged);
                c.in_flight.fetch_add(1, Ordering::SeqCst);
                let sent = out
                    .write_all(head.as_bytes())
                    .and_then(|()| send_body(&mut out, f.take(len), c));
                c.in_flight.fetch_sub(1, Ordering::SeqCst);
                sent?;
            }
            _ => {
                write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            }
        }
        out.flush()?;
    }
}

/// Sends `body` in pieces of 64 KiB, each counted as it goes, with the piece delay before each.
fn send_body(out: &mut TcpStream, mut body: impl Read, c: &Counters) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let pause = c.piece_delay_us.load(Ordering::SeqCst);
        if pause > 0 {
            std::thread::sleep(Duration::from_micros(pause));
        }
        out.write_all(&buf[..n])?;
        c.body_bytes.fetch_add(n as u64, Ordering::SeqCst);
    }
}
