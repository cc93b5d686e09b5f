//! The agent's console lines, `kiln-agent: MESSAGE` (warnings `kiln-agent: warning: MESSAGE`).
//!
//! Each line goes out in one `write(2)`: the console is shared with kiln-svc, the readiness
//! script and the kernel, and an unbuffered `eprintln!` writes each formatted piece on its own,
//! so another writer's line could land in the middle of one of ours (seen in CI: `kiln-ready`
//! inside "attempt 1 failed"). tracing-subscriber's fmt layer formats an event into one buffer
//! and hands it to the writer whole; this formatter only sets the line's shape.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The agent's line format (see the module docs).
pub struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        w.write_str("kiln-agent: ")?;
        match *event.metadata().level() {
            Level::ERROR => w.write_str("error: ")?,
            Level::WARN => w.write_str("warning: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Installs the console subscriber on stderr. `RUST_LOG` overrides the default filter, which
/// shows the agent's own lines and other crates' warnings.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kiln_agent=info,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Line)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Records each `write` call separately, to count how many a line takes.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_line_is_one_write_with_the_agent_prefix() {
        let writes = Writes::default();
        let w = writes.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .event_format(Line)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let (server, attempt) = ("https://10.0.2.2:6443/", 3);
            tracing::info!("API server {server} not usable; attempt {attempt} failed, next in 4 s");
            tracing::warn!("heartbeat: {}", "timed out");
        });
        let got: Vec<String> = writes
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|b| String::from_utf8(b.clone()).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "kiln-agent: API server https://10.0.2.2:6443/ not usable; attempt 3 failed, next in 4 s\n",
                "kiln-agent: warning: heartbeat: timed out\n",
            ]
        );
    }
}
