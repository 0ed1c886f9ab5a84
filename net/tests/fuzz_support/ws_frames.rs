//! What turns a UA socket's bytes into messages: the upgrade request
//! (`websocket::parse_upgrade`) and the frame decoder (`websocket::Decoder`)
//! under its message size limit. Three kinds of input:
//!
//! - raw bytes, fed whole and in small reads: both must give the same
//!   messages and the same error (the UA's reads split frames anywhere);
//! - a UA's script (fragmented text, pings, pongs, a close, one broken
//!   frame) encoded as RFC 6455 client frames: the decoder must give back
//!   exactly the messages, and refuse at the frame that breaks the rules or
//!   takes a message past the limit;
//! - an upgrade request, raw or built from real header names.
//!
//! While waiting for more bytes the read buffer never holds more than one
//! frame's header and the limit, so a slow sender cannot grow it.

use herald_net::websocket::{self, Decoder, FrameError, HandshakeError, Incoming};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use super::Input;

/// The longest frame header (RFC 6455 §5.2: 2 + 8 length + 4 mask bytes).
const FRAME_HEADER_BYTES_MAX: usize = 14;
/// Control frames carry at most this much (RFC 6455 §5.5).
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// What the decoder gave, comparable across runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Text(String),
    Ping(Vec<u8>),
    Pong,
    Close,
    TooBig,
    Protocol,
}

/// Byte 0 picks the kind of input (`% 4`: 0 raw frames, 1 and 2 a script,
/// 3 an upgrade request).
pub fn ws_frames(data: &[u8]) -> u32 {
    let mut input = Input::new(data);
    match input.below(4) {
        0 => raw_frames(&mut input),
        1 | 2 => script(&mut input),
        _ => upgrade(&mut input),
    }
}

/// A hand-written input for [`ws_frames`]: `bytes` as raw frames under the
/// default message limit, read in one go.
pub fn raw(bytes: &[u8]) -> Vec<u8> {
    [&[0, RAW_LIMITS.len() as u8, 0, 0, 0, 0][..], bytes].concat()
}

/// A hand-written upgrade request for [`ws_frames`].
pub fn raw_upgrade(bytes: &[u8]) -> Vec<u8> {
    [&[3, 0][..], bytes].concat()
}

/// Inputs for the smoke test's corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let masked = |first: u8, payload: &[u8]| -> Vec<u8> {
        let mut frame = vec![first, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        frame
    };
    vec![
        raw(&masked(0x81, br#"{"messageType":"hello"}"#)),
        raw(&[
            masked(0x01, b"{\"a\""),
            masked(0x89, b"p"),
            masked(0x80, b":1}"),
        ]
        .concat()),
        raw(&[masked(0x88, &[3, 232]), masked(0x81, b"after close")].concat()),
        // A 64-bit length with the top bit set; then one just over the limit.
        raw(&[0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
        raw(&[0x81, 0xfe, 0x20, 0x01, 1, 2, 3, 4]),
        raw(&[0x81, 0x01, b'x']),
        raw_upgrade(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: push-extended-notification, push-notification\r\n\r\n",
        ),
        raw_upgrade(b"GET /token?x HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]
}

// ---- raw frames --------------------------------------------------------

/// Message limits for raw input: tiny (every limit is reached), at the
/// control frame bound, and the default.
const RAW_LIMITS: &[usize] = &[0, 16, 125, 126];

fn raw_frames(input: &mut Input) -> u32 {
    let limit = match input.below(RAW_LIMITS.len() + 1) {
        n if n < RAW_LIMITS.len() => RAW_LIMITS[n],
        _ => herald_engine::limits::Limits::default().ws_message_bytes_max,
    };
    let reads: Vec<usize> = (0..4).map(|_| input.byte() as usize % 17).collect();
    let bytes = input.rest();
    let whole = decode(bytes, &[], limit);
    let in_pieces = decode(bytes, &reads, limit);
    assert_eq!(whole, in_pieces, "read whole and read in pieces {reads:?}");
    outcome(&whole)
}

/// Feeds `bytes` to one decoder in reads of the sizes `reads` cycles
/// through (a 0 is a read of one byte; no sizes: one read), taking every
/// complete message after each read, up to the first error.
fn decode(bytes: &[u8], reads: &[usize], limit: usize) -> Vec<Event> {
    let mut decoder = Decoder::default();
    let mut buffer = Vec::new();
    let mut events = Vec::new();
    let mut fed = 0;
    let mut read = 0;
    loop {
        let size = match reads.get(read % reads.len().max(1)) {
            None => bytes.len(),
            Some(&size) => size.max(1),
        };
        read += 1;
        let end = (fed + size).min(bytes.len());
        buffer.extend_from_slice(&bytes[fed..end]);
        fed = end;
        loop {
            match decoder.next(&mut buffer, limit) {
                Ok(None) => {
                    assert!(
                        buffer.len() < FRAME_HEADER_BYTES_MAX + limit,
                        "{} bytes buffered waiting for a frame (limit {limit})",
                        buffer.len()
                    );
                    break;
                }
                Ok(Some(message)) => events.push(event(message, limit)),
                Err(FrameError::TooBig) => {
                    events.push(Event::TooBig);
                    return events;
                }
                Err(FrameError::Protocol(reason)) => {
                    assert!(!reason.is_empty());
                    events.push(Event::Protocol);
                    return events;
                }
            }
        }
        if fed == bytes.len() {
            return events;
        }
    }
}

fn event(message: Incoming, limit: usize) -> Event {
    match message {
        Incoming::Text(text) => {
            assert!(text.len() <= limit, "a {}-byte message passed", text.len());
            Event::Text(text)
        }
        Incoming::Ping(payload) => {
            assert!(payload.len() <= CONTROL_PAYLOAD_BYTES_MAX.min(limit));
            Event::Ping(payload)
        }
        Incoming::Pong => Event::Pong,
        Incoming::Close => Event::Close,
    }
}

fn outcome(events: &[Event]) -> u32 {
    let kinds = events.iter().fold(0u32, |acc, event| {
        acc | match event {
            Event::Text(_) => 1,
            Event::Ping(_) => 2,
            Event::Pong => 4,
            Event::Close => 8,
            Event::TooBig => 16,
            Event::Protocol => 32,
        }
    });
    kinds | (events.len().min(7) as u32) << 6
}

// ---- a UA's script -----------------------------------------------------

/// Message limits for scripts; at least the control frame bound, so a
/// control frame is never too big and the model stays the RFC's.
const SCRIPT_LIMITS: &[usize] = &[126, 200, 1024, 8192];

/// Builds client frames and the events RFC 6455 and the limit call for.
struct Script {
    bytes: Vec<u8>,
    expected: Vec<Event>,
    limit: usize,
    /// The data frames of the message in progress, if one is.
    message: Option<Vec<u8>>,
}

/// One frame as a client writes it: `mask` applied to the payload (None:
/// unmasked, which a client must not send). Built from its header, since
/// tungstenite's other constructors each make one kind of frame.
fn client_frame(out: &mut Vec<u8>, header: FrameHeader, mask: Option<[u8; 4]>, payload: Vec<u8>) {
    let header = FrameHeader { mask, ..header };
    // Writing into a Vec cannot fail.
    let _ = Frame::from_payload(header, tungstenite::Bytes::from(payload)).format(out);
}

fn header(opcode: OpCode, is_final: bool) -> FrameHeader {
    FrameHeader {
        is_final,
        opcode,
        ..FrameHeader::default()
    }
}

impl Script {
    fn frame(&mut self, input: &mut Input, opcode: OpCode, is_final: bool, payload: Vec<u8>) {
        let mask = Some(input.array());
        client_frame(&mut self.bytes, header(opcode, is_final), mask, payload);
    }

    /// One data frame of a text message; false once the script must stop.
    fn data(&mut self, input: &mut Input, payload: Vec<u8>, is_final: bool) -> bool {
        let (opcode, mut message) = match self.message.take() {
            None => (OpCode::Data(Data::Text), Vec::new()),
            Some(message) => (OpCode::Data(Data::Continue), message),
        };
        message.extend_from_slice(&payload);
        self.frame(input, opcode, is_final, payload);
        if message.len() > self.limit {
            self.expected.push(Event::TooBig);
            return false;
        }
        if !is_final {
            self.message = Some(message);
            return true;
        }
        match String::from_utf8(message) {
            Ok(text) => {
                self.expected.push(Event::Text(text));
                true
            }
            Err(_) => {
                self.expected.push(Event::Protocol);
                false
            }
        }
    }

    /// A frame the decoder must refuse as a protocol error.
    fn broken(&mut self, input: &mut Input) {
        let mut payload = input.take(8).to_vec();
        let frame = match input.below(7) {
            0 => header(OpCode::Data(Data::Binary), true),
            1 => header(OpCode::Data(Data::Reserved(3)), true),
            2 => header(OpCode::Control(Control::Reserved(11)), true),
            3 => header(OpCode::Control(Control::Ping), false),
            4 => {
                payload = vec![b'p'; CONTROL_PAYLOAD_BYTES_MAX + 1];
                header(OpCode::Control(Control::Ping), true)
            }
            5 => {
                // Out of sequence: a continuation with no message open, or
                // a new message while one is.
                let opcode = match self.message {
                    None => Data::Continue,
                    Some(_) => Data::Text,
                };
                header(OpCode::Data(opcode), true)
            }
            _ => FrameHeader {
                rsv1: true,
                ..header(OpCode::Data(Data::Text), true)
            },
        };
        // Unmasked now and then: a client frame must be masked (RFC 6455 §5.1).
        let mask = (!input.one_in(4)).then(|| input.array());
        client_frame(&mut self.bytes, frame, mask, payload);
        self.expected.push(Event::Protocol);
    }
}

fn text_payload(input: &mut Input, room: usize) -> Vec<u8> {
    match input.below(5) {
        0 => input
            .pick(&[
                &br#"{"messageType":"hello","use_webpush":true}"#[..],
                br#"{"messageType":"ack","updates":[]}"#,
                "\u{e9}t\u{e9}".as_bytes(),
                b"",
            ])
            .to_vec(),
        // Up to the room left under the limit, or just past it.
        1 => vec![b'x'; room + input.below(3)],
        2 => vec![b'y'; input.below(room + 1)],
        _ => input.chunk().to_vec(),
    }
}

fn script(input: &mut Input) -> u32 {
    let mut script = Script {
        bytes: Vec::new(),
        expected: Vec::new(),
        limit: input.pick(SCRIPT_LIMITS),
        message: None,
    };
    let steps = 1 + input.below(12);
    for _ in 0..steps {
        let going = match input.below(10) {
            0..=4 => {
                let used = script.message.as_ref().map_or(0, Vec::len);
                let room = script.limit.saturating_sub(used);
                let payload = text_payload(input, room);
                let is_final = !input.one_in(3);
                script.data(input, payload, is_final)
            }
            5 => {
                let mut payload = input.chunk().to_vec();
                payload.truncate(CONTROL_PAYLOAD_BYTES_MAX);
                script.frame(input, OpCode::Control(Control::Ping), true, payload.clone());
                script.expected.push(Event::Ping(payload));
                true
            }
            6 => {
                let payload = input.take(4).to_vec();
                script.frame(input, OpCode::Control(Control::Pong), true, payload);
                script.expected.push(Event::Pong);
                true
            }
            7 => {
                let len = input.below(4);
                let payload = input.take(len).to_vec();
                script.frame(input, OpCode::Control(Control::Close), true, payload);
                script.expected.push(Event::Close);
                true
            }
            8 => {
                script.broken(input);
                false
            }
            _ => true,
        };
        if !going {
            break;
        }
    }
    let reads: Vec<usize> = (0..4).map(|_| input.below(40)).collect();
    let Script {
        bytes,
        expected,
        limit,
        ..
    } = script;
    assert_eq!(decode(&bytes, &[], limit), expected, "read whole");
    assert_eq!(
        decode(&bytes, &reads, limit),
        expected,
        "reads of {reads:?}"
    );
    outcome(&expected) | 1 << 10
}

// ---- the upgrade request -----------------------------------------------

fn upgrade_request(input: &mut Input) -> Vec<u8> {
    let mut out = input
        .pick(&[
            &b"GET / HTTP/1.1\r\n"[..],
            b"GET /token HTTP/1.1\r\n",
            b"POST / HTTP/1.1\r\n",
        ])
        .to_vec();
    let headers: &[(&str, &[&str])] = &[
        ("Upgrade", &["websocket", "WebSocket", "h2c"]),
        ("Connection", &["Upgrade", "keep-alive, Upgrade"]),
        (
            "Sec-WebSocket-Key",
            &["dGhlIHNhbXBsZSBub25jZQ==", "", " x "],
        ),
        ("Sec-WebSocket-Version", &["13", "8", " 13"]),
        (
            "Sec-WebSocket-Protocol",
            &[
                "push-notification",
                "push-extended-notification",
                "chat, push-extended-notification",
                ",",
            ],
        ),
        ("Sec-WebSocket-Extensions", &["permessage-deflate"]),
    ];
    for _ in 0..input.below(10) {
        let (name, values) = input.pick(headers);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        if input.one_in(8) {
            out.extend_from_slice(input.chunk());
        } else {
            out.extend_from_slice(input.pick(values).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !input.one_in(8) {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn upgrade(input: &mut Input) -> u32 {
    let bytes = if input.one_in(2) {
        input.rest().to_vec()
    } else {
        upgrade_request(input)
    };
    let token = u32::from(websocket::is_token_request(&bytes));
    let (upgrade, length) = match websocket::parse_upgrade(&bytes) {
        Err(HandshakeError::Incomplete) => return 2000 + token,
        Err(HandshakeError::Malformed) => return 2010 + token,
        Err(HandshakeError::NotWebSocket) => return 2020 + token,
        Err(HandshakeError::NoSuchResource) => return 2030 + token,
        Ok(parsed) => parsed,
    };
    assert!(length > 0 && length <= bytes.len());
    assert_eq!(
        base64_decoded_len(&upgrade.accept_key),
        Some(20),
        "the accept key is base64 of a SHA-1"
    );
    // The head alone parses the same, and no shorter prefix is complete:
    // the UA's reads may split the request anywhere.
    let (alone, alone_length) = websocket::parse_upgrade(&bytes[..length]).expect("the head alone");
    assert_eq!(
        (alone.accept_key.as_str(), alone.subprotocol, alone_length),
        (upgrade.accept_key.as_str(), upgrade.subprotocol, length)
    );
    for cut in [0, length / 2, length - 1] {
        assert_eq!(
            websocket::parse_upgrade(&bytes[..cut]).err(),
            Some(HandshakeError::Incomplete),
            "the first {cut} bytes of {length}"
        );
    }
    // The 101 Herald answers is a well-formed response that carries the key.
    let response = websocket::upgrade_response(&upgrade);
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut parsed = httparse::Response::new(&mut headers);
    assert_eq!(
        parsed.parse(&response).ok(),
        Some(httparse::Status::Complete(response.len()))
    );
    assert_eq!(parsed.code, Some(101));
    let accept = parsed
        .headers
        .iter()
        .find(|header| header.name == "Sec-WebSocket-Accept")
        .map(|header| header.value);
    assert_eq!(accept, Some(upgrade.accept_key.as_bytes()));
    2100 + 10 * u32::from(upgrade.extended()) + u32::from(upgrade.subprotocol.is_some())
}

fn base64_decoded_len(text: &str) -> Option<usize> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .map(|bytes| bytes.len())
}
