//! The clients as glommio tasks (the `herald-bench` generator): thousands of
//! sockets in one worker process, each a task that reuses its buffers.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde_json::Value;

use super::as_wire::{AsWire, Push};
use super::ua_wire::UaWire;
use super::READ_CHUNK_BYTES;

/// Opens a TCP connection from `source` (one of several 127.x addresses, so
/// that big connection counts do not run out of ephemeral ports).
pub fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if let Some(ip) = source {
        // The port is picked at connect(), per destination: picking it at
        // bind() searches every bound port for a conflict, which made the
        // generator's connects O(sockets).
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with an int option value.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        // The first write waits for the handshake to finish.
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(error),
    }
    // SAFETY: a fresh socket whose ownership passes to glommio.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Reads once more; an error on EOF. Reads into a stack chunk and copies:
/// growing a buffer by the chunk size would zero it every time.
async fn read_more(
    stream: &mut TcpStream,
    mut received: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    match stream.read(&mut chunk).await? {
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
    /// Connects and completes the WebSocket upgrade.
    pub async fn open(target: SocketAddr, source: Option<IpAddr>) -> io::Result<Ua> {
        let mut ua = Ua {
            stream: connect(target, source)?,
            wire: UaWire::new(target),
        };
        ua.flush().await?;
        while !ua.wire.take_upgrade()? {
            ua.read().await?;
        }
        Ok(ua)
    }

    /// Queues one text frame; `flush` writes everything queued.
    pub fn queue(&mut self, text: &str) {
        self.wire.queue(text);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        let queued = self.wire.output().len();
        if queued == 0 {
            return Ok(());
        }
        self.stream.write_all(self.wire.output()).await?;
        self.wire.sent(queued);
        Ok(())
    }

    pub async fn send(&mut self, message: &Value) -> io::Result<()> {
        self.queue(&message.to_string());
        self.flush().await
    }

    /// The next complete text message already read, if any (see
    /// [`UaWire::take_message`]).
    pub fn take_message(&mut self) -> io::Result<Option<Value>> {
        self.wire.take_message()
    }

    /// Waits for bytes from the server (after `take_message` found none).
    pub async fn read(&mut self) -> io::Result<()> {
        let wire = &mut self.wire;
        read_more(&mut self.stream, |bytes| wire.received(bytes)).await
    }

    /// The next text message, waiting for it.
    pub async fn receive(&mut self) -> io::Result<Value> {
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(message);
            }
            self.read().await?;
        }
    }

    /// Sends a request and waits for the answer of the same `messageType`.
    pub async fn exchange(&mut self, message: &Value) -> io::Result<Value> {
        self.send(message).await?;
        let kind = &message["messageType"];
        loop {
            let answer = self.receive().await?;
            if answer["messageType"] == *kind {
                return Ok(answer);
            }
        }
    }
}

/// One keep-alive HTTP/1.1 connection of an application server.
pub struct Pusher {
    target: SocketAddr,
    source: Option<IpAddr>,
    stream: Option<TcpStream>,
    wire: AsWire,
}

impl Pusher {
    pub fn new(target: SocketAddr, source: Option<IpAddr>) -> Pusher {
        Pusher {
            target,
            source,
            stream: None,
            wire: AsWire::default(),
        }
    }

    /// Sends one push to `path` and returns the answer's status. Reconnects
    /// if the server closed the previous connection.
    pub async fn push(&mut self, path: &str, push: Push<'_>) -> io::Result<u16> {
        self.wire.start(self.target, path, push);
        if self.stream.is_none() {
            self.stream = Some(connect(self.target, self.source)?);
            self.wire.reconnected();
        }
        let result = self.exchange().await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self) -> io::Result<u16> {
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(self.wire.request()).await?;
        loop {
            if let Some(answer) = self.wire.take_answer()? {
                if answer.close {
                    self.stream = None;
                }
                return Ok(answer.status);
            }
            let wire = &mut self.wire;
            read_more(stream, |bytes| wire.received(bytes)).await?;
        }
    }
}
