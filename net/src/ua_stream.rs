//! A UA socket as `ua_conn` reads and writes it: plain TCP (`ws://`), or
//! TLS over it (`wss://`, [`UaTls`]). Reads are readiness-based either way
//! (the read chunk lives only while bytes are ready), and what reaches the
//! caller is always the WebSocket's own bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::ServerConfig;

use crate::ua_tls::{Received, UaTls};

/// Bytes read per `recv`, into a chunk that exists only while data is ready
/// (see ARCHITECTURE.md).
const READ_CHUNK_BYTES: usize = 2048;

pub struct UaStream {
    tcp: TcpStream,
    /// The TLS session; None on a `ws://` listener. Boxed: a plain socket
    /// pays one word for it.
    tls: Option<Box<UaTls>>,
}

/// What a socket had ready.
pub enum Ready {
    /// New bytes from the UA are in the buffer.
    Readable,
    /// The UA closed its side, or the socket (or its TLS session) broke.
    Closed,
}

impl UaStream {
    pub fn plain(tcp: TcpStream) -> UaStream {
        UaStream { tcp, tls: None }
    }

    /// A socket with its session, as a hand-off brings it.
    pub fn from_parts(tcp: TcpStream, tls: Option<Box<UaTls>>) -> UaStream {
        UaStream { tcp, tls }
    }

    /// The socket and its session, to hand to another shard.
    pub fn into_parts(self) -> (TcpStream, Option<Box<UaTls>>) {
        (self.tcp, self.tls)
    }

    /// The TLS handshake on a freshly accepted socket, within `deadline`;
    /// `read` holds the bytes already read (after a PROXY header). Returns
    /// the stream and the application data that came with the handshake's
    /// end (a UA may send its upgrade request right behind its Finished).
    pub async fn accept_tls(
        mut tcp: TcpStream,
        config: Arc<ServerConfig>,
        read: Vec<u8>,
        deadline: Instant,
    ) -> Option<(UaStream, Vec<u8>)> {
        let mut tls = UaTls::new(config).ok()?;
        let mut plain = Vec::new();
        let mut ciphertext = read;
        loop {
            if tls.receive(&ciphertext, &mut plain) != Ok(Received::Open) {
                return None;
            }
            let flight = tls.take_outgoing();
            if !flight.is_empty() && tcp.write_all(&flight).await.is_err() {
                return None;
            }
            if !tls.handshaking() {
                let stream = UaStream {
                    tcp,
                    tls: Some(tls),
                };
                return Some((stream, plain));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || tcp.set_read_timeout(Some(remaining)).is_err() {
                return None;
            }
            ciphertext.resize(READ_CHUNK_BYTES, 0);
            match tcp.read(&mut ciphertext).await {
                Ok(0) | Err(_) => return None,
                Ok(read) => ciphertext.truncate(read),
            }
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(timeout).map_err(io::Error::from)
    }

    /// Writes `bytes` (encrypted on TLS, after any record the session still
    /// had to send).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            return self.tcp.write_all(bytes).await;
        };
        let mut records = Vec::with_capacity(bytes.len() + TLS_RECORD_OVERHEAD_BYTES);
        tls.encrypt(bytes, &mut records).map_err(io::Error::other)?;
        self.tcp.write_all(&records).await
    }

    /// Reads until more bytes of the WebSocket are in `buffer`; false on
    /// EOF or an error. The chunk is allocated only for the call.
    pub async fn read_more(&mut self, buffer: &mut Vec<u8>) -> bool {
        let had = buffer.len();
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let read = match self.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(read) => read,
            };
            let Some(tls) = &mut self.tls else {
                buffer.extend_from_slice(&chunk[..read]);
                return true;
            };
            if tls.receive(&chunk[..read], buffer) != Ok(Received::Open) {
                return buffer.len() > had;
            }
            let answer = tls.take_outgoing();
            if !answer.is_empty() && self.tcp.write_all(&answer).await.is_err() {
                return false;
            }
            if buffer.len() > had {
                return true;
            }
        }
    }

    /// Appends to `buffer` whatever the socket has ready. The chunk lives on
    /// the stack of this call only: glommio reads are readiness-based (a
    /// non-blocking `recv`, else a poll that holds no buffer), so a socket
    /// that waits here keeps no read buffer. On TLS, records the session
    /// has to send in answer (rare: a KeyUpdate) go out with the next write.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>, buffer: &mut Vec<u8>) -> Poll<Ready> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let had = buffer.len();
        loop {
            let got_bytes = buffer.len() > had;
            match Pin::new(&mut self.tcp).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(read)) if read > 0 => {
                    match &mut self.tls {
                        None => buffer.extend_from_slice(&chunk[..read]),
                        Some(tls) => match tls.receive(&chunk[..read], buffer) {
                            Ok(Received::Open) => {}
                            // The bytes before close_notify are handled first.
                            Ok(Received::PeerClosed) if buffer.len() > had => {
                                return Poll::Ready(Ready::Readable)
                            }
                            Ok(Received::PeerClosed) | Err(_) => return Poll::Ready(Ready::Closed),
                        },
                    }
                    // A short read emptied the socket; on TLS a record may
                    // still be partial, and then the next poll waits for it.
                    if read < chunk.len() && buffer.len() > had {
                        return Poll::Ready(Ready::Readable);
                    }
                }
                // EOF or an error: the bytes before it are handled first.
                Poll::Ready(_) if got_bytes => return Poll::Ready(Ready::Readable),
                Poll::Ready(_) => return Poll::Ready(Ready::Closed),
                Poll::Pending if got_bytes => return Poll::Ready(Ready::Readable),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Ends Herald's side: TLS's close_notify, then a TCP half-close.
    pub async fn shutdown(&mut self) {
        if let Some(tls) = &mut self.tls {
            let mut alert = Vec::new();
            if tls.close_notify(&mut alert).is_ok() {
                let _ = self.tcp.write_all(&alert).await;
            }
        }
        let _ = self.tcp.shutdown(std::net::Shutdown::Write).await;
    }
}

/// Room for one TLS 1.3 record's header, content type and AEAD tag: a
/// batch of frames past 16 KiB takes more, and rustls asks for it.
const TLS_RECORD_OVERHEAD_BYTES: usize = 5 + 1 + 16;
