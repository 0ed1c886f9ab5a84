//! SPEC §4.2 VAPID (RFC 8292) against the real binary: every way a VAPID
//! header can be wrong is a 401 (never 404 or 410: senders delete endpoints on
//! those), the valid forms are 201, v1 endpoints check VAPID only when it is
//! present, and push receipts (`Prefer: respond-async`) follow a message from
//! stored to delivered to acked.
//!
//! The VAPID keys and JWTs are made here with the `p256` crate (ES256 =
//! ECDSA P-256 + SHA-256, signature as r ‖ s), independently of Herald's code.

use std::time::Duration;

use herald_tests::serde_json::{json, Value};
use herald_tests::*;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

/// One application server's VAPID key pair.
struct Vapid {
    key: SigningKey,
    /// Uncompressed public point, base64url without padding.
    public: String,
}

impl Vapid {
    fn new() -> Vapid {
        loop {
            // A random 32-byte string is a valid scalar with overwhelming
            // probability; retry on the (astronomically rare) failure.
            if let Ok(key) = SigningKey::from_slice(&random_bytes(32)) {
                let point = key.verifying_key().to_encoded_point(false);
                let public = b64url_encode(point.as_bytes());
                return Vapid { key, public };
            }
        }
    }

    /// Firefox sends the key padded with `=` at register.
    fn public_padded(&self) -> String {
        let pad = (4 - self.public.len() % 4) % 4;
        format!("{}{}", self.public, "=".repeat(pad))
    }

    /// An ES256 JWT over exactly these claims.
    fn jwt(&self, claims: &Value) -> String {
        let header = b64url_encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let payload = b64url_encode(claims.to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64url_encode(&signature.to_bytes()))
    }

    /// Claims a correct sender uses for `server`: aud = the endpoint origin,
    /// exp 12 h ahead.
    fn claims(server: &Server) -> Value {
        json!({
            "aud": server.as_url(),
            "exp": now_ms() / 1000 + 12 * 3600,
            "sub": "mailto:vapid-test@example.com",
        })
    }

    fn valid_jwt(&self, server: &Server) -> String {
        self.jwt(&Vapid::claims(server))
    }

    /// `Authorization: vapid t=<jwt>, k=<key>` (RFC 8292 §3).
    fn header(&self, jwt: &str) -> String {
        format!("vapid t={jwt}, k={}", self.public)
    }

    fn valid_header(&self, server: &Server) -> String {
        self.header(&self.valid_jwt(server))
    }
}

/// A UA online, one channel registered with `vapid`'s key (padded, as
/// Firefox sends it). Returns (ua, channelID, endpoint).
fn ua_with_vapid_channel(server: &Server, vapid: &Vapid) -> (WsClient, String, String) {
    let mut ua = server.ua_webpush();
    let channel = new_channel_id();
    let r = ua.register_reply(&channel, Some(&vapid.public_padded()));
    assert_eq!(r["status"], 200, "register with a VAPID key: {r}");
    let endpoint = r["pushEndpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("register reply has pushEndpoint: {r}"))
        .to_string();
    assert!(
        endpoint.starts_with(&format!("{}/wpush/v2/", server.as_url())),
        "a channel registered with a key gets a /wpush/v2/ endpoint: {endpoint}"
    );
    (ua, channel, endpoint)
}

fn post(endpoint: &str, authorization: Option<&str>, body: &[u8]) -> HttpResponse {
    let mut headers = vec![("TTL", "60"), ("Content-Encoding", "aes128gcm")];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    push_with(endpoint, &headers, Some(body))
}

/// A VAPID failure: 401 with the JSON error body, and in no case the 404/410
/// that would make a sender delete a good subscription.
fn assert_vapid_refused(r: &HttpResponse, what: &str) {
    assert!(
        r.status != 404 && r.status != 410,
        "{what}: a VAPID failure must never be {} (senders delete endpoints on 404/410): {:?}",
        r.status,
        r.text()
    );
    assert_eq!(
        r.status,
        401,
        "{what}: expected 401, got {} body {:?}",
        r.status,
        r.text()
    );
    r.assert_json_error(401);
}

fn assert_created(r: &HttpResponse, what: &str) {
    assert_eq!(
        r.status,
        201,
        "{what}: expected 201, got {} body {:?}",
        r.status,
        r.text()
    );
}

#[test]
fn v2_endpoint_without_authorization_is_401() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (mut ua, _c, endpoint) = ua_with_vapid_channel(&server, &vapid);
    assert_vapid_refused(&post(&endpoint, None, b"x"), "no Authorization");
    assert_vapid_refused(
        &push_with(&endpoint, &[("TTL", "60")], None),
        "empty push, no Authorization",
    );
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn expired_jwt_is_401() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (mut ua, _c, endpoint) = ua_with_vapid_channel(&server, &vapid);
    let mut claims = Vapid::claims(&server);
    claims["exp"] = json!(now_ms() / 1000 - 60);
    let r = post(&endpoint, Some(&vapid.header(&vapid.jwt(&claims))), b"x");
    assert_vapid_refused(&r, "exp one minute ago");
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn exp_more_than_24_hours_ahead_is_401() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (mut ua, _c, endpoint) = ua_with_vapid_channel(&server, &vapid);
    let mut claims = Vapid::claims(&server);
    claims["exp"] = json!(now_ms() / 1000 + 25 * 3600);
    let r = post(&endpoint, Some(&vapid.header(&vapid.jwt(&claims))), b"x");
    assert_vapid_refused(&r, "exp 25 hours ahead");
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn missing_claims_are_401() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (mut ua, _c, endpoint) = ua_with_vapid_channel(&server, &vapid);
    let good = Vapid::claims(&server);
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    for (what, claims) in [("no aud", no_aud), ("no exp", no_exp)] {
        let r = post(&endpoint, Some(&vapid.header(&vapid.jwt(&claims))), b"x");
        assert_vapid_refused(&r, what);
    }
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn wrong_aud_is_401() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (mut ua, _c, endpoint) = ua_with_vapid_channel(&server, &vapid);
    let wrong = [
        "https://push.example.com".to_string(),
        // same host, another port
        format!("http://127.0.0.1:{}", free_port()),
        // the UA listener's origin, not the endpoint's
        format!("http://{}", server.ua_addr()),
    ];
    for aud in wrong {
        let mut claims = Vapid::claims(&server);
        claims["aud"] = json!(aud);
        let r = post(&endpoint, Some(&vapid.header(&vapid.jwt(&claims))), b"x");
        assert_vapid_refused(&r, &format!("aud {aud}"));
    }
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn jwt_signed_by_another_key_is_401() {
    let server = Server::start_default();
    let registered = Vapid::new();
    let other = Vapid::new();
    let (mut ua, _c, endpoint) = ua_with_vapid_channel(&server, &registered);
    // A self-consistent header from a key the channel was not registered with.
    let r = post(&endpoint, Some(&other.valid_header(&server)), b"x");
    assert_vapid_refused(&r, "JWT and k= of another key");
    // The registered key in k=, but the JWT signed by another key.
    let forged = format!(
        "vapid t={}, k={}",
        other.valid_jwt(&server),
        registered.public
    );
    assert_vapid_refused(
        &post(&endpoint, Some(&forged), b"x"),
        "registered k=, JWT signed by another key",
    );
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn bad_signature_is_401() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (mut ua, _c, endpoint) = ua_with_vapid_channel(&server, &vapid);
    let jwt = vapid.valid_jwt(&server);
    let (input, sig_b64) = jwt.rsplit_once('.').unwrap();
    let sig = b64url_decode(sig_b64);

    let mut flipped = sig.clone();
    flipped[40] ^= 0x01;
    let truncated = &sig[..63];
    let mut zero_r = sig.clone();
    zero_r[..32].fill(0);
    // A valid signature over different claims, spliced onto these claims.
    let mut other_claims = Vapid::claims(&server);
    other_claims["sub"] = json!("mailto:someone-else@example.com");
    let other_jwt = vapid.jwt(&other_claims);
    let other_sig = other_jwt.rsplit_once('.').unwrap().1;

    let cases = [
        (
            "one bit flipped in s",
            format!("{input}.{}", b64url_encode(&flipped)),
        ),
        (
            "63-byte signature",
            format!("{input}.{}", b64url_encode(truncated)),
        ),
        ("r = 0", format!("{input}.{}", b64url_encode(&zero_r))),
        ("signature of other claims", format!("{input}.{other_sig}")),
        ("no signature", format!("{input}.")),
        ("not a JWT", "abc".to_string()),
    ];
    for (what, jwt) in cases {
        assert_vapid_refused(&post(&endpoint, Some(&vapid.header(&jwt)), b"x"), what);
    }
    // A malformed Authorization header is a VAPID failure too.
    for header in [
        "vapid",
        "vapid t=",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "vapid k=abc",
    ] {
        assert_vapid_refused(&post(&endpoint, Some(header), b"x"), header);
    }
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn valid_vapid_is_201_and_delivered() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (mut ua, channel, endpoint) = ua_with_vapid_channel(&server, &vapid);

    let r = post(&endpoint, Some(&vapid.valid_header(&server)), b"first");
    assert_created(&r, "valid vapid t=, k=");
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &channel), "{n}");
    assert_eq!(notification_data(&n), b"first");
    ua.ack_notification(&n);

    // Parameters in the other order, the key padded, the token quoted.
    let jwt = vapid.valid_jwt(&server);
    let variants = [
        format!("vapid k={}, t={jwt}", vapid.public),
        format!("vapid t={jwt}, k={}", vapid.public_padded()),
        format!("vapid t=\"{jwt}\",k=\"{}\"", vapid.public),
    ];
    for (i, header) in variants.iter().enumerate() {
        let body = format!("variant {i}");
        assert_created(&post(&endpoint, Some(header), body.as_bytes()), header);
        let n = ua.recv_notification(DEADLINE);
        assert_eq!(notification_data(&n), body.as_bytes(), "{header}");
        ua.ack_notification(&n);
    }
    // An empty push with VAPID.
    let r = push_with(
        &endpoint,
        &[
            ("TTL", "60"),
            ("Authorization", &vapid.valid_header(&server)),
        ],
        None,
    );
    assert_created(&r, "empty push with VAPID");
    let n = ua.recv_notification(DEADLINE);
    assert!(absent(&n["data"]), "empty push has no data: {n}");
}

#[test]
fn draft_webpush_scheme_with_crypto_key_is_accepted() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (mut ua, _c, endpoint) = ua_with_vapid_channel(&server, &vapid);
    let jwt = vapid.valid_jwt(&server);
    let dh = b64url_encode(&random_bytes(65));
    let salt = b64url_encode(&random_bytes(16));
    let crypto_key = format!("dh={dh};p256ecdsa={}", vapid.public);
    let encryption = format!("salt={salt}");
    let authorization = format!("WebPush {jwt}");
    let headers = [
        ("TTL", "60"),
        ("Content-Encoding", "aesgcm"),
        ("Encryption", encryption.as_str()),
        ("Crypto-Key", crypto_key.as_str()),
        ("Authorization", authorization.as_str()),
    ];
    let r = push_with(&endpoint, &headers, Some(b"aesgcm bytes"));
    assert_created(&r, "Authorization: WebPush <JWT> + Crypto-Key: p256ecdsa=");
    let n = ua.recv_notification(DEADLINE);
    assert_eq!(notification_data(&n), b"aesgcm bytes");
    assert_eq!(n["headers"]["encoding"], "aesgcm", "{n}");
    let ck = n["headers"]["crypto_key"].as_str().unwrap_or_default();
    assert!(
        ck.contains(&format!("dh={dh}")),
        "crypto_key forwarded: {n}"
    );
    ua.ack_notification(&n);

    // The p256ecdsa item first, as py_vapid writes it.
    let crypto_key2 = format!("p256ecdsa={};dh={dh}", vapid.public);
    let mut h2 = headers;
    h2[3] = ("Crypto-Key", crypto_key2.as_str());
    assert_created(
        &push_with(&endpoint, &h2, Some(b"again")),
        "p256ecdsa first",
    );
    let n = ua.recv_notification(DEADLINE);
    ua.ack_notification(&n);

    // The same form with the key of another AS, or without the key.
    let other = Vapid::new();
    let wrong_key = format!("dh={dh};p256ecdsa={}", other.public);
    let mut h3 = headers;
    h3[3] = ("Crypto-Key", wrong_key.as_str());
    assert_vapid_refused(
        &push_with(&endpoint, &h3, Some(b"x")),
        "WebPush form, other key",
    );
    let no_key = format!("dh={dh}");
    let mut h4 = headers;
    h4[3] = ("Crypto-Key", no_key.as_str());
    assert_vapid_refused(
        &push_with(&endpoint, &h4, Some(b"x")),
        "WebPush form, no p256ecdsa",
    );
    ua.expect_silence(NEG_WINDOW);
}

#[test]
fn v1_endpoint_checks_vapid_only_when_present() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    let (_c, endpoint) = ua.register_new();
    assert!(
        endpoint.starts_with(&format!("{}/wpush/v1/", server.as_url())),
        "a channel without a key gets a /wpush/v1/ endpoint: {endpoint}"
    );
    // No Authorization: fine on v1.
    assert_created(&post(&endpoint, None, b"plain"), "v1 without VAPID");
    assert_eq!(notification_data(&ua.recv_notification(DEADLINE)), b"plain");

    // Present but invalid: refused.
    let vapid = Vapid::new();
    let mut expired = Vapid::claims(&server);
    expired["exp"] = json!(now_ms() / 1000 - 60);
    let mut wrong_aud = Vapid::claims(&server);
    wrong_aud["aud"] = json!("https://push.example.com");
    let jwt = vapid.valid_jwt(&server);
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    let mut sig = b64url_decode(sig);
    sig[5] ^= 0x80;
    let bad_sig = format!("{input}.{}", b64url_encode(&sig));
    for (what, header) in [
        ("expired", vapid.header(&vapid.jwt(&expired))),
        ("wrong aud", vapid.header(&vapid.jwt(&wrong_aud))),
        ("bad signature", vapid.header(&bad_sig)),
        ("garbage", "vapid t=x.y.z, k=abc".to_string()),
    ] {
        assert_vapid_refused(
            &post(&endpoint, Some(&header), b"x"),
            &format!("v1, {what}"),
        );
    }
    ua.expect_silence(NEG_WINDOW);

    // Present and valid (any key: v1 channels have none registered).
    assert_created(
        &post(&endpoint, Some(&vapid.valid_header(&server)), b"signed"),
        "v1 with valid VAPID",
    );
    assert_eq!(
        notification_data(&ua.recv_notification(DEADLINE)),
        b"signed"
    );
}

#[test]
fn register_with_an_invalid_key_is_400() {
    let server = Server::start_default();
    let mut ua = server.ua_webpush();
    // Not base64url, a 64-byte string, the compressed form, a point off the curve.
    let mut off_curve = b64url_decode(VAPID_KEY_G);
    off_curve[64] ^= 1;
    let mut compressed = vec![0x02];
    compressed.extend_from_slice(&b64url_decode(VAPID_KEY_G)[1..33]);
    for key in [
        "not a key!".to_string(),
        b64url_encode(&random_bytes(64)),
        b64url_encode(&compressed),
        b64url_encode(&off_curve),
    ] {
        let r = ua.register_reply(&new_channel_id(), Some(&key));
        assert_eq!(r["status"], 400, "register with key {key:?}: {r}");
    }
}

/// `GET /m/<id>` → the receipt's `state`.
fn receipt_state(location: &str) -> String {
    let r = http("GET", location, &[], None);
    assert_eq!(r.status, 200, "GET {location}: {} {:?}", r.status, r.text());
    r.json()["state"]
        .as_str()
        .unwrap_or_else(|| panic!("GET {location}: body has a string state: {}", r.text()))
        .to_string()
}

/// Poll `GET /m/<id>` until its state is `want` (deadline [`DEADLINE`]).
fn wait_state(location: &str, want: &str) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let last = receipt_state(location);
        if last == want {
            return;
        }
        if std::time::Instant::now() >= deadline {
            panic!("GET {location}: state {last:?}, expected {want:?} within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn push_receipts_follow_stored_delivered_acked() {
    let server = Server::start_default();
    let vapid = Vapid::new();
    let (ua, channel, endpoint) = ua_with_vapid_channel(&server, &vapid);
    let uaid = ua.uaid();
    ua.close();

    let auth = vapid.valid_header(&server);
    let r = push_with(
        &endpoint,
        &[
            ("TTL", "600"),
            ("Content-Encoding", "aes128gcm"),
            ("Authorization", &auth),
            ("Prefer", "respond-async"),
        ],
        Some(b"with receipt"),
    );
    assert_eq!(
        r.status,
        202,
        "Prefer: respond-async gets 202: {} {:?}",
        r.status,
        r.text()
    );
    let link = r
        .header("Link")
        .unwrap_or_else(|| panic!("202 has a Link header: {r:?}"));
    assert!(
        link.contains("urn:ietf:params:push:receipt"),
        "Link names the receipt relation: {link:?}"
    );
    let location = r
        .header("Location")
        .unwrap_or_else(|| panic!("202 has a Location header: {r:?}"))
        .to_string();
    assert!(
        location.starts_with(&format!("{}/m/", server.as_url())),
        "Location is <endpoint-url>/m/<id>: {location}"
    );

    // The UA is offline: stored.
    assert_eq!(receipt_state(&location), "stored");

    // The UA comes back and receives it: delivered (not yet acked).
    let mut ua = server.ua_resume(&uaid, true);
    let n = ua.recv_notification(DEADLINE);
    assert!(same_channel(&n["channelID"], &channel), "{n}");
    assert_eq!(notification_data(&n), b"with receipt");
    wait_state(&location, "delivered");

    // The UA acks it: acked.
    ua.ack_notification(&n);
    wait_state(&location, "acked");

    // A respond-async request that fails VAPID is still a 401, not a 202.
    let r = push_with(
        &endpoint,
        &[("TTL", "60"), ("Prefer", "respond-async")],
        None,
    );
    assert_vapid_refused(&r, "respond-async without VAPID");
}
