//! std sockets, for `herald-load` (a thread per client) and `herald-devices`
//! (its own epoll loop, with the UA sockets non-blocking).
//!
//! [`AssertAsync`] makes a std socket an async stream whose every call
//! completes at once: it blocks (at most the socket's timeout) or fails,
//! `WouldBlock` included on a non-blocking socket. So [`block_on`] runs one
//! of the clients' operations to its end on the calling thread.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

pub use futures_lite::future::block_on;
use futures_lite::io::AssertAsync;

use super::as_wire::split_endpoint;
use super::Dial;

/// Blocking connections: connect, each read and each write wait at most
/// `timeout`.
#[derive(Clone, Copy, Debug)]
pub struct Blocking {
    pub timeout: Duration,
}

pub type Ua = super::Ua<AssertAsync<TcpStream>>;
pub type Pusher = super::Pusher<Blocking>;

impl Dial for Blocking {
    type Stream = AssertAsync<TcpStream>;

    fn dial(&self, target: SocketAddr) -> io::Result<Self::Stream> {
        let stream = TcpStream::connect_timeout(&target, self.timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        Ok(AssertAsync::new(stream))
    }
}

/// The AS address of a push endpoint URL (`http://host:port/path`),
/// resolved.
pub fn endpoint_address(endpoint: &str) -> io::Result<SocketAddr> {
    let (host, _) = split_endpoint(endpoint)?;
    host.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{host} has no address")))
}
