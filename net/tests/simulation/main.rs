//! A seeded simulation of whole shards: the real shard driver of every shard
//! over an in-memory log with a crash model (`MemLog`), in-memory rings and
//! virtual time, driven by many UAs and application servers and checked
//! step by step against a reference model of the spec (SPEC §3.1–3.4,
//! §4.1–4.2, §5, §7).
//!
//! Commands:
//! - CI: `cargo test --release -p herald-net --test simulation` runs
//!   `CI_SEEDS` seeds over 2–4 shards and `CI_ONE_SHARD_SEEDS` on one shard.
//! - Replay one seed (printed in every failure, with its test):
//!   `HERALD_SIM_SEED=<seed> cargo test --release -p herald-net --test simulation -- <test> --nocapture`
//!   (`HERALD_SIM_SEED=random` picks one from the clock).
//! - Many seeds: `HERALD_SIM_SEEDS=<n>` runs seeds 0..n, `HERALD_SIM_SEEDS=<a>..<b>`
//!   seeds a..b.
//! - `HERALD_SIM_STEPS=<n>` steps per seed (default `CI_STEPS`);
//!   `HERALD_SIM_TRACE=<n>` steps shown before a failure (default 40).
//!
//! The run: up to 24 UAs (Web Push or SimplePush sockets, some on a routed
//! mobile network for UDP wakeup) connect on random shards (hand-offs,
//! sometimes right behind a WebSocket ping whose pong is queued before the
//! hand-off), hello with or without their UAID and sometimes with
//! `channelIDs`, register (also again, also upper-case), unregister, ack
//! some of what they got, ping, hang up, reconnect (sometimes taking over a
//! live socket, sometimes switching mode). Application servers PUT
//! SimplePush versions (some not newer) and desktop bodies, POST Web Push
//! messages with random TTL (0 included), Topic, Urgency, body and `Prefer:
//! respond-async`, DELETE and GET `/m/<id>`, push to unregistered endpoints;
//! each request enters through a random shard, which sends it over the ring
//! to the owner and gets the answer back over the ring. The fake clock jumps
//! by 1 ms to 90 s (retries, expiry, 4774 sleeps).
//!
//! Durability: records are appended at once but become durable only when
//! the simulation commits: after each step all of them (a group commit),
//! those up to a random point (a commit that covered part of them), or none
//! yet; records never wait longer than `UNCOMMITTED_MS_MAX` of virtual time.
//! Now and then the process crashes — between a write and its fsync, in the
//! middle of a group commit, sometimes right after a compaction — keeping
//! each shard's durable records and a random prefix of the rest, and every
//! shard restarts by replay. AS answers and register/unregister replies may
//! therefore come steps later, or never.
//!
//! Invariants checked after every step:
//! 1. Every notification a socket receives is, for that socket's UAID, a
//!    message the model holds as pending (accepted, unexpired, unacked, not
//!    replaced/deleted/dropped/unregistered) or a TTL=0 message sent live: so
//!    nothing acked is re-sent and nothing reaches another UAID's socket.
//!    (Frames the shard queued behind a reply waiting for its record may name
//!    what was pending when they were queued.) Its form matches the socket.
//! 2. A connected UA has received every pending message on its current socket
//!    (so a pending message is delivered on the next hello); after a hello
//!    they come right after the reply, `high` urgency first; an unacked one is
//!    re-sent within each retry interval.
//! 3. The records the shards appended hold exactly the model's pending set
//!    and channels (with versions) per UA, and at most `pending_per_uaid_max`
//!    live messages (more only as a crash left them, see `ModelUa::over_limit`).
//! 4. SimplePush versions delivered on a channel never go backwards, also
//!    after a crash that kept a new version's record and lost the removal of
//!    the one it replaced (replay applies the collapse rules itself).
//! 5. AS answers match the model (200/201/202/204/404/410/503, `Location`,
//!    `TTL`), register replies are idempotent (429 at the limit), hello keeps
//!    a known UAID and lands the socket on the UAID's shard.
//! 6. Sockets close only as the spec says (1000 when a newer socket takes the
//!    UAID, 4774 for an idle wakeup UA with nothing in flight), nothing is
//!    sent after a close, and an asleep wakeup UA gets a wakeup for each
//!    message of normal or high urgency.
//! 7. A message is re-sent on a live socket about once per retry interval
//!    (messages that shared a wire token are exempt while they share it; the
//!    exemptions are counted and bounded).
//! 8. No reply leaves before its record is durable, checked against the
//!    logs' durable LSN at the moment of the answer, not the driver's gate:
//!    a 2xx reaching an AS needs the message's `MessageStored` durable (a
//!    DELETE's `MessageRemoved`, a not-newer version's newer record); a
//!    register reply reaching a UA its `ChannelRegistered`, an unregister
//!    reply its `ChannelUnregistered`. Once everything is durable no answer,
//!    reply or frame is still held.
//! 9. After a crash, what each shard replayed is exactly what its records
//!    said up to where the crash cut its log: nothing acknowledged (2xx) is
//!    lost unless removed by a durable record or expired; a message the AS
//!    never got an answer for may survive or not (the model learns which
//!    from the replayed log); a removal (ack, replace, delete...) that was not
//!    durable may be undone (at least once), one that was never is;
//!    registrations and unregistrations confirmed to the UA hold.
//!
//! At the end every shard is rebuilt from its log and every UA reconnects: it
//! must receive exactly its pending set and get its endpoints back. Each seed
//! must have crashed (losing records that were not durable), compacted,
//! handed off sockets and routed requests over the rings.

#[path = "../common/mod.rs"]
mod common;

mod checks;
mod model;
mod sim;
mod workload;

use std::time::{SystemTime, UNIX_EPOCH};

use model::Counters;
use sim::Sim;

/// Seeds CI runs over 2–4 shards, and over one shard.
const CI_SEEDS: u64 = 250;
const CI_ONE_SHARD_SEEDS: u64 = 50;
/// Steps per seed.
const CI_STEPS: usize = 500;
/// At most this many re-send counts per thousand deliveries may go
/// unchecked because messages shared a wire token.
const EXEMPTIONS_PER_MILLE_MAX: u64 = 10;

/// Which seeds to run: `HERALD_SIM_SEED` (one), `HERALD_SIM_SEEDS` (a
/// count or a range), else `0..default`.
fn seeds(default: u64) -> std::ops::Range<u64> {
    if let Ok(text) = std::env::var("HERALD_SIM_SEED") {
        let seed = match text.trim() {
            "random" => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                nanos ^ (nanos >> 29)
            }
            text => text.parse().unwrap_or_else(|_| {
                panic!("HERALD_SIM_SEED must be a u64 or `random`, got {text:?}")
            }),
        };
        return seed..seed + 1;
    }
    match std::env::var("HERALD_SIM_SEEDS") {
        Err(_) => 0..default,
        Ok(text) => {
            let parse = |part: &str| {
                part.trim().parse::<u64>().unwrap_or_else(|_| {
                    panic!("HERALD_SIM_SEEDS must be <n> or <a>..<b>, got {text:?}")
                })
            };
            match text.split_once("..") {
                Some((from, to)) => parse(from)..parse(to),
                None => 0..parse(&text),
            }
        }
    }
}

fn steps() -> usize {
    std::env::var("HERALD_SIM_STEPS")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(CI_STEPS)
}

/// One seed's run; asserts that what the run is for actually happened.
fn run_seed(seed: u64, shards: usize, test_name: &'static str) -> Counters {
    let steps = steps();
    let mut sim = Sim::new(seed, shards, test_name);
    sim.run(steps);
    let c = &sim.counters;
    eprintln!("seed={seed} shards={shards} steps={steps}: {c:?}");
    let mut required = vec![
        ("restarts", c.restarts),
        (
            "crashes that lost records not durable",
            c.crashes_losing_records,
        ),
        ("compactions", c.compactions),
    ];
    if shards > 1 {
        required.push(("hand-offs", c.hand_offs));
        required.push(("requests routed over a ring", c.ring_routed));
    }
    for (what, count) in required {
        if count == 0 {
            sim.fail(format!("the run had no {what}: {c:?}"));
        }
    }
    let bound = (c.deliveries * EXEMPTIONS_PER_MILLE_MAX / 1000).max(5);
    if c.exemptions > bound {
        sim.fail(format!(
            "{} re-send counts went unchecked (shared tokens), more than {bound}",
            c.exemptions
        ));
    }
    sim.counters
}

/// Runs the seeds on every core (every one, also after a failure, so that a
/// sweep names all failing seeds); asserts over the whole set that the
/// rarer crash outcomes happened somewhere.
fn run_seeds(default: u64, shards_of: fn(u64) -> usize, test_name: &'static str) {
    let seeds = seeds(default);
    let count = seeds.end.saturating_sub(seeds.start);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (total, mut failed) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    let mut total = Counters::default();
                    let mut failed = Vec::new();
                    for seed in seeds.skip(worker).step_by(threads) {
                        let run = || run_seed(seed, shards_of(seed), test_name);
                        // The panic message (seed, replay command) is printed
                        // as it happens.
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                            Ok(counters) => total.add(&counters),
                            Err(_) => failed.push(seed),
                        }
                    }
                    (total, failed)
                })
            })
            .collect();
        let mut total = Counters::default();
        let mut failed = Vec::new();
        for worker in workers {
            let (counters, seeds) = worker.join().expect("a worker catches its panics");
            total.add(&counters);
            failed.extend(seeds);
        }
        (total, failed)
    });
    failed.sort_unstable();
    assert!(
        failed.is_empty(),
        "{test_name}: {} of {count} seeds failed: {failed:?}",
        failed.len()
    );
    eprintln!("{test_name}: {count} seeds, totals {total:?}");
    // Over a CI-sized set of seeds, every kind of outcome shows up.
    if count >= 20 {
        let outcomes = [
            ("partial group commits", total.partial_commits),
            ("answers that waited for a commit", total.late_answers),
            (
                "requests a crash left unanswered",
                total.unanswered_at_crash,
            ),
            (
                "messages not durable that a crash kept",
                total.uncertain_kept,
            ),
            (
                "messages not durable that a crash lost",
                total.uncertain_lost,
            ),
            ("removals a crash undid", total.resurrected),
            ("collapsed on replay", total.collapsed_on_replay),
            ("UA replies that waited for a commit", total.held_ua_replies),
        ];
        let sharded = [
            ("refusals (too many answers awaited)", total.refused),
            (
                "pongs queued before a hand-off",
                total.pongs_before_hand_off,
            ),
        ];
        let sharded = if seeds.clone().any(|seed| shards_of(seed) > 1) {
            &sharded[..]
        } else {
            &[][..]
        };
        for &(what, n) in outcomes.iter().chain(sharded) {
            assert!(n > 0, "{test_name}: no {what} in {count} seeds: {total:?}");
        }
    }
}

#[test]
fn simulation_sharded() {
    run_seeds(
        CI_SEEDS,
        |seed| 2 + (seed % 3) as usize,
        "simulation_sharded",
    );
}

#[test]
fn simulation_one_shard() {
    run_seeds(CI_ONE_SHARD_SEEDS, |_| 1, "simulation_one_shard");
}
