//! The server under test for one run: a fresh `herald serve` (new data
//! directory, keys generated) or `herald-floor`, started with the shared
//! launcher and stopped, its data directory removed, after the run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald_bench::server::{self, Fsync, Kind, Server};

/// A fresh server has no log to replay: it is up in well under a second.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Herald { fsync: Fsync },
    Floor,
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::Herald { fsync } => format!("herald --fsync {}", fsync.as_str()),
            Target::Floor => "herald-floor".to_owned(),
        }
    }
}

pub struct UnderTest {
    server: Server,
    data_dir: Option<PathBuf>,
}

impl UnderTest {
    pub fn start(target: Target, shards: usize) -> UnderTest {
        let (command, kind, data_dir) = match target {
            Target::Herald { fsync } => {
                let data_dir = server::temp_dir("herald-bench");
                let command = server::herald_serve(None, &data_dir, shards, fsync);
                (command, Kind::Herald, Some(data_dir))
            }
            Target::Floor => (server::floor(shards), Kind::Floor, None),
        };
        // The latest run's log (its startup lines would drown the summary),
        // kept for a look after a failed run.
        let log = std::env::temp_dir().join("herald-bench-server.log");
        UnderTest {
            server: Server::start(command, kind, &log, START_TIMEOUT),
            data_dir,
        }
    }

    pub fn ua(&self) -> SocketAddr {
        self.server.ua
    }

    pub fn push_to(&self) -> SocketAddr {
        self.server.as_addr
    }

    pub fn rss_bytes(&self) -> u64 {
        herald_bench::proc::rss_bytes(self.server.pid()).unwrap_or(0)
    }

    pub fn cpu_seconds(&self) -> f64 {
        herald_bench::proc::cpu_seconds(self.server.pid()).unwrap_or(0.0)
    }

    pub fn stop(self) {
        self.server.stop();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
