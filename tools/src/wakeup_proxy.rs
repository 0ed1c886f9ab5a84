//! `herald wakeup-proxy --listen ADDR` (SPEC §2, §5): a small HTTP-in,
//! UDP-out relay placed inside an operator network, where Herald itself cannot
//! reach the phones' private addresses.
//!
//! `POST /wakeup` with `{"ip","port","mcc","mnc","netid"}` → one datagram
//! (the same `herald-wakeup` payload the server sends) to `ip:port`.
//! Answers, each with a JSON body: 200 sent; 400 bad JSON or field; 404 other
//! path; 405 other method; 411/413 body missing or too large; 429 over
//! `--rate`; 431 head too large; 502 the datagram could not be sent; 503 too
//! many connections.
//!
//! It is a separate, small process, so plain threads and blocking sockets do:
//! one thread per connection (at most `--connections-max`), HTTP/1.1
//! keep-alive, every read bounded by a timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

/// Same payload as the server's own datagrams: any datagram wakes a UA, and
/// this one says nothing about who is being woken.
const PAYLOAD: &[u8] = b"herald-wakeup";
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// A wakeup request is ~100 bytes of JSON.
const BODY_BYTES_MAX: usize = 1024;
/// An idle keep-alive connection is closed after this.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to accept `POST /wakeup` on, e.g. 0.0.0.0:8090
    #[arg(long, env = "HERALD_WAKEUP_PROXY_LISTEN")]
    pub listen: SocketAddr,
    /// Wakeups per second accepted in all (a one-second burst); beyond: 429
    #[arg(long, default_value_t = 2000, env = "HERALD_WAKEUP_PROXY_RATE")]
    pub rate: u32,
    /// Simultaneous HTTP connections; beyond: 503 and close
    #[arg(long, default_value_t = 256)]
    pub connections_max: usize,
}

struct Proxy {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    bucket: Mutex<Bucket>,
    rate: u32,
    connections: AtomicUsize,
}

/// Token bucket in whole wakeups; refilled from the elapsed time on each take.
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub fn run(args: ProxyArgs) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let v4 = UdpSocket::bind("0.0.0.0:0").ok();
    let v6 = UdpSocket::bind("[::]:0").ok();
    if v4.is_none() && v6.is_none() {
        return Err("cannot open a UDP socket".to_owned());
    }
    let rate = args.rate.max(1);
    let proxy = Arc::new(Proxy {
        v4,
        v6,
        bucket: Mutex::new(Bucket {
            tokens: f64::from(rate),
            refilled: Instant::now(),
        }),
        rate,
        connections: AtomicUsize::new(0),
    });
    println!(
        "herald: wakeup proxy listening on http://{} (POST /wakeup, {rate}/s)",
        listener.local_addr().map_or(args.listen, |addr| addr)
    );
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(%error, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if proxy.connections.fetch_add(1, Ordering::SeqCst) >= args.connections_max {
            proxy.connections.fetch_sub(1, Ordering::SeqCst);
            let _ = respond(&mut stream, 503, "too many connections", true);
            continue;
        }
        let proxy = proxy.clone();
        let spawned = std::thread::Builder::new()
            .name("wakeup-proxy-conn".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || {
                serve(&proxy, stream);
                proxy.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a connection thread");
        }
    }
    Ok(())
}

fn serve(proxy: &Proxy, mut stream: TcpStream) {
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut buffer: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let request = match read_request(&mut stream, &mut buffer) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err((status, reason)) => {
                let _ = respond(&mut stream, status, reason, true);
                return;
            }
        };
        let (status, reason) = handle(proxy, &request);
        if respond(&mut stream, status, reason, request.close).is_err() || request.close {
            return;
        }
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    close: bool,
}

/// Reads one request; `Ok(None)` when the client closed between requests.
/// Framing errors answer and close (the stream can no longer be trusted).
fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, (u16, &'static str)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = parsed.method.unwrap_or("").to_owned();
                let path = parsed.path.unwrap_or("").to_owned();
                let mut close = parsed.version == Some(0);
                let mut length: Option<usize> = None;
                for header in parsed.headers.iter() {
                    let name = header.name;
                    if name.eq_ignore_ascii_case("content-length") {
                        let value = std::str::from_utf8(header.value)
                            .ok()
                            .and_then(|text| text.trim().parse::<usize>().ok())
                            .ok_or((400, "bad Content-Length"))?;
                        if length.is_some_and(|seen| seen != value) {
                            return Err((400, "conflicting Content-Length"));
                        }
                        length = Some(value);
                    } else if name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err((
                            400,
                            "Transfer-Encoding is not supported; send Content-Length",
                        ));
                    } else if name.eq_ignore_ascii_case("connection") {
                        close |= header.value.eq_ignore_ascii_case(b"close");
                    }
                }
                let length = length.unwrap_or(0);
                if length > BODY_BYTES_MAX {
                    return Err((413, "body too large"));
                }
                while buffer.len() < head_len + length {
                    if !read_more(stream, buffer) {
                        return Err((400, "body shorter than Content-Length"));
                    }
                }
                let body = buffer[head_len..head_len + length].to_vec();
                buffer.drain(..head_len + length);
                return Ok(Some(Request {
                    method,
                    path,
                    body,
                    close,
                }));
            }
            Ok(httparse::Status::Partial) => {
                if buffer.len() >= HEAD_BYTES_MAX {
                    return Err((431, "request head too large"));
                }
                if !read_more(stream, buffer) {
                    if buffer.is_empty() {
                        return Ok(None);
                    }
                    return Err((400, "incomplete request"));
                }
            }
            Err(_) => return Err((400, "malformed HTTP request")),
        }
    }
}

fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 2048];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            true
        }
    }
}

fn handle(proxy: &Proxy, request: &Request) -> (u16, &'static str) {
    let path = request.path.split('?').next().unwrap_or("");
    if path != "/wakeup" {
        return (404, "not found: use POST /wakeup");
    }
    if request.method != "POST" {
        return (405, "method not allowed: use POST");
    }
    if request.body.is_empty() {
        return (400, "empty body: expected JSON {ip, port, mcc, mnc, netid}");
    }
    let target = match parse_target(&request.body) {
        Ok(target) => target,
        Err(reason) => return (400, reason),
    };
    if !proxy.take_token() {
        return (429, "rate limit exceeded");
    }
    let socket = if target.is_ipv4() {
        &proxy.v4
    } else {
        &proxy.v6
    };
    match socket
        .as_ref()
        .map(|socket| socket.send_to(PAYLOAD, target))
    {
        Some(Ok(_)) => (200, ""),
        Some(Err(error)) => {
            tracing::debug!(%error, %target, "wakeup datagram refused");
            (502, "datagram could not be sent")
        }
        None => (502, "no socket for this address family"),
    }
}

/// Validates the JSON body: ip parses, port 1..65535 (number or numeric
/// string, as seed 001 shows it), mcc 3 digits, mnc 2–3 digits, netid (if
/// present) a string.
fn parse_target(body: &[u8]) -> Result<SocketAddr, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "body is not valid JSON")?;
    let object = value.as_object().ok_or("body must be a JSON object")?;
    let ip: IpAddr = object
        .get("ip")
        .and_then(Value::as_str)
        .and_then(|text| text.parse().ok())
        .ok_or("ip must be an IPv4 or IPv6 address string")?;
    let port = match object.get("port") {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(text)) => text.parse::<u64>().ok(),
        _ => None,
    }
    .and_then(|port| u16::try_from(port).ok())
    .filter(|port| *port != 0)
    .ok_or("port must be 1..65535")?;
    let digits = |key: &str, min: usize, max: usize| {
        object.get(key).and_then(Value::as_str).is_some_and(|text| {
            (min..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
        })
    };
    if !digits("mcc", 3, 3) {
        return Err("mcc must be 3 digits");
    }
    if !digits("mnc", 2, 3) {
        return Err("mnc must be 2 or 3 digits");
    }
    if object.get("netid").is_some_and(|netid| !netid.is_string()) {
        return Err("netid must be a string");
    }
    Ok(SocketAddr::new(ip.to_canonical(), port))
}

impl Proxy {
    fn take_token(&self) -> bool {
        let Ok(mut bucket) = self.bucket.lock() else {
            return false;
        };
        let now = Instant::now();
        let rate = f64::from(self.rate);
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, reason: &str, close: bool) -> std::io::Result<()> {
    let text = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = if status == 200 {
        serde_json::json!({"status": "sent"})
    } else {
        serde_json::json!({"code": status, "error": text, "message": reason})
    }
    .to_string();
    let allow = if status == 405 { "Allow: POST\r\n" } else { "" };
    let connection = if close { "Connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{allow}{connection}\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_targets() {
        let ok = br#"{"ip":"10.0.0.1","port":5000,"mcc":"214","mnc":"07","netid":"x"}"#;
        assert_eq!(parse_target(ok), Ok("10.0.0.1:5000".parse().unwrap()));
        let string_port = br#"{"ip":"::1","port":"9","mcc":"310","mnc":"410"}"#;
        assert_eq!(parse_target(string_port), Ok("[::1]:9".parse().unwrap()));
        for bad in [
            &br#"nope"#[..],
            br#"[]"#,
            br#"{"ip":"10.0.0.300","port":5000,"mcc":"214","mnc":"07"}"#,
            br#"{"ip":"10.0.0.1","port":0,"mcc":"214","mnc":"07"}"#,
            br#"{"ip":"10.0.0.1","port":70000,"mcc":"214","mnc":"07"}"#,
            br#"{"ip":"10.0.0.1","port":5000,"mcc":"21","mnc":"07"}"#,
            br#"{"ip":"10.0.0.1","port":5000,"mcc":"214","mnc":"7"}"#,
            br#"{"ip":"10.0.0.1","port":5000,"mcc":"214","mnc":"07","netid":5}"#,
        ] {
            assert!(
                parse_target(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
