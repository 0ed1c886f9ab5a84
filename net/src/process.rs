//! What every thread-per-core server process here needs from the OS, shared
//! by Herald and the benchmark's floor server (bench/src/bin/floor.rs): one
//! listening address for every executor, and SIGTERM/SIGINT handled by the
//! main thread only.

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

/// Blocks SIGTERM and SIGINT in this thread and every thread it starts, so
/// that only [`wait_for_signal`] sees them. Call it before any executor starts.
pub fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked signals; returns its number.
pub fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` was built by block_termination_signals; sigwait only reads it.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}
