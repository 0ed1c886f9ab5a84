//! Readings from the Redis Cluster behind a cluster target: the CPU time of
//! its processes, the commands they ran, the memory its masters and all its
//! nodes use, and what one UA's keys take.

use std::collections::BTreeMap;

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

/// `INFO memory` figures, summed.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct UsedMemory {
    /// `used_memory` over the masters: one copy of the data.
    pub masters: u64,
    /// The part of it that is buffers of a fixed or passing size, not data:
    /// connections (`mem_clients_normal`: Herald's, opened on first use,
    /// with their buffers; `mem_cluster_links`) and replication
    /// (`mem_replication_backlog`, which fills up to `repl-backlog-size`,
    /// 1 MiB, as writes stream through it, and `mem_clients_slaves`).
    pub masters_buffers: u64,
    /// `used_memory` over every node: the masters and their replicas.
    pub all: u64,
}

pub fn used_memory(redis: &RedisCluster) -> UsedMemory {
    let sum = |ports: &[u16], fields: &[&str]| -> u64 {
        ports
            .iter()
            .flat_map(|&port| {
                fields.iter().map(move |field| {
                    info_field(port, "INFO", "memory", field)
                        .parse::<u64>()
                        .unwrap_or(0)
                })
            })
            .sum()
    };
    let masters = redis.masters();
    UsedMemory {
        masters: sum(&masters, &["used_memory"]),
        masters_buffers: sum(
            &masters,
            &[
                "mem_clients_normal",
                "mem_cluster_links",
                "mem_replication_backlog",
                "mem_clients_slaves",
            ],
        ),
        all: sum(&redis.ports(), &["used_memory"]),
    }
}

/// `MEMORY USAGE` of one UA at rest, its one key `{uaid}u` (its messages'
/// `{uaid}m` exists only while one is pending), for a UA picked with
/// RANDOMKEY on a master; None if no master holds one.
pub fn one_ua_bytes(redis: &RedisCluster) -> Option<u64> {
    redis.masters().into_iter().find_map(|port| {
        let OwnedFrame::BulkString(key) = request(port, &["RANDOMKEY"]).ok()? else {
            return None;
        };
        let key = String::from_utf8(key).ok()?;
        // Every key of a UA is `{<uaid hex>}` and a one-letter suffix.
        let tag = &key[..=key.find('}')?];
        match request(port, &["MEMORY", "USAGE", &format!("{tag}u")]).ok()? {
            OwnedFrame::Integer(bytes) => u64::try_from(bytes).ok(),
            _ => None,
        }
    })
}

/// `INFO commandstats` summed over every node (masters run what Herald
/// sends, replicas what the masters replicate): per command, its calls and
/// the µs spent inside them (wall clock, so a node preempted mid-command
/// counts the wait; no I/O, no event loop).
pub fn command_stats(redis: &RedisCluster) -> BTreeMap<String, (u64, u64)> {
    let mut stats = BTreeMap::new();
    for port in redis.ports() {
        let Ok(OwnedFrame::BulkString(text)) = request(port, &["INFO", "commandstats"]) else {
            continue;
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let Some((command, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|rest| rest.split_once(':'))
            else {
                continue;
            };
            let field = |name: &str| -> u64 {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0)
            };
            let entry = stats.entry(command.to_owned()).or_insert((0, 0));
            entry.0 += field("calls");
            entry.1 += field("usec");
        }
    }
    stats
}

/// One command's share of a notification.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct PerNotification {
    pub calls: f64,
    /// Execution µs. A script's (`evalsha`) and a transaction's (`exec`)
    /// include the commands they ran, which are counted on their own as
    /// well: the figures do not add up.
    pub us: f64,
}

/// What the commands of `after` minus `before` were per notification.
pub fn commands_per(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    notifications: u64,
) -> BTreeMap<String, PerNotification> {
    let per = |count: u64| count as f64 / notifications.max(1) as f64;
    after
        .iter()
        .filter_map(|(command, (calls_after, usec_after))| {
            let (calls_before, usec_before) = before.get(command).copied().unwrap_or((0, 0));
            let calls = calls_after.saturating_sub(calls_before);
            let share = PerNotification {
                calls: per(calls),
                us: per(usec_after.saturating_sub(usec_before)),
            };
            (calls > 0).then(|| (command.clone(), share))
        })
        .collect()
}

/// `MEMORY STATS` summed over the masters: each numeric field (a database's
/// own fields as `db.0.<field>`), for where memory per UA goes.
pub fn memory_stats(redis: &RedisCluster) -> BTreeMap<String, i64> {
    let mut stats = BTreeMap::new();
    for port in redis.masters() {
        if let Ok(OwnedFrame::Array(fields)) = request(port, &["MEMORY", "STATS"]) {
            add_fields(&mut stats, "", &fields);
        }
    }
    stats
}

fn add_fields(stats: &mut BTreeMap<String, i64>, prefix: &str, fields: &[OwnedFrame]) {
    for pair in fields.chunks(2) {
        let [OwnedFrame::BulkString(name) | OwnedFrame::SimpleString(name), value] = pair else {
            continue;
        };
        let name = format!("{prefix}{}", String::from_utf8_lossy(name));
        match value {
            OwnedFrame::Integer(number) => *stats.entry(name).or_insert(0) += number,
            OwnedFrame::Array(inner) => add_fields(stats, &format!("{name}."), inner),
            _ => {}
        }
    }
}
