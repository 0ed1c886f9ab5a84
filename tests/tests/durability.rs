//! Crash durability, seen from outside (SPEC §2 `--fsync`, §7): "a 2xx to an
//! AS means the notification is in the owning shard's WAL on disk; a crash
//! after that loses nothing".
//!
//! The test: a 2-shard server with a short `retry_interval_ms`, a few dozen
//! UAs (Web Push and SimplePush sockets), several AS threads sending
//! concurrently (Web Push POSTs with a unique body per message, SimplePush
//! PUTs with increasing versions per channel), and a SIGKILL in the middle of
//! the traffic at a moment derived from a printed seed. Then a restart on the
//! same data dir and ports, every UA reconnects with its UAID (and gets the
//! same endpoints back when it registers its channels again), and:
//! - every Web Push message that got a 2xx is delivered (before the crash or
//!   after the restart), identified by its unique body;
//! - for every SimplePush channel, the newest version that got a 2xx (or a
//!   newer one) is delivered.
//!
//! Half of the UAs are connected (reading and acking) during the traffic,
//! half are offline, so both "stored then replayed" and "delivered, acked or
//! not, then crashed" paths are covered. Repeated for 3 cycles with
//! `--fsync batch` (the default) and 2 cycles with `--fsync always`.
//!
//! Reproduce a run with `HERALD_DURABILITY_SEED=<seed printed>`. Everything is
//! bounded: per-channel caps on sends per cycle, deadlines on every wait.
//! A failure prints what was acknowledged and missing, and writes
//! `herald wal inspect` of the data dir next to the server logs.

use herald_tests::serde_json::{json, Value};
use herald_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 2;
const WEBPUSH_UAS: usize = 24;
const SIMPLEPUSH_UAS: usize = 12;
const CHANNELS_PER_UA: usize = 2;
/// Sends per channel and cycle. Kept low enough that an offline UA's backlog
/// (2 channels) stays well under `ua_outbox_frames_max` (256) on reconnect.
const WEBPUSH_PER_CHANNEL_PER_CYCLE: u64 = 60;
const SIMPLEPUSH_PER_CHANNEL_PER_CYCLE: u64 = 200;
/// A sender stops on its own after this long (the kill comes before).
const TRAFFIC_MAX: Duration = Duration::from_secs(5);
/// After the restart, everything acknowledged must arrive within this.
const COLLECT_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// deterministic randomness from a printed seed
// ---------------------------------------------------------------------------

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

fn seed() -> u64 {
    match std::env::var("HERALD_DURABILITY_SEED") {
        Ok(text) => text.parse().expect("HERALD_DURABILITY_SEED is a u64"),
        Err(_) => now_ms() ^ (std::process::id() as u64) << 32,
    }
}

// ---------------------------------------------------------------------------
// the model: UAs, channels, what was acknowledged, what was delivered
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Channel {
    id: String,
    endpoint: String,
    /// Next SimplePush version to send on this channel.
    next_version: u64,
}

#[derive(Clone, Debug)]
struct Ua {
    index: usize,
    uaid: String,
    webpush: bool,
    channels: Vec<Channel>,
}

impl Ua {
    fn shard(&self) -> usize {
        let bytes: Vec<u8> = (0..8)
            .map(|i| u8::from_str_radix(&self.uaid[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        (u64::from_le_bytes(bytes.try_into().unwrap()) % SHARDS as u64) as usize
    }
}

/// What the AS was told (2xx only), per channel.
#[derive(Default, Debug)]
struct Acked {
    /// channel id → Web Push bodies that got 201.
    webpush: HashMap<String, Vec<String>>,
    /// channel id → newest SimplePush version that got 200.
    simplepush: HashMap<String, u64>,
    /// Requests answered with something else (status → count).
    other_status: BTreeMap<u16, u64>,
    transport_errors_before_kill: u64,
    transport_errors_after_kill: u64,
    first_transport_error_before_kill: Option<String>,
}

/// What UAs received (over the whole test: before crashes and after restarts).
#[derive(Default, Debug)]
struct Delivered {
    webpush: HashSet<String>,
    simplepush: HashMap<String, u64>,
    frames: u64,
}

impl Delivered {
    /// Records one notification frame; returns the ack to send, if any.
    fn take(&mut self, frame: &Value) -> Option<Value> {
        if frame["messageType"] != "notification" {
            return None;
        }
        self.frames += 1;
        if let Some(updates) = frame["updates"].as_array() {
            for update in updates {
                let channel = update["channelID"].as_str().unwrap_or("").to_lowercase();
                if let Some(version) = update["version"].as_u64() {
                    let newest = self.simplepush.entry(channel).or_insert(0);
                    *newest = (*newest).max(version);
                }
            }
            return Some(json!({"messageType": "ack", "updates": updates}));
        }
        if let Some(data) = frame["data"].as_str() {
            let body = String::from_utf8_lossy(&b64url_decode(data)).to_string();
            self.webpush.insert(body);
        }
        Some(json!({"messageType": "ack", "updates": [
            {"channelID": frame["channelID"], "version": frame["version"], "code": 100}
        ]}))
    }
}

// ---------------------------------------------------------------------------
// AS side: keep-alive HTTP that never panics on a dead server
// ---------------------------------------------------------------------------

enum Sent {
    Status(u16),
    Transport(String),
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .redirects(0)
        .build()
}

fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Sent {
    let mut request = agent.request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match request.send_bytes(body) {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Sent::Transport(error.to_string()),
    };
    let status = response.status();
    // Read the body so the connection can be reused; a failure here still
    // leaves a complete status line, i.e. a real answer from the server.
    let _ = response.into_string();
    Sent::Status(status)
}

/// One AS thread: its own channels, round robin, until the server dies, its
/// caps are reached or `TRAFFIC_MAX` passes.
fn sender(
    cycle: usize,
    sender_index: usize,
    mut channels: Vec<(bool, Channel)>,
    killed: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) -> Vec<(bool, Channel)> {
    let agent = agent();
    let started = Instant::now();
    let mut sent_on: Vec<u64> = vec![0; channels.len()];
    let mut sequence = 0u64;
    'traffic: while started.elapsed() < TRAFFIC_MAX {
        let mut progressed = false;
        for (slot, (webpush, channel)) in channels.iter_mut().enumerate() {
            let cap = if *webpush {
                WEBPUSH_PER_CHANNEL_PER_CYCLE
            } else {
                SIMPLEPUSH_PER_CHANNEL_PER_CYCLE
            };
            if sent_on[slot] >= cap {
                continue;
            }
            sent_on[slot] += 1;
            progressed = true;
            let outcome;
            let mut what = None;
            if *webpush {
                sequence += 1;
                let body = format!("dur-c{cycle}-s{sender_index}-n{sequence}-{}", channel.id);
                outcome = send(
                    &agent,
                    "POST",
                    &channel.endpoint,
                    &[("TTL", "3600"), ("Content-Encoding", "aes128gcm")],
                    body.as_bytes(),
                );
                what = Some(body);
            } else {
                let version = channel.next_version;
                channel.next_version += 1;
                outcome = send(
                    &agent,
                    "PUT",
                    &channel.endpoint,
                    &[("Content-Type", "application/x-www-form-urlencoded")],
                    format!("version={version}").as_bytes(),
                );
                if let Sent::Status(200) = outcome {
                    let mut acked = acked.lock().unwrap();
                    let newest = acked.simplepush.entry(channel.id.clone()).or_insert(0);
                    *newest = (*newest).max(version);
                }
            }
            match outcome {
                Sent::Status(status) if (200..300).contains(&status) => {
                    if let Some(body) = what {
                        acked
                            .lock()
                            .unwrap()
                            .webpush
                            .entry(channel.id.clone())
                            .or_default()
                            .push(body);
                    }
                }
                Sent::Status(status) => {
                    *acked
                        .lock()
                        .unwrap()
                        .other_status
                        .entry(status)
                        .or_insert(0) += 1;
                }
                Sent::Transport(error) => {
                    let mut acked = acked.lock().unwrap();
                    if killed.load(Ordering::SeqCst) {
                        acked.transport_errors_after_kill += 1;
                        break 'traffic;
                    }
                    acked.transport_errors_before_kill += 1;
                    acked.first_transport_error_before_kill.get_or_insert(error);
                }
            }
        }
        if !progressed {
            break;
        }
    }
    channels
}

// ---------------------------------------------------------------------------
// UA side
// ---------------------------------------------------------------------------

/// A UA reading and acking during the traffic, until the server goes away.
fn live_reader(mut client: WsClient, stop: Arc<AtomicBool>, delivered: Arc<Mutex<Delivered>>) {
    loop {
        match client.next_event(Duration::from_millis(100)) {
            WsEvent::Text(text) => {
                let frame: Value = match serde_json::from_str(&text) {
                    Ok(frame) => frame,
                    Err(_) => continue,
                };
                let ack = delivered.lock().unwrap().take(&frame);
                if let Some(ack) = ack {
                    if client.try_send_text(&ack.to_string()).is_err() {
                        return;
                    }
                }
            }
            WsEvent::Timeout | WsEvent::Ping(_) | WsEvent::Pong(_) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            WsEvent::Close(..) | WsEvent::Eof(_) | WsEvent::Binary(_) => return,
        }
    }
}

/// Reconnects `ua` with its UAID, registers its channels again and checks the
/// endpoints are the same; notifications arriving meanwhile are recorded and
/// acked.
fn reconnect(server: &Server, ua: &Ua, delivered: &Mutex<Delivered>) -> WsClient {
    let mut client = server.ua();
    let reply = client.hello(Some(&ua.uaid), None, ua.webpush);
    assert_eq!(
        reply["uaid"],
        ua.uaid,
        "UA {} (shard {}) keeps its UAID across the crash: {reply}",
        ua.index,
        ua.shard()
    );
    for channel in &ua.channels {
        client.send_json(&json!({"messageType": "register", "channelID": channel.id}));
    }
    let mut endpoints: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + DEADLINE;
    while endpoints.len() < ua.channels.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = client.try_recv_json(left).unwrap_or_else(|| {
            panic!(
                "UA {} ({}): no register replies within {DEADLINE:?} after restart (got {endpoints:?})",
                ua.index, ua.uaid
            )
        });
        if frame["messageType"] == "register" {
            assert_eq!(
                frame["status"], 200,
                "UA {}: register after restart: {frame}",
                ua.index
            );
            endpoints.insert(
                frame["channelID"].as_str().unwrap_or("").to_lowercase(),
                frame["pushEndpoint"].as_str().unwrap_or("").to_string(),
            );
            continue;
        }
        let ack = delivered.lock().unwrap().take(&frame);
        if let Some(ack) = ack {
            client.send_json(&ack);
        }
    }
    for channel in &ua.channels {
        assert_eq!(
            endpoints.get(&channel.id),
            Some(&channel.endpoint),
            "UA {} ({}, {}) gets the same endpoint for channel {} after the crash",
            ua.index,
            ua.uaid,
            if ua.webpush { "Web Push" } else { "SimplePush" },
            channel.id
        );
    }
    client
}

/// What is still missing: (UA index, description) for every acknowledged
/// message not delivered yet.
fn missing(uas: &[Ua], acked: &Acked, delivered: &Delivered) -> Vec<(usize, String)> {
    let mut out = vec![];
    for ua in uas {
        for channel in &ua.channels {
            if ua.webpush {
                for body in acked.webpush.get(&channel.id).into_iter().flatten() {
                    if !delivered.webpush.contains(body) {
                        out.push((ua.index, format!("Web Push body {body:?}")));
                    }
                }
            } else if let Some(version) = acked.simplepush.get(&channel.id) {
                let got = delivered.simplepush.get(&channel.id).copied();
                if got.is_none_or(|got| got < *version) {
                    out.push((
                        ua.index,
                        format!(
                            "SimplePush channel {} version {version} acked, newest delivered {got:?}",
                            channel.id
                        ),
                    ));
                }
            }
        }
    }
    out
}

fn wal_inspect(server: &Server) -> String {
    let output = std::process::Command::new(herald_bin())
        .args(["wal", "inspect"])
        .arg(server.data_dir())
        .output()
        .expect("run herald wal inspect");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let path = server.dir().join("wal-inspect.txt");
    let _ = std::fs::write(&path, &text);
    let lines: Vec<&str> = text.lines().collect();
    let summary: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| {
            line.starts_with("data dir")
                || line.starts_with("==")
                || line.starts_with("summary")
                || line.contains("snap-")
                || line.contains("wal-")
                || line.to_lowercase().contains("damaged")
                || line.to_lowercase().contains("torn")
        })
        .take(60)
        .collect();
    format!(
        "herald wal inspect {} (full output: {}):\n{}\n... last lines:\n{}",
        server.data_dir().display(),
        path.display(),
        summary.join("\n"),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

// ---------------------------------------------------------------------------
// the scenario
// ---------------------------------------------------------------------------

fn crash_cycles(fsync: &str, cycles: usize, senders: usize) {
    let seed = seed();
    eprintln!("[durability] fsync={fsync} seed={seed} (HERALD_DURABILITY_SEED={seed} to repeat)");
    let mut rng = SplitMix(seed);
    let mut server = Server::start(
        ServerOptions::new()
            .shards(SHARDS)
            .fsync(fsync)
            .limit("retry_interval_ms", 300)
            .limit("pending_per_uaid_max", 100_000),
    );

    // UAs and channels.
    let mut uas: Vec<Ua> = vec![];
    for index in 0..WEBPUSH_UAS + SIMPLEPUSH_UAS {
        let webpush = index < WEBPUSH_UAS;
        let mut client = server.ua();
        client.hello(None, None, webpush);
        let channels = (0..CHANNELS_PER_UA)
            .map(|_| {
                let (id, endpoint) = client.register_new();
                Channel {
                    id: id.to_lowercase(),
                    endpoint,
                    next_version: 1,
                }
            })
            .collect();
        uas.push(Ua {
            index,
            uaid: client.uaid(),
            webpush,
            channels,
        });
        client.close();
    }
    let per_shard = (0..SHARDS)
        .map(|shard| uas.iter().filter(|ua| ua.shard() == shard).count())
        .collect::<Vec<_>>();
    eprintln!("[durability] {} UAs, per shard {per_shard:?}", uas.len());

    let acked = Arc::new(Mutex::new(Acked::default()));
    let delivered = Arc::new(Mutex::new(Delivered::default()));

    for cycle in 0..cycles {
        // UAs with an odd index read and ack during the traffic.
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = uas
            .iter()
            .filter(|ua| ua.index % 2 == 1)
            .map(|ua| {
                let client = reconnect(&server, ua, &delivered);
                let (stop, delivered) = (stop.clone(), delivered.clone());
                std::thread::spawn(move || live_reader(client, stop, delivered))
            })
            .collect();

        // Senders: channel k goes to sender k % senders, so one thread owns a
        // channel and its SimplePush versions increase in order.
        let killed = Arc::new(AtomicBool::new(false));
        let mut shares: Vec<Vec<(bool, Channel)>> = vec![vec![]; senders];
        let mut k = 0;
        for ua in &uas {
            for channel in &ua.channels {
                shares[k % senders].push((ua.webpush, channel.clone()));
                k += 1;
            }
        }
        let before = {
            let a = acked.lock().unwrap();
            a.webpush.values().map(Vec::len).sum::<usize>()
        };
        let threads: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(index, share)| {
                let (killed, acked) = (killed.clone(), acked.clone());
                std::thread::spawn(move || sender(cycle, index, share, killed, acked))
            })
            .collect();
        let kill_after = Duration::from_millis(rng.range(300, 1500));
        std::thread::sleep(kill_after);
        let at_kill = {
            let a = acked.lock().unwrap();
            a.webpush.values().map(Vec::len).sum::<usize>() - before
        };
        killed.store(true, Ordering::SeqCst);
        server.kill9();
        let mut channels_back: HashMap<String, Channel> = HashMap::new();
        for thread in threads {
            for (_, channel) in thread.join().expect("sender thread") {
                channels_back.insert(channel.id.clone(), channel);
            }
        }
        stop.store(true, Ordering::SeqCst);
        for reader in readers {
            reader.join().expect("reader thread");
        }
        for ua in &mut uas {
            for channel in &mut ua.channels {
                channel.next_version = channels_back[&channel.id].next_version;
            }
        }
        {
            let a = acked.lock().unwrap();
            eprintln!(
                "[durability] cycle {cycle}: SIGKILL after {kill_after:?} ({at_kill} Web Push 201s this cycle by then); \
                 totals: {} Web Push 201, {} SimplePush channels with a 200, other statuses {:?}, \
                 transport errors before/after kill {}/{} (first before: {:?})",
                a.webpush.values().map(Vec::len).sum::<usize>(),
                a.simplepush.len(),
                a.other_status,
                a.transport_errors_before_kill,
                a.transport_errors_after_kill,
                a.first_transport_error_before_kill
            );
        }

        // Restart on the same data dir and ports; every UA comes back.
        let restarted = Instant::now();
        server.restart();
        eprintln!(
            "[durability] cycle {cycle}: restarted in {:?}",
            restarted.elapsed()
        );
        let mut clients: Vec<(usize, WsClient)> = uas
            .iter()
            .map(|ua| (ua.index, reconnect(&server, ua, &delivered)))
            .collect();
        let deadline = Instant::now() + COLLECT_DEADLINE;
        loop {
            let gaps = missing(&uas, &acked.lock().unwrap(), &delivered.lock().unwrap());
            if gaps.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let acked = acked.lock().unwrap();
                let delivered = delivered.lock().unwrap();
                let mut report = format!(
                    "LOST ACKNOWLEDGED MESSAGES (fsync={fsync}, seed={seed}, cycle {cycle}): \
                     {} missing after {COLLECT_DEADLINE:?}\n",
                    gaps.len()
                );
                for (index, what) in gaps.iter().take(40) {
                    let ua = &uas[*index];
                    report.push_str(&format!(
                        "  UA {index} uaid {} shard {} {}: {what}\n",
                        ua.uaid,
                        ua.shard(),
                        if ua.webpush { "webpush" } else { "simplepush" }
                    ));
                }
                report.push_str(&format!(
                    "acknowledged: {} Web Push bodies, {} SimplePush channels; delivered: {} Web Push bodies, {} frames\n",
                    acked.webpush.values().map(Vec::len).sum::<usize>(),
                    acked.simplepush.len(),
                    delivered.webpush.len(),
                    delivered.frames
                ));
                report.push_str(&wal_inspect(&server));
                panic!("{report}");
            }
            for (_, client) in clients.iter_mut() {
                if let Some(frame) = client.try_recv_json(Duration::from_millis(20)) {
                    let ack = delivered.lock().unwrap().take(&frame);
                    if let Some(ack) = ack {
                        client.send_json(&ack);
                    }
                }
            }
        }
        {
            let delivered = delivered.lock().unwrap();
            eprintln!(
                "[durability] cycle {cycle}: every acknowledged message delivered ({} Web Push bodies, {} frames so far)",
                delivered.webpush.len(),
                delivered.frames
            );
        }
        for (_, client) in clients {
            client.close();
        }
    }
    let acked = acked.lock().unwrap();
    assert!(
        acked.webpush.values().map(Vec::len).sum::<usize>() > 0 && !acked.simplepush.is_empty(),
        "the traffic got some 2xx at all: {acked:?}"
    );
}

#[test]
fn sigkill_during_traffic_loses_no_acknowledged_message_fsync_batch() {
    crash_cycles("batch", 3, 6);
}

#[test]
fn sigkill_during_traffic_loses_no_acknowledged_message_fsync_always() {
    crash_cycles("always", 2, 4);
}

/// A backlog larger than one outbox (`ua_outbox_frames_max`, 256 by
/// default) but within `pending_per_uaid_max` (1,000 by default): every
/// acknowledged message is delivered when the UA reconnects, with or without
/// a crash in between.
fn large_backlog(crash: bool) {
    const BACKLOG: usize = 400;
    let mut server = Server::start(ServerOptions::new().shards(SHARDS));
    let mut client = server.ua_webpush();
    let uaid = client.uaid();
    let (channel, endpoint) = client.register_new();
    client.close();
    let agent = agent();
    for n in 0..BACKLOG {
        match send(
            &agent,
            "POST",
            &endpoint,
            &[("TTL", "3600"), ("Content-Encoding", "aes128gcm")],
            format!("backlog-{n}").as_bytes(),
        ) {
            Sent::Status(201) => {}
            Sent::Status(status) => panic!("POST {n}: HTTP {status}"),
            Sent::Transport(error) => panic!("POST {n}: {error}"),
        }
    }
    if crash {
        server.kill9();
        server.restart();
    }
    let mut client = server.ua();
    client.send_json(&json!({"messageType": "hello", "uaid": uaid, "use_webpush": true}));
    let mut hello = None;
    let mut got = HashSet::new();
    let deadline = Instant::now() + COLLECT_DEADLINE;
    while got.len() < BACKLOG && Instant::now() < deadline {
        match client.next_event(Duration::from_millis(200)) {
            WsEvent::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                if frame["messageType"] == "hello" {
                    assert_eq!(frame["uaid"], uaid, "same UAID: {frame}");
                    hello = Some(frame);
                } else if frame["messageType"] == "notification" {
                    assert!(same_channel(&frame["channelID"], &channel), "{frame}");
                    got.insert(String::from_utf8_lossy(&notification_data(&frame)).to_string());
                    client.ack_notification(&frame);
                }
            }
            WsEvent::Close(code, reason) => panic!(
                "server closed the socket ({code:?} {reason:?}) after {} of {BACKLOG} pending \
                 messages (hello reply: {hello:?})",
                got.len()
            ),
            WsEvent::Eof(how) => panic!(
                "server dropped the socket ({how}) after {} of {BACKLOG} acknowledged pending \
                 messages (hello reply: {hello:?}); crash before: {crash}",
                got.len()
            ),
            _ => {}
        }
    }
    assert!(hello.is_some(), "a hello reply");
    assert_eq!(
        got.len(),
        BACKLOG,
        "every acknowledged message of the backlog is delivered"
    );
}

#[test]
fn a_large_backlog_survives_sigkill_and_is_delivered() {
    large_backlog(true);
}

#[test]
fn a_large_backlog_is_delivered_on_reconnect() {
    large_backlog(false);
}
