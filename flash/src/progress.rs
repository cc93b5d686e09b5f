//! Flash progress on stderr (kiln-progress: a bar on a TTY, else a plain line every 5 s).

use std::time::Duration;

/// Receives `(phase, bytes done, total when known)`.
pub trait Progress {
    fn update(&self, phase: &str, done: u64, total: Option<u64>);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn update(&self, _: &str, _: u64, _: Option<u64>) {}
}

/// `kiln flash: write 45% (120.0/273.0 MiB)` lines, or a bar on a TTY.
pub struct Reporter(kiln_progress::Reporter);

impl Default for Reporter {
    fn default() -> Self {
        Reporter(kiln_progress::Reporter::new(
            "kiln flash",
            kiln_progress::Stream::Stderr,
            Duration::from_secs(5),
        ))
    }
}

impl Progress for Reporter {
    fn update(&self, phase: &str, done: u64, total: Option<u64>) {
        self.0.report(phase, done, total);
    }
}
