//! Hashing (sha256) what is read, in the same pass that copies it.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// Which side of [`copy_hashed`] failed.
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Read(e) => write!(f, "reading: {e}"),
            CopyError::Write(e) => write!(f, "writing: {e}"),
        }
    }
}

impl std::error::Error for CopyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CopyError::Read(e) | CopyError::Write(e) => Some(e),
        }
    }
}

/// Copies `r` to `w` in 1 MiB blocks; returns the bytes copied and their sha256 (hex).
pub fn copy_hashed(mut r: impl Read, mut w: impl Write) -> Result<(u64, String), CopyError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    w.flush().map_err(CopyError::Write)?;
    Ok((total, hex::encode(h.finalize())))
}

/// The sha256 (hex) of everything `r` gives.
pub fn sha256_hex(r: impl Read) -> io::Result<String> {
    copy_hashed(r, io::sink())
        .map(|(_, h)| h)
        .map_err(|e| match e {
            CopyError::Read(e) | CopyError::Write(e) => e,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn copies_and_hashes_in_one_pass() {
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let (n, h) = copy_hashed(&data[..], &mut out).unwrap();
        assert_eq!((n, out.as_slice()), (data.len() as u64, data.as_slice()));
        assert_eq!(h, hex::encode(Sha256::digest(&data)));
        assert_eq!(sha256_hex(&data[..]).unwrap(), h);
        assert_eq!(sha256_hex(&b""[..]).unwrap(), EMPTY);
    }

    #[test]
    fn says_which_side_failed() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = copy_hashed(&b"x"[..], Full).unwrap_err();
        assert_eq!(e.to_string(), "writing: disk full");
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("reset"))
            }
        }
        let e = copy_hashed(Broken, io::sink()).unwrap_err();
        assert_eq!(e.to_string(), "reading: reset");
    }
}
