//! Where an image comes from: a local file (raw or zstd-compressed) or an http(s) URL, streamed.
//! Compression is recognised by the zstd magic, not by the file name. Every read is within
//! [`Bounds`]: no more bytes than the caller can take (a device's size, the RAM a live root
//! may use), decompressed or not, and for a URL a stall time and a deadline.

use crate::FlashError;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// An image being read once, front to back.
pub struct Source {
    /// The path or URL, for messages.
    pub name: String,
    /// The image's bytes (decompressed).
    pub reader: Box<dyn Read + Send>,
    /// The image's size, when known before reading: a raw file's length, a raw HTTP body's
    /// `Content-Length`, or the content size a zstd frame header records.
    pub len: Option<u64>,
    /// Whether the bytes were zstd-compressed.
    pub zstd: bool,
}

/// What reading one image may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most bytes the image may hold (after decompression; a compressed stream is capped at
    /// the same size).
    pub max_bytes: u64,
    /// For a URL: the longest wait for the connection or the next byte.
    pub stall: Duration,
    /// For a URL: the whole transfer.
    pub deadline: Duration,
}

impl Bounds {
    /// An image for a device of `bytes`: no larger than it, a minute without data or a day in
    /// all at most.
    pub fn for_device(bytes: u64) -> Bounds {
        Bounds {
            max_bytes: bytes,
            stall: Duration::from_secs(60),
            deadline: Duration::from_secs(86_400),
        }
    }
}

/// A reader that fails once more than `cap` bytes came through.
struct Capped<R> {
    inner: R,
    room: u64,
    cap: u64,
    what: &'static str,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.room.saturating_add(1)) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.room {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} passes the cap of {} bytes", self.what, self.cap),
            ));
        }
        self.room -= n as u64;
        Ok(n)
    }
}

fn capped<R: Read + Send + 'static>(
    inner: R,
    cap: u64,
    what: &'static str,
) -> Box<dyn Read + Send> {
    Box::new(Capped {
        inner,
        room: cap,
        cap,
        what,
    })
}

/// Whether `spec` names a URL rather than a file.
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("http://") || spec.starts_with("https://")
}

/// Opens `spec` (a path or an http(s) URL) within `bounds`.
pub fn open(spec: &str, bounds: &Bounds) -> Result<Source, FlashError> {
    if is_url(spec) {
        return open_url(spec, bounds);
    }
    let path = Path::new(spec);
    let file = File::open(path).map_err(FlashError::io("opening image", spec))?;
    let meta = file
        .metadata()
        .map_err(FlashError::io("reading image", spec))?;
    if !meta.is_file() {
        return Err(FlashError::Io {
            what: "reading image",
            path: spec.into(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    sniff(spec, Box::new(file), Some(meta.len()), bounds.max_bytes)
}

/// Wraps `raw` in a zstd decoder when it starts with the zstd magic; either way no more than
/// `cap` bytes come out (reading fails at the cap). A length known up front is the caller's to
/// compare (`write::flash` refuses a device smaller than the image before writing).
fn sniff(
    name: &str,
    raw: Box<dyn Read + Send>,
    raw_len: Option<u64>,
    cap: u64,
) -> Result<Source, FlashError> {
    let mut buf = BufReader::with_capacity(1 << 20, capped(raw, cap, "the image"));
    let head = buf
        .fill_buf()
        .map_err(FlashError::io("reading image", name))?;
    if !head.starts_with(&ZSTD_MAGIC) {
        return Ok(Source {
            name: name.into(),
            reader: Box::new(buf),
            len: raw_len,
            zstd: false,
        });
    }
    let len = zstd::zstd_safe::get_frame_content_size(head).ok().flatten();
    let dec = zstd::stream::read::Decoder::with_buffer(buf)
        .map_err(FlashError::io("decompressing image", name))?;
    Ok(Source {
        name: name.into(),
        reader: capped(dec, cap, "the decompressed image"),
        len,
        zstd: true,
    })
}

#[cfg(feature = "http")]
fn client(url: &str, bounds: &Bounds) -> Result<reqwest::blocking::Client, FlashError> {
    reqwest::blocking::Client::builder()
        .connect_timeout(bounds.stall)
        // The whole transfer: a server that drips fails the flash (and wipes the device).
        .timeout(bounds.deadline)
        .build()
        .map_err(|e| FlashError::Http {
            url: url.into(),
            message: e.to_string(),
        })
}

#[cfg(feature = "http")]
fn open_url(url: &str, bounds: &Bounds) -> Result<Source, FlashError> {
    let http = |e: reqwest::Error| FlashError::Http {
        url: url.into(),
        message: e.to_string(),
    };
    let resp = client(url, bounds)?
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(http)?;
    let len = resp.content_length();
    sniff(url, Box::new(resp), len, bounds.max_bytes)
}

/// Without reqwest: plain http:// through [`crate::http1`].
#[cfg(not(feature = "http"))]
fn open_url(url: &str, bounds: &Bounds) -> Result<Source, FlashError> {
    let limits = crate::http1::Limits {
        stall: bounds.stall,
        deadline: bounds.deadline,
        body: bounds.max_bytes,
    };
    let (body, len) = crate::http1::get(url, &limits).map_err(|e| FlashError::Http {
        url: url.into(),
        message: e.to_string(),
    })?;
    sniff(url, Box::new(body), len, bounds.max_bytes)
}

/// A checksum file: small, and quick to come.
const SIDECAR: Bounds = Bounds {
    max_bytes: 4096,
    stall: Duration::from_secs(30),
    deadline: Duration::from_secs(60),
};

/// The published checksum next to an image: `IMAGE.sha256` (a file beside it, or the URL with
/// `.sha256` appended). `None` when there is none; an error when it exists but cannot be read.
pub fn sidecar_checksum(spec: &str) -> Result<Option<(String, String)>, FlashError> {
    sidecar(spec, ".sha256")
}

/// The text of `{spec}{suffix}` (file or URL) and its name, `None` when it does not exist.
pub fn sidecar(spec: &str, suffix: &str) -> Result<Option<(String, String)>, FlashError> {
    let name = format!("{spec}{suffix}");
    if is_url(spec) {
        return fetch_optional(&name).map(|t| t.map(|t| (t, name)));
    }
    match std::fs::read_to_string(&name) {
        Ok(t) => Ok(Some((t, name))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FlashError::io("reading", &name)(e)),
    }
}

#[cfg(feature = "http")]
fn fetch_optional(url: &str) -> Result<Option<String>, FlashError> {
    let http = |e: reqwest::Error| FlashError::Http {
        url: url.into(),
        message: e.to_string(),
    };
    let resp = client(url, &SIDECAR)?.get(url).send().map_err(http)?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let resp = resp.error_for_status().map_err(http)?;
    // More than the cap is refused, never cut to a prefix that might still parse.
    let bytes = kiln_io::read_capped(resp, SIDECAR.max_bytes).map_err(|e| match e {
        kiln_io::CappedError::Io(e) => FlashError::io("reading checksum", url)(e),
        e => FlashError::io("reading checksum", url)(std::io::Error::other(e)),
    })?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| FlashError::io("reading checksum", url)(std::io::Error::other(e)))
}

#[cfg(not(feature = "http"))]
fn fetch_optional(url: &str) -> Result<Option<String>, FlashError> {
    let limits = crate::http1::Limits {
        stall: SIDECAR.stall,
        deadline: SIDECAR.deadline,
        body: SIDECAR.max_bytes,
    };
    match crate::http1::get(url, &limits) {
        Ok((mut body, _)) => {
            let mut text = String::new();
            body.read_to_string(&mut text)
                .map_err(FlashError::io("reading checksum", url))?;
            Ok(Some(text))
        }
        Err(e) if e.to_string().contains("HTTP status 404") => Ok(None),
        Err(e) => Err(FlashError::Http {
            url: url.into(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(mut s: Source) -> Vec<u8> {
        let mut v = Vec::new();
        s.reader.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn raw_and_zstd_files_read_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, &data).unwrap();
        let zst = dir.path().join("disk.raw.zst");
        std::fs::write(&zst, zstd::bulk::compress(&data, 3).unwrap()).unwrap();

        let b = Bounds::for_device(1 << 30);
        let s = open(raw.to_str().unwrap(), &b).unwrap();
        assert_eq!((s.len, s.zstd), (Some(data.len() as u64), false));
        assert_eq!(read_all(s), data);
        let s = open(zst.to_str().unwrap(), &b).unwrap();
        assert_eq!((s.len, s.zstd), (Some(data.len() as u64), true));
        assert_eq!(read_all(s), data);
    }

    #[test]
    fn streamed_zstd_without_content_size_has_unknown_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.zst");
        let mut enc = zstd::stream::write::Encoder::new(File::create(&p).unwrap(), 3).unwrap();
        enc.write_all(&[7u8; 100_000]).unwrap();
        enc.finish().unwrap();
        let s = open(p.to_str().unwrap(), &Bounds::for_device(1 << 30)).unwrap();
        assert_eq!((s.len, s.zstd), (None, true));
        assert_eq!(read_all(s), vec![7u8; 100_000]);
    }

    #[test]
    fn images_past_the_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cap = Bounds::for_device(50_000);
        // Refused at open (the first buffer fill passes the cap) or while reading.
        let read_err = |p: &Path| match open(p.to_str().unwrap(), &cap) {
            Err(e) => e.to_string(),
            Ok(mut s) => std::io::copy(&mut s.reader, &mut std::io::sink())
                .unwrap_err()
                .to_string(),
        };
        let raw = dir.path().join("big.raw");
        std::fs::write(&raw, vec![1u8; 60_000]).unwrap();
        let e = read_err(&raw);
        assert!(e.contains("the image passes the cap of 50000 bytes"), "{e}");
        let zst = dir.path().join("big.zst");
        std::fs::write(&zst, zstd::bulk::compress(&[0u8; 60_000], 3).unwrap()).unwrap();
        let e = read_err(&zst);
        assert!(e.contains("decompressed image passes the cap"), "{e}");
        // A zstd bomb without a content size: stopped while decompressing.
        let bomb = dir.path().join("bomb.zst");
        let mut enc = zstd::stream::write::Encoder::new(File::create(&bomb).unwrap(), 19).unwrap();
        enc.write_all(&vec![0u8; 8 << 20]).unwrap();
        enc.finish().unwrap();
        assert!(std::fs::metadata(&bomb).unwrap().len() < 4096);
        assert_eq!(open(bomb.to_str().unwrap(), &cap).unwrap().len, None);
        let e = read_err(&bomb);
        assert!(
            e.contains("decompressed image passes the cap of 50000 bytes"),
            "{e}"
        );
    }

    #[test]
    fn missing_image_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.raw");
        let e = open(p.to_str().unwrap(), &Bounds::for_device(1 << 30))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("nope.raw"), "{e}");
        assert!(sidecar_checksum(p.to_str().unwrap()).unwrap().is_none());
        std::fs::write(dir.path().join("nope.raw.sha256"), "ab").unwrap();
        let (t, from) = sidecar_checksum(p.to_str().unwrap()).unwrap().unwrap();
        assert_eq!(t, "ab");
        assert!(from.ends_with("nope.raw.sha256"));
    }
}
