//! Install progress on stdout (kiln-progress: a bar on a TTY, else one plain line per second
//! and payload, `kiln-updater: root 45% (12.0/27.3 MiB)`).

use std::time::Duration;

pub fn reporter() -> kiln_progress::Reporter {
    kiln_progress::Reporter::new(
        "kiln-updater",
        kiln_progress::Stream::Stdout,
        Duration::from_secs(1),
    )
}
