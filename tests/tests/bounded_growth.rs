//! Issue 13, bounded growth: a hello that never registers a channel leaves
//! nothing durable and nothing in memory once its socket is gone, so a
//! stream of anonymous hellos leaves the WAL, the server's RSS and "known
//! UAs" flat, and the server keeps serving normal UAs.
//!
//! The connections come one after another (connect, hello, close), so the
//! process stays far below its open-file limit. `HERALD_ANON_HELLOS=<n>`
//! sets their number; bench/RESULTS.md ("Anonymous hellos") has a run of
//! 100,000.

use std::path::Path;
use std::time::Duration;

use herald_tests::serde_json::json;
use herald_tests::*;

/// Hellos in a CI run: enough that one record, or one map entry, per hello
/// would show in every figure below.
const HELLOS_DEFAULT: usize = 20_000;
/// Hellos before the baseline is taken: the allocator's and the runtime's
/// pools reach their working size.
const WARM_UP_HELLOS: usize = 2_000;
/// RSS growth allowed over the run: allocator noise, far below the cost of
/// keeping a UA entry per hello (about 100 bytes each at the least).
const RSS_GROWTH_MAX_BYTES: u64 = 1 << 20;
/// How long the hellos may take, at most (a CI machine, shared).
const RUN_DEADLINE: Duration = Duration::from_secs(600);

fn hellos() -> usize {
    std::env::var("HERALD_ANON_HELLOS")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(HELLOS_DEFAULT)
}

/// The sum of a metric's samples over its shards, by exact name.
fn metric(server: &Server, name: &str) -> f64 {
    server
        .metrics()
        .iter()
        .filter(|(sample, _)| metric_name(sample) == name)
        .map(|(_, value)| *value)
        .sum()
}

/// The server's resident set size, from /proc/<pid>/status.
fn rss_bytes(server: &Server) -> u64 {
    let pid = server.pid().expect("server running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    kib * 1024
}

/// Bytes of every file under `dir` (the WAL segments and snapshots of every
/// shard, the key file, the lock).
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("read {}: {error}", dir.display()))
        .flatten()
        .map(|entry| {
            let metadata = entry.metadata().expect("metadata");
            if metadata.is_dir() {
                bytes_under(&entry.path())
            } else {
                metadata.len()
            }
        })
        .sum()
}

/// What must not grow.
#[derive(Debug, PartialEq)]
struct Footprint {
    records_synced: f64,
    wal_bytes: f64,
    data_dir_bytes: u64,
    known_uas: f64,
}

/// Taken once the server has published the end of the last hello: only
/// the regular UA's socket open (an anonymous UA is forgotten with its
/// socket), every record synced.
fn footprint(server: &Server) -> Footprint {
    wait_until(DEADLINE, "every anonymous socket closed", || {
        metric(server, "herald_connections") == 1.0
    });
    // Published once a second: a second publication shows the settled state.
    std::thread::sleep(Duration::from_millis(1_100));
    Footprint {
        records_synced: metric(server, "herald_wal_records_synced_total"),
        wal_bytes: metric(server, "herald_wal_bytes"),
        data_dir_bytes: bytes_under(&server.data_dir()),
        known_uas: metric(server, "herald_user_agents"),
    }
}

/// `count` UAs connect, say hello without UAID (Firefox's first hello, or
/// SimplePush's), get a fresh UAID and hang up. Returns the last UAID.
fn anonymous_hellos(server: &Server, count: usize, deadline: std::time::Instant) -> String {
    let mut uaid = String::new();
    for index in 0..count {
        assert!(
            std::time::Instant::now() < deadline,
            "{index} of {count} hellos done in {RUN_DEADLINE:?}"
        );
        let mut ua = server.ua();
        let hello = if index % 2 == 0 {
            json!({"messageType": "hello", "broadcasts": {}, "use_webpush": true})
        } else {
            json!({"messageType": "hello"})
        };
        let reply = ua.hello_raw(&hello);
        assert_eq!(reply["status"], 200, "{reply}");
        uaid = ua.uaid();
        if index % 2 == 0 {
            ua.close();
        } else {
            ua.drop_tcp();
        }
    }
    uaid
}

#[test]
fn anonymous_hellos_leave_the_wal_rss_and_known_uas_flat() {
    let server = Server::start(ServerOptions::new().shards(2));
    // A real UA with a channel, so the figures start from a live server.
    let mut regular = server.ua_webpush();
    let (_, endpoint) = regular.register_new();
    let deadline = std::time::Instant::now() + RUN_DEADLINE;
    anonymous_hellos(&server, WARM_UP_HELLOS, deadline);
    let before = footprint(&server);
    let rss_before = rss_bytes(&server);
    assert_eq!(before.known_uas, 1.0, "only the registered UA is known");

    let count = hellos();
    let last = anonymous_hellos(&server, count, deadline);
    let after = footprint(&server);
    let rss_after = rss_bytes(&server);
    eprintln!(
        "{count} anonymous hellos: WAL {} -> {} bytes ({} -> {} records synced), \
         data dir {} -> {} bytes, known UAs {} -> {}, RSS {rss_before} -> {rss_after} bytes",
        before.wal_bytes,
        after.wal_bytes,
        before.records_synced,
        after.records_synced,
        before.data_dir_bytes,
        after.data_dir_bytes,
        before.known_uas,
        after.known_uas,
    );
    assert_eq!(after, before, "anonymous hellos left a trace");
    assert!(
        rss_after <= rss_before + RSS_GROWTH_MAX_BYTES,
        "RSS grew by {} bytes over {count} anonymous hellos (allowed {RSS_GROWTH_MAX_BYTES})",
        rss_after.saturating_sub(rss_before)
    );

    // A UAID from the stream is still good: it authenticates itself.
    let mut returning = server.ua_resume(&last, true);
    returning.register_new();
    // And the server still serves its regular UA.
    push_aes128gcm(&endpoint, b"still here", 60).assert_status(201, "push after the hellos");
    let notification = regular.recv_notification(DEADLINE);
    assert_eq!(notification_data(&notification), b"still here");
}
