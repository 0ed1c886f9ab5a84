//! The Redis client's one error type.

use std::fmt;

/// Why a batch (or connecting) failed. A failed batch also marks the
/// client's topology stale: the next batch re-reads the slot map and opens
/// new connections. A batch that failed may or may not have been applied;
/// it is never reported durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisError {
    /// A seed that is not `redis://host:port`.
    BadSeed(String),
    /// A configuration value that cannot work (say, `pipeline_max` 0).
    Config(String),
    /// No node could be reached, or a connection failed or closed.
    Unreachable(String),
    /// A connect or a round trip passed its deadline.
    Timeout(String),
    /// The slot map changed under the batch: MOVED, ASK, TRYAGAIN, or a
    /// write that reached a replica (READONLY).
    Moved(String),
    /// The cluster cannot serve the slot: CLUSTERDOWN, a slot without a
    /// master in the map, LOADING, MASTERDOWN.
    ClusterDown(String),
    /// `WAIT` saw fewer replicas acknowledge the batch than required.
    Replicas { wanted: u32, got: i64 },
    /// A reply that is not RESP, too large, of an unexpected shape, or an
    /// error that says the command was not run (NOSCRIPT).
    Protocol(String),
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::BadSeed(s) => write!(f, "bad Redis seed {s}"),
            RedisError::Config(s) => write!(f, "bad Redis configuration: {s}"),
            RedisError::Unreachable(s) => write!(f, "Redis unreachable: {s}"),
            RedisError::Timeout(s) => write!(f, "Redis timed out: {s}"),
            RedisError::Moved(s) => write!(f, "Redis slot moved: {s}"),
            RedisError::ClusterDown(s) => write!(f, "Redis cluster down: {s}"),
            RedisError::Replicas { wanted, got } => write!(
                f,
                "Redis WAIT: {got} replicas acknowledged, {wanted} required"
            ),
            RedisError::Protocol(s) => write!(f, "Redis protocol error: {s}"),
        }
    }
}

impl std::error::Error for RedisError {}

impl RedisError {
    /// The batch-level failure an error reply stands for, if it is one: the
    /// reply says the command did not run where the slot map said it would.
    /// Other error replies (a script's own errors, wrong types) belong to
    /// their command.
    pub(super) fn from_reply(message: &str) -> Option<RedisError> {
        let code = message.split_whitespace().next().unwrap_or("");
        let make: fn(String) -> RedisError = match code {
            "MOVED" | "ASK" | "TRYAGAIN" | "READONLY" => RedisError::Moved,
            "CLUSTERDOWN" | "LOADING" | "MASTERDOWN" => RedisError::ClusterDown,
            "NOSCRIPT" => RedisError::Protocol,
            _ => return None,
        };
        Some(make(message.to_string()))
    }
}
