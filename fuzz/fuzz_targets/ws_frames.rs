//! A UA socket's bytes: raw frames read whole and in pieces, RFC 6455 client
//! scripts checked message by message against the size limit, and upgrade
//! requests, into `herald_net::websocket`.
//! The driver lives in `net/tests/fuzz_support/ws_frames.rs` and is shared with
//! the plain-Rust smoke test `net/tests/fuzz_smoke.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../net/tests/fuzz_support/mod.rs"]
mod fuzz_support;

fuzz_target!(|data: &[u8]| {
    fuzz_support::ws_frames::ws_frames(data);
});
