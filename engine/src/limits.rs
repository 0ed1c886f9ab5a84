//! Every limit Herald enforces, in one place, with its default (SPEC §9).
//! Units are the last word of each name. The config file's `[limits]` section
//! deserialises straight into [`Limits`]; a missing key keeps its default.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest UA WebSocket message (after reassembly of fragments).
    pub ws_message_bytes_max: usize,
    /// All request-line and header bytes of one AS HTTP request.
    pub http_header_bytes_max: usize,
    /// Web Push payload (ciphertext) per message; also caps SimplePush bodies.
    pub push_body_bytes_max: usize,
    pub channels_per_uaid_max: usize,
    /// Beyond this the oldest normal-or-lower urgency message is dropped.
    pub pending_per_uaid_max: usize,
    /// From TCP accept to a complete WebSocket upgrade (a trusted proxy's
    /// PROXY header and TLS handshake included); with TLS, also how long an
    /// AS connection's TLS handshake may take.
    pub handshake_timeout_ms: u64,
    /// From the upgrade to the hello message.
    pub hello_timeout_ms: u64,
    /// Unacked messages are re-sent on a live socket this often.
    pub retry_interval_ms: u64,
    /// Server WebSocket ping on an otherwise quiet socket.
    pub ws_ping_interval_ms: u64,
    /// More UA pings than this within a minute closes the socket with 1008.
    pub pings_per_minute_max: u32,
    /// Web Push TTL cap (30 days).
    pub ttl_max_s: u64,
    /// AS requests one shard will hold waiting for its owner's reply.
    pub as_in_flight_per_shard_max: usize,
    /// Slots in each cross-shard ring; a full ring answers 503 (back-pressure).
    pub ring_capacity: usize,
    /// Simultaneous connections from one source IP; 0 disables the check.
    pub connections_per_ip_max: usize,
    /// A PROXY protocol header from a trusted proxy, TLVs included (a v1
    /// header is at most 107 bytes; a v2 one may announce 64 KiB).
    pub proxy_header_bytes_max: usize,
    /// AS HTTP connection idle/read timeout (also for a trusted proxy's
    /// PROXY header).
    pub http_read_timeout_ms: u64,
    /// From a request's first byte to its last, whatever the pace of the
    /// bytes in between (slow-loris): past it, 408 and the connection closes.
    pub http_request_timeout_ms: u64,
    /// Pipelined HTTP/1.1 requests of one AS connection decoded and
    /// dispatched together; their answers leave in order, in one write.
    /// Requests beyond it wait for the next batch.
    pub http_pipeline_requests_max: usize,
    /// Concurrent streams one HTTP/2 AS connection may open (announced in
    /// its SETTINGS): each is a request in flight.
    pub http2_streams_max: u32,
    /// Cluster mode: UAs of one app notification handed their share at
    /// once (each a store write or a node-link call); the rest follow as
    /// these finish.
    pub app_shares_in_flight_max: usize,
    /// VAPID `exp` may be at most this far ahead (RFC 8292: 24 hours).
    pub vapid_expiry_ahead_max_s: u64,
    /// A UA registered for UDP wakeup is closed (4774) after this idle time.
    pub wakeup_idle_ms: u64,
    /// The WAL is compacted (snapshot + older segments dropped) after this
    /// many bytes have been appended since the last compaction.
    pub wal_compact_after_bytes: u64,
    /// `GET /token` requests (extended protocol) one address may make a minute.
    pub tokens_per_ip_per_minute_max: u32,
    /// Broadcast subscriptions one socket may hold.
    pub broadcasts_per_ua_max: usize,
    /// Frames queued for one UA socket, beyond `pending_per_uaid_max` (which a
    /// reconnect may queue at once), before it is treated as stuck and closed.
    pub ua_outbox_frames_max: usize,
    /// Per shard: outcomes (acked, expired, replaced, cancelled) of messages
    /// no longer pending, remembered for `GET /m/<id>`; past it the oldest
    /// is forgotten (that id then answers 404). Each costs ~80 B, so this
    /// bounds what delivered messages leave behind in memory. 0 keeps none.
    pub message_outcomes_max: usize,
    /// Slots in the ring from all shards to the wakeup core. A full ring never
    /// blocks a shard: the wakeup is dropped and counted as failed.
    pub wakeup_ring_capacity: usize,
    /// UAs the wakeup core tracks at once (queued, or woken and not yet back).
    pub wakeup_pending_max: usize,
    /// First re-send delay when a woken UA does not reconnect; it doubles on
    /// each re-send up to `wakeup_retry_max_ms`.
    pub wakeup_retry_initial_ms: u64,
    pub wakeup_retry_max_ms: u64,
    /// Re-sends after the first wakeup before giving up until the next notification.
    pub wakeup_retries_max: u32,
    /// Token bucket per mobile network (MCC-MNC): wakeups per second, and the
    /// burst allowed after a quiet spell. Operators cap signalling load per cell.
    pub wakeup_per_network_per_s: u32,
    pub wakeup_per_network_burst: u32,
    /// A UA not seen (connected) for this many days is dropped at the next
    /// WAL compaction, with its channels and messages: Mozilla's autopush
    /// figure, so that UAs that are gone for good do not fill disk and RAM.
    /// 0 keeps UAs forever.
    pub ua_expiry_days: u64,
    /// Notifications one channel (endpoint) may take: a token bucket that
    /// refills at this rate and holds up to `notifications_per_channel_burst`;
    /// beyond it the AS gets 429 with `Retry-After`, and nothing is stored.
    /// An extended-protocol app url is limited the same way on each shard.
    /// 0 turns the limit off.
    pub notifications_per_channel_per_minute: u32,
    pub notifications_per_channel_burst: u32,
    /// AS requests one source address may make (health checks aside), per
    /// shard: each shard limits the requests it accepts, so an address
    /// whose connections land on every shard may make up to `shards` times
    /// this. Beyond it: 429 with `Retry-After`, the connection stays open.
    /// 0 turns the limit off.
    pub as_requests_per_ip_per_s: u32,
    pub as_requests_per_ip_burst: u32,
    /// UA connects (WebSocket upgrades and `GET /token`s) one source address
    /// may make, per shard as above; a socket says hello once, so this bounds
    /// hellos too. Beyond it the upgrade is refused with 429 and
    /// `Retry-After`. 0 turns the limit off.
    pub ua_connects_per_ip_per_s: u32,
    pub ua_connects_per_ip_burst: u32,
    /// Whether the per-address limits also count loopback sources. Off by
    /// default: on loopback the address says nothing about the client (a
    /// TLS proxy on the same host, local tools, load generators), and one
    /// bucket for all of them would throttle every client at once.
    pub rate_limit_loopback: bool,
    /// Keys (channels, source addresses) one shard tracks for each rate
    /// limit: the bound on the limits' memory whatever keys arrive.
    pub rate_limited_keys_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ws_message_bytes_max: 8 * 1024,
            http_header_bytes_max: 16 * 1024,
            push_body_bytes_max: 4096,
            channels_per_uaid_max: 1000,
            pending_per_uaid_max: 1000,
            handshake_timeout_ms: 5_000,
            hello_timeout_ms: 10_000,
            retry_interval_ms: 60_000,
            ws_ping_interval_ms: 300_000,
            pings_per_minute_max: 10,
            ttl_max_s: 30 * 24 * 3600,
            as_in_flight_per_shard_max: 1024,
            ring_capacity: 1024,
            connections_per_ip_max: 0,
            proxy_header_bytes_max: 4096,
            http_read_timeout_ms: 30_000,
            http_request_timeout_ms: 10_000,
            http_pipeline_requests_max: 64,
            http2_streams_max: 256,
            app_shares_in_flight_max: 64,
            vapid_expiry_ahead_max_s: 24 * 3600,
            wakeup_idle_ms: 10_000,
            wal_compact_after_bytes: 64 * 1024 * 1024,
            broadcasts_per_ua_max: 64,
            tokens_per_ip_per_minute_max: 60,
            ua_outbox_frames_max: 256,
            message_outcomes_max: 10_000,
            wakeup_ring_capacity: 8192,
            wakeup_pending_max: 262_144,
            wakeup_retry_initial_ms: 1_000,
            wakeup_retry_max_ms: 60_000,
            wakeup_retries_max: 5,
            wakeup_per_network_per_s: 1_000,
            wakeup_per_network_burst: 2_000,
            ua_expiry_days: UA_EXPIRY_DAYS_DEFAULT,
            notifications_per_channel_per_minute: 600,
            notifications_per_channel_burst: 1_000,
            as_requests_per_ip_per_s: 1_000,
            as_requests_per_ip_burst: 10_000,
            ua_connects_per_ip_per_s: 100,
            ua_connects_per_ip_burst: 1_000,
            rate_limit_loopback: false,
            rate_limited_keys_max: 100_000,
        }
    }
}

const MS_PER_DAY: u64 = 24 * 3600 * 1000;
/// Mozilla autopush's figure.
const UA_EXPIRY_DAYS_DEFAULT: u64 = 60;
/// A UA's last-seen record is renewed when it is this fraction of the
/// expiry old: expiry is then right to within a tenth, and a UA that
/// connects all day writes ten records per expiry period, not one per
/// connection.
const SEEN_REFRESHES_PER_EXPIRY: u64 = 10;

impl Limits {
    /// `ua_expiry_days` in ms; `None` when UAs never expire.
    pub fn ua_expiry_ms(&self) -> Option<crate::Millis> {
        (self.ua_expiry_days > 0).then(|| self.ua_expiry_days.saturating_mul(MS_PER_DAY))
    }

    /// How old a UA's last-seen record gets before a connection renews it.
    /// With expiry off, as for the default expiry: turning expiry on later
    /// then finds every UA's last-seen time current.
    pub fn ua_seen_refresh_ms(&self) -> crate::Millis {
        let days = match self.ua_expiry_days {
            0 => UA_EXPIRY_DAYS_DEFAULT,
            days => days,
        };
        days.saturating_mul(MS_PER_DAY) / SEEN_REFRESHES_PER_EXPIRY
    }

    /// Tiny limits so that tests hit every bound within a few operations.
    /// The rate limits keep their defaults: the rule tests and the
    /// simulation push as fast as they like, and tests of a rate limit set
    /// their own.
    pub fn test_min() -> Limits {
        Limits {
            ws_message_bytes_max: 1024,
            channels_per_uaid_max: 3,
            pending_per_uaid_max: 3,
            hello_timeout_ms: 500,
            retry_interval_ms: 1_000,
            pings_per_minute_max: 3,
            ring_capacity: 2,
            as_in_flight_per_shard_max: 4,
            ua_expiry_days: 1,
            ..Limits::default()
        }
    }
}
