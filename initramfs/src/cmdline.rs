//! Parsing the kernel command line for the keys kiln-init needs.

/// What kiln-init takes from `/proc/cmdline`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `root=PARTUUID=<guid>` (lower-cased).
    pub root_partuuid: Option<String>,
    /// `kiln.slot=a|b`.
    pub slot: Option<String>,
    /// `kiln.init=/path` overrides the configured init (debugging).
    pub init: Option<String>,
}

/// Parses a command line; unknown words are ignored, the last occurrence of a key wins.
pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for word in text.split_ascii_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k {
            "root" => {
                if let Some(u) = v.strip_prefix("PARTUUID=") {
                    c.root_partuuid = Some(u.to_ascii_lowercase());
                }
            }
            "kiln.slot" => c.slot = Some(v.to_string()),
            "kiln.init" => c.init = Some(v.to_string()),
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_root_slot_and_ignores_the_rest() {
        let c = parse("BOOT_IMAGE=/x console=ttyS0 root=PARTUUID=ABCD-01 quiet kiln.slot=b rw\n");
        assert_eq!(c.root_partuuid.as_deref(), Some("abcd-01"));
        assert_eq!(c.slot.as_deref(), Some("b"));
        assert_eq!(c.init, None);
        assert_eq!(parse("root=/dev/vda2").root_partuuid, None);
    }
}
