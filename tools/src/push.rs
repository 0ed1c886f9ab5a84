//! `herald push ENDPOINT`: the first thing an operator tries after install.
//!
//! Sends a SimplePush version (`PUT version=N`), an empty Web Push message, or
//! — with `--data`, `--p256dh` and `--auth` — a Web Push message encrypted for
//! the subscription with `aes128gcm` (RFC 8188 / RFC 8291, see
//! [`crate::webpush_crypto`]). With `--vapid-key` the request carries a VAPID
//! (RFC 8292) `Authorization: vapid t=<JWT>, k=<public key>` header: an ES256
//! JWT whose `aud` is the endpoint's origin, `exp` 12 hours ahead and `sub`
//! the `--subject`. Prints the server's answer.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use clap::Args;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

/// How far ahead the VAPID JWT expires (RFC 8292 §2: at most 24 hours).
const VAPID_VALIDITY: Duration = Duration::from_secs(12 * 3600);

const B64URL: GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// Keys are pasted from many places: accept base64url or standard base64,
/// padded or not.
const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const B64STD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The pushEndpoint URL a UA received at register.
    pub endpoint: String,
    /// Send a SimplePush version (PUT version=N) instead of a Web Push message.
    #[arg(long, conflicts_with = "data")]
    pub version: Option<u64>,
    /// Text to encrypt for the subscription with aes128gcm (needs --p256dh and --auth).
    // Values may start with `-` (base64url has it): never read them as flags.
    #[arg(long, requires_all = ["p256dh", "auth"], allow_hyphen_values = true)]
    pub data: Option<String>,
    /// The subscription's P-256 public key (base64url, `keys.p256dh` of a PushSubscription).
    #[arg(long, requires = "data", allow_hyphen_values = true)]
    pub p256dh: Option<String>,
    /// The subscription's auth secret (base64url, `keys.auth` of a PushSubscription).
    #[arg(long, requires = "data", allow_hyphen_values = true)]
    pub auth: Option<String>,
    /// VAPID private key file to sign the request: PEM (SEC1 `EC PRIVATE KEY`
    /// or PKCS#8 `PRIVATE KEY`) or the raw 32-byte key in base64url.
    #[arg(long)]
    pub vapid_key: Option<std::path::PathBuf>,
    /// VAPID `sub` claim: a contact for the push service operator.
    #[arg(long, default_value = "mailto:admin@localhost")]
    pub subject: String,
    /// Time to live in seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl: u64,
    #[arg(long, allow_hyphen_values = true)]
    pub topic: Option<String>,
    /// very-low | low | normal | high
    #[arg(long)]
    pub urgency: Option<String>,
}

pub fn run(args: PushArgs) -> Result<(), String> {
    let authorization = match &args.vapid_key {
        Some(path) => {
            let key = load_vapid_key(path)?;
            let audience = origin(&args.endpoint)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| format!("system clock before 1970: {e}"))?;
            Some(vapid_authorization(
                &key,
                &audience,
                (now + VAPID_VALIDITY).as_secs(),
                &args.subject,
            ))
        }
        None => None,
    };
    let body = match (&args.data, &args.p256dh, &args.auth) {
        (Some(data), Some(p256dh), Some(auth)) => Some(encrypt(data.as_bytes(), p256dh, auth)?),
        _ => None,
    };

    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .redirects(0)
        .build();
    let result = match args.version {
        Some(version) => {
            let mut request = agent
                .put(&args.endpoint)
                .set("Content-Type", "application/x-www-form-urlencoded");
            if let Some(value) = &authorization {
                request = request.set("Authorization", value);
            }
            request.send_string(&format!("version={version}"))
        }
        None => {
            let mut request = agent.post(&args.endpoint).set("TTL", &args.ttl.to_string());
            if let Some(topic) = &args.topic {
                request = request.set("Topic", topic);
            }
            if let Some(urgency) = &args.urgency {
                request = request.set("Urgency", urgency);
            }
            if let Some(value) = &authorization {
                request = request.set("Authorization", value);
            }
            match &body {
                Some(body) => request
                    .set("Content-Encoding", "aes128gcm")
                    .set("Content-Type", "application/octet-stream")
                    .send_bytes(body),
                None => request.send_bytes(&[]),
            }
        }
    };
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Err(format!("request to {} failed: {error}", args.endpoint)),
    };
    let status = response.status();
    println!("{} {}", status, response.status_text());
    for name in ["location", "ttl", "link", "retry-after"] {
        if let Some(value) = response.header(name) {
            println!("{name}: {value}");
        }
    }
    let body = response.into_string().unwrap_or_default();
    if !body.is_empty() {
        println!("{body}");
    }
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the server refused the message ({status})"))
    }
}

fn decode_b64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    B64URL_LENIENT
        .decode(text)
        .or_else(|_| B64STD_LENIENT.decode(text))
        .map_err(|e| format!("{what} is not base64url: {e}"))
}

/// `aes128gcm` (RFC 8291) encryption of `data` for a subscription.
fn encrypt(data: &[u8], p256dh: &str, auth: &str) -> Result<Vec<u8>, String> {
    let public_key = decode_b64("--p256dh", p256dh)?;
    if public_key.len() != 65 || public_key[0] != 0x04 {
        return Err(format!(
            "--p256dh must be an uncompressed P-256 point (65 bytes starting 0x04), got {} bytes",
            public_key.len()
        ));
    }
    if p256::PublicKey::from_sec1_bytes(&public_key).is_err() {
        return Err("--p256dh is not a point on the P-256 curve".to_owned());
    }
    let auth = decode_b64("--auth", auth)?;
    if auth.len() != 16 {
        return Err(format!(
            "--auth must be a 16-byte secret, got {} bytes",
            auth.len()
        ));
    }
    crate::webpush_crypto::encrypt(data, &public_key, &auth)
        .map_err(|e| format!("encryption failed: {e}"))
}

/// Reads a VAPID private key: PEM (SEC1 or PKCS#8) or raw base64url.
fn load_vapid_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --vapid-key {}: {e}", path.display()))?;
    parse_vapid_key(&text).map_err(|e| format!("--vapid-key {}: {e}", path.display()))
}

fn parse_vapid_key(text: &str) -> Result<SigningKey, String> {
    let text = text.trim();
    if text.contains("-----BEGIN") {
        if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            let key = p256::SecretKey::from_sec1_pem(text)
                .map_err(|e| format!("not a P-256 SEC1 PEM private key: {e}"))?;
            return Ok(SigningKey::from(key));
        }
        if text.contains("-----BEGIN PRIVATE KEY-----") {
            use p256::pkcs8::DecodePrivateKey;
            let key = p256::SecretKey::from_pkcs8_pem(text)
                .map_err(|e| format!("not a P-256 PKCS#8 PEM private key: {e}"))?;
            return Ok(SigningKey::from(key));
        }
        return Err(
            "PEM file holds no `EC PRIVATE KEY` or `PRIVATE KEY` block (a public key is not enough)"
                .to_owned(),
        );
    }
    let raw = decode_b64("the key", text)?;
    if raw.len() != 32 {
        return Err(format!(
            "a raw VAPID private key is 32 bytes, this one is {} bytes",
            raw.len()
        ));
    }
    SigningKey::from_slice(&raw).map_err(|e| format!("not a valid P-256 private key: {e}"))
}

/// `scheme://host[:port]` of a URL: the VAPID audience (RFC 8292 §2).
fn origin(url: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("endpoint {url:?} is not an absolute URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Drop any userinfo; it is not part of the origin.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.is_empty() {
        return Err(format!("endpoint {url:?} has no host"));
    }
    let scheme = scheme.to_ascii_lowercase();
    let mut authority = authority.to_ascii_lowercase();
    // The origin omits the scheme's default port.
    for (s, default) in [("http", ":80"), ("https", ":443")] {
        if scheme == s && authority.ends_with(default) && !authority.ends_with("]") {
            authority.truncate(authority.len() - default.len());
        }
    }
    Ok(format!("{scheme}://{authority}"))
}

/// `vapid t=<JWT>, k=<public key>` for the given audience and expiry (Unix s).
fn vapid_authorization(key: &SigningKey, audience: &str, exp: u64, subject: &str) -> String {
    let header = B64URL.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
    let claims = serde_json::json!({"aud": audience, "exp": exp, "sub": subject});
    let claims = B64URL.encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{claims}");
    let signature: Signature = key.sign(signing_input.as_bytes());
    let jwt = format!("{signing_input}.{}", B64URL.encode(signature.to_bytes()));
    let public_key = key.verifying_key().to_encoded_point(false);
    format!("vapid t={jwt}, k={}", B64URL.encode(public_key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    #[test]
    fn origin_of_endpoints() {
        assert_eq!(
            origin("http://127.0.0.1:8081/wpush/v2/abc").unwrap(),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            origin("HTTPS://Push.Example.com:443/x?y").unwrap(),
            "https://push.example.com"
        );
        assert_eq!(origin("https://h").unwrap(), "https://h");
        assert!(origin("nope").is_err());
    }

    #[test]
    fn raw_and_pem_keys_parse_to_the_same_key() {
        let raw = [7u8; 32];
        let from_raw = parse_vapid_key(&B64URL.encode(raw)).unwrap();
        let padded = base64::engine::general_purpose::URL_SAFE.encode(raw);
        assert_eq!(parse_vapid_key(&padded).unwrap(), from_raw);
        let secret = p256::SecretKey::from_slice(&raw).unwrap();
        let sec1 = secret.to_sec1_pem(Default::default()).unwrap();
        assert_eq!(parse_vapid_key(&sec1).unwrap(), from_raw);
        use p256::pkcs8::EncodePrivateKey;
        let pkcs8 = secret.to_pkcs8_pem(Default::default()).unwrap();
        assert_eq!(parse_vapid_key(&pkcs8).unwrap(), from_raw);
        assert!(parse_vapid_key("AAAA").is_err());
        assert!(
            parse_vapid_key("-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----").is_err()
        );
    }

    #[test]
    fn jwt_verifies_and_carries_the_claims() {
        let key = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let header = vapid_authorization(&key, "http://h:1", 1234, "mailto:a@b");
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (jwt, k) = rest.split_once(", k=").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "http://h:1");
        assert_eq!(claims["exp"], 1234);
        assert_eq!(claims["sub"], "mailto:a@b");
        let vk = VerifyingKey::from_sec1_bytes(&B64URL.decode(k).unwrap()).unwrap();
        let sig = Signature::from_slice(&B64URL.decode(parts[2]).unwrap()).unwrap();
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn bad_subscription_keys_are_refused_clearly() {
        assert!(encrypt(b"x", "AAAA", "AAAAAAAAAAAAAAAAAAAAAA").is_err());
        let err = encrypt(b"x", crate_test_point(), "AAAA").unwrap_err();
        assert!(err.contains("--auth"), "{err}");
    }

    fn crate_test_point() -> &'static str {
        // The P-256 generator, uncompressed.
        "BGsX0fLhLEJH-Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"
    }
}
