//! The load clients: a WebSocket UA speaking Herald's JSON protocol and a
//! keep-alive HTTP/1.1 application server (AS).
//!
//! The bytes on the wire are built and parsed once, without IO
//! ([`ua_wire`], [`as_wire`]). Two transports carry them: glommio tasks
//! ([`tasks`], the `herald-bench` generator, which needs thousands of
//! sockets for little CPU) and std sockets ([`threads`], `herald-load` and
//! `herald-devices`, which run a thread per client or their own epoll loop).

pub mod as_wire;
pub mod tasks;
pub mod threads;
pub mod ua_wire;

use std::io;

pub use as_wire::{endpoint_path, Push};

/// A server answer or frame bigger than this is a protocol error here.
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Bytes taken from a socket per read.
const READ_CHUNK_BYTES: usize = 4096;

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Appends `bytes` read from the socket to `input`, refusing to buffer more
/// than [`MESSAGE_BYTES_MAX`] that do not make a whole message.
fn buffer_read(input: &mut Vec<u8>, bytes: &[u8]) -> io::Result<()> {
    if input.len() > MESSAGE_BYTES_MAX {
        return Err(protocol_error(
            "server sent more than the generator buffers",
        ));
    }
    input.extend_from_slice(bytes);
    Ok(())
}
