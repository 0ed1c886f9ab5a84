//! The record-level seam between a shard and its durable store.
//!
//! The shard driver (`net/`) sees its store only through [`RecordLog`]:
//! records go in as a batch and come back as LSNs at once, with no IO and no
//! waiting; durability is learned afterwards, by asking
//! [`RecordLog::durable_lsn`] or awaiting [`RecordLog::wait_durable`]. What
//! happens in between — a group-committed fdatasync for the WAL, a pipelined
//! write acknowledged by replicas for a cluster store — is the store's
//! business. Opening a store replays it: every implementation's `open`
//! returns the records to apply, in order, before the first append.
//!
//! Implementations: the WAL ([`crate::Log`] over real files or
//! [`crate::MemStorage`]) and [`crate::MemLog`], records in memory with a
//! crash model, which the whole-shard simulation runs on.

use std::future::Future;

use herald_engine::record::Record;
use herald_engine::Lsn;

use crate::StoreError;

/// A shard's log of records, as its driver uses it. Single-threaded: an
/// implementation lives on its shard's thread, so its futures need not be
/// `Send`.
pub trait RecordLog {
    /// Appends `records` in order and returns the LSN of the last one
    /// (records get consecutive LSNs after [`RecordLog::last_lsn`]). Never
    /// waits and does no IO. After a failure every append is refused.
    fn append_batch(&self, records: &[Record]) -> Result<Lsn, StoreError>;

    /// The LSN of the last appended record (0: none).
    fn last_lsn(&self) -> Lsn;

    /// Every record up to this LSN survives a crash.
    fn durable_lsn(&self) -> Lsn;

    /// The store failed for good: nothing more becomes durable.
    fn failed(&self) -> bool;

    /// Bytes appended since the store was opened (what compaction is
    /// triggered by).
    fn bytes_appended(&self) -> u64;

    /// Resolves once `lsn` is durable, or with the failure that means it
    /// never will be.
    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), StoreError>> + 'static;

    /// Replaces everything up to `covers_lsn` with `live`: records that,
    /// replayed from an empty shard, rebuild the state after every record
    /// with LSN <= `covers_lsn` (see [`crate::Log::compact`]).
    fn compact(
        &self,
        covers_lsn: Lsn,
        live: impl IntoIterator<Item = Record>,
    ) -> impl Future<Output = Result<(), StoreError>>;
}
