//! The extended protocol (SPEC §3.6) from both sides, for the tests that
//! speak it: a UA with its token (`registerUA`, `registerWA`, acks), an
//! application server's RSA key, and signed notifications. Each test binary
//! that includes this module uses a part of it.
#![allow(dead_code)]

use base64::Engine as _;
use herald_tests::serde_json::{json, Value};
use herald_tests::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

pub const SUBPROTOCOL: &str = "push-extended-notification";
/// Largest AS request body accepted (seed 003: 4096 * 3 bytes).
pub const AS_BODY_MAX_BYTES: usize = 4096 * 3;

// ---------------------------------------------------------------------------
// helpers: server, tokens, keys
// ---------------------------------------------------------------------------

pub fn b64_standard(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `GET /token` on the UA listener: 200, `text/plain`, 32 lower-case hex.
pub fn new_token(server: &Server) -> String {
    let r = http(
        "GET",
        &format!("http://{}/token", server.ua_addr()),
        &[],
        None,
    );
    r.assert_status(200, "GET /token");
    let content_type = r.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "GET /token is text/plain, got Content-Type {content_type:?}"
    );
    let token = r.text();
    assert!(
        is_uaid(&token),
        "GET /token body is 32 lower-case hex characters: {token:?}"
    );
    token
}

/// An application server's RSA key pair.
pub struct AppKey {
    pub signing: SigningKey<Sha256>,
    /// Standard base64 of the DER SubjectPublicKeyInfo (`pbkbase64`).
    pub pbkbase64: String,
}

impl AppKey {
    /// A 1024-bit key from a seeded rng: the same seed gives the same key.
    pub fn new(seed: u64) -> AppKey {
        let mut rng = StdRng::seed_from_u64(seed);
        let private = RsaPrivateKey::new(&mut rng, 1024).expect("RSA key generation");
        let der = RsaPublicKey::from(&private)
            .to_public_key_der()
            .expect("public key DER");
        AppKey {
            signing: SigningKey::<Sha256>::new(private),
            pbkbase64: b64_standard(der.as_bytes()),
        }
    }

    /// Standard base64 of the PKCS#1 v1.5 / SHA-256 signature over `message`.
    pub fn sign(&self, message: &str) -> String {
        b64_standard(&self.signing.sign(message.as_bytes()).to_bytes())
    }
}

/// Every field of `expected` (an object) is in `actual` with the same value.
pub fn assert_fields(actual: &Value, expected: &Value, what: &str) {
    let fields = expected.as_object().expect("expected fields are an object");
    for (k, v) in fields {
        assert_eq!(&actual[k], v, "{what}: field {k:?} in {actual}");
    }
}

// ---------------------------------------------------------------------------
// helpers: the UA side
// ---------------------------------------------------------------------------

/// A UA speaking the extended protocol, with its token.
pub struct ExtUa {
    pub ws: WsClient,
    pub token: String,
}

impl ExtUa {
    /// Open a socket with the extended subprotocol (no message sent yet).
    pub fn connect(server: &Server, token: &str) -> ExtUa {
        let handshake = Handshake {
            protocol: Some(SUBPROTOCOL.into()),
            extra_headers: vec![],
        };
        let ws = WsClient::connect_with(&server.ua_addr(), &handshake)
            .unwrap_or_else(|e| panic!("extended WebSocket handshake: {e}"));
        ExtUa {
            ws,
            token: token.to_string(),
        }
    }

    /// A fresh token, a socket, and `registerUA` done.
    pub fn fresh(server: &Server) -> ExtUa {
        ExtUa::resume(server, &new_token(server))
    }

    /// A new socket for a known token, `registerUA` done (REGISTERED asserted).
    pub fn resume(server: &Server, token: &str) -> ExtUa {
        let mut ua = ExtUa::connect(server, token);
        ua.register_ua();
        ua
    }

    pub fn send(&mut self, message: &Value) {
        self.ws.send_json(message);
    }

    pub fn recv(&mut self) -> Value {
        self.ws.recv_json_with_deadline(DEADLINE)
    }

    pub fn register_ua_reply(&mut self) -> Value {
        let token = self.token.clone();
        self.send(&json!({"messageType": "registerUA", "data": {"uatoken": token}}));
        self.recv()
    }

    /// `registerUA`; the very next message must be the REGISTERED reply.
    pub fn register_ua(&mut self) {
        let r = self.register_ua_reply();
        assert_fields(
            &r,
            &json!({"status": "REGISTERED", "statusCode": 200, "messageType": "registerUA"}),
            "registerUA reply",
        );
    }

    pub fn register_wa_reply(&mut self, watoken: &str, key: &AppKey) -> Value {
        let token = self.token.clone();
        self.send(&json!({"messageType": "registerWA", "data": {
            "uatoken": token, "watoken": watoken, "pbkbase64": key.pbkbase64,
        }}));
        self.recv()
    }

    /// `registerWA`; asserts REGISTERED and returns the url.
    pub fn register_wa(&mut self, server: &Server, watoken: &str, key: &AppKey) -> String {
        let r = self.register_wa_reply(watoken, key);
        assert_fields(
            &r,
            &json!({"status": "REGISTERED", "statusCode": 200, "messageType": "registerWA"}),
            "registerWA reply",
        );
        let url = r["url"]
            .as_str()
            .unwrap_or_else(|| panic!("registerWA reply has a string url: {r}"))
            .to_string();
        let prefix = format!("{}/notify/", server.as_url());
        let app_token = url
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("registerWA url is <endpoint-url>/notify/<token>: {url:?}"));
        assert!(
            !app_token.is_empty() && !app_token.contains('/'),
            "registerWA url ends in one non-empty token: {url:?}"
        );
        url
    }

    /// `getAllMessages` and its `messages` array. An `ack` reply, should the
    /// server send one for an earlier ack, is skipped.
    pub fn get_all_messages(&mut self) -> Vec<Value> {
        let token = self.token.clone();
        self.send(&json!({"messageType": "getAllMessages", "data": {"uatoken": token}}));
        loop {
            let r = self.recv();
            if r["messageType"] == "ack" {
                continue;
            }
            assert_eq!(
                r["messageType"], "getAllMessages",
                "getAllMessages reply: {r}"
            );
            return r["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("getAllMessages reply has a messages array: {r}"))
                .clone();
        }
    }

    pub fn ack(&mut self, notification: &Value) {
        let id = notification["messageId"]
            .as_str()
            .unwrap_or_else(|| panic!("notification has a string messageId: {notification}"));
        self.send(&json!({"messageType": "ack", "messageId": id}));
    }

    /// Read exactly `sent.len()` messages: the notifications for `sent` (any
    /// order), each checked; returned in the order of `sent`.
    pub fn expect_notifications(&mut self, sent: &[&Sent], url: &str) -> Vec<Value> {
        let received: Vec<Value> = sent.iter().map(|_| self.recv()).collect();
        match_notifications(&received, sent, url)
    }

    pub fn expect_silence(&mut self) {
        self.ws.expect_silence(NEG_WINDOW);
    }

    pub fn close(self) {
        self.ws.close();
    }
}

// ---------------------------------------------------------------------------
// helpers: the AS side
// ---------------------------------------------------------------------------

/// What an AS sent, to check what the UA receives.
pub struct Sent {
    pub id: String,
    pub message: String,
    pub priority: u64,
    /// The AS's `timestamp` (ms), taken just before the POST.
    pub timestamp_ms: u64,
}

/// A correctly signed notification body.
pub fn notification_body(
    key: &AppKey,
    id: &str,
    message: &str,
    ttl_s: u64,
    priority: u64,
) -> Value {
    json!({
        "messageType": "notification",
        "id": id,
        "message": message,
        "signature": key.sign(message),
        "ttl": ttl_s,
        "timestamp": now_ms(),
        "priority": priority,
    })
}

pub fn post_bytes(url: &str, body: &[u8]) -> HttpResponse {
    http(
        "POST",
        url,
        &[("Content-Type", "application/json")],
        Some(body),
    )
}

pub fn post_json(url: &str, body: &Value) -> HttpResponse {
    post_bytes(url, body.to_string().as_bytes())
}

/// POST a signed notification, assert 200 `{"status":"ACCEPTED"}`.
pub fn notify_with(
    url: &str,
    key: &AppKey,
    id: &str,
    message: &str,
    ttl_s: u64,
    priority: u64,
) -> Sent {
    let body = notification_body(key, id, message, ttl_s, priority);
    let r = post_json(url, &body);
    r.assert_status(200, "POST signed notification");
    assert_eq!(
        r.json()["status"],
        "ACCEPTED",
        "POST notification reply: {}",
        r.text()
    );
    Sent {
        id: id.to_string(),
        message: message.to_string(),
        priority,
        timestamp_ms: body["timestamp"].as_u64().unwrap(),
    }
}

/// POST a signed notification (ttl one hour, priority 2).
pub fn notify(url: &str, key: &AppKey, id: &str, message: &str) -> Sent {
    notify_with(url, key, id, message, 3600, 2)
}

/// The reply is `status` with `{"status":"ERROR","reason":reason}`.
pub fn assert_as_error(r: &HttpResponse, status: u16, reason: &str) {
    r.assert_status(status, reason);
    assert_fields(
        &r.json(),
        &json!({"status": "ERROR", "reason": reason}),
        "AS error body",
    );
}

/// One notification as the UA receives it, checked field by field against
/// what the AS sent. The timestamp is the AS's or the server's (both are
/// milliseconds since the epoch between the POST and now).
pub fn assert_notification(n: &Value, sent: &Sent, url: &str) {
    assert_fields(
        n,
        &json!({
            "messageType": "notification",
            "id": sent.id,
            "message": sent.message,
            "priority": sent.priority,
            "url": url,
        }),
        "notification",
    );
    let message_id = n["messageId"].as_str().unwrap_or("");
    assert!(!message_id.is_empty(), "notification has a messageId: {n}");
    let timestamp = n["timestamp"]
        .as_u64()
        .unwrap_or_else(|| panic!("notification timestamp is a number of ms: {n}"));
    assert!(
        timestamp >= sent.timestamp_ms && timestamp <= now_ms() + 1000,
        "notification timestamp {timestamp} is ms since the epoch, not before the AS's {}: {n}",
        sent.timestamp_ms
    );
}

/// `received` is exactly the notifications for `sent` (any order); returns
/// them in the order of `sent`.
pub fn match_notifications(received: &[Value], sent: &[&Sent], url: &str) -> Vec<Value> {
    assert_eq!(
        received.len(),
        sent.len(),
        "expected notifications {:?}, got {received:?}",
        sent.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
    sent.iter()
        .map(|s| {
            let n = received
                .iter()
                .find(|n| n["id"] == s.id.as_str())
                .unwrap_or_else(|| panic!("no notification with id {:?} in {received:?}", s.id));
            assert_notification(n, s, url);
            n.clone()
        })
        .collect()
}

/// A UA with an app registered: (ua, key, url).
pub fn registered_app(server: &Server, key_seed: u64) -> (ExtUa, AppKey, String) {
    let key = AppKey::new(key_seed);
    let mut ua = ExtUa::fresh(server);
    let url = ua.register_wa(server, "wa-token-app", &key);
    (ua, key, url)
}
