//! The server under test, started for one run and stopped after it: `herald
//! serve` (alone, or as one node of a cluster) or `herald-floor`, both found
//! next to the running binary, each on free loopback ports (two, and
//! Herald's admin listener); Herald may be stopped (cleanly or killed) and
//! started again on the same ports and data dir.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use herald_tests::free_port;

/// After SIGTERM, how long Herald may take to drain and flush before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a starting or stopping server is looked at.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// A loopback connect that takes longer than this is not going to happen.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest wait for a whole HTTP answer (`/metrics` of a busy server).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// `name` next to the running executable: cargo builds every binary of the
/// workspace into one directory.
pub fn sibling(name: &str) -> PathBuf {
    let this = std::env::current_exe().expect("path of the running executable");
    this.with_file_name(name)
}

/// A new, empty directory under the system's temp dir, named after `tag`,
/// this process and the time.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let dir = std::env::temp_dir().join(format!("{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// Herald's `--fsync` modes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Fsync {
    Batch,
    Never,
    Always,
}

impl Fsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Batch => "batch",
            Fsync::Never => "never",
            Fsync::Always => "always",
        }
    }
}

/// `herald serve` on `data_dir` (the binary `herald`, or next to this one).
pub fn herald_serve(
    herald: Option<&Path>,
    data_dir: &Path,
    shards: usize,
    fsync: Fsync,
) -> Command {
    let mut command = serve(herald, data_dir, shards);
    command.args(["--fsync", fsync.as_str()]);
    command
}

/// `herald serve` (next to this binary) as one node of a cluster: `seeds`
/// is the `--cluster` list, other nodes reach this one on `node_listen`, and
/// every node reads the same `keys_file`. No `--fsync`: a cluster node's
/// writes are durable once Redis replicas acknowledged them (`WAIT`,
/// `[cluster] replicas`, default 1); the data dir keeps only node-local
/// state.
pub fn herald_cluster_node(
    data_dir: &Path,
    shards: usize,
    seeds: &str,
    node_listen: SocketAddr,
    keys_file: &Path,
) -> Command {
    let mut command = serve(None, data_dir, shards);
    command
        .args(["--cluster", seeds])
        .arg("--node-listen")
        .arg(node_listen.to_string())
        .arg("--keys-file")
        .arg(keys_file);
    command
}

fn serve(herald: Option<&Path>, data_dir: &Path, shards: usize) -> Command {
    let mut command = Command::new(herald.map_or_else(|| sibling("herald"), Path::to_path_buf));
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--shards", &shards.to_string()]);
    command
}

/// `herald-floor`, next to this binary.
pub fn floor(shards: usize) -> Command {
    let mut command = Command::new(sibling("herald-floor"));
    command.args(["--shards", &shards.to_string()]);
    command
}

/// How a server is stopped before it is started again on its data dir.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Stop {
    /// SIGTERM: Herald closes its UA sockets (1001), flushes the WAL, exits.
    Term,
    /// SIGKILL: a crash; the kernel closes the sockets, nothing is flushed.
    Kill,
}

impl Stop {
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
        }
    }
}

/// Which server runs: its listeners, and when it counts as ready.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `herald serve`, with an admin listener (`/metrics`) as well; ready
    /// once `GET /health` on the AS listener answers 200, which it does once
    /// every shard has replayed its log.
    Herald,
    /// `herald-floor`: ready once both listeners accept connections.
    Floor,
}

/// A running server; SIGTERM (then SIGKILL) when stopped or dropped.
pub struct Server {
    child: Child,
    kind: Kind,
    pub ua: SocketAddr,
    /// The AS listener: pushes, `/health`.
    pub as_addr: SocketAddr,
    /// Herald's admin listener: `/metrics` (none for the floor).
    pub admin: Option<SocketAddr>,
    /// Its stderr (the tracing log).
    pub log: PathBuf,
    /// Wall-clock time of the launch, to compare with the log's timestamps.
    pub launched: SystemTime,
    /// From the launch until it was ready.
    pub ready_after: Duration,
}

impl Server {
    /// Starts `command` with `--ua-listen` and `--as-listen` (and Herald's
    /// `--admin-listen`) on free loopback ports and its stderr in `log`, and
    /// waits until it is ready. Panics, showing the log, if it exits first
    /// or is not ready within `timeout`.
    pub fn start(command: Command, kind: Kind, log: &Path, timeout: Duration) -> Server {
        let ua = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let as_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = (kind == Kind::Herald).then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let file = std::fs::File::create(log)
            .unwrap_or_else(|error| panic!("create {}: {error}", log.display()));
        Server::launch(command, kind, (ua, as_addr, admin), log, file, timeout)
    }

    /// Stops this server the way `stop` says, then starts `command` (the
    /// same server on the same data dir) on the same listeners, its log
    /// appended to this one's, and waits until it is ready. Returns it and
    /// how long the old process took to exit.
    pub fn restart(
        mut self,
        stop: Stop,
        command: Command,
        timeout: Duration,
    ) -> (Server, Duration) {
        let stopping = Instant::now();
        match stop {
            Stop::Term => self.terminate(),
            Stop::Kill => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let stopped_after = stopping.elapsed();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|error| panic!("open {}: {error}", self.log.display()));
        let listeners = (self.ua, self.as_addr, self.admin);
        let server = Server::launch(command, self.kind, listeners, &self.log, file, timeout);
        (server, stopped_after)
    }

    fn launch(
        mut command: Command,
        kind: Kind,
        (ua, as_addr, admin): (SocketAddr, SocketAddr, Option<SocketAddr>),
        log: &Path,
        file: std::fs::File,
        timeout: Duration,
    ) -> Server {
        if let Some(admin) = admin {
            command.arg("--admin-listen").arg(admin.to_string());
        }
        command
            .arg("--ua-listen")
            .arg(ua.to_string())
            .arg("--as-listen")
            .arg(as_addr.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        let launched = SystemTime::now();
        let started = Instant::now();
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start {:?}: {error} (build it: cargo build --release -p herald -p herald-bench)",
                command.get_program()
            )
        });
        let mut server = Server {
            child,
            kind,
            ua,
            as_addr,
            admin,
            log: log.to_path_buf(),
            launched,
            ready_after: Duration::ZERO,
        };
        let deadline = started + timeout;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "{:?} exited at start ({status}):\n{}",
                    command.get_program(),
                    server.log_text()
                );
            }
            let is_ready = match kind {
                Kind::Herald => {
                    http_get(as_addr, "/health").is_some_and(|(status, _)| status == 200)
                }
                Kind::Floor => [ua, as_addr]
                    .iter()
                    .all(|address| TcpStream::connect_timeout(address, CONNECT_TIMEOUT).is_ok()),
            };
            if is_ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} not ready within {timeout:?}:\n{}",
                command.get_program(),
                server.log_text()
            );
            std::thread::sleep(POLL_EVERY);
        }
        server.ready_after = started.elapsed();
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (Herald drains and flushes), then wait; SIGKILL if it hangs.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL_EVERY);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// `GET path` over a fresh connection: (status, body).
pub fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
