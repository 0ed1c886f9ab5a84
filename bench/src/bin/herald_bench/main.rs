//! `herald-bench`: Herald's benchmark harness. Each scenario starts a fresh
//! server per run (Herald with `--fsync batch` and `never`, or the floor
//! server), drives it from several generator processes (`worker`, below) on
//! the same machine, prints a summary and writes every run's figures as JSON
//! to `bench/results/<scenario>.json`; `plot` draws the figures from those.
//!
//! ```text
//! cargo build --release -p herald -p herald-bench
//! target/release/herald-bench all            # every scenario, 3 runs each
//! target/release/herald-bench throughput --runs 3 --fsync batch,never
//! target/release/herald-bench cluster --runs 3     # needs redis-server
//! ```
//! Everything talks to 127.0.0.1 only and every run is bounded in time.

mod cluster;
mod plot;
mod redis;
mod scenarios;
mod server;
mod worker;
mod workers;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use herald_bench::server::{Fsync, Stop};
use herald_bench::stats::Spread;
use serde_json::{json, Value};

use scenarios::{IdleArgs, LoadArgs, Placement, RestartArgs, StoredArgs};
use server::Target;

#[derive(Parser)]
#[command(about = "Herald's benchmark harness (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// `--fsync` modes to measure Herald with.
    #[arg(long, global = true, value_enum, value_delimiter = ',', default_values = ["batch", "never"])]
    fsync: Vec<Fsync>,
    /// Runs per figure (each against a fresh server); summaries are medians.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Server shards (threads).
    #[arg(long, global = true, default_value_t = 2)]
    shards: usize,
    /// Where the JSON results go.
    #[arg(long, global = true, default_value = "bench/results")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Idle UAs: server RSS per UA, connect + hello + register rate.
    Idle(IdleArgs),
    /// Connected UAs, pushers as fast as the server answers.
    Throughput(LoadArgs),
    /// Latency at fixed offered loads, as percentages of the measured peak.
    Latency {
        #[command(flatten)]
        load: LoadArgs,
        /// Offered loads in percent of the peak.
        #[arg(long, value_delimiter = ',', default_values = ["10", "50", "90"])]
        percents: Vec<f64>,
        /// The peak in notifications/s; default: the throughput results' median.
        #[arg(long)]
        peak: Option<f64>,
    },
    /// Stored messages drained by a reconnect storm.
    Stored(StoredArgs),
    /// Idle UAs, the server restarted under them: ready time, time until
    /// every UA is back, server CPU per reconnect.
    Restart(RestartArgs),
    /// The throughput scenario against the floor server (no protocol, no storage).
    Floor(LoadArgs),
    /// Cluster mode on fresh nine-node Redis Clusters: 1 node against 2,
    /// cross-node latency, Redis CPU per notification and memory per UA.
    Cluster(cluster::ClusterArgs),
    /// Every scenario but `cluster` with its defaults, then the plots.
    All,
    /// Draws the plots from the JSON results.
    Plot,
    /// A generator process (started by the scenarios).
    #[command(hide = true)]
    Worker { spec: String },
}

fn main() {
    let cli = Cli::parse();
    match &cli.command {
        Command::Worker { spec } => {
            worker::run(serde_json::from_str(spec).expect("worker spec (JSON)"))
        }
        Command::Idle(args) => idle(&cli, args),
        Command::Throughput(args) => throughput(&cli, args),
        Command::Latency {
            load,
            percents,
            peak,
        } => latency(&cli, load, percents, *peak),
        Command::Stored(args) => stored(&cli, args),
        Command::Restart(args) => restart(&cli, args),
        Command::Floor(args) => floor(&cli, args),
        Command::Cluster(args) => cluster::run(&cli, args),
        Command::Plot => plot::draw(&cli.out),
        Command::All => {
            let load = LoadArgs {
                uas: 1000,
                pushers: 64,
                pipeline: 1,
                http2_streams: 0,
                seconds: 10.0,
                workers: 2,
                mix: worker::Mix::All,
            };
            throughput(&cli, &load);
            floor(&cli, &load);
            latency(&cli, &load, &[10.0, 50.0, 90.0], None);
            stored(
                &cli,
                &StoredArgs {
                    uas: 2000,
                    messages: 100,
                    pushers: 64,
                    workers: 2,
                    concurrency: 256,
                },
            );
            idle(
                &cli,
                &IdleArgs {
                    uas: 19_000,
                    workers: 4,
                    concurrency: 64,
                    messages: 3,
                },
            );
            restart(
                &cli,
                &RestartArgs {
                    uas: 19_000,
                    workers: 4,
                    concurrency: 64,
                    stop: vec![Stop::Term, Stop::Kill],
                    retry_ms: 50,
                    retry_max_ms: 500,
                },
            );
            plot::draw(&cli.out);
        }
    }
}

fn idle(cli: &Cli, args: &IdleArgs) {
    let runs = repeat(cli, |fsync, run| {
        let mut figures = scenarios::idle_run(Target::Herald { fsync }, cli.shards, args);
        figures["run"] = json!(run);
        figures
    });
    let figures = [
        "rss_bytes_per_idle_ua",
        "rss_bytes_per_idle_ua_after_messages",
        "connects_per_s",
        "server_us_per_connect",
        "generator_us_per_connect",
        "verified",
    ];
    finish(
        cli,
        "idle",
        json!({"uas": args.uas, "workers": args.workers, "concurrency": args.concurrency, "messages": args.messages}),
        runs,
        &figures,
    );
}

/// The summary's figures of a load run: every rate comes with the CPU each
/// side spent per notification, and with the CPU time the host took away
/// from this machine (`steal_s`: a run with much of it measured the host).
const LOAD_FIGURES: [&str; 15] = [
    "delivered_per_s",
    "server_us_per_notification",
    "generator_us_per_notification",
    "steal_s",
    "accepted_per_s",
    "to_ua.p50_ms",
    "to_ua.p99_ms",
    "to_ua.p999_ms",
    "as_answer.p50_ms",
    "as_answer.p99_ms",
    "server_cpu_s",
    "generator_cpu_s",
    "refused",
    "refused_without_retry_after",
    "rss_bytes_max",
];

fn load_params(args: &LoadArgs) -> Value {
    json!({"uas": args.uas, "pushers": args.pushers, "seconds": args.seconds, "workers": args.workers, "mix": args.mix})
}

fn throughput(cli: &Cli, args: &LoadArgs) {
    let runs = repeat(cli, |fsync, run| {
        let target = Target::Herald { fsync };
        let mut figures = scenarios::load_run(target, Placement::Spread, cli.shards, args, 0.0);
        figures["run"] = json!(run);
        figures
    });
    finish(cli, "throughput", load_params(args), runs, &LOAD_FIGURES);
}

fn floor(cli: &Cli, args: &LoadArgs) {
    let runs: Vec<Value> = (1..=cli.runs)
        .map(|run| {
            let mut figures =
                scenarios::load_run(Target::Floor, Placement::Spread, cli.shards, args, 0.0);
            figures["run"] = json!(run);
            figures
        })
        .collect();
    let summary = finish(cli, "floor", load_params(args), runs, &LOAD_FIGURES);
    let floor_rate = summary["herald-floor"]["delivered_per_s"]["median"]
        .as_f64()
        .unwrap_or(f64::NAN);
    if let Some(herald) = read_results(cli, "throughput") {
        for (target, figures) in herald["summary"].as_object().into_iter().flatten() {
            if let Some(rate) = figures["delivered_per_s"]["median"].as_f64() {
                println!(
                    "{target}: {:.0}/s = {:.1} % of the floor's {floor_rate:.0}/s",
                    rate,
                    100.0 * rate / floor_rate
                );
            }
        }
    }
}

/// Each Herald mode at `percents` of its own peak; then the floor server at
/// the same offered rates as the first mode, so that the latency the machine
/// itself adds at that load (scheduling two busy programs on shared cores)
/// sits beside Herald's.
fn latency(cli: &Cli, args: &LoadArgs, percents: &[f64], peak: Option<f64>) {
    let throughput = read_results(cli, "throughput");
    let mut runs = Vec::new();
    let mut floor_peak = None;
    for fsync in &cli.fsync {
        let target = Target::Herald { fsync: *fsync };
        let peak = peak
            .or_else(|| {
                throughput.as_ref()?["summary"][target.label()]["delivered_per_s"]["median"]
                    .as_f64()
            })
            .unwrap_or_else(|| {
                eprintln!(
                    "no peak known for {}: measuring one throughput run",
                    target.label()
                );
                scenarios::load_run(target, Placement::Spread, cli.shards, args, 0.0)
                    ["delivered_per_s"]
                    .as_f64()
                    .unwrap_or(1000.0)
            });
        floor_peak.get_or_insert(peak);
        runs.extend(paced_runs(cli, args, target, percents, peak));
    }
    if let Some(peak) = floor_peak {
        runs.extend(paced_runs(cli, args, Target::Floor, percents, peak));
    }
    let mut params = load_params(args);
    params["percents"] = json!(percents);
    finish(cli, "latency", params, runs, &LOAD_FIGURES);
}

fn paced_runs(
    cli: &Cli,
    args: &LoadArgs,
    target: Target,
    percents: &[f64],
    peak: f64,
) -> Vec<Value> {
    let mut runs = Vec::new();
    for percent in percents {
        for run in 1..=cli.runs {
            let rate = peak * percent / 100.0;
            let mut figures =
                scenarios::load_run(target, Placement::Spread, cli.shards, args, rate);
            figures["run"] = json!(run);
            figures["load_percent"] = json!(percent);
            figures["target"] = json!(format!("{} @ {percent}% of {peak:.0}/s", target.label()));
            eprintln!(
                "{}: run {run}: p99 {} ms",
                figures["target"], figures["to_ua"]["p99_ms"]
            );
            runs.push(figures);
        }
    }
    runs
}

fn stored(cli: &Cli, args: &StoredArgs) {
    let runs = repeat(cli, |fsync, run| {
        let mut figures = scenarios::stored_run(fsync, cli.shards, args);
        figures["run"] = json!(run);
        figures
    });
    let params = json!({"uas": args.uas, "messages": args.messages, "pushers": args.pushers, "workers": args.workers, "concurrency": args.concurrency});
    finish(
        cli,
        "stored",
        params,
        runs,
        &[
            "drained_per_s",
            "server_us_per_message",
            "drain_s",
            "stored_per_s",
            "delivered",
        ],
    );
}

fn restart(cli: &Cli, args: &RestartArgs) {
    let mut runs = Vec::new();
    for stop in &args.stop {
        runs.extend(repeat(cli, |fsync, run| {
            let mut figures = scenarios::restart_run(fsync, *stop, cli.shards, args);
            figures["run"] = json!(run);
            figures
        }));
    }
    let params = json!({
        "uas": args.uas,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "retry_ms": args.retry_ms,
        "retry_max_ms": args.retry_max_ms,
    });
    finish(
        cli,
        "restart",
        params,
        runs,
        &[
            "back",
            "stop_s",
            "first_closed_s",
            "last_closed_s",
            "ready_s",
            "ready_after_stop_s",
            "outage_s",
            "all_back_after_ready_s",
            "half_back_after_ready_s",
            "all_back_after_stop_s",
            "reconnects_per_s",
            "server_us_per_reconnect",
            "attempts",
            "attempts_down",
            "attempts_refused",
            "attempts_dropped",
            "lost",
            "listen_drops",
            "verified",
        ],
    );
}

/// Every run of a Herald scenario: each fsync mode, `runs` times, interleaved
/// (batch, never, batch, …) so that the machine's drift hits every mode alike.
fn repeat(cli: &Cli, mut one: impl FnMut(Fsync, usize) -> Value) -> Vec<Value> {
    let mut runs = Vec::new();
    for run in 1..=cli.runs {
        for fsync in &cli.fsync {
            let figures = one(*fsync, run);
            eprintln!("{figures}");
            runs.push(figures);
        }
    }
    runs
}

fn read_results(cli: &Cli, scenario: &str) -> Option<Value> {
    let text = std::fs::read_to_string(cli.out.join(format!("{scenario}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// Medians (with ranges) of `figures` per target; prints them and writes the
/// scenario's JSON. Returns the summary.
fn finish(cli: &Cli, scenario: &str, params: Value, runs: Vec<Value>, figures: &[&str]) -> Value {
    finish_with(cli, scenario, params, runs, figures, |_| Value::Null)
}

/// [`finish`], and `derive` turns the summary into figures of their own
/// (ratios, comparisons with targets), kept as the JSON's `derived` unless
/// null.
fn finish_with(
    cli: &Cli,
    scenario: &str,
    params: Value,
    runs: Vec<Value>,
    figures: &[&str],
    derive: impl FnOnce(&Value) -> Value,
) -> Value {
    let mut summary = serde_json::Map::new();
    let mut targets: Vec<String> = Vec::new();
    for run in &runs {
        let target = run["target"].as_str().unwrap_or_default().to_owned();
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    println!("== {scenario} ({} runs each)", cli.runs);
    for target in targets {
        let of_target: Vec<&Value> = runs
            .iter()
            .filter(|run| run["target"] == target.as_str())
            .collect();
        let mut spreads = serde_json::Map::new();
        println!("{target}");
        for figure in figures {
            let values: Vec<f64> = of_target
                .iter()
                .filter_map(|run| {
                    figure
                        .split('.')
                        .try_fold(*run, |value, key| value.get(key))
                        .and_then(Value::as_f64)
                })
                .collect();
            // A scenario whose targets measure different things (cluster).
            if values.is_empty() {
                continue;
            }
            let spread = Spread::of(&values);
            println!("  {figure:<24} {spread}");
            spreads.insert((*figure).to_owned(), json!(spread));
        }
        summary.insert(target, Value::Object(spreads));
    }
    let summary = Value::Object(summary);
    let derived = derive(&summary);
    let mut document = json!({
        "scenario": scenario,
        "date": command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "commit": command_output("git", &["describe", "--always", "--dirty"]),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "params": params,
        "summary": summary,
        "runs": runs,
    });
    if !derived.is_null() {
        document["derived"] = derived;
    }
    std::fs::create_dir_all(&cli.out).expect("create the results directory");
    let path = cli.out.join(format!("{scenario}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&document).expect("JSON"),
    )
    .expect("write results");
    println!("   -> {}", path.display());
    document["summary"].clone()
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned());
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": model,
        "kernel": command_output("uname", &["-r"]),
    })
}
