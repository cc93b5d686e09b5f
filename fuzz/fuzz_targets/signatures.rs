//! Signature verification: arbitrary manifest bytes and signature file against the
//! development key. Nothing but a real signature by that key over those exact bytes may pass.
#![no_main]

use kiln_updater::bundle::keys::{verify, PublicKey, SecretKey, Signatures};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = SecretKey::from_seed([7; 32]);
    let public: PublicKey = secret.public();
    // First byte: where the manifest ends and the signature file starts.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let (manifest, sigs) = rest.split_at(cut);
    if let Ok(ids) = verify(manifest, sigs, std::slice::from_ref(&public), 1) {
        // Only possible with the key's (deterministic) signature over these exact bytes.
        assert!(ids.contains(&public.key_id()));
        let honest = secret.sign(manifest);
        let file: Signatures = serde_json::from_slice(sigs).unwrap();
        assert!(file
            .signatures
            .iter()
            .any(|e| e.key_id == honest.key_id
                && e.signature.eq_ignore_ascii_case(&honest.signature)));
    }
    // A real signature over the bytes always verifies.
    let entry = secret.sign(manifest);
    let good = serde_json::to_vec(&serde_json::json!({ "signatures": [entry] })).unwrap();
    assert!(verify(manifest, &good, std::slice::from_ref(&public), 1).is_ok());
});
