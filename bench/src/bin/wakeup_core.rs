//! `herald-wakeup-core`: how many datagrams per second the wakeup core's send
//! path sustains, without the AS ingest in front of it (which is what bounds
//! `herald-devices --mode burst`).
//!
//! It runs the core's own parts, as the core runs them each turn: the
//! [`Planner`] (coalescing map, urgency queues, token bucket, retry heap)
//! hands out batches of up to 256 dispatches and [`UdpSender`] sends each
//! batch with one `sendmmsg`. Targets are `--targets` UDP sockets on
//! 127.0.0.1, drained by a reader thread that counts what arrives (loopback
//! drops datagrams when a receive buffer is full; the count shows how many).
//! Bounded: `--wakeups` UAs, one datagram each.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use herald_engine::message::{Urgency, WakeupInfo};
use herald_engine::wakeup_plan::{Dispatch, PlanLimits, Planner};
use herald_engine::Uaid;
use herald_net::wakeup_udp::{Sent, UdpSender};

#[derive(Parser, Debug)]
#[command(
    name = "herald-wakeup-core",
    about = "Time the wakeup core's send path"
)]
struct Args {
    /// Distinct UAs to wake (one datagram each).
    #[arg(long, default_value_t = 200_000)]
    wakeups: u32,
    /// Receiving UDP sockets on 127.0.0.1.
    #[arg(long, default_value_t = 64)]
    targets: usize,
    /// Dispatches per sendmmsg (the core uses 256).
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

fn main() {
    let args = Args::parse();
    let receivers: Vec<UdpSocket> = (0..args.targets.max(1))
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket.set_nonblocking(true).expect("nonblocking");
            socket
        })
        .collect();
    let addrs: Vec<SocketAddr> = receivers
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let received = received.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for socket in &receivers {
                    while socket.recv(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                        idle = false;
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    let limits = PlanLimits {
        pending_max: args.wakeups as usize + 1,
        retry_initial_ms: 3_600_000,
        retry_max_ms: 3_600_000,
        retries_max: 0,
        per_network_per_s: u32::MAX / 2000,
        per_network_burst: u32::MAX / 2000,
    };
    let mut planner = Planner::new(limits, &[("214-07".to_owned(), 0)]);
    let mut sender = UdpSender::new().expect("udp sender");
    let started = Instant::now();
    for n in 0..args.wakeups {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        let addr = addrs[n as usize % addrs.len()];
        let target = WakeupInfo {
            ip: addr.ip(),
            port: addr.port(),
            mcc: "214".into(),
            mnc: "07".into(),
            netid: String::new(),
        };
        let urgency = if n % 10 == 0 {
            Urgency::High
        } else {
            Urgency::Normal
        };
        planner.wake(Uaid(bytes), &target, urgency);
    }
    let queued_s = started.elapsed().as_secs_f64();
    let send_started = Instant::now();
    let mut batch: Vec<Dispatch> = Vec::with_capacity(args.batch);
    let mut batch_addrs = Vec::with_capacity(args.batch);
    let mut results = Vec::with_capacity(args.batch);
    let (mut ok, mut again, mut failed) = (0u64, 0u64, 0u64);
    loop {
        batch.clear();
        planner.poll(1, args.batch, &mut batch);
        if batch.is_empty() {
            break;
        }
        batch_addrs.clear();
        batch_addrs.extend(batch.iter().map(|d| d.addr));
        sender.send_batch(&batch_addrs, &mut results);
        for (dispatch, result) in batch.iter().zip(&results) {
            match result {
                Sent::Ok => ok += 1,
                Sent::Again => {
                    again += 1;
                    planner.unsend(dispatch);
                }
                Sent::Failed => failed += 1,
            }
        }
    }
    let send_s = send_started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let _ = reader.join();
    let summary = serde_json::json!({
        "wakeups": args.wakeups,
        "targets": args.targets,
        "batch": args.batch,
        "queue_into_planner_per_s": (f64::from(args.wakeups) / queued_s).round(),
        "datagrams_sent": ok,
        "send_again_eagain": again,
        "send_failed": failed,
        "sendmmsg_calls": sender.syscalls,
        "send_seconds": (send_s * 1000.0).round() / 1000.0,
        "datagrams_per_s": (ok as f64 / send_s).round(),
        "datagrams_received_on_loopback": received.load(Ordering::SeqCst),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
}
