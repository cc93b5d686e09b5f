//! systemd-boot entry names and files: a parsed name renders back to itself; entry text
//! parsing never panics.
#![no_main]

use kiln_boot::systemd_boot::counting::{file_name, parse, parse_file_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (name, body) = text.split_once('\n').unwrap_or((text, ""));
    if let Some((slot, health)) = parse_file_name(name) {
        let again = file_name(slot, health);
        assert_eq!(
            parse_file_name(&again),
            Some((slot, health)),
            "{name} -> {again}"
        );
    }
    let _ = parse(name, body);
});
