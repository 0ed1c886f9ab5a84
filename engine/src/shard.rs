//! The shard state machine: one core's UAs, channels, pending messages and
//! connections. Inputs arrive through `on_*` methods with the current time;
//! outputs queue up as [`Action`]s that `net/` drains with [`Shard::poll_action`].
//!
//! Every state change goes through [`Shard::apply`], both live (right after the
//! record is handed to the WAL) and on replay, so recovery rebuilds exactly the
//! state that was acknowledged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ahash::AHashMap;
use rand::rngs::StdRng;
use serde_json::{json, Value};

use crate::extended::{self, ExtendedMessage};
use crate::identity::{Keys, MessageClaims};
use crate::limits::Limits;
use crate::message::{MessageBody, Registration, Removal, StoredMessage, Urgency, WakeupInfo};
use crate::push::{errno, HttpResponse, Notification, PushRequest, VERSION_FROM_CLOCK};
use crate::record::Record;
use crate::ua::{self, AckVersion, ClientMessage, Hello};
use crate::{ChannelId, ConnId, KeyHash, Lsn, Millis, RequestId, Uaid};

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

struct UserAgent {
    channels: AHashMap<ChannelId, Channel>,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    conn: Option<ConnId>,
    wakeup: Option<WakeupInfo>,
}

impl UserAgent {
    fn new() -> UserAgent {
        UserAgent {
            channels: AHashMap::new(),
            pending: BTreeMap::new(),
            next_seq: 0,
            conn: None,
            wakeup: None,
        }
    }
}

struct Conn {
    uaid: Option<Uaid>,
    web_push: bool,
    /// Last frame from the UA; a wakeup-registered UA idle this long is put to sleep.
    last_activity_ms: Millis,
    ping_window_start_ms: Millis,
    pings_in_window: u32,
    /// Broadcast ids this socket subscribed to (SPEC §3.5).
    broadcasts: Vec<String>,
    /// A retry timer is pending for this socket.
    retry_scheduled: bool,
    /// The socket speaks the extended protocol (SPEC §3.6).
    extended: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    HelloDeadline(ConnId),
    Retry(ConnId),
    WsPing(ConnId),
    SleepIdle(ConnId),
}

/// How long removed messages are remembered for `GET /m/<id>`.
const OUTCOMES_REMEMBERED_MAX: usize = 100_000;
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
    outcomes: BTreeMap<(Uaid, u64), Removal>,
    outcome_order: VecDeque<(Uaid, u64)>,
    next_lsn: Lsn,
    store_failed: bool,
    /// Broadcast id → current version, the same on every shard.
    broadcasts: BTreeMap<String, String>,
    broadcast_subscribers: AHashMap<String, ahash::AHashSet<ConnId>>,
    /// Extended-protocol web apps this shard's UAs registered (SPEC §3.6).
    web_apps: AHashMap<ChannelId, WebApp>,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Shard {
    pub fn new(config: ShardConfig, keys: Keys, rng: StdRng) -> Shard {
        Shard {
            config,
            keys,
            rng,
            uas: AHashMap::new(),
            conns: AHashMap::new(),
            timers: BTreeSet::new(),
            outcomes: BTreeMap::new(),
            outcome_order: VecDeque::new(),
            next_lsn: 1,
            store_failed: false,
            broadcasts: BTreeMap::new(),
            broadcast_subscribers: AHashMap::new(),
            web_apps: AHashMap::new(),
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
            Record::UaidCreated { uaid, .. } => {
                self.uas.entry(*uaid).or_insert_with(UserAgent::new);
            }
            Record::ChannelRegistered(registration) => {
                let ua = self
                    .uas
                    .entry(registration.uaid)
                    .or_insert_with(UserAgent::new);
                let channel = ua.channels.entry(registration.channel).or_insert(Channel {
                    key_hash: None,
                    version: None,
                });
                channel.key_hash = registration.key_hash;
            }
            Record::ChannelUnregistered { uaid, channel } => {
                if let Some(ua) = self.uas.get_mut(uaid) {
                    ua.channels.remove(channel);
                    ua.pending
                        .retain(|_, pending| pending.message.channel != *channel);
                }
            }
            Record::MessageStored(message) => {
                let ua = self.uas.entry(message.uaid).or_insert_with(UserAgent::new);
                if let (MessageBody::Version(version), Some(channel)) =
                    (&message.body, ua.channels.get_mut(&message.channel))
                {
                    channel.version = channel.version.max(Some(*version));
                }
                ua.next_seq = ua.next_seq.max(message.seq + 1);
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
                    ua.pending.remove(seq);
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
                let ua = self.uas.entry(*uaid).or_insert_with(UserAgent::new);
                ua.channels.entry(*channel).or_insert(Channel {
                    key_hash: Some(crate::vapid::key_hash(public_key_der)),
                    version: None,
                });
                let app = self.web_apps.entry(*channel).or_insert_with(|| WebApp {
                    url_token: url_token.clone(),
                    public_key_der: public_key_der.clone(),
                    uaids: ahash::AHashSet::new(),
                });
                app.uaids.insert(*uaid);
            }
            Record::WakeupSet { uaid, wakeup } => {
                let ua = self.uas.entry(*uaid).or_insert_with(UserAgent::new);
                ua.wakeup = wakeup.clone();
            }
        }
    }

    fn remember_outcome(&mut self, uaid: Uaid, seq: u64, reason: Removal) {
        if self.outcomes.insert((uaid, seq), reason).is_none() {
            self.outcome_order.push_back((uaid, seq));
        }
        while self.outcome_order.len() > OUTCOMES_REMEMBERED_MAX {
            if let Some(oldest) = self.outcome_order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
    }

    /// Live state as records, for WAL compaction: replaying these alone gives
    /// the same registrations and pending (unexpired) messages.
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

    /// One UA's live state as records (nothing if it is unknown). A snapshot
    /// may be built this way across many turns of the shard while records
    /// keep being appended: every record is a blind write (set or delete of
    /// one key) or a monotonic maximum, so replaying the log after the LSN the
    /// snapshot covers, over state taken at any later moment, ends in the
    /// same state (a fuzzy checkpoint).
    pub fn snapshot_user_agent(&self, now_ms: Millis, uaid: Uaid, records: &mut Vec<Record>) {
        let Some(ua) = self.uas.get(&uaid) else {
            return;
        };
        records.push(Record::UaidCreated {
            uaid,
            at_ms: now_ms,
        });
        for (channel, state) in &ua.channels {
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
                wakeup: ua.wakeup.clone(),
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

    // ---- UA sockets ----------------------------------------------------

    /// A WebSocket upgrade completed on this shard.
    pub fn on_open(&mut self, now_ms: Millis, conn: ConnId) {
        self.conns.insert(
            conn,
            Conn {
                uaid: None,
                web_push: false,
                last_activity_ms: now_ms,
                ping_window_start_ms: now_ms,
                pings_in_window: 0,
                broadcasts: Vec::new(),
                retry_scheduled: false,
                extended: false,
            },
        );
        self.timers.insert((
            now_ms + self.config.limits.hello_timeout_ms,
            Timer::HelloDeadline(conn),
        ));
    }

    /// A socket handed over by another shard, with the hello it already read.
    pub fn on_adopted(&mut self, now_ms: Millis, conn: ConnId, hello: &str) {
        self.on_open(now_ms, conn);
        self.on_text(now_ms, conn, hello);
    }

    /// An extended-protocol socket handed over with its registerUA message.
    pub fn on_adopted_extended(&mut self, now_ms: Millis, conn: ConnId, register_ua: &str) {
        self.on_open_extended(now_ms, conn);
        self.on_text(now_ms, conn, register_ua);
    }

    pub fn on_closed(&mut self, _now_ms: Millis, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        for id in &state.broadcasts {
            if let Some(subscribers) = self.broadcast_subscribers.get_mut(id) {
                subscribers.remove(&conn);
            }
        }
        if let Some(ua) = state.uaid.and_then(|uaid| self.uas.get_mut(&uaid)) {
            if ua.conn == Some(conn) {
                ua.conn = None;
            }
        }
    }

    /// The socket broke the framing rules (too big, bad frame) or the UA
    /// closed it: answer with `code` and forget the connection.
    pub fn on_socket_error(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        if code != close::NORMAL {
            self.stats.protocol_errors += 1;
        }
        self.close(conn, code, reason);
    }

    pub fn on_text(&mut self, now_ms: Millis, conn: ConnId, text: &str) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        state.last_activity_ms = now_ms;
        let identified = state.uaid;
        if state.extended {
            return self.on_extended_text(now_ms, conn, identified, text);
        }
        let message = match ua::parse(text) {
            Ok(message) => message,
            Err(error) => {
                self.stats.protocol_errors += 1;
                return self.close(conn, close::PROTOCOL_ERROR, error.reason());
            }
        };
        match (identified, message) {
            (None, ClientMessage::Hello(hello)) => self.on_hello(now_ms, conn, hello, text),
            (Some(_), ClientMessage::Hello(_)) => {
                self.stats.protocol_errors += 1;
                self.close(conn, close::PROTOCOL_ERROR, "second hello on one socket");
            }
            (None, _) => {
                self.stats.protocol_errors += 1;
                self.close(
                    conn,
                    close::PROTOCOL_ERROR,
                    "the first message must be hello",
                );
            }
            (Some(uaid), ClientMessage::Register { channel_id, key }) => {
                self.on_register(conn, uaid, &channel_id, key.as_deref())
            }
            (Some(uaid), ClientMessage::Unregister { channel_id }) => {
                self.on_unregister(conn, uaid, &channel_id)
            }
            (Some(uaid), ClientMessage::Ack(updates)) => self.on_ack(uaid, &updates),
            (Some(_), ClientMessage::Nack { .. }) => self.stats.nacks += 1,
            (Some(_), ClientMessage::Ping) => self.on_ping(now_ms, conn, false),
            (Some(_), ClientMessage::TextPing) => self.on_ping(now_ms, conn, true),
            (Some(_), ClientMessage::BroadcastSubscribe(wanted)) => {
                let changes = self.subscribe_broadcasts(conn, &wanted);
                if !changes.is_empty() {
                    self.send(conn, None, ua::broadcast_message(&changes));
                }
            }
        }
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        self.actions.push_back(Action::Close { conn, code, reason });
        // The socket is gone for the engine now; net reports nothing more for it.
        self.on_closed(0, conn);
    }

    fn send(&mut self, conn: ConnId, after: Option<Lsn>, text: String) {
        self.actions.push_back(Action::Send { conn, after, text });
    }

    fn on_hello(&mut self, now_ms: Millis, conn: ConnId, hello: Hello, text: &str) {
        let claimed = hello
            .uaid
            .as_deref()
            .and_then(|uaid| self.keys.check_uaid(uaid));
        if let Some(uaid) = claimed {
            let owner = uaid.shard(self.config.shards);
            if owner != self.config.index {
                self.stats.hand_offs += 1;
                self.conns.remove(&conn);
                self.actions.push_back(Action::HandOff {
                    conn,
                    shard: owner,
                    hello: text.to_owned(),
                });
                return;
            }
        }
        let uaid = match claimed {
            Some(uaid) => uaid,
            None => self
                .keys
                .mint_uaid(&mut self.rng, self.config.index, self.config.shards),
        };
        let known = self.uas.contains_key(&uaid);
        if !known {
            self.append(Record::UaidCreated {
                uaid,
                at_ms: now_ms,
            });
        }
        if claimed.is_some() {
            if let Some(listed) = &hello.channel_ids {
                self.sync_channels(uaid, listed);
            }
        }
        let status = self.set_wakeup(uaid, hello.wakeup);
        let previous = self.uas.get_mut(&uaid).and_then(|ua| ua.conn.replace(conn));
        if let Some(previous) = previous.filter(|previous| *previous != conn) {
            self.close(
                previous,
                close::NORMAL,
                "another socket took over this UAID",
            );
            if let Some(ua) = self.uas.get_mut(&uaid) {
                ua.conn = Some(conn);
            }
        }
        if let Some(state) = self.conns.get_mut(&conn) {
            state.uaid = Some(uaid);
            state.web_push = hello.use_webpush;
        }
        let changes = self.subscribe_broadcasts(conn, &hello.broadcasts);
        self.send(
            conn,
            None,
            ua::hello_reply(&uaid.to_hex(), status, hello.use_webpush, &changes),
        );
        if self.uas.get(&uaid).is_some_and(|ua| ua.wakeup.is_some()) {
            self.actions.push_back(Action::Awake { uaid });
            let sleep_at = now_ms + self.config.limits.wakeup_idle_ms;
            self.timers.insert((sleep_at, Timer::SleepIdle(conn)));
        }
        self.deliver_pending(now_ms, conn, uaid);
        self.timers.insert((
            now_ms + self.config.limits.ws_ping_interval_ms,
            Timer::WsPing(conn),
        ));
    }

    /// SPEC §3.1: the UA's list wins: drop what it forgot, recreate what we lost.
    fn sync_channels(&mut self, uaid: Uaid, listed: &[String]) {
        let wanted: BTreeSet<ChannelId> = listed
            .iter()
            .filter_map(|text| ChannelId::parse(text))
            .collect();
        let have: BTreeSet<ChannelId> = self
            .uas
            .get(&uaid)
            .map(|ua| ua.channels.keys().copied().collect())
            .unwrap_or_default();
        for channel in have.difference(&wanted) {
            self.append(Record::ChannelUnregistered {
                uaid,
                channel: *channel,
            });
        }
        // Channels kept after the removals above count against the limit too.
        let kept = have.intersection(&wanted).count();
        let room = self
            .config
            .limits
            .channels_per_uaid_max
            .saturating_sub(kept);
        for channel in wanted.difference(&have).take(room) {
            self.append(Record::ChannelRegistered(Registration {
                uaid,
                channel: *channel,
                key_hash: None,
            }));
        }
    }

    /// Returns the hello status: 201 when the UA joins UDP wakeup.
    fn set_wakeup(&mut self, uaid: Uaid, wakeup: Option<WakeupInfo>) -> u16 {
        let routed = wakeup.filter(|info| {
            let network = format!("{}-{}", info.mcc, info.mnc);
            self.config.wakeup_networks.contains(&network)
        });
        let current = self.uas.get(&uaid).and_then(|ua| ua.wakeup.clone());
        let status = if routed.is_some() { 201 } else { 200 };
        if current != routed {
            self.append(Record::WakeupSet {
                uaid,
                wakeup: routed,
            });
        }
        status
    }

    fn on_ping(&mut self, now_ms: Millis, conn: ConnId, text_form: bool) {
        let max = self.config.limits.pings_per_minute_max;
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if now_ms.saturating_sub(state.ping_window_start_ms) >= PING_WINDOW_MS {
            state.ping_window_start_ms = now_ms;
            state.pings_in_window = 0;
        }
        state.pings_in_window += 1;
        if state.pings_in_window > max {
            self.stats.ping_rate_closes += 1;
            return self.close(conn, close::POLICY, "too many pings");
        }
        let reply = if text_form { ua::PONG } else { ua::PING_REPLY };
        self.send(conn, None, reply.to_owned());
    }

    fn on_register(&mut self, conn: ConnId, uaid: Uaid, channel_text: &str, key: Option<&str>) {
        let Some(channel) = ChannelId::parse(channel_text) else {
            return self.send(conn, None, ua::register_reply(channel_text, 457, None));
        };
        let channel_text = channel.to_text();
        let key_hash = match key.filter(|key| !key.is_empty()) {
            None => None,
            Some(key) => match crate::vapid::decode_public_key(key) {
                Some(raw) => Some(crate::vapid::key_hash(&raw)),
                None => return self.send(conn, None, ua::register_reply(&channel_text, 400, None)),
            },
        };
        if self.store_failed {
            return self.send(conn, None, ua::register_reply(&channel_text, 500, None));
        }
        let Some(ua) = self.uas.get(&uaid) else {
            return;
        };
        let existing = ua.channels.get(&channel).map(|state| state.key_hash);
        let after = match existing {
            Some(registered) if registered == key_hash => self.next_lsn.checked_sub(1),
            None if ua.channels.len() >= self.config.limits.channels_per_uaid_max => {
                return self.send(conn, None, ua::register_reply(&channel_text, 429, None));
            }
            // A new channel, or the UA re-registers it with another key: the
            // UA owns its channels, so the newer key wins.
            _ => {
                self.stats.registers += 1;
                Some(self.append(Record::ChannelRegistered(Registration {
                    uaid,
                    channel,
                    key_hash,
                })))
            }
        };
        let endpoint = self.endpoint(uaid, channel, key_hash);
        self.send(
            conn,
            after,
            ua::register_reply(&channel_text, 200, Some(&endpoint)),
        );
    }

    fn endpoint(&self, uaid: Uaid, channel: ChannelId, key_hash: Option<KeyHash>) -> String {
        let token = self.keys.endpoint_token(&uaid, &channel, key_hash.as_ref());
        let version = if key_hash.is_some() { 2 } else { 1 };
        format!(
            "{}/wpush/v{version}/{token}",
            self.config.endpoint_url.trim_end_matches('/')
        )
    }

    fn on_unregister(&mut self, conn: ConnId, uaid: Uaid, channel_text: &str) {
        let Some(channel) = ChannelId::parse(channel_text) else {
            return self.send(conn, None, ua::unregister_reply(channel_text, 457));
        };
        let registered = self
            .uas
            .get(&uaid)
            .is_some_and(|ua| ua.channels.contains_key(&channel));
        let after = if registered {
            if self.store_failed {
                return self.send(conn, None, ua::unregister_reply(&channel.to_text(), 500));
            }
            self.stats.unregisters += 1;
            Some(self.append(Record::ChannelUnregistered { uaid, channel }))
        } else {
            None
        };
        self.send(conn, after, ua::unregister_reply(&channel.to_text(), 200));
    }

    fn on_ack(&mut self, uaid: Uaid, updates: &[ua::AckUpdate]) {
        for update in updates {
            let Some(channel) = ChannelId::parse(&update.channel_id) else {
                continue;
            };
            let acked: Vec<u64> = match &update.version {
                AckVersion::Text(text) => match self.keys.open_message_id(text) {
                    Some(claims) if claims.uaid == uaid && claims.channel == channel => {
                        vec![claims.seq]
                    }
                    Some(_) => Vec::new(),
                    None => match text.parse::<u64>() {
                        Ok(number) => self.acked_by_number(uaid, channel, number),
                        Err(_) => Vec::new(),
                    },
                },
                AckVersion::Number(number) => self.acked_by_number(uaid, channel, *number),
            };
            for seq in acked {
                let present = self
                    .uas
                    .get(&uaid)
                    .is_some_and(|ua| ua.pending.contains_key(&seq));
                if present && !self.store_failed {
                    self.stats.acks += 1;
                    self.append(Record::MessageRemoved {
                        uaid,
                        channel,
                        seq,
                        reason: Removal::Acked,
                    });
                }
            }
        }
    }

    /// A numeric ack frees every message on the channel whose numeric form
    /// (SimplePush version, or arrival time for other kinds) is at most `number`:
    /// SimplePush only cares about the newest version.
    fn acked_by_number(&self, uaid: Uaid, channel: ChannelId, number: u64) -> Vec<u64> {
        let Some(ua) = self.uas.get(&uaid) else {
            return Vec::new();
        };
        ua.pending
            .iter()
            .filter(|(_, pending)| {
                pending.message.channel == channel && numeric_version(&pending.message) <= number
            })
            .map(|(seq, _)| *seq)
            .collect()
    }

    // ---- delivery ------------------------------------------------------

    /// Forgets messages whose TTL ran out. No record is needed: replay keeps
    /// them only until the next purge, and compaction leaves them out.
    fn purge_expired(&mut self, now_ms: Millis, uaid: Uaid) {
        let Some(ua) = self.uas.get_mut(&uaid) else {
            return;
        };
        let expired: Vec<u64> = ua
            .pending
            .iter()
            .filter(|(_, pending)| pending.message.is_expired(now_ms))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &expired {
            ua.pending.remove(seq);
        }
        for seq in expired {
            self.remember_outcome(uaid, seq, Removal::Expired);
        }
    }

    /// Sends every pending message of `uaid` on `conn`: high urgency first,
    /// then arrival order; expired ones are dropped on the way.
    fn deliver_pending(&mut self, now_ms: Millis, conn: ConnId, uaid: Uaid) {
        self.purge_expired(now_ms, uaid);
        let Some(ua) = self.uas.get_mut(&uaid) else {
            return;
        };
        let mut order: Vec<(std::cmp::Reverse<Urgency>, u64)> = ua
            .pending
            .iter()
            .map(|(seq, pending)| (std::cmp::Reverse(pending.message.urgency), *seq))
            .collect();
        order.sort();
        let messages: Vec<StoredMessage> = order
            .iter()
            .filter_map(|(_, seq)| {
                let pending = ua.pending.get_mut(seq)?;
                pending.sent = true;
                Some(pending.message.clone())
            })
            .collect();
        if messages.is_empty() {
            return;
        }
        self.send_messages(conn, &messages);
        self.schedule_retry(now_ms, conn);
    }

    /// One retry chain per socket: a re-send covers every unacked message,
    /// so more timers would only multiply the re-sends.
    fn schedule_retry(&mut self, now_ms: Millis, conn: ConnId) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if !state.retry_scheduled {
            state.retry_scheduled = true;
            let retry_at = now_ms + self.config.limits.retry_interval_ms;
            self.timers.insert((retry_at, Timer::Retry(conn)));
        }
    }

    /// Frames for `messages` in the form the socket speaks (SPEC §3.3).
    fn send_messages(&mut self, conn: ConnId, messages: &[StoredMessage]) {
        let web_push = self.conns.get(&conn).is_some_and(|state| state.web_push);
        let extended = self.conns.get(&conn).is_some_and(|state| state.extended);
        self.stats.notifications_out += messages.len() as u64;
        // Extended notifications exist only in the extended form, and only
        // they do: anything else cannot be shown on the other kind of socket.
        let (shown, hidden): (Vec<&StoredMessage>, Vec<&StoredMessage>) = messages
            .iter()
            .partition(|message| matches!(message.body, MessageBody::Extended { .. }) == extended);
        self.stats.cross_mode_dropped += hidden.len() as u64;
        let messages: Vec<StoredMessage> = shown.into_iter().cloned().collect();
        if extended {
            for message in &messages {
                let text = self.extended_object(message).to_string();
                self.send(conn, None, text);
            }
            return;
        }
        if web_push {
            for message in &messages {
                let text = self.web_push_frame(message);
                self.send(conn, None, text);
            }
            return;
        }
        let mut updates = Vec::new();
        let mut desktop = Vec::new();
        for message in &messages {
            let channel_id = message.channel.to_text();
            match &message.body {
                MessageBody::Desktop { body, ttl_s } => desktop.push(json!({
                    "channelID": channel_id,
                    "version": numeric_version(message),
                    "body": body,
                    "ttl": ttl_s,
                })),
                MessageBody::WebPush { data, .. } => {
                    if !data.is_empty() {
                        self.stats.cross_mode_dropped += 1;
                    }
                    updates.push(
                        json!({"channelID": channel_id, "version": numeric_version(message)}),
                    );
                }
                MessageBody::Version(_) => {
                    updates.push(
                        json!({"channelID": channel_id, "version": numeric_version(message)}),
                    );
                }
                // Filtered out above: only extended sockets show these.
                MessageBody::Extended { .. } => {}
            }
        }
        if !updates.is_empty() {
            self.send(
                conn,
                None,
                json!({"messageType": "notification", "updates": updates}).to_string(),
            );
        }
        if !desktop.is_empty() {
            self.send(
                conn,
                None,
                json!({"messageType": "desktop-notification", "updates": desktop}).to_string(),
            );
        }
    }

    fn web_push_frame(&mut self, message: &StoredMessage) -> String {
        let channel_id = message.channel.to_text();
        let mut frame = json!({"messageType": "notification", "channelID": channel_id});
        match &message.body {
            MessageBody::WebPush {
                data,
                encoding,
                encryption,
                crypto_key,
            } => {
                frame["version"] = Value::String(self.keys.message_id(
                    &message.uaid,
                    &message.channel,
                    message.seq,
                ));
                if !data.is_empty() {
                    use base64::Engine;
                    frame["data"] = Value::String(
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data),
                    );
                    let mut headers = json!({});
                    if let Some(encoding) = encoding {
                        headers["encoding"] = Value::String(encoding.clone());
                    }
                    if let Some(encryption) = encryption {
                        headers["encryption"] = Value::String(encryption.clone());
                    }
                    if let Some(crypto_key) = crypto_key {
                        headers["crypto_key"] = Value::String(crypto_key.clone());
                    }
                    frame["headers"] = headers;
                }
            }
            MessageBody::Version(version) => frame["version"] = Value::String(version.to_string()),
            MessageBody::Desktop { .. } => {
                // A Web Push socket cannot show a desktop body: it gets the version only.
                self.stats.cross_mode_dropped += 1;
                frame["version"] = Value::String(numeric_version(message).to_string());
            }
            // Filtered out by send_messages: only extended sockets show these.
            MessageBody::Extended { .. } => {}
        }
        frame.to_string()
    }

    /// An extended notification as the UA sees it (SPEC §3.6).
    fn extended_object(&self, message: &StoredMessage) -> Value {
        let MessageBody::Extended {
            id,
            message: payload,
            timestamp_ms,
            priority,
        } = &message.body
        else {
            return Value::Null;
        };
        let url_token = self
            .web_apps
            .get(&message.channel)
            .map_or("", |app| app.url_token.as_str());
        extended::notification_object(
            id,
            payload,
            *timestamp_ms,
            *priority,
            &self
                .keys
                .message_id(&message.uaid, &message.channel, message.seq),
            &self.app_url(url_token),
        )
    }

    fn app_url(&self, url_token: &str) -> String {
        format!(
            "{}/notify/{url_token}",
            self.config.endpoint_url.trim_end_matches('/')
        )
    }

    // ---- extended protocol (SPEC §3.6) ------------------------------------

    /// A socket that negotiated `push-extended-notification`.
    pub fn on_open_extended(&mut self, now_ms: Millis, conn: ConnId) {
        self.on_open(now_ms, conn);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.extended = true;
        }
    }

    fn on_extended_text(&mut self, now_ms: Millis, conn: ConnId, bound: Option<Uaid>, text: &str) {
        let message = match extended::parse(text) {
            Ok(message) => message,
            Err(error) => {
                self.stats.protocol_errors += 1;
                return self.send(conn, None, error.reply());
            }
        };
        let not_registered = |message_type: &str| {
            extended::error_reply(401, "registerUA first on this socket", Some(message_type))
        };
        match (message, bound) {
            (ExtendedMessage::RegisterUa { uatoken, wakeup }, _) => {
                self.on_register_ua(now_ms, conn, bound, &uatoken, wakeup, text)
            }
            (
                ExtendedMessage::RegisterWa {
                    uatoken,
                    watoken,
                    public_key_der,
                },
                Some(uaid),
            ) => {
                if self.keys.check_uaid(&uatoken) != Some(uaid) {
                    let reply =
                        extended::error_reply(401, extended::BAD_UA_TOKEN, Some("registerWA"));
                    return self.send(conn, None, reply);
                }
                self.on_register_wa(conn, uaid, &watoken, public_key_der)
            }
            (ExtendedMessage::GetAllMessages, Some(uaid)) => {
                self.purge_expired(now_ms, uaid);
                let messages: Vec<StoredMessage> = self
                    .uas
                    .get(&uaid)
                    .map(|ua| {
                        ua.pending
                            .values()
                            .map(|pending| pending.message.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let objects = messages
                    .iter()
                    .filter(|message| matches!(message.body, MessageBody::Extended { .. }))
                    .map(|message| self.extended_object(message))
                    .collect();
                self.send(conn, None, extended::all_messages(objects));
            }
            (ExtendedMessage::Ack { message_id }, Some(uaid)) => {
                if let Some(claims) = self.keys.open_message_id(&message_id) {
                    let present = self
                        .uas
                        .get(&uaid)
                        .is_some_and(|ua| ua.pending.contains_key(&claims.seq));
                    if claims.uaid == uaid && present && !self.store_failed {
                        self.stats.acks += 1;
                        self.append(Record::MessageRemoved {
                            uaid,
                            channel: claims.channel,
                            seq: claims.seq,
                            reason: Removal::Acked,
                        });
                    }
                }
            }
            (ExtendedMessage::RegisterWa { .. }, None) => {
                self.send(conn, None, not_registered("registerWA"))
            }
            (ExtendedMessage::GetAllMessages, None) => {
                self.send(conn, None, not_registered("getAllMessages"))
            }
            (ExtendedMessage::Ack { .. }, None) => self.send(conn, None, not_registered("ack")),
        }
    }

    /// registerUA binds the socket to the UA its token names, like a hello:
    /// on the owning shard, the newer socket wins, pending messages follow.
    fn on_register_ua(
        &mut self,
        now_ms: Millis,
        conn: ConnId,
        bound: Option<Uaid>,
        uatoken: &str,
        wakeup: Option<WakeupInfo>,
        text: &str,
    ) {
        let Some(uaid) = self.keys.check_uaid(uatoken) else {
            let reply = extended::error_reply(401, extended::BAD_UA_TOKEN, Some("registerUA"));
            return self.send(conn, None, reply);
        };
        if bound.is_some_and(|bound| bound != uaid) {
            let reply = extended::error_reply(
                409,
                "this socket is registered for another UA",
                Some("registerUA"),
            );
            return self.send(conn, None, reply);
        }
        let owner = uaid.shard(self.config.shards);
        if owner != self.config.index {
            self.stats.hand_offs += 1;
            self.conns.remove(&conn);
            self.actions.push_back(Action::HandOff {
                conn,
                shard: owner,
                hello: text.to_owned(),
            });
            return;
        }
        if !self.uas.contains_key(&uaid) {
            self.append(Record::UaidCreated {
                uaid,
                at_ms: now_ms,
            });
        }
        self.set_wakeup(uaid, wakeup);
        let previous = self.uas.get_mut(&uaid).and_then(|ua| ua.conn.replace(conn));
        if let Some(previous) = previous.filter(|previous| *previous != conn) {
            self.close(previous, close::NORMAL, "another socket took over this UA");
            if let Some(ua) = self.uas.get_mut(&uaid) {
                ua.conn = Some(conn);
            }
        }
        if let Some(state) = self.conns.get_mut(&conn) {
            state.uaid = Some(uaid);
        }
        self.send(conn, None, extended::registered("registerUA"));
        if self.uas.get(&uaid).is_some_and(|ua| ua.wakeup.is_some()) {
            self.actions.push_back(Action::Awake { uaid });
            let sleep_at = now_ms + self.config.limits.wakeup_idle_ms;
            self.timers.insert((sleep_at, Timer::SleepIdle(conn)));
        }
        self.deliver_pending(now_ms, conn, uaid);
    }

    fn on_register_wa(&mut self, conn: ConnId, uaid: Uaid, watoken: &str, public_key_der: Vec<u8>) {
        let (channel, url_token) = extended::app_token(watoken, &public_key_der);
        let url = self.app_url(&url_token);
        let registered = self
            .web_apps
            .get(&channel)
            .is_some_and(|app| app.uaids.contains(&uaid));
        let after = if registered {
            self.next_lsn.checked_sub(1)
        } else if self.store_failed {
            let reply = extended::error_reply(503, "Try again later", Some("registerWA"));
            return self.send(conn, None, reply);
        } else if self
            .uas
            .get(&uaid)
            .is_some_and(|ua| ua.channels.len() >= self.config.limits.channels_per_uaid_max)
        {
            let reply =
                extended::error_reply(429, "too many web apps on this UA", Some("registerWA"));
            return self.send(conn, None, reply);
        } else {
            self.stats.registers += 1;
            Some(self.append(Record::WebAppRegistered {
                uaid,
                channel,
                url_token,
                public_key_der,
            }))
        };
        self.send(conn, after, extended::registered_app(&url));
    }

    /// An AS posted to an app url. Every shard hears it; each stores it for
    /// its own UAs that registered the app. The answer: 404 when this shard
    /// has none of them, 401 for a bad signature, else 200 once durable.
    pub fn on_app_notify(
        &mut self,
        now_ms: Millis,
        request: RequestId,
        channel: ChannelId,
        notification: extended::AppNotification,
    ) {
        let (after, response) = self.app_notify(now_ms, channel, notification);
        self.actions.push_back(Action::Reply {
            request,
            after,
            response,
        });
    }

    fn app_notify(
        &mut self,
        now_ms: Millis,
        channel: ChannelId,
        notification: extended::AppNotification,
    ) -> (Option<Lsn>, HttpResponse) {
        let Some(app) = self.web_apps.get(&channel) else {
            return (None, extended::as_error(404, "No valid AppToken"));
        };
        if !extended::signature_is_valid(
            &app.public_key_der,
            &notification.message,
            &notification.signature,
        ) {
            return (
                None,
                extended::as_error(401, "Bad signature, dropping notification"),
            );
        }
        if self.store_failed {
            return (None, extended::as_error(503, "Try again later"));
        }
        let uaids: Vec<Uaid> = app.uaids.iter().copied().collect();
        let mut after = None;
        for uaid in uaids {
            let Some(ua) = self.uas.get(&uaid) else {
                continue;
            };
            self.stats.notifications_in += 1;
            let seq = ua.next_seq.max(now_ms.saturating_mul(SEQ_PER_MS));
            let seq = seq + seq % 2; // stored messages have even numbers
            let connected = ua.conn;
            let message = StoredMessage {
                uaid,
                channel,
                seq,
                arrived_ms: now_ms,
                expires_ms: now_ms.saturating_add(notification.ttl_s.saturating_mul(1000)),
                urgency: Urgency::Normal,
                topic: None,
                body: MessageBody::Extended {
                    id: notification.id.clone(),
                    message: notification.message.clone(),
                    timestamp_ms: notification.timestamp_ms,
                    priority: notification.priority,
                },
            };
            let displaced = self.displaced_by(now_ms, uaid, &message);
            after = Some(self.append(Record::MessageStored(message.clone())));
            for (seq, channel, reason) in displaced {
                self.append(Record::MessageRemoved {
                    uaid,
                    channel,
                    seq,
                    reason,
                });
            }
            if let Some(conn) = connected {
                if let Some(pending) = self
                    .uas
                    .get_mut(&uaid)
                    .and_then(|ua| ua.pending.get_mut(&seq))
                {
                    pending.sent = true;
                }
                self.send_messages(conn, std::slice::from_ref(&message));
                self.schedule_retry(now_ms, conn);
            } else if let Some(target) = self.uas.get(&uaid).and_then(|ua| ua.wakeup.clone()) {
                self.actions.push_back(Action::Wakeup {
                    uaid,
                    target,
                    urgency: Urgency::Normal,
                });
            }
        }
        (after, extended::accepted())
    }

    // ---- timers --------------------------------------------------------

    pub fn on_tick(&mut self, now_ms: Millis) {
        while let Some(&(deadline, timer)) = self.timers.first() {
            if deadline > now_ms {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::HelloDeadline(conn) => {
                    if self
                        .conns
                        .get(&conn)
                        .is_some_and(|state| state.uaid.is_none())
                    {
                        self.close(conn, close::PROTOCOL_ERROR, "no hello in time");
                    }
                }
                Timer::Retry(conn) => {
                    let Some(state) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    state.retry_scheduled = false;
                    if let Some(uaid) = state.uaid {
                        self.deliver_pending(now_ms, conn, uaid);
                    }
                }
                Timer::SleepIdle(conn) => self.on_sleep_idle(now_ms, conn),
                Timer::WsPing(conn) => {
                    if self.conns.contains_key(&conn) {
                        self.actions.push_back(Action::WsPing { conn });
                        let next = now_ms + self.config.limits.ws_ping_interval_ms;
                        self.timers.insert((next, Timer::WsPing(conn)));
                    }
                }
            }
        }
    }

    /// SPEC §5: a wakeup-registered UA with nothing in flight is closed with
    /// 4774 once idle, so its radio can sleep; otherwise look again later.
    fn on_sleep_idle(&mut self, now_ms: Millis, conn: ConnId) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        let Some(uaid) = state.uaid else { return };
        let idle_since = state.last_activity_ms;
        let idle_ms = self.config.limits.wakeup_idle_ms;
        let Some(ua) = self.uas.get(&uaid) else {
            return;
        };
        if ua.wakeup.is_none() || ua.conn != Some(conn) {
            return;
        }
        let quiet = now_ms.saturating_sub(idle_since) >= idle_ms;
        let unacked = ua.pending.values().any(|pending| pending.sent);
        if quiet && !unacked {
            self.close(conn, close::SLEEP, "sleep: you will be woken by UDP");
        } else {
            let next = if quiet {
                now_ms + idle_ms
            } else {
                idle_since + idle_ms
            };
            self.timers.insert((next, Timer::SleepIdle(conn)));
        }
    }

    // ---- broadcasts (SPEC §3.5) -----------------------------------------

    /// Subscribes `conn` to `wanted` (id → the version the UA has) and returns
    /// the subscribed broadcasts whose current version differs. Each
    /// subscription costs one set entry, whatever the number of broadcasts.
    fn subscribe_broadcasts(
        &mut self,
        conn: ConnId,
        wanted: &[(String, String)],
    ) -> Vec<(String, String)> {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        for (id, have) in wanted {
            if !state.broadcasts.contains(id) {
                if state.broadcasts.len() >= self.config.limits.broadcasts_per_ua_max {
                    continue;
                }
                state.broadcasts.push(id.clone());
                self.broadcast_subscribers
                    .entry(id.clone())
                    .or_default()
                    .insert(conn);
            }
            if let Some(current) = self.broadcasts.get(id).filter(|current| *current != have) {
                changes.push((id.clone(), current.clone()));
            }
        }
        changes
    }

    /// An operator set broadcast `id` to `version` (on any shard; every shard
    /// hears it): tell this shard's subscribers.
    pub fn on_broadcast(&mut self, id: &str, version: &str) {
        if self
            .broadcasts
            .get(id)
            .is_some_and(|current| current == version)
        {
            return;
        }
        self.broadcasts.insert(id.to_owned(), version.to_owned());
        let subscribers: Vec<ConnId> = self
            .broadcast_subscribers
            .get(id)
            .map(|conns| conns.iter().copied().collect())
            .unwrap_or_default();
        let message = ua::broadcast_message(&[(id.to_owned(), version.to_owned())]);
        for conn in subscribers {
            self.send(conn, None, message.clone());
        }
    }

    // ---- AS requests ---------------------------------------------------

    pub fn on_push(&mut self, now_ms: Millis, request: RequestId, push: PushRequest) {
        let (after, response) = match push {
            PushRequest::Notify {
                uaid,
                channel,
                key_hash,
                notification,
            } => self.on_notify(now_ms, uaid, channel, key_hash, notification),
            PushRequest::DeleteMessage(claims) => self.on_delete(now_ms, claims),
            PushRequest::MessageState(claims) => (None, self.message_state(now_ms, claims)),
        };
        self.actions.push_back(Action::Reply {
            request,
            after,
            response,
        });
    }

    fn on_notify(
        &mut self,
        now_ms: Millis,
        uaid: Uaid,
        channel: ChannelId,
        key_hash: Option<KeyHash>,
        notification: Notification,
    ) -> (Option<Lsn>, HttpResponse) {
        let gone = || {
            HttpResponse::error(
                410,
                errno::ENDPOINT_GONE,
                "this subscription is no longer valid",
            )
        };
        let Some(ua) = self.uas.get(&uaid) else {
            return (None, gone());
        };
        let Some(state) = ua.channels.get(&channel) else {
            return (None, gone());
        };
        if state.key_hash != key_hash {
            return (None, gone());
        }
        if self.store_failed {
            return (
                None,
                HttpResponse::error(503, errno::STORAGE_FAILED, "storage unavailable"),
            );
        }
        self.stats.notifications_in += 1;
        let mut body = notification.body;
        if let MessageBody::Version(version) = &mut body {
            if *version == VERSION_FROM_CLOCK {
                *version = now_ms;
            }
            if Some(*version) <= state.version {
                // Not newer: accepted, nothing to send (SPEC §4.1).
                return (
                    self.next_lsn.checked_sub(1),
                    HttpResponse::json(200, "{}".to_owned()),
                );
            }
        }
        let connected = ua.conn;
        let web_push = notification.web_push;
        let ttl_s = notification.ttl_s.unwrap_or(0);
        // RFC 8030 §5.2: TTL=0 is delivered now or never; it is not stored.
        let stored = !(web_push && ttl_s == 0);
        // Stored messages get even sequence numbers, unstored ones odd: an
        // unstored message leaves no record, so after a restart its number
        // could otherwise be given to a stored message, and its id (which
        // the AS may DELETE) would name that one.
        let earliest = ua.next_seq.max(now_ms.saturating_mul(SEQ_PER_MS));
        let seq = earliest + u64::from((earliest % 2 == 0) != stored);
        let message = StoredMessage {
            uaid,
            channel,
            seq,
            arrived_ms: now_ms,
            expires_ms: notification
                .ttl_s
                .map_or(0, |ttl_s| now_ms.saturating_add(ttl_s.saturating_mul(1000))),
            urgency: notification.urgency,
            topic: notification.topic,
            body,
        };
        let after = if !stored {
            if let Some(ua) = self.uas.get_mut(&uaid) {
                ua.next_seq = seq + 1;
            }
            if let Some(conn) = connected {
                self.send_messages(conn, std::slice::from_ref(&message));
            }
            self.next_lsn.checked_sub(1)
        } else {
            // The new message is logged before what it displaces: a crash
            // between the records may keep both (delivered twice), never
            // neither (an acknowledged message lost).
            let displaced = self.displaced_by(now_ms, uaid, &message);
            let lsn = self.append(Record::MessageStored(message.clone()));
            for (seq, channel, reason) in displaced {
                self.append(Record::MessageRemoved {
                    uaid,
                    channel,
                    seq,
                    reason,
                });
            }
            // RFC 8030 §5.3: very-low and low urgency wait for the UA's next
            // natural connection instead of waking a sleeping phone.
            if connected.is_none() && message.urgency >= Urgency::Normal {
                if let Some(target) = self.uas.get(&uaid).and_then(|ua| ua.wakeup.clone()) {
                    self.actions.push_back(Action::Wakeup {
                        uaid,
                        target,
                        urgency: message.urgency,
                    });
                }
            }
            if let Some(conn) = connected {
                if let Some(pending) = self
                    .uas
                    .get_mut(&uaid)
                    .and_then(|ua| ua.pending.get_mut(&seq))
                {
                    pending.sent = true;
                }
                self.send_messages(conn, std::slice::from_ref(&message));
                self.schedule_retry(now_ms, conn);
            }
            Some(lsn)
        };
        if !web_push {
            return (after, HttpResponse::json(200, "{}".to_owned()));
        }
        let location = format!(
            "{}/m/{}",
            self.config.endpoint_url.trim_end_matches('/'),
            self.keys.message_id(&uaid, &channel, seq)
        );
        let response = if notification.respond_async {
            HttpResponse::json(202, String::new()).with_header(
                "Link",
                format!("<{location}>; rel=\"urn:ietf:params:push:receipt\""),
            )
        } else {
            HttpResponse::json(201, String::new())
        };
        (
            after,
            response
                .with_header("Location", location)
                .with_header("TTL", ttl_s.to_string()),
        )
    }

    /// What storing `incoming` displaces: older SimplePush versions on its
    /// channel and messages with its Topic (replaced), and at the pending limit
    /// the oldest message of the lowest urgency present (dropped).
    fn displaced_by(
        &mut self,
        now_ms: Millis,
        uaid: Uaid,
        incoming: &StoredMessage,
    ) -> Vec<(u64, ChannelId, Removal)> {
        self.purge_expired(now_ms, uaid);
        let Some(ua) = self.uas.get(&uaid) else {
            return Vec::new();
        };
        let replaces = |old: &StoredMessage| {
            old.channel == incoming.channel
                && match (&old.body, &incoming.body) {
                    (MessageBody::Version(_), MessageBody::Version(_)) => true,
                    _ => incoming.topic.is_some() && old.topic == incoming.topic,
                }
        };
        let mut displaced: Vec<(u64, ChannelId, Removal)> = ua
            .pending
            .values()
            .filter(|pending| replaces(&pending.message))
            .map(|pending| {
                (
                    pending.message.seq,
                    pending.message.channel,
                    Removal::Replaced,
                )
            })
            .collect();
        let remaining = ua.pending.len() - displaced.len();
        if remaining >= self.config.limits.pending_per_uaid_max {
            let victim = ua
                .pending
                .values()
                .filter(|pending| !replaces(&pending.message))
                .min_by_key(|pending| (pending.message.urgency, pending.message.seq));
            if let Some(pending) = victim {
                self.stats.pending_dropped += 1;
                displaced.push((
                    pending.message.seq,
                    pending.message.channel,
                    Removal::Dropped,
                ));
            }
        }
        displaced
    }

    fn on_delete(&mut self, now_ms: Millis, claims: MessageClaims) -> (Option<Lsn>, HttpResponse) {
        let present = self
            .uas
            .get(&claims.uaid)
            .and_then(|ua| ua.pending.get(&claims.seq))
            .is_some_and(|pending| {
                pending.message.channel == claims.channel && !pending.message.is_expired(now_ms)
            });
        if !present {
            return (
                None,
                HttpResponse::error(404, errno::MESSAGE_NOT_FOUND, "no such pending message"),
            );
        }
        if self.store_failed {
            return (
                None,
                HttpResponse::error(503, errno::STORAGE_FAILED, "storage unavailable"),
            );
        }
        let record = Record::MessageRemoved {
            uaid: claims.uaid,
            channel: claims.channel,
            seq: claims.seq,
            reason: Removal::Deleted,
        };
        let lsn = self.append(record);
        (
            Some(lsn),
            HttpResponse {
                status: 204,
                content_type: "application/json",
                headers: Vec::new(),
                body: String::new(),
            },
        )
    }

    /// `GET /m/<id>`: stored | delivered | acked | expired (SPEC §4.2).
    fn message_state(&self, now_ms: Millis, claims: MessageClaims) -> HttpResponse {
        let pending = self
            .uas
            .get(&claims.uaid)
            .and_then(|ua| ua.pending.get(&claims.seq));
        let state = match (pending, self.outcomes.get(&(claims.uaid, claims.seq))) {
            (Some(pending), _) if pending.message.is_expired(now_ms) => "expired",
            (Some(pending), _) if pending.sent => "delivered",
            (Some(_), _) => "stored",
            (None, Some(Removal::Acked)) => "acked",
            (None, Some(Removal::Deleted)) | (None, None) => {
                return HttpResponse::error(404, errno::MESSAGE_NOT_FOUND, "no such message");
            }
            (None, Some(_)) => "expired",
        };
        HttpResponse::json(200, json!({"state": state}).to_string())
    }
}

/// The number a SimplePush socket sees for a message: the AS's version, or the
/// arrival time in ms for messages that have none (SPEC §3.3).
fn numeric_version(message: &StoredMessage) -> u64 {
    match message.body {
        MessageBody::Version(version) => version,
        _ => message.arrived_ms,
    }
}
