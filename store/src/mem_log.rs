//! Records in memory with a crash model, for simulations.
//!
//! Like [`crate::MemStorage`] for files, a [`MemLog`] keeps two images of
//! the log: what was appended ("written") and what a commit made durable.
//! The simulation decides when a commit happens ([`MemLog::commit`]), so it
//! can crash between an append and its commit, or in the middle of a group
//! commit ([`MemLog::crash`] keeps the durable records plus a prefix of the
//! rest: the torn tail the WAL's recovery cuts at a record boundary).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

use herald_engine::record::Record;
use herald_engine::Lsn;

use crate::record_log::RecordLog;
use crate::StoreError;

/// A record log in memory. Cheap to clone (an `Rc`); single-threaded.
#[derive(Clone, Default)]
pub struct MemLog {
    state: Rc<RefCell<State>>,
}

#[derive(Default)]
struct State {
    /// The newest compaction's live records and the LSN they cover.
    snapshot: Vec<Record>,
    snapshot_lsn: Lsn,
    /// Records after the snapshot, in LSN order (the first is
    /// `snapshot_lsn + 1`).
    records: Vec<Record>,
    durable_lsn: Lsn,
    failure: Option<String>,
    bytes_appended: u64,
    waiters: BTreeMap<Lsn, Vec<Waker>>,
}

impl State {
    fn last_lsn(&self) -> Lsn {
        self.snapshot_lsn + self.records.len() as Lsn
    }

    fn failed_error(&self) -> Option<StoreError> {
        self.failure.as_ref().map(|cause| StoreError::Failed {
            cause: cause.clone(),
        })
    }
}

impl MemLog {
    /// An empty log.
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// Makes every record appended so far durable (one group commit) and
    /// returns the new durable LSN. A failed log commits nothing.
    pub fn commit(&self) -> Lsn {
        let last = self.last_lsn();
        self.commit_to(last)
    }

    /// Makes records up to `lsn` durable (a commit that covered only part of
    /// what was appended).
    pub fn commit_to(&self, lsn: Lsn) -> Lsn {
        let wake = {
            let mut state = self.state.borrow_mut();
            if state.failure.is_some() {
                return state.durable_lsn;
            }
            let target = lsn.min(state.last_lsn());
            if target <= state.durable_lsn {
                return state.durable_lsn;
            }
            state.durable_lsn = target;
            let later = state.waiters.split_off(&(target + 1));
            std::mem::replace(&mut state.waiters, later)
        };
        wake.into_values().flatten().for_each(Waker::wake);
        self.durable_lsn()
    }

    /// Records appended and not yet durable.
    pub fn uncommitted(&self) -> usize {
        let state = self.state.borrow();
        (state.last_lsn() - state.durable_lsn.max(state.snapshot_lsn)) as usize
    }

    /// Fails the log for good, as a write or sync error does: appends are
    /// refused and waiters get the failure.
    pub fn fail(&self, cause: &str) {
        let wake = {
            let mut state = self.state.borrow_mut();
            state.failure.get_or_insert_with(|| cause.to_owned());
            std::mem::take(&mut state.waiters)
        };
        wake.into_values().flatten().for_each(Waker::wake);
    }

    /// What a crash right now leaves: the durable records, and of the rest
    /// the first `keep_uncommitted` (a write that reached the disk in part).
    /// The result is a fresh log whose records are all durable.
    pub fn crash(&self, keep_uncommitted: usize) -> MemLog {
        let state = self.state.borrow();
        let durable_records = state.durable_lsn.saturating_sub(state.snapshot_lsn) as usize;
        let kept = (durable_records + keep_uncommitted).min(state.records.len());
        let survivor = State {
            snapshot: state.snapshot.clone(),
            snapshot_lsn: state.snapshot_lsn,
            records: state.records[..kept].to_vec(),
            durable_lsn: state.snapshot_lsn + kept as Lsn,
            ..State::default()
        };
        MemLog {
            state: Rc::new(RefCell::new(survivor)),
        }
    }

    /// Every record to replay at start-up, in order: the snapshot's, then
    /// the log's after it.
    pub fn replay(&self) -> Vec<Record> {
        let state = self.state.borrow();
        state
            .snapshot
            .iter()
            .chain(state.records.iter())
            .cloned()
            .collect()
    }

    /// Whether a record up to `lsn` survives a crash; `Some(record)` for an
    /// LSN that is durable and not folded into the snapshot.
    pub fn durable_record(&self, lsn: Lsn) -> Option<Record> {
        let state = self.state.borrow();
        if lsn > state.durable_lsn || lsn <= state.snapshot_lsn {
            return None;
        }
        state
            .records
            .get((lsn - state.snapshot_lsn - 1) as usize)
            .cloned()
    }

    /// The records that survive any crash: the snapshot's and the durable
    /// ones after it.
    pub fn durable_records(&self) -> Vec<Record> {
        let state = self.state.borrow();
        let durable = state.durable_lsn.saturating_sub(state.snapshot_lsn) as usize;
        state
            .snapshot
            .iter()
            .chain(state.records[..durable.min(state.records.len())].iter())
            .cloned()
            .collect()
    }

    /// The records appended after `lsn` that are not folded into a snapshot.
    pub fn records_after(&self, lsn: Lsn) -> Vec<Record> {
        let state = self.state.borrow();
        let skip = lsn.saturating_sub(state.snapshot_lsn) as usize;
        state.records.iter().skip(skip).cloned().collect()
    }

    pub fn snapshot_lsn(&self) -> Lsn {
        self.state.borrow().snapshot_lsn
    }
}

impl RecordLog for MemLog {
    fn append_batch(&self, records: &[Record]) -> Result<Lsn, StoreError> {
        let mut state = self.state.borrow_mut();
        if let Some(error) = state.failed_error() {
            return Err(error);
        }
        // The body size stands for the frame size: only compaction's trigger reads it.
        state.bytes_appended += records
            .iter()
            .map(|record| std::mem::size_of_val(record) as u64)
            .sum::<u64>();
        state.records.extend_from_slice(records);
        Ok(state.last_lsn())
    }

    fn last_lsn(&self) -> Lsn {
        self.state.borrow().last_lsn()
    }

    fn durable_lsn(&self) -> Lsn {
        self.state.borrow().durable_lsn
    }

    fn failed(&self) -> bool {
        self.state.borrow().failure.is_some()
    }

    fn bytes_appended(&self) -> u64 {
        self.state.borrow().bytes_appended
    }

    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), StoreError>> + 'static {
        let log = self.clone();
        std::future::poll_fn(move |cx| {
            let mut state = log.state.borrow_mut();
            if state.durable_lsn >= lsn {
                return Poll::Ready(Ok(()));
            }
            if let Some(error) = state.failed_error() {
                return Poll::Ready(Err(error));
            }
            state
                .waiters
                .entry(lsn)
                .or_default()
                .push(cx.waker().clone());
            Poll::Pending
        })
    }

    async fn compact(
        &self,
        covers_lsn: Lsn,
        live: impl IntoIterator<Item = Record>,
    ) -> Result<(), StoreError> {
        let mut state = self.state.borrow_mut();
        if let Some(error) = state.failed_error() {
            return Err(error);
        }
        if covers_lsn > state.last_lsn() || covers_lsn < state.snapshot_lsn {
            return Err(StoreError::Compaction(format!(
                "LSN {covers_lsn} is outside the log's {}..={}",
                state.snapshot_lsn,
                state.last_lsn()
            )));
        }
        let folded = (covers_lsn - state.snapshot_lsn) as usize;
        state.records.drain(..folded);
        state.snapshot = live.into_iter().collect();
        state.snapshot_lsn = covers_lsn;
        // The snapshot is written and synced whole, like the WAL's.
        state.durable_lsn = state.durable_lsn.max(covers_lsn);
        Ok(())
    }
}
