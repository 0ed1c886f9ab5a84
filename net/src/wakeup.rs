//! The wakeup core (SPEC §5, §8): one dedicated executor that wakes sleeping
//! UAs with a UDP datagram, or through a wakeup proxy's HTTP API.
//!
//! ```text
//!  shard 0 ─┐ WakeupClient::wake/awake          wakeup core (own executor)
//!  shard 1 ─┼──► ArrayQueue (bounded, MPSC) ──► drain ─► Planner ─► sendmmsg (v4, v6)
//!  shard n ─┘     + doorbell datagram                    (coalesce,  └► proxy tasks
//!                   when the core is parked               retry, rate)   (HTTP/1.1 keep-alive)
//! ```
//!
//! Why this shape:
//! - Shards must never wait for the wakeup core. [`WakeupClient`] pushes into a
//!   bounded lock-free ring; when it is full the request is dropped and
//!   counted (`herald_wakeups_failed_total{reason="ring_full"}`), the message
//!   itself is safe in the shard's store and goes out on the UA's next hello.
//! - The client is `Send + Clone` (an `Arc`), so the runtime builds it once and
//!   every shard holds a copy; no per-shard channel set-up is needed.
//! - The core sleeps in io_uring when idle. A shard rings a *doorbell* — one
//!   byte on a connected loopback UDP socket pair — only when the core has
//!   said it is parked, so a busy core costs the shards no syscall at all.
//! - The decisions (coalescing, backoff, urgency order, per-network token
//!   buckets) live in [`herald_engine::wakeup_plan`], without IO, and are unit-tested.
//! - A turn: drain the ring, ask the planner for up to [`BATCH_MAX`] sends,
//!   hand UDP ones to one `sendmmsg` per family, queue proxy ones to their
//!   connection task, publish metrics, then park until the next retry or
//!   token, a doorbell, or [`PARK_MAX`].

use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::LocalSender;
use glommio::timer::sleep;

use herald_engine::wakeup_plan::{Dispatch, Ms, PlanLimits, PlanStats, Planner, WakeOutcome};

use crate::shared::Shared;
use crate::wakeup_client::{Inner, Request, WakeupCore};
use crate::wakeup_http;
use crate::wakeup_metrics::{reason, WakeupMetrics};
use crate::wakeup_udp::{Sent, UdpSender};
use crate::WakeupRoute;

/// Most sends made in one turn (one sendmmsg per family carries them).
const BATCH_MAX: usize = 256;
/// Most ring entries taken per turn, so sends keep flowing under a flood.
const DRAIN_MAX: usize = 4096;
/// The core looks at the shutdown flag at least this often.
const PARK_MAX: Duration = Duration::from_millis(100);

/// Starts the wakeup core on its own executor. It is not pinned: on a small
/// machine it shares a CPU with a shard, and its work is bursty and light.
pub fn spawn(
    shared: Arc<Shared>,
    core: WakeupCore,
    io_memory_bytes: usize,
) -> Result<glommio::ExecutorJoinHandle<()>, String> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("herald-wakeup")
        .io_memory(io_memory_bytes)
        .spawn(move || run(shared, core))
        .map_err(|error| format!("cannot start the wakeup core (is io_uring available?): {error}"))
}

/// Where the sends of one configured route go.
enum Route {
    Udp,
    Proxy(LocalSender<String>),
}

async fn run(shared: Arc<Shared>, core: WakeupCore) {
    // SAFETY: the fd comes from a std UdpSocket we own and give up here.
    let doorbell = unsafe { glommio::net::UdpSocket::from_raw_fd(core.doorbell.into_raw_fd()) };
    let inner = core.inner;
    let config = &shared.config;
    let metrics = Rc::new(shared.metrics.wakeup.clone());
    let origin = Instant::now();
    let now_ms = || origin.elapsed().as_millis() as Ms;
    let secret = config.wakeup_proxy_secret.as_ref();
    let routes: Vec<Route> = config
        .wakeup_routes
        .iter()
        .map(|(_, route)| match route {
            WakeupRoute::Udp => Route::Udp,
            WakeupRoute::Proxy(url) => {
                Route::Proxy(wakeup_http::spawn(url.clone(), secret, metrics.clone()))
            }
        })
        .collect();
    let networks: Vec<(String, usize)> = config
        .wakeup_routes
        .iter()
        .enumerate()
        .map(|(index, (network, _))| (network.clone(), index))
        .collect();
    let mut planner = Planner::new(PlanLimits::from_limits(&config.limits), &networks);
    let mut udp = match UdpSender::new() {
        Ok(udp) => Some(udp),
        Err(error) => {
            tracing::error!(%error, "UDP wakeups disabled");
            None
        }
    };
    let mut published = Published::default();
    let mut batch: Vec<Dispatch> = Vec::with_capacity(BATCH_MAX);
    let mut addrs = Vec::with_capacity(BATCH_MAX);
    let mut udp_batch: Vec<usize> = Vec::with_capacity(BATCH_MAX);
    let mut results = Vec::with_capacity(BATCH_MAX);
    while !shared.shutdown.load(Ordering::Relaxed) {
        let now = now_ms();
        let drained = drain(&inner, &mut planner, &metrics, now);
        batch.clear();
        planner.poll(now, BATCH_MAX, &mut batch);
        addrs.clear();
        udp_batch.clear();
        for (index, dispatch) in batch.iter().enumerate() {
            match routes.get(dispatch.route) {
                Some(Route::Udp) => {
                    udp_batch.push(index);
                    addrs.push(dispatch.addr);
                }
                Some(Route::Proxy(sender)) => {
                    let network = planner.network_key(dispatch.network);
                    let (mcc, mnc) = network.split_once('-').unwrap_or((network, ""));
                    let body = wakeup_http::body(
                        dispatch.addr.ip(),
                        dispatch.addr.port(),
                        mcc,
                        mnc,
                        &dispatch.netid,
                    );
                    if sender.try_send(body).is_err() {
                        // Leave it to the retry timer: re-queueing at once
                        // would spin while the proxy is slow.
                        metrics.failed(reason::PROXY_BUSY, 1);
                    }
                }
                None => metrics.failed(reason::PROXY_IO, 1),
            }
        }
        if !addrs.is_empty() {
            match udp.as_mut() {
                Some(udp) => {
                    let before = udp.syscalls;
                    udp.send_batch(&addrs, &mut results);
                    metrics.udp_batches.inc_by(udp.syscalls - before);
                    let mut ok = 0;
                    let mut failed = 0;
                    for (&index, result) in udp_batch.iter().zip(&results) {
                        match result {
                            Sent::Ok => ok += 1,
                            Sent::Again => planner.unsend(&batch[index]),
                            Sent::Failed => failed += 1,
                        }
                    }
                    metrics.sent("udp", ok);
                    metrics.failed(reason::SEND_ERROR, failed);
                }
                None => metrics.failed(reason::SEND_ERROR, addrs.len() as u64),
            }
        }
        published.publish(&inner, &planner, &metrics);
        if drained == DRAIN_MAX || batch.len() == BATCH_MAX {
            // More is likely ready: let other tasks (proxy calls) run, then go on.
            glommio::executor().yield_task_queue_now().await;
            continue;
        }
        let wait = planner
            .next_deadline(now_ms())
            .map_or(PARK_MAX, |deadline| {
                Duration::from_millis(deadline.saturating_sub(now_ms())).min(PARK_MAX)
            });
        if !wait.is_zero() {
            park(&inner, &doorbell, wait).await;
        }
    }
}

/// Moves ring entries into the planner; returns how many were taken.
fn drain(inner: &Inner, planner: &mut Planner, metrics: &WakeupMetrics, now: Ms) -> usize {
    let mut taken = 0;
    while taken < DRAIN_MAX {
        let Some(request) = inner.ring.pop() else {
            break;
        };
        taken += 1;
        match request {
            Request::Wake {
                uaid,
                target,
                urgency,
            } => match planner.wake(uaid, &target, urgency) {
                WakeOutcome::Queued | WakeOutcome::Coalesced => {}
                WakeOutcome::NoRoute => {
                    tracing::debug!(uaid = %uaid.to_hex(), mcc = target.mcc, mnc = target.mnc, "no wakeup route");
                }
                WakeOutcome::Overloaded => {
                    tracing::warn!("wakeup core tracks wakeup_pending_max UAs; wakeup dropped");
                }
            },
            Request::Awake { uaid } => {
                if let Some(latency_ms) = planner.awake(now, uaid) {
                    metrics.latency.observe(latency_ms as f64 / 1000.0);
                }
            }
        }
    }
    taken
}

/// Sleeps until `wait` passes or a shard rings the doorbell.
async fn park(inner: &Inner, doorbell: &glommio::net::UdpSocket, wait: Duration) {
    inner.parked.store(true, Ordering::SeqCst);
    // Pairs with the fence in `WakeupClient::push` (see there).
    fence(Ordering::SeqCst);
    if !inner.ring.is_empty() {
        inner.parked.store(false, Ordering::SeqCst);
        return;
    }
    let mut byte = [0u8; 16];
    futures_lite::future::or(
        async {
            let _ = doorbell.recv(&mut byte).await;
        },
        sleep(wait),
    )
    .await;
    inner.parked.store(false, Ordering::SeqCst);
}

/// Planner counters as last published, so Prometheus counters advance by
/// the difference.
#[derive(Default)]
struct Published {
    stats: PlanStats,
    dropped: u64,
}

impl Published {
    fn publish(&mut self, inner: &Inner, planner: &Planner, metrics: &WakeupMetrics) {
        let stats = planner.stats();
        let before = self.stats;
        metrics
            .requested
            .inc_by(stats.requested.saturating_sub(before.requested));
        metrics
            .coalesced
            .inc_by(stats.coalesced.saturating_sub(before.coalesced));
        metrics
            .retried
            .inc_by(stats.retried.saturating_sub(before.retried));
        metrics
            .rate_limited
            .inc_by(stats.rate_limited.saturating_sub(before.rate_limited));
        metrics.failed(
            reason::GAVE_UP,
            stats.gave_up.saturating_sub(before.gave_up),
        );
        metrics.failed(
            reason::NO_ROUTE,
            stats.no_route.saturating_sub(before.no_route),
        );
        metrics.failed(
            reason::OVERLOADED,
            stats.overloaded.saturating_sub(before.overloaded),
        );
        metrics.pending.set(planner.pending() as i64);
        self.stats = stats;
        let dropped = inner.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped {
            let lost = dropped - self.dropped;
            tracing::warn!(
                lost,
                "wakeup ring full: requests dropped (messages stay stored)"
            );
            // An `awake` lost this way only costs a few useless re-sends.
            metrics.failed(reason::RING_FULL, lost);
            self.dropped = dropped;
        }
    }
}
