//! SPEC §4.2 Web Push (RFC 8030) `POST <endpoint>` from the AS side.
//! VAPID (RFC 8292) rules are a later step and not tested here.

use herald_tests::serde_json::Value;
use herald_tests::*;
use std::time::Duration;

fn offline_ua(server: &Server) -> (String, String, String) {
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (c, e) = ua.register_new();
    ua.close();
    (uaid, c, e)
}

fn datas(msgs: &[Value]) -> Vec<Vec<u8>> {
    msgs.iter()
        .map(|m| {
            assert_eq!(m["messageType"], "notification", "{m}");
            notification_data(m)
        })
        .collect()
}

#[test]
fn post_answers_201_with_location_and_ttl() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let r = push_aes128gcm(&e, b"abc", 60);
    r.assert_status(201, "POST");
    let loc = r
        .header("Location")
        .unwrap_or_else(|| panic!("Location header: {r:?}"));
    let prefix = format!("{}/m/", server.as_url());
    assert!(
        loc.starts_with(&prefix) && loc.len() > prefix.len(),
        "Location {loc:?} is {prefix}<id>"
    );
    assert_eq!(r.header("TTL"), Some("60"), "TTL header echoed: {r:?}");
    // two messages, two locations
    let r2 = push_aes128gcm(&e, b"def", 60);
    assert_ne!(r2.header("Location"), Some(loc));
}

#[test]
fn missing_ttl_gets_400_json() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_with(&e, &[("Content-Encoding", "aes128gcm")], Some(b"x")).assert_json_error(400);
    push_with(&e, &[], None).assert_json_error(400);
    ua.expect_silence(Duration::from_millis(300));
}

#[test]
fn invalid_ttl_gets_400_json() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    for ttl in ["abc", "-1", "1.5", ""] {
        push_with(&e, &[("TTL", ttl)], None).assert_json_error(400);
    }
}

#[test]
fn ttl_is_capped_at_30_days() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let r = push_empty(&e, 99_999_999);
    r.assert_status(201, "POST with huge TTL");
    assert_eq!(
        r.header("TTL"),
        Some("2592000"),
        "TTL capped at 30 days: {r:?}"
    );
    ua.recv_notification(DEADLINE);
}

#[test]
fn ttl_zero_is_delivered_to_a_connected_ua() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_aes128gcm(&e, b"now-or-never", 0).assert_status(201, "POST TTL: 0");
    assert_eq!(
        notification_data(&ua.recv_notification(DEADLINE)),
        b"now-or-never"
    );
}

#[test]
fn ttl_zero_is_not_stored_for_an_absent_ua() {
    let server = Server::start_default();
    let (uaid, _c, e) = offline_ua(&server);
    push_aes128gcm(&e, b"dropped", 0).assert_status(201, "POST TTL: 0 to absent UA");
    push_aes128gcm(&e, b"kept", 60).assert_status(201, "POST TTL: 60");
    let mut ua = server.ua_resume(&uaid, true);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    assert_eq!(
        datas(&msgs),
        vec![b"kept".to_vec()],
        "TTL 0 message was not stored: {msgs:?}"
    );
}

#[test]
fn body_without_content_encoding_gets_400() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_with(&e, &[("TTL", "60")], Some(b"ciphertext")).assert_json_error(400);
    ua.expect_silence(Duration::from_millis(300));
}

#[test]
fn unknown_content_encoding_gets_400() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_with(
        &e,
        &[("TTL", "60"), ("Content-Encoding", "gzip")],
        Some(b"ciphertext"),
    )
    .assert_json_error(400);
}

#[test]
fn aesgcm_without_encryption_or_crypto_key_gets_400() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let salt = format!("salt={}", b64url_encode(&random_bytes(16)));
    let dh = format!("dh={}", b64url_encode(&random_bytes(65)));
    push_with(
        &e,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aesgcm"),
            ("Crypto-Key", &dh),
        ],
        Some(b"c"),
    )
    .assert_json_error(400);
    push_with(
        &e,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aesgcm"),
            ("Encryption", &salt),
        ],
        Some(b"c"),
    )
    .assert_json_error(400);
    ua.expect_silence(Duration::from_millis(300));
}

#[test]
fn body_of_4096_bytes_is_accepted_4097_gets_413() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let ok = random_bytes(4096);
    push_aes128gcm(&e, &ok, 60).assert_status(201, "4096-byte body");
    assert_eq!(notification_data(&ua.recv_notification(DEADLINE)), ok);
    push_aes128gcm(&e, &random_bytes(4097), 60).assert_json_error(413);
    ua.expect_silence(Duration::from_millis(300));
}

#[test]
fn topic_replaces_an_undelivered_message() {
    let server = Server::start_default();
    let (uaid, _c, e) = offline_ua(&server);
    let post = |topic: &str, body: &[u8]| {
        push_with(
            &e,
            &[
                ("TTL", "60"),
                ("Content-Encoding", "aes128gcm"),
                ("Topic", topic),
            ],
            Some(body),
        )
        .assert_status(201, "POST with Topic")
        .clone()
    };
    post("weather", b"A");
    post("weather", b"B");
    post("news", b"C");
    let mut ua = server.ua_resume(&uaid, true);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    let mut got = datas(&msgs);
    got.sort();
    assert_eq!(
        got,
        vec![b"B".to_vec(), b"C".to_vec()],
        "A replaced by B (same topic): {msgs:?}"
    );
}

#[test]
fn topic_on_a_delivered_message_does_not_suppress_the_next() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let h = [
        ("TTL", "60"),
        ("Content-Encoding", "aes128gcm"),
        ("Topic", "t"),
    ];
    push_with(&e, &h, Some(b"1")).assert_status(201, "POST");
    let n = ua.recv_notification(DEADLINE);
    ua.ack_notification(&n);
    push_with(&e, &h, Some(b"2")).assert_status(201, "POST");
    assert_eq!(notification_data(&ua.recv_notification(DEADLINE)), b"2");
}

#[test]
fn invalid_topic_gets_400() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let long = "a".repeat(33);
    for t in [long.as_str(), "has space", "plus+slash/"] {
        push_with(&e, &[("TTL", "60"), ("Topic", t)], None).assert_json_error(400);
    }
    // 32 base64url characters is fine
    let ok = "abcdefghijklmnopqrstuvwxyz-_0123";
    push_with(&e, &[("TTL", "60"), ("Topic", ok)], None).assert_status(201, "32-char topic");
}

#[test]
fn urgency_high_goes_first_among_pending() {
    let server = Server::start_default();
    let (uaid, _c, e) = offline_ua(&server);
    let post = |urg: &str, body: &[u8]| {
        push_with(
            &e,
            &[
                ("TTL", "60"),
                ("Content-Encoding", "aes128gcm"),
                ("Urgency", urg),
            ],
            Some(body),
        )
        .assert_status(201, "POST with Urgency");
    };
    post("normal", b"n1");
    post("low", b"l1");
    post("normal", b"n2");
    post("high", b"h1");
    let mut ua = server.ua_resume(&uaid, true);
    let first = ua.recv_notification(DEADLINE);
    assert_eq!(
        notification_data(&first),
        b"h1",
        "high urgency first: {first}"
    );
    let rest = ua.collect_until_quiet(NEG_WINDOW);
    let mut got = datas(&rest);
    got.sort();
    assert_eq!(got, vec![b"l1".to_vec(), b"n1".to_vec(), b"n2".to_vec()]);
}

#[test]
fn delete_message_cancels_undelivered() {
    let server = Server::start_default();
    let (uaid, _c, e) = offline_ua(&server);
    let r = push_aes128gcm(&e, b"cancel-me", 60);
    r.assert_status(201, "POST");
    let loc = r.header("Location").expect("Location").to_string();
    let d = http("DELETE", &loc, &[], None);
    d.assert_status(204, "DELETE /m/<id>");
    push_aes128gcm(&e, b"keep-me", 60).assert_status(201, "POST");
    let mut ua = server.ua_resume(&uaid, true);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    assert_eq!(
        datas(&msgs),
        vec![b"keep-me".to_vec()],
        "deleted message not delivered: {msgs:?}"
    );
}

#[test]
fn unknown_and_tampered_tokens_get_404_json() {
    let server = Server::start_default();
    let (_uaid, _c, e) = offline_ua(&server);
    push_aes128gcm(
        &format!(
            "{}/wpush/v1/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            server.as_url()
        ),
        b"x",
        60,
    )
    .assert_json_error(404);
    let (base, tok) = e.rsplit_once('/').unwrap();
    let mut t: Vec<u8> = tok.as_bytes().to_vec();
    let mid = t.len() / 2;
    t[mid] = if t[mid] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{base}/{}", String::from_utf8(t).unwrap());
    push_aes128gcm(&tampered, b"x", 60).assert_json_error(404);
}

#[test]
fn unregistered_channel_gets_410_json() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (c, e) = ua.register_new();
    ua.unregister(&c);
    push_aes128gcm(&e, b"x", 60).assert_json_error(410);
}

/// A 410 is final: it says so for a day (`Cache-Control: max-age=86400`, as
/// autopush does), to senders and to any cache in front of Herald.
#[test]
fn gone_endpoint_may_be_cached_for_a_day() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (c, e) = ua.register_new();
    let live = push_aes128gcm(&e, b"x", 60);
    live.assert_status(201, "POST to a live channel");
    assert_eq!(
        live.header("Cache-Control"),
        None,
        "a 201 is not cacheable: {live:?}"
    );
    let n = ua.recv_notification(DEADLINE);
    ua.ack_notification(&n);
    ua.unregister(&c);
    let gone = push_aes128gcm(&e, b"x", 60);
    gone.assert_json_error(410);
    assert_eq!(
        gone.header("Cache-Control"),
        Some("max-age=86400"),
        "410 headers: {:?}",
        gone.headers
    );
}

#[test]
fn prefer_respond_async_gives_202_receipt_link_and_delivery_state() {
    let server = Server::start_default();
    let (uaid, _c, e) = offline_ua(&server);
    let r = push_with(
        &e,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aes128gcm"),
            ("Prefer", "respond-async"),
        ],
        Some(b"tracked"),
    );
    r.assert_status(202, "POST with Prefer: respond-async");
    let link = r
        .header("Link")
        .unwrap_or_else(|| panic!("Link header: {r:?}"));
    assert!(
        link.contains("rel=\"urn:ietf:params:push:receipt\""),
        "receipt Link: {link}"
    );
    let loc = r
        .header("Location")
        .unwrap_or_else(|| panic!("Location header on 202: {r:?}"))
        .to_string();
    let state = |want: &str| {
        let g = http("GET", &loc, &[], None);
        g.assert_status(200, "GET /m/<id>");
        g.json()["state"] == want
    };
    wait_until(DEADLINE, "state stored while the UA is away", || {
        state("stored")
    });
    let mut ua = server.ua_resume(&uaid, true);
    let n = ua.recv_notification(DEADLINE);
    assert_eq!(notification_data(&n), b"tracked");
    wait_until(DEADLINE, "state delivered once sent to the UA", || {
        state("delivered")
    });
    ua.ack_notification(&n);
    wait_until(DEADLINE, "state acked after the UA's ack", || {
        state("acked")
    });
}

#[test]
fn error_bodies_are_json_with_code_and_errno() {
    let server = Server::start_default();
    let r = http(
        "POST",
        &format!("{}/wpush/v1/nope", server.as_url()),
        &[("TTL", "60")],
        None,
    );
    r.assert_json_error(404);
}

// Pipelined HTTP/1.1: many requests written at once on one connection.

/// A `POST` of `data` to `endpoint` as raw bytes, with `extra` header lines.
fn raw_push(server: &Server, endpoint: &str, data: &str, extra: &str) -> Vec<u8> {
    let path = endpoint
        .strip_prefix(&server.as_url())
        .unwrap_or_else(|| panic!("endpoint {endpoint} is on {}", server.as_url()));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\n\
         {extra}Content-Length: {}\r\n\r\n{data}",
        server.as_addr(),
        data.len()
    )
    .into_bytes()
}

/// Writes `requests` in one go and reads `answers` answers; then whether
/// the server closed the connection.
fn pipelined(server: &Server, requests: &[Vec<u8>], answers: usize) -> (Vec<RawHttp>, bool) {
    let mut conn = RawConn::connect(&server.as_addr());
    conn.send(&requests.concat());
    let read = (0..answers).map(|_| conn.read_response(DEADLINE)).collect();
    (read, conn.closes_within(NEG_WINDOW))
}

fn statuses(answers: &[RawHttp]) -> Vec<Option<u16>> {
    answers.iter().map(|answer| answer.status).collect()
}

#[test]
fn pipelined_pushes_are_answered_and_delivered_in_order() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    // The eighth has no TTL: its 400 keeps its place among the 201s.
    let requests: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let push = raw_push(&server, &e, &format!("m{i}"), "");
            if i == 7 {
                String::from_utf8(push)
                    .unwrap()
                    .replace("TTL: 60\r\n", "")
                    .into_bytes()
            } else {
                push
            }
        })
        .collect();
    let (answers, closed) = pipelined(&server, &requests, requests.len());
    let expected: Vec<Option<u16>> = (0..20)
        .map(|i| Some(if i == 7 { 400 } else { 201 }))
        .collect();
    assert_eq!(statuses(&answers), expected, "{answers:?}");
    assert!(!closed, "keep-alive connection stays open");
    let locations: std::collections::BTreeSet<_> = answers
        .iter()
        .filter_map(|answer| answer.head.lines().find(|l| l.starts_with("Location")))
        .collect();
    assert_eq!(
        locations.len(),
        19,
        "one message id per stored push: {answers:?}"
    );
    let mut got = Vec::new();
    while got.len() < 19 {
        got.push(notification_data(&ua.recv_notification(DEADLINE)));
    }
    let sent: Vec<Vec<u8>> = (0..20)
        .filter(|&i| i != 7)
        .map(|i| format!("m{i}").into_bytes())
        .collect();
    assert_eq!(got, sent, "delivered in the order they were sent");
}

#[test]
fn a_framing_error_mid_pipeline_answers_what_came_before_then_closes() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let requests = [
        raw_push(&server, &e, "a", ""),
        raw_push(&server, &e, "b", ""),
        b"\x00\x01 nonsense\r\n\r\n".to_vec(),
        raw_push(&server, &e, "c", ""),
    ];
    let (answers, closed) = pipelined(&server, &requests, 3);
    assert_eq!(
        statuses(&answers),
        [Some(201), Some(201), Some(400)],
        "{answers:?}"
    );
    assert!(closed, "request boundaries are lost after a framing error");
    let got: Vec<Vec<u8>> = ua
        .collect_until_quiet(NEG_WINDOW)
        .iter()
        .map(notification_data)
        .collect();
    assert_eq!(
        got,
        [b"a".to_vec(), b"b".to_vec()],
        "nothing after the bad request is stored"
    );
}

#[test]
fn connection_close_mid_pipeline_is_the_last_request_answered() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let requests = [
        raw_push(&server, &e, "a", ""),
        raw_push(&server, &e, "b", "Connection: close\r\n"),
        raw_push(&server, &e, "c", ""),
    ];
    let (answers, closed) = pipelined(&server, &requests, 2);
    assert_eq!(statuses(&answers), [Some(201), Some(201)], "{answers:?}");
    assert!(
        answers[1]
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{answers:?}"
    );
    assert!(closed, "closed after the request that asked for it");
    let got: Vec<Vec<u8>> = ua
        .collect_until_quiet(NEG_WINDOW)
        .iter()
        .map(notification_data)
        .collect();
    assert_eq!(
        got,
        [b"a".to_vec(), b"b".to_vec()],
        "the request after the close is not served"
    );
}

#[test]
fn message_outcomes_are_remembered_up_to_their_limit_oldest_forgotten_first() {
    let server = Server::start(
        ServerOptions::new()
            .shards(1)
            .limit("message_outcomes_max", 2),
    );
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let headers = [
        ("TTL", "60"),
        ("Content-Encoding", "aes128gcm"),
        ("Prefer", "respond-async"),
    ];
    let receipts: Vec<String> = (0..3)
        .map(|i| {
            let r = push_with(&e, &headers, Some(format!("m{i}").as_bytes()));
            r.assert_status(202, "POST with Prefer: respond-async");
            let n = ua.recv_notification(DEADLINE);
            ua.ack_notification(&n);
            r.header("Location").expect("Location").to_owned()
        })
        .collect();
    let state = |location: &str| {
        let answer = http("GET", location, &[], None);
        (answer.status, answer.json()["state"].clone())
    };
    wait_until(DEADLINE, "the last two acks are remembered", || {
        state(&receipts[1]) == (200, "acked".into()) && state(&receipts[2]) == (200, "acked".into())
    });
    assert_eq!(
        state(&receipts[0]).0,
        404,
        "the oldest outcome is forgotten"
    );
}
