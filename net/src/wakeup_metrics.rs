//! The wakeup core's Prometheus series (SPEC §4.3, §5). Only the wakeup core
//! writes them (the shards' full-ring drops are counted in an atomic by the
//! client and folded in by the core), so no hot path contends on them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// `udp` (Herald's own datagram) or `proxy` (an HTTP call to a wakeup proxy).
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Why a wakeup did not go out (the `reason` label of `wakeups_failed`).
pub mod reason {
    /// The shard→core ring was full; the request was dropped, the shard never waits.
    pub const RING_FULL: &str = "ring_full";
    /// `wakeup_pending_max` UAs were already being woken.
    pub const OVERLOADED: &str = "overloaded";
    /// The UA's MCC-MNC has no route (configuration changed since it slept).
    pub const NO_ROUTE: &str = "no_route";
    /// sendmmsg refused the datagram (unreachable network, no IPv6 socket…).
    pub const SEND_ERROR: &str = "send_error";
    /// The proxy answered with a non-2xx status.
    pub const PROXY_STATUS: &str = "proxy_status";
    /// Connecting to or talking with the proxy failed.
    pub const PROXY_IO: &str = "proxy_io";
    /// The proxy's queue was full (the proxy is slower than the wakeup rate).
    pub const PROXY_BUSY: &str = "proxy_busy";
    /// Every re-send went unanswered: the UA is gone or out of coverage.
    pub const GAVE_UP: &str = "gave_up";
}

#[derive(Clone)]
pub struct WakeupMetrics {
    pub requested: Counter,
    pub sent: Family<RouteLabel, Counter>,
    pub coalesced: Counter,
    pub retried: Counter,
    pub failed: Family<ReasonLabel, Counter>,
    pub rate_limited: Counter,
    /// sendmmsg calls; `sent{route="udp"}` ÷ this is the batch size achieved.
    pub udp_batches: Counter,
    pub pending: Gauge,
    /// From the first datagram to the UA's hello, in seconds.
    pub latency: Histogram,
}

impl Default for WakeupMetrics {
    fn default() -> WakeupMetrics {
        WakeupMetrics {
            requested: Counter::default(),
            sent: Family::default(),
            coalesced: Counter::default(),
            retried: Counter::default(),
            failed: Family::default(),
            rate_limited: Counter::default(),
            udp_batches: Counter::default(),
            pending: Gauge::default(),
            // 5 ms … ~82 s: a loopback reconnect up to the last backoff step.
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 15,
            )),
        }
    }
}

impl WakeupMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "wakeups_requested",
            "Wakeups asked for by shards (before coalescing)",
            self.requested.clone(),
        );
        registry.register(
            "wakeups_sent",
            "Wakeup datagrams sent and proxy calls answered 2xx, re-sends included",
            self.sent.clone(),
        );
        registry.register(
            "wakeups_coalesced",
            "Wakeup requests folded into one already in flight for the same UA",
            self.coalesced.clone(),
        );
        registry.register(
            "wakeups_retried",
            "Wakeups re-sent because the UA had not reconnected",
            self.retried.clone(),
        );
        registry.register(
            "wakeups_failed",
            "Wakeups that could not be sent, by reason",
            self.failed.clone(),
        );
        registry.register(
            "wakeups_rate_limited",
            "Times a wakeup waited for its network's token bucket",
            self.rate_limited.clone(),
        );
        registry.register(
            "wakeup_udp_batches",
            "sendmmsg calls made by the wakeup core",
            self.udp_batches.clone(),
        );
        registry.register(
            "wakeups_pending",
            "UAs with a wakeup queued or awaiting their reconnect",
            self.pending.clone(),
        );
        registry.register(
            "wakeup_reconnect_seconds",
            "From a UA's first wakeup datagram to its hello",
            self.latency.clone(),
        );
    }

    pub fn sent(&self, route: &str, count: u64) {
        if count > 0 {
            self.sent
                .get_or_create(&RouteLabel {
                    route: route.to_owned(),
                })
                .inc_by(count);
        }
    }

    pub fn failed(&self, reason: &str, count: u64) {
        if count > 0 {
            self.failed
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .inc_by(count);
        }
    }
}
