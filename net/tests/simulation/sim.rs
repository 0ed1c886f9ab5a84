//! The simulation's state and its loop: one random action per step, then a
//! random durability event (a group commit, a partial one, none, or a
//! crash), then the checks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use herald_engine::limits::Limits;
use herald_engine::record::Record;
use herald_engine::{ConnId, Lsn, Millis, RequestId};
use herald_store::RecordLog;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::*;
use crate::model::{Awaiting, Counters, Expect, LogView, ModelUa, Tok, Transient};

const TRACE_LEN: usize = 40;

/// How long the clock may run while records wait for their commit. A real
/// group commit takes milliseconds; this is less than the retry interval,
/// so a socket held back by a register reply misses at most one retry.
pub const UNCOMMITTED_MS_MAX: Millis = 1_000;

pub fn sim_limits() -> Limits {
    Limits {
        channels_per_uaid_max: 4,
        pending_per_uaid_max: 4,
        pings_per_minute_max: 1_000,
        retry_interval_ms: 2_000,
        // The model knows no expiry (a long run could pass a test day).
        ua_expiry_days: 0,
        ..Limits::test_min()
    }
}

macro_rules! ensure {
    ($sim:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            $sim.fail(format!($($arg)+));
        }
    };
}
pub(crate) use ensure;

pub struct Sim {
    pub seed: u64,
    pub rng: StdRng,
    pub h: Harness,
    pub uas: Vec<ModelUa>,
    /// conn → (UA index, Web Push mode).
    pub conns: HashMap<ConnId, (usize, bool)>,
    /// Replies a UA waits for, by socket.
    pub awaiting: HashMap<ConnId, Awaiting>,
    /// Per socket held back by a frame waiting for its record: the
    /// (channel, token) of every message pending meanwhile.
    pub held_tokens: HashMap<ConnId, Vec<(String, Tok)>>,
    /// Closes the model expects (a newer socket took the UAID).
    pub expected_closes: HashMap<ConnId, u16>,
    pub transient: Vec<Transient>,
    /// AS requests whose answers have not come yet.
    pub answers: BTreeMap<RequestId, Expect>,
    /// Messages (serials) whose AS got a 2xx.
    pub acknowledged: BTreeSet<u64>,
    /// Messages (serials) whose DELETE got a 204.
    pub deleted: BTreeSet<u64>,
    /// Not-newer versions answered 200: (UA, channel, version).
    pub covered_versions: Vec<(usize, String, u64)>,
    /// Every appended record, as the shards would apply them.
    pub view: LogView,
    /// Per shard, the LSN up to which the view has seen records.
    pub log_cursor: Vec<Lsn>,
    pub wakeup_cursor: usize,
    /// When records started waiting for a commit.
    pub uncommitted_since: Option<Millis>,
    pub step: usize,
    pub steps: usize,
    pub trace: VecDeque<String>,
    pub next_serial: u64,
    pub counters: Counters,
    /// Removals the shard logged for the UA of the current push.
    pub step_removals: Vec<(u64, herald_engine::message::Removal)>,
    pub test_name: &'static str,
}

impl Sim {
    pub fn new(seed: u64, shards: usize, test_name: &'static str) -> Sim {
        let mut h = Harness::build(shards, sim_limits(), &[ROUTED_NETWORK], seed);
        h.auto_commit = false;
        Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            h,
            uas: Vec::new(),
            conns: HashMap::new(),
            awaiting: HashMap::new(),
            held_tokens: HashMap::new(),
            expected_closes: HashMap::new(),
            transient: Vec::new(),
            answers: BTreeMap::new(),
            acknowledged: BTreeSet::new(),
            deleted: BTreeSet::new(),
            covered_versions: Vec::new(),
            view: LogView::default(),
            log_cursor: vec![0; shards],
            wakeup_cursor: 0,
            uncommitted_since: None,
            step: 0,
            steps: 0,
            trace: VecDeque::new(),
            next_serial: 0,
            counters: Counters::default(),
            step_removals: Vec::new(),
            test_name,
        }
    }

    pub fn fail(&self, message: String) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!(
            "HERALD_SIM_SEED={} shards={} step {} (t=+{} ms): {message}\n\
             replay: HERALD_SIM_SEED={} cargo test --release -p herald-net --test simulation -- {} --nocapture\n\
             last steps:\n  {}",
            self.seed,
            self.h.shards.len(),
            self.step,
            self.h.now - START_MS,
            self.seed,
            self.test_name,
            trace.join("\n  ")
        );
    }

    pub fn note(&mut self, text: String) {
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

    pub fn limits(&self) -> &Limits {
        &self.h.limits
    }

    pub fn shards(&self) -> usize {
        self.h.shards.len()
    }

    pub fn owner(&self, ua: usize) -> usize {
        self.uas[ua].uaid_bytes.shard(self.shards())
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.gen_range(0..items.len())])
        }
    }

    pub fn pick_string(&mut self, items: &[String]) -> Option<String> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.gen_range(0..items.len())].clone())
        }
    }

    pub fn live_uas(&self) -> Vec<usize> {
        (0..self.uas.len())
            .filter(|&i| self.uas[i].conn.is_some())
            .collect()
    }

    /// Connected UAs that wait for no reply: free to send their next message.
    pub fn idle_uas(&self) -> Vec<usize> {
        (0..self.uas.len())
            .filter(|&i| {
                self.uas[i]
                    .conn
                    .is_some_and(|conn| !self.awaiting.contains_key(&conn))
            })
            .collect()
    }

    // ---- the run -------------------------------------------------------

    pub fn run(&mut self, steps: usize) {
        self.steps = steps;
        for step in 0..steps {
            self.step = step;
            // Now and then the harness commits by itself inside its pump.
            self.h.auto_commit = self.rng.gen_ratio(1, 10);
            if self.late_in_run() && self.counters.compactions == 0 {
                // Every run compacts at least once.
                self.compact();
            } else {
                self.random_step();
            }
            self.h.auto_commit = false;
            self.settle();
            self.durability_event();
            self.check();
        }
        self.step = steps;
        self.final_replay_check();
    }

    /// The last quarter of the run: what a run must contain and has not
    /// happened by chance is made to happen.
    fn late_in_run(&self) -> bool {
        self.step >= self.steps - self.steps / 4
    }

    // ---- records ---------------------------------------------------------

    /// Takes the records appended since the last call into the view and
    /// returns them as (shard, LSN, record).
    pub fn sync_records(&mut self) -> Vec<(usize, Lsn, Record)> {
        let mut fresh = Vec::new();
        for shard in 0..self.shards() {
            let cursor = self.log_cursor[shard];
            for (at, record) in self.h.logs[shard]
                .records_after(cursor)
                .into_iter()
                .enumerate()
            {
                let lsn = cursor + 1 + at as Lsn;
                self.view.apply(lsn, &record);
                fresh.push((shard, lsn, record));
            }
            self.log_cursor[shard] = self.h.logs[shard].last_lsn();
        }
        fresh
    }

    pub fn durable_lsn(&self, shard: usize) -> Lsn {
        self.h.logs[shard].durable_lsn()
    }

    pub fn uncommitted(&self) -> usize {
        self.h.logs.iter().map(|log| log.uncommitted()).sum()
    }

    // ---- durability ------------------------------------------------------

    /// After the step's action: the store commits everything, or part of it
    /// (a group commit that covered only the records before a point), or
    /// nothing yet; or the process crashes.
    fn durability_event(&mut self) {
        self.sync_records();
        if self.uncommitted() == 0 {
            self.uncommitted_since = None;
            return;
        }
        let since = *self.uncommitted_since.get_or_insert(self.h.now);
        if self.late_in_run() && self.counters.crashes_losing_records == 0 {
            // Every run crashes at least once with records not durable.
            return self.crash_with(&vec![0; self.shards()]);
        }
        match self.rng.gen_range(0..100) {
            0..=49 => self.full_commit(),
            50..=64 => self.partial_commit(),
            65..=94 if self.h.now - since <= UNCOMMITTED_MS_MAX => {}
            65..=94 => self.full_commit(),
            _ => self.crash(),
        }
    }

    /// Every shard's fsync covers all it appended.
    pub fn full_commit(&mut self) {
        self.note("group commit: everything durable".into());
        self.h.commit();
        self.counters.full_commits += 1;
        self.uncommitted_since = None;
        self.settle();
        self.after_full_commit();
    }

    fn partial_commit(&mut self) {
        let mut covered = Vec::new();
        for shard in 0..self.shards() {
            let durable = self.durable_lsn(shard);
            let last = self.h.logs[shard].last_lsn();
            let lsn = self.rng.gen_range(durable..=last);
            covered.push((durable, lsn, last));
            if lsn > durable {
                self.h.commit_to(shard, lsn);
            }
        }
        self.note(format!(
            "partial group commit (durable, now durable, last) per shard {covered:?}"
        ));
        self.counters.partial_commits += 1;
        self.settle();
    }

    /// The process dies: every shard keeps its durable records and a random
    /// prefix of the rest (a write that reached the disk in part), maybe
    /// after compacting first; then every shard restarts by replay.
    pub fn crash(&mut self) {
        self.settle();
        self.sync_records();
        if self.rng.gen_bool(0.5) {
            self.compact();
        }
        let keeps: Vec<usize> = (0..self.shards())
            .map(|shard| {
                let uncommitted = self.h.logs[shard].uncommitted();
                match self.rng.gen_range(0..5) {
                    0 | 1 => 0,
                    2 => uncommitted,
                    _ => self.rng.gen_range(0..=uncommitted),
                }
            })
            .collect();
        self.crash_with(&keeps);
    }

    /// A crash that keeps `keeps[shard]` of each shard's records that were
    /// not durable, and the restart.
    pub fn crash_with(&mut self, keeps: &[usize]) {
        self.settle();
        self.sync_records();
        let lost: usize = (0..self.shards())
            .map(|shard| self.h.logs[shard].uncommitted() - keeps[shard])
            .sum();
        let durable_before: Vec<Lsn> = (0..self.shards()).map(|s| self.durable_lsn(s)).collect();
        // A restart takes time: the clock moves on before the shards serve
        // again (same-ms restarts reuse TTL=0 message ids: a rules test).
        let down_ms = self.rng.gen_range(1..3_000);
        let uncommitted: Vec<usize> = self.h.logs.iter().map(|log| log.uncommitted()).collect();
        self.note(format!(
            "crash: uncommitted {uncommitted:?}, kept {keeps:?}; restart by replay, down {down_ms} ms"
        ));
        self.h.crash(keeps);
        self.counters.restarts += 1;
        self.counters.records_lost += lost as u64;
        if lost > 0 {
            self.counters.crashes_losing_records += 1;
        }
        self.recover(&durable_before);
        self.uncommitted_since = None;
        self.h.advance(down_ms);
        self.settle();
    }

    /// WAL compaction of some shards: each log becomes its engine's snapshot
    /// (which also makes everything it appended durable).
    pub fn compact(&mut self) {
        let mut compacted = Vec::new();
        for shard in 0..self.shards() {
            if compacted.is_empty() && shard + 1 == self.shards() || self.rng.gen_bool(0.5) {
                self.h.compact(shard);
                compacted.push(shard);
            }
        }
        self.note(format!("compaction of shards {compacted:?}"));
        let shards = self.shards();
        for ua in &mut self.uas {
            if compacted.contains(&ua.uaid_bytes.shard(shards)) {
                let acked = std::mem::take(&mut ua.acked_ids);
                ua.forgotten_ids.extend(acked);
            }
        }
        self.counters.compactions += 1;
        self.prune_limbo();
    }

    /// Removed messages whose removal is durable can never come back.
    pub fn prune_limbo(&mut self) {
        let now = self.h.now;
        let durable: Vec<Lsn> = (0..self.shards()).map(|s| self.durable_lsn(s)).collect();
        let shards = self.shards();
        for ua in &mut self.uas {
            let shard = ua.uaid_bytes.shard(shards);
            let Some(view) = self.view.uas.get_mut(&ua.uaid_bytes) else {
                continue;
            };
            ua.limbo.retain(|removed| {
                let removal = view.removed.get(&removed.msg.seq).copied();
                let keep =
                    removal.is_some_and(|lsn| lsn > durable[shard]) && !removed.msg.expired(now);
                if !keep {
                    view.removed.remove(&removed.msg.seq);
                }
                keep
            });
        }
    }
}
