//! An arbitrary AS request (method, path with valid or broken tokens, headers,
//! body) into `herald_engine::push::decode` with fixed keys.
//! The driver lives in `net/tests/fuzz_support` and is shared with the
//! plain-Rust smoke test `net/tests/fuzz_smoke.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../net/tests/fuzz_support/mod.rs"]
mod fuzz_support;

fuzz_target!(|data: &[u8]| {
    fuzz_support::push_decode(data);
});
