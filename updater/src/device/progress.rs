//! Install progress: a bar redrawn in place on a TTY, else one plain line per second so a log
//! (or a serial console) is not flooded.

use crate::install::Progress;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Reporter {
    tty: bool,
    last: Mutex<Option<Instant>>,
}

impl Reporter {
    pub fn new() -> Reporter {
        Reporter {
            tty: std::io::stdout().is_terminal(),
            last: Mutex::new(None),
        }
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter::new()
    }
}

/// `root [#########-----------]  45% 12.0/27.3 MiB` (bar) or `root 45% (12.0/27.3 MiB)`.
pub fn render(payload: &str, done: u64, total: u64, bar: bool) -> String {
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if bar {
        let filled = (pct / 5) as usize;
        format!(
            "{payload:6} [{}{}] {pct:3}% {:.1}/{:.1} MiB",
            "#".repeat(filled),
            "-".repeat(20 - filled),
            mib(done),
            mib(total)
        )
    } else {
        format!(
            "kiln-updater: {payload} {pct}% ({:.1}/{:.1} MiB)",
            mib(done),
            mib(total)
        )
    }
}

impl Progress for Reporter {
    fn update(&self, payload: &str, done: u64, total: u64) {
        let mut last = self.last.lock().expect("progress lock");
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let finished = done >= total;
        if !finished && last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        *last = Some(Instant::now());
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r{}", render(payload, done, total, true));
            if finished {
                let _ = writeln!(out);
            }
        } else {
            let _ = writeln!(out, "{}", render(payload, done, total, false));
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bar_and_line() {
        assert_eq!(
            render("root", 1 << 20, 4 << 20, false),
            "kiln-updater: root 25% (1.0/4.0 MiB)"
        );
        assert_eq!(
            render("kernel", 2, 2, true),
            "kernel [####################] 100% 0.0/0.0 MiB"
        );
    }
}
