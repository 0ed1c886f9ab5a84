//! The shard driver: the one place where the engine's actions become
//! effects. It appends records to the store in batches, holds AS answers
//! until their records are durable, queues frames (with the LSN each waits
//! for) in the sockets' outboxes, routes AS requests to the owning shard and
//! answers back, and hands sockets and wakeups to the runtime.
//!
//! It knows no runtime and no socket: the store is a [`RecordLog`], the
//! rest of the world a [`Runtime`]. glommio drives it in production
//! (`net/src/ctx.rs`), the whole-shard simulation with virtual time and an
//! in-memory log (`net/tests/`).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use ahash::AHashMap;

use herald_engine::extended::{self, AppNotification};
use herald_engine::limits::Limits;
use herald_engine::push::{errno, HttpResponse, PushRequest};
use herald_engine::record::Record;
use herald_engine::shard::{close, Action, Shard};
use herald_engine::{ChannelId, ConnId, Lsn, RequestId, Uaid};
use herald_store::{ClaimError, RecordLog};

use super::outbox::{Outbox, Outgoing};
use super::ring::RingMsg;
use super::seam::Runtime;

/// Who waits for an AS request's answer.
enum Origin<W> {
    /// An AS connection of this shard.
    Local(W),
    /// Another shard took the request and waits for this answer on its ring.
    Remote { shard: usize, request: RequestId },
}

/// An answer and who waits for it.
type HeldAnswer<W> = (Origin<W>, HttpResponse);

/// Why a request was refused before it reached its owner (answer 503).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The owner's ring is full.
    RingFull,
    /// This shard already waits for `as_in_flight_per_shard_max` answers.
    TooManyInFlight,
}

pub struct Driver<L: RecordLog, R: Runtime> {
    index: usize,
    shards: usize,
    engine: Shard,
    log: L,
    runtime: R,
    conns: AHashMap<ConnId, Rc<Outbox>>,
    requests: AHashMap<RequestId, Origin<R::Waiter>>,
    /// Answers whose records are not durable yet, by (LSN, arrival).
    held_replies: BTreeMap<(Lsn, u64), HeldAnswer<R::Waiter>>,
    held_count: u64,
    /// The runtime's task that waits for durability on the driver's behalf.
    release_waker: Option<Waker>,
    /// Requests this shard sent to another shard and still awaits.
    remote_in_flight: usize,
    /// Pushes for other shards not sent yet, by owner: those taken in one
    /// turn leave together, one ring message per owner, when the runtime
    /// calls [`Driver::flush_pushes`].
    outgoing: Vec<Vec<(RequestId, PushRequest)>>,
    /// The runtime's task that flushes `outgoing` on the driver's behalf.
    flush_waker: Option<Waker>,
    next_id: u64,
    /// Records of the current engine input, appended as one batch.
    batch: Vec<Record>,
    batch_first_lsn: Lsn,
    store_failure_seen: bool,
    /// Records a cluster store refused (another node took their UA): their
    /// answers are 503s, not the engine's.
    fenced: std::collections::BTreeSet<Lsn>,
    /// Frames the engine addressed to a socket it had closed, handed off or
    /// been told is gone: an engine bug, counted for the tests to check.
    frames_for_closed_sockets: u64,
    outbox_frames_max: usize,
    in_flight_max: usize,
    /// While the engine takes a push: when (`Runtime::now_us`), so that the
    /// frames it sends are stamped for the delivery latency.
    push_taken_us: Option<u64>,
}

impl<L: RecordLog, R: Runtime> Driver<L, R> {
    /// A driver for `engine` (fresh from [`Shard::new`]) over `log`, which
    /// was just opened: `recovered` are the records it replayed, in order.
    pub fn start(
        mut engine: Shard,
        limits: &Limits,
        log: L,
        recovered: &[Record],
        runtime: R,
        index: usize,
        shards: usize,
    ) -> Driver<L, R> {
        for record in recovered {
            engine.apply(record);
        }
        engine.set_next_lsn(log.last_lsn() + 1);
        Driver {
            index,
            shards,
            engine,
            log,
            runtime,
            conns: AHashMap::new(),
            requests: AHashMap::new(),
            held_replies: BTreeMap::new(),
            held_count: 0,
            release_waker: None,
            remote_in_flight: 0,
            outgoing: (0..shards).map(|_| Vec::new()).collect(),
            flush_waker: None,
            next_id: 1,
            batch: Vec::new(),
            batch_first_lsn: 0,
            store_failure_seen: false,
            fenced: std::collections::BTreeSet::new(),
            frames_for_closed_sockets: 0,
            // A hello may legitimately queue every pending message at once;
            // only frames beyond that (and the slack) mean the UA is not reading.
            outbox_frames_max: limits.pending_per_uaid_max + limits.ua_outbox_frames_max.max(1),
            in_flight_max: limits.as_in_flight_per_shard_max,
            push_taken_us: None,
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn engine(&self) -> &Shard {
        &self.engine
    }

    pub fn log(&self) -> &L {
        &self.log
    }

    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    pub fn remote_in_flight(&self) -> usize {
        self.remote_in_flight
    }

    /// AS requests this shard took and has not answered yet.
    pub fn requests_waiting(&self) -> usize {
        self.requests.len() + self.held_replies.len()
    }

    /// A compaction starts: the UAs its snapshot will leave out (not seen
    /// for `ua_expiry_days`, or holding nothing) leave memory too, so both
    /// agree (`Shard::expire_user_agents`). Returns the UAIDs to snapshot.
    pub fn start_snapshot(&mut self) -> Vec<Uaid> {
        let now = self.runtime.now_ms();
        self.engine.expire_user_agents(now);
        self.engine.uaids()
    }

    /// See the field; must stay 0.
    pub fn frames_for_closed_sockets(&self) -> u64 {
        self.frames_for_closed_sockets
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    // ---- UA sockets -----------------------------------------------------

    /// A new UA socket on this shard: its id and the outbox the engine's
    /// frames for it will be queued in.
    pub fn open_conn(&mut self) -> (ConnId, Rc<Outbox>) {
        let conn = self.next_id();
        let outbox = Rc::new(Outbox::default());
        self.conns.insert(conn, outbox.clone());
        (conn, outbox)
    }

    /// Whether the engine still reads from `conn` (it has not closed it or
    /// handed it off).
    pub fn has_conn(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    pub fn on_open(&mut self, conn: ConnId, extended: bool) {
        let now = self.runtime.now_ms();
        if extended {
            self.engine.on_open_extended(now, conn);
        } else {
            self.engine.on_open(now, conn);
        }
        self.run_actions();
    }

    /// A socket another shard handed over, with the message that named it.
    pub fn on_adopted(&mut self, conn: ConnId, hello: &str, extended: bool) {
        let now = self.runtime.now_ms();
        if extended {
            self.engine.on_adopted_extended(now, conn, hello);
        } else {
            self.engine.on_adopted(now, conn, hello);
        }
        self.run_actions();
    }

    pub fn on_text(&mut self, conn: ConnId, text: &str) {
        let now = self.runtime.now_ms();
        self.engine.on_text(now, conn, text);
        self.run_actions();
    }

    /// The socket is gone. Nothing to do if the engine closed it first.
    pub fn on_closed(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            let now = self.runtime.now_ms();
            self.engine.on_closed(now, conn);
            self.run_actions();
        }
    }

    /// The socket broke the WebSocket protocol (or closed cleanly).
    pub fn on_socket_error(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        self.engine.on_socket_error(conn, code, reason);
        self.run_actions();
    }

    /// Answers a WebSocket ping, behind the frames already queued.
    pub fn on_ping(&mut self, conn: ConnId, payload: Vec<u8>) {
        self.queue_for(conn, Outgoing::Pong(payload));
    }

    /// Asks every socket to close (shutdown).
    pub fn close_all(&mut self, code: u16, reason: &'static str) {
        for (_, outbox) in self.conns.drain() {
            outbox.push(Outgoing::Close { code, reason });
        }
    }

    // ---- AS requests ----------------------------------------------------

    /// A decoded push taken by this shard: to the engine if this shard owns
    /// its UAID, else queued for the owner's ring (see
    /// [`Driver::flush_pushes`]). The answer goes to `waiter`.
    pub fn submit_push(&mut self, push: PushRequest, waiter: R::Waiter) -> Result<(), Refusal> {
        let owner = push.uaid().shard(self.shards);
        let request = self.next_id();
        if owner == self.index {
            self.requests.insert(request, Origin::Local(waiter));
            self.take_push(request, push);
            self.run_actions();
            return Ok(());
        }
        if self.remote_in_flight >= self.in_flight_max {
            return Err(Refusal::TooManyInFlight);
        }
        self.requests.insert(request, Origin::Local(waiter));
        self.remote_in_flight += 1;
        self.outgoing[owner].push((request, push));
        if let Some(waker) = self.flush_waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// `Ready` once pushes wait for another shard's ring, else `Pending`
    /// until one does (the waker is woken then).
    pub fn poll_outgoing(&mut self, cx: &Context<'_>) -> Poll<()> {
        if self.outgoing.iter().any(|pushes| !pushes.is_empty()) {
            return Poll::Ready(());
        }
        self.flush_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Sends the queued pushes, one ring message per owner. A full ring
    /// refuses its whole message: those requests are answered 503 at once
    /// (back-pressure, never a queue without end). Returns how many were.
    pub fn flush_pushes(&mut self) -> usize {
        let mut refused = 0;
        for owner in 0..self.outgoing.len() {
            if self.outgoing[owner].is_empty() {
                continue;
            }
            let pushes = std::mem::take(&mut self.outgoing[owner]);
            let message = RingMsg::Pushes {
                origin: self.index,
                pushes,
            };
            let Err(RingMsg::Pushes { pushes, .. }) = self.runtime.try_send(owner, message) else {
                continue;
            };
            for (request, _) in pushes {
                refused += 1;
                self.remote_in_flight = self.remote_in_flight.saturating_sub(1);
                if let Some(origin) = self.requests.remove(&request) {
                    self.deliver(origin, refusal_response(Refusal::RingFull, false));
                }
            }
        }
        refused
    }

    /// An extended-protocol notification for `shard`'s UAs of an app.
    pub fn submit_app_notify(
        &mut self,
        shard: usize,
        channel: ChannelId,
        notification: AppNotification,
        waiter: R::Waiter,
    ) -> Result<(), Refusal> {
        let request = self.next_id();
        if shard == self.index {
            self.requests.insert(request, Origin::Local(waiter));
            let now = self.runtime.now_ms();
            self.engine
                .on_app_notify(now, request, channel, notification);
            self.run_actions();
            return Ok(());
        }
        let message = RingMsg::AppNotify {
            origin: self.index,
            request,
            channel,
            notification,
        };
        self.send_request(shard, request, message, waiter)
    }

    fn send_request(
        &mut self,
        shard: usize,
        request: RequestId,
        message: RingMsg<R::Socket>,
        waiter: R::Waiter,
    ) -> Result<(), Refusal> {
        if self.runtime.try_send(shard, message).is_err() {
            // A full ring is back-pressure, never a queue without end.
            return Err(Refusal::RingFull);
        }
        self.requests.insert(request, Origin::Local(waiter));
        self.remote_in_flight += 1;
        Ok(())
    }

    /// An operator changed a broadcast (here or on another shard).
    pub fn on_broadcast(&mut self, id: &str, version: &str) {
        self.engine.on_broadcast(id, version);
        self.run_actions();
    }

    /// A message from another shard's ring. A socket handed over is given
    /// back: adopting it is the runtime's job.
    pub fn on_ring(&mut self, message: RingMsg<R::Socket>) -> Option<R::Socket> {
        match message {
            RingMsg::HandOff(socket) => return Some(socket),
            RingMsg::Pushes { origin, pushes } => {
                for (request, push) in pushes {
                    let local = self.take_remote_request(origin, request);
                    self.take_push(local, push);
                    self.run_actions();
                }
            }
            RingMsg::AppNotify {
                origin,
                request,
                channel,
                notification,
            } => {
                let local = self.take_remote_request(origin, request);
                let now = self.runtime.now_ms();
                self.engine.on_app_notify(now, local, channel, notification);
            }
            RingMsg::Broadcast { id, version } => self.engine.on_broadcast(&id, &version),
            RingMsg::Displaced { uaid, nonce } => self.displaced(uaid, &nonce),
            RingMsg::Replies(replies) => {
                for (request, response) in replies {
                    self.remote_in_flight = self.remote_in_flight.saturating_sub(1);
                    if let Some(Origin::Local(waiter)) = self.requests.remove(&request) {
                        self.runtime.answer(waiter, response);
                    }
                }
            }
        }
        self.run_actions();
        None
    }

    /// The engine takes a push this shard owns; the frames it sends to the
    /// UA (a connected one's notification) carry the moment, and leave
    /// with the actions run right after.
    fn take_push(&mut self, request: RequestId, push: PushRequest) {
        let now = self.runtime.now_ms();
        self.push_taken_us = Some(self.runtime.now_us());
        self.engine.on_push(now, request, push);
    }

    /// A request another shard sent here: its local id, under which the
    /// answer goes back to `origin`.
    fn take_remote_request(&mut self, origin: usize, request: RequestId) -> RequestId {
        let local = self.next_id();
        let from = Origin::Remote {
            shard: origin,
            request,
        };
        self.requests.insert(local, from);
        local
    }

    // ---- time and durability ----------------------------------------------

    /// The engine's timers; also notices a store that failed since (or, a
    /// cluster store, came back).
    pub fn on_tick(&mut self) {
        let failed = self.log.failed();
        if failed != self.store_failure_seen {
            self.store_failure_seen = failed;
            if failed {
                tracing::error!(shard = self.index, "store failed: refusing writes");
                self.engine.on_store_failed();
            } else {
                tracing::info!(shard = self.index, "store reachable again: taking writes");
                self.engine.on_store_recovered();
            }
        }
        if failed {
            // Held answers get their 503 now, whether or not the store's
            // waiters return (a cluster store's wait out an outage).
            self.on_durable();
        }
        let now = self.runtime.now_ms();
        self.engine.on_tick(now);
        self.run_actions();
    }

    /// The lowest LSN an answer waits for, or `Pending` until one does (the
    /// waker is woken when an answer is held).
    pub fn poll_reply_gate(&mut self, cx: &Context<'_>) -> Poll<Lsn> {
        match self.held_replies.keys().next() {
            Some((lsn, _)) => Poll::Ready(*lsn),
            None => {
                self.release_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// The store made progress (or failed): answers whose records are now
    /// durable leave; after a failure every held answer is a 503.
    pub fn on_durable(&mut self) {
        self.take_fenced();
        let durable = self.log.durable_lsn();
        let failed = self.log.failed();
        // Answers for other shards leave together, one ring message each.
        let mut remote: Vec<Vec<(RequestId, HttpResponse)>> = Vec::new();
        while let Some(entry) = self.held_replies.first_entry() {
            let (lsn, _) = *entry.key();
            if lsn > durable && !failed {
                break;
            }
            let (origin, response) = entry.remove();
            let response = if lsn <= durable && !self.fenced.contains(&lsn) {
                response
            } else {
                HttpResponse::error(503, errno::STORAGE_FAILED, "storage unavailable")
            };
            match origin {
                Origin::Local(waiter) => self.runtime.answer(waiter, response),
                Origin::Remote { shard, request } => {
                    remote.resize_with(remote.len().max(shard + 1), Vec::new);
                    remote[shard].push((request, response));
                }
            }
        }
        for (shard, replies) in remote.into_iter().enumerate() {
            if !replies.is_empty() {
                self.runtime.send(shard, RingMsg::Replies(replies));
            }
        }
        // Held answers wait only for LSNs above the durable one.
        self.fenced = self.fenced.split_off(&(durable + 1));
    }

    /// Records the store refused because another node took their UA over:
    /// the UA is no longer this shard's (its socket closes here).
    fn take_fenced(&mut self) {
        let fenced = self.log.take_fenced();
        if fenced.is_empty() {
            return;
        }
        for fenced in fenced {
            self.fenced.insert(fenced.lsn);
            if fenced.lost {
                let uaid = fenced.uaid;
                tracing::info!(shard = self.index, uaid = %uaid.to_hex(), "write fenced: the UA moved to another node");
                self.engine.on_dropped(uaid);
            }
        }
        self.run_actions();
    }

    // ---- cluster residency ----------------------------------------------

    /// A claim the runtime ran for an [`Action::Load`] finished.
    pub fn on_claimed(&mut self, uaid: Uaid, claimed: Result<Vec<Record>, ClaimError>) {
        let now = self.runtime.now_ms();
        match claimed {
            Ok(records) => self.engine.on_loaded(now, uaid, &records),
            Err(ClaimError(reason)) => {
                tracing::warn!(shard = self.index, uaid = %uaid.to_hex(), %reason, "claim failed");
                self.engine.on_load_failed(uaid)
            }
        }
        self.run_actions();
    }

    /// Another node displaced the claim `nonce` on `uaid` (it told this node
    /// so): the shard that holds the UA lets go, if that claim is still its
    /// current one (it may have claimed the UA again since).
    pub fn on_displaced(&mut self, uaid: Uaid, nonce: String) {
        let holder = uaid.shard(self.shards);
        if holder == self.index {
            self.displaced(uaid, &nonce);
            self.run_actions();
        } else {
            self.runtime
                .send(holder, RingMsg::Displaced { uaid, nonce });
        }
    }

    fn displaced(&mut self, uaid: Uaid, nonce: &str) {
        if self.log.displaced(uaid, nonce) {
            self.engine.on_dropped(uaid);
        }
    }

    // ---- actions ----------------------------------------------------------

    fn run_actions(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            let action = match action {
                Action::Append { lsn, record } => {
                    if self.batch.is_empty() {
                        self.batch_first_lsn = lsn;
                    }
                    self.batch.push(record);
                    continue;
                }
                other => other,
            };
            // Every effect comes after the records the engine appended
            // before asking for it.
            self.append_batch();
            match action {
                Action::Append { .. } => unreachable!("batched above"),
                Action::Send { conn, after, text } => {
                    let pushed_us = self.push_taken_us;
                    let frame = Outgoing::Text {
                        after,
                        text,
                        pushed_us,
                    };
                    self.engine_frame(conn, frame)
                }
                Action::WsPing { conn } => self.engine_frame(conn, Outgoing::Ping),
                Action::Close { conn, code, reason } => {
                    if let Some(outbox) = self.conns.remove(&conn) {
                        // The last frame: queued even past the bound.
                        outbox.push(Outgoing::Close { code, reason });
                    }
                }
                Action::HandOff { conn, shard, hello } => {
                    if let Some(outbox) = self.conns.remove(&conn) {
                        // The socket's task carries it out after the frames before it.
                        outbox.push(Outgoing::HandOff { shard, hello });
                    }
                }
                Action::Reply {
                    request,
                    after,
                    response,
                } => self.reply(request, after, response),
                Action::Wakeup {
                    uaid,
                    target,
                    urgency,
                } => self.runtime.wakeup(uaid, target, urgency),
                Action::Awake { uaid } => self.runtime.awake(uaid),
                Action::Load { uaid } => {
                    let claim = self.log.claim(uaid);
                    self.runtime.load(uaid, claim);
                }
                Action::Release { uaid } => self.log.release(uaid),
            }
        }
        self.append_batch();
        self.push_taken_us = None;
    }

    fn append_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let expected_first = self.log.last_lsn() + 1;
        match self.log.append_batch(&self.batch) {
            Ok(last) => {
                // The engine names LSNs in its actions; they must be the store's.
                assert_eq!(
                    (
                        self.batch_first_lsn,
                        self.batch_first_lsn + self.batch.len() as Lsn - 1
                    ),
                    (expected_first, last),
                    "shard {}: engine and store disagree on LSNs",
                    self.index
                );
            }
            Err(error) => {
                tracing::error!(shard = self.index, %error, "store append failed; refusing writes");
                self.store_failure_seen = true;
                self.engine.on_store_failed();
            }
        }
        self.batch.clear();
    }

    fn engine_frame(&mut self, conn: ConnId, item: Outgoing) {
        if !self.conns.contains_key(&conn) {
            self.frames_for_closed_sockets += 1;
            return;
        }
        self.queue_for(conn, item);
    }

    /// Queues an item for a socket. A UA that does not read its frames fills
    /// its bounded outbox and is disconnected rather than buffered without end.
    fn queue_for(&mut self, conn: ConnId, item: Outgoing) {
        let Some(outbox) = self.conns.get(&conn) else {
            return;
        };
        if outbox.len() < self.outbox_frames_max {
            outbox.push(item);
            return;
        }
        tracing::warn!(shard = self.index, conn, "UA outbox full; disconnecting");
        outbox.abandon();
        self.conns.remove(&conn);
        let now = self.runtime.now_ms();
        self.engine.on_closed(now, conn);
    }

    fn reply(&mut self, request: RequestId, after: Option<Lsn>, response: HttpResponse) {
        let Some(origin) = self.requests.remove(&request) else {
            return;
        };
        match after.filter(|lsn| *lsn > self.log.durable_lsn()) {
            None => self.deliver(origin, response),
            Some(lsn) => {
                self.held_count += 1;
                self.held_replies
                    .insert((lsn, self.held_count), (origin, response));
                if let Some(waker) = self.release_waker.take() {
                    waker.wake();
                }
            }
        }
    }

    fn deliver(&mut self, origin: Origin<R::Waiter>, response: HttpResponse) {
        match origin {
            // The waiter may have gone (client hung up); nothing to do then.
            Origin::Local(waiter) => self.runtime.answer(waiter, response),
            Origin::Remote { shard, request } => self
                .runtime
                .send(shard, RingMsg::Replies(vec![(request, response)])),
        }
    }
}

/// The answer an AS gets when its request was refused before reaching the
/// owning shard.
pub fn refusal_response(refusal: Refusal, extended_protocol: bool) -> HttpResponse {
    if extended_protocol {
        return extended::as_error(503, "Try again later");
    }
    match refusal {
        Refusal::RingFull => HttpResponse::overloaded("shard ring full; retry shortly"),
        Refusal::TooManyInFlight => {
            HttpResponse::overloaded("too many requests in flight; retry shortly")
        }
    }
}

/// The close code for a socket whose frames can never be made durable.
pub const STORE_FAILED_CLOSE: (u16, &str) = (close::INTERNAL, "storage unavailable");
