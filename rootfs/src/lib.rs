//! Assembling a Kiln root tree and turning it into a read-only filesystem image.
//!
//! The tree is staged in a plain directory (no mounts, no loop devices): a base (rootfs tarball,
//! OCI image layout, or directory) is laid down first, then overlay directories, then baked
//! files. Every write goes through [`safe_path`], so nothing in a hostile archive can land
//! outside the staging root. [`mkfs`] then makes an erofs (default) or ext4 image of the tree,
//! and [`verity`] appends its dm-verity hash tree.

pub mod dircopy;
mod error;
pub mod mkfs;
pub mod oci;
pub mod oci_image;
pub mod safe_path;
pub mod tarball;
pub mod tree;
pub mod verity;

pub use error::RootfsError;
