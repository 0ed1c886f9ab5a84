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
use herald_engine::{Lsn, Uaid};

use crate::StoreError;

/// A cluster store's answer to a claim: the UA's records, to apply in order.
#[derive(Debug, Default)]
pub struct Claim {
    pub records: Vec<Record>,
    /// The claim this one displaced, if another was current: the node that
    /// held the UA is told (by its URL) to let go of that claim.
    pub previous: Option<PreviousClaim>,
}

/// A claim another shard held, displaced by a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousClaim {
    /// The node-to-node URL of the node that held it.
    pub node: String,
    /// What names the claim itself, so the node lets go only of that one
    /// (not of a newer claim it made since).
    pub nonce: String,
}

/// A record a cluster store refused because another node had taken its UA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    pub lsn: Lsn,
    pub uaid: Uaid,
    /// The refusal hit the shard's current claim: the shard no longer holds
    /// the UA. False when the shard has claimed it again since the write.
    pub lost: bool,
}

/// A claim failed: the store did not answer or did not make it durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimError(pub String);

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

    /// The store failed: nothing more becomes durable (for good for a WAL;
    /// a cluster store may come back, and then reads false again).
    fn failed(&self) -> bool;

    /// Bytes appended since the store was opened (what compaction is
    /// triggered by).
    fn bytes_appended(&self) -> u64;

    /// Resolves once `lsn` is durable, or with the failure that means it
    /// never will be.
    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), StoreError>> + 'static;

    /// Cluster stores only (SPEC §8): makes this shard the one that writes
    /// `uaid`, taking it from any other node (the last claim wins), and
    /// returns its records. A WAL holds every UA of its shard, whose engine
    /// never asks.
    fn claim(&self, _uaid: Uaid) -> impl Future<Output = Result<Claim, ClaimError>> + 'static {
        std::future::ready(Err(ClaimError(
            "this store holds every UA of its shard; there is nothing to claim".to_owned(),
        )))
    }

    /// Cluster stores only: gives the claim on `uaid` back, after the records
    /// appended before this call.
    fn release(&self, _uaid: Uaid) {}

    /// Cluster stores only: another node displaced this shard's claim on
    /// `uaid` named `nonce`. True if that is the shard's current claim, which
    /// it then forgets (without a release: the claim is no longer its own).
    fn displaced(&self, _uaid: Uaid, _nonce: &str) -> bool {
        false
    }

    /// Cluster stores only: appended records the store refused because
    /// another node had taken their UA over. They count as settled for
    /// [`RecordLog::durable_lsn`], so the caller must not treat them as
    /// durable: it answers their requests 503, and drops the UA if it was
    /// `lost`.
    fn take_fenced(&self) -> Vec<Fenced> {
        Vec::new()
    }

    /// Replaces everything up to `covers_lsn` with `live`: records that,
    /// replayed from an empty shard, rebuild the state after every record
    /// with LSN <= `covers_lsn` (see [`crate::Log::compact`]).
    fn compact(
        &self,
        covers_lsn: Lsn,
        live: impl IntoIterator<Item = Record>,
    ) -> impl Future<Output = Result<(), StoreError>>;
}
