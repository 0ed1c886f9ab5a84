//! The load clients: a WebSocket UA speaking Herald's JSON protocol
//! ([`Ua`]) and a keep-alive HTTP/1.1 application server ([`Pusher`]).
//!
//! The bytes on the wire are built and parsed without IO ([`ua_wire`],
//! [`as_wire`]); [`Ua`] and [`Pusher`] drive them over any async stream.
//! Two transports open those streams: glommio sockets ([`tasks`], the
//! `herald-bench` generator, thousands of sockets for little CPU) and std
//! sockets ([`threads`], `herald-load` and `herald-devices`, which run a
//! thread per client or their own epoll loop).

pub mod as_wire;
mod pusher;
pub mod tasks;
pub mod threads;
mod ua;
pub mod ua_wire;

use std::io;
use std::net::SocketAddr;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use as_wire::{endpoint_path, Push};
pub use pusher::Pusher;
pub use ua::Ua;

/// A server answer or frame bigger than this is a protocol error here.
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Bytes taken from a socket per read.
const READ_CHUNK_BYTES: usize = 4096;

/// How a transport opens a connection.
pub trait Dial {
    type Stream: AsyncRead + AsyncWrite + Unpin;
    fn dial(&self, target: SocketAddr) -> io::Result<Self::Stream>;
}

/// A connection's bytes: read and not yet taken, queued and not yet
/// written. Reused from message to message.
#[derive(Default)]
pub struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Buffers {
    /// Bytes queued for the socket.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// The socket took the first `count` bytes of the output.
    pub fn sent(&mut self, count: usize) {
        self.output.drain(..count.min(self.output.len()));
    }

    /// Bytes read from the socket. Refuses to buffer more than
    /// [`MESSAGE_BYTES_MAX`] that do not make a whole message.
    pub fn received(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.input.len() > MESSAGE_BYTES_MAX {
            return Err(protocol_error(
                "server sent more than the generator buffers",
            ));
        }
        self.input.extend_from_slice(bytes);
        Ok(())
    }
}

/// The protocol side of a connection ([`ua_wire`], [`as_wire`]), around
/// its buffers.
pub trait Wire {
    fn buffers(&mut self) -> &mut Buffers;
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Writes what `wire` has queued, noting each write as it lands: a
/// non-blocking socket that stops taking bytes (`WouldBlock`) loses none,
/// the rest stays queued for the next call.
async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, wire: &mut impl Wire) -> io::Result<()> {
    let buffers = wire.buffers();
    while !buffers.output.is_empty() {
        match stream.write(&buffers.output).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            written => buffers.sent(written),
        }
    }
    Ok(())
}

/// Reads once into `wire`; an error on EOF. Reads into a stack chunk and
/// copies: growing a buffer by the chunk size would zero it every time.
async fn read_into<S: AsyncRead + Unpin>(stream: &mut S, wire: &mut impl Wire) -> io::Result<()> {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    match stream.read(&mut chunk).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        read => wire.buffers().received(&chunk[..read]),
    }
}

/// Reads until `take` finds in `wire` what it waits for.
async fn wait_for<S: AsyncRead + Unpin, W: Wire, T>(
    stream: &mut S,
    wire: &mut W,
    mut take: impl FnMut(&mut W) -> io::Result<Option<T>>,
) -> io::Result<T> {
    loop {
        if let Some(found) = take(wire)? {
            return Ok(found);
        }
        read_into(stream, wire).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::io::AssertAsync;

    /// A socket that takes `room` more bytes, then says `WouldBlock`.
    struct Filling {
        taken: Vec<u8>,
        room: usize,
    }

    impl io::Write for Filling {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let count = bytes.len().min(self.room).min(3);
            if count == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= count;
            self.taken.extend_from_slice(&bytes[..count]);
            Ok(count)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Plain(Buffers);

    impl Wire for Plain {
        fn buffers(&mut self) -> &mut Buffers {
            &mut self.0
        }
    }

    #[test]
    fn a_full_socket_keeps_the_rest_queued() {
        let mut wire = Plain::default();
        wire.0.output = b"0123456789".to_vec();
        let mut socket = AssertAsync::new(Filling {
            taken: Vec::new(),
            room: 4,
        });
        let error = block_on(write_out(&mut socket, &mut wire)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(socket.get_ref().taken, b"0123");
        assert_eq!(wire.0.output(), b"456789");
        socket.get_mut().room = 100;
        block_on(write_out(&mut socket, &mut wire)).unwrap();
        assert_eq!(socket.get_ref().taken, b"0123456789");
        assert!(wire.0.output().is_empty());
    }

    #[test]
    fn eof_and_oversized_input_are_errors() {
        let mut wire = Plain::default();
        let mut empty = AssertAsync::new(io::Cursor::new(Vec::<u8>::new()));
        let error = block_on(read_into(&mut empty, &mut wire)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let mut some = AssertAsync::new(io::Cursor::new(b"abc".to_vec()));
        block_on(read_into(&mut some, &mut wire)).unwrap();
        assert_eq!(wire.0.input, b"abc");
        wire.0.input = vec![0; MESSAGE_BYTES_MAX + 1];
        assert!(wire.0.received(b"x").is_err());
    }
}
