//! The node's kubeconfig holds its client key: one readable by other local users hands them the
//! node's cluster identity. The agent refuses it (and keeps waiting, as for a missing one) until
//! it is private, as ssh does with a private key.

/// Checks a kubeconfig's mode: no permission for group or others.
pub fn check_private(mode: u32) -> Result<(), String> {
    if mode & 0o077 == 0 {
        Ok(())
    } else {
        Err(format!(
            "is open to other users (mode {:04o}): it holds the node's client key; chmod 600 it",
            mode & 0o7777
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_modes_pass() {
        assert_eq!(check_private(0o100600), Ok(()));
        assert_eq!(check_private(0o400), Ok(()));
        for open in [0o644, 0o640, 0o604, 0o660, 0o666] {
            let e = check_private(0o100000 | open).unwrap_err();
            assert!(e.contains(&format!("mode {open:04o}")), "{e}");
        }
    }
}
