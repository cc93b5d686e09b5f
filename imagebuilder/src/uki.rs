//! Unified kernel images: systemd's EFI stub (`linuxx64.efi.stub`) with the kernel, initrd,
//! command line and os-release added as PE sections (`.osrel`, `.cmdline`, `.linux`,
//! `.initrd`), which the stub hands to the kernel. Signed as one file (`secure_boot::sign`),
//! so under Secure Boot the command line — the slot and its root hash — is as trusted as the
//! kernel.
//!
//! The sections are added with binutils' `objcopy`, as systemd documents for stubs older than
//! `ukify` (Debian 12's systemd 252 has no ukify). Where they go is computed here: above the
//! stub's own image, in ascending order, each on a 4 KiB boundary and not overlapping the one
//! before (the stub warns about and refuses overlapping sections).

use crate::error::BuildError;
use kiln_rootfs::mkfs::run_tool;
use std::path::Path;
use std::process::Command;

/// Debian's stub (package systemd-boot-efi).
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

const PAGE: u64 = 4096;

/// What the UKI holds besides the stub.
pub struct UkiParts<'a> {
    pub osrel: &'a [u8],
    pub cmdline: &'a str,
    pub linux: &'a [u8],
    pub initrd: &'a [u8],
}

/// A PE image's end in memory: `ImageBase + SizeOfImage` (PE32+ only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    #[error("not a PE file (no MZ/PE signature)")]
    NotPe,
    #[error("not a PE32+ (64-bit) image")]
    NotPe32Plus,
    #[error("truncated PE header")]
    Truncated,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PeError> {
    let s = b.get(at..at + 2).ok_or(PeError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, PeError> {
    let s = b.get(at..at + 4).ok_or(PeError::Truncated)?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

/// The first address past a PE32+ image in memory (`ImageBase + SizeOfImage`).
pub fn image_end(pe: &[u8]) -> Result<u64, PeError> {
    if pe.get(..2) != Some(b"MZ") {
        return Err(PeError::NotPe);
    }
    let nt = u32_at(pe, 0x3c)? as usize;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        return Err(PeError::NotPe);
    }
    let opt = nt + 24;
    if u16_at(pe, opt)? != 0x20b {
        return Err(PeError::NotPe32Plus);
    }
    let base = u64::from(u32_at(pe, opt + 24)?) | (u64::from(u32_at(pe, opt + 28)?) << 32);
    let size = u64::from(u32_at(pe, opt + 56)?);
    Ok(base + size)
}

/// The bytes of the section `name` (e.g. `.cmdline`) of a PE file, if it has one within the
/// file: `VirtualSize` bytes (the data without the file alignment's padding).
pub fn section<'a>(pe: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if pe.get(..2) != Some(b"MZ") {
        return None;
    }
    let nt = u32_at(pe, 0x3c).ok()? as usize;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        return None;
    }
    let count = usize::from(u16_at(pe, nt + 6).ok()?);
    let table = nt + 24 + usize::from(u16_at(pe, nt + 20).ok()?);
    (0..count).find_map(|i| {
        let h = pe.get(table + i * 40..table + (i + 1) * 40)?;
        let raw_name = &h[..8];
        let end = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
        if &raw_name[..end] != name.as_bytes() {
            return None;
        }
        let vsize = u32_at(h, 8).ok()? as usize;
        let raw = u32_at(h, 16).ok()? as usize;
        let at = u32_at(h, 20).ok()? as usize;
        pe.get(at..at.checked_add(vsize.min(raw))?)
    })
}

/// Sets a PE file's COFF `TimeDateStamp` and clears its optional header's `CheckSum`, which
/// covers the stamp (objcopy 2.40 stamps the current time and ignores `SOURCE_DATE_EPOCH`; the
/// build's epoch keeps UKIs reproducible). Firmware does not check the sum, Authenticode does
/// not cover it, and the signer writes a new one.
pub fn set_timestamp(pe: &mut [u8], time: u32) -> Result<(), PeError> {
    if pe.get(..2) != Some(b"MZ") {
        return Err(PeError::NotPe);
    }
    let nt = u32_at(pe, 0x3c)? as usize;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        return Err(PeError::NotPe);
    }
    pe.get_mut(nt + 8..nt + 12)
        .ok_or(PeError::Truncated)?
        .copy_from_slice(&time.to_le_bytes());
    let checksum = nt + 24 + 64;
    pe.get_mut(checksum..checksum + 4)
        .ok_or(PeError::Truncated)?
        .fill(0);
    Ok(())
}

/// The address of each added section, in order: from `end` up, page-aligned, no overlap.
pub fn section_vmas(end: u64, sizes: &[u64]) -> Vec<u64> {
    let up = |x: u64| x.div_ceil(PAGE) * PAGE;
    let mut at = up(end);
    sizes
        .iter()
        .map(|&len| {
            let vma = at;
            at = up(at + len.max(1));
            vma
        })
        .collect()
}

/// Builds the (unsigned) UKI at `out`, with scratch files in `work`, stamped with `epoch`.
pub fn assemble(
    stub: &Path,
    parts: &UkiParts<'_>,
    work: &Path,
    out: &Path,
    epoch: u64,
) -> Result<(), BuildError> {
    let stub_bytes = std::fs::read(stub).map_err(BuildError::io(format!(
        "reading {} (install systemd-boot-efi)",
        stub.display()
    )))?;
    let end = image_end(&stub_bytes)
        .map_err(|e| BuildError::Other(format!("{}: {e}", stub.display())))?;
    let sections: [(&str, &[u8]); 4] = [
        (".osrel", parts.osrel),
        (".cmdline", parts.cmdline.as_bytes()),
        (".linux", parts.linux),
        (".initrd", parts.initrd),
    ];
    let sizes: Vec<u64> = sections.iter().map(|(_, d)| d.len() as u64).collect();
    let vmas = section_vmas(end, &sizes);
    let mut cmd = Command::new("objcopy");
    for ((name, data), vma) in sections.iter().zip(vmas) {
        let f = work.join(format!("uki{name}"));
        std::fs::write(&f, data).map_err(BuildError::io(format!("writing {}", f.display())))?;
        cmd.arg("--add-section")
            .arg(format!("{name}={}", f.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
    }
    cmd.arg(stub).arg(out);
    run_tool(&mut cmd, "binutils")?;
    let mut pe =
        std::fs::read(out).map_err(BuildError::io(format!("reading {}", out.display())))?;
    set_timestamp(&mut pe, u32::try_from(epoch).unwrap_or(u32::MAX))
        .map_err(|e| BuildError::Other(format!("{}: {e}", out.display())))?;
    std::fs::write(out, pe).map_err(BuildError::io(format!("writing {}", out.display())))
}

/// The os-release text of a slot's UKI (`.osrel`): systemd-boot shows it, and it names the
/// image and version the UKI belongs to.
pub fn os_release(name: &str, version: &str) -> String {
    format!("ID=kiln\nNAME={name}\nPRETTY_NAME=\"{name} {version}\"\nVERSION_ID={version}\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_go_above_the_image_page_aligned_without_overlap() {
        assert_eq!(
            section_vmas(0x19300, &[100, 4096, 4097, 0, 10]),
            [0x1a000, 0x1b000, 0x1c000, 0x1e000, 0x1f000]
        );
    }

    #[test]
    fn the_image_end_comes_from_the_pe32_plus_header() {
        let mut pe = vec![0u8; 0x200];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        let opt = 0x80 + 24;
        pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        pe[opt + 24..opt + 28].copy_from_slice(&0x1000u32.to_le_bytes());
        pe[opt + 56..opt + 60].copy_from_slice(&0x19300u32.to_le_bytes());
        assert_eq!(image_end(&pe), Ok(0x1a300));
        pe[opt] = 0x0b;
        pe[opt + 1] = 0x01;
        assert_eq!(image_end(&pe), Err(PeError::NotPe32Plus));
        assert_eq!(image_end(b"MZ"), Err(PeError::Truncated));
        assert_eq!(image_end(b"ELF...."), Err(PeError::NotPe));
    }

    /// With Debian's stub (deps.sh installs it): the sections land where planned and the
    /// same inputs give the same bytes.
    #[test]
    fn a_uki_from_the_real_stub_holds_each_part_and_is_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let osrel = os_release("n", "1.0");
        let parts = UkiParts {
            osrel: osrel.as_bytes(),
            cmdline: "ro kiln.slot=a quiet",
            linux: &[7u8; 10_000],
            initrd: &[9u8; 5000],
        };
        let (a, b) = (d.path().join("a.efi"), d.path().join("b.efi"));
        assemble(Path::new(STUB), &parts, d.path(), &a, 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assemble(Path::new(STUB), &parts, d.path(), &b, 1_700_000_000).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert!(bytes == std::fs::read(&b).unwrap(), "not reproducible");
        let o = Command::new("objdump").arg("-h").arg(&a).output().unwrap();
        let table = String::from_utf8_lossy(&o.stdout);
        let stub_end = image_end(&std::fs::read(STUB).unwrap()).unwrap();
        let mut last = stub_end;
        for (name, len) in [
            (".osrel", parts.osrel.len()),
            (".cmdline", parts.cmdline.len()),
            (".linux", 10_000),
            (".initrd", 5000),
        ] {
            let line = table
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("no {name} in\n{table}"));
            let w: Vec<&str> = line.split_whitespace().collect();
            let size = u64::from_str_radix(w[2], 16).unwrap();
            let vma = u64::from_str_radix(w[3], 16).unwrap();
            assert!(size >= len as u64, "{line}");
            assert!(
                vma >= last && vma.is_multiple_of(PAGE),
                "{name} at {vma:#x} after {last:#x}"
            );
            last = vma + size;
        }
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("ro kiln.slot=a quiet") && text.contains("IMAGE_VERSION=1.0"));
        assert_eq!(
            section(&bytes, ".cmdline"),
            Some(&b"ro kiln.slot=a quiet"[..])
        );
        assert_eq!(section(&bytes, ".initrd"), Some(&[9u8; 5000][..]));
        assert_eq!(section(&bytes, ".nothere"), None);
        assert_eq!(section(b"MZ", ".cmdline"), None);
    }
}
