use super::*;

#[test]
fn probe_sector_runs_under_tcg() {
    // The probe guest itself must be right: under TCG it always reaches the exit port.
    assert!(probe(Accel::Tcg, Duration::from_secs(20)));
}

#[test]
fn forwards_parse_as_two_ports_and_name_the_bad_one() {
    assert_eq!(
        "6443:6443".parse::<Forward>(),
        Ok(Forward {
            host: 6443,
            guest: 6443
        })
    );
    assert_eq!(
        "6443".parse::<Forward>(),
        Err(ForwardError::Shape("6443".into()))
    );
    for (bad, port) in [
        ("0:22", "0"),
        ("22:70000", "70000"),
        ("0.0.0.0:22", "0.0.0.0"),
        ("1:2:3", "2:3"),
        (":22", ""),
    ] {
        let e = bad.parse::<Forward>().unwrap_err();
        assert_eq!(
            e,
            ForwardError::Port {
                value: bad.into(),
                port: port.into()
            },
            "{bad}"
        );
        assert!(e.to_string().contains(&format!("{port:?}")), "{e}");
    }
}

#[test]
fn command_uses_per_disk_vars_and_virtio() {
    let cfg = VmConfig {
        disk: Some("/x/disk.qcow2".into()),
        firmware: Firmware::Uefi {
            vars: vars_path(Path::new("/x/disk.qcow2")),
        },
        pxe_dir: None,
        memory_mb: 512,
        cpus: 1,
        accel: Accel::Tcg,
        serial: "stdio".into(),
        forwards: vec!["16443:6443".parse().unwrap(), "2222:22".parse().unwrap()],
    };
    let args: Vec<String> = cfg
        .command()
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let line = args.join(" ");
    assert!(line.contains("unit=1,file=/x/disk.qcow2.vars"), "{line}");
    assert!(line.contains("file=/x/disk.qcow2,format=qcow2"), "{line}");
    assert!(line.contains("-accel tcg"), "{line}");
    assert!(line.contains("romfile="), "{line}");
    assert!(
        line.contains(
            "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:16443-:6443,hostfwd=tcp:127.0.0.1:2222-:22 "
        ),
        "{line}"
    );

    let pxe = VmConfig::for_pxe(Path::new("/p"), Firmware::Bios);
    let line: Vec<String> = pxe
        .command()
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let line = line.join(" ");
    assert!(
        line.contains("user,id=n0,tftp=/p,bootfile=boot.ipxe"),
        "{line}"
    );
    assert!(
        !line.contains("pflash") && !line.contains("disk0"),
        "{line}"
    );
}
