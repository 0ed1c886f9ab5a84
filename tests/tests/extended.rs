//! SPEC §3.6: the seed-003 "extended" protocol (subprotocol
//! `push-extended-notification`).
//!
//! A UA gets a token with `GET /token` on the UA listener, opens a WebSocket
//! with the extended subprotocol, announces itself with `registerUA`, and
//! registers each web app with `registerWA` (a WA token and the app server's
//! RSA public key), which returns the app's public `/notify/<token>` url. The
//! AS then `POST`s JSON notifications signed with its RSA private key (PKCS#1
//! v1.5 / SHA-256 over `message`) to that url, and every UA that registered
//! the same (watoken, key) pair gets them, live or after reconnecting, until
//! it acks them.
//!
//! Every server here runs 2 shards, so the tokens of one test (and the
//! registrations they make) are spread over both. Keys are 1024-bit RSA keys
//! generated from a seeded rng, one seed per key.

use std::collections::HashSet;
use std::time::Duration;

#[path = "support/extended.rs"]
mod extended_support;

use extended_support::*;
use herald_tests::serde_json::{json, Value};
use herald_tests::*;

const SHARDS: usize = 2;

fn start() -> Server {
    Server::start(ServerOptions::new().shards(SHARDS))
}

// ---------------------------------------------------------------------------
// tokens and handshake
// ---------------------------------------------------------------------------

#[test]
fn token_endpoint_issues_fresh_hex_tokens() {
    let server = start();
    let first = new_token(&server);
    let second = new_token(&server);
    assert_ne!(first, second, "two GET /token give two tokens");
}

#[test]
fn extended_subprotocol_is_echoed() {
    let server = start();
    let ua = ExtUa::connect(&server, "");
    assert_eq!(
        ua.ws.subprotocol.as_deref(),
        Some(SUBPROTOCOL),
        "the server answers with the extended subprotocol"
    );
}

// ---------------------------------------------------------------------------
// registerUA / registerWA
// ---------------------------------------------------------------------------

#[test]
fn register_ua_accepts_an_issued_token() {
    let server = start();
    let token = new_token(&server);
    let mut ua = ExtUa::connect(&server, &token);
    let r = ua.register_ua_reply();
    assert_fields(
        &r,
        &json!({"status": "REGISTERED", "statusCode": 200, "messageType": "registerUA"}),
        "registerUA with an issued token",
    );
}

#[test]
fn register_ua_refuses_tokens_this_server_did_not_issue() {
    let server = start();
    let other_server = Server::start(ServerOptions::new().shards(1));
    let refused = json!({
        "status": "ERROR",
        "statusCode": 401,
        "reason": "Token is not valid for this server",
        "messageType": "registerUA",
    });
    for (what, token) in [
        ("32 random hex characters", random_hex(16)),
        ("a token issued by another server", new_token(&other_server)),
    ] {
        let mut ua = ExtUa::connect(&server, &token);
        let r = ua.register_ua_reply();
        assert_fields(&r, &refused, &format!("registerUA with {what}"));
    }
}

#[test]
fn register_wa_returns_a_notify_url() {
    let server = start();
    let key = AppKey::new(1);
    let mut ua = ExtUa::fresh(&server);
    // register_wa checks the reply and the url's form.
    ua.register_wa(&server, "wa-token-1", &key);
}

#[test]
fn register_wa_url_depends_only_on_watoken_and_key() {
    let server = start();
    let key = AppKey::new(1);
    let other_key = AppKey::new(2);
    let mut first = ExtUa::fresh(&server);
    let mut second = ExtUa::fresh(&server);

    let url = first.register_wa(&server, "wa-token-1", &key);
    assert_eq!(
        second.register_wa(&server, "wa-token-1", &key),
        url,
        "the same (watoken, key) from another UA gives the same url"
    );
    assert_eq!(
        first.register_wa(&server, "wa-token-1", &key),
        url,
        "registering the same pair again gives the same url"
    );
    let other_watoken = first.register_wa(&server, "wa-token-2", &key);
    assert_ne!(other_watoken, url, "another watoken gives another url");
    let other_key_url = first.register_wa(&server, "wa-token-1", &other_key);
    assert_ne!(other_key_url, url, "another key gives another url");
    assert_ne!(other_key_url, other_watoken);
}

#[test]
fn register_wa_before_register_ua_is_refused() {
    let server = start();
    let key = AppKey::new(1);
    let token = new_token(&server);
    let mut ua = ExtUa::connect(&server, &token);
    let r = ua.register_wa_reply("wa-token-1", &key);
    assert_fields(
        &r,
        &json!({"status": "ERROR", "statusCode": 401, "messageType": "registerWA"}),
        "registerWA before registerUA",
    );
}

#[test]
fn non_json_frame_is_an_error() {
    let server = start();
    let mut ua = ExtUa::fresh(&server);
    ua.ws.send_text("this is { not JSON");
    let r = ua.recv();
    assert_fields(
        &r,
        &json!({
            "status": "ERROR",
            "statusCode": 400,
            "reason": "Data received is not a valid JSON package",
        }),
        "non-JSON text frame",
    );
}

// ---------------------------------------------------------------------------
// delivery
// ---------------------------------------------------------------------------

#[test]
fn signed_notification_reaches_the_connected_ua() {
    let server = start();
    let (mut ua, key, url) = registered_app(&server, 1);
    for priority in 1..=4 {
        let id = format!("as-id-{priority}");
        let sent = notify_with(&url, &key, &id, &format!("hello {priority}"), 60, priority);
        ua.expect_notifications(&[&sent], &url);
    }
}

#[test]
fn pending_notification_is_sent_right_after_register_ua() {
    let server = start();
    let (ua, key, url) = registered_app(&server, 1);
    let token = ua.token.clone();
    ua.close();

    let sent = notify(&url, &key, "as-id-offline", "sent while offline");
    // resume() asserts that the first message is the REGISTERED reply.
    let mut ua = ExtUa::resume(&server, &token);
    ua.expect_notifications(&[&sent], &url);
    ua.expect_silence();
}

#[test]
fn multicast_reaches_every_ua_of_the_url() {
    let server = start();
    let key = AppKey::new(1);
    // Four UAs: with two shards, their tokens almost surely span both.
    let mut uas: Vec<ExtUa> = (0..4).map(|_| ExtUa::fresh(&server)).collect();
    let urls: HashSet<String> = uas
        .iter_mut()
        .map(|ua| ua.register_wa(&server, "wa-token-shared", &key))
        .collect();
    assert_eq!(urls.len(), 1, "one url for one (watoken, key): {urls:?}");
    let url = urls.into_iter().next().unwrap();

    let sent = notify(&url, &key, "as-id-multicast", "to every device");
    for ua in &mut uas {
        ua.expect_notifications(&[&sent], &url);
    }
}

#[test]
fn get_all_messages_lists_pending_notifications() {
    let server = start();
    let (mut ua, key, url) = registered_app(&server, 1);
    assert_eq!(
        ua.get_all_messages(),
        Vec::<Value>::new(),
        "nothing pending yet"
    );

    let first = notify(&url, &key, "as-id-1", "first");
    let second = notify(&url, &key, "as-id-2", "second");
    let live = ua.expect_notifications(&[&first, &second], &url);

    // Delivered but not acked: still pending, same messageIds.
    let listed = match_notifications(&ua.get_all_messages(), &[&first, &second], &url);
    for (l, n) in listed.iter().zip(&live) {
        assert_eq!(l["messageId"], n["messageId"], "same message: {l} / {n}");
    }
}

#[test]
fn ack_frees_the_message_for_that_ua_only() {
    let server = start();
    let key = AppKey::new(1);
    let mut acking = ExtUa::fresh(&server);
    let mut other = ExtUa::fresh(&server);
    let url = acking.register_wa(&server, "wa-token-shared", &key);
    assert_eq!(other.register_wa(&server, "wa-token-shared", &key), url);

    let first = notify(&url, &key, "as-id-1", "first");
    let second = notify(&url, &key, "as-id-2", "second");
    let received = acking.expect_notifications(&[&first, &second], &url);
    other.expect_notifications(&[&first, &second], &url);

    acking.ack(&received[0]);
    // getAllMessages on the same socket is answered after the ack is handled.
    match_notifications(&acking.get_all_messages(), &[&second], &url);
    match_notifications(&other.get_all_messages(), &[&first, &second], &url);

    // On reconnect, only the unacked message is re-sent.
    let token = acking.token.clone();
    acking.close();
    let mut acking = ExtUa::resume(&server, &token);
    acking.expect_notifications(&[&second], &url);
    acking.expect_silence();
}

#[test]
fn expired_notifications_are_not_delivered() {
    let server = start();
    let (ua, key, url) = registered_app(&server, 1);
    let token = ua.token.clone();
    ua.close();

    let short = notify_with(&url, &key, "as-id-short", "expires", 1, 2);
    let long = notify_with(&url, &key, "as-id-long", "stays", 3600, 2);
    // Let the 1 s TTL run out, with margin for rounding to whole seconds:
    // time passing is itself the event waited for here.
    let expired_ms = short.timestamp_ms + 2500;
    std::thread::sleep(Duration::from_millis(expired_ms.saturating_sub(now_ms())));

    let mut ua = ExtUa::resume(&server, &token);
    ua.expect_notifications(&[&long], &url);
    ua.expect_silence();
    match_notifications(&ua.get_all_messages(), &[&long], &url);
}

// ---------------------------------------------------------------------------
// AS errors
// ---------------------------------------------------------------------------

#[test]
fn as_body_that_is_not_json_is_400() {
    let server = start();
    let (_ua, _key, url) = registered_app(&server, 1);
    let r = post_bytes(&url, b"messageType=notification&message=hi");
    assert_as_error(&r, 400, "JSON not valid");
}

#[test]
fn as_message_type_other_than_notification_is_400() {
    let server = start();
    let (_ua, key, url) = registered_app(&server, 1);
    let mut body = notification_body(&key, "as-id", "hi", 60, 2);
    body["messageType"] = json!("registerWA");
    assert_as_error(&post_json(&url, &body), 400, "Not messageType=notification");
}

#[test]
fn as_notification_without_signature_is_400() {
    let server = start();
    let (mut ua, key, url) = registered_app(&server, 1);
    let mut body = notification_body(&key, "as-id", "hi", 60, 2);
    body.as_object_mut().unwrap().remove("signature");
    assert_as_error(
        &post_json(&url, &body),
        400,
        "You must sign your message with your Private Key",
    );
    ua.expect_silence();
}

#[test]
fn as_bad_signature_is_401_and_dropped() {
    let server = start();
    let (mut ua, key, url) = registered_app(&server, 1);
    let other_key = AppKey::new(2);

    let mut by_other_key = notification_body(&key, "as-id-1", "hi", 60, 2);
    by_other_key["signature"] = json!(other_key.sign("hi"));
    let mut over_other_message = notification_body(&key, "as-id-2", "hi", 60, 2);
    over_other_message["signature"] = json!(key.sign("not hi"));

    for body in [by_other_key, over_other_message] {
        assert_as_error(
            &post_json(&url, &body),
            401,
            "Bad signature, dropping notification",
        );
    }
    ua.expect_silence();
    assert_eq!(ua.get_all_messages(), Vec::<Value>::new(), "nothing stored");
}

#[test]
fn as_body_too_big_is_413() {
    let server = start();
    let (_ua, key, url) = registered_app(&server, 1);
    let message = "x".repeat(AS_BODY_MAX_BYTES);
    let body = notification_body(&key, "as-id", &message, 60, 2).to_string();
    assert!(body.len() > AS_BODY_MAX_BYTES);
    assert_as_error(&post_bytes(&url, body.as_bytes()), 413, "Body too big");
}

#[test]
fn as_unknown_app_token_is_404() {
    let server = start();
    let (_ua, key, url) = registered_app(&server, 1);
    let body = notification_body(&key, "as-id", "hi", 60, 2);

    let (prefix, app_token) = url.rsplit_once('/').unwrap();
    // Another first character, kept in both the hex and base64url alphabets.
    let replacement = if app_token.starts_with('0') { "1" } else { "0" };
    let altered = format!("{prefix}/{replacement}{}", &app_token[1..]);
    let random = format!("{}/notify/{}", server.as_url(), random_hex(16));
    for unknown in [altered, random] {
        assert_as_error(&post_json(&unknown, &body), 404, "No valid AppToken");
    }
}

#[test]
fn an_app_url_over_its_rate_is_429_with_retry_after_and_nothing_is_stored() {
    let server = Server::start(
        ServerOptions::new()
            .shards(SHARDS)
            .limit("notifications_per_channel_per_minute", 60)
            .limit("notifications_per_channel_burst", 2),
    );
    let (mut ua, key, url) = registered_app(&server, 1);
    let first = notify(&url, &key, "rate-1", "one");
    let second = notify(&url, &key, "rate-2", "two");
    let r = post_json(&url, &notification_body(&key, "rate-3", "three", 3600, 2));
    assert_as_error(&r, 429, "Too many notifications for this app");
    assert_eq!(r.header("retry-after"), Some("1"), "one a second");
    ua.expect_notifications(&[&first, &second], &url);

    let mut attempt = 0;
    let mut accepted = None;
    wait_until(DEADLINE, "the app url takes notifications again", || {
        attempt += 1;
        let id = format!("poll-{attempt}");
        let body = notification_body(&key, &id, "later", 3600, 2);
        let r = post_json(&url, &body);
        if r.status == 200 {
            accepted = Some(Sent {
                id,
                message: "later".to_owned(),
                priority: 2,
                timestamp_ms: body["timestamp"].as_u64().expect("timestamp"),
            });
            return true;
        }
        assert_as_error(&r, 429, "Too many notifications for this app");
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    // Nothing refused was stored: the next notification is the accepted one.
    ua.expect_notifications(&[&accepted.expect("accepted")], &url);
}

// ---------------------------------------------------------------------------
// durability
// ---------------------------------------------------------------------------

#[test]
fn registrations_and_pending_messages_survive_restart() {
    let mut server = start();
    let (ua, key, url) = registered_app(&server, 1);
    let token = ua.token.clone();
    ua.close();
    let before = notify(&url, &key, "as-id-before", "sent before the restart");

    server.restart();

    let after = notify(&url, &key, "as-id-after", "sent after the restart");
    let mut ua = ExtUa::resume(&server, &token);
    ua.expect_notifications(&[&before, &after], &url);
    ua.expect_silence();
    assert_eq!(
        ua.register_wa(&server, "wa-token-app", &key),
        url,
        "the same (watoken, key) still gives the same url"
    );
}

/// Issue 13: `registerUA` alone writes nothing durable (a token
/// authenticates itself) and the UA is forgotten with its socket; the token
/// is still accepted after a restart, and its first app records the UA.
#[test]
fn register_ua_alone_leaves_nothing_durable_and_the_first_app_records_the_ua() {
    let mut server = start();
    let ua = ExtUa::fresh(&server);
    let token = ua.token.clone();
    ua.close();
    server.restart();
    let known_uas = |server: &Server| {
        let samples: Vec<f64> = server
            .metrics()
            .iter()
            .filter(|(sample, _)| metric_name(sample) == "herald_user_agents")
            .map(|(_, value)| *value)
            .collect();
        (samples.len() == SHARDS).then(|| samples.iter().sum::<f64>())
    };
    wait_until(DEADLINE, "every shard published its UAs", || {
        known_uas(&server).is_some()
    });
    assert_eq!(known_uas(&server), Some(0.0), "nothing replayed");

    let mut ua = ExtUa::resume(&server, &token);
    let key = AppKey::new(3);
    let url = ua.register_wa(&server, "wa-token-app", &key);
    ua.close();
    server.restart();
    let sent = notify(&url, &key, "as-id", "the app survived the restart");
    let mut ua = ExtUa::resume(&server, &token);
    ua.expect_notifications(&[&sent], &url);
}

// ---------------------------------------------------------------------------
// self-check of the helpers (no server needed)
// ---------------------------------------------------------------------------

#[test]
fn app_key_helpers_make_verifiable_signatures() {
    use base64::Engine as _;
    use rsa::pkcs1v15::VerifyingKey;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    use rsa::traits::PublicKeyParts;
    use rsa::RsaPublicKey;
    use sha2::Sha256;

    let key = AppKey::new(1);
    assert_eq!(
        key.pbkbase64,
        AppKey::new(1).pbkbase64,
        "same seed, same key"
    );
    assert_ne!(key.pbkbase64, AppKey::new(2).pbkbase64);
    let der = base64::engine::general_purpose::STANDARD
        .decode(&key.pbkbase64)
        .expect("pbkbase64 is standard base64");
    let public = RsaPublicKey::from_public_key_der(&der).expect("SubjectPublicKeyInfo DER");
    assert_eq!(public.size(), 128, "a 1024-bit key");
    let signature = base64::engine::general_purpose::STANDARD
        .decode(key.sign("hello"))
        .expect("signature is standard base64");
    let signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice()).unwrap();
    let verifying = VerifyingKey::<Sha256>::new(public);
    verifying
        .verify(b"hello", &signature)
        .expect("signature verifies");
    assert!(verifying.verify(b"hellO", &signature).is_err());
}
