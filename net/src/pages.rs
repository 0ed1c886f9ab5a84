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

fn totals(shared: &Shared) -> ShardSnapshot {
    let mut total = ShardSnapshot::default();
    for slot in &shared.snapshots {
        let Ok(snapshot) = slot.lock() else { continue };
        total.connections += snapshot.connections;
        total.user_agents += snapshot.user_agents;
        total.asleep += snapshot.asleep;
        total.pending += snapshot.pending;
        total.notifications_in += snapshot.notifications_in;
        total.notifications_out += snapshot.notifications_out;
        total.wal_bytes += snapshot.wal_bytes;
    }
    total
}

/// What every health answer says: its status, the build, the shard count
/// and the uptime.
fn status_body(shared: &Shared, status: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("status".to_owned(), status.into());
    body.insert("version".to_owned(), env!("CARGO_PKG_VERSION").into());
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

fn about(shared: &Shared) -> HttpResponse {
    let total = totals(shared);
    let uptime_s = shared.started.elapsed().as_secs().max(1);
    let config = &shared.config;
    let rows = [
        ("Version", env!("CARGO_PKG_VERSION").to_owned()),
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
            "Notifications in (average per second)",
            format!("{:.2}", total.notifications_in as f64 / uptime_s as f64),
        ),
        (
            "Notifications out (average per second)",
            format!("{:.2}", total.notifications_out as f64 / uptime_s as f64),
        ),
        ("WAL size on disk", format!("{} bytes", total.wal_bytes)),
        ("Fsync mode", config.fsync.as_str().to_owned()),
        ("Readiness", readiness_text(shared)),
    ];
    let mut body = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Herald</title>\
<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em 1em;text-align:left}</style></head>\
<body><h1>Herald push server</h1><table>\n",
    );
    for (name, value) in rows {
        body.push_str(&format!("<tr><th>{name}</th><td>{value}</td></tr>\n"));
    }
    body.push_str("</table><p>Machine-readable: <a href=\"/metrics\">/metrics</a>, <a href=\"/health\">/health</a>.</p></body></html>\n");
    HttpResponse {
        status: 200,
        content_type: "text/html; charset=utf-8",
        headers: Vec::new(),
        body,
    }
}
