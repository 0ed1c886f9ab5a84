//! `herald-load`: end-to-end load against a running Herald on loopback.
//!
//! - `throughput`: U UAs hold sockets and ack; S sender threads POST Web Push
//!   messages over keep-alive connections for a fixed time. Reports accepted
//!   requests/s, delivered notifications/s and AS-send→UA-receive latency.
//!
//! `herald-durability` drives it for the fsync-mode and compaction figures;
//! everything else (memory per UA, the performance targets, the floor) is
//! measured by `herald-bench`.
//!
//! Every run is bounded in count and time and talks only to the addresses given
//! (loopback in all documented commands).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use herald_bench::client::threads::{block_on, endpoint_address, Blocking, Pusher, Ua};
use herald_bench::client::{endpoint_path, Push};
use herald_bench::stats::{new_histogram, now_us};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Load generator for Herald (loopback only)")]
struct Cli {
    /// Herald's UA WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    ua: SocketAddr,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Throughput {
        #[arg(long, default_value_t = 100, value_parser = at_least_one())]
        uas: usize,
        #[arg(long, default_value_t = 4, value_parser = at_least_one())]
        senders: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Throughput {
            uas,
            senders,
            seconds,
        } => throughput(cli.ua, uas, senders, Duration::from_secs(seconds)),
    }
}

/// Gives up on a connect, write or read that takes longer than 10 s.
const BLOCKING: Blocking = Blocking {
    timeout: Duration::from_secs(10),
};
/// How long a UA's reader waits before looking at the stop flag again.
const READ_POLL: Duration = Duration::from_millis(200);

/// A UA that said hello and registered one channel; returns it and the
/// channel's endpoint.
fn connect_ua(ua: SocketAddr, index: usize) -> io::Result<(Ua, String)> {
    let mut socket = block_on(Ua::open(&BLOCKING, ua))?;
    let hello = block_on(socket.exchange(&json!({"messageType": "hello", "use_webpush": true})))?;
    if hello["status"] != 200 {
        return Err(io::Error::other(format!("hello refused: {hello}")));
    }
    let channel = format!("{index:08x}-0000-4000-8000-{index:012x}");
    let register =
        block_on(socket.exchange(&json!({"messageType": "register", "channelID": channel})))?;
    let endpoint = register["pushEndpoint"]
        .as_str()
        .ok_or_else(|| io::Error::other(format!("register refused: {register}")))?
        .to_owned();
    Ok((socket, endpoint))
}

/// Reads notifications until `stop`, acks each, records its latency from
/// the send time carried in its data.
fn read_and_ack(mut socket: Ua, delivered: &AtomicU64, stop: &AtomicBool) -> Histogram<u64> {
    let mut latencies = new_histogram();
    while !stop.load(Ordering::Relaxed) {
        let frame = match socket.take_message() {
            Ok(Some(frame)) => frame,
            Ok(None) => match block_on(socket.read()) {
                Ok(()) => continue,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            },
            Err(_) => break,
        };
        if frame["messageType"] != "notification" {
            continue;
        }
        if let Some(sent_us) = frame["data"].as_str().and_then(decode_timestamp) {
            let _ = latencies.record(now_us().saturating_sub(sent_us).max(1));
        }
        delivered.fetch_add(1, Ordering::Relaxed);
        let ack = json!({"messageType": "ack", "updates": [{"channelID": frame["channelID"], "version": frame["version"], "code": 100}]});
        let _ = block_on(socket.send(&ack));
    }
    latencies
}

fn throughput(ua: SocketAddr, uas: usize, senders: usize, duration: Duration) {
    let mut endpoints = Vec::with_capacity(uas);
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(new_histogram()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for index in 0..uas {
        let (socket, endpoint) = connect_ua(ua, index).expect("connect a UA");
        endpoints.push(endpoint);
        socket
            .stream()
            .get_ref()
            .set_read_timeout(Some(READ_POLL))
            .expect("read timeout");
        let (delivered, latencies, stop) = (delivered.clone(), latencies.clone(), stop.clone());
        readers.push(std::thread::spawn(move || {
            let local = read_and_ack(socket, &delivered, &stop);
            latencies
                .lock()
                .expect("histogram lock")
                .add(&local)
                .expect("merge histograms");
        }));
    }
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let push_to = endpoint_address(&endpoints[0]).expect("the endpoints' AS address");
    let paths: Arc<Vec<String>> = Arc::new(
        endpoints
            .iter()
            .map(|endpoint| endpoint_path(endpoint).expect("an http endpoint"))
            .collect(),
    );
    let started = Instant::now();
    let sender_threads: Vec<_> = (0..senders)
        .map(|sender| {
            let (paths, accepted, refused) = (paths.clone(), accepted.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut pusher = Pusher::new(BLOCKING, push_to);
                let mut next = sender;
                while started.elapsed() < duration {
                    let path = &paths[next % paths.len()];
                    next += senders;
                    let stamp = now_us().to_be_bytes();
                    let status = block_on(pusher.push(path, Push::WebPush(&stamp)));
                    if matches!(status, Ok(201)) {
                        &accepted
                    } else {
                        &refused
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    if status.is_err() {
                        // The server is gone or refusing connections: do
                        // not spin on it.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    for thread in sender_threads {
        thread.join().expect("sender thread");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let in-flight deliveries land before stopping the readers.
    let settle = Instant::now();
    while delivered.load(Ordering::Relaxed) < accepted.load(Ordering::Relaxed)
        && settle.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("reader thread");
    }
    let histogram = latencies.lock().expect("histogram lock");
    let report = json!({
        "uas": uas,
        "senders": senders,
        "seconds": elapsed,
        "accepted": accepted.load(Ordering::Relaxed),
        "refused": refused.load(Ordering::Relaxed),
        "accepted_per_s": accepted.load(Ordering::Relaxed) as f64 / elapsed,
        "delivered": delivered.load(Ordering::Relaxed),
        "delivered_per_s": delivered.load(Ordering::Relaxed) as f64 / elapsed,
        "latency_us_p50": histogram.value_at_quantile(0.5),
        "latency_us_p99": histogram.value_at_quantile(0.99),
        "latency_us_max": histogram.max(),
    });
    println!("{report}");
}

/// The send time a pusher put in the data (base64url, as Herald relays it).
fn decode_timestamp(data: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(data.trim_end_matches('=')).ok()?;
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}
