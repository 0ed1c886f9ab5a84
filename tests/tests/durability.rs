//! Crash durability, seen from outside (SPEC §2 `--fsync`, §7): "a 2xx to an
//! AS means the notification is in the owning shard's WAL on disk; a crash
//! after that loses nothing".
//!
//! The test: a 2-shard server with a short `retry_interval_ms`, a few dozen
//! UAs (Web Push and SimplePush sockets), several AS threads sending
//! concurrently (Web Push POSTs with a unique body per message, SimplePush
//! PUTs with increasing versions per channel), and a SIGKILL in the middle of
//! the traffic, once the cycle has had a number of 2xx answers drawn from a
//! printed seed. Then a restart on the same data dir and ports, every UA
//! reconnects with its UAID (and gets the same endpoints back when it
//! registers its channels again), and:
//! - every Web Push message that got a 2xx is delivered (before the crash or
//!   after the restart), identified by its unique body;
//! - for every SimplePush channel, the newest version that got a 2xx (or a
//!   newer one) is delivered.
//!
//! The kill must land in traffic, and the traffic must be clean up to it:
//! every sender is still sending when the kill comes (none has reached its
//! caps), at least one request is outstanding across the kill, and before it
//! no request failed (no transport error, no non-2xx answer).
//!
//! Half of the UAs are connected (reading and acking) during the traffic,
//! half are offline, so both "stored then replayed" and "delivered, acked or
//! not, then crashed" paths are covered. Repeated for 3 cycles with
//! `--fsync batch` (the default), 2 cycles with `--fsync always`, and 3
//! cycles with a tiny `wal_compact_after_bytes`, where each cycle must write a
//! new snapshot before its kill (so replay starts from a snapshot that was
//! written under traffic, and the kill may land in the next compaction).
//!
//! Reproduce a run with `HERALD_DURABILITY_SEED=<seed printed>`. Everything is
//! bounded: per-channel caps on sends per cycle, deadlines on every wait.
//! A failure prints what was acknowledged and missing, and writes
//! `herald wal inspect` of the data dir next to the server logs.

use herald_tests::serde_json::{json, Value};
use herald_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 2;
const WEBPUSH_UAS: usize = 24;
const SIMPLEPUSH_UAS: usize = 12;
const CHANNELS_PER_UA: usize = 2;
/// Web Push sends per channel and cycle. Kept low enough that an offline
/// UA's backlog (2 channels) stays well under `ua_outbox_frames_max` (256) on
/// reconnect.
const WEBPUSH_PER_CHANNEL_PER_CYCLE: u64 = 60;
/// SimplePush versions collapse to one pending update per channel, so this
/// cap only bounds a cycle. It is high so that the senders are still going
/// when the kill comes, even when the kill waits for a compaction (the
/// server looks for one about once a second).
const SIMPLEPUSH_PER_CHANNEL_PER_CYCLE: u64 = 5000;
/// The kill comes once the cycle has had this many 2xx answers (drawn from
/// the seed). The top is far below what any one sender may send in a cycle
/// (at least 8 Web Push channels x 60 + 4 SimplePush channels x 5,000, with
/// 6 senders), so no sender can have stopped at its caps by then.
const KILL_AFTER_2XX: Range<u64> = 100..1000;
/// The kill point must be reached within this (a bound, not a pause).
const KILL_DEADLINE: Duration = Duration::from_secs(60);
/// After the restart, everything acknowledged must arrive within this.
const COLLECT_DEADLINE: Duration = Duration::from_secs(20);

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

/// One cycle's traffic as the senders and the killer see it.
#[derive(Default)]
struct Traffic {
    /// Set just before the SIGKILL: a failure after it is expected.
    killed: AtomicBool,
    /// 2xx answers in this cycle: the kill is triggered by this count.
    answered_2xx: AtomicU64,
    /// Senders that have not stopped on their own (caps reached).
    sending: AtomicUsize,
    /// Requests sent before the kill flag was set and answered (or failed)
    /// after it: outstanding across the kill.
    across_kill: AtomicU64,
}

/// One AS thread: its own channels, round robin, until the server dies or
/// its caps are reached.
fn sender(
    cycle: usize,
    sender_index: usize,
    mut channels: Vec<(bool, Channel)>,
    traffic: Arc<Traffic>,
    acked: Arc<Mutex<Acked>>,
) -> Vec<(bool, Channel)> {
    let agent = agent();
    let mut sent_on: Vec<u64> = vec![0; channels.len()];
    let mut sequence = 0u64;
    'traffic: loop {
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
            let sent_before_kill = !traffic.killed.load(Ordering::SeqCst);
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
            let killed = traffic.killed.load(Ordering::SeqCst);
            if sent_before_kill && killed {
                traffic.across_kill.fetch_add(1, Ordering::SeqCst);
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
                    traffic.answered_2xx.fetch_add(1, Ordering::SeqCst);
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
                    if killed {
                        acked.transport_errors_after_kill += 1;
                        break 'traffic;
                    }
                    acked.transport_errors_before_kill += 1;
                    acked.first_transport_error_before_kill.get_or_insert(error);
                }
            }
        }
        if !progressed {
            // Caps reached: this sender stops on its own, before any kill.
            traffic.sending.fetch_sub(1, Ordering::SeqCst);
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

/// One crash test: how the server syncs and compacts, and how hard it is hit.
struct Scenario {
    fsync: &'static str,
    cycles: usize,
    senders: usize,
    /// `[limits] wal_compact_after_bytes`. When set, every cycle must write a
    /// new snapshot before its kill.
    compact_after_bytes: Option<u64>,
}

/// Snapshot files (`snap-<covered LSN>.snap`) of every shard. A compaction
/// that completed leaves a name that was not there before.
fn snapshots(server: &Server) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for shard in 0..SHARDS {
        let dir = server.data_dir().join(format!("shard-{shard}"));
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("snap-") && name.ends_with(".snap") {
                names.insert(format!("shard-{shard}/{name}"));
            }
        }
    }
    names
}

/// What the killer saw when it pulled the trigger.
struct AtKill {
    /// 2xx answers this cycle.
    answered_2xx: u64,
    /// Senders still sending (not stopped at their caps).
    sending: usize,
    /// Snapshots written during the cycle's traffic.
    new_snapshots: Vec<String>,
}

/// Waits until the cycle has had `target` 2xx answers (and, when the
/// scenario compacts, a new snapshot is on disk), every sender still going,
/// or until `KILL_DEADLINE`; then sets the kill flag and SIGKILLs the server.
fn kill_in_traffic(
    server: &mut Server,
    scenario: &Scenario,
    traffic: &Traffic,
    target: u64,
    snapshots_before: &BTreeSet<String>,
) -> AtKill {
    let deadline = Instant::now() + KILL_DEADLINE;
    let new_snapshots = || -> Vec<String> {
        snapshots(server)
            .difference(snapshots_before)
            .cloned()
            .collect()
    };
    loop {
        let reached = traffic.answered_2xx.load(Ordering::SeqCst) >= target
            && (scenario.compact_after_bytes.is_none() || !new_snapshots().is_empty());
        let stopped = traffic.sending.load(Ordering::SeqCst) < scenario.senders;
        if reached || stopped || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    traffic.killed.store(true, Ordering::SeqCst);
    let answered_2xx = traffic.answered_2xx.load(Ordering::SeqCst);
    let sending = traffic.sending.load(Ordering::SeqCst);
    let new_snapshots = new_snapshots();
    server.kill9();
    AtKill {
        answered_2xx,
        sending,
        new_snapshots,
    }
}

/// The kill landed in clean traffic: every sender was still going, requests
/// were outstanding across it, nothing had failed before it, and (when the
/// scenario compacts) a snapshot had been written in the cycle.
fn assert_killed_in_clean_traffic(
    scenario: &Scenario,
    what: &str,
    target: u64,
    at_kill: &AtKill,
    traffic: &Traffic,
    acked: &Acked,
) {
    if let Some(bytes) = scenario.compact_after_bytes {
        assert!(
            !at_kill.new_snapshots.is_empty(),
            "{what}: a compaction (wal_compact_after_bytes = {bytes}) wrote a snapshot before the kill"
        );
    }
    assert_eq!(
        at_kill.sending,
        scenario.senders,
        "{what}: every sender was still sending at the kill ({} of {} had stopped at their caps)",
        scenario.senders - at_kill.sending,
        scenario.senders
    );
    let across_kill = traffic.across_kill.load(Ordering::SeqCst);
    assert!(
        across_kill > 0,
        "{what}: requests were outstanding at the kill (none was sent before it and answered after)"
    );
    assert!(
        at_kill.answered_2xx >= target,
        "{what}: the kill point ({target} 2xx answers) was reached: only {} within {KILL_DEADLINE:?}",
        at_kill.answered_2xx
    );
    assert_eq!(
        acked.transport_errors_before_kill, 0,
        "{what}: no transport error before the kill (first: {:?})",
        acked.first_transport_error_before_kill
    );
    assert!(
        acked.other_status.is_empty(),
        "{what}: every answer was a 2xx (others, status -> count: {:?})",
        acked.other_status
    );
}

fn crash_cycles(scenario: Scenario) {
    let seed = seed();
    let fsync = scenario.fsync;
    eprintln!(
        "[durability] fsync={fsync} compact_after_bytes={:?} seed={seed} (HERALD_DURABILITY_SEED={seed} to repeat)",
        scenario.compact_after_bytes
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut options = ServerOptions::new()
        .shards(SHARDS)
        .fsync(fsync)
        .limit("retry_interval_ms", 300)
        .limit("pending_per_uaid_max", 100_000);
    if let Some(bytes) = scenario.compact_after_bytes {
        options = options.limit("wal_compact_after_bytes", bytes);
    }
    let mut server = Server::start(options);

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

    for cycle in 0..scenario.cycles {
        let what = format!("fsync={fsync}, seed={seed}, cycle {cycle}");
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
        let traffic = Arc::new(Traffic {
            sending: AtomicUsize::new(scenario.senders),
            ..Traffic::default()
        });
        let mut shares: Vec<Vec<(bool, Channel)>> = vec![vec![]; scenario.senders];
        let mut k = 0;
        for ua in &uas {
            for channel in &ua.channels {
                shares[k % scenario.senders].push((ua.webpush, channel.clone()));
                k += 1;
            }
        }
        let before = {
            let a = acked.lock().unwrap();
            a.webpush.values().map(Vec::len).sum::<usize>()
        };
        let snapshots_before = snapshots(&server);
        let threads: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(index, share)| {
                let (traffic, acked) = (traffic.clone(), acked.clone());
                std::thread::spawn(move || sender(cycle, index, share, traffic, acked))
            })
            .collect();
        let target = rng.gen_range(KILL_AFTER_2XX);
        let at_kill = kill_in_traffic(&mut server, &scenario, &traffic, target, &snapshots_before);
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
                "[durability] cycle {cycle}: SIGKILL after {} 2xx (target {target}; {} Web Push 201s), \
                 {} senders going, {} requests across the kill, new snapshots {:?}; \
                 totals: {} Web Push 201, {} SimplePush channels with a 200, other statuses {:?}, \
                 transport errors before/after kill {}/{} (first before: {:?})",
                at_kill.answered_2xx,
                a.webpush.values().map(Vec::len).sum::<usize>() - before,
                at_kill.sending,
                traffic.across_kill.load(Ordering::SeqCst),
                at_kill.new_snapshots,
                a.webpush.values().map(Vec::len).sum::<usize>(),
                a.simplepush.len(),
                a.other_status,
                a.transport_errors_before_kill,
                a.transport_errors_after_kill,
                a.first_transport_error_before_kill
            );
            assert_killed_in_clean_traffic(&scenario, &what, target, &at_kill, &traffic, &a);
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
                    "LOST ACKNOWLEDGED MESSAGES ({what}): {} missing after {COLLECT_DEADLINE:?}\n",
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
        // With 2 shards, about half of the reconnects land on the shard that
        // does not own the UAID: the restarted server hands sockets off.
        server.assert_hand_offs();
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
    crash_cycles(Scenario {
        fsync: "batch",
        cycles: 3,
        senders: 6,
        compact_after_bytes: None,
    });
}

#[test]
fn sigkill_during_traffic_loses_no_acknowledged_message_fsync_always() {
    crash_cycles(Scenario {
        fsync: "always",
        cycles: 2,
        senders: 4,
        compact_after_bytes: None,
    });
}

/// The same crash cycles with a log compacted every 4 KiB: each cycle writes
/// snapshots under traffic and the kill may land in a compaction; replay
/// starts from the newest complete snapshot.
#[test]
fn sigkill_during_traffic_and_compaction_loses_no_acknowledged_message() {
    crash_cycles(Scenario {
        fsync: "batch",
        cycles: 3,
        senders: 6,
        compact_after_bytes: Some(4096),
    });
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
