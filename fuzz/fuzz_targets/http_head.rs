//! Raw and built HTTP request heads (duplicate/conflicting Content-Length,
//! Transfer-Encoding, bare LF) into `herald_net::http::parse_head`, the AS
//! listener's framing: no smuggling, a bounded buffer, re-parses the same.
//! The driver lives in `net/tests/fuzz_support/http_head.rs` and is shared with
//! the plain-Rust smoke test `net/tests/fuzz_smoke.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../net/tests/fuzz_support/mod.rs"]
mod fuzz_support;

fuzz_target!(|data: &[u8]| {
    fuzz_support::http_head::http_head(data);
});
