//! Install progress on stdout (kiln-progress: a bar on a TTY, else one plain line per second
//! and payload, `kiln-updater: root 45% (12.0/27.3 MiB)`).

use crate::install::Progress;
use std::time::Duration;

pub struct Reporter(kiln_progress::Reporter);

impl Reporter {
    pub fn new() -> Reporter {
        Reporter(kiln_progress::Reporter::new(
            "kiln-updater",
            kiln_progress::Stream::Stdout,
            Duration::from_secs(1),
        ))
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter::new()
    }
}

impl Progress for Reporter {
    fn update(&self, payload: &str, done: u64, total: u64) {
        self.0.report(payload, done, total.into());
    }
}
