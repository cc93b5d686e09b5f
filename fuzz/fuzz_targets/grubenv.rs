//! grubenv blocks: parsing never panics, and a parsed state renders to a 1024-byte block that
//! parses back to the same state.
#![no_main]

use kiln_boot::grub::{parse_state, parse_vars, render_env};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(vars) = parse_vars(data) else {
        return;
    };
    let state = parse_state(&vars);
    let Ok(block) = render_env(&state, |s| format!("root=PARTUUID=x kiln.slot={s}")) else {
        return;
    };
    assert_eq!(block.len(), 1024);
    let back = parse_state(&parse_vars(&block).expect("a rendered block parses"));
    assert_eq!(back, state);
});
