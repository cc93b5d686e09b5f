//! `image.toml`: parsing and resolving arbitrary text never panics (errors name the file).
#![no_main]

use imagebuilder::spec::Spec;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Spec::parse(text, "fuzz/image.toml") {
        Ok(spec) => {
            if let Err(e) =
                imagebuilder::validate::resolve(spec, Path::new("/nonexistent/image.toml"))
            {
                assert!(!e.to_string().is_empty());
            }
        }
        Err(e) => assert_eq!(e.file, "fuzz/image.toml"),
    }
});
