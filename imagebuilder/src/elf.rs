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
}
