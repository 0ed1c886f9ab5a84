//! Finding and running the herald binary: readiness waits, signals, and a
//! guard for herald commands a test builds itself.

use std::fs::File;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent dir")
        .to_path_buf()
}

/// Path of the herald binary: `$HERALD_BIN`, else `$CARGO_TARGET_DIR/release/herald`,
/// else `<workspace>/target/release/herald`. Panics with a clear message if absent.
pub fn herald_bin() -> PathBuf {
    let p = if let Ok(p) = std::env::var("HERALD_BIN") {
        PathBuf::from(p)
    } else if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_absolute() {
            t
        } else {
            workspace_root().join(t)
        };
        t.join("release/herald")
    } else {
        workspace_root().join("target/release/herald")
    };
    if !p.exists() {
        panic!(
            "herald binary not found at {}: run `cargo build --release` in the workspace first \
             (or set HERALD_BIN to the binary)",
            p.display()
        );
    }
    p
}

pub(crate) fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Wait for a child to exit, up to `within`. `None` if still running.
pub fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(e) => panic!("try_wait: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll `GET http://addr/health` until 200 (or the child exits / deadline).
pub fn wait_health(as_addr: &str, child: &mut Child, within: Duration) -> Result<(), String> {
    let url = format!("http://{as_addr}/health");
    wait_health_on(&url, ureq::AgentBuilder::new(), child, within)
}

/// Poll `GET url` with `agent` until 200 (or the child exits / deadline).
pub fn wait_health_on(
    url: &str,
    agent: ureq::AgentBuilder,
    child: &mut Child,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let agent = agent
        .timeout_connect(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
        .build();
    let mut last: String;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("herald exited during startup with {st}"));
        }
        match agent.get(url).call() {
            Ok(r) if r.status() == 200 => return Ok(()),
            Ok(r) => last = format!("status {}", r.status()),
            Err(ureq::Error::Status(c, _)) => last = format!("status {c}"),
            Err(e) => last = format!("{e}"),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "GET {url} not 200 within {within:?} (last: {last})"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until a TCP connection to `addr` succeeds.
pub fn wait_tcp(addr: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let sa = addr.to_socket_addrs().unwrap().next().unwrap();
    loop {
        match TcpStream::connect_timeout(&sa, Duration::from_millis(300)) {
            Ok(_) => return Ok(()),
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(format!("connect {addr}: {e}"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A herald child process killed on drop (for tests that build the command line themselves).
pub struct ChildGuard {
    pub child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl ChildGuard {
    pub fn output(&self) -> String {
        let o = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let e = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        format!("{o}{e}")
    }
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, within)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.child.id(), libc::SIGTERM);
            if wait_child(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("----- herald output -----\n{}\n-----", self.output());
        }
    }
}

/// Spawn `herald <args>` with extra env, output captured in `dir`.
pub fn spawn_herald(args: &[String], env: &[(&str, &str)], dir: &Path) -> ChildGuard {
    let stdout_path = dir.join("cmd-stdout.log");
    let stderr_path = dir.join("cmd-stderr.log");
    let mut cmd = Command::new(herald_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(File::create(&stderr_path).unwrap()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn herald");
    ChildGuard {
        child,
        stdout_path,
        stderr_path,
    }
}
