//! A small driver for the sans-IO shard: fixed test keys, a fake clock, one
//! or more `Shard`s wired together the way `net/` wires them (hand-offs and AS
//! requests routed by `uaid.shard(n)`), and per-connection outboxes of parsed
//! frames. Every `Action::Append` is treated as durable at once and kept in a
//! per-shard log so tests can replay it into a fresh shard.
#![allow(dead_code)]

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_engine::identity::{KeyMaterial, Keys};
use herald_engine::limits::Limits;
use herald_engine::message::{Urgency, WakeupInfo};
use herald_engine::push::{self, DecodeContext, HttpRequest, HttpResponse, PushRequest};
use herald_engine::record::Record;
use herald_engine::shard::{Action, Shard, ShardConfig};
use herald_engine::{ConnId, Millis, RequestId, Uaid};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

/// The origin endpoints are issued under (and the VAPID audience).
pub const ORIGIN: &str = "http://push.test:8081";
/// The fake clock starts here (Unix ms, late 2023), so arrival times are
/// obviously different from small SimplePush versions.
pub const START_MS: Millis = 1_700_000_000_000;
/// A mobile network with a wakeup route in [`Harness::with_wakeup`].
pub const ROUTED_NETWORK: &str = "214-07";

/// Test keys from fixed bytes (never used outside tests).
pub fn key_material() -> KeyMaterial {
    KeyMaterial {
        uaid_keys: vec![[0x11; 16]],
        token_keys: vec![[0x22; 32]],
    }
}

pub fn keys() -> Keys {
    Keys::new(&key_material())
}

/// A channel id (lower-case hyphenated UUID) made from a number.
pub fn chan(n: u64) -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        n >> 16,
        n & 0xffff_ffff_ffff
    )
}

/// What a UA socket received.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Json(Value),
    /// A frame that is not JSON (`PONG`).
    Text(String),
}

impl Frame {
    pub fn json(&self) -> &Value {
        match self {
            Frame::Json(value) => value,
            Frame::Text(text) => panic!("expected a JSON frame, got text {text:?}"),
        }
    }

    pub fn message_type(&self) -> Option<&str> {
        match self {
            Frame::Json(value) => value["messageType"].as_str(),
            Frame::Text(_) => None,
        }
    }

    pub fn is_notification(&self) -> bool {
        matches!(
            self.message_type(),
            Some("notification") | Some("desktop-notification")
        )
    }
}

#[derive(Clone, Debug, Default)]
pub struct Sock {
    /// The shard that holds the socket now (it moves on hand-off).
    pub shard: usize,
    pub frames: Vec<Frame>,
    /// How many of `frames` `take` has already handed out.
    pub cursor: usize,
    /// The close code the engine asked for.
    pub closed: Option<u16>,
    /// The UA hung up (or the server crashed under it).
    pub gone: bool,
    /// Frames the engine queued after it closed the socket (must stay 0).
    pub sent_after_close: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeupCall {
    pub at_ms: Millis,
    pub uaid: Uaid,
    pub target: WakeupInfo,
    pub urgency: Urgency,
}

pub struct Harness {
    pub now: Millis,
    pub shards: Vec<Shard>,
    pub configs: Vec<ShardConfig>,
    pub keys: Keys,
    pub limits: Limits,
    pub socks: BTreeMap<ConnId, Sock>,
    /// Every appended record, per shard, in LSN order.
    pub log: Vec<Vec<Record>>,
    pub replies: BTreeMap<RequestId, HttpResponse>,
    pub wakeups: Vec<WakeupCall>,
    pub awake: Vec<Uaid>,
    pub ws_pings: Vec<ConnId>,
    pub hand_offs: u64,
    next_conn: ConnId,
    next_request: RequestId,
    rng_seed: u64,
}

pub fn shard_config(index: usize, shards: usize, limits: &Limits, wakeup: &[&str]) -> ShardConfig {
    ShardConfig {
        index,
        shards,
        endpoint_url: ORIGIN.to_owned(),
        limits: limits.clone(),
        wakeup_networks: wakeup.iter().map(|network| network.to_string()).collect(),
    }
}

impl Harness {
    /// One shard, `Limits::test_min()`, no wakeup routes.
    pub fn new() -> Harness {
        Harness::build(1, Limits::test_min(), &[], 1)
    }

    pub fn with_limits(limits: Limits) -> Harness {
        Harness::build(1, limits, &[], 1)
    }

    pub fn with_shards(shards: usize) -> Harness {
        Harness::build(shards, Limits::test_min(), &[], 1)
    }

    /// One shard with a wakeup route for [`ROUTED_NETWORK`].
    pub fn with_wakeup() -> Harness {
        Harness::build(1, Limits::test_min(), &[ROUTED_NETWORK], 1)
    }

    pub fn build(shards: usize, limits: Limits, wakeup: &[&str], rng_seed: u64) -> Harness {
        let configs: Vec<ShardConfig> = (0..shards)
            .map(|index| shard_config(index, shards, &limits, wakeup))
            .collect();
        let shards_vec = configs
            .iter()
            .map(|config| {
                Shard::new(
                    config.clone(),
                    keys(),
                    StdRng::seed_from_u64(rng_seed ^ (config.index as u64) << 32),
                )
            })
            .collect();
        Harness {
            now: START_MS,
            shards: shards_vec,
            configs,
            keys: keys(),
            limits,
            socks: BTreeMap::new(),
            log: vec![Vec::new(); shards],
            replies: BTreeMap::new(),
            wakeups: Vec::new(),
            awake: Vec::new(),
            ws_pings: Vec::new(),
            hand_offs: 0,
            next_conn: 1,
            next_request: 1,
            rng_seed,
        }
    }

    // ---- plumbing ------------------------------------------------------

    /// Carries out every queued action of every shard until none is left.
    pub fn pump(&mut self) {
        loop {
            let mut any = false;
            for index in 0..self.shards.len() {
                while let Some(action) = self.shards[index].poll_action() {
                    any = true;
                    self.carry_out(index, action);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn carry_out(&mut self, shard: usize, action: Action) {
        match action {
            Action::Send { conn, text, .. } => {
                let sock = self
                    .socks
                    .get_mut(&conn)
                    .unwrap_or_else(|| panic!("Send to unknown conn {conn}: {text}"));
                if sock.closed.is_some() || sock.gone {
                    sock.sent_after_close += 1;
                    return;
                }
                let frame = match serde_json::from_str::<Value>(&text) {
                    Ok(value) => Frame::Json(value),
                    Err(_) => Frame::Text(text),
                };
                sock.frames.push(frame);
            }
            Action::Close { conn, code, .. } => {
                if let Some(sock) = self.socks.get_mut(&conn) {
                    if sock.closed.is_none() {
                        sock.closed = Some(code);
                    }
                }
            }
            Action::WsPing { conn } => self.ws_pings.push(conn),
            Action::HandOff {
                conn,
                shard: target,
                hello,
            } => {
                assert_ne!(target, shard, "hand-off to the same shard");
                self.hand_offs += 1;
                let sock = self.socks.get_mut(&conn).expect("hand-off of unknown conn");
                sock.shard = target;
                self.shards[target].on_adopted(self.now, conn, &hello);
            }
            Action::Append { lsn, record } => {
                let log = &mut self.log[shard];
                assert_eq!(
                    lsn,
                    log.len() as u64 + 1,
                    "shard {shard}: LSNs must be consecutive from 1"
                );
                log.push(record);
            }
            Action::Reply {
                request, response, ..
            } => {
                self.replies.insert(request, response);
            }
            Action::Wakeup {
                uaid,
                target,
                urgency,
            } => self.wakeups.push(WakeupCall {
                at_ms: self.now,
                uaid,
                target,
                urgency,
            }),
            Action::Awake { uaid } => self.awake.push(uaid),
        }
    }

    /// Fires due timers on every shard at the current time.
    pub fn tick(&mut self) {
        for index in 0..self.shards.len() {
            self.shards[index].on_tick(self.now);
        }
        self.pump();
    }

    /// Moves the clock forward by `ms`, firing each timer at its own deadline
    /// (as the net layer's timer loop does).
    pub fn advance(&mut self, ms: Millis) {
        let target = self.now + ms;
        loop {
            let next = self
                .shards
                .iter()
                .filter_map(Shard::next_deadline)
                .min()
                .filter(|deadline| *deadline <= target);
            match next {
                Some(deadline) => {
                    self.now = self.now.max(deadline);
                    self.tick();
                }
                None => break,
            }
        }
        self.now = target;
        self.tick();
    }

    /// An operator sets broadcast `id` to `version`: every shard hears it.
    pub fn broadcast(&mut self, id: &str, version: &str) {
        for shard in &mut self.shards {
            shard.on_broadcast(id, version);
        }
        self.pump();
    }

    // ---- UA side -------------------------------------------------------

    /// A WebSocket upgrade completes on shard 0.
    pub fn open(&mut self) -> ConnId {
        self.open_on(0)
    }

    pub fn open_on(&mut self, shard: usize) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.socks.insert(
            conn,
            Sock {
                shard,
                ..Sock::default()
            },
        );
        self.shards[shard].on_open(self.now, conn);
        self.pump();
        conn
    }

    /// The UA sends a text frame.
    pub fn send(&mut self, conn: ConnId, text: &str) {
        let shard = self.socks[&conn].shard;
        self.shards[shard].on_text(self.now, conn, text);
        self.pump();
    }

    pub fn send_json(&mut self, conn: ConnId, value: Value) {
        self.send(conn, &value.to_string());
    }

    /// The UA hangs up.
    pub fn disconnect(&mut self, conn: ConnId) {
        let sock = self.socks.get_mut(&conn).expect("unknown conn");
        if sock.gone {
            return;
        }
        sock.gone = true;
        let (shard, closed) = (sock.shard, sock.closed.is_some());
        if !closed {
            self.shards[shard].on_closed(self.now, conn);
        }
        self.pump();
    }

    /// Frames received since the last `take` on this conn.
    pub fn take(&mut self, conn: ConnId) -> Vec<Frame> {
        let sock = self.socks.get_mut(&conn).expect("unknown conn");
        let frames = sock.frames[sock.cursor..].to_vec();
        sock.cursor = sock.frames.len();
        frames
    }

    /// Notification frames received since the last `take` (others dropped).
    pub fn take_notifications(&mut self, conn: ConnId) -> Vec<Value> {
        self.take(conn)
            .into_iter()
            .filter(Frame::is_notification)
            .map(|frame| frame.json().clone())
            .collect()
    }

    pub fn closed(&self, conn: ConnId) -> Option<u16> {
        self.socks[&conn].closed
    }

    /// Sends a hello (merged with `extra`) and returns the hello reply.
    pub fn hello(&mut self, conn: ConnId, extra: Value) -> Value {
        let mut hello = json!({"messageType": "hello"});
        if let Value::Object(fields) = extra {
            for (key, value) in fields {
                hello[key] = value;
            }
        }
        self.send_json(conn, hello);
        let frames = self.take(conn);
        let reply = frames
            .first()
            .unwrap_or_else(|| panic!("no hello reply on conn {conn}"))
            .json()
            .clone();
        assert_eq!(reply["messageType"], "hello", "first frame: {reply}");
        // Put back whatever came after the reply (pending notifications).
        let sock = self.socks.get_mut(&conn).unwrap();
        sock.cursor -= frames.len() - 1;
        reply
    }

    /// A fresh UA: a new socket and a hello without UAID. Returns (conn, uaid).
    pub fn connect_new(&mut self, web_push: bool) -> (ConnId, String) {
        let conn = self.open();
        let reply = self.hello(conn, hello_fields(None, web_push));
        let uaid = reply["uaid"].as_str().expect("uaid in reply").to_owned();
        (conn, uaid)
    }

    /// A known UA reconnects on a new socket (on shard 0: a hand-off moves it).
    pub fn reconnect(&mut self, uaid: &str, web_push: bool) -> ConnId {
        let conn = self.open();
        let reply = self.hello(conn, hello_fields(Some(uaid), web_push));
        assert_eq!(reply["uaid"], uaid, "the known UAID is kept: {reply}");
        conn
    }

    /// Registers `channel` (no key) and returns the pushEndpoint.
    pub fn register(&mut self, conn: ConnId, channel: &str) -> String {
        let reply = self.register_reply(conn, json!({"channelID": channel}));
        assert_eq!(reply["status"], 200, "register {channel}: {reply}");
        reply["pushEndpoint"].as_str().unwrap().to_owned()
    }

    /// Sends a register message with the given fields; returns its reply.
    pub fn register_reply(&mut self, conn: ConnId, fields: Value) -> Value {
        let mut message = json!({"messageType": "register"});
        for (key, value) in fields.as_object().unwrap() {
            message[key] = value.clone();
        }
        self.send_json(conn, message);
        self.take_reply(conn, "register")
    }

    /// The first frame of type `kind` since the last take; other frames are
    /// put back in place.
    pub fn take_reply(&mut self, conn: ConnId, kind: &str) -> Value {
        let sock = self.socks.get_mut(&conn).unwrap();
        let at = sock.frames[sock.cursor..]
            .iter()
            .position(|frame| frame.message_type() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} reply on conn {conn}: {:?}", sock.frames));
        sock.frames.remove(sock.cursor + at).json().clone()
    }

    pub fn ack(&mut self, conn: ConnId, channel: &str, version: Value) {
        self.send_json(
            conn,
            json!({"messageType": "ack", "updates": [{"channelID": channel, "version": version, "code": 100}]}),
        );
    }

    // ---- AS side -------------------------------------------------------

    pub fn decode_context(&self) -> DecodeContext<'_> {
        DecodeContext {
            keys: &self.keys,
            limits: &self.limits,
            audience: ORIGIN,
            now_ms: self.now,
        }
    }

    /// Decodes an HTTP request with `push::decode`; errors are answered at
    /// once, a `PushRequest` goes to the shard owning its UAID.
    pub fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let path = url.strip_prefix(ORIGIN).unwrap_or(url);
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        let request = HttpRequest {
            method,
            path,
            headers: &headers,
            body,
        };
        let decoded = push::decode(&self.decode_context(), &request);
        match decoded {
            Err(response) => response,
            Ok(push) => self.deliver_request(push),
        }
    }

    /// Routes an already decoded request to its owning shard; returns the reply.
    pub fn deliver_request(&mut self, push: PushRequest) -> HttpResponse {
        let owner = push.uaid().shard(self.shards.len());
        let request = self.next_request;
        self.next_request += 1;
        self.shards[owner].on_push(self.now, request, push);
        self.pump();
        self.replies
            .remove(&request)
            .unwrap_or_else(|| panic!("no reply to request {request}"))
    }

    /// SimplePush `PUT version=N`.
    pub fn put_version(&mut self, endpoint: &str, version: u64) -> HttpResponse {
        self.request(
            "PUT",
            endpoint,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            format!("version={version}").as_bytes(),
        )
    }

    /// Web Push `POST` without a body.
    pub fn post(&mut self, endpoint: &str, ttl: u64) -> HttpResponse {
        self.request("POST", endpoint, &[("TTL", &ttl.to_string())], b"")
    }

    /// Web Push `POST` with an aes128gcm body and extra headers.
    pub fn post_data(
        &mut self,
        endpoint: &str,
        ttl: u64,
        data: &[u8],
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        let ttl = ttl.to_string();
        let mut headers = vec![("TTL", ttl.as_str()), ("Content-Encoding", "aes128gcm")];
        headers.extend_from_slice(extra);
        self.request("POST", endpoint, &headers, data)
    }

    // ---- replay --------------------------------------------------------

    /// A crash and restart: every socket is gone, every shard is rebuilt from
    /// its log alone through `Shard::apply`.
    pub fn restart(&mut self) {
        for sock in self.socks.values_mut() {
            sock.gone = true;
        }
        for index in 0..self.shards.len() {
            let mut shard = Shard::new(
                self.configs[index].clone(),
                keys(),
                StdRng::seed_from_u64(self.rng_seed.wrapping_add(self.now) ^ index as u64),
            );
            for record in &self.log[index] {
                shard.apply(record);
            }
            shard.set_next_lsn(self.log[index].len() as u64 + 1);
            self.shards[index] = shard;
        }
    }
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

/// Hello fields: `uaid` when given, `use_webpush` when asked.
pub fn hello_fields(uaid: Option<&str>, web_push: bool) -> Value {
    let mut fields = json!({});
    if let Some(uaid) = uaid {
        fields["uaid"] = json!(uaid);
    }
    if web_push {
        fields["use_webpush"] = json!(true);
    }
    fields
}

/// The message id out of a 201's `Location: <origin>/m/<id>`.
pub fn location_id(response: &HttpResponse) -> String {
    let location =
        header(response, "Location").unwrap_or_else(|| panic!("no Location in {response:?}"));
    location
        .strip_prefix(&format!("{ORIGIN}/m/"))
        .unwrap_or_else(|| panic!("Location {location} is not under {ORIGIN}/m/"))
        .to_owned()
}

pub fn header<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// The JSON body of a response.
pub fn body_json(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|_| panic!("response body is not JSON: {response:?}"))
}

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn uaid_of(hex: &str) -> Uaid {
    Uaid::from_hex(hex).expect("32 hex characters")
}
