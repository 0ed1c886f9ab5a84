//! `herald-bench cluster` (issue 11): Herald nodes on a Redis Cluster, each
//! run against a fresh nine-node Redis Cluster and fresh nodes.
//!
//! - throughput with 1 node, with 2 nodes (UAs and pushes spread over both:
//!   half the pushes cross), and with 2 nodes in the worst case (UAs all on
//!   node B, pushes all to node A: every push crosses);
//! - AS→UA latency at `--percent` of the 2-node peak, both placements;
//! - CPU per notification: Herald's nodes, the nine redis-server processes,
//!   the generator;
//! - Redis memory per registered UA with one channel (`--memory-uas` UAs
//!   connect, hello and register, spread over 2 nodes).
//!
//! Runs of the throughput targets are interleaved (1 node, 2 nodes, cross,
//! 1 node, …) like the fsync modes of the other scenarios.

use serde_json::{json, Value};

use crate::scenarios::{self, IdleArgs, LoadArgs, Placement};
use crate::server::Target;
use crate::Cli;

/// The targets.
const DURABLE_PER_S_MIN: f64 = 25_000.0;
const P99_MS_MAX: f64 = 5.0;
const BYTES_PER_UA_MAX: f64 = 600.0;

/// Generator processes holding the memory runs' UAs (each process stays
/// under its descriptor cap up to ~18,000 UAs per worker).
const MEMORY_WORKERS: usize = 4;
/// Connections being set up at once per memory worker (as `idle`).
const MEMORY_CONCURRENCY: usize = 64;

#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    /// The load runs' shape (use an even number of workers: they are split
    /// over the nodes).
    #[command(flatten)]
    pub load: LoadArgs,
    /// Offered load of the latency runs, in percent of the 2-node peak.
    #[arg(long, default_value_t = 50.0)]
    pub percent: f64,
    /// The 2-node peak (notifications/s) for the latency runs; default: the
    /// median of this invocation's 2-node throughput runs.
    #[arg(long)]
    pub peak: Option<f64>,
    /// Registered UAs (one channel each) of the Redis memory runs.
    #[arg(long, default_value_t = 10_000)]
    pub memory_uas: usize,
}

const ONE: (Target, Placement) = (Target::Cluster { nodes: 1 }, Placement::Spread);
const SPLIT: (Target, Placement) = (Target::Cluster { nodes: 2 }, Placement::Spread);
const CROSS: (Target, Placement) = (Target::Cluster { nodes: 2 }, Placement::Cross);

fn label((target, placement): (Target, Placement)) -> String {
    match (target, placement) {
        (Target::Cluster { nodes: 1 }, _) => target.label(),
        (_, Placement::Spread) => format!("{}, half the pushes cross", target.label()),
        (_, Placement::Cross) => format!("{}, every push crosses", target.label()),
    }
}

const FIGURES: [&str; 24] = [
    "delivered_per_s",
    "accepted_per_s",
    "to_ua.p50_ms",
    "to_ua.p99_ms",
    "to_ua.p999_ms",
    "as_answer.p50_ms",
    "as_answer.p99_ms",
    "server_us_per_notification",
    "redis_us_per_notification",
    "generator_us_per_notification",
    "server_cpu_s",
    "redis_cpu_s",
    "generator_cpu_s",
    "other_cpu_s",
    "steal_s",
    "refused",
    "redis_masters_bytes_per_ua",
    "redis_masters_data_bytes_per_ua",
    "redis_all_nodes_bytes_per_ua",
    "redis_memory_usage_one_ua",
    "connects_per_s",
    "server_us_per_connect",
    "rss_bytes_per_idle_ua",
    "verified",
];

pub fn run(cli: &Cli, args: &ClusterArgs) {
    println!(
        "--fsync does not apply to cluster mode: a 2xx waits for Redis replicas \
         (WAIT, `[cluster] replicas` = 1, Herald's default), not for a local disk"
    );
    let mut runs = Vec::new();
    for run in 1..=cli.runs {
        for placed in [ONE, SPLIT, CROSS] {
            runs.push(one_run(cli, &args.load, placed, 0.0, run));
        }
    }
    let split = label(SPLIT);
    let peak = args.peak.unwrap_or_else(|| {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|run| run["target"] == split.as_str())
            .filter_map(|run| run["delivered_per_s"].as_f64())
            .collect();
        herald_bench::stats::median(&rates)
    });
    let rate = peak * args.percent / 100.0;
    for run in 1..=cli.runs {
        for placed in [SPLIT, CROSS] {
            let mut figures = one_run(cli, &args.load, placed, rate, run);
            figures["load_percent"] = json!(args.percent);
            runs.push(figures);
        }
    }
    let idle = IdleArgs {
        uas: args.memory_uas,
        workers: MEMORY_WORKERS,
        concurrency: MEMORY_CONCURRENCY,
        messages: 1,
    };
    for run in 1..=cli.runs {
        let mut figures = scenarios::idle_run(SPLIT.0, cli.shards, &idle);
        figures["target"] = json!(format!(
            "{}, {} registered UAs",
            SPLIT.0.label(),
            args.memory_uas
        ));
        figures["run"] = json!(run);
        eprintln!("{figures}");
        runs.push(figures);
    }
    let mut params = crate::load_params(&args.load);
    params["fsync"] = json!("does not apply: durability is Redis WAIT, replicas = 1");
    params["percent"] = json!(args.percent);
    params["peak_per_s"] = json!(peak);
    params["memory_uas"] = json!(args.memory_uas);
    params["redis"] = json!("9 redis-server nodes, 3 DCs, 3 masters × 2 replicas, no persistence");
    crate::finish_with(cli, "cluster", params, runs, &FIGURES, |summary| {
        derived(summary, args, rate)
    });
    crate::plot::draw_cluster(&cli.out);
}

/// One load run of `placed`, labelled for the summary; `rate` 0 = closed loop.
fn one_run(
    cli: &Cli,
    load: &LoadArgs,
    placed: (Target, Placement),
    rate: f64,
    run: usize,
) -> Value {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut figures = scenarios::load_run(placed.0, placed.1, cli.shards, load, rate);
    figures["target"] = json!(if rate > 0.0 {
        format!("{} @ {rate:.0}/s", label(placed))
    } else {
        label(placed)
    });
    figures["run"] = json!(run);
    figures["loadavg_before"] = json!(loadavg.trim());
    eprintln!(
        "{}: run {run}: {:.0}/s delivered, p99 {} ms",
        figures["target"],
        figures["delivered_per_s"].as_f64().unwrap_or(0.0),
        figures["to_ua"]["p99_ms"]
    );
    figures
}

/// Ratios of the 2-node figures to the 1-node ones, and each of the issue's
/// targets against its median; printed and returned for the JSON.
fn derived(summary: &Value, args: &ClusterArgs, rate: f64) -> Value {
    let median = |target: &str, figure: &str| summary[target][figure]["median"].as_f64();
    let one = label(ONE);
    let ratio = |target: &str, figure: &str| -> Option<f64> {
        Some(median(target, figure)? / median(&one, figure)?)
    };
    let split = label(SPLIT);
    let cross = label(CROSS);
    let paced = format!("{cross} @ {rate:.0}/s");
    let memory = format!("{}, {} registered UAs", SPLIT.0.label(), args.memory_uas);
    let ratios = json!({
        "split_over_one": {
            "delivered_per_s": ratio(&split, "delivered_per_s"),
            "server_us_per_notification": ratio(&split, "server_us_per_notification"),
            "redis_us_per_notification": ratio(&split, "redis_us_per_notification"),
        },
        "cross_over_one": {
            "delivered_per_s": ratio(&cross, "delivered_per_s"),
            "server_us_per_notification": ratio(&cross, "server_us_per_notification"),
            "redis_us_per_notification": ratio(&cross, "redis_us_per_notification"),
        },
    });
    let targets = json!([
        check(
            "durable notifications/s, 2 nodes",
            median(&split, "delivered_per_s"),
            DURABLE_PER_S_MIN,
            true
        ),
        check(
            &format!(
                "AS→UA p99 ms at {} % of the 2-node peak, every push crossing",
                args.percent
            ),
            median(&paced, "to_ua.p99_ms"),
            P99_MS_MAX,
            false
        ),
        check(
            "Redis bytes per registered UA with one channel (masters)",
            median(&memory, "redis_masters_bytes_per_ua"),
            BYTES_PER_UA_MAX,
            false
        ),
    ]);
    println!("2 nodes / 1 node: {ratios}");
    for target in targets.as_array().into_iter().flatten() {
        println!("target: {target}");
    }
    json!({"ratios": ratios, "targets": targets})
}

/// `measured` against a bound (`at_least`: a floor, else a ceiling).
fn check(what: &str, measured: Option<f64>, bound: f64, at_least: bool) -> Value {
    let met = measured.map(|value| {
        if at_least {
            value >= bound
        } else {
            value <= bound
        }
    });
    json!({
        "what": what,
        "measured_median": measured,
        "target": if at_least { format!(">= {bound}") } else { format!("<= {bound}") },
        "met": met,
        "measured_over_target": measured.map(|value| value / bound),
    })
}
