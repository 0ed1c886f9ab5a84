//! Prometheus metrics (SPEC §4.3). One registry for the process; each shard
//! publishes its engine's counters into its own labelled series once a second,
//! so the hot paths touch no shared memory. A shard's latency histograms are
//! its own too ([`ShardMeters`]): observing one touches memory only that
//! shard writes (and a scrape reads).

use std::cell::RefCell;
use std::time::Duration;

use ahash::AHashMap;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::Build;

use herald_engine::shard::Stats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub shard: String,
    pub kind: String,
}

/// The rate limits of SPEC §9, as `herald_rate_limited_total` names them.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "the label values Prometheus shows")]
pub enum RateLimit {
    channel,
    as_address,
    ua_address,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: RateLimit,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub shard: String,
    pub event: String,
}

/// What an AS request asked for, as `herald_as_requests_total` names it: a
/// bounded set, never the path itself (tokens would make a series each).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "the label values Prometheus shows")]
pub enum AsRoute {
    /// `/wpush/v1/...`: a push without VAPID key binding.
    push_v1,
    /// `/wpush/v2/...`: a push to a VAPID-bound endpoint.
    push_v2,
    /// `/m/<id>`: a message's state, or its deletion.
    message,
    /// `/notify/<app>`: an extended-protocol app notification.
    app_notify,
    broadcast,
    health,
    metrics,
    about,
    other,
}

impl AsRoute {
    pub fn of(path: &str) -> AsRoute {
        let path = path.split('?').next().unwrap_or_default();
        let prefixes = [
            ("/wpush/v1/", AsRoute::push_v1),
            ("/wpush/v2/", AsRoute::push_v2),
            ("/m/", AsRoute::message),
            ("/notify/", AsRoute::app_notify),
            ("/v1/broadcasts/", AsRoute::broadcast),
            ("/health", AsRoute::health),
        ];
        if let Some((_, route)) = prefixes.iter().find(|(prefix, _)| path.starts_with(prefix)) {
            return *route;
        }
        match path {
            "/metrics" => AsRoute::metrics,
            "/about" | "/" => AsRoute::about,
            _ => AsRoute::other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AsRoute::push_v1 => "push_v1",
            AsRoute::push_v2 => "push_v2",
            AsRoute::message => "message",
            AsRoute::app_notify => "app_notify",
            AsRoute::broadcast => "broadcast",
            AsRoute::health => "health",
            AsRoute::metrics => "metrics",
            AsRoute::about => "about",
            AsRoute::other => "other",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AsRequestLabel {
    route: AsRoute,
    status: u16,
}

/// Latency buckets, in seconds, for every histogram here: 50 µs doubling
/// to about 6.5 s (an fsync on a busy disk, a delivery across a slow
/// socket).
fn latency_histogram() -> Histogram {
    const FIRST_BUCKET_S: f64 = 0.000_05;
    const BUCKETS: u16 = 18;
    Histogram::new(exponential_buckets(FIRST_BUCKET_S, 2.0, BUCKETS))
}

type Latencies = Family<ShardLabel, Histogram>;

/// One shard's own meters: its latency histograms, and its AS requests
/// counted since it last published (`Metrics::publish_as_requests`).
pub struct ShardMeters {
    pub as_answer: Histogram,
    pub delivery: Histogram,
    as_requests: RefCell<AHashMap<(AsRoute, u16), u64>>,
}

impl ShardMeters {
    /// One AS request answered `status` after `took` (`None`: answered
    /// before it was read whole, so not timed).
    pub fn as_answered(&self, route: AsRoute, status: u16, took: Option<Duration>) {
        if let Some(took) = took {
            self.as_answer.observe(took.as_secs_f64());
        }
        *self
            .as_requests
            .borrow_mut()
            .entry((route, status))
            .or_default() += 1;
    }
}

/// What one shard last published, read by `/about` and `/health` too.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardSnapshot {
    pub connections: i64,
    pub user_agents: i64,
    pub asleep: i64,
    pub pending: i64,
    pub notifications_in: u64,
    pub notifications_out: u64,
    /// Notifications in and out per second over the last minute.
    pub in_per_s: f64,
    pub out_per_s: f64,
    pub wal_bytes: i64,
}

pub struct Metrics {
    registry: Registry,
    connections: Family<ShardLabel, Gauge>,
    user_agents: Family<ShardLabel, Gauge>,
    asleep: Family<ShardLabel, Gauge>,
    pending: Family<ShardLabel, Gauge>,
    ring_in_flight: Family<ShardLabel, Gauge>,
    wal_bytes: Family<ShardLabel, Gauge>,
    wal_fsyncs: Family<ShardLabel, Counter>,
    wal_records_synced: Family<ShardLabel, Counter>,
    compactions: Family<ShardLabel, Counter>,
    compaction_pause_us_max: Family<ShardLabel, Gauge>,
    notifications_in: Family<ShardLabel, Counter>,
    notifications_out: Family<ShardLabel, Counter>,
    acks: Family<ShardLabel, Counter>,
    nacks: Family<ShardLabel, Counter>,
    hand_offs: Family<ShardLabel, Counter>,
    user_agents_expired: Family<ShardLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    /// Refusals by rate limit, for the process: which shard refused says
    /// nothing to an operator, and the three series exist from the start.
    rate_limited: Family<LimitLabel, Counter>,
    cluster_events: Family<ClusterLabel, Counter>,
    as_requests: Family<AsRequestLabel, Counter>,
    as_answer_seconds: Latencies,
    wal_fsync_seconds: Latencies,
    delivery_seconds: Latencies,
    /// The process, sampled when the metrics are read.
    resident_memory_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    /// Written by the wakeup core only (see `wakeup_metrics.rs`).
    pub wakeup: crate::wakeup_metrics::WakeupMetrics,
}

impl Metrics {
    pub fn new(build: Build) -> Metrics {
        let mut registry = Registry::with_prefix("herald");
        let metrics = Metrics {
            connections: Family::default(),
            user_agents: Family::default(),
            asleep: Family::default(),
            pending: Family::default(),
            ring_in_flight: Family::default(),
            wal_bytes: Family::default(),
            wal_fsyncs: Family::default(),
            wal_records_synced: Family::default(),
            compactions: Family::default(),
            compaction_pause_us_max: Family::default(),
            notifications_in: Family::default(),
            notifications_out: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            hand_offs: Family::default(),
            user_agents_expired: Family::default(),
            errors: Family::default(),
            rate_limited: Family::default(),
            cluster_events: Family::default(),
            as_requests: Family::default(),
            as_answer_seconds: Family::new_with_constructor(latency_histogram),
            wal_fsync_seconds: Family::new_with_constructor(latency_histogram),
            delivery_seconds: Family::new_with_constructor(latency_histogram),
            resident_memory_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            wakeup: crate::wakeup_metrics::WakeupMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open UA WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "user_agents",
            "UAs known to the shard",
            metrics.user_agents.clone(),
        );
        registry.register(
            "user_agents_asleep",
            "UAs asleep awaiting UDP wakeup",
            metrics.asleep.clone(),
        );
        registry.register(
            "pending_messages",
            "Stored, unacked notifications",
            metrics.pending.clone(),
        );
        registry.register(
            "ring_in_flight",
            "AS requests sent to another shard and not yet answered",
            metrics.ring_in_flight.clone(),
        );
        registry.register(
            "wal_bytes",
            "Bytes of the shard's write-ahead log on disk (segments and snapshots)",
            metrics.wal_bytes.clone(),
        );
        registry.register(
            "wal_fsyncs",
            "WAL syncs (group commits)",
            metrics.wal_fsyncs.clone(),
        );
        registry.register(
            "wal_records_synced",
            "Records made durable by WAL syncs",
            metrics.wal_records_synced.clone(),
        );
        registry.register(
            "wal_compactions",
            "WAL compactions (snapshot written, older segments dropped)",
            metrics.compactions.clone(),
        );
        registry.register(
            "wal_compaction_pause_us_max",
            "Longest shard pause a compaction caused, in microseconds",
            metrics.compaction_pause_us_max.clone(),
        );
        registry.register(
            "notifications_in",
            "Notifications accepted from application servers",
            metrics.notifications_in.clone(),
        );
        registry.register(
            "notifications_out",
            "Notifications sent to UAs (re-sends included)",
            metrics.notifications_out.clone(),
        );
        registry.register("acks", "Messages acked by UAs", metrics.acks.clone());
        registry.register("nacks", "Nacks from UAs", metrics.nacks.clone());
        registry.register(
            "hand_offs",
            "UA sockets handed to their owning shard",
            metrics.hand_offs.clone(),
        );
        registry.register(
            "user_agents_expired",
            "UAs dropped at compaction, not seen for ua_expiry_days",
            metrics.user_agents_expired.clone(),
        );
        registry.register("errors", "Errors by kind", metrics.errors.clone());
        registry.register(
            "rate_limited",
            "Requests refused with 429 by a rate limit (an app notification once per shard that refused it)",
            metrics.rate_limited.clone(),
        );
        for limit in [
            RateLimit::channel,
            RateLimit::as_address,
            RateLimit::ua_address,
        ] {
            // Created at 0, so that a limit that never refused shows.
            let _ = metrics.rate_limited.get_or_create(&LimitLabel { limit });
        }
        registry.register(
            "cluster_events",
            "Cluster mode: Redis batches, calls, claims, failed batches, fenced writes, forwards to other nodes",
            metrics.cluster_events.clone(),
        );
        registry.register(
            "build",
            "The running build: release and git commit",
            Info::new(vec![("version", build.version), ("commit", build.commit)]),
        );
        registry.register(
            "as_requests",
            "AS listener requests by route and answer status",
            metrics.as_requests.clone(),
        );
        registry.register(
            "as_answer_seconds",
            "AS listener: from a whole request read to its answer (a push's includes its fsync)",
            metrics.as_answer_seconds.clone(),
        );
        registry.register(
            "wal_fsync_seconds",
            "WAL fdatasync calls (group commits)",
            metrics.wal_fsync_seconds.clone(),
        );
        registry.register(
            "delivery_seconds",
            "Notifications to connected UAs: from the owning shard taking the push to the frame written to the socket",
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            metrics.resident_memory_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of the process (sockets included)",
            metrics.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "The process's descriptor limit (RLIMIT_NOFILE, LimitNOFILE in systemd)",
            metrics.max_fds.clone(),
        );
        metrics.wakeup.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn encode(&self) -> String {
        let process = crate::process::usage();
        self.resident_memory_bytes
            .set(process.resident_bytes as i64);
        self.open_fds.set(process.open_fds as i64);
        self.max_fds.set(process.max_fds as i64);
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A shard's own meters (call once per shard).
    pub fn shard_meters(&self, shard: usize) -> ShardMeters {
        let label = ShardLabel {
            shard: shard.to_string(),
        };
        ShardMeters {
            as_answer: self.as_answer_seconds.get_or_create(&label).clone(),
            delivery: self.delivery_seconds.get_or_create(&label).clone(),
            as_requests: RefCell::default(),
        }
    }

    /// The histogram of a shard's WAL fsyncs, for its log to observe.
    pub fn wal_fsync(&self, shard: usize) -> Histogram {
        let label = ShardLabel {
            shard: shard.to_string(),
        };
        self.wal_fsync_seconds.get_or_create(&label).clone()
    }

    /// Adds what a shard counted since it last published, and forgets it.
    pub fn publish_as_requests(&self, meters: &ShardMeters) {
        for ((route, status), count) in meters.as_requests.borrow_mut().drain() {
            self.as_requests
                .get_or_create(&AsRequestLabel { route, status })
                .inc_by(count);
        }
    }

    pub fn rate_limited(&self, limit: RateLimit, count: u64) {
        if count > 0 {
            self.rate_limited
                .get_or_create(&LimitLabel { limit })
                .inc_by(count);
        }
    }

    pub fn error(&self, shard: usize, kind: &str, count: u64) {
        if count > 0 {
            self.errors
                .get_or_create(&ErrorLabel {
                    shard: shard.to_string(),
                    kind: kind.to_owned(),
                })
                .inc_by(count);
        }
    }

    /// Publishes a shard's state; `previous` is what it published last time,
    /// so counters advance by the difference.
    pub fn publish(
        &self,
        shard: usize,
        snapshot: &ShardSnapshot,
        stats: &Stats,
        previous: &Stats,
        ring_in_flight: i64,
    ) {
        let label = ShardLabel {
            shard: shard.to_string(),
        };
        self.connections
            .get_or_create(&label)
            .set(snapshot.connections);
        self.user_agents
            .get_or_create(&label)
            .set(snapshot.user_agents);
        self.asleep.get_or_create(&label).set(snapshot.asleep);
        self.pending.get_or_create(&label).set(snapshot.pending);
        self.wal_bytes.get_or_create(&label).set(snapshot.wal_bytes);
        self.ring_in_flight
            .get_or_create(&label)
            .set(ring_in_flight);
        let advance = |family: &Family<ShardLabel, Counter>, now: u64, before: u64| {
            family
                .get_or_create(&label)
                .inc_by(now.saturating_sub(before));
        };
        advance(
            &self.notifications_in,
            stats.notifications_in,
            previous.notifications_in,
        );
        advance(
            &self.notifications_out,
            stats.notifications_out,
            previous.notifications_out,
        );
        advance(&self.acks, stats.acks, previous.acks);
        advance(&self.nacks, stats.nacks, previous.nacks);
        advance(&self.hand_offs, stats.hand_offs, previous.hand_offs);
        advance(
            &self.user_agents_expired,
            stats.user_agents_expired,
            previous.user_agents_expired,
        );
        self.rate_limited(
            RateLimit::channel,
            stats
                .channel_rate_limited
                .saturating_sub(previous.channel_rate_limited),
        );
        self.error(
            shard,
            "protocol",
            stats
                .protocol_errors
                .saturating_sub(previous.protocol_errors),
        );
        self.error(
            shard,
            "ping_rate",
            stats
                .ping_rate_closes
                .saturating_sub(previous.ping_rate_closes),
        );
        self.error(
            shard,
            "pending_dropped",
            stats
                .pending_dropped
                .saturating_sub(previous.pending_dropped),
        );
        self.error(
            shard,
            "cross_mode_dropped",
            stats
                .cross_mode_dropped
                .saturating_sub(previous.cross_mode_dropped),
        );
    }

    /// Records the shard pause a compaction caused (building its snapshot).
    pub fn compaction(&self, shard: usize, pause: std::time::Duration) {
        let label = ShardLabel {
            shard: shard.to_string(),
        };
        let gauge = self.compaction_pause_us_max.get_or_create(&label);
        let pause_us = pause.as_micros() as i64;
        if pause_us > gauge.get() {
            gauge.set(pause_us);
        }
        self.compactions.get_or_create(&label).inc();
    }

    /// Publishes a cluster node shard's counters, each `(event, total)`.
    pub fn publish_cluster(&self, shard: usize, events: &[(&'static str, u64)]) {
        for (event, total) in events {
            let counter = self.cluster_events.get_or_create(&ClusterLabel {
                shard: shard.to_string(),
                event: (*event).to_owned(),
            });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    pub fn publish_wal(&self, shard: usize, fsyncs: u64, records: u64) {
        let label = ShardLabel {
            shard: shard.to_string(),
        };
        let sync_counter = self.wal_fsyncs.get_or_create(&label);
        sync_counter.inc_by(fsyncs.saturating_sub(sync_counter.get()));
        let record_counter = self.wal_records_synced.get_or_create(&label);
        record_counter.inc_by(records.saturating_sub(record_counter.get()));
    }
}
