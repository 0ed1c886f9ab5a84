//! One shard's runtime: its engine, its connections, its rings.
//!
//! Everything here runs on the shard's own executor thread, so state lives in
//! `Rc`/`RefCell` and is never locked. Other shards are reached only through
//! the bounded mesh of [`ShardMsg`] rings.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpListener;
use glommio::spawn_local;
use glommio::timer::sleep;
use rand::SeedableRng;

use herald_engine::identity::Keys;
use herald_engine::push::{errno, HttpResponse, PushRequest};
use herald_engine::shard::{close, Action, Shard, ShardConfig, Stats};
use herald_engine::{ConnId, Lsn, Millis, RequestId};
use herald_store::{DiskLog, LogOptions};

use crate::compaction::{maybe_compact, Compaction};
use crate::metrics::ShardSnapshot;
use crate::process::shared_listener;
use crate::runtime::Shared;
use crate::wakeup::WakeupClient;
use crate::{as_conn, ua_conn, WakeupRoute};

/// What crosses the rings between shards.
pub enum ShardMsg {
    /// A UA socket whose hello named a UAID of the receiving shard.
    HandOff { fd: RawFd, socket: ua_conn::Adopted },
    /// An AS request for a UAID the receiver owns.
    Push {
        origin: usize,
        request: RequestId,
        push: PushRequest,
    },
    /// An AS posted to an extended-protocol app url (SPEC §3.6): every shard
    /// stores it for its own UAs of that app.
    AppNotify {
        origin: usize,
        request: RequestId,
        channel: herald_engine::ChannelId,
        notification: herald_engine::extended::AppNotification,
    },
    /// An operator changed a broadcast on another shard.
    Broadcast { id: String, version: String },
    /// The owner's answer, already durable.
    Reply {
        request: RequestId,
        response: HttpResponse,
    },
}

/// What a UA connection's task is asked to do, in order.
pub enum Outgoing {
    /// A text frame, held until `after` is durable.
    Text {
        after: Option<Lsn>,
        text: String,
    },
    Ping,
    Pong(Vec<u8>),
    Close {
        code: u16,
        reason: &'static str,
    },
    /// Move the socket to the shard that owns its UA, with the message that
    /// named it; queued last, after whatever frames came before.
    HandOff {
        shard: usize,
        hello: String,
    },
}

/// The items queued for one UA socket, shared by the shard (which queues)
/// and the socket's task (which carries them out). One small allocation per
/// socket: unlike a glommio channel it keeps no queue capacity while empty,
/// and the hand-off travels in the queue instead of a slot of its own.
#[derive(Default)]
pub struct Outbox {
    items: RefCell<VecDeque<Outgoing>>,
    /// The socket's task, waiting for an item.
    waker: Cell<Option<Waker>>,
}

impl Outbox {
    fn push(&self, item: Outgoing) {
        self.items.borrow_mut().push_back(item);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn len(&self) -> usize {
        self.items.borrow().len()
    }

    /// The next item, if any. The queue's memory goes back as soon as it is
    /// drained: idle sockets hold none.
    pub fn pop(&self) -> Option<Outgoing> {
        let mut items = self.items.borrow_mut();
        let item = items.pop_front();
        if items.is_empty() {
            *items = VecDeque::new();
        }
        item
    }

    /// The next item if it is a frame to write; a hand-off stays queued for
    /// the socket's task to carry out.
    pub fn pop_frame(&self) -> Option<Outgoing> {
        let is_frame = self
            .items
            .borrow()
            .front()
            .is_some_and(|item| !matches!(item, Outgoing::HandOff { .. }));
        if is_frame {
            self.pop()
        } else {
            None
        }
    }

    /// The next item, or `Pending` with the task's waker kept for [`Outbox::push`].
    pub fn poll_pop(&self, cx: &Context<'_>) -> Poll<Outgoing> {
        match self.pop() {
            Some(item) => Poll::Ready(item),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

/// The shard's side of one UA socket.
pub struct ConnHandle {
    pub outbox: Rc<Outbox>,
    pub fd: RawFd,
}

impl ConnHandle {
    /// Queues a frame; false when the outbox already holds `frames_max` (the
    /// UA is not reading).
    pub fn queue(&self, item: Outgoing, frames_max: usize) -> bool {
        let room = self.outbox.len() < frames_max;
        if room {
            self.outbox.push(item);
        }
        room
    }

    /// Queues the close frame even past the bound: it is the last one.
    pub fn queue_close(&self, code: u16, reason: &'static str) {
        self.outbox.push(Outgoing::Close { code, reason });
    }

    /// Hands the socket to `shard`: the last item its task will see.
    fn queue_hand_off(&self, shard: usize, hello: String) {
        self.outbox.push(Outgoing::HandOff { shard, hello });
    }
}

/// Who waits for an AS request's answer.
pub enum Origin {
    Local(LocalSender<HttpResponse>),
    Remote { shard: usize, request: RequestId },
}

pub struct Ctx {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub keys: Keys,
    pub engine: RefCell<Shard>,
    pub conns: RefCell<AHashMap<ConnId, ConnHandle>>,
    requests: RefCell<AHashMap<RequestId, Origin>>,
    /// Requests this shard sent to another shard and still awaits.
    pub remote_in_flight: Cell<usize>,
    next_id: Cell<u64>,
    pub senders: Senders<ShardMsg>,
    pub journal: DiskLog,
    /// `GET /token` requests per source address in the current minute.
    token_requests: RefCell<AHashMap<std::net::IpAddr, (Millis, u32)>>,
    pub wakeups: WakeupClient,
}

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as Millis)
}

/// How often the engine's timers are checked and metrics published.
const TICK: Duration = Duration::from_millis(50);
const PUBLISH_EVERY_TICKS: u32 = 20;
/// On shutdown: how long in-flight AS requests and close frames may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

impl Ctx {
    pub fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Runs `input` against the engine, then carries out what it asked for.
    pub fn with_engine<R>(self: &Rc<Ctx>, input: impl FnOnce(&mut Shard, Millis) -> R) -> R {
        let result = input(&mut self.engine.borrow_mut(), now_ms());
        self.run_actions();
        result
    }

    fn run_actions(self: &Rc<Ctx>) {
        loop {
            let action = self.engine.borrow_mut().poll_action();
            let Some(action) = action else { return };
            match action {
                Action::Send { conn, after, text } => {
                    self.to_conn(conn, Outgoing::Text { after, text })
                }
                Action::WsPing { conn } => self.to_conn(conn, Outgoing::Ping),
                Action::Close { conn, code, reason } => {
                    if let Some(handle) = self.conns.borrow_mut().remove(&conn) {
                        handle.queue_close(code, reason);
                    }
                }
                Action::HandOff { conn, shard, hello } => {
                    if let Some(handle) = self.conns.borrow_mut().remove(&conn) {
                        handle.queue_hand_off(shard, hello);
                    }
                }
                Action::Append { lsn, record } => match self.journal.append(&record) {
                    Ok(assigned) => {
                        debug_assert_eq!(assigned, lsn, "engine and WAL disagree on LSNs")
                    }
                    Err(error) => {
                        tracing::error!(shard = self.index, %error, "WAL append failed; refusing writes");
                        self.engine.borrow_mut().on_store_failed();
                    }
                },
                Action::Reply {
                    request,
                    after,
                    response,
                } => self.reply(request, after, response),
                Action::Wakeup {
                    uaid,
                    target,
                    urgency,
                } => self.wakeups.wake(uaid, target, urgency),
                Action::Awake { uaid } => self.wakeups.awake(uaid),
            }
        }
    }

    /// Queues a frame for a socket. A UA that does not read its frames fills
    /// its bounded outbox and is disconnected rather than buffered without end.
    fn to_conn(self: &Rc<Ctx>, conn: ConnId, item: Outgoing) {
        let frames_max = self.outbox_frames_max();
        let stuck = match self.conns.borrow().get(&conn) {
            Some(handle) => (!handle.queue(item, frames_max)).then_some(handle.fd),
            None => None,
        };
        if let Some(fd) = stuck {
            tracing::warn!(shard = self.index, conn, "UA outbox full; disconnecting");
            self.conns.borrow_mut().remove(&conn);
            shutdown_socket(fd);
            self.engine.borrow_mut().on_closed(now_ms(), conn);
        }
    }

    /// How many frames a UA socket's outbox may hold. A hello may
    /// legitimately queue every pending message at once; only frames beyond
    /// that (and the slack) mean the UA is not reading.
    pub fn outbox_frames_max(&self) -> usize {
        let limits = &self.shared.config.limits;
        limits.pending_per_uaid_max + limits.ua_outbox_frames_max.max(1)
    }

    /// Whether `ip` may have another UA token this minute. The table is
    /// bounded: when it is full, a new minute starts for everyone.
    pub fn token_allowed(&self, ip: std::net::IpAddr) -> bool {
        const WINDOW_MS: Millis = 60_000;
        const ADDRESSES_TRACKED_MAX: usize = 100_000;
        let now = now_ms();
        let mut requests = self.token_requests.borrow_mut();
        if requests.len() >= ADDRESSES_TRACKED_MAX {
            requests.clear();
        }
        let (window_start, count) = requests.entry(ip).or_insert((now, 0));
        if now.saturating_sub(*window_start) >= WINDOW_MS {
            *window_start = now;
            *count = 0;
        }
        *count += 1;
        *count <= self.shared.config.limits.tokens_per_ip_per_minute_max
    }

    pub fn register_request(&self, origin: Origin) -> RequestId {
        let request = self.next_id();
        self.requests.borrow_mut().insert(request, origin);
        request
    }

    pub fn forget_request(&self, request: RequestId) {
        self.requests.borrow_mut().remove(&request);
    }

    fn reply(self: &Rc<Ctx>, request: RequestId, after: Option<Lsn>, response: HttpResponse) {
        let Some(origin) = self.requests.borrow_mut().remove(&request) else {
            return;
        };
        match after.filter(|lsn| *lsn > self.journal.durable_lsn()) {
            None => self.deliver(origin, response),
            Some(lsn) => {
                let ctx = self.clone();
                spawn_local(async move {
                    let response = match ctx.journal.wait_durable(lsn).await {
                        Ok(()) => response,
                        Err(_) => {
                            HttpResponse::error(503, errno::STORAGE_FAILED, "storage unavailable")
                        }
                    };
                    ctx.deliver(origin, response);
                })
                .detach();
            }
        }
    }

    fn deliver(self: &Rc<Ctx>, origin: Origin, response: HttpResponse) {
        match origin {
            Origin::Local(sender) => {
                // The waiter may have gone (client hung up); nothing to do then.
                let _ = sender.try_send(response);
            }
            Origin::Remote { shard, request } => {
                let ctx = self.clone();
                spawn_local(async move {
                    // Waits for ring space: the answer must not be dropped.
                    if ctx
                        .senders
                        .send_to(shard, ShardMsg::Reply { request, response })
                        .await
                        .is_err()
                    {
                        tracing::warn!(shard = ctx.index, peer = shard, "reply ring closed");
                    }
                })
                .detach();
            }
        }
    }

    fn on_ring(self: &Rc<Ctx>, message: ShardMsg) {
        match message {
            ShardMsg::HandOff { fd, socket } => {
                // SAFETY: the sending shard dup'ed this fd for us and closed its own copies.
                let stream =
                    unsafe { <glommio::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                ua_conn::adopt(self, stream, socket);
            }
            ShardMsg::Push {
                origin,
                request,
                push,
            } => {
                let local = self.register_request(Origin::Remote {
                    shard: origin,
                    request,
                });
                self.with_engine(|engine, now| engine.on_push(now, local, push));
            }
            ShardMsg::AppNotify {
                origin,
                request,
                channel,
                notification,
            } => {
                let local = self.register_request(Origin::Remote {
                    shard: origin,
                    request,
                });
                self.with_engine(|engine, now| {
                    engine.on_app_notify(now, local, channel, notification)
                });
            }
            ShardMsg::Broadcast { id, version } => {
                self.with_engine(|engine, _| engine.on_broadcast(&id, &version));
            }
            ShardMsg::Reply { request, response } => {
                self.remote_in_flight
                    .set(self.remote_in_flight.get().saturating_sub(1));
                if let Some(Origin::Local(sender)) = self.requests.borrow_mut().remove(&request) {
                    let _ = sender.try_send(response);
                }
            }
        }
    }

    /// A new local waiter for one AS answer.
    pub fn answer_slot() -> (
        LocalSender<HttpResponse>,
        local_channel::LocalReceiver<HttpResponse>,
    ) {
        local_channel::new_bounded(1)
    }
}

/// `shutdown(2)` on a socket some task still holds: its pending reads and
/// writes end, and the task cleans up as for a closed peer.
pub fn shutdown_socket(fd: RawFd) {
    // SAFETY: shutdown on an fd we own a handle to; errors (already closed) are harmless.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// The shard's root task: open the WAL, bind, serve until shutdown.
pub async fn run(
    index: usize,
    shared: Arc<Shared>,
    mesh: MeshBuilder<ShardMsg, Full>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let (senders, receivers) = match mesh.join().await {
        Ok(joined) => joined,
        Err(_) => {
            let _ = ready.send(Err(format!("shard {index}: could not join the shard mesh")));
            return;
        }
    };
    let config = &shared.config;
    let keys = Keys::new(&config.keys);
    let engine_config = ShardConfig {
        index,
        shards: config.shards,
        endpoint_url: config.endpoint_url.clone(),
        limits: config.limits.clone(),
        wakeup_networks: config
            .wakeup_routes
            .iter()
            .filter(|(_, route)| matches!(route, WakeupRoute::Udp | WakeupRoute::Proxy(_)))
            .map(|(network, _)| network.clone())
            .collect(),
    };
    let mut engine = Shard::new(
        engine_config,
        keys.clone(),
        rand::rngs::StdRng::from_entropy(),
    );
    let options = LogOptions {
        fsync: config.fsync,
        ..LogOptions::default()
    };
    let (journal, recovered) =
        match herald_store::open_shard(&config.data_dir, index, options).await {
            Ok(opened) => opened,
            Err(error) => {
                let _ = ready.send(Err(format!(
                    "shard {index}: cannot open its WAL in {}: {error}",
                    config.data_dir.display()
                )));
                return;
            }
        };
    for record in &recovered.records {
        engine.apply(record);
    }
    for (id, version) in crate::broadcasts::load(&config.data_dir) {
        engine.on_broadcast(&id, &version);
    }
    engine.set_next_lsn(journal.last_lsn() + 1);
    let report = &recovered.report;
    if report.records > 0 || report.cut.is_some() {
        tracing::info!(
            shard = index,
            records = report.records,
            segments = report.segments,
            bytes = report.bytes,
            cut = ?report.cut,
            user_agents = engine.user_agents(),
            pending = engine.pending_messages(),
            "WAL replayed"
        );
    }
    drop(recovered);
    let listeners = shared_listener(config.ua_listen)
        .and_then(|ua| Ok((ua, shared_listener(config.as_listen)?)));
    let (ua_listener, as_listener) = match listeners {
        Ok(bound) => bound,
        Err(error) => {
            let _ = ready.send(Err(format!(
                "cannot listen on {} / {}: {error}",
                config.ua_listen, config.as_listen
            )));
            return;
        }
    };
    let ctx = Rc::new(Ctx {
        index,
        shared: shared.clone(),
        keys,
        engine: RefCell::new(engine),
        conns: RefCell::new(AHashMap::new()),
        requests: RefCell::new(AHashMap::new()),
        remote_in_flight: Cell::new(0),
        next_id: Cell::new(1),
        senders,
        journal,
        token_requests: RefCell::new(AHashMap::new()),
        wakeups: shared.wakeups.clone(),
    });
    let mut receivers = receivers;
    for (_, receiver) in receivers.streams() {
        let ctx = ctx.clone();
        spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                ctx.on_ring(message);
            }
        })
        .detach();
    }
    let committer = ctx.journal.clone();
    spawn_local(async move {
        if let Err(error) = committer.run_committer().await {
            tracing::error!(shard = index, %error, "WAL committer stopped");
        }
    })
    .detach();
    let _ = ready.send(Ok(()));
    // Accept only once every shard has replayed its log: a UA handed to, or an
    // AS request routed to, a shard still replaying would wait on it.
    shared.shards_ready.fetch_add(1, Ordering::SeqCst);
    while shared.shards_ready.load(Ordering::SeqCst) < shared.config.shards {
        if shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
        sleep(TICK).await;
    }
    spawn_local(accept_loop(ctx.clone(), ua_listener, Listener::Ua)).detach();
    spawn_local(accept_loop(ctx.clone(), as_listener, Listener::As)).detach();
    tick_until_shutdown(&ctx).await;
    drain(&ctx).await;
}

#[derive(Clone, Copy)]
enum Listener {
    Ua,
    As,
}

async fn accept_loop(ctx: Rc<Ctx>, listener: TcpListener, kind: Listener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if ctx.shared.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                let _ = stream.set_nodelay(true);
                let max = ctx.shared.config.limits.connections_per_ip_max;
                let slot = match stream.peer_addr() {
                    Ok(peer) => ctx.shared.connections_per_ip.acquire(peer.ip(), max),
                    Err(_) => continue,
                };
                let Ok(slot) = slot else {
                    ctx.shared.metrics.error(ctx.index, "connections_per_ip", 1);
                    continue; // dropping the stream closes it
                };
                let task_ctx = ctx.clone();
                match kind {
                    Listener::Ua => spawn_local(ua_conn::serve(task_ctx, stream, slot)),
                    Listener::As => spawn_local(async move {
                        as_conn::serve(task_ctx, stream).await;
                        drop(slot);
                    }),
                }
                .detach();
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = ctx.index, %error, "accept failed");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn tick_until_shutdown(ctx: &Rc<Ctx>) {
    let mut ticks = 0u32;
    let mut published = publish(ctx, &Stats::default());
    let mut store_failure_seen = false;
    let compaction = Rc::new(Compaction::default());
    while !ctx.shared.shutdown.load(Ordering::Relaxed) {
        let tick_started = std::time::Instant::now();
        sleep(TICK).await;
        if compaction.running.get() {
            let late = tick_started.elapsed().saturating_sub(TICK);
            compaction.stall.set(compaction.stall.get().max(late));
        }
        if !store_failure_seen && ctx.journal.failed() {
            store_failure_seen = true;
            tracing::error!(
                shard = ctx.index,
                "WAL failed: refusing writes until restart"
            );
            ctx.shared.metrics.error(ctx.index, "store_failed", 1);
            ctx.engine.borrow_mut().on_store_failed();
        }
        ctx.with_engine(|engine, now| engine.on_tick(now));
        ticks += 1;
        if ticks.is_multiple_of(PUBLISH_EVERY_TICKS) {
            published = publish(ctx, &published);
            maybe_compact(ctx, &compaction);
        }
    }
}

/// The shard's WAL on disk (segments and snapshots). A few `stat` calls once
/// a second: cheap enough for the shard thread.
fn wal_size_bytes(ctx: &Ctx) -> u64 {
    let dir = herald_store::shard_dir(&ctx.shared.config.data_dir, ctx.index);
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.metadata().ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

fn publish(ctx: &Ctx, previous: &Stats) -> Stats {
    let engine = ctx.engine.borrow();
    let wal = ctx.journal.stats();
    let snapshot = ShardSnapshot {
        connections: engine.connections() as i64,
        user_agents: engine.user_agents() as i64,
        asleep: engine.asleep() as i64,
        pending: engine.pending_messages() as i64,
        notifications_in: engine.stats().notifications_in,
        notifications_out: engine.stats().notifications_out,
        wal_bytes: wal_size_bytes(ctx) as i64,
    };
    let stats = engine.stats().clone();
    ctx.shared
        .metrics
        .publish_wal(ctx.index, wal.batches_synced, wal.records_synced);
    ctx.shared.metrics.publish(
        ctx.index,
        &snapshot,
        &stats,
        previous,
        ctx.remote_in_flight.get() as i64,
    );
    if let Ok(mut slot) = ctx.shared.snapshots[ctx.index].lock() {
        *slot = snapshot;
    }
    stats
}

/// SIGTERM: stop accepting (the accept loops see the flag), let in-flight AS
/// requests finish, close UA sockets with 1001, and give the writers a moment.
async fn drain(ctx: &Rc<Ctx>) {
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    while !ctx.requests.borrow().is_empty() && std::time::Instant::now() < deadline {
        sleep(TICK).await;
    }
    let conns: Vec<ConnId> = ctx.conns.borrow().keys().copied().collect();
    for conn in conns {
        if let Some(handle) = ctx.conns.borrow_mut().remove(&conn) {
            handle.queue_close(close::GOING_AWAY, "server shutting down");
        }
    }
    while ua_conn::open_sockets() > 0 && std::time::Instant::now() < deadline {
        sleep(TICK).await;
    }
    if let Err(error) = ctx.journal.flush().await {
        tracing::error!(shard = ctx.index, %error, "final WAL flush failed");
    }
    ctx.journal.close();
}
