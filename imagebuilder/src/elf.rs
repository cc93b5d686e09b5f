//! Just enough ELF to tell whether a device binary is statically linked.

/// True when `bytes` is a 64-bit little-endian ELF without a `PT_INTERP` program header.
pub fn is_static_elf64(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let phentsize = u16::from_le_bytes([bytes[0x36], bytes[0x37]]) as usize;
    let phnum = u16::from_le_bytes([bytes[0x38], bytes[0x39]]) as usize;
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        bytes
            .get(o..o + 4)
            .map(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) != PT_INTERP)
            .unwrap_or(false)
    })
}

/// [`is_static_elf64`] on a file, reading only its ELF header and program headers.
pub fn is_static_elf64_file(path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut head = vec![0u8; 64];
    let n = f.read_at(&mut head, 0)?;
    head.truncate(n);
    if n < 64 {
        return Ok(false);
    }
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().unwrap_or_default());
    let phentsize = u64::from(u16::from_le_bytes([head[0x36], head[0x37]]));
    let phnum = u64::from(u16::from_le_bytes([head[0x38], head[0x39]]));
    let end = phoff.saturating_add(phentsize * phnum).min(1 << 20);
    let mut all = vec![0u8; end.max(64) as usize];
    let n = f.read_at(&mut all, 0)?;
    all.truncate(n);
    Ok(is_static_elf64(&all))
}

/// The program interpreter (`PT_INTERP`) and the `DT_NEEDED` library names of a 64-bit
/// little-endian ELF; None when the headers are malformed.
pub fn interp_and_needed(b: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let cstr = |o: usize| {
        let rest = b.get(o..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        String::from_utf8(rest[..end].to_vec()).ok()
    };
    if b.get(..4)? != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    // (type, offset, vaddr, filesz) of every program header.
    let phdrs: Vec<(u32, u64, u64, u64)> = (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            Some((u32_at(o)?, u64_at(o + 8)?, u64_at(o + 16)?, u64_at(o + 32)?))
        })
        .collect::<Option<_>>()?;
    let interp = phdrs
        .iter()
        .find(|p| p.0 == 3)
        .and_then(|p| cstr(usize::try_from(p.1).ok()?));
    let Some(dynamic) = phdrs.iter().find(|p| p.0 == 2) else {
        return Some((interp, Vec::new()));
    };
    let (mut strtab, mut needed) = (None, Vec::new());
    let mut o = usize::try_from(dynamic.1).ok()?;
    loop {
        let (tag, val) = (u64_at(o)?, u64_at(o + 8)?);
        match tag {
            0 => break,
            1 => needed.push(val),
            5 => strtab = Some(val),
            _ => {}
        }
        o += 16;
    }
    // DT_STRTAB is an address: map it to a file offset through its PT_LOAD segment.
    let strtab = strtab?;
    let load = phdrs
        .iter()
        .find(|p| p.0 == 1 && strtab >= p.2 && strtab < p.2 + p.3)?;
    let base = strtab - load.2 + load.1;
    let names = needed
        .into_iter()
        .map(|n| cstr(usize::try_from(base + n).ok()?))
        .collect::<Option<Vec<_>>>()?;
    Some((interp, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_test_binary_is_not_static() {
        // The test binary itself is dynamically linked (no crt-static for host builds).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf64(&me));
        assert!(!is_static_elf64(b"#!/bin/sh\n"));
        assert!(!is_static_elf64_file(&std::env::current_exe().unwrap()).unwrap());
    }

    #[test]
    fn dynamic_binary_names_its_loader_and_libc() {
        let ls = std::fs::read("/bin/ls").unwrap();
        let (interp, needed) = interp_and_needed(&ls).unwrap();
        assert_eq!(interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(needed.iter().any(|n| n == "libc.so.6"), "{needed:?}");
        assert_eq!(interp_and_needed(b"#!/bin/sh\n"), None);
    }
}
