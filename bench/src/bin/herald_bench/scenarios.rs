//! The scenarios: each starts a fresh server per run, drives the worker
//! processes through their phases and turns their reports into figures.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use herald_bench::server::{Fsync, Stop};
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
    /// AS connections (keep-alive), each posting as soon as its previous
    /// pushes are answered.
    #[arg(long, default_value_t = 64)]
    pub pushers: usize,
    /// Requests each AS connection sends at once (pipelined HTTP/1.1) before
    /// it reads their answers; 1 = one at a time.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// When not 0: each AS connection speaks HTTP/2 (h2c) and keeps this
    /// many streams in flight (Web Push only).
    #[arg(long, default_value_t = 0)]
    pub http2_streams: usize,
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

/// Where a run's UAs connect and where its pushes go, over the nodes of
/// what is measured (a single server is node 0 for both).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Placement {
    /// Worker `i`'s UAs on node `i % nodes`, every worker's pushers spread
    /// over all nodes in turn: with 2 nodes (and an even number of workers
    /// and of pushers per worker) half the pushes reach the UA's own node
    /// and half cross to the other.
    Spread,
    /// Every UA on the last node, every push to the first: with 2 nodes
    /// every push crosses the node link.
    Cross,
}

impl Placement {
    fn ua_node(self, worker: usize, nodes: usize) -> usize {
        match self {
            Placement::Spread => worker % nodes,
            Placement::Cross => nodes - 1,
        }
    }

    fn push_nodes(self, nodes: usize) -> std::ops::Range<usize> {
        match self {
            Placement::Spread => 0..nodes,
            Placement::Cross => 0..1,
        }
    }
}

/// Worker `index`'s own source address: 127.0.0.10, .11, …
fn source(index: usize) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + index as u8)))
}

/// Worker `index` of `workers` in `role` against `server`, its UAs and
/// pushes placed by `placement`, holding its share of `uas`; the scenario
/// sets the rest of its shape.
fn worker(
    role: Role,
    index: usize,
    workers: usize,
    server: &UnderTest,
    placement: Placement,
    uas: usize,
) -> Spec {
    let nodes = server.nodes();
    Spec {
        role,
        id: index,
        ua: server.ua(placement.ua_node(index, nodes)),
        push_to: placement
            .push_nodes(nodes)
            .map(|node| server.push_to(node))
            .collect(),
        source: source(index),
        uas: share(uas, workers, index),
        pushers: 1,
        concurrency: 32,
        mix: Mix::Empty,
        seconds: 0.0,
        rate: 0.0,
        pipeline: 1,
        http2_streams: 0,
        messages: 0,
        retry_ms: 0,
        retry_max_ms: 0,
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

/// CPU seconds of the Redis processes behind `server` so far, if any.
fn redis_cpu_seconds(server: &UnderTest) -> Option<f64> {
    server.redis().map(crate::redis::cpu_seconds)
}

/// [`herald_bench::proc::machine_cpu_seconds`], zeros if /proc says nothing.
fn machine_cpu_seconds() -> (f64, f64) {
    herald_bench::proc::machine_cpu_seconds().unwrap_or_default()
}

/// CPU µs per event.
fn us_per(cpu_seconds: f64, events: u64) -> f64 {
    cpu_seconds * 1e6 / events.max(1) as f64
}

/// Reads the server's RSS once a second on a thread of its own, from
/// `start` until `stop`.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                samples.push(crate::server::rss_of(&pids));
                // A sampling period, not a wait for an event.
                std::thread::sleep(Duration::from_secs(1));
            }
            samples
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// One load run against a fresh `target`, placed by `placement`; `rate` 0 =
/// as fast as it answers.
pub fn load_run(
    target: Target,
    placement: Placement,
    shards: usize,
    args: &LoadArgs,
    rate: f64,
) -> Value {
    let server = UnderTest::start(target, shards);
    let workers = args.workers.max(1);
    let specs: Vec<Spec> = (0..workers)
        .map(|index| Spec {
            pushers: share(args.pushers, workers, index).max(1),
            mix: args.mix,
            seconds: args.seconds,
            rate: rate / workers as f64,
            pipeline: args.pipeline,
            http2_streams: args.http2_streams,
            ..worker(Role::Load, index, workers, &server, placement, args.uas)
        })
        .collect();
    let mut processes = Workers::spawn(&specs);
    let connected = processes.collect("connected");
    let cpu_before = server.cpu_seconds();
    let redis_cpu_before = redis_cpu_seconds(&server);
    let commands_before = server.redis().map(crate::redis::command_stats);
    let machine_before = machine_cpu_seconds();
    tell_start(&mut processes);
    let rss = RssSampler::start(server.pids());
    let done = processes.collect("done");
    let rss_timeline = rss.stop();
    let server_cpu = server.cpu_seconds() - cpu_before;
    let (machine_cpu, steal) = machine_cpu_seconds();
    let (machine_cpu, steal) = (machine_cpu - machine_before.0, steal - machine_before.1);
    let redis_cpu = redis_cpu_seconds(&server)
        .zip(redis_cpu_before)
        .map(|(after, before)| after - before);
    let commands_after = server.redis().map(crate::redis::command_stats);
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
    let generator_cpu: f64 = done
        .iter()
        .filter_map(|report| report["cpu_seconds"].as_f64())
        .sum();
    let mut figures = json!({
        "target": target.label(),
        "offered_per_s": rate,
        "uas": sum(&connected, "uas"),
        "accepted": accepted,
        "refused": sum(&done, "refused"),
        "refused_without_retry_after": sum(&done, "refused_without_retry_after"),
        // The server's resident memory once a second over the run.
        "rss_bytes_timeline": rss_timeline,
        "rss_bytes_max": rss_timeline.iter().max(),
        "delivered": delivered,
        "unmatched": sum(&done, "unmatched"),
        "accepted_per_s": accepted as f64 / args.seconds,
        "delivered_per_s": delivered as f64 / args.seconds,
        "to_ua": Percentiles::of(&to_ua),
        "as_answer": Percentiles::of(&as_answer),
        "server_cpu_s": server_cpu,
        "generator_cpu_s": generator_cpu,
        "server_us_per_notification": us_per(server_cpu, delivered),
        "generator_us_per_notification": us_per(generator_cpu, delivered),
        // Everything on the machine over the same window; what the server,
        // Redis and the generator do not account for ran beside them
        // (other builds on a shared machine, the kernel's own threads).
        "machine_cpu_s": machine_cpu,
        "steal_s": steal,
        "other_cpu_s": machine_cpu - server_cpu - redis_cpu.unwrap_or(0.0) - generator_cpu,
        "delivered_per_s_timeline": timeline.iter().map(|count| *count as f64 * per_second).collect::<Vec<_>>(),
    });
    if let Some(redis_cpu) = redis_cpu {
        figures["redis_cpu_s"] = json!(redis_cpu);
        figures["redis_us_per_notification"] = json!(us_per(redis_cpu, delivered));
    }
    if let (Some(before), Some(after)) = (commands_before, commands_after) {
        let commands = crate::redis::commands_per(&before, &after, delivered);
        figures["redis_commands_per_notification"] = json!(commands);
    }
    figures
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
    /// Pushes each UA gets and acks after the first measurement; the
    /// server's memory is measured again after them, the UAs still idle.
    #[arg(long, default_value_t = 3)]
    pub messages: usize,
}

/// N UAs connect, hello, register and stay idle: the server's RSS per UA over
/// its empty baseline, the connect + hello + register rate, that every UA
/// still gets its notifications afterwards, and the RSS per UA once more
/// after them (the UAs idle again). Against a cluster (UAs spread
/// over its nodes), Redis memory per UA as well.
pub fn idle_run(target: Target, shards: usize, args: &IdleArgs) -> Value {
    let server = UnderTest::start(target, shards);
    let baseline = server.rss_bytes();
    let redis_baseline = server.redis().map(crate::redis::used_memory);
    let stats_baseline = server.redis().map(crate::redis::memory_stats);
    let workers = args.workers.max(1);
    let specs: Vec<Spec> = (0..workers)
        .map(|index| Spec {
            pushers: 16,
            concurrency: args.concurrency,
            messages: args.messages,
            ..worker(
                Role::Idle,
                index,
                workers,
                &server,
                Placement::Spread,
                args.uas,
            )
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
    let redis_loaded = server.redis().map(crate::redis::used_memory);
    let one_ua = server.redis().and_then(crate::redis::one_ua_bytes);
    let stats_loaded = server.redis().map(crate::redis::memory_stats);
    processes.tell(&json!({"verify": true}));
    let done = processes.collect("done");
    std::thread::sleep(Duration::from_secs(1));
    let after_messages = server.rss_bytes();
    processes.finish();
    server.stop();
    let uas = sum(&connected, "uas");
    let connect_s = span_s(&connected, "connect_start_us", "connect_end_us");
    let mut figures = json!({
        "target": target.label(),
        "uas": uas,
        "rss_empty_bytes": baseline,
        "rss_loaded_bytes": loaded,
        "rss_bytes_per_idle_ua": loaded.saturating_sub(baseline) as f64 / uas.max(1) as f64,
        "rss_after_messages_bytes": after_messages,
        // The same UAs idle again, after `messages` pushes each, acked.
        "rss_bytes_per_idle_ua_after_messages":
            after_messages.saturating_sub(baseline) as f64 / uas.max(1) as f64,
        "messages_per_ua": args.messages,
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
    });
    if let (Some(before), Some(after)) = (redis_baseline, redis_loaded) {
        let per_ua =
            |before: u64, after: u64| after.saturating_sub(before) as f64 / uas.max(1) as f64;
        figures["redis_used_memory_before"] = json!(before);
        figures["redis_used_memory_after"] = json!(after);
        figures["redis_masters_bytes_per_ua"] = json!(per_ua(before.masters, after.masters));
        // The same without buffers that do not grow with the UAs but do
        // grow during the run: Herald's connections to the masters open on
        // first use, the replication backlog fills as writes go through.
        figures["redis_masters_data_bytes_per_ua"] = json!(per_ua(
            before.masters.saturating_sub(before.masters_buffers),
            after.masters.saturating_sub(after.masters_buffers)
        ));
        figures["redis_all_nodes_bytes_per_ua"] = json!(per_ua(before.all, after.all));
        figures["redis_memory_usage_one_ua"] = json!(one_ua);
    }
    if let (Some(before), Some(after)) = (stats_baseline, stats_loaded) {
        // Where the masters' memory per UA went (keys, hash tables, data).
        let per_ua: serde_json::Map<String, Value> = after
            .iter()
            .map(|(field, value)| {
                let grown = value - before.get(field).copied().unwrap_or(0);
                (field.clone(), json!(grown as f64 / uas.max(1) as f64))
            })
            .filter(|(_, grown)| grown.as_f64() != Some(0.0))
            .collect();
        figures["redis_masters_memory_stats_per_ua"] = Value::Object(per_ua);
    }
    figures
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
            ..worker(
                Role::Stored,
                index,
                workers,
                &server,
                Placement::Spread,
                args.uas,
            )
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
        "server_us_per_message": us_per(server_cpu, delivered),
    })
}

#[derive(clap::Args, Clone, Debug)]
pub struct RestartArgs {
    /// Idle UAs in all (one Herald process; each worker holds its share).
    #[arg(long, default_value_t = 19_000)]
    pub uas: usize,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Connections being set up at once, per worker, before the restart
    /// (the reconnects after it are not held back: every UA is on its own).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How the server is stopped, one set of runs each.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["term", "kill"])]
    pub stop: Vec<Stop>,
    /// A UA's first reconnect waits a random 0..this after its socket
    /// closed; each failed one a random half to all of this × 2^failures.
    #[arg(long, default_value_t = 50)]
    pub retry_ms: u64,
    /// The longest wait between two reconnects of one UA.
    #[arg(long, default_value_t = 500)]
    pub retry_max_ms: u64,
}

/// N UAs connect, hello, register one channel and stay idle; the server is
/// stopped (`stop`) and started again on the same data dir and ports, and
/// every UA reconnects with its UAID as soon as it notices its socket
/// closed: how long until the server is ready, how long from ready until
/// every UA is back, what each reconnect costs the server, what failed on
/// the way, and that every UA still gets a push afterwards.
pub fn restart_run(fsync: Fsync, stop: Stop, shards: usize, args: &RestartArgs) -> Value {
    let target = Target::Herald { fsync };
    let mut server = UnderTest::start(target, shards);
    let workers = args.workers.max(1);
    let specs: Vec<Spec> = (0..workers)
        .map(|index| Spec {
            pushers: 16,
            concurrency: args.concurrency,
            messages: 1,
            retry_ms: args.retry_ms,
            retry_max_ms: args.retry_max_ms.max(args.retry_ms),
            ..worker(
                Role::Restart,
                index,
                workers,
                &server,
                Placement::Spread,
                args.uas,
            )
        })
        .collect();
    let mut processes = Workers::spawn(&specs);
    let connected = processes.collect("connected");
    let drops_before = herald_bench::proc::listen_drops();
    let restarted = server.restart(stop);
    let cpu_at_ready = server.cpu_seconds();
    let back = processes.collect("back");
    let server_cpu = server.cpu_seconds() - cpu_at_ready;
    let listen_drops = herald_bench::proc::listen_drops()
        .zip(drops_before)
        .map(|(after, before)| after.saturating_sub(before));
    processes.tell(&json!({"verify": true}));
    let done = processes.collect("done");
    processes.finish();
    server.stop();

    let mut back_us: Vec<u64> = back
        .iter()
        .flat_map(|report| report["back_us"].as_array().cloned().unwrap_or_default())
        .filter_map(|at| at.as_u64())
        .collect();
    back_us.sort_unstable();
    let uas = sum(&connected, "uas");
    let came_back = back_us.len() as u64;
    let ready_us = restarted.ready_us;
    let since_ready_s = |at: u64| at.saturating_sub(ready_us) as f64 / 1e6;
    let all_back_s = back_us.last().map_or(f64::NAN, |last| since_ready_s(*last));
    // UAs back by the end of each bucket after ready (a hello answered
    // before the orchestrator saw /health counts in the first).
    let buckets = back_us.last().map_or(0, |last| {
        last.saturating_sub(ready_us) / TIMELINE_BUCKET_US + 1
    });
    let mut timeline = Vec::new();
    let mut counted = 0;
    for bucket in 0..buckets {
        let end = ready_us + (bucket + 1) * TIMELINE_BUCKET_US;
        counted += back_us[counted..]
            .iter()
            .take_while(|at| **at < end)
            .count();
        timeline.push(counted);
    }
    let first_closed = back
        .iter()
        .filter_map(|report| report["first_closed_us"].as_u64())
        .min()
        .unwrap_or(restarted.stopped_us);
    let last_closed = back
        .iter()
        .filter_map(|report| report["last_closed_us"].as_u64())
        .max()
        .unwrap_or(first_closed);
    let since_stop_s = |at: u64| at.saturating_sub(restarted.stopped_us) as f64 / 1e6;
    json!({
        "target": format!("{}, {}", target.label(), stop.as_str()),
        "stop": stop.as_str(),
        "uas": uas,
        "back": came_back,
        // The old process: from the signal until it had exited.
        "stop_s": restarted.stop_s,
        // The new process: from its start until /health answered 200
        // (every shard has replayed its log and accepts).
        "ready_s": restarted.ready_us.saturating_sub(restarted.launched_us) as f64 / 1e6,
        // When the UAs noticed their sockets closed, from the signal.
        "first_closed_s": since_stop_s(first_closed),
        "last_closed_s": since_stop_s(last_closed),
        "ready_after_stop_s": since_stop_s(ready_us),
        // From the first UA socket closed until the server was ready again.
        "outage_s": ready_us.saturating_sub(first_closed) as f64 / 1e6,
        "all_back_after_ready_s": all_back_s,
        // The whole storm as the UAs' owners see it: from the signal until
        // the last UA was back.
        "all_back_after_stop_s": back_us.last().map_or(f64::NAN, |last| since_stop_s(*last)),
        "half_back_after_ready_s": back_us
            .get(back_us.len() / 2)
            .map_or(f64::NAN, |at| since_ready_s(*at)),
        "reconnects_per_s": came_back as f64 / all_back_s.max(1e-6),
        "server_cpu_s": server_cpu,
        "server_us_per_reconnect": us_per(server_cpu, came_back),
        "attempts": sum(&back, "attempts"),
        "attempts_down": sum(&back, "down"),
        "attempts_refused": sum(&back, "refused"),
        "attempts_dropped": sum(&back, "dropped"),
        "lost": sum(&back, "lost"),
        // Connection attempts the kernel dropped at a listener meanwhile
        // (machine-wide): each costs its client a SYN retransmission.
        "listen_drops": listen_drops,
        "verified": sum(&done, "verified"),
        "uas_back_timeline": timeline,
    })
}
