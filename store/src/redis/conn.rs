//! One connection to one Redis node: connect with a deadline, write
//! pipelines, read reply frames into a bounded buffer.

use std::future::Future;
use std::net::ToSocketAddrs;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use super::command::encode_argv;
use super::RedisError;
use crate::limits::{REDIS_READ_CHUNK_BYTES, REDIS_REPLY_MAX_BYTES};

/// `fut`, or `Timeout(what)` once `limit` has passed. When the timer wins,
/// `fut` is dropped mid-flight: its connection's state is unknown and the
/// caller drops the connection too.
pub(super) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    futures_lite::future::or(fut, async {
        Timer::new(limit).await;
        Err(RedisError::Timeout(format!("{what} after {limit:?}")))
    })
    .await
}

pub(super) struct Conn {
    addr: String,
    stream: TcpStream,
    /// Received bytes not yet decoded; `buf[..start]` is already consumed.
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    /// Connects to `addr` (`host:port`), within `limit`.
    pub(super) async fn open(addr: &str, limit: Duration) -> Result<Conn, RedisError> {
        let unreachable =
            |e: &dyn std::fmt::Display| RedisError::Unreachable(format!("{addr}: {e}"));
        // Resolution is std's (blocking); seeds are IPs or local names.
        let sockaddr = addr
            .to_socket_addrs()
            .map_err(|e| unreachable(&e))?
            .next()
            .ok_or_else(|| unreachable(&"no address"))?;
        let stream = TcpStream::connect_timeout(sockaddr, limit)
            .await
            .map_err(|e| match e {
                glommio::GlommioError::IoError(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                    RedisError::Timeout(format!("connect {addr}"))
                }
                e => unreachable(&e),
            })?;
        // Pipelines are written whole; Nagle would only delay the last piece.
        stream.set_nodelay(true).map_err(|e| unreachable(&e))?;
        Ok(Conn {
            addr: addr.to_string(),
            stream,
            buf: Vec::new(),
            start: 0,
        })
    }

    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), RedisError> {
        let addr = &self.addr;
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| RedisError::Unreachable(format!("write to {addr}: {e}")))
    }

    /// The next reply frame. The connection is unusable after an error.
    pub(super) async fn read(&mut self) -> Result<OwnedFrame, RedisError> {
        loop {
            let pending = &self.buf[self.start..];
            if !pending.is_empty() {
                match decode(pending) {
                    Ok(Some((frame, used))) => {
                        self.start += used;
                        if self.start == self.buf.len() {
                            self.buf.clear();
                            self.start = 0;
                            // One large reply must not pin its buffer for
                            // the connection's life.
                            if self.buf.capacity() > 16 * REDIS_READ_CHUNK_BYTES {
                                self.buf.shrink_to(REDIS_READ_CHUNK_BYTES);
                            }
                        }
                        return Ok(frame);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(RedisError::Protocol(format!("from {}: {e}", self.addr))),
                }
                if pending.len() >= REDIS_REPLY_MAX_BYTES {
                    return Err(RedisError::Protocol(format!(
                        "reply from {} exceeds {REDIS_REPLY_MAX_BYTES} bytes",
                        self.addr
                    )));
                }
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let have = self.buf.len();
            self.buf.resize(have + REDIS_READ_CHUNK_BYTES, 0);
            let got = self.stream.read(&mut self.buf[have..]).await;
            let got = match got {
                Ok(0) => Err("connection closed".to_string()),
                Ok(n) => Ok(n),
                Err(e) => Err(e.to_string()),
            };
            match got {
                Ok(n) => self.buf.truncate(have + n),
                Err(e) => {
                    return Err(RedisError::Unreachable(format!(
                        "read from {}: {e}",
                        self.addr
                    )))
                }
            }
        }
    }

    /// One command, not pipelined (setup: CLUSTER SLOTS, SCRIPT LOAD), its
    /// reply as a frame; an error reply is returned as a frame too.
    pub(super) async fn request(&mut self, argv: &[&[u8]]) -> Result<OwnedFrame, RedisError> {
        let parts: Vec<BorrowedFrame> = argv.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
        let mut out = Vec::new();
        encode_argv(&parts, &mut out)?;
        self.write(&out).await?;
        self.read().await
    }
}
