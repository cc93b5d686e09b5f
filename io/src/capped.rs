//! Reading a whole stream that must not exceed a size.

use std::io::{self, Read};

/// Why [`read_capped`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CappedError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The stream had more than `cap` bytes (no more than `cap + 1` were read).
    #[error("more than {cap} bytes")]
    TooLarge { cap: u64 },
}

/// Reads `r` to its end, refusing it once it has more than `cap` bytes: at most `cap + 1` bytes
/// are read and held, so a stream that never ends or lies about its length costs no more.
pub fn read_capped(r: impl Read, cap: u64) -> Result<Vec<u8>, CappedError> {
    let mut buf = Vec::new();
    r.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(CappedError::TooLarge { cap });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_cap_and_refuses_one_byte_more() {
        assert_eq!(read_capped(&b"abcd"[..], 4).unwrap(), b"abcd");
        assert_eq!(read_capped(&b""[..], 0).unwrap(), b"");
        let e = read_capped(&b"abcde"[..], 4).unwrap_err();
        assert!(matches!(e, CappedError::TooLarge { cap: 4 }), "{e:?}");
        assert_eq!(e.to_string(), "more than 4 bytes");
        // An endless stream stops at cap + 1.
        let e = read_capped(io::repeat(7), 1 << 20).unwrap_err();
        assert!(matches!(e, CappedError::TooLarge { .. }));
        assert_eq!(read_capped(&b"x"[..], u64::MAX).unwrap(), b"x");
    }

    #[test]
    fn a_read_error_is_passed_on() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("cable pulled"))
            }
        }
        let e = read_capped(Broken, 10).unwrap_err();
        assert!(
            matches!(&e, CappedError::Io(x) if x.to_string() == "cable pulled"),
            "{e:?}"
        );
    }
}
