//! A small static-file HTTP/1.1 server on 127.0.0.1 for update tests (the guest reaches it at
//! slirp's host alias 10.0.2.2) and the delta benchmark. Keep-alive with TCP_NODELAY (no
//! Nagle stall between a client's requests), an optional delay per request (a stand-in for
//! network round trips), counters of requests, body bytes and connections, and a log of the
//! paths served; it stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
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
    /// Paths answered with a body, in order (logged before the body is sent).
    pub served: Mutex<Vec<String>>,
    /// Responses being sent now.
    pub in_flight: AtomicU64,
    /// Delay before each response, in microseconds.
    pub delay_us: AtomicU64,
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
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("/").to_string(),
        );
        // Skip headers.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
        }
        c.requests.fetch_add(1, Ordering::SeqCst);
        let delay = c.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        let file = resolve(root, &path).filter(|p| p.is_file());
        match (method, file) {
            ("GET", Some(p)) => {
                let mut body = Vec::new();
                std::fs::File::open(&p)?.read_to_end(&mut body)?;
                c.served.lock().expect("log").push(path.clone());
                c.in_flight.fetch_add(1, Ordering::SeqCst);
                let sent = write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n", body.len())
                    .and_then(|()| out.write_all(&body));
                c.in_flight.fetch_sub(1, Ordering::SeqCst);
                sent?;
                c.body_bytes.fetch_add(body.len() as u64, Ordering::SeqCst);
            }
            _ => {
                write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            }
        }
        out.flush()?;
    }
}
