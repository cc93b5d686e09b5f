//! Static IPv4 configuration of one interface for a network boot, from the values iPXE got by
//! DHCP and put on the kernel command line (no DHCP client in the initramfs).
#![allow(unsafe_code)] // socket ioctls (SIOCSIF*, SIOCADDRT); each call has its SAFETY note.

use super::{err, InitError};
use nix::libc;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// What to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    /// The interface with this MAC address (lower-case), else the first one that is not `lo`.
    pub mac: Option<String>,
}

/// Parses the command line values; `ip` may carry a prefix (`10.0.2.15/24`).
pub fn parse(
    ip: Option<&str>,
    netmask: Option<&str>,
    gateway: Option<&str>,
    mac: Option<&str>,
) -> Result<NetConfig, String> {
    let ip = ip.ok_or("kiln.ip is missing (the iPXE script passes kiln.ip=${ip})")?;
    let (addr, prefix) = match ip.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (ip, None),
    };
    let ip: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("kiln.ip={ip}: not an IPv4 address"))?;
    let netmask = match (prefix, netmask) {
        (Some(p), _) => {
            let p: u32 = p
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| format!("kiln.ip prefix /{p} is not 0–32"))?;
            Ipv4Addr::from(u32::MAX.checked_shl(32 - p).unwrap_or(0))
        }
        (None, Some(m)) => m
            .parse()
            .map_err(|_| format!("kiln.netmask={m}: not an IPv4 netmask"))?,
        (None, None) => Ipv4Addr::new(255, 255, 255, 0),
    };
    let gateway = match gateway.filter(|g| !g.is_empty()) {
        Some(g) => Some(
            g.parse()
                .map_err(|_| format!("kiln.gw={g}: not an IPv4 address"))?,
        )
        .filter(|g: &Ipv4Addr| !g.is_unspecified()),
        None => None,
    };
    Ok(NetConfig {
        ip,
        netmask,
        gateway,
        mac: mac.map(str::to_ascii_lowercase),
    })
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-old-data C structs; the kernel
    // reads an AF_INET sockaddr as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct (name bytes and a union of PODs); all-zero is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    r
}

fn ioctl(
    sock: &OwnedFd,
    req: libc::c_ulong,
    arg: *mut libc::c_void,
    what: &str,
) -> Result<(), InitError> {
    // SAFETY: `arg` points to the ifreq or rtentry the request expects, alive for the call;
    // the socket is open.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), req, arg) };
    if rc < 0 {
        return Err(err(
            "configuring the network",
            format!("{what}: {}", std::io::Error::last_os_error()),
        ));
    }
    Ok(())
}

fn set_addr(
    sock: &OwnedFd,
    ifname: &str,
    req: libc::c_ulong,
    a: Ipv4Addr,
    what: &str,
) -> Result<(), InitError> {
    let mut r = ifreq(ifname);
    r.ifr_ifru.ifru_addr = sockaddr(a);
    ioctl(sock, req, (&mut r as *mut libc::ifreq).cast(), what)
}

fn up(sock: &OwnedFd, ifname: &str) -> Result<(), InitError> {
    let mut r = ifreq(ifname);
    ioctl(
        sock,
        libc::SIOCGIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        "reading flags",
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(
        sock,
        libc::SIOCSIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        &format!("bringing {ifname} up"),
    )
}

/// The interface to configure: by MAC, else the first non-loopback one; waits for the driver.
fn find_interface(mac: Option<&str>, timeout: Duration) -> Result<String, InitError> {
    let start = Instant::now();
    loop {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let found = names.into_iter().filter(|n| n != "lo").find(|n| match mac {
            None => true,
            Some(m) => std::fs::read_to_string(format!("/sys/class/net/{n}/address"))
                .is_ok_and(|a| a.trim().eq_ignore_ascii_case(m)),
        });
        if let Some(n) = found {
            return Ok(n);
        }
        if start.elapsed() > timeout {
            return Err(err(
                "configuring the network",
                format!(
                    "no network interface{} after {} s",
                    mac.map(|m| format!(" with MAC {m}")).unwrap_or_default(),
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Brings `lo` and the interface up with `cfg`; returns the interface name.
pub fn configure(cfg: &NetConfig) -> Result<String, InitError> {
    let ifname = find_interface(cfg.mac.as_deref(), Duration::from_secs(20))?;
    // SAFETY: socket(2) with constant arguments; the returned fd is checked, then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(
            "configuring the network",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    up(&sock, "lo")?;
    set_addr(
        &sock,
        &ifname,
        libc::SIOCSIFADDR,
        cfg.ip,
        "setting the address",
    )?;
    set_addr(
        &sock,
        &ifname,
        libc::SIOCSIFNETMASK,
        cfg.netmask,
        "setting the netmask",
    )?;
    up(&sock, &ifname)?;
    if let Some(gw) = cfg.gateway {
        // SAFETY: rtentry is a plain C struct; all-zero is valid (no device, metric 0).
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        ioctl(
            &sock,
            libc::SIOCADDRT,
            (&mut rt as *mut libc::rtentry).cast(),
            "adding the default route",
        )?;
    }
    Ok(ifname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipxe_values() {
        let c = parse(
            Some("10.0.2.15"),
            Some("255.255.255.0"),
            Some("10.0.2.2"),
            Some("52:54:00:12:34:56"),
        )
        .unwrap();
        assert_eq!(c.ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        let c = parse(Some("192.168.7.9/20"), None, Some(""), None).unwrap();
        assert_eq!(c.netmask, Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(c.gateway, None);
        assert_eq!(
            parse(Some("1.2.3.4/0"), None, Some("0.0.0.0"), None)
                .unwrap()
                .netmask,
            Ipv4Addr::UNSPECIFIED
        );
        assert!(parse(None, None, None, None)
            .unwrap_err()
            .contains("kiln.ip"));
        assert!(parse(Some("10.0.2"), None, None, None)
            .unwrap_err()
            .contains("kiln.ip=10.0.2"));
        assert!(parse(Some("1.2.3.4/33"), None, None, None).is_err());
        assert!(parse(Some("1.2.3.4"), Some("x"), None, None)
            .unwrap_err()
            .contains("kiln.netmask"));
    }
}
