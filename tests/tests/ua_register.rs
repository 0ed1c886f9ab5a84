//! SPEC §3.2 register / unregister (and the endpoint forms of §4 / §6).

use herald_tests::*;

fn token_of(endpoint: &str) -> &str {
    endpoint.rsplit('/').next().unwrap()
}

#[test]
fn register_returns_v1_endpoint_on_the_as_listener() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let c = new_channel_id();
    let r = ua.register_reply(&c, None);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(
        r["channelID"].as_str().map(|s| s.to_ascii_lowercase()),
        Some(c.clone()),
        "{r}"
    );
    let e = r["pushEndpoint"].as_str().expect("pushEndpoint");
    let prefix = format!("{}/wpush/v1/", server.as_url());
    assert!(
        e.starts_with(&prefix),
        "endpoint {e:?} starts with {prefix:?}"
    );
    assert!(token_of(e).len() >= 16, "endpoint has a token: {e}");
    assert!(
        token_of(e)
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='),
        "token is base64url: {e}"
    );
}

#[test]
fn register_is_idempotent_on_the_same_socket_and_after_reconnect() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let c = new_channel_id();
    let e1 = ua.register(&c);
    let e2 = ua.register(&c);
    assert_eq!(e1, e2, "same channelID, same endpoint");
    ua.close();
    let mut ua = server.ua_resume(&uaid, true);
    let e3 = ua.register(&c);
    assert_eq!(e1, e3, "same endpoint after reconnect");
    // and it delivers
    assert_eq!(push_aes128gcm(&e1, b"hi", 60).status, 201);
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &c));
}

#[test]
fn different_channels_and_different_uas_get_different_endpoints() {
    let server = Server::start_default();
    let mut a = server.ua_webpush();
    let mut b = server.ua_webpush();
    let c1 = new_channel_id();
    let c2 = new_channel_id();
    let a1 = a.register(&c1);
    let a2 = a.register(&c2);
    let b1 = b.register(&c1); // same channelID on another UA
    assert_ne!(a1, a2);
    assert_ne!(a1, b1, "same channelID on two UAIDs: two endpoints");
    assert_eq!(push_aes128gcm(&b1, b"for-b", 60).status, 201);
    let n = b.recv_notification(DEADLINE);
    assert_eq!(notification_data(&n), b"for-b");
    a.expect_silence(std::time::Duration::from_millis(300));
}

#[test]
fn endpoint_token_is_opaque() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let c = new_channel_id();
    let e = ua.register(&c);
    let t = token_of(&e).to_ascii_lowercase();
    assert!(
        !e.to_ascii_lowercase().contains(&uaid),
        "endpoint reveals the UAID: {e}"
    );
    assert!(
        !e.to_ascii_lowercase().contains(&c),
        "endpoint reveals the channelID: {e}"
    );
    assert!(
        !t.contains(&c.replace('-', "")),
        "endpoint reveals the channelID hex: {e}"
    );
}

#[test]
fn channel_id_in_any_case_is_the_same_channel() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let c = new_channel_id();
    let upper = c.to_ascii_uppercase();
    let r = ua.register_reply(&upper, None);
    assert_eq!(r["status"], 200, "upper-case UUID accepted: {r}");
    let e_upper = r["pushEndpoint"].as_str().unwrap().to_string();
    let e_lower = ua.register(&c);
    assert_eq!(e_upper, e_lower, "upper and lower case are one channel");
    assert_eq!(push_empty(&e_upper, 60).status, 201);
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &c), "{n}");
}

#[test]
fn invalid_channel_id_gets_457_and_socket_stays_usable() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    for bad in [
        "not-a-uuid",
        "",
        "1234",
        "0123456789abcdef0123456789abcdef0", // 33 hex, no dashes
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8-extra",
    ] {
        let r = ua.register_reply(bad, None);
        assert_eq!(r["status"], 457, "channelID {bad:?}: 457: {r}");
    }
    ua.register_new();
}

#[test]
fn register_with_key_gives_v2_endpoint_padded_and_unpadded() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let padded = format!("{VAPID_KEY_G}=");
    for key in [VAPID_KEY_G.to_string(), padded] {
        let c = new_channel_id();
        let r = ua.register_reply(&c, Some(&key));
        assert_eq!(r["status"], 200, "key {key:?}: {r}");
        let e = r["pushEndpoint"].as_str().expect("pushEndpoint");
        assert!(
            e.starts_with(&format!("{}/wpush/v2/", server.as_url())),
            "endpoint of a channel with key contains /wpush/v2/: {e}"
        );
    }
}

#[test]
fn register_with_bad_key_gets_400() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let mut not_on_curve = vec![4u8];
    not_on_curve.extend_from_slice(&[0u8; 64]);
    let bad_keys = [
        "not base64 !!".to_string(),
        b64url_encode(&random_bytes(10)),
        b64url_encode(&not_on_curve),
    ];
    for k in bad_keys.iter() {
        let c = new_channel_id();
        let r = ua.register_reply(&c, Some(k));
        assert_eq!(r["status"], 400, "bad key {k:?}: 400: {r}");
    }
    ua.register_new();
}

#[test]
fn unregister_replies_200_and_as_gets_410() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (c, e) = ua.register_new();
    let r = ua.unregister(&c);
    assert_eq!(r["status"], 200, "{r}");
    assert!(same_channel(&r["channelID"], &c), "{r}");
    push_aes128gcm(&e, b"x", 60).assert_json_error(410);
    push_empty(&e, 60).assert_json_error(410);
    put_version(&e, 5).assert_json_error(410);
    ua.expect_silence(std::time::Duration::from_millis(300));
}

#[test]
fn unregister_is_idempotent() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (c, e) = ua.register_new();
    assert_eq!(ua.unregister(&c)["status"], 200);
    assert_eq!(ua.unregister(&c)["status"], 200, "second unregister is 200");
    assert_eq!(
        ua.unregister(&new_channel_id())["status"],
        200,
        "never-registered channel: 200"
    );
    push_aes128gcm(&e, b"x", 60).assert_json_error(410);
}

#[test]
fn unregistered_channel_stays_gone_after_reconnect() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (c, e) = ua.register_new();
    let (_c2, e2) = ua.register_new();
    ua.unregister(&c);
    ua.close();
    let mut ua = server.ua_resume(&uaid, true);
    push_aes128gcm(&e, b"x", 60).assert_json_error(410);
    assert_eq!(push_aes128gcm(&e2, b"y", 60).status, 201);
    assert_eq!(notification_data(&ua.recv_notification(DEADLINE)), b"y");
}
