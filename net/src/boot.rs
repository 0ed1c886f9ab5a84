//! One shard's life on glommio: serve the admin listener, open its WAL and
//! replay it into the driver, join the ring mesh, accept on the UA and AS
//! listeners, tick the engine's timers and publish metrics, and drain on
//! shutdown.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_lite::future;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::spawn_local;
use glommio::timer::sleep;
use rand::SeedableRng;
use tracing::Instrument;

use herald_engine::identity::Keys;
use herald_engine::record::Record;
use herald_engine::shard::{close, Shard, ShardConfig, Stats};
use herald_store::cluster::{ClusterLog, ClusterLogOptions, SCRIPTS};
use herald_store::redis::{ClusterClient, RedisConfig};
use herald_store::LogOptions;
use herald_store::RecordLog;

use crate::cluster::ClusterNode;
use crate::compaction::{maybe_compact, Compaction};
use crate::ctx::{Ctx, ShardRing};
use crate::health::ShardState;
use crate::metrics::ShardSnapshot;
use crate::node_link::NodeLink;
use crate::process::shared_listener;
use crate::rate_window::RateWindow;
use crate::shard::Driver;
use crate::shared::Shared;
use crate::store::ShardStore;
use crate::{admin_conn, as_conn, ua_conn, ClusterConfig, WakeupRoute};

/// How often the engine's timers are checked and metrics published.
const TICK: Duration = Duration::from_millis(50);
const PUBLISH_EVERY_TICKS: u32 = 20;
/// On shutdown: how long in-flight AS requests and close frames may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The shard's root task: open the WAL, bind, serve until shutdown.
pub async fn run(
    index: usize,
    shared: Arc<Shared>,
    mesh: MeshBuilder<ShardRing, Full>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    // First, so that readiness can be asked while the WAL replays.
    match shared_listener(shared.config.admin_listen) {
        Ok(admin) => {
            let kind = Listener::Admin(shared.clone());
            spawn_local(accept_loop(index, admin, kind)).detach();
        }
        Err(error) => {
            let _ = ready.send(Err(format!(
                "cannot listen on {}: {error}",
                shared.config.admin_listen
            )));
            return;
        }
    }
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
        resident_only: config.cluster.is_some(),
    };
    let engine = Shard::new(
        engine_config,
        keys.clone(),
        rand::rngs::StdRng::from_entropy(),
    );
    let opened = match &config.cluster {
        // Its log lines (replay progress) name the shard.
        None => {
            open_wal(index, &shared)
                .instrument(tracing::info_span!("wal", shard = index))
                .await
        }
        Some(cluster) => open_cluster(index, &shared, cluster).await,
    };
    let (journal, recovered, cluster) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let senders = Rc::new(senders);
    let link = cluster.as_ref().map(|cluster| cluster.link.clone());
    let (runtime, claims) = Ctx::runtime(index, senders.clone(), &shared, link);
    let mut driver = Driver::start(
        engine,
        &config.limits,
        journal.clone(),
        &recovered,
        runtime,
        index,
        config.shards,
    );
    if config.cluster.is_none() {
        for (id, version) in crate::broadcasts::load(&config.data_dir) {
            driver.on_broadcast(&id, &version);
        }
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
    let ctx = Rc::new(Ctx::new(
        index,
        shared.clone(),
        keys,
        driver,
        journal,
        cluster,
        senders,
    ));
    let node_listener = match &config.cluster {
        Some(cluster) => match shared_listener(cluster.node_listen) {
            Ok(listener) => Some(listener),
            Err(error) => {
                let _ = ready.send(Err(format!(
                    "cannot listen on {}: {error}",
                    cluster.node_listen
                )));
                return;
            }
        },
        None => None,
    };
    let fed = ctx.clone();
    spawn_local(async move {
        while let Some((uaid, claimed)) = claims.recv().await {
            fed.with_driver(|driver| driver.on_claimed(uaid, claimed));
        }
    })
    .detach();
    let mut receivers = receivers;
    for (_, receiver) in receivers.streams() {
        let ctx = ctx.clone();
        spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                let handed_off = ctx.with_driver(|driver| driver.on_ring(message));
                if let Some(socket) = handed_off {
                    ua_conn::adopt(&ctx, socket);
                }
            }
        })
        .detach();
    }
    let writer = ctx.journal.clone();
    spawn_local(async move { writer.run_writer(index).await }).detach();
    spawn_local(release_answers(ctx.clone())).detach();
    spawn_local(flush_pushes(ctx.clone())).detach();
    spawn_local(crate::broadcasts::follow_cluster(ctx.clone())).detach();
    let _ = ready.send(Ok(()));
    // Accept only once every shard has replayed its log: a UA handed to, or an
    // AS request routed to, a shard still replaying would wait on it.
    shared.states.set(index, ShardState::Serving);
    while !shared.states.all_replayed() {
        if shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
        sleep(TICK).await;
    }
    spawn_local(accept_loop(index, ua_listener, Listener::Ua(ctx.clone()))).detach();
    spawn_local(accept_loop(index, as_listener, Listener::As(ctx.clone()))).detach();
    if let Some(listener) = node_listener {
        spawn_local(accept_loop(index, listener, Listener::Node(ctx.clone()))).detach();
    }
    tick_until_shutdown(&ctx).await;
    drain(&ctx).await;
}

/// A listener and what its connections need.
enum Listener {
    Ua(Rc<Ctx>),
    As(Rc<Ctx>),
    /// Cluster mode: other nodes.
    Node(Rc<Ctx>),
    Admin(Arc<Shared>),
}

impl Listener {
    fn shared(&self) -> &Shared {
        match self {
            Listener::Ua(ctx) | Listener::As(ctx) | Listener::Node(ctx) => &ctx.shared,
            Listener::Admin(shared) => shared,
        }
    }
}

async fn accept_loop(index: usize, listener: TcpListener, kind: Listener) {
    let shared = kind.shared();
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if shared.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                let _ = stream.set_nodelay(true);
                match &kind {
                    // Their client's address is known once a trusted
                    // proxy's PROXY header is read, in the connection's task.
                    Listener::Ua(ctx) => spawn_local(ua_conn::serve(ctx.clone(), stream)),
                    Listener::As(ctx) => spawn_local(as_conn::serve(ctx.clone(), stream)),
                    Listener::Node(ctx) => {
                        spawn_local(crate::node_conn::serve(ctx.clone(), stream))
                    }
                    Listener::Admin(shared) => {
                        let max = shared.config.limits.connections_per_ip_max;
                        let slot = match stream.peer_addr() {
                            Ok(peer) => shared.connections_per_ip.acquire(peer.ip(), max),
                            Err(_) => continue,
                        };
                        let Ok(slot) = slot else {
                            shared.metrics.error(index, "connections_per_ip", 1);
                            continue; // dropping the stream closes it
                        };
                        let shared = shared.clone();
                        spawn_local(async move {
                            admin_conn::serve(shared, stream).await;
                            drop(slot);
                        })
                    }
                }
                .detach();
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = index, %error, "accept failed");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn tick_until_shutdown(ctx: &Rc<Ctx>) {
    let mut ticks = 0u32;
    let mut rates = RateWindow::default();
    let mut published = publish(ctx, &Stats::default(), &mut rates);
    let mut store_failure_seen = false;
    let compaction = Rc::new(Compaction::default());
    while !ctx.shared.shutdown.load(Ordering::Relaxed) {
        let tick_started = std::time::Instant::now();
        sleep(TICK).await;
        if compaction.running.get() {
            let late = tick_started.elapsed().saturating_sub(TICK);
            compaction.stall.set(compaction.stall.get().max(late));
        }
        let failed = ctx.journal.failed();
        if failed != store_failure_seen {
            store_failure_seen = failed;
            let state = match (failed, ctx.journal.is_cluster()) {
                (false, _) => ShardState::Serving,
                (true, false) => ShardState::StoreFailed,
                (true, true) => ShardState::StoreUnreachable,
            };
            if failed {
                ctx.shared.metrics.error(ctx.index, "store_failed", 1);
            }
            ctx.shared.states.set(ctx.index, state);
        }
        ctx.with_driver(|driver| driver.on_tick());
        ticks += 1;
        if ticks.is_multiple_of(PUBLISH_EVERY_TICKS) {
            published = publish(ctx, &published, &mut rates);
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

/// Publishes the shard's state; `rates` holds its notification counts of
/// the last minute, for the rates `/about` shows.
fn publish(ctx: &Ctx, previous: &Stats, rates: &mut RateWindow<2>) -> Stats {
    let driver = ctx.driver.borrow();
    let engine = driver.engine();
    let wal = ctx.journal.stats();
    let counts = [
        engine.stats().notifications_in,
        engine.stats().notifications_out,
    ];
    let [in_per_s, out_per_s] = rates.sample(std::time::Instant::now(), counts);
    let snapshot = ShardSnapshot {
        connections: engine.connections() as i64,
        user_agents: engine.user_agents() as i64,
        asleep: engine.asleep() as i64,
        pending: engine.pending_messages() as i64,
        notifications_in: counts[0],
        notifications_out: counts[1],
        in_per_s,
        out_per_s,
        wal_bytes: wal_size_bytes(ctx) as i64,
    };
    let stats = engine.stats().clone();
    ctx.shared
        .metrics
        .publish_wal(ctx.index, wal.batches_synced, wal.records_synced);
    if let (Some(store), Some(node)) = (ctx.journal.cluster_stats(), &ctx.cluster) {
        let events = [
            ("batches", store.batches),
            ("calls", store.calls),
            ("claims", store.claims),
            ("failed_batches", store.failed_batches),
            ("fenced_writes", store.fenced_writes),
            ("forwards", node.forwards.get()),
            ("forward_failures", node.forward_failures.get()),
        ];
        ctx.shared.metrics.publish_cluster(ctx.index, &events);
    }
    ctx.shared.metrics.publish_as_requests(&ctx.meters);
    ctx.shared.metrics.publish(
        ctx.index,
        &snapshot,
        &stats,
        previous,
        driver.remote_in_flight() as i64,
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
    while ctx.driver.borrow().requests_waiting() > 0 && std::time::Instant::now() < deadline {
        sleep(TICK).await;
    }
    ctx.with_driver(|driver| driver.close_all(close::GOING_AWAY, "server shutting down"));
    while ua_conn::open_sockets() > 0 && std::time::Instant::now() < deadline {
        sleep(TICK).await;
    }
    if let Err(error) = ctx.journal.flush().await {
        tracing::error!(shard = ctx.index, %error, "final WAL flush failed");
    }
    ctx.journal.close();
}

/// Gives AS answers back once their records are durable: waits for the
/// lowest LSN an answer is held for, then lets the driver release what the
/// store made durable (one task for every answer, none per request).
async fn release_answers(ctx: Rc<Ctx>) {
    loop {
        let gate = future::poll_fn(|cx| ctx.driver.borrow_mut().poll_reply_gate(cx)).await;
        // A failure is the driver's to answer (503s); it reads it from the log.
        let _ = ctx.journal.wait_durable(gate).await;
        ctx.with_driver(|driver| driver.on_durable());
    }
}

/// Sends the pushes this shard took for others: the task runs once the
/// tasks that took them yield, so a batch of pipelined requests (or of
/// HTTP/2 streams) crosses to each owner in one ring message.
async fn flush_pushes(ctx: Rc<Ctx>) {
    loop {
        future::poll_fn(|cx| ctx.driver.borrow_mut().poll_outgoing(cx)).await;
        let refused = ctx.with_driver(|driver| driver.flush_pushes());
        ctx.shared
            .metrics
            .error(ctx.index, "ring_full", refused as u64);
    }
}

/// What a shard opens before it serves: its store, the records to replay
/// into its engine, and in cluster mode what the cluster needs besides.
type Opened = (ShardStore, Vec<Record>, Option<ClusterNode>);

/// A single node: the shard's WAL, replayed.
async fn open_wal(index: usize, shared: &Shared) -> Result<Opened, String> {
    let config = &shared.config;
    let fsyncs = shared.metrics.wal_fsync(index);
    let options = LogOptions {
        fsync: config.fsync,
        on_sync: Some(Rc::new(move |took: Duration| {
            fsyncs.observe(took.as_secs_f64())
        })),
        ..LogOptions::default()
    };
    let (journal, recovered) = herald_store::open_shard(&config.data_dir, index, options)
        .await
        .map_err(|error| {
            format!(
                "shard {index}: cannot open its WAL in {}: {error}",
                config.data_dir.display()
            )
        })?;
    let report = &recovered.report;
    if report.records > 0 || report.cut.is_some() {
        tracing::info!(
            shard = index,
            records = report.records,
            segments = report.segments,
            bytes = report.bytes,
            cut = ?report.cut,
            "WAL replayed"
        );
    }
    Ok((ShardStore::Wal(journal), recovered.records, None))
}

/// A cluster node: two Redis clients of its own (writes, and lookups of
/// where UAs are held), nothing to replay (a UA is loaded when named).
async fn open_cluster(
    index: usize,
    shared: &Shared,
    cluster: &ClusterConfig,
) -> Result<Opened, String> {
    let config = &shared.config;
    let mut redis = RedisConfig::new(cluster.seeds.clone());
    redis.replicas = cluster.replicas;
    redis.wait_timeout_ms = cluster.wait_timeout_ms;
    redis.pipeline_max = cluster.pipeline_max;
    let unreachable = |error| format!("shard {index}: cannot reach the Redis Cluster: {error}");
    let writer = ClusterClient::connect(redis.clone(), &SCRIPTS)
        .await
        .map_err(unreachable)?;
    let reader = ClusterClient::connect(redis, &[])
        .await
        .map_err(unreachable)?;
    let log = ClusterLog::new(
        writer,
        ClusterLogOptions {
            node_url: cluster.node_url.clone(),
            ua_ttl_ms: config.limits.ua_expiry_ms().unwrap_or(0),
            pipeline_max: cluster.pipeline_max,
        },
        shared.held[index].clone(),
    );
    let link = NodeLink::new(cluster.node_url.clone(), config.keys.node_link_secret());
    let node = ClusterNode::new(reader, link);
    Ok((ShardStore::Cluster(log), Vec::new(), Some(node)))
}
