//! Herald's durability layer: a write-ahead log per shard.
//!
//! # Layout
//! A data dir holds `herald.lock` (held by the one process using it, see
//! [`DataDirLock`]), `herald.meta` (shard count and format version, see
//! [`check_layout`]) and one directory per shard, `shard-<n>/`, with numbered
//! segment files `wal-<first LSN>.log` and snapshot files
//! `snap-<covered LSN>.snap`. The byte format is in `store/WAL_FORMAT.md`.
//!
//! # API (one shard, single-threaded)
//! ```ignore
//! let lock = DataDirLock::acquire(data_dir)?;             // first, held for life
//! check_layout(data_dir, shards)?;                       // once, at startup
//! let storage = GlommioStorage::new(shard_dir(data_dir, n))?;
//! let (log, recovered) = Log::open(storage, LogOptions::with_fsync(mode)).await?;
//! for record in recovered.records { shard.apply(record) }  // replay
//! glommio::spawn_local({ let log = log.clone(); async move { log.run_committer().await } }).detach();
//! let lsn = log.append(&record)?;                         // sync, no IO
//! log.wait_durable(lsn).await?;                           // then answer 2xx
//! log.compact(lsn_of_state, live_records).await?;         // now and then
//! log.flush().await?; log.close();                        // shutdown
//! ```
//! `Log<S>` is generic over [`Storage`]: [`GlommioStorage`] (real files,
//! io_uring, fdatasync), [`MemStorage`] (in memory, models crashes) and
//! [`FaultStorage`] (fails the N-th write or sync, counts syncs). Engine-level
//! tests can run a `Log<MemStorage>` under `futures_lite::future::block_on`, calling
//! [`Log::flush`] instead of spawning the committer.
//!
//! # Group commit
//! `append` encodes the record into an in-memory batch buffer, gives it the
//! next LSN and wakes the committer; it never waits. The committer loops:
//! whenever the buffer is non-empty and no commit is in flight, it takes the
//! whole buffer, writes it at the end of the active segment, fdatasyncs it,
//! then sets `durable_lsn` to the batch's last LSN and wakes every waiter at
//! or below it. Records appended while a write/sync is in flight wait in the
//! buffer and form the next batch, so under load one fsync covers many
//! records and with no load a record is synced alone at once. `Always` mode
//! takes one record per commit; `Never` writes without syncing and counts
//! written as durable.
//!
//! # Failure
//! After any write or sync error the log is failed for good (a failed
//! fdatasync may have dropped dirty pages; retrying could report lost data as
//! durable): `append` returns [`StoreError::Failed`], every current and future
//! waiter gets it, `failed()` is true, and `tracing::error!` says so once.
//! `durable_lsn` never covers a record whose sync did not succeed. The process
//! should stop; recovery decides from the disk what survived.
//!
//! # Recovery
//! [`Log::open`] follows the decision table in [`recovery`]
//! ([`recovery::RECOVERY_TABLE`]): torn tails are cut, damage followed by
//! valid records refuses to start, snapshots replace the segments they cover.

// `u64::is_multiple_of` is newer (1.87) than the workspace's rust-version (1.85).
#![allow(clippy::manual_is_multiple_of)]

pub mod cluster;
mod error;
pub mod format;
mod glommio_storage;
pub mod inspect;
pub mod layout;
pub mod limits;
pub mod lock;
mod log;
mod mem_log;
pub mod record_log;
pub mod recovery;
pub mod redis;
pub mod storage;

pub use error::StoreError;
pub use glommio_storage::GlommioStorage;
pub use herald_engine::Lsn;
pub use inspect::{inspect, InspectSummary};
pub use layout::{check_layout, shard_dir};
pub use lock::DataDirLock;
pub use log::{
    CompactReport, FsyncMode, Log, LogOptions, LogStats, ProgressFn, Recovered, SyncObserver,
};
pub use mem_log::MemLog;
pub use record_log::{Claim, ClaimError, Fenced, PreviousClaim, RecordLog};
pub use recovery::{RecoveryProgress, RecoveryReport};
pub use storage::{CrashSpec, FaultStorage, MemStorage, Storage};

/// The log on real files.
pub type DiskLog = Log<GlommioStorage>;

/// Opens (recovering) shard `shard`'s log in `data_dir`. Call inside the
/// shard's glommio executor, after [`check_layout`].
pub async fn open_shard(
    data_dir: &std::path::Path,
    shard: usize,
    options: LogOptions,
) -> Result<(DiskLog, Recovered), StoreError> {
    let storage = GlommioStorage::new(shard_dir(data_dir, shard))?;
    Log::open(storage, options).await
}
