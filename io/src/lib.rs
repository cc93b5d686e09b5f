//! Kiln's I/O helpers, each written once (coreos-installer's `src/io/` is the model): reading
//! with a size cap ([`read_capped`]), hashing what is copied ([`copy_hashed`], [`sha256_hex`])
//! and replacing a file so that a power cut leaves the old or the new content, never a torn
//! or empty file ([`write_durable`]).
//!
//! Used by the updater (bundle parts, HTTP bodies, its state file), the node agent's state, the
//! flasher's sidecar fetch, kiln-init's network boot and the builder.

mod capped;
mod durable;
mod hashing;

pub use capped::{read_capped, CappedError};
pub use durable::{write_durable, write_durable_then};
pub use hashing::{copy_hashed, sha256_hex, CopyError};
