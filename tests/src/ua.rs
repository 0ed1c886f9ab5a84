//! The UA: a WebSocket client over a blocking `TcpStream` (or TLS over
//! one, `wss://`), with a hand-rolled handshake so that a server which does
//! not echo the subprotocol is accepted, as Firefox does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};

use serde_json::{json, Value};
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;

use crate::http_raw::read_http_head;
use crate::util::{is_uaid, new_channel_id, random_bytes};
use crate::DEADLINE;

/// One thing read from the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: its code (None when the frame carried no code) and reason.
    Close(Option<u16>, String),
    /// The TCP connection ended without a close frame (or after one was
    /// already consumed); the string says how.
    Eof(String),
    /// Nothing arrived within the window.
    Timeout,
}

/// A UA's connection: plain TCP, or TLS over it.
pub enum UaConn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl UaConn {
    /// The TCP socket (underneath TLS): timeouts, shutdown, raw writes.
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self {
            UaConn::Plain(tcp) => tcp,
            UaConn::Tls(tls) => &mut tls.sock,
        }
    }
}

impl Read for UaConn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            UaConn::Plain(tcp) => tcp.read(buf),
            UaConn::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for UaConn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            UaConn::Plain(tcp) => tcp.write(buf),
            UaConn::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UaConn::Plain(tcp) => tcp.flush(),
            UaConn::Tls(tls) => tls.flush(),
        }
    }
}

/// A UA: a WebSocket over a blocking `TcpStream` (or TLS over one) with
/// read timeouts.
pub struct WsClient {
    ws: WebSocket<UaConn>,
    /// Set by [`WsClient::hello`].
    pub uaid: Option<String>,
    /// `Sec-WebSocket-Protocol` the server answered with, if any.
    pub subprotocol: Option<String>,
    /// `Sec-WebSocket-Extensions` the server answered with, if any.
    pub extensions: Option<String>,
}

/// How a test connects (handshake details).
#[derive(Clone, Debug)]
pub struct Handshake {
    /// `Sec-WebSocket-Protocol` to offer; None: no header at all.
    pub protocol: Option<String>,
    /// Extra request header lines.
    pub extra_headers: Vec<(String, String)>,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            protocol: Some("push-notification".into()),
            extra_headers: vec![],
        }
    }
}

impl WsClient {
    /// Connect as Firefox does: `Sec-WebSocket-Protocol: push-notification`
    /// (a server that does not echo it is accepted). Panics on failure.
    pub fn connect(addr: &str) -> WsClient {
        WsClient::connect_with(addr, &Handshake::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn connect_with(addr: &str, hs: &Handshake) -> Result<WsClient, String> {
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .unwrap();
        let stream = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        WsClient::handshake_on(stream, addr, hs)
    }

    /// Connect over TLS (`wss://`), trusting `config`'s roots only, with
    /// the default handshake. Panics on failure.
    pub fn connect_tls(addr: &str, config: Arc<ClientConfig>) -> WsClient {
        let stream = crate::tls::tls_connect(addr, config).unwrap_or_else(|e| panic!("{e}"));
        WsClient::handshake_on_conn(UaConn::Tls(Box::new(stream)), addr, &Handshake::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The WebSocket handshake on a connected stream (one that already sent
    /// a PROXY header, say); `addr` is for the Host header.
    pub fn handshake_on(stream: TcpStream, addr: &str, hs: &Handshake) -> Result<WsClient, String> {
        stream.set_nodelay(true).ok();
        WsClient::handshake_on_conn(UaConn::Plain(stream), addr, hs)
    }

    fn handshake_on_conn(
        mut stream: UaConn,
        addr: &str,
        hs: &Handshake,
    ) -> Result<WsClient, String> {
        let key = tungstenite::handshake::client::generate_key();
        let mut req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nConnection: keep-alive, Upgrade\r\n\
             Pragma: no-cache\r\nCache-Control: no-cache\r\nUpgrade: websocket\r\n"
        );
        if let Some(p) = &hs.protocol {
            req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        for (k, v) in &hs.extra_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("write handshake: {e}"))?;
        let (head, leftover) = read_http_head(&mut stream, Duration::from_secs(5))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if code != 101 {
            return Err(format!(
                "WebSocket handshake refused: {status_line:?}\n{head}"
            ));
        }
        let mut headers = vec![];
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let accept = get("sec-websocket-accept").ok_or("no Sec-WebSocket-Accept")?;
        let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
        if accept != expected {
            return Err(format!(
                "bad Sec-WebSocket-Accept {accept:?}, expected {expected:?}"
            ));
        }
        let subprotocol = get("sec-websocket-protocol");
        if let Some(p) = &subprotocol {
            let offered: Vec<&str> = hs
                .protocol
                .as_deref()
                .map(|o| o.split(',').map(|s| s.trim()).collect())
                .unwrap_or_default();
            if !offered.contains(&p.as_str()) {
                return Err(format!(
                    "server chose subprotocol {p:?} that was not offered ({offered:?})"
                ));
            }
        }
        let extensions = get("sec-websocket-extensions");
        let ws = WebSocket::from_partially_read(stream, leftover, Role::Client, None);
        Ok(WsClient {
            ws,
            uaid: None,
            subprotocol,
            extensions,
        })
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.ws.get_mut().tcp()
    }

    /// The certificate the server presented (on `wss://`).
    pub fn peer_certificate(&mut self) -> Option<Vec<u8>> {
        match self.ws.get_mut() {
            UaConn::Plain(_) => None,
            UaConn::Tls(tls) => Some(tls.conn.peer_certificates()?.first()?.to_vec()),
        }
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .unwrap_or_else(|e| panic!("send text frame: {e}"));
    }

    /// Send a text frame; errors are returned (the server may have closed).
    pub fn try_send_text(&mut self, s: &str) -> Result<(), String> {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .map_err(|e| e.to_string())
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string())
    }

    pub fn send_ping(&mut self, payload: &[u8]) {
        self.ws
            .send(Message::Ping(payload.to_vec().into()))
            .unwrap_or_else(|e| panic!("send ping: {e}"));
    }

    pub fn send_binary(&mut self, payload: &[u8]) {
        self.ws
            .send(Message::Binary(payload.to_vec().into()))
            .unwrap_or_else(|e| panic!("send binary: {e}"));
    }

    /// Write one masked frame with raw bytes, bypassing tungstenite's checks
    /// (e.g. a text frame that is not UTF-8).
    pub fn send_raw_frame(&mut self, opcode: u8, payload: &[u8], fin: bool) -> std::io::Result<()> {
        let f = masked_frame(opcode, payload, fin);
        self.send_raw_bytes(&f)
    }

    /// Write raw bytes on the TCP stream (e.g. a frame header with no payload).
    pub fn send_raw_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.ws.flush().ok();
        let s = self.ws.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    /// Read the next event within `within`.
    pub fn next_event(&mut self, within: Duration) -> WsEvent {
        let deadline = Instant::now() + within;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return WsEvent::Timeout;
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            let _ = self.ws.get_mut().tcp().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Message::Text(t)) => return WsEvent::Text(t.to_string()),
                Ok(Message::Binary(b)) => return WsEvent::Binary(b.to_vec()),
                Ok(Message::Ping(p)) => return WsEvent::Ping(p.to_vec()),
                Ok(Message::Pong(p)) => return WsEvent::Pong(p.to_vec()),
                Ok(Message::Close(f)) => {
                    return match f {
                        Some(f) => WsEvent::Close(Some(u16::from(f.code)), f.reason.to_string()),
                        None => WsEvent::Close(None, String::new()),
                    }
                }
                Ok(Message::Frame(_)) => continue,
                // A signal to the test process (a child exiting) interrupts
                // the read; nothing was lost.
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::Interrupted =>
                {
                    continue
                }
                Err(tungstenite::Error::ConnectionClosed) => {
                    return WsEvent::Eof("connection closed".into())
                }
                Err(tungstenite::Error::AlreadyClosed) => {
                    return WsEvent::Eof("already closed".into())
                }
                Err(e) => return WsEvent::Eof(format!("{e}")),
            }
        }
    }

    /// Next text frame parsed as JSON, within `within`. Server keepalive
    /// pings are answered and skipped (explicitly); anything else that is not
    /// a text frame (close, EOF, timeout, binary, pong) panics with what came.
    pub fn recv_json_with_deadline(&mut self, within: Duration) -> Value {
        match self.try_recv_json(within) {
            Some(v) => v,
            None => panic!("no message from the server within {within:?}"),
        }
    }

    /// Like [`recv_json_with_deadline`] but `None` when nothing arrives in time.
    pub fn try_recv_json(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                WsEvent::Text(t) => {
                    return Some(
                        serde_json::from_str(&t)
                            .unwrap_or_else(|e| panic!("server sent non-JSON text {t:?}: {e}")),
                    )
                }
                WsEvent::Timeout => return None,
                WsEvent::Ping(_) => continue, // keepalive from the server, pong is automatic
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Read a text frame and require it to be JSON with this messageType.
    pub fn recv_type(&mut self, message_type: &str, within: Duration) -> Value {
        let v = self.recv_json_with_deadline(within);
        assert_eq!(
            v["messageType"], message_type,
            "expected messageType {message_type:?}, got {v}"
        );
        v
    }

    /// Bounded negative check: no text frame at all within `within`.
    pub fn expect_silence(&mut self, within: Duration) {
        if let Some(v) = self.try_recv_json(within) {
            panic!("expected no message within {within:?}, got {v}");
        }
    }

    /// Expect a close frame within `within` and return its code. A text frame,
    /// EOF without a close frame, or timeout panics.
    pub fn expect_close_with_deadline(&mut self, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                WsEvent::Close(Some(c), _) => return c,
                WsEvent::Close(None, _) => panic!("close frame without a status code"),
                WsEvent::Ping(_) => continue,
                other => panic!("expected a close frame within {within:?}, got {other:?}"),
            }
        }
    }

    /// Read until a close frame, returning the text frames seen before it and
    /// the close code. EOF without close / timeout panics.
    pub fn drain_until_close(&mut self, within: Duration) -> (Vec<String>, u16) {
        let deadline = Instant::now() + within;
        let mut texts = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                WsEvent::Text(t) => texts.push(t),
                WsEvent::Close(Some(c), _) => return (texts, c),
                WsEvent::Close(None, _) => {
                    panic!("close frame without a status code (after {texts:?})")
                }
                WsEvent::Ping(_) | WsEvent::Pong(_) => continue,
                other => panic!(
                    "expected a close frame within {within:?}, got {other:?} (after {texts:?})"
                ),
            }
        }
    }

    /// Expect the connection to end (close frame or EOF) within `within`;
    /// returns the close code if there was a close frame.
    pub fn expect_closed_or_eof(&mut self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                WsEvent::Close(c, _) => return c,
                WsEvent::Eof(_) => return None,
                WsEvent::Ping(_) | WsEvent::Pong(_) => continue,
                other => panic!("expected the connection to end within {within:?}, got {other:?}"),
            }
        }
    }

    /// Send a hello and return the reply (no status check).
    pub fn hello_raw(&mut self, hello: &Value) -> Value {
        self.send_json(hello);
        let r = self.recv_json_with_deadline(DEADLINE);
        assert_eq!(
            r["messageType"], "hello",
            "hello reply has messageType hello: {r}"
        );
        if let Some(u) = r["uaid"].as_str() {
            self.uaid = Some(u.to_string());
        }
        r
    }

    /// Hello as Firefox sends it (`broadcasts: {}`), with an optional UAID,
    /// optional channelIDs (None: field omitted) and `use_webpush` (false:
    /// field omitted, i.e. SimplePush mode). Asserts status 200 and a UAID.
    pub fn hello(
        &mut self,
        uaid: Option<&str>,
        channel_ids: Option<&[String]>,
        use_webpush: bool,
    ) -> Value {
        let mut h = json!({"messageType": "hello", "broadcasts": {}});
        if let Some(u) = uaid {
            h["uaid"] = json!(u);
        }
        if let Some(c) = channel_ids {
            h["channelIDs"] = json!(c);
        }
        if use_webpush {
            h["use_webpush"] = json!(true);
        }
        let r = self.hello_raw(&h);
        assert_eq!(r["status"], 200, "hello status 200: {r}");
        let u = r["uaid"]
            .as_str()
            .unwrap_or_else(|| panic!("hello reply has a string uaid: {r}"));
        assert!(is_uaid(u), "uaid is 32 lower-case hex: {u:?}");
        r
    }

    pub fn uaid(&self) -> String {
        self.uaid.clone().expect("hello done")
    }

    /// Send register (optionally with a VAPID key) and return the reply.
    pub fn register_reply(&mut self, channel_id: &str, key: Option<&str>) -> Value {
        let mut m = json!({"messageType": "register", "channelID": channel_id});
        if let Some(k) = key {
            m["key"] = json!(k);
        }
        self.send_json(&m);
        let r = self.recv_json_with_deadline(DEADLINE);
        assert_eq!(r["messageType"], "register", "register reply: {r}");
        r
    }

    /// Register a channel; asserts status 200 and returns the pushEndpoint.
    pub fn register(&mut self, channel_id: &str) -> String {
        let r = self.register_reply(channel_id, None);
        assert_eq!(r["status"], 200, "register status 200: {r}");
        assert!(
            r["channelID"]
                .as_str()
                .map(|c| c.eq_ignore_ascii_case(channel_id))
                .unwrap_or(false),
            "register reply echoes the channelID: {r}"
        );
        r["pushEndpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("register reply has pushEndpoint: {r}"))
            .to_string()
    }

    /// Register a fresh random channel; returns (channelID, endpoint).
    pub fn register_new(&mut self) -> (String, String) {
        let c = new_channel_id();
        let e = self.register(&c);
        (c, e)
    }

    pub fn unregister(&mut self, channel_id: &str) -> Value {
        self.send_json(&json!({"messageType": "unregister", "channelID": channel_id}));
        let r = self.recv_json_with_deadline(DEADLINE);
        assert_eq!(r["messageType"], "unregister", "unregister reply: {r}");
        r
    }

    /// Ack one update (`version` is a JSON string for Web Push ids, a number for SimplePush).
    pub fn ack(&mut self, channel_id: &str, version: Value) {
        self.send_json(&json!({"messageType": "ack", "updates": [
            {"channelID": channel_id, "version": version, "code": 100}
        ]}));
    }

    /// Ack a Web Push notification as Firefox does.
    pub fn ack_notification(&mut self, n: &Value) {
        let c = n["channelID"].as_str().expect("channelID").to_string();
        self.ack(&c, n["version"].clone());
    }

    /// Next message, which must be a `notification`.
    pub fn recv_notification(&mut self, within: Duration) -> Value {
        self.recv_type("notification", within)
    }

    /// Read JSON messages until none arrives for `quiet` (bounded negative
    /// window); returns them all (possibly none).
    pub fn collect_until_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out = vec![];
        while let Some(v) = self.try_recv_json(quiet) {
            out.push(v);
            assert!(out.len() < 10_000, "runaway stream of messages");
        }
        out
    }

    /// Close our side politely (best effort).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match self.next_event(Duration::from_millis(100)) {
                WsEvent::Close(..) | WsEvent::Eof(_) => break,
                _ => {}
            }
        }
    }

    /// Drop the TCP connection abruptly (no close frame).
    pub fn drop_tcp(mut self) {
        let _ = self.ws.get_mut().tcp().shutdown(Shutdown::Both);
    }
}

/// One client (masked) WebSocket frame as bytes.
pub fn masked_frame(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | (opcode & 0x0f)];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = random_bytes(4);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::CloseFrame;

    #[test]
    fn ws_client_against_tungstenite_server_without_subprotocol_echo() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut ws = tungstenite::accept(s).unwrap();
            // echo one text, answer a raw text frame, then close 1008
            let m = ws.read().unwrap();
            ws.send(m).unwrap();
            let m = ws.read().unwrap();
            assert_eq!(m, Message::Text("hi".into()));
            ws.send(Message::Text("PONG".into())).unwrap();
            ws.close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "bye".into(),
            }))
            .unwrap();
            while ws.read().is_ok() {}
        });
        let mut c = WsClient::connect(&addr);
        assert_eq!(c.subprotocol, None);
        c.send_json(&json!({"a": 1}));
        assert_eq!(c.recv_json_with_deadline(DEADLINE), json!({"a": 1}));
        c.send_raw_frame(0x1, b"hi", true).unwrap();
        assert_eq!(c.next_event(DEADLINE), WsEvent::Text("PONG".into()));
        assert_eq!(c.expect_close_with_deadline(DEADLINE), 1008);
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn silence_and_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut ws = tungstenite::accept(s).unwrap();
            let _ = ws.read();
        });
        let mut c = WsClient::connect(&addr);
        let t0 = Instant::now();
        c.expect_silence(Duration::from_millis(200));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(c.next_event(Duration::from_millis(50)), WsEvent::Timeout);
        c.drop_tcp();
        t.join().unwrap();
    }
}
