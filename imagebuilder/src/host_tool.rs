//! Host programs copied into the initramfs with the shared libraries they load (found with
//! `ldd`), at the same paths, so the program runs there as it does on the host.

use crate::error::BuildError;
use std::path::{Path, PathBuf};

/// A file for the initramfs: path inside it, content, mode.
pub type InitrdFile = (String, Vec<u8>, u32);

/// The library paths of `ldd` output (`name => /path (addr)` and `/path (addr)` lines), in
/// order; `linux-vdso` and unresolved names are skipped.
pub fn parse_ldd(out: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("missing library: {line}"));
        }
        let target = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The first of `candidates` that exists.
pub fn find(candidates: &[&str], package: &str) -> Result<PathBuf, BuildError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            BuildError::Other(format!(
                "{} not found on the build host (install {package})",
                candidates[0]
            ))
        })
}

/// `tool` at `dest` plus every library it loads, read from the host.
pub fn with_libs(tool: &Path, dest: &str) -> Result<Vec<InitrdFile>, BuildError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(BuildError::io(format!("reading {}", p.display())));
    let out = std::process::Command::new("ldd")
        .arg(tool)
        .output()
        .map_err(BuildError::io("running ldd"))?;
    let libs = parse_ldd(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| BuildError::Other(format!("{}: {e}", tool.display())))?;
    let mut files = vec![(dest.to_string(), read(tool)?, 0o755)];
    for lib in libs {
        files.push((lib.display().to_string(), read(&lib)?, 0o755));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn a_host_tool_comes_with_its_loader() {
        let files = with_libs(Path::new("/bin/ls"), "/sbin/ls").unwrap();
        assert_eq!(files[0].0, "/sbin/ls");
        assert!(files.iter().any(|f| f.0.contains("ld-linux")));
        assert!(files.iter().all(|f| !f.1.is_empty()));
    }
}
