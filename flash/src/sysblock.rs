//! What the kernel says about a block device: its partitions and holders (sysfs), where it is
//! mounted (`/proc/self/mountinfo`) and whether it is swap (`/proc/swaps`). The parsers are pure;
//! [`inspect`] reads sysfs.

use std::io;
use std::path::{Path, PathBuf};

/// A device number, `(major, minor)`.
pub type DevNum = (u64, u64);

/// Undoes the octal escapes (`\040` for a space…) of mountinfo and /proc/swaps fields.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = |c: u8| (b'0'..=b'7').contains(&c);
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|&c| oct(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_devnum(s: &str) -> Option<DevNum> {
    let (ma, mi) = s.trim().split_once(':')?;
    Some((ma.parse().ok()?, mi.parse().ok()?))
}

/// `(device number, mount point)` of every line of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<(DevNum, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((parse_devnum(f.get(2)?)?, unescape(f.get(4)?)))
        })
        .collect()
}

/// The file names (first column) of `/proc/swaps`.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(unescape))
        .collect()
}

/// A whole disk and its partitions as sysfs shows them.
#[derive(Debug, Default)]
pub struct BlockInfo {
    /// Kernel name (`loop0`, `sda`).
    pub name: String,
    /// The disk and each partition: `(kernel name, device number)`.
    pub members: Vec<(String, DevNum)>,
    /// `(member name, holder name)`: device-mapper, md or loop devices stacked on a member.
    pub holders: Vec<(String, String)>,
}

fn holders_of(dir: &Path) -> io::Result<Vec<String>> {
    match std::fs::read_dir(dir.join("holders")) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Reads `SYS/dev/block/MAJ:MIN`, its partitions and holders.
pub fn inspect(sys: &Path, dev: DevNum) -> io::Result<BlockInfo> {
    let dir: PathBuf = sys
        .join(format!("dev/block/{}:{}", dev.0, dev.1))
        .canonicalize()?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut info = BlockInfo {
        name: name.clone(),
        members: vec![(name.clone(), dev)],
        holders: holders_of(&dir)?
            .into_iter()
            .map(|h| (name.clone(), h))
            .collect(),
    };
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("partition").is_file())
        .collect();
    parts.sort();
    for p in parts {
        let pname = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(num) = parse_devnum(&std::fs::read_to_string(p.join("dev"))?) {
            info.members.push((pname.clone(), num));
        }
        for h in holders_of(&p)? {
            info.holders.push((pname.clone(), h));
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_and_escapes() {
        let t = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                 42 27 7:0 / /tmp/my\\040disk rw,relatime - ext4 /dev/loop0 rw\n\
                 garbage\n";
        assert_eq!(
            parse_mountinfo(t),
            vec![
                ((8, 1), "/".to_string()),
                ((7, 0), "/tmp/my disk".to_string())
            ]
        );
    }

    #[test]
    fn swaps_file_names() {
        let t = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                 /dev/sdb2                               partition\t8388604\t\t0\t\t-2\n\
                 /swap\\040file file 100 0 -3\n";
        assert_eq!(parse_swaps(t), vec!["/dev/sdb2", "/swap file"]);
        assert!(parse_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    #[test]
    fn inspects_a_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("devices/virtual/block/loop3");
        std::fs::create_dir_all(disk.join("loop3p1/holders/dm-0")).unwrap();
        std::fs::create_dir_all(disk.join("loop3p2")).unwrap();
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        std::fs::create_dir_all(disk.join("queue")).unwrap();
        for (p, dev) in [("loop3p1", "259:0\n"), ("loop3p2", "259:1\n")] {
            std::fs::write(disk.join(p).join("partition"), "1\n").unwrap();
            std::fs::write(disk.join(p).join("dev"), dev).unwrap();
        }
        std::fs::create_dir_all(d.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, d.path().join("dev/block/7:3")).unwrap();
        let info = inspect(d.path(), (7, 3)).unwrap();
        assert_eq!(info.name, "loop3");
        assert_eq!(
            info.members,
            vec![
                ("loop3".to_string(), (7, 3)),
                ("loop3p1".to_string(), (259, 0)),
                ("loop3p2".to_string(), (259, 1))
            ]
        );
        assert_eq!(
            info.holders,
            vec![("loop3p1".to_string(), "dm-0".to_string())]
        );
    }
}
