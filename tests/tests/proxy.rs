//! Herald behind a TLS proxy (SPEC §2 `--trusted-proxy`): the per-address
//! limits count the client a trusted proxy names in its PROXY header (v1 or
//! v2), not the proxy; anyone else's PROXY header is not a header but bytes
//! of the protocol, and fails its handshake. The server trusts 127.0.0.1;
//! strangers connect from 127.0.0.2.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use herald_tests::*;

const PROXY: &str = "127.0.0.1";
const STRANGER: &str = "127.0.0.2";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("literal address")
}

fn behind_proxy(shards: usize, connections_per_ip_max: usize) -> Server {
    Server::start(
        ServerOptions::new()
            .shards(shards)
            .limit("connections_per_ip_max", connections_per_ip_max)
            .arg("--trusted-proxy")
            .arg("127.0.0.1/32"),
    )
}

fn socket_addr(addr: &str) -> SocketAddr {
    addr.parse().expect("listener address")
}

/// A UA socket from `source` that starts with `preamble` (a PROXY header,
/// or nothing); `Err` when the server refused or closed it.
fn ua_from(server: &Server, source: &str, preamble: &[u8]) -> Result<WsClient, String> {
    let mut stream = connect_from(ip(source), &server.ua_addr());
    stream
        .write_all(preamble)
        .map_err(|error| format!("write: {error}"))?;
    WsClient::handshake_on(stream, &server.ua_addr(), &Handshake::default())
}

/// `GET /health` on a keep-alive AS connection from `source` after
/// `preamble`; the open connection, or the status line / error.
fn as_from(server: &Server, source: &str, preamble: &[u8]) -> Result<TcpStream, String> {
    let mut stream = connect_from(ip(source), &server.as_addr());
    let mut request = preamble.to_vec();
    request.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: herald\r\n\r\n");
    stream
        .write_all(&request)
        .map_err(|error| format!("write: {error}"))?;
    let (head, _) = read_http_head(&mut stream, DEADLINE)?;
    if head.starts_with("HTTP/1.1 200") {
        Ok(stream)
    } else {
        Err(head)
    }
}

fn errors_of_kind(server: &Server, kind: &str) -> f64 {
    let label = format!("kind=\"{kind}\"");
    server
        .metrics()
        .iter()
        .filter(|(sample, _)| metric_name(sample).contains("errors") && sample.contains(&label))
        .map(|(_, value)| *value)
        .sum()
}

#[test]
fn ua_connections_are_capped_per_named_client_not_per_proxy() {
    let server = behind_proxy(2, 2);
    let listener = socket_addr(&server.ua_addr());
    let clients = [ip("203.0.113.1"), ip("203.0.113.2"), ip("2001:db8::1")];
    let mut held = Vec::new();
    for client in clients {
        for header in [proxy_v1(client, listener), proxy_v2(client, listener)] {
            let mut ua = ua_from(&server, PROXY, &header)
                .unwrap_or_else(|error| panic!("{client} within its cap: {error}"));
            ua.hello(None, None, true);
            held.push((client, ua));
        }
    }
    // Six sockets from the proxy's one address, two for each client.
    for client in clients {
        for header in [proxy_v1(client, listener), proxy_v2(client, listener)] {
            assert!(
                ua_from(&server, PROXY, &header).is_err(),
                "a third socket for {client} is refused"
            );
        }
    }
    assert!(errors_of_kind(&server, "connections_per_ip") >= 6.0);
    let fresh = ip("198.51.100.7");
    ua_from(&server, PROXY, &proxy_v1(fresh, listener))
        .unwrap_or_else(|error| panic!("another client of the same proxy: {error}"))
        .hello(None, None, true);
    // A slot comes back when one of its client's sockets closes.
    let (first, ua) = held.remove(0);
    ua.close();
    wait_until(DEADLINE, "the closed socket's slot is free again", || {
        ua_from(&server, PROXY, &proxy_v2(first, listener)).is_ok()
    });
}

#[test]
fn as_connections_are_capped_per_named_client_not_per_proxy() {
    let server = behind_proxy(1, 2);
    let listener = socket_addr(&server.as_addr());
    let clients = [ip("203.0.113.11"), ip("2001:db8::11")];
    let mut held = Vec::new();
    for client in clients {
        for header in [proxy_v1(client, listener), proxy_v2(client, listener)] {
            let connection = as_from(&server, PROXY, &header)
                .unwrap_or_else(|error| panic!("{client} within its cap: {error}"));
            held.push(connection);
        }
    }
    for client in clients {
        let refused = as_from(&server, PROXY, &proxy_v2(client, listener));
        assert!(
            refused.is_err(),
            "a third connection for {client} is refused"
        );
    }
    as_from(&server, PROXY, &proxy_v1(ip("198.51.100.8"), listener))
        .unwrap_or_else(|error| panic!("another client of the same proxy: {error}"));
}

/// The cap's slot is taken for the named client at accept, and a UA socket
/// handed to the shard owning its UAID keeps it there.
#[test]
fn a_named_clients_slot_travels_with_the_hand_off() {
    let server = behind_proxy(4, 1);
    let listener = socket_addr(&server.ua_addr());
    // UAIDs owned by every shard, made through the proxy for clients of their own.
    let uaids: Vec<String> = (0..12)
        .map(|at| {
            let client = ip(&format!("198.51.100.{}", 100 + at));
            let mut ua = ua_from(&server, PROXY, &proxy_v1(client, listener)).expect("within cap");
            ua.hello(None, None, true);
            let uaid = ua.uaid();
            ua.close();
            uaid
        })
        .collect();
    let mut held = Vec::new();
    for (at, uaid) in uaids.iter().enumerate() {
        let client = ip(&format!("203.0.113.{}", 100 + at));
        let mut ua = ua_from(&server, PROXY, &proxy_v2(client, listener)).expect("first socket");
        let reply = ua.hello(Some(uaid), None, true);
        assert_eq!(reply["uaid"], uaid.as_str(), "{reply}");
        assert!(
            ua_from(&server, PROXY, &proxy_v1(client, listener)).is_err(),
            "{client} holds its one slot after the hello (and any hand-off)"
        );
        held.push(ua);
    }
    server.assert_hand_offs();
}

#[test]
fn local_and_missing_headers_keep_the_proxys_own_address() {
    let server = behind_proxy(1, 2);
    let listener = socket_addr(&server.ua_addr());
    // The harness's readiness probe, from the proxy's address too, holds a
    // slot until the server sees it close.
    let mut held = Vec::new();
    while held.len() < 2 {
        let mut ua = None;
        wait_until(DEADLINE, "a LOCAL socket within the proxy's cap", || {
            ua = ua_from(&server, PROXY, &proxy_v2_local()).ok();
            ua.is_some()
        });
        held.push(ua.expect("connected"));
    }
    assert!(
        ua_from(&server, PROXY, &proxy_v2_local()).is_err(),
        "LOCAL counts for the proxy's address"
    );
    assert!(
        ua_from(&server, PROXY, b"").is_err(),
        "no header: the proxy's address, at its cap"
    );
    assert!(
        ua_from(&server, PROXY, &proxy_v1(ip("203.0.113.30"), listener)).is_ok(),
        "a client the proxy names is counted apart"
    );
}

#[test]
fn a_bad_header_from_a_trusted_proxy_closes_the_connection() {
    let server = behind_proxy(1, 0);
    let before = errors_of_kind(&server, "proxy_header");
    let request = b"GET /health HTTP/1.1\r\nHost: herald\r\n\r\n";
    let mut too_long_v2 = proxy_v2_local();
    too_long_v2[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    for bad in [
        &b"PROXY TCP4 300.1.1.1 127.0.0.1 40000 8081\r\n"[..],
        b"PROXY TCP4 203.0.113.1\r\n",
        b"PROXY SCTP 203.0.113.1 127.0.0.1 1 2\r\n",
        &too_long_v2,
    ] {
        let mut preamble = bad.to_vec();
        preamble.extend_from_slice(request);
        let stream = connect_from(ip(PROXY), &server.as_addr());
        let answer = raw_http_on(RawConn::on(stream), &preamble, DEADLINE, Duration::ZERO);
        assert_eq!(
            answer.status,
            None,
            "{:?}: {answer:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(
            answer.closed,
            "{:?}: {answer:?}",
            String::from_utf8_lossy(bad)
        );
    }
    wait_until(DEADLINE, "bad PROXY headers are counted", || {
        errors_of_kind(&server, "proxy_header") >= before + 4.0
    });
}

#[test]
fn a_strangers_proxy_header_is_protocol_bytes() {
    let server = behind_proxy(1, 0);
    let ua_listener = socket_addr(&server.ua_addr());
    let as_listener = socket_addr(&server.as_addr());
    let client = ip("203.0.113.40");
    for header in [proxy_v1(client, ua_listener), proxy_v2(client, ua_listener)] {
        let error = ua_from(&server, STRANGER, &header)
            .err()
            .expect("a stranger's PROXY header breaks its WebSocket handshake");
        assert!(error.contains("400 Bad Request"), "{error}");
        // Through the trusted proxy, the same header is a header.
        ua_from(&server, PROXY, &header)
            .expect("the proxy's header")
            .hello(None, None, true);
    }
    for header in [proxy_v1(client, as_listener), proxy_v2(client, as_listener)] {
        let error = as_from(&server, STRANGER, &header).expect_err("a stranger's header");
        assert!(error.starts_with("HTTP/1.1 400"), "{error}");
        as_from(&server, PROXY, &header).expect("the proxy's header");
    }
    // Without the header the stranger is served: the header was the fault.
    as_from(&server, STRANGER, b"").expect("a stranger's plain request");
    ua_from(&server, STRANGER, b"")
        .expect("a stranger's plain upgrade")
        .hello(None, None, true);
}

/// `GET /token` (SPEC §3.6) is limited per client address: per named
/// client behind the proxy.
#[test]
fn ua_tokens_are_limited_per_named_client() {
    let server = Server::start(
        ServerOptions::new()
            .limit("tokens_per_ip_per_minute_max", 2)
            .arg("--trusted-proxy")
            .arg("127.0.0.1/32"),
    );
    let listener = socket_addr(&server.ua_addr());
    let token = |client: IpAddr| {
        let stream = connect_from(ip(PROXY), &server.ua_addr());
        let mut request = proxy_v2(client, listener);
        request.extend_from_slice(b"GET /token HTTP/1.1\r\nHost: herald\r\n\r\n");
        raw_http_on(RawConn::on(stream), &request, DEADLINE, Duration::ZERO).status
    };
    let (first, second) = (ip("203.0.113.50"), ip("203.0.113.51"));
    assert_eq!([token(first), token(first)], [Some(200), Some(200)]);
    assert_eq!(token(first), Some(429), "a third token for one client");
    assert_eq!(token(second), Some(200), "another client of the same proxy");
}

/// A server trusting 127.0.0.1 whose AS listener allows each address two
/// requests, then one a second (loopback counted, for the strangers).
fn as_rate_behind_proxy() -> Server {
    Server::start(
        ServerOptions::new()
            .limit("as_requests_per_ip_per_s", 1)
            .limit("as_requests_per_ip_burst", 2)
            .limit("rate_limit_loopback", true)
            .arg("--trusted-proxy")
            .arg("127.0.0.1/32"),
    )
}

/// An AS request the per-address rate counts (health is not counted), with
/// extra header lines; its status (429: over the rate).
fn counted_request(conn: &mut RawConn, preamble: &[u8], headers: &str) -> u16 {
    let mut request = preamble.to_vec();
    request.extend_from_slice(
        format!(
            "POST /wpush/v1/no-such-token HTTP/1.1\r\nHost: herald\r\nTTL: 60\r\n{headers}Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    let response = conn.exchange(&request, DEADLINE);
    assert!(!response.closed, "the connection stays open: {response:?}");
    response.status.expect("an answer")
}

fn xff(value: &str) -> String {
    format!("X-Forwarded-For: {value}\r\n")
}

#[test]
fn x_forwarded_for_from_the_proxy_names_the_client_right_most_first() {
    let server = as_rate_behind_proxy();
    let mut conn = RawConn::on(connect_from(ip(PROXY), &server.as_addr()));
    // The left entry is whatever the client wrote; the proxy appended its
    // client last.
    for forged in ["198.51.100.1", "198.51.100.2"] {
        let headers = xff(&format!("{forged}, 203.0.113.60"));
        assert_ne!(counted_request(&mut conn, b"", &headers), 429);
    }
    let headers = xff("198.51.100.3, 203.0.113.60");
    assert_eq!(
        counted_request(&mut conn, b"", &headers),
        429,
        "203.0.113.60 is over"
    );
    // The same connection, the same forged entry, another client.
    let headers = xff("203.0.113.60, 203.0.113.61");
    assert_ne!(
        counted_request(&mut conn, b"", &headers),
        429,
        "203.0.113.61 is not"
    );
    // Forwarded (RFC 7239) when there is no X-Forwarded-For.
    let forwarded = "Forwarded: for=\"[2001:db8::62]:4711\";proto=https\r\n";
    assert_ne!(counted_request(&mut conn, b"", forwarded), 429);
    assert_ne!(counted_request(&mut conn, b"", forwarded), 429);
    assert_eq!(counted_request(&mut conn, b"", forwarded), 429);
    // With both, X-Forwarded-For is the one read.
    let both = format!("{forwarded}{}", xff("203.0.113.63"));
    assert_ne!(counted_request(&mut conn, b"", &both), 429);
    wait_until(DEADLINE, "the refusals are counted", || {
        server
            .metrics()
            .iter()
            .filter(|(sample, _)| sample.contains("limit=\"as_address\""))
            .map(|(_, value)| *value)
            .sum::<f64>()
            >= 2.0
    });
}

#[test]
fn a_strangers_x_forwarded_for_is_ignored() {
    let server = as_rate_behind_proxy();
    let mut conn = RawConn::on(connect_from(ip(STRANGER), &server.as_addr()));
    // A fresh address in every request: believed, it would never be limited.
    let statuses: Vec<u16> = (0..3)
        .map(|n| {
            let headers = format!(
                "{}Forwarded: for=198.51.100.{n}\r\n",
                xff(&format!("203.0.113.{}", 70 + n))
            );
            counted_request(&mut conn, b"", &headers)
        })
        .collect();
    assert!(!statuses[..2].contains(&429), "the burst: {statuses:?}");
    assert_eq!(
        statuses[2], 429,
        "127.0.0.2 itself is counted: {statuses:?}"
    );
}

/// The PROXY header names the hop nearest to Herald: headers are read only
/// when that hop is itself a trusted proxy.
#[test]
fn the_proxy_header_wins_over_x_forwarded_for() {
    let server = as_rate_behind_proxy();
    let listener = socket_addr(&server.as_addr());
    let mut conn = RawConn::on(connect_from(ip(PROXY), &server.as_addr()));
    let header = proxy_v2(ip("203.0.113.90"), listener);
    let statuses: Vec<u16> = (0..3)
        .map(|n| {
            let preamble: &[u8] = if n == 0 { &header } else { b"" };
            let headers = xff(&format!("203.0.113.{}", 91 + n));
            counted_request(&mut conn, preamble, &headers)
        })
        .collect();
    assert_eq!(
        statuses[2], 429,
        "all counted for 203.0.113.90: {statuses:?}"
    );
    // A header naming a trusted proxy (a chain of two): its X-Forwarded-For
    // is read.
    let mut chained = RawConn::on(connect_from(ip(PROXY), &server.as_addr()));
    let header = proxy_v1(ip("127.0.0.1"), listener);
    let statuses: Vec<u16> = (0..3)
        .map(|n| {
            let preamble: &[u8] = if n == 0 { &header } else { b"" };
            let headers = xff(&format!("203.0.113.{}", 95 + n));
            counted_request(&mut chained, preamble, &headers)
        })
        .collect();
    assert!(
        !statuses.contains(&429),
        "one request per client: {statuses:?}"
    );
}
