//! `herald wakeup-proxy --listen ADDR --allow CIDR... --secret-file FILE`
//! (SPEC §2, §5): a small HTTP-in, UDP-out relay placed inside an operator
//! network, where Herald itself cannot reach the phones' private addresses.
//!
//! `POST /wakeup` with `Authorization: Bearer <secret>` and
//! `{"ip","port","mcc","mnc","netid"}` → one datagram (the same
//! `herald-wakeup` payload the server sends) to `ip:port`.
//!
//! It is closed, because a relay that sends a datagram wherever it is told
//! is a UDP reflector: only a caller holding the secret is served (401
//! before anything else, compared in constant time), only targets inside
//! `--allow` get a datagram (403), and each target address gets at most
//! `--target-rate` a second (429), under `--rate` for the whole proxy.
//! There is no default for `--allow`, and a range covering a whole address
//! family is refused, so it cannot be started open by accident.
//!
//! Answers, each with a JSON body: 200 sent; 400 bad JSON or field; 401 no
//! or wrong secret; 403 target outside `--allow`; 404 other path; 405 other
//! method; 411/413 body missing or too large; 429 over a rate (with
//! `Retry-After`); 431 head too large; 502 the datagram could not be sent;
//! 503 too many connections.
//!
//! It is a separate, small process, so plain threads and blocking sockets do:
//! one thread per connection (at most `--connections-max`), HTTP/1.1
//! keep-alive, every read bounded by a timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use herald_engine::rate::{Bucket, Limited, Limiter, Rate};
use herald_engine::Millis;
use herald_net::Cidrs;

use crate::config::read_secret_file;

/// Same payload as the server's own datagrams: any datagram wakes a UA, and
/// this one says nothing about who is being woken.
const PAYLOAD: &[u8] = b"herald-wakeup";
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// A wakeup request is ~100 bytes of JSON.
const BODY_BYTES_MAX: usize = 1024;
/// An idle keep-alive connection is closed after this.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Target addresses whose rate is tracked at once: the table's bound
/// whatever targets callers name (see `Limiter::check`).
const TARGETS_TRACKED_MAX: usize = 100_000;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to accept `POST /wakeup` on, e.g. 0.0.0.0:8090
    #[arg(long, env = "HERALD_WAKEUP_PROXY_LISTEN")]
    pub listen: SocketAddr,
    /// Targets datagrams may go to (CIDR): the operator's handset address
    /// ranges (repeatable; env: comma-separated). Required: there is no
    /// default, and 0.0.0.0/0 or ::/0 is refused
    #[arg(
        long = "allow",
        required = true,
        env = "HERALD_WAKEUP_PROXY_ALLOW",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,
    /// File holding the bearer secret callers must send (Herald's
    /// wakeup_proxy_secret_file holds the same)
    #[arg(long, env = "HERALD_WAKEUP_PROXY_SECRET_FILE")]
    pub secret_file: PathBuf,
    /// Wakeups per second accepted in all (a one-second burst); beyond: 429
    #[arg(long, default_value_t = 2000, env = "HERALD_WAKEUP_PROXY_RATE")]
    pub rate: u32,
    /// Datagrams per second to one target address; beyond: 429. Herald
    /// sends one wakeup per UA at a time and retries after a second or more
    #[arg(long, default_value_t = 1, env = "HERALD_WAKEUP_PROXY_TARGET_RATE")]
    pub target_rate: u32,
    /// Datagrams one target address may get at once after a quiet spell
    /// (several UAs behind one address)
    #[arg(long, default_value_t = 5)]
    pub target_burst: u32,
    /// Simultaneous HTTP connections; beyond: 503 and close
    #[arg(long, default_value_t = 256)]
    pub connections_max: usize,
}

struct Proxy {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// `--allow`: where datagrams may go.
    allow: Cidrs,
    /// SHA-256 of the secret. Requests are compared digest to digest, in
    /// constant time, so that timing tells neither the secret's bytes nor
    /// its length.
    secret_digest: [u8; 32],
    rates: Mutex<Rates>,
    /// The rates' clock.
    epoch: Instant,
    connections: AtomicUsize,
}

struct Rates {
    /// `--rate`, for the whole proxy.
    all: Option<(Rate, Bucket)>,
    /// `--target-rate`, per target address.
    per_target: Limiter<IpAddr>,
}

pub fn run(args: ProxyArgs) -> Result<(), String> {
    let allow = Cidrs::parse(&args.allow).map_err(|error| format!("--allow: {error}"))?;
    if allow.covers_everything() {
        return Err(format!(
            "--allow {allow}: a range covering every address would let anyone holding the \
             secret send datagrams anywhere; list the operator's handset address ranges"
        ));
    }
    let secret = read_secret_file(&args.secret_file)?;
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
        secret_digest: Sha256::digest(secret.expose().as_bytes()).into(),
        rates: Mutex::new(Rates {
            all: Rate::per_s(rate, rate).map(|rate| (rate, Bucket::default())),
            per_target: Limiter::new(
                Rate::per_s(args.target_rate, args.target_burst),
                TARGETS_TRACKED_MAX,
            ),
        }),
        epoch: Instant::now(),
        allow,
        connections: AtomicUsize::new(0),
    });
    println!(
        "herald: wakeup proxy listening on http://{} (POST /wakeup with the secret; targets in {}; {rate}/s in all, {}/s per target)",
        listener.local_addr().map_or(args.listen, |addr| addr),
        proxy.allow,
        args.target_rate,
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
            let _ = respond(
                &mut stream,
                &Answer::refused(503, "too many connections"),
                true,
            );
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
                let _ = respond(&mut stream, &Answer::refused(status, reason), true);
                return;
            }
        };
        let answer = handle(proxy, &request);
        if respond(&mut stream, &answer, request.close).is_err() || request.close {
            return;
        }
    }
}

struct Request {
    method: String,
    path: String,
    /// The first `Authorization` header's value.
    authorization: Option<Vec<u8>>,
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
                let mut authorization = None;
                for header in parsed.headers.iter() {
                    let name = header.name;
                    if name.eq_ignore_ascii_case("authorization") {
                        authorization.get_or_insert_with(|| header.value.to_vec());
                    } else if name.eq_ignore_ascii_case("content-length") {
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
                    authorization,
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

/// One answer: a status, its reason, and how long to wait after a 429.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    reason: &'static str,
    retry_after_s: Option<u64>,
}

impl Answer {
    fn refused(status: u16, reason: &'static str) -> Answer {
        Answer {
            status,
            reason,
            retry_after_s: None,
        }
    }

    fn rate_limited(reason: &'static str, limited: Limited) -> Answer {
        Answer {
            status: 429,
            reason,
            retry_after_s: Some(limited.retry_after_s()),
        }
    }
}

fn handle(proxy: &Proxy, request: &Request) -> Answer {
    // The secret first: a stranger learns nothing, not even the routes.
    if !proxy.authorized(request.authorization.as_deref()) {
        return Answer::refused(
            401,
            "missing or wrong secret: send Authorization: Bearer <secret>",
        );
    }
    let path = request.path.split('?').next().unwrap_or("");
    if path != "/wakeup" {
        return Answer::refused(404, "not found: use POST /wakeup");
    }
    if request.method != "POST" {
        return Answer::refused(405, "method not allowed: use POST");
    }
    if request.body.is_empty() {
        return Answer::refused(400, "empty body: expected JSON {ip, port, mcc, mnc, netid}");
    }
    let target = match parse_target(&request.body) {
        Ok(target) => target,
        Err(reason) => return Answer::refused(400, reason),
    };
    if !proxy.allow.contains(target.ip()) {
        return Answer::refused(403, "target outside this proxy's --allow ranges");
    }
    if let Err(answer) = proxy.take_tokens(target.ip()) {
        return answer;
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
        Some(Ok(_)) => Answer::refused(200, ""),
        Some(Err(error)) => {
            tracing::debug!(%error, %target, "wakeup datagram refused");
            Answer::refused(502, "datagram could not be sent")
        }
        None => Answer::refused(502, "no socket for this address family"),
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
    /// `Authorization: Bearer <secret>` (the scheme in any case).
    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let token = match value.split_first_chunk::<7>() {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"Bearer ") => token,
            _ => return false,
        };
        let digest: [u8; 32] = Sha256::digest(token).into();
        digest.ct_eq(&self.secret_digest).into()
    }

    /// A token from the whole proxy's bucket, then one from the target's;
    /// a refusal by the second gives the first back.
    fn take_tokens(&self, target: IpAddr) -> Result<(), Answer> {
        let Ok(mut rates) = self.rates.lock() else {
            return Err(Answer::refused(503, "rate limits unavailable"));
        };
        let now_ms = self.epoch.elapsed().as_millis() as Millis;
        let Rates { all, per_target } = &mut *rates;
        if let Some((rate, bucket)) = all {
            bucket
                .take(rate, now_ms)
                .map_err(|limited| Answer::rate_limited("rate limit exceeded", limited))?;
        }
        if let Err(limited) = per_target.check(target.to_canonical(), now_ms) {
            if let Some((rate, bucket)) = all {
                bucket.refund(rate);
            }
            return Err(Answer::rate_limited(
                "too many wakeups for this target",
                limited,
            ));
        }
        Ok(())
    }
}

fn respond(stream: &mut TcpStream, answer: &Answer, close: bool) -> std::io::Result<()> {
    let status = answer.status;
    let text = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
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
        serde_json::json!({"code": status, "error": text, "message": answer.reason})
    }
    .to_string();
    let mut extra = String::new();
    match status {
        401 => extra.push_str("WWW-Authenticate: Bearer\r\n"),
        405 => extra.push_str("Allow: POST\r\n"),
        _ => {}
    }
    if let Some(seconds) = answer.retry_after_s {
        extra.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    if close {
        extra.push_str("Connection: close\r\n");
    }
    let head = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret";

    /// A proxy with no UDP sockets: what it would send fails with 502, so
    /// these tests send nothing.
    fn proxy(target_rate: u32, target_burst: u32, rate: u32) -> Proxy {
        Proxy {
            v4: None,
            v6: None,
            allow: Cidrs::parse(&["192.0.2.0/24", "2001:db8::/32"]).expect("ranges"),
            secret_digest: Sha256::digest(SECRET).into(),
            rates: Mutex::new(Rates {
                all: Rate::per_s(rate, rate).map(|rate| (rate, Bucket::default())),
                per_target: Limiter::new(Rate::per_s(target_rate, target_burst), 16),
            }),
            epoch: Instant::now(),
            connections: AtomicUsize::new(0),
        }
    }

    fn request(method: &str, path: &str, authorization: Option<&str>, ip: &str) -> Request {
        let body = format!(r#"{{"ip":"{ip}","port":5000,"mcc":"214","mnc":"07"}}"#);
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            authorization: authorization.map(|value| value.as_bytes().to_vec()),
            body: body.into_bytes(),
            close: false,
        }
    }

    fn status(proxy: &Proxy, request: &Request) -> u16 {
        handle(proxy, request).status
    }

    #[test]
    fn only_the_secret_is_let_in_before_anything_else() {
        let proxy = proxy(1_000, 1_000, 1_000);
        let bearer = format!("Bearer {SECRET}");
        for authorization in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic dGVzdC1zZWNyZXQ="),
            Some("Bearer test-secreT"),
            Some("Bearer test-secret "),
            Some("Bearer test-secre"),
            Some("Bearer test-secret-and-more"),
        ] {
            for path in ["/wakeup", "/elsewhere"] {
                let refused = handle(&proxy, &request("POST", path, authorization, "192.0.2.1"));
                assert_eq!(refused.status, 401, "{authorization:?} {path}");
            }
        }
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let authorization = format!("{scheme} {SECRET}");
            let sent = request("POST", "/wakeup", Some(&authorization), "192.0.2.1");
            // Past every check: only the (absent) socket fails.
            assert_eq!(status(&proxy, &sent), 502, "{scheme}");
        }
        assert_eq!(
            status(
                &proxy,
                &request("POST", "/else", Some(&bearer), "192.0.2.1")
            ),
            404
        );
        assert_eq!(
            status(
                &proxy,
                &request("GET", "/wakeup", Some(&bearer), "192.0.2.1")
            ),
            405
        );
    }

    #[test]
    fn targets_outside_allow_are_forbidden() {
        let proxy = proxy(1_000, 1_000, 1_000);
        let bearer = format!("Bearer {SECRET}");
        for outside in [
            "192.0.3.1",
            "127.0.0.1",
            "::1",
            "2001:db9::1",
            "::ffff:192.0.3.1",
        ] {
            let sent = request("POST", "/wakeup", Some(&bearer), outside);
            assert_eq!(status(&proxy, &sent), 403, "{outside}");
        }
        for inside in ["192.0.2.255", "2001:db8::5", "::ffff:192.0.2.9"] {
            let sent = request("POST", "/wakeup", Some(&bearer), inside);
            assert_eq!(status(&proxy, &sent), 502, "{inside}");
        }
    }

    #[test]
    fn each_target_has_its_rate_under_the_proxys() {
        let proxy = proxy(1, 2, 3);
        let bearer = format!("Bearer {SECRET}");
        let send = |ip: &str| handle(&proxy, &request("POST", "/wakeup", Some(&bearer), ip));
        assert_eq!(
            [send("192.0.2.1").status, send("192.0.2.1").status],
            [502, 502]
        );
        let limited = send("192.0.2.1");
        assert_eq!((limited.status, limited.retry_after_s), (429, Some(1)));
        assert_eq!(limited.reason, "too many wakeups for this target");
        // The refusal gave the proxy-wide token back: one is left for another target.
        assert_eq!(send("192.0.2.2").status, 502, "another target");
        let limited = send("192.0.2.3");
        assert_eq!(
            (limited.status, limited.reason),
            (429, "rate limit exceeded")
        );
    }

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
