//! A WebSocket UA's bytes, without IO: the upgrade request and the check of
//! its answer, masked text frames out, JSON messages in. Framing comes from
//! tungstenite; buffers are reused, so that a connection costs little CPU
//! per message.

use std::io::{self, Cursor};
use std::net::SocketAddr;

use serde_json::Value;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use super::{protocol_error, Buffers, Wire};

pub struct UaWire {
    /// The `Sec-WebSocket-Key` sent, until the upgrade is answered.
    key: Option<String>,
    buffers: Buffers,
}

impl UaWire {
    /// A connection to `target` with its upgrade request queued.
    pub fn new(target: SocketAddr) -> UaWire {
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: push-notification\r\n\r\n"
        );
        UaWire {
            key: Some(key),
            buffers: Buffers {
                output: request.into_bytes(),
                ..Buffers::default()
            },
        }
    }

    /// Takes the server's answer to the upgrade off the input: `Ok(false)`
    /// while it is incomplete, an error unless it is a valid 101.
    pub fn take_upgrade(&mut self) -> io::Result<bool> {
        let Some(key) = &self.key else {
            return Ok(true);
        };
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response.parse(&self.buffers.input) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(error) => return Err(protocol_error(format!("upgrade answer: {error}"))),
        };
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
        self.buffers.input.drain(..length);
        self.key = None;
        Ok(true)
    }

    /// Queues one masked text frame.
    pub fn queue(&mut self, text: &str) {
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            mask: Some(rand::random()),
            ..FrameHeader::default()
        };
        // Writing into a Vec cannot fail.
        let _ = Frame::from_payload(header, text.as_bytes().to_vec().into())
            .format(&mut self.buffers.output);
    }

    /// The next complete text message read, if any. Control frames are
    /// skipped; a close frame is an error (the server hung up).
    pub fn take_message(&mut self) -> io::Result<Option<Value>> {
        let input = &mut self.buffers.input;
        loop {
            let mut cursor = Cursor::new(input.as_slice());
            let Some((header, length)) = FrameHeader::parse(&mut cursor)
                .map_err(|error| protocol_error(format!("frame: {error}")))?
            else {
                return Ok(None);
            };
            let start = cursor.position() as usize;
            let end = usize::try_from(length)
                .ok()
                .and_then(|length| start.checked_add(length))
                .ok_or_else(|| protocol_error("frame length"))?;
            if input.len() < end {
                return Ok(None);
            }
            let parsed = match header.opcode {
                OpCode::Data(Data::Text) => Some(
                    serde_json::from_slice(&input[start..end])
                        .map_err(|error| protocol_error(format!("JSON: {error}"))),
                ),
                OpCode::Control(Control::Close) => Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "server closed the socket",
                ))),
                _ => None,
            };
            input.drain(..end);
            if let Some(parsed) = parsed {
                return parsed.map(Some);
            }
        }
    }
}

impl Wire for UaWire {
    fn buffers(&mut self) -> &mut Buffers {
        &mut self.buffers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let frame = Frame::message(payload.to_vec(), opcode, true);
        frame.format(&mut out).unwrap();
        out
    }

    fn upgraded() -> UaWire {
        let mut wire = UaWire::new("127.0.0.1:1".parse().unwrap());
        wire.key = None;
        wire.buffers.output.clear();
        wire
    }

    #[test]
    fn upgrade_needs_the_right_accept_key() {
        let mut wire = UaWire::new("127.0.0.1:1".parse().unwrap());
        let request = String::from_utf8(wire.buffers().output().to_vec()).unwrap();
        let key = request
            .lines()
            .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .to_owned();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let answer =
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        let (head, tail) = answer.split_at(20);
        wire.buffers().received(head.as_bytes()).unwrap();
        assert!(!wire.take_upgrade().unwrap());
        wire.buffers().received(tail.as_bytes()).unwrap();
        wire.buffers()
            .received(&server_frame(OpCode::Data(Data::Text), b"{}"))
            .unwrap();
        assert!(wire.take_upgrade().unwrap());
        assert_eq!(wire.take_message().unwrap(), Some(serde_json::json!({})));

        let mut wrong = UaWire::new("127.0.0.1:1".parse().unwrap());
        wrong
            .buffers()
            .received(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n")
            .unwrap();
        assert!(wrong.take_upgrade().is_err());
    }

    #[test]
    fn messages_come_whole_and_close_is_an_error() {
        let mut wire = upgraded();
        let frame = server_frame(OpCode::Data(Data::Text), br#"{"a":1}"#);
        wire.buffers().received(&frame[..3]).unwrap();
        assert_eq!(wire.take_message().unwrap(), None);
        wire.buffers().received(&frame[3..]).unwrap();
        wire.buffers()
            .received(&server_frame(OpCode::Control(Control::Ping), b""))
            .unwrap();
        wire.buffers()
            .received(&server_frame(OpCode::Control(Control::Close), b""))
            .unwrap();
        assert_eq!(
            wire.take_message().unwrap(),
            Some(serde_json::json!({"a": 1}))
        );
        let error = wire.take_message().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn queued_frames_are_masked_text() {
        let mut wire = upgraded();
        wire.queue("hi");
        let mut cursor = Cursor::new(wire.buffers().output());
        let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(header.opcode, OpCode::Data(Data::Text));
        assert!(header.mask.is_some(), "client frames are masked");
        assert_eq!(length, 2);
        let buffers = wire.buffers();
        let total = buffers.output().len();
        buffers.sent(total);
        assert!(buffers.output().is_empty());
    }
}
