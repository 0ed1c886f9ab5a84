//! `herald-devices`: simulated phones for the UDP wakeup figures (SPEC §5).
//!
//! Two scenarios against a running `herald serve` on loopback, with the same
//! stream of SimplePush notifications:
//! - `always`: every device keeps its WebSocket open (status 200), as a
//!   phone without wakeup must, paying a keep-alive every `--keepalive-s`;
//! - `sleep`: every device says hello with `wakeup_hostport`/`mobilenetwork`
//!   (status 201), is closed with 4774 when idle, then holds only a UDP
//!   socket; any datagram makes it reconnect with its UAID, take its
//!   notifications, ack, and wait to be put to sleep again.
//!
//! Output: wake-to-delivery latency percentiles, datagrams received, a CSV of
//! connected sockets over time for both scenarios, and keep-alives avoided.
//!
//! Shape: one epoll thread owns every device and every established socket
//! (non-blocking); a small pool of worker threads does the blocking part of a
//! (re)connect — TCP connect, WebSocket handshake, hello, register — and hands
//! the socket back through a queue + eventfd. Pushers are separate threads
//! with keep-alive HTTP connections. Runs are bounded: the stream lasts
//! `--duration-s`, the drain at most `--drain-s`.
//!
//! File descriptors: `sleep` holds one UDP socket per device plus the TCP
//! sockets of devices awake at the moment (2 × N at set-up). The process cap
//! here is 20,000, so keep `--devices` ≤ 9,000 per process; for more, run
//! several processes (each with its own `--devices`).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use herald_bench::client::threads::{block_on, endpoint_address, Blocking, Pusher, Ua};
use herald_bench::client::{endpoint_path, Push};
use rand::Rng;
use serde_json::{json, Value};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "herald-devices",
    about = "Simulated phones for Herald's UDP wakeup"
)]
struct Args {
    /// Herald's UA WebSocket address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    ua: SocketAddr,
    /// Simulated phones.
    #[arg(long, default_value_t = 2000)]
    devices: usize,
    /// The scenario(s) to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Notifications per second during the stream.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Length of the notification stream, seconds.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// After the stream, wait at most this long for outstanding deliveries.
    #[arg(long, default_value_t = 15)]
    drain_s: u64,
    /// A connected phone's keep-alive interval, for counting keep-alives.
    #[arg(long, default_value_t = 60)]
    keepalive_s: u64,
    /// Connect/handshake worker threads.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Pusher threads (each a keep-alive HTTP connection).
    #[arg(long, default_value_t = 4)]
    pushers: usize,
    /// MCC and MNC the sleeping devices announce (must have a route in herald).
    #[arg(long, default_value = "214-07")]
    network: String,
    /// CSV of connected sockets over time.
    #[arg(long, default_value = "bench/wakeup_connected.csv")]
    csv: String,
    /// JSON summary.
    #[arg(long, default_value = "bench/wakeup_summary.json")]
    summary: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Mode {
    /// Every device keeps its WebSocket open.
    Always,
    /// Every device sleeps with a UDP wakeup and reconnects when woken.
    Sleep,
    /// `always`, then `sleep`, and the keep-alives sleeping avoided.
    Both,
    /// Sleeping devices that never answer: every device is pushed once, as
    /// fast as the pushers go, to measure the datagram rate; retries are not
    /// counted.
    Burst,
}

impl Mode {
    /// Its name in the summary and the CSV.
    fn name(self) -> &'static str {
        match self {
            Mode::Always => "always",
            Mode::Sleep => "sleep",
            Mode::Both => "both",
            Mode::Burst => "burst",
        }
    }
}

/// Connected-socket samples are taken this often.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Gives up on a connect, write or read (while blocking) after 10 s.
const BLOCKING: Blocking = Blocking {
    timeout: Duration::from_secs(10),
};

fn main() {
    let args = Args::parse();
    raise_fd_limit();
    let modes = match args.mode {
        Mode::Both => vec![Mode::Always, Mode::Sleep],
        one => vec![one],
    };
    let mut results = vec![];
    for mode in modes {
        eprintln!(
            "== scenario {}: {} devices, {} notifications/s for {} s",
            mode.name(),
            args.devices,
            args.rate,
            args.duration_s
        );
        let result = Scenario::run(&args, mode != Mode::Always, mode == Mode::Burst);
        eprintln!(
            "{}",
            serde_json::to_string_pretty(&result.summary).unwrap_or_default()
        );
        results.push((mode.name(), result));
    }
    write_csv(&args.csv, &results);
    let summary: serde_json::Map<String, Value> = results
        .iter()
        .map(|(mode, result)| (mode.to_string(), result.summary.clone()))
        .collect();
    let mut summary = Value::Object(summary);
    if let (Some(always), Some(sleep)) = (
        summary.get("always").cloned(),
        summary.get("sleep").cloned(),
    ) {
        let socket_s = |v: &Value| v["connected_socket_seconds"].as_f64().unwrap_or(0.0);
        let keepalive_s = args.keepalive_s.max(1) as f64;
        let avoided = (socket_s(&always) - socket_s(&sleep)) / keepalive_s;
        let seconds = args.duration_s as f64;
        summary["keepalives_avoided_during_stream"] = json!(avoided.round());
        summary["keepalives_avoided_per_hour"] = json!((avoided * 3600.0 / seconds).round());
    }
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    if let Err(error) = std::fs::write(&args.summary, &text) {
        eprintln!("cannot write {}: {error}", args.summary);
    }
    println!("{text}");
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn write_csv(path: &str, results: &[(&str, ScenarioResult)]) {
    let rows = results
        .iter()
        .map(|(_, r)| r.samples.len())
        .max()
        .unwrap_or(0);
    let mut out = String::from("t_s");
    for (mode, _) in results {
        out.push_str(&format!(",{mode}_connected"));
    }
    out.push('\n');
    for row in 0..rows {
        out.push_str(&format!("{:.1}", row as f64 * SAMPLE_EVERY.as_secs_f64()));
        for (_, result) in results {
            match result.samples.get(row) {
                Some(value) => out.push_str(&format!(",{value}")),
                None => out.push(','),
            }
        }
        out.push('\n');
    }
    if let Err(error) = std::fs::write(path, out) {
        eprintln!("cannot write {path}: {error}");
    }
}

// ---------------------------------------------------------------------------

struct Job {
    device: usize,
    uaid: Option<String>,
    /// UDP address to announce (sleep scenario).
    wakeup: Option<SocketAddr>,
    register: bool,
}

struct Done {
    device: usize,
    result: Result<Connected, String>,
}

struct Connected {
    ws: Ua,
    uaid: String,
    endpoint: Option<String>,
    channel: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Connecting,
    Connected,
    Asleep,
}

struct Device {
    state: State,
    uaid: String,
    channel: String,
    udp: Option<UdpSocket>,
    ws: Option<Ua>,
    woke_at: Option<Instant>,
}

/// What pushers and the loop share: notifications sent and not yet seen.
#[derive(Default)]
struct Book {
    /// device → (version, sent at) not yet delivered.
    outstanding: HashMap<usize, Vec<(u64, Instant)>>,
    /// Versions are taken under the same lock as they are recorded, so a
    /// delivered version always finds every older one already booked.
    next_version: u64,
}

struct ScenarioResult {
    samples: Vec<usize>,
    summary: Value,
}

struct Scenario<'a> {
    args: &'a Args,
    sleep: bool,
    burst: bool,
    /// burst: first datagram per device, and the first/last such arrival.
    first_datagram: Vec<bool>,
    burst_first: Option<Instant>,
    burst_last: Option<Instant>,
    burst_woken: u64,
    epoll: i32,
    eventfd: i32,
    devices: Vec<Device>,
    jobs: mpsc::Sender<Job>,
    done: Arc<Mutex<Vec<Done>>>,
    book: Arc<Mutex<Book>>,
    connected: usize,
    /// push → delivery, µs.
    delivery: Histogram<u64>,
    /// datagram → delivery (sleep), µs.
    wake_to_delivery: Histogram<u64>,
    /// datagram → hello answered (sleep), µs.
    reconnect: Histogram<u64>,
    datagrams: u64,
    wakes: u64,
    delivered: u64,
    sleeps: u64,
    errors: u64,
    first_error: Option<String>,
}

const TOKEN_EVENTFD: u64 = u64::MAX;

fn token(device: usize, tcp: bool) -> u64 {
    (device as u64) << 1 | u64::from(tcp)
}

impl<'a> Scenario<'a> {
    fn run(args: &'a Args, sleep: bool, burst: bool) -> ScenarioResult {
        // SAFETY: plain syscalls creating new descriptors.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let eventfd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(epoll >= 0 && eventfd >= 0, "epoll/eventfd");
        let (jobs, job_receiver) = mpsc::channel::<Job>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let done = Arc::new(Mutex::new(Vec::new()));
        let stop_workers = Arc::new(AtomicBool::new(false));
        let mut workers = vec![];
        for _ in 0..args.workers.max(1) {
            let job_receiver = job_receiver.clone();
            let done = done.clone();
            let ua = args.ua;
            let network = args.network.clone();
            let stop = stop_workers.clone();
            workers.push(
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || worker(ua, &network, job_receiver, done, eventfd, stop))
                    .expect("worker thread"),
            );
        }
        let mut scenario = Scenario {
            args,
            sleep,
            burst,
            first_datagram: vec![false; args.devices],
            burst_first: None,
            burst_last: None,
            burst_woken: 0,
            epoll,
            eventfd,
            devices: Vec::with_capacity(args.devices),
            jobs,
            done,
            book: Arc::new(Mutex::new(Book::default())),
            connected: 0,
            delivery: Histogram::new(3).expect("histogram"),
            wake_to_delivery: Histogram::new(3).expect("histogram"),
            reconnect: Histogram::new(3).expect("histogram"),
            datagrams: 0,
            wakes: 0,
            delivered: 0,
            sleeps: 0,
            errors: 0,
            first_error: None,
        };
        scenario.add(eventfd, TOKEN_EVENTFD);
        let result = scenario.execute();
        stop_workers.store(true, Ordering::SeqCst);
        drop(scenario.jobs);
        for worker in workers {
            let _ = worker.join();
        }
        // SAFETY: closing descriptors this scenario created.
        unsafe {
            libc::close(epoll);
            libc::close(eventfd);
        }
        result
    }

    fn execute(&mut self) -> ScenarioResult {
        let setup_started = Instant::now();
        for device in 0..self.args.devices {
            let udp = if self.sleep {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("udp socket (fd limit?)");
                socket.set_nonblocking(true).expect("nonblocking");
                Some(socket)
            } else {
                None
            };
            let wakeup = udp.as_ref().and_then(|s| s.local_addr().ok());
            if let Some(socket) = &udp {
                self.add(socket.as_raw_fd(), token(device, false));
            }
            self.devices.push(Device {
                state: State::Connecting,
                uaid: String::new(),
                channel: String::new(),
                udp,
                ws: None,
                woke_at: None,
            });
            let _ = self.jobs.send(Job {
                device,
                uaid: None,
                wakeup,
                register: true,
            });
        }
        let mut endpoints: Vec<(usize, String)> = vec![];
        // Set-up: everyone registered (and, for sleep, put to sleep).
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut samples = vec![];
        let mut next_sample = Instant::now();
        loop {
            self.turn(&mut endpoints, &mut samples, &mut next_sample);
            let registered = endpoints.len() + self.errors as usize;
            let settled = if self.sleep {
                self.connected == 0
            } else {
                true
            };
            if registered >= self.args.devices && settled {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "set-up did not finish: {registered} registered, {} connected",
                    self.connected
                );
                break;
            }
        }
        let setup_s = setup_started.elapsed().as_secs_f64();
        eprintln!(
            "set-up done in {setup_s:.1} s ({} errors); stream starts",
            self.errors
        );
        samples.clear();
        next_sample = Instant::now();
        let (errors_before, delivered_before) = (self.errors, self.delivered);
        // The stream.
        let stop = Arc::new(AtomicBool::new(false));
        let pushed = Arc::new(AtomicU64::new(0));
        let push_errors = Arc::new(AtomicU64::new(0));
        let endpoints = Arc::new(endpoints);
        let mut pushers = vec![];
        let per_pusher = f64::from(self.args.rate) / self.args.pushers.max(1) as f64;
        let pusher_count = self.args.pushers.max(1);
        let burst = self.burst;
        for index in 0..pusher_count {
            let endpoints = endpoints.clone();
            let book = self.book.clone();
            let stop = stop.clone();
            let pushed = pushed.clone();
            let push_errors = push_errors.clone();
            let duration = Duration::from_secs(self.args.duration_s);
            pushers.push(std::thread::spawn(move || {
                pusher(
                    burst.then_some((index, pusher_count)),
                    per_pusher,
                    duration,
                    &endpoints,
                    &book,
                    &stop,
                    &pushed,
                    &push_errors,
                )
            }));
        }
        let stream_started = Instant::now();
        let stream_end = stream_started + Duration::from_secs(self.args.duration_s);
        let drain_end = stream_end + Duration::from_secs(self.args.drain_s);
        loop {
            self.turn(&mut Vec::new(), &mut samples, &mut next_sample);
            let now = Instant::now();
            let burst_over = self.burst
                && pushers.iter().all(|p| p.is_finished())
                && self.burst_woken >= pushed.load(Ordering::SeqCst);
            if burst_over {
                break;
            }
            if now >= stream_end {
                let outstanding = self
                    .book
                    .lock()
                    .map(|b| b.outstanding.values().map(Vec::len).sum::<usize>())
                    .unwrap_or(0);
                let pushers_done = pushers.iter().all(|p| p.is_finished());
                let burst_done = self.burst_woken >= pushed.load(Ordering::SeqCst);
                if (pushers_done && outstanding == 0 && (!self.burst || burst_done))
                    || now >= drain_end
                {
                    break;
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        for pusher in pushers {
            let _ = pusher.join();
        }
        let elapsed = stream_started.elapsed().as_secs_f64();
        let outstanding: usize = self
            .book
            .lock()
            .map(|b| b.outstanding.values().map(Vec::len).sum())
            .unwrap_or(0);
        let socket_seconds: f64 =
            samples.iter().map(|&c| c as f64).sum::<f64>() * SAMPLE_EVERY.as_secs_f64();
        let stream_samples = (self.args.duration_s as f64 / SAMPLE_EVERY.as_secs_f64()) as usize;
        let stream_socket_seconds: f64 = samples
            .iter()
            .take(stream_samples)
            .map(|&c| c as f64)
            .sum::<f64>()
            * SAMPLE_EVERY.as_secs_f64();
        let ms = |h: &Histogram<u64>, q: f64| {
            (h.value_at_quantile(q) as f64 / 1000.0 * 10.0).round() / 10.0
        };
        let summary = json!({
            "devices": self.args.devices,
            "setup_s": (setup_s * 10.0).round() / 10.0,
            "notifications_pushed": pushed.load(Ordering::SeqCst),
            "push_errors": push_errors.load(Ordering::SeqCst),
            "notifications_delivered": self.delivered - delivered_before,
            "not_delivered_at_end": outstanding,
            "stream_and_drain_s": (elapsed * 10.0).round() / 10.0,
            "push_to_delivery_ms": {"p50": ms(&self.delivery, 0.5), "p99": ms(&self.delivery, 0.99), "max": ms(&self.delivery, 1.0), "count": self.delivery.len()},
            "wake_to_delivery_ms": {"p50": ms(&self.wake_to_delivery, 0.5), "p99": ms(&self.wake_to_delivery, 0.99), "max": ms(&self.wake_to_delivery, 1.0), "count": self.wake_to_delivery.len()},
            "datagram_to_hello_ms": {"p50": ms(&self.reconnect, 0.5), "p99": ms(&self.reconnect, 0.99)},
            "datagrams_received": self.datagrams,
            "datagrams_per_s_mean": ((self.datagrams as f64 / elapsed) * 10.0).round() / 10.0,
            "wakeups_acted_on": self.wakes,
            "put_to_sleep_4774": self.sleeps,
            "connected_mean": if samples.is_empty() { 0.0 } else { (socket_seconds / (samples.len() as f64 * SAMPLE_EVERY.as_secs_f64()) * 10.0).round() / 10.0 },
            "connected_max": samples.iter().copied().max().unwrap_or(0),
            "connected_socket_seconds": stream_socket_seconds.round(),
            "keepalives_needed_during_stream": (stream_socket_seconds / self.args.keepalive_s.max(1) as f64).round(),
            "burst_devices_woken": self.burst_woken,
            "burst_datagrams_per_s": match (self.burst_first, self.burst_last) {
                (Some(first), Some(last)) if last > first => ((self.burst_woken.saturating_sub(1)) as f64 / last.duration_since(first).as_secs_f64()).round(),
                _ => 0.0,
            },
            "errors": self.errors - errors_before,
            "first_error": self.first_error,
        });
        ScenarioResult { samples, summary }
    }

    /// One epoll round: sockets, finished connects, a sample when due.
    fn turn(
        &mut self,
        endpoints: &mut Vec<(usize, String)>,
        samples: &mut Vec<usize>,
        next_sample: &mut Instant,
    ) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        // SAFETY: events is a valid buffer of 256 entries.
        let count =
            unsafe { libc::epoll_wait(self.epoll, events.as_mut_ptr(), events.len() as i32, 10) };
        for event in events.iter().take(count.max(0) as usize) {
            let key = event.u64;
            if key == TOKEN_EVENTFD {
                let mut value = 0u64;
                // SAFETY: reading 8 bytes into a u64 from our eventfd.
                unsafe { libc::read(self.eventfd, &mut value as *mut u64 as *mut libc::c_void, 8) };
                continue;
            }
            let device = (key >> 1) as usize;
            if key & 1 == 1 {
                self.on_ws(device);
            } else {
                self.on_datagram(device);
            }
        }
        let finished: Vec<Done> = self
            .done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        for done in finished {
            self.on_done(done, endpoints);
        }
        let now = Instant::now();
        while now >= *next_sample {
            samples.push(self.connected);
            *next_sample += SAMPLE_EVERY;
        }
    }

    fn add(&self, fd: i32, key: u64) {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: registering a descriptor we own.
        let rc = unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
        assert_eq!(rc, 0, "epoll_ctl add");
    }

    fn remove(&self, fd: i32) {
        // SAFETY: deregistering a descriptor we own.
        unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    fn on_done(&mut self, done: Done, endpoints: &mut Vec<(usize, String)>) {
        let device = done.device;
        let connected = match done.result {
            Ok(connected) => connected,
            Err(error) => {
                self.error(error);
                // A failed reconnect: back to sleep, the next datagram retries.
                self.devices[device].state = State::Asleep;
                return;
            }
        };
        let now = Instant::now();
        let slot = &mut self.devices[device];
        slot.uaid = connected.uaid;
        if let (Some(endpoint), Some(channel)) = (connected.endpoint, connected.channel) {
            slot.channel = channel;
            endpoints.push((device, endpoint));
        }
        if let Some(woke) = slot.woke_at {
            let _ = self
                .reconnect
                .record(now.duration_since(woke).as_micros() as u64);
        }
        let socket = connected.ws.stream().get_ref();
        let fd = socket.as_raw_fd();
        if socket.set_nonblocking(true).is_err() {
            self.error("set_nonblocking".into());
            return;
        }
        slot.ws = Some(connected.ws);
        slot.state = State::Connected;
        self.connected += 1;
        self.add(fd, token(device, true));
        // Frames may already sit in the UA's buffer: take them now.
        self.on_ws(device);
    }

    fn on_datagram(&mut self, device: usize) {
        let mut buf = [0u8; 64];
        let mut got = 0;
        if let Some(udp) = &self.devices[device].udp {
            while udp.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        self.datagrams += got;
        if self.burst {
            // Deaf devices: note the first datagram each gets, never answer.
            if got > 0 && !self.first_datagram[device] {
                let now = Instant::now();
                self.first_datagram[device] = true;
                self.burst_woken += 1;
                self.burst_first.get_or_insert(now);
                self.burst_last = Some(now);
            }
            return;
        }
        let slot = &mut self.devices[device];
        if got == 0 || slot.state != State::Asleep {
            return;
        }
        // Any datagram wakes the device: reconnect with its UAID.
        slot.state = State::Connecting;
        slot.woke_at = Some(Instant::now());
        self.wakes += 1;
        let wakeup = slot.udp.as_ref().and_then(|s| s.local_addr().ok());
        let _ = self.jobs.send(Job {
            device,
            uaid: Some(slot.uaid.clone()),
            wakeup,
            register: false,
        });
    }

    fn on_ws(&mut self, device: usize) {
        let mut closed = false;
        let mut acks = vec![];
        let mut received = vec![];
        if let Some(ws) = self.devices[device].ws.as_mut() {
            loop {
                match ws.take_message() {
                    Ok(Some(message)) => received.push(message),
                    Ok(None) => match block_on(ws.read()) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    },
                    // Herald's close frame (put to sleep with 4774) or a
                    // broken stream: the socket is done.
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        for value in received {
            if value["messageType"] != "notification" {
                continue;
            }
            let Some(updates) = value["updates"].as_array() else {
                continue;
            };
            for update in updates {
                let Some(version) = update["version"].as_u64() else {
                    continue;
                };
                acks.push(json!({"channelID": update["channelID"], "version": version}));
                self.on_delivered(device, version, now);
            }
        }
        if !acks.is_empty() {
            if let Some(ws) = self.devices[device].ws.as_mut() {
                // On a full socket the rest of it waits for the next send.
                let _ = block_on(ws.send(&json!({"messageType": "ack", "updates": acks})));
            }
        }
        if closed {
            if let Some(ws) = self.devices[device].ws.take() {
                self.remove(ws.stream().get_ref().as_raw_fd());
                self.connected -= 1;
                self.sleeps += 1;
            }
            self.devices[device].state = State::Asleep;
        }
    }

    fn on_delivered(&mut self, device: usize, version: u64, now: Instant) {
        let woke_at = self.devices[device].woke_at;
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        let Some(list) = book.outstanding.get_mut(&device) else {
            return;
        };
        // SimplePush versions collapse: a newer version delivers every older one.
        let mut kept = Vec::with_capacity(list.len());
        for (sent_version, sent_at) in list.drain(..) {
            if sent_version <= version {
                let _ = self
                    .delivery
                    .record(now.duration_since(sent_at).as_micros() as u64);
                if let Some(woke) = woke_at.filter(|w| *w >= sent_at) {
                    let _ = self
                        .wake_to_delivery
                        .record(now.duration_since(woke).as_micros() as u64);
                }
                self.delivered += 1;
            } else {
                kept.push((sent_version, sent_at));
            }
        }
        *list = kept;
        if list.is_empty() {
            book.outstanding.remove(&device);
        }
    }
}

fn worker(
    ua: SocketAddr,
    network: &str,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    done: Arc<Mutex<Vec<Done>>>,
    eventfd: i32,
    stop: Arc<AtomicBool>,
) {
    let (mcc, mnc) = network.split_once('-').unwrap_or(("214", "07"));
    loop {
        let job = {
            let Ok(receiver) = jobs.lock() else { return };
            receiver.recv_timeout(Duration::from_millis(100))
        };
        let job = match job {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::SeqCst) => continue,
            Err(_) => return,
        };
        let result = connect(ua, mcc, mnc, &job);
        if let Ok(mut list) = done.lock() {
            list.push(Done {
                device: job.device,
                result,
            });
        }
        let one = 1u64;
        // SAFETY: writing 8 bytes to our eventfd to wake the epoll thread.
        unsafe { libc::write(eventfd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

fn connect(ua: SocketAddr, mcc: &str, mnc: &str, job: &Job) -> Result<Connected, String> {
    let mut ws = block_on(Ua::open(&BLOCKING, ua)).map_err(|e| format!("connect: {e}"))?;
    let mut hello = json!({"messageType": "hello", "use_webpush": false});
    if let Some(uaid) = &job.uaid {
        hello["uaid"] = json!(uaid);
    }
    if let Some(addr) = job.wakeup {
        hello["wakeup_hostport"] = json!({"ip": addr.ip().to_string(), "port": addr.port()});
        hello["mobilenetwork"] = json!({"mcc": mcc, "mnc": mnc, "netid": "bench"});
    }
    let reply = block_on(ws.exchange(&hello)).map_err(|e| format!("hello: {e}"))?;
    let expected = if job.wakeup.is_some() { 201 } else { 200 };
    if reply["status"] != expected {
        return Err(format!("hello answered {reply}"));
    }
    let uaid = reply["uaid"]
        .as_str()
        .ok_or("hello without uaid")?
        .to_string();
    let (mut endpoint, mut channel) = (None, None);
    if job.register {
        let id = channel_id();
        let register = json!({"messageType": "register", "channelID": id});
        let reply = block_on(ws.exchange(&register)).map_err(|e| format!("register: {e}"))?;
        endpoint = Some(
            reply["pushEndpoint"]
                .as_str()
                .ok_or_else(|| format!("register answered {reply}"))?
                .to_string(),
        );
        channel = Some(id);
    }
    Ok(Connected {
        ws,
        uaid,
        endpoint,
        channel,
    })
}

/// A random (version 4) UUID: the bench needs spread, not secrecy.
fn channel_id() -> String {
    let (n, m): (u64, u64) = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n >> 32,
        (n >> 16) & 0xffff,
        n & 0xfff,
        m >> 52,
        m & 0xffff_ffff_ffff
    )
}

/// Pushes SimplePush versions to random devices at `rate` per second.
#[allow(clippy::too_many_arguments)]
fn pusher(
    burst: Option<(usize, usize)>,
    rate: f64,
    duration: Duration,
    endpoints: &[(usize, String)],
    book: &Mutex<Book>,
    stop: &AtomicBool,
    pushed: &AtomicU64,
    errors: &AtomicU64,
) {
    if endpoints.is_empty() || rate <= 0.0 {
        return;
    }
    // Every endpoint names the same AS listener; pushes go by path.
    let Ok(target) = endpoint_address(&endpoints[0].1) else {
        errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let paths: Vec<(usize, String)> = endpoints
        .iter()
        .filter_map(|(device, endpoint)| Some((*device, endpoint_path(endpoint).ok()?)))
        .collect();
    if paths.is_empty() {
        return;
    }
    let mut pusher = Pusher::new(BLOCKING, target);
    let mut push = |path: &str, version: u64| {
        let answered = block_on(pusher.push(path, Push::SimplePush(version)));
        matches!(answered, Ok(200..=299))
    };
    let mut rng = rand::thread_rng();
    if let Some((index, count)) = burst {
        // Every device once, this pusher's share, unpaced; nothing is booked
        // because deaf devices never take delivery.
        for (_, path) in paths.iter().skip(index).step_by(count) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if push(path, 1) { pushed } else { errors }.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
        let due = started + interval * sent as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (device, path) = &paths[rng.gen_range(0..paths.len())];
        let at = Instant::now();
        let Ok(version) = book.lock().map(|mut book| {
            book.next_version += 1;
            let version = book.next_version;
            book.outstanding
                .entry(*device)
                .or_default()
                .push((version, at));
            version
        }) else {
            return;
        };
        if push(path, version) {
            pushed.fetch_add(1, Ordering::Relaxed);
        } else {
            errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut book) = book.lock() {
                if let Some(list) = book.outstanding.get_mut(device) {
                    list.retain(|(v, _)| *v != version);
                }
            }
        }
        sent += 1;
    }
}
