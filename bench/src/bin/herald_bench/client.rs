//! The generator's two kinds of client, written for little CPU per message:
//! a WebSocket UA and a keep-alive HTTP/1.1 application server. Both run as
//! glommio tasks in a worker process and reuse their buffers; framing and
//! parsing come from tungstenite and httparse.

use std::io::{self, Cursor};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde_json::Value;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

const READ_CHUNK_BYTES: usize = 4096;
/// A server answer or frame bigger than this is a protocol error here.
const MESSAGE_BYTES_MAX: usize = 1024 * 1024;

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

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

/// Reads once more into `buffer`; an error on EOF. Reads into a stack chunk
/// and copies: growing `buffer` by the chunk size would zero it every time.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<()> {
    if buffer.len() > MESSAGE_BYTES_MAX {
        return Err(protocol_error(
            "server sent more than the generator buffers",
        ));
    }
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    match stream.read(&mut chunk).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        read => {
            buffer.extend_from_slice(&chunk[..read]);
            Ok(())
        }
    }
}

/// A WebSocket user agent speaking Herald's JSON protocol.
pub struct Ua {
    stream: TcpStream,
    /// Bytes read but not yet taken as frames.
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Ua {
    /// Connects and completes the WebSocket upgrade.
    pub async fn open(target: SocketAddr, source: Option<IpAddr>) -> io::Result<Ua> {
        let mut stream = connect(target, source)?;
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: push-notification\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut input = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&input) {
                Ok(httparse::Status::Complete(length)) => {
                    let accept = response
                        .headers
                        .iter()
                        .find(|header| header.name.eq_ignore_ascii_case("sec-websocket-accept"))
                        .map(|header| header.value);
                    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
                    if response.code != Some(101) || accept != Some(expected.as_bytes()) {
                        return Err(protocol_error(format!(
                            "upgrade refused: {:?}",
                            response.code
                        )));
                    }
                    input.drain(..length);
                    break;
                }
                Ok(httparse::Status::Partial) => read_more(&mut stream, &mut input).await?,
                Err(error) => return Err(protocol_error(format!("upgrade answer: {error}"))),
            }
        }
        Ok(Ua {
            stream,
            input,
            output: Vec::new(),
        })
    }

    /// Queues one masked text frame; `flush` writes everything queued.
    pub fn queue(&mut self, text: &str) {
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            mask: Some(rand::random()),
            ..FrameHeader::default()
        };
        // Writing into a Vec cannot fail.
        let _ =
            Frame::from_payload(header, text.as_bytes().to_vec().into()).format(&mut self.output);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.output).await?;
        self.output.clear();
        Ok(())
    }

    pub async fn send(&mut self, message: &Value) -> io::Result<()> {
        self.queue(&message.to_string());
        self.flush().await
    }

    /// The next complete text message already read, if any. Control frames
    /// are skipped; a close frame is an error (the server hung up).
    pub fn take_message(&mut self) -> io::Result<Option<Value>> {
        loop {
            let mut cursor = Cursor::new(self.input.as_slice());
            let Some((header, length)) = FrameHeader::parse(&mut cursor)
                .map_err(|error| protocol_error(format!("frame: {error}")))?
            else {
                return Ok(None);
            };
            let start = cursor.position() as usize;
            let end = start + length as usize;
            if self.input.len() < end {
                return Ok(None);
            }
            let parsed = match header.opcode {
                OpCode::Data(Data::Text) => Some(
                    serde_json::from_slice(&self.input[start..end])
                        .map_err(|error| protocol_error(format!("JSON: {error}"))),
                ),
                OpCode::Control(tungstenite::protocol::frame::coding::Control::Close) => Some(Err(
                    io::Error::new(io::ErrorKind::ConnectionAborted, "server closed the socket"),
                )),
                _ => None,
            };
            self.input.drain(..end);
            if let Some(parsed) = parsed {
                return parsed.map(Some);
            }
        }
    }

    /// Waits for bytes from the server (after `take_message` found none).
    pub async fn read(&mut self) -> io::Result<()> {
        read_more(&mut self.stream, &mut self.input).await
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
        let kind = message["messageType"].clone();
        loop {
            let answer = self.receive().await?;
            if answer["messageType"] == kind {
                return Ok(answer);
            }
        }
    }
}

/// What an application server sends.
#[derive(Clone, Copy)]
pub enum Push<'a> {
    /// Web Push POST; an empty body is a push without data.
    WebPush(&'a [u8]),
    /// SimplePush PUT of `version=N`.
    SimplePush(u64),
}

/// One keep-alive HTTP/1.1 connection of an application server.
pub struct Pusher {
    target: SocketAddr,
    source: Option<IpAddr>,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    input: Vec<u8>,
}

impl Pusher {
    pub fn new(target: SocketAddr, source: Option<IpAddr>) -> Pusher {
        Pusher {
            target,
            source,
            stream: None,
            request: Vec::new(),
            input: Vec::new(),
        }
    }

    /// Sends one push to `path` and returns the answer's status. Reconnects
    /// if the server closed the previous connection.
    pub async fn push(&mut self, path: &str, push: Push<'_>) -> io::Result<u16> {
        use std::io::Write;
        self.request.clear();
        let host = self.target;
        // Writing into a Vec cannot fail.
        let _ = match push {
            Push::WebPush([]) => write!(
                self.request,
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Length: 0\r\n\r\n"
            ),
            Push::WebPush(body) => write!(
                self.request,
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\n\
                 Content-Encoding: aes128gcm\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .map(|()| self.request.extend_from_slice(body)),
            Push::SimplePush(version) => {
                let body = format!("version={version}");
                write!(
                    self.request,
                    "PUT {path} HTTP/1.1\r\nHost: {host}\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
        };
        if self.stream.is_none() {
            self.stream = Some(connect(self.target, self.source)?);
            self.input.clear();
        }
        let result = self.exchange().await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self) -> io::Result<u16> {
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(&self.request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.input) {
                Ok(httparse::Status::Complete(head)) => {
                    let body: usize = response
                        .headers
                        .iter()
                        .find(|header| header.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|header| std::str::from_utf8(header.value).ok())
                        .and_then(|value| value.trim().parse().ok())
                        .unwrap_or(0);
                    let close = response.headers.iter().any(|header| {
                        header.name.eq_ignore_ascii_case("connection")
                            && header.value.eq_ignore_ascii_case(b"close")
                    });
                    let status = response.code.unwrap_or(0);
                    if self.input.len() >= head + body {
                        self.input.drain(..head + body);
                        if close {
                            self.stream = None;
                        }
                        return Ok(status);
                    }
                }
                Ok(httparse::Status::Partial) => {}
                Err(error) => return Err(protocol_error(format!("HTTP answer: {error}"))),
            }
            read_more(stream, &mut self.input).await?;
        }
    }
}

/// The path part of a push endpoint URL (`http://host:port/path`).
pub fn endpoint_path(endpoint: &str) -> io::Result<String> {
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| protocol_error(format!("not an http endpoint: {endpoint}")))?;
    let slash = rest
        .find('/')
        .ok_or_else(|| protocol_error(format!("endpoint without a path: {endpoint}")))?;
    Ok(rest[slash..].to_owned())
}
