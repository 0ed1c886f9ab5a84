//! The scenarios: each starts a fresh server per run, drives the worker
//! processes through their phases and turns their reports into figures.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{json, Value};

use herald_bench::server::Fsync;
use herald_bench::stats::{merge_histogram, new_histogram, now_us, Percentiles};

use crate::server::{Target, UnderTest};
use crate::worker::{Mix, Role, Spec, TIMELINE_BUCKET_US};
use crate::workers::Workers;

/// How far ahead of "now" the workers are told to start, so that all of
/// them start together.
const START_AHEAD: Duration = Duration::from_millis(200);

/// The shape of a load run (throughput, latency, floor).
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Connected UAs, each with one channel.
    #[arg(long, default_value_t = 1000)]
    pub uas: usize,
    /// AS connections (keep-alive), each posting as soon as its previous push is answered.
    #[arg(long, default_value_t = 64)]
    pub pushers: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Generator processes (the UAs and pushers are split between them).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// What is pushed.
    #[arg(long, value_enum, default_value_t = Mix::All)]
    pub mix: Mix,
}

/// Worker `index`'s own source address: 127.0.0.10, .11, …
fn source(index: usize) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + index as u8)))
}

/// Worker `index` of `workers` in `role` against `server`, holding its share
/// of `uas`; the scenario sets the rest of its shape.
fn worker(role: Role, index: usize, workers: usize, server: &UnderTest, uas: usize) -> Spec {
    Spec {
        role,
        id: index,
        ua: server.ua(),
        push_to: server.push_to(),
        source: source(index),
        uas: share(uas, workers, index),
        pushers: 1,
        concurrency: 32,
        mix: Mix::Empty,
        seconds: 0.0,
        rate: 0.0,
        messages: 0,
    }
}

/// Splits `total` as evenly as possible over `parts`.
fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

fn tell_start(workers: &mut Workers) -> u64 {
    let start_us = now_us() + START_AHEAD.as_micros() as u64;
    workers.tell(&json!({"start_us": start_us}));
    start_us
}

fn sum(reports: &[Value], key: &str) -> u64 {
    reports
        .iter()
        .filter_map(|report| report[key].as_u64())
        .sum()
}

/// Seconds from the earliest `start` (µs) to the latest `end` (µs) of the
/// workers' reports: a phase as all workers together took it.
fn span_s(reports: &[Value], start: &str, end: &str) -> f64 {
    let first = reports
        .iter()
        .filter_map(|report| report[start].as_u64())
        .min();
    let last = reports
        .iter()
        .filter_map(|report| report[end].as_u64())
        .max();
    last.unwrap_or(0).saturating_sub(first.unwrap_or(0)) as f64 / 1e6
}

/// One load run against a fresh server; `rate` 0 = as fast as it answers.
pub fn load_run(target: Target, shards: usize, args: &LoadArgs, rate: f64) -> Value {
    let server = UnderTest::start(target, shards);
    let workers = args.workers.max(1);
    let specs: Vec<Spec> = (0..workers)
        .map(|index| Spec {
            pushers: share(args.pushers, workers, index).max(1),
            mix: args.mix,
            seconds: args.seconds,
            rate: rate / workers as f64,
            ..worker(Role::Load, index, workers, &server, args.uas)
        })
        .collect();
    let mut processes = Workers::spawn(&specs);
    let connected = processes.collect("connected");
    let cpu_before = server.cpu_seconds();
    tell_start(&mut processes);
    let done = processes.collect("done");
    let server_cpu = server.cpu_seconds() - cpu_before;
    processes.finish();
    server.stop();

    let mut to_ua = new_histogram();
    let mut as_answer = new_histogram();
    let mut timeline: Vec<u64> = Vec::new();
    for report in &done {
        merge_histogram(&mut to_ua, report["to_ua"].as_str().unwrap_or_default());
        merge_histogram(
            &mut as_answer,
            report["as_answer"].as_str().unwrap_or_default(),
        );
        for (bucket, count) in report["timeline"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if timeline.len() <= bucket {
                timeline.resize(bucket + 1, 0);
            }
            timeline[bucket] += count.as_u64().unwrap_or(0);
        }
    }
    let per_second = 1e6 / TIMELINE_BUCKET_US as f64;
    let delivered = sum(&done, "delivered");
    let accepted = sum(&done, "accepted");
    json!({
        "target": target.label(),
        "offered_per_s": rate,
        "uas": sum(&connected, "uas"),
        "accepted": accepted,
        "refused": sum(&done, "refused"),
        "delivered": delivered,
        "unmatched": sum(&done, "unmatched"),
        "accepted_per_s": accepted as f64 / args.seconds,
        "delivered_per_s": delivered as f64 / args.seconds,
        "to_ua": Percentiles::of(&to_ua),
        "as_answer": Percentiles::of(&as_answer),
        "server_cpu_s": server_cpu,
        "generator_cpu_s": done.iter().filter_map(|report| report["cpu_seconds"].as_f64()).sum::<f64>(),
        "delivered_per_s_timeline": timeline.iter().map(|count| *count as f64 * per_second).collect::<Vec<_>>(),
    })
}

#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    /// Idle UAs in all (one Herald process; each worker holds its share).
    #[arg(long, default_value_t = 19_000)]
    pub uas: usize,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Connections being set up at once, per worker.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// N UAs connect, hello, register and stay idle: the server's RSS per UA over
/// its empty baseline, the connect + hello + register rate, and that every
/// UA still gets a notification afterwards.
pub fn idle_run(fsync: Fsync, shards: usize, args: &IdleArgs) -> Value {
    let server = UnderTest::start(Target::Herald { fsync }, shards);
    let baseline = server.rss_bytes();
    let workers = args.workers.max(1);
    let specs: Vec<Spec> = (0..workers)
        .map(|index| Spec {
            pushers: 16,
            concurrency: args.concurrency,
            ..worker(Role::Idle, index, workers, &server, args.uas)
        })
        .collect();
    let cpu_before = server.cpu_seconds();
    let mut processes = Workers::spawn(&specs);
    let connected = processes.collect("connected");
    let server_connect_cpu = server.cpu_seconds() - cpu_before;
    // Let the shards finish what the last registrations started (timers,
    // WAL batches) before reading the figure.
    std::thread::sleep(Duration::from_secs(1));
    let loaded = server.rss_bytes();
    processes.tell(&json!({"verify": true}));
    let done = processes.collect("done");
    processes.finish();
    server.stop();
    let uas = sum(&connected, "uas");
    let connect_s = span_s(&connected, "connect_start_us", "connect_end_us");
    json!({
        "target": Target::Herald { fsync }.label(),
        "uas": uas,
        "rss_empty_bytes": baseline,
        "rss_loaded_bytes": loaded,
        "rss_bytes_per_idle_ua": loaded.saturating_sub(baseline) as f64 / uas.max(1) as f64,
        "connects_per_s": uas as f64 / connect_s.max(1e-6),
        // CPU per connect + hello + register, on each side of the socket.
        "server_us_per_connect": server_connect_cpu * 1e6 / uas.max(1) as f64,
        "generator_us_per_connect": connected
            .iter()
            .filter_map(|report| report["cpu_seconds"].as_f64())
            .sum::<f64>()
            * 1e6
            / uas.max(1) as f64,
        "verified": sum(&done, "verified"),
    })
}

#[derive(clap::Args, Clone, Debug)]
pub struct StoredArgs {
    /// UAs that register, leave, and reconnect all at once.
    #[arg(long, default_value_t = 2000)]
    pub uas: usize,
    /// Messages stored per UA while it is away (at most Herald's pending limit, 1000).
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    #[arg(long, default_value_t = 64)]
    pub pushers: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Reconnections in flight at once, per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

/// UAs register and go away, messages are stored for them, then they all
/// reconnect at once: how fast the stored messages are drained.
pub fn stored_run(fsync: Fsync, shards: usize, args: &StoredArgs) -> Value {
    let server = UnderTest::start(Target::Herald { fsync }, shards);
    let workers = args.workers.max(1);
    let specs: Vec<Spec> = (0..workers)
        .map(|index| Spec {
            pushers: share(args.pushers, workers, index).max(1),
            concurrency: args.concurrency,
            mix: Mix::Data,
            messages: args.messages,
            ..worker(Role::Stored, index, workers, &server, args.uas)
        })
        .collect();
    let mut processes = Workers::spawn(&specs);
    let connected = processes.collect("connected");
    processes.tell(&json!({"push": true}));
    let stored = processes.collect("stored");
    let cpu_before = server.cpu_seconds();
    let start_us = tell_start(&mut processes);
    let done = processes.collect("done");
    let server_cpu = server.cpu_seconds() - cpu_before;
    processes.finish();
    server.stop();
    let delivered = sum(&done, "delivered");
    let end_us = done
        .iter()
        .filter_map(|report| report["end_us"].as_u64())
        .max()
        .unwrap_or(start_us);
    let drain_s = (end_us.saturating_sub(start_us)) as f64 / 1e6;
    let push_s = span_s(&stored, "push_start_us", "push_end_us");
    let accepted = sum(&stored, "accepted");
    json!({
        "target": Target::Herald { fsync }.label(),
        "uas": sum(&connected, "uas"),
        "stored": accepted,
        "stored_per_s": accepted as f64 / push_s.max(1e-6),
        "delivered": delivered,
        "drain_s": drain_s,
        "drained_per_s": delivered as f64 / drain_s.max(1e-6),
        "server_cpu_s": server_cpu,
    })
}
