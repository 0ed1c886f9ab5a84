//! Operations endpoints (SPEC §4.3): health, `/metrics`, `/about`. The
//! admin listener serves them all; the public AS listener asks the admin
//! token for the private ones ([`Page::is_private`]).

use serde_json::{json, Map, Value};

use herald_engine::push::{errno, HttpResponse};

use crate::health::Readiness;
use crate::metrics::ShardSnapshot;
use crate::shared::Shared;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// `/health/live`: the process answers.
    Live,
    /// `/health` and `/health/ready`: it should be sent traffic.
    Ready,
    Metrics,
    About,
}

impl Page {
    /// The page a request asks for, if it asks for one.
    pub fn of(method: &str, path: &str) -> Option<Page> {
        if method != "GET" {
            return None;
        }
        match path {
            "/health" | "/health/ready" => Some(Page::Ready),
            "/health/live" => Some(Page::Live),
            "/metrics" => Some(Page::Metrics),
            "/about" | "/" => Some(Page::About),
            _ => None,
        }
    }

    /// Pages that tell an outsider about the deployment's size and load.
    pub fn is_private(self) -> bool {
        matches!(self, Page::Metrics | Page::About)
    }

    pub fn answer(self, shared: &Shared) -> HttpResponse {
        match self {
            Page::Live => live(shared),
            Page::Ready => ready(shared),
            Page::Metrics => metrics(shared),
            Page::About => about(shared),
        }
    }
}

/// The answer to anything else on the admin listener.
pub fn not_found() -> HttpResponse {
    HttpResponse::error(
        404,
        errno::NOT_FOUND,
        "the admin listener serves /health, /health/live, /health/ready, /metrics and /about",
    )
}

/// Every shard's last published snapshot, in shard order.
fn snapshots(shared: &Shared) -> Vec<ShardSnapshot> {
    shared
        .snapshots
        .iter()
        .map(|slot| slot.lock().map(|snapshot| *snapshot).unwrap_or_default())
        .collect()
}

fn totals(snapshots: &[ShardSnapshot]) -> ShardSnapshot {
    let mut total = ShardSnapshot::default();
    for snapshot in snapshots {
        total.connections += snapshot.connections;
        total.user_agents += snapshot.user_agents;
        total.asleep += snapshot.asleep;
        total.pending += snapshot.pending;
        total.notifications_in += snapshot.notifications_in;
        total.notifications_out += snapshot.notifications_out;
        total.in_per_s += snapshot.in_per_s;
        total.out_per_s += snapshot.out_per_s;
        total.wal_bytes += snapshot.wal_bytes;
    }
    total
}

/// What every health answer says: its status, the build, the shard count
/// and the uptime.
fn status_body(shared: &Shared, status: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("status".to_owned(), status.into());
    body.insert("version".to_owned(), shared.build.version.into());
    body.insert("commit".to_owned(), shared.build.commit.into());
    body.insert("shards".to_owned(), shared.config.shards.into());
    let uptime_s = shared.started.elapsed().as_secs();
    body.insert("uptime_s".to_owned(), uptime_s.into());
    body
}

fn live(shared: &Shared) -> HttpResponse {
    HttpResponse::json(200, Value::Object(status_body(shared, "OK")).to_string())
}

fn readiness(shared: &Shared) -> Readiness {
    let shutting_down = shared.shutdown.load(std::sync::atomic::Ordering::Relaxed);
    shared.states.readiness(shutting_down)
}

fn readiness_text(shared: &Shared) -> String {
    match readiness(shared) {
        Readiness::Ready => "ready".to_owned(),
        Readiness::NotReady { reason, .. } => format!("not ready: {reason}"),
    }
}

/// 200 while every shard serves; 503 with the reason while one replays, after
/// a store failure, or while shutting down. (A cluster store that cannot be
/// reached will be a reason too, once there is one.)
fn ready(shared: &Shared) -> HttpResponse {
    match readiness(shared) {
        Readiness::Ready => live(shared),
        Readiness::NotReady {
            reason,
            replaying,
            store_failed,
        } => {
            let mut body = status_body(shared, "UNAVAILABLE");
            body.insert("reason".to_owned(), reason.into());
            body.insert("replaying".to_owned(), json!(replaying));
            body.insert("store_failed".to_owned(), json!(store_failed));
            HttpResponse::json(503, Value::Object(body).to_string())
        }
    }
}

fn metrics(shared: &Shared) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        headers: Vec::new(),
        body: shared.metrics.encode(),
    }
}

/// How often `/about` reloads itself in a browser.
const ABOUT_REFRESH_S: u32 = 5;

/// The page for people: the process, then a row per shard. Rates are over
/// the last minute (`rate_window.rs`), and the page reloads itself.
fn about(shared: &Shared) -> HttpResponse {
    let shards = snapshots(shared);
    let total = totals(&shards);
    let uptime_s = shared.started.elapsed().as_secs();
    let config = &shared.config;
    let rows = [
        (
            "Version",
            format!("{} (commit {})", shared.build.version, shared.build.commit),
        ),
        (
            "Uptime",
            format!(
                "{}h {}m {}s",
                uptime_s / 3600,
                uptime_s / 60 % 60,
                uptime_s % 60
            ),
        ),
        ("Shards", config.shards.to_string()),
        ("Connected UAs", total.connections.to_string()),
        ("UAs asleep (UDP wakeup)", total.asleep.to_string()),
        ("Known UAs", total.user_agents.to_string()),
        ("Pending notifications", total.pending.to_string()),
        (
            "Notifications in (per second, last minute)",
            format!("{:.2}", total.in_per_s),
        ),
        (
            "Notifications out (per second, last minute)",
            format!("{:.2}", total.out_per_s),
        ),
        ("WAL size on disk", format!("{} bytes", total.wal_bytes)),
        ("Fsync mode", config.fsync.as_str().to_owned()),
        ("Readiness", readiness_text(shared)),
    ];
    let mut body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{ABOUT_REFRESH_S}\"><title>Herald</title>\
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em 1em;text-align:left}}\
td.n{{text-align:right}}</style></head>\
<body><h1>Herald push server</h1><table>\n",
    );
    for (name, value) in rows {
        body.push_str(&format!("<tr><th>{name}</th><td>{value}</td></tr>\n"));
    }
    body.push_str(
        "</table>\n<h2>Shards</h2><table id=\"shards\">\n<tr><th>Shard</th><th>State</th>\
<th>Connected UAs</th><th>Asleep</th><th>Known UAs</th><th>Pending</th>\
<th>In/s (1 min)</th><th>Out/s (1 min)</th><th>WAL bytes</th></tr>\n",
    );
    for (index, shard) in shards.iter().enumerate() {
        body.push_str(&format!(
            "<tr class=\"shard\"><td>{index}</td><td>{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{:.2}</td><td class=\"n\">{:.2}</td><td class=\"n\">{}</td></tr>\n",
            shared.states.get(index).as_str(),
            shard.connections,
            shard.asleep,
            shard.user_agents,
            shard.pending,
            shard.in_per_s,
            shard.out_per_s,
            shard.wal_bytes,
        ));
    }
    body.push_str(&format!(
        "</table><p>Reloads every {ABOUT_REFRESH_S} s. Machine-readable: \
<a href=\"/metrics\">/metrics</a>, <a href=\"/health\">/health</a>.</p></body></html>\n"
    ));
    HttpResponse {
        status: 200,
        content_type: "text/html; charset=utf-8",
        headers: Vec::new(),
        body,
    }
}
