//! A minimal HTTP/1.1 GET client over `std::net` for plain `http://` URLs with an IP address or
//! a resolvable host: what kiln-init needs in a PXE initramfs (no TLS, no DNS configuration;
//! integrity comes from the sha256 on the kernel command line). Bodies with `Content-Length`,
//! chunked, or delimited by the connection's close. Built in when the `http` feature (reqwest,
//! https) is off.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `(host:port, path)` of an `http://` URL.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
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
pub fn parse_head(lines: &[String]) -> Option<Head> {
    let mut it = lines.iter();
    let status_line = it.next()?;
    let mut words = status_line.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
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
            head.len = Some(v.parse().ok()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    Some(head)
}

/// A response body being read.
pub struct Body {
    r: BufReader<TcpStream>,
    /// Bytes left: in the whole body (Content-Length) or in the current chunk.
    left: Option<u64>,
    chunked: bool,
    done: bool,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.chunked && self.left == Some(0) {
            let mut line = String::new();
            self.r.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF after the previous chunk's data.
                line.clear();
                self.r.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = Some(size);
        }
        let want = match self.left {
            Some(l) => (buf.len() as u64).min(l) as usize,
            None => buf.len(),
        };
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
        if let Some(l) = self.left.as_mut() {
            *l -= n as u64;
            if *l == 0 && !self.chunked {
                self.done = true;
            }
        }
        Ok(n)
    }
}

/// GETs `url`; errors on a status other than 200. Returns the body and its length when known.
pub fn get(url: &str, timeout: Duration) -> io::Result<(Body, Option<u64>)> {
    let (hostport, path) =
        split_url(url).ok_or_else(|| bad("only http://host[:port]/path URLs are supported"))?;
    let mut s = TcpStream::connect(&hostport)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: kiln\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Err(bad("connection closed in the response head"));
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            break;
        }
        if lines.len() > 100 {
            return Err(bad("response head too long"));
        }
        lines.push(l);
    }
    let head = parse_head(&lines).ok_or_else(|| bad("malformed response head"))?;
    if head.status != 200 {
        return Err(io::Error::other(format!("HTTP status {}", head.status)));
    }
    let len = if head.chunked { None } else { head.len };
    Ok((
        Body {
            r,
            left: if head.chunked { Some(0) } else { len },
            chunked: head.chunked,
            done: len == Some(0),
        },
        len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://10.0.2.2:8080/pxe/root.img"),
            Some(("10.0.2.2:8080".into(), "/pxe/root.img".into()))
        );
        assert_eq!(split_url("http://h"), Some(("h:80".into(), "/".into())));
        assert_eq!(split_url("https://h/x"), None);
        assert_eq!(split_url("http:///x"), None);
    }

    #[test]
    fn heads() {
        let h = |s: &[&str]| parse_head(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(
            h(&["HTTP/1.1 200 OK", "Content-Length: 12"]),
            Some(Head {
                status: 200,
                len: Some(12),
                chunked: false
            })
        );
        assert_eq!(
            h(&["HTTP/1.0 404 Not Found", "transfer-encoding: Chunked"]),
            Some(Head {
                status: 404,
                len: None,
                chunked: true
            })
        );
        assert_eq!(h(&["SSH-2.0"]), None);
        assert_eq!(h(&["HTTP/1.1 200 OK", "Content-Length: x"]), None);
    }

    /// Serves one response given as raw bytes; returns the URL.
    fn serve(raw: Vec<u8>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/f", l.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // Read the whole request first: closing with unread bytes would reset the
            // connection under the client.
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                match c.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            c.write_all(&raw).unwrap();
        });
        url
    }

    fn fetch(raw: &[u8]) -> io::Result<Vec<u8>> {
        let (mut body, _) = get(&serve(raw.to_vec()), Duration::from_secs(5))?;
        let mut v = Vec::new();
        body.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn bodies() {
        assert_eq!(
            fetch(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA").unwrap(),
            b"hello"
        );
        assert_eq!(
            fetch(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n")
                .unwrap(),
            b"hello world"
        );
        assert_eq!(
            fetch(b"HTTP/1.0 200 OK\r\n\r\nuntil close").unwrap(),
            b"until close"
        );
        let e = fetch(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = fetch(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert!(e.to_string().contains("500"), "{e}");
    }
}
