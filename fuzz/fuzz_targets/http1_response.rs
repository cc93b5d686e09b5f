//! kiln-init's HTTP/1 response reader (`kiln_flash::http1::read_response`), fed whatever a
//! server could send: no panic, and never more body than the cap or than was sent.
#![no_main]

use kiln_flash::http1::read_response;
use libfuzzer_sys::fuzz_target;
use std::io::Read;

const CAP: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Ok((_, mut body)) = read_response(std::io::Cursor::new(data), CAP) else {
        return;
    };
    let mut out = Vec::new();
    let _ = body.by_ref().take(CAP + 1).read_to_end(&mut out);
    assert!(out.len() as u64 <= CAP, "{} bytes past the cap", out.len());
    assert!(out.len() <= data.len(), "more body than input");
});
