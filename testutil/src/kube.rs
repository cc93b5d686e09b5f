//! A real Kubernetes control plane for tests: upstream etcd, kube-apiserver and
//! kube-controller-manager (only its disruption controller, which computes what a
//! PodDisruptionBudget allows), built by `scripts/kube-build.sh` and started here on 127.0.0.1.
//!
//! The harness makes its own CA; the API server's serving certificate is valid for 127.0.0.1 and
//! for 10.0.2.2 (the host as a QEMU guest on user-mode networking sees it). Clients get
//! kubeconfigs with client certificates ([`Cluster::kubeconfig`]: user = CN, groups = O) or a
//! ServiceAccount token ([`Cluster::service_account_kubeconfig`]). etcd keeps its data in the
//! cluster's temporary directory, so [`Cluster::restart`] brings the same cluster back. Every
//! process is stopped by its PID (SIGTERM, then SIGKILL) when the cluster is dropped.

use crate::kubectl::Kubectl;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The host as a QEMU guest with user-mode networking reaches it.
pub const GUEST_HOST_ALIAS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// How long the control plane may take to answer `/readyz` after a start.
const READY: Duration = Duration::from_secs(180);

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory holding `kube-apiserver`, `kube-controller-manager`, `kubectl` and `etcd`:
/// `$KILN_KUBE_BIN`, else what `scripts/kube-build.sh` prints (it compiles them on the first
/// run on a machine, then answers from its cache).
pub fn binaries() -> PathBuf {
    crate::built_by("KILN_KUBE_BIN", "scripts/kube-build.sh")
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range (32768-60999 by default),
/// so no outgoing connection takes it between this check and the bind of the process it is
/// for (a port from bind(0) can be; that is what a parallel test's clients do).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32);
    loop {
        // splitmix64 of the seed and a counter: spread over the range, different per process.
        let mut z = seed.wrapping_add(
            NEXT.fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let port = 20_000 + (z % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    if let Some(o) = org {
        d.push(DnType::OrganizationName, o);
    }
    d
}

/// A certificate authority that signs the serving and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(name, None);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// (certificate PEM, key PEM) for a client: user `cn`, group `org`.
    pub fn client(&self, cn: &str, org: Option<&str>) -> (String, String) {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn, org);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    /// (certificate PEM, key PEM) for a server at `ips` and `names`.
    pub fn server(&self, cn: &str, ips: &[IpAddr], names: &[&str]) -> (String, String) {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn, None);
        p.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for n in names {
            p.subject_alt_names
                .push(SanType::DnsName((*n).try_into().unwrap()));
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A running process of the control plane, stopped by PID.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name, child }
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL.
    fn stop(&mut self) {
        if crate::terminate(&mut self.child, Duration::from_secs(10)).is_none() {
            eprintln!("{} did not stop on SIGTERM; killed it", self.name);
        }
    }
}

/// etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub ca: Ca,
    pub port: u16,
    etcd_port: u16,
    peer_port: u16,
    procs: Vec<Proc>,
    /// Restarts so far (log files are numbered by them).
    starts: u32,
}

impl Cluster {
    /// Starts the control plane and waits until `/readyz` answers ok.
    pub fn start() -> Cluster {
        let bin = binaries();
        let dir = tempfile::Builder::new()
            .prefix("kiln-kube-")
            .tempdir()
            .unwrap();
        let ca = Ca::new("kiln-test-ca");
        let d = dir.path();
        std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
        let (cert, key) = ca.server(
            "kube-apiserver",
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(GUEST_HOST_ALIAS),
                // The first address of the service range (kubernetes.default).
                IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
            ],
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
        );
        std::fs::write(d.join("apiserver.pem"), cert).unwrap();
        std::fs::write(d.join("apiserver-key.pem"), key).unwrap();
        // ServiceAccount tokens (the operator's credentials) are signed with this key.
        let sa = KeyPair::generate().unwrap();
        std::fs::write(d.join("sa-key.pem"), sa.serialize_pem()).unwrap();
        std::fs::write(d.join("sa.pem"), sa.public_key_pem()).unwrap();
        let mut c = Cluster {
            port: 0,
            etcd_port: 0,
            peer_port: 0,
            dir,
            bin,
            ca,
            procs: vec![],
            starts: 0,
        };
        // Fresh ports until they bind (another process may take one between the check and
        // the bind).
        for attempt in 1.. {
            (c.port, c.etcd_port, c.peer_port) = (free_port(), free_port(), free_port());
            let admin = c.kubeconfig("kiln-test-admin", Some("system:masters"));
            std::fs::rename(admin, c.dir.path().join("admin.kubeconfig")).unwrap();
            let kcm = c.kubeconfig("system:kube-controller-manager", Some("system:masters"));
            std::fs::rename(kcm, c.dir.path().join("kcm.kubeconfig")).unwrap();
            match c.try_up() {
                Ok(()) => break,
                Err(e) if e.contains("address already in use") && attempt < 5 => {
                    eprintln!("kube: {e}; again on other ports");
                    c.down();
                    let _ = std::fs::remove_dir_all(c.dir.path().join("etcd"));
                }
                Err(e) => panic!("{e}"),
            }
        }
        c
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The administrator's kubeconfig (group `system:masters`).
    pub fn admin(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.{}.log", self.starts))
    }

    fn up(&mut self) {
        if let Err(e) = self.try_up() {
            panic!("{e}");
        }
    }

    fn try_up(&mut self) -> Result<(), String> {
        let t = Instant::now();
        let d = self.dir.path().to_path_buf();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let etcd = Proc::spawn(
            "etcd",
            Command::new(self.bin.join("etcd"))
                .arg("--name=default")
                .arg(format!("--data-dir={}", d.join("etcd").display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=default={peer}"))
                .arg("--log-level=warn")
                // Test data only: no fsync per write (a power cut is not what these tests cut).
                .arg("--unsafe-no-fsync"),
            &self.log("etcd"),
        );
        self.procs.push(etcd);
        let p = |f: &str| d.join(f).display().to_string();
        let apiserver = Proc::spawn(
            "kube-apiserver",
            Command::new(self.bin.join("kube-apiserver"))
                .arg(format!("--etcd-servers={client}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                // The kubernetes Service cannot point at a loopback address; nothing here
                // uses it.
                .arg("--endpoint-reconciler-type=none")
                .arg(format!("--secure-port={}", self.port))
                .arg(format!("--tls-cert-file={}", p("apiserver.pem")))
                .arg(format!("--tls-private-key-file={}", p("apiserver-key.pem")))
                .arg(format!("--client-ca-file={}", p("ca.pem")))
                .arg("--authorization-mode=RBAC")
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!("--service-account-key-file={}", p("sa.pem")))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    p("sa-key.pem")
                ))
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                // No controller creates the `default` ServiceAccounts: pods need none here.
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg(format!("--cert-dir={}", p("apiserver-certs")))
                .arg("--profiling=false"),
            &self.log("kube-apiserver"),
        );
        self.procs.push(apiserver);
        self.wait_ready(t)?;
        let kcm = Proc::spawn(
            "kube-controller-manager",
            Command::new(self.bin.join("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", p("kcm.kubeconfig")))
                .arg("--controllers=disruption")
                .arg("--leader-elect=false")
                .arg("--secure-port=0")
                .arg("--profiling=false"),
            &self.log("kube-controller-manager"),
        );
        self.procs.push(kcm);
        eprintln!(
            "kube: control plane on {} ready in {} ms (logs in {})",
            self.server(),
            t.elapsed().as_millis(),
            d.display()
        );
        self.starts += 1;
        Ok(())
    }

    fn wait_ready(&mut self, since: Instant) -> Result<(), String> {
        loop {
            let o = self.kubectl_as(&self.admin(), &["get", "--raw=/readyz"]);
            if o.status.success() {
                return Ok(());
            }
            let starts = self.starts;
            let dir = self.dir.path().to_path_buf();
            for p in &mut self.procs {
                if let Ok(Some(st)) = p.child.try_wait() {
                    let log = std::fs::read_to_string(dir.join(format!("{}.{starts}.log", p.name)))
                        .unwrap_or_default();
                    let last = log.lines().last().unwrap_or("").to_string();
                    return Err(format!(
                        "{} exited ({st}) before the API server was ready ({last}); see {}",
                        p.name,
                        dir.display()
                    ));
                }
            }
            assert!(
                since.elapsed() < READY,
                "the API server was not ready in {} s: {}",
                READY.as_secs(),
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn down(&mut self) {
        // Reverse order: the controller manager, the API server, then etcd.
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
    }

    /// Stops every process (etcd last) and starts them again on the same ports and data.
    pub fn restart(&mut self) {
        self.down();
        self.up();
    }

    /// Stops the control plane; [`Cluster::start_again`] brings it back.
    pub fn stop(&mut self) {
        self.down();
    }

    pub fn start_again(&mut self) {
        assert!(self.procs.is_empty(), "the control plane is running");
        self.up();
    }

    /// A kubeconfig with a client certificate for `user` (in group `group`), reaching the
    /// API server at 127.0.0.1.
    pub fn kubeconfig(&self, user: &str, group: Option<&str>) -> PathBuf {
        self.kubeconfig_at(user, group, &self.server())
    }

    /// The same, for a client that reaches the API server at `server` (e.g.
    /// `https://10.0.2.2:PORT` from a QEMU guest).
    pub fn kubeconfig_at(&self, user: &str, group: Option<&str>, server: &str) -> PathBuf {
        let (cert, key) = self.ca.client(user, group);
        let body = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kiln-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: kiln-test\n  context: {{cluster: kiln-test, user: {user}}}\ncurrent-context: kiln-test\n",
            b64(&self.ca.pem),
            b64(&cert),
            b64(&key)
        );
        let safe: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.dir.path().join(format!("{safe}.kubeconfig"));
        write_private(&path, &body);
        path
    }

    /// A kubeconfig holding a token of the ServiceAccount `namespace/name` (TokenRequest, 2 h):
    /// the credentials a Deployment running as that account gets.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let o = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=2h"]);
        assert!(
            o.status.success(),
            "kubectl create token {namespace}/{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let token = String::from_utf8(o.stdout).unwrap();
        let body = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kiln-test\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {name}\n  user:\n    token: {}\ncontexts:\n- name: kiln-test\n  context: {{cluster: kiln-test, user: {name}, namespace: {namespace}}}\ncurrent-context: kiln-test\n",
            self.server(),
            b64(&self.ca.pem),
            token.trim()
        );
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        write_private(&path, &body);
        path
    }

    /// kubectl as the administrator.
    pub fn admin_kubectl(&self) -> Kubectl {
        self.kubectl_with(&self.admin())
    }

    /// kubectl with `kubeconfig`.
    pub fn kubectl_with(&self, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            bin: self.bin.join("kubectl"),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// `kubectl ARGS` as the administrator.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.admin_kubectl().run(args, None)
    }

    /// `kubectl ARGS` with `kubeconfig`.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_with(kubeconfig).run(args, None)
    }

    /// `kubectl ARGS` as the administrator with `stdin` on its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.admin_kubectl().run(args, Some(stdin))
    }

    /// `kubectl ARGS` as the administrator; panics with kubectl's message when it fails.
    pub fn must(&self, args: &[&str]) -> String {
        self.admin_kubectl().must(args)
    }

    /// `kubectl apply -f -` of `yaml` as the administrator.
    pub fn apply(&self, yaml: &str) {
        self.admin_kubectl().apply(yaml)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.down();
        if std::thread::panicking() {
            // Keep the logs of a failed test.
            let kept = self.dir.path().with_extension("failed");
            let _ = std::fs::remove_dir_all(&kept);
            if std::fs::rename(self.dir.path(), &kept).is_ok() {
                eprintln!("kube: logs kept in {}", kept.display());
            }
        }
    }
}

/// Writes a credential file readable by its owner only (kiln-agent refuses any other).
fn write_private(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
