//! Untrusted strings, and minted-then-altered identities, into the UAID,
//! endpoint token, message id, channel id and app url token openers.
//! The driver lives in `net/tests/fuzz_support/tokens.rs` and is shared with
//! the plain-Rust smoke test `net/tests/fuzz_smoke.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../net/tests/fuzz_support/mod.rs"]
mod fuzz_support;

fuzz_target!(|data: &[u8]| {
    fuzz_support::tokens::tokens(data);
});
