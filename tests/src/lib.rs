//! Black-box test harness for Herald.
//!
//! Everything here talks to a real `herald serve` process over loopback:
//! [`Server`] starts one (own temp dir, own ports), [`WsClient`] is a UA
//! (WebSocket, hand-rolled handshake so that a server which does not echo the
//! subprotocol is accepted, as Firefox does), and [`http`] / [`raw_http`] are
//! the AS side.
//!
//! Rules for the tests built on this: no sleep that hopes. Every wait is a
//! loop on an event with a deadline; "nothing arrives" is checked with a read
//! timeout over a bounded window.

pub mod ece;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
pub use serde_json;
use serde_json::{json, Value};
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;

/// Default deadline for something that must happen ("a notification arrives").
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Window for bounded negative checks ("nothing more arrives").
pub const NEG_WINDOW: Duration = Duration::from_millis(1000);
/// Deadline for the server to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(10);

/// The P-256 generator point, uncompressed (private key = 1): a valid VAPID
/// public key, base64url without padding.
pub const VAPID_KEY_G: &str =
    "BGsX0fLhLEJH-Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";

// ---------------------------------------------------------------------------
// small utilities
// ---------------------------------------------------------------------------

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

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut f = File::open("/dev/urandom").expect("open /dev/urandom");
    let mut b = vec![0u8; n];
    f.read_exact(&mut b).expect("read /dev/urandom");
    b
}

/// A random (version 4) UUID, lower case.
pub fn new_channel_id() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{:02x}", x)).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn random_hex(nbytes: usize) -> String {
    random_bytes(nbytes)
        .iter()
        .map(|x| format!("{:02x}", x))
        .collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// True for 32 lower-case hex characters (SPEC §6 UAID form).
pub fn is_uaid(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Decode base64url, with or without `=` padding. Standard-alphabet characters
/// (`+`, `/`) are an error: the spec says base64url.
pub fn b64url_decode(s: &str) -> Vec<u8> {
    let t = s.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .unwrap_or_else(|e| panic!("not base64url: {s:?}: {e}"))
}

pub fn b64url_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Pick a free loopback port (bind :0, read, drop).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Simple temporary directory removed on drop (kept when the thread panics,
/// so the logs can be looked at).
pub struct TempDir {
    path: PathBuf,
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "herald-test-{}-{}-{}-{}",
            tag,
            std::process::id(),
            n,
            nanos
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[harness] keeping temp dir {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn send_signal(pid: u32, sig: i32) {
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
    let deadline = Instant::now() + within;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
        .build();
    let url = format!("http://{as_addr}/health");
    let mut last: String;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("herald exited during startup with {st}"));
        }
        match agent.get(&url).call() {
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

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// How to start a server. Build with `ServerOptions::new().shards(4).limit(..)`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub shards: usize,
    pub fsync: String,
    /// Extra top-level TOML lines `key = <raw toml value>`.
    pub top: Vec<(String, String)>,
    /// `[limits]` entries `key = <raw toml value>`.
    pub limits: Vec<(String, String)>,
    /// Extra command-line arguments after the standard ones.
    pub extra_args: Vec<String>,
    /// Extra environment variables for the server process.
    pub env: Vec<(String, String)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            shards: 1,
            fsync: "batch".into(),
            top: vec![],
            limits: vec![],
            extra_args: vec![],
            env: vec![],
        }
    }
}

impl ServerOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }
    pub fn fsync(mut self, mode: &str) -> Self {
        self.fsync = mode.into();
        self
    }
    /// Set a `[limits]` key (numbers: pass the number).
    pub fn limit(mut self, key: &str, value: impl ToString) -> Self {
        self.limits.push((key.into(), value.to_string()));
        self
    }
    /// Set a top-level key with a raw TOML value (strings must be quoted).
    pub fn top_raw(mut self, key: &str, raw_toml_value: &str) -> Self {
        self.top.push((key.into(), raw_toml_value.into()));
        self
    }
    pub fn wakeup_routes(self, routes: &[&str]) -> Self {
        let v = format!(
            "[{}]",
            routes
                .iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.top_raw("wakeup_routes", &v)
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A running `herald serve` with its own temp dir and ports. Killed on drop
/// (SIGTERM, then SIGKILL after 5 s); its stdout/stderr are printed when the
/// test panics.
pub struct Server {
    pub opts: ServerOptions,
    dir: TempDir,
    ua_port: u16,
    as_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Server {
    pub fn start_default() -> Server {
        Server::start(ServerOptions::default())
    }

    pub fn start(opts: ServerOptions) -> Server {
        let bin = herald_bin();
        let _ = bin;
        let mut server = Server {
            opts,
            dir: TempDir::new("srv"),
            ua_port: 0,
            as_port: 0,
            child: None,
            starts: 0,
        };
        let mut last_err = String::new();
        // Ports are picked by bind-and-drop, so another test may grab one in
        // between: retry with fresh ports when the process dies at startup.
        for attempt in 0..4 {
            server.ua_port = free_port();
            server.as_port = free_port();
            while server.as_port == server.ua_port {
                server.as_port = free_port();
            }
            server.write_config();
            server.spawn();
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => {
                    let exited = server
                        .child
                        .as_mut()
                        .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                        .unwrap_or(true);
                    last_err = e;
                    if exited && attempt < 3 {
                        eprintln!("[harness] start attempt {attempt} failed ({last_err}); retrying with new ports");
                        continue;
                    }
                    break;
                }
            }
        }
        let logs = server.logs();
        server.kill_now();
        panic!("herald did not start: {last_err}\n{logs}");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("herald.toml")
    }
    pub fn ua_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ua_port)
    }
    pub fn as_addr(&self) -> String {
        format!("127.0.0.1:{}", self.as_port)
    }
    /// `ws://127.0.0.1:<ua port>/`
    pub fn ua_url(&self) -> String {
        format!("ws://{}/", self.ua_addr())
    }
    /// `http://127.0.0.1:<as port>` (no trailing slash): the default endpoint URL.
    pub fn as_url(&self) -> String {
        format!("http://{}", self.as_addr())
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn write_config(&self) {
        let mut s = String::new();
        s.push_str(&format!("ua_listen = \"{}\"\n", self.ua_addr()));
        s.push_str(&format!("as_listen = \"{}\"\n", self.as_addr()));
        s.push_str(&format!(
            "data_dir = {:?}\n",
            self.data_dir().display().to_string()
        ));
        s.push_str(&format!("shards = {}\n", self.opts.shards));
        s.push_str(&format!("fsync = \"{}\"\n", self.opts.fsync));
        for (k, v) in &self.opts.top {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push_str("\n[limits]\n");
        for (k, v) in &self.opts.limits {
            s.push_str(&format!("{k} = {v}\n"));
        }
        std::fs::write(self.config_path(), s).expect("write herald.toml");
    }

    fn log_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("stdout.log"),
            self.dir.path().join("stderr.log"),
        )
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let (out, err) = self.log_paths();
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("open log")
        };
        let mut o = open(&out);
        let mut e = open(&err);
        let banner = format!("===== start #{} =====\n", self.starts);
        let _ = o.write_all(banner.as_bytes());
        let _ = e.write_all(banner.as_bytes());
        let mut cmd = Command::new(herald_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--ua-listen")
            .arg(self.ua_addr())
            .arg("--as-listen")
            .arg(self.as_addr())
            .arg("--shards")
            .arg(self.opts.shards.to_string())
            .args(&self.opts.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(o))
            .stderr(Stdio::from(e));
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", herald_bin().display()));
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let as_addr = self.as_addr();
        let ua_addr = self.ua_addr();
        let child = self.child.as_mut().expect("child");
        wait_health(&as_addr, child, READY_DEADLINE)?;
        wait_tcp(&ua_addr, READY_DEADLINE)
    }

    /// Captured stdout and stderr of every start of this server.
    pub fn logs(&self) -> String {
        let (out, err) = self.log_paths();
        let o = std::fs::read_to_string(out).unwrap_or_default();
        let e = std::fs::read_to_string(err).unwrap_or_default();
        format!(
            "----- herald stdout ({}) -----\n{o}\n----- herald stderr -----\n{e}\n----- end of herald logs -----",
            self.dir.path().display()
        )
    }

    /// Send a signal to the running server.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            send_signal(pid, sig);
        }
    }

    /// Wait for the server process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let st = wait_child(child, within);
        if st.is_some() {
            self.child = None;
        }
        st
    }

    /// SIGTERM and wait for exit (panics if it does not exit within `within`).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(within) {
            Some(st) => st,
            None => {
                let logs = self.logs();
                self.kill_now();
                panic!("herald did not exit within {within:?} after SIGTERM\n{logs}");
            }
        }
    }

    /// SIGKILL the server (a crash) and reap it.
    pub fn kill9(&mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop (gracefully if running) and start again on the same data dir,
    /// config and ports. Panics if it does not come back.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let st = self.terminate(Duration::from_secs(10));
            if !st.success() {
                eprintln!("[harness] herald exited with {st} on SIGTERM before restart");
            }
        }
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                Err(e) => {
                    let exited = self
                        .child
                        .as_mut()
                        .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                        .unwrap_or(true);
                    if exited && Instant::now() < deadline {
                        // e.g. the port is still held by the old process' sockets
                        self.child = None;
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    let logs = self.logs();
                    self.kill_now();
                    panic!("herald did not restart: {e}\n{logs}");
                }
            }
        }
    }

    /// A UA socket (subprotocol `push-notification`), handshake done, no hello yet.
    pub fn ua(&self) -> WsClient {
        WsClient::connect(&self.ua_addr())
    }

    /// Reconnect a known UAID on a fresh socket; asserts the same UAID comes back.
    pub fn ua_resume(&self, uaid: &str, use_webpush: bool) -> WsClient {
        let mut c = self.ua();
        let r = c.hello(Some(uaid), None, use_webpush);
        assert_eq!(r["uaid"], uaid, "a known UAID is kept on reconnect: {r}");
        c
    }

    /// A Web Push UA with a fresh UAID (hello done).
    pub fn ua_webpush(&self) -> WsClient {
        let mut c = self.ua();
        c.hello(None, None, true);
        c
    }

    /// A SimplePush UA with a fresh UAID (hello without `use_webpush`).
    pub fn ua_simplepush(&self) -> WsClient {
        let mut c = self.ua();
        c.hello(None, None, false);
        c
    }

    /// `GET /metrics` parsed into (name-with-labels, value) samples.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let r = http("GET", &format!("{}/metrics", self.as_url()), &[], None);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        parse_prometheus(&r.text())
    }

    /// Sum of all metric samples whose name contains `needle`.
    pub fn metric_sum(&self, needle: &str) -> f64 {
        self.metrics()
            .iter()
            .filter(|(n, _)| metric_name(n).contains(needle))
            .map(|(_, v)| *v)
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if let Some(mut c) = self.child.take() {
            send_signal(c.id(), libc::SIGTERM);
            if wait_child(&mut c, Duration::from_secs(5)).is_none() {
                eprintln!("[harness] herald did not exit 5 s after SIGTERM: SIGKILL");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if panicking {
            eprintln!("{}", self.logs());
        }
    }
}

/// Metric name without labels.
pub fn metric_name(sample: &str) -> &str {
    sample.split('{').next().unwrap_or(sample)
}

/// Parse Prometheus text format into (name{labels}, value) samples.
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut out = vec![];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // name{labels} value [timestamp]; labels may contain spaces inside quotes
        let (name, rest) = if let Some(close) = line.find('}') {
            (&line[..=close], line[close + 1..].trim())
        } else {
            match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, r.trim()),
                None => continue,
            }
        };
        let v = rest.split_whitespace().next().unwrap_or("");
        let v = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push((name.to_string(), v));
    }
    out
}

// ---------------------------------------------------------------------------
// Spawning herald directly (command-line tests)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// WebSocket client (the UA)
// ---------------------------------------------------------------------------

/// One thing read from the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: its code (None when the frame carried no code) and reason.
    Close(Option<u16>, String),
    /// The TCP connection ended without a close frame (or after one was
    /// already consumed); the string says how.
    Eof(String),
    /// Nothing arrived within the window.
    Timeout,
}

/// A UA: a WebSocket over a blocking `TcpStream` with read timeouts.
pub struct WsClient {
    ws: WebSocket<TcpStream>,
    /// Set by [`WsClient::hello`].
    pub uaid: Option<String>,
    /// `Sec-WebSocket-Protocol` the server answered with, if any.
    pub subprotocol: Option<String>,
    /// `Sec-WebSocket-Extensions` the server answered with, if any.
    pub extensions: Option<String>,
}

/// How a test connects (handshake details).
#[derive(Clone, Debug)]
pub struct Handshake {
    /// `Sec-WebSocket-Protocol` to offer; None: no header at all.
    pub protocol: Option<String>,
    /// Extra request header lines.
    pub extra_headers: Vec<(String, String)>,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            protocol: Some("push-notification".into()),
            extra_headers: vec![],
        }
    }
}

impl WsClient {
    /// Connect as Firefox does: `Sec-WebSocket-Protocol: push-notification`
    /// (a server that does not echo it is accepted). Panics on failure.
    pub fn connect(addr: &str) -> WsClient {
        WsClient::connect_with(addr, &Handshake::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn connect_with(addr: &str, hs: &Handshake) -> Result<WsClient, String> {
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .unwrap();
        let mut stream = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        let key = tungstenite::handshake::client::generate_key();
        let mut req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nConnection: keep-alive, Upgrade\r\n\
             Pragma: no-cache\r\nCache-Control: no-cache\r\nUpgrade: websocket\r\n"
        );
        if let Some(p) = &hs.protocol {
            req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        for (k, v) in &hs.extra_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("write handshake: {e}"))?;
        let (head, leftover) = read_http_head(&mut stream, Duration::from_secs(5))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if code != 101 {
            return Err(format!(
                "WebSocket handshake refused: {status_line:?}\n{head}"
            ));
        }
        let mut headers = vec![];
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let accept = get("sec-websocket-accept").ok_or("no Sec-WebSocket-Accept")?;
        let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
        if accept != expected {
            return Err(format!(
                "bad Sec-WebSocket-Accept {accept:?}, expected {expected:?}"
            ));
        }
        let subprotocol = get("sec-websocket-protocol");
        if let Some(p) = &subprotocol {
            let offered: Vec<&str> = hs
                .protocol
                .as_deref()
                .map(|o| o.split(',').map(|s| s.trim()).collect())
                .unwrap_or_default();
            if !offered.contains(&p.as_str()) {
                return Err(format!(
                    "server chose subprotocol {p:?} that was not offered ({offered:?})"
                ));
            }
        }
        let extensions = get("sec-websocket-extensions");
        let ws = WebSocket::from_partially_read(stream, leftover, Role::Client, None);
        Ok(WsClient {
            ws,
            uaid: None,
            subprotocol,
            extensions,
        })
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.ws.get_mut()
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .unwrap_or_else(|e| panic!("send text frame: {e}"));
    }

    /// Send a text frame; errors are returned (the server may have closed).
    pub fn try_send_text(&mut self, s: &str) -> Result<(), String> {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .map_err(|e| e.to_string())
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string())
    }

    pub fn send_ping(&mut self, payload: &[u8]) {
        self.ws
            .send(Message::Ping(payload.to_vec().into()))
            .unwrap_or_else(|e| panic!("send ping: {e}"));
    }

    pub fn send_binary(&mut self, payload: &[u8]) {
        self.ws
            .send(Message::Binary(payload.to_vec().into()))
            .unwrap_or_else(|e| panic!("send binary: {e}"));
    }

    /// Write one masked frame with raw bytes, bypassing tungstenite's checks
    /// (e.g. a text frame that is not UTF-8).
    pub fn send_raw_frame(&mut self, opcode: u8, payload: &[u8], fin: bool) -> std::io::Result<()> {
        let f = masked_frame(opcode, payload, fin);
        self.send_raw_bytes(&f)
    }

    /// Write raw bytes on the TCP stream (e.g. a frame header with no payload).
    pub fn send_raw_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.ws.flush().ok();
        let s = self.ws.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    /// Read the next event within `within`.
    pub fn next_event(&mut self, within: Duration) -> WsEvent {
        let deadline = Instant::now() + within;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return WsEvent::Timeout;
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            let _ = self.ws.get_mut().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Message::Text(t)) => return WsEvent::Text(t.to_string()),
                Ok(Message::Binary(b)) => return WsEvent::Binary(b.to_vec()),
                Ok(Message::Ping(p)) => return WsEvent::Ping(p.to_vec()),
                Ok(Message::Pong(p)) => return WsEvent::Pong(p.to_vec()),
                Ok(Message::Close(f)) => {
                    return match f {
                        Some(f) => WsEvent::Close(Some(u16::from(f.code)), f.reason.to_string()),
                        None => WsEvent::Close(None, String::new()),
                    }
                }
                Ok(Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(tungstenite::Error::ConnectionClosed) => {
                    return WsEvent::Eof("connection closed".into())
                }
                Err(tungstenite::Error::AlreadyClosed) => {
                    return WsEvent::Eof("already closed".into())
                }
                Err(e) => return WsEvent::Eof(format!("{e}")),
            }
        }
    }

    /// Next text frame parsed as JSON, within `within`. Server keepalive
    /// pings are answered and skipped (explicitly); anything else that is not
    /// a text frame (close, EOF, timeout, binary, pong) panics with what came.
    pub fn recv_json_with_deadline(&mut self, within: Duration) -> Value {
        match self.try_recv_json(within) {
            Some(v) => v,
            None => panic!("no message from the server within {within:?}"),
        }
    }

    /// Like [`recv_json_with_deadline`] but `None` when nothing arrives in time.
    pub fn try_recv_json(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                WsEvent::Text(t) => {
                    return Some(
                        serde_json::from_str(&t)
                            .unwrap_or_else(|e| panic!("server sent non-JSON text {t:?}: {e}")),
                    )
                }
                WsEvent::Timeout => return None,
                WsEvent::Ping(_) => continue, // keepalive from the server, pong is automatic
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Read a text frame and require it to be JSON with this messageType.
    pub fn recv_type(&mut self, message_type: &str, within: Duration) -> Value {
        let v = self.recv_json_with_deadline(within);
        assert_eq!(
            v["messageType"], message_type,
            "expected messageType {message_type:?}, got {v}"
        );
        v
    }

    /// Bounded negative check: no text frame at all within `within`.
    pub fn expect_silence(&mut self, within: Duration) {
        if let Some(v) = self.try_recv_json(within) {
            panic!("expected no message within {within:?}, got {v}");
        }
    }

    /// Expect a close frame within `within` and return its code. A text frame,
    /// EOF without a close frame, or timeout panics.
    pub fn expect_close_with_deadline(&mut self, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                WsEvent::Close(Some(c), _) => return c,
                WsEvent::Close(None, _) => panic!("close frame without a status code"),
                WsEvent::Ping(_) => continue,
                other => panic!("expected a close frame within {within:?}, got {other:?}"),
            }
        }
    }

    /// Read until a close frame, returning the text frames seen before it and
    /// the close code. EOF without close / timeout panics.
    pub fn drain_until_close(&mut self, within: Duration) -> (Vec<String>, u16) {
        let deadline = Instant::now() + within;
        let mut texts = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                WsEvent::Text(t) => texts.push(t),
                WsEvent::Close(Some(c), _) => return (texts, c),
                WsEvent::Close(None, _) => {
                    panic!("close frame without a status code (after {texts:?})")
                }
                WsEvent::Ping(_) | WsEvent::Pong(_) => continue,
                other => panic!(
                    "expected a close frame within {within:?}, got {other:?} (after {texts:?})"
                ),
            }
        }
    }

    /// Expect the connection to end (close frame or EOF) within `within`;
    /// returns the close code if there was a close frame.
    pub fn expect_closed_or_eof(&mut self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                WsEvent::Close(c, _) => return c,
                WsEvent::Eof(_) => return None,
                WsEvent::Ping(_) | WsEvent::Pong(_) => continue,
                other => panic!("expected the connection to end within {within:?}, got {other:?}"),
            }
        }
    }

    /// Send a hello and return the reply (no status check).
    pub fn hello_raw(&mut self, hello: &Value) -> Value {
        self.send_json(hello);
        let r = self.recv_json_with_deadline(DEADLINE);
        assert_eq!(
            r["messageType"], "hello",
            "hello reply has messageType hello: {r}"
        );
        if let Some(u) = r["uaid"].as_str() {
            self.uaid = Some(u.to_string());
        }
        r
    }

    /// Hello as Firefox sends it (`broadcasts: {}`), with an optional UAID,
    /// optional channelIDs (None: field omitted) and `use_webpush` (false:
    /// field omitted, i.e. SimplePush mode). Asserts status 200 and a UAID.
    pub fn hello(
        &mut self,
        uaid: Option<&str>,
        channel_ids: Option<&[String]>,
        use_webpush: bool,
    ) -> Value {
        let mut h = json!({"messageType": "hello", "broadcasts": {}});
        if let Some(u) = uaid {
            h["uaid"] = json!(u);
        }
        if let Some(c) = channel_ids {
            h["channelIDs"] = json!(c);
        }
        if use_webpush {
            h["use_webpush"] = json!(true);
        }
        let r = self.hello_raw(&h);
        assert_eq!(r["status"], 200, "hello status 200: {r}");
        let u = r["uaid"]
            .as_str()
            .unwrap_or_else(|| panic!("hello reply has a string uaid: {r}"));
        assert!(is_uaid(u), "uaid is 32 lower-case hex: {u:?}");
        r
    }

    pub fn uaid(&self) -> String {
        self.uaid.clone().expect("hello done")
    }

    /// Send register (optionally with a VAPID key) and return the reply.
    pub fn register_reply(&mut self, channel_id: &str, key: Option<&str>) -> Value {
        let mut m = json!({"messageType": "register", "channelID": channel_id});
        if let Some(k) = key {
            m["key"] = json!(k);
        }
        self.send_json(&m);
        let r = self.recv_json_with_deadline(DEADLINE);
        assert_eq!(r["messageType"], "register", "register reply: {r}");
        r
    }

    /// Register a channel; asserts status 200 and returns the pushEndpoint.
    pub fn register(&mut self, channel_id: &str) -> String {
        let r = self.register_reply(channel_id, None);
        assert_eq!(r["status"], 200, "register status 200: {r}");
        assert!(
            r["channelID"]
                .as_str()
                .map(|c| c.eq_ignore_ascii_case(channel_id))
                .unwrap_or(false),
            "register reply echoes the channelID: {r}"
        );
        r["pushEndpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("register reply has pushEndpoint: {r}"))
            .to_string()
    }

    /// Register a fresh random channel; returns (channelID, endpoint).
    pub fn register_new(&mut self) -> (String, String) {
        let c = new_channel_id();
        let e = self.register(&c);
        (c, e)
    }

    pub fn unregister(&mut self, channel_id: &str) -> Value {
        self.send_json(&json!({"messageType": "unregister", "channelID": channel_id}));
        let r = self.recv_json_with_deadline(DEADLINE);
        assert_eq!(r["messageType"], "unregister", "unregister reply: {r}");
        r
    }

    /// Ack one update (`version` is a JSON string for Web Push ids, a number for SimplePush).
    pub fn ack(&mut self, channel_id: &str, version: Value) {
        self.send_json(&json!({"messageType": "ack", "updates": [
            {"channelID": channel_id, "version": version, "code": 100}
        ]}));
    }

    /// Ack a Web Push notification as Firefox does.
    pub fn ack_notification(&mut self, n: &Value) {
        let c = n["channelID"].as_str().expect("channelID").to_string();
        self.ack(&c, n["version"].clone());
    }

    /// Next message, which must be a `notification`.
    pub fn recv_notification(&mut self, within: Duration) -> Value {
        self.recv_type("notification", within)
    }

    /// Read JSON messages until none arrives for `quiet` (bounded negative
    /// window); returns them all (possibly none).
    pub fn collect_until_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out = vec![];
        while let Some(v) = self.try_recv_json(quiet) {
            out.push(v);
            assert!(out.len() < 10_000, "runaway stream of messages");
        }
        out
    }

    /// Close our side politely (best effort).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match self.next_event(Duration::from_millis(100)) {
                WsEvent::Close(..) | WsEvent::Eof(_) => break,
                _ => {}
            }
        }
    }

    /// Drop the TCP connection abruptly (no close frame).
    pub fn drop_tcp(mut self) {
        let _ = self.ws.get_mut().shutdown(Shutdown::Both);
    }
}

/// One client (masked) WebSocket frame as bytes.
pub fn masked_frame(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | (opcode & 0x0f)];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = random_bytes(4);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn read_http_head(stream: &mut TcpStream, within: Duration) -> Result<(String, Vec<u8>), String> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let rest = buf[pos + 4..].to_vec();
            return Ok((head, rest));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "no complete HTTP response head within {within:?}: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        stream.set_read_timeout(Some(deadline - now)).ok();
        match stream.read(&mut tmp) {
            Ok(0) => {
                return Err(format!(
                    "connection closed during handshake after {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(format!("read handshake: {e}")),
        }
        if buf.len() > 64 * 1024 {
            return Err("handshake response head too large".into());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// HTTP (the AS)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
    /// Status must be `status` and the body the spec's JSON error:
    /// `{"code": status, "errno": <number>, "error": "...", "message": "..."}`.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "expected HTTP {status}, got {} body {:?}",
            self.status,
            self.text()
        );
        let j = self.json();
        assert_eq!(j["code"], status, "error body code == HTTP status: {j}");
        assert!(j["errno"].is_number(), "error body errno is a number: {j}");
        assert!(j["error"].is_string(), "error body error is a string: {j}");
        assert!(
            j["message"].is_string(),
            "error body message is a string: {j}"
        );
    }
    /// Panic with context unless the status is `status`.
    pub fn assert_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status,
            status,
            "{what}: expected HTTP {status}, got {} body {:?}",
            self.status,
            self.text()
        );
        self
    }
}

/// One HTTP request over ureq 2 (fresh agent, no redirects). Returns the
/// response for any status; panics on transport errors.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: transport error: {e}"),
    };
    let status = resp.status();
    let mut hs = vec![];
    for n in resp.headers_names() {
        for v in resp.all(&n) {
            hs.push((n.clone(), v.to_string()));
        }
    }
    let mut body = vec![];
    resp.into_reader()
        .take(10 * 1024 * 1024)
        .read_to_end(&mut body)
        .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
    HttpResponse {
        status,
        headers: hs,
        body,
    }
}

/// SimplePush `PUT <endpoint>` with a form body (e.g. `version=5`, `` or `body=hi&ttl=60`).
pub fn put_form(endpoint: &str, body: &str) -> HttpResponse {
    http(
        "PUT",
        endpoint,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(body.as_bytes()),
    )
}

/// SimplePush `PUT <endpoint>` with `version=N`.
pub fn put_version(endpoint: &str, version: u64) -> HttpResponse {
    put_form(endpoint, &format!("version={version}"))
}

/// Web Push `POST <endpoint>` with TTL and an `aes128gcm` body.
pub fn push_aes128gcm(endpoint: &str, body: &[u8], ttl: u64) -> HttpResponse {
    let ttl = ttl.to_string();
    http(
        "POST",
        endpoint,
        &[("TTL", &ttl), ("Content-Encoding", "aes128gcm")],
        Some(body),
    )
}

/// Web Push `POST <endpoint>` with TTL and no body.
pub fn push_empty(endpoint: &str, ttl: u64) -> HttpResponse {
    let ttl = ttl.to_string();
    http("POST", endpoint, &[("TTL", &ttl)], None)
}

/// Web Push `POST` with arbitrary headers and body.
pub fn push_with(endpoint: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
    http("POST", endpoint, headers, body)
}

/// Result of a hand-written HTTP exchange.
#[derive(Debug)]
pub struct RawHttp {
    /// Status code, None when no response came.
    pub status: Option<u16>,
    pub head: String,
    pub body: Vec<u8>,
    /// The server closed the connection (EOF or reset) after the response,
    /// within the window given.
    pub closed: bool,
    /// How the read ended (for messages).
    pub note: String,
}

/// Write raw bytes to `addr`, read one response; then watch `close_window`
/// for the server closing the connection.
pub fn raw_http(addr: &str, request: &[u8], within: Duration, close_window: Duration) -> RawHttp {
    let sa = addr.to_socket_addrs().unwrap().next().unwrap();
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5)).expect("connect");
    s.set_nodelay(true).ok();
    let mut note = String::new();
    if let Err(e) = s.write_all(request) {
        note = format!("write error: {e}; ");
    }
    let deadline = Instant::now() + within;
    let mut buf = vec![];
    let mut tmp = [0u8; 8192];
    let mut eof = false;
    let mut head_end = None;
    let mut want: Option<usize> = None;
    loop {
        if head_end.is_none() {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                head_end = Some(p + 4);
                let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                let cl = head.lines().find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                });
                want = Some(p + 4 + cl.unwrap_or(0));
                if cl.is_none() {
                    want = None; // read until close
                }
            }
        }
        if let (Some(_), Some(w)) = (head_end, want) {
            if buf.len() >= w {
                break;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            note.push_str("response read timed out; ");
            break;
        }
        s.set_read_timeout(Some(deadline - now)).ok();
        match s.read(&mut tmp) {
            Ok(0) => {
                eof = true;
                note.push_str("EOF; ");
                break;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                eof = true;
                note.push_str(&format!("read error {e}; "));
                break;
            }
        }
    }
    let (head, body) = match head_end {
        Some(h) => (
            String::from_utf8_lossy(&buf[..h - 4]).to_string(),
            buf[h..].to_vec(),
        ),
        None => (String::from_utf8_lossy(&buf).to_string(), vec![]),
    };
    let status = if head_end.is_some() {
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok())
    } else {
        None
    };
    let mut closed = eof;
    if !closed {
        let deadline = Instant::now() + close_window;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s.set_read_timeout(Some(deadline - now)).ok();
            match s.read(&mut tmp) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => note.push_str(&format!("{n} extra bytes after response; ")),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
    }
    RawHttp {
        status,
        head,
        body,
        closed,
        note,
    }
}

// ---------------------------------------------------------------------------
// small assertions shared by tests
// ---------------------------------------------------------------------------

impl RawHttp {
    /// Status must be `status` and the body the spec's JSON error.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(
            self.status,
            Some(status),
            "expected HTTP {status}: {self:?}"
        );
        let j: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "error body is JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        assert_eq!(j["code"], status, "error body code == HTTP status: {j}");
        assert!(j["errno"].is_number(), "error body errno is a number: {j}");
    }
}

/// The `data` of a Web Push notification, decoded.
pub fn notification_data(n: &Value) -> Vec<u8> {
    b64url_decode(
        n["data"]
            .as_str()
            .unwrap_or_else(|| panic!("notification has string data: {n}")),
    )
}

/// Flatten SimplePush-form messages (`notification` with `updates`) into
/// (channelID lower-cased, version) pairs. Panics on any other message.
pub fn sp_updates(msgs: &[Value]) -> Vec<(String, Value)> {
    let mut out = vec![];
    for m in msgs {
        assert_eq!(
            m["messageType"], "notification",
            "SimplePush notification: {m}"
        );
        let ups = m["updates"]
            .as_array()
            .unwrap_or_else(|| panic!("notification has an updates array: {m}"));
        for u in ups {
            let c = u["channelID"]
                .as_str()
                .unwrap_or_else(|| panic!("update has channelID: {u}"));
            out.push((c.to_ascii_lowercase(), u["version"].clone()));
        }
    }
    out
}

/// True when the JSON value is absent or null.
pub fn absent(v: &Value) -> bool {
    v.is_null()
}

/// Channel IDs compare case-insensitively (stored lower-case, any case accepted).
pub fn same_channel(a: &Value, b: &str) -> bool {
    a.as_str()
        .map(|a| a.eq_ignore_ascii_case(b))
        .unwrap_or(false)
}

/// Wait until `f` returns true (polling every 20 ms) or panic with `what`.
pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// self-tests of the harness (no herald needed)
// ---------------------------------------------------------------------------

#[cfg(test)]
mod selftest {
    use super::*;
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::CloseFrame;

    #[test]
    fn ws_client_against_tungstenite_server_without_subprotocol_echo() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut ws = tungstenite::accept(s).unwrap();
            // echo one text, answer a raw text frame, then close 1008
            let m = ws.read().unwrap();
            ws.send(m).unwrap();
            let m = ws.read().unwrap();
            assert_eq!(m, Message::Text("hi".into()));
            ws.send(Message::Text("PONG".into())).unwrap();
            ws.close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "bye".into(),
            }))
            .unwrap();
            while ws.read().is_ok() {}
        });
        let mut c = WsClient::connect(&addr);
        assert_eq!(c.subprotocol, None);
        c.send_json(&json!({"a": 1}));
        assert_eq!(c.recv_json_with_deadline(DEADLINE), json!({"a": 1}));
        c.send_raw_frame(0x1, b"hi", true).unwrap();
        assert_eq!(c.next_event(DEADLINE), WsEvent::Text("PONG".into()));
        assert_eq!(c.expect_close_with_deadline(DEADLINE), 1008);
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn silence_and_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut ws = tungstenite::accept(s).unwrap();
            let _ = ws.read();
        });
        let mut c = WsClient::connect(&addr);
        let t0 = Instant::now();
        c.expect_silence(Duration::from_millis(200));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(c.next_event(Duration::from_millis(50)), WsEvent::Timeout);
        c.drop_tcp();
        t.join().unwrap();
    }

    #[test]
    fn raw_http_reads_response_and_sees_close() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (_h, _rest) = read_http_head(&mut s, DEADLINE).unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 39\r\n\r\n{\"code\":400,\"errno\":1,\"error\":\"x\",\"m\":1}").unwrap();
        });
        let r = raw_http(
            &addr,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            DEADLINE,
            Duration::from_secs(2),
        );
        t.join().unwrap();
        assert_eq!(r.status, Some(400), "{r:?}");
        assert!(r.closed);
        r.assert_json_error(400);
    }

    #[test]
    fn http_returns_error_statuses() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (_h, _rest) = read_http_head(&mut s, DEADLINE).unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 52\r\nConnection: close\r\n\r\n{\"code\":404,\"errno\":102,\"error\":\"Not Found\",\"message\":\"\"}").unwrap();
        });
        let r = http("POST", &format!("http://{addr}/x"), &[("TTL", "1")], None);
        t.join().unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }

    #[test]
    fn prometheus_parsing() {
        let s = parse_prometheus(
            "# HELP x y\nherald_notifications_in_total 3\nherald_x{shard=\"0\",a=\"b c\"} 2.5\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], ("herald_notifications_in_total".into(), 3.0));
        assert_eq!(metric_name(&s[1].0), "herald_x");
        assert_eq!(s[1].1, 2.5);
    }

    #[test]
    fn helpers() {
        let c = new_channel_id();
        assert_eq!(c.len(), 36);
        assert_eq!(b64url_decode(VAPID_KEY_G).len(), 65);
        assert_eq!(b64url_decode(&format!("{VAPID_KEY_G}=")).len(), 65);
        assert!(is_uaid(&random_hex(16)));
    }
}
