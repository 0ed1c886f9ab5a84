//! The clients over std sockets, for `herald-load` (a thread per client) and
//! `herald-devices` (its own epoll loop, with the UA sockets non-blocking).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

use super::as_wire::{split_endpoint, AsWire, Push};
use super::ua_wire::UaWire;
use super::READ_CHUNK_BYTES;

/// The AS address of a push endpoint URL (`http://host:port/path`),
/// resolved.
pub fn endpoint_address(endpoint: &str) -> io::Result<SocketAddr> {
    let (host, _) = split_endpoint(endpoint)?;
    host.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{host} has no address")))
}

/// Connects within `timeout`; reads and writes then block at most `timeout`.
fn connect(target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Reads once; an error on EOF. `WouldBlock` (non-blocking socket) and
/// `TimedOut` (read timeout) come back as they are.
fn read_more(
    stream: &mut TcpStream,
    received: impl FnOnce(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    match stream.read(&mut chunk)? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        read => received(&chunk[..read]),
    }
}

/// A WebSocket user agent speaking Herald's JSON protocol.
pub struct Ua {
    stream: TcpStream,
    wire: UaWire,
}

impl Ua {
    /// Connects and completes the WebSocket upgrade, each step within
    /// `timeout`.
    pub fn open(target: SocketAddr, timeout: Duration) -> io::Result<Ua> {
        let mut ua = Ua {
            stream: connect(target, timeout)?,
            wire: UaWire::new(target),
        };
        ua.flush()?;
        while !ua.wire.take_upgrade()? {
            ua.read()?;
        }
        Ok(ua)
    }

    /// The socket, for timeouts, non-blocking mode and polling.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Queues one text frame; `flush` writes everything queued.
    pub fn queue(&mut self, text: &str) {
        self.wire.queue(text);
    }

    /// Writes what is queued. On a non-blocking socket, what the socket
    /// takes now; the rest stays queued for the next flush.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.wire.output().is_empty() {
            match self.stream.write(self.wire.output()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.wire.sent(written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    pub fn send(&mut self, message: &Value) -> io::Result<()> {
        self.queue(&message.to_string());
        self.flush()
    }

    /// The next complete text message already read, if any (see
    /// [`UaWire::take_message`]).
    pub fn take_message(&mut self) -> io::Result<Option<Value>> {
        self.wire.take_message()
    }

    /// Reads once from the server (after `take_message` found nothing).
    pub fn read(&mut self) -> io::Result<()> {
        let wire = &mut self.wire;
        read_more(&mut self.stream, |bytes| wire.received(bytes))
    }

    /// The next text message, waiting for it.
    pub fn receive(&mut self) -> io::Result<Value> {
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(message);
            }
            self.read()?;
        }
    }

    /// Sends a request and waits for the answer of the same `messageType`.
    pub fn exchange(&mut self, message: &Value) -> io::Result<Value> {
        self.send(message)?;
        let kind = &message["messageType"];
        loop {
            let answer = self.receive()?;
            if answer["messageType"] == *kind {
                return Ok(answer);
            }
        }
    }
}

/// One keep-alive HTTP/1.1 connection of an application server.
pub struct Pusher {
    target: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    wire: AsWire,
}

impl Pusher {
    /// Each connect, write and read waits at most `timeout`.
    pub fn new(target: SocketAddr, timeout: Duration) -> Pusher {
        Pusher {
            target,
            timeout,
            stream: None,
            wire: AsWire::default(),
        }
    }

    /// Sends one push to `path` and returns the answer's status. Reconnects
    /// if the server closed the previous connection.
    pub fn push(&mut self, path: &str, push: Push<'_>) -> io::Result<u16> {
        self.wire.start(self.target, path, push);
        if self.stream.is_none() {
            self.stream = Some(connect(self.target, self.timeout)?);
            self.wire.reconnected();
        }
        let result = self.exchange();
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self) -> io::Result<u16> {
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(self.wire.request())?;
        loop {
            if let Some(answer) = self.wire.take_answer()? {
                if answer.close {
                    self.stream = None;
                }
                return Ok(answer.status);
            }
            let wire = &mut self.wire;
            read_more(stream, |bytes| wire.received(bytes))?;
        }
    }
}
