//! `herald-durability`: the durability figures of bench/RESULTS.md ("Durability").
//!
//! Every subcommand starts its own `herald serve` (the binary next to this one,
//! or `--herald PATH`) on 127.0.0.1 ports, in a data dir it is given or makes
//! under /tmp, and stops it with SIGTERM. Everything is bounded in time and
//! count; nothing leaves loopback.
//!
//! - `fsync`: durable AS requests per second with `--fsync batch` vs `never`
//!   vs `always`. For each mode and run: a fresh data dir, a fresh server,
//!   `herald-load throughput --uas U --senders S --seconds T` against it, then
//!   `/metrics`: the average batch per fdatasync is
//!   `herald_wal_records_synced / herald_wal_fsyncs` (all records: pushes,
//!   acks' removals, registrations). Prints one JSON line per run and medians.
//!   `herald-durability fsync --runs 3 --uas 200 --senders 64 --seconds 10`
//! - `gen`: writes a data dir directly with the store API (no server): the
//!   key file (`KeyMaterial::generate(..).to_file_text()` into `<dir>/keys`),
//!   `check_layout`, then per shard under a glommio `LocalExecutor`
//!   `open_shard` + `append` of `UaidCreated`, `ChannelRegistered` and
//!   `MessageStored` (Web Push, 30-day TTL) records, UAIDs minted with
//!   `Keys::mint_uaid(rng, shard, shards)` so each lands in its own shard.
//!   `herald-durability gen --data-dir /tmp/herald-1m --uaids 100000 \
//!   --channels-per-uaid 10 --pending 100000`
//! - `restart`: times `herald serve` on such a data dir from launch until
//!   `/health` answers 200, and reads the "WAL replayed" log lines (records
//!   per shard, with their timestamps): replay rate per shard =
//!   records / (time of its "WAL replayed" line − launch). Page cache warm
//!   (the data dir was just written or read).
//!   `herald-durability restart --data-dir /tmp/herald-1m --runs 3`
//! - `compaction`: runs the server on a data dir (e.g. one from `gen`: a big
//!   live state) with a small `[limits] wal_compact_after_bytes`, under
//!   `herald-load throughput` load, then reads `herald_wal_compaction_pause_us_max`
//!   from /metrics and every "WAL compacted" log line (pause_us, records in
//!   the snapshot). Prints max and median pause and the state size.
//!   `herald-durability compaction --data-dir /tmp/herald-1m \
//!   --compact-after-bytes 2097152 --seconds 20`

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use herald_bench::server::{self, http_get, sibling, temp_dir, Fsync, Kind, Server};
use herald_bench::stats::median;

use herald_engine::identity::{KeyMaterial, Keys};
use herald_engine::message::{MessageBody, Registration, StoredMessage, Urgency};
use herald_engine::record::Record;
use herald_engine::ChannelId;
use herald_store::{check_layout, open_shard, FsyncMode, LogOptions};

#[derive(Parser)]
#[command(about = "Durability benchmarks for Herald (loopback only)")]
struct Cli {
    /// The herald binary (default: `herald` next to this executable).
    #[arg(long, global = true)]
    herald: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// AS requests/s and records per fsync for each --fsync mode.
    Fsync(FsyncArgs),
    /// Writes a data dir with registered channels and pending messages.
    Gen(GenArgs),
    /// Start time and replay rate on an existing data dir.
    Restart(RestartArgs),
    /// Compaction pauses under load.
    Compaction(CompactionArgs),
}

#[derive(clap::Args)]
struct FsyncArgs {
    /// The `--fsync` modes to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["batch", "never", "always"])]
    modes: Vec<Fsync>,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 200)]
    uas: usize,
    #[arg(long, default_value_t = 64)]
    senders: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    shards: usize,
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    shards: usize,
    #[arg(long, default_value_t = 100_000)]
    uaids: usize,
    #[arg(long, default_value_t = 10)]
    channels_per_uaid: usize,
    /// Pending Web Push messages, spread round-robin over the UAIDs.
    #[arg(long, default_value_t = 100_000)]
    pending: usize,
    /// Ciphertext bytes per pending message.
    #[arg(long, default_value_t = 128)]
    body_bytes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
struct RestartArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    shards: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(clap::Args)]
struct CompactionArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    shards: usize,
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    compact_after_bytes: u64,
    #[arg(long, default_value_t = 200)]
    uas: usize,
    #[arg(long, default_value_t = 16)]
    senders: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

fn main() {
    let cli = Cli::parse();
    let herald = cli.herald.clone().unwrap_or_else(|| sibling("herald"));
    match &cli.command {
        Cmd::Fsync(args) => fsync_bench(&herald, args),
        Cmd::Gen(args) => generate(args),
        Cmd::Restart(args) => restart_bench(&herald, args),
        Cmd::Compaction(args) => compaction_bench(&herald, args),
    }
}

// ---------------------------------------------------------------------------
// helpers: the server, metrics, logs
// ---------------------------------------------------------------------------

/// Replaying a big data dir (`gen --uaids 100000 …`) takes a while.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// `herald serve` on `data_dir`, its log beside it, ready once `/health`
/// answers.
fn start_herald(
    herald: &Path,
    data_dir: &Path,
    shards: usize,
    fsync: Fsync,
    config: Option<&Path>,
) -> Server {
    let mut command = server::herald_serve(Some(herald), data_dir, shards, fsync);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let log = data_dir.with_extension("herald.log");
    Server::start(command, Kind::Herald, &log, START_TIMEOUT)
}

/// `/metrics` from Herald's admin listener.
fn metrics_text(server: &Server) -> String {
    let admin = server.admin.expect("herald serve has an admin listener");
    let (_, text) = http_get(admin, "/metrics").expect("GET /metrics");
    text
}

/// Sum of every sample of a counter (with or without `_total`) on /metrics.
fn metric_sum(server: &Server, prefix: &str) -> f64 {
    let text = metrics_text(server);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' ']).next() == Some(prefix)
                || line.starts_with(&format!("{prefix}_total"))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Largest sample of a gauge on /metrics.
fn metric_max(server: &Server, name: &str) -> f64 {
    let text = metrics_text(server);
    text.lines()
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

fn log_text(server: &Server) -> String {
    strip_ansi(&server.log_text())
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `key=value` from a tracing log line (value up to the next space).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!(" {key}=");
    let start = line.find(&needle)? + needle.len();
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// The RFC 3339 UTC timestamp that starts a tracing line, as a SystemTime.
fn line_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut date_parts = date.split('-').map(|part| part.parse::<i64>());
    let (year, month, day) = (
        date_parts.next()?.ok()?,
        date_parts.next()?.ok()?,
        date_parts.next()?.ok()?,
    );
    let mut time_parts = time.split(':');
    let hours: i64 = time_parts.next()?.parse().ok()?;
    let minutes: i64 = time_parts.next()?.parse().ok()?;
    let seconds: f64 = time_parts.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hours * 3600 + minutes * 60;
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_secs_f64(seconds))
}

/// Runs `herald-load throughput` against `ua`; its JSON report.
fn run_load(ua: SocketAddr, uas: usize, senders: usize, seconds: u64) -> Value {
    let output = Command::new(sibling("herald-load"))
        .args(["--ua", &ua.to_string(), "throughput"])
        .args(["--uas", &uas.to_string(), "--senders", &senders.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .output()
        .expect("run herald-load (cargo build --release -p herald-bench)");
    assert!(
        output.status.success(),
        "herald-load failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("herald-load JSON report")
}

// ---------------------------------------------------------------------------
// fsync: requests/s per mode
// ---------------------------------------------------------------------------

fn fsync_bench(herald: &Path, args: &FsyncArgs) {
    let &FsyncArgs {
        ref modes,
        runs,
        uas,
        senders,
        seconds,
        shards,
    } = args;
    // Per mode: its name and, per run, three measured series.
    type Series = (String, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut per_mode: Vec<Series> = modes
        .iter()
        .map(|mode| (mode.as_str().to_owned(), vec![], vec![], vec![]))
        .collect();
    // Interleave modes so that drift of the machine hits all of them alike.
    for run in 0..runs {
        for (slot, mode) in modes.iter().enumerate() {
            let root = temp_dir(&format!("herald-durability-{}", mode.as_str()));
            let data = root.join("data");
            let server = start_herald(herald, &data, shards, *mode, None);
            let report = run_load(server.ua, uas, senders, seconds);
            let fsyncs = metric_sum(&server, "herald_wal_fsyncs");
            let records = metric_sum(&server, "herald_wal_records_synced");
            server.stop();
            let _ = std::fs::remove_dir_all(&root);
            let per_s = report["accepted_per_s"].as_f64().unwrap_or(0.0);
            let batch = if fsyncs > 0.0 {
                records / fsyncs
            } else {
                f64::NAN
            };
            println!(
                "{}",
                json!({"run": run, "fsync": mode.as_str(), "accepted_per_s": per_s, "refused": report["refused"],
                       "latency_us_p50": report["latency_us_p50"], "latency_us_p99": report["latency_us_p99"],
                       "wal_fsyncs": fsyncs, "wal_records_synced": records, "records_per_fsync": batch})
            );
            per_mode[slot].1.push(per_s);
            per_mode[slot].2.push(batch);
            per_mode[slot]
                .3
                .push(report["latency_us_p50"].as_f64().unwrap_or(0.0));
        }
    }
    let never = per_mode
        .iter()
        .find(|(mode, ..)| mode == Fsync::Never.as_str())
        .map(|(_, rates, ..)| median(rates));
    for (mode, rates, batches, p50) in &per_mode {
        let rate = median(rates);
        println!(
            "{}",
            json!({"summary": mode, "runs": rates.len(), "median_accepted_per_s": rate,
                   "all_accepted_per_s": rates, "median_records_per_fsync": median(batches),
                   "median_latency_us_p50": median(p50),
                   "ratio_to_never": never.map(|never| rate / never)})
        );
    }
}

// ---------------------------------------------------------------------------
// gen: a big data dir through the store API
// ---------------------------------------------------------------------------

fn generate(args: &GenArgs) {
    let &GenArgs {
        ref data_dir,
        shards,
        uaids,
        channels_per_uaid,
        pending,
        body_bytes,
        seed,
    } = args;
    assert!(
        !data_dir.exists()
            || std::fs::read_dir(data_dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false),
        "{} must not exist or be empty",
        data_dir.display()
    );
    std::fs::create_dir_all(data_dir).expect("create data dir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let material = KeyMaterial::generate(&mut rng);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(data_dir.join("keys"))
            .expect("create key file");
        file.write_all(material.to_file_text().as_bytes())
            .expect("write key file");
    }
    let keys = Keys::new(&material);
    check_layout(data_dir, shards).expect("check_layout");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let started = Instant::now();
    let mut totals = Vec::new();
    for shard in 0..shards {
        // This shard's share of UAIDs and of pending messages.
        let my_uaids = uaids / shards + usize::from(shard < uaids % shards);
        let my_pending = pending / shards + usize::from(shard < pending % shards);
        // Each shard's generator is seeded from the run's, in shard order, so
        // that one --seed always writes the same data dir.
        let mut shard_rng = rand::rngs::StdRng::seed_from_u64(rng.gen());
        let keys = keys.clone();
        let dir = data_dir.to_path_buf();
        let shard_started = Instant::now();
        let (records, bytes) = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (log, recovered) =
                    open_shard(&dir, shard, LogOptions::with_fsync(FsyncMode::Batch))
                        .await
                        .expect("open_shard");
                assert_eq!(recovered.records.len(), 0, "shard {shard} is not empty");
                let mut appended = 0u64;
                let mut seqs = vec![0u64; my_uaids];
                let mut uaid_list = Vec::with_capacity(my_uaids);
                let mut channels: Vec<Vec<ChannelId>> = Vec::with_capacity(my_uaids);
                let mut append = |record: &Record| {
                    log.append(record).expect("append");
                    appended += 1;
                    appended
                };
                let mut since_flush = 0;
                for _ in 0..my_uaids {
                    let uaid = keys.mint_uaid(&mut shard_rng, shard, shards);
                    assert_eq!(uaid.shard(shards), shard);
                    append(&Record::UaidCreated {
                        uaid,
                        at_ms: now_ms,
                    });
                    let mut mine = Vec::with_capacity(channels_per_uaid);
                    for _ in 0..channels_per_uaid {
                        let mut id = [0u8; 16];
                        shard_rng.fill(&mut id);
                        id[6] = (id[6] & 0x0f) | 0x40; // UUID v4
                        id[8] = (id[8] & 0x3f) | 0x80;
                        let channel = ChannelId(id);
                        append(&Record::ChannelRegistered(Registration {
                            uaid,
                            channel,
                            key_hash: None,
                        }));
                        mine.push(channel);
                    }
                    uaid_list.push(uaid);
                    channels.push(mine);
                    since_flush += 1 + channels_per_uaid;
                    if since_flush >= 20_000 {
                        since_flush = 0;
                        log.flush().await.expect("flush");
                    }
                }
                for index in 0..my_pending {
                    let owner = index % my_uaids.max(1);
                    seqs[owner] += 1;
                    let mut data = vec![0u8; body_bytes];
                    shard_rng.fill(data.as_mut_slice());
                    let channel =
                        channels[owner][index / my_uaids.max(1) % channels_per_uaid.max(1)];
                    append(&Record::MessageStored(StoredMessage {
                        uaid: uaid_list[owner],
                        channel,
                        seq: seqs[owner],
                        arrived_ms: now_ms,
                        expires_ms: now_ms + 30 * 24 * 3600 * 1000,
                        urgency: Urgency::Normal,
                        topic: None,
                        body: MessageBody::WebPush {
                            data,
                            encoding: Some("aes128gcm".into()),
                            encryption: None,
                            crypto_key: None,
                        },
                    }));
                    since_flush += 1;
                    if since_flush >= 20_000 {
                        since_flush = 0;
                        log.flush().await.expect("flush");
                    }
                }
                log.flush().await.expect("final flush");
                let stats = log.stats();
                log.close();
                (stats.records_synced, stats.bytes_written)
            })
            .expect("spawn executor")
            .join()
            .expect("executor thread");
        totals.push(
            json!({"shard": shard, "uaids": my_uaids, "pending": my_pending,
                           "records": records, "bytes": bytes,
                           "seconds": shard_started.elapsed().as_secs_f64()}),
        );
    }
    println!(
        "{}",
        json!({"data_dir": data_dir, "shards": shards, "uaids": uaids,
               "channels": uaids * channels_per_uaid, "pending": pending,
               "seconds": started.elapsed().as_secs_f64(), "per_shard": totals})
    );
}

// ---------------------------------------------------------------------------
// restart: time to /health and replay rate
// ---------------------------------------------------------------------------

/// Per shard: (records, seconds from launch to its "WAL replayed" line).
fn replay_lines(log: &str, launched: SystemTime) -> Vec<(usize, u64, f64, String)> {
    log.lines()
        .filter(|line| line.contains("WAL replayed"))
        .filter_map(|line| {
            let shard = field(line, "shard")?.parse().ok()?;
            let records = field(line, "records")?.parse().ok()?;
            let at = line_time(line)?;
            let seconds = at.duration_since(launched).ok()?.as_secs_f64();
            let summary = format!(
                "user_agents={} pending={} bytes={}",
                field(line, "user_agents").unwrap_or("?"),
                field(line, "pending").unwrap_or("?"),
                field(line, "bytes").unwrap_or("?")
            );
            Some((shard, records, seconds, summary))
        })
        .collect()
}

fn restart_bench(herald: &Path, args: &RestartArgs) {
    let &RestartArgs {
        ref data_dir,
        shards,
        runs,
    } = args;
    let mut ready = Vec::new();
    let mut all_ready = Vec::new();
    let mut rates = Vec::new();
    for run in 0..runs {
        let server = start_herald(herald, data_dir, shards, Fsync::Batch, None);
        let ready_s = server.ready_after.as_secs_f64();
        // /health is served by the first shard that finished its replay
        // (SO_REUSEPORT): wait (bounded) for the "ready" line of all shards.
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut log = log_text(&server);
        while !log.contains("herald_net::runtime: ready") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            log = log_text(&server);
        }
        let all_ready_s = log
            .lines()
            .find(|line| line.contains("herald_net::runtime: ready"))
            .and_then(line_time)
            .and_then(|at| at.duration_since(server.launched).ok())
            .map(|elapsed| elapsed.as_secs_f64());
        let shards_seen = replay_lines(&log, server.launched);
        let rss_bytes = herald_bench::proc::rss_bytes(server.pid());
        server.stop();
        let per_shard: Vec<Value> = shards_seen
            .iter()
            .map(|(shard, records, seconds, summary)| {
                let rate = *records as f64 / seconds;
                rates.push(rate);
                json!({"shard": shard, "records": records, "replayed_at_s": seconds,
                       "records_per_s": rate, "state": summary})
            })
            .collect();
        assert_eq!(
            per_shard.len(),
            shards,
            "a \"WAL replayed\" line per shard in:\n{log}"
        );
        ready.push(ready_s);
        all_ready.push(all_ready_s.unwrap_or(f64::NAN));
        println!(
            "{}",
            json!({"run": run, "launch_to_health_s": ready_s, "launch_to_all_shards_ready_s": all_ready_s,
                   "rss_bytes": rss_bytes, "per_shard": per_shard})
        );
    }
    println!(
        "{}",
        json!({"summary": "restart", "runs": runs, "median_launch_to_health_s": median(&ready),
               "all_launch_to_health_s": ready,
               "median_launch_to_all_shards_ready_s": median(&all_ready),
               "all_launch_to_all_shards_ready_s": all_ready,
               "median_records_per_s_per_shard": median(&rates)})
    );
}

// ---------------------------------------------------------------------------
// compaction: pauses under load
// ---------------------------------------------------------------------------

fn compaction_bench(herald: &Path, args: &CompactionArgs) {
    let config = args.data_dir.with_extension("compaction.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nwal_compact_after_bytes = {}\n",
            args.compact_after_bytes
        ),
    )
    .expect("write config");
    let server = start_herald(
        herald,
        &args.data_dir,
        args.shards,
        Fsync::Batch,
        Some(&config),
    );
    let load = run_load(server.ua, args.uas, args.senders, args.seconds);
    // Let a compaction that started at the end of the load finish (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pause_max = metric_max(&server, "herald_wal_compaction_pause_us_max");
    let mut compactions = metric_sum(&server, "herald_wal_compactions");
    loop {
        let log = log_text(&server);
        let done = log
            .lines()
            .filter(|line| line.contains("WAL compacted"))
            .count() as f64;
        if done >= compactions || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        pause_max = metric_max(&server, "herald_wal_compaction_pause_us_max");
        compactions = metric_sum(&server, "herald_wal_compactions");
    }
    let log = log_text(&server);
    server.stop();
    let mut pauses = Vec::new();
    let mut lines = Vec::new();
    for line in log.lines().filter(|line| line.contains("WAL compacted")) {
        let shard = field(line, "shard").unwrap_or("?").to_string();
        let records: u64 = field(line, "records")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let pause: f64 = field(line, "pause_us")
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        pauses.push(pause);
        lines.push(json!({"shard": shard, "snapshot_records": records, "pause_us": pause}));
    }
    let replay = replay_lines(&log, UNIX_EPOCH);
    println!(
        "{}",
        json!({"compact_after_bytes": args.compact_after_bytes, "load": load,
               "state_at_start": replay.iter().map(|(shard, records, _, summary)| json!({"shard": shard, "records": records, "state": summary})).collect::<Vec<_>>(),
               "compactions": lines, "metric_pause_us_max": pause_max, "metric_compactions": compactions,
               "max_pause_us": pauses.iter().cloned().fold(f64::NAN, f64::max),
               "median_pause_us": median(&pauses)})
    );
}
