//! The persist layout of a Kiln image.
//!
//! The read-only root is made writable in a few places chosen by the image spec:
//! - `overlay` paths get an overlayfs whose upper and work directories live on persist,
//! - `bind` paths are bind-mounted from a directory on persist (seeded from the root on first boot),
//! - `tmpfs` paths get a fresh tmpfs on every boot.
//!
//! This crate only describes and plans; [`plan`] turns a layout into an ordered list of
//! [`MountOp`]s that `kiln-init` executes. It does no I/O, so it is unit-tested in full.

use serde::{Deserialize, Serialize};

/// Where the persist partition is mounted in the final root.
pub const PERSIST_MOUNT: &str = "/persist";
/// File on persist whose presence says the layout was fully created.
pub const LAYOUT_MARKER: &str = ".kiln-layout-v1";

/// The writable layout of a read-only root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Paths that get an overlay whose upper lives on persist (e.g. `/etc`).
    #[serde(default = "default_overlay")]
    pub overlay: Vec<String>,
    /// Paths bind-mounted from persist (e.g. `/var`).
    #[serde(default = "default_bind")]
    pub bind: Vec<String>,
    /// Paths that get a tmpfs on every boot (e.g. `/tmp`, `/run`).
    #[serde(default = "default_tmpfs")]
    pub tmpfs: Vec<String>,
}

fn default_overlay() -> Vec<String> {
    vec!["/etc".into()]
}
fn default_bind() -> Vec<String> {
    vec!["/var".into()]
}
fn default_tmpfs() -> Vec<String> {
    vec!["/tmp".into(), "/run".into()]
}

impl Default for Layout {
    /// The shipped default: KubeOS style, `/etc` overlay, `/var` bind, `/tmp` and `/run` tmpfs.
    fn default() -> Self {
        Layout {
            overlay: default_overlay(),
            bind: default_bind(),
            tmpfs: default_tmpfs(),
        }
    }
}

/// A layout that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("{field}: path {path:?} must be absolute, normalised, and not `/`")]
    BadPath { field: &'static str, path: String },
    #[error("{field}: path {path:?} is listed more than once in the persist layout")]
    Duplicate { field: &'static str, path: String },
    #[error("{field}: path {path:?} is reserved for the persist partition")]
    Reserved { field: &'static str, path: String },
}

/// One step of applying the layout, in order. Paths are absolute in the final root and are
/// prefixed with the sysroot by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Create this directory on persist (relative to the persist mount) if missing.
    PersistDir { path: String },
    /// Copy the root's content of `from` into the persist directory `to` (first boot only).
    Seed { from: String, to: String },
    /// overlayfs at `target` with lowerdir `target`, upper/work on persist.
    Overlay {
        target: String,
        upper: String,
        work: String,
    },
    /// Bind `source` (on persist) onto `target`.
    Bind { source: String, target: String },
    /// A fresh tmpfs on `target`.
    Tmpfs { target: String },
}

impl Layout {
    /// Checks every path; returns the first problem, naming the field.
    pub fn validate(&self) -> Result<(), LayoutError> {
        let mut seen = std::collections::BTreeSet::new();
        let groups: [(&'static str, &Vec<String>); 3] = [
            ("persist.overlay", &self.overlay),
            ("persist.bind", &self.bind),
            ("persist.tmpfs", &self.tmpfs),
        ];
        for (field, paths) in groups {
            for p in paths {
                if !is_clean_abs(p) {
                    return Err(LayoutError::BadPath {
                        field,
                        path: p.clone(),
                    });
                }
                if p == PERSIST_MOUNT || p.starts_with(&format!("{PERSIST_MOUNT}/")) {
                    return Err(LayoutError::Reserved {
                        field,
                        path: p.clone(),
                    });
                }
                if !seen.insert(p.clone()) {
                    return Err(LayoutError::Duplicate {
                        field,
                        path: p.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every directory the root image must contain as a mount point.
    pub fn mount_points(&self) -> impl Iterator<Item = &str> {
        std::iter::once(PERSIST_MOUNT).chain(
            self.overlay
                .iter()
                .chain(&self.bind)
                .chain(&self.tmpfs)
                .map(String::as_str),
        )
    }
}

/// `/a/b` style: absolute, no empty, `.` or `..` components, no trailing slash, not `/`.
fn is_clean_abs(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Directory on persist holding the overlay upper/work for `path`.
pub fn overlay_dir(path: &str) -> String {
    format!("overlay{path}")
}

/// Directory on persist that is bound onto `path`.
pub fn bind_dir(path: &str) -> String {
    format!("bind{path}")
}

/// Plans the mounts for a validated layout. `first_boot` adds the directory creation and seeding
/// steps (kiln-init passes true when [`LAYOUT_MARKER`] is missing). Paths in `PersistDir` and the
/// `to` of `Seed` are relative to the persist mount; all others are absolute in the final root,
/// with persist at [`PERSIST_MOUNT`].
pub fn plan(layout: &Layout, first_boot: bool) -> Vec<MountOp> {
    let mut ops = Vec::new();
    if first_boot {
        for p in &layout.overlay {
            let d = overlay_dir(p);
            ops.push(MountOp::PersistDir {
                path: format!("{d}/upper"),
            });
            ops.push(MountOp::PersistDir {
                path: format!("{d}/work"),
            });
        }
        for p in &layout.bind {
            ops.push(MountOp::PersistDir { path: bind_dir(p) });
            ops.push(MountOp::Seed {
                from: p.clone(),
                to: bind_dir(p),
            });
        }
    }
    // Shorter paths first so that a nested path is mounted on top of its parent.
    let mut mounts: Vec<(usize, MountOp)> = Vec::new();
    for p in &layout.overlay {
        let d = overlay_dir(p);
        mounts.push((
            depth(p),
            MountOp::Overlay {
                target: p.clone(),
                upper: format!("{PERSIST_MOUNT}/{d}/upper"),
                work: format!("{PERSIST_MOUNT}/{d}/work"),
            },
        ));
    }
    for p in &layout.bind {
        mounts.push((
            depth(p),
            MountOp::Bind {
                source: format!("{PERSIST_MOUNT}/{}", bind_dir(p)),
                target: p.clone(),
            },
        ));
    }
    for p in &layout.tmpfs {
        mounts.push((depth(p), MountOp::Tmpfs { target: p.clone() }));
    }
    mounts.sort_by_key(|(d, _)| *d);
    ops.extend(mounts.into_iter().map(|(_, op)| op));
    ops
}

fn depth(p: &str) -> usize {
    p.matches('/').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_is_valid_and_kubeos_style() {
        let l = Layout::default();
        l.validate().unwrap();
        let ops = plan(&l, false);
        assert_eq!(
            ops,
            vec![
                MountOp::Overlay {
                    target: "/etc".into(),
                    upper: "/persist/overlay/etc/upper".into(),
                    work: "/persist/overlay/etc/work".into()
                },
                MountOp::Bind {
                    source: "/persist/bind/var".into(),
                    target: "/var".into()
                },
                MountOp::Tmpfs {
                    target: "/tmp".into()
                },
                MountOp::Tmpfs {
                    target: "/run".into()
                },
            ]
        );
    }

    #[test]
    fn first_boot_creates_and_seeds_before_mounting() {
        let ops = plan(&Layout::default(), true);
        assert_eq!(
            ops[..4],
            [
                MountOp::PersistDir {
                    path: "overlay/etc/upper".into()
                },
                MountOp::PersistDir {
                    path: "overlay/etc/work".into()
                },
                MountOp::PersistDir {
                    path: "bind/var".into()
                },
                MountOp::Seed {
                    from: "/var".into(),
                    to: "bind/var".into()
                },
            ]
        );
        assert_eq!(ops.len(), 8);
    }

    #[test]
    fn nested_paths_mount_after_parents() {
        let l = Layout {
            overlay: vec!["/etc/kubernetes".into(), "/etc".into()],
            bind: vec![],
            tmpfs: vec![],
        };
        let targets: Vec<_> = plan(&l, false)
            .into_iter()
            .map(|op| match op {
                MountOp::Overlay { target, .. } => target,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(targets, ["/etc", "/etc/kubernetes"]);
    }

    #[test]
    fn bad_paths_are_refused_with_their_field() {
        let cases = [
            ("etc", "persist.overlay"),
            ("/", "persist.overlay"),
            ("/etc/../x", "persist.overlay"),
            ("/etc/", "persist.overlay"),
        ];
        for (p, field) in cases {
            let l = Layout {
                overlay: vec![p.into()],
                bind: vec![],
                tmpfs: vec![],
            };
            let e = l.validate().unwrap_err();
            assert_eq!(
                e,
                LayoutError::BadPath {
                    field,
                    path: p.into()
                }
            );
        }
        let dup = Layout {
            overlay: vec!["/etc".into()],
            bind: vec!["/etc".into()],
            tmpfs: vec![],
        };
        assert!(matches!(
            dup.validate(),
            Err(LayoutError::Duplicate {
                field: "persist.bind",
                ..
            })
        ));
        let reserved = Layout {
            overlay: vec![],
            bind: vec!["/persist/x".into()],
            tmpfs: vec![],
        };
        assert!(matches!(
            reserved.validate(),
            Err(LayoutError::Reserved { .. })
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<Layout>(r#"{"overlay":["/etc"],"bnd":["/var"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bnd"), "{e}");
    }
}
