//! The log a shard appends to: synchronous `append` into a batch buffer, a
//! committer task that writes and syncs batches (group commit), durability
//! waiters, and compaction. See the crate docs for the protocol.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::str::FromStr;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use herald_engine::record::Record;
use herald_engine::Lsn;

use crate::format::{self, FrameKind};
use crate::limits::{SEGMENT_TARGET_BYTES, SEGMENT_ZERO_AHEAD_BYTES, SNAPSHOT_CHUNK_BYTES};
use crate::record_log::RecordLog;
use crate::recovery::{
    self, parse_name, segment_name, snapshot_name, snapshot_temp_name, FileName, RecoveryProgress,
    RecoveryReport,
};
use crate::storage::Storage;
use crate::StoreError;

/// When the committer calls fdatasync (SPEC §2 `--fsync`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum FsyncMode {
    /// One fdatasync per record.
    Always,
    /// Group commit: one fdatasync per batch of whatever accumulated while
    /// the previous one ran.
    #[default]
    Batch,
    /// Write, never sync; a record counts as durable once written to the
    /// page cache. Benchmarks only: a machine crash loses data.
    Never,
}

impl FsyncMode {
    pub const ALL: [FsyncMode; 3] = [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Never];

    /// The mode's name on the command line and in the config file: the one
    /// table of spellings (`FromStr` and the clap `ValueEnum` use it).
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Batch => "batch",
            FsyncMode::Never => "never",
        }
    }
}

impl FromStr for FsyncMode {
    type Err = String;

    fn from_str(text: &str) -> Result<FsyncMode, String> {
        FsyncMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| format!("fsync must be always, batch or never, not {text:?}"))
    }
}

/// `--fsync` lists and checks its values (`herald serve --help`).
#[cfg(feature = "clap")]
impl clap::ValueEnum for FsyncMode {
    fn value_variants<'a>() -> &'a [FsyncMode] {
        &FsyncMode::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            FsyncMode::Always => "one fdatasync per record",
            FsyncMode::Batch => "group commit: one fdatasync per batch of concurrent records",
            FsyncMode::Never => {
                "no fdatasync: a machine crash loses acknowledged data (benchmarks only)"
            }
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).help(help))
    }
}

/// A recovery progress callback.
pub type ProgressFn = Rc<dyn Fn(&RecoveryProgress)>;
/// Told how long each fdatasync of a commit took (for a latency histogram).
pub type SyncObserver = Rc<dyn Fn(Duration)>;

/// How a [`Log`] behaves.
#[derive(Clone)]
pub struct LogOptions {
    pub fsync: FsyncMode,
    /// Start a new segment once the active one would grow past this.
    pub segment_target_bytes: u64,
    /// Called every [`crate::limits::RECOVERY_PROGRESS_EVERY_RECORDS`]
    /// records during recovery (which also logs with `tracing::info!`).
    pub progress: Option<ProgressFn>,
    pub on_sync: Option<SyncObserver>,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            fsync: FsyncMode::Batch,
            segment_target_bytes: SEGMENT_TARGET_BYTES,
            progress: None,
            on_sync: None,
        }
    }
}

impl LogOptions {
    pub fn with_fsync(fsync: FsyncMode) -> LogOptions {
        LogOptions {
            fsync,
            ..LogOptions::default()
        }
    }
}

impl std::fmt::Debug for LogOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogOptions")
            .field("fsync", &self.fsync)
            .field("segment_target_bytes", &self.segment_target_bytes)
            .field("progress", &self.progress.is_some())
            .field("on_sync", &self.on_sync.is_some())
            .finish()
    }
}

/// What [`Log::open`] recovered: the records to replay, in order (the
/// snapshot's, then the log's after it), and what recovery found and did.
#[derive(Debug)]
pub struct Recovered {
    pub records: Vec<Record>,
    pub report: RecoveryReport,
}

/// Counters for metrics; see [`Log::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    pub records_appended: u64,
    /// Frame bytes appended (header + body + padding).
    pub bytes_appended: u64,
    /// Batches written (one write each).
    pub batches_written: u64,
    /// Batches made durable by an fdatasync.
    pub batches_synced: u64,
    /// Sum of the sizes (in records) of the synced batches:
    /// `records_synced / batches_synced` is the average batch per fsync.
    pub records_synced: u64,
    pub bytes_written: u64,
    pub last_sync_latency: Duration,
    pub max_sync_latency: Duration,
    pub segments_created: u64,
    pub compactions: u64,
    pub failed: bool,
    pub durable_lsn: Lsn,
    pub last_lsn: Lsn,
    pub pending_records: u64,
}

/// What [`Log::compact`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReport {
    pub snapshot: String,
    pub covers_lsn: Lsn,
    pub records: u64,
    pub bytes: u64,
    pub deleted_files: Vec<String>,
}

/// Appended records not yet handed to the storage: encoded frames back to
/// back, LSNs `first_lsn..first_lsn + ends.len()`.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// End offset in `buf` of each record.
    ends: std::collections::VecDeque<usize>,
    first_lsn: Lsn,
}

struct Active {
    name: String,
    /// End of the last record written.
    len: u64,
    /// The file is zero bytes from `len` up to here (written ahead).
    zeroed_to: u64,
}

struct Inner<S> {
    storage: S,
    fsync: FsyncMode,
    on_sync: Option<SyncObserver>,
    segment_target_bytes: u64,
    next_lsn: Cell<Lsn>,
    durable_lsn: Cell<Lsn>,
    pending: RefCell<Pending>,
    committing: Cell<bool>,
    compacting: Cell<bool>,
    active: RefCell<Option<Active>>,
    /// The next batch must start a new segment.
    rotate: Cell<bool>,
    snapshot_lsn: Cell<Lsn>,
    failure: RefCell<Option<String>>,
    closed: Cell<bool>,
    /// Tasks waiting for "something changed" (appends, commits, failure):
    /// the committer and `flush`.
    changed: RefCell<Vec<Waker>>,
    /// `wait_durable` callers by LSN.
    waiters: RefCell<BTreeMap<Lsn, Vec<Waker>>>,
    stats: RefCell<LogStats>,
}

/// A shard's write-ahead log. Cheap to clone (an `Rc`); single-threaded.
pub struct Log<S: Storage> {
    inner: Rc<Inner<S>>,
}

impl<S: Storage> Clone for Log<S> {
    fn clone(&self) -> Self {
        Log {
            inner: self.inner.clone(),
        }
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

/// Gives other tasks on the executor a turn (works on any executor).
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

impl<S: Storage> Log<S> {
    /// Recovers the log in `storage` (see [`crate::recovery`]) and opens it
    /// for appending after the last recovered record.
    pub async fn open(storage: S, options: LogOptions) -> Result<(Log<S>, Recovered), StoreError> {
        let outcome = recovery::recover(&storage, options.progress.as_deref()).await?;
        let next_lsn = outcome.next_lsn;
        let (active, rotate) = match outcome.active {
            Some(active) if active.next_lsn == next_lsn => (
                Some(Active {
                    name: active.name,
                    len: active.len,
                    // Recovery cut the last segment back to its records.
                    zeroed_to: active.len,
                }),
                false,
            ),
            // No segment yet, or the last one ends below the snapshot:
            // the next record starts a new segment named by its LSN.
            _ => (None, true),
        };
        let report = outcome.report;
        tracing::info!(
            records = report.records,
            segments = report.segments,
            bytes = report.bytes,
            last_lsn = report.last_lsn,
            cut = report.cut.is_some(),
            "write-ahead log recovered"
        );
        let inner = Inner {
            storage,
            fsync: options.fsync,
            on_sync: options.on_sync,
            segment_target_bytes: options.segment_target_bytes,
            next_lsn: Cell::new(next_lsn),
            durable_lsn: Cell::new(next_lsn - 1),
            pending: RefCell::new(Pending {
                first_lsn: next_lsn,
                ..Pending::default()
            }),
            committing: Cell::new(false),
            compacting: Cell::new(false),
            active: RefCell::new(active),
            rotate: Cell::new(rotate),
            snapshot_lsn: Cell::new(outcome.snapshot_lsn),
            failure: RefCell::new(None),
            closed: Cell::new(false),
            changed: RefCell::new(Vec::new()),
            waiters: RefCell::new(BTreeMap::new()),
            stats: RefCell::new(LogStats {
                durable_lsn: next_lsn - 1,
                last_lsn: next_lsn - 1,
                ..LogStats::default()
            }),
        };
        let log = Log {
            inner: Rc::new(inner),
        };
        Ok((
            log,
            Recovered {
                records: outcome.records,
                report,
            },
        ))
    }

    /// The storage under the log (tests use it to inspect files).
    pub fn storage(&self) -> &S {
        &self.inner.storage
    }

    /// Encodes `record` into the batch buffer and returns its LSN. Never
    /// blocks and does no IO; the record is durable once
    /// [`Log::wait_durable`] for this LSN returns `Ok`.
    pub fn append(&self, record: &Record) -> Result<Lsn, StoreError> {
        let inner = &*self.inner;
        self.check_usable()?;
        let body = format::encode_record(record)?;
        let lsn = inner.next_lsn.get();
        let frame_bytes;
        {
            let mut pending = inner.pending.borrow_mut();
            if pending.ends.is_empty() {
                pending.first_lsn = lsn;
            }
            let before = pending.buf.len();
            format::encode_frame(&mut pending.buf, FrameKind::Record, lsn, &body);
            let end = pending.buf.len();
            frame_bytes = (end - before) as u64;
            pending.ends.push_back(end);
        }
        inner.next_lsn.set(lsn + 1);
        {
            let mut stats = inner.stats.borrow_mut();
            stats.records_appended += 1;
            stats.bytes_appended += frame_bytes;
        }
        self.notify_changed();
        Ok(lsn)
    }

    /// The LSN of the last appended record (0: none).
    pub fn last_lsn(&self) -> Lsn {
        self.inner.next_lsn.get() - 1
    }

    /// Every record up to this LSN is durable (per the fsync mode).
    pub fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn.get()
    }

    /// The LSN the newest snapshot covers (0: none).
    pub fn snapshot_lsn(&self) -> Lsn {
        self.inner.snapshot_lsn.get()
    }

    /// Whether a write or sync failed; the log then accepts nothing more.
    pub fn failed(&self) -> bool {
        self.inner.failure.borrow().is_some()
    }

    pub fn fsync_mode(&self) -> FsyncMode {
        self.inner.fsync
    }

    pub fn stats(&self) -> LogStats {
        let mut stats = self.inner.stats.borrow().clone();
        stats.failed = self.failed();
        stats.durable_lsn = self.durable_lsn();
        stats.last_lsn = self.last_lsn();
        stats.pending_records = self.inner.pending.borrow().ends.len() as u64;
        stats
    }

    /// Resolves once `lsn` is durable, or with the log's failure
    /// ([`StoreError::Failed`]) if it never will be. Any number of waiters.
    pub fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), StoreError>> + 'static
    where
        S: 'static,
    {
        let log = self.clone();
        std::future::poll_fn(move |cx| {
            let inner = &*log.inner;
            if inner.durable_lsn.get() >= lsn {
                return Poll::Ready(Ok(()));
            }
            if let Some(error) = log.failure_error() {
                return Poll::Ready(Err(error));
            }
            if inner.closed.get() && lsn >= inner.next_lsn.get() {
                return Poll::Ready(Err(StoreError::Closed));
            }
            let mut waiters = inner.waiters.borrow_mut();
            let wakers = waiters.entry(lsn).or_default();
            if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    /// The group-commit loop; spawn it once on the shard's executor. Whenever
    /// records are pending and no commit is running it takes them (all of
    /// them in `Batch`/`Never` mode, one in `Always` mode), writes them,
    /// fdatasyncs (unless `Never`), and marks them durable. Returns `Ok` after
    /// [`Log::close`] once everything pending is committed, or the failure.
    pub async fn run_committer(&self) -> Result<(), StoreError> {
        loop {
            let work = std::future::poll_fn(|cx| {
                let inner = &*self.inner;
                if let Some(error) = self.failure_error() {
                    return Poll::Ready(Err(error));
                }
                let has_pending = !inner.pending.borrow().ends.is_empty();
                if has_pending && !inner.committing.get() {
                    return Poll::Ready(Ok(true));
                }
                if inner.closed.get() && !has_pending && !inner.committing.get() {
                    return Poll::Ready(Ok(false));
                }
                self.register_changed(cx.waker());
                Poll::Pending
            })
            .await?;
            if !work {
                return Ok(());
            }
            self.commit_once().await?;
        }
    }

    /// Commits everything appended so far (cooperating with a running
    /// committer) and returns the last LSN, now durable. For shutdown, for
    /// tests without a committer task, and for compaction.
    pub async fn flush(&self) -> Result<Lsn, StoreError> {
        let target = self.last_lsn();
        loop {
            if self.durable_lsn() >= target {
                return Ok(target);
            }
            if let Some(error) = self.failure_error() {
                return Err(error);
            }
            if !self.inner.committing.get() {
                self.commit_once().await?;
                continue;
            }
            // Someone else's commit is in flight: wait for it to end.
            let mut registered = false;
            std::future::poll_fn(|cx| {
                if registered {
                    Poll::Ready(())
                } else {
                    registered = true;
                    self.register_changed(cx.waker());
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// Stops accepting appends; the committer exits once it has committed
    /// what is pending. Call [`Log::flush`] first to wait for that.
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.notify_changed();
        // Waiters for LSNs that will never exist can give up now.
        let waiters = std::mem::take(&mut *self.inner.waiters.borrow_mut());
        let durable_or_pending = self.inner.next_lsn.get();
        let mut keep = BTreeMap::new();
        let mut wake = Vec::new();
        for (lsn, wakers) in waiters {
            if lsn >= durable_or_pending {
                wake.extend(wakers);
            } else {
                keep.insert(lsn, wakers);
            }
        }
        *self.inner.waiters.borrow_mut() = keep;
        wake_all(wake);
    }

    /// Writes a snapshot of the live state and drops the log it replaces.
    ///
    /// Contract: `live` yields records that, replayed from an empty shard,
    /// rebuild the state after every record with LSN <= `covers_lsn` — e.g.
    /// one `UaidCreated`, its registrations and its pending messages per
    /// UAID — and `covers_lsn` is [`Log::last_lsn`] at the moment that state
    /// was taken. `live` is consumed in chunks with yields in between, so it
    /// must own its data (collect it first if it borrows the shard).
    ///
    /// Protocol: the next batch starts a new segment; the snapshot is written
    /// to `snap-X.snap.tmp` (X = `covers_lsn`), synced, renamed to
    /// `snap-X.snap`, and the directory synced; only then are older snapshots
    /// and segments whose records are all <= X deleted (a segment ends where
    /// its successor starts). Records appended during compaction go to the
    /// log as usual and are never lost; records <= X left in a kept segment
    /// are skipped at recovery. A crash at any point leaves either the old
    /// snapshot and all segments, or the new snapshot and the segments it
    /// needs. An IO error fails the log like any other write error.
    pub async fn compact(
        &self,
        covers_lsn: Lsn,
        live: impl IntoIterator<Item = Record>,
    ) -> Result<CompactReport, StoreError> {
        self.check_usable()?;
        if covers_lsn > self.last_lsn() || covers_lsn < self.snapshot_lsn() {
            return Err(StoreError::Compaction(format!(
                "LSN {covers_lsn} is outside the log's {}..={}",
                self.snapshot_lsn(),
                self.last_lsn()
            )));
        }
        if self.inner.compacting.replace(true) {
            return Err(StoreError::Compaction("one is already running".to_string()));
        }
        let result = self.compact_inner(covers_lsn, live).await;
        self.inner.compacting.set(false);
        match result {
            Ok(report) => Ok(report),
            Err(error) => Err(self.fail(error)),
        }
    }

    async fn compact_inner(
        &self,
        covers: Lsn,
        live: impl IntoIterator<Item = Record>,
    ) -> Result<CompactReport, StoreError> {
        let inner = &*self.inner;
        let storage = &inner.storage;
        inner.rotate.set(true);
        let temp = snapshot_temp_name(covers);
        let name = snapshot_name(covers);
        storage.create(&temp).await?;
        let mut chunk: Vec<u8> =
            Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + SNAPSHOT_CHUNK_BYTES / 8);
        let mut offset = 0u64;
        let mut count = 0u64;
        for record in live {
            let body = format::encode_record(&record)?;
            count += 1;
            format::encode_frame(&mut chunk, FrameKind::SnapshotRecord, count, &body);
            if chunk.len() >= SNAPSHOT_CHUNK_BYTES {
                let len = chunk.len() as u64;
                storage
                    .write_at(&temp, offset, std::mem::take(&mut chunk))
                    .await?;
                offset += len;
                yield_now().await;
            }
        }
        format::encode_frame(
            &mut chunk,
            FrameKind::SnapshotEnd,
            covers,
            &format::encode_snapshot_end(count),
        );
        let len = chunk.len() as u64;
        storage.write_at(&temp, offset, chunk).await?;
        offset += len;
        storage.sync(&temp).await?;
        storage.rename(&temp, &name).await?;
        storage.sync_dir().await?;
        self.inner.snapshot_lsn.set(covers);

        // The snapshot is durable: drop what it replaces.
        let mut segments = Vec::new();
        let mut deleted = Vec::new();
        for file in storage.list().await? {
            match parse_name(&file) {
                FileName::Segment(first) => segments.push((first, file)),
                FileName::Snapshot(older) if older < covers => deleted.push(file),
                _ => {}
            }
        }
        segments.sort();
        for pair in segments.windows(2) {
            // A segment ends just before its successor starts.
            if pair[1].0 <= covers + 1 {
                deleted.push(pair[0].1.clone());
            }
        }
        for file in &deleted {
            storage.delete(file).await?;
        }
        if !deleted.is_empty() {
            storage.sync_dir().await?;
        }
        inner.stats.borrow_mut().compactions += 1;
        tracing::info!(snapshot = %name, records = count, bytes = offset, deleted = deleted.len(), "compacted the write-ahead log");
        Ok(CompactReport {
            snapshot: name,
            covers_lsn: covers,
            records: count,
            bytes: offset,
            deleted_files: deleted,
        })
    }

    // -- internals ----------------------------------------------------------

    fn check_usable(&self) -> Result<(), StoreError> {
        if let Some(error) = self.failure_error() {
            return Err(error);
        }
        if self.inner.closed.get() {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn failure_error(&self) -> Option<StoreError> {
        self.inner
            .failure
            .borrow()
            .as_ref()
            .map(|cause| StoreError::Failed {
                cause: cause.clone(),
            })
    }

    fn register_changed(&self, waker: &Waker) {
        let mut changed = self.inner.changed.borrow_mut();
        if !changed.iter().any(|known| known.will_wake(waker)) {
            changed.push(waker.clone());
        }
    }

    fn notify_changed(&self) {
        let wakers = std::mem::take(&mut *self.inner.changed.borrow_mut());
        wake_all(wakers);
    }

    /// Enters the failed state (once) and returns the error to hand out.
    fn fail(&self, error: StoreError) -> StoreError {
        let inner = &*self.inner;
        if inner.failure.borrow().is_none() {
            tracing::error!(%error, "write-ahead log failed; no further records are accepted and nothing more is reported durable");
            *inner.failure.borrow_mut() = Some(error.to_string());
            let mut pending = inner.pending.borrow_mut();
            pending.buf = Vec::new();
            pending.ends.clear();
        }
        let waiters = std::mem::take(&mut *inner.waiters.borrow_mut());
        for (_, wakers) in waiters {
            wake_all(wakers);
        }
        self.notify_changed();
        self.failure_error().unwrap_or(StoreError::Failed {
            cause: error.to_string(),
        })
    }

    /// Takes one batch from the buffer, writes and (per mode) syncs it.
    async fn commit_once(&self) -> Result<(), StoreError> {
        let inner = &*self.inner;
        if let Some(error) = self.failure_error() {
            return Err(error);
        }
        if inner.committing.get() {
            return Ok(());
        }
        let (bytes, first_lsn, count) = {
            let mut pending = inner.pending.borrow_mut();
            if pending.ends.is_empty() {
                return Ok(());
            }
            let first_lsn = pending.first_lsn;
            if inner.fsync == FsyncMode::Always && pending.ends.len() > 1 {
                let end = pending.ends.pop_front().unwrap_or(pending.buf.len());
                let rest = pending.buf.split_off(end);
                let batch = std::mem::replace(&mut pending.buf, rest);
                for later in pending.ends.iter_mut() {
                    *later -= end;
                }
                pending.first_lsn += 1;
                (batch, first_lsn, 1u64)
            } else {
                let count = pending.ends.len() as u64;
                pending.ends.clear();
                pending.first_lsn += count;
                (std::mem::take(&mut pending.buf), first_lsn, count)
            }
        };
        inner.committing.set(true);
        let result = self.write_batch(bytes, first_lsn, count).await;
        inner.committing.set(false);
        match result {
            Ok(()) => {
                let last = first_lsn + count - 1;
                inner.durable_lsn.set(last);
                let ready = {
                    let mut waiters = inner.waiters.borrow_mut();
                    let later = waiters.split_off(&(last + 1));
                    std::mem::replace(&mut *waiters, later)
                };
                for (_, wakers) in ready {
                    wake_all(wakers);
                }
                self.notify_changed();
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    async fn write_batch(
        &self,
        bytes: Vec<u8>,
        first_lsn: Lsn,
        count: u64,
    ) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let storage = &inner.storage;
        let sync = inner.fsync != FsyncMode::Never;
        let needs_new = match &*inner.active.borrow() {
            None => true,
            Some(active) => {
                inner.rotate.get()
                    || (active.len > 0
                        && active.len + bytes.len() as u64 > inner.segment_target_bytes)
            }
        };
        if needs_new {
            let previous = inner.active.borrow_mut().take();
            if let Some(previous) = previous.filter(|active| active.zeroed_to > active.len) {
                // A closed segment holds exactly its records.
                storage.truncate(&previous.name, previous.len).await?;
                if sync {
                    storage.sync(&previous.name).await?;
                }
            }
            // The previous segment's batches were all synced before this
            // one started, so a new segment never follows a torn one.
            let name = segment_name(first_lsn);
            storage.create(&name).await?;
            if sync {
                // The new file's directory entry must be durable before
                // anything in it is reported durable.
                storage.sync_dir().await?;
            }
            inner.rotate.set(false);
            *inner.active.borrow_mut() = Some(Active {
                name,
                len: 0,
                zeroed_to: 0,
            });
            inner.stats.borrow_mut().segments_created += 1;
        }
        let (name, offset, zeroed_to) = match &*inner.active.borrow() {
            Some(active) => (active.name.clone(), active.len, active.zeroed_to),
            None => return Err(StoreError::Closed),
        };
        let len = bytes.len() as u64;
        let mut bytes = bytes;
        let end = offset + len;
        let zeroed_to = if end > zeroed_to {
            // Past the zeros written ahead: write the next stretch with
            // this batch, under the same fdatasync.
            bytes.resize(bytes.len() + SEGMENT_ZERO_AHEAD_BYTES as usize, 0);
            end + SEGMENT_ZERO_AHEAD_BYTES
        } else {
            zeroed_to
        };
        storage.write_at(&name, offset, bytes).await?;
        if let Some(active) = inner.active.borrow_mut().as_mut() {
            active.len += len;
            active.zeroed_to = zeroed_to;
        }
        {
            let mut stats = inner.stats.borrow_mut();
            stats.batches_written += 1;
            stats.bytes_written += len;
        }
        if sync {
            let started = Instant::now();
            storage.sync(&name).await?;
            let latency = started.elapsed();
            if let Some(observe) = &inner.on_sync {
                observe(latency);
            }
            let mut stats = inner.stats.borrow_mut();
            stats.batches_synced += 1;
            stats.records_synced += count;
            stats.last_sync_latency = latency;
            stats.max_sync_latency = stats.max_sync_latency.max(latency);
        }
        Ok(())
    }
}

impl<S: Storage + 'static> RecordLog for Log<S> {
    fn append_batch(&self, records: &[Record]) -> Result<Lsn, StoreError> {
        for record in records {
            self.append(record)?;
        }
        Ok(self.last_lsn())
    }

    fn last_lsn(&self) -> Lsn {
        Log::last_lsn(self)
    }

    fn durable_lsn(&self) -> Lsn {
        Log::durable_lsn(self)
    }

    fn failed(&self) -> bool {
        Log::failed(self)
    }

    fn bytes_appended(&self) -> u64 {
        self.inner.stats.borrow().bytes_appended
    }

    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), StoreError>> + 'static {
        Log::wait_durable(self, lsn)
    }

    async fn compact(
        &self,
        covers_lsn: Lsn,
        live: impl IntoIterator<Item = Record>,
    ) -> Result<(), StoreError> {
        let report = Log::compact(self, covers_lsn, live).await?;
        tracing::debug!(?report, "WAL compacted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_mode_parses() {
        assert_eq!("batch".parse::<FsyncMode>(), Ok(FsyncMode::Batch));
        assert_eq!("always".parse::<FsyncMode>(), Ok(FsyncMode::Always));
        assert_eq!("never".parse::<FsyncMode>(), Ok(FsyncMode::Never));
        assert_eq!(
            "sometimes".parse::<FsyncMode>(),
            Err("fsync must be always, batch or never, not \"sometimes\"".to_string())
        );
        assert!("Batch".parse::<FsyncMode>().is_err(), "spellings are exact");
        for mode in FsyncMode::ALL {
            assert_eq!(mode.as_str().parse::<FsyncMode>(), Ok(mode));
        }
    }

    #[cfg(feature = "clap")]
    #[test]
    fn clap_values_are_the_same_spellings() {
        use clap::ValueEnum;
        for mode in FsyncMode::ALL {
            assert_eq!(
                <FsyncMode as ValueEnum>::from_str(mode.as_str(), false),
                Ok(mode)
            );
        }
        assert!(<FsyncMode as ValueEnum>::from_str("sometimes", false).is_err());
    }
}
