//! A seeded randomized simulation of many UAs and application servers against
//! the shard(s), checked step by step against a small reference model of the
//! spec (SPEC §3.1–3.4, §4.1–4.2, §5, §7).
//!
//! CI runs a fixed seed; explore with `HERALD_SIM_SEED=random`. Replay a
//! failure with `HERALD_SIM_SEED=<seed>` (printed at the start and in every
//! failure); run longer with `HERALD_SIM_STEPS=<n>`; show more of the
//! steps before a failure with `HERALD_SIM_TRACE=<n>` (default 40).
//!
//! The run: up to 24 UAs (Web Push or SimplePush sockets, some on a routed
//! mobile network for UDP wakeup) connect on random shards (hand-offs), hello
//! with or without their UAID and sometimes with `channelIDs`, register (also
//! again, also upper-case), unregister, ack some of what they got (by id or
//! number), ping, hang up, reconnect (sometimes taking over a live socket,
//! sometimes switching mode). Application servers PUT SimplePush versions
//! (some not newer) and desktop bodies and POST Web Push messages with random
//! TTL (0 included), Topic, Urgency, body and `Prefer: respond-async`, DELETE
//! and GET `/m/<id>`, push to unregistered endpoints. The fake clock jumps by
//! 1 ms to 90 s (retries, expiry, 4774 sleeps). Now and then every shard
//! crashes and is rebuilt from its log alone, sometimes after a compaction
//! (the log replaced by `Shard::snapshot`).
//!
//! Invariants checked after every step:
//! 1. Every notification a socket receives is, for that socket's UAID, a
//!    message the model holds as pending (accepted, unexpired, unacked, not
//!    replaced/deleted/dropped/unregistered) or a TTL=0 message sent live: so
//!    nothing acked is re-sent and nothing reaches another UAID's socket. Its
//!    form matches the socket (Web Push: id and data; SimplePush: numbers).
//! 2. A connected UA has received every pending message on its current socket
//!    (so a pending message is delivered on the next hello); after a hello
//!    they come right after the reply, `high` urgency first; an unacked one is
//!    re-sent within each retry interval.
//! 3. The records the shard appended (its WAL) hold exactly the model's
//!    pending set per UA (so replacement by version/Topic, drops at the limit
//!    and unregistration removed exactly what the spec says), and at most
//!    `pending_per_uaid_max` live ones.
//! 4. SimplePush versions delivered on a channel never go backwards.
//! 5. AS replies match the model (200/201/202/204/404/410, `Location`, `TTL`),
//!    register replies are idempotent (429 at the limit), hello keeps a known
//!    UAID and lands the socket on the UAID's shard.
//! 6. Sockets close only as the spec says (1000 when a newer socket takes the
//!    UAID, 4774 for an idle wakeup UA with nothing in flight), nothing is sent
//!    after a close, and an asleep wakeup UA gets a wakeup for each message of normal or high
//!    urgency (very-low and low wait for its next connection).
//! 7. A message is re-sent on a live socket about once per retry interval.
//!
//! At the end every shard is rebuilt from its log and every UA reconnects: it
//! must receive exactly its pending set and get its endpoints back.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use herald_engine::limits::Limits;
use herald_engine::message::{Removal, StoredMessage, Urgency};
use herald_engine::record::Record;
use herald_engine::shard::close;
use herald_engine::{ChannelId, ConnId, Millis, Uaid};
use herald_store::RecordLog;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const MAX_UAS: usize = 24;

const TRACE_LEN: usize = 40;

/// The seed CI runs with: fixed, so a CI failure never depends on the clock.
/// `HERALD_SIM_SEED=<u64>` replays a seed, `HERALD_SIM_SEED=random` explores.
const DEFAULT_SEED: u64 = 0x4845_5241_4c44_0001;

fn seed_from_env() -> u64 {
    match std::env::var("HERALD_SIM_SEED").as_deref() {
        Err(_) => DEFAULT_SEED,
        Ok("random") => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ (nanos >> 29)
        }
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("HERALD_SIM_SEED must be a u64 or `random`, got {text:?}")),
    }
}

fn steps_from_env(default: usize) -> usize {
    std::env::var("HERALD_SIM_STEPS")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(default)
}

fn sim_limits() -> Limits {
    Limits {
        channels_per_uaid_max: 4,
        pending_per_uaid_max: 4,
        pings_per_minute_max: 1_000,
        retry_interval_ms: 2_000,
        ..Limits::test_min()
    }
}

/// How a notification names a message on the wire.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Tok {
    /// A Web Push message id (Web Push socket, Web Push message).
    Id(String),
    /// A number: a SimplePush version, or an arrival time in ms.
    Num(u64),
    /// A `desktop-notification` entry on a SimplePush socket: (version, body).
    Desktop(u64, String),
}

impl Tok {
    fn number(&self) -> Option<u64> {
        match self {
            Tok::Id(_) => None,
            Tok::Num(n) | Tok::Desktop(n, _) => Some(*n),
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Version(u64),
    Desktop(String),
    WebPush { id: String, data: Vec<u8> },
}

#[derive(Clone, Debug)]
struct Msg {
    serial: u64,
    seq: u64,
    channel: String,
    arrived: Millis,
    /// 0: never.
    expires: Millis,
    urgency: Urgency,
    topic: Option<String>,
    kind: Kind,
    /// Received on the UA's current socket.
    seen: bool,
    /// Sends on the current socket: (first send time, count, last send time),
    /// times as of the end of the step that carried the frame.
    sends: (Millis, u32, Millis),
    /// Once sent while another pending message had the same token, its
    /// re-send count is no longer its own (the frames cannot be told apart).
    ambiguous: bool,
}

impl Msg {
    fn expired(&self, now: Millis) -> bool {
        self.expires != 0 && now >= self.expires
    }

    fn numeric(&self) -> u64 {
        match self.kind {
            Kind::Version(version) => version,
            _ => self.arrived,
        }
    }

    fn token(&self, web_push_socket: bool) -> Tok {
        match &self.kind {
            Kind::WebPush { id, .. } if web_push_socket => Tok::Id(id.clone()),
            Kind::Desktop(body) if !web_push_socket => Tok::Desktop(self.arrived, body.clone()),
            _ => Tok::Num(self.numeric()),
        }
    }
}

struct ModelChannel {
    endpoint: String,
    version: u64,
}

struct ModelUa {
    uaid: String,
    uaid_bytes: Uaid,
    mobile: bool,
    conn: Option<ConnId>,
    web_push: bool,
    channels: BTreeMap<String, ModelChannel>,
    /// Every endpoint ever issued per channel (issuing is deterministic).
    endpoints: BTreeMap<String, String>,
    pending: Vec<Msg>,
    acked_ids: Vec<String>,
    /// Acked before a compaction: the shard may have forgotten the outcome.
    forgotten_ids: Vec<String>,
    /// Web Push ids no longer pending for other reasons (and TTL=0 ones).
    gone_ids: Vec<(String, &'static str)>,
    /// Ids whose message expired (DELETE may still find it unpurged).
    expired_ids: BTreeSet<String>,
    last_version: BTreeMap<String, u64>,
}

/// Pending messages as the appended records say (the WAL's view).
#[derive(Default)]
struct LogView {
    pending: HashMap<Uaid, BTreeMap<u64, StoredMessage>>,
}

impl LogView {
    fn apply(&mut self, record: &Record) {
        match record {
            Record::MessageStored(message) => {
                self.pending
                    .entry(message.uaid)
                    .or_default()
                    .insert(message.seq, message.clone());
            }
            Record::MessageRemoved { uaid, seq, .. } => {
                if let Some(pending) = self.pending.get_mut(uaid) {
                    pending.remove(seq);
                }
            }
            Record::ChannelUnregistered { uaid, channel } => {
                if let Some(pending) = self.pending.get_mut(uaid) {
                    pending.retain(|_, message| message.channel != *channel);
                }
            }
            _ => {}
        }
    }
}

#[derive(Default, Debug)]
struct Counters {
    hellos: u64,
    pushes: u64,
    deliveries: u64,
    acks: u64,
    dropped: u64,
    replaced: u64,
    expired: u64,
    restarts: u64,
    compactions: u64,
    sleeps: u64,
    wakeups: u64,
    hand_offs: u64,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    h: Harness,
    uas: Vec<ModelUa>,
    /// conn → (UA index, Web Push mode).
    conns: HashMap<ConnId, (usize, bool)>,
    /// Closes the model expects (a newer socket took the UAID).
    expected_closes: HashMap<ConnId, u16>,
    /// TTL=0 (delivered-now-or-never) messages of this step: (UA, channel, token).
    transient: Vec<(usize, String, Tok, bool)>,
    view: LogView,
    /// Per shard, the LSN up to which the log view has seen records.
    log_cursor: Vec<u64>,
    wakeup_cursor: usize,
    step: usize,
    trace: VecDeque<String>,
    next_serial: u64,
    counters: Counters,
    /// Removals the shard logged for the UA of the current push.
    step_removals: Vec<(u64, Removal)>,
}

macro_rules! ensure {
    ($sim:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            $sim.fail(format!($($arg)+));
        }
    };
}

impl Sim {
    fn new(seed: u64, shards: usize) -> Sim {
        let h = Harness::build(shards, sim_limits(), &[ROUTED_NETWORK], seed);
        Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            h,
            uas: Vec::new(),
            conns: HashMap::new(),
            expected_closes: HashMap::new(),
            transient: Vec::new(),
            view: LogView::default(),
            log_cursor: vec![0; shards],
            wakeup_cursor: 0,
            step: 0,
            trace: VecDeque::new(),
            next_serial: 0,
            counters: Counters::default(),
            step_removals: Vec::new(),
        }
    }

    fn fail(&self, message: String) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!(
            "HERALD_SIM_SEED={} shards={} step {} (t=+{} ms): {message}\n\
             replay: HERALD_SIM_SEED={} cargo test -p herald-engine --test simulation\n\
             last steps:\n  {}",
            self.seed,
            self.h.shards.len(),
            self.step,
            self.h.now - START_MS,
            self.seed,
            trace.join("\n  ")
        );
    }

    fn note(&mut self, text: String) {
        let keep = std::env::var("HERALD_SIM_TRACE")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(TRACE_LEN);
        if self.trace.len() >= keep {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("#{} +{} {text}", self.step, self.h.now - START_MS));
    }

    fn limits(&self) -> &Limits {
        &self.h.limits
    }

    fn random_channel(&mut self) -> String {
        let value: u128 = self.rng.gen();
        let text = format!("{value:032x}");
        format!(
            "{}-{}-4{}-8{}-{}",
            &text[..8],
            &text[8..12],
            &text[13..16],
            &text[17..20],
            &text[20..32]
        )
    }

    fn live_uas(&self) -> Vec<usize> {
        (0..self.uas.len())
            .filter(|&i| self.uas[i].conn.is_some())
            .collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.gen_range(0..items.len())])
        }
    }

    // ---- the run -------------------------------------------------------

    fn run(&mut self, steps: usize) {
        for step in 0..steps {
            self.step = step;
            self.random_step();
            self.check();
        }
        self.step = steps;
        self.final_replay_check();
        eprintln!(
            "simulation seed={} shards={} steps={steps}: {:?}",
            self.seed,
            self.h.shards.len(),
            self.counters
        );
    }

    fn random_step(&mut self) {
        let live = self.live_uas();
        let roll = self.rng.gen_range(0..100u32);
        match roll {
            0..=6 if self.uas.len() < MAX_UAS => self.new_ua(),
            0..=15 => {
                if let Some(ua) = self.pick(&(0..self.uas.len()).collect::<Vec<_>>()) {
                    self.reconnect(ua);
                } else {
                    self.new_ua();
                }
            }
            16..=20 => {
                if let Some(ua) = self.pick(&live) {
                    self.disconnect(ua);
                }
            }
            21..=30 => {
                if let Some(ua) = self.pick(&live) {
                    self.register(ua);
                }
            }
            31..=33 => {
                if let Some(ua) = self.pick(&live) {
                    self.unregister(ua);
                }
            }
            34..=43 => {
                if let Some(ua) = self.pick(&live) {
                    self.ack(ua);
                }
            }
            44..=56 => self.put_version(),
            57..=74 => self.post(),
            75..=76 => self.put_desktop(),
            77..=78 => self.push_to_gone(),
            79..=93 => self.advance(),
            94..=95 => self.delete(),
            96..=97 => self.get_acked_state(),
            98 => {
                if let Some(ua) = self.pick(&live) {
                    self.ping(ua);
                }
            }
            _ => {
                if self.rng.gen_ratio(1, 4) {
                    if self.rng.gen_bool(0.5) {
                        self.compact();
                    }
                    self.restart();
                } else {
                    self.advance();
                }
            }
        }
    }

    // ---- UA actions ----------------------------------------------------

    fn hello_fields(&mut self, ua: Option<usize>, mobile: bool, web_push: bool) -> Value {
        let mut hello = json!({});
        if let Some(ua) = ua {
            hello["uaid"] = json!(self.uas[ua].uaid);
        }
        if web_push {
            hello["use_webpush"] = json!(true);
        }
        if mobile {
            let (mcc, mnc) = ROUTED_NETWORK.split_once('-').unwrap();
            hello["wakeup_hostport"] = json!({"ip": "10.0.0.7", "port": 4000 + ua.unwrap_or(0)});
            hello["mobilenetwork"] = json!({"mcc": mcc, "mnc": mnc, "netid": "sim"});
        }
        hello
    }

    fn new_ua(&mut self) {
        let web_push = self.rng.gen_bool(0.6);
        let mobile = self.rng.gen_bool(0.2);
        let shard = self.rng.gen_range(0..self.h.shards.len());
        let conn = self.h.open_on(shard);
        let hello = self.hello_fields(None, mobile, web_push);
        let reply = self.h.hello(conn, hello);
        let expected_status = if mobile { 201 } else { 200 };
        ensure!(
            self,
            reply["status"] == expected_status,
            "fresh hello reply {reply}"
        );
        let uaid = reply["uaid"].as_str().unwrap_or_default().to_owned();
        ensure!(
            self,
            self.h.keys.check_uaid(&uaid).is_some(),
            "fresh UAID {uaid:?} does not verify"
        );
        ensure!(
            self,
            self.uas.iter().all(|ua| ua.uaid != uaid),
            "fresh UAID {uaid} was already issued"
        );
        let index = self.uas.len();
        self.note(format!(
            "new ua{index} {uaid} web_push={web_push} mobile={mobile} conn{conn}"
        ));
        self.uas.push(ModelUa {
            uaid_bytes: uaid_of(&uaid),
            uaid,
            mobile,
            conn: Some(conn),
            web_push,
            channels: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            pending: Vec::new(),
            acked_ids: Vec::new(),
            forgotten_ids: Vec::new(),
            gone_ids: Vec::new(),
            expired_ids: BTreeSet::new(),
            last_version: BTreeMap::new(),
        });
        self.conns.insert(conn, (index, web_push));
        self.counters.hellos += 1;
        self.after_hello(index, conn);
    }

    fn reconnect(&mut self, ua: usize) {
        if let Some(old) = self.uas[ua].conn {
            if self.rng.gen_bool(0.5) {
                self.disconnect(ua);
            } else {
                // A newer socket takes over: the old one is closed with 1000.
                self.expected_closes.insert(old, close::NORMAL);
                self.uas[ua].conn = None;
            }
        }
        let web_push = if self.rng.gen_bool(0.8) {
            self.uas[ua].web_push
        } else {
            !self.uas[ua].web_push
        };
        let mobile = self.uas[ua].mobile;
        let mut hello = self.hello_fields(Some(ua), mobile, web_push);
        let mut sync = None;
        if self.rng.gen_bool(0.15) {
            let mut listed: Vec<String> = self.uas[ua].channels.keys().cloned().collect();
            if !listed.is_empty() && self.rng.gen_bool(0.4) {
                let at = self.rng.gen_range(0..listed.len());
                listed.remove(at);
            }
            // Stay within the channel limit (the limit on sync is a rules test).
            if listed.len() < self.limits().channels_per_uaid_max && self.rng.gen_bool(0.4) {
                let channel = self.random_channel();
                listed.push(channel);
            }
            let shown: Vec<String> = listed
                .iter()
                .map(|ch| {
                    if self.rng.gen_bool(0.2) {
                        ch.to_uppercase()
                    } else {
                        ch.clone()
                    }
                })
                .collect();
            hello["channelIDs"] = json!(shown);
            sync = Some(listed);
        }
        let shard = self.rng.gen_range(0..self.h.shards.len());
        let hand_offs = self.h.hand_offs;
        let conn = self.h.open_on(shard);
        self.note(format!(
            "reconnect ua{ua} conn{conn} on shard {shard} web_push={web_push} sync={sync:?}"
        ));
        let reply = self.h.hello(conn, hello);
        ensure!(
            self,
            reply["uaid"] == self.uas[ua].uaid,
            "known UAID not kept: {reply}"
        );
        let expected_status = if mobile { 201 } else { 200 };
        ensure!(
            self,
            reply["status"] == expected_status,
            "hello reply {reply}"
        );
        let owner = self.uas[ua].uaid_bytes.shard(self.h.shards.len());
        ensure!(
            self,
            self.h.socks[&conn].shard == owner,
            "socket ended on shard {} but ua{ua} belongs to shard {owner}",
            self.h.socks[&conn].shard
        );
        ensure!(
            self,
            (self.h.hand_offs > hand_offs) == (shard != owner),
            "hand-off iff accepted by another shard"
        );
        if shard != owner {
            self.counters.hand_offs += 1;
        }
        if let Some(listed) = sync {
            let listed: BTreeSet<String> = listed.into_iter().collect();
            let have: Vec<String> = self.uas[ua].channels.keys().cloned().collect();
            for channel in have.iter().filter(|ch| !listed.contains(*ch)) {
                self.model_unregister(ua, channel);
            }
            for channel in listed.iter().filter(|ch| !have.contains(*ch)) {
                let token = self.h.keys.endpoint_token(
                    &self.uas[ua].uaid_bytes,
                    &ChannelId::parse(channel).unwrap(),
                    None,
                );
                let endpoint = format!("{ORIGIN}/wpush/v1/{token}");
                self.model_register(ua, channel, endpoint);
            }
        }
        let model = &mut self.uas[ua];
        model.conn = Some(conn);
        model.web_push = web_push;
        for message in &mut model.pending {
            message.seen = false;
            message.sends = (0, 0, 0);
        }
        self.conns.insert(conn, (ua, web_push));
        self.counters.hellos += 1;
        self.after_hello(ua, conn);
    }

    /// Right after a hello: the pending messages follow the reply, high first.
    fn after_hello(&mut self, ua: usize, conn: ConnId) {
        let frames = self.h.take(conn);
        let mut urgencies = Vec::new();
        let mut assigned = BTreeSet::new();
        let web_push = self.uas[ua].web_push;
        for frame in &frames {
            for (channel, tok) in self.entries(conn, frame) {
                let candidates: Vec<&Msg> = self.uas[ua]
                    .pending
                    .iter()
                    .filter(|m| {
                        !assigned.contains(&m.serial)
                            && m.channel == channel
                            && m.token(web_push) == tok
                    })
                    .collect();
                // Same channel, same ms, same number: only an unambiguous
                // entry says something about the order.
                if let Some(best) = candidates.iter().max_by_key(|m| m.urgency) {
                    assigned.insert(best.serial);
                    if candidates.iter().all(|m| m.urgency == best.urgency) {
                        urgencies.push(best.urgency);
                    }
                }
            }
        }
        let first_normal = urgencies.iter().position(|u| *u != Urgency::High);
        if let Some(first_normal) = first_normal {
            ensure!(
                self,
                urgencies[first_normal..]
                    .iter()
                    .all(|u| *u != Urgency::High),
                "pending after hello not high-urgency first: {urgencies:?}"
            );
        }
        self.validate_frames(conn, frames);
    }

    fn disconnect(&mut self, ua: usize) {
        if let Some(conn) = self.uas[ua].conn.take() {
            self.note(format!("disconnect ua{ua} conn{conn}"));
            self.h.disconnect(conn);
        }
    }

    fn register(&mut self, ua: usize) {
        let conn = self.uas[ua].conn.unwrap();
        let existing: Vec<String> = self.uas[ua].channels.keys().cloned().collect();
        let previous: Vec<String> = self.uas[ua].endpoints.keys().cloned().collect();
        let channel = if !existing.is_empty() && self.rng.gen_bool(0.25) {
            existing[self.rng.gen_range(0..existing.len())].clone()
        } else if !previous.is_empty() && self.rng.gen_bool(0.15) {
            previous[self.rng.gen_range(0..previous.len())].clone()
        } else {
            self.random_channel()
        };
        let shown = if self.rng.gen_bool(0.2) {
            channel.to_uppercase()
        } else {
            channel.clone()
        };
        let reply = self.h.register_reply(conn, json!({"channelID": shown}));
        self.note(format!("register ua{ua} {channel} -> {}", reply["status"]));
        ensure!(
            self,
            reply["channelID"] == channel,
            "register reply {reply}"
        );
        let known = self.uas[ua].channels.contains_key(&channel);
        if !known && self.uas[ua].channels.len() >= self.limits().channels_per_uaid_max {
            ensure!(
                self,
                reply["status"] == 429,
                "register beyond the limit: {reply}"
            );
            return;
        }
        ensure!(self, reply["status"] == 200, "register: {reply}");
        let endpoint = reply["pushEndpoint"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(before) = self.uas[ua].endpoints.get(&channel) {
            ensure!(
                self,
                *before == endpoint,
                "register is not idempotent: {before} then {endpoint}"
            );
        }
        if !known {
            self.model_register(ua, &channel, endpoint);
        }
    }

    fn model_register(&mut self, ua: usize, channel: &str, endpoint: String) {
        let model = &mut self.uas[ua];
        model.endpoints.insert(channel.to_owned(), endpoint.clone());
        model.channels.insert(
            channel.to_owned(),
            ModelChannel {
                endpoint,
                version: 0,
            },
        );
    }

    fn unregister(&mut self, ua: usize) {
        let conn = self.uas[ua].conn.unwrap();
        let channels: Vec<String> = self.uas[ua].channels.keys().cloned().collect();
        let Some(channel) = self.pick_string(&channels) else {
            return;
        };
        self.h.send_json(
            conn,
            json!({"messageType": "unregister", "channelID": channel}),
        );
        let reply = self.h.take_reply(conn, "unregister");
        self.note(format!("unregister ua{ua} {channel}"));
        ensure!(self, reply["status"] == 200, "unregister: {reply}");
        self.model_unregister(ua, &channel);
    }

    fn pick_string(&mut self, items: &[String]) -> Option<String> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.gen_range(0..items.len())].clone())
        }
    }

    fn model_unregister(&mut self, ua: usize, channel: &str) {
        let model = &mut self.uas[ua];
        model.channels.remove(channel);
        // A re-registered channel is a new subscription: versions start over.
        model.last_version.remove(channel);
        let (gone, kept): (Vec<Msg>, Vec<Msg>) = model
            .pending
            .drain(..)
            .partition(|message| message.channel == channel);
        model.pending = kept;
        for message in gone {
            if let Kind::WebPush { id, .. } = message.kind {
                model.gone_ids.push((id, "unregistered"));
            }
        }
    }

    fn ack(&mut self, ua: usize) {
        let conn = self.uas[ua].conn.unwrap();
        let web_push = self.uas[ua].web_push;
        let seen: Vec<(String, Tok)> = self.uas[ua]
            .pending
            .iter()
            .filter(|m| m.seen)
            .map(|m| (m.channel.clone(), m.token(web_push)))
            .collect();
        let mut updates = Vec::new();
        let mut chosen = Vec::new();
        for (channel, tok) in seen {
            if self.rng.gen_bool(0.6) {
                let version = match (tok.number(), web_push) {
                    (None, _) => match &tok {
                        Tok::Id(id) => json!(id),
                        _ => unreachable!("only ids have no number"),
                    },
                    (Some(n), true) => json!(n.to_string()),
                    (Some(n), false) => json!(n),
                };
                updates.push(json!({"channelID": channel, "version": version, "code": 100}));
                chosen.push((channel, tok));
            }
        }
        if self.rng.gen_bool(0.1) {
            let channel = self.random_channel();
            updates.push(json!({"channelID": channel, "version": "junk"}));
        }
        self.note(format!("ack ua{ua} {chosen:?}"));
        self.h
            .send_json(conn, json!({"messageType": "ack", "updates": updates}));
        for (channel, tok) in chosen {
            let model = &mut self.uas[ua];
            let freed: Vec<usize> = model
                .pending
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    m.channel == channel
                        && match &tok {
                            Tok::Id(id) => {
                                matches!(&m.kind, Kind::WebPush { id: mine, .. } if mine == id)
                            }
                            // A Web Push socket saw Web Push messages by id:
                            // a number never frees those there.
                            Tok::Num(n) | Tok::Desktop(n, _) => {
                                m.numeric() <= *n
                                    && !(web_push && matches!(m.kind, Kind::WebPush { .. }))
                            }
                        }
                })
                .map(|(at, _)| at)
                .collect();
            for at in freed.into_iter().rev() {
                let message = model.pending.remove(at);
                self.counters.acks += 1;
                if let Kind::WebPush { id, .. } = message.kind {
                    model.acked_ids.push(id);
                }
            }
        }
    }

    fn ping(&mut self, ua: usize) {
        let conn = self.uas[ua].conn.unwrap();
        let text_form = self.rng.gen_bool(0.5);
        self.h.send(conn, if text_form { "PING" } else { "{}" });
        let frames = self.h.take(conn);
        let (pongs, rest): (Vec<Frame>, Vec<Frame>) = frames
            .into_iter()
            .partition(|frame| !frame.is_notification());
        let expected = if text_form {
            Frame::Text("PONG".into())
        } else {
            Frame::Json(json!({}))
        };
        ensure!(
            self,
            pongs == vec![expected.clone()],
            "ping answered {pongs:?}, expected {expected:?}"
        );
        self.validate_frames(conn, rest);
    }

    // ---- AS actions ----------------------------------------------------

    /// A random (UA, channel) with a live registration.
    fn pick_channel(&mut self) -> Option<(usize, String)> {
        let all: Vec<(usize, String)> = self
            .uas
            .iter()
            .enumerate()
            .flat_map(|(i, ua)| ua.channels.keys().map(move |ch| (i, ch.clone())))
            .collect();
        if all.is_empty() {
            None
        } else {
            Some(all[self.rng.gen_range(0..all.len())].clone())
        }
    }

    fn random_urgency(&mut self) -> Urgency {
        [
            Urgency::VeryLow,
            Urgency::Low,
            Urgency::Normal,
            Urgency::High,
        ][self.rng.gen_range(0..4)]
    }

    fn put_version(&mut self) {
        let Some((ua, channel)) = self.pick_channel() else {
            return;
        };
        let current = self.uas[ua].channels[&channel].version;
        let version = self
            .rng
            .gen_range(current.saturating_sub(3).max(1)..=current + 5);
        let endpoint = self.uas[ua].channels[&channel].endpoint.clone();
        let response = self.h.put_version(&endpoint, version);
        self.note(format!(
            "PUT ua{ua} {channel} version={version} (current {current}) -> {}",
            response.status
        ));
        ensure!(
            self,
            response.status == 200 && response.body == "{}",
            "PUT version: {response:?}"
        );
        self.counters.pushes += 1;
        let stored = self.take_stored(ua);
        if version <= current {
            ensure!(self, stored.is_none(), "a not-newer version was stored");
            self.after_push(ua, None);
            return;
        }
        let Some(seq) = stored else {
            self.fail(format!("version {version} > {current} was not stored"));
        };
        self.uas[ua].channels.get_mut(&channel).unwrap().version = version;
        let message = self.new_msg(
            ua,
            seq,
            &channel,
            0,
            Urgency::Normal,
            None,
            Kind::Version(version),
        );
        self.model_store(ua, message);
    }

    fn put_desktop(&mut self) {
        let Some((ua, channel)) = self.pick_channel() else {
            return;
        };
        let ttl: Option<u64> = if self.rng.gen_bool(0.7) {
            Some(self.rng.gen_range(1..60))
        } else {
            None
        };
        let text = format!("note {}", self.rng.gen_range(0..1000));
        let body = match ttl {
            Some(ttl) => format!("body={}&ttl={ttl}", text.replace(' ', "+")),
            None => format!("body={}", text.replace(' ', "+")),
        };
        let endpoint = self.uas[ua].channels[&channel].endpoint.clone();
        let response = self.h.request("PUT", &endpoint, &[], body.as_bytes());
        self.note(format!(
            "PUT desktop ua{ua} {channel} ttl={ttl:?} -> {}",
            response.status
        ));
        ensure!(self, response.status == 200, "PUT desktop: {response:?}");
        self.counters.pushes += 1;
        let Some(seq) = self.take_stored(ua) else {
            self.fail("desktop notification not stored".into());
        };
        let expires = ttl.map_or(0, |ttl| self.h.now + ttl * 1000);
        let message = self.new_msg(
            ua,
            seq,
            &channel,
            expires,
            Urgency::Normal,
            None,
            Kind::Desktop(text),
        );
        self.model_store(ua, message);
    }

    fn post(&mut self) {
        let Some((ua, channel)) = self.pick_channel() else {
            return;
        };
        let ttl: u64 = match self.rng.gen_range(0..10) {
            0 => 0,
            1..=5 => self.rng.gen_range(1..30),
            6..=8 => 600,
            _ => 3600,
        };
        let topic = match self.rng.gen_range(0..6) {
            0 => Some("alpha"),
            1 => Some("beta"),
            _ => None,
        };
        let urgency = self.random_urgency();
        let data: Vec<u8> = if self.rng.gen_bool(0.5) {
            let len = self.rng.gen_range(1..40);
            (0..len).map(|_| self.rng.gen()).collect()
        } else {
            Vec::new()
        };
        let respond_async = self.rng.gen_bool(0.1);
        let ttl_text = ttl.to_string();
        let mut headers = vec![("TTL", ttl_text.as_str()), ("Urgency", urgency.as_str())];
        if let Some(topic) = topic {
            headers.push(("Topic", topic));
        }
        if !data.is_empty() {
            headers.push(("Content-Encoding", "aes128gcm"));
        }
        if respond_async {
            headers.push(("Prefer", "respond-async"));
        }
        let endpoint = self.uas[ua].channels[&channel].endpoint.clone();
        let response = self.h.request("POST", &endpoint, &headers, &data);
        self.note(format!(
            "POST ua{ua} {channel} ttl={ttl} topic={topic:?} {urgency:?} data={} -> {}",
            data.len(),
            response.status
        ));
        let expected = if respond_async { 202 } else { 201 };
        ensure!(self, response.status == expected, "POST: {response:?}");
        ensure!(
            self,
            header(&response, "TTL") == Some(ttl_text.as_str()),
            "TTL header: {response:?}"
        );
        self.counters.pushes += 1;
        let id = location_id(&response);
        let claims = self.h.keys.open_message_id(&id);
        ensure!(
            self,
            claims.is_some_and(|c| c.uaid == self.uas[ua].uaid_bytes
                && c.channel == ChannelId::parse(&channel).unwrap()),
            "Location names another message: {id}"
        );
        let seq = claims.unwrap().seq;
        let stored = self.take_stored(ua);
        if ttl == 0 {
            ensure!(self, stored.is_none(), "a TTL=0 message was stored");
            self.uas[ua].gone_ids.push((id.clone(), "ttl=0"));
            if let Some(conn) = self.uas[ua].conn {
                let web_push = self.uas[ua].web_push;
                let tok = if web_push {
                    Tok::Id(id)
                } else {
                    Tok::Num(self.h.now)
                };
                self.transient.push((ua, channel, tok, false));
                let _ = conn;
            }
            self.after_push(ua, None);
            return;
        }
        ensure!(
            self,
            stored == Some(seq),
            "stored seq {stored:?} but Location says {seq}"
        );
        let expires = self.h.now + ttl * 1000;
        let message = self.new_msg(
            ua,
            seq,
            &channel,
            expires,
            urgency,
            topic.map(str::to_owned),
            Kind::WebPush { id, data },
        );
        self.model_store(ua, message);
    }

    fn push_to_gone(&mut self) {
        let candidates: Vec<String> = self
            .uas
            .iter()
            .flat_map(|ua| {
                ua.endpoints
                    .iter()
                    .filter(|(ch, _)| !ua.channels.contains_key(*ch))
                    .map(|(_, endpoint)| endpoint.clone())
            })
            .collect();
        let Some(endpoint) = self.pick_string(&candidates) else {
            return;
        };
        let response = if self.rng.gen_bool(0.5) {
            self.h.post(&endpoint, 60)
        } else {
            self.h.put_version(&endpoint, 1)
        };
        self.note(format!(
            "push to unregistered endpoint -> {}",
            response.status
        ));
        ensure!(
            self,
            response.status == 410,
            "unregistered endpoint answered {response:?}"
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn new_msg(
        &mut self,
        ua: usize,
        seq: u64,
        channel: &str,
        expires: Millis,
        urgency: Urgency,
        topic: Option<String>,
        kind: Kind,
    ) -> Msg {
        let _ = ua;
        self.next_serial += 1;
        Msg {
            serial: self.next_serial,
            seq,
            channel: channel.to_owned(),
            arrived: self.h.now,
            expires,
            urgency,
            topic,
            kind,
            seen: false,
            sends: (0, 0, 0),
            ambiguous: false,
        }
    }

    /// SPEC §4.1/§4.2/§7: replace older versions / same topic, then make room
    /// by dropping the oldest message of the lowest urgency among live ones.
    /// The removals the shard logged for this push must be exactly these
    /// (it may also drop expired messages it had not purged yet).
    fn model_store(&mut self, ua: usize, message: Msg) {
        let max = self.limits().pending_per_uaid_max;
        let logged = std::mem::take(&mut self.step_removals);
        let model = &mut self.uas[ua];
        let mut replaced = Vec::new();
        model.pending.retain(|old| {
            let replace = old.channel == message.channel
                && match (&old.kind, &message.kind) {
                    (Kind::Version(_), Kind::Version(_)) => true,
                    _ => message.topic.is_some() && old.topic == message.topic,
                };
            if replace {
                replaced.push(old.clone());
            }
            !replace
        });
        let mut dropped = Vec::new();
        if model.pending.len() >= max {
            let victim = model
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, m)| (m.urgency, m.seq))
                .map(|(at, _)| at)
                .unwrap();
            dropped.push(model.pending.remove(victim));
        }
        // Compare with what the shard logged, for messages the model holds live.
        let live_seq = |seq: &u64| {
            replaced.iter().chain(&dropped).any(|m| m.seq == *seq)
                || model.pending.iter().any(|m| m.seq == *seq)
        };
        let mut logged_replaced: Vec<u64> = logged
            .iter()
            .filter(|(seq, reason)| *reason == Removal::Replaced && live_seq(seq))
            .map(|(seq, _)| *seq)
            .collect();
        let mut logged_dropped: Vec<u64> = logged
            .iter()
            .filter(|(seq, reason)| *reason == Removal::Dropped && live_seq(seq))
            .map(|(seq, _)| *seq)
            .collect();
        logged_replaced.sort_unstable();
        logged_dropped.sort_unstable();
        let mut want_replaced: Vec<u64> = replaced.iter().map(|m| m.seq).collect();
        want_replaced.sort_unstable();
        let want_dropped: Vec<u64> = dropped.iter().map(|m| m.seq).collect();
        let detail = format!(
            "ua{ua}: the shard replaced {logged_replaced:?} and dropped {logged_dropped:?}, \
             the spec wants replaced {want_replaced:?} and dropped {want_dropped:?}"
        );
        if logged_replaced != want_replaced {
            self.fail(detail);
        }
        if logged_dropped != want_dropped {
            self.fail(detail);
        }
        let model = &mut self.uas[ua];
        self.counters.replaced += replaced.len() as u64;
        self.counters.dropped += dropped.len() as u64;
        for (old, why) in replaced
            .into_iter()
            .map(|m| (m, "replaced"))
            .chain(dropped.into_iter().map(|m| (m, "dropped")))
        {
            if let Kind::WebPush { id, .. } = old.kind {
                model.gone_ids.push((id, why));
            }
        }
        let urgency = message.urgency;
        model.pending.push(message);
        self.after_push(ua, Some(urgency));
    }

    /// A push was stored (with this urgency) or not: an asleep wakeup UA gets
    /// exactly one wakeup for a stored message of normal or high urgency;
    /// very-low and low ones wait for its next connection.
    fn after_push(&mut self, ua: usize, stored: Option<Urgency>) {
        let calls: Vec<WakeupCall> = self.h.wakeups[self.wakeup_cursor..].to_vec();
        self.wakeup_cursor = self.h.wakeups.len();
        let model = &self.uas[ua];
        let asleep = model.mobile && model.conn.is_none();
        if stored.is_some_and(|urgency| urgency >= Urgency::Normal) && asleep {
            ensure!(
                self,
                calls.len() == 1 && calls[0].uaid == model.uaid_bytes,
                "asleep ua{ua} needed one wakeup, got {calls:?}"
            );
            self.counters.wakeups += 1;
        } else {
            ensure!(self, calls.is_empty(), "unexpected wakeups {calls:?}");
        }
    }

    fn delete(&mut self) {
        let candidates: Vec<(usize, String)> = self
            .uas
            .iter()
            .enumerate()
            .flat_map(|(i, ua)| {
                ua.pending
                    .iter()
                    .filter_map(|m| match &m.kind {
                        Kind::WebPush { id, .. } => Some(id.clone()),
                        _ => None,
                    })
                    .chain(ua.gone_ids.iter().map(|(id, _)| id.clone()))
                    .chain(ua.acked_ids.iter().cloned())
                    .map(move |id| (i, id))
                    .collect::<Vec<_>>()
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (ua, id) = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let response = self
            .h
            .request("DELETE", &format!("{ORIGIN}/m/{id}"), &[], b"");
        self.note(format!("DELETE ua{ua} {id} -> {}", response.status));
        let at = self.uas[ua]
            .pending
            .iter()
            .position(|m| matches!(&m.kind, Kind::WebPush { id: mine, .. } if *mine == id));
        match at {
            Some(at) => {
                ensure!(self, response.status == 204, "DELETE pending: {response:?}");
                self.uas[ua].pending.remove(at);
                self.uas[ua].gone_ids.push((id, "deleted"));
            }
            None if self.uas[ua].expired_ids.contains(&id) => ensure!(
                self,
                response.status == 404 || response.status == 204,
                "DELETE expired: {response:?}"
            ),
            None => {
                let why: Vec<&str> = self.uas[ua]
                    .gone_ids
                    .iter()
                    .filter(|(gone, _)| *gone == id)
                    .map(|(_, why)| *why)
                    .chain(
                        self.uas[ua]
                            .acked_ids
                            .iter()
                            .filter(|a| **a == id)
                            .map(|_| "acked"),
                    )
                    .collect();
                if response.status != 404 {
                    let history = self.history_of(&id);
                    self.fail(format!(
                        "DELETE of a message gone ({why:?}) answered {response:?}; \
                         its records: {history:#?}"
                    ));
                }
            }
        }
    }

    fn get_acked_state(&mut self) {
        let candidates: Vec<(String, bool)> = self
            .uas
            .iter()
            .flat_map(|ua| {
                ua.acked_ids
                    .iter()
                    .map(|id| (id.clone(), false))
                    .chain(ua.forgotten_ids.iter().map(|id| (id.clone(), true)))
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (id, forgotten) = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let response = self.h.request("GET", &format!("/m/{id}"), &[], b"");
        let acked = response.status == 200 && body_json(&response)["state"] == "acked";
        ensure!(
            self,
            acked || (forgotten && response.status == 404),
            "GET /m of an acked message: {response:?}"
        );
    }

    // ---- time and crashes ----------------------------------------------

    fn advance(&mut self) {
        let ms = match self.rng.gen_range(0..10) {
            0..=3 => self.rng.gen_range(1..200),
            4..=7 => self.rng.gen_range(200..4_000),
            8 => self.rng.gen_range(4_000..15_000),
            _ => self.rng.gen_range(15_000..90_000),
        };
        self.note(format!("advance {ms} ms"));
        self.h.advance(ms);
    }

    /// WAL compaction: each shard's log becomes its `snapshot` (the restart
    /// that follows replays only that).
    fn compact(&mut self) {
        self.note("compaction: logs replaced by snapshots".into());
        self.view = LogView::default();
        for shard in 0..self.h.shards.len() {
            self.h.compact(shard);
            for record in &self.h.log(shard) {
                self.view.apply(record);
            }
            self.log_cursor[shard] = self.h.logs[shard].last_lsn();
        }
        for ua in &mut self.uas {
            let acked = std::mem::take(&mut ua.acked_ids);
            ua.forgotten_ids.extend(acked);
        }
        self.counters.compactions += 1;
    }

    fn restart(&mut self) {
        // A restart takes time: the clock moves on before the shards serve
        // again (same-ms restarts reuse TTL=0 message ids: a rules test).
        let down_ms = self.rng.gen_range(1..3_000);
        self.note(format!(
            "crash and restart: shards rebuilt from their logs, down {down_ms} ms"
        ));
        self.h.restart();
        self.h.advance(down_ms);
        for ua in &mut self.uas {
            ua.conn = None;
        }
        self.counters.restarts += 1;
    }

    // ---- checks --------------------------------------------------------

    /// Takes the records appended since the last call into the log view;
    /// returns the seq of the message stored for `ua` among them, if any.
    fn take_stored(&mut self, ua: usize) -> Option<u64> {
        let uaid = self.uas[ua].uaid_bytes;
        let mut seqs = Vec::new();
        self.step_removals.clear();
        for shard in 0..self.h.shards.len() {
            for record in &self.h.logs[shard].records_after(self.log_cursor[shard]) {
                match record {
                    Record::MessageStored(message) => seqs.push((message.uaid, message.seq)),
                    Record::MessageRemoved {
                        uaid: owner,
                        seq,
                        reason,
                        ..
                    } if *owner == uaid => self.step_removals.push((*seq, *reason)),
                    _ => {}
                }
                self.view.apply(record);
            }
            self.log_cursor[shard] = self.h.logs[shard].last_lsn();
        }
        ensure!(
            self,
            seqs.len() <= 1,
            "one push stored {} messages: {seqs:?}",
            seqs.len()
        );
        let (owner, seq) = *seqs.first()?;
        ensure!(
            self,
            owner == uaid,
            "a push to ua{ua} stored a message for another UAID"
        );
        Some(seq)
    }

    /// The records (shard, LSN, record) that name the message `id`.
    fn history_of(&self, id: &str) -> Vec<String> {
        let Some(claims) = self.h.keys.open_message_id(id) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for shard in 0..self.h.shards.len() {
            for (at, record) in self.h.log(shard).iter().enumerate() {
                let about = match record {
                    Record::MessageStored(m) => m.uaid == claims.uaid && m.seq == claims.seq,
                    Record::MessageRemoved { uaid, seq, .. } => {
                        *uaid == claims.uaid && *seq == claims.seq
                    }
                    Record::ChannelUnregistered { uaid, channel } => {
                        *uaid == claims.uaid && *channel == claims.channel
                    }
                    Record::ChannelRegistered(r) => {
                        r.uaid == claims.uaid && r.channel == claims.channel
                    }
                    _ => false,
                };
                if about {
                    found.push(format!("shard {shard} lsn {}: {record:?}", at + 1));
                }
            }
        }
        found
    }

    fn sync_log(&mut self) {
        for shard in 0..self.h.shards.len() {
            for record in &self.h.logs[shard].records_after(self.log_cursor[shard]) {
                self.view.apply(record);
            }
            self.log_cursor[shard] = self.h.logs[shard].last_lsn();
        }
    }

    /// The (channel, token) entries of a notification frame on `conn`,
    /// checking the frame's form matches the socket's mode.
    fn entries(&self, conn: ConnId, frame: &Frame) -> Vec<(String, Tok)> {
        let (_, web_push) = self.conns[&conn];
        let Frame::Json(value) = frame else {
            self.fail(format!("unexpected text frame {frame:?} on conn{conn}"));
        };
        match (value["messageType"].as_str(), web_push) {
            (Some("notification"), true) => {
                let channel = value["channelID"].as_str().unwrap_or_default().to_owned();
                let version = value["version"].as_str().unwrap_or_default();
                let tok = if self.h.keys.open_message_id(version).is_some() {
                    Tok::Id(version.to_owned())
                } else if let Ok(number) = version.parse() {
                    Tok::Num(number)
                } else {
                    self.fail(format!("bad version in {value}"));
                };
                vec![(channel, tok)]
            }
            (Some(kind @ ("notification" | "desktop-notification")), false) => value["updates"]
                .as_array()
                .unwrap_or_else(|| {
                    self.fail(format!("no updates in {value} on a SimplePush socket"))
                })
                .iter()
                .map(|update| {
                    let channel = update["channelID"].as_str().unwrap_or_default().to_owned();
                    let number = update["version"]
                        .as_u64()
                        .unwrap_or_else(|| self.fail(format!("non-numeric version in {value}")));
                    if kind == "desktop-notification" {
                        let body = update["body"].as_str().unwrap_or_default().to_owned();
                        (channel, Tok::Desktop(number, body))
                    } else {
                        (channel, Tok::Num(number))
                    }
                })
                .collect(),
            _ => self.fail(format!(
                "unexpected frame {value} on conn{conn} (web_push={web_push})"
            )),
        }
    }

    /// Invariant 1, 4 and 7 for frames that arrived on `conn`.
    fn validate_frames(&mut self, conn: ConnId, frames: Vec<Frame>) {
        let Some(&(ua, web_push)) = self.conns.get(&conn) else {
            self.fail(format!(
                "frames on a conn the model never opened: {frames:?}"
            ));
        };
        let now = self.h.now;
        let retry = self.limits().retry_interval_ms;
        for frame in frames {
            // A frame carries each message at most once.
            let mut in_frame = BTreeSet::new();
            for (channel, tok) in self.entries(conn, &frame) {
                self.counters.deliveries += 1;
                if let Some(transient) = self
                    .transient
                    .iter_mut()
                    .find(|(u, ch, t, _)| *u == ua && *ch == channel && *t == tok)
                {
                    transient.3 = true;
                    continue;
                }
                let model = &mut self.uas[ua];
                // Messages that share a token are told apart on the wire by
                // no one: their re-send counts are only known as a group.
                let shared_token = model
                    .pending
                    .iter()
                    .filter(|m| m.channel == channel && m.token(web_push) == tok)
                    .count()
                    > 1;
                // Several messages can share a numeric token (same channel, same
                // ms): one not yet in this frame, preferably one still live at
                // the end of the step (an expiring one may have missed the
                // last retry), the least sent.
                let found = model
                    .pending
                    .iter_mut()
                    .filter(|m| {
                        m.channel == channel
                            && m.token(web_push) == tok
                            && !in_frame.contains(&m.serial)
                    })
                    .min_by_key(|m| (m.expired(now), m.seen, m.sends.1));
                let Some(message) = found else {
                    let acked = matches!(&tok, Tok::Id(id) if model.acked_ids.contains(id));
                    let foreign = self
                        .uas
                        .iter()
                        .enumerate()
                        .find(|(i, other)| *i != ua && other.channels.contains_key(&channel));
                    let what = if acked {
                        "an acked message was re-sent".to_owned()
                    } else if let Some((other, _)) = foreign {
                        format!("a message of ua{other} reached ua{ua}'s socket")
                    } else {
                        "a message that is not pending was delivered".to_owned()
                    };
                    self.fail(format!(
                        "{what}: conn{conn} ua{ua} {channel} {tok:?} in {frame:?}"
                    ));
                };
                if let (Frame::Json(value), Kind::WebPush { data, .. }, true) =
                    (&frame, &message.kind, web_push)
                {
                    let expected = if data.is_empty() {
                        Value::Null
                    } else {
                        json!(b64(data))
                    };
                    if value["data"] != expected {
                        let detail = format!("data {} != {expected}", value["data"]);
                        self.fail(detail);
                    }
                }
                in_frame.insert(message.serial);
                message.seen = true;
                message.sends.2 = now;
                if message.sends.1 == 0 {
                    message.sends = (now, 1, now);
                } else {
                    message.sends.1 += 1;
                }
                let (first, count, _) = message.sends;
                let allowed = 2 + (now - first) / retry;
                let version = match message.kind {
                    Kind::Version(version) => Some(version),
                    _ => None,
                };
                let serial = message.serial;
                message.ambiguous |= shared_token;
                if count as u64 > allowed && !message.ambiguous {
                    self.fail(format!(
                        "message {serial} re-sent {count} times in {} ms on conn{conn} (retry interval {retry} ms)",
                        now - first
                    ));
                }
                if let Some(version) = version {
                    let last = self.uas[ua]
                        .last_version
                        .entry(channel.clone())
                        .or_insert(0);
                    if version < *last {
                        let detail = format!(
                            "SimplePush version went backwards on {channel}: {last} then {version}"
                        );
                        self.fail(detail);
                    }
                    *last = version;
                }
            }
        }
    }

    fn check(&mut self) {
        let now = self.h.now;
        // Frames that arrived during the step.
        let conns: Vec<ConnId> = self
            .h
            .socks
            .iter()
            .filter(|(_, sock)| sock.cursor < sock.frames.len())
            .map(|(conn, _)| *conn)
            .collect();
        for conn in conns {
            let frames = self.h.take(conn);
            self.validate_frames(conn, frames);
        }
        let unsent: Vec<_> = self
            .transient
            .iter()
            .filter(|(_, _, _, seen)| !seen)
            .cloned()
            .collect();
        ensure!(
            self,
            unsent.is_empty(),
            "TTL=0 message to a connected UA not sent: {unsent:?}"
        );
        self.transient.clear();

        // Invariant 6: closes.
        ensure!(
            self,
            self.h.sent_after_close() == 0,
            "the engine addressed frames to a socket after its close"
        );
        let mut closed_now = Vec::new();
        for (&conn, sock) in &self.h.socks {
            if let Some(code) = sock.closed {
                closed_now.push((conn, code));
            }
        }
        for (conn, code) in closed_now {
            let Some(&(ua, _)) = self.conns.get(&conn) else {
                continue;
            };
            if let Some(expected) = self.expected_closes.remove(&conn) {
                ensure!(
                    self,
                    code == expected,
                    "conn{conn} closed {code}, expected {expected}"
                );
                self.conns.remove(&conn);
                continue;
            }
            if self.uas[ua].conn != Some(conn) {
                // Already gone in the model (the UA hung up); the engine's close came after.
                if code == close::SLEEP || code == close::NORMAL {
                    self.conns.remove(&conn);
                    continue;
                }
            }
            let live: Vec<_> = self.uas[ua]
                .pending
                .iter()
                .filter(|m| !m.expired(now))
                .map(|m| m.serial)
                .collect();
            ensure!(
                self,
                code == close::SLEEP && self.uas[ua].mobile && live.is_empty(),
                "conn{conn} of ua{ua} closed with {code} (mobile={}, pending {live:?})",
                self.uas[ua].mobile
            );
            self.note(format!("ua{ua} conn{conn} put to sleep (4774)"));
            self.counters.sleeps += 1;
            self.uas[ua].conn = None;
            self.conns.remove(&conn);
        }
        // A takeover close the model expected must have happened by now.
        let overdue: Vec<ConnId> = self.expected_closes.keys().copied().collect();
        for conn in overdue {
            let sock = &self.h.socks[&conn];
            if sock.gone {
                self.expected_closes.remove(&conn);
                self.conns.remove(&conn);
                continue;
            }
            self.fail(format!("conn{conn} should have been closed with 1000"));
        }

        // Expiry: the model forgets expired messages.
        for ua in 0..self.uas.len() {
            let model = &mut self.uas[ua];
            let (expired, live): (Vec<Msg>, Vec<Msg>) =
                model.pending.drain(..).partition(|m| m.expired(now));
            model.pending = live;
            for message in expired {
                self.counters.expired += 1;
                if let Kind::WebPush { id, .. } = message.kind {
                    model.expired_ids.insert(id);
                }
            }
        }

        // Invariant 2: a connected UA has everything pending on its socket,
        // and got each unacked one again within the last retry interval.
        let retry = self.limits().retry_interval_ms;
        for (index, ua) in self.uas.iter().enumerate() {
            if let Some(conn) = ua.conn {
                let stale: Vec<_> = ua
                    .pending
                    .iter()
                    .filter(|m| m.seen && now - m.sends.2 > retry)
                    .map(|m| (m.serial, now - m.sends.2, m.sends.0 - START_MS, m.sends.1))
                    .collect();
                ensure!(
                    self,
                    stale.is_empty(),
                    "ua{index} (conn{conn}): unacked messages not re-sent for \
                     (serial, ms since, first sent at +ms, sends) {stale:?}"
                );
                let missing: Vec<_> = ua
                    .pending
                    .iter()
                    .filter(|m| !m.seen)
                    .map(|m| (m.serial, m.channel.clone(), m.token(ua.web_push)))
                    .collect();
                ensure!(
                    self,
                    missing.is_empty(),
                    "connected ua{index} (conn{conn}) never received {missing:?}"
                );
            }
        }

        // Invariant 3: the log holds exactly the model's pending set.
        self.sync_log();
        for (index, ua) in self.uas.iter().enumerate() {
            let logged: Vec<u64> = self
                .view
                .pending
                .get(&ua.uaid_bytes)
                .map(|pending| {
                    pending
                        .values()
                        .filter(|m| !m.is_expired(now))
                        .map(|m| m.seq)
                        .collect()
                })
                .unwrap_or_default();
            let mut modelled: Vec<u64> = ua.pending.iter().map(|m| m.seq).collect();
            modelled.sort_unstable();
            ensure!(
                self,
                logged == modelled,
                "ua{index}: the log holds pending seqs {logged:?}, the model {modelled:?}"
            );
            ensure!(
                self,
                logged.len() <= self.limits().pending_per_uaid_max,
                "ua{index} holds {} pending",
                logged.len()
            );
        }
    }

    /// Every UA reconnects to shards rebuilt from the log alone and must get
    /// exactly its pending set.
    fn final_replay_check(&mut self) {
        self.restart();
        self.check();
        for ua in 0..self.uas.len() {
            let web_push = self.uas[ua].web_push;
            let mobile = self.uas[ua].mobile;
            let hello = self.hello_fields(Some(ua), mobile, web_push);
            let conn = self.h.open();
            let reply = self.h.hello(conn, hello);
            ensure!(
                self,
                reply["uaid"] == self.uas[ua].uaid,
                "replayed hello {reply}"
            );
            self.uas[ua].conn = Some(conn);
            for message in &mut self.uas[ua].pending {
                message.seen = false;
                message.sends = (0, 0, 0);
            }
            self.conns.insert(conn, (ua, web_push));
            self.after_hello(ua, conn);
            let missing: Vec<u64> = self.uas[ua]
                .pending
                .iter()
                .filter(|m| !m.seen)
                .map(|m| m.serial)
                .collect();
            ensure!(
                self,
                missing.is_empty(),
                "after replay ua{ua} did not get {missing:?}"
            );
            for (channel, state) in &self.uas[ua].channels {
                let endpoint = state.endpoint.clone();
                let reply = self.h.register_reply(conn, json!({"channelID": channel}));
                ensure!(
                    self,
                    reply["pushEndpoint"] == json!(endpoint),
                    "after replay {channel} answers {reply}, was {endpoint}"
                );
            }
        }
        self.check();
    }
}

fn simulate(shards: usize, default_steps: usize) {
    let seed = seed_from_env();
    let steps = steps_from_env(default_steps);
    eprintln!("simulation: HERALD_SIM_SEED={seed} shards={shards} steps={steps}");
    let mut sim = Sim::new(seed, shards);
    sim.run(steps);
}

#[test]
fn simulation_one_shard() {
    simulate(1, 3_000);
}

#[test]
fn simulation_three_shards() {
    simulate(3, 3_000);
}
