//! Upstream kubectl (from `scripts/kube-build.sh`) with one kubeconfig, for tests that drive a
//! real API server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Upstream kubectl with one kubeconfig.
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// kubectl from `scripts/kube-build.sh` (or `$KILN_KUBE_BIN`) with `kubeconfig`.
    pub fn new(kubeconfig: &Path) -> Kubectl {
        Kubectl {
            bin: crate::kube::binaries().join("kubectl"),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// `kubectl ARGS`, with `stdin` on its standard input if given.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut c = Command::new(&self.bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=60s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(s) = stdin {
            c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        c.wait_with_output().unwrap()
    }

    /// `kubectl ARGS`; panics with kubectl's message when it fails.
    /// The names of the pods in `namespace`, space-separated.
    pub fn pod_names(&self, namespace: &str) -> String {
        self.must(&[
            "get",
            "pods",
            "-n",
            namespace,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
    }

    pub fn must(&self, args: &[&str]) -> String {
        let o = self.run(args, None);
        assert!(
            o.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `kubectl apply -f -` of `yaml` (or JSON).
    pub fn apply(&self, yaml: &str) {
        let o = self.run(&["apply", "-f", "-"], Some(yaml));
        assert!(
            o.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
