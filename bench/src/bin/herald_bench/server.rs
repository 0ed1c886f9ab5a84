//! The server under test: a fresh `herald serve` (new data directory, keys
//! generated) or the `herald-floor` server, started for one run and stopped
//! after it. Both binaries are looked for next to this one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Herald { fsync: &'static str },
    Floor,
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::Herald { fsync } => format!("herald --fsync {fsync}"),
            Target::Floor => "herald-floor".to_owned(),
        }
    }
}

pub struct Server {
    child: Child,
    pub ua: SocketAddr,
    pub push_to: SocketAddr,
    data_dir: Option<PathBuf>,
}

fn sibling_binary(name: &str) -> PathBuf {
    let this = std::env::current_exe().expect("path of herald-bench");
    this.with_file_name(name)
}

impl Server {
    pub fn start(target: Target, shards: usize) -> Server {
        let (ua, push_to): (SocketAddr, SocketAddr) = match target {
            Target::Herald { .. } => (
                "127.0.0.1:27180".parse().unwrap(),
                "127.0.0.1:27181".parse().unwrap(),
            ),
            Target::Floor => (
                "127.0.0.1:27190".parse().unwrap(),
                "127.0.0.1:27191".parse().unwrap(),
            ),
        };
        let (mut command, data_dir) = match target {
            Target::Herald { fsync } => {
                let data_dir = std::env::temp_dir().join(format!(
                    "herald-bench-{}-{}",
                    std::process::id(),
                    crate::stats::now_us()
                ));
                let mut command = Command::new(sibling_binary("herald"));
                command
                    .arg("serve")
                    .arg("--data-dir")
                    .arg(&data_dir)
                    .args(["--fsync", fsync]);
                (command, Some(data_dir))
            }
            Target::Floor => (Command::new(sibling_binary("herald-floor")), None),
        };
        command
            .args(["--shards", &shards.to_string()])
            .args([
                "--ua-listen",
                &ua.to_string(),
                "--as-listen",
                &push_to.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file());
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot start {:?}: {error} (build it: cargo build --release -p herald -p herald-bench)", command.get_program())
        });
        let server = Server {
            child,
            ua,
            push_to,
            data_dir,
        };
        server.wait_ready(target);
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Herald answers /health once every shard replayed its log; the floor
    /// is ready once it accepts connections.
    fn wait_ready(&self, target: Target) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let ready = match target {
                Target::Herald { .. } => health_ok(self.push_to),
                Target::Floor => TcpStream::connect(self.ua).is_ok(),
            };
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not become ready in {START_TIMEOUT:?}",
            target.label()
        );
    }

    pub fn rss_bytes(&self) -> u64 {
        crate::proc::rss_bytes(self.pid()).unwrap_or(0)
    }

    pub fn cpu_seconds(&self) -> f64 {
        crate::proc::cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// SIGTERM (Herald drains and flushes), then wait; SIGKILL if it hangs.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The server's log of the latest run (its startup lines would drown the
/// summary); kept for a look after a failed run.
fn log_file() -> Stdio {
    let path = std::env::temp_dir().join("herald-bench-server.log");
    std::fs::File::create(&path).map_or_else(|_| Stdio::null(), Stdio::from)
}

fn health_ok(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/1.1 200")
}
