//! Hand-written HTTP exchanges: exact bytes out, one response in, then a
//! watch for the server closing the connection.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Result of a hand-written HTTP exchange.
#[derive(Debug)]
pub struct RawHttp {
    /// Status code, None when no response came.
    pub status: Option<u16>,
    pub head: String,
    pub body: Vec<u8>,
    /// The server closed the connection (EOF or reset) after the response,
    /// within the window given.
    pub closed: bool,
    /// How the read ended (for messages).
    pub note: String,
}

/// Write raw bytes to `addr`, read one response; then watch `close_window`
/// for the server closing the connection.
pub fn raw_http(addr: &str, request: &[u8], within: Duration, close_window: Duration) -> RawHttp {
    raw_http_on(RawConn::connect(addr), request, within, close_window)
}

/// [`raw_http`] on a connection opened elsewhere.
pub fn raw_http_on(
    mut conn: RawConn,
    request: &[u8],
    within: Duration,
    close_window: Duration,
) -> RawHttp {
    let mut response = conn.exchange(request, within);
    if !conn.unread.is_empty() {
        let extra = format!("{} extra bytes after response; ", conn.unread.len());
        response.note.push_str(&extra);
    }
    if !response.closed {
        let (closed, note) = watch_close(&mut conn.stream, close_window);
        response.closed = closed;
        response.note.push_str(&note);
    }
    response
}

/// One connection for several requests (keep-alive, pipelined): each
/// exchange writes a request and reads its whole response; bytes past one
/// response wait for the next read.
pub struct RawConn {
    stream: TcpStream,
    unread: Vec<u8>,
}

impl RawConn {
    pub fn connect(addr: &str) -> RawConn {
        let sa = addr.to_socket_addrs().unwrap().next().unwrap();
        RawConn::on(TcpStream::connect_timeout(&sa, Duration::from_secs(5)).expect("connect"))
    }

    /// A connection opened elsewhere (from a chosen source address, say).
    pub fn on(stream: TcpStream) -> RawConn {
        stream.set_nodelay(true).ok();
        RawConn {
            stream,
            unread: Vec::new(),
        }
    }

    /// Writes `request` and reads one response (`closed`: the server closed
    /// the connection instead of, or while, answering).
    pub fn exchange(&mut self, request: &[u8], within: Duration) -> RawHttp {
        let mut note = String::new();
        if let Err(e) = self.stream.write_all(request) {
            note = format!("write error: {e}; ");
        }
        let mut response = self.read_response(within);
        response.note.insert_str(0, &note);
        response
    }

    /// Writes `bytes` (any number of requests) and reads nothing.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write the requests");
    }

    /// Reads the next response.
    pub fn read_response(&mut self, within: Duration) -> RawHttp {
        read_response(&mut self.stream, &mut self.unread, within)
    }

    /// Whether the server closes the connection within `window`, with
    /// nothing more to read.
    pub fn closes_within(&mut self, window: Duration) -> bool {
        self.unread.is_empty() && watch_close(&mut self.stream, window).0
    }
}

/// Reads one response: its head, then `Content-Length` bytes of body (or
/// until the server closes, without one). `unread` holds what was read past
/// the previous response, and gets what is read past this one.
fn read_response(s: &mut TcpStream, unread: &mut Vec<u8>, within: Duration) -> RawHttp {
    let mut note = String::new();
    let deadline = Instant::now() + within;
    let mut buf = std::mem::take(unread);
    let mut tmp = [0u8; 8192];
    let mut eof = false;
    let mut head_end = None;
    let mut want: Option<usize> = None;
    loop {
        if head_end.is_none() {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                head_end = Some(p + 4);
                let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                let cl = head.lines().find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                });
                want = Some(p + 4 + cl.unwrap_or(0));
                if cl.is_none() {
                    want = None; // read until close
                }
            }
        }
        if let (Some(_), Some(w)) = (head_end, want) {
            if buf.len() >= w {
                break;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            note.push_str("response read timed out; ");
            break;
        }
        s.set_read_timeout(Some(deadline - now)).ok();
        match s.read(&mut tmp) {
            Ok(0) => {
                eof = true;
                note.push_str("EOF; ");
                break;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                eof = true;
                note.push_str(&format!("read error {e}; "));
                break;
            }
        }
    }
    if let Some(w) = want.filter(|&w| buf.len() > w) {
        *unread = buf.split_off(w);
    }
    let (head, body) = match head_end {
        Some(h) => (
            String::from_utf8_lossy(&buf[..h - 4]).to_string(),
            buf[h..].to_vec(),
        ),
        None => (String::from_utf8_lossy(&buf).to_string(), vec![]),
    };
    let status = if head_end.is_some() {
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok())
    } else {
        None
    };
    RawHttp {
        status,
        head,
        body,
        closed: eof,
        note,
    }
}

/// Watches `window` for the server closing the connection: (closed, note).
fn watch_close(s: &mut TcpStream, window: Duration) -> (bool, String) {
    let mut note = String::new();
    let mut tmp = [0u8; 8192];
    let deadline = Instant::now() + window;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (false, note);
        }
        s.set_read_timeout(Some(deadline - now)).ok();
        match s.read(&mut tmp) {
            Ok(0) => return (true, note),
            Ok(n) => note.push_str(&format!("{n} extra bytes after response; ")),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (true, note),
        }
    }
}

impl RawHttp {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// Status must be `status` and the body the spec's JSON error.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(
            self.status,
            Some(status),
            "expected HTTP {status}: {self:?}"
        );
        let j: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "error body is JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        assert_eq!(j["code"], status, "error body code == HTTP status: {j}");
        assert!(j["errno"].is_number(), "error body errno is a number: {j}");
    }
}

/// A blocking stream whose reads can be given a timeout: a TCP socket, or
/// a UA's connection (TLS over one).
pub trait TimedRead: Read {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl TimedRead for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl TimedRead for crate::ua::UaConn {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }
}

pub fn read_http_head(
    stream: &mut impl TimedRead,
    within: Duration,
) -> Result<(String, Vec<u8>), String> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let rest = buf[pos + 4..].to_vec();
            return Ok((head, rest));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "no complete HTTP response head within {within:?}: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        stream.set_read_timeout(Some(deadline - now)).ok();
        match stream.read(&mut tmp) {
            Ok(0) => {
                return Err(format!(
                    "connection closed during handshake after {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(format!("read handshake: {e}")),
        }
        if buf.len() > 64 * 1024 {
            return Err("handshake response head too large".into());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEADLINE;
    use std::net::TcpListener;

    #[test]
    fn raw_http_reads_response_and_sees_close() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (_h, _rest) = read_http_head(&mut s, DEADLINE).unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 40\r\n\r\n{\"code\":400,\"errno\":1,\"error\":\"x\",\"m\":1}").unwrap();
        });
        let r = raw_http(
            &addr,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            DEADLINE,
            Duration::from_secs(2),
        );
        t.join().unwrap();
        assert_eq!(r.status, Some(400), "{r:?}");
        assert!(r.closed);
        r.assert_json_error(400);
    }

    #[test]
    fn raw_conn_keeps_one_connection_for_several_exchanges() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            for n in 0..2 {
                let (_h, _rest) = read_http_head(&mut s, DEADLINE).unwrap();
                let reply =
                    format!("HTTP/1.1 200 OK\r\nRetry-After: {n}\r\nContent-Length: 1\r\n\r\n{n}");
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        let mut conn = RawConn::connect(&addr);
        for n in 0..2 {
            let r = conn.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", DEADLINE);
            assert_eq!(r.status, Some(200), "{r:?}");
            assert_eq!(r.header("retry-after"), Some(n.to_string().as_str()));
            assert_eq!(r.body, n.to_string().into_bytes());
            assert!(!r.closed, "{r:?}");
        }
        t.join().unwrap();
    }
}
