//! One-input drivers shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`,
//! which include this file by path) and the plain-Rust smoke test
//! (`net/tests/fuzz_smoke.rs`). Each takes raw bytes, reads a small
//! structure out of them (so random bytes reach deep into the code: valid
//! endpoint tokens, known channels, real header names) and panics only when
//! the engine breaks a rule: a panic inside the engine, or an answer that
//! violates the spec (an error that is not JSON, a frame to a closed socket...).
//!
//! Every driver returns a small "outcome" number; the smoke test keeps inputs
//! that produce new outcomes as seeds for mutation (poor man's coverage).
//!
//! The drivers for the listeners' framing, the WAL and identities live in
//! their own modules, each with the hand-written inputs (`seeds`) the smoke
//! test starts from.
#![allow(dead_code)]

pub mod http_head;
pub mod peak_alloc;
pub mod tokens;
pub mod wal_records;
pub mod ws_frames;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::OnceLock;

use herald_engine::identity::{KeyMaterial, Keys};
use herald_engine::limits::Limits;
use herald_engine::message::{MessageBody, Urgency, WakeupInfo};
use herald_engine::push::{
    self, DecodeContext, HttpRequest, HttpResponse, PushRequest, VERSION_FROM_CLOCK,
};
use herald_engine::record::Record;
use herald_engine::shard::{Shard, ShardConfig};
use herald_engine::ua::{self, ClientMessage};
use herald_engine::{ChannelId, ConnId, Millis, RequestId, Uaid};
use herald_net::shard::{Driver, Next, Outbox, Outgoing, RingMsg, Runtime};
use herald_store::{MemLog, RecordLog};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

pub const ORIGIN: &str = "http://push.test:8081";
pub const START_MS: u64 = 1_700_000_000_000;

pub fn keys() -> Keys {
    Keys::new(&KeyMaterial {
        uaid_keys: vec![[0x11; 16]],
        token_keys: vec![[0x22; 32]],
    })
}

/// Reads structure out of fuzz bytes; past the end everything reads as 0/empty.
pub struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    pub fn byte(&mut self) -> u8 {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    /// True with probability about 1/n.
    #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.85
    pub fn one_in(&mut self, n: u8) -> bool {
        self.byte() % n.max(1) == 0
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            self.byte() as usize % n
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.at = start + n;
        &self.data[start..end]
    }

    /// A length byte, then that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let len = self.byte() as usize;
        self.take(len)
    }

    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for byte in &mut out {
            *byte = self.byte();
        }
        out
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        self.at = self.data.len();
        &self.data[start..]
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

// ---- ua::parse ---------------------------------------------------------

/// `ua::parse` on arbitrary text: never panics; what it accepts is well formed.
pub fn ua_parse(data: &[u8]) -> u32 {
    let text = String::from_utf8_lossy(data);
    match ua::parse(&text) {
        Err(error) => {
            assert!(!error.reason().is_empty());
            1
        }
        Ok(ClientMessage::Hello(hello)) => {
            assert!(hello.uaid.as_deref() != Some(""), "empty uaid means none");
            if let Some(wakeup) = &hello.wakeup {
                assert_ne!(wakeup.port, 0);
                assert!(wakeup.mcc.len() == 3 && wakeup.mcc.bytes().all(|b| b.is_ascii_digit()));
                assert!((2..=3).contains(&wakeup.mnc.len()));
            }
            2 + u32::from(hello.use_webpush) + 2 * u32::from(hello.wakeup.is_some())
        }
        Ok(ClientMessage::Register { .. }) => 6,
        Ok(ClientMessage::Unregister { .. }) => 7,
        Ok(ClientMessage::Ack(updates)) => 8 + updates.len().min(3) as u32,
        Ok(ClientMessage::Nack { .. }) => 12,
        Ok(ClientMessage::Ping) => 13,
        Ok(ClientMessage::TextPing) => {
            assert_eq!(text, ua::PING);
            14
        }
        Ok(ClientMessage::BroadcastSubscribe(_)) => 15,
    }
}

// ---- push::decode ------------------------------------------------------

/// The fixed VAPID key pair and a valid `Authorization` for `ORIGIN`
/// (exp = START + 12 h), built once.
pub struct Vapid {
    pub key_text: String,
    pub key_hash: [u8; 32],
    pub authorization: String,
}

pub fn vapid() -> &'static Vapid {
    static VAPID: OnceLock<Vapid> = OnceLock::new();
    VAPID.get_or_init(|| {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        use p256::ecdsa::signature::Signer;
        use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
        let key = SigningKey::from_slice(&[0x5a; 32]).expect("valid scalar");
        let raw = VerifyingKey::from(&key)
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let key_text = URL_SAFE_NO_PAD.encode(&raw);
        let header = json!({"typ": "JWT", "alg": "ES256"});
        let claims =
            json!({"aud": ORIGIN, "exp": START_MS / 1000 + 12 * 3600, "sub": "mailto:a@b.c"});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = key.sign(signed.as_bytes());
        let jwt = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Vapid {
            authorization: format!("vapid t={jwt}, k={key_text}"),
            key_hash: herald_engine::vapid::key_hash(&raw),
            key_text,
        }
    })
}

const HEADER_NAMES: &[&str] = &[
    "TTL",
    "Topic",
    "Urgency",
    "Content-Encoding",
    "Encryption",
    "Crypto-Key",
    "Authorization",
    "Prefer",
    "ttl",
    "content-type",
];

fn header_value(input: &mut Input) -> Vec<u8> {
    let dictionary: &[&str] = &[
        "60",
        "0",
        "2592001",
        "-1",
        " 7 ",
        "abc",
        "high",
        "very-low",
        "urgent",
        "aes128gcm",
        "aesgcm",
        "AESGCM",
        "salt=AAAA",
        "dh=BBBB;p256ecdsa=CCCC",
        "respond-async",
        "topic_1",
        "a b",
        "",
    ];
    match input.byte() % 4 {
        0 => vapid().authorization.clone().into_bytes(),
        1 => {
            // A mutated valid authorization: cut or altered in one place.
            let mut auth = vapid().authorization.clone().into_bytes();
            let at = input.u32() as usize % auth.len();
            match input.byte() % 3 {
                0 => auth.truncate(at),
                1 => auth[at] = input.byte(),
                _ => {
                    auth.remove(at);
                }
            }
            auth
        }
        2 => input.chunk().to_vec(),
        _ => input.pick(dictionary).as_bytes().to_vec(),
    }
}

/// `push::decode` on an arbitrary request with fixed keys: never panics,
/// errors are SPEC §4.2 JSON bodies, successes respect every limit.
pub fn push_decode(data: &[u8]) -> u32 {
    let keys = keys();
    let limits = Limits::default();
    let mut input = Input::new(data);
    let now_ms = START_MS + u64::from(input.byte()) * 60_000;
    let method = match input.byte() % 7 {
        0 | 1 => "POST".to_owned(),
        2 => "PUT".to_owned(),
        3 => "GET".to_owned(),
        4 => "DELETE".to_owned(),
        5 => "PATCH".to_owned(),
        _ => input.text(),
    };
    let uaid = Uaid(input.array());
    let channel = ChannelId(input.array());
    let path = match input.byte() % 8 {
        0 | 1 => format!("/wpush/v1/{}", keys.endpoint_token(&uaid, &channel, None)),
        2 | 3 => format!(
            "/wpush/v2/{}",
            keys.endpoint_token(&uaid, &channel, Some(&vapid().key_hash))
        ),
        4 => format!(
            "/m/{}",
            keys.message_id(&uaid, &channel, u64::from(input.u32()))
        ),
        5 => format!("/wpush/v1/{}", input.text()),
        6 => {
            // A valid token with one character changed.
            let mut token = keys.endpoint_token(&uaid, &channel, None).into_bytes();
            let at = input.byte() as usize % token.len();
            token[at] = b"Aa0-_=/."[input.below(8)];
            format!("/wpush/v1/{}", String::from_utf8_lossy(&token))
        }
        _ => input.text(),
    };
    let count = input.below(8);
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    if input.one_in(2) {
        let ttl = input.pick(&["60", "0", "86400", "99999999"]);
        headers.push(("TTL".to_owned(), ttl.as_bytes().to_vec()));
    }
    for _ in 0..count {
        let name = if input.one_in(8) {
            input.text()
        } else {
            input.pick(HEADER_NAMES).to_owned()
        };
        headers.push((name, header_value(&mut input)));
    }
    let body = match input.byte() % 4 {
        0 => b"version=5".to_vec(),
        1 => b"body=hi&ttl=30".to_vec(),
        _ => input.rest().to_vec(),
    };
    let header_refs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect();
    let request = HttpRequest {
        method: &method,
        path: &path,
        headers: &header_refs,
        body: &body,
    };
    let context = DecodeContext {
        keys: &keys,
        limits: &limits,
        audience: ORIGIN,
        now_ms,
    };
    match push::decode(&context, &request) {
        Err(response) => {
            assert!(
                (400..600).contains(&response.status),
                "error status {}",
                response.status
            );
            let body: Value = serde_json::from_str(&response.body)
                .unwrap_or_else(|_| panic!("error body is not JSON: {response:?}"));
            assert_eq!(body["code"], response.status);
            assert!(body["errno"].is_u64() && body["message"].is_string());
            if body["errno"] == push::errno::INVALID_AUTHENTICATION {
                // SPEC §4.2: a VAPID failure is never 404 or 410.
                assert!(matches!(response.status, 401 | 403), "{response:?}");
            }
            1000 + u32::from(response.status) * 1000 + body["errno"].as_u64().unwrap() as u32
        }
        Ok(PushRequest::Notify {
            uaid: got_uaid,
            channel: got_channel,
            key_hash,
            notification,
        }) => {
            assert_eq!((got_uaid, got_channel), (uaid, channel));
            if key_hash.is_some() {
                assert_eq!(key_hash, Some(vapid().key_hash));
            }
            if let Some(ttl) = notification.ttl_s {
                if notification.web_push {
                    assert!(ttl <= limits.ttl_max_s);
                }
            }
            if let Some(topic) = &notification.topic {
                assert!(!topic.is_empty() && topic.len() <= 32);
            }
            match &notification.body {
                MessageBody::Version(version) => {
                    assert!(*version < 1 << 63 || *version == VERSION_FROM_CLOCK)
                }
                MessageBody::WebPush { data, encoding, .. } => {
                    assert!(data.len() <= limits.push_body_bytes_max);
                    assert!(data.is_empty() || encoding.is_some());
                }
                MessageBody::Desktop { body, .. } => {
                    assert!(body.len() <= limits.push_body_bytes_max)
                }
                MessageBody::Extended { .. } => {
                    panic!("push::decode never makes extended notifications")
                }
            }
            2 + u32::from(notification.web_push) + 2 * u32::from(key_hash.is_some())
        }
        Ok(PushRequest::DeleteMessage(claims)) | Ok(PushRequest::MessageState(claims)) => {
            assert_eq!((claims.uaid, claims.channel), (uaid, channel));
            6
        }
        Ok(PushRequest::AppShare { .. }) => {
            panic!("push::decode never makes app shares (the cluster's fan-out does)")
        }
    }
}

// ---- a whole shard -----------------------------------------------------

/// What the fuzz driver knows, like a UA and an AS would.
#[derive(Default)]
struct World {
    /// Open sockets and their outboxes on the shard's driver.
    open: BTreeMap<ConnId, Rc<Outbox>>,
    closed: BTreeSet<ConnId>,
    uaids: Vec<String>,
    channels: Vec<String>,
    endpoints: Vec<String>,
    /// Versions (ids or numbers) seen in notifications.
    versions: Vec<Value>,
    outcome: u32,
}

/// The shard's runtime: a clock the fuzz input moves, and a record of what
/// the driver sent out of the shard.
#[derive(Clone, Default)]
struct FuzzRuntime {
    now: Rc<std::cell::Cell<Millis>>,
    effects: Rc<RefCell<Effects>>,
}

#[derive(Default)]
struct Effects {
    answers: Vec<HttpResponse>,
    ring_messages: u32,
    wakeups: u32,
    awake: u32,
}

impl Runtime for FuzzRuntime {
    type Socket = ();
    type Waiter = RequestId;

    fn now_ms(&self) -> Millis {
        self.now.get()
    }

    fn try_send(&self, _shard: usize, _message: RingMsg<()>) -> Result<(), RingMsg<()>> {
        self.effects.borrow_mut().ring_messages += 1;
        Ok(())
    }

    fn send(&self, _shard: usize, _message: RingMsg<()>) {
        self.effects.borrow_mut().ring_messages += 1;
    }

    fn answer(&self, _waiter: RequestId, response: HttpResponse) {
        self.effects.borrow_mut().answers.push(response);
    }

    fn wakeup(&self, _uaid: Uaid, _target: WakeupInfo, _urgency: Urgency) {
        self.effects.borrow_mut().wakeups += 1;
    }

    fn awake(&self, _uaid: Uaid) {
        self.effects.borrow_mut().awake += 1;
    }
    fn load(
        &self,
        _uaid: Uaid,
        _claim: impl std::future::Future<Output = Result<herald_store::Claim, herald_store::ClaimError>>
            + 'static,
    ) {
        unreachable!("these shards hold every UA of their range (not resident_only)")
    }
}

fn frame_text(input: &mut Input, world: &World) -> String {
    let pick_channel = |input: &mut Input| -> Value {
        match input.byte() % 5 {
            0 if !world.channels.is_empty() => {
                json!(world.channels[input.below(world.channels.len())])
            }
            1 => json!(input.text()),
            2 => json!(input.byte()),
            _ => json!(format!(
                "{:08x}-0000-4000-8000-{:012x}",
                input.byte(),
                input.byte()
            )),
        }
    };
    let uaid = |input: &mut Input| -> Value {
        match input.byte() % 4 {
            0 if !world.uaids.is_empty() => json!(world.uaids[input.below(world.uaids.len())]),
            1 => json!(input.text()),
            2 => Value::Null,
            _ => json!(Uaid(input.array()).to_hex()),
        }
    };
    match input.byte() % 12 {
        0 | 1 => {
            let mut hello = json!({"messageType": "hello", "uaid": uaid(input)});
            if input.one_in(2) {
                hello["use_webpush"] = json!(true);
            }
            if input.one_in(3) {
                hello["broadcasts"] = broadcasts(input);
            }
            if input.one_in(3) {
                let ids: Vec<Value> = (0..input.below(5)).map(|_| pick_channel(input)).collect();
                hello["channelIDs"] = json!(ids);
            }
            if input.one_in(3) {
                hello["wakeup_hostport"] = json!({"ip": "10.0.0.1", "port": input.byte()});
                hello["mobilenetwork"] =
                    json!({"mcc": "214", "mnc": if input.one_in(2) { "07" } else { "99" }});
            }
            hello.to_string()
        }
        2 | 3 => {
            let mut register = json!({"messageType": "register", "channelID": pick_channel(input)});
            match input.byte() % 4 {
                0 => register["key"] = json!(vapid().key_text),
                1 => register["key"] = json!(input.text()),
                _ => {}
            }
            register.to_string()
        }
        4 => json!({"messageType": "unregister", "channelID": pick_channel(input)}).to_string(),
        5 | 6 => {
            let updates: Vec<Value> = (0..input.below(4))
                .map(|_| {
                    let version = match input.byte() % 4 {
                        0 if !world.versions.is_empty() => {
                            world.versions[input.below(world.versions.len())].clone()
                        }
                        1 => json!(u64::from(input.u32())),
                        2 => json!(input.text()),
                        _ => json!(START_MS + u64::from(input.u32())),
                    };
                    json!({"channelID": pick_channel(input), "version": version, "code": 100})
                })
                .collect();
            json!({"messageType": "ack", "updates": updates}).to_string()
        }
        7 => input
            .pick(&[
                "{}",
                "PING",
                r#"{"messageType":"ping"}"#,
                r#"{"messageType":"nack","code":301}"#,
            ])
            .to_owned(),
        8 => json!({"messageType": "broadcast_subscribe", "broadcasts": broadcasts(input)})
            .to_string(),
        9 => {
            // A valid frame with one byte changed.
            let mut text = json!({"messageType": "register", "channelID": pick_channel(input)})
                .to_string()
                .into_bytes();
            let at = input.byte() as usize % text.len();
            text[at] = input.byte();
            String::from_utf8_lossy(&text).into_owned()
        }
        _ => input.text(),
    }
}

const BROADCAST_IDS: &[&str] = &["remote-settings/monitor_changes", "a", "b/c"];

/// A broadcasts object: known ids with small versions, or junk.
fn broadcasts(input: &mut Input) -> Value {
    let mut map = serde_json::Map::new();
    for _ in 0..input.below(4) {
        let id = if input.one_in(4) {
            input.text()
        } else {
            input.pick(BROADCAST_IDS).to_owned()
        };
        let version = match input.byte() % 6 {
            0 => json!(input.text()),
            1 => json!(input.byte()),
            _ => json!(format!("v{}", input.below(3))),
        };
        map.insert(id, version);
    }
    Value::Object(map)
}

/// Sends the pushes queued for other shards, commits what the shard
/// appended, then reads what left the driver: the
/// frames its outboxes let go of, its answers and its other effects.
fn observe(
    driver: &mut Driver<MemLog, FuzzRuntime>,
    log: &MemLog,
    world: &mut World,
    shards: usize,
) {
    driver.flush_pushes();
    log.commit();
    driver.on_durable();
    assert_eq!(
        driver.frames_for_closed_sockets(),
        0,
        "the engine sent a frame to a socket it had closed"
    );
    let durable = log.durable_lsn();
    let conns: Vec<ConnId> = world.open.keys().copied().collect();
    for conn in conns {
        while let Some(Next::Item(item)) = world.open[&conn].next(durable) {
            match item {
                Outgoing::Text { text, .. } => world.read_frame(&text),
                Outgoing::Close { code, .. } => {
                    world.open.remove(&conn);
                    world.closed.insert(conn);
                    world.outcome |= match code {
                        1000 => 2,
                        1002 => 4,
                        1008 => 8,
                        4774 => 16,
                        _ => 32,
                    };
                    break;
                }
                Outgoing::HandOff { shard, .. } => {
                    assert!(
                        shards > 1 && shard < shards && shard != driver.index(),
                        "hand-off to shard {shard} of {shards}"
                    );
                    world.open.remove(&conn);
                    world.outcome |= 64;
                    break;
                }
                Outgoing::Abandon => {
                    world.open.remove(&conn);
                    world.outcome |= 1 << 18;
                    break;
                }
                Outgoing::Ping | Outgoing::Pong(_) => {}
            }
        }
    }
    let effects = std::mem::take(&mut *driver.runtime().effects.borrow_mut());
    for response in effects.answers {
        assert!((200..600).contains(&response.status));
        world.outcome |= 128 << (response.status / 100 - 2).min(3);
    }
    if effects.wakeups > 0 {
        world.outcome |= 2048;
    }
    if effects.awake > 0 {
        world.outcome |= 4096;
    }
}

impl World {
    /// Learns UAIDs, endpoints and versions from a frame the UA received.
    fn read_frame(&mut self, text: &str) {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(uaid) = value["uaid"].as_str() {
            if !self.uaids.iter().any(|known| known == uaid) {
                self.uaids.push(uaid.to_owned());
            }
        }
        if let Some(endpoint) = value["pushEndpoint"].as_str() {
            self.endpoints.push(endpoint.to_owned());
            self.channels
                .push(value["channelID"].as_str().unwrap_or_default().to_owned());
        }
        if value["messageType"] == "broadcast" {
            self.outcome |= 8192 << 3;
        }
        if value["messageType"] == "notification" {
            self.outcome |= 1;
            if !value["version"].is_null() {
                self.versions.push(value["version"].clone());
            }
            for update in value["updates"].as_array().into_iter().flatten() {
                self.versions.push(update["version"].clone());
            }
        }
    }
}

/// Arbitrary events (mostly text frames) into one shard of one or two,
/// through the shard driver over an in-memory log: never panics, never sends
/// to a closed socket, LSNs agree (the driver asserts it), and the appended
/// records replay into a fresh shard with the same UAs (those with channels).
pub fn shard_frames(data: &[u8]) -> u32 {
    let mut input = Input::new(data);
    let shards = 1 + input.below(2);
    let config = ShardConfig {
        index: 0,
        shards,
        endpoint_url: ORIGIN.to_owned(),
        limits: Limits::test_min(),
        wakeup_networks: vec!["214-07".to_owned()],
        resident_only: false,
    };
    let keys = keys();
    let engine = Shard::new(config.clone(), keys.clone(), StdRng::seed_from_u64(7));
    let log = MemLog::new();
    let runtime = FuzzRuntime::default();
    runtime.now.set(START_MS);
    let limits = Limits::test_min();
    let mut driver = Driver::start(
        engine,
        &limits,
        log.clone(),
        &[],
        runtime.clone(),
        0,
        shards,
    );
    let mut world = World::default();
    let mut now = START_MS;
    let mut request = 0;
    let mut steps = 0;
    while !input.is_empty() && steps < 200 {
        steps += 1;
        match input.byte() % 11 {
            10 => {
                let id = input.pick(BROADCAST_IDS);
                driver.on_broadcast(id, &format!("v{}", input.below(3)));
            }
            0 => {
                let (conn, outbox) = driver.open_conn();
                world.open.insert(conn, outbox);
                driver.on_open(conn, false);
            }
            1..=5 => {
                if let Some(conn) = pick_conn(&mut input, &world) {
                    let text = frame_text(&mut input, &world);
                    if driver.has_conn(conn) {
                        driver.on_text(conn, &text);
                    }
                }
            }
            6 => {
                if let Some(conn) = pick_conn(&mut input, &world) {
                    world.open.remove(&conn);
                    world.closed.insert(conn);
                    driver.on_closed(conn);
                }
            }
            7 => {
                now += u64::from(input.byte()) * u64::from(input.byte()) * 10;
                runtime.now.set(now);
                driver.on_tick();
            }
            _ => {
                // An AS request to an endpoint this shard issued (or junk).
                let path = match world.endpoints.len() {
                    0 => format!("/wpush/v1/{}", input.text()),
                    n => world.endpoints[input.below(n)]
                        .strip_prefix(ORIGIN)
                        .unwrap_or_default()
                        .to_owned(),
                };
                let path = if input.one_in(6) {
                    match world.versions.iter().find_map(|v| v.as_str()) {
                        Some(id) => format!("/m/{id}"),
                        None => path,
                    }
                } else {
                    path
                };
                let method = input.pick(&["POST", "POST", "PUT", "GET", "DELETE"]);
                let ttl = input.pick(&["0", "5", "60", "x"]);
                let mut headers: Vec<(&str, &[u8])> = vec![("TTL", ttl.as_bytes())];
                let topic = input.pick(&["", "t1", "t2"]);
                if !topic.is_empty() {
                    headers.push(("Topic", topic.as_bytes()));
                }
                let urgency = input.pick(&["normal", "high", "low", "very-low"]);
                headers.push(("Urgency", urgency.as_bytes()));
                let body = if method == "PUT" {
                    input
                        .pick(&[&b"version=3"[..], b"version=9", b"", b"body=x&ttl=9"])
                        .to_vec()
                } else if input.one_in(2) {
                    headers.push(("Content-Encoding", b"aes128gcm"));
                    input.chunk().to_vec()
                } else {
                    Vec::new()
                };
                let http = HttpRequest {
                    method,
                    path: &path,
                    headers: &headers,
                    body: &body,
                };
                let context = DecodeContext {
                    keys: &keys,
                    limits: &limits,
                    audience: ORIGIN,
                    now_ms: now,
                };
                if let Ok(push) = push::decode(&context, &http) {
                    request += 1;
                    // A refusal (ring full, too many in flight) is an answer too.
                    let _ = driver.submit_push(push, request);
                }
            }
        }
        observe(&mut driver, &log, &mut world, shards);
    }
    // Replay: the records alone rebuild the same UAs, and at least every
    // pending message the live shard holds (it may have purged expired ones).
    let records = log.replay();
    let mut replayed = Shard::new(config, keys, StdRng::seed_from_u64(8));
    for record in &records {
        replayed.apply(record);
    }
    let live = driver.engine();
    // The same UAs with durable state (a UA without channels lives in
    // memory only while connected), in snapshots taken at the start time
    // so that none has expired on either side.
    let durable_uas = |shard: &Shard| -> BTreeSet<Uaid> {
        shard.snapshot(START_MS).iter().map(Record::uaid).collect()
    };
    assert_eq!(durable_uas(&replayed), durable_uas(live));
    assert!(replayed.pending_messages() >= live.pending_messages());
    let effects = runtime.effects.borrow();
    world.outcome |= u32::from(effects.ring_messages > 0) << 17;
    let mut by_uaid: BTreeMap<Uaid, usize> = BTreeMap::new();
    for record in &records {
        *by_uaid.entry(record.uaid()).or_default() += 1;
    }
    world.outcome | (by_uaid.len().min(3) as u32) << 13
}

fn pick_conn(input: &mut Input, world: &World) -> Option<ConnId> {
    if world.open.is_empty() {
        return None;
    }
    let n = input.below(world.open.len());
    world.open.keys().nth(n).copied()
}
