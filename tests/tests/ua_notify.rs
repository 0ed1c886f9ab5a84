//! SPEC §3.3 notification forms: Web Push, SimplePush (batched updates),
//! desktop notifications, and delivery across modes. Plus §7 collapse rules.

use herald_tests::serde_json::Value;
use herald_tests::*;

fn message_id_from_location(r: &HttpResponse) -> String {
    let loc = r
        .header("Location")
        .unwrap_or_else(|| panic!("201 has Location: {r:?}"));
    loc.rsplit('/').next().unwrap().to_string()
}

#[test]
fn webpush_aes128gcm_body_reaches_ua_byte_for_byte() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (c, e) = ua.register_new();
    let body = random_bytes(3000);
    let r = push_aes128gcm(&e, &body, 60);
    r.assert_status(201, "POST aes128gcm");
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &c), "{n}");
    let version = n["version"]
        .as_str()
        .unwrap_or_else(|| panic!("version is a string (message id): {n}"));
    assert!(!version.is_empty());
    assert_eq!(
        version,
        message_id_from_location(&r),
        "version is the message id of Location"
    );
    assert_eq!(notification_data(&n), body, "data is the body, base64url");
    assert_eq!(n["headers"]["encoding"], "aes128gcm", "{n}");
    assert!(n["updates"].is_null(), "Web Push form has no updates: {n}");
}

#[test]
fn webpush_without_body_has_no_data_or_headers() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (c, e) = ua.register_new();
    push_empty(&e, 60).assert_status(201, "POST without body");
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &c));
    assert!(n["version"].is_string(), "{n}");
    assert!(absent(&n["data"]), "no data without body: {n}");
    assert!(absent(&n["headers"]), "no headers without body: {n}");
}

#[test]
fn aesgcm_encryption_and_crypto_key_reach_ua_as_headers() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let salt = format!("salt={}", b64url_encode(&random_bytes(16)));
    let dh = format!("dh={}", b64url_encode(&random_bytes(65)));
    let body = random_bytes(200);
    let r = push_with(
        &e,
        &[
            ("TTL", "60"),
            ("Content-Encoding", "aesgcm"),
            ("Encryption", &salt),
            ("Crypto-Key", &dh),
        ],
        Some(&body),
    );
    r.assert_status(201, "POST aesgcm");
    let n = ua.recv_notification(DEADLINE);
    assert_eq!(notification_data(&n), body);
    assert_eq!(n["headers"]["encoding"], "aesgcm", "{n}");
    assert_eq!(n["headers"]["encryption"], salt.as_str(), "{n}");
    assert_eq!(n["headers"]["crypto_key"], dh.as_str(), "{n}");
}

/// Senders may quote `aesgcm` parameters and pad their base64; Firefox
/// decodes `salt` and `dh` with padding rejected and would drop the message.
/// The UA gets them unquoted and unpadded (as autopush delivers them),
/// delivered live and from storage alike; the body is untouched.
#[test]
fn aesgcm_params_reach_ua_unquoted_and_unpadded() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    // 16 and 65 bytes: standard base64 pads them with "==" and "=".
    let salt = b64url_encode(&random_bytes(16));
    let dh = b64url_encode(&random_bytes(65));
    let encryption = format!(r#"keyid="http://example.org/keys/1";salt="{salt}==""#);
    let crypto_key = format!(r#"keyid="a1"; dh="{dh}=""#);
    let body = random_bytes(100);
    let headers = [
        ("TTL", "60"),
        ("Content-Encoding", "aesgcm"),
        ("Encryption", encryption.as_str()),
        ("Crypto-Key", crypto_key.as_str()),
    ];
    push_with(&e, &headers, Some(&body)).assert_status(201, "POST padded aesgcm");
    let live = ua.recv_notification(DEADLINE);
    ua.ack_notification(&live);
    let uaid = ua.uaid();
    ua.close();
    push_with(&e, &headers, Some(&body)).assert_status(201, "POST while away");
    let mut back = server.ua_resume(&uaid, true);
    let stored = back.recv_notification(DEADLINE);
    for n in [live, stored] {
        assert_eq!(notification_data(&n), body, "{n}");
        assert_eq!(
            n["headers"]["encryption"],
            format!("keyid=http://example.org/keys/1;salt={salt}").as_str(),
            "{n}"
        );
        assert_eq!(
            n["headers"]["crypto_key"],
            format!("keyid=a1; dh={dh}").as_str(),
            "{n}"
        );
    }
}

#[test]
fn several_webpush_messages_each_delivered_with_distinct_ids() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, e) = ua.register_new();
    let mut sent = vec![];
    for i in 0..5u8 {
        push_aes128gcm(&e, &[i; 10], 60).assert_status(201, "POST");
        sent.push(vec![i; 10]);
    }
    let mut got = vec![];
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let n = ua.recv_notification(DEADLINE);
        assert!(
            ids.insert(n["version"].as_str().unwrap().to_string()),
            "distinct message ids"
        );
        got.push(notification_data(&n));
    }
    got.sort();
    assert_eq!(got, sent);
}

#[test]
fn webpush_messages_do_not_collapse_without_topic() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (_c, e) = ua.register_new();
    ua.close();
    push_aes128gcm(&e, b"first", 60).assert_status(201, "POST");
    push_aes128gcm(&e, b"second", 60).assert_status(201, "POST");
    let mut ua = server.ua_resume(&uaid, true);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    let mut got: Vec<Vec<u8>> = msgs.iter().map(notification_data).collect();
    got.sort();
    assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
}

#[test]
fn simplepush_version_delivered_as_updates() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (c, e) = ua.register_new();
    let r = put_version(&e, 5);
    r.assert_status(200, "PUT version=5");
    let n = ua.recv_notification(DEADLINE);
    let ups = sp_updates(std::slice::from_ref(&n));
    assert_eq!(
        ups,
        vec![(c.clone(), Value::from(5u64))],
        "updates [{{channelID, version: 5}}]: {n}"
    );
    assert!(ups[0].1.is_u64(), "version is a JSON number: {n}");
}

#[test]
fn simplepush_empty_body_version_is_current_time_ms() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (c, e) = ua.register_new();
    let before = now_ms();
    put_form(&e, "").assert_status(200, "PUT empty body");
    let after = now_ms();
    let ups = sp_updates(&[ua.recv_notification(DEADLINE)]);
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].0, c);
    let v = ups[0]
        .1
        .as_u64()
        .unwrap_or_else(|| panic!("numeric version: {ups:?}"));
    assert!(
        v + 2000 >= before && v <= after + 2000,
        "version {v} is Unix ms near [{before}, {after}]"
    );
}

#[test]
fn simplepush_pending_versions_of_several_channels_delivered_on_reconnect() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let uaid = ua.uaid();
    let (c1, e1) = ua.register_new();
    let (c2, e2) = ua.register_new();
    ua.close();
    put_version(&e1, 11).assert_status(200, "PUT");
    put_version(&e2, 22).assert_status(200, "PUT");
    let mut ua = server.ua_resume(&uaid, false);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    let mut ups = sp_updates(&msgs);
    ups.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![(c1, Value::from(11u64)), (c2, Value::from(22u64))];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(ups, want, "{msgs:?}");
}

#[test]
fn simplepush_versions_collapse_to_newest_while_offline() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let uaid = ua.uaid();
    let (c, e) = ua.register_new();
    ua.close();
    put_version(&e, 5).assert_status(200, "PUT 5");
    put_version(&e, 9).assert_status(200, "PUT 9");
    let mut ua = server.ua_resume(&uaid, false);
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    assert_eq!(
        sp_updates(&msgs),
        vec![(c, Value::from(9u64))],
        "only the newest version: {msgs:?}"
    );
}

#[test]
fn simplepush_version_not_newer_is_accepted_but_not_resent() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let uaid = ua.uaid();
    let (c, e) = ua.register_new();
    put_version(&e, 10).assert_status(200, "PUT 10");
    let ups = sp_updates(&[ua.recv_notification(DEADLINE)]);
    assert_eq!(ups, vec![(c.clone(), Value::from(10u64))]);
    ua.ack(&c, Value::from(10u64));
    // same and older: accepted, not sent
    let r = put_version(&e, 10);
    r.assert_status(200, "PUT same version");
    put_version(&e, 7).assert_status(200, "PUT older version");
    ua.expect_silence(NEG_WINDOW);
    // offline too
    ua.close();
    put_version(&e, 8).assert_status(200, "PUT older version while offline");
    let mut ua = server.ua_resume(&uaid, false);
    ua.expect_silence(NEG_WINDOW);
    // a newer one still goes through
    put_version(&e, 11).assert_status(200, "PUT 11");
    assert_eq!(
        sp_updates(&[ua.recv_notification(DEADLINE)]),
        vec![(c, Value::from(11u64))]
    );
}

#[test]
fn desktop_notification_body_and_ttl() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (c, e) = ua.register_new();
    put_form(&e, "body=Hello%20desktop%21&ttl=60").assert_status(200, "PUT body=&ttl=");
    let n = ua.recv_type("desktop-notification", DEADLINE);
    let ups = n["updates"]
        .as_array()
        .unwrap_or_else(|| panic!("updates: {n}"));
    assert_eq!(ups.len(), 1, "{n}");
    let u = &ups[0];
    assert!(same_channel(&u["channelID"], &c), "{n}");
    assert!(u["version"].is_u64(), "numeric version: {n}");
    assert_eq!(u["body"], "Hello desktop!", "{n}");
    assert_eq!(u["ttl"], 60, "{n}");
}

#[test]
fn webpush_message_to_simplepush_socket_becomes_update_with_arrival_time() {
    let server = Server::start_default();
    let mut ua = server.ua_simplepush();
    let (c, e) = ua.register_new();
    let before = now_ms();
    push_aes128gcm(&e, b"ciphertext", 60).assert_status(201, "POST");
    let after = now_ms();
    let n = ua.recv_notification(DEADLINE);
    let ups = sp_updates(std::slice::from_ref(&n));
    assert_eq!(ups.len(), 1, "{n}");
    assert_eq!(ups[0].0, c);
    let v = ups[0]
        .1
        .as_u64()
        .unwrap_or_else(|| panic!("numeric version: {n}"));
    assert!(
        v + 2000 >= before && v <= after + 2000,
        "version {v} is arrival ms near [{before}, {after}]"
    );
    assert!(absent(&n["data"]), "SimplePush form carries no data: {n}");
}

#[test]
fn simplepush_version_to_webpush_socket_becomes_notification_with_string_version() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (c, e) = ua.register_new();
    put_version(&e, 7).assert_status(200, "PUT version=7");
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &c), "{n}");
    assert_eq!(n["version"], "7", "version is the number as a string: {n}");
    assert!(absent(&n["data"]), "no data: {n}");
    assert!(n["updates"].is_null(), "{n}");
}

#[test]
fn desktop_body_to_webpush_socket_becomes_notification_without_data() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (c, e) = ua.register_new();
    put_form(&e, "body=hi&ttl=60").assert_status(200, "PUT body=hi");
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &c), "{n}");
    let v = n["version"]
        .as_str()
        .unwrap_or_else(|| panic!("string version: {n}"));
    assert!(
        v.parse::<u64>().is_ok(),
        "version is a number as a string: {n}"
    );
    assert!(absent(&n["data"]), "no data: {n}");
}

#[test]
fn message_sent_while_webpush_is_delivered_in_simplepush_form_after_mode_change() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let uaid = ua.uaid();
    let (c, e) = ua.register_new();
    ua.close();
    push_aes128gcm(&e, b"x", 60).assert_status(201, "POST");
    let mut ua = server.ua_resume(&uaid, false); // now a SimplePush socket
    let msgs = ua.collect_until_quiet(NEG_WINDOW);
    let ups = sp_updates(&msgs);
    assert_eq!(ups.len(), 1, "{msgs:?}");
    assert_eq!(ups[0].0, c);
    assert!(ups[0].1.is_u64(), "{msgs:?}");
}
