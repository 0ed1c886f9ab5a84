//! The shard as it runs, without sockets: the real [`Driver`] over an
//! in-memory log ([`MemLog`]) for every shard, a [`Runtime`] with a fake
//! clock and in-memory rings, and per-socket frame lists read from the
//! driver's outboxes (a frame leaves only once its record is durable, by
//! the outbox's own rule). By default every append is committed at once;
//! `auto_commit = false` leaves commits (and crashes between an append and
//! its commit) to the test. Every AS answer and every frame a UA receives is
//! stamped with the durable LSNs of that moment, so a test can check, apart
//! from the driver's own gating, that nothing left before its record was
//! durable.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_engine::identity::{KeyMaterial, Keys};
use herald_engine::limits::Limits;
use herald_engine::message::{Urgency, WakeupInfo};
use herald_engine::push::{self, DecodeContext, HttpRequest, HttpResponse, PushRequest};
use herald_engine::record::Record;
use herald_engine::shard::{Shard, ShardConfig};
use herald_engine::{ConnId, Lsn, Millis, RequestId, Uaid};
use herald_net::shard::{refusal_response, Driver, Next, Outbox, Outgoing, RingMsg, Runtime};
use herald_store::{MemLog, RecordLog};
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

#[derive(Clone, Default)]
pub struct Sock {
    /// The shard that holds the socket now (it moves on hand-off).
    pub shard: usize,
    /// The socket's id on that shard's driver, and its outbox there.
    pub conn: ConnId,
    outbox: Option<Rc<Outbox>>,
    pub frames: Vec<Frame>,
    /// For each of `frames`, when and from where it came.
    pub received: Vec<Received>,
    /// WebSocket pongs received.
    pub pongs: u64,
    /// How many of `frames` `take` has already handed out.
    pub cursor: usize,
    /// The close code the engine asked for.
    pub closed: Option<u16>,
    /// The UA hung up (or the server crashed under it).
    pub gone: bool,
    /// The UA stopped reading: its frames stay in the outbox.
    pub paused: bool,
}

impl std::fmt::Debug for Sock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sock")
            .field("shard", &self.shard)
            .field("conn", &self.conn)
            .field("frames", &self.frames)
            .field("pongs", &self.pongs)
            .field("closed", &self.closed)
            .field("gone", &self.gone)
            .finish()
    }
}

/// When a frame reached its UA, and from which shard with how much of its
/// log durable at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub at_ms: Millis,
    pub shard: usize,
    pub durable: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeupCall {
    pub at_ms: Millis,
    pub uaid: Uaid,
    pub target: WakeupInfo,
    pub urgency: Urgency,
}

/// A socket in transit: its harness handle and the hello that named its UA.
pub struct SimSocket {
    handle: ConnId,
    hello: String,
}

/// What the drivers' [`Runtime`] writes to, shared by every shard.
#[derive(Default)]
pub struct World {
    pub now: Cell<Millis>,
    /// Ring messages in the order they were sent: (to shard, message).
    rings: RefCell<VecDeque<(usize, RingMsg<SimSocket>)>>,
    /// Every ring message ever sent.
    ring_messages_sent: Cell<u64>,
    /// Answers to AS requests, by the harness's request id, with every
    /// shard's durable LSN at the moment the answer was given.
    answers: RefCell<BTreeMap<RequestId, (HttpResponse, Vec<Lsn>)>>,
    /// Every shard's log, to read durability at the moment of an answer.
    logs: RefCell<Vec<MemLog>>,
    wakeups: RefCell<Vec<WakeupCall>>,
    awake: RefCell<Vec<Uaid>>,
}

/// The runtime of one shard's driver.
pub struct SimRuntime {
    world: Rc<World>,
}

impl Runtime for SimRuntime {
    type Socket = SimSocket;
    type Waiter = RequestId;

    fn now_ms(&self) -> Millis {
        self.world.now.get()
    }

    fn try_send(
        &self,
        shard: usize,
        message: RingMsg<SimSocket>,
    ) -> Result<(), RingMsg<SimSocket>> {
        self.send(shard, message);
        Ok(())
    }

    fn send(&self, shard: usize, message: RingMsg<SimSocket>) {
        let sent = &self.world.ring_messages_sent;
        sent.set(sent.get() + 1);
        self.world.rings.borrow_mut().push_back((shard, message));
    }

    fn answer(&self, waiter: RequestId, response: HttpResponse) {
        let durable = self
            .world
            .logs
            .borrow()
            .iter()
            .map(MemLog::durable_lsn)
            .collect();
        let previous = self
            .world
            .answers
            .borrow_mut()
            .insert(waiter, (response, durable));
        assert!(previous.is_none(), "request {waiter} answered twice");
    }

    fn wakeup(&self, uaid: Uaid, target: WakeupInfo, urgency: Urgency) {
        let at_ms = self.world.now.get();
        self.world.wakeups.borrow_mut().push(WakeupCall {
            at_ms,
            uaid,
            target,
            urgency,
        });
    }

    fn awake(&self, uaid: Uaid) {
        self.world.awake.borrow_mut().push(uaid);
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

pub type SimDriver = Driver<MemLog, SimRuntime>;

pub struct Harness {
    pub now: Millis,
    pub shards: Vec<SimDriver>,
    pub logs: Vec<MemLog>,
    pub configs: Vec<ShardConfig>,
    pub keys: Keys,
    pub limits: Limits,
    /// Sockets by the harness's handle (stable across hand-offs).
    pub socks: BTreeMap<ConnId, Sock>,
    pub replies: BTreeMap<RequestId, HttpResponse>,
    /// For each answer in `replies` a shard gave, every shard's durable LSN
    /// at the moment it was given (refusals before a shard took the request
    /// have none).
    pub answered_durable: BTreeMap<RequestId, Vec<Lsn>>,
    pub wakeups: Vec<WakeupCall>,
    pub awake: Vec<Uaid>,
    pub ws_pings: Vec<ConnId>,
    pub hand_offs: u64,
    /// Commit every append at once (the default); when false, the test
    /// commits with [`Harness::commit`] or crashes with [`Harness::crash`].
    pub auto_commit: bool,
    world: Rc<World>,
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
        resident_only: false,
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
        let world = Rc::new(World::default());
        world.now.set(START_MS);
        let logs: Vec<MemLog> = (0..shards).map(|_| MemLog::new()).collect();
        *world.logs.borrow_mut() = logs.clone();
        let mut harness = Harness {
            now: START_MS,
            shards: Vec::new(),
            logs,
            configs,
            keys: keys(),
            limits,
            socks: BTreeMap::new(),
            replies: BTreeMap::new(),
            answered_durable: BTreeMap::new(),
            wakeups: Vec::new(),
            awake: Vec::new(),
            ws_pings: Vec::new(),
            hand_offs: 0,
            auto_commit: true,
            world,
            next_conn: 1,
            next_request: 1,
            rng_seed,
        };
        harness.shards = (0..shards)
            .map(|index| harness.start_shard(index, rng_seed))
            .collect();
        harness
    }

    /// Shard `index`'s driver over its log, replaying what the log holds.
    fn start_shard(&self, index: usize, rng_seed: u64) -> SimDriver {
        let engine = Shard::new(
            self.configs[index].clone(),
            keys(),
            StdRng::seed_from_u64(rng_seed ^ (index as u64) << 32),
        );
        let runtime = SimRuntime {
            world: self.world.clone(),
        };
        let recovered = self.logs[index].replay();
        Driver::start(
            engine,
            &self.limits,
            self.logs[index].clone(),
            &recovered,
            runtime,
            index,
            self.shards_count(),
        )
    }

    fn shards_count(&self) -> usize {
        self.configs.len()
    }

    /// The engine of shard `index`.
    pub fn engine(&self, index: usize) -> &Shard {
        self.shards[index].engine()
    }

    /// Every record shard `index` would replay now, in order.
    pub fn log(&self, index: usize) -> Vec<Record> {
        self.logs[index].replay()
    }

    // ---- plumbing ------------------------------------------------------

    /// Carries out everything the drivers asked for until nothing moves:
    /// ring messages, commits (when `auto_commit`), frames leaving outboxes.
    pub fn pump(&mut self) {
        loop {
            let mut moved = self.deliver_rings();
            if self.auto_commit {
                for log in &self.logs {
                    if log.uncommitted() > 0 {
                        log.commit();
                        moved = true;
                    }
                }
            }
            for driver in &mut self.shards {
                driver.on_durable();
            }
            // Answers released for another shard are on its ring now.
            moved |= !self.world.rings.borrow().is_empty();
            moved |= self.drain_outboxes();
            moved |= self.collect_world();
            if !moved {
                return;
            }
        }
    }

    fn deliver_rings(&mut self) -> bool {
        let mut moved = false;
        for driver in &mut self.shards {
            driver.flush_pushes();
        }
        loop {
            let next = self.world.rings.borrow_mut().pop_front();
            let Some((to, message)) = next else {
                return moved;
            };
            moved = true;
            if let Some(socket) = self.shards[to].on_ring(message) {
                self.adopt(to, socket);
            }
        }
    }

    /// A socket handed over arrives at `shard`.
    fn adopt(&mut self, shard: usize, socket: SimSocket) {
        self.hand_offs += 1;
        let (conn, outbox) = self.shards[shard].open_conn();
        let sock = self
            .socks
            .get_mut(&socket.handle)
            .expect("hand-off of unknown socket");
        assert_ne!(sock.shard, shard, "hand-off to the same shard");
        sock.shard = shard;
        sock.conn = conn;
        sock.outbox = Some(outbox);
        if sock.gone {
            // The UA hung up while its socket was in transit.
            self.shards[shard].on_closed(conn);
            return;
        }
        self.shards[shard].on_adopted(conn, &socket.hello, false);
    }

    /// Every frame the outboxes let go of (those whose records are durable).
    fn drain_outboxes(&mut self) -> bool {
        let mut moved = false;
        let handles: Vec<ConnId> = self.socks.keys().copied().collect();
        for handle in handles {
            loop {
                let sock = &self.socks[&handle];
                let Some(outbox) = sock.outbox.clone().filter(|_| !sock.paused) else {
                    break;
                };
                let shard = sock.shard;
                let durable = self.logs[shard].durable_lsn();
                let item = match outbox.next(durable) {
                    None | Some(Next::Gated(_)) => break,
                    Some(Next::Item(item)) => item,
                };
                moved = true;
                let received = Received {
                    at_ms: self.now,
                    shard,
                    durable,
                };
                self.receive(handle, item, received);
            }
        }
        moved
    }

    /// What the UA's end sees of one outbox item.
    fn receive(&mut self, handle: ConnId, item: Outgoing, received: Received) {
        let sock = self.socks.get_mut(&handle).expect("known socket");
        match item {
            Outgoing::Text { text, .. } => {
                if sock.gone {
                    return;
                }
                let frame = match serde_json::from_str::<Value>(&text) {
                    Ok(value) => Frame::Json(value),
                    Err(_) => Frame::Text(text),
                };
                sock.frames.push(frame);
                sock.received.push(received);
            }
            Outgoing::Ping => self.ws_pings.push(handle),
            Outgoing::Pong(_) => {
                if !sock.gone {
                    sock.pongs += 1;
                }
            }
            Outgoing::Close { code, .. } => {
                sock.outbox = None;
                sock.closed.get_or_insert(code);
            }
            Outgoing::Abandon => {
                // The server dropped the socket: the UA sees it gone.
                sock.outbox = None;
                sock.gone = true;
            }
            Outgoing::HandOff { shard, hello } => {
                sock.outbox = None;
                let socket = SimSocket { handle, hello };
                self.world
                    .rings
                    .borrow_mut()
                    .push_back((shard, RingMsg::HandOff(socket)));
            }
        }
    }

    fn collect_world(&mut self) -> bool {
        let answers = std::mem::take(&mut *self.world.answers.borrow_mut());
        let answers: Vec<(RequestId, HttpResponse)> = answers
            .into_iter()
            .map(|(request, (response, durable))| {
                self.answered_durable.insert(request, durable);
                (request, response)
            })
            .collect();
        let wakeups = std::mem::take(&mut *self.world.wakeups.borrow_mut());
        let awake = std::mem::take(&mut *self.world.awake.borrow_mut());
        let moved = !(answers.is_empty() && wakeups.is_empty() && awake.is_empty());
        self.replies.extend(answers);
        self.wakeups.extend(wakeups);
        self.awake.extend(awake);
        moved
    }

    /// Makes every shard's appended records durable.
    pub fn commit(&mut self) {
        for log in &self.logs {
            log.commit();
        }
        self.pump();
    }

    /// A group commit of shard `index` that covered its records up to `lsn`
    /// only.
    pub fn commit_to(&mut self, index: usize, lsn: Lsn) {
        self.logs[index].commit_to(lsn);
        self.pump();
    }

    /// Whether the front item of `conn`'s outbox waits for a record to become
    /// durable (holding back everything behind it). Every call that makes
    /// records durable pumps, so an outbox never holds an item that may
    /// leave; `Outbox::next` would take it.
    pub fn blocked(&self, conn: ConnId) -> bool {
        let sock = &self.socks[&conn];
        let Some(outbox) = &sock.outbox else {
            return false;
        };
        match outbox.next(self.logs[sock.shard].durable_lsn()) {
            None => false,
            Some(Next::Gated(_)) => true,
            Some(Next::Item(_)) => panic!("conn {conn}: an item that may leave was not drained"),
        }
    }

    /// Frames the engines addressed to sockets they had already closed or
    /// forgotten (must stay 0).
    pub fn sent_after_close(&self) -> u64 {
        self.shards
            .iter()
            .map(|driver| driver.frames_for_closed_sockets())
            .sum()
    }

    /// Fires due timers on every shard at the current time.
    pub fn tick(&mut self) {
        self.world.now.set(self.now);
        for driver in &mut self.shards {
            driver.on_tick();
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
                .filter_map(|driver| driver.engine().next_deadline())
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
        for driver in &mut self.shards {
            driver.on_broadcast(id, version);
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
        self.world.now.set(self.now);
        let (driver_conn, outbox) = self.shards[shard].open_conn();
        self.socks.insert(
            conn,
            Sock {
                shard,
                conn: driver_conn,
                outbox: Some(outbox),
                ..Sock::default()
            },
        );
        self.shards[shard].on_open(driver_conn, false);
        self.pump();
        conn
    }

    /// The UA sends a text frame.
    pub fn send(&mut self, conn: ConnId, text: &str) {
        self.world.now.set(self.now);
        let sock = &self.socks[&conn];
        let (shard, driver_conn) = (sock.shard, sock.conn);
        if self.shards[shard].has_conn(driver_conn) {
            self.shards[shard].on_text(driver_conn, text);
        }
        self.pump();
    }

    /// A WebSocket ping and then a text frame arrive in one read: the driver
    /// queues the pong before it sees the text (which may hand the socket
    /// to another shard).
    pub fn send_after_ws_ping(&mut self, conn: ConnId, payload: &[u8], text: &str) {
        self.world.now.set(self.now);
        let sock = &self.socks[&conn];
        let (shard, driver_conn) = (sock.shard, sock.conn);
        if self.shards[shard].has_conn(driver_conn) {
            self.shards[shard].on_ping(driver_conn, payload.to_vec());
            self.shards[shard].on_text(driver_conn, text);
        }
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
        sock.outbox = None;
        let (shard, driver_conn) = (sock.shard, sock.conn);
        self.world.now.set(self.now);
        self.shards[shard].on_closed(driver_conn);
        self.pump();
    }

    /// The UA stops (or resumes) reading its socket.
    pub fn set_paused(&mut self, conn: ConnId, paused: bool) {
        self.socks.get_mut(&conn).expect("unknown conn").paused = paused;
        self.pump();
    }

    /// Frames received since the last `take` on this conn.
    pub fn take(&mut self, conn: ConnId) -> Vec<Frame> {
        self.take_received(conn)
            .into_iter()
            .map(|(frame, _)| frame)
            .collect()
    }

    /// Like [`Harness::take`], with when and from where each frame came.
    pub fn take_received(&mut self, conn: ConnId) -> Vec<(Frame, Received)> {
        let sock = self.socks.get_mut(&conn).expect("unknown conn");
        let received = sock.frames[sock.cursor..]
            .iter()
            .cloned()
            .zip(sock.received[sock.cursor..].iter().copied())
            .collect();
        sock.cursor = sock.frames.len();
        received
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
        sock.received.remove(sock.cursor + at);
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
        match self.decode(method, url, headers, body) {
            Err(response) => response,
            Ok(push) => self.deliver_request(push),
        }
    }

    /// `push::decode` of an HTTP request: the request for a shard, or the
    /// answer the decoder gives at once.
    pub fn decode(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<PushRequest, HttpResponse> {
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
        push::decode(&self.decode_context(), &request)
    }

    /// Hands an already decoded request to its owning shard; returns the reply.
    pub fn deliver_request(&mut self, push: PushRequest) -> HttpResponse {
        let owner = push.uaid().shard(self.shards.len());
        self.deliver_request_via(owner, push)
    }

    /// Hands a decoded request to shard `accepting`, which routes it over
    /// the rings when another shard owns it; returns the reply.
    pub fn deliver_request_via(&mut self, accepting: usize, push: PushRequest) -> HttpResponse {
        let request = self.submit_via(accepting, push);
        self.answered_durable.remove(&request);
        self.replies
            .remove(&request)
            .unwrap_or_else(|| panic!("no reply to request {request}"))
    }

    /// Decodes an HTTP request like [`Harness::request`] and hands it to
    /// shard `accepting`: the request's id, its answer still to come (see
    /// [`Harness::submit_via`]), or the decoder's answer.
    pub fn submit_request_via(
        &mut self,
        accepting: usize,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<RequestId, HttpResponse> {
        let push = self.decode(method, url, headers, body)?;
        Ok(self.submit_via(accepting, push))
    }

    /// Like [`Harness::deliver_request_via`], but returns the request's id:
    /// without `auto_commit` the reply may still wait for a commit.
    pub fn submit_via(&mut self, accepting: usize, push: PushRequest) -> RequestId {
        self.submit_all_via(accepting, vec![push])[0]
    }

    /// Hands `pushes` to shard `accepting` in one turn (as a batch of
    /// pipelined requests arrives), then carries out what follows; returns
    /// their ids, in order.
    pub fn submit_all_via(&mut self, accepting: usize, pushes: Vec<PushRequest>) -> Vec<RequestId> {
        self.world.now.set(self.now);
        let mut requests = Vec::with_capacity(pushes.len());
        for push in pushes {
            let request = self.next_request;
            self.next_request += 1;
            if let Err(refusal) = self.shards[accepting].submit_push(push, request) {
                self.replies
                    .insert(request, refusal_response(refusal, false));
            }
            requests.push(request);
        }
        self.pump();
        requests
    }

    /// How many messages crossed the rings so far.
    pub fn ring_messages_sent(&self) -> u64 {
        self.world.ring_messages_sent.get()
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

    /// A crash and restart: every socket is gone, every shard is rebuilt
    /// from what its log kept. With everything committed that is the whole
    /// log; see [`Harness::crash`] for a crash that loses uncommitted records.
    pub fn restart(&mut self) {
        self.crash(&vec![0; self.shards.len()]);
    }

    /// A crash that keeps, of each shard's uncommitted records, the first
    /// `keep_uncommitted[shard]` (a write that reached the disk in part), then
    /// a restart by replay. Ring messages, answers not given and frames not
    /// yet written die with the process.
    pub fn crash(&mut self, keep_uncommitted: &[usize]) {
        for sock in self.socks.values_mut() {
            sock.gone = true;
            sock.outbox = None;
        }
        self.world.rings.borrow_mut().clear();
        self.world.answers.borrow_mut().clear();
        for (log, keep) in self.logs.iter_mut().zip(keep_uncommitted) {
            *log = log.crash(*keep);
        }
        *self.world.logs.borrow_mut() = self.logs.clone();
        let seed = self.rng_seed.wrapping_add(self.now);
        self.shards = (0..self.shards.len())
            .map(|index| self.start_shard(index, seed))
            .collect();
    }

    /// Replaces shard `index`'s log up to its last record with the engine's
    /// snapshot of live state (what compaction writes).
    pub fn compact(&mut self, index: usize) {
        let covers = self.logs[index].last_lsn();
        self.world.now.set(self.now);
        // As production compaction does: expired and empty UAs leave memory
        // too, so the shard and its compacted log agree.
        self.shards[index].start_snapshot();
        let live = self.shards[index].engine().snapshot(self.now);
        futures_lite::future::block_on(self.logs[index].compact(covers, live))
            .expect("compaction of a healthy log");
        // The snapshot made every record it covers durable.
        self.pump();
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
