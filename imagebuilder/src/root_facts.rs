//! What the assembled root provides, found by looking into the staged tree (symlinks resolved
//! inside it), and the spec checks that depend on it: which init system runs (`[boot] init`,
//! `auto` = what `/sbin/init` resolves to), whether systemd-networkd is there, and that the
//! generated units do not collide with the root's own.

use crate::services::{all_services, InitSystem, RootFacts};
use crate::spec::{InitChoice, Spec};
use crate::SpecError;
use kiln_rootfs::tree;
use std::path::Path;

/// Where systemd looks for unit files (a declared service must not shadow one of them).
const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/local/lib/systemd/system",
];

/// Inspects the assembled tree at `root` for the spec read from `file`.
pub fn inspect(spec: &Spec, file: &str, root: &Path) -> Result<RootFacts, SpecError> {
    let err = |field: &str, message: String| SpecError {
        file: file.to_string(),
        field: field.to_string(),
        message,
    };
    if !tree::exists(root, "/sbin/init") {
        return Err(err("base", "the root has no /sbin/init".into()));
    }
    let init = match spec.boot.init {
        InitChoice::Busybox => InitSystem::Busybox,
        InitChoice::Systemd => InitSystem::Systemd,
        InitChoice::Auto => {
            let target = tree::resolve(root, "/sbin/init", true)
                .map_err(|e| err("base", format!("resolving /sbin/init: {e}")))?;
            // Anything but systemd gets the busybox inittab, as every root did before
            // `init` existed: a custom /sbin/init may read it or ignore it.
            if target.file_name().and_then(|n| n.to_str()) == Some("systemd") {
                InitSystem::Systemd
            } else {
                InitSystem::Busybox
            }
        }
    };
    let networkd = tree::first_existing(
        root,
        &[
            "/usr/lib/systemd/systemd-networkd",
            "/lib/systemd/systemd-networkd",
        ],
    )
    .is_some();
    if init == InitSystem::Systemd {
        check_systemd(spec, root, networkd, &err)?;
    }
    let hosts = tree::exists(root, "/etc/hosts");
    Ok(RootFacts {
        init,
        networkd,
        hosts,
    })
}

fn check_systemd(
    spec: &Spec,
    root: &Path,
    networkd: bool,
    err: &dyn Fn(&str, String) -> SpecError,
) -> Result<(), SpecError> {
    if !tree::exists(root, "/usr/bin/systemctl") && !tree::exists(root, "/bin/systemctl") {
        return Err(err(
            "boot.init",
            "systemd: the root has no systemctl".into(),
        ));
    }
    for (path, why) in [("/etc", "machine-id, hostname"), ("/var", "the journal")] {
        let persistent = spec.persist.overlay.iter().any(|p| p == path)
            || spec.persist.bind.iter().any(|p| p == path);
        if !persistent {
            return Err(err(
                "persist",
                format!("a systemd root needs {path} on persist (overlay or bind) for {why}"),
            ));
        }
    }
    for (i, s) in all_services(spec).iter().enumerate() {
        let unit = format!("{}.service", s.name);
        if let Some(dir) = UNIT_DIRS
            .iter()
            .find(|d| tree::exists(root, &format!("{d}/{unit}")))
        {
            let field = if i < spec.services.len() {
                format!("service[{i}].name")
            } else {
                "agent".into()
            };
            return Err(err(
                &field,
                format!(
                    "{:?}: the root already has {dir}/{unit}; choose another name",
                    s.name
                ),
            ));
        }
    }
    if !spec.network.dhcp.is_empty()
        && !networkd
        && tree::first_existing(
            root,
            &[
                "/sbin/udhcpc",
                "/usr/sbin/udhcpc",
                "/bin/udhcpc",
                "/usr/bin/udhcpc",
            ],
        )
        .is_none()
    {
        return Err(err(
            "network.dhcp",
            "the root has neither systemd-networkd nor busybox udhcpc".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn spec(extra: &str) -> Spec {
        Spec::parse(
            &format!("name = \"n\"\nversion = \"1\"\ncompatible = \"c\"\n[kernel]\ndir = \"k\"\n[base]\ndir = \"b\"\n{extra}"),
            "image.toml",
        )
        .unwrap()
    }

    fn systemd_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in [
            "usr/sbin",
            "usr/bin",
            "usr/lib/systemd/system",
            "etc/systemd/system",
        ] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        fs::write(r.join("usr/lib/systemd/systemd"), b"").unwrap();
        fs::write(r.join("usr/bin/systemctl"), b"").unwrap();
        fs::write(r.join("usr/lib/systemd/system/ssh.service"), b"").unwrap();
        symlink("usr/sbin", r.join("sbin")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("/lib/systemd/systemd", r.join("usr/sbin/init")).unwrap();
        d
    }

    #[test]
    fn auto_follows_sbin_init() {
        let d = systemd_root();
        let f = inspect(&spec(""), "image.toml", d.path()).unwrap();
        assert_eq!(f.init, InitSystem::Systemd);
        assert!(!f.networkd);
        fs::write(d.path().join("usr/lib/systemd/systemd-networkd"), b"").unwrap();
        assert!(inspect(&spec(""), "image.toml", d.path()).unwrap().networkd);

        let b = tempfile::tempdir().unwrap();
        fs::create_dir_all(b.path().join("bin")).unwrap();
        fs::create_dir_all(b.path().join("sbin")).unwrap();
        fs::write(b.path().join("bin/busybox"), b"").unwrap();
        symlink("/bin/busybox", b.path().join("sbin/init")).unwrap();
        assert_eq!(
            inspect(&spec(""), "image.toml", b.path()).unwrap().init,
            InitSystem::Busybox
        );
        // Forced: a busybox root declared systemd lacks systemctl.
        let e = inspect(
            &spec("[boot]\ninit = \"systemd\"\n"),
            "image.toml",
            b.path(),
        )
        .unwrap_err();
        assert_eq!(e.field, "boot.init");
        assert!(e.message.contains("no systemctl"), "{e}");
    }

    #[test]
    fn a_missing_init_is_named_and_other_inits_get_the_inittab() {
        let d = tempfile::tempdir().unwrap();
        let e = inspect(&spec(""), "image.toml", d.path()).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("base", "the root has no /sbin/init")
        );
        fs::create_dir_all(d.path().join("sbin")).unwrap();
        fs::write(d.path().join("sbin/custom-init"), b"#!/bin/sh\n").unwrap();
        symlink("custom-init", d.path().join("sbin/init")).unwrap();
        assert_eq!(
            inspect(&spec(""), "image.toml", d.path()).unwrap().init,
            InitSystem::Busybox
        );
    }

    #[test]
    fn systemd_roots_refuse_shadowed_units_and_volatile_etc() {
        let d = systemd_root();
        let e = inspect(
            &spec("[[service]]\nname = \"web\"\ncommand = \"x\"\n[[service]]\nname = \"ssh\"\ncommand = \"y\"\n"),
            "image.toml",
            d.path(),
        )
        .unwrap_err();
        assert_eq!(e.field, "service[1].name");
        assert!(
            e.message.contains("/usr/lib/systemd/system/ssh.service"),
            "{e}"
        );
        let e = inspect(
            &spec("[persist]\noverlay = []\nbind = [\"/var\"]\n"),
            "image.toml",
            d.path(),
        )
        .unwrap_err();
        assert_eq!(e.field, "persist");
        assert!(e.message.contains("/etc"), "{e}");
        let e = inspect(
            &spec("[network]\ndhcp = [\"eth0\"]\n"),
            "image.toml",
            d.path(),
        )
        .unwrap_err();
        assert_eq!(e.field, "network.dhcp");
    }
}
