//! Operations endpoints (SPEC §4.3): `/health`, `/metrics`, `/about`.

use std::rc::Rc;

use serde_json::json;

use herald_engine::push::HttpResponse;

use crate::ctx::Ctx;
use crate::metrics::ShardSnapshot;

fn totals(ctx: &Ctx) -> ShardSnapshot {
    let mut total = ShardSnapshot::default();
    for slot in &ctx.shared.snapshots {
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

pub fn health(ctx: &Rc<Ctx>) -> HttpResponse {
    let body = json!({
        "status": "OK",
        "version": env!("CARGO_PKG_VERSION"),
        "shards": ctx.shared.config.shards,
        "uptime_s": ctx.shared.started.elapsed().as_secs(),
    });
    HttpResponse::json(200, body.to_string())
}

pub fn metrics(ctx: &Rc<Ctx>) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        headers: Vec::new(),
        body: ctx.shared.metrics.encode(),
    }
}

pub fn about(ctx: &Rc<Ctx>) -> HttpResponse {
    let total = totals(ctx);
    let uptime_s = ctx.shared.started.elapsed().as_secs().max(1);
    let config = &ctx.shared.config;
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
