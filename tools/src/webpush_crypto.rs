//! Web Push message encryption, sender side: RFC 8291 key derivation with the
//! RFC 8188 `aes128gcm` content coding, in pure Rust (`p256` ECDH, `hkdf`,
//! `aes-gcm`), for `herald push --data`.
//!
//! The body is one record (RFC 8291 §4 allows no more):
//!
//! ```text
//! salt (16) | rs (4, big endian) | idlen (1) = 65 | sender public key (65) | record
//! record = AES-128-GCM(CEK, NONCE, plaintext | 0x02)
//! ```
//!
//! Derivation (RFC 8291 §3.3, §3.4; RFC 8188 §2.2, §2.3):
//!
//! ```text
//! ecdh_secret = ECDH(sender private, UA public)           (x coordinate)
//! IKM   = HKDF(salt = auth, ikm = ecdh_secret,
//!              info = "WebPush: info" 0x00 | UA public | sender public, 32)
//! CEK   = HKDF(salt = salt, ikm = IKM, info = "Content-Encoding: aes128gcm" 0x00, 16)
//! NONCE = HKDF(salt = salt, ikm = IKM, info = "Content-Encoding: nonce" 0x00, 12)
//! ```

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use sha2::Sha256;

/// The record size written in the header (the value of RFC 8291's example and
/// of the common sender libraries).
pub const RECORD_SIZE: u32 = 4096;
/// Length of the `aes128gcm` header with a P-256 key as key id.
pub const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// The largest plaintext that fits the one record: `rs` minus the tag and the
/// padding delimiter.
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - TAG_LEN - 1;

/// Encrypts `plaintext` for a subscription (`ua_public`: the 65-byte
/// uncompressed `p256dh` point, `auth`: the 16-byte auth secret) with a fresh
/// sender key pair and salt. Returns the `aes128gcm` body.
pub fn encrypt(plaintext: &[u8], ua_public: &[u8], auth: &[u8]) -> Result<Vec<u8>, String> {
    let mut rng = rand::rngs::OsRng;
    let sender = SecretKey::random(&mut rng);
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    encrypt_with(plaintext, ua_public, auth, &sender, &salt)
}

/// [`encrypt`] with a given sender key and salt (deterministic; for tests
/// against RFC 8291's example).
pub fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8],
    sender: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, String> {
    if auth.len() != 16 {
        return Err(format!(
            "the auth secret must be 16 bytes, got {}",
            auth.len()
        ));
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(format!(
            "the message is {} bytes; one aes128gcm record of {RECORD_SIZE} bytes holds at most {MAX_PLAINTEXT}",
            plaintext.len()
        ));
    }
    let ua_key = PublicKey::from_sec1_bytes(ua_public)
        .map_err(|_| "the subscription key is not a point on P-256".to_owned())?;
    let ua_point = ua_key.to_encoded_point(false);
    let sender_point = sender.public_key().to_encoded_point(false);

    let shared = p256::ecdh::diffie_hellman(sender.to_nonzero_scalar(), ua_key.as_affine());

    // RFC 8291 §3.4: IKM from the ECDH secret, keyed by the auth secret.
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_point.as_bytes());
    key_info.extend_from_slice(sender_point.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes().as_slice())
        .expand(&key_info, &mut ikm)
        .map_err(|e| format!("HKDF: {e}"))?;

    // RFC 8188 §2.2, §2.3: content encryption key and nonce.
    let hk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|e| format!("HKDF: {e}"))?;
    let mut nonce = [0u8; 12];
    hk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|e| format!("HKDF: {e}"))?;

    // One record, sequence number 0 (so the nonce is used as is), ended by
    // the last-record delimiter 0x02 and no further padding.
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(0x02);
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|e| format!("AES-GCM key: {e}"))?;
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), record.as_slice())
        .map_err(|e| format!("AES-GCM: {e}"))?;

    let mut body = Vec::with_capacity(HEADER_LEN + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(sender_point.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap()
    }

    // RFC 8291 §5 / Appendix A.
    const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    #[test]
    fn reproduces_the_rfc_8291_example_byte_for_byte() {
        let sender = SecretKey::from_slice(&b64(AS_PRIVATE)).unwrap();
        assert_eq!(
            sender.public_key().to_encoded_point(false).as_bytes(),
            b64(AS_PUBLIC).as_slice()
        );
        let salt: [u8; 16] = b64(SALT).try_into().unwrap();
        let body = encrypt_with(
            PLAINTEXT.as_bytes(),
            &b64(UA_PUBLIC),
            &b64(AUTH),
            &sender,
            &salt,
        )
        .unwrap();
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&body),
            BODY
        );
    }

    #[test]
    fn fresh_key_and_salt_per_message() {
        let a = encrypt(b"hi", &b64(UA_PUBLIC), &b64(AUTH)).unwrap();
        let b = encrypt(b"hi", &b64(UA_PUBLIC), &b64(AUTH)).unwrap();
        assert_eq!(a.len(), HEADER_LEN + 2 + 1 + TAG_LEN);
        assert_eq!(&a[16..21], &[0, 0, 0x10, 0, 65]);
        assert_eq!(a[21], 0x04);
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..HEADER_LEN], b[21..HEADER_LEN], "sender key");
    }

    #[test]
    fn refuses_bad_keys_and_oversized_messages() {
        // Not on the curve: the RFC's UA key with a flipped bit in y.
        let mut bad = b64(UA_PUBLIC);
        bad[64] ^= 1;
        assert!(encrypt(b"x", &bad, &b64(AUTH)).is_err());
        assert!(encrypt(b"x", &b64(UA_PUBLIC), &[0u8; 15]).is_err());
        let max = vec![b'a'; MAX_PLAINTEXT];
        let body = encrypt(&max, &b64(UA_PUBLIC), &b64(AUTH)).unwrap();
        assert_eq!(body.len(), HEADER_LEN + RECORD_SIZE as usize);
        assert!(encrypt(&[b'a'; MAX_PLAINTEXT + 1], &b64(UA_PUBLIC), &b64(AUTH)).is_err());
    }
}
