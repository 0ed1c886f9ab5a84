//! VAPID (RFC 8292) verification, both the `vapid t=,k=` form and the older
//! `WebPush <JWT>` + `Crypto-Key: p256ecdsa=` form.
//!
//! Everything here is a pure function of its inputs (the time is passed in) and
//! every malformed input is an `Err`, never a panic: these headers come straight
//! from the network.

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{KeyHash, Millis};

/// base64url that takes input with or without `=` padding: Firefox sends keys
/// padded, most AS libraries send them (and JWT parts) unpadded.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Real VAPID JWTs are a few hundred bytes; refusing anything much longer
/// bounds the decoding and JSON work an unauthenticated sender can cause.
const MAX_JWT_LEN: usize = 4096;
/// A raw uncompressed P-256 point is 65 bytes, 87 base64 characters (88 padded).
const MAX_KEY_TEXT_LEN: usize = 128;

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum VapidError {
    Malformed(&'static str),
    BadSignature,
    Expired,
    ExpiryTooFar,
    WrongAudience,
}

impl VapidError {
    /// A short sentence for the JSON error body sent to the AS.
    pub fn reason(&self) -> String {
        match self {
            VapidError::Malformed(what) => format!("Invalid VAPID authorization: {what}."),
            VapidError::BadSignature => {
                "VAPID signature does not verify with the given key.".to_string()
            }
            VapidError::Expired => "VAPID token has expired (exp is in the past).".to_string(),
            VapidError::ExpiryTooFar => {
                "VAPID token exp is too far in the future (at most 24 hours ahead).".to_string()
            }
            VapidError::WrongAudience => {
                "VAPID aud does not match the push service origin.".to_string()
            }
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VapidClaims {
    /// SHA-256 of the raw public key the JWT was verified with.
    pub key_hash: KeyHash,
    pub subject: Option<String>,
}

/// Verifies an `Authorization` header value (and, for the draft form, the
/// `Crypto-Key` header) for a request to an endpoint whose origin is
/// `audience` (scheme://host[:port]).
///
/// Accepted forms:
/// - `vapid t=<JWT>, k=<key>` (RFC 8292; parameters in any order);
/// - `WebPush <JWT>` (or the older `Bearer <JWT>`) with the key in
///   `Crypto-Key: ...;p256ecdsa=<key>` (draft form, still sent with `aesgcm`).
///
/// The signature is checked before the claims, so a forged token is always
/// `BadSignature`, whatever its `aud`/`exp` say.
pub fn verify(
    authorization: &str,
    crypto_key: Option<&str>,
    audience: &str,
    now_ms: Millis,
    max_expiry_ahead_s: u64,
) -> Result<VapidClaims, VapidError> {
    let (jwt, key_text) = split_authorization(authorization, crypto_key)?;
    if jwt.len() > MAX_JWT_LEN {
        return Err(VapidError::Malformed("the JWT is too long"));
    }
    let (raw_key, verifying_key) = decode_key(key_text).ok_or(VapidError::Malformed(
        "the public key is not an uncompressed P-256 point",
    ))?;

    let mut parts = jwt.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VapidError::Malformed(
            "the JWT must have three dot-separated parts",
        ));
    };

    let header = decode_json_object(header_b64)
        .ok_or(VapidError::Malformed("the JWT header is not a JSON object"))?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(VapidError::Malformed("the JWT alg must be ES256"));
    }

    let signature_bytes = B64_LENIENT
        .decode(signature_b64)
        .map_err(|_| VapidError::Malformed("the JWT signature is not base64url"))?;
    if signature_bytes.len() != 64 {
        return Err(VapidError::Malformed(
            "the JWT signature must be 64 bytes (r and s)",
        ));
    }
    // from_slice refuses r or s of zero or not below the group order: such a
    // signature cannot be valid for any message.
    let signature =
        Signature::from_slice(&signature_bytes).map_err(|_| VapidError::BadSignature)?;
    // The signed input is the ASCII text `header.payload` exactly as sent.
    let signed = &jwt[..header_b64.len() + 1 + payload_b64.len()];
    verifying_key
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| VapidError::BadSignature)?;

    let payload = decode_json_object(payload_b64).ok_or(VapidError::Malformed(
        "the JWT payload is not a JSON object",
    ))?;
    let aud = payload
        .get("aud")
        .and_then(Value::as_str)
        .ok_or(VapidError::Malformed("the JWT has no aud claim"))?;
    if !same_origin(aud, audience) {
        return Err(VapidError::WrongAudience);
    }
    // JWT NumericDate: seconds, possibly fractional.
    let exp_s = payload
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(VapidError::Malformed("the JWT has no numeric exp claim"))?;
    if !exp_s.is_finite() {
        return Err(VapidError::Malformed("the JWT has no numeric exp claim"));
    }
    let exp_ms = exp_s * 1000.0;
    if exp_ms <= now_ms as f64 {
        return Err(VapidError::Expired);
    }
    let limit_ms = now_ms.saturating_add(max_expiry_ahead_s.saturating_mul(1000));
    if exp_ms > limit_ms as f64 {
        return Err(VapidError::ExpiryTooFar);
    }
    let subject = payload
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(VapidClaims {
        key_hash: key_hash(&raw_key),
        subject,
    })
}

/// Decodes a VAPID public key as UAs send it at register (base64url, padded
/// or not) into the 65-byte uncompressed P-256 point, checking it is on the curve.
pub fn decode_public_key(text: &str) -> Option<Vec<u8>> {
    decode_key(text).map(|(raw, _)| raw)
}

/// [`decode_public_key`] that also keeps the parsed key, so `verify` does not
/// parse the point twice.
fn decode_key(text: &str) -> Option<(Vec<u8>, VerifyingKey)> {
    let text = text.trim();
    if text.len() > MAX_KEY_TEXT_LEN {
        return None;
    }
    let raw = B64_LENIENT.decode(text).ok()?;
    // Only the uncompressed form: RFC 8292 §3.2 says so, and the key hash must
    // be of one canonical encoding so that equal keys compare equal.
    if raw.len() != 65 || raw[0] != 0x04 {
        return None;
    }
    // Checks the point is on the curve (and not the identity).
    let key = VerifyingKey::from_sec1_bytes(&raw).ok()?;
    Some((raw, key))
}

pub fn key_hash(raw_public_key: &[u8]) -> KeyHash {
    Sha256::digest(raw_public_key).into()
}

/// Splits the headers into (JWT, key text), whichever form was used.
fn split_authorization<'a>(
    authorization: &'a str,
    crypto_key: Option<&'a str>,
) -> Result<(&'a str, &'a str), VapidError> {
    let authorization = authorization.trim();
    let (scheme, rest) = match authorization.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((scheme, rest)) => (scheme, rest.trim()),
        None => (authorization, ""),
    };
    if scheme.eq_ignore_ascii_case("vapid") {
        let mut jwt = None;
        let mut key = None;
        for param in rest.split(',') {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            // Split at the first `=` only: a padded key ends in `=`.
            let Some((name, value)) = param.split_once('=') else {
                return Err(VapidError::Malformed("vapid parameters must be name=value"));
            };
            let value = unquote(value.trim());
            match name.trim() {
                n if n.eq_ignore_ascii_case("t") => jwt = Some(value),
                n if n.eq_ignore_ascii_case("k") => key = Some(value),
                // Unknown parameters are ignored, for forward compatibility.
                _ => {}
            }
        }
        let jwt = jwt.ok_or(VapidError::Malformed(
            "the vapid scheme needs a t= parameter",
        ))?;
        let key = key.ok_or(VapidError::Malformed(
            "the vapid scheme needs a k= parameter",
        ))?;
        Ok((jwt, key))
    } else if scheme.eq_ignore_ascii_case("webpush") || scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(VapidError::Malformed("no JWT after the WebPush scheme"));
        }
        let crypto_key = crypto_key.ok_or(VapidError::Malformed(
            "the WebPush scheme needs a Crypto-Key header",
        ))?;
        let key = crypto_key
            .split([';', ','])
            .filter_map(|item| item.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("p256ecdsa"))
            .map(|(_, value)| unquote(value.trim()))
            .ok_or(VapidError::Malformed("Crypto-Key has no p256ecdsa= item"))?;
        Ok((rest, key))
    } else {
        Err(VapidError::Malformed(
            "the Authorization scheme must be vapid or WebPush",
        ))
    }
}

/// Drops one pair of surrounding double quotes (auth-param values may be
/// quoted strings; base64url never contains `"`).
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

fn decode_json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = B64_LENIENT.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// `aud` must name the endpoint's origin. Scheme and host are case-insensitive
/// and some libraries append a `/`, which names the same origin.
fn same_origin(aud: &str, audience: &str) -> bool {
    let trim = |s: &str| s.strip_suffix('/').unwrap_or(s).to_owned();
    let (aud, audience) = (trim(aud), trim(audience));
    !aud.is_empty() && aud.eq_ignore_ascii_case(&audience)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{URL_SAFE as B64_PADDED, URL_SAFE_NO_PAD};
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    const AUD: &str = "https://push.example.net";
    const NOW_MS: Millis = 1_700_000_000_123;
    const DAY_S: u64 = 24 * 3600;

    fn signing_key(seed: u64) -> SigningKey {
        SigningKey::random(&mut StdRng::seed_from_u64(seed))
    }

    fn raw_public(key: &SigningKey) -> Vec<u8> {
        VerifyingKey::from(key)
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    fn key_text(key: &SigningKey) -> String {
        URL_SAFE_NO_PAD.encode(raw_public(key))
    }

    /// Builds `header.payload.signature` signed by `key`.
    fn jwt(key: &SigningKey, header: &Value, payload: &Value) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature: Signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    fn es256() -> Value {
        json!({"typ": "JWT", "alg": "ES256"})
    }

    fn claims(exp_s: u64) -> Value {
        json!({"aud": AUD, "exp": exp_s, "sub": "mailto:ops@example.com"})
    }

    fn good_exp() -> u64 {
        NOW_MS / 1000 + 12 * 3600
    }

    fn check(authorization: &str, crypto_key: Option<&str>) -> Result<VapidClaims, VapidError> {
        verify(authorization, crypto_key, AUD, NOW_MS, DAY_S)
    }

    /// The example of RFC 8292 §2.4: a signature made by another
    /// implementation, so this checks the signed-input and r‖s conventions.
    #[test]
    fn rfc8292_example_verifies() {
        let t = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5uZXQiLCJleHAiOjE0NTM1MjM3NjgsInN1YiI6Im1haWx0bzpwdXNoQGV4YW1wbGUuY29tIn0.i3CYb7t4xfxCDquptFOepC9GAu_HLGkMlMuCGSK2rpiUfnK9ojFwDXb1JrErtmysazNjjvW2L9OkSSHzvoD1oA";
        let k = "BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs";
        let now_ms = 1_453_523_768_000 - 3_600_000;
        let raw = decode_public_key(k).expect("the RFC's key is a valid point");
        let expected = VapidClaims {
            key_hash: key_hash(&raw),
            subject: Some("mailto:push@example.com".into()),
        };
        let rfc = verify(&format!("vapid t={t}, k={k}"), None, AUD, now_ms, DAY_S);
        assert_eq!(rfc, Ok(expected.clone()));
        let draft = verify(
            &format!("WebPush {t}"),
            Some(&format!("p256ecdsa={k}")),
            AUD,
            now_ms,
            DAY_S,
        );
        assert_eq!(draft, Ok(expected));
        let late = verify(
            &format!("vapid t={t}, k={k}"),
            None,
            AUD,
            1_453_523_768_000,
            DAY_S,
        );
        assert_eq!(late, Err(VapidError::Expired));
    }

    #[test]
    fn vapid_scheme_passes_in_any_order_and_spacing() {
        let key = signing_key(1);
        let token = jwt(&key, &es256(), &claims(good_exp()));
        let k = key_text(&key);
        let expected = VapidClaims {
            key_hash: key_hash(&raw_public(&key)),
            subject: Some("mailto:ops@example.com".into()),
        };
        for header in [
            format!("vapid t={token}, k={k}"),
            format!("vapid t={token},k={k}"),
            format!("VAPID k={k} , t={token}"),
            format!("Vapid  t=\"{token}\", k=\"{k}\""),
            format!("vapid t={token}, k={}", B64_PADDED.encode(raw_public(&key))),
        ] {
            assert_eq!(check(&header, None), Ok(expected.clone()), "{header}");
        }
    }

    #[test]
    fn webpush_scheme_takes_the_key_from_crypto_key() {
        let key = signing_key(2);
        let token = jwt(
            &key,
            &json!({"alg": "ES256"}),
            &json!({"aud": AUD, "exp": good_exp()}),
        );
        let k = key_text(&key);
        let padded = B64_PADDED.encode(raw_public(&key));
        for crypto_key in [
            format!("p256ecdsa={k}"),
            format!("dh=BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU;p256ecdsa={k}"),
            format!("dh=abc; p256ecdsa={padded}"),
            format!("keyid=p256dh,dh=abc , P256ECDSA=\"{k}\""),
        ] {
            let result = check(&format!("WebPush {token}"), Some(&crypto_key));
            assert_eq!(result, Ok(VapidClaims { key_hash: key_hash(&raw_public(&key)), subject: None }), "{crypto_key}");
        }
        assert!(check(&format!("webpush {token}"), Some(&format!("p256ecdsa={k}"))).is_ok());
        assert_eq!(
            check(&format!("WebPush {token}"), None),
            Err(VapidError::Malformed(
                "the WebPush scheme needs a Crypto-Key header"
            ))
        );
        assert!(matches!(
            check(&format!("WebPush {token}"), Some("dh=abc")),
            Err(VapidError::Malformed(_))
        ));
    }

    #[test]
    fn expiry_is_checked_both_ways() {
        let key = signing_key(3);
        let k = key_text(&key);
        let run = |exp: Value| {
            let token = jwt(&key, &es256(), &json!({"aud": AUD, "exp": exp}));
            check(&format!("vapid t={token}, k={k}"), None)
        };
        let now_s = NOW_MS / 1000;
        assert_eq!(run(json!(now_s - 1)), Err(VapidError::Expired));
        assert_eq!(run(json!(now_s)), Err(VapidError::Expired));
        assert_eq!(run(json!(0)), Err(VapidError::Expired));
        assert_eq!(run(json!(-5)), Err(VapidError::Expired));
        assert!(run(json!(now_s + 1)).is_ok());
        assert!(run(json!(now_s as f64 + 0.5)).is_ok());
        // now is 0.123 s past now_s: now_s + 24 h is within the limit, one
        // second more is not.
        assert!(run(json!(now_s + DAY_S)).is_ok());
        assert_eq!(run(json!(now_s + DAY_S + 1)), Err(VapidError::ExpiryTooFar));
        assert_eq!(run(json!(u64::MAX)), Err(VapidError::ExpiryTooFar));
        assert_eq!(run(json!(1e300)), Err(VapidError::ExpiryTooFar));
        assert!(matches!(
            run(json!("1700000000")),
            Err(VapidError::Malformed(_))
        ));
        assert!(matches!(run(Value::Null), Err(VapidError::Malformed(_))));
    }

    #[test]
    fn audience_must_be_the_origin() {
        let key = signing_key(4);
        let k = key_text(&key);
        let run = |aud: Value| {
            let token = jwt(&key, &es256(), &json!({"aud": aud, "exp": good_exp()}));
            check(&format!("vapid t={token}, k={k}"), None)
        };
        assert!(run(json!("https://push.example.net/")).is_ok());
        assert!(run(json!("HTTPS://Push.Example.NET")).is_ok());
        assert_eq!(
            run(json!("https://push.example.org")),
            Err(VapidError::WrongAudience)
        );
        assert_eq!(
            run(json!("http://push.example.net")),
            Err(VapidError::WrongAudience)
        );
        assert_eq!(
            run(json!("https://push.example.net:8443")),
            Err(VapidError::WrongAudience)
        );
        assert_eq!(
            run(json!("https://push.example.net/wpush")),
            Err(VapidError::WrongAudience)
        );
        assert_eq!(run(json!("")), Err(VapidError::WrongAudience));
        assert!(matches!(
            run(json!(["https://push.example.net"])),
            Err(VapidError::Malformed(_))
        ));
        let token = jwt(&key, &es256(), &json!({"exp": good_exp()}));
        assert!(matches!(
            check(&format!("vapid t={token}, k={k}"), None),
            Err(VapidError::Malformed(_))
        ));
    }

    #[test]
    fn signature_by_another_key_fails() {
        let signer = signing_key(5);
        let other = signing_key(6);
        let token = jwt(&signer, &es256(), &claims(good_exp()));
        assert_eq!(
            check(&format!("vapid t={token}, k={}", key_text(&other)), None),
            Err(VapidError::BadSignature)
        );
        // The key mismatch against the registered key is the caller's check:
        // the hashes it compares differ.
        assert_ne!(
            key_hash(&raw_public(&signer)),
            key_hash(&raw_public(&other))
        );
    }

    #[test]
    fn tampered_tokens_fail() {
        let key = signing_key(7);
        let k = key_text(&key);
        let token = jwt(&key, &es256(), &claims(good_exp()));
        let parts: Vec<&str> = token.split('.').collect();
        // A payload with a different aud, signature kept: BadSignature, not
        // WrongAudience (claims are only read once the signature holds).
        let forged = URL_SAFE_NO_PAD
            .encode(json!({"aud": "https://evil.example", "exp": good_exp()}).to_string());
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(
            check(&format!("vapid t={tampered}, k={k}"), None),
            Err(VapidError::BadSignature)
        );
        // Any single changed character of the signed input or the signature.
        for at in [0, parts[0].len() + 3, token.len() - 5] {
            let mut chars: Vec<char> = token.chars().collect();
            chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
            let altered: String = chars.into_iter().collect();
            assert!(
                check(&format!("vapid t={altered}, k={k}"), None).is_err(),
                "char {at}"
            );
        }
        // Signature of the wrong length or with r = s = 0.
        let short = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            URL_SAFE_NO_PAD.encode([1u8; 63])
        );
        assert!(matches!(
            check(&format!("vapid t={short}, k={k}"), None),
            Err(VapidError::Malformed(_))
        ));
        let zero = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            URL_SAFE_NO_PAD.encode([0u8; 64])
        );
        assert_eq!(
            check(&format!("vapid t={zero}, k={k}"), None),
            Err(VapidError::BadSignature)
        );
    }

    #[test]
    fn alg_must_be_es256() {
        let key = signing_key(8);
        let k = key_text(&key);
        for header in [
            json!({"alg": "HS256"}),
            json!({"alg": "none"}),
            json!({"typ": "JWT"}),
            json!(["ES256"]),
        ] {
            let token = jwt(&key, &header, &claims(good_exp()));
            assert_eq!(
                check(&format!("vapid t={token}, k={k}"), None),
                Err(VapidError::Malformed(if header.is_object() {
                    "the JWT alg must be ES256"
                } else {
                    "the JWT header is not a JSON object"
                })),
                "{header}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_errors() {
        let key = signing_key(9);
        let k = key_text(&key);
        let token = jwt(&key, &es256(), &claims(good_exp()));
        for header in [
            String::new(),
            "vapid".to_string(),
            format!("vapid t={token}"),
            format!("vapid k={k}"),
            format!("vapid t={token}, k"),
            format!("Basic {token}"),
            format!("vapid t={token}.x, k={k}"),
            format!("vapid t=a.b, k={k}"),
            format!("vapid t={token}, k={}", &k[1..]),
            "WebPush".to_string(),
        ] {
            assert!(
                matches!(
                    check(&header, Some(&format!("p256ecdsa={k}"))),
                    Err(VapidError::Malformed(_))
                ),
                "{header}"
            );
        }
    }

    #[test]
    fn decode_public_key_forms() {
        let key = signing_key(10);
        let raw = raw_public(&key);
        assert_eq!(
            decode_public_key(&URL_SAFE_NO_PAD.encode(&raw)),
            Some(raw.clone())
        );
        assert_eq!(
            decode_public_key(&B64_PADDED.encode(&raw)),
            Some(raw.clone())
        );
        // Compressed form: a valid point, but not the form RFC 8292 specifies.
        let compressed = VerifyingKey::from(&key).to_encoded_point(true);
        assert_eq!(
            decode_public_key(&URL_SAFE_NO_PAD.encode(compressed.as_bytes())),
            None
        );
        // Off the curve: change y.
        let mut off = raw.clone();
        off[64] ^= 1;
        assert_eq!(decode_public_key(&URL_SAFE_NO_PAD.encode(&off)), None);
        let mut wrong_prefix = raw.clone();
        wrong_prefix[0] = 0x05;
        assert_eq!(
            decode_public_key(&URL_SAFE_NO_PAD.encode(&wrong_prefix)),
            None
        );
        assert_eq!(decode_public_key(&URL_SAFE_NO_PAD.encode(&raw[..64])), None);
        assert_eq!(decode_public_key(""), None);
        assert_eq!(decode_public_key("not base64!"), None);
        // Standard-alphabet base64 is not what UAs send.
        let standard = URL_SAFE_NO_PAD
            .encode(&raw)
            .replace('-', "+")
            .replace('_', "/");
        if standard != URL_SAFE_NO_PAD.encode(&raw) {
            assert_eq!(decode_public_key(&standard), None);
        }
    }

    #[test]
    fn key_hash_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got: String = key_hash(b"abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn reasons_are_sentences() {
        for error in [
            VapidError::Malformed("the JWT alg must be ES256"),
            VapidError::BadSignature,
            VapidError::Expired,
            VapidError::ExpiryTooFar,
            VapidError::WrongAudience,
        ] {
            let reason = error.reason();
            assert!(
                reason.ends_with('.') && reason.contains("VAPID"),
                "{reason}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let key = signing_key(11);
        let k = key_text(&key);
        let token = jwt(&key, &es256(), &claims(good_exp()));
        let mut rng = StdRng::seed_from_u64(12);
        let alphabet: Vec<char> = "vapidWebPusht=k=,;. \"ABCxyz019-_+/=\u{e9}\u{20ac}\0p256ecdsa"
            .chars()
            .collect();
        for round in 0..500 {
            let len = rng.gen_range(0..120);
            let noise: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let authorization = match round % 4 {
                0 => noise.clone(),
                1 => format!("vapid {noise}"),
                2 => format!("vapid t={token}{noise}, k={k}"),
                _ => format!("WebPush {noise}"),
            };
            let _ = verify(&authorization, Some(&noise), AUD, NOW_MS, DAY_S);
            let _ = verify(&authorization, None, &noise, 0, u64::MAX);
            let _ = decode_public_key(&noise);
        }
        // Huge inputs are refused cheaply.
        let huge = "A".repeat(1 << 20);
        assert!(verify(&format!("vapid t={huge}, k={k}"), None, AUD, NOW_MS, DAY_S).is_err());
        assert_eq!(decode_public_key(&huge), None);
    }
}
