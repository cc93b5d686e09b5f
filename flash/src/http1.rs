//! A minimal HTTP/1.1 GET client over `std::net` for plain `http://` URLs with an IP address or
//! a resolvable host: what kiln-init needs in a PXE initramfs (no TLS, no DNS configuration;
//! integrity comes from the sha256 on the kernel command line). Bodies with `Content-Length`,
//! chunked, or delimited by the connection's close. Built in when the `http` feature (reqwest,
//! https) is off.
//!
//! Hand-written rather than a crate: it runs in PID 1, where the HTTP crates' async runtimes
//! and TLS stacks are dead weight, and every read here has to be bounded. Running out of memory
//! or hanging in PID 1 is a kernel panic or a machine that never boots, whatever the server
//! sends:
//! - a line (status, header, chunk size) is at most [`LINE_MAX`] bytes, the head at most
//!   [`HEAD_LINES`] lines;
//! - `Content-Length` and chunk sizes are numbers below 2^64 that fit in the body cap;
//! - the body is at most [`Limits::body`] bytes however it is delimited;
//! - no read waits more than [`Limits::stall`] for a byte, and the request (connect to last
//!   byte) ends by [`Limits::deadline`]: a server dripping one byte at a time fails on time.
//!
//! The response parser ([`read_response`]) takes any `BufRead`, so it is fuzzed and tested
//! without sockets; [`get`] puts it on a TCP connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest status, header or chunk-size line, CRLF included.
pub const LINE_MAX: usize = 8 << 10;
/// Most lines in a response head (status line included).
pub const HEAD_LINES: usize = 100;

/// What one request may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for the next byte (and for the connection).
    pub stall: Duration,
    /// Whole request: connect, head and body.
    pub deadline: Duration,
    /// Largest body accepted, in bytes.
    pub body: u64,
}

/// `(host:port, path)` of an `http://` URL.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() || path.contains(['\r', '\n', ' ']) {
        return None;
    }
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Some((hostport, path.to_string()))
}

/// A response head: status code, `Content-Length`, chunked.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub len: Option<u64>,
    pub chunked: bool,
}

/// Parses the status line and headers (without the final empty line).
pub fn parse_head(lines: &[String]) -> Result<Head, String> {
    let mut it = lines.iter();
    let status_line = it.next().ok_or("empty response head")?;
    let mut words = status_line.split_whitespace();
    if !words.next().is_some_and(|w| w.starts_with("HTTP/1.")) {
        return Err(format!("not an HTTP/1 status line: {}", clip(status_line)));
    }
    let status = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("no status code in {}", clip(status_line)))?;
    let mut head = Head {
        status,
        len: None,
        chunked: false,
    };
    for l in it {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            let n = v
                .parse()
                .map_err(|_| format!("Content-Length {} is not a number below 2^64", clip(v)))?;
            if head.len.is_some_and(|old| old != n) {
                return Err("two different Content-Length headers".into());
            }
            head.len = Some(n);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok(head)
}

/// The size on a chunk-size line (hex, at most 16 digits, extensions after `;` ignored).
pub fn parse_chunk_size(line: &str) -> Result<u64, String> {
    let digits = line.split(';').next().unwrap_or("").trim();
    let e = || format!("bad chunk size {}", clip(digits));
    if digits.is_empty() || digits.len() > 16 {
        return Err(e());
    }
    u64::from_str_radix(digits, 16).map_err(|_| e())
}

/// `s` quoted and escaped, cut at 80 characters: a hostile line is never echoed whole.
fn clip(s: &str) -> String {
    let t: String = s.chars().take(80).collect();
    format!("{t:?}")
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line of at most `LINE_MAX` bytes (CRLF or LF ended), without the line end.
/// `Ok(None)` at the end of the stream before any byte.
pub fn read_line<R: BufRead>(r: &mut R, what: &str) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed in a {what} line"),
            ));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > LINE_MAX {
            return Err(bad(format!("{what} line longer than {LINE_MAX} bytes")));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                line.pop();
            }
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| bad(format!("{what} line is not UTF-8")));
        }
    }
}

/// A response body being read: at most `cap` bytes, however it is delimited.
pub struct Body<R> {
    r: R,
    /// Bytes left: in the whole body (Content-Length) or in the current chunk.
    left: Option<u64>,
    chunked: bool,
    done: bool,
    /// Bytes of body still allowed.
    room: u64,
    cap: u64,
}

fn over_cap(cap: u64) -> io::Error {
    bad(format!("the body passes the cap of {cap} bytes"))
}

impl<R: BufRead> Body<R> {
    fn next_chunk(&mut self) -> io::Result<()> {
        let mut line = read_line(&mut self.r, "chunk-size")?.unwrap_or_default();
        if line.is_empty() {
            // The CRLF after the previous chunk's data.
            line = read_line(&mut self.r, "chunk-size")?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the last chunk",
                )
            })?;
        }
        let size = parse_chunk_size(&line).map_err(bad)?;
        if size == 0 {
            self.done = true;
        } else if size > self.room {
            return Err(bad(format!(
                "chunk size {size} passes the cap of {} bytes",
                self.cap
            )));
        }
        self.left = Some(size);
        Ok(())
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.chunked && self.left == Some(0) {
            self.next_chunk()?;
            if self.done {
                return Ok(0);
            }
        }
        // Close-delimited: one byte past the room is enough to know the cap was passed.
        let limit = self.left.unwrap_or(self.room.saturating_add(1));
        let want = (buf.len() as u64).min(limit) as usize;
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            if self.left.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the end of the body",
                ));
            }
            self.done = true;
            return Ok(0);
        }
        if n as u64 > self.room {
            return Err(over_cap(self.cap));
        }
        self.room -= n as u64;
        if let Some(l) = self.left.as_mut() {
            *l -= n as u64;
            if *l == 0 && !self.chunked {
                self.done = true;
            }
        }
        Ok(n)
    }
}

/// Reads a response head from `r` and returns it with its body (capped at `cap` bytes).
/// Errors on a status other than 200 and on a `Content-Length` above the cap.
pub fn read_response<R: BufRead>(mut r: R, cap: u64) -> io::Result<(Head, Body<R>)> {
    let mut lines = Vec::new();
    loop {
        let l = read_line(&mut r, "response head")?
            .ok_or_else(|| bad("connection closed in the response head"))?;
        if l.is_empty() {
            break;
        }
        if lines.len() == HEAD_LINES {
            return Err(bad(format!("response head longer than {HEAD_LINES} lines")));
        }
        lines.push(l);
    }
    let head = parse_head(&lines).map_err(bad)?;
    if head.status != 200 {
        return Err(io::Error::other(format!("HTTP status {}", head.status)));
    }
    let len = if head.chunked { None } else { head.len };
    if let Some(n) = len.filter(|&n| n > cap) {
        return Err(bad(format!(
            "Content-Length {n} passes the cap of {cap} bytes"
        )));
    }
    let body = Body {
        r,
        left: if head.chunked { Some(0) } else { len },
        chunked: head.chunked,
        done: len == Some(0),
        room: cap,
        cap,
    };
    Ok((head, body))
}

/// A TCP stream whose every read waits at most the stall time and never past the deadline.
pub struct Timed {
    s: TcpStream,
    deadline: Instant,
    limits: Limits,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let now = Instant::now();
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(deadline_passed(&self.limits));
        }
        let wait = left.min(self.limits.stall);
        self.s.set_read_timeout(Some(wait))?;
        match self.s.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(if wait < self.limits.stall {
                    deadline_passed(&self.limits)
                } else {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data for {:?}", self.limits.stall),
                    )
                })
            }
            r => r,
        }
    }
}

fn deadline_passed(l: &Limits) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the request's deadline of {:?} passed", l.deadline),
    )
}

/// GETs `url` within `limits`; errors on a status other than 200. Returns the body and its
/// length when known.
pub fn get(url: &str, limits: &Limits) -> io::Result<(Body<BufReader<Timed>>, Option<u64>)> {
    let deadline = Instant::now() + limits.deadline;
    let (hostport, path) =
        split_url(url).ok_or_else(|| bad("only http://host[:port]/path URLs are supported"))?;
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| bad(format!("{hostport} has no address")))?;
    let connect = limits
        .stall
        .min(deadline.saturating_duration_since(Instant::now()));
    let mut s = TcpStream::connect_timeout(&addr, connect.max(Duration::from_millis(1)))?;
    s.set_write_timeout(Some(limits.stall))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: kiln\r\nConnection: close\r\n\r\n"
    )?;
    let r = BufReader::with_capacity(
        1 << 20,
        Timed {
            s,
            deadline,
            limits: *limits,
        },
    );
    let (head, body) = read_response(r, limits.body)?;
    let len = if head.chunked { None } else { head.len };
    Ok((body, len))
}

#[cfg(test)]
mod tests;
