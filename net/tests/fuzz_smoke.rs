//! The fuzz targets' drivers (`fuzz_support`, shared with `fuzz/`) fed a few
//! thousand seeded random and mutated inputs, so CI catches panics without
//! cargo-fuzz or a nightly toolchain. Inputs that give a new outcome are kept
//! and mutated further.
//!
//! `HERALD_FUZZ_SEED=<u64>` replays a run (printed at the start and on
//! failure); `HERALD_FUZZ_ITERS=<n>` sets the inputs per target.

mod fuzz_support;

// The WAL driver measures its allocations.
#[global_allocator]
static ALLOCATOR: fuzz_support::peak_alloc::PeakAlloc = fuzz_support::peak_alloc::PeakAlloc;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seed() -> u64 {
    std::env::var("HERALD_FUZZ_SEED")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0x5eed_f022)
}

fn iterations(default: usize) -> usize {
    std::env::var("HERALD_FUZZ_ITERS")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(default)
}

const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\\u0000",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"null",
    b"true",
    b"-1",
    b"1e400",
    b"18446744073709551616",
    b"9223372036854775808",
    b"=",
    b"&",
    b"%",
];

fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        let len = out.len();
        match rng.gen_range(0..8) {
            0 if len > 0 => {
                let at = rng.gen_range(0..len);
                out[at] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let at = rng.gen_range(0..len);
                out[at] = rng.gen();
            }
            2 => {
                let at = rng.gen_range(0..=len);
                let extra: Vec<u8> = (0..rng.gen_range(1..8)).map(|_| rng.gen()).collect();
                out.splice(at..at, extra);
            }
            3 if len > 0 => {
                let start = rng.gen_range(0..len);
                let end = rng.gen_range(start..=len.min(start + 16));
                out.drain(start..end);
            }
            4 if len > 0 => {
                let start = rng.gen_range(0..len);
                let end = rng.gen_range(start..=len.min(start + 16));
                let copy = out[start..end].to_vec();
                let at = rng.gen_range(0..=out.len());
                out.splice(at..at, copy);
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.gen_range(0..corpus.len())];
                let cut = rng.gen_range(0..=out.len());
                let from = rng.gen_range(0..=other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            6 => {
                let at = rng.gen_range(0..=len);
                let token = INTERESTING[rng.gen_range(0..INTERESTING.len())];
                out.splice(at..at, token.iter().copied());
            }
            _ if len > 0 => out.truncate(rng.gen_range(0..len)),
            _ => out.push(rng.gen()),
        }
    }
    out.truncate(2048);
    out
}

fn smoke(name: &str, target: fn(&[u8]) -> u32, seeds: Vec<Vec<u8>>, default_iterations: usize) {
    let seed = seed();
    let iterations = iterations(default_iterations);
    eprintln!("fuzz smoke {name}: HERALD_FUZZ_SEED={seed} iterations={iterations}");
    let salt = name.bytes().fold(0u64, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let mut rng = StdRng::seed_from_u64(seed ^ salt);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut outcomes = BTreeSet::new();
    let run = |input: &[u8], iteration: usize| -> u32 {
        catch_unwind(AssertUnwindSafe(|| target(input))).unwrap_or_else(|_| {
            panic!(
                "fuzz smoke {name} panicked on iteration {iteration} \
                 (HERALD_FUZZ_SEED={seed}); input bytes: {input:?}; as text: {:?}",
                String::from_utf8_lossy(input)
            )
        })
    };
    for input in seeds {
        outcomes.insert(run(&input, 0));
        corpus.push(input);
    }
    for iteration in 1..=iterations {
        let input = if corpus.is_empty() || rng.gen_bool(0.25) {
            let len = rng.gen_range(0..256);
            (0..len).map(|_| rng.gen()).collect()
        } else {
            let base = corpus[rng.gen_range(0..corpus.len())].clone();
            mutate(&mut rng, &corpus, &base)
        };
        if outcomes.insert(run(&input, iteration)) {
            corpus.push(input);
        }
    }
    eprintln!(
        "fuzz smoke {name}: {} distinct outcomes {outcomes:?}, corpus {}",
        outcomes.len(),
        corpus.len()
    );
    assert!(
        outcomes.len() > 3,
        "{name}: the inputs hardly reach the code"
    );
}

#[test]
fn ua_parse_never_panics() {
    let seeds = [
        r#"{"messageType":"hello","broadcasts":{},"use_webpush":true}"#,
        r#"{"messageType":"hello","uaid":"0123456789abcdef0123456789abcdef","channelIDs":["a"],
           "wakeup_hostport":{"ip":"10.1.2.3","port":5000},"mobilenetwork":{"mcc":"214","mnc":"07","netid":"x"}}"#,
        r#"{"messageType":"register","channelID":"00000000-0000-4000-8000-000000000001","key":"BAAA"}"#,
        r#"{"messageType":"unregister","channelID":"x"}"#,
        r#"{"messageType":"ack","updates":[{"channelID":"a","version":"x","code":100},{"channelID":"b","version":7}]}"#,
        r#"{"messageType":"nack","version":"x","code":301}"#,
        r#"{"messageType":"ping"}"#,
        r#"{"messageType":"broadcast_subscribe","broadcasts":{"a":"v"}}"#,
        "{}",
        "PING",
    ];
    smoke(
        "ua_parse",
        fuzz_support::ua_parse,
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
        20_000,
    );
}

#[test]
fn push_decode_never_panics() {
    smoke("push_decode", fuzz_support::push_decode, Vec::new(), 10_000);
}

#[test]
fn shard_never_panics_on_arbitrary_frames() {
    smoke(
        "shard_frames",
        fuzz_support::shard_frames,
        Vec::new(),
        4_000,
    );
}

#[test]
fn http_head_never_panics_or_smuggles() {
    smoke(
        "http_head",
        fuzz_support::http_head::http_head,
        fuzz_support::http_head::seeds(),
        50_000,
    );
}

#[test]
fn ws_frames_never_panic_and_give_back_the_messages() {
    smoke(
        "ws_frames",
        fuzz_support::ws_frames::ws_frames,
        fuzz_support::ws_frames::seeds(),
        20_000,
    );
}

#[test]
fn wal_records_never_panic_or_allocate_past_the_limit() {
    smoke(
        "wal_records",
        fuzz_support::wal_records::wal_records,
        fuzz_support::wal_records::seeds(),
        10_000,
    );
}

#[test]
fn tokens_open_only_what_was_minted() {
    smoke(
        "tokens",
        fuzz_support::tokens::tokens,
        fuzz_support::tokens::seeds(),
        20_000,
    );
}
