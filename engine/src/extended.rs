//! The extended protocol of seed 003 (SPEC §3.6): UAs identified by a UA token
//! register web apps by (watoken, RSA public key); an AS posts a notification
//! signed with the matching private key to the app's url, and every UA that
//! registered that url receives it (one device, a user's devices, or all).
//!
//! Pure functions only: parsing, replies, the app url token and the signature
//! check. The shard keeps the state.

use base64::Engine as _;
use rsa::pkcs8::DecodePublicKey;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::message::WakeupInfo;
use crate::push::HttpResponse;
use crate::{ChannelId, Millis};

/// The WebSocket subprotocol that selects this protocol.
pub const SUBPROTOCOL: &str = "push-extended-notification";

/// RSA keys Herald accepts for signatures, in bits.
const RSA_BITS_MIN: usize = 1024;
const RSA_BITS_MAX: usize = 4096;
/// A DER SubjectPublicKeyInfo of a 4096-bit key is ~550 bytes.
const PUBLIC_KEY_DER_BYTES_MAX: usize = 1024;
const WATOKEN_BYTES_MAX: usize = 256;

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ExtendedMessage {
    RegisterUa {
        uatoken: String,
        wakeup: Option<WakeupInfo>,
    },
    RegisterWa {
        uatoken: String,
        watoken: String,
        public_key_der: Vec<u8>,
    },
    GetAllMessages,
    Ack {
        message_id: String,
    },
}

/// A refused UA message: answered with an ERROR reply, the socket stays open.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExtendedError {
    pub status_code: u16,
    pub reason: &'static str,
    pub message_type: Option<String>,
}

impl ExtendedError {
    fn new(status_code: u16, reason: &'static str, message_type: Option<&str>) -> ExtendedError {
        ExtendedError {
            status_code,
            reason,
            message_type: message_type.map(str::to_owned),
        }
    }

    pub fn reply(&self) -> String {
        error_reply(self.status_code, self.reason, self.message_type.as_deref())
    }
}

pub const NOT_JSON: &str = "Data received is not a valid JSON package";
pub const BAD_UA_TOKEN: &str = "Token is not valid for this server";

pub fn parse(text: &str) -> Result<ExtendedMessage, ExtendedError> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| ExtendedError::new(400, NOT_JSON, None))?;
    let object = value
        .as_object()
        .ok_or_else(|| ExtendedError::new(400, NOT_JSON, None))?;
    let message_type = object
        .get("messageType")
        .and_then(Value::as_str)
        .ok_or_else(|| ExtendedError::new(400, "messageType is missing", None))?;
    let data = object.get("data").and_then(Value::as_object);
    let field = |name: &str| {
        data.and_then(|data| data.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let bad = |reason: &'static str| ExtendedError::new(400, reason, Some(message_type));
    match message_type {
        "registerUA" => Ok(ExtendedMessage::RegisterUa {
            uatoken: field("uatoken").ok_or_else(|| bad("uatoken is missing"))?,
            wakeup: data.and_then(parse_wakeup),
        }),
        "registerWA" => {
            let watoken = field("watoken")
                .filter(|token| !token.is_empty() && token.len() <= WATOKEN_BYTES_MAX);
            let key = field("pbkbase64")
                .and_then(|text| {
                    base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .ok()
                })
                .filter(|der| der.len() <= PUBLIC_KEY_DER_BYTES_MAX && public_key(der).is_some());
            Ok(ExtendedMessage::RegisterWa {
                uatoken: field("uatoken").ok_or_else(|| bad("uatoken is missing"))?,
                watoken: watoken.ok_or_else(|| bad("watoken is missing or too long"))?,
                public_key_der: key
                    .ok_or_else(|| bad("pbkbase64 is not a base64 DER RSA public key"))?,
            })
        }
        "getAllMessages" => Ok(ExtendedMessage::GetAllMessages),
        "ack" => Ok(ExtendedMessage::Ack {
            message_id: object
                .get("messageId")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad("messageId is missing"))?,
        }),
        _ => Err(ExtendedError::new(
            400,
            "unknown messageType",
            Some(message_type),
        )),
    }
}

/// `interface` + `mobilenetwork` join UDP wakeup exactly as in SPEC §5.
fn parse_wakeup(data: &Map<String, Value>) -> Option<WakeupInfo> {
    let mut fields = Map::new();
    fields.insert("wakeup_hostport".to_owned(), data.get("interface")?.clone());
    fields.insert(
        "mobilenetwork".to_owned(),
        data.get("mobilenetwork")?.clone(),
    );
    fields.insert("messageType".to_owned(), json!("hello"));
    match crate::ua::parse(&Value::Object(fields).to_string()) {
        Ok(crate::ua::ClientMessage::Hello(hello)) => hello.wakeup,
        _ => None,
    }
}

fn public_key(der: &[u8]) -> Option<rsa::RsaPublicKey> {
    let key = rsa::RsaPublicKey::from_public_key_der(der).ok()?;
    let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
    (RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits).then_some(key)
}

/// The app's url token and the channel it is kept under. It depends only on
/// (watoken, public key), so every UA that registers the pair gets one url.
pub fn app_token(watoken: &str, public_key_der: &[u8]) -> (ChannelId, String) {
    let mut hash = Sha256::new();
    hash.update(b"herald extended app\0");
    hash.update((watoken.len() as u64).to_be_bytes());
    hash.update(watoken.as_bytes());
    hash.update(public_key_der);
    let digest = hash.finalize();
    let mut channel = [0u8; 16];
    channel.copy_from_slice(&digest[..16]);
    (
        ChannelId(channel),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
    )
}

/// The channel a url token names, if it has the right shape.
pub fn channel_of(url_token: &str) -> Option<ChannelId> {
    let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(url_token)
        .ok()?;
    (digest.len() == 32).then(|| {
        let mut channel = [0u8; 16];
        channel.copy_from_slice(&digest[..16]);
        ChannelId(channel)
    })
}

/// RSA PKCS#1 v1.5 with SHA-256 over the UTF-8 bytes of the message.
pub fn signature_is_valid(public_key_der: &[u8], message: &str, signature: &[u8]) -> bool {
    let Some(key) = public_key(public_key_der) else {
        return false;
    };
    let digest = Sha256::digest(message.as_bytes());
    key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
        .is_ok()
}

/// A notification an AS posted to an app url, validated but not yet checked
/// against the app's key (only the shards that hold the app know it).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AppNotification {
    pub id: String,
    pub message: String,
    pub signature: Vec<u8>,
    pub ttl_s: u64,
    pub timestamp_ms: Millis,
    pub priority: u8,
}

/// Without a `ttl`, a notification lives as long as the TTL cap allows.
pub fn decode_notification(body: &[u8], ttl_max_s: u64) -> Result<AppNotification, HttpResponse> {
    let value: Value = serde_json::from_slice(body).map_err(|_| as_error(400, "JSON not valid"))?;
    let object = value
        .as_object()
        .ok_or_else(|| as_error(400, "JSON not valid"))?;
    if object.get("messageType").and_then(Value::as_str) != Some("notification") {
        return Err(as_error(400, "Not messageType=notification"));
    }
    let signature = object
        .get("signature")
        .and_then(Value::as_str)
        .and_then(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
        })
        .ok_or_else(|| as_error(400, "You must sign your message with your Private Key"))?;
    let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
    let number = |name: &str| object.get(name).and_then(Value::as_u64);
    Ok(AppNotification {
        id: text("id").unwrap_or_default(),
        message: text("message").ok_or_else(|| as_error(400, "JSON not valid"))?,
        signature,
        ttl_s: number("ttl").unwrap_or(ttl_max_s).min(ttl_max_s),
        timestamp_ms: number("timestamp").unwrap_or(0),
        priority: number("priority")
            .filter(|p| (1..=4).contains(p))
            .unwrap_or(4) as u8,
    })
}

/// The AS error body of SPEC §3.6: `{"status":"ERROR","reason":...}`.
pub fn as_error(status: u16, reason: &str) -> HttpResponse {
    HttpResponse::json(
        status,
        json!({"status": "ERROR", "reason": reason}).to_string(),
    )
}

pub fn accepted() -> HttpResponse {
    HttpResponse::json(200, json!({"status": "ACCEPTED"}).to_string())
}

pub fn registered(message_type: &str) -> String {
    json!({"status": "REGISTERED", "statusCode": 200, "messageType": message_type}).to_string()
}

pub fn registered_app(url: &str) -> String {
    json!({"status": "REGISTERED", "statusCode": 200, "url": url, "messageType": "registerWA"})
        .to_string()
}

pub fn error_reply(status_code: u16, reason: &str, message_type: Option<&str>) -> String {
    let mut reply = json!({"status": "ERROR", "statusCode": status_code, "reason": reason});
    if let Some(message_type) = message_type {
        reply["messageType"] = json!(message_type);
    }
    reply.to_string()
}

/// Herald → UA, one per notification (also the items of getAllMessages).
pub fn notification_object(
    id: &str,
    message: &str,
    timestamp_ms: Millis,
    priority: u8,
    message_id: &str,
    url: &str,
) -> Value {
    json!({
        "messageType": "notification",
        "id": id,
        "message": message,
        "timestamp": timestamp_ms,
        "priority": priority,
        "messageId": message_id,
        "url": url,
    })
}

pub fn all_messages(messages: Vec<Value>) -> String {
    json!({"messageType": "getAllMessages", "messages": messages}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_tokens_depend_on_the_pair_only() {
        let (channel, token) = app_token("wa", b"key");
        assert_eq!(app_token("wa", b"key"), (channel, token.clone()));
        assert_ne!(app_token("wb", b"key").1, token);
        assert_ne!(
            app_token("w", b"akey").1,
            app_token("wa", b"key").1,
            "length-prefixed"
        );
        assert_eq!(channel_of(&token), Some(channel));
        assert_eq!(channel_of("short"), None);
    }

    #[test]
    fn parse_refuses_bad_input_with_the_seed_reasons() {
        assert_eq!(parse("nope").unwrap_err().reason, NOT_JSON);
        assert_eq!(
            parse(r#"{"messageType":"registerUA"}"#)
                .unwrap_err()
                .status_code,
            400
        );
        assert!(matches!(
            parse(
                r#"{"messageType":"registerWA","data":{"uatoken":"a","watoken":"w","pbkbase64":"AAAA"}}"#
            ),
            Err(ExtendedError {
                status_code: 400,
                ..
            })
        ));
        assert_eq!(
            parse(r#"{"messageType":"ack","messageId":"x"}"#).unwrap(),
            ExtendedMessage::Ack {
                message_id: "x".to_owned()
            }
        );
    }

    #[test]
    fn notifications_need_type_and_signature() {
        let decode =
            |body: &str| decode_notification(body.as_bytes(), 100).map_err(|error| error.body);
        assert!(decode("{").unwrap_err().contains("JSON not valid"));
        assert!(decode(r#"{"messageType":"x"}"#)
            .unwrap_err()
            .contains("Not messageType=notification"));
        assert!(decode(r#"{"messageType":"notification","message":"m"}"#)
            .unwrap_err()
            .contains("sign"));
        let ok = decode(
            r#"{"messageType":"notification","id":"i","message":"m","signature":"AAAA","ttl":500}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.ttl_s, ok.priority, ok.signature),
            (100, 4, vec![0, 0, 0])
        );
    }
}
