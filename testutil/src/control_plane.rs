//! `kiln-control-plane` (controlplane/, built by `scripts/control-plane-build.sh`) run on the
//! host on 127.0.0.1 with free ports: the same binary the control-plane image bakes.

use crate::kube::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The line the binary prints on stderr once `/readyz` answers and every component runs.
pub const READY_LINE: &str = "kiln-control-plane: ready";

/// The binary: `$KILN_CONTROL_PLANE`, else what `scripts/control-plane-build.sh` prints (it
/// compiles on a change to controlplane/, then answers from its cache).
pub fn binary() -> PathBuf {
    crate::built_by("KILN_CONTROL_PLANE", "scripts/control-plane-build.sh")
}

/// One running `kiln-control-plane run`, stopped by PID when dropped.
pub struct ControlPlane {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    etcd: (u16, u16),
    child: Option<Child>,
}

impl ControlPlane {
    /// Starts it with its data in `data` (made on first start) and its output in `log`.
    pub fn start(bin: &Path, data: &Path, log: &Path) -> ControlPlane {
        let mut cp = ControlPlane {
            bin: bin.to_path_buf(),
            data: data.to_path_buf(),
            port: free_port(),
            log: log.to_path_buf(),
            etcd: (free_port(), free_port()),
            child: None,
        };
        cp.spawn();
        cp
    }

    fn spawn(&mut self) {
        let f = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(&self.bin)
            .args(self.run_args())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("starting kiln-control-plane");
        self.child = Some(child);
    }

    /// The `run` arguments: loopback only, test-speed etcd.
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            format!("--data-dir={}", self.data.display()),
            format!("--secure-port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--etcd-client-port={}", self.etcd.0),
            format!("--etcd-peer-port={}", self.etcd.1),
            "--unsafe-no-fsync".into(),
        ]
    }

    /// Waits for [`READY_LINE`] in the log; panics with the log's tail if the process exits or
    /// `limit` passes first.
    pub fn wait_ready(&mut self, limit: Duration) {
        let t = Instant::now();
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.lines().any(|l| l == READY_LINE) {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "kiln-control-plane exited ({st}) before it was ready:\n{}",
                    tail(&log)
                );
            }
            assert!(
                t.elapsed() < limit,
                "kiln-control-plane not ready after {limit:?}:\n{}",
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit; SIGKILL (and a panic) after that.
    pub fn stop(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        crate::terminate(&mut child, limit).unwrap_or_else(|| {
            panic!("kiln-control-plane did not stop within {limit:?} of SIGTERM")
        })
    }

    /// Starts it again on the same data directory and ports, its log in `log`.
    pub fn restart(&mut self, log: &Path) {
        assert!(self.child.is_none(), "still running");
        self.log = log.to_path_buf();
        self.spawn();
    }

    /// The administrator's kubeconfig the control plane wrote.
    pub fn admin(&self) -> PathBuf {
        self.data.join("admin.kubeconfig")
    }

    /// `kiln-control-plane ARGS` (e.g. `ready`, `kubeconfig`) against this data directory.
    pub fn tool(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg(format!("--data-dir={}", self.data.display()))
            .stdin(Stdio::null())
            .output()
            .expect("running kiln-control-plane")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::terminate(&mut c, Duration::from_secs(30));
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
