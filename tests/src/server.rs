//! A `herald serve` process under test: its options, config file, start,
//! restart, crash, logs, and shortcuts to its UA and metrics endpoints.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::as_client::http;
use crate::metrics::{metric_name, parse_prometheus};
use crate::process::{herald_bin, send_signal, wait_child, wait_health, wait_health_on, wait_tcp};
use crate::tls::{client_config, ServerCert, TestCa};
use crate::ua::WsClient;
use crate::util::{free_port, wait_until, TempDir};
use crate::{DEADLINE, READY_DEADLINE};

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
    /// The process's file size limit (`RLIMIT_FSIZE`), if any: see
    /// [`ServerOptions::file_size_max`].
    pub file_size_max: Option<u64>,
    /// Built-in TLS: the certificate served, and the CA that signed it
    /// (readiness is checked over `https://` trusting it).
    pub tls: Option<(ServerCert, PathBuf)>,
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
            file_size_max: None,
            tls: None,
        }
    }
}

impl ServerOptions {
    /// Serve `wss://` and `https://` with `cert` (`--tls-cert`, `--tls-key`).
    pub fn tls(mut self, cert: &ServerCert, ca: &TestCa) -> Self {
        self.tls = Some((cert.clone(), ca.ca_pem()));
        self
    }

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
    /// Runs the server with no file allowed past `bytes` (`RLIMIT_FSIZE`,
    /// `SIGXFSZ` ignored): a write past it fails with `EFBIG`, as on a full
    /// disk, and the WAL fails for good. The limit binds root too and needs
    /// no privilege, unlike a small mount. It covers the log files the
    /// harness hands the server, so keep it well above their size.
    pub fn file_size_max(mut self, bytes: u64) -> Self {
        self.file_size_max = Some(bytes);
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
    admin_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Server {
    pub fn start_default() -> Server {
        Server::start(ServerOptions::default())
    }

    pub fn start(opts: ServerOptions) -> Server {
        // Fail now, with a clear message, when the binary was not built.
        herald_bin();
        let mut server = Server {
            opts,
            dir: TempDir::new("srv"),
            ua_port: 0,
            as_port: 0,
            admin_port: 0,
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
            server.admin_port = free_port();
            while [server.ua_port, server.as_port].contains(&server.admin_port) {
                server.admin_port = free_port();
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
    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }
    /// `http://127.0.0.1:<admin port>`: health, `/metrics`, `/about`, no token.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }
    /// `ws://127.0.0.1:<ua port>/`
    pub fn ua_url(&self) -> String {
        format!("ws://{}/", self.ua_addr())
    }
    /// `http://127.0.0.1:<as port>` (no trailing slash; `https://` with
    /// TLS): the default endpoint URL.
    pub fn as_url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.as_addr())
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn write_config(&self) {
        let mut s = String::new();
        s.push_str(&format!("ua_listen = \"{}\"\n", self.ua_addr()));
        s.push_str(&format!("as_listen = \"{}\"\n", self.as_addr()));
        s.push_str(&format!("admin_listen = \"{}\"\n", self.admin_addr()));
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
            .arg("--admin-listen")
            .arg(self.admin_addr())
            .arg("--shards")
            .arg(self.opts.shards.to_string())
            .args(&self.opts.extra_args)
            .args(self.opts.tls.iter().flat_map(|(cert, _)| {
                [
                    "--tls-cert".as_ref(),
                    cert.cert.as_os_str(),
                    "--tls-key".as_ref(),
                    cert.key.as_os_str(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::from(o))
            .stderr(Stdio::from(e));
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        if let Some(bytes) = self.opts.file_size_max {
            limit_file_size(&mut cmd, bytes);
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
        match &self.opts.tls {
            None => wait_health(&as_addr, child, READY_DEADLINE)?,
            Some((_, ca_pem)) => {
                let url = format!("https://{as_addr}/health");
                let agent = ureq::AgentBuilder::new().tls_config(client_config(ca_pem));
                wait_health_on(&url, agent, child, READY_DEADLINE)?
            }
        }
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

    /// A UA socket (subprotocol `push-notification`), handshake done, no
    /// hello yet; over TLS when the server serves it.
    pub fn ua(&self) -> WsClient {
        match &self.opts.tls {
            None => WsClient::connect(&self.ua_addr()),
            Some((_, ca_pem)) => WsClient::connect_tls(&self.ua_addr(), client_config(ca_pem)),
        }
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

    /// `GET /metrics` on the admin listener, parsed into (name-with-labels,
    /// value) samples.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let r = http("GET", &format!("{}/metrics", self.admin_url()), &[], None);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        parse_prometheus(&r.text())
    }

    /// Sum over its labels of the metric named exactly `name`.
    pub fn metric_named(&self, name: &str) -> f64 {
        self.metrics()
            .iter()
            .filter(|(sample, _)| sample.split('{').next() == Some(name))
            .map(|(_, value)| *value)
            .sum()
    }

    /// Sum of all metric samples whose name contains `needle`.
    pub fn metric_sum(&self, needle: &str) -> f64 {
        self.metrics()
            .iter()
            .filter(|(n, _)| metric_name(n).contains(needle))
            .map(|(_, v)| *v)
            .sum()
    }

    /// For tests whose point is the socket hand-off: panics unless this
    /// process reports at least one UA socket handed to its owning shard
    /// (`hand_offs`, published about once a second) within [`DEADLINE`].
    #[track_caller]
    pub fn assert_hand_offs(&self) {
        wait_until(
            DEADLINE,
            "a UA socket handed off between shards (hand_offs above zero)",
            || self.metric_sum("hand_offs") > 0.0,
        );
    }
}

/// `cmd` runs with `RLIMIT_FSIZE` at `bytes` and `SIGXFSZ` ignored (an
/// ignored signal stays ignored across `exec`), so that a write past the
/// limit fails with `EFBIG` instead of killing the process.
fn limit_file_size(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls (signal,
    // setrlimit) run, on values owned by the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
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
