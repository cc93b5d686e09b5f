//! The policy a device judges a verified manifest by, from its floors: the running image's own
//! (baked in the read-only release file) and what the state file on persist recorded. Pure, so
//! the fail-closed cases are tested here: a missing state file is the default state, which
//! never lowers a floor below the image's.

use super::state_file::UpdaterState;
use crate::bundle::manifest::{Manifest, Policy};
use kiln_boot::contract::Release;

/// The policy for installing on a device running `release` with state `st` at clock `now`.
pub fn device_policy(
    release: &Release,
    st: &UpdaterState,
    allow_downgrade: bool,
    now: u64,
) -> Policy {
    Policy {
        compatible: release.compatible.clone(),
        installed_sequence: st.installed_sequence.max(release.sequence),
        seen_sequence: st.seen_sequence,
        time_floor: st.seen_created.unwrap_or(0).max(release.built.unwrap_or(0)),
        allow_downgrade,
        now,
    }
}

/// Raises the recorded floors to a manifest accepted for install (before anything is written).
pub fn record_accepted(st: &mut UpdaterState, m: &Manifest) {
    st.seen_sequence = st.seen_sequence.max(Some(m.sequence));
    st.seen_created = st.seen_created.max(Some(m.created));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{Payload, Payloads, PolicyError, FORMAT};
    use kiln_boot::contract::LoaderKind;

    const BUILT: u64 = 1_700_000_000;

    fn release(sequence: Option<u64>, built: Option<u64>) -> Release {
        Release {
            name: "n".into(),
            version: "5.0.0".into(),
            compatible: "kiln-test".into(),
            threshold: 1,
            loader: LoaderKind::SystemdBoot,
            sequence,
            built,
            uki: false,
        }
    }

    fn manifest(sequence: u64, created: u64, expires: u64) -> Manifest {
        let empty = || Payload {
            size: 0,
            sha256: String::new(),
            chunks: vec![],
        };
        Manifest {
            format: FORMAT,
            compatible: "kiln-test".into(),
            version: "x".into(),
            sequence,
            created,
            expires,
            payloads: Payloads {
                root: empty(),
                kernel: Some(empty()),
                initrd: Some(empty()),
                uki_a: None,
                uki_b: None,
            },
            root_verity: None,
        }
    }

    #[test]
    fn missing_state_file_and_an_older_bundle_is_refused_by_the_baked_floor() {
        // A factory image at sequence 5, never updated (or persist wiped): no state file.
        let p = device_policy(
            &release(Some(5), Some(BUILT)),
            &UpdaterState::default(),
            false,
            BUILT + 10,
        );
        let valid = manifest(4, BUILT + 5, BUILT + 1000);
        assert_eq!(
            valid.check_policy(&p),
            Err(PolicyError::Downgrade {
                bundle: 4,
                installed: 5
            })
        );
        assert!(manifest(5, BUILT + 5, BUILT + 1000)
            .check_policy(&p)
            .is_err());
        assert_eq!(
            manifest(6, BUILT + 5, BUILT + 1000).check_policy(&p),
            Ok(())
        );
        // A recorded floor below the image's does not lower it.
        let st = UpdaterState {
            installed_sequence: Some(2),
            ..Default::default()
        };
        let p = device_policy(&release(Some(5), None), &st, false, BUILT + 10);
        assert!(valid.check_policy(&p).is_err());
    }

    #[test]
    fn clock_at_zero_and_an_expired_bundle_is_refused() {
        // The RTC reset to 1970: the image's build time still judges expiry.
        let p = device_policy(
            &release(None, Some(BUILT)),
            &UpdaterState::default(),
            false,
            0,
        );
        let expired = manifest(9, BUILT - 100, BUILT - 50);
        assert_eq!(
            expired.check_policy(&p),
            Err(PolicyError::CreatedBeforeFloor {
                created: BUILT - 100,
                floor: BUILT
            })
        );
        // Even with --allow-downgrade (which skips the creation floor), it stays expired.
        let p = Policy {
            allow_downgrade: true,
            ..p
        };
        assert_eq!(
            expired.check_policy(&p),
            Err(PolicyError::Expired {
                expires: BUILT - 50,
                now: BUILT
            })
        );
        // A bundle made after the build and not expired by the floor is fine at clock 0.
        assert_eq!(
            manifest(9, BUILT + 1, BUILT + 1000).check_policy(&p),
            Ok(())
        );
    }

    #[test]
    fn a_manifest_created_before_the_time_floor_is_refused() {
        let mut st = UpdaterState::default();
        record_accepted(&mut st, &manifest(7, BUILT + 500, BUILT + 9000));
        let p = device_policy(&release(None, Some(BUILT)), &st, false, BUILT + 600);
        // Higher sequence, valid signature and expiry, but made before the newest accepted.
        assert_eq!(
            manifest(8, BUILT + 400, BUILT + 9000).check_policy(&p),
            Err(PolicyError::CreatedBeforeFloor {
                created: BUILT + 400,
                floor: BUILT + 500
            })
        );
        assert_eq!(
            manifest(8, BUILT + 500, BUILT + 9000).check_policy(&p),
            Ok(())
        );
    }

    #[test]
    fn the_accepted_sequence_may_be_retried_but_not_undercut() {
        let mut st = UpdaterState::default();
        record_accepted(&mut st, &manifest(7, BUILT, BUILT + 9000));
        // An older manifest accepted later never lowers what was recorded.
        record_accepted(&mut st, &manifest(3, BUILT - 10, BUILT + 9000));
        assert_eq!((st.seen_sequence, st.seen_created), (Some(7), Some(BUILT)));
        let p = device_policy(&release(None, None), &st, false, BUILT);
        assert_eq!(manifest(7, BUILT, BUILT + 9000).check_policy(&p), Ok(()));
        assert_eq!(
            manifest(6, BUILT, BUILT + 9000).check_policy(&p),
            Err(PolicyError::BelowSeen { bundle: 6, seen: 7 })
        );
    }
}
