//! The UA's side of Web Push message encryption: RFC 8291 key derivation and
//! RFC 8188 `aes128gcm` decryption, in pure Rust (`p256` ECDH, `hkdf`,
//! `aes-gcm`), so that tests can read what `herald push --data` (or any
//! sender) encrypted for a subscription.
//!
//! The key derivation deliberately repeats what `tools/src/webpush_crypto.rs`
//! does on the sender's side instead of sharing its code: a shared mistake
//! would then encrypt and decrypt consistently and pass. Both are checked
//! against the RFC 8291 example, and Firefox decrypts what `herald push` sends.
//!
//! ```text
//! body   = salt (16) | rs (4, big endian) | idlen (1) | keyid (idlen) | records
//! keyid  = the sender's ephemeral P-256 public key (65 bytes, uncompressed)
//! IKM    = HKDF(salt = auth, ikm = ECDH(UA private, sender public),
//!               info = "WebPush: info" 0x00 | UA public | sender public, 32)
//! CEK    = HKDF(salt = salt, ikm = IKM, info = "Content-Encoding: aes128gcm" 0x00, 16)
//! NONCE  = HKDF(salt = salt, ikm = IKM, info = "Content-Encoding: nonce" 0x00, 12)
//! record i (rs bytes, the last one shorter) = AES-128-GCM(CEK, NONCE xor i,
//!          data | 0x01 (0x02 in the last record) | 0x00 padding)
//! ```

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

use crate::random_bytes;

const TAG_LEN: usize = 16;

/// A subscription's keys as the UA holds them: its P-256 key pair and the
/// 16-byte auth secret.
#[derive(Clone)]
pub struct UaKeys {
    pub secret: SecretKey,
    pub auth: [u8; 16],
}

impl UaKeys {
    /// A fresh key pair and auth secret.
    pub fn generate() -> Self {
        let secret = loop {
            if let Ok(k) = SecretKey::from_slice(&random_bytes(32)) {
                break k;
            }
        };
        let auth = random_bytes(16).try_into().expect("16 bytes");
        UaKeys { secret, auth }
    }

    /// The 65-byte uncompressed public key (`keys.p256dh`, before base64url).
    pub fn public_key(&self) -> Vec<u8> {
        self.secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// Decrypts an `aes128gcm` body sent to this subscription.
    pub fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        decrypt(&self.secret, &self.auth, body)
    }
}

/// Decrypts an `aes128gcm` Web Push body (RFC 8291) with the UA's private
/// key and auth secret.
pub fn decrypt(ua_secret: &SecretKey, auth: &[u8], body: &[u8]) -> Result<Vec<u8>, String> {
    if body.len() < 21 {
        return Err(format!(
            "{} bytes: shorter than the aes128gcm header",
            body.len()
        ));
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes(body[16..20].try_into().unwrap()) as usize;
    let idlen = body[20] as usize;
    if rs < TAG_LEN + 2 {
        return Err(format!("record size {rs} is too small (RFC 8188 §2)"));
    }
    if body.len() < 21 + idlen {
        return Err(format!("key id of {idlen} bytes runs past the body"));
    }
    if idlen != 65 {
        return Err(format!(
            "key id is {idlen} bytes, RFC 8291 wants the 65-byte sender key"
        ));
    }
    let sender_bytes = &body[21..21 + idlen];
    let records = &body[21 + idlen..];
    let sender = PublicKey::from_sec1_bytes(sender_bytes)
        .map_err(|_| "the key id is not a P-256 point".to_owned())?;

    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), sender.as_affine());
    let ua_public = ua_secret.public_key().to_encoded_point(false);
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(sender_bytes);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes().as_slice())
        .expand(&key_info, &mut ikm)
        .map_err(|e| format!("HKDF: {e}"))?;

    let hk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|e| format!("HKDF: {e}"))?;
    let mut base_nonce = [0u8; 12];
    hk.expand(b"Content-Encoding: nonce\0", &mut base_nonce)
        .map_err(|e| format!("HKDF: {e}"))?;
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|e| format!("AES-GCM key: {e}"))?;

    if records.is_empty() {
        return Err("no records after the header".to_owned());
    }
    let count = records.len().div_ceil(rs);
    let mut plaintext = Vec::with_capacity(records.len());
    for (seq, record) in records.chunks(rs).enumerate() {
        let last = seq + 1 == count;
        if record.len() <= TAG_LEN {
            return Err(format!("record {seq} is only {} bytes", record.len()));
        }
        let mut nonce = base_nonce;
        for (n, s) in nonce[4..].iter_mut().zip((seq as u64).to_be_bytes()) {
            *n ^= s;
        }
        let padded = cipher
            .decrypt(Nonce::from_slice(&nonce), record)
            .map_err(|_| format!("record {seq} does not authenticate (wrong keys or tampered)"))?;
        // Strip the padding: zeros, then the delimiter.
        let end = padded
            .iter()
            .rposition(|&b| b != 0)
            .ok_or_else(|| format!("record {seq} has no padding delimiter"))?;
        let expected = if last { 0x02 } else { 0x01 };
        if padded[end] != expected {
            return Err(format!(
                "record {seq} ends with delimiter {:#04x}, expected {expected:#04x}",
                padded[end]
            ));
        }
        if !last && record.len() != rs {
            return Err(format!("record {seq} is short but not the last"));
        }
        plaintext.extend_from_slice(&padded[..end]);
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{b64url_decode, b64url_encode};

    // RFC 8291 §5 / Appendix A.
    const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
    const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    fn rfc_keys() -> UaKeys {
        UaKeys {
            secret: SecretKey::from_slice(&b64url_decode(UA_PRIVATE)).unwrap(),
            auth: b64url_decode(AUTH).try_into().unwrap(),
        }
    }

    #[test]
    fn decrypts_the_rfc_8291_example() {
        let keys = rfc_keys();
        assert_eq!(b64url_encode(&keys.public_key()), UA_PUBLIC);
        let plain = keys.decrypt(&b64url_decode(BODY)).unwrap();
        assert_eq!(String::from_utf8(plain).unwrap(), PLAINTEXT);
    }

    #[test]
    fn refuses_tampering_and_the_wrong_keys() {
        let body = b64url_decode(BODY);
        let keys = rfc_keys();
        let mut tampered = body.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(keys.decrypt(&tampered).is_err());
        let mut wrong_auth = keys.clone();
        wrong_auth.auth[0] ^= 1;
        assert!(wrong_auth.decrypt(&body).is_err());
        assert!(UaKeys::generate().decrypt(&body).is_err());
        assert!(keys.decrypt(&body[..50]).is_err());
    }
}
