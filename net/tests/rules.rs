//! The protocol rules of SPEC §3.1–3.4 and §4.1–4.2, one test each, driven
//! through the sans-IO shard with a fake clock. AS requests go through
//! `push::decode`, so the HTTP rules are exercised on the way.

mod common;

use common::*;
use herald_engine::identity::KeyMaterial;
use herald_engine::limits::Limits;
use herald_engine::message::Urgency;
use herald_engine::record::Record;
use herald_engine::shard::{close, Shard};
use herald_engine::{ChannelId, ConnId};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

/// Endpoint of `channel` for `uaid` as the server would issue it (no key).
fn endpoint_for(h: &Harness, uaid: &str, channel: &str) -> String {
    let token = h
        .keys
        .endpoint_token(&uaid_of(uaid), &ChannelId::parse(channel).unwrap(), None);
    format!("{ORIGIN}/wpush/v1/{token}")
}

/// A UA that registered `channels` and then went away; returns (uaid, endpoints).
fn offline_ua(h: &mut Harness, web_push: bool, channels: &[&str]) -> (String, Vec<String>) {
    let (conn, uaid) = h.connect_new(web_push);
    let endpoints = channels.iter().map(|ch| h.register(conn, ch)).collect();
    h.disconnect(conn);
    (uaid, endpoints)
}

fn versions(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .map(|frame| frame["version"].clone())
        .collect()
}

// ---- §3.1 hello ---------------------------------------------------------

#[test]
fn hello_without_uaid_gets_a_fresh_one() {
    let mut h = Harness::new();
    for uaid in [None, Some(json!("")), Some(Value::Null)] {
        let conn = h.open();
        let mut hello = json!({"use_webpush": true, "broadcasts": {}});
        if let Some(uaid) = uaid {
            hello["uaid"] = uaid;
        }
        let reply = h.hello(conn, hello);
        assert_eq!(reply["status"], 200, "{reply}");
        assert_eq!(reply["use_webpush"], true, "{reply}");
        assert_eq!(reply["broadcasts"], json!({}), "{reply}");
        let uaid = reply["uaid"].as_str().unwrap();
        assert_eq!(uaid.len(), 32);
        assert!(uaid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(h.keys.check_uaid(uaid).is_some(), "minted UAIDs verify");
    }
    assert_eq!(h.engine(0).user_agents(), 3, "three distinct UAIDs");
}

#[test]
fn hello_with_forged_or_malformed_uaid_gets_a_fresh_one() {
    let mut h = Harness::new();
    let (_, real) = h.connect_new(true);
    let mut altered = uaid_of(&real);
    altered.0[3] ^= 0x40;
    let foreign = Keys2::other().mint();
    for claimed in [
        "0123456789abcdef0123456789abcdef".to_owned(),
        altered.to_hex(),
        foreign,
        real[..31].to_owned(),
        "not a uaid".to_owned(),
    ] {
        let conn = h.open();
        let reply = h.hello(conn, json!({"uaid": claimed, "use_webpush": true}));
        assert_eq!(reply["status"], 200);
        let given = reply["uaid"].as_str().unwrap();
        assert_ne!(given, claimed, "a forged UAID is never accepted");
        assert_ne!(given, real);
        assert!(h.keys.check_uaid(given).is_some());
    }
}

/// UAIDs minted by a server with other keys.
struct Keys2(herald_engine::identity::Keys);
impl Keys2 {
    fn other() -> Keys2 {
        Keys2(herald_engine::identity::Keys::new(&KeyMaterial {
            uaid_keys: vec![[0x33; 16]],
            token_keys: vec![[0x44; 32]],
        }))
    }
    fn mint(&self) -> String {
        self.0
            .mint_uaid(&mut StdRng::seed_from_u64(9), 0, 1)
            .to_hex()
    }
}

#[test]
fn hello_with_known_uaid_keeps_it_and_its_channels() {
    let mut h = Harness::new();
    let (conn, uaid) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    h.disconnect(conn);
    // Upper-case hex is the same UAID.
    let conn = h.open();
    let reply = h.hello(
        conn,
        json!({"uaid": uaid.to_uppercase(), "use_webpush": true}),
    );
    assert_eq!(reply["uaid"], uaid);
    assert_eq!(h.engine(0).user_agents(), 1);
    assert_eq!(h.post(&endpoint, 60).status, 201);
    let got = h.take_notifications(conn);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["channelID"], chan(1));
}

#[test]
fn hello_channel_ids_synchronise_channels() {
    let mut h = Harness::new();
    let (a, b, c) = (chan(1), chan(2), chan(3));
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&a, &b]);

    // Omitted channelIDs: no sync.
    let conn = h.reconnect(&uaid, true);
    h.disconnect(conn);
    assert_eq!(
        h.post(&endpoints[1], 60).status,
        201,
        "no sync without channelIDs"
    );

    // The UA lists A and C: B is dropped (with its pending message), C re-created.
    let conn = h.open();
    h.hello(
        conn,
        json!({"uaid": uaid, "use_webpush": true, "channelIDs": [a, c]}),
    );
    let got = h.take_notifications(conn);
    assert!(got.is_empty(), "B's pending message went with B: {got:?}");
    assert_eq!(h.post(&endpoints[0], 60).status, 201, "A kept");
    assert_eq!(h.post(&endpoints[1], 60).status, 410, "B unregistered");
    let c_endpoint = endpoint_for(&h, &uaid, &c);
    assert_eq!(h.post(&c_endpoint, 60).status, 201, "C re-created");
    assert_eq!(h.register(conn, &c), c_endpoint);

    // An empty list means "I have none".
    let conn = h.open();
    h.hello(
        conn,
        json!({"uaid": uaid, "use_webpush": true, "channelIDs": []}),
    );
    assert_eq!(h.post(&endpoints[0], 60).status, 410);
    assert_eq!(h.post(&c_endpoint, 60).status, 410);
}

#[test]
fn hello_channel_ids_recover_channels_after_data_loss() {
    let mut lost = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut lost, true, &[&chan(7)]);
    // A server with the same keys that never saw this UA.
    let mut h = Harness::new();
    assert_eq!(h.post(&endpoints[0], 60).status, 410);
    let conn = h.open();
    let reply = h.hello(
        conn,
        json!({"uaid": uaid, "use_webpush": true, "channelIDs": [chan(7).to_uppercase()]}),
    );
    assert_eq!(reply["uaid"], uaid, "a valid but unknown UAID is kept");
    assert_eq!(h.post(&endpoints[0], 60).status, 201);
    assert_eq!(h.take_notifications(conn).len(), 1);
}

#[test]
fn hello_channel_ids_sync_respects_the_channel_limit() {
    let mut h = Harness::new(); // channels_per_uaid_max = 3
    let listed: Vec<String> = (1..=5).map(chan).collect();
    let (uaid, _) = offline_ua(&mut h, true, &[&listed[0], &listed[1], &listed[2]]);
    let conn = h.open();
    h.hello(
        conn,
        json!({"uaid": uaid, "use_webpush": true, "channelIDs": listed}),
    );
    let accepted = listed
        .iter()
        .filter(|ch| {
            let endpoint = endpoint_for(&h, &uaid, ch);
            h.post(&endpoint, 60).status == 201
        })
        .count();
    assert!(
        accepted <= h.limits.channels_per_uaid_max,
        "{accepted} channels live on one UAID, limit {}",
        h.limits.channels_per_uaid_max
    );
}

#[test]
fn newer_socket_wins_and_the_older_is_closed_1000() {
    let mut h = Harness::new();
    let (old, uaid) = h.connect_new(true);
    let endpoint = h.register(old, &chan(1));
    let new = h.reconnect(&uaid, true);
    assert_eq!(h.closed(old), Some(close::NORMAL));
    assert_eq!(h.closed(new), None);
    h.take(old);
    assert_eq!(h.post(&endpoint, 60).status, 201);
    assert_eq!(h.take_notifications(new).len(), 1);
    assert!(h.take(old).is_empty());
    assert_eq!(h.sent_after_close(), 0);
    // The old socket's late close report does not detach the new one.
    h.disconnect(old);
    assert_eq!(h.post(&endpoint, 60).status, 201);
    assert_eq!(h.take_notifications(new).len(), 1);
}

#[test]
fn second_hello_on_a_socket_closes_1002() {
    let mut h = Harness::new();
    let (conn, uaid) = h.connect_new(true);
    h.send_json(conn, json!({"messageType": "hello", "uaid": uaid}));
    assert_eq!(h.closed(conn), Some(close::PROTOCOL_ERROR));
}

#[test]
fn any_message_before_hello_closes_1002() {
    let mut h = Harness::new();
    for message in [
        json!({"messageType": "register", "channelID": chan(1)}),
        json!({"messageType": "unregister", "channelID": chan(1)}),
        json!({"messageType": "ack", "updates": []}),
        json!({"messageType": "nack", "code": 301}),
        json!({"messageType": "bogus"}),
        json!({"messageType": "ping"}),
        json!({}),
        json!([1, 2]),
        json!({"uaid": "x"}),
    ] {
        let conn = h.open();
        h.send_json(conn, message.clone());
        assert_eq!(h.closed(conn), Some(close::PROTOCOL_ERROR), "{message}");
        assert_eq!(h.engine(0).user_agents(), 0);
    }
    for text in ["not json", "PING"] {
        let conn = h.open();
        h.send(conn, text);
        assert_eq!(h.closed(conn), Some(close::PROTOCOL_ERROR), "{text}");
        assert!(h.take(conn).is_empty(), "no reply to {text}");
    }
}

#[test]
fn unknown_fields_are_ignored_and_bad_messages_close_1002() {
    let mut h = Harness::new();
    let conn = h.open();
    let reply = h.hello(
        conn,
        json!({"use_webpush": true, "broadcasts": {"x": "v1"}, "future": [1, {"a": 2}]}),
    );
    assert_eq!(reply["status"], 200);
    h.send_json(
        conn,
        json!({"messageType": "broadcast_subscribe", "broadcasts": {"y": "v"}}),
    );
    h.send_json(
        conn,
        json!({"messageType": "nack", "version": "x", "code": 301}),
    );
    assert_eq!(h.closed(conn), None);
    assert_eq!(h.engine(0).stats().nacks, 1);
    let endpoint = h.register_reply(
        conn,
        json!({"channelID": chan(1), "extra": true, "key": null}),
    );
    assert_eq!(endpoint["status"], 200);
    h.send_json(conn, json!({"messageType": "register", "channelID": 5}));
    assert_eq!(h.closed(conn), Some(close::PROTOCOL_ERROR));
}

// ---- §3.2 register / unregister ----------------------------------------

#[test]
fn register_is_idempotent_and_stores_lower_case() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    let upper = chan(0xabcdef).to_uppercase();
    let reply = h.register_reply(conn, json!({"channelID": upper}));
    assert_eq!(reply["status"], 200);
    assert_eq!(reply["channelID"], chan(0xabcdef), "stored lower-case");
    let endpoint = reply["pushEndpoint"].as_str().unwrap().to_owned();
    assert!(
        endpoint.starts_with(&format!("{ORIGIN}/wpush/v1/")),
        "{endpoint}"
    );
    let records = h.log(0).len();
    assert_eq!(h.register(conn, &chan(0xabcdef)), endpoint);
    assert_eq!(h.register(conn, &upper), endpoint);
    assert_eq!(h.log(0).len(), records, "re-registering writes nothing");
    // Another channel gets another endpoint.
    assert_ne!(h.register(conn, &chan(2)), endpoint);
}

#[test]
fn register_with_an_invalid_channel_id_is_457() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    for bad in [
        "not-a-uuid".to_owned(),
        chan(1).replace('-', ""),
        String::new(),
        format!("{{{}}}", chan(1)),
        format!("{}0", chan(1)),
    ] {
        let reply = h.register_reply(conn, json!({"channelID": bad}));
        assert_eq!(reply["status"], 457, "{bad:?}: {reply}");
        assert!(reply.get("pushEndpoint").is_none());
    }
    assert_eq!(h.closed(conn), None);
}

mod vapid {
    use super::*;
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};

    pub fn signing_key(byte: u8) -> SigningKey {
        SigningKey::from_slice(&[byte; 32]).unwrap()
    }

    fn raw(key: &SigningKey) -> Vec<u8> {
        VerifyingKey::from(key)
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    pub fn key_unpadded(key: &SigningKey) -> String {
        URL_SAFE_NO_PAD.encode(raw(key))
    }

    pub fn key_padded(key: &SigningKey) -> String {
        URL_SAFE.encode(raw(key))
    }

    /// `vapid t=<JWT>, k=<key>` for `aud` expiring `exp_s`.
    pub fn authorization(key: &SigningKey, aud: &str, exp_s: u64) -> String {
        let header = json!({"typ": "JWT", "alg": "ES256"});
        let payload = json!({"aud": aud, "exp": exp_s, "sub": "mailto:as@example.com"});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature: Signature = key.sign(signed.as_bytes());
        let jwt = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        format!("vapid t={jwt}, k={}", key_unpadded(key))
    }
}

#[test]
fn register_key_padded_or_unpadded_gives_one_v2_endpoint() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    let key = vapid::signing_key(7);
    let padded = vapid::key_padded(&key);
    assert!(padded.ends_with('='), "P-256 raw keys pad to 88 chars");
    let a = h.register_reply(conn, json!({"channelID": chan(1), "key": padded}));
    let b = h.register_reply(
        conn,
        json!({"channelID": chan(1), "key": vapid::key_unpadded(&key)}),
    );
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(a["pushEndpoint"], b["pushEndpoint"]);
    let endpoint = a["pushEndpoint"].as_str().unwrap().to_owned();
    assert!(endpoint.starts_with(&format!("{ORIGIN}/wpush/v2/")));

    // v2 requires VAPID by the registered key; a failure is 401, never 404/410.
    let exp = h.now / 1000 + 3600;
    let good = vapid::authorization(&key, ORIGIN, exp);
    let other = vapid::authorization(&vapid::signing_key(8), ORIGIN, exp);
    let wrong_aud = vapid::authorization(&key, "https://elsewhere.example", exp);
    let expired = vapid::authorization(&key, ORIGIN, h.now / 1000 - 1);
    assert_eq!(h.post(&endpoint, 60).status, 401);
    for auth in [&other, &wrong_aud, &expired] {
        let response = h.request(
            "POST",
            &endpoint,
            &[("TTL", "60"), ("Authorization", auth)],
            b"",
        );
        assert_eq!(response.status, 401, "{response:?}");
    }
    let response = h.request(
        "POST",
        &endpoint,
        &[("TTL", "60"), ("Authorization", &good)],
        b"",
    );
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(h.take_notifications(conn).len(), 1);

    // Bad keys are 400.
    for bad in ["nope", "AAAA", &vapid::key_unpadded(&key)[..80]] {
        let reply = h.register_reply(conn, json!({"channelID": chan(2), "key": bad}));
        assert_eq!(reply["status"], 400, "{bad}: {reply}");
    }
}

#[test]
fn register_beyond_the_channel_limit_is_429() {
    let mut h = Harness::new(); // channels_per_uaid_max = 3
    let (conn, _) = h.connect_new(true);
    let endpoints: Vec<String> = (1..=3).map(|n| h.register(conn, &chan(n))).collect();
    let reply = h.register_reply(conn, json!({"channelID": chan(4)}));
    assert_eq!(reply["status"], 429, "{reply}");
    assert!(reply.get("pushEndpoint").is_none());
    assert_eq!(
        h.register(conn, &chan(2)),
        endpoints[1],
        "existing channels still answer"
    );
    h.send_json(
        conn,
        json!({"messageType": "unregister", "channelID": chan(1)}),
    );
    assert_eq!(h.take_reply(conn, "unregister")["status"], 200);
    h.register(conn, &chan(4));
}

#[test]
fn unregister_makes_the_endpoint_gone_410() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    for _ in 0..2 {
        h.send_json(
            conn,
            json!({"messageType": "unregister", "channelID": chan(1).to_uppercase()}),
        );
        let reply = h.take_reply(conn, "unregister");
        assert_eq!(
            reply,
            json!({"messageType": "unregister", "channelID": chan(1), "status": 200})
        );
    }
    let response = h.post(&endpoint, 60);
    assert_eq!(response.status, 410);
    assert_eq!(body_json(&response)["errno"], 103);
    assert_eq!(h.put_version(&endpoint, 3).status, 410);
    assert!(h.take_notifications(conn).is_empty());
    h.send_json(
        conn,
        json!({"messageType": "unregister", "channelID": "junk"}),
    );
    assert_eq!(h.take_reply(conn, "unregister")["status"], 457);
}

#[test]
fn unregister_drops_the_channels_pending_messages() {
    let mut h = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1), &chan(2)]);
    let gone = location_id(&h.post(&endpoints[0], 60));
    let kept = location_id(&h.post(&endpoints[1], 60));
    let conn = h.reconnect(&uaid, true);
    assert_eq!(
        versions(&h.take_notifications(conn)),
        vec![json!(gone), json!(kept)]
    );
    h.send_json(
        conn,
        json!({"messageType": "unregister", "channelID": chan(1)}),
    );
    h.disconnect(conn);
    let conn = h.reconnect(&uaid, true);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(kept)]);
}

// ---- §3.3 notifications, §4.1 SimplePush --------------------------------

#[test]
fn simplepush_updates_are_batched_and_versions_collapse() {
    let mut h = Harness::new();
    let (a, b) = (chan(1), chan(2));
    let (uaid, endpoints) = offline_ua(&mut h, false, &[&a, &b]);
    for (endpoint, version) in [(0, 1), (0, 2), (1, 5), (0, 4)] {
        let response = h.put_version(&endpoints[endpoint], version);
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "{}");
    }
    let conn = h.reconnect(&uaid, false);
    let frames = h.take(conn);
    assert_eq!(frames.len(), 1, "one batched frame: {frames:?}");
    let mut updates = frames[0].json()["updates"].as_array().unwrap().clone();
    updates.sort_by_key(|update| update["channelID"].as_str().unwrap().to_owned());
    assert_eq!(frames[0].message_type(), Some("notification"));
    assert_eq!(
        updates,
        vec![
            json!({"channelID": a, "version": 4}),
            json!({"channelID": b, "version": 5})
        ]
    );
}

#[test]
fn simplepush_version_not_newer_is_accepted_but_not_resent() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(false);
    let endpoint = h.register(conn, &chan(1));
    assert_eq!(h.put_version(&endpoint, 5).status, 200);
    let got = h.take_notifications(conn);
    assert_eq!(
        got[0]["updates"],
        json!([{"channelID": chan(1), "version": 5}])
    );
    for older in [3, 5] {
        let response = h.put_version(&endpoint, older);
        assert_eq!(response.status, 200, "accepted");
        assert!(
            h.take_notifications(conn).is_empty(),
            "version {older} not re-sent"
        );
    }
    h.ack(conn, &chan(1), json!(5));
    assert_eq!(h.put_version(&endpoint, 4).status, 200);
    assert!(h.take_notifications(conn).is_empty());
    assert_eq!(h.put_version(&endpoint, 6).status, 200);
    let got = h.take_notifications(conn);
    assert_eq!(
        got[0]["updates"],
        json!([{"channelID": chan(1), "version": 6}])
    );
}

#[test]
fn simplepush_http_rules() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(false);
    let endpoint = h.register(conn, &chan(1));
    // Empty body: the version is the current time in ms.
    assert_eq!(h.request("PUT", &endpoint, &[], b"").status, 200);
    let got = h.take_notifications(conn);
    assert_eq!(got[0]["updates"][0]["version"], json!(h.now));
    for bad in [
        &b"version=abc"[..],
        b"version=-1",
        b"version=9223372036854775808",
        b"version=1&body=x",
        b"garbage",
        b"body=x&ttl=-3",
    ] {
        let response = h.request("PUT", &endpoint, &[], bad);
        assert_eq!(response.status, 400, "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(h.take_notifications(conn).is_empty());
    let max = (1u64 << 63) - 1;
    assert_eq!(h.put_version(&endpoint, max).status, 200);
    assert_eq!(
        h.take_notifications(conn)[0]["updates"][0]["version"],
        json!(max)
    );
    let big = vec![b'a'; 5000];
    assert_eq!(h.request("PUT", &endpoint, &[], &big).status, 413);
    assert_eq!(h.request("PATCH", &endpoint, &[], b"version=1").status, 405);
    let response = h.request("PUT", &format!("{ORIGIN}/wpush/v1/AAAA"), &[], b"version=1");
    assert_eq!(response.status, 404);
    assert_eq!(
        h.request("PUT", "/elsewhere", &[], b"version=1").status,
        404
    );
}

#[test]
fn desktop_notification_reaches_a_simplepush_socket() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(false);
    let endpoint = h.register(conn, &chan(1));
    let response = h.request("PUT", &endpoint, &[], b"body=Hello+there%21&ttl=60");
    assert_eq!(response.status, 200);
    let got = h.take_notifications(conn);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["messageType"], "desktop-notification");
    let update = &got[0]["updates"][0];
    assert_eq!(update["channelID"], chan(1));
    assert_eq!(update["body"], "Hello there!");
    assert_eq!(update["ttl"], 60);
    assert!(update["version"].is_u64());
}

// ---- §4.2 Web Push -----------------------------------------------------

#[test]
fn webpush_data_and_aes128gcm_headers_are_forwarded_untouched() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    let data: Vec<u8> = (0..=255u8).collect();
    let response = h.post_data(&endpoint, 60, &data, &[]);
    assert_eq!(response.status, 201);
    assert_eq!(header(&response, "TTL"), Some("60"));
    let id = location_id(&response);
    let got = h.take_notifications(conn);
    assert_eq!(
        got,
        vec![json!({
            "messageType": "notification",
            "channelID": chan(1),
            "version": id,
            "data": b64(&data),
            "headers": {"encoding": "aes128gcm"},
        })]
    );
    // No body: no data, no headers.
    let id = location_id(&h.post(&endpoint, 60));
    let got = h.take_notifications(conn);
    assert_eq!(
        got,
        vec![json!({"messageType": "notification", "channelID": chan(1), "version": id})]
    );
}

#[test]
fn webpush_aesgcm_carries_encryption_and_crypto_key() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    let headers = [
        ("TTL", "60"),
        ("Content-Encoding", "aesgcm"),
        ("Encryption", "salt=c2FsdHNhbHRzYWx0"),
        ("Crypto-Key", "dh=BPubKey"),
    ];
    let response = h.request("POST", &endpoint, &headers, b"cipher");
    assert_eq!(response.status, 201, "{response:?}");
    let got = h.take_notifications(conn);
    assert_eq!(got[0]["data"], b64(b"cipher"));
    assert_eq!(
        got[0]["headers"],
        json!({"encoding": "aesgcm", "encryption": "salt=c2FsdHNhbHRzYWx0", "crypto_key": "dh=BPubKey"})
    );
    let missing_salt = [
        ("TTL", "60"),
        ("Content-Encoding", "aesgcm"),
        ("Crypto-Key", "dh=x"),
    ];
    let response = h.request("POST", &endpoint, &missing_salt, b"cipher");
    assert_eq!(
        (response.status, body_json(&response)["errno"].clone()),
        (400, json!(101))
    );
    let missing_dh = [
        ("TTL", "60"),
        ("Content-Encoding", "aesgcm"),
        ("Encryption", "salt=x"),
    ];
    assert_eq!(
        h.request("POST", &endpoint, &missing_dh, b"cipher").status,
        400
    );
    assert!(h.take_notifications(conn).is_empty());
}

#[test]
fn webpush_http_errors() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    let errno = |h: &mut Harness, headers: &[(&str, &str)], body: &[u8]| {
        let response = h.request("POST", &endpoint, headers, body);
        let json = body_json(&response);
        assert_eq!(json["code"], response.status);
        (response.status, json["errno"].as_u64().unwrap())
    };
    assert_eq!(errno(&mut h, &[], b""), (400, 111), "TTL is required");
    assert_eq!(errno(&mut h, &[("TTL", "soon")], b""), (400, 112));
    assert_eq!(errno(&mut h, &[("TTL", "-1")], b""), (400, 112));
    assert_eq!(
        errno(&mut h, &[("TTL", "9"), ("Urgency", "urgent")], b""),
        (400, 114)
    );
    assert_eq!(
        errno(&mut h, &[("TTL", "9"), ("Topic", "a b")], b""),
        (400, 113)
    );
    let long_topic = "a".repeat(33);
    assert_eq!(
        errno(&mut h, &[("TTL", "9"), ("Topic", &long_topic)], b""),
        (400, 113)
    );
    assert_eq!(
        errno(&mut h, &[("TTL", "9")], b"data"),
        (400, 110),
        "body needs encoding"
    );
    let encoding = [("TTL", "9"), ("Content-Encoding", "gzip")];
    assert_eq!(errno(&mut h, &encoding, b"data"), (400, 110));
    let big = vec![0u8; 4097];
    let with_encoding = [("TTL", "9"), ("Content-Encoding", "aes128gcm")];
    assert_eq!(errno(&mut h, &with_encoding, &big), (413, 104));
    assert_eq!(
        h.request("POST", &endpoint, &with_encoding, &big[..4096])
            .status,
        201
    );
    assert_eq!(
        h.take_notifications(conn).len(),
        1,
        "only the accepted one arrives"
    );
    // TTL is capped at 30 days.
    let response = h.request("POST", &endpoint, &[("ttl", "99999999")], b"");
    assert_eq!(header(&response, "TTL"), Some("2592000"));
    let response = h.request("GET", &endpoint, &[("TTL", "9")], b"");
    assert_eq!(response.status, 405);
    // A v1 token presented as v2 (and vice versa) is not a valid endpoint.
    let v2 = endpoint.replace("/wpush/v1/", "/wpush/v2/");
    assert_eq!(h.request("POST", &v2, &[("TTL", "9")], b"").status, 404);
}

#[test]
fn webpush_topic_replaces_an_undelivered_message() {
    let mut h = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1), &chan(2)]);
    let topic = [("Topic", "weather")];
    let first = location_id(&h.post_data(&endpoints[0], 60, b"rain", &topic));
    let other_channel = location_id(&h.post_data(&endpoints[1], 60, b"snow", &topic));
    let no_topic = location_id(&h.post_data(&endpoints[0], 60, b"wind", &[]));
    let second = location_id(&h.post_data(&endpoints[0], 60, b"sun", &topic));
    let conn = h.reconnect(&uaid, true);
    let got = h.take_notifications(conn);
    assert_eq!(
        versions(&got),
        vec![json!(other_channel), json!(no_topic), json!(second)],
        "the first 'weather' message on channel 1 was replaced"
    );
    assert_eq!(got[2]["data"], b64(b"sun"));
    let state = h.request("GET", &format!("/m/{first}"), &[], b"");
    assert_eq!(
        body_json(&state)["state"],
        "expired",
        "replaced reads as expired"
    );
}

#[test]
fn webpush_ttl_zero_is_delivered_now_or_never() {
    let mut h = Harness::new();
    let (conn, uaid) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    // Connected: delivered at once.
    let response = h.post(&endpoint, 0);
    assert_eq!(response.status, 201);
    assert_eq!(header(&response, "TTL"), Some("0"));
    assert_eq!(h.take_notifications(conn).len(), 1);
    h.disconnect(conn);
    // Not connected: 201, but not stored.
    let response = h.post(&endpoint, 0);
    assert_eq!(response.status, 201);
    let id = location_id(&response);
    assert_eq!(h.engine(0).pending_messages(), 0);
    assert!(!h
        .log(0)
        .iter()
        .any(|r| matches!(r, Record::MessageStored(_))));
    let conn = h.reconnect(&uaid, true);
    assert!(h.take_notifications(conn).is_empty());
    let state = h.request("GET", &format!("/m/{id}"), &[], b"");
    assert_eq!(state.status, 404);
}

#[test]
fn webpush_messages_expire_after_their_ttl() {
    let mut h = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    let short = location_id(&h.post(&endpoints[0], 10));
    let long = location_id(&h.post(&endpoints[0], 20));
    h.advance(9_999);
    let conn = h.reconnect(&uaid, true);
    assert_eq!(
        versions(&h.take_notifications(conn)),
        vec![json!(short), json!(long)]
    );
    h.disconnect(conn);
    h.advance(1);
    let conn = h.reconnect(&uaid, true);
    assert_eq!(
        versions(&h.take_notifications(conn)),
        vec![json!(long)],
        "short expired"
    );
    let state = h.request("GET", &format!("/m/{short}"), &[], b"");
    assert_eq!(body_json(&state)["state"], "expired");
    h.disconnect(conn);
    h.advance(10_000);
    let conn = h.reconnect(&uaid, true);
    assert!(h.take_notifications(conn).is_empty());
}

#[test]
fn message_state_of_an_expired_message_is_expired() {
    let mut h = Harness::new();
    let (_, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    let id = location_id(&h.post(&endpoints[0], 10));
    h.advance(10_001);
    let state = h.request("GET", &format!("/m/{id}"), &[], b"");
    assert_eq!(state.status, 200);
    assert_eq!(body_json(&state)["state"], "expired");
}

#[test]
fn pending_is_sent_after_hello_high_urgency_first() {
    let mut h = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    let first = location_id(&h.post(&endpoints[0], 60));
    let second = location_id(&h.post(&endpoints[0], 60));
    let high = location_id(&h.request(
        "POST",
        &endpoints[0],
        &[("TTL", "60"), ("Urgency", "high")],
        b"",
    ));
    let conn = h.open();
    h.send_json(
        conn,
        json!({"messageType": "hello", "uaid": uaid, "use_webpush": true}),
    );
    let frames = h.take(conn);
    assert_eq!(
        frames[0].message_type(),
        Some("hello"),
        "the hello reply comes first"
    );
    let got: Vec<Value> = frames[1..]
        .iter()
        .map(|f| f.json()["version"].clone())
        .collect();
    assert_eq!(got, vec![json!(high), json!(first), json!(second)]);
}

#[test]
fn pending_limit_drops_the_oldest_of_the_lowest_urgency() {
    let mut h = Harness::new(); // pending_per_uaid_max = 3
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    let post = |h: &mut Harness, urgency: &str| {
        location_id(&h.request(
            "POST",
            &endpoints[0],
            &[("TTL", "600"), ("Urgency", urgency)],
            b"",
        ))
    };
    let normal_old = post(&mut h, "normal");
    let high = post(&mut h, "high");
    let normal_new = post(&mut h, "normal");
    let newest = post(&mut h, "high");
    assert_eq!(h.engine(0).pending_messages(), 3);
    assert_eq!(h.engine(0).stats().pending_dropped, 1);
    let state = h.request("GET", &format!("/m/{normal_old}"), &[], b"");
    assert_ne!(body_json(&state)["state"], "stored");
    let very_low = post(&mut h, "very-low");
    let _ = very_low;
    // Now: high, newest(high), very_low — normal_new was the lowest present.
    let conn = h.reconnect(&uaid, true);
    let got = versions(&h.take_notifications(conn));
    assert_eq!(got, vec![json!(high), json!(newest), json!(very_low)]);
    let _ = normal_new;
}

#[test]
fn expired_messages_do_not_push_live_ones_out() {
    let mut h = Harness::new(); // pending_per_uaid_max = 3
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    let urgent = [("TTL", "10"), ("Urgency", "high")];
    h.request("POST", &endpoints[0], &urgent, b"");
    h.request("POST", &endpoints[0], &urgent, b"");
    let live = location_id(&h.post(&endpoints[0], 3600));
    h.advance(11_000); // the two high ones expired; one message is live
    let newer = location_id(&h.post(&endpoints[0], 3600));
    let conn = h.reconnect(&uaid, true);
    assert_eq!(
        versions(&h.take_notifications(conn)),
        vec![json!(live), json!(newer)],
        "only one message was live: nothing had to be dropped"
    );
}

#[test]
fn the_pending_limit_holds_after_replay() {
    let mut h = Harness::new(); // pending_per_uaid_max = 3
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    h.post(&endpoints[0], 10);
    h.post(&endpoints[0], 10);
    h.advance(11_000);
    // The UA comes by: the two expired messages are forgotten (in memory only).
    let conn = h.reconnect(&uaid, true);
    assert!(h.take_notifications(conn).is_empty());
    h.disconnect(conn);
    let live: Vec<String> = (0..3)
        .map(|_| location_id(&h.post(&endpoints[0], 3600)))
        .collect();
    h.restart();
    let newest = location_id(&h.post(&endpoints[0], 3600));
    let conn = h.reconnect(&uaid, true);
    assert_eq!(
        versions(&h.take_notifications(conn)),
        vec![json!(live[1]), json!(live[2]), json!(newest)],
        "at most 3 pending: the oldest normal one goes"
    );
}

#[test]
fn message_ids_are_not_reused_across_a_restart() {
    let mut h = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    let ttl0 = location_id(&h.post(&endpoints[0], 0));
    h.restart(); // same millisecond (or a clock that stepped back)
    let stored = location_id(&h.post(&endpoints[0], 60));
    assert_ne!(ttl0, stored, "two messages share one id");
    // The AS cancelling its TTL=0 message must not cancel another one.
    let response = h.request("DELETE", &format!("/m/{ttl0}"), &[], b"");
    assert_eq!(response.status, 404);
    let conn = h.reconnect(&uaid, true);
    assert_eq!(h.take_notifications(conn).len(), 1);
}

// ---- cross-mode (§3.3) -------------------------------------------------

#[test]
fn webpush_message_to_a_simplepush_socket_becomes_an_update() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(false);
    let endpoint = h.register(conn, &chan(1));
    h.advance(1234);
    assert_eq!(h.post_data(&endpoint, 60, b"secret", &[]).status, 201);
    let got = h.take_notifications(conn);
    assert_eq!(
        got,
        vec![
            json!({"messageType": "notification", "updates": [{"channelID": chan(1), "version": h.now}]})
        ]
    );
    assert_eq!(
        h.engine(0).stats().cross_mode_dropped,
        1,
        "the data was dropped and counted"
    );
    // Its numeric form acks it.
    let now = h.now;
    h.ack(conn, &chan(1), json!(now));
    assert_eq!(h.engine(0).pending_messages(), 0);
}

#[test]
fn simplepush_version_and_desktop_to_a_webpush_socket() {
    let mut h = Harness::new();
    let (conn, uaid) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    assert_eq!(h.put_version(&endpoint, 42).status, 200);
    let got = h.take_notifications(conn);
    assert_eq!(
        got,
        vec![json!({"messageType": "notification", "channelID": chan(1), "version": "42"})]
    );
    // Acked by its number as a string.
    h.ack(conn, &chan(1), json!("42"));
    assert_eq!(h.engine(0).pending_messages(), 0);
    h.disconnect(conn);
    assert_eq!(
        h.request("PUT", &endpoint, &[], b"body=hi&ttl=60").status,
        200
    );
    let arrived = h.now;
    let conn = h.reconnect(&uaid, true);
    let got = h.take_notifications(conn);
    assert_eq!(
        got,
        vec![
            json!({"messageType": "notification", "channelID": chan(1), "version": arrived.to_string()})
        ]
    );
    assert_eq!(h.engine(0).stats().cross_mode_dropped, 1);
}

// ---- §3.4 ack, retry, ping ---------------------------------------------

#[test]
fn ack_frees_a_message_and_unacked_ones_come_back() {
    let mut h = Harness::new();
    let (conn, uaid) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    let acked = location_id(&h.post(&endpoint, 600));
    let unacked = location_id(&h.post(&endpoint, 600));
    assert_eq!(h.take_notifications(conn).len(), 2);
    h.ack(conn, &chan(1), json!(acked));
    assert_eq!(h.engine(0).stats().acks, 1);
    // An ack naming the wrong channel, or junk, frees nothing.
    h.ack(conn, &chan(2), json!(unacked));
    h.ack(conn, &chan(1), json!("junk"));
    assert_eq!(h.closed(conn), None);
    h.disconnect(conn);
    let conn = h.reconnect(&uaid, true);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(unacked)]);
    let state = |h: &mut Harness, id: &str| {
        body_json(&h.request("GET", &format!("/m/{id}"), &[], b""))["state"].clone()
    };
    assert_eq!(state(&mut h, &acked), "acked");
    assert_eq!(state(&mut h, &unacked), "delivered");
}

#[test]
fn an_ack_cannot_free_another_uas_message() {
    let mut h = Harness::new();
    let (victim_conn, victim) = h.connect_new(true);
    let endpoint = h.register(victim_conn, &chan(1));
    h.disconnect(victim_conn);
    let id = location_id(&h.post(&endpoint, 600));
    let (attacker, _) = h.connect_new(true);
    h.register(attacker, &chan(1));
    h.ack(attacker, &chan(1), json!(id));
    h.ack(attacker, &chan(1), json!(u64::MAX));
    let conn = h.reconnect(&victim, true);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(id)]);
}

#[test]
fn numeric_ack_frees_simplepush_versions_up_to_it() {
    let mut h = Harness::new();
    let (conn, uaid) = h.connect_new(false);
    let a = h.register(conn, &chan(1));
    let b = h.register(conn, &chan(2));
    h.put_version(&a, 7);
    h.put_version(&b, 9);
    assert_eq!(h.take_notifications(conn).len(), 2);
    h.ack(conn, &chan(1), json!(6)); // too old: frees nothing
    h.ack(conn, &chan(2), json!("9")); // string form works too
    h.disconnect(conn);
    let conn = h.reconnect(&uaid, false);
    let got = h.take_notifications(conn);
    assert_eq!(
        got[0]["updates"],
        json!([{"channelID": chan(1), "version": 7}])
    );
    h.ack(conn, &chan(1), json!(7));
    h.disconnect(conn);
    let conn = h.reconnect(&uaid, false);
    assert!(h.take_notifications(conn).is_empty());
}

#[test]
fn retry_timer_resends_unacked_on_a_live_socket() {
    let mut h = Harness::new(); // retry_interval_ms = 1000
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    let id = location_id(&h.post(&endpoint, 600));
    assert_eq!(h.take_notifications(conn).len(), 1);
    h.advance(999);
    assert!(
        h.take_notifications(conn).is_empty(),
        "not before the interval"
    );
    h.advance(1);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(id)]);
    h.advance(1000);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(id)]);
    h.ack(conn, &chan(1), json!(id));
    h.advance(5000);
    assert!(
        h.take_notifications(conn).is_empty(),
        "acked: no more retries"
    );
}

/// A socket whose every message is acked holds no retry timer: an idle UA
/// costs the same after a message as before its first one.
#[test]
fn the_retry_timer_goes_once_every_message_is_acked() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    let at_rest = h.engine(0).timers();
    let first = location_id(&h.post(&endpoint, 600));
    let second = location_id(&h.post(&endpoint, 600));
    assert_eq!(h.take_notifications(conn).len(), 2);
    assert_eq!(h.engine(0).timers(), at_rest + 1, "one retry chain");
    h.ack(conn, &chan(1), json!(first));
    assert_eq!(
        h.engine(0).timers(),
        at_rest + 1,
        "one message still unacked"
    );
    h.ack(conn, &chan(1), json!(second));
    assert_eq!(h.engine(0).timers(), at_rest, "all acked: no retry timer");
    // A later message starts a new chain, which still re-sends.
    let third = location_id(&h.post(&endpoint, 600));
    assert_eq!(h.take_notifications(conn).len(), 1);
    h.advance(h.limits.retry_interval_ms);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(third)]);
}

#[test]
fn retry_resends_each_message_about_once_per_interval() {
    let mut h = Harness::with_limits(Limits {
        pending_per_uaid_max: 10,
        ..Limits::test_min() // retry_interval_ms = 1000
    });
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    let first = location_id(&h.post(&endpoint, 600));
    for _ in 0..4 {
        h.advance(200);
        h.post(&endpoint, 600);
    }
    h.take(conn);
    h.advance(10_000);
    let resent = h
        .take_notifications(conn)
        .iter()
        .filter(|frame| frame["version"] == json!(first))
        .count();
    assert!(
        resent <= 11,
        "re-sent {resent} times in 10 retry intervals (one push every 200 ms started 5 chains)"
    );
}

#[test]
fn ping_forms_and_rate_limit() {
    let mut h = Harness::new(); // pings_per_minute_max = 3
    let (conn, _) = h.connect_new(true);
    h.send(conn, "{}");
    h.send_json(conn, json!({"messageType": "ping"}));
    h.send(conn, "PING");
    assert_eq!(
        h.take(conn),
        vec![
            Frame::Json(json!({})),
            Frame::Json(json!({})),
            Frame::Text("PONG".into())
        ]
    );
    h.send(conn, "{}");
    assert_eq!(
        h.closed(conn),
        Some(close::POLICY),
        "the 4th ping in a minute"
    );
    assert!(h.take(conn).is_empty());
    assert_eq!(h.engine(0).stats().ping_rate_closes, 1);

    // The window is a minute: three a minute forever is fine.
    let (conn, _) = h.connect_new(true);
    for _ in 0..5 {
        for _ in 0..3 {
            h.send(conn, "{}");
        }
        h.advance(60_000);
    }
    assert_eq!(h.closed(conn), None);
    assert_eq!(h.take(conn).len(), 15);
}

#[test]
fn hello_must_come_within_the_hello_timeout() {
    let mut h = Harness::new(); // hello_timeout_ms = 500
    let late = h.open();
    let prompt = h.open();
    h.advance(499);
    assert_eq!(h.closed(late), None);
    h.hello(prompt, json!({}));
    h.advance(1);
    assert_eq!(h.closed(late), Some(close::PROTOCOL_ERROR));
    assert_eq!(h.closed(prompt), None);
    h.advance(100_000);
    assert_eq!(
        h.closed(prompt),
        None,
        "a socket past hello has no hello deadline"
    );
}

// ---- GET / DELETE /m/<id> ----------------------------------------------

#[test]
fn delete_cancels_an_undelivered_message() {
    let mut h = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    let cancelled = location_id(&h.post(&endpoints[0], 600));
    let kept = location_id(&h.post(&endpoints[0], 600));
    let response = h.request("DELETE", &format!("{ORIGIN}/m/{cancelled}"), &[], b"");
    assert_eq!(response.status, 204);
    assert_eq!(
        h.request("DELETE", &format!("/m/{cancelled}"), &[], b"")
            .status,
        404
    );
    assert_eq!(
        h.request("GET", &format!("/m/{cancelled}"), &[], b"")
            .status,
        404
    );
    assert_eq!(
        h.request("PUT", &format!("/m/{kept}"), &[], b"").status,
        405
    );
    assert_eq!(h.request("DELETE", "/m/bogus", &[], b"").status, 404);
    let conn = h.reconnect(&uaid, true);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(kept)]);
}

#[test]
fn message_state_goes_stored_delivered_acked() {
    let mut h = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1)]);
    let response = h.request(
        "POST",
        &endpoints[0],
        &[("TTL", "600"), ("Prefer", "respond-async")],
        b"",
    );
    assert_eq!(response.status, 202);
    let id = location_id(&response);
    let link = header(&response, "Link").unwrap();
    assert!(link.contains(&format!("{ORIGIN}/m/{id}")), "{link}");
    assert!(
        link.contains("rel=\"urn:ietf:params:push:receipt\""),
        "{link}"
    );
    let state = |h: &mut Harness| {
        let response = h.request("GET", &format!("/m/{id}"), &[], b"");
        assert_eq!(response.status, 200);
        body_json(&response)["state"].as_str().unwrap().to_owned()
    };
    assert_eq!(state(&mut h), "stored");
    let conn = h.reconnect(&uaid, true);
    assert_eq!(state(&mut h), "delivered");
    h.ack(conn, &chan(1), json!(id));
    assert_eq!(state(&mut h), "acked");
}

// ---- §5 wakeup ---------------------------------------------------------

fn wakeup_hello(uaid: Option<&str>, mnc: &str) -> Value {
    let mut hello = json!({
        "use_webpush": true,
        "wakeup_hostport": {"ip": "10.1.2.3", "port": 5000},
        "mobilenetwork": {"mcc": "214", "mnc": mnc, "netid": "operator"},
    });
    if let Some(uaid) = uaid {
        hello["uaid"] = json!(uaid);
    }
    hello
}

/// A UA on the routed network 214-07 with one channel: (conn, uaid, endpoint).
fn wakeup_ua(h: &mut Harness) -> (ConnId, String, String) {
    let conn = h.open();
    let uaid = h.hello(conn, wakeup_hello(None, "07"))["uaid"]
        .as_str()
        .unwrap()
        .to_owned();
    let endpoint = h.register(conn, &chan(1));
    (conn, uaid, endpoint)
}

#[test]
fn wakeup_registration_sleep_and_wakeup() {
    let mut h = Harness::with_wakeup(); // routes 214-07; wakeup_idle_ms = 10 s
    let conn = h.open();
    let reply = h.hello(conn, wakeup_hello(None, "07"));
    assert_eq!(
        reply["status"], 201,
        "routed network: registered for UDP wakeup"
    );
    let uaid = reply["uaid"].as_str().unwrap().to_owned();
    assert_eq!(h.awake, vec![uaid_of(&uaid)]);
    let endpoint = h.register(conn, &chan(1));
    let registered_at = h.now;

    h.advance(9_999);
    assert_eq!(h.closed(conn), None, "not idle long enough yet");
    h.advance(1);
    assert_eq!(h.closed(conn), Some(close::SLEEP), "idle: closed with 4774");
    assert!(h.now - registered_at >= 10_000);
    assert_eq!(h.engine(0).asleep(), 1);

    let response = h.request(
        "POST",
        &endpoint,
        &[("TTL", "600"), ("Urgency", "high")],
        b"",
    );
    assert_eq!(response.status, 201);
    let id = location_id(&response);
    assert_eq!(h.wakeups.len(), 1);
    let call = &h.wakeups[0];
    assert_eq!(call.uaid, uaid_of(&uaid));
    assert_eq!(call.target.ip.to_string(), "10.1.2.3");
    assert_eq!(call.target.port, 5000);
    assert_eq!(
        (call.target.mcc.as_str(), call.target.mnc.as_str()),
        ("214", "07")
    );
    assert_eq!(call.target.netid, "operator");
    assert_eq!(call.urgency, Urgency::High);

    // Woken, the UA reconnects and gets its message.
    let conn = h.open();
    let reply = h.hello(conn, wakeup_hello(Some(&uaid), "07"));
    assert_eq!(reply["status"], 201);
    assert_eq!(h.awake.len(), 2);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(id)]);
    assert_eq!(h.engine(0).asleep(), 0);
    // An unacked message keeps it awake; once acked it sleeps again.
    h.advance(15_000);
    assert_eq!(h.closed(conn), None, "unacked message in flight");
    h.take(conn);
    h.ack(conn, &chan(1), json!(id));
    h.advance(10_000);
    assert_eq!(h.closed(conn), Some(close::SLEEP));
}

#[test]
fn wakeup_needs_a_routed_network_and_activity_defers_sleep() {
    let mut h = Harness::with_wakeup();
    let conn = h.open();
    let reply = h.hello(conn, wakeup_hello(None, "99"));
    assert_eq!(reply["status"], 200, "no route for 214-99");
    let endpoint = h.register(conn, &chan(1));
    h.advance(60_000);
    assert_eq!(h.closed(conn), None, "never put to sleep");
    h.disconnect(conn);
    h.post(&endpoint, 60);
    assert!(h.wakeups.is_empty());

    let conn = h.open();
    assert_eq!(h.hello(conn, wakeup_hello(None, "07"))["status"], 201);
    h.register(conn, &chan(1));
    for _ in 0..10 {
        h.advance(9_000);
        h.register(conn, &chan(1)); // the UA keeps talking
    }
    assert_eq!(h.closed(conn), None, "active sockets are not put to sleep");
    h.advance(10_000);
    assert_eq!(h.closed(conn), Some(close::SLEEP));
}

// ---- §3.5 broadcasts ---------------------------------------------------

const MONITOR: &str = "remote-settings/monitor_changes";

#[test]
fn hello_broadcasts_answer_changed_versions_and_later_changes_arrive() {
    let mut h = Harness::with_shards(2);
    h.broadcast(MONITOR, "\"100\"");
    let subscriber = h.open_on(1);
    let reply = h.hello(
        subscriber,
        json!({"use_webpush": true, "broadcasts": {MONITOR: "\"99\"", "other/x": "v1"}}),
    );
    assert_eq!(
        reply["broadcasts"],
        json!({MONITOR: "\"100\"", "errors": {"other/x": "Broadcast not found"}}),
        "subscribed broadcasts whose version changed, and the one not set yet"
    );
    let up_to_date = h.open_on(0);
    let reply = h.hello(up_to_date, json!({"broadcasts": {MONITOR: "\"100\""}}));
    assert_eq!(reply["broadcasts"], json!({}));
    let bystander = h.open();
    h.hello(bystander, json!({"use_webpush": true}));

    h.broadcast("other/x", "v2");
    assert_eq!(
        h.take(subscriber),
        vec![Frame::Json(
            json!({"messageType": "broadcast", "broadcasts": {"other/x": "v2"}})
        )]
    );
    assert!(h.take(up_to_date).is_empty());
    h.broadcast(MONITOR, "\"101\"");
    let expected =
        Frame::Json(json!({"messageType": "broadcast", "broadcasts": {MONITOR: "\"101\""}}));
    assert_eq!(h.take(subscriber), vec![expected.clone()]);
    assert_eq!(h.take(up_to_date), vec![expected]);
    assert!(h.take(bystander).is_empty(), "not subscribed");
    // Setting the same version again sends nothing.
    h.broadcast(MONITOR, "\"101\"");
    assert!(h.take(subscriber).is_empty());
    // A closed socket is no longer a subscriber.
    h.disconnect(subscriber);
    h.broadcast(MONITOR, "\"102\"");
    assert_eq!(h.sent_after_close(), 0);
    assert_eq!(h.take(up_to_date).len(), 1);
}

#[test]
fn broadcast_subscribe_adds_subscriptions() {
    let mut h = Harness::new();
    h.broadcast(MONITOR, "\"7\"");
    let (conn, _) = h.connect_new(true);
    h.send_json(
        conn,
        json!({"messageType": "broadcast_subscribe", "broadcasts": {MONITOR: "\"6\"", "b/c": "1"}}),
    );
    assert_eq!(
        h.take(conn),
        vec![Frame::Json(json!({
            "messageType": "broadcast",
            "broadcasts": {MONITOR: "\"7\"", "errors": {"b/c": "Broadcast not found"}},
        }))],
        "the stale one is answered at once, the one not set yet as not found"
    );
    h.broadcast("b/c", "2");
    assert_eq!(
        h.take(conn),
        vec![Frame::Json(
            json!({"messageType": "broadcast", "broadcasts": {"b/c": "2"}})
        )]
    );
    // An entry Herald cannot read is answered as not found; the socket stays.
    h.send_json(
        conn,
        json!({"messageType": "broadcast_subscribe", "broadcasts": {"x": 5}}),
    );
    assert_eq!(
        h.take(conn),
        vec![Frame::Json(json!({
            "messageType": "broadcast",
            "broadcasts": {"errors": {"x": "Broadcast not found"}},
        }))]
    );
    assert_eq!(h.closed(conn), None);
    // A `broadcasts` that is not an object is a protocol error.
    let conn = h.open();
    h.send_json(conn, json!({"messageType": "hello", "broadcasts": ["x"]}));
    assert_eq!(h.closed(conn), Some(close::PROTOCOL_ERROR));
}

// ---- multi-shard -------------------------------------------------------

#[test]
fn a_hello_for_another_shards_uaid_is_handed_off() {
    let mut h = Harness::with_shards(3);
    let mut uaids = Vec::new();
    for shard in 0..3 {
        let conn = h.open_on(shard);
        let reply = h.hello(conn, json!({"use_webpush": true}));
        let uaid = reply["uaid"].as_str().unwrap().to_owned();
        assert_eq!(
            uaid_of(&uaid).shard(3),
            shard,
            "a fresh UAID belongs to its shard"
        );
        let endpoint = h.register(conn, &chan(shard as u64));
        h.disconnect(conn);
        uaids.push((uaid, endpoint));
    }
    assert_eq!(h.hand_offs, 0);
    for (owner, (uaid, endpoint)) in uaids.iter().enumerate() {
        let accepted_on = (owner + 1) % 3;
        let conn = h.open_on(accepted_on);
        let reply = h.hello(conn, json!({"uaid": uaid, "use_webpush": true}));
        assert_eq!(reply["uaid"], *uaid);
        assert_eq!(h.socks[&conn].shard, owner, "the socket moved to the owner");
        assert_eq!(h.post(endpoint, 60).status, 201);
        assert_eq!(h.take_notifications(conn).len(), 1);
    }
    assert_eq!(h.hand_offs, 3);
    assert_eq!(
        h.shards
            .iter()
            .map(|driver| driver.engine().user_agents())
            .collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
}

/// The pushes one shard takes in one turn (a batch of pipelined requests)
/// for another shard's UAs cross the ring in one message, and their answers,
/// made durable together, come back in one; each still gets its own answer
/// and its own notification.
#[test]
fn pushes_taken_together_for_another_shard_cross_the_ring_in_one_message() {
    let limits = Limits {
        as_in_flight_per_shard_max: 8,
        ..Limits::test_min()
    };
    let mut h = Harness::build(2, limits, &[], 1);
    let mut uas = Vec::new();
    for n in 0..8 {
        let conn = h.open_on(1);
        let uaid = h.hello(conn, json!({"use_webpush": true}))["uaid"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(uaid_of(&uaid).shard(2), 1);
        let endpoint = h.register(conn, &chan(n));
        uas.push((conn, endpoint));
    }
    let pushes = uas
        .iter()
        .map(|(_, endpoint)| h.decode("POST", endpoint, &[("TTL", "60")], b"").unwrap())
        .collect();
    let before = h.ring_messages_sent();
    let requests = h.submit_all_via(0, pushes);
    assert_eq!(
        h.ring_messages_sent() - before,
        2,
        "the 8 pushes in one message, their 8 answers in another"
    );
    for request in requests {
        assert_eq!(h.replies[&request].status, 201);
    }
    for (conn, _) in uas {
        assert_eq!(h.take_notifications(conn).len(), 1);
    }
}

// ---- overload (SPEC §9) --------------------------------------------------

/// A UA that stops reading fills its socket's bounded outbox and is dropped,
/// rather than buffered without end; its messages stay stored for its next
/// connection.
#[test]
fn a_ua_that_stops_reading_is_dropped_and_keeps_its_messages() {
    let limits = Limits::test_min();
    let bound = limits.pending_per_uaid_max + limits.ua_outbox_frames_max.max(1);
    let mut h = Harness::with_limits(limits.clone());
    let (conn, uaid) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    h.set_paused(conn, true);
    let mut sent = Vec::new();
    for _ in 0..bound + 1 {
        let response = h.post_data(&endpoint, 600, b"x", &[]);
        assert_eq!(response.status, 201);
        sent.push(location_id(&response));
    }
    let driver_conn = h.socks[&conn].conn;
    assert!(
        !h.shards[0].has_conn(driver_conn),
        "the shard gave up on the socket at its outbox bound"
    );
    assert_eq!(h.engine(0).connections(), 0);
    // What the socket's task finds first: the order to drop the socket.
    h.set_paused(conn, false);
    assert!(h.socks[&conn].gone, "the socket was dropped");
    assert!(
        h.take(conn).is_empty(),
        "none of the queued frames was written"
    );
    let pending = h.engine(0).pending_messages();
    assert_eq!(pending, limits.pending_per_uaid_max.min(sent.len()));
    let conn = h.reconnect(&uaid, true);
    let got = versions(&h.take_notifications(conn));
    assert_eq!(
        got.len(),
        pending,
        "every stored message arrives on reconnect"
    );
    let newest: Vec<Value> = sent[sent.len() - pending..]
        .iter()
        .map(|id| json!(id))
        .collect();
    assert_eq!(got, newest);
}

// ---- bounded growth (issue 13) ------------------------------------------

/// A hello that never registers a channel writes nothing durable, also with
/// wakeup data (a UA without channels has nothing to be woken for), and the
/// UA leaves memory with its socket, however the socket goes.
#[test]
fn an_anonymous_hello_writes_no_record_and_leaves_with_its_socket() {
    let mut h = Harness::with_wakeup(); // wakeup_idle_ms = 10 s
    let web = h.open();
    h.hello(web, json!({"use_webpush": true}));
    let (simple, simple_uaid) = h.connect_new(false);
    let mobile = h.open();
    assert_eq!(h.hello(mobile, wakeup_hello(None, "07"))["status"], 201);
    assert_eq!(h.engine(0).user_agents(), 3, "known while connected");
    assert_eq!(h.log(0), Vec::<Record>::new());

    h.advance(h.limits.wakeup_idle_ms);
    assert_eq!(h.closed(mobile), Some(close::SLEEP));
    h.disconnect(web);
    let taken_over = h.reconnect(&simple_uaid, false);
    assert_eq!(h.closed(simple), Some(close::NORMAL));
    assert_eq!(
        h.engine(0).user_agents(),
        1,
        "only the connected UA is left"
    );
    h.disconnect(taken_over);
    assert_eq!(h.engine(0).user_agents(), 0);
    assert_eq!(h.engine(0).asleep(), 0);
    assert_eq!(
        h.engine(0).next_deadline(),
        None,
        "no timer outlives its socket"
    );
    assert_eq!(h.log(0), Vec::<Record>::new());
}

/// The first channel records the UA: `UaidCreated`, the wakeup data its
/// hello gave, then `ChannelRegistered`, and the register reply waits until
/// they are durable. A UA that unregisters its last channel leaves memory
/// with its socket, and compaction forgets it.
#[test]
fn the_first_register_writes_uaid_created_and_channel_registered() {
    let mut h = Harness::with_wakeup();
    h.auto_commit = false;
    let conn = h.open();
    let reply = h.hello(conn, wakeup_hello(None, "07"));
    let uaid = uaid_of(reply["uaid"].as_str().unwrap());
    assert_eq!(h.log(0), Vec::<Record>::new(), "nothing before the channel");
    let wakeup = h.awake.len();
    h.send_json(
        conn,
        json!({"messageType": "register", "channelID": chan(1)}),
    );
    assert!(h.take(conn).is_empty(), "the reply waits for its records");
    let log = h.log(0);
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], Record::UaidCreated { uaid, at_ms: h.now });
    assert!(
        matches!(&log[1], Record::WakeupSet { uaid: u, wakeup: Some(info) }
            if *u == uaid && info.port == 5000),
        "{:?}",
        log[1]
    );
    assert!(
        matches!(&log[2], Record::ChannelRegistered(r)
            if r.uaid == uaid && r.channel == ChannelId::parse(&chan(1)).unwrap()),
        "{:?}",
        log[2]
    );
    h.commit();
    assert_eq!(h.take_reply(conn, "register")["status"], 200);
    assert_eq!(h.awake.len(), wakeup);

    h.auto_commit = true;
    h.send_json(
        conn,
        json!({"messageType": "unregister", "channelID": chan(1)}),
    );
    assert_eq!(h.take_reply(conn, "unregister")["status"], 200);
    h.disconnect(conn);
    assert_eq!(h.engine(0).user_agents(), 0);
    assert_eq!(h.engine(0).snapshot(h.now), Vec::<Record>::new());
}

/// A UAID authenticates itself: one whose first connection left nothing
/// durable comes back (after a restart, on another shard) and is accepted as
/// it is, still without a record, and can register.
#[test]
fn a_returning_uaid_without_records_is_accepted() {
    let mut h = Harness::with_shards(2);
    let conn = h.open_on(1);
    let uaid = h.hello(conn, json!({"use_webpush": true}))["uaid"]
        .as_str()
        .unwrap()
        .to_owned();
    h.disconnect(conn);
    h.restart();
    let conn = h.reconnect(&uaid, true); // on shard 0, handed to shard 1
    assert_eq!(h.socks[&conn].shard, 1);
    assert_eq!(h.engine(0).next_deadline(), None, "shard 0 kept no timer");
    assert!(h.log(0).is_empty() && h.log(1).is_empty());
    let endpoint = h.register(conn, &chan(1));
    assert_eq!(h.post(&endpoint, 60).status, 201);
    assert_eq!(h.take_notifications(conn).len(), 1);
}

/// A UA not seen for `ua_expiry_days` (1 day in the test limits) is dropped
/// at compaction, channels and all. Kept: a UA seen since (its last-seen
/// time is in the log and survives the compaction and a restart) and one
/// connected all along.
#[test]
fn expiry_drops_a_stale_ua_at_compaction_and_keeps_recent_ones() {
    let mut h = Harness::new();
    let day = h.limits.ua_expiry_ms().unwrap();
    let (_, stale) = offline_ua(&mut h, true, &[&chan(1)]);
    let (recent_uaid, recent) = offline_ua(&mut h, true, &[&chan(2)]);
    let (connected, _) = h.connect_new(true);
    let connected_endpoint = h.register(connected, &chan(3));
    h.advance(day / 2);
    let conn = h.reconnect(&recent_uaid, true);
    h.disconnect(conn);
    h.advance(day / 2 + 1);

    let compact = |h: &mut Harness| {
        h.shards[0].start_snapshot();
        h.compact(0);
        h.engine(0).stats().user_agents_expired
    };
    assert_eq!(compact(&mut h), 1, "the stale UA expired");
    assert_eq!(h.engine(0).user_agents(), 2);
    h.restart();
    assert_eq!(h.post(&stale[0], 60).status, 410, "gone with its UA");
    assert_eq!(h.post(&recent[0], 60).status, 201);
    assert_eq!(h.post(&connected_endpoint, 60).status, 201);

    // The recent UA was last seen half a day in: a day after that it
    // expires, though a compaction and a restart came between. The
    // connected one was seen at the first compaction.
    h.advance(day / 2);
    assert_eq!(compact(&mut h), 1, "the once recent UA expired");
    h.restart();
    assert_eq!(h.post(&recent[0], 60).status, 410);
    assert_eq!(h.post(&connected_endpoint, 60).status, 201);
}

// ---- replay (§7) -------------------------------------------------------

/// A fresh shard built from `records` alone.
fn replayed(h: &Harness, records: &[Record]) -> Shard {
    let mut shard = Shard::new(h.configs[0].clone(), keys(), StdRng::seed_from_u64(99));
    for record in records {
        shard.apply(record);
    }
    shard.set_next_lsn(h.log(0).len() as u64 + 1);
    shard
}

#[test]
fn replaying_the_log_rebuilds_the_acknowledged_state() {
    let mut h = Harness::with_limits(Limits {
        pending_per_uaid_max: 10,
        ..Limits::test_min()
    });
    let (web, web_uaid) = h.connect_new(true);
    let a = h.register(web, &chan(1));
    let b = h.register(web, &chan(2));
    let (simple, simple_uaid) = h.connect_new(false);
    let c = h.register(simple, &chan(3));
    let gone = h.register(simple, &chan(4));
    h.send_json(
        simple,
        json!({"messageType": "unregister", "channelID": chan(4)}),
    );
    let acked = location_id(&h.post(&a, 600));
    h.ack(web, &chan(1), json!(acked));
    h.disconnect(web);
    h.disconnect(simple);
    let pending_a = location_id(&h.post_data(&a, 600, b"x", &[]));
    let deleted = location_id(&h.post(&b, 600));
    h.request("DELETE", &format!("/m/{deleted}"), &[], b"");
    let replaced = location_id(&h.post_data(&b, 600, b"old", &[("Topic", "t")]));
    let pending_b = location_id(&h.post_data(&b, 600, b"new", &[("Topic", "t")]));
    h.put_version(&c, 3);
    h.put_version(&c, 8);
    let _ = replaced;

    let live = h.engine(0);
    let rebuilt = replayed(&h, &h.log(0));
    assert_eq!(rebuilt.user_agents(), live.user_agents());
    assert_eq!(rebuilt.pending_messages(), live.pending_messages());
    assert_eq!(rebuilt.pending_messages(), 3);

    let records = h.log(0).len();
    h.restart();
    let web = h.reconnect(&web_uaid, true);
    let got = h.take_notifications(web);
    assert_eq!(versions(&got), vec![json!(pending_a), json!(pending_b)]);
    assert_eq!(got[1]["data"], b64(b"new"));
    assert_eq!(h.register(web, &chan(1)), a, "same endpoints after replay");
    assert_eq!(h.register(web, &chan(2)), b);
    let simple = h.reconnect(&simple_uaid, false);
    let got = h.take_notifications(simple);
    assert_eq!(
        got[0]["updates"],
        json!([{"channelID": chan(3), "version": 8}])
    );
    assert_eq!(h.register(simple, &chan(3)), c);
    assert_eq!(h.log(0).len(), records, "nothing had to be re-created");
    assert_eq!(
        h.post(&gone, 60).status,
        410,
        "unregistered stays unregistered"
    );
    let state = h.request("GET", &format!("/m/{acked}"), &[], b"");
    assert_eq!(body_json(&state)["state"], "acked");
    // The SimplePush version survived too: an older one is not re-sent.
    h.put_version(&c, 5);
    assert!(h.take_notifications(simple).is_empty());
}

#[test]
fn replaying_a_snapshot_keeps_registrations_and_pending() {
    let mut h = Harness::new();
    let (uaid, endpoints) = offline_ua(&mut h, true, &[&chan(1), &chan(2)]);
    let id = location_id(&h.post(&endpoints[0], 600));
    let expiring = location_id(&h.post(&endpoints[1], 5));
    h.advance(6_000);
    let snapshot = h.engine(0).snapshot(h.now);
    assert!(!snapshot.iter().any(|r| matches!(r, Record::MessageStored(m) if h.keys.message_id(&m.uaid, &m.channel, m.seq) == expiring)));
    h.compact(0);
    h.restart();
    let conn = h.reconnect(&uaid, true);
    assert_eq!(versions(&h.take_notifications(conn)), vec![json!(id)]);
    assert_eq!(h.register(conn, &chan(2)), endpoints[1]);
}

#[test]
fn replaying_a_snapshot_keeps_simplepush_versions() {
    let mut h = Harness::new();
    let (conn, uaid) = h.connect_new(false);
    let endpoint = h.register(conn, &chan(1));
    h.put_version(&endpoint, 5);
    h.take(conn);
    h.ack(conn, &chan(1), json!(5));
    h.compact(0);
    h.restart();
    let conn = h.reconnect(&uaid, false);
    assert_eq!(h.put_version(&endpoint, 3).status, 200);
    assert!(
        h.take_notifications(conn).is_empty(),
        "version 3 is older than the acked 5: it must not be sent"
    );
}

#[test]
fn record_uaids_and_wakeup_survive_replay() {
    let mut h = Harness::with_wakeup();
    let (conn, uaid, endpoint) = wakeup_ua(&mut h);
    h.disconnect(conn);
    assert!(h.log(0).iter().all(|r| r.uaid() == uaid_of(&uaid)));
    h.restart();
    assert_eq!(h.engine(0).asleep(), 1);
    assert_eq!(h.post(&endpoint, 60).status, 201);
    assert_eq!(
        h.wakeups.len(),
        1,
        "the replayed shard still knows where to wake it"
    );
}

/// A shard rebuilt from `log` alone, its state as sorted record texts.
fn state_after(h: &Harness, log: &[Record]) -> Vec<String> {
    let mut shard = herald_engine::shard::Shard::new(
        h.configs[0].clone(),
        h.keys.clone(),
        <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1),
    );
    for record in log {
        shard.apply(record);
    }
    let mut state: Vec<String> = shard
        .snapshot(h.now)
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    state.sort();
    state
}

/// Compaction builds its snapshot one UA at a time while the shard keeps
/// serving; snapshot + the records after the covered LSN must rebuild exactly
/// the state the whole log does.
#[test]
fn a_snapshot_taken_across_turns_replays_exactly() {
    let mut h = Harness::new();
    let mut uas = Vec::new();
    for index in 0..6 {
        let channels = [chan(10 * index + 1), chan(10 * index + 2)];
        let (uaid, endpoints) = offline_ua(&mut h, index % 2 == 0, &[&channels[0], &channels[1]]);
        for (n, endpoint) in endpoints.iter().enumerate() {
            if index % 2 == 0 {
                h.post(endpoint, 600);
            } else {
                h.put_version(endpoint, 10 + n as u64);
            }
        }
        uas.push((uaid, channels, endpoints));
    }
    let covered = h.log(0).len();
    let mut snapshot = Vec::new();
    for (turn, uaid) in h.engine(0).uaids().into_iter().enumerate() {
        h.engine(0).snapshot_user_agent(h.now, uaid, &mut snapshot);
        // Between two UAs of the snapshot, the shard serves: every UA changes.
        let (uaid, channels, endpoints) = uas[turn].clone();
        let web_push = turn % 2 == 0;
        let conn = h.reconnect(&uaid, web_push);
        if web_push {
            let frames = h.take_notifications(conn);
            h.ack(conn, &channels[0], frames[0]["version"].clone());
        } else {
            h.take(conn);
            h.ack(conn, &channels[0], json!(10));
        }
        if web_push {
            h.post(&endpoints[1], 600);
        } else {
            h.put_version(&endpoints[0], 99);
        }
        h.send_json(
            conn,
            json!({"messageType": "unregister", "channelID": channels[1]}),
        );
        assert_eq!(h.take_reply(conn, "unregister")["status"], 200);
        h.register(conn, &chan(100 + turn as u64));
        h.disconnect(conn);
    }
    let mut fuzzy = snapshot;
    fuzzy.extend_from_slice(&h.log(0)[covered..]);
    assert_eq!(state_after(&h, &fuzzy), state_after(&h, &h.log(0)));
}

/// A crash may cut the log anywhere. Replacing a SimplePush version writes
/// the new message before the removal of the old one, so every prefix of the
/// log still holds the newest version that was acknowledged within it.
#[test]
fn every_log_prefix_keeps_the_newest_acknowledged_version() {
    let mut h = Harness::new();
    let (_uaid, endpoints) = offline_ua(&mut h, false, &[&chan(1)]);
    for version in [5, 6, 7] {
        assert_eq!(h.put_version(&endpoints[0], version).status, 200);
    }
    let log = h.log(0);
    for cut in 0..=log.len() {
        let prefix = &log[..cut];
        let newest_logged = prefix
            .iter()
            .filter_map(|record| match record {
                Record::MessageStored(message) => match message.body {
                    herald_engine::message::MessageBody::Version(version) => Some(version),
                    _ => None,
                },
                _ => None,
            })
            .max();
        let Some(newest_logged) = newest_logged else {
            continue;
        };
        let state = state_after(&h, prefix);
        assert!(
            state
                .iter()
                .any(|record| record.contains(&format!("Version({newest_logged})"))),
            "cut after {cut} records: version {newest_logged} is gone: {state:#?}"
        );
    }
}

/// After a WAL write or sync failure the shard acknowledges nothing it could
/// not make durable: AS requests get 503, register and unregister 500, and
/// acks are not logged.
#[test]
fn a_failed_store_refuses_every_write() {
    let mut h = Harness::new();
    let (conn, _uaid) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    assert_eq!(h.post(&endpoint, 60).status, 201);
    let frames = h.take_notifications(conn);
    let logged = h.log(0).len();
    h.logs[0].fail("injected write error");
    h.tick();

    let refused = h.post(&endpoint, 60);
    assert_eq!(refused.status, 503, "AS push after a store failure");
    assert_eq!(
        h.register_reply(conn, json!({"channelID": chan(2)}))["status"],
        500
    );
    h.send_json(
        conn,
        json!({"messageType": "unregister", "channelID": chan(1)}),
    );
    assert_eq!(h.take_reply(conn, "unregister")["status"], 500);
    h.ack(conn, &chan(1), frames[0]["version"].clone());
    assert_eq!(
        h.log(0).len(),
        logged,
        "nothing was appended after the failure"
    );
}

/// Issue 4 / RFC 8030 §5.3: a very-low or low urgency message waits for the
/// sleeping UA's next natural connection; normal and high wake it.
#[test]
fn low_urgency_does_not_wake_a_sleeping_ua() {
    let mut h = Harness::with_wakeup();
    let (conn, uaid, endpoint) = wakeup_ua(&mut h);
    h.advance(10_000);
    assert_eq!(h.closed(conn), Some(close::SLEEP));
    for urgency in ["very-low", "low"] {
        let response = h.request(
            "POST",
            &endpoint,
            &[("TTL", "600"), ("Urgency", urgency)],
            b"",
        );
        assert_eq!(response.status, 201);
    }
    assert!(
        h.wakeups.is_empty(),
        "low urgency woke the UA: {:?}",
        h.wakeups.len()
    );
    let response = h.request(
        "POST",
        &endpoint,
        &[("TTL", "600"), ("Urgency", "normal")],
        b"",
    );
    assert_eq!(response.status, 201);
    assert_eq!(h.wakeups.len(), 1, "normal urgency wakes the UA");
    let conn = h.open();
    h.hello(conn, wakeup_hello(Some(&uaid), "07"));
    assert_eq!(
        h.take_notifications(conn).len(),
        3,
        "all three arrive on reconnect"
    );
}

/// Several unacked messages whose numeric versions collide (same channel,
/// same millisecond) are still re-sent once per retry interval, not more.
#[test]
fn colliding_versions_are_resent_once_per_interval() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(false);
    let endpoint = h.register(conn, &chan(1));
    h.request("PUT", &endpoint, &[], b"body=one");
    h.request("PUT", &endpoint, &[], b"body=two");
    h.post(&endpoint, 600);
    let retry_ms = h.limits.retry_interval_ms;
    let started = h.now;
    let mut frames = h.take(conn).len();
    for _ in 0..40 {
        h.advance(retry_ms / 4);
        frames += h.take(conn).len();
    }
    let retries = (h.now - started) / retry_ms;
    // Live: one frame per push. Then each retry re-sends them as one
    // `notification` frame (the Web Push message as an update) and one
    // `desktop-notification` frame carrying both bodies.
    assert_eq!(
        frames as u64,
        3 + 2 * retries,
        "frames over {} ms",
        h.now - started
    );
}

/// On a Web Push socket a desktop notification shows a numeric version and a
/// Web Push message its id: acking the number must not free the Web Push
/// message that arrived earlier on the same channel.
#[test]
fn a_numeric_ack_on_a_webpush_socket_frees_only_numeric_messages() {
    let mut h = Harness::new();
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    assert_eq!(h.post(&endpoint, 600).status, 201);
    h.advance(5);
    h.request("PUT", &endpoint, &[], b"body=hello");
    let frames = h.take_notifications(conn);
    assert_eq!(frames.len(), 2);
    let numeric = frames
        .iter()
        .find(|frame| {
            frame["version"]
                .as_str()
                .is_some_and(|v| v.parse::<u64>().is_ok())
        })
        .expect("the desktop notification shows a number")["version"]
        .clone();
    h.ack(conn, &chan(1), numeric);
    assert_eq!(
        h.engine(0).pending_messages(),
        1,
        "the Web Push message is still unacked"
    );
}
