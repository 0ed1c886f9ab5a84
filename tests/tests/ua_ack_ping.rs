//! SPEC §3.4 ack, nack, ping, retry timer and idle timeouts.

use herald_tests::serde_json::{json, Value};
use herald_tests::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const RETRY_MS: u64 = 300;

fn retry_server() -> Server {
    Server::start(ServerOptions::new().limit("retry_interval_ms", RETRY_MS))
}

#[test]
fn ack_frees_the_message_no_resend_on_reconnect() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (_c, e) = ua.register_new();
    push_aes128gcm(&e, b"m", 60).assert_status(201, "POST");
    let n = ua.recv_notification(DEADLINE);
    ua.ack_notification(&n);
    // the ack is processed before the next message on the socket: a ping round trip
    ua.send_json(&json!({}));
    assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
    ua.close();
    let mut ua = server.ua_resume(&uaid, true);
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn unacked_message_is_resent_on_next_connection() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (c, e) = ua.register_new();
    push_aes128gcm(&e, b"again", 60).assert_status(201, "POST");
    let n1 = ua.recv_notification(DEADLINE);
    ua.close();
    let mut ua = server.ua_resume(&uaid, true);
    let n2 = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n2["channelID"], &c));
    assert_eq!(n2["version"], n1["version"], "same message id re-sent");
    assert_eq!(notification_data(&n2), b"again");
    ua.ack_notification(&n2);
    ua.close();
    let mut ua = server.ua_resume(&uaid, true);
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn ack_frees_only_the_acked_message() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (_c, e) = ua.register_new();
    push_aes128gcm(&e, b"one", 60).assert_status(201, "POST");
    push_aes128gcm(&e, b"two", 60).assert_status(201, "POST");
    let a = ua.recv_notification(DEADLINE);
    let b = ua.recv_notification(DEADLINE);
    let (acked, kept) = if notification_data(&a) == b"one" {
        (a, b)
    } else {
        (b, a)
    };
    ua.ack_notification(&acked);
    ua.send_json(&json!({}));
    assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
    ua.close();
    let mut ua = server.ua_resume(&uaid, true);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    assert_eq!(
        msgs.len(),
        1,
        "only the unacked message is re-sent: {msgs:?}"
    );
    assert_eq!(msgs[0]["version"], kept["version"]);
}

#[test]
fn retry_timer_resends_unacked_on_live_socket() {
    let server = retry_server();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_aes128gcm(&e, b"retry-me", 60).assert_status(201, "POST");
    let n1 = ua.recv_notification(DEADLINE);
    let t0 = Instant::now();
    let n2 = ua.recv_notification(Duration::from_millis(RETRY_MS * 10));
    assert_eq!(
        n2["version"], n1["version"],
        "the same message is re-sent by the retry timer"
    );
    assert_eq!(notification_data(&n2), b"retry-me");
    assert!(
        t0.elapsed() >= Duration::from_millis(RETRY_MS / 2),
        "not re-sent immediately"
    );
    ua.ack_notification(&n2);
    // once acked: no further re-send (bounded: well over 2x the interval)
    ua.expect_silence(Duration::from_millis(RETRY_MS * 3));
}

#[test]
fn acked_message_is_not_resent_by_retry_timer() {
    let server = retry_server();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_aes128gcm(&e, b"ok", 60).assert_status(201, "POST");
    let n = ua.recv_notification(DEADLINE);
    ua.ack_notification(&n);
    ua.expect_silence(Duration::from_millis(RETRY_MS * 3));
}

#[test]
fn simplepush_ack_with_numeric_version_frees() {
    let server = retry_server();
    let mut ua = server.ua_simplepush();
    let uaid = ua.uaid();
    let (c, e) = ua.register_new();
    put_version(&e, 42).assert_status(200, "PUT");
    let ups = sp_updates(&[ua.recv_notification(DEADLINE)]);
    assert_eq!(ups, vec![(c.clone(), Value::from(42u64))]);
    ua.ack(&c, Value::from(42u64));
    ua.expect_silence(Duration::from_millis(RETRY_MS * 3));
    ua.close();
    let mut ua = server.ua_resume(&uaid, false);
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn simplepush_unacked_version_resent_by_retry_timer() {
    let server = retry_server();
    let mut ua = server.ua_simplepush();
    let (c, e) = ua.register_new();
    put_version(&e, 3).assert_status(200, "PUT");
    assert_eq!(
        sp_updates(&[ua.recv_notification(DEADLINE)]),
        vec![(c.clone(), Value::from(3u64))]
    );
    let again = ua.recv_notification(Duration::from_millis(RETRY_MS * 10));
    assert_eq!(sp_updates(&[again]), vec![(c, Value::from(3u64))]);
}

#[test]
fn nack_is_recorded_in_metrics_and_socket_stays_open() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    push_aes128gcm(&e, b"sw-fails", 60).assert_status(201, "POST");
    let n = ua.recv_notification(DEADLINE);
    let before = server.metric_sum("nack");
    ua.send_json(&json!({"messageType":"nack","version":n["version"],"code":301}));
    ua.send_json(&json!({}));
    assert_eq!(
        ua.recv_json_with_deadline(DEADLINE),
        json!({}),
        "socket open after nack"
    );
    wait_until(DEADLINE, "a metric named *nack* rises after a nack", || {
        server.metric_sum("nack") > before
    });
}

#[test]
fn ping_empty_object_and_ping_message_get_empty_object() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    ua.send_json(&json!({}));
    assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
    ua.send_json(&json!({"messageType":"ping"}));
    assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
    ua.expect_silence(Duration::from_millis(200));
}

#[test]
fn text_ping_gets_text_pong() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    ua.send_text("PING");
    assert_eq!(ua.next_event(DEADLINE), WsEvent::Text("PONG".into()));
    // also on a Web Push socket
    let mut ua = server.ua_webpush();
    ua.send_text("PING");
    assert_eq!(ua.next_event(DEADLINE), WsEvent::Text("PONG".into()));
}

#[test]
fn websocket_ping_frame_gets_pong() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    ua.send_ping(b"hb-1");
    assert_eq!(ua.next_event(DEADLINE), WsEvent::Pong(b"hb-1".to_vec()));
}

#[test]
fn too_many_pings_closes_1008() {
    let server = Server::start_default(); // default: 10 a minute
    let mut ua = server.ua_webpush();
    let mut sent = 0;
    for _ in 0..20 {
        if ua.try_send_text("{}").is_err() {
            break;
        }
        sent += 1;
    }
    let (texts, code) = ua.drain_until_close(DEADLINE);
    assert_eq!(code, 1008, "too many pings: 1008");
    assert!(
        texts.iter().all(|t| t == "{}"),
        "only ping replies before the close: {texts:?}"
    );
    assert!(
        texts.len() >= 10,
        "the first 10 pings are answered ({} of {sent}): {texts:?}",
        texts.len()
    );
    assert!(texts.len() < 20, "not every ping is answered");
}

#[test]
fn ten_pings_a_minute_are_allowed() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    for _ in 0..8 {
        ua.send_json(&json!({}));
        assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
    }
    ua.expect_silence(Duration::from_millis(300));
}

#[test]
fn hello_timeout_closes_silent_socket() {
    let server = Server::start(ServerOptions::new().limit("hello_timeout_ms", 500));
    let mut silent = server.ua();
    let t0 = Instant::now();
    silent.expect_closed_or_eof(Duration::from_secs(5));
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "closed only after the hello timeout"
    );
    // a socket that said hello is not subject to the hello timeout
    let mut ua = server.ua_webpush();
    ua.expect_silence(Duration::from_millis(1200));
    ua.send_json(&json!({}));
    assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
}

#[test]
fn handshake_timeout_closes_idle_tcp() {
    let server = Server::start(ServerOptions::new().limit("handshake_timeout_ms", 500));
    for partial in [&b""[..], &b"GET / HTTP/1.1\r\nHost: x\r\n"[..]] {
        let mut s = TcpStream::connect(server.ua_addr()).unwrap();
        std::io::Write::write_all(&mut s, partial).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // e.g. a 408 response
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        assert!(
            closed,
            "idle TCP connection closed by the handshake timeout (partial {partial:?})"
        );
        assert!(t0.elapsed() < Duration::from_secs(4));
    }
}
