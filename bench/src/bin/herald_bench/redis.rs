//! Readings from the Redis Cluster behind a cluster target: the CPU time of
//! its processes, the memory its masters and all its nodes use, and what one
//! UA's keys take.

use herald_tests::redis_cluster::{info_field, request};
use herald_tests::RedisCluster;
use redis_protocol::resp2::types::OwnedFrame;
use serde::Serialize;

/// CPU seconds of every redis-server process so far.
pub fn cpu_seconds(redis: &RedisCluster) -> f64 {
    redis
        .pids()
        .into_iter()
        .filter_map(herald_bench::proc::cpu_seconds)
        .sum()
}

/// `INFO memory` `used_memory`, summed.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct UsedMemory {
    /// Over the masters: one copy of the data.
    pub masters: u64,
    /// Over every node: the masters and their replicas.
    pub all: u64,
}

pub fn used_memory(redis: &RedisCluster) -> UsedMemory {
    let sum = |ports: &[u16]| -> u64 {
        ports
            .iter()
            .map(|&port| {
                info_field(port, "INFO", "memory", "used_memory")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum()
    };
    UsedMemory {
        masters: sum(&redis.masters()),
        all: sum(&redis.ports()),
    }
}

/// `MEMORY USAGE` of one UA's keys with data at rest, `{uaid}u` and
/// `{uaid}c` (its messages' `{uaid}m` exists only while one is pending),
/// for a UA picked with RANDOMKEY on a master; None if no master holds one.
pub fn one_ua_bytes(redis: &RedisCluster) -> Option<u64> {
    redis.masters().into_iter().find_map(|port| {
        let OwnedFrame::BulkString(key) = request(port, &["RANDOMKEY"]).ok()? else {
            return None;
        };
        let key = String::from_utf8(key).ok()?;
        // Every key of a UA is `{<uaid hex>}` and a one-letter suffix.
        let tag = &key[..=key.find('}')?];
        ["u", "c"]
            .iter()
            .map(|suffix| {
                match request(port, &["MEMORY", "USAGE", &format!("{tag}{suffix}")]).ok()? {
                    OwnedFrame::Integer(bytes) => u64::try_from(bytes).ok(),
                    _ => None,
                }
            })
            .sum()
    })
}
