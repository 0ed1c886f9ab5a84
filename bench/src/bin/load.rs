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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

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
        #[arg(long, default_value_t = 100)]
        uas: usize,
        #[arg(long, default_value_t = 4)]
        senders: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
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

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

type Socket = WebSocket<TcpStream>;

/// Connects and says hello as a Web Push UA with a fresh UAID.
fn hello_ua(ua: SocketAddr) -> Socket {
    let stream = TcpStream::connect(ua).expect("connect to the UA listener");
    let (mut socket, _) =
        tungstenite::client(format!("ws://{ua}/"), stream).expect("WebSocket upgrade");
    send(
        &mut socket,
        json!({"messageType": "hello", "use_webpush": true}),
    );
    let hello = recv(&mut socket);
    assert_eq!(hello["status"], 200, "hello refused: {hello}");
    socket
}

/// A UA that said hello and registered one channel; returns it and the endpoint.
fn connect_ua(ua: SocketAddr, index: usize) -> (Socket, String) {
    let mut socket = hello_ua(ua);
    let channel = format!("{:08x}-0000-4000-8000-{:012x}", index, index);
    send(
        &mut socket,
        json!({"messageType": "register", "channelID": channel}),
    );
    let register = recv(&mut socket);
    let endpoint = register["pushEndpoint"]
        .as_str()
        .expect("pushEndpoint")
        .to_owned();
    (socket, endpoint)
}

fn send(socket: &mut Socket, value: Value) {
    socket
        .send(Message::text(value.to_string()))
        .expect("send frame");
}

fn recv(socket: &mut Socket) -> Value {
    loop {
        match socket.read().expect("read frame") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Close(_) => panic!("server closed the socket"),
            _ => continue,
        }
    }
}

fn throughput(ua: SocketAddr, uas: usize, senders: usize, duration: Duration) {
    let mut endpoints = Vec::with_capacity(uas);
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for index in 0..uas {
        let (mut socket, endpoint) = connect_ua(ua, index);
        endpoints.push(endpoint);
        socket
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let (delivered, latencies, stop) = (delivered.clone(), latencies.clone(), stop.clone());
        readers.push(std::thread::spawn(move || {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let Ok(Message::Text(text)) = socket.read() else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                if frame["messageType"] != "notification" {
                    continue;
                }
                if let Some(sent_us) = frame["data"].as_str().and_then(decode_timestamp) {
                    let _ = local.record(now_us().saturating_sub(sent_us).max(1));
                }
                delivered.fetch_add(1, Ordering::Relaxed);
                let ack = json!({"messageType": "ack", "updates": [{"channelID": frame["channelID"], "version": frame["version"], "code": 100}]});
                let _ = socket.send(Message::text(ack.to_string()));
            }
            latencies.lock().expect("histogram lock").add(&local).expect("merge histograms");
        }));
    }
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let endpoints = Arc::new(endpoints);
    let sender_threads: Vec<_> = (0..senders)
        .map(|sender| {
            let (endpoints, accepted, refused) =
                (endpoints.clone(), accepted.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut connection: Option<BufReader<TcpStream>> = None;
                let mut next = sender;
                while started.elapsed() < duration {
                    let endpoint = &endpoints[next % endpoints.len()];
                    next += senders;
                    let status = post(&mut connection, endpoint, &now_us().to_be_bytes());
                    if status == 201 { &accepted } else { &refused }
                        .fetch_add(1, Ordering::Relaxed);
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

fn decode_timestamp(data: &str) -> Option<u64> {
    use std::convert::TryInto;
    let bytes = base64_url_decode(data)?;
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Tiny base64url decoder: the bench must not depend on Herald's crates.
fn base64_url_decode(text: &str) -> Option<Vec<u8>> {
    let value = |byte: u8| match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let mut accumulator = 0u32;
    let mut bits = 0;
    for byte in text.bytes().filter(|byte| *byte != b'=') {
        accumulator = (accumulator << 6) | value(byte)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((accumulator >> bits) as u8);
        }
    }
    Some(out)
}

/// One Web Push POST over a keep-alive connection; returns the status.
fn post(connection: &mut Option<BufReader<TcpStream>>, endpoint: &str, body: &[u8]) -> u16 {
    let rest = endpoint.strip_prefix("http://").expect("http endpoint");
    let (host, path) = rest.split_at(rest.find('/').expect("endpoint path"));
    if connection.is_none() {
        let stream = TcpStream::connect(host).expect("connect to the AS listener");
        stream.set_nodelay(true).expect("nodelay");
        *connection = Some(BufReader::new(stream));
    }
    let reader = connection.as_mut().expect("connection just made");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = reader.get_mut();
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .expect("send request");
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("response body");
    status
}
