//! Secure Boot keys, signing and enrollment, with the host tools that do them (as `mkfs.erofs`
//! and `veritysetup` are used elsewhere): `openssl` makes keys, `osslsigncode` signs PE files
//! (Authenticode), `virt-fw-vars` (PyPI `virt-firmware`) enrolls certificates into a copy of
//! OVMF's variable store. No Rust crate signs Authenticode (`authenticode` and goblin only
//! digest and verify), and the OVMF variable store's authenticated-variable format is not
//! worth a second implementation.
//!
//! Signing is reproducible: `osslsigncode -time` puts the build's epoch in the signature's
//! signing time (`sbsign` stamps the current time), and RSA PKCS#1 v1.5 is deterministic.

use crate::error::BuildError;
use kiln_rootfs::mkfs::run_tool;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The owner GUID Kiln enrolls its certificates under (PK, KEK, db).
pub const OWNER_GUID: &str = "6b696c6e-0000-4b69-9c6e-536563426f6f";

/// The key pairs `kiln keygen --secure-boot` writes: `<name>.key` and `<name>.crt`.
pub const KEY_NAMES: [&str; 3] = ["PK", "KEK", "db"];

/// OVMF built with Secure Boot (needs SMM) and its empty variable store.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";

/// Writes PK, KEK and db key pairs (RSA 2048, self-signed, 10 years) into `dir`. Refuses to
/// overwrite existing keys.
pub fn keygen(dir: &Path, common_name: &str) -> Result<Vec<PathBuf>, BuildError> {
    std::fs::create_dir_all(dir).map_err(BuildError::io(format!("creating {}", dir.display())))?;
    for n in KEY_NAMES {
        for ext in ["key", "crt"] {
            let p = dir.join(format!("{n}.{ext}"));
            if p.exists() {
                return Err(BuildError::Other(format!(
                    "{} exists; not overwriting Secure Boot keys",
                    p.display()
                )));
            }
        }
    }
    let mut written = vec![];
    let made = (|| {
        for n in KEY_NAMES {
            written.extend(keypair(dir, n, common_name)?);
        }
        Ok(())
    })();
    if let Err(e) = made {
        // Nothing half-made stays behind: a rerun would refuse to overwrite it.
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(written)
}

/// Makes `dir/<n>.key` (0600) and `dir/<n>.crt` through temporary names; returns their paths.
/// On failure nothing of the pair is left.
fn keypair(dir: &Path, n: &str, common_name: &str) -> Result<Vec<PathBuf>, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let (key, crt) = (dir.join(format!("{n}.key")), dir.join(format!("{n}.crt")));
    let (tk, tc) = (
        dir.join(format!(".{n}.key.tmp")),
        dir.join(format!(".{n}.crt.tmp")),
    );
    let made = run_tool(
        Command::new("openssl")
            .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-sha256", "-days", "3650", "-subj"])
            .arg(format!("/CN={common_name} {n}/"))
            .arg("-keyout")
            .arg(&tk)
            .arg("-out")
            .arg(&tc),
        "openssl",
    )
    .map_err(BuildError::from)
    .and_then(|()| {
        std::fs::set_permissions(&tk, std::fs::Permissions::from_mode(0o600))
            .map_err(BuildError::io(format!("chmod {}", tk.display())))
    })
    .and_then(|()| {
        std::fs::rename(&tk, &key).map_err(BuildError::io(format!("writing {}", key.display())))
    })
    .and_then(|()| {
        std::fs::rename(&tc, &crt).map_err(BuildError::io(format!("writing {}", crt.display())))
    });
    if let Err(e) = made {
        for p in [&tk, &tc, &key, &crt] {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(vec![key, crt])
}

/// Signs the PE file `input` into `out` with `key`/`cert`, the signing time set to `epoch`.
pub fn sign(
    input: &Path,
    out: &Path,
    key: &Path,
    cert: &Path,
    epoch: u64,
) -> Result<(), BuildError> {
    write_through_tool(out, "signing.tmp", "osslsigncode", |tmp| {
        let mut c = Command::new("osslsigncode");
        c.arg("sign")
            .arg("-certs")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .args(["-h", "sha256", "-time", &epoch.to_string()])
            .arg("-in")
            .arg(input)
            .arg("-out")
            .arg(tmp);
        Ok(c)
    })
    .map_err(|e| BuildError::Other(format!("signing {}: {e}", input.display())))
}

/// Runs the command `make(tmp)` builds, which writes `tmp` (`out` with the extension
/// `tmp_ext`), then renames `tmp` to `out`; on failure nothing is left at either name.
fn write_through_tool(
    out: &Path,
    tmp_ext: &str,
    package: &str,
    make: impl FnOnce(&Path) -> Result<Command, BuildError>,
) -> Result<(), BuildError> {
    let tmp = out.with_extension(tmp_ext);
    let _ = std::fs::remove_file(&tmp);
    let ran = make(&tmp).and_then(|mut c| run_tool(&mut c, package).map_err(BuildError::from));
    if let Err(e) = ran {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(BuildError::io(format!("writing {}", out.display())))
}

/// The certificate of key pair `name` in `keys`, or an error saying how to make it.
fn cert(keys: &Path, name: &str) -> Result<PathBuf, BuildError> {
    let p = keys.join(format!("{name}.crt"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(BuildError::Other(format!(
            "{}: missing (make the keys with kiln keygen --secure-boot {})",
            p.display(),
            keys.display()
        )))
    }
}

/// A digest of `keys`' PK, KEK and db certificates: what a variables file has enrolled.
pub fn certs_digest(keys: &Path) -> Result<String, BuildError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for n in KEY_NAMES {
        let p = cert(keys, n)?;
        let b = std::fs::read(&p).map_err(BuildError::io(format!("reading {}", p.display())))?;
        h.update((b.len() as u64).to_le_bytes());
        h.update(&b);
    }
    Ok(hex::encode(h.finalize()))
}

/// `virt-fw-vars`: `$KILN_VIRT_FW_VARS`, else on `PATH`.
fn virt_fw_vars() -> PathBuf {
    std::env::var_os("KILN_VIRT_FW_VARS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "virt-fw-vars".into())
}

/// A copy of `template` (OVMF's empty variable store) at `out` with `keys`' PK, KEK and db
/// certificates enrolled and Secure Boot turned on.
pub fn enroll(template: &Path, keys: &Path, out: &Path) -> Result<(), BuildError> {
    let cert = |n: &str| cert(keys, n);
    write_through_tool(
        out,
        "enrolling.tmp",
        "virt-firmware from PyPI (scripts/deps.sh makes .cache/deps/venv; set KILN_VIRT_FW_VARS)",
        |tmp| {
            let mut c = Command::new(virt_fw_vars());
            c.arg("--input")
                .arg(template)
                .arg("--output")
                .arg(tmp)
                .args(["--set-pk", OWNER_GUID])
                .arg(cert("PK")?)
                .args(["--add-kek", OWNER_GUID])
                .arg(cert("KEK")?)
                .args(["--add-db", OWNER_GUID])
                .arg(cert("db")?)
                .arg("--secure-boot");
            Ok(c)
        },
    )
    .map_err(|e| BuildError::Other(format!("enrolling the keys of {}: {e}", keys.display())))
}
