//! The cluster store (SPEC §8, issue 11): a shard's [`RecordLog`] over a
//! Redis Cluster shared by every Herald node.
//!
//! Each record becomes one call of `write.lua` on its UA's slot (the key
//! layout is in `keys.rs`), fenced by the shard's claim on the UA: the
//! script refuses a write once another node has claimed the UA, so a UA is
//! only ever written by the one shard that holds it. Claims (`claim.lua`)
//! and releases (`release.lua`) travel in the same queue as the writes, so
//! each sees every write this shard made before it.
//!
//! One writer task per shard ([`ClusterLog::run_writer`]) sends the queue
//! as pipelined batches of up to `pipeline_max` calls, with one `WAIT` per
//! Redis master touched: the cluster's group commit. A record is durable
//! once its batch was answered and acknowledged by the configured number of
//! replicas. A batch that fails (Redis unreachable, failover, too few
//! replicas) is sent again, whole and in order, until it succeeds: every
//! write is a blind set, a delete or a maximum, so repeating a prefix of the
//! sequence ends in the same state. While it fails, [`RecordLog::failed`]
//! reads true, the driver answers 503 to what waits, and the engine refuses
//! new writes; it reads false again once a batch goes through.

mod keys;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use glommio::channels::local_channel::{self, LocalSender};
use rand::Rng;

use herald_engine::record::Record;
use herald_engine::{Lsn, Uaid};

use crate::redis::{ClusterClient, Command, RedisError, Reply, ScriptId};
use crate::{Claim, ClaimError, Fenced, PreviousClaim, RecordLog, StoreError};

pub use keys::{app_members_key, ua_keys};

/// The scripts every Redis master gets, in [`ScriptId`] order.
pub const SCRIPTS: [&str; 3] = [
    include_str!("write.lua"),
    include_str!("claim.lua"),
    include_str!("release.lua"),
];
const WRITE: ScriptId = ScriptId(0);
const CLAIM: ScriptId = ScriptId(1);
const RELEASE: ScriptId = ScriptId(2);

/// How long the writer waits before sending a failed batch again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How long a claim stays queued through failing batches before it fails:
/// long enough for the slot map to settle after a failover (the hello or
/// request waiting for it then goes on), short of a UA's hello timeout.
const CLAIM_PATIENCE: Duration = Duration::from_secs(3);

/// The UAs a shard holds a claim on (or minted), readable by the node's
/// other shards: an AS request for one of them needs no lookup in Redis.
pub type HeldSet = Arc<Mutex<AHashSet<Uaid>>>;

/// What a shard's cluster store needs to know besides its client.
#[derive(Clone, Debug)]
pub struct ClusterLogOptions {
    /// This node's node-to-node URL: claims name it, so that the node a UA
    /// leaves learns where it went.
    pub node_url: String,
    /// A UA's keys expire this long after its last write (0: never), the
    /// cluster's `ua_expiry_days`.
    pub ua_ttl_ms: u64,
    /// Calls per pipelined batch.
    pub pipeline_max: usize,
}

/// What the store did, counted since it opened (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Pipelined batches that went through, each with its `WAIT`s.
    pub batches: u64,
    /// Script calls in them (writes, claims, releases).
    pub calls: u64,
    pub claims: u64,
    /// Batches that failed and were sent again.
    pub failed_batches: u64,
    /// Writes refused because another node had taken the UA.
    pub fenced_writes: u64,
}

/// One call waiting in the queue.
enum Op {
    Write {
        lsn: Lsn,
        uaid: Uaid,
        /// The claim it was written under.
        token: Rc<[u8]>,
        call: Command,
    },
    /// A call whose reply nothing waits for: a release, a change to an
    /// app's members.
    Unanswered { call: Command },
    Claim {
        uaid: Uaid,
        call: Command,
        answer: LocalSender<Result<Claim, ClaimError>>,
        queued_at: Instant,
    },
}

struct Inner {
    client: ClusterClient,
    options: ClusterLogOptions,
    queue: RefCell<VecDeque<Op>>,
    last_lsn: Cell<Lsn>,
    durable_lsn: Cell<Lsn>,
    /// The last batch failed; the writer is trying again.
    unavailable: RefCell<Option<String>>,
    fenced: RefCell<Vec<Fenced>>,
    /// The claim token this shard writes each UA it holds under. A UA with
    /// none was minted here: its first write creates it.
    tokens: RefCell<AHashMap<Uaid, Rc<[u8]>>>,
    /// The keys of `tokens`, for the node's other shards.
    held: HeldSet,
    closed: Cell<bool>,
    /// The writer, waiting for work.
    writer: RefCell<Option<Waker>>,
    waiters: RefCell<BTreeMap<Lsn, Vec<Waker>>>,
    /// Calls ever queued, and those that have left the queue (sent, or
    /// claims given up on): a flush waits for every call queued before it,
    /// releases included, not only for the records.
    calls_queued: Cell<u64>,
    calls_done: Cell<u64>,
    /// Flushes waiting for `calls_done` to reach theirs.
    flushes: RefCell<Vec<Waker>>,
    appended: Cell<u64>,
    stats: Cell<ClusterStats>,
}

/// A shard's cluster store. Cheap to clone (an `Rc`); single-threaded.
#[derive(Clone)]
pub struct ClusterLog {
    inner: Rc<Inner>,
}

impl ClusterLog {
    pub fn new(client: ClusterClient, options: ClusterLogOptions, held: HeldSet) -> ClusterLog {
        ClusterLog {
            inner: Rc::new(Inner {
                client,
                options,
                queue: RefCell::new(VecDeque::new()),
                last_lsn: Cell::new(0),
                durable_lsn: Cell::new(0),
                unavailable: RefCell::new(None),
                fenced: RefCell::new(Vec::new()),
                tokens: RefCell::new(AHashMap::new()),
                held,
                closed: Cell::new(false),
                writer: RefCell::new(None),
                waiters: RefCell::new(BTreeMap::new()),
                calls_queued: Cell::new(0),
                calls_done: Cell::new(0),
                flushes: RefCell::new(Vec::new()),
                appended: Cell::new(0),
                stats: Cell::new(ClusterStats::default()),
            }),
        }
    }

    pub fn stats(&self) -> ClusterStats {
        self.inner.stats.get()
    }

    fn count(&self, update: impl FnOnce(&mut ClusterStats)) {
        let mut stats = self.inner.stats.get();
        update(&mut stats);
        self.inner.stats.set(stats);
    }

    /// Calls queued and not yet acknowledged.
    pub fn queued(&self) -> usize {
        self.inner.queue.borrow().len()
    }

    /// Stops the writer once the queue is empty (or at once, if Redis is
    /// unreachable: what is queued was never acknowledged), and ends every
    /// wait for durability that is not over.
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.wake_writer();
        self.wake_waiters(Lsn::MAX);
    }

    /// Waits until every call queued so far has gone through: every record
    /// durable, and every release sent too (a UA let go at shutdown is free
    /// for its next node at once); fails at once while Redis is unreachable
    /// (shutdown does not wait out an outage).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let queued = self.inner.calls_queued.get();
        std::future::poll_fn(|cx| {
            let inner = &*self.inner;
            if inner.calls_done.get() >= queued {
                return Poll::Ready(Ok(()));
            }
            if let Some(cause) = inner.unavailable.borrow().clone() {
                return Poll::Ready(Err(StoreError::Unreachable { cause }));
            }
            inner.flushes.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn token_for(&self, uaid: &Uaid) -> (Rc<[u8]>, &'static [u8]) {
        if let Some(token) = self.inner.tokens.borrow().get(uaid) {
            return (token.clone(), b"held");
        }
        let token = self.new_token();
        self.hold(*uaid, token.clone());
        (token, b"new")
    }

    /// This shard writes `uaid` under `token` from now on.
    fn hold(&self, uaid: Uaid, token: Rc<[u8]>) {
        self.inner.tokens.borrow_mut().insert(uaid, token);
        if let Ok(mut held) = self.inner.held.lock() {
            held.insert(uaid);
        }
    }

    /// This shard no longer holds `uaid`; returns the token it held it by.
    fn let_go(&self, uaid: &Uaid) -> Option<Rc<[u8]>> {
        let token = self.inner.tokens.borrow_mut().remove(uaid);
        if let Ok(mut held) = self.inner.held.lock() {
            held.remove(uaid);
        }
        token
    }

    /// `node_url nonce`: unique per claim, and names the node.
    fn new_token(&self) -> Rc<[u8]> {
        let nonce: u64 = rand::thread_rng().gen();
        format!("{} {nonce:016x}", self.inner.options.node_url)
            .into_bytes()
            .into()
    }

    fn push(&self, op: Op) {
        let queued = &self.inner.calls_queued;
        queued.set(queued.get() + 1);
        self.inner.queue.borrow_mut().push_back(op);
        self.wake_writer();
    }

    fn wake_writer(&self) {
        if let Some(waker) = self.inner.writer.borrow_mut().take() {
            waker.wake();
        }
    }

    fn ttl_arg(&self) -> Vec<u8> {
        self.inner.options.ua_ttl_ms.to_string().into_bytes()
    }

    /// The writer loop; spawn it once on the shard's executor. Returns once
    /// closed and drained.
    pub async fn run_writer(&self) {
        let inner = &*self.inner;
        let mut failures = 0u32;
        loop {
            let waiting = std::future::poll_fn(|cx| {
                if !inner.queue.borrow().is_empty() {
                    return Poll::Ready(true);
                }
                if inner.closed.get() {
                    return Poll::Ready(false);
                }
                *inner.writer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if !waiting {
                return;
            }
            let calls: Vec<Command> = {
                let queue = inner.queue.borrow();
                let take = queue.len().min(inner.options.pipeline_max.max(1));
                queue
                    .iter()
                    .take(take)
                    .map(|op| match op {
                        Op::Write { call, .. }
                        | Op::Unanswered { call }
                        | Op::Claim { call, .. } => call.clone(),
                    })
                    .collect()
            };
            match inner.client.run(&calls, true).await {
                Ok(replies) => {
                    failures = 0;
                    self.settle(replies);
                }
                // The first failure after a failover is often only the
                // client's stale view of the slots (it re-reads them on the
                // next batch): send the batch again at once before anything
                // waiting is told.
                Err(_) if failures == 0 => failures = 1,
                Err(error) => {
                    failures += 1;
                    self.batch_failed(&error);
                    if inner.closed.get() {
                        return;
                    }
                    glommio::timer::sleep(RETRY_AFTER).await;
                }
            }
        }
    }

    /// A batch went through: its writes are durable (or fenced), its claims
    /// answered.
    fn settle(&self, replies: Vec<Reply>) {
        let inner = &*self.inner;
        let calls = replies.len() as u64;
        self.count(|stats| {
            stats.batches += 1;
            stats.calls += calls;
        });
        let mut durable = inner.durable_lsn.get();
        for reply in replies {
            let Some(op) = inner.queue.borrow_mut().pop_front() else {
                break;
            };
            inner.calls_done.set(inner.calls_done.get() + 1);
            match op {
                Op::Write {
                    lsn, uaid, token, ..
                } => {
                    durable = durable.max(lsn);
                    if let Reply::Error(error) = reply {
                        if !error.starts_with("FENCED") {
                            tracing::error!(%error, lsn, "cluster store refused a record");
                        }
                        // A claim made since is not lost by this refusal.
                        let lost = inner
                            .tokens
                            .borrow()
                            .get(&uaid)
                            .is_some_and(|current| Rc::ptr_eq(current, &token));
                        if lost {
                            self.let_go(&uaid);
                        }
                        inner.fenced.borrow_mut().push(Fenced { lsn, uaid, lost });
                        self.count(|stats| stats.fenced_writes += 1);
                    }
                }
                Op::Unanswered { .. } => {}
                Op::Claim { uaid, answer, .. } => {
                    self.count(|stats| stats.claims += 1);
                    let claimed = claim_reply(uaid, reply);
                    let _ = answer.try_send(claimed);
                }
            }
        }
        if inner.unavailable.borrow_mut().take().is_some() {
            tracing::info!("cluster store reachable again");
        }
        inner.durable_lsn.set(durable);
        self.wake_waiters(durable);
        self.wake_flushes();
    }

    /// A batch failed: nothing in it counts. Writes stay queued; claims too,
    /// for [`CLAIM_PATIENCE`], then they fail (their sockets and requests do
    /// not wait out an outage).
    fn batch_failed(&self, error: &RedisError) {
        let inner = &*self.inner;
        self.count(|stats| stats.failed_batches += 1);
        let first_failure = inner.unavailable.borrow().is_none();
        if first_failure {
            tracing::warn!(%error, "cluster store batch failed; retrying");
        }
        *inner.unavailable.borrow_mut() = Some(error.to_string());
        let queued = inner.queue.borrow().len();
        inner.queue.borrow_mut().retain(|op| match op {
            Op::Claim {
                uaid,
                answer,
                queued_at,
                ..
            } if queued_at.elapsed() >= CLAIM_PATIENCE => {
                self.let_go(uaid);
                let _ = answer.try_send(Err(ClaimError(error.to_string())));
                false
            }
            _ => true,
        });
        let given_up = queued - inner.queue.borrow().len();
        inner
            .calls_done
            .set(inner.calls_done.get() + given_up as u64);
        // A flush gives up now; waits for durability look again and go on.
        self.wake_waiters(Lsn::MAX);
        self.wake_flushes();
    }

    fn wake_flushes(&self) {
        let flushes = std::mem::take(&mut *self.inner.flushes.borrow_mut());
        for waker in flushes {
            waker.wake();
        }
    }

    /// Wakes whoever waits for an LSN up to `upto`.
    fn wake_waiters(&self, upto: Lsn) {
        let woken: Vec<Waker> = {
            let mut waiters = self.inner.waiters.borrow_mut();
            let later = waiters.split_off(&upto.saturating_add(1));
            std::mem::replace(&mut *waiters, later)
                .into_values()
                .flatten()
                .collect()
        };
        for waker in woken {
            waker.wake();
        }
    }
}

/// `claim.lua`'s answer as records.
fn claim_reply(uaid: Uaid, reply: Reply) -> Result<Claim, ClaimError> {
    let malformed = |what: &str| ClaimError(format!("malformed claim reply: {what}"));
    let Reply::Array(parts) = reply else {
        return Err(match reply {
            Reply::Error(error) => ClaimError(error),
            _ => malformed("not an array"),
        });
    };
    let [previous, ua, messages] =
        <[Reply; 3]>::try_from(parts).map_err(|_| malformed("not three parts"))?;
    let previous = match previous {
        Reply::Bulk(token) => token,
        _ => return Err(malformed("no previous owner")),
    };
    let (ua, messages) = (pairs(ua)?, pairs(messages)?);
    let records = keys::records_of(uaid, &ua, &messages).map_err(ClaimError)?;
    let previous = std::str::from_utf8(&previous)
        .ok()
        .and_then(|token| token.split_once(' '))
        .filter(|(node, _)| !node.is_empty())
        .map(|(node, nonce)| PreviousClaim {
            node: node.to_owned(),
            nonce: nonce.to_owned(),
        });
    Ok(Claim { records, previous })
}

/// An `HGETALL` reply as (field, value) pairs.
fn pairs(reply: Reply) -> Result<keys::HashFields, ClaimError> {
    let Reply::Array(items) = reply else {
        return Err(ClaimError(
            "malformed claim reply: a hash is not an array".into(),
        ));
    };
    let mut bulks = items.into_iter().map(|item| match item {
        Reply::Bulk(bytes) => Ok(bytes),
        _ => Err(ClaimError(
            "malformed claim reply: a field is not a string".into(),
        )),
    });
    let mut out = Vec::new();
    while let Some(field) = bulks.next() {
        let value = bulks
            .next()
            .ok_or_else(|| ClaimError("malformed claim reply: odd hash".into()))??;
        out.push((field?, value));
    }
    Ok(out)
}

impl RecordLog for ClusterLog {
    fn append_batch(&self, records: &[Record]) -> Result<Lsn, StoreError> {
        let mut lsn = self.inner.last_lsn.get();
        let ttl = self.ttl_arg();
        for record in records {
            lsn += 1;
            let uaid = record.uaid();
            let (token, mode) = self.token_for(&uaid);
            let keys = ua_keys(&uaid);
            let mut args = vec![token.to_vec(), mode.to_vec(), ttl.clone()];
            args.extend(keys::write_op(record)?);
            let call = Command::script(WRITE, &keys.each_ref().map(Vec::as_slice), args);
            self.inner.appended.set(self.inner.appended.get() + 1);
            self.push(Op::Write {
                lsn,
                uaid,
                token,
                call,
            });
            // In the same batch, so durable with it (not atomic with it: a
            // member whose write was fenced is found not to have the app
            // when a notification reaches it).
            if let Some((key, argv)) = keys::app_members_op(record) {
                self.push(Op::Unanswered {
                    call: Command::new(&key, argv),
                });
            }
        }
        self.inner.last_lsn.set(lsn);
        Ok(lsn)
    }

    fn last_lsn(&self) -> Lsn {
        self.inner.last_lsn.get()
    }

    fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn.get()
    }

    fn failed(&self) -> bool {
        self.inner.unavailable.borrow().is_some()
    }

    /// Nothing to compact: Redis holds the state, not a log.
    fn bytes_appended(&self) -> u64 {
        0
    }

    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), StoreError>> + 'static {
        let log = self.clone();
        std::future::poll_fn(move |cx| {
            let inner = &*log.inner;
            if inner.durable_lsn.get() >= lsn {
                return Poll::Ready(Ok(()));
            }
            // Unreachable is not failed: the writer keeps trying, so a frame
            // waits for its record (the driver answers held requests 503
            // while `failed` reads true; it does not wait here).
            if inner.closed.get() {
                let cause = inner.unavailable.borrow().clone();
                return Poll::Ready(Err(cause.map_or(StoreError::Closed, |cause| {
                    StoreError::Unreachable { cause }
                })));
            }
            inner
                .waiters
                .borrow_mut()
                .entry(lsn)
                .or_default()
                .push(cx.waker().clone());
            Poll::Pending
        })
    }

    async fn compact(
        &self,
        _covers_lsn: Lsn,
        _live: impl IntoIterator<Item = Record>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    fn claim(&self, uaid: Uaid) -> impl Future<Output = Result<Claim, ClaimError>> + 'static {
        let token = self.new_token();
        self.hold(uaid, token.clone());
        let keys = ua_keys(&uaid);
        let call = Command::script(
            CLAIM,
            &keys.each_ref().map(Vec::as_slice),
            vec![token.to_vec(), self.ttl_arg()],
        );
        let (answer, receiver) = local_channel::new_bounded(1);
        self.push(Op::Claim {
            uaid,
            call,
            answer,
            queued_at: Instant::now(),
        });
        async move {
            receiver
                .recv()
                .await
                .unwrap_or_else(|| Err(ClaimError("the cluster store closed".into())))
        }
    }

    fn release(&self, uaid: Uaid) {
        let Some(token) = self.let_go(&uaid) else {
            return;
        };
        let keys = ua_keys(&uaid);
        let call = Command::script(
            RELEASE,
            &keys.each_ref().map(Vec::as_slice),
            vec![token.to_vec()],
        );
        self.push(Op::Unanswered { call });
    }

    fn displaced(&self, uaid: Uaid, nonce: &str) -> bool {
        let current = self.inner.tokens.borrow().get(&uaid).is_some_and(|token| {
            token.rsplit(|byte| *byte == b' ').next() == Some(nonce.as_bytes())
        });
        if current {
            self.let_go(&uaid);
        }
        current
    }

    fn take_fenced(&self) -> Vec<Fenced> {
        std::mem::take(&mut *self.inner.fenced.borrow_mut())
    }
}
