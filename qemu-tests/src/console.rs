//! A QEMU process with its serial console on a pipe.

use imagebuilder::qemu::VmConfig;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many console lines a failure report shows.
const TAIL_LINES: usize = 40;

/// A failed wait, with the console's last lines.
#[derive(Debug, thiserror::Error)]
#[error("{what}\n--- last {TAIL_LINES} console lines ---\n{tail}\n--- end of console ---")]
pub struct ConsoleError {
    pub what: String,
    pub tail: String,
}

#[derive(Default)]
struct Shared {
    text: String,
    closed: bool,
}

/// A running VM and its console transcript.
pub struct Console {
    child: Child,
    stdin: ChildStdin,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    /// Everything before this byte offset of the transcript has been consumed by waits.
    cursor: usize,
    seq: u32,
}

impl Console {
    /// Boots `disk` (creating its firmware variables file if needed).
    pub fn boot(disk: &Path) -> std::io::Result<Console> {
        Console::start(&VmConfig::for_disk(disk)?)
    }

    /// Starts the VM `cfg` describes (e.g. a network boot) with its serial console captured.
    pub fn start(cfg: &VmConfig) -> std::io::Result<Console> {
        let mut child = cfg
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let s2 = shared.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = stdout.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*s2;
                let mut g = lock.lock().expect("console lock");
                if n == 0 {
                    g.closed = true;
                    cv.notify_all();
                    return;
                }
                let chunk = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                g.text.push_str(&chunk);
                cv.notify_all();
            }
        });
        Ok(Console {
            child,
            stdin,
            shared,
            cursor: 0,
            seq: 0,
        })
    }

    /// The whole transcript so far.
    pub fn transcript(&self) -> String {
        self.shared.0.lock().expect("console lock").text.clone()
    }

    fn tail(&self) -> String {
        let t = self.transcript();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    fn fail(&self, what: String) -> ConsoleError {
        ConsoleError {
            what,
            tail: self.tail(),
        }
    }

    /// Waits until `pat` appears after the cursor; returns the text from the cursor through the
    /// end of the match and moves the cursor past it.
    pub fn expect(&mut self, pat: &str, timeout: Duration) -> Result<String, ConsoleError> {
        self.expect_any(&[pat], timeout)
    }

    /// Like [`Console::expect`], for whichever of `pats` appears first; the returned text ends
    /// with it.
    pub fn expect_any(&mut self, pats: &[&str], timeout: Duration) -> Result<String, ConsoleError> {
        let shown = match pats {
            [one] => format!("{one:?}"),
            many => format!("any of {many:?}"),
        };
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut g = lock.lock().expect("console lock");
        loop {
            let first = pats
                .iter()
                .filter_map(|p| g.text[self.cursor..].find(p).map(|i| (i, p.len())))
                .min();
            if let Some((i, len)) = first {
                let end = self.cursor + i + len;
                let out = g.text[self.cursor..end].to_string();
                self.cursor = end;
                return Ok(out);
            }
            if g.closed {
                drop(g);
                return Err(self.fail(format!("QEMU exited while waiting for {shown}")));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(g);
                return Err(self.fail(format!(
                    "timed out after {} s waiting for {shown}",
                    timeout.as_secs()
                )));
            }
            g = cv.wait_timeout(g, deadline - now).expect("console lock").0;
        }
    }

    /// Types a line on the console.
    pub fn send_line(&mut self, line: &str) -> Result<(), ConsoleError> {
        let r = self
            .stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.stdin.flush());
        r.map_err(|e| self.fail(format!("writing to the console: {e}")))
    }

    /// Runs a shell command on the serial root shell; returns its exit status and output.
    /// The output is framed by two tags that only the command's own `echo` can print (the
    /// typed line has them split by quotes), so line editing and echo cannot confuse it.
    /// Lines a console-logging service printed meanwhile ([`SERVICE_LINES`]: the node agent's,
    /// late under load) are not the command's and are left out (the transcript keeps them).
    pub fn sh(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String), ConsoleError> {
        self.seq += 1;
        let n = self.seq;
        self.send_line(&format!(
            "echo \"@@KI\"\"LN-S{n}\"; {cmd}; echo \"@@KI\"\"LN-E{n} rc=$?\""
        ))?;
        self.expect(&format!("@@KILN-S{n}\n"), timeout)?;
        let end = format!("@@KILN-E{n} rc=");
        let out = self.expect(&end, timeout)?;
        let rest = self.expect("\n", Duration::from_secs(5))?;
        let rc: i32 = rest
            .trim()
            .parse()
            .map_err(|_| self.fail(format!("bad status line {rest:?}")))?;
        Ok((rc, command_output(&out[..out.len() - end.len()])))
    }

    /// Like [`Console::sh`] but requires status 0.
    pub fn ok(&mut self, cmd: &str) -> Result<String, ConsoleError> {
        let (rc, out) = self.sh(cmd, Duration::from_secs(60))?;
        if rc != 0 {
            return Err(self.fail(format!("`{cmd}` exited with {rc}: {out}")));
        }
        Ok(out)
    }

    /// Waits for QEMU to exit (after a guest poweroff).
    pub fn wait_exit(mut self, timeout: Duration) -> Result<(), ConsoleError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let e = self.fail("QEMU did not exit after poweroff".into());
        let _ = self.child.kill();
        Err(e)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Prefixes of the lines services of the test images print on the console on their own (not
/// as any command's output).
pub const SERVICE_LINES: &[&str] = &["kiln-agent: "];

/// `raw` without the lines services printed meanwhile.
fn command_output(raw: &str) -> String {
    raw.split_inclusive('\n')
        .filter(|l| !SERVICE_LINES.iter().any(|p| l.starts_with(p)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_lines_are_not_command_output() {
        let raw = "live\nkiln-agent: node kiln-default, kubeconfig /etc/kiln/kubeconfig\nmore\n";
        assert_eq!(super::command_output(raw), "live\nmore\n");
        assert_eq!(
            super::command_output("a kiln-agent: b\n"),
            "a kiln-agent: b\n"
        );
    }
}
