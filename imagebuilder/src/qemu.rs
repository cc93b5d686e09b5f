//! Booting a disk in QEMU: OVMF firmware with a per-disk copy of its variables (so EFI
//! variables and boot counters persist between runs), virtio disk and user-mode network,
//! serial console on stdio. KVM only when a real probe boots a guest with it.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Per-disk firmware variables: `<disk>.vars`.
pub fn vars_path(disk: &Path) -> PathBuf {
    let mut s = disk.as_os_str().to_owned();
    s.push(".vars");
    PathBuf::from(s)
}

/// Creates the per-disk vars file from the pristine template if missing.
pub fn ensure_vars(disk: &Path) -> io::Result<PathBuf> {
    let vars = vars_path(disk);
    if !vars.exists() {
        let template = std::env::var_os("KILN_OVMF_VARS")
            .map(PathBuf::from)
            .unwrap_or(OVMF_VARS.into());
        let tmp = vars.with_extension("vars.tmp");
        std::fs::copy(&template, &tmp).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("copying {} (install ovmf): {e}", template.display()),
            )
        })?;
        std::fs::rename(&tmp, &vars)?;
    }
    Ok(vars)
}

/// Accelerator QEMU is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// A 512-byte boot sector that runs a few x87 instructions (the first thing OVMF does that a
/// broken nested KVM fails to emulate here), then writes 0x2a to the isa-debug-exit port: QEMU
/// then exits with status (0x2a << 1) | 1 = 85. If that happens under `-accel kvm`, KVM really
/// runs guests; a broken KVM stops the guest with an emulation failure and the probe times out.
fn probe_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    // wait; fninit ; fld1 ; fstp st0 ; mov al, 0x2a ; out 0xf4, al ; hlt ; jmp $
    let code = [
        0x9b, 0xdb, 0xe3, 0xd9, 0xe8, 0xdd, 0xd8, 0xb0, 0x2a, 0xe6, 0xf4, 0xf4, 0xeb, 0xfe,
    ];
    s[..code.len()].copy_from_slice(&code);
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// Boots the probe sector with `accel` and reports whether it reached the exit port in time.
pub fn probe(accel: Accel, timeout: Duration) -> bool {
    probe_machine(accel, false, timeout)
}

/// [`probe`] on a machine with System Management Mode (`smm=on`) when `smm`.
pub fn probe_machine(accel: Accel, smm: bool, timeout: Duration) -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let img = dir.path().join("probe.img");
    if std::fs::write(&img, probe_sector()).is_err() {
        return false;
    }
    let accel_arg = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            if smm { "pc,smm=on" } else { "pc" },
            "-accel",
            accel_arg,
            "-m",
            "32",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", img.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code() == Some(85),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// KVM if a guest really runs with it (probed once per process), else TCG.
/// `KILN_ACCEL=tcg|kvm` overrides the probe.
pub fn accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| match std::env::var("KILN_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        Ok("kvm") => Accel::Kvm,
        _ => {
            if Path::new("/dev/kvm").exists() && probe(Accel::Kvm, Duration::from_secs(3)) {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    })
}

/// The accelerator of a Secure Boot VM: OVMF's Secure Boot build needs System Management
/// Mode, which KVM may not offer (nested, it often says "System Management Mode not supported
/// by this hypervisor"): KVM only when a probe with SMM runs, else TCG.
pub fn accel_smm() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        if std::env::var("KILN_ACCEL").is_ok() {
            return accel();
        }
        if accel() == Accel::Kvm && probe_machine(Accel::Kvm, true, Duration::from_secs(3)) {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    })
}

/// Per-disk firmware variables with Secure Boot keys enrolled: `<disk>.sb.vars`.
pub fn secure_vars_path(disk: &Path) -> PathBuf {
    let mut s = disk.as_os_str().to_owned();
    s.push(".sb.vars");
    PathBuf::from(s)
}

/// Firmware of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF with this (per-disk) variables file.
    Uefi { vars: PathBuf },
    /// OVMF's Secure Boot build (with SMM) and a variables file with keys enrolled and
    /// Secure Boot on.
    SecureBoot { vars: PathBuf },
    /// SeaBIOS (QEMU's default), for network boots through iPXE's legacy PXE ROM.
    Bios,
}

/// A TCP port of the guest reachable from the host: slirp's `hostfwd`, always bound to the
/// host's 127.0.0.1 (never another address: nothing off the machine reaches a test VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

/// Why a `--forward` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("--forward {0:?}: expected HOST:GUEST, two TCP ports (e.g. 6443:6443)")]
    Shape(String),
    #[error("--forward {value:?}: {port:?} is not a TCP port (1-65535)")]
    Port { value: String, port: String },
}

impl std::str::FromStr for Forward {
    type Err = ForwardError;
    fn from_str(s: &str) -> Result<Forward, ForwardError> {
        let (h, g) = s
            .split_once(':')
            .ok_or_else(|| ForwardError::Shape(s.into()))?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ForwardError::Port {
                value: s.into(),
                port: p.into(),
            }),
        };
        Ok(Forward {
            host: port(h)?,
            guest: port(g)?,
        })
    }
}

impl Forward {
    /// The `-netdev user` option for this forward.
    fn netdev_option(self) -> String {
        format!("hostfwd=tcp:127.0.0.1:{}-:{}", self.host, self.guest)
    }
}

/// How to start a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The disk, if any (a network boot may have none).
    pub disk: Option<PathBuf>,
    pub firmware: Firmware,
    /// Network boot: slirp's TFTP serves this directory and `boot.ipxe` is the boot file;
    /// the NIC is the first boot device.
    pub pxe_dir: Option<PathBuf>,
    pub memory_mb: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// `-serial` argument: `mon:stdio` interactively, `stdio` for tests.
    pub serial: String,
    /// Guest TCP ports reachable on the host's 127.0.0.1.
    pub forwards: Vec<Forward>,
}

impl VmConfig {
    /// Defaults for `disk`: its own vars file, 1 GiB, one CPU, probed accelerator.
    pub fn for_disk(disk: &Path) -> io::Result<VmConfig> {
        Ok(VmConfig {
            disk: Some(disk.to_path_buf()),
            firmware: Firmware::Uefi {
                vars: ensure_vars(disk)?,
            },
            pxe_dir: None,
            memory_mb: 1024,
            cpus: 1,
            accel: accel(),
            serial: "stdio".into(),
            forwards: Vec::new(),
        })
    }

    /// `disk` under Secure Boot with the PK, KEK and db certificates of `keys` (`kiln keygen
    /// --secure-boot`) enrolled into its own variables file (made on first use).
    /// The variables are enrolled again when `keys` holds other certificates than the ones
    /// enrolled (their digest is kept in `DISK.sb.vars.keys`).
    pub fn for_secure_boot(disk: &Path, keys: &Path) -> Result<VmConfig, crate::BuildError> {
        let vars = secure_vars_path(disk);
        let mut stamp = vars.as_os_str().to_owned();
        stamp.push(".keys");
        let stamp = PathBuf::from(stamp);
        let want = crate::secure_boot::certs_digest(keys)?;
        let enrolled = std::fs::read_to_string(&stamp).ok();
        if !vars.exists() || enrolled.as_deref() != Some(want.as_str()) {
            let template = std::env::var_os("KILN_OVMF_VARS")
                .map(PathBuf::from)
                .unwrap_or(OVMF_VARS.into());
            let _ = std::fs::remove_file(&stamp);
            crate::secure_boot::enroll(&template, keys, &vars)?;
            std::fs::write(&stamp, &want).map_err(crate::BuildError::io(format!(
                "writing {}",
                stamp.display()
            )))?;
        }
        Ok(VmConfig {
            disk: Some(disk.to_path_buf()),
            firmware: Firmware::SecureBoot { vars },
            pxe_dir: None,
            memory_mb: 1024,
            cpus: 1,
            accel: accel_smm(),
            serial: "stdio".into(),
            forwards: Vec::new(),
        })
    }

    /// A network boot from `dir` (see `kiln pxe`) with no disk.
    pub fn for_pxe(dir: &Path, firmware: Firmware) -> VmConfig {
        VmConfig {
            disk: None,
            firmware,
            pxe_dir: Some(dir.to_path_buf()),
            memory_mb: 1024,
            cpus: 1,
            accel: accel(),
            serial: "stdio".into(),
            forwards: Vec::new(),
        }
    }

    /// The QEMU command line.
    pub fn command(&self) -> Command {
        let code = std::env::var_os("KILN_OVMF_CODE")
            .map(PathBuf::from)
            .unwrap_or(OVMF_CODE.into());
        let secure = matches!(self.firmware, Firmware::SecureBoot { .. });
        let code = if secure {
            std::env::var_os("KILN_OVMF_CODE_SECBOOT")
                .map(PathBuf::from)
                .unwrap_or(crate::secure_boot::OVMF_CODE_SECBOOT.into())
        } else {
            code
        };
        let mut c = Command::new("qemu-system-x86_64");
        if secure {
            // The variable store is writable only from SMM, as on hardware.
            c.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        c.args([
            "-machine",
            if secure { "q35,smm=on" } else { "q35" },
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args([
            "-accel",
            if self.accel == Accel::Kvm {
                "kvm"
            } else {
                "tcg"
            },
        ])
        .args([
            "-m",
            &self.memory_mb.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ])
        .args(["-serial", &self.serial]);
        if let Firmware::Uefi { vars } | Firmware::SecureBoot { vars } = &self.firmware {
            c.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    code.display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
        }
        if let Some(disk) = &self.disk {
            let format = if disk.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            c.arg("-drive")
                .arg(format!(
                    "file={},format={format},if=none,id=disk0",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=1"]);
        }
        let mut netdev = String::from("user,id=n0");
        for f in &self.forwards {
            netdev.push(',');
            netdev.push_str(&f.netdev_option());
        }
        match &self.pxe_dir {
            // iPXE from the NIC's option ROM (ipxe-qemu) fetches boot.ipxe over slirp's TFTP.
            // With a disk too, the disk comes first: a blank one falls through to the network
            // (install), an installed one boots.
            Some(dir) => c.args([
                "-netdev",
                &format!("{netdev},tftp={},bootfile=boot.ipxe", dir.display()),
                "-device",
                if self.disk.is_some() {
                    "virtio-net-pci,netdev=n0,bootindex=2"
                } else {
                    "virtio-net-pci,netdev=n0,bootindex=0"
                },
            ]),
            None => c.args([
                "-netdev",
                &netdev,
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]),
        };
        c
    }
}

/// `kiln run`: boots `disk` with the console on stdout. With `until`, returns once that text
/// appears on the console (and stops the VM); with `timeout`, stops the VM then.
pub fn run(
    cfg: &VmConfig,
    timeout: Option<Duration>,
    until: Option<&str>,
) -> io::Result<RunOutcome> {
    let mut cmd = cfg.command();
    if until.is_some() {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("starting qemu-system-x86_64 (install qemu-system-x86): {e}"),
        )
    })?;
    let start = Instant::now();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let (Some(pat), Some(mut out)) = (until, child.stdout.take()) {
        let pat = pat.to_string();
        let seen = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            let mut tail = String::new();
            let mut stdout = io::stdout();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = stdout.write_all(&buf[..n]);
                let _ = stdout.flush();
                tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                if tail.contains(&pat) {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
        });
    }
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(RunOutcome::Exited(status.code().unwrap_or(-1)));
        }
        if seen.load(std::sync::atomic::Ordering::SeqCst) {
            child.kill()?;
            child.wait()?;
            return Ok(RunOutcome::Matched(start.elapsed()));
        }
        if timeout.is_some_and(|t| start.elapsed() > t) {
            child.kill()?;
            child.wait()?;
            return Ok(RunOutcome::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How `kiln run` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Exited(i32),
    Matched(Duration),
    TimedOut,
}

#[cfg(test)]
mod tests;
