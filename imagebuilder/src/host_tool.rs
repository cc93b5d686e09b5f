//! Host programs copied into the initramfs with the shared libraries they load (from the ELF
//! headers: `PT_INTERP` and `DT_NEEDED`, recursively, resolved in the standard library
//! directories), at the same paths, so the program runs there as it does on the host.

use crate::error::BuildError;
use std::path::{Path, PathBuf};

/// A file for the initramfs: path inside it, content, mode.
pub type InitrdFile = (String, Vec<u8>, u32);

/// Where the dynamic loader looks for libraries on Debian x86-64.
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/lib",
    "/usr/lib",
];

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

/// `tool` at `dest` plus its interpreter and every library it loads, read from the host.
pub fn with_libs(tool: &Path, dest: &str) -> Result<Vec<InitrdFile>, BuildError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(BuildError::io(format!("reading {}", p.display())));
    let bad = |p: &Path| BuildError::Other(format!("{}: not a readable x86-64 ELF", p.display()));
    let data = read(tool)?;
    let (interp, mut todo) = crate::elf::interp_and_needed(&data).ok_or_else(|| bad(tool))?;
    let mut files = vec![(dest.to_string(), data, 0o755)];
    let mut seen = std::collections::BTreeSet::new();
    if let Some(i) = interp {
        seen.insert(
            Path::new(&i)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
        );
        files.push((i.clone(), read(Path::new(&i))?, 0o755));
    }
    while let Some(name) = todo.pop() {
        if !seen.insert(Some(name.clone())) {
            continue;
        }
        let path = LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join(&name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                BuildError::Other(format!("{}: library {name} not found", tool.display()))
            })?;
        let lib = read(&path)?;
        let (_, more) = crate::elf::interp_and_needed(&lib).ok_or_else(|| bad(&path))?;
        todo.extend(more);
        files.push((path.display().to_string(), lib, 0o755));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_tool_comes_with_its_loader_and_libc() {
        let files = with_libs(Path::new("/bin/ls"), "/sbin/ls").unwrap();
        assert_eq!(files[0].0, "/sbin/ls");
        assert!(files.iter().any(|f| f.0 == "/lib64/ld-linux-x86-64.so.2"));
        assert!(files.iter().any(|f| f.0.ends_with("/libc.so.6")));
        // no library twice
        let mut names: Vec<_> = files.iter().map(|f| f.0.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), files.len());
    }

    #[test]
    fn a_script_is_refused_by_name() {
        let e = with_libs(Path::new("/usr/bin/ldd"), "/sbin/x").unwrap_err();
        assert!(e.to_string().contains("/usr/bin/ldd"), "{e}");
    }
}
