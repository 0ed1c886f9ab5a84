//! What a run measures, started fresh for it and stopped after it: one
//! `herald serve` (new data directory, keys generated), `herald-floor`, or a
//! cluster — a new nine-node Redis Cluster and Herald nodes sharing one key
//! file. Started with the shared launchers; data directories are removed
//! after the run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald_bench::free_port;
use herald_bench::server::{self, Fsync, Kind, Server};
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
}

impl UnderTest {
    pub fn start(target: Target, shards: usize) -> UnderTest {
        let (command, kind, dirs) = match target {
            Target::Herald { fsync } => {
                let data_dir = server::temp_dir("herald-bench");
                let mut command = server::herald_serve(None, &data_dir, shards, fsync);
                let config_dir = bench_config(&mut command);
                (command, Kind::Herald, vec![data_dir, config_dir])
            }
            Target::Floor => (server::floor(shards), Kind::Floor, Vec::new()),
            Target::Cluster { nodes } => return UnderTest::start_cluster(nodes, shards),
        };
        UnderTest {
            servers: vec![Server::start(command, kind, &log_path(0), START_TIMEOUT)],
            dirs,
            redis: None,
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
            dirs.push(data_dir);
            dirs.push(bench_config(&mut command));
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

/// Points `herald serve` at the config of every Herald under test, in a new
/// directory (returned, to be removed after the run). The generators push to
/// a few channels far faster than any real sender (1,000/s each at 100 UAs
/// and 100,000/s), so the per-channel rate limit, an abuse guard, is off:
/// what is measured is capacity.
fn bench_config(command: &mut std::process::Command) -> PathBuf {
    let dir = server::temp_dir("herald-bench-config");
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        "[limits]\nnotifications_per_channel_per_minute = 0\n",
    )
    .expect("write the bench's herald.toml");
    command.arg("--config").arg(&config);
    dir
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
