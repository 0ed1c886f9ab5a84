//! TLS for UA sockets on rustls's unbuffered API: the caller owns every
//! buffer, so an idle `wss://` socket keeps its session (keys, state) and
//! nothing else. rustls's buffered connection would keep a 4 KiB read
//! buffer per socket for its whole life; with 100,000s of mostly idle UAs
//! that is the largest cost of a socket (see ARCHITECTURE.md).
//!
//! The session is plain data (`Send`): when a socket moves to the shard
//! that owns its UAID, the session travels with the descriptor.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;

/// One socket's TLS session.
pub struct UaTls {
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record not yet whole; no capacity between records.
    incoming: Vec<u8>,
    /// Records rustls produced while reading (the handshake's flights, an
    /// answer to the UA's KeyUpdate), to go out before anything else.
    outgoing: Vec<u8>,
}

/// What reading ciphertext came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// The session goes on (the handshake, or application data).
    Open,
    /// The UA sent close_notify: no more data comes.
    PeerClosed,
}

impl UaTls {
    pub fn new(config: Arc<ServerConfig>) -> Result<Box<UaTls>, rustls::Error> {
        Ok(Box::new(UaTls {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
        }))
    }

    /// Whether the handshake is still going on.
    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Takes in `ciphertext` read from the socket, appending the
    /// application data it completes to `plain`. Records to send back (see
    /// [`UaTls::take_outgoing`]) may result. An error is fatal to the session.
    pub fn receive(
        &mut self,
        ciphertext: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<Received, rustls::Error> {
        self.incoming.extend_from_slice(ciphertext);
        let received = self.process(plain);
        if self.incoming.is_empty() {
            // Between records the socket keeps no read buffer.
            self.incoming = Vec::new();
        }
        received
    }

    /// Records waiting to be sent (empty most of the time).
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Appends `plain` encrypted to `out`, after any record still waiting.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        self.write_traffic(out, |traffic, room| traffic.encrypt(plain, room))
    }

    /// Appends a close_notify alert to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        self.write_traffic(out, |traffic, room| traffic.queue_close_notify(room))
    }

    /// Runs the records in `incoming` through the session until it waits
    /// for more bytes.
    fn process(&mut self, plain: &mut Vec<u8>) -> Result<Received, rustls::Error> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let done = match state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        plain.extend_from_slice(record?.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, |room| encode.encode(room))?;
                    None
                }
                // What was encoded goes out with the caller's next write.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    Some(Received::Open)
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => Some(Received::PeerClosed),
                // Early data is not enabled, so never offered.
                _ => return Err(rustls::Error::General("unexpected TLS state".into())),
            };
            self.incoming.drain(..discard);
            if let Some(done) = done {
                return Ok(done);
            }
        }
    }

    /// Brings the session to the state where application data may be sent
    /// (encoding what it still has to send on the way), then appends what
    /// `write` produces to `out`.
    fn write_traffic(
        &mut self,
        out: &mut Vec<u8>,
        mut write: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> Result<(), rustls::Error> {
        out.append(&mut self.outgoing);
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let written = match state? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    encrypt_into(out, |room| write(&mut traffic, room))?;
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(out, |room| encode.encode(room))?;
                    false
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    false
                }
                // `receive` takes every record it can, so no application
                // data waits here, and after the handshake nothing blocks.
                _ => return Err(rustls::Error::General("TLS session not writable".into())),
            };
            self.incoming.drain(..discard);
            if written {
                return Ok(());
            }
        }
    }
}

/// Appends what `encode` writes to `out`, growing it as rustls asks.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    fill(out, |room| match encode(room) {
        Ok(written) => Ok(Ok(written)),
        Err(EncodeError::InsufficientSize(size)) => Ok(Err(size.required_size)),
        Err(error) => Err(rustls::Error::General(error.to_string())),
    })
}

/// Appends what `encrypt` writes to `out`, growing it as rustls asks.
fn encrypt_into(
    out: &mut Vec<u8>,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    fill(out, |room| match encrypt(room) {
        Ok(written) => Ok(Ok(written)),
        Err(EncryptError::InsufficientSize(size)) => Ok(Err(size.required_size)),
        Err(error) => Err(rustls::Error::General(error.to_string())),
    })
}

/// Runs `write` on free room at the end of `out`; `Ok(Err(n))` from it asks
/// for `n` bytes of room, and it runs again.
fn fill(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<Result<usize, usize>, rustls::Error>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = 0;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(Ok(written)) => {
                out.truncate(start + written);
                return Ok(());
            }
            Ok(Err(required)) if required > room => room = required,
            Ok(Err(_)) => return Err(rustls::Error::General("TLS buffer sizing".into())),
            Err(error) => {
                out.truncate(start);
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session moves with its socket to another shard's thread.
    #[test]
    fn a_session_can_cross_threads() {
        fn send<T: Send>() {}
        send::<UaTls>();
    }
}
