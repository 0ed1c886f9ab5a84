//! A Redis Cluster client for one glommio shard, built so that a durable
//! batch that succeeds really is durable.
//!
//! # Why not an off-the-shelf client
//! Herald's 2xx must mean "the record is in Redis *and* acknowledged by N
//! replicas". Redis says that with `WAIT N timeout`, which counts the
//! replicas that acknowledged *the writes made earlier on the same
//! connection*. A general-purpose cluster client reconnects and re-routes
//! behind the caller's back (MOVED, failover, a dropped socket): if that
//! happens between the writes and the `WAIT`, the `WAIT` runs on a fresh
//! connection that wrote nothing and succeeds vacuously, and a lost write
//! would be answered 2xx. So this client never retries, reconnects or
//! re-routes inside a batch: anything unexpected fails the whole batch, and
//! only the *next* batch re-reads the slot map and opens new connections.
//!
//! RESP framing and the CRC16 hash slot (with `{hash tags}`) come from the
//! `redis-protocol` crate; this module only routes and enforces the rules.
//!
//! # Shape
//! One [`ClusterClient`] per shard, `!Send`, used from one glommio executor.
//! A batch ([`ClusterClient::run`]) goes, pipelined, to the master of each
//! command's slot; with `durable`, one `WAIT replicas timeout` follows on
//! each master connection the batch used. One batch is in flight per client:
//! the batch owns the connections until it ends.
//!
//! Scripts are given to [`ClusterClient::connect`] once; a [`ScriptId`] is
//! an index into that list. Every connection `SCRIPT LOAD`s them when it
//! opens, so `EVALSHA` never meets `NOSCRIPT` after a failover.
//!
//! # Deadlines
//! Every network step has one: a connect gets `io_timeout_ms`, each
//! pipelined round gets `io_timeout_ms` (plus `wait_timeout_ms` when it ends
//! in a `WAIT`). A stopped Redis fails a batch, it never hangs it.

mod client;
mod command;
mod conn;
mod error;
mod slots;

pub use client::ClusterClient;
pub use command::{Command, Reply, ScriptId};
pub use error::RedisError;

/// How to reach the cluster and what "durable" means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// Seed nodes, `redis://host:port` (see [`parse_seeds`]). Any one that
    /// answers is enough; others may be dead.
    pub seeds: Vec<String>,
    /// Replicas that must acknowledge a durable batch (`WAIT N`). 0 skips
    /// the `WAIT`.
    pub replicas: u32,
    /// The `WAIT` timeout, in milliseconds (not 0: that waits forever).
    pub wait_timeout_ms: u64,
    /// Deadline of one connect or one pipelined round trip, milliseconds.
    pub io_timeout_ms: u64,
    /// Most commands written to one connection before their replies are
    /// read; a larger batch takes more round trips.
    pub pipeline_max: usize,
}

impl RedisConfig {
    /// The defaults, with these seeds.
    pub fn new(seeds: Vec<String>) -> RedisConfig {
        RedisConfig {
            seeds,
            replicas: 1,
            wait_timeout_ms: 1000,
            io_timeout_ms: 2000,
            pipeline_max: 1024,
        }
    }

    /// The values that would make a deadline or a pipeline degenerate.
    fn check(&self) -> Result<(), RedisError> {
        if self.seeds.is_empty() {
            return Err(RedisError::Config("no seed node".into()));
        }
        for seed in &self.seeds {
            seed_addr(seed)?;
        }
        if self.wait_timeout_ms == 0 {
            return Err(RedisError::Config(
                "wait_timeout_ms 0 would WAIT forever".into(),
            ));
        }
        if self.io_timeout_ms == 0 || self.pipeline_max == 0 {
            return Err(RedisError::Config(
                "io_timeout_ms and pipeline_max must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Splits `redis://host:port,redis://host:port` (spaces around commas are
/// allowed) into seeds, each checked.
pub fn parse_seeds(list: &str) -> Result<Vec<String>, RedisError> {
    let seeds: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if seeds.is_empty() {
        return Err(RedisError::BadSeed(format!("{list:?}: no seed")));
    }
    for seed in &seeds {
        seed_addr(seed)?;
    }
    Ok(seeds)
}

/// `redis://host:port` as the `host:port` to connect to. No user, password,
/// database or TLS: Herald's cluster is reached on a trusted network.
fn seed_addr(seed: &str) -> Result<String, RedisError> {
    let bad = |why: &str| RedisError::BadSeed(format!("{seed:?}: {why}"));
    let rest = seed
        .strip_prefix("redis://")
        .ok_or_else(|| bad("not redis://host:port"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['@', '/', '?']) {
        return Err(bad("only redis://host:port is supported"));
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad("empty host or port 0"));
    }
    Ok(node_addr(host, port))
}

/// `host:port`, with IPv6 addresses bracketed, as `ToSocketAddrs` wants it.
fn node_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse() {
        let seeds = parse_seeds("redis://127.0.0.1:7000, redis://h.example:7001/").unwrap();
        assert_eq!(seeds.len(), 2);
        assert_eq!(seed_addr(&seeds[0]).unwrap(), "127.0.0.1:7000");
        assert_eq!(seed_addr(&seeds[1]).unwrap(), "h.example:7001");
        assert_eq!(seed_addr("redis://[::1]:7000").unwrap(), "[::1]:7000");
        for bad in [
            "",
            " , ",
            "127.0.0.1:7000",
            "redis://127.0.0.1",
            "redis://:7000",
            "redis://h:0",
            "redis://h:70000",
            "redis://user:pw@h:7000",
            "rediss://h:7000",
            "redis://h:7000,http://h:7001",
        ] {
            assert!(
                matches!(parse_seeds(bad), Err(RedisError::BadSeed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn config_checks() {
        let good = RedisConfig::new(vec!["redis://127.0.0.1:7000".into()]);
        assert_eq!(good.check(), Ok(()));
        let mut c = good.clone();
        c.pipeline_max = 0;
        assert!(matches!(c.check(), Err(RedisError::Config(_))));
        let mut c = good.clone();
        c.wait_timeout_ms = 0;
        assert!(matches!(c.check(), Err(RedisError::Config(_))));
        let mut c = good;
        c.seeds = vec!["nope".into()];
        assert!(matches!(c.check(), Err(RedisError::BadSeed(_))));
    }
}
