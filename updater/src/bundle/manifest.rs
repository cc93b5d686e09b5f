//! The manifest: what a bundle installs, and the structural checks that make a verified
//! manifest safe to act on (chunks contiguous and bounded, digests well-formed).

use serde::{Deserialize, Serialize};

/// Manifest format understood by this code.
pub const FORMAT: u32 = 1;
/// Largest manifest accepted (bytes), before anything else is looked at.
pub const MANIFEST_CAP: u64 = 8 << 20;
/// Largest signature file accepted (bytes).
pub const SIGNATURES_CAP: u64 = 64 << 10;
/// Largest chunk (uncompressed) a manifest may declare.
pub const MAX_CHUNK: u32 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Must equal the device's compatible string.
    pub compatible: String,
    pub version: String,
    /// Monotonic: a device refuses a sequence not above the one it installed.
    pub sequence: u64,
    /// Creation and expiry times (UNIX seconds).
    pub created: u64,
    pub expires: u64,
    pub payloads: Payloads,
    /// The root's dm-verity description, when the root payload is a filesystem followed by its
    /// hash tree. Signed like the rest: its root hash goes onto the slot's command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_verity: Option<RootVerity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootVerity {
    /// sha256 root of the hash tree (hex).
    pub root_hash: String,
    /// 4 KiB blocks of filesystem the tree covers; the superblock and the tree follow them.
    pub data_blocks: u64,
}

/// What a bundle installs: the root, and what boots it — a kernel and an initrd, or (Secure
/// Boot images) each slot's signed unified kernel image. Exactly one of the two shapes
/// ([`Manifest::check_structure`]); serialized without the absent fields, so a kernel
/// bundle's manifest is what it always was, and an updater that predates UKIs refuses a UKI
/// bundle as an unknown field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payloads {
    pub root: Payload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<Payload>,
    /// Slot A's and slot B's signed UKIs: they differ in the signed command line's
    /// `kiln.slot=` and in the signature, so nearly all of the second one's chunks are the
    /// first one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki_a: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki_b: Option<Payload>,
}

/// How the slot a bundle installs boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPayloads<'a> {
    Kernel {
        kernel: &'a Payload,
        initrd: &'a Payload,
    },
    Uki {
        a: &'a Payload,
        b: &'a Payload,
    },
}

impl Payloads {
    /// The boot payloads, if the manifest has exactly one of the two shapes.
    pub fn boot(&self) -> Option<BootPayloads<'_>> {
        match (&self.kernel, &self.initrd, &self.uki_a, &self.uki_b) {
            (Some(kernel), Some(initrd), None, None) => {
                Some(BootPayloads::Kernel { kernel, initrd })
            }
            (None, None, Some(a), Some(b)) => Some(BootPayloads::Uki { a, b }),
            _ => None,
        }
    }

    /// Whether the bundle boots through signed UKIs.
    pub fn is_uki(&self) -> bool {
        matches!(self.boot(), Some(BootPayloads::Uki { .. }))
    }

    /// `(name, payload)` pairs in install order (and `chunks.pack` order): the root, then
    /// kernel and initrd or `uki-a` and `uki-b`.
    pub fn named(&self) -> Vec<(&'static str, &Payload)> {
        let mut v = vec![("root", &self.root)];
        for (name, p) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("uki-a", &self.uki_a),
            ("uki-b", &self.uki_b),
        ] {
            if let Some(p) = p {
                v.push((name, p));
            }
        }
        v
    }

    /// The ESP files `slot` boots from, as `(payload name, payload, path on the ESP)`: the
    /// kernel and initrd, or that slot's own UKI.
    pub fn esp_files(&self, slot: kiln_boot::Slot) -> Vec<(&'static str, &Payload, String)> {
        match self.boot() {
            Some(BootPayloads::Kernel { kernel, initrd }) => vec![
                ("kernel", kernel, kiln_boot::esp_kernel(slot)),
                ("initrd", initrd, kiln_boot::esp_initrd(slot)),
            ],
            Some(BootPayloads::Uki { a, b }) => {
                let (name, p) = match slot {
                    kiln_boot::Slot::A => ("uki-a", a),
                    kiln_boot::Slot::B => ("uki-b", b),
                };
                vec![(name, p, kiln_boot::esp_uki(slot))]
            }
            None => vec![],
        }
    }
}

/// One payload: an image split into content-defined chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub size: u64,
    pub sha256: String,
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// Offset of the chunk in the payload.
    pub offset: u64,
    /// Uncompressed length.
    pub length: u32,
    /// sha256 of the uncompressed bytes (also the chunk's name in the store).
    pub sha256: String,
    /// Compressed size in the store.
    pub stored: u64,
}

/// A manifest whose structure cannot be trusted even with a good signature.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StructureError {
    #[error("manifest format {0} is not supported (expected {FORMAT})")]
    Format(u32),
    #[error("manifest field {field}: {error}")]
    Label {
        field: &'static str,
        error: kiln_boot::contract::LabelError,
    },
    #[error("manifest field root_verity: {0}")]
    Verity(String),
    #[error(
        "payloads: give kernel and initrd, or uki_a and uki_b (signed UKIs, with root_verity)"
    )]
    BootPayloads,
    #[error("payload {payload}: {message}")]
    Payload {
        payload: &'static str,
        message: String,
    },
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Upper bound of a zstd frame for `n` input bytes (ZSTD_compressBound plus slack).
pub fn stored_bound(n: u32) -> u64 {
    let n = u64::from(n);
    n + (n >> 8) + 1024
}

/// The compatible and version strings in the label character set (`kiln bundle` checks them
/// before writing, the device on every verified manifest).
pub fn check_labels(compatible: &str, version: &str) -> Result<(), StructureError> {
    for (field, v) in [("compatible", compatible), ("version", version)] {
        kiln_boot::contract::check_label(v)
            .map_err(|error| StructureError::Label { field, error })?;
    }
    Ok(())
}

impl Manifest {
    /// Checks what the installer relies on: the labels in their character set, and chunks
    /// that cover each payload exactly, in order, with bounded sizes and well-formed digests.
    pub fn check_structure(&self) -> Result<(), StructureError> {
        if self.format != FORMAT {
            return Err(StructureError::Format(self.format));
        }
        check_labels(&self.compatible, &self.version)?;
        if let Some(v) = &self.root_verity {
            if !kiln_boot::cmdline::is_root_hash(&v.root_hash) {
                return Err(StructureError::Verity(format!(
                    "root_hash {:?} is not 64 lower-case hex digits",
                    v.root_hash
                )));
            }
            // The data, the superblock's block and the tree are the whole root payload.
            let root = self.payloads.root.size;
            let total = (v.data_blocks <= root / kiln_boot::verity::BLOCK)
                .then(|| kiln_boot::verity::Geometry::new(v.data_blocks).ok())
                .flatten()
                .map(|g| g.total_len());
            if total != Some(root) {
                return Err(StructureError::Verity(format!(
                    "{} data blocks and their tree are not the {root}-byte root payload",
                    v.data_blocks
                )));
            }
        }
        match self.payloads.boot() {
            None => return Err(StructureError::BootPayloads),
            // A UKI's signed command line pins the root by its hash: no UKI without one.
            Some(BootPayloads::Uki { .. }) if self.root_verity.is_none() => {
                return Err(StructureError::BootPayloads)
            }
            Some(_) => {}
        }
        for (name, p) in self.payloads.named() {
            let bad = |message: String| StructureError::Payload {
                payload: name,
                message,
            };
            if !is_sha256(&p.sha256) {
                return Err(bad(format!(
                    "sha256 {:?} is not a lower-case sha256",
                    p.sha256
                )));
            }
            let mut next = 0u64;
            for (i, c) in p.chunks.iter().enumerate() {
                if c.offset != next {
                    return Err(bad(format!(
                        "chunk {i} starts at {} instead of {next}",
                        c.offset
                    )));
                }
                if c.length == 0 || c.length > MAX_CHUNK {
                    return Err(bad(format!("chunk {i} has length {}", c.length)));
                }
                if !is_sha256(&c.sha256) {
                    return Err(bad(format!("chunk {i} has a malformed sha256")));
                }
                if c.stored == 0 || c.stored > stored_bound(c.length) {
                    return Err(bad(format!(
                        "chunk {i} declares {} stored bytes for {} bytes",
                        c.stored, c.length
                    )));
                }
                next += u64::from(c.length);
            }
            if next != p.size {
                return Err(bad(format!(
                    "chunks cover {next} bytes but the payload is {} bytes",
                    p.size
                )));
            }
        }
        Ok(())
    }
}

/// What the device accepts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub compatible: String,
    /// The anti-downgrade floor: a bundle's sequence must be above it. On a device, the higher
    /// of the blessed manifest's sequence and the running image's own (`KILN_SEQUENCE`);
    /// `None` only when neither exists.
    pub installed_sequence: Option<u64>,
    /// The highest sequence this device accepted for an install: a bundle may not be below it
    /// (the same one may be tried again).
    pub seen_sequence: Option<u64>,
    /// The time floor (UNIX seconds): the newest `created` the device accepted and the running
    /// image's build time. A manifest created before it is refused, and expiry is judged
    /// against the later of it and `now`, so a clock reset to 1970 does not revive expired
    /// bundles.
    pub time_floor: u64,
    /// Skips the sequence and creation-time floors (never expiry).
    pub allow_downgrade: bool,
    /// Current time by the device's clock (UNIX seconds).
    pub now: u64,
}

/// A well-signed manifest the device must still refuse.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("bundle is for {bundle:?}, this device is {device:?}")]
    WrongCompatible { bundle: String, device: String },
    #[error("bundle sequence {bundle} is not above the installed sequence {installed} (the blessed one or the image's own; downgrade: use --allow-downgrade)")]
    Downgrade { bundle: u64, installed: u64 },
    #[error("bundle sequence {bundle} is below {seen}, the highest this device accepted (downgrade: use --allow-downgrade)")]
    BelowSeen { bundle: u64, seen: u64 },
    #[error("bundle created at {created}, before this device's time floor {floor} (the newest manifest it accepted, or its image's build time)")]
    CreatedBeforeFloor { created: u64, floor: u64 },
    #[error("bundle expired at {expires} (now {now}: the later of the clock and the time floor)")]
    Expired { expires: u64, now: u64 },
}

impl Manifest {
    pub fn check_policy(&self, p: &Policy) -> Result<(), PolicyError> {
        if self.compatible != p.compatible {
            return Err(PolicyError::WrongCompatible {
                bundle: self.compatible.clone(),
                device: p.compatible.clone(),
            });
        }
        if !p.allow_downgrade {
            if let Some(installed) = p.installed_sequence.filter(|&i| self.sequence <= i) {
                return Err(PolicyError::Downgrade {
                    bundle: self.sequence,
                    installed,
                });
            }
            if let Some(seen) = p.seen_sequence.filter(|&s| self.sequence < s) {
                return Err(PolicyError::BelowSeen {
                    bundle: self.sequence,
                    seen,
                });
            }
            if self.created < p.time_floor {
                return Err(PolicyError::CreatedBeforeFloor {
                    created: self.created,
                    floor: p.time_floor,
                });
            }
        }
        let now = p.now.max(p.time_floor);
        if self.expires <= now {
            return Err(PolicyError::Expired {
                expires: self.expires,
                now,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(byte: u8, size: u32) -> Payload {
        let h = |b: u8| format!("{b:02x}").repeat(32);
        Payload {
            size: u64::from(size),
            sha256: h(byte),
            chunks: vec![Chunk {
                offset: 0,
                length: size,
                sha256: h(byte),
                stored: 100,
            }],
        }
    }

    fn manifest(payloads: Payloads, verity: bool) -> Manifest {
        Manifest {
            format: FORMAT,
            compatible: "c".into(),
            version: "1.0".into(),
            sequence: 1,
            created: 0,
            expires: 1,
            payloads,
            root_verity: verity.then(|| RootVerity {
                root_hash: "ab".repeat(32),
                data_blocks: 1,
            }),
        }
    }

    fn shape(kernel: bool, uki: bool) -> Payloads {
        Payloads {
            // One data block, its superblock block and no tree levels: 8 KiB.
            root: payload(1, 8192),
            kernel: kernel.then(|| payload(2, 10)),
            initrd: kernel.then(|| payload(3, 10)),
            uki_a: uki.then(|| payload(4, 10)),
            uki_b: uki.then(|| payload(5, 10)),
        }
    }

    #[test]
    fn a_manifest_boots_by_kernel_and_initrd_or_by_signed_ukis_never_both() {
        let kernel = manifest(shape(true, false), false);
        assert_eq!(kernel.check_structure(), Ok(()));
        assert!(!kernel.payloads.is_uki());
        let names: Vec<_> = kernel.payloads.named().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["root", "kernel", "initrd"]);
        let b: Vec<_> = kernel
            .payloads
            .esp_files(kiln_boot::Slot::B)
            .into_iter()
            .map(|(n, _, path)| (n, path))
            .collect();
        assert_eq!(
            b,
            [
                ("kernel", "kiln/b/vmlinuz".to_string()),
                ("initrd", "kiln/b/initrd.img".to_string())
            ]
        );

        let uki = manifest(shape(false, true), true);
        assert_eq!(uki.check_structure(), Ok(()));
        assert!(uki.payloads.is_uki());
        let names: Vec<_> = uki.payloads.named().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["root", "uki-a", "uki-b"]);
        for (slot, want) in [(kiln_boot::Slot::A, 4u8), (kiln_boot::Slot::B, 5)] {
            let files = uki.payloads.esp_files(slot);
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].2, format!("kiln/{slot}/kiln.efi"));
            assert_eq!(files[0].1.sha256, format!("{want:02x}").repeat(32));
        }

        // Both shapes, neither, half of one, or UKIs without a root hash: refused.
        for bad in [
            manifest(shape(true, true), true),
            manifest(shape(false, false), true),
            manifest(shape(false, true), false),
            manifest(
                Payloads {
                    initrd: None,
                    ..shape(true, false)
                },
                false,
            ),
        ] {
            assert_eq!(bad.check_structure(), Err(StructureError::BootPayloads));
        }
        // A kernel manifest serializes as before UKIs existed: no new keys.
        let text = serde_json::to_string(&kernel).unwrap();
        assert!(!text.contains("uki"), "{text}");
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, kernel);
    }
}
