//! The AS protocol (SPEC §4.1–4.2) as pure functions: an HTTP request, already
//! framed by `net/`, becomes a [`PushRequest`] for the owning shard, or an
//! immediate [`HttpResponse`] (an error the accepting shard answers itself).

use serde_json::json;

use crate::aesgcm_params;
use crate::identity::{EndpointClaims, Keys, MessageClaims};
use crate::limits::Limits;
use crate::message::{MessageBody, Urgency};
use crate::rate::Limited;
use crate::{vapid, ChannelId, KeyHash, Millis, Uaid};

/// Error numbers in JSON error bodies; autopush's values where one exists.
pub mod errno {
    pub const MISSING_CRYPTO_KEYS: u16 = 101;
    pub const INVALID_ENDPOINT: u16 = 102;
    pub const ENDPOINT_GONE: u16 = 103;
    pub const PAYLOAD_TOO_LARGE: u16 = 104;
    pub const INVALID_BODY: u16 = 108;
    pub const INVALID_AUTHENTICATION: u16 = 109;
    pub const INVALID_ENCRYPTION: u16 = 110;
    pub const MISSING_TTL: u16 = 111;
    pub const INVALID_TTL: u16 = 112;
    pub const INVALID_TOPIC: u16 = 113;
    pub const INVALID_URGENCY: u16 = 114;
    pub const MESSAGE_NOT_FOUND: u16 = 115;
    pub const NOT_FOUND: u16 = 116;
    pub const METHOD_NOT_ALLOWED: u16 = 117;
    pub const HEADERS_TOO_LARGE: u16 = 118;
    pub const BAD_REQUEST: u16 = 119;
    pub const OVERLOADED: u16 = 201;
    pub const STORAGE_FAILED: u16 = 202;
    /// 429: a rate limit (per channel, per source address); autopush has none.
    pub const RATE_LIMITED: u16 = 203;
    pub const INTERNAL: u16 = 999;
}

/// An HTTP response as the engine decides it; `net/` writes the bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(status: u16, body: String) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    /// SPEC §4.2's error body: `{"code","errno","error","message"}`.
    pub fn error(status: u16, errno: u16, message: &str) -> HttpResponse {
        let body = json!({
            "code": status,
            "errno": errno,
            "error": reason_phrase(status),
            "message": message,
        });
        HttpResponse::json(status, body.to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> HttpResponse {
        self.headers.push((name, value));
        self
    }

    /// 503 with `Retry-After`: the answer to back-pressure anywhere.
    pub fn overloaded(message: &str) -> HttpResponse {
        HttpResponse::error(503, errno::OVERLOADED, message)
            .with_header("Retry-After", "1".to_owned())
    }

    /// 429 with `Retry-After`: a rate limit said no.
    pub fn rate_limited(message: &str, limited: Limited) -> HttpResponse {
        HttpResponse::error(429, errno::RATE_LIMITED, message).with_retry_after(limited)
    }

    /// `Retry-After` in whole seconds (RFC 9110 §10.2.3).
    pub fn with_retry_after(self, limited: Limited) -> HttpResponse {
        self.with_header("Retry-After", limited.retry_after_s().to_string())
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A notification as the AS asked for it, before the shard stores it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Notification {
    pub body: MessageBody,
    /// `None`: lives until replaced (SimplePush versions).
    pub ttl_s: Option<u64>,
    pub topic: Option<String>,
    pub urgency: Urgency,
    /// `Prefer: respond-async` (RFC 8030 §5.1).
    pub respond_async: bool,
    /// Web Push (POST) answers 201 + Location; SimplePush (PUT) answers 200 `{}`.
    pub web_push: bool,
}

/// A decoded AS request, routed to the shard that owns its UAID.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PushRequest {
    Notify {
        uaid: Uaid,
        channel: ChannelId,
        key_hash: Option<KeyHash>,
        notification: Notification,
    },
    DeleteMessage(MessageClaims),
    MessageState(MessageClaims),
    /// One UA's share of an app notification (SPEC §3.6) in cluster mode:
    /// no shard knows every UA of an app there, so the node that took the
    /// notification names each UA of the app in turn (the cluster store
    /// keeps the app's members).
    AppShare {
        uaid: Uaid,
        channel: ChannelId,
        notification: crate::extended::AppNotification,
    },
}

impl PushRequest {
    pub fn uaid(&self) -> Uaid {
        match self {
            PushRequest::Notify { uaid, .. } | PushRequest::AppShare { uaid, .. } => *uaid,
            PushRequest::DeleteMessage(claims) | PushRequest::MessageState(claims) => claims.uaid,
        }
    }
}

/// One framed HTTP request. Header names compare case-insensitively.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
}

impl HttpRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .map(str::trim)
    }
}

/// What decoding needs besides the request.
pub struct DecodeContext<'a> {
    pub keys: &'a Keys,
    pub limits: &'a Limits,
    /// The origin (`scheme://host[:port]`) endpoints are issued under; VAPID `aud`.
    pub audience: &'a str,
    pub now_ms: Millis,
}

/// Decodes a push-related request (`/wpush/...`, `/m/...`).
pub fn decode(context: &DecodeContext, request: &HttpRequest) -> Result<PushRequest, HttpResponse> {
    let path = request.path.split('?').next().unwrap_or_default();
    if let Some(rest) = path.strip_prefix("/m/") {
        let claims = context
            .keys
            .open_message_id(rest)
            .ok_or_else(|| HttpResponse::error(404, errno::MESSAGE_NOT_FOUND, "no such message"))?;
        return match request.method {
            "DELETE" => Ok(PushRequest::DeleteMessage(claims)),
            "GET" => Ok(PushRequest::MessageState(claims)),
            _ => Err(HttpResponse::error(
                405,
                errno::METHOD_NOT_ALLOWED,
                "use GET or DELETE on a message",
            )),
        };
    }
    let (version, token) = path
        .strip_prefix("/wpush/v1/")
        .map(|token| (1, token))
        .or_else(|| path.strip_prefix("/wpush/v2/").map(|token| (2, token)))
        .ok_or_else(|| HttpResponse::error(404, errno::NOT_FOUND, "no such resource"))?;
    let claims = context
        .keys
        .open_endpoint_token(token)
        .filter(|claims| (claims.key_hash.is_some()) == (version == 2))
        .ok_or_else(|| {
            HttpResponse::error(404, errno::INVALID_ENDPOINT, "invalid push endpoint")
        })?;
    if request.body.len() > context.limits.push_body_bytes_max {
        return Err(HttpResponse::error(
            413,
            errno::PAYLOAD_TOO_LARGE,
            "body too large",
        ));
    }
    let notification = match request.method {
        "PUT" => decode_simple_push(request)?,
        "POST" => decode_web_push(context, request)?,
        _ => {
            return Err(HttpResponse::error(
                405,
                errno::METHOD_NOT_ALLOWED,
                "use POST (Web Push) or PUT (SimplePush)",
            ))
        }
    };
    check_vapid(context, request, &claims)?;
    Ok(PushRequest::Notify {
        uaid: claims.uaid,
        channel: claims.channel,
        key_hash: claims.key_hash,
        notification,
    })
}

/// v2 endpoints require VAPID by the registered key; v1 validate it when present.
fn check_vapid(
    context: &DecodeContext,
    request: &HttpRequest,
    claims: &EndpointClaims,
) -> Result<(), HttpResponse> {
    let unauthorized =
        |message: &str| HttpResponse::error(401, errno::INVALID_AUTHENTICATION, message);
    let Some(authorization) = request.header("authorization") else {
        return match claims.key_hash {
            Some(_) => Err(unauthorized("this endpoint requires VAPID authorization")),
            None => Ok(()),
        };
    };
    let verified = vapid::verify(
        authorization,
        request.header("crypto-key"),
        context.audience,
        context.now_ms,
        context.limits.vapid_expiry_ahead_max_s,
    )
    .map_err(|error| unauthorized(&error.reason()))?;
    match claims.key_hash {
        Some(registered) if registered != verified.key_hash => Err(unauthorized(
            "VAPID key does not match the key this subscription was made with",
        )),
        _ => Ok(()),
    }
}

/// SimplePush `PUT`: `version=N`, empty (version = now), or `body=&ttl=`.
fn decode_simple_push(request: &HttpRequest) -> Result<Notification, HttpResponse> {
    let bad = |message: &str| HttpResponse::error(400, errno::INVALID_BODY, message);
    let mut version = None;
    let mut desktop_body = None;
    let mut ttl_s = None;
    for (key, value) in form_urlencoded::parse(request.body) {
        match key.as_ref() {
            "version" => {
                version = Some(
                    parse_version(&value)
                        .ok_or_else(|| bad("version must be an integer 0 <= N < 2^63"))?,
                )
            }
            "body" => desktop_body = Some(value.into_owned()),
            "ttl" => {
                ttl_s = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("ttl must be a non-negative integer"))?,
                )
            }
            _ => {}
        }
    }
    let body = match (version, desktop_body) {
        (Some(_), Some(_)) => return Err(bad("send either version or body, not both")),
        (Some(version), None) => MessageBody::Version(version),
        (None, Some(body)) => MessageBody::Desktop { body, ttl_s },
        (None, None) if request.body.iter().all(u8::is_ascii_whitespace) => {
            MessageBody::Version(VERSION_FROM_CLOCK)
        }
        (None, None) => return Err(bad("body must be version=N or body=TEXT[&ttl=S]")),
    };
    Ok(Notification {
        ttl_s: if let MessageBody::Desktop { ttl_s, .. } = &body {
            *ttl_s
        } else {
            None
        },
        body,
        topic: None,
        urgency: Urgency::Normal,
        respond_async: false,
        web_push: false,
    })
}

/// `u64::MAX` marks "no version given: the shard uses the current time".
pub const VERSION_FROM_CLOCK: u64 = u64::MAX;

fn parse_version(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|version| *version < 1 << 63)
}

/// Web Push `POST` (RFC 8030 / 8291).
fn decode_web_push(
    context: &DecodeContext,
    request: &HttpRequest,
) -> Result<Notification, HttpResponse> {
    let ttl_text = request.header("ttl").ok_or_else(|| {
        HttpResponse::error(400, errno::MISSING_TTL, "the TTL header is required")
    })?;
    let ttl_s = ttl_text
        .parse::<u64>()
        .map_err(|_| {
            HttpResponse::error(
                400,
                errno::INVALID_TTL,
                "TTL must be a non-negative integer",
            )
        })?
        .min(context.limits.ttl_max_s);
    let topic = match request.header("topic") {
        None => None,
        Some(topic) if is_valid_topic(topic) => Some(topic.to_owned()),
        Some(_) => {
            return Err(HttpResponse::error(
                400,
                errno::INVALID_TOPIC,
                "Topic must be at most 32 base64url characters",
            ))
        }
    };
    let urgency = match request.header("urgency") {
        None => Urgency::Normal,
        Some(text) => Urgency::parse(text).ok_or_else(|| {
            HttpResponse::error(
                400,
                errno::INVALID_URGENCY,
                "Urgency must be very-low, low, normal or high",
            )
        })?,
    };
    let body = decode_encrypted_body(request)?;
    let respond_async = request.header("prefer").is_some_and(|prefer| {
        prefer
            .split(',')
            .any(|item| item.trim().eq_ignore_ascii_case("respond-async"))
    });
    Ok(Notification {
        body,
        ttl_s: Some(ttl_s),
        topic,
        urgency,
        respond_async,
        web_push: true,
    })
}

fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 32
        && topic
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// A body needs an encoding; `aesgcm` also needs its salt (`Encryption`) and
/// sender key (`Crypto-Key: dh=`), which travel to the UA unquoted and
/// unpadded ([`aesgcm_params`]); the body itself is never touched.
fn decode_encrypted_body(request: &HttpRequest) -> Result<MessageBody, HttpResponse> {
    let invalid = |message: &str| HttpResponse::error(400, errno::INVALID_ENCRYPTION, message);
    if request.body.is_empty() {
        return Ok(MessageBody::WebPush {
            data: Vec::new(),
            encoding: None,
            encryption: None,
            crypto_key: None,
        });
    }
    let encoding = request
        .header("content-encoding")
        .ok_or_else(|| invalid("Content-Encoding is required with a body"))?
        .to_ascii_lowercase();
    let (encryption, crypto_key) = match encoding.as_str() {
        "aes128gcm" => (None, None),
        "aesgcm" => {
            let encryption = request
                .header("encryption")
                .filter(|value| value.contains("salt="))
                .ok_or_else(|| {
                    HttpResponse::error(
                        400,
                        errno::MISSING_CRYPTO_KEYS,
                        "aesgcm needs an Encryption header with salt",
                    )
                })?;
            let crypto_key = request
                .header("crypto-key")
                .filter(|value| value.contains("dh="))
                .ok_or_else(|| {
                    HttpResponse::error(
                        400,
                        errno::MISSING_CRYPTO_KEYS,
                        "aesgcm needs a Crypto-Key header with dh",
                    )
                })?;
            (
                Some(aesgcm_params::unquote_and_unpad(encryption)),
                Some(aesgcm_params::unquote_and_unpad(crypto_key)),
            )
        }
        _ => return Err(invalid("Content-Encoding must be aes128gcm or aesgcm")),
    };
    Ok(MessageBody::WebPush {
        data: request.body.to_vec(),
        encoding: Some(encoding),
        encryption,
        crypto_key,
    })
}
