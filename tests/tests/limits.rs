//! SPEC §9 bad input, limits, overload (and §7's pending cap).

use herald_tests::serde_json::{json, Value};
use herald_tests::*;
use std::time::{Duration, Instant};

/// After abuse, the server still serves a fresh UA end to end.
fn server_still_serves(server: &Server) {
    let h = http("GET", &format!("{}/health", server.as_url()), &[], None);
    h.assert_status(200, "health after bad input");
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_aes128gcm(&e, b"alive", 60).assert_status(201, "POST after bad input");
    assert_eq!(notification_data(&ua.recv_notification(DEADLINE)), b"alive");
}

/// The server closed with a close frame (texts before it, if any, are JSON
/// error replies). Returns the close code.
fn expect_clean_close(ua: &mut WsClient, what: &str) -> u16 {
    let (texts, code) = ua.drain_until_close(DEADLINE);
    for t in &texts {
        let v: Value = serde_json::from_str(t)
            .unwrap_or_else(|_| panic!("{what}: non-JSON text before close: {t:?}"));
        let st = v["status"].as_u64().unwrap_or(0);
        assert!(
            st >= 400,
            "{what}: only an error reply may precede the close: {v}"
        );
    }
    assert!(
        (1000..=4999).contains(&code) && code != 1005 && code != 1006,
        "{what}: close code {code}"
    );
    code
}

#[test]
fn oversized_ws_frame_closes_1009() {
    let server = Server::start_default(); // 8 KiB default
    let mut ua = server.ua_webpush();
    let big = json!({"messageType":"ping","pad":"x".repeat(9000)}).to_string();
    let _ = ua.try_send_text(&big);
    assert_eq!(ua.expect_close_with_deadline(DEADLINE), 1009);
    // also before hello
    let mut ua = server.ua();
    let _ = ua.try_send_text(&big);
    assert_eq!(ua.expect_close_with_deadline(DEADLINE), 1009);
    server_still_serves(&server);
}

#[test]
fn frame_under_the_limit_is_fine() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let msg = json!({"messageType":"ping","pad":"x".repeat(7500)}).to_string();
    assert!(msg.len() < 8192);
    ua.send_text(&msg);
    assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
}

#[test]
fn oversized_fragmented_message_closes_1009() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    // 30 + 5000 + 5000 bytes in three fragments: over 8 KiB only as a whole
    let chunk = vec![b' '; 5000];
    ua.send_raw_frame(0x1, b"{\"messageType\":\"ping\",\"pad\":\"", false)
        .unwrap();
    ua.send_raw_frame(0x0, &chunk, false).unwrap();
    // the server may refuse as soon as the total is over the limit
    let _ = ua.send_raw_frame(0x0, &chunk, false);
    let _ = ua.send_raw_frame(0x0, b"\"}", true);
    assert_eq!(ua.expect_close_with_deadline(DEADLINE), 1009);
}

#[test]
fn huge_frame_header_closes_1009_without_waiting_for_payload() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    // text frame, masked, 64-bit length of 100 MB, then nothing
    let mut h = vec![0x81u8, 0x80 | 127];
    h.extend_from_slice(&(100_000_000u64).to_be_bytes());
    h.extend_from_slice(&[1, 2, 3, 4]);
    ua.send_raw_bytes(&h).unwrap();
    assert_eq!(ua.expect_close_with_deadline(DEADLINE), 1009);
    server_still_serves(&server);
}

#[test]
fn configured_ws_message_limit_is_honoured() {
    let server = Server::start(ServerOptions::new().limit("ws_message_bytes_max", 1024));
    let mut ua = server.ua_webpush();
    ua.send_text(&json!({"messageType":"ping","pad":"x".repeat(800)}).to_string());
    assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
    let _ = ua.try_send_text(&json!({"messageType":"ping","pad":"x".repeat(2000)}).to_string());
    assert_eq!(ua.expect_close_with_deadline(DEADLINE), 1009);
}

#[test]
fn malformed_json_is_closed_cleanly() {
    let server = Server::start_default();
    for bad in [
        "{\"messageType\":",
        "not json at all",
        "{\"messageType\":\"ping\"} trailing",
        "{'single':'quotes'}",
    ] {
        let mut ua = server.ua_webpush();
        ua.send_text(bad);
        expect_clean_close(&mut ua, bad);
    }
    // before hello too
    let mut ua = server.ua();
    ua.send_text("{\"messageType\":\"hel");
    expect_clean_close(&mut ua, "malformed hello");
    server_still_serves(&server);
}

#[test]
fn non_object_json_is_closed_cleanly() {
    let server = Server::start_default();
    for bad in ["[1,2,3]", "42", "\"hello\"", "null", "true"] {
        let mut ua = server.ua_webpush();
        ua.send_text(bad);
        expect_clean_close(&mut ua, bad);
    }
    server_still_serves(&server);
}

#[test]
fn invalid_utf8_text_frame_closes_1007() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    ua.send_raw_frame(0x1, &[b'{', b'"', 0xff, 0xfe, b'"', b'}'], true)
        .unwrap();
    let code = ua.expect_close_with_deadline(DEADLINE);
    assert!(
        code == 1007 || code == 1002,
        "invalid UTF-8: close 1007 (or 1002), got {code}"
    );
    // before hello too
    let mut ua = server.ua();
    ua.send_raw_frame(0x1, &[0xc3, 0x28], true).unwrap();
    let code = ua.expect_close_with_deadline(DEADLINE);
    assert!(
        code == 1007 || code == 1002,
        "invalid UTF-8: close 1007 (or 1002), got {code}"
    );
    server_still_serves(&server);
}

#[test]
fn unknown_message_type_is_closed_cleanly() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    ua.send_json(&json!({"messageType":"frobnicate","x":1}));
    expect_clean_close(&mut ua, "unknown messageType");
    let mut ua = server.ua_webpush();
    ua.send_json(&json!({"messageType":42}));
    expect_clean_close(&mut ua, "numeric messageType");
    server_still_serves(&server);
}

#[test]
fn wrong_types_are_rejected_cleanly() {
    let server = Server::start_default();
    let cases = [
        json!({"messageType":"register","channelID":123}),
        json!({"messageType":"register","channelID":null}),
        json!({"messageType":"register","channelID":["a"]}),
        json!({"messageType":"unregister","channelID":{"a":1}}),
        json!({"messageType":"ack","updates":"not-a-list"}),
        json!({"messageType":"register","channelID":new_channel_id(),"key":12345}),
    ];
    for m in cases {
        let mut ua = server.ua_webpush();
        ua.send_json(&m);
        match ua.next_event(DEADLINE) {
            WsEvent::Close(Some(c), _) => {
                assert!((1000..=4999).contains(&c), "{m}: close code {c}")
            }
            WsEvent::Text(t) => {
                let v: Value = serde_json::from_str(&t)
                    .unwrap_or_else(|_| panic!("{m}: non-JSON reply {t:?}"));
                let st = v["status"].as_u64().unwrap_or(0);
                assert!(st >= 400, "{m}: error status in reply: {v}");
            }
            // an ack with a bad shape may be ignored: the socket must still work
            WsEvent::Timeout if m["messageType"] == "ack" => {
                ua.send_json(&json!({}));
                assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
            }
            other => panic!("{m}: expected an error reply or a close frame, got {other:?}"),
        }
    }
    server_still_serves(&server);
}

#[test]
fn oversized_numbers_are_handled_cleanly() {
    let server = Server::start_default();
    let c = new_channel_id();
    let cases = [
        format!("{{\"messageType\":\"ack\",\"updates\":[{{\"channelID\":\"{c}\",\"version\":1e400,\"code\":100}}]}}"),
        format!("{{\"messageType\":\"ack\",\"updates\":[{{\"channelID\":\"{c}\",\"version\":123456789012345678901234567890}}]}}"),
        "{\"messageType\":\"nack\",\"version\":\"x\",\"code\":99999999999999999999999}".to_string(),
    ];
    for m in cases {
        let mut ua = server.ua_webpush();
        ua.send_text(&m);
        match ua.next_event(Duration::from_millis(500)) {
            WsEvent::Close(Some(code), _) => {
                assert!((1000..=4999).contains(&code), "{m}: close code {code}")
            }
            WsEvent::Text(t) => {
                let v: Value = serde_json::from_str(&t)
                    .unwrap_or_else(|_| panic!("{m}: non-JSON reply {t:?}"));
                assert!(
                    v["status"].as_u64().unwrap_or(0) >= 400,
                    "{m}: error reply: {v}"
                );
            }
            WsEvent::Timeout => {
                // ignored: the socket keeps working
                ua.send_json(&json!({}));
                assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
            }
            other => panic!("{m}: expected a clean outcome, got {other:?}"),
        }
    }
    server_still_serves(&server);
}

#[test]
fn truncated_frame_and_abrupt_disconnects_leave_the_server_healthy() {
    let server = Server::start_default();
    for _ in 0..5 {
        let mut ua = server.ua_webpush();
        // a frame header announcing 100 bytes, then only 10
        let mut f = vec![0x81u8, 0x80 | 100, 9, 9, 9, 9];
        f.extend_from_slice(&[b'x'; 10]);
        ua.send_raw_bytes(&f).unwrap();
        ua.drop_tcp();
    }
    for _ in 0..5 {
        // handshake then gone
        let ua = server.ua();
        ua.drop_tcp();
    }
    server_still_serves(&server);
}

// ---------------------------------------------------------------------------
// HTTP framing and sizes on the AS listener
// ---------------------------------------------------------------------------

fn endpoint_path(server: &Server) -> (WsClient, String) {
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let path = e
        .strip_prefix(&server.as_url())
        .expect("endpoint on the AS listener")
        .to_string();
    (ua, path)
}

#[test]
fn bad_content_length_gets_400_and_connection_closed() {
    let server = Server::start_default();
    let (mut ua, path) = endpoint_path(&server);
    let host = server.as_addr();
    let requests = [
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Length: abc\r\n\r\n"),
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Length: -1\r\n\r\n"),
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
    ];
    for req in requests {
        let r = raw_http(&host, req.as_bytes(), DEADLINE, Duration::from_secs(2));
        assert_eq!(r.status, Some(400), "400 for {req:?}: {r:?}");
        assert!(
            r.closed,
            "connection closed after a framing error for {req:?}: {r:?}"
        );
    }
    ua.expect_silence(Duration::from_millis(300));
    server_still_serves(&server);
}

#[test]
fn oversized_headers_get_431() {
    let server = Server::start_default();
    let (_ua, path) = endpoint_path(&server);
    let host = server.as_addr();
    // one huge header
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(17_000)
    );
    let r = raw_http(&host, req.as_bytes(), DEADLINE, Duration::from_millis(100));
    r.assert_json_error(431);
    // many headers adding up to more than 16 KiB
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\n");
    for i in 0..300 {
        req.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(60)));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    let r = raw_http(&host, req.as_bytes(), DEADLINE, Duration::from_millis(100));
    r.assert_json_error(431);
    server_still_serves(&server);
}

#[test]
fn headers_under_the_limit_are_fine() {
    let server = Server::start_default();
    let (mut ua, path) = endpoint_path(&server);
    let host = server.as_addr();
    let req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nX-Pad: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "a".repeat(10_000));
    let r = raw_http(&host, req.as_bytes(), DEADLINE, Duration::from_millis(100));
    assert_eq!(r.status, Some(201), "{r:?}");
    ua.recv_notification(DEADLINE);
}

// ---------------------------------------------------------------------------
// per-UAID limits
// ---------------------------------------------------------------------------

#[test]
fn too_many_channels_gets_429_in_register_reply() {
    let server = Server::start(ServerOptions::new().limit("channels_per_uaid_max", 3));
    let mut ua = server.ua_webpush();
    let mut chans = vec![];
    for _ in 0..3 {
        chans.push(ua.register_new());
    }
    let r = ua.register_reply(&new_channel_id(), None);
    assert_eq!(r["status"], 429, "4th channel with a limit of 3: {r}");
    // re-registering an existing channel is still fine (idempotent)
    assert_eq!(ua.register(&chans[0].0), chans[0].1);
    // freeing one makes room
    ua.unregister(&chans[1].0);
    ua.register_new();
    let r = ua.register_reply(&new_channel_id(), None);
    assert_eq!(r["status"], 429, "{r}");
}

#[test]
fn pending_cap_drops_the_oldest_normal_message() {
    let server = Server::start(ServerOptions::new().limit("pending_per_uaid_max", 3));
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (_c, e) = ua.register_new();
    ua.close();
    for i in 1..=5u8 {
        push_aes128gcm(&e, &[b'm', b'0' + i], 60).assert_status(201, "POST");
    }
    let mut ua = server.ua_resume(&uaid, true);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    let mut got: Vec<Vec<u8>> = msgs.iter().map(notification_data).collect();
    got.sort();
    assert_eq!(
        got,
        vec![b"m3".to_vec(), b"m4".to_vec(), b"m5".to_vec()],
        "the 3 newest kept: {msgs:?}"
    );
}

#[test]
fn pending_cap_keeps_high_urgency_messages() {
    let server = Server::start(ServerOptions::new().limit("pending_per_uaid_max", 3));
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (_c, e) = ua.register_new();
    ua.close();
    push_with(
        &e,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aes128gcm"),
            ("Urgency", "high"),
        ],
        Some(b"h1"),
    )
    .assert_status(201, "POST high");
    for i in 2..=5u8 {
        push_aes128gcm(&e, &[b'm', b'0' + i], 60).assert_status(201, "POST");
    }
    let mut ua = server.ua_resume(&uaid, true);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    let mut got: Vec<Vec<u8>> = msgs.iter().map(notification_data).collect();
    got.sort();
    assert_eq!(
        got,
        vec![b"h1".to_vec(), b"m4".to_vec(), b"m5".to_vec()],
        "oldest normal ones dropped: {msgs:?}"
    );
}

#[test]
fn connections_per_ip_cap_refuses_extra_sockets_and_frees_slots() {
    let server = Server::start(
        ServerOptions::new()
            .shards(2)
            .limit("connections_per_ip_max", 2),
    );
    // The harness's readiness probe holds a slot until the server sees it close.
    let connect = || {
        let mut held = None;
        wait_until(DEADLINE, "a socket within the cap connects", || {
            held = WsClient::connect_with(&server.ua_addr(), &Handshake::default()).ok();
            held.is_some()
        });
        held.expect("connected")
    };
    let first = connect();
    let _second = connect();
    assert!(
        WsClient::connect_with(&server.ua_addr(), &Handshake::default()).is_err(),
        "a third socket from 127.0.0.1 is refused"
    );
    drop(first);
    wait_until(DEADLINE, "a slot frees once a socket closes", || {
        WsClient::connect_with(&server.ua_addr(), &Handshake::default()).is_ok()
    });
}

// ---------------------------------------------------------------------------
// rate limits: per channel, per AS address, per UA address
// ---------------------------------------------------------------------------

/// Herald's errno for a rate limit's 429.
const ERRNO_RATE_LIMITED: u64 = 203;

/// `herald_rate_limited_total{limit="<limit>"}`, or None when the series
/// is not shown.
fn rate_limited(server: &Server, limit: &str) -> Option<f64> {
    let name = format!("herald_rate_limited_total{{limit=\"{limit}\"}}");
    server
        .metrics()
        .into_iter()
        .find(|(sample, _)| *sample == name)
        .map(|(_, value)| value)
}

/// A 429 as every rate limit answers it: `Retry-After: 1` (the limits
/// here earn a token a second) and the JSON error with Herald's errno.
fn assert_rate_limited(status: Option<u16>, retry_after: Option<&str>, body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, Some(429), "{what}: {text}");
    assert_eq!(retry_after, Some("1"), "{what}: Retry-After");
    let body: Value = serde_json::from_slice(body)
        .unwrap_or_else(|error| panic!("{what}: the body is JSON ({error}): {text}"));
    assert_eq!(body["code"], 429, "{what}: {body}");
    assert_eq!(body["errno"], ERRNO_RATE_LIMITED, "{what}: {body}");
    assert_eq!(body["error"], "Too Many Requests", "{what}: {body}");
    assert!(body["message"].is_string(), "{what}: {body}");
}

/// A Web Push POST of `body` to `path` on a kept-alive connection.
fn post_request(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Pushes `poll-<n>` to `endpoint` every 50 ms until one is accepted (the
/// refused ones cost the bucket nothing); returns the accepted body.
fn push_until_accepted(endpoint: &str) -> Vec<u8> {
    let mut attempt = 0;
    let mut accepted = None;
    wait_until(
        DEADLINE,
        "the bucket refills and a push is accepted",
        || {
            attempt += 1;
            let body = format!("poll-{attempt}").into_bytes();
            let r = push_aes128gcm(endpoint, &body, 600);
            if r.status == 201 {
                accepted = Some(body);
                return true;
            }
            r.assert_status(429, "a push while the bucket is empty");
            std::thread::sleep(Duration::from_millis(50));
            false
        },
    );
    accepted.expect("accepted")
}

#[test]
fn a_channel_over_its_rate_gets_429_and_only_accepted_messages_are_kept() {
    let mut server = Server::start(
        ServerOptions::new()
            .shards(2)
            .limit("notifications_per_channel_per_minute", 60)
            .limit("notifications_per_channel_burst", 3),
    );
    assert_eq!(rate_limited(&server, "channel"), Some(0.0), "shown at 0");
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (_, busy) = ua.register_new();
    let (_, quiet) = ua.register_new();
    ua.close();

    let started = Instant::now();
    let mut accepted: Vec<Vec<u8>> = (0..3).map(|n| format!("burst-{n}").into_bytes()).collect();
    for body in &accepted {
        push_aes128gcm(&busy, body, 600).assert_status(201, "within the burst");
    }
    for n in 0..2 {
        let r = push_aes128gcm(&busy, format!("refused-{n}").as_bytes(), 600);
        assert_rate_limited(Some(r.status), r.header("retry-after"), &r.body, "over");
    }
    push_aes128gcm(&quiet, b"other channel", 600).assert_status(201, "another channel");
    accepted.push(b"other channel".to_vec());
    wait_until(DEADLINE, "the channel counter counts both refusals", || {
        rate_limited(&server, "channel") == Some(2.0)
    });

    accepted.push(push_until_accepted(&busy));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "one token a second: accepted again after {:?}",
        started.elapsed()
    );

    // Everything answered 201 is kept (a restart replays the log), and
    // nothing answered 429 was stored.
    server.restart();
    let mut ua = server.ua_resume(&uaid, true);
    let mut got: Vec<Vec<u8>> = ua
        .collect_until_quiet(NEG_WINDOW)
        .iter()
        .map(notification_data)
        .collect();
    got.sort();
    accepted.sort();
    assert_eq!(got, accepted);
}

#[test]
fn an_address_over_its_as_rate_gets_429_on_a_connection_that_stays_open() {
    let server = Server::start(
        ServerOptions::new()
            .limit("rate_limit_loopback", true)
            .limit("as_requests_per_ip_per_s", 1)
            .limit("as_requests_per_ip_burst", 3)
            .limit("ua_connects_per_ip_per_s", 0),
    );
    let (mut ua, path) = endpoint_path(&server);
    let host = server.as_addr();
    let mut conn = RawConn::connect(&host);
    let started = Instant::now();
    let mut accepted = Vec::new();
    for n in 0..3 {
        let body = format!("burst-{n}").into_bytes();
        let r = conn.exchange(&post_request(&host, &path, &body), DEADLINE);
        assert_eq!(r.status, Some(201), "within the burst: {r:?}");
        accepted.push(body);
    }
    let r = conn.exchange(&post_request(&host, &path, b"refused"), DEADLINE);
    assert_rate_limited(r.status, r.header("retry-after"), &r.body, "over");
    assert!(!r.closed, "the connection stays open: {r:?}");
    // Health is not counted: a load balancer must not see a flood as a
    // node that is down.
    for _ in 0..5 {
        http("GET", &format!("{}/health", server.as_url()), &[], None)
            .assert_status(200, "health while the address is limited");
    }
    wait_until(
        DEADLINE,
        "the AS address counter counts the refusal",
        || rate_limited(&server, "as_address") == Some(1.0),
    );

    // The same connection is served again once the bucket refills.
    let mut attempt = 0;
    wait_until(DEADLINE, "the address is served again", || {
        attempt += 1;
        let body = format!("poll-{attempt}").into_bytes();
        let r = conn.exchange(&post_request(&host, &path, &body), DEADLINE);
        assert!(!r.closed, "the connection stays open: {r:?}");
        if r.status == Some(201) {
            accepted.push(body);
            return true;
        }
        assert_eq!(r.status, Some(429), "{r:?}");
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "one request a second: served again after {:?}",
        started.elapsed()
    );
    // The UA got exactly what was accepted, in order: a refused request
    // that had been stored would show up before the last one.
    let got: Vec<Vec<u8>> = accepted
        .iter()
        .map(|_| notification_data(&ua.recv_notification(DEADLINE)))
        .collect();
    assert_eq!(got, accepted);
}

/// A WebSocket upgrade request as a UA sends it.
fn upgrade_request(host: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: push-notification\r\n\r\n"
    )
}

#[test]
fn an_address_over_its_ua_connect_rate_is_refused_with_429() {
    let server = Server::start(
        ServerOptions::new()
            .limit("rate_limit_loopback", true)
            .limit("ua_connects_per_ip_per_s", 1)
            .limit("ua_connects_per_ip_burst", 3),
    );
    // The harness's readiness probe may have taken a token: connect until
    // the first refusal. A token a second cannot let 10 quick connects by.
    let mut held = Vec::new();
    let mut refusal = None;
    for _ in 0..10 {
        match WsClient::connect_with(&server.ua_addr(), &Handshake::default()) {
            Ok(ua) => held.push(ua),
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    let refusal = refusal.expect("a connect over the burst of 3 is refused");
    assert!(!held.is_empty(), "connects within the burst pass");
    assert!(refusal.contains(" 429 "), "{refusal}");
    let host = server.ua_addr();
    let r = raw_http(&host, upgrade_request(&host).as_bytes(), DEADLINE, DEADLINE);
    assert_rate_limited(r.status, r.header("retry-after"), &r.body, "upgrade");
    assert!(r.closed, "a refused connect is closed: {r:?}");
    wait_until(
        DEADLINE,
        "the UA address counter counts the refusals",
        || rate_limited(&server, "ua_address") == Some(2.0),
    );
    // The limit refuses new connects; sockets already open keep working.
    let reply = held[0].hello(None, None, true);
    assert_eq!(reply["status"], 200, "{reply}");
    http("GET", &format!("{}/health", server.as_url()), &[], None)
        .assert_status(200, "the AS listener has its own limit");

    let mut ua = None;
    wait_until(
        DEADLINE,
        "a connect is accepted once the bucket refills",
        || {
            ua = WsClient::connect_with(&server.ua_addr(), &Handshake::default()).ok();
            if ua.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            ua.is_some()
        },
    );
    let mut ua = ua.expect("connected");
    let reply = ua.hello(None, None, true);
    assert_eq!(reply["status"], 200, "{reply}");
}

#[test]
fn loopback_sources_are_not_rate_limited_by_default() {
    let server = Server::start(
        ServerOptions::new()
            .limit("as_requests_per_ip_per_s", 1)
            .limit("as_requests_per_ip_burst", 1)
            .limit("ua_connects_per_ip_per_s", 1)
            .limit("ua_connects_per_ip_burst", 1),
    );
    let mut uas: Vec<WsClient> = (0..10).map(|_| server.ua_webpush()).collect();
    let (_, endpoint) = uas[0].register_new();
    for n in 0..10u8 {
        push_aes128gcm(&endpoint, &[b'm', b'0' + n], 60).assert_status(201, "from 127.0.0.1");
        assert_eq!(
            notification_data(&uas[0].recv_notification(DEADLINE)),
            [b'm', b'0' + n]
        );
    }
    assert_eq!(rate_limited(&server, "as_address"), Some(0.0));
    assert_eq!(rate_limited(&server, "ua_address"), Some(0.0));
}

/// Slow-loris: a request whose bytes trickle in, each well within the read
/// timeout, is answered 408 and closed once `http_request_timeout_ms` has
/// passed since its first byte; other clients are served meanwhile.
#[test]
fn a_request_that_trickles_in_is_cut_off_at_its_deadline() {
    use std::io::{Read, Write};
    const DEADLINE_MS: u64 = 1500;
    let server = Server::start(ServerOptions::new().limit("http_request_timeout_ms", DEADLINE_MS));
    let mut slow = std::net::TcpStream::connect(server.as_addr()).expect("connect");
    slow.set_read_timeout(Some(Duration::from_millis(250)))
        .expect("read timeout");
    let started = Instant::now();
    slow.write_all(b"POST /wpush/v1/slow HTTP/1.1\r\nHost: herald\r\n")
        .expect("request line");
    let mut answer = Vec::new();
    // A header line every 250 ms: far inside the 30 s read timeout, so only
    // the whole-request deadline can end this.
    while started.elapsed() < Duration::from_millis(DEADLINE_MS * 4) {
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            break;
        }
        let mut chunk = [0u8; 512];
        match slow.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => answer.extend_from_slice(&chunk[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        server_still_serves(&server);
    }
    let cut_after = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
    assert!(
        cut_after >= Duration::from_millis(DEADLINE_MS)
            && cut_after < Duration::from_millis(DEADLINE_MS * 4),
        "cut off after {cut_after:?}"
    );
}
