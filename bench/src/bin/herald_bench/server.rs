//! What a run measures, started fresh for it and stopped after it: one
//! `herald serve` (new data directory, keys generated), `herald-floor`, or a
//! cluster — a new nine-node Redis Cluster and Herald nodes sharing one key
//! file. Started with the shared launchers; data directories are removed
//! after the run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herald_bench::free_port;
use herald_bench::server::{self, Fsync, Kind, Server, Stop};
use herald_bench::stats::now_us;
use herald_engine::identity::KeyMaterial;
use herald_tests::RedisCluster;

/// A fresh server has no log to replay: it is up in well under a second.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Herald {
        fsync: Fsync,
    },
    Floor,
    /// `nodes` Herald nodes sharing a fresh Redis Cluster: the launcher of
    /// the cluster tests (`herald_tests::RedisCluster`), nine redis-server
    /// processes, 3 masters each with a replica in both other "DCs", and
    /// Herald's default `[cluster]` settings (`replicas` = 1).
    Cluster {
        nodes: usize,
    },
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::Herald { fsync } => format!("herald --fsync {}", fsync.as_str()),
            Target::Floor => "herald-floor".to_owned(),
            Target::Cluster { nodes: 1 } => "herald cluster, 1 node".to_owned(),
            Target::Cluster { nodes } => format!("herald cluster, {nodes} nodes"),
        }
    }
}

pub struct UnderTest {
    /// The Herald processes (or the floor): one unless a cluster.
    servers: Vec<Server>,
    /// Directories of the run: data dirs, the cluster's key file.
    dirs: Vec<PathBuf>,
    redis: Option<RedisCluster>,
    /// The command that starts the single Herald again on its data dir.
    relaunch: Option<Box<dyn Fn() -> Command>>,
}

/// A restart as the orchestrator saw it (wall-clock µs, as the workers'
/// reports).
pub struct Restarted {
    /// When the old process was signalled.
    pub stopped_us: u64,
    /// From the signal until the old process had exited.
    pub stop_s: f64,
    /// When the new process was started.
    pub launched_us: u64,
    /// When its `/health` first answered 200 (every shard replayed).
    pub ready_us: u64,
}

impl UnderTest {
    pub fn start(target: Target, shards: usize) -> UnderTest {
        // One process: Herald (which can be started again on its data dir)
        // or the floor.
        let (relaunch, kind, dirs): (Box<dyn Fn() -> Command>, _, _) = match target {
            Target::Herald { fsync } => {
                let data_dir = server::temp_dir("herald-bench");
                let config_dir = server::temp_dir("herald-bench-config");
                let config = bench_config(&config_dir);
                let dirs = vec![data_dir.clone(), config_dir];
                let command = move || {
                    let mut command = server::herald_serve(None, &data_dir, shards, fsync);
                    command.arg("--config").arg(&config);
                    command
                };
                (Box::new(command), Kind::Herald, dirs)
            }
            Target::Floor => (
                Box::new(move || server::floor(shards)),
                Kind::Floor,
                Vec::new(),
            ),
            Target::Cluster { nodes } => return UnderTest::start_cluster(nodes, shards),
        };
        UnderTest {
            servers: vec![Server::start(relaunch(), kind, &log_path(0), START_TIMEOUT)],
            dirs,
            redis: None,
            relaunch: (kind == Kind::Herald).then_some(relaunch),
        }
    }

    fn start_cluster(nodes: usize, shards: usize) -> UnderTest {
        let redis = RedisCluster::start();
        let keys_dir = server::temp_dir("herald-bench-keys");
        let keys_file = keys_dir.join("keys");
        // Every node must read the same keys: any node opens any endpoint.
        let keys = KeyMaterial::generate(&mut rand::thread_rng());
        std::fs::write(&keys_file, keys.to_file_text()).expect("write the cluster's key file");
        let mut dirs = vec![keys_dir];
        let mut servers = Vec::new();
        for node in 0..nodes.max(1) {
            let data_dir = server::temp_dir("herald-bench");
            let node_listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut command = server::herald_cluster_node(
                &data_dir,
                shards,
                &redis.seeds(),
                node_listen,
                &keys_file,
            );
            let config_dir = server::temp_dir("herald-bench-config");
            command.arg("--config").arg(bench_config(&config_dir));
            dirs.push(data_dir);
            dirs.push(config_dir);
            servers.push(Server::start(
                command,
                Kind::Herald,
                &log_path(node),
                START_TIMEOUT,
            ));
        }
        UnderTest {
            servers,
            dirs,
            redis: Some(redis),
            relaunch: None,
        }
    }

    /// Stops the single Herald the way `stop` says and starts it again on
    /// the same data dir and ports; returns once it is ready. Panics for a
    /// target that cannot be restarted (the floor, a cluster).
    pub fn restart(&mut self, stop: Stop) -> Restarted {
        let relaunch = self
            .relaunch
            .as_ref()
            .expect("only a single Herald is restarted");
        let old = self.servers.pop().expect("a running server");
        let stopped_us = now_us();
        let (new, stop_took) = old.restart(stop, relaunch(), START_TIMEOUT);
        let launched_us = new
            .launched
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        let ready_us = launched_us + new.ready_after.as_micros() as u64;
        self.servers.push(new);
        Restarted {
            stopped_us,
            stop_s: stop_took.as_secs_f64(),
            launched_us,
            ready_us,
        }
    }

    /// How many Herald nodes (1 unless a cluster).
    pub fn nodes(&self) -> usize {
        self.servers.len()
    }

    /// Node `node`'s UA listener.
    pub fn ua(&self, node: usize) -> SocketAddr {
        self.servers[node].ua
    }

    /// Node `node`'s AS listener.
    pub fn push_to(&self, node: usize) -> SocketAddr {
        self.servers[node].as_addr
    }

    /// Resident memory of the Herald processes together.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(&self.pids())
    }

    /// The server processes (Herald nodes, or the floor).
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(Server::pid).collect()
    }

    /// CPU time of the Herald processes together.
    pub fn cpu_seconds(&self) -> f64 {
        self.servers
            .iter()
            .filter_map(|server| herald_bench::proc::cpu_seconds(server.pid()))
            .sum()
    }

    /// The Redis Cluster behind a cluster target.
    pub fn redis(&self) -> Option<&RedisCluster> {
        self.redis.as_ref()
    }

    /// Herald first (it drains into Redis), then Redis, then the files.
    pub fn stop(self) {
        for server in self.servers {
            server.stop();
        }
        drop(self.redis);
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Resident memory of processes `pids` together.
pub fn rss_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| herald_bench::proc::rss_bytes(*pid))
        .sum()
}

/// Writes the config of every Herald under test into `dir` (removed after
/// the run) and returns its path, for `--config`.
///
/// The generators push to a few channels far faster than any real sender
/// (1,000/s each at 100 UAs and 100,000/s), so the per-channel rate limit,
/// an abuse guard, is off: what is measured is capacity. The per-address
/// limits on UA connects and AS requests stay at their defaults and, as by
/// default, do not count loopback sources: the generator's 19,000 UAs come
/// from four 127.0.0.x addresses, where a real storm comes from as many
/// addresses as devices, so a per-address bucket would measure the bucket
/// (set here, not left to the default, so that a changed default cannot
/// quietly throttle a scenario).
fn bench_config(dir: &Path) -> PathBuf {
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        "[limits]\nnotifications_per_channel_per_minute = 0\nrate_limit_loopback = false\n",
    )
    .expect("write the bench's herald.toml");
    config
}

/// The latest run's log of node `node` (their startup lines would drown the
/// summary), kept for a look after a failed run.
fn log_path(node: usize) -> PathBuf {
    let name = match node {
        0 => "herald-bench-server.log".to_owned(),
        node => format!("herald-bench-server-{node}.log"),
    };
    std::env::temp_dir().join(name)
}
