//! One load-generating process (`herald-bench worker`). The orchestrator
//! starts several so that connection counts stay under the per-process
//! descriptor cap and each uses its own 127.x source address; they talk over
//! stdin/stdout, one JSON line per phase, so that every worker starts each
//! phase at the same moment.
//!
//! A worker runs one glommio executor (not pinned: the server's shards are).
//! Each UA is pushed to by exactly one pusher task, so the UA's notifications
//! arrive in the order they were sent and their latency is measured from a
//! per-UA queue of send times, for every kind of push alike (empty Web Push
//! messages carry nothing to put a timestamp in).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use glommio::{spawn_local, timer::sleep, LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use herald_bench::client::tasks::{FromSource, Pusher, Ua};
use herald_bench::client::Dial;
use herald_bench::client::{endpoint_path, Push};
use herald_bench::stats::{new_histogram, now_us, serialize_histogram};
use herald_tests::h2_client;

/// Width of one bucket of the delivered-per-time-bucket series.
pub const TIMELINE_BUCKET_US: u64 = 100_000;
/// How long in-flight notifications may take to arrive after the last push.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
const DATA_BYTES: usize = 100;

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// Web Push messages without data.
    Empty,
    /// Web Push messages with a 100-byte body.
    Data,
    /// SimplePush PUTs.
    Simplepush,
    /// A third of the UAs of each kind.
    All,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Empty,
    Data,
    SimplePush,
}

impl Mix {
    fn kind(self, ua: usize) -> Kind {
        match self {
            Mix::Empty => Kind::Empty,
            Mix::Data => Kind::Data,
            Mix::Simplepush => Kind::SimplePush,
            Mix::All => [Kind::Empty, Kind::Data, Kind::SimplePush][ua % 3],
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Connected UAs, pushers at full speed or at `rate` (throughput, latency).
    Load,
    /// UAs that connect and stay idle; on `verify` each gets one push.
    Idle,
    /// UAs register and leave, get `messages` each while away, then reconnect.
    Stored,
    /// UAs connect and stay idle until the server closes their sockets (it
    /// is restarted), then reconnect with their UAIDs; on `verify` each gets
    /// one push.
    Restart,
}

/// What a worker is asked to do (passed as JSON on its command line).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Spec {
    pub role: Role,
    pub id: usize,
    /// Where the UAs connect.
    pub ua: SocketAddr,
    /// Where the pushers post: pusher lane `i` to `push_to[i % len]` (more
    /// than one: the nodes of a cluster).
    pub push_to: Vec<SocketAddr>,
    pub source: Option<IpAddr>,
    pub uas: usize,
    pub pushers: usize,
    /// UA connections being set up at once.
    pub concurrency: usize,
    pub mix: Mix,
    pub seconds: f64,
    /// Pushes per second for this worker; 0 = as fast as the server answers.
    pub rate: f64,
    /// Requests each pusher keeps in flight on its connection (pipelined
    /// HTTP/1.1); 1 = one at a time.
    pub pipeline: usize,
    /// When not 0: each pusher is one HTTP/2 connection with this many
    /// streams in flight (and `pipeline` does not apply).
    pub http2_streams: usize,
    /// Stored role: messages per UA; idle role: pushes each UA gets (and
    /// acks) after the idle period.
    pub messages: usize,
    /// Restart role: the first reconnect waits a random 0..`retry_ms`
    /// after the close, each failed one a random half to all of
    /// `retry_ms` × 2^failures, at most `retry_max_ms` ([`retry_delay`]).
    pub retry_ms: u64,
    pub retry_max_ms: u64,
}

impl Spec {
    /// The AS listener pusher lane `lane` posts to.
    fn push_target(&self, lane: usize) -> SocketAddr {
        self.push_to[lane % self.push_to.len()]
    }
}

pub fn run(spec: Spec) {
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("herald-bench")
        .io_memory(256 * 1024)
        // Deep rings get a big cancellation hash table in the kernel: with
        // thousands of sockets waiting, every cancel scans one bucket.
        .ring_depth(4096)
        .make()
        .expect("start the worker's executor");
    executor.run(async move {
        let result = match spec.role {
            Role::Load => load(&spec).await,
            Role::Idle => idle(&spec).await,
            Role::Stored => stored(&spec).await,
            Role::Restart => restart(&spec).await,
        };
        report(&result);
    });
    // Sockets close with the process; no need to wait for each.
    std::process::exit(0);
}

fn report(value: &Value) {
    println!("{value}");
}

/// Blocks until the orchestrator says the next phase starts; returns its line.
fn wait_for_orchestrator() -> Value {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 {
        // The orchestrator is gone: nothing left to measure.
        std::process::exit(1);
    }
    serde_json::from_str(&line).unwrap_or(Value::Null)
}

fn cpu_seconds() -> f64 {
    herald_bench::proc::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// A UA as the generator keeps it between phases.
struct Registered {
    uaid: String,
    channel: String,
    path: String,
    kind: Kind,
}

fn channel_id(worker: usize, ua: usize) -> String {
    format!("{worker:08x}-0000-4000-8000-{ua:012x}")
}

/// Connects, says hello, registers one channel.
async fn open_ua(spec: &Spec, index: usize) -> std::io::Result<(Ua, Registered)> {
    let kind = spec.mix.kind(index);
    let mut ua = Ua::open(&FromSource(spec.source), spec.ua).await?;
    let hello = if kind == Kind::SimplePush {
        json!({"messageType": "hello", "channelIDs": []})
    } else {
        json!({"messageType": "hello", "use_webpush": true})
    };
    let answer = ua.exchange(&hello).await?;
    let uaid = answer["uaid"].as_str().unwrap_or_default().to_owned();
    if answer["status"] != 200 || uaid.is_empty() {
        return Err(std::io::Error::other(format!("hello refused: {answer}")));
    }
    let channel = channel_id(spec.id, index);
    let answer = ua
        .exchange(&json!({"messageType": "register", "channelID": channel}))
        .await?;
    let endpoint = answer["pushEndpoint"].as_str().unwrap_or_default();
    if answer["status"] != 200 {
        return Err(std::io::Error::other(format!("register refused: {answer}")));
    }
    let path = endpoint_path(endpoint)?;
    Ok((
        ua,
        Registered {
            uaid,
            channel,
            path,
            kind,
        },
    ))
}

/// Runs `lane(0)` … `lane(lanes - 1)` as tasks and waits for them all.
async fn in_lanes<F, Lane>(lanes: usize, lane: F)
where
    F: Fn(usize) -> Lane,
    Lane: Future<Output = ()> + 'static,
{
    let tasks: Vec<_> = (0..lanes).map(|index| spawn_local(lane(index))).collect();
    for task in tasks {
        task.await;
    }
}

type Opened = Vec<Option<(Ua, Registered)>>;

/// Opens `spec.uas` UAs, `spec.concurrency` at a time. Returns them with the
/// time the first connect started and the last register was answered.
async fn open_all(spec: &Spec) -> (Opened, u64, u64) {
    let opened: Rc<RefCell<Opened>> = Rc::new(RefCell::new((0..spec.uas).map(|_| None).collect()));
    let started = now_us();
    let lanes = spec.concurrency.clamp(1, spec.uas.max(1));
    in_lanes(lanes, |lane| {
        let (spec, opened) = (spec.clone(), opened.clone());
        async move {
            for index in (lane..spec.uas).step_by(lanes) {
                match open_ua(&spec, index).await {
                    Ok(ua) => opened.borrow_mut()[index] = Some(ua),
                    Err(error) => eprintln!("worker {}: UA {index}: {error}", spec.id),
                }
            }
        }
    })
    .await;
    let finished = now_us();
    let opened = Rc::try_unwrap(opened)
        .ok()
        .expect("every lane finished")
        .into_inner();
    (opened, started, finished)
}

fn connect_report(opened: &Opened, started: u64, finished: u64) -> Value {
    json!({
        "phase": "connected",
        "uas": opened.iter().flatten().count(),
        "connect_start_us": started,
        "connect_end_us": finished,
        // The process did nothing else so far.
        "cpu_seconds": cpu_seconds(),
    })
}

/// Shared by a load worker's tasks (all on one thread).
struct Load {
    /// Per UA: send times of pushes not yet delivered, oldest first.
    in_flight: RefCell<Vec<VecDeque<u64>>>,
    delivered: Cell<u64>,
    accepted: Cell<u64>,
    refused: Cell<u64>,
    /// 429s and 503s without `Retry-After`.
    refused_without_retry_after: Cell<u64>,
    unmatched: Cell<u64>,
    /// Deliveries per TIMELINE_BUCKET_US since the start.
    timeline: RefCell<Vec<u64>>,
    to_ua: RefCell<Histogram<u64>>,
    as_answer: RefCell<Histogram<u64>>,
    started_us: u64,
    /// Pushes scheduled so far (paced runs).
    next_slot: Cell<u64>,
}

impl Load {
    /// A push to `ua` sent at `sent` was answered `status` (None: failed)
    /// now; a refusal should say when to retry (`retry_after`).
    fn on_answer(&self, ua: usize, sent: u64, status: Option<u16>, retry_after: bool) {
        if matches!(status, Some(429 | 503)) && !retry_after {
            self.refused_without_retry_after
                .set(self.refused_without_retry_after.get() + 1);
        }
        self.on_answered(ua, sent, matches!(status, Some(200..=202)));
    }

    /// A push to `ua` sent at `sent` was answered (or failed) now.
    fn on_answered(&self, ua: usize, sent: u64, accepted: bool) {
        if accepted {
            self.accepted.set(self.accepted.get() + 1);
            let _ = self
                .as_answer
                .borrow_mut()
                .record(now_us().saturating_sub(sent).max(1));
        } else {
            // Only this UA's pusher adds to its queue, and every entry in
            // flight was sent about now: the last one will do.
            self.in_flight.borrow_mut()[ua].pop_back();
            self.refused.set(self.refused.get() + 1);
        }
    }

    fn on_delivered(&self, ua: usize) {
        let now = now_us();
        match self.in_flight.borrow_mut()[ua].pop_front() {
            Some(sent) => {
                let _ = self
                    .to_ua
                    .borrow_mut()
                    .record(now.saturating_sub(sent).max(1));
                self.delivered.set(self.delivered.get() + 1);
                let bucket = (now.saturating_sub(self.started_us) / TIMELINE_BUCKET_US) as usize;
                let mut timeline = self.timeline.borrow_mut();
                if timeline.len() <= bucket {
                    timeline.resize(bucket + 1, 0);
                }
                timeline[bucket] += 1;
            }
            // A re-send of something already counted.
            None => self.unmatched.set(self.unmatched.get() + 1),
        }
    }
}

/// Reads notifications for one UA and acks them, one ack frame per read.
async fn receive_and_ack(mut ua: Ua, index: usize, kind: Kind, load: Rc<Load>) {
    let mut updates = Vec::new();
    loop {
        loop {
            match ua.take_message() {
                Ok(Some(message)) => {
                    if message["messageType"] != "notification" {
                        continue;
                    }
                    if kind == Kind::SimplePush {
                        for update in message["updates"].as_array().into_iter().flatten() {
                            load.on_delivered(index);
                            updates.push(json!({"channelID": update["channelID"], "version": update["version"]}));
                        }
                    } else {
                        load.on_delivered(index);
                        updates.push(json!({"channelID": message["channelID"], "version": message["version"], "code": 100}));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !updates.is_empty() {
            let ack = json!({"messageType": "ack", "updates": std::mem::take(&mut updates)});
            ua.queue(&ack.to_string());
            if ua.flush().await.is_err() {
                return;
            }
        }
        if ua.read().await.is_err() {
            return;
        }
    }
}

/// One pusher: round-robin over its own UAs until the run ends, with
/// `spec.pipeline` requests in flight. One UA may get several pushes of a
/// batch: Herald stores a connection's pipelined requests in order, so its
/// deliveries still match its pushes in order.
async fn push_loop(
    spec: Spec,
    lane: usize,
    targets: Rc<Vec<(usize, String, Kind)>>,
    load: Rc<Load>,
) {
    let mine: Vec<&(usize, String, Kind)> =
        targets.iter().skip(lane).step_by(spec.pushers).collect();
    if mine.is_empty() {
        return;
    }
    let depth = spec.pipeline.max(1);
    let data = [0x5au8; DATA_BYTES];
    let ends_us = load.started_us + (spec.seconds * 1e6) as u64;
    let mut pusher = Pusher::new(FromSource(spec.source), spec.push_target(lane));
    let mut version = now_us();
    let mut next = 0;
    let mut batch = Vec::with_capacity(depth);
    let mut answers = Vec::with_capacity(depth);
    loop {
        let mut now = now_us();
        if spec.rate > 0.0 {
            let slot = load.next_slot.get();
            load.next_slot.set(slot + depth as u64);
            let due = load.started_us + (slot as f64 * 1e6 / spec.rate) as u64;
            if due > now {
                sleep(Duration::from_micros(due - now)).await;
                now = now_us();
            }
        }
        if now >= ends_us {
            return;
        }
        batch.clear();
        for _ in 0..depth {
            let (ua, path, kind) = mine[next];
            next = (next + 1) % mine.len();
            version += 1;
            let push = match kind {
                Kind::Empty => Push::WebPush(&[]),
                Kind::Data => Push::WebPush(&data),
                Kind::SimplePush => Push::SimplePush(version),
            };
            load.in_flight.borrow_mut()[*ua].push_back(now);
            batch.push((*ua, path.as_str(), push));
        }
        let requests: Vec<(&str, Push<'_>)> =
            batch.iter().map(|&(_, path, push)| (path, push)).collect();
        let sent = pusher.push_pipelined(&requests, &mut answers).await;
        for (index, &(ua, _, _)) in batch.iter().enumerate() {
            let answer = answers.get(index);
            let status = answer.map(|answer| answer.status);
            load.on_answer(
                ua,
                now,
                status,
                answer.is_some_and(|answer| answer.retry_after),
            );
        }
        if sent.is_err() {
            sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One HTTP/2 pusher: one connection, `spec.http2_streams` streams in
/// flight, each stream's task round-robin over its share of the lane's UAs
/// (Web Push only: SimplePush senders are HTTP/1.1 ones).
async fn push_loop_h2(
    spec: Spec,
    lane: usize,
    targets: Rc<Vec<(usize, String, Kind)>>,
    load: Rc<Load>,
) {
    let mine: Vec<(usize, String, Kind)> = targets
        .iter()
        .skip(lane)
        .step_by(spec.pushers)
        .cloned()
        .collect();
    let target = spec.push_target(lane);
    let Ok(stream) = FromSource(spec.source).dial(target) else {
        return;
    };
    let Ok((sender, connection)) = h2_client::handshake(stream, &target.to_string()).await else {
        return;
    };
    spawn_local(connection).detach();
    let ends_us = load.started_us + (spec.seconds * 1e6) as u64;
    let mine = Rc::new(mine);
    let streams = spec.http2_streams.min(mine.len());
    in_lanes(streams, |index| {
        let (sender, mine, load) = (sender.clone(), mine.clone(), load.clone());
        async move {
            let data = [0x5au8; DATA_BYTES];
            let headers = [("ttl", "60"), ("content-encoding", "aes128gcm")];
            for (ua, path, kind) in mine.iter().skip(index).step_by(streams).cycle() {
                let now = now_us();
                if now >= ends_us {
                    return;
                }
                let body: &[u8] = if *kind == Kind::Data { &data } else { &[] };
                let headers = if body.is_empty() {
                    &headers[..1]
                } else {
                    &headers[..]
                };
                load.in_flight.borrow_mut()[*ua].push_back(now);
                let answer = sender.send("POST", path, headers, body).await;
                let (status, retry_after) = match &answer {
                    Ok(answer) => (Some(answer.status), answer.header("retry-after").is_some()),
                    Err(_) => (None, false),
                };
                load.on_answer(*ua, now, status, retry_after);
                if answer.is_err() {
                    return;
                }
            }
        }
    })
    .await;
}

async fn load(spec: &Spec) -> Value {
    let (opened, started, finished) = open_all(spec).await;
    report(&connect_report(&opened, started, finished));
    let go = wait_for_orchestrator();
    let load = Rc::new(Load {
        in_flight: RefCell::new(vec![VecDeque::new(); spec.uas]),
        delivered: Cell::new(0),
        accepted: Cell::new(0),
        refused: Cell::new(0),
        refused_without_retry_after: Cell::new(0),
        unmatched: Cell::new(0),
        timeline: RefCell::new(Vec::new()),
        to_ua: RefCell::new(new_histogram()),
        as_answer: RefCell::new(new_histogram()),
        started_us: go["start_us"].as_u64().unwrap_or_else(now_us),
        next_slot: Cell::new(0),
    });
    let mut targets = Vec::new();
    for (index, entry) in opened.into_iter().enumerate() {
        let Some((ua, registered)) = entry else {
            continue;
        };
        targets.push((index, registered.path, registered.kind));
        spawn_local(receive_and_ack(ua, index, registered.kind, load.clone())).detach();
    }
    let targets = Rc::new(targets);
    let wait = load.started_us.saturating_sub(now_us());
    sleep(Duration::from_micros(wait)).await;
    let cpu_before = cpu_seconds();
    if spec.http2_streams > 0 {
        in_lanes(spec.pushers, |lane| {
            push_loop_h2(spec.clone(), lane, targets.clone(), load.clone())
        })
        .await;
    } else {
        in_lanes(spec.pushers, |lane| {
            push_loop(spec.clone(), lane, targets.clone(), load.clone())
        })
        .await;
    }
    let pushed_until = now_us();
    let settle_deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    while load.delivered.get() < load.accepted.get() && std::time::Instant::now() < settle_deadline
    {
        sleep(Duration::from_millis(5)).await;
    }
    json!({
        "phase": "done",
        "accepted": load.accepted.get(),
        "refused": load.refused.get(),
        "refused_without_retry_after": load.refused_without_retry_after.get(),
        "delivered": load.delivered.get(),
        "unmatched": load.unmatched.get(),
        "start_us": load.started_us,
        "pushed_until_us": pushed_until,
        "cpu_seconds": cpu_seconds() - cpu_before,
        "timeline": *load.timeline.borrow(),
        "to_ua": serialize_histogram(&load.to_ua.borrow()),
        "as_answer": serialize_histogram(&load.as_answer.borrow()),
    })
}

/// Waits for the next notification on `ua` and acks it.
async fn receive_one(ua: &mut Ua) -> std::io::Result<()> {
    loop {
        let message = ua.receive().await?;
        if message["messageType"] == "notification" {
            let ack = json!({"messageType": "ack", "updates": [{"channelID": message["channelID"], "version": message["version"], "code": 100}]});
            return ua.send(&ack).await;
        }
    }
}

async fn idle(spec: &Spec) -> Value {
    let (opened, started, finished) = open_all(spec).await;
    report(&connect_report(&opened, started, finished));
    wait_for_orchestrator();
    // The UAs stay connected, idle again, until the orchestrator has read
    // the server's memory once more.
    let opened = Rc::new(RefCell::new(opened));
    let verified = verify(spec, &opened).await;
    report(&json!({"phase": "done", "verified": verified}));
    wait_for_orchestrator();
    json!({"phase": "closed"})
}

/// Every UA still works: `messages` pushes each (at least one), each
/// received and acked. Returns how many UAs got them all; each is put back
/// in `opened`, still connected.
async fn verify(spec: &Spec, opened: &Rc<RefCell<Opened>>) -> u64 {
    let received = Rc::new(Cell::new(0u64));
    let lanes = spec.pushers.max(1);
    in_lanes(lanes, |lane| {
        let (spec, opened, received) = (spec.clone(), opened.clone(), received.clone());
        async move {
            let mut pusher = Pusher::new(FromSource(spec.source), spec.push_target(lane));
            for index in (lane..spec.uas).step_by(lanes) {
                let Some((mut ua, registered)) = opened.borrow_mut()[index].take() else {
                    continue;
                };
                let mut all_arrived = true;
                for _ in 0..spec.messages.max(1) {
                    let pushed = pusher.push(&registered.path, Push::WebPush(&[])).await;
                    let arrived = matches!(pushed, Ok(201))
                        && glommio::timer::timeout(Duration::from_secs(10), async {
                            receive_one(&mut ua)
                                .await
                                .map_err(glommio::GlommioError::from)
                        })
                        .await
                        .is_ok();
                    all_arrived &= arrived;
                }
                if all_arrived {
                    received.set(received.get() + 1);
                }
                opened.borrow_mut()[index] = Some((ua, registered));
            }
        }
    })
    .await;
    received.get()
}

async fn stored(spec: &Spec) -> Value {
    let (opened, started, finished) = open_all(spec).await;
    // The UAs leave: their notifications will be stored.
    let registered: Vec<Registered> = opened
        .into_iter()
        .flatten()
        .map(|(_, registered)| registered)
        .collect();
    report(&json!({
        "phase": "connected",
        "uas": registered.len(),
        "connect_start_us": started,
        "connect_end_us": finished,
    }));
    wait_for_orchestrator();
    let registered = Rc::new(registered);
    let accepted = Rc::new(Cell::new(0u64));
    let push_started = now_us();
    let lanes = spec.pushers.max(1);
    in_lanes(lanes, |lane| {
        let (spec, registered, accepted) = (spec.clone(), registered.clone(), accepted.clone());
        async move {
            let mut pusher = Pusher::new(FromSource(spec.source), spec.push_target(lane));
            let data = [0x5au8; DATA_BYTES];
            for ua in registered.iter().skip(lane).step_by(lanes) {
                for _ in 0..spec.messages {
                    if matches!(pusher.push(&ua.path, Push::WebPush(&data)).await, Ok(201)) {
                        accepted.set(accepted.get() + 1);
                    }
                }
            }
        }
    })
    .await;
    report(&json!({
        "phase": "stored",
        "accepted": accepted.get(),
        "push_start_us": push_started,
        "push_end_us": now_us(),
    }));
    let go = wait_for_orchestrator();
    let started_us = go["start_us"].as_u64().unwrap_or_else(now_us);
    sleep(Duration::from_micros(started_us.saturating_sub(now_us()))).await;
    let delivered = Rc::new(Cell::new(0u64));
    let last_delivery = Rc::new(Cell::new(0u64));
    let lanes = spec.concurrency.clamp(1, registered.len().max(1));
    in_lanes(lanes, |lane| {
        let (spec, registered) = (spec.clone(), registered.clone());
        let (delivered, last_delivery) = (delivered.clone(), last_delivery.clone());
        async move {
            for ua in registered.iter().skip(lane).step_by(lanes) {
                let drained = glommio::timer::timeout(Duration::from_secs(60), async {
                    drain_one(&spec, ua, &delivered)
                        .await
                        .map_err(glommio::GlommioError::from)
                })
                .await;
                if let Err(error) = drained {
                    eprintln!("worker {}: reconnect of {}: {error}", spec.id, ua.uaid);
                }
                last_delivery.set(last_delivery.get().max(now_us()));
            }
        }
    })
    .await;
    json!({
        "phase": "done",
        "delivered": delivered.get(),
        "start_us": started_us,
        "end_us": last_delivery.get(),
    })
}

/// Reconnects a UA that was away and takes every message stored for it,
/// acking each batch as it arrives.
async fn drain_one(
    spec: &Spec,
    registered: &Registered,
    delivered: &Cell<u64>,
) -> std::io::Result<()> {
    let mut ua = Ua::open(&FromSource(spec.source), spec.ua).await?;
    let hello = json!({"messageType": "hello", "uaid": registered.uaid, "use_webpush": true});
    ua.send(&hello).await?;
    let mut received = 0;
    let mut updates = Vec::new();
    while received < spec.messages {
        while let Some(message) = ua.take_message()? {
            if message["messageType"] == "notification"
                && message["channelID"] == registered.channel.as_str()
            {
                received += 1;
                delivered.set(delivered.get() + 1);
                updates.push(json!({"channelID": message["channelID"], "version": message["version"], "code": 100}));
            }
        }
        if !updates.is_empty() {
            ua.queue(
                &json!({"messageType": "ack", "updates": std::mem::take(&mut updates)}).to_string(),
            );
            ua.flush().await?;
        }
        if received < spec.messages {
            ua.read().await?;
        }
    }
    Ok(())
}

/// The longest a restart UA waits for its socket to close and then keeps
/// trying to come back.
const STORM_TIMEOUT: Duration = Duration::from_secs(120);
/// One reconnect attempt (connect, upgrade, hello) that takes longer than
/// this is abandoned and counted as dropped: Herald's own handshake and
/// hello timeouts are 5 s and 10 s.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a restart worker's UAs saw while coming back (all on one thread).
#[derive(Default)]
struct Storm {
    /// Reconnect attempts: connect, upgrade, hello.
    attempts: Cell<u64>,
    /// Connects refused: nothing listening (the server is down).
    down: Cell<u64>,
    /// Upgrades or hellos the server refused (429, 503, any other answer
    /// than 101 and status 200).
    refused: Cell<u64>,
    /// Attempts that failed otherwise: reset, closed, timed out.
    dropped: Cell<u64>,
    /// Hellos answered with another UAID: the server had lost this one.
    lost: Cell<u64>,
    /// When each UA noticed its socket close.
    closed_us: RefCell<Vec<u64>>,
    /// When each UA's hello was answered with its own UAID.
    back_us: RefCell<Vec<u64>>,
}

/// Why a reconnect attempt failed.
enum Failed {
    Io(std::io::Error),
    Refused,
    Lost,
}

impl Storm {
    fn count(&self, failed: &Failed) {
        let counter = match failed {
            Failed::Io(error) => match error.kind() {
                std::io::ErrorKind::ConnectionRefused => &self.down,
                // An upgrade answered with anything but 101.
                std::io::ErrorKind::InvalidData => &self.refused,
                _ => &self.dropped,
            },
            Failed::Refused => &self.refused,
            Failed::Lost => &self.lost,
        };
        counter.set(counter.get() + 1);
    }
}

/// The bench clients' retry policy, applied after the first attempt
/// failed `failures` times: a random half to all of `retry_ms` ×
/// 2^failures, at most `retry_max_ms`. The randomness keeps the retries
/// of thousands of clients that failed together from staying in step.
fn retry_delay(spec: &Spec, failures: u32) -> Duration {
    let ceiling = spec
        .retry_ms
        .saturating_mul(1 << failures.min(20))
        .min(spec.retry_max_ms)
        .max(1);
    Duration::from_millis(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
}

/// Connects again and says hello with the UA's UAID, the way Firefox does
/// once it has subscriptions: no `channelIDs`, so that the push that
/// follows proves the server kept the channel (a listed channel it had
/// lost would be re-created).
async fn hello_again(spec: &Spec, registered: &Registered) -> Result<Ua, Failed> {
    let mut ua = Ua::open(&FromSource(spec.source), spec.ua)
        .await
        .map_err(Failed::Io)?;
    let hello = json!({"messageType": "hello", "uaid": registered.uaid, "use_webpush": true});
    let answer = ua.exchange(&hello).await.map_err(Failed::Io)?;
    if answer["status"] != 200 {
        return Err(Failed::Refused);
    }
    if answer["uaid"] != registered.uaid.as_str() {
        return Err(Failed::Lost);
    }
    Ok(ua)
}

/// One UA: waits for the server to close its socket, then reconnects
/// until its hello is answered ([`retry_delay`] between attempts). None if
/// it did not come back within [`STORM_TIMEOUT`] or its UAID was lost.
async fn come_back(spec: &Spec, mut ua: Ua, registered: &Registered, storm: &Storm) -> Option<Ua> {
    let deadline = std::time::Instant::now() + STORM_TIMEOUT;
    // Nothing is pushed to an idle UA: whatever arrives is skipped.
    let closed = glommio::timer::timeout(STORM_TIMEOUT, async {
        while ua.receive().await.is_ok() {}
        Ok(())
    })
    .await;
    drop(ua);
    if closed.is_err() {
        return None;
    }
    storm.closed_us.borrow_mut().push(now_us());
    // The closes arrive together; a first random wait spreads the first
    // wave as a population of clients would.
    let mut wait = Duration::from_millis(rand::thread_rng().gen_range(0..=spec.retry_ms));
    let mut failures = 0;
    loop {
        sleep(wait).await;
        storm.attempts.set(storm.attempts.get() + 1);
        let attempt = glommio::timer::timeout(ATTEMPT_TIMEOUT, async {
            Ok(hello_again(spec, registered).await)
        })
        .await
        .unwrap_or_else(|_| Err(Failed::Io(std::io::ErrorKind::TimedOut.into())));
        match attempt {
            Ok(ua) => {
                storm.back_us.borrow_mut().push(now_us());
                return Some(ua);
            }
            Err(failed) => {
                storm.count(&failed);
                if matches!(failed, Failed::Lost) || std::time::Instant::now() >= deadline {
                    return None;
                }
            }
        }
        wait = retry_delay(spec, failures);
        failures += 1;
    }
}

async fn restart(spec: &Spec) -> Value {
    let (opened, started, finished) = open_all(spec).await;
    let connected = connect_report(&opened, started, finished);
    let storm = Rc::new(Storm::default());
    let back: Rc<RefCell<Opened>> = Rc::new(RefCell::new((0..spec.uas).map(|_| None).collect()));
    // Each UA watches its socket from now on; the orchestrator restarts
    // the server once every worker has reported.
    let watchers: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let (spec, storm, back) = (spec.clone(), storm.clone(), back.clone());
            spawn_local(async move {
                let (ua, registered) = entry?;
                let ua = come_back(&spec, ua, &registered, &storm).await?;
                back.borrow_mut()[index] = Some((ua, registered));
                Some(())
            })
        })
        .collect();
    report(&connected);
    for watcher in watchers {
        watcher.await;
    }
    let mut back_us = storm.back_us.take();
    back_us.sort_unstable();
    let closed_us = storm.closed_us.take();
    report(&json!({
        "phase": "back",
        "back": back_us.len(),
        "attempts": storm.attempts.get(),
        "down": storm.down.get(),
        "refused": storm.refused.get(),
        "dropped": storm.dropped.get(),
        "lost": storm.lost.get(),
        "closed": closed_us.len(),
        "first_closed_us": closed_us.iter().min(),
        "last_closed_us": closed_us.iter().max(),
        "back_us": back_us,
    }));
    wait_for_orchestrator();
    let verified = verify(spec, &back).await;
    report(&json!({"phase": "done", "verified": verified}));
    wait_for_orchestrator();
    json!({"phase": "closed"})
}
