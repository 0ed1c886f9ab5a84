//! WAL record bodies, and logs built from fuzz-chosen records then damaged
//! (flips, cuts, forged headers), into `herald_store`'s decoder and recovery:
//! errors, never panics, never an allocation past the record limit.
//! The driver lives in `net/tests/fuzz_support/wal_records.rs` and is shared with
//! the plain-Rust smoke test `net/tests/fuzz_smoke.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../net/tests/fuzz_support/mod.rs"]
mod fuzz_support;

// The driver measures its largest allocation.
#[global_allocator]
static ALLOCATOR: fuzz_support::peak_alloc::PeakAlloc = fuzz_support::peak_alloc::PeakAlloc;

fuzz_target!(|data: &[u8]| {
    fuzz_support::wal_records::wal_records(data);
});
