//! Flash progress on stderr (kiln-progress: a bar on a TTY, else a plain line every 5 s).

pub use kiln_progress::{Progress, Silent};
use std::time::Duration;

/// `kiln flash: write 45% (120.0/273.0 MiB)` lines, or a bar on a TTY.
pub fn reporter() -> kiln_progress::Reporter {
    kiln_progress::Reporter::new(
        "kiln flash",
        kiln_progress::Stream::Stderr,
        Duration::from_secs(5),
    )
}
