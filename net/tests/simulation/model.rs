//! The reference model: what the spec says each UA holds, what the AS and
//! the UA wait for, and the records' own view of the shards (with LSNs, so
//! that a crash can be told what it may take back).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use herald_engine::message::{MessageBody, StoredMessage, Urgency};
use herald_engine::record::Record;
use herald_engine::{ChannelId, Lsn, Millis, Uaid};

/// How a notification names a message on the wire.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Tok {
    /// A Web Push message id (Web Push socket, Web Push message).
    Id(String),
    /// A number: a SimplePush version, or an arrival time in ms.
    Num(u64),
    /// A `desktop-notification` entry on a SimplePush socket: (version, body).
    Desktop(u64, String),
}

impl Tok {
    pub fn number(&self) -> Option<u64> {
        match self {
            Tok::Id(_) => None,
            Tok::Num(n) | Tok::Desktop(n, _) => Some(*n),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Kind {
    Version(u64),
    Desktop(String),
    WebPush { id: String, data: Vec<u8> },
}

#[derive(Clone, Debug)]
pub struct Msg {
    pub serial: u64,
    pub seq: u64,
    pub channel: String,
    pub arrived: Millis,
    /// 0: never.
    pub expires: Millis,
    pub urgency: Urgency,
    pub topic: Option<String>,
    pub kind: Kind,
    /// The LSN of its `MessageStored` record on its UA's shard.
    pub stored_lsn: Lsn,
    /// Received on the UA's current socket.
    pub seen: bool,
    /// Sends on the current socket: (first send time, count, last send time),
    /// times as of the end of the step that carried the frame.
    pub sends: (Millis, u32, Millis),
    /// Sent while another pending message had the same token: its re-send
    /// count is not its own (the frames cannot be told apart) until a send
    /// finds it alone again.
    pub ambiguous: bool,
    /// A crash undid its removal (the record was not durable), so it is
    /// pending again (at least once: "delivered twice, never neither").
    pub resurrected: bool,
}

impl Msg {
    pub fn expired(&self, now: Millis) -> bool {
        self.expires != 0 && now >= self.expires
    }

    pub fn numeric(&self) -> u64 {
        match self.kind {
            Kind::Version(version) => version,
            _ => self.arrived,
        }
    }

    pub fn token(&self, web_push_socket: bool) -> Tok {
        match &self.kind {
            Kind::WebPush { id, .. } if web_push_socket => Tok::Id(id.clone()),
            Kind::Desktop(body) if !web_push_socket => Tok::Desktop(self.arrived, body.clone()),
            _ => Tok::Num(self.numeric()),
        }
    }

    /// Whether storing `self` replaces `older` (the engine's collapse rule,
    /// SPEC §7): versions on one channel, or one Topic on one channel.
    pub fn replaces(&self, older: &Msg) -> bool {
        older.seq < self.seq
            && older.channel == self.channel
            && match (&older.kind, &self.kind) {
                (Kind::Version(_), Kind::Version(_)) => true,
                _ => self.topic.is_some() && older.topic == self.topic,
            }
    }

    pub fn web_push_id(&self) -> Option<&str> {
        match &self.kind {
            Kind::WebPush { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Forgets what the UA's previous socket saw (a new socket, or a restart).
    pub fn unsent(&mut self) {
        self.seen = false;
        self.sends = (0, 0, 0);
        self.ambiguous = false;
    }
}

pub struct ModelChannel {
    pub endpoint: String,
    /// The newest SimplePush version the shard holds for the channel (0: none).
    pub version: u64,
    /// The newest version the AS ever sent: an AS whose answer was lost in a
    /// crash does not know whether the shard kept it, so new versions go
    /// above this one.
    pub max_sent: u64,
    /// The register reply reached the UA (its record was durable then).
    pub confirmed: bool,
}

/// A message the shard removed (acked, replaced, dropped, deleted,
/// unregistered) whose removal record is not durable yet: a crash may bring
/// it back.
pub struct Removed {
    pub msg: Msg,
    pub why: &'static str,
}

pub struct ModelUa {
    pub uaid: String,
    pub uaid_bytes: Uaid,
    pub mobile: bool,
    /// The shard holds its wakeup route (it wakes the UA while it sleeps).
    pub wakeup: bool,
    pub conn: Option<herald_engine::ConnId>,
    pub web_push: bool,
    pub channels: BTreeMap<String, ModelChannel>,
    /// Every endpoint ever issued per channel (issuing is deterministic).
    pub endpoints: BTreeMap<String, String>,
    pub pending: Vec<Msg>,
    pub limbo: Vec<Removed>,
    /// Channels whose unregister reply reached the UA, not registered since.
    pub unregistered: BTreeSet<String>,
    pub acked_ids: Vec<String>,
    /// Acked before a compaction: the shard may have forgotten the outcome.
    pub forgotten_ids: Vec<String>,
    /// Web Push ids no longer pending for other reasons (and TTL=0 ones).
    pub gone_ids: Vec<(String, &'static str)>,
    /// Ids whose message expired (DELETE may still find it unpurged).
    pub expired_ids: BTreeSet<String>,
    /// The newest SimplePush version the UA saw per channel.
    pub last_version: BTreeMap<String, u64>,
    /// How many messages beyond `pending_per_uaid_max` a crash left pending
    /// (a message kept, the record of what it displaced lost: "delivered
    /// twice, never neither"); shrinks as they go, never grows.
    pub over_limit: usize,
}

impl ModelUa {
    pub fn new(uaid: String, uaid_bytes: Uaid, mobile: bool, web_push: bool) -> ModelUa {
        ModelUa {
            uaid,
            uaid_bytes,
            mobile,
            wakeup: mobile,
            conn: None,
            web_push,
            channels: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            pending: Vec::new(),
            limbo: Vec::new(),
            unregistered: BTreeSet::new(),
            acked_ids: Vec::new(),
            forgotten_ids: Vec::new(),
            gone_ids: Vec::new(),
            expired_ids: BTreeSet::new(),
            last_version: BTreeMap::new(),
            over_limit: 0,
        }
    }

    /// The shard removed `msg` (for `why`); it stays in limbo until its
    /// removal record is durable.
    pub fn remove(&mut self, msg: Msg, why: &'static str) {
        if let Some(id) = msg.web_push_id() {
            if why == "acked" {
                self.acked_ids.push(id.to_owned());
            } else {
                self.gone_ids.push((id.to_owned(), why));
            }
        }
        self.limbo.push(Removed { msg, why });
    }

    /// A crash changed what became of message `id`: pending again (its
    /// removal record was lost: `None`), or gone for `why`.
    pub fn reclassify(&mut self, id: &str, why: Option<&'static str>) {
        self.acked_ids.retain(|acked| acked != id);
        self.gone_ids.retain(|(gone, _)| gone != id);
        if let Some(why) = why {
            self.gone_ids.push((id.to_owned(), why));
        }
    }
}

/// What a UA waits for on one socket.
#[derive(Clone, Debug)]
pub enum Awaiting {
    /// `lsn`: the channel's newest `ChannelRegistered` (on 200).
    Register {
        channel: String,
        status: u64,
        endpoint: String,
        lsn: Lsn,
    },
    /// `lsn`: the `ChannelUnregistered` record, when there was one.
    Unregister {
        channel: String,
        lsn: Option<Lsn>,
    },
    Ping {
        text_form: bool,
    },
}

/// What an AS request's answer must be, once it comes.
pub struct Expect {
    pub ua: usize,
    /// The request, for failure messages.
    pub what: String,
    pub statuses: Vec<u16>,
    pub body: Option<&'static str>,
    pub ttl: Option<String>,
    /// The exact message id of `Location`.
    pub location: Option<String>,
    /// `Location` names an unstored (TTL=0) message of this UA's channel.
    pub unstored_location: Option<ChannelId>,
    /// On 200, the `state` of the body (`GET /m/<id>`).
    pub state: Option<&'static str>,
    /// The record (shard, LSN, what) that must be durable when a 2xx reaches
    /// the AS.
    pub durable: Option<(usize, Lsn, &'static str)>,
    pub on_success: OnSuccess,
    pub step: usize,
}

impl Expect {
    pub fn new(ua: usize, what: String, statuses: &[u16], step: usize) -> Expect {
        Expect {
            ua,
            what,
            statuses: statuses.to_vec(),
            body: None,
            ttl: None,
            location: None,
            unstored_location: None,
            state: None,
            durable: None,
            on_success: OnSuccess::Nothing,
            step,
        }
    }
}

/// What a 2xx tells the model (the AS now relies on it).
pub enum OnSuccess {
    Nothing,
    /// The message (by serial) must survive any later crash until removed.
    Stored(u64),
    /// A not-newer SimplePush version was accepted: the channel's version
    /// must stay at least this (ua, channel, version).
    VersionCovered(usize, String, u64),
    /// The message (by serial) must never come back.
    Deleted(u64),
}

/// A TTL=0 message sent to a connected UA: it must reach that socket.
pub struct Transient {
    pub ua: usize,
    pub conn: herald_engine::ConnId,
    pub channel: String,
    /// `None`: a Web Push id the model cannot know before the answer (any
    /// id of an unstored message of this UA and channel).
    pub tok: Option<Tok>,
    pub seen: bool,
}

/// A shard's state as its records say, for the model's UAs: pending
/// messages, channels and wakeup, with the LSN of the records that matter
/// when a crash cuts the log.
#[derive(Default)]
pub struct LogView {
    pub uas: HashMap<Uaid, ViewUa>,
}

#[derive(Default)]
pub struct ViewUa {
    pub pending: BTreeMap<u64, StoredMessage>,
    pub channels: BTreeMap<ChannelId, ViewChannel>,
    pub wakeup: bool,
    /// seq → LSN of the record that removed the message (while the model
    /// may still ask: pruned once durable).
    pub removed: HashMap<u64, Lsn>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewChannel {
    pub version: Option<u64>,
    /// The record that brought the version to its value.
    pub version_lsn: Lsn,
    /// The newest `ChannelRegistered` of the channel.
    pub registered_lsn: Lsn,
}

impl LogView {
    /// The view of a log that a restart replayed: every record in it is
    /// durable, so their LSNs no longer matter (all 0).
    pub fn from_replay<'a>(records: impl IntoIterator<Item = &'a Record>) -> LogView {
        let mut view = LogView::default();
        for record in records {
            view.apply(0, record);
        }
        view.uas.values_mut().for_each(|ua| ua.removed.clear());
        view
    }

    /// What `Shard::apply` does with a record, as far as the model looks.
    pub fn apply(&mut self, lsn: Lsn, record: &Record) {
        let ua = self.uas.entry(record.uaid()).or_default();
        match record {
            Record::UaidCreated { .. } => {}
            Record::ChannelRegistered(registration) => {
                ua.channels
                    .entry(registration.channel)
                    .or_insert(ViewChannel {
                        version: None,
                        version_lsn: lsn,
                        registered_lsn: lsn,
                    })
                    .registered_lsn = lsn;
            }
            Record::ChannelUnregistered { channel, .. } => {
                ua.channels.remove(channel);
                let gone: Vec<u64> = ua
                    .pending
                    .iter()
                    .filter(|(_, message)| message.channel == *channel)
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in gone {
                    ua.pending.remove(&seq);
                    ua.removed.insert(seq, lsn);
                }
            }
            Record::MessageStored(message) => {
                if let MessageBody::Version(version) = message.body {
                    if let Some(channel) = ua.channels.get_mut(&message.channel) {
                        channel.raise(version, lsn);
                    }
                }
                // Replay collapses as the engine does (its removal record
                // may be the one a crash lost).
                ua.pending.retain(|_, older| !message.replaces(older));
                ua.pending.insert(message.seq, message.clone());
            }
            Record::MessageRemoved { seq, .. } => {
                ua.pending.remove(seq);
                ua.removed.insert(*seq, lsn);
            }
            Record::WakeupSet { wakeup, .. } => ua.wakeup = wakeup.is_some(),
            Record::ChannelVersion {
                channel, version, ..
            } => {
                if let Some(channel) = ua.channels.get_mut(channel) {
                    channel.raise(*version, lsn);
                }
            }
            Record::WebAppRegistered { .. } => {}
        }
    }

    pub fn ua(&self, uaid: &Uaid) -> Option<&ViewUa> {
        self.uas.get(uaid)
    }

    /// The seqs of `uaid`'s unexpired pending messages.
    /// A UA's channels in the log, with the newest version each holds (0: none).
    pub fn channel_versions(&self, uaid: &Uaid) -> Vec<(String, u64)> {
        self.ua(uaid)
            .map(|view| {
                view.channels
                    .iter()
                    .map(|(id, state)| (id.to_text(), state.version.unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn pending_seqs(&self, uaid: &Uaid, now: Millis) -> Vec<u64> {
        self.ua(uaid)
            .map(|ua| {
                ua.pending
                    .values()
                    .filter(|message| !message.is_expired(now))
                    .map(|message| message.seq)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl ViewChannel {
    fn raise(&mut self, version: u64, lsn: Lsn) {
        if Some(version) > self.version {
            self.version = Some(version);
            self.version_lsn = lsn;
        }
    }
}

/// What happened in a run; the checks assert that the interesting parts did.
#[derive(Default, Debug, Clone)]
pub struct Counters {
    pub hellos: u64,
    pub pushes: u64,
    pub deliveries: u64,
    pub acks: u64,
    pub dropped: u64,
    pub replaced: u64,
    pub expired: u64,
    /// Crashes (every one restarts every shard by replay).
    pub restarts: u64,
    /// Crashes that lost appended records that were not durable.
    pub crashes_losing_records: u64,
    pub records_lost: u64,
    pub compactions: u64,
    pub full_commits: u64,
    /// Group commits that covered only part of what was appended.
    pub partial_commits: u64,
    pub hand_offs: u64,
    /// AS requests accepted by a shard that does not own their UA.
    pub ring_routed: u64,
    /// Refused at once: the accepting shard waited for too many answers.
    pub refused: u64,
    /// AS answers that came in a later step than their request.
    pub late_answers: u64,
    /// AS requests a crash left without an answer.
    pub unanswered_at_crash: u64,
    /// Messages appended but not durable at a crash, that it kept / lost.
    pub uncertain_kept: u64,
    pub uncertain_lost: u64,
    /// Messages a UA received before their record was durable, then lost.
    pub delivered_then_lost: u64,
    /// Removed messages (acked, replaced, ...) a crash brought back.
    pub resurrected: u64,
    /// Older messages replay dropped because a newer kept one replaces them
    /// (their removal record was lost in the crash).
    pub collapsed_on_replay: u64,
    /// Register / unregister replies that waited for a commit.
    pub held_ua_replies: u64,
    /// WebSocket pongs queued before a hand-off that arrived.
    pub pongs_before_hand_off: u64,
    /// Notifications queued while their socket was held back (or on a
    /// replaced socket), naming what was pending then.
    pub late_frames: u64,
    /// Re-send counts not checked because the message shared its token.
    pub exemptions: u64,
    pub sleeps: u64,
    pub wakeups: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        let Counters {
            hellos,
            pushes,
            deliveries,
            acks,
            dropped,
            replaced,
            expired,
            restarts,
            crashes_losing_records,
            records_lost,
            compactions,
            full_commits,
            partial_commits,
            hand_offs,
            ring_routed,
            refused,
            late_answers,
            unanswered_at_crash,
            uncertain_kept,
            uncertain_lost,
            delivered_then_lost,
            resurrected,
            collapsed_on_replay,
            held_ua_replies,
            pongs_before_hand_off,
            late_frames,
            exemptions,
            sleeps,
            wakeups,
        } = other;
        self.hellos += hellos;
        self.pushes += pushes;
        self.deliveries += deliveries;
        self.acks += acks;
        self.dropped += dropped;
        self.replaced += replaced;
        self.expired += expired;
        self.restarts += restarts;
        self.crashes_losing_records += crashes_losing_records;
        self.records_lost += records_lost;
        self.compactions += compactions;
        self.full_commits += full_commits;
        self.partial_commits += partial_commits;
        self.hand_offs += hand_offs;
        self.ring_routed += ring_routed;
        self.refused += refused;
        self.late_answers += late_answers;
        self.unanswered_at_crash += unanswered_at_crash;
        self.uncertain_kept += uncertain_kept;
        self.uncertain_lost += uncertain_lost;
        self.delivered_then_lost += delivered_then_lost;
        self.resurrected += resurrected;
        self.collapsed_on_replay += collapsed_on_replay;
        self.held_ua_replies += held_ua_replies;
        self.pongs_before_hand_off += pongs_before_hand_off;
        self.late_frames += late_frames;
        self.exemptions += exemptions;
        self.sleeps += sleeps;
        self.wakeups += wakeups;
    }
}
