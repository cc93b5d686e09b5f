//! Progress of a long copy: a bar redrawn in place when the stream is a TTY, else a plain line
//! at most every `interval` per phase (so a log or a serial console is not flooded). A new
//! phase and the finishing update are always shown.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives progress: bytes of `phase` (a flash's `write`, an install's payload) done so far,
/// out of its total when known. The flasher, kiln-init's installer and the updater all report
/// through this one trait.
pub trait Progress: Sync {
    fn update(&self, phase: &str, done: u64, total: Option<u64>);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn update(&self, _: &str, _: u64, _: Option<u64>) {}
}

impl Progress for Reporter {
    fn update(&self, phase: &str, done: u64, total: Option<u64>) {
        self.report(phase, done, total);
    }
}

/// Where the progress goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// `root   [#########-----------]  45% 12.0/27.3 MiB` (bar) or
/// `PREFIX: root 45% (12.0/27.3 MiB)`; without a known total, `PREFIX: root 1.5 MiB`.
pub fn render(prefix: &str, phase: &str, done: u64, total: Option<u64>, bar: bool) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let Some(total) = total else {
        return format!("{prefix}: {phase} {:.1} MiB", mib(done));
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
            "{prefix}: {phase} {pct}% ({:.1}/{:.1} MiB)",
            mib(done),
            mib(total)
        )
    }
}

/// Decides which updates are shown: the first of a phase, the finishing one, and otherwise
/// one per `every`. Pure apart from the clock passed in.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<(Instant, String)>,
}

impl Throttle {
    pub fn due(&mut self, now: Instant, every: Duration, phase: &str, finished: bool) -> bool {
        let same_phase = self.last.as_ref().is_some_and(|(_, p)| p == phase);
        let recent = self
            .last
            .as_ref()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < every);
        if !finished && same_phase && recent {
            return false;
        }
        self.last = Some((now, phase.to_string()));
        true
    }
}

pub struct Reporter {
    prefix: &'static str,
    stream: Stream,
    tty: bool,
    plain_every: Duration,
    throttle: Mutex<Throttle>,
}

impl Reporter {
    /// Plain lines (not a TTY) at most every `plain_every`; a bar every 100 ms on a TTY.
    pub fn new(prefix: &'static str, stream: Stream, plain_every: Duration) -> Reporter {
        let tty = match stream {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        };
        Reporter {
            prefix,
            stream,
            tty,
            plain_every,
            throttle: Mutex::new(Throttle::default()),
        }
    }

    pub fn report(&self, phase: &str, done: u64, total: Option<u64>) {
        let finished = total.is_some_and(|t| done >= t);
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            self.plain_every
        };
        let mut throttle = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if !throttle.due(Instant::now(), every, phase, finished) {
            return;
        }
        let text = if self.tty {
            format!(
                "\r{}{}",
                render(self.prefix, phase, done, total, true),
                if finished { "\n" } else { "" }
            )
        } else {
            format!("{}\n", render(self.prefix, phase, done, total, false))
        };
        let _ = match self.stream {
            Stream::Stdout => write_all(&mut std::io::stdout().lock(), &text),
            Stream::Stderr => write_all(&mut std::io::stderr().lock(), &text),
        };
    }
}

fn write_all(w: &mut impl Write, text: &str) -> std::io::Result<()> {
    w.write_all(text.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bar_line_and_unknown_total() {
        assert_eq!(
            render("kiln flash", "write", 1 << 20, Some(4 << 20), false),
            "kiln flash: write 25% (1.0/4.0 MiB)"
        );
        assert_eq!(
            render("kiln-updater", "verify", 4 << 20, Some(4 << 20), true),
            "verify [####################] 100% 4.0/4.0 MiB"
        );
        assert_eq!(
            render("kiln flash", "write", 3 << 19, None, false),
            "kiln flash: write 1.5 MiB"
        );
        assert_eq!(
            render("kiln-updater", "kernel", 0, Some(0), false),
            "kiln-updater: kernel 100% (0.0/0.0 MiB)"
        );
    }

    #[test]
    fn throttles_per_phase_but_shows_new_phases_and_the_end() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert!(t.due(t0, s, "root", false));
        assert!(!t.due(t0 + ms(500), s, "root", false));
        assert!(t.due(t0 + ms(1000), s, "root", false));
        assert!(!t.due(t0 + ms(1100), s, "root", false));
        assert!(t.due(t0 + ms(1200), s, "root", true), "the end is shown");
        assert!(
            t.due(t0 + ms(1300), s, "kernel", false),
            "a new phase is shown"
        );
        assert!(!t.due(t0 + ms(1400), s, "kernel", false));
    }
}
