//! Kernel-module closure from `modules.dep`.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModulesError {
    #[error("modules.dep line {line}: expected `path: deps…`")]
    Syntax { line: usize },
    #[error("kernel module {0:?} is not in modules.dep (is it built in, or misspelt?)")]
    Unknown(String),
}

/// Parsed `modules.dep`: module path (relative to `lib/modules/<ver>`) → its dependencies' paths.
#[derive(Debug, Default)]
pub struct ModulesDep {
    deps: BTreeMap<String, Vec<String>>,
    by_name: BTreeMap<String, String>,
}

/// `kernel/fs/erofs/erofs.ko` → `erofs`; dashes and underscores are the same to the kernel.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModulesDep {
    pub fn parse(text: &str) -> Result<Self, ModulesError> {
        let mut m = ModulesDep::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (path, deps) = line
                .split_once(':')
                .ok_or(ModulesError::Syntax { line: i + 1 })?;
            let deps: Vec<String> = deps.split_whitespace().map(str::to_string).collect();
            m.by_name.insert(module_name(path), path.to_string());
            m.deps.insert(path.to_string(), deps);
        }
        Ok(m)
    }

    /// Paths of the named modules and everything they depend on, each dependency before its
    /// users, each module once. Names may use `-` or `_`.
    pub fn closure(&self, names: &[String]) -> Result<Vec<String>, ModulesError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in names {
            let path = self
                .by_name
                .get(&name.replace('-', "_"))
                .ok_or_else(|| ModulesError::Unknown(name.clone()))?;
            self.visit(path, &mut done, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, path: &str, done: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !done.insert(path.to_string()) {
            return;
        }
        for d in self.deps.get(path).into_iter().flatten() {
            self.visit(d, done, order);
        }
        order.push(path.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/virtio/virtio.ko:\n\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
kernel/fs/erofs/erofs.ko:\n";

    #[test]
    fn closure_puts_dependencies_first_once() {
        let m = ModulesDep::parse(DEP).unwrap();
        let order = m
            .closure(&["virtio_pci".into(), "virtio-blk".into()])
            .unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn unknown_module_is_named() {
        let m = ModulesDep::parse(DEP).unwrap();
        assert_eq!(
            m.closure(&["ext9".into()]),
            Err(ModulesError::Unknown("ext9".into()))
        );
        assert_eq!(
            ModulesDep::parse("garbage").unwrap_err(),
            ModulesError::Syntax { line: 1 }
        );
    }
}
