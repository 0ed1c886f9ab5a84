//! VAPID (RFC 8292) verification, both the `vapid t=,k=` form and the older
//! `WebPush <JWT>` + `Crypto-Key: p256ecdsa=` form.

use crate::{KeyHash, Millis};

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum VapidError {
    Malformed(&'static str),
    BadSignature,
    Expired,
    ExpiryTooFar,
    WrongAudience,
}

impl VapidError {
    pub fn reason(&self) -> String {
        format!("{self:?}")
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
pub fn verify(
    authorization: &str,
    crypto_key: Option<&str>,
    audience: &str,
    now_ms: Millis,
    max_expiry_ahead_s: u64,
) -> Result<VapidClaims, VapidError> {
    let _ = (authorization, crypto_key, audience, now_ms, max_expiry_ahead_s);
    unimplemented!("vapid helper")
}

/// Decodes a VAPID public key as UAs send it at register (base64url, padded
/// or not) into the 65-byte uncompressed P-256 point, checking it is on the curve.
pub fn decode_public_key(text: &str) -> Option<Vec<u8>> {
    let _ = text;
    unimplemented!("vapid helper")
}

pub fn key_hash(raw_public_key: &[u8]) -> KeyHash {
    let _ = raw_public_key;
    unimplemented!("vapid helper")
}
