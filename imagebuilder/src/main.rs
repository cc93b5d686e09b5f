//! `kiln`: thin CLI over the imagebuilder library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use imagebuilder::pipeline::{build, BuildOptions};
use imagebuilder::qemu::{self, RunOutcome, VmConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build and run immutable A/B container-OS disk images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build DIR/disk.raw (and disk.qcow2, root.img, vmlinuz, initrd.img, build.json) from a spec.
    Build {
        /// The image spec (image.toml).
        spec: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The static kiln-init binary (default: $KILN_INIT, then target/x86_64-unknown-linux-gnu/release).
        #[arg(long)]
        init: Option<PathBuf>,
        /// Timestamp for every file (default: $SOURCE_DATE_EPOCH, else 0); also the image's
        /// build time, where devices running it start their time floor.
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
        source_date_epoch: u64,
        /// The image's update sequence (overrides `[update] sequence`): devices running it
        /// refuse bundles not above it.
        #[arg(long)]
        sequence: Option<u64>,
    },
    /// Make an ed25519 signing key: PREFIX.key (private, mode 0600) and PREFIX.pub; or, with
    /// --secure-boot DIR, Secure Boot's PK, KEK and db key pairs in DIR.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, required_unless_present = "secure_boot")]
        out: Option<PathBuf>,
        /// Write PK.key/.crt, KEK.key/.crt and db.key/.crt (RSA 2048, self-signed) into DIR.
        #[arg(long, value_name = "DIR", conflicts_with = "out")]
        secure_boot: Option<PathBuf>,
    },
    /// Show what a Kiln disk holds, read-only: its partitions, both slots' versions, states
    /// and root hashes, and whether each slot's root still matches its dm-verity root hash.
    Inspect {
        /// A disk image (disk.raw) or a block device.
        disk: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a signed update bundle from a build directory (root.img, vmlinuz, initrd.img, build.json).
    Bundle {
        /// A `kiln build` output directory.
        build: PathBuf,
        /// Private key file(s) to sign with.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Output bundle directory (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Monotonic sequence number; devices refuse one not above what they run (default:
        /// the build's own, which a different one may not contradict).
        #[arg(long)]
        sequence: Option<u64>,
        /// Days until the bundle expires.
        #[arg(long, default_value_t = 90)]
        expires_in_days: u64,
        /// Also pack the bundle into this single `.kbundle` file.
        #[arg(long)]
        kbundle: Option<PathBuf>,
        /// Store each chunk in a file of its own (`chunks/ab/<sha256>.zst`) instead of
        /// `chunks.pack`: for devices whose kiln-updater predates the pack (one request per
        /// chunk).
        #[arg(long)]
        chunk_files: bool,
        /// An older build directory: print what devices running it will download.
        #[arg(long)]
        from: Vec<PathBuf>,
    },
    /// Write an image to a whole disk: refuses a device that is mounted, swap, held or too small;
    /// opens it exclusively, writes all but the first MiB, verifies, then writes the partition
    /// table and re-reads it. A failed flash leaves no partition table.
    Flash {
        /// disk.raw, a zstd-compressed image, or an http(s) URL (streamed, not stored).
        image: String,
        /// The whole block device, e.g. /dev/sdb.
        device: PathBuf,
        /// Expected sha256 of the (decompressed) image, or a file holding it as `sha256sum`
        /// prints it (default: IMAGE.sha256 when it exists).
        #[arg(long, conflicts_with = "key")]
        sha256: Option<String>,
        /// Trust only a checksum signed by one of these public keys: IMAGE.sha256 with
        /// IMAGE.sha256.sig (made by `kiln sign`).
        #[arg(long = "key")]
        key: Vec<PathBuf>,
    },
    /// Write IMAGE.sha256 and its signature IMAGE.sha256.sig, for `kiln flash --key`.
    Sign {
        image: PathBuf,
        /// Private key file(s) to sign with.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Network boot artifacts (vmlinuz, initrd.img, root.img, boot.ipxe) from a spec or a
    /// build directory; serve OUT over HTTP at URL (`kiln run --pxe OUT` boots it).
    Pxe {
        /// An image.toml (built first, into OUT/build) or a `kiln build` output directory.
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Where OUT is served over HTTP, as the booting machine sees it (QEMU's slirp: the
        /// host's 127.0.0.1 is 10.0.2.2), e.g. http://10.0.2.2:8080
        #[arg(long)]
        url: String,
        /// Install onto this disk of the booting machine (e.g. /dev/vda) instead of a live
        /// boot: adds disk.raw.zst, which kiln-init writes as `kiln flash` does, then reboots.
        #[arg(long)]
        install: Option<String>,
        /// Timestamp for every file when building a spec (default: $SOURCE_DATE_EPOCH, else 0).
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
        source_date_epoch: u64,
    },
    /// Boot a disk in QEMU (OVMF, per-disk EFI variables), serial console on stdout.
    Run {
        /// The disk image (optional with --pxe).
        disk: Option<PathBuf>,
        /// Network boot from this `kiln pxe` directory (slirp TFTP serves boot.ipxe).
        #[arg(long)]
        pxe: Option<PathBuf>,
        /// SeaBIOS instead of OVMF (network boots without a disk only).
        #[arg(long, requires = "pxe", conflicts_with = "disk")]
        bios: bool,
        /// Stop the VM after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Stop the VM (exit 0) once this text appears on the console.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Boot under Secure Boot: OVMF's Secure Boot firmware with the PK, KEK and db
        /// certificates of this `kiln keygen --secure-boot` directory enrolled (into
        /// DISK.sb.vars, made on first use).
        #[arg(long, value_name = "KEYDIR", requires = "disk", conflicts_with = "pxe")]
        secure_boot: Option<PathBuf>,
        /// Make the guest's TCP port GUEST reachable on the host's 127.0.0.1:HOST (slirp
        /// hostfwd; repeatable), e.g. --forward 6443:6443 for a control-plane image's API.
        #[arg(long, value_name = "HOST:GUEST")]
        forward: Vec<qemu::Forward>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kiln=info,imagebuilder=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main() {
        eprintln!("kiln: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Build {
            spec,
            out,
            init,
            source_date_epoch,
            sequence,
        } => {
            let mut resolved = imagebuilder::validate::load(&spec)?;
            if sequence.is_some() {
                resolved.spec.update.sequence = sequence;
            }
            let init_bin = init
                .or_else(|| imagebuilder::find_device_binary("kiln-init"))
                .context("finding kiln-init: build it with scripts/build-device, or pass --init")?;
            let report = build(
                &resolved,
                &BuildOptions::new(out, init_bin, source_date_epoch),
            )
            .with_context(|| format!("building {}", spec.display()))?;
            println!("{}", report.disk.display());
        }
        Cmd::Keygen { out, secure_boot } => match (out, secure_boot) {
            (_, Some(dir)) => {
                for p in imagebuilder::secure_boot::keygen(&dir, "Kiln")? {
                    println!("{}", p.display());
                }
            }
            (Some(out), None) => imagebuilder::bundle::keygen(&out)?,
            (None, None) => bail!("give --out PREFIX or --secure-boot DIR"),
        },
        Cmd::Inspect { disk, json } => {
            let i = imagebuilder::inspect::inspect(&disk)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print!("{}", imagebuilder::inspect::render(&i));
            }
        }
        Cmd::Bundle {
            build,
            keys,
            out,
            sequence,
            expires_in_days,
            kbundle,
            chunk_files,
            from,
        } => {
            let sequence = imagebuilder::bundle::sequence_for(&build, sequence)?;
            let m = imagebuilder::bundle::bundle(&imagebuilder::bundle::BundleArgs {
                build: &build,
                keys: &keys,
                out: &out,
                sequence,
                expires_in: Duration::from_secs(expires_in_days * 86_400),
                kbundle: kbundle.as_deref(),
                layout: if chunk_files {
                    imagebuilder::bundle::Layout::Files
                } else {
                    imagebuilder::bundle::Layout::Pack
                },
            })?;
            let chunks: usize = m.payloads.named().iter().map(|(_, p)| p.chunks.len()).sum();
            println!(
                "{} (version {}, sequence {}, {chunks} chunks)",
                out.display(),
                m.version,
                m.sequence
            );
            // What an OSUpgrade's `manifestDigest` names to pin exactly this bundle.
            let mf = out.join(kiln_updater::bundle::MANIFEST);
            let json = std::fs::read(&mf).with_context(|| format!("reading {}", mf.display()))?;
            println!(
                "manifest {}",
                kiln_updater::bundle::expected::manifest_digest(&json)
            );
            let mib = |b: u64| b as f64 / 1048576.0;
            for old in &from {
                let e = imagebuilder::bundle::estimate(&m, &out, old)?;
                println!(
                    "from {} ({}): download {:.2} MiB in {} chunks, of {:.2} MiB in {} chunks for a full install ({:.1}%)",
                    e.from_version,
                    old.display(),
                    mib(e.download),
                    e.chunks,
                    mib(e.full),
                    e.full_chunks,
                    e.download as f64 * 100.0 / e.full as f64
                );
            }
        }
        Cmd::Flash {
            image,
            device,
            sha256,
            key,
        } => flash(&image, &device, sha256.as_deref(), &key)?,
        Cmd::Sign { image, keys } => {
            let hex = imagebuilder::signed_checksum::sign(&image, &keys)?;
            println!(
                "{}.sha256: {hex} (signature in {}.sha256.sig)",
                image.display(),
                image.display()
            );
        }
        Cmd::Pxe {
            input,
            out,
            url,
            install,
            source_date_epoch,
        } => {
            let build_dir = if input.is_file() {
                let resolved = imagebuilder::validate::load(&input)?;
                let init_bin = imagebuilder::find_device_binary("kiln-init").context(
                    "finding kiln-init: build it with scripts/build-device, or set KILN_INIT",
                )?;
                let report = build(
                    &resolved,
                    &BuildOptions::new(out.join("build"), init_bin, source_date_epoch),
                )
                .with_context(|| format!("building {}", input.display()))?;
                report
                    .disk
                    .parent()
                    .map(|p| p.to_path_buf())
                    .unwrap_or(out.join("build"))
            } else {
                input
            };
            imagebuilder::pxe::write(&build_dir, &out, &url, install.as_deref())?;
            println!("{}", out.join("boot.ipxe").display());
        }
        Cmd::Run {
            disk,
            pxe,
            bios,
            timeout,
            until,
            memory,
            secure_boot,
            forward,
        } => {
            let mut cfg = match (&disk, &pxe) {
                (Some(disk), None) => {
                    if !disk.is_file() {
                        bail!("{}: no such disk image", disk.display());
                    }
                    if let Some(keys) = &secure_boot {
                        VmConfig::for_secure_boot(disk, keys)?
                    } else {
                        VmConfig::for_disk(disk).with_context(|| {
                            format!("preparing firmware variables for {}", disk.display())
                        })?
                    }
                }
                (None, Some(dir)) => {
                    if !dir.join("boot.ipxe").is_file() {
                        bail!("{}: no boot.ipxe (make it with kiln pxe)", dir.display());
                    }
                    let firmware = if bios {
                        qemu::Firmware::Bios
                    } else {
                        qemu::Firmware::Uefi {
                            vars: qemu::ensure_vars(&dir.join("pxe"))?,
                        }
                    };
                    VmConfig::for_pxe(dir, firmware)
                }
                (Some(disk), Some(dir)) => {
                    // A disk that network-boots when it has nothing bootable (PXE install).
                    let mut cfg = VmConfig::for_disk(disk).with_context(|| {
                        format!("preparing firmware variables for {}", disk.display())
                    })?;
                    cfg.pxe_dir = Some(dir.clone());
                    cfg
                }
                (None, None) => bail!("give a disk image, --pxe DIR, or both"),
            };
            cfg.memory_mb = memory;
            cfg.serial = "mon:stdio".into();
            cfg.forwards = forward;
            eprintln!(
                "kiln: booting {} ({:?}; quit with Ctrl-A X)",
                disk.as_ref()
                    .or(pxe.as_ref())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                cfg.accel
            );
            match qemu::run(&cfg, timeout.map(Duration::from_secs), until.as_deref())? {
                RunOutcome::Exited(0) | RunOutcome::Matched(_) => {}
                RunOutcome::Exited(code) => bail!("qemu exited with status {code}"),
                RunOutcome::TimedOut => bail!("timed out after {} s", timeout.unwrap_or(0)),
            }
        }
    }
    Ok(())
}

/// `kiln flash`: the expected checksum from `--key` (signed IMAGE.sha256), `--sha256` (hex or a
/// file) or IMAGE.sha256.
fn flash(
    image: &str,
    device: &std::path::Path,
    sha256: Option<&str>,
    keys: &[PathBuf],
) -> Result<()> {
    use kiln_flash::{source, target::Target, write};
    let expected = match sha256 {
        _ if !keys.is_empty() => Some(imagebuilder::signed_checksum::verified(image, keys)?),
        Some(s) if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) => {
            Some((s.to_string(), "--sha256".to_string()))
        }
        Some(f) => Some((
            std::fs::read_to_string(f).with_context(|| format!("reading --sha256 file {f}"))?,
            f.to_string(),
        )),
        None => source::sidecar_checksum(image)?,
    };
    let expected = expected
        .map(|(text, from)| {
            let sha256 = kiln_flash::parse_sha256(&text)
                .with_context(|| format!("reading the checksum in {from}"))?;
            anyhow::Ok(write::Expected { sha256, from })
        })
        .transpose()?;
    let dev = Target::open_device(device)?;
    let mut src = source::open(image, &source::Bounds::for_device(dev.size))?;
    let r = write::flash(
        &mut src,
        &dev,
        expected.as_ref(),
        &kiln_flash::progress::reporter(),
    )?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{}: {:.1} MiB flashed ({:.1} MiB data, {:.1} MiB zeroed), sha256 {} {}; read back equal; partition table {}",
        device.display(),
        mib(r.bytes),
        mib(r.written + write::HEAD),
        mib(r.zeroed),
        hex::encode(r.sha256),
        match &expected {
            Some(e) => format!("matches {}", e.from),
            None => "(no checksum given: checked against the image as read)".into(),
        },
        match (r.partitions_reread, r.kernel_partitions) {
            (true, 0) => format!(
                "re-read, but the kernel lists no partitions (a kernel without GPT support? \
                 `partx -a {}` adds them)",
                device.display()
            ),
            (true, n) => format!("re-read ({n} partitions)"),
            (false, _) =>
                "written (the device does not support partitions: attach loop devices with -P)"
                    .into(),
        }
    );
    Ok(())
}
