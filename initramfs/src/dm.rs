//! Device-mapper ioctl messages (`linux/dm-ioctl.h`, interface 4), encoded and decoded here
//! without libdevmapper: kiln-init needs three commands (create a device, load one table,
//! resume it). The `devicemapper` crate needs libdevmapper at build time (bindgen, pkg-config)
//! and a semaphore-based udev sync that has no place in a static PID 1, so the 312-byte header
//! and the 40-byte target spec are written out here, checked against the C layout in tests.

/// `sizeof(struct dm_ioctl)`.
pub const HEADER_LEN: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const SPEC_LEN: usize = 40;
/// The table is read-only (verity refuses any other).
pub const READONLY_FLAG: u32 = 1 << 0;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn iowr(nr: u64) -> u64 {
    (3 << 30) | ((HEADER_LEN as u64) << 16) | (0xfd << 8) | nr
}
pub const DEV_CREATE: u64 = iowr(3);
pub const DEV_SUSPEND: u64 = iowr(6);
pub const TABLE_LOAD: u64 = iowr(9);

/// Interface version asked for: major 4 (the kernel refuses another), any minor.
const VERSION: [u32; 3] = [4, 0, 0];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmError {
    #[error("device name {0:?}: 1 to 127 bytes, no NUL or '/'")]
    Name(String),
    #[error("target type {0:?}: 1 to 15 bytes")]
    Kind(String),
    #[error("target parameters contain a NUL")]
    Params,
}

/// One target line of a table: `start length kind params` (sectors of 512 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub start: u64,
    pub length: u64,
    pub kind: &'a str,
    pub params: &'a str,
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// A request for device `name` with `flags` and, for a table load, its `targets`: the bytes
/// of an 8-byte-aligned buffer (`u64` words, as the kernel reads the specs in place).
pub fn message(name: &str, flags: u32, targets: &[Target<'_>]) -> Result<Vec<u64>, DmError> {
    if name.is_empty() || name.len() > 127 || name.contains(['\0', '/']) {
        return Err(DmError::Name(name.into()));
    }
    let mut b = vec![0u8; HEADER_LEN];
    for t in targets {
        if t.kind.is_empty() || t.kind.len() > 15 {
            return Err(DmError::Kind(t.kind.into()));
        }
        if t.params.contains('\0') {
            return Err(DmError::Params);
        }
        let at = b.len();
        let len = (SPEC_LEN + t.params.len() + 1).next_multiple_of(8);
        b.resize(at + len, 0);
        put_u64(&mut b, at, t.start);
        put_u64(&mut b, at + 8, t.length);
        // status (i32) stays 0; next: from this spec to the next one.
        put_u32(&mut b, at + 20, len as u32);
        b[at + 24..at + 24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
        b[at + SPEC_LEN..at + SPEC_LEN + t.params.len()].copy_from_slice(t.params.as_bytes());
    }
    for (i, v) in VERSION.iter().enumerate() {
        put_u32(&mut b, 4 * i, *v);
    }
    let size = b.len() as u32;
    put_u32(&mut b, 12, size); // data_size: the whole buffer
    put_u32(&mut b, 16, HEADER_LEN as u32); // data_start
    put_u32(&mut b, 20, targets.len() as u32);
    put_u32(&mut b, 28, flags);
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    Ok(b.chunks(8)
        .map(|w| u64::from_ne_bytes(w.try_into().expect("8-byte words")))
        .collect())
}

/// The `dev` field of a reply (the kernel's huge encoding) as (major, minor).
pub fn reply_dev(buf: &[u64]) -> (u32, u32) {
    let dev = buf[5]; // byte 40
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn request_numbers_are_the_c_header_s() {
        // From `_IOWR(DM_IOCTL, DM_*_CMD, struct dm_ioctl)` with sizeof = 312.
        assert_eq!(DEV_CREATE, 0xc138_fd03);
        assert_eq!(DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(TABLE_LOAD, 0xc138_fd09);
    }

    #[test]
    fn a_table_load_lays_out_header_spec_and_params() {
        let params = "1 254:2 254:2 4096 4096 8 9 sha256 aa bb";
        let m = message(
            "kiln-root",
            READONLY_FLAG,
            &[Target {
                start: 0,
                length: 64,
                kind: "verity",
                params,
            }],
        )
        .unwrap();
        let b = bytes(&m);
        assert_eq!(b.len() % 8, 0);
        assert_eq!(
            b.len(),
            (HEADER_LEN + SPEC_LEN + params.len() + 1).next_multiple_of(8)
        );
        assert_eq!([u32_at(&b, 0), u32_at(&b, 4), u32_at(&b, 8)], [4, 0, 0]);
        assert_eq!(u32_at(&b, 12) as usize, b.len()); // data_size
        assert_eq!(u32_at(&b, 16) as usize, HEADER_LEN); // data_start
        assert_eq!(u32_at(&b, 20), 1); // target_count
        assert_eq!(u32_at(&b, 28), READONLY_FLAG);
        assert_eq!(&b[48..58], b"kiln-root\0");
        let s = HEADER_LEN;
        assert_eq!(u64::from_ne_bytes(b[s + 8..s + 16].try_into().unwrap()), 64);
        assert_eq!(&b[s + 24..s + 31], b"verity\0");
        assert_eq!(
            &b[s + SPEC_LEN..s + SPEC_LEN + params.len()],
            params.as_bytes()
        );
        assert_eq!(b[s + SPEC_LEN + params.len()], 0);
    }

    #[test]
    fn a_bare_request_is_the_header_alone() {
        let b = bytes(&message("kiln-root", 0, &[]).unwrap());
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(u32_at(&b, 12) as usize, HEADER_LEN);
        assert_eq!(u32_at(&b, 20), 0);
    }

    #[test]
    fn bad_names_kinds_and_params_are_refused() {
        let t = |kind, params| Target {
            start: 0,
            length: 1,
            kind,
            params,
        };
        assert!(matches!(message("", 0, &[]), Err(DmError::Name(_))));
        assert!(matches!(message("a/b", 0, &[]), Err(DmError::Name(_))));
        assert!(matches!(
            message(&"x".repeat(128), 0, &[]),
            Err(DmError::Name(_))
        ));
        assert!(matches!(
            message("x", 0, &[t("", "")]),
            Err(DmError::Kind(_))
        ));
        assert!(matches!(
            message("x", 0, &[t("vvvvvvvvvvvvvvvv", "")]),
            Err(DmError::Kind(_))
        ));
        assert_eq!(
            message("x", 0, &[t("verity", "a\0b")]),
            Err(DmError::Params)
        );
    }

    #[test]
    fn the_reply_s_device_number_decodes() {
        let mut m = message("x", 0, &[]).unwrap();
        // major 254, minor 0x12345: huge_encode_dev.
        let (major, minor) = (254u64, 0x12345u64);
        m[5] = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        assert_eq!(reply_dev(&m), (254, 0x12345));
    }
}
