//! The store's one error type.

use std::fmt;

/// Everything the store can fail with. `Clone` so that one failure can be
/// handed to every waiter; IO errors are kept as text for the same reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// An IO operation failed.
    Io {
        op: &'static str,
        file: String,
        message: String,
    },
    /// The log failed earlier (a write or sync error) and accepts nothing
    /// more; `cause` says what failed first. Restart the process: recovery
    /// decides from what is on disk what survived.
    Failed { cause: String },
    /// A damaged or inconsistent record that is not at the end of the log, or
    /// a record whose checksums hold but whose content is invalid. Recovery
    /// refuses to start rather than skip records.
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    /// A frame with a valid header checksum but a format version this build
    /// does not read.
    UnsupportedVersion {
        segment: String,
        offset: u64,
        found: u16,
        supported: u16,
    },
    /// A file that should be a Herald WAL file does not start with the magic.
    BadMagic { segment: String, offset: u64 },
    /// `append` of a record that encodes to more than the limit.
    RecordTooLarge { bytes: usize, max_bytes: usize },
    /// The data dir was created for a different shard count.
    ShardCountMismatch {
        data_dir: String,
        found: usize,
        expected: usize,
    },
    /// Another process holds the data dir's lock (see [`crate::DataDirLock`]).
    /// `holder_pid` is what it wrote into the lock file, if that could be read.
    DataDirLocked {
        data_dir: String,
        holder_pid: Option<u32>,
    },
    /// The data dir's layout (meta file, shard dirs) is unusable.
    Layout { data_dir: String, reason: String },
    /// `compact` was called wrongly (one already running, or an LSN outside
    /// the log).
    Compaction(String),
    /// The log was closed.
    Closed,
    /// Cluster mode: Redis does not answer or acknowledge right now; the
    /// store keeps trying (`cause`: the last failure).
    Unreachable { cause: String },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, file: impl Into<String>, err: impl fmt::Display) -> Self {
        StoreError::Io {
            op,
            file: file.into(),
            message: err.to_string(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { op, file, message } => write!(f, "{op} {file}: {message}"),
            StoreError::Failed { cause } => {
                write!(f, "the write-ahead log has failed and accepts no more records ({cause})")
            }
            StoreError::Corrupt {
                segment,
                offset,
                reason,
            } => write!(
                f,
                "corrupt write-ahead log: {segment} at byte {offset}: {reason}; refusing to start \
                 (valid records follow, so this is not a torn tail that could be cut)"
            ),
            StoreError::UnsupportedVersion {
                segment,
                offset,
                found,
                supported,
            } => write!(
                f,
                "{segment} at byte {offset}: WAL format version {found}, this build reads version {supported}"
            ),
            StoreError::BadMagic { segment, offset } => write!(
                f,
                "{segment} at byte {offset}: not a Herald WAL file (bad magic)"
            ),
            StoreError::RecordTooLarge { bytes, max_bytes } => {
                write!(f, "record of {bytes} bytes exceeds the {max_bytes}-byte limit")
            }
            StoreError::ShardCountMismatch {
                data_dir,
                found,
                expected,
            } => write!(
                f,
                "data dir {data_dir} was created with {found} shards but {expected} were asked for; \
                 UAIDs hash to shards, so a data dir keeps its shard count (run with --shards {found})"
            ),
            StoreError::DataDirLocked {
                data_dir,
                holder_pid,
            } => {
                let holder = match holder_pid {
                    Some(pid) => format!("process {pid}"),
                    None => "another process".to_owned(),
                };
                write!(
                    f,
                    "data dir {data_dir} is in use by {holder} (it holds {data_dir}/{}); \
                     two servers on one data dir would destroy its log, so stop that one \
                     first or use another --data-dir",
                    crate::lock::LOCK_FILE_NAME
                )
            }
            StoreError::Layout { data_dir, reason } => write!(f, "data dir {data_dir}: {reason}"),
            StoreError::Compaction(reason) => write!(f, "cannot compact: {reason}"),
            StoreError::Closed => write!(f, "the write-ahead log is closed"),
            StoreError::Unreachable { cause } => {
                write!(f, "the cluster store is unreachable ({cause})")
            }
        }
    }
}

impl std::error::Error for StoreError {}
