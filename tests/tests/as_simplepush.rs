//! SPEC §4.1 SimplePush `PUT <endpoint>` from the AS side.

use herald_tests::serde_json::{json, Value};
use herald_tests::*;

#[test]
fn put_version_answers_200_empty_json_object() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (c, e) = ua.register_new();
    let r = put_version(&e, 1);
    r.assert_status(200, "PUT version=1");
    assert_eq!(r.json(), json!({}), "body is {{}}");
    assert_eq!(
        sp_updates(&[ua.recv_notification(DEADLINE)]),
        vec![(c, Value::from(1u64))]
    );
}

#[test]
fn put_empty_body_answers_200() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (_c, e) = ua.register_new();
    let r = put_form(&e, "");
    r.assert_status(200, "PUT with empty body");
    assert_eq!(r.json(), json!({}));
    ua.recv_notification(DEADLINE);
}

#[test]
fn largest_version_is_accepted_and_delivered_exactly() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (c, e) = ua.register_new();
    let max = (1u64 << 63) - 1;
    put_version(&e, max).assert_status(200, "PUT version=2^63-1");
    let ups = sp_updates(&[ua.recv_notification(DEADLINE)]);
    assert_eq!(ups, vec![(c, Value::from(max))]);
}

#[test]
fn version_zero_is_accepted() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (_c, e) = ua.register_new();
    put_version(&e, 0).assert_status(200, "PUT version=0");
}

#[test]
fn bad_version_or_body_gets_400_json() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (_c, e) = ua.register_new();
    for body in [
        "version=abc",
        "version=-1",
        "version=1.5",
        "version=9223372036854775808", // 2^63
        "version=99999999999999999999999999",
        "foo=bar",
        "\u{1}\u{2}binary",
    ] {
        put_form(&e, body).assert_json_error(400);
    }
    // nothing reached the UA
    ua.expect_silence(std::time::Duration::from_millis(300));
}

#[test]
fn bad_desktop_ttl_gets_400() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (_c, e) = ua.register_new();
    put_form(&e, "body=hi&ttl=abc").assert_json_error(400);
    put_form(&e, "body=hi&ttl=-5").assert_json_error(400);
}

#[test]
fn unknown_token_gets_404_json() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (_c, e) = ua.register_new();
    put_version(
        &format!(
            "{}/wpush/v1/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            server.as_url()
        ),
        1,
    )
    .assert_json_error(404);
    put_version(&format!("{}/wpush/v1/garbage!", server.as_url()), 1).assert_json_error(404);
    // a real token with one character changed
    let (base, tok) = e.rsplit_once('/').unwrap();
    let mut t: Vec<u8> = tok.as_bytes().to_vec();
    let mid = t.len() / 2;
    t[mid] = if t[mid] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{base}/{}", String::from_utf8(t).unwrap());
    put_version(&tampered, 1).assert_json_error(404);
}

#[test]
fn unregistered_channel_gets_410_json() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (c, e) = ua.register_new();
    ua.unregister(&c);
    put_version(&e, 3).assert_json_error(410);
}

#[test]
fn body_too_large_gets_413_json() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (_c, e) = ua.register_new();
    let big = format!("body={}", "x".repeat(5000));
    put_form(&e, &big).assert_json_error(413);
    ua.expect_silence(std::time::Duration::from_millis(300));
}

#[test]
fn put_works_on_a_v1_endpoint_registered_by_a_webpush_ua() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    assert!(e.contains("/wpush/v1/"));
    put_version(&e, 12).assert_status(200, "PUT on a Web Push UA's endpoint");
    let n = ua.recv_notification(DEADLINE);
    assert_eq!(n["version"], "12");
}
