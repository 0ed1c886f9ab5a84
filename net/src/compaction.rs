//! WAL compaction driven by the shard: when, and the live state it writes.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use glommio::spawn_local;

use herald_engine::record::Record;
use herald_engine::{Millis, Uaid};

use herald_store::RecordLog;

use crate::ctx::{now_ms, Ctx};

/// Compaction bookkeeping: one at a time, triggered by bytes appended.
#[derive(Default)]
pub struct Compaction {
    pub running: Cell<bool>,
    appended_at_last: Cell<u64>,
    /// Longest the shard was late for a tick while this compaction ran.
    pub stall: Cell<Duration>,
}

/// Writes a snapshot of live state once the log has grown by
/// `wal_compact_after_bytes`, so it does not grow without bound. The snapshot
/// is taken one UA at a time while the store writes it in chunks and yields,
/// so the shard keeps serving (see `Shard::snapshot_user_agent` on why a
/// snapshot taken across turns is still exact after replay).
pub fn maybe_compact(ctx: &Rc<Ctx>, compaction: &Rc<Compaction>) {
    let appended = ctx.journal.bytes_appended();
    let threshold = ctx.shared.config.limits.wal_compact_after_bytes;
    if compaction.running.get() || appended - compaction.appended_at_last.get() < threshold {
        return;
    }
    compaction.running.set(true);
    compaction.appended_at_last.set(appended);
    let started = std::time::Instant::now();
    let covers = ctx.journal.last_lsn();
    let uaids = ctx.driver.borrow_mut().start_snapshot();
    compaction.stall.set(started.elapsed());
    let produced = Rc::new(Cell::new(0usize));
    let live = LiveState {
        ctx: ctx.clone(),
        uaids: uaids.into_iter(),
        buffered: Vec::new(),
        now_ms: now_ms(),
        produced: produced.clone(),
    };
    let (ctx, compaction) = (ctx.clone(), compaction.clone());
    spawn_local(async move {
        let result = ctx.journal.compact(covers, live).await;
        let stall = compaction.stall.get();
        match result {
            Ok(report) => tracing::info!(
                shard = ctx.index,
                records = produced.get(),
                pause_us = stall.as_micros() as u64,
                took_ms = started.elapsed().as_millis() as u64,
                ?report,
                "WAL compacted"
            ),
            Err(error) => tracing::error!(shard = ctx.index, %error, "WAL compaction failed"),
        }
        ctx.shared.metrics.compaction(ctx.index, stall);
        compaction.running.set(false);
    })
    .detach();
}

/// The shard's live state as records, produced one UA at a time; the engine
/// is borrowed only inside `next`, never across the store's yields.
struct LiveState {
    ctx: Rc<Ctx>,
    uaids: std::vec::IntoIter<Uaid>,
    buffered: Vec<Record>,
    now_ms: Millis,
    produced: Rc<Cell<usize>>,
}

impl Iterator for LiveState {
    type Item = Record;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buffered.is_empty() {
            let uaid = self.uaids.next()?;
            let driver = self.ctx.driver.borrow();
            driver
                .engine()
                .snapshot_user_agent(self.now_ms, uaid, &mut self.buffered);
            // Pop from the end: keep the UA's records in their order.
            self.buffered.reverse();
        }
        self.produced.set(self.produced.get() + 1);
        self.buffered.pop()
    }
}
