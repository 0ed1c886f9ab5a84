//! What every thread-per-core server process here needs from the OS, shared
//! by Herald and the benchmark's floor server (bench/src/bin/floor.rs): one
//! listening address for every executor, and SIGTERM/SIGINT/SIGHUP handled
//! by the main thread only.

use std::os::fd::{FromRawFd, IntoRawFd};

use glommio::net::TcpListener;

/// Pending connections per listener before the kernel refuses more.
const LISTEN_BACKLOG: i32 = 4096;

/// Every executor listens on the same address (SO_REUSEPORT, the kernel
/// spreads connections). SO_REUSEADDR as well, so that a restart is not
/// refused while the previous run's connections linger in TIME_WAIT.
pub fn shared_listener(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: a bound, listening socket whose ownership passes to glommio.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread it
/// starts, so that only [`wait_for_signal`] sees them (and a SIGHUP, which
/// reloads Herald's TLS files, never kills the process). Call it before any
/// executor starts.
pub fn block_handled_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked signals; returns its number.
pub fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` was built by block_handled_signals; sigwait only reads it.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

/// What the process uses of the machine, for `/metrics`.
pub struct Usage {
    pub resident_bytes: u64,
    /// Descriptors open now (sockets, WAL files, io_uring rings).
    pub open_fds: u64,
    /// The soft descriptor limit (`RLIMIT_NOFILE`).
    pub max_fds: u64,
}

/// Reads `/proc/self`: a few small reads and one directory listing, done
/// when the metrics are scraped, never on a request's path. What cannot be
/// read counts as 0.
pub fn usage() -> Usage {
    // statm: sizes in pages; the second field is the resident set.
    let resident_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf and getrlimit only read process-wide values; `limit`
    // is a local the kernel fills.
    let (page_bytes, max_fds) = unsafe {
        let page_bytes = libc::sysconf(libc::_SC_PAGESIZE).max(0) as u64;
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max_fds = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur
        } else {
            0
        };
        (page_bytes, max_fds)
    };
    // The listing holds a descriptor of its own while it runs.
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|entries| entries.count().saturating_sub(1) as u64)
        .unwrap_or(0);
    Usage {
        resident_bytes: resident_pages * page_bytes,
        open_fds,
        max_fds,
    }
}
