//! WebSocket on shared, short-lived buffers: the upgrade handshake and frame
//! codec come from tungstenite; what Herald adds is that a connection owns no
//! read or write buffer while it is idle, and that bytes read past a message
//! stay in a plain `Vec` that can travel with the socket to another shard.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

/// The subprotocols of SPEC §3; the JSON protocol answers to the first.
pub const SUBPROTOCOL_PUSH: &str = "push-notification";

/// A parsed upgrade request.
pub struct Upgrade {
    pub accept_key: String,
    /// Echo `push-notification` when the UA offered it (Firefox does), or
    /// `push-extended-notification` when the UA offered only that.
    pub subprotocol: Option<&'static str>,
}

impl Upgrade {
    /// The socket speaks the extended protocol (SPEC §3.6).
    pub fn extended(&self) -> bool {
        self.subprotocol == Some(herald_engine::extended::SUBPROTOCOL)
    }
}

/// `GET /token` on the UA listener (SPEC §3.6): a plain HTTP request for a
/// fresh UA token, not a WebSocket upgrade.
pub fn is_token_request(bytes: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    matches!(request.parse(bytes), Ok(httparse::Status::Complete(_)))
        && request.method == Some("GET")
        && request.path.map(|path| path.split('?').next()) == Some(Some("/token"))
}

#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not yet a complete request head: read more.
    Incomplete,
    Malformed,
    /// A GET that is not an upgrade: the WebSocket's resource, asked for
    /// over plain HTTP (426).
    NotWebSocket,
    /// Any other method: the UA listener serves only GETs (the WebSocket and
    /// `GET /token`), so there is no such resource here (404). autopush's
    /// internal routes, such as `PUT /notif/<uaid>`, are not on this port.
    NoSuchResource,
}

/// Parses an HTTP upgrade request head; returns it with its length in bytes.
pub fn parse_upgrade(bytes: &[u8]) -> Result<(Upgrade, usize), HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Err(HandshakeError::Incomplete),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    if request.method != Some("GET") {
        return Err(HandshakeError::NoSuchResource);
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .and_then(|header| std::str::from_utf8(header.value).ok())
    };
    let upgrade_ok = header("upgrade").is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    let key = header("sec-websocket-key").ok_or(HandshakeError::NotWebSocket)?;
    if !upgrade_ok || header("sec-websocket-version") != Some("13") {
        return Err(HandshakeError::NotWebSocket);
    }
    let offered = |name: &str| {
        header("sec-websocket-protocol")
            .is_some_and(|offered| offered.split(',').any(|item| item.trim() == name))
    };
    let extended = herald_engine::extended::SUBPROTOCOL;
    let subprotocol = if offered(SUBPROTOCOL_PUSH) {
        Some(SUBPROTOCOL_PUSH)
    } else if offered(extended) {
        Some(extended)
    } else {
        None
    };
    let accept_key = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    Ok((
        Upgrade {
            accept_key,
            subprotocol,
        },
        length,
    ))
}

/// The 101 response. `permessage-deflate` is declined by not echoing it.
pub fn upgrade_response(upgrade: &Upgrade) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        upgrade.accept_key
    );
    if let Some(subprotocol) = upgrade.subprotocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {subprotocol}\r\n"));
    }
    response.push_str("\r\n");
    response.into_bytes()
}

/// What one complete client message amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Ping(Vec<u8>),
    Pong,
    Close,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Frame or reassembled message larger than the limit: close 1009.
    TooBig,
    /// Anything else that breaks RFC 6455 or is not UTF-8 text: close 1002/1007.
    Protocol(&'static str),
}

/// Reassembles client frames from a byte buffer. Holds only the pieces of a
/// fragmented message between calls; the caller owns the read buffer.
#[derive(Default)]
pub struct Decoder {
    fragments: Vec<u8>,
    fragmented: bool,
}

impl Decoder {
    /// Takes the next complete message off the front of `buffer`, draining the
    /// bytes it used. `Ok(None)`: need more bytes.
    pub fn next(
        &mut self,
        buffer: &mut Vec<u8>,
        message_bytes_max: usize,
    ) -> Result<Option<Incoming>, FrameError> {
        loop {
            let mut cursor = Cursor::new(buffer.as_slice());
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(_) => return Err(FrameError::Protocol("bad frame header")),
            };
            if length > message_bytes_max as u64 {
                return Err(FrameError::TooBig);
            }
            let header_bytes = cursor.position() as usize;
            let total = header_bytes + length as usize;
            if buffer.len() < total {
                return Ok(None);
            }
            let mask = header
                .mask
                .ok_or(FrameError::Protocol("client frames must be masked"))?;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(FrameError::Protocol("no extension was negotiated"));
            }
            let mut payload: Vec<u8> = buffer[header_bytes..total].to_vec();
            buffer.drain(..total);
            for (index, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[index % 4];
            }
            match header.opcode {
                OpCode::Control(control) => {
                    if !header.is_final || payload.len() > 125 {
                        return Err(FrameError::Protocol("bad control frame"));
                    }
                    match control {
                        Control::Ping => return Ok(Some(Incoming::Ping(payload))),
                        Control::Pong => return Ok(Some(Incoming::Pong)),
                        Control::Close => return Ok(Some(Incoming::Close)),
                        Control::Reserved(_) => {
                            return Err(FrameError::Protocol("reserved opcode"))
                        }
                    }
                }
                OpCode::Data(data) => {
                    match (data, self.fragmented) {
                        (Data::Text, false) => self.fragments.clear(),
                        (Data::Continue, true) => {}
                        (Data::Binary, _) => {
                            return Err(FrameError::Protocol(
                                "binary frames are not part of the protocol",
                            ))
                        }
                        _ => return Err(FrameError::Protocol("bad fragment sequence")),
                    }
                    if self.fragments.len() + payload.len() > message_bytes_max {
                        return Err(FrameError::TooBig);
                    }
                    self.fragments.extend_from_slice(&payload);
                    self.fragmented = !header.is_final;
                    if header.is_final {
                        let bytes = std::mem::take(&mut self.fragments);
                        let text = String::from_utf8(bytes)
                            .map_err(|_| FrameError::Protocol("text is not UTF-8"))?;
                        return Ok(Some(Incoming::Text(text)));
                    }
                }
            }
        }
    }
}

fn encode(frame: Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out
}

pub fn text_frame(text: &str) -> Vec<u8> {
    encode(Frame::message(
        text.as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        true,
    ))
}

pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    encode(Frame::close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    })))
}

pub fn ping_frame() -> Vec<u8> {
    encode(Frame::ping(Vec::new()))
}

pub fn pong_frame(payload: Vec<u8>) -> Vec<u8> {
    encode(Frame::pong(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(&mask);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4]),
        );
        out
    }

    #[test]
    fn reassembles_fragments_and_keeps_the_rest() {
        let mut buffer = masked(1, false, b"{\"a\"");
        buffer.extend(masked(0, true, b":1}"));
        buffer.extend(masked(1, true, b"{}"));
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.next(&mut buffer, 100).unwrap(),
            Some(Incoming::Text("{\"a\":1}".into()))
        );
        assert_eq!(buffer, masked(1, true, b"{}"));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let full = masked(1, true, b"hello");
        let mut buffer = full[..4].to_vec();
        let mut decoder = Decoder::default();
        assert_eq!(decoder.next(&mut buffer, 100).unwrap(), None);
        buffer.extend_from_slice(&full[4..]);
        assert_eq!(
            decoder.next(&mut buffer, 100).unwrap(),
            Some(Incoming::Text("hello".into()))
        );
    }

    #[test]
    fn refuses_oversize_unmasked_binary_and_bad_utf8() {
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.next(&mut masked(1, true, &[b'x'; 20]), 10),
            Err(FrameError::TooBig)
        );
        let mut unmasked = vec![0x81, 0x01, b'x'];
        assert!(matches!(
            decoder.next(&mut unmasked, 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            decoder.next(&mut masked(2, true, b"x"), 10),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            decoder.next(&mut masked(1, true, &[0xff, 0xfe]), 10),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn handshake_echoes_push_subprotocol() {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: push-notification\r\n\r\n";
        let (upgrade, length) = parse_upgrade(request).unwrap();
        assert_eq!(length, request.len());
        assert_eq!(upgrade.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(upgrade.subprotocol, Some(SUBPROTOCOL_PUSH));
        assert_eq!(
            parse_upgrade(&request[..20]).err(),
            Some(HandshakeError::Incomplete)
        );
    }

    /// Seeded smoke fuzz (CI has no libFuzzer): random and mutated frames
    /// never panic, and the decoder never holds more than the limit.
    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f4a3);
        let valid = [
            masked(1, false, b"{\"messageType\""),
            masked(0, true, b":\"hello\"}"),
            masked(9, true, b"p"),
        ]
        .concat();
        for _ in 0..20_000 {
            let mut bytes = if rng.gen_bool(0.5) {
                let len = rng.gen_range(0..64);
                (0..len).map(|_| rng.gen()).collect::<Vec<u8>>()
            } else {
                let mut bytes = valid.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] = rng.gen();
                }
                bytes.truncate(rng.gen_range(0..=bytes.len()));
                bytes
            };
            let mut decoder = Decoder::default();
            for _ in 0..8 {
                match decoder.next(&mut bytes, 64) {
                    Ok(Some(_)) => assert!(decoder.fragments.len() <= 64),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let _ = parse_upgrade(&[0xff; 300]);
    }
}
