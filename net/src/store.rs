//! A shard's store as glommio runs it: its own WAL (a single node, the
//! embedded default) or its share of the Redis Cluster (cluster mode). The
//! driver sees either through [`RecordLog`]; the shard's tasks (the writer,
//! metrics, shutdown) through the few methods here.

use std::future::Future;
use std::pin::Pin;

use herald_engine::record::Record;
use herald_engine::{Lsn, Uaid};
use herald_store::cluster::{ClusterLog, ClusterStats};
use herald_store::{Claim, ClaimError, DiskLog, Fenced, LogStats, RecordLog, StoreError};

#[derive(Clone)]
pub enum ShardStore {
    Wal(DiskLog),
    Cluster(ClusterLog),
}

type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;

impl ShardStore {
    /// The task that makes records durable: the WAL's group commit or the
    /// cluster's pipelined writer. Spawn it once.
    pub async fn run_writer(&self, shard: usize) {
        match self {
            ShardStore::Wal(log) => {
                if let Err(error) = log.run_committer().await {
                    tracing::error!(shard, %error, "WAL committer stopped");
                }
            }
            ShardStore::Cluster(log) => log.run_writer().await,
        }
    }

    /// The WAL's counters (a cluster store has none of these).
    pub fn stats(&self) -> LogStats {
        match self {
            ShardStore::Wal(log) => log.stats(),
            ShardStore::Cluster(_) => LogStats::default(),
        }
    }

    /// The cluster store's counters (a WAL has none of these).
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        match self {
            ShardStore::Wal(_) => None,
            ShardStore::Cluster(log) => Some(log.stats()),
        }
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        match self {
            ShardStore::Wal(log) => log.flush().await.map(|_| ()),
            ShardStore::Cluster(log) => log.flush().await,
        }
    }

    pub fn close(&self) {
        match self {
            ShardStore::Wal(log) => log.close(),
            ShardStore::Cluster(log) => log.close(),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, ShardStore::Cluster(_))
    }
}

impl RecordLog for ShardStore {
    fn append_batch(&self, records: &[Record]) -> Result<Lsn, StoreError> {
        match self {
            ShardStore::Wal(log) => log.append_batch(records),
            ShardStore::Cluster(log) => log.append_batch(records),
        }
    }

    fn last_lsn(&self) -> Lsn {
        match self {
            ShardStore::Wal(log) => log.last_lsn(),
            ShardStore::Cluster(log) => log.last_lsn(),
        }
    }

    fn durable_lsn(&self) -> Lsn {
        match self {
            ShardStore::Wal(log) => log.durable_lsn(),
            ShardStore::Cluster(log) => log.durable_lsn(),
        }
    }

    fn failed(&self) -> bool {
        match self {
            ShardStore::Wal(log) => log.failed(),
            ShardStore::Cluster(log) => log.failed(),
        }
    }

    fn bytes_appended(&self) -> u64 {
        match self {
            ShardStore::Wal(log) => log.bytes_appended(),
            ShardStore::Cluster(log) => log.bytes_appended(),
        }
    }

    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), StoreError>> + 'static {
        let waiting: Boxed<Result<(), StoreError>> = match self {
            ShardStore::Wal(log) => Box::pin(RecordLog::wait_durable(log, lsn)),
            ShardStore::Cluster(log) => Box::pin(log.wait_durable(lsn)),
        };
        waiting
    }

    async fn compact(
        &self,
        covers_lsn: Lsn,
        live: impl IntoIterator<Item = Record>,
    ) -> Result<(), StoreError> {
        match self {
            ShardStore::Wal(log) => RecordLog::compact(log, covers_lsn, live).await,
            ShardStore::Cluster(log) => log.compact(covers_lsn, live).await,
        }
    }

    fn claim(&self, uaid: Uaid) -> impl Future<Output = Result<Claim, ClaimError>> + 'static {
        let claiming: Boxed<Result<Claim, ClaimError>> = match self {
            ShardStore::Wal(log) => Box::pin(log.claim(uaid)),
            ShardStore::Cluster(log) => Box::pin(log.claim(uaid)),
        };
        claiming
    }

    fn release(&self, uaid: Uaid) {
        if let ShardStore::Cluster(log) = self {
            log.release(uaid);
        }
    }

    fn displaced(&self, uaid: Uaid, nonce: &str) -> bool {
        match self {
            ShardStore::Wal(_) => false,
            ShardStore::Cluster(log) => log.displaced(uaid, nonce),
        }
    }

    fn take_fenced(&self) -> Vec<Fenced> {
        match self {
            ShardStore::Wal(_) => Vec::new(),
            ShardStore::Cluster(log) => log.take_fenced(),
        }
    }
}
