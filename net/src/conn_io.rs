//! What the HTTP loops (`http_conn.rs`, `http2_conn.rs`) need of
//! a connection, so that one loop serves a plain TCP socket and TLS over one
//! alike: futures-io reads and writes, and the read timeout of the TCP
//! socket underneath (glommio's, armed per read), which carries the idle
//! and per-request deadlines whatever is layered on the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A connection an HTTP loop can serve.
pub trait Conn: AsyncRead + AsyncWrite + Unpin {
    /// Sets the read timeout of the TCP socket underneath: a read that waits
    /// longer fails with [`io::ErrorKind::TimedOut`].
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout).map_err(io::Error::from)
    }
}

impl<S: Conn> Conn for futures_rustls::server::TlsStream<S> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.get_ref().0.set_read_timeout(timeout)
    }
}

/// A connection with bytes already read from it (while looking for a PROXY
/// header, or for HTTP/2's preface) read again first.
pub struct Replayed<S> {
    read: Vec<u8>,
    at: usize,
    stream: S,
}

impl<S> Replayed<S> {
    pub fn new(read: Vec<u8>, stream: S) -> Replayed<S> {
        Replayed {
            read,
            at: 0,
            stream,
        }
    }
}

impl<S: Conn> Conn for Replayed<S> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let replay = &this.read[this.at..];
        if replay.is_empty() {
            if !this.read.is_empty() {
                // Replayed: its memory goes back now, not with the connection.
                this.read = Vec::new();
                this.at = 0;
            }
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let count = replay.len().min(buf.len());
        buf[..count].copy_from_slice(&replay[..count]);
        this.at += count;
        Poll::Ready(Ok(count))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}
