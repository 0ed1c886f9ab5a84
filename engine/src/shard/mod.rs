//! The shard state machine: one core's UAs, channels, pending messages and
//! connections. Inputs arrive through `on_*` methods with the current time;
//! outputs queue up as [`Action`]s that `net/` drains with [`Shard::poll_action`].
//!
//! Every state change goes through [`Shard::apply`], both live (right after the
//! record is handed to the WAL) and on replay, so recovery rebuilds exactly the
//! state that was acknowledged.
//!
//! This file holds the state and the records; the handlers live beside it,
//! one file per kind of input: `sockets` (UA frames), `requests` (AS
//! requests), `delivery` (frames out), `timers`, `broadcasts` and
//! `app_protocol` (the extended protocol, SPEC §3.6); `lifetime` says when a
//! UA is recorded, seen, forgotten and expired.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ahash::AHashMap;
use rand::rngs::StdRng;
use serde_json::{json, Value};

use crate::extended::{self, ExtendedMessage};
use crate::identity::{Keys, MessageClaims};
use crate::limits::Limits;
use crate::message::{MessageBody, Registration, Removal, StoredMessage, Urgency, WakeupInfo};
use crate::push::{errno, HttpResponse, Notification, PushRequest, VERSION_FROM_CLOCK};
use crate::rate::{Limiter, Rate};
use crate::record::Record;
use crate::ua::{self, AckVersion, BroadcastReply, BroadcastRequest, ClientMessage, Hello};
use crate::{ChannelId, ConnId, KeyHash, Lsn, Millis, RequestId, Uaid};
use channels::Channels;
use lifetime::seen_in_snapshot;
use residency::Parked;

mod app_protocol;
mod broadcasts;
mod channels;
mod delivery;
mod lifetime;
mod requests;
mod residency;
mod sockets;
mod timers;

/// WebSocket close codes Herald uses.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// SPEC §5: closed so the UA can sleep; it will be woken by UDP.
    pub const SLEEP: u16 = 4774;
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// Send a text frame, but only once `after` is durable (order preserved per socket).
    Send {
        conn: ConnId,
        after: Option<Lsn>,
        text: String,
    },
    Close {
        conn: ConnId,
        code: u16,
        reason: &'static str,
    },
    /// A WebSocket ping frame on a quiet socket.
    WsPing {
        conn: ConnId,
    },
    /// The hello names a UAID of another shard: move the socket there, with the hello.
    HandOff {
        conn: ConnId,
        shard: usize,
        hello: String,
    },
    Append {
        lsn: Lsn,
        record: Record,
    },
    /// Answer an AS request once `after` is durable.
    Reply {
        request: RequestId,
        after: Option<Lsn>,
        response: HttpResponse,
    },
    /// A message waits for a sleeping UA: have the wakeup core send a datagram.
    Wakeup {
        uaid: Uaid,
        target: WakeupInfo,
        urgency: Urgency,
    },
    /// The UA reconnected: stop any wakeup in flight for it.
    Awake {
        uaid: Uaid,
    },
    /// Cluster mode: claim `uaid` in the cluster store, taking it from any
    /// other node, and load its records (answer with [`Shard::on_loaded`]
    /// or [`Shard::on_load_failed`]).
    Load {
        uaid: Uaid,
    },
    /// Cluster mode: this shard no longer holds `uaid`; give its claim back
    /// (after the records appended before this action).
    Release {
        uaid: Uaid,
    },
}

#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub index: usize,
    pub shards: usize,
    /// Base of every pushEndpoint, e.g. `http://127.0.0.1:8081`.
    pub endpoint_url: String,
    pub limits: Limits,
    /// `MCC-MNC` keys that have a wakeup route (SPEC §5).
    pub wakeup_networks: Vec<String>,
    /// Cluster mode: hold only the UAs loaded from the cluster store
    /// (`residency.rs`), not every UA of the shard's hash range.
    pub resident_only: bool,
}

/// Counters for `/metrics` and `/about`; monotonic unless named otherwise.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Stats {
    pub notifications_in: u64,
    pub notifications_out: u64,
    pub acks: u64,
    pub nacks: u64,
    pub pending_dropped: u64,
    /// Parts of a message a socket's form could not carry (SPEC §3.3).
    pub cross_mode_dropped: u64,
    pub hand_offs: u64,
    pub protocol_errors: u64,
    pub ping_rate_closes: u64,
    pub registers: u64,
    pub unregisters: u64,
    /// UAs dropped at compaction, not seen for `ua_expiry_days`.
    pub user_agents_expired: u64,
    /// AS requests refused (429) by a channel's rate limit.
    pub channel_rate_limited: u64,
}

struct Channel {
    key_hash: Option<KeyHash>,
    /// Newest SimplePush version seen; older ones are accepted but not re-sent.
    version: Option<u64>,
}

struct Pending {
    message: StoredMessage,
    /// Sent on some socket at least once (for `GET /m/<id>`: delivered).
    sent: bool,
}

/// A web app of the extended protocol: its key and the UAs that registered it.
struct WebApp {
    url_token: String,
    public_key_der: Vec<u8>,
    uaids: ahash::AHashSet<Uaid>,
}

/// Every UA with a channel has one of these, connected or not, so it is
/// kept small: what most UAs lack (wakeup data, messages) costs a pointer
/// or an empty collection. A UA without channels has one only while it is
/// connected (see `lifetime.rs`).
#[derive(Default)]
struct UserAgent {
    channels: Channels,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    conn: Option<ConnId>,
    wakeup: Option<Box<WakeupInfo>>,
    /// When the log last saw the UA: the newest `UaidCreated` applied.
    /// 0: the UA has no record (no real clock reads 0).
    seen_ms: Millis,
}

impl UserAgent {
    /// Drops pending message `seq`. An emptied `BTreeMap` keeps its last
    /// node (eleven 192-byte slots, ~2.2 KB): an idle UA that ever had a
    /// message would keep that much for good, so an empty map is replaced
    /// by one without a node.
    fn remove_pending(&mut self, seq: u64) {
        self.pending.remove(&seq);
        self.release_empty_pending();
    }

    fn release_empty_pending(&mut self) {
        if self.pending.is_empty() {
            self.pending = BTreeMap::new();
        }
    }
}

struct Conn {
    uaid: Option<Uaid>,
    /// The key of the socket's one standing timer: until it names its UA,
    /// its `HelloDeadline` (which goes once the UA is named); after a
    /// hello, its next `WsPing`. Known, the timer goes with the socket, so
    /// sockets that come and go leave no timers behind.
    timer_ms: Millis,
    web_push: bool,
    /// Last frame from the UA; a wakeup-registered UA idle this long is put to sleep.
    last_activity_ms: Millis,
    ping_window_start_ms: Millis,
    pings_in_window: u32,
    /// Broadcast ids this socket subscribed to (SPEC §3.5), without spare
    /// room: most sockets subscribe once, in their hello, or never.
    broadcasts: Box<[String]>,
    /// When the socket's retry timer fires (0: none is pending): its key,
    /// so that the timer goes as soon as every message sent is acked
    /// rather than holding its place until it fires.
    retry_at_ms: Millis,
    /// The socket speaks the extended protocol (SPEC §3.6).
    extended: bool,
}

/// What a channel's rate limit counts: one UA's channel, or an
/// extended-protocol app, which is one channel on many UAs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Endpoint {
    Channel(Uaid, ChannelId),
    App(ChannelId),
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    HelloDeadline(ConnId),
    Retry(ConnId),
    WsPing(ConnId),
    SleepIdle(ConnId),
}

/// How long removed messages are remembered for `GET /m/<id>`.
const PING_WINDOW_MS: Millis = 60_000;
/// Sequence numbers start from the clock so ids stay unique across restarts
/// even after compaction forgot every earlier message of a UA.
const SEQ_PER_MS: u64 = 4096;

pub struct Shard {
    config: ShardConfig,
    keys: Keys,
    rng: StdRng,
    uas: AHashMap<Uaid, UserAgent>,
    conns: AHashMap<ConnId, Conn>,
    timers: BTreeSet<(Millis, Timer)>,
    /// Hashed, not ordered: a draining backlog writes one entry per ack
    /// and drops the oldest (`outcome_order` keeps the age).
    outcomes: AHashMap<(Uaid, u64), Removal>,
    outcome_order: VecDeque<(Uaid, u64)>,
    next_lsn: Lsn,
    store_failed: bool,
    /// Broadcast id → current version, the same on every shard.
    broadcasts: BTreeMap<String, String>,
    broadcast_subscribers: AHashMap<String, ahash::AHashSet<ConnId>>,
    /// Extended-protocol web apps this shard's UAs registered (SPEC §3.6).
    web_apps: AHashMap<ChannelId, WebApp>,
    /// Notifications per endpoint (`notifications_per_channel_per_minute`):
    /// memory, not records, so a restart refills every bucket.
    endpoint_rates: Limiter<Endpoint>,
    /// Cluster mode: the UAs this shard claimed and holds, and what waits
    /// for the ones being loaded.
    resident: ahash::AHashSet<Uaid>,
    loading: AHashMap<Uaid, Parked>,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Shard {
    pub fn new(config: ShardConfig, keys: Keys, rng: StdRng) -> Shard {
        let limits = &config.limits;
        let endpoint_rates = Limiter::new(
            Rate::per_minute(
                limits.notifications_per_channel_per_minute,
                limits.notifications_per_channel_burst,
            ),
            limits.rate_limited_keys_max,
        );
        Shard {
            config,
            keys,
            rng,
            uas: AHashMap::new(),
            conns: AHashMap::new(),
            timers: BTreeSet::new(),
            outcomes: AHashMap::new(),
            outcome_order: VecDeque::new(),
            next_lsn: 1,
            store_failed: false,
            broadcasts: BTreeMap::new(),
            broadcast_subscribers: AHashMap::new(),
            web_apps: AHashMap::new(),
            endpoint_rates,
            resident: ahash::AHashSet::new(),
            loading: AHashMap::new(),
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn user_agents(&self) -> usize {
        self.uas.len()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn asleep(&self) -> usize {
        self.uas
            .values()
            .filter(|ua| ua.wakeup.is_some() && ua.conn.is_none())
            .count()
    }

    /// Timers standing: one per socket at rest (its hello deadline, then
    /// its ping), one more per socket while a message it was sent is unacked.
    pub fn timers(&self) -> usize {
        self.timers.len()
    }

    pub fn pending_messages(&self) -> usize {
        self.uas.values().map(|ua| ua.pending.len()).sum()
    }

    /// The WAL said the next LSN it will assign (after replay).
    pub fn set_next_lsn(&mut self, lsn: Lsn) {
        self.next_lsn = lsn;
    }

    /// The WAL failed: refuse every write from now on (SPEC §7, issue 3).
    pub fn on_store_failed(&mut self) {
        self.store_failed = true;
    }

    /// A cluster store is reachable again (a WAL never comes back).
    pub fn on_store_recovered(&mut self) {
        self.store_failed = false;
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.first().map(|(deadline, _)| *deadline)
    }

    // ---- records -------------------------------------------------------

    fn append(&mut self, record: Record) -> Lsn {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        self.apply(&record);
        self.actions.push_back(Action::Append { lsn, record });
        lsn
    }

    /// Applies one record to memory. The only place state changes, used by
    /// live handling and by WAL replay alike; tolerant of records about UAs or
    /// channels it no longer has (a log may repeat or outlive them).
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::UaidCreated { uaid, at_ms } => {
                let ua = self.uas.entry(*uaid).or_default();
                ua.seen_ms = ua.seen_ms.max(*at_ms);
            }
            Record::ChannelRegistered(registration) => {
                let ua = self.uas.entry(registration.uaid).or_default();
                let channel = ua.channels.get_or_insert(
                    registration.channel,
                    Channel {
                        key_hash: None,
                        version: None,
                    },
                );
                channel.key_hash = registration.key_hash;
            }
            Record::ChannelUnregistered { uaid, channel } => {
                if let Some(ua) = self.uas.get_mut(uaid) {
                    ua.channels.remove(channel);
                    ua.pending
                        .retain(|_, pending| pending.message.channel != *channel);
                    ua.release_empty_pending();
                }
            }
            Record::MessageStored(message) => {
                let ua = self.uas.entry(message.uaid).or_default();
                if let (MessageBody::Version(version), Some(channel)) =
                    (&message.body, ua.channels.get_mut(&message.channel))
                {
                    channel.version = channel.version.max(Some(*version));
                }
                ua.next_seq = ua.next_seq.max(message.seq + 1);
                // The removal record of what it replaced comes next in the
                // log; a crash may keep this record and lose that one, and
                // replay must not then hold both (the UA would get an older
                // SimplePush version after the newer one).
                ua.pending
                    .retain(|_, pending| !message.replaces(&pending.message));
                ua.pending.insert(
                    message.seq,
                    Pending {
                        message: message.clone(),
                        sent: false,
                    },
                );
            }
            Record::MessageRemoved {
                uaid, seq, reason, ..
            } => {
                if let Some(ua) = self.uas.get_mut(uaid) {
                    ua.remove_pending(*seq);
                }
                self.remember_outcome(*uaid, *seq, *reason);
            }
            Record::ChannelVersion {
                uaid,
                channel,
                version,
            } => {
                if let Some(state) = self
                    .uas
                    .get_mut(uaid)
                    .and_then(|ua| ua.channels.get_mut(channel))
                {
                    state.version = state.version.max(Some(*version));
                }
            }
            Record::WebAppRegistered {
                uaid,
                channel,
                url_token,
                public_key_der,
            } => {
                let ua = self.uas.entry(*uaid).or_default();
                ua.channels.get_or_insert(
                    *channel,
                    Channel {
                        key_hash: Some(crate::vapid::key_hash(public_key_der)),
                        version: None,
                    },
                );
                let app = self.web_apps.entry(*channel).or_insert_with(|| WebApp {
                    url_token: url_token.clone(),
                    public_key_der: public_key_der.clone(),
                    uaids: ahash::AHashSet::new(),
                });
                app.uaids.insert(*uaid);
            }
            Record::WakeupSet { uaid, wakeup } => {
                let ua = self.uas.entry(*uaid).or_default();
                ua.wakeup = wakeup.clone().map(Box::new);
            }
        }
    }

    fn remember_outcome(&mut self, uaid: Uaid, seq: u64, reason: Removal) {
        let remembered_max = self.config.limits.message_outcomes_max;
        if remembered_max == 0 {
            return;
        }
        if self.outcomes.insert((uaid, seq), reason).is_none() {
            self.outcome_order.push_back((uaid, seq));
        }
        while self.outcome_order.len() > remembered_max {
            if let Some(oldest) = self.outcome_order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
    }

    /// Live state as records, for WAL compaction: replaying these alone gives
    /// the same registrations and pending (unexpired) messages. UAs with
    /// nothing durable, or not seen for `ua_expiry_days`, are left out.
    pub fn snapshot(&self, now_ms: Millis) -> Vec<Record> {
        let mut records = Vec::new();
        for uaid in self.uas.keys() {
            self.snapshot_user_agent(now_ms, *uaid, &mut records);
        }
        records
    }

    /// Every UAID this shard knows, to walk a snapshot one UA at a time.
    pub fn uaids(&self) -> Vec<Uaid> {
        self.uas.keys().copied().collect()
    }

    /// One UA's live state as records (nothing if it is unknown, holds
    /// nothing durable or expired: see [`Shard::expire_user_agents`]). A snapshot
    /// may be built this way across many turns of the shard while records
    /// keep being appended: every record is a blind write (set or delete of
    /// one key) or a monotonic maximum, so replaying the log after the LSN the
    /// snapshot covers, over state taken at any later moment, ends in the
    /// same state (a fuzzy checkpoint).
    pub fn snapshot_user_agent(&self, now_ms: Millis, uaid: Uaid, records: &mut Vec<Record>) {
        let Some(ua) = self.uas.get(&uaid) else {
            return;
        };
        if !self.kept_by_snapshot(ua, now_ms) {
            return;
        }
        records.push(Record::UaidCreated {
            uaid,
            at_ms: seen_in_snapshot(ua, now_ms),
        });
        for (channel, state) in ua.channels.iter() {
            let app = self
                .web_apps
                .get(channel)
                .filter(|app| app.uaids.contains(&uaid));
            records.push(match app {
                Some(app) => Record::WebAppRegistered {
                    uaid,
                    channel: *channel,
                    url_token: app.url_token.clone(),
                    public_key_der: app.public_key_der.clone(),
                },
                None => Record::ChannelRegistered(Registration {
                    uaid,
                    channel: *channel,
                    key_hash: state.key_hash,
                }),
            });
            if let Some(version) = state.version {
                records.push(Record::ChannelVersion {
                    uaid,
                    channel: *channel,
                    version,
                });
            }
        }
        if ua.wakeup.is_some() {
            records.push(Record::WakeupSet {
                uaid,
                wakeup: ua.wakeup.as_deref().cloned(),
            });
        }
        for pending in ua
            .pending
            .values()
            .filter(|pending| !pending.message.is_expired(now_ms))
        {
            records.push(Record::MessageStored(pending.message.clone()));
        }
    }
}

/// The next sequence number for a message of `ua`. Stored messages get even
/// numbers, unstored ones (TTL=0) odd: an unstored message leaves no record,
/// so after a restart its number could otherwise be given to a stored message,
/// and its id (which the AS may DELETE) would name that one.
fn next_seq(ua: &UserAgent, now_ms: Millis, stored: bool) -> u64 {
    let earliest = ua.next_seq.max(now_ms.saturating_mul(SEQ_PER_MS));
    earliest + u64::from(earliest.is_multiple_of(2) != stored)
}

/// The number a SimplePush socket sees for a message: the AS's version, or the
/// arrival time in ms for messages that have none (SPEC §3.3).
fn numeric_version(message: &StoredMessage) -> u64 {
    match message.body {
        MessageBody::Version(version) => version,
        _ => message.arrived_ms,
    }
}
