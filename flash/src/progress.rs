//! Flash progress on stderr: a bar redrawn in place on a TTY, else a plain line every few
//! seconds (logs, serial consoles).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives `(phase, bytes done, total when known)`.
pub trait Progress {
    fn update(&self, phase: &str, done: u64, total: Option<u64>);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn update(&self, _: &str, _: u64, _: Option<u64>) {}
}

/// `write  [#########-----------]  45% 120.0/273.0 MiB` or `kiln flash: write 45% (…)`.
pub fn render(phase: &str, done: u64, total: Option<u64>, bar: bool) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let Some(total) = total else {
        return format!("kiln flash: {phase} {:.1} MiB", mib(done));
    };
    let pct = (done.min(total) * 100).checked_div(total).unwrap_or(100);
    if bar {
        let filled = (pct / 5) as usize;
        format!(
            "{phase:6} [{}{}] {pct:3}% {:.1}/{:.1} MiB",
            "#".repeat(filled),
            "-".repeat(20 - filled),
            mib(done),
            mib(total)
        )
    } else {
        format!(
            "kiln flash: {phase} {pct}% ({:.1}/{:.1} MiB)",
            mib(done),
            mib(total)
        )
    }
}

pub struct Reporter {
    tty: bool,
    last: Mutex<Option<(Instant, String)>>,
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter {
            tty: std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }
}

impl Progress for Reporter {
    fn update(&self, phase: &str, done: u64, total: Option<u64>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        let finished = total.is_some_and(|t| done >= t);
        let same_phase = last.as_ref().is_some_and(|(_, p)| p == phase);
        if !finished && same_phase && last.as_ref().is_some_and(|(t, _)| t.elapsed() < every) {
            return;
        }
        *last = Some((Instant::now(), phase.to_string()));
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{}", render(phase, done, total, true));
            if finished {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{}", render(phase, done, total, false));
        }
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        assert_eq!(
            render("write", 1 << 20, Some(4 << 20), false),
            "kiln flash: write 25% (1.0/4.0 MiB)"
        );
        assert_eq!(
            render("verify", 4 << 20, Some(4 << 20), true),
            "verify [####################] 100% 4.0/4.0 MiB"
        );
        assert_eq!(
            render("write", 3 << 19, None, false),
            "kiln flash: write 1.5 MiB"
        );
    }
}
