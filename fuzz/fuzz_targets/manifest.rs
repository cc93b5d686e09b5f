//! The manifest parser and its structural and policy checks, on arbitrary bytes (what an
//! attacker controls before the signature is checked is the signature file; this covers the
//! manifest parser as if a trusted key had signed garbage).
#![no_main]

use kiln_updater::bundle::manifest::{Manifest, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    let structure = m.check_structure();
    let _ = m.check_policy(&Policy {
        compatible: "kiln-default-x86_64".into(),
        installed_sequence: Some(3),
        seen_sequence: Some(3),
        time_floor: 1_600_000_000,
        allow_downgrade: false,
        now: 1_700_000_000,
    });
    if structure.is_ok() {
        // A manifest that passes the checks serialises and parses back to itself.
        let again: Manifest = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }
});
