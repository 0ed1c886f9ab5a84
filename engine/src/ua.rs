//! The UA protocol's messages (SPEC §3): parsing what a UA sends, building
//! what Herald sends back. Parsing is strict about types and lenient about
//! unknown fields, as the protocol asks.

use serde_json::{json, Map, Value};

use crate::message::WakeupInfo;

/// Seed 001's text keep-alive, answered with [`PONG`].
pub const PING: &str = "PING";
pub const PONG: &str = "PONG";

#[derive(Clone, PartialEq, Debug)]
pub struct Hello {
    pub uaid: Option<String>,
    /// `None` means "no sync" (SPEC §3.1); `Some(empty)` means "I have none".
    pub channel_ids: Option<Vec<String>>,
    pub use_webpush: bool,
    /// Present only when both `wakeup_hostport` and `mobilenetwork` are valid.
    pub wakeup: Option<WakeupInfo>,
    /// Broadcast id → the version the UA has (SPEC §3.5).
    pub broadcasts: BroadcastRequest,
}

/// A UA's `broadcasts` object (SPEC §3.5): the entries Herald can follow,
/// and the ids of those it cannot read. A UA asking for a broadcast Herald
/// does not know keeps its socket: the answer names the id in `errors`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct BroadcastRequest {
    /// Id → the version the UA has.
    pub wanted: Vec<(String, String)>,
    /// Ids whose entry is not a valid id with a version string.
    pub malformed: Vec<String>,
}

/// What a hello or `broadcast_subscribe` answers about broadcasts.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct BroadcastReply {
    /// Subscribed broadcasts whose version differs from the UA's.
    pub changes: Vec<(String, String)>,
    /// Ids Herald has no version for (never set, or unreadable).
    pub not_found: Vec<String>,
}

impl BroadcastReply {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.not_found.is_empty()
    }
}

#[derive(Clone, PartialEq, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum AckVersion {
    Text(String),
    Number(u64),
}

#[derive(Clone, PartialEq, Debug, serde::Deserialize)]
pub struct AckUpdate {
    #[serde(rename = "channelID")]
    pub channel_id: String,
    pub version: AckVersion,
}

#[derive(Clone, PartialEq, Debug)]
pub enum ClientMessage {
    Hello(Hello),
    Register {
        channel_id: String,
        key: Option<String>,
    },
    Unregister {
        channel_id: String,
    },
    Ack(Vec<AckUpdate>),
    Nack {
        code: Option<u64>,
    },
    /// `{}`, `{"messageType":"ping"}`.
    Ping,
    /// Seed 001's `PING` text frame.
    TextPing,
    /// Broadcast id → the version the UA has (SPEC §3.5).
    BroadcastSubscribe(BroadcastRequest),
}

/// Why a UA message was refused. Every variant closes the socket with 1002
/// (protocol error): a UA that sends these is broken or hostile.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ParseError {
    NotJson,
    NotObject,
    UnknownType(String),
    BadField(&'static str),
}

impl ParseError {
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::NotJson => "message is not valid JSON",
            ParseError::NotObject => "message is not a JSON object",
            ParseError::UnknownType(_) => "unknown messageType",
            ParseError::BadField(field) => field,
        }
    }
}

pub fn parse(text: &str) -> Result<ClientMessage, ParseError> {
    if text == PING {
        return Ok(ClientMessage::TextPing);
    }
    if let Some(ack) = parse_well_formed_ack(text) {
        return Ok(ack);
    }
    let value: Value = serde_json::from_str(text).map_err(|_| ParseError::NotJson)?;
    let object = value.as_object().ok_or(ParseError::NotObject)?;
    let message_type = match object.get("messageType") {
        None if object.is_empty() => return Ok(ClientMessage::Ping),
        None => return Err(ParseError::BadField("messageType is missing")),
        Some(Value::String(kind)) => kind.to_ascii_lowercase(),
        Some(_) => return Err(ParseError::BadField("messageType is not a string")),
    };
    match message_type.as_str() {
        "hello" => parse_hello(object).map(ClientMessage::Hello),
        "register" => Ok(ClientMessage::Register {
            channel_id: required_string(object, "channelID", "channelID must be a string")?,
            key: optional_string(object, "key", "key must be a string")?,
        }),
        "unregister" => Ok(ClientMessage::Unregister {
            channel_id: required_string(object, "channelID", "channelID must be a string")?,
        }),
        "ack" => parse_ack(object),
        "nack" => Ok(ClientMessage::Nack {
            code: match object.get("code") {
                None | Some(Value::Null) => None,
                Some(code) => Some(
                    code.as_u64()
                        .ok_or(ParseError::BadField("nack code must be a number"))?,
                ),
            },
        }),
        "ping" => Ok(ClientMessage::Ping),
        "broadcast_subscribe" => parse_broadcasts(object).map(ClientMessage::BroadcastSubscribe),
        _ => Err(ParseError::UnknownType(message_type)),
    }
}

fn required_string(
    object: &Map<String, Value>,
    key: &str,
    error: &'static str,
) -> Result<String, ParseError> {
    optional_string(object, key, error)?.ok_or(ParseError::BadField(error))
}

fn optional_string(
    object: &Map<String, Value>,
    key: &str,
    error: &'static str,
) -> Result<Option<String>, ParseError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ParseError::BadField(error)),
    }
}

fn parse_hello(object: &Map<String, Value>) -> Result<Hello, ParseError> {
    let uaid =
        optional_string(object, "uaid", "uaid must be a string")?.filter(|uaid| !uaid.is_empty());
    let channel_ids = match object.get("channelIDs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(ParseError::BadField("channelIDs must be strings"))?,
        ),
        Some(_) => return Err(ParseError::BadField("channelIDs must be an array")),
    };
    let use_webpush = match object.get("use_webpush") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err(ParseError::BadField("use_webpush must be a boolean")),
    };
    Ok(Hello {
        uaid,
        channel_ids,
        use_webpush,
        wakeup: parse_wakeup(object),
        broadcasts: parse_broadcasts(object)?,
    })
}

/// Wakeup data is optional and advisory: anything malformed just means the UA
/// is not registered for UDP wakeup (it keeps its socket), never an error.
fn parse_wakeup(object: &Map<String, Value>) -> Option<WakeupInfo> {
    let hostport = object.get("wakeup_hostport")?.as_object()?;
    let network = object.get("mobilenetwork")?.as_object()?;
    let ip = hostport.get("ip")?.as_str()?.parse().ok()?;
    let port = u16::try_from(hostport.get("port")?.as_u64()?)
        .ok()
        .filter(|port| *port != 0)?;
    let text = |key: &str| network.get(key).and_then(Value::as_str).map(str::to_owned);
    let mcc = text("mcc").filter(|mcc| is_digits(mcc, 3, 3))?;
    let mnc = text("mnc").filter(|mnc| is_digits(mnc, 2, 3))?;
    let netid = text("netid").unwrap_or_default();
    Some(WakeupInfo {
        ip,
        port,
        mcc,
        mnc,
        netid,
    })
}

/// `{"<id>": "<version>", ...}`; absent means none. An entry that is not a
/// valid id with a version string is set aside for the answer's `errors`,
/// not refused: an id the UA knows and Herald does not (a megaphone service
/// name, a typo) must not cost the UA its push connection. Only a
/// `broadcasts` that is not an object at all is a broken UA.
fn parse_broadcasts(object: &Map<String, Value>) -> Result<BroadcastRequest, ParseError> {
    let entries = match object.get("broadcasts") {
        None | Some(Value::Null) => return Ok(BroadcastRequest::default()),
        Some(Value::Object(entries)) => entries,
        Some(_) => return Err(ParseError::BadField("broadcasts must be an object")),
    };
    let mut request = BroadcastRequest::default();
    for (id, version) in entries {
        match version.as_str() {
            Some(version) if is_broadcast_id(id) && is_broadcast_version(version) => {
                request.wanted.push((id.clone(), version.to_owned()))
            }
            _ => request.malformed.push(id.clone()),
        }
    }
    Ok(request)
}

/// Broadcast ids look like `remote-settings/monitor_changes` or megaphone's
/// `kinto:123`. `errors` is the key of the answers' error map, never an id.
pub fn is_broadcast_id(id: &str) -> bool {
    (1..=BROADCAST_TEXT_BYTES_MAX).contains(&id.len())
        && id != ERRORS_KEY
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_-./:".contains(&byte))
}

/// Versions are opaque printable strings (megaphone sends quoted numbers).
pub fn is_broadcast_version(version: &str) -> bool {
    (1..=BROADCAST_TEXT_BYTES_MAX).contains(&version.len())
        && version.bytes().all(|byte| byte.is_ascii_graphic())
}

const BROADCAST_TEXT_BYTES_MAX: usize = 128;

/// The map of ids Herald has no version for, inside `broadcasts` (autopush's
/// and Firefox's name for it).
const ERRORS_KEY: &str = "errors";
const NOT_FOUND: &str = "Broadcast not found";

fn is_digits(text: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&text.len()) && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// The common case of the most frequent message, read straight into its
/// types: an ack of a backlog carries hundreds of updates, and a
/// `serde_json::Value` costs allocations per key. Anything this does not
/// accept (another type, a malformed ack) goes the general way, which also
/// says what is wrong.
fn parse_well_formed_ack(text: &str) -> Option<ClientMessage> {
    #[derive(serde::Deserialize)]
    struct Ack {
        #[serde(rename = "messageType")]
        message_type: String,
        updates: Vec<AckUpdate>,
    }
    // A struct would also accept a JSON array; the protocol's messages are objects.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let ack: Ack = serde_json::from_str(text).ok()?;
    ack.message_type
        .eq_ignore_ascii_case("ack")
        .then_some(ClientMessage::Ack(ack.updates))
}

fn parse_ack(object: &Map<String, Value>) -> Result<ClientMessage, ParseError> {
    let updates = match object.get("updates") {
        Some(Value::Array(updates)) => updates,
        _ => return Err(ParseError::BadField("ack updates must be an array")),
    };
    let mut parsed = Vec::with_capacity(updates.len());
    for update in updates {
        let update = update
            .as_object()
            .ok_or(ParseError::BadField("ack update must be an object"))?;
        let channel_id = required_string(update, "channelID", "ack channelID must be a string")?;
        let version = match update.get("version") {
            Some(Value::String(text)) => AckVersion::Text(text.clone()),
            Some(Value::Number(number)) => AckVersion::Number(
                number
                    .as_u64()
                    .ok_or(ParseError::BadField("ack version out of range"))?,
            ),
            _ => {
                return Err(ParseError::BadField(
                    "ack version must be a string or number",
                ))
            }
        };
        parsed.push(AckUpdate {
            channel_id,
            version,
        });
    }
    Ok(ClientMessage::Ack(parsed))
}

/// `{"<id>": "<version>", ..., "errors": {"<id>": "Broadcast not found"}}`,
/// the `errors` map only when there is one.
fn broadcast_map(reply: &BroadcastReply) -> Value {
    let mut map: Map<String, Value> = reply
        .changes
        .iter()
        .map(|(id, version)| (id.clone(), Value::String(version.clone())))
        .collect();
    if !reply.not_found.is_empty() {
        let errors = reply
            .not_found
            .iter()
            .map(|id| (id.clone(), Value::String(NOT_FOUND.to_owned())))
            .collect();
        map.insert(ERRORS_KEY.to_owned(), Value::Object(errors));
    }
    Value::Object(map)
}

/// `broadcasts` carries the subscribed broadcasts whose version differs
/// from the one the UA said it has, and the ids Herald has no version for.
pub fn hello_reply(
    uaid_hex: &str,
    status: u16,
    use_webpush: bool,
    broadcasts: &BroadcastReply,
) -> String {
    let mut reply = json!({
        "messageType": "hello",
        "uaid": uaid_hex,
        "status": status,
        "broadcasts": broadcast_map(broadcasts),
    });
    if use_webpush {
        reply["use_webpush"] = Value::Bool(true);
    }
    reply.to_string()
}

pub fn register_reply(channel_id: &str, status: u16, endpoint: Option<&str>) -> String {
    let mut reply = json!({"messageType": "register", "channelID": channel_id, "status": status});
    if let Some(endpoint) = endpoint {
        reply["pushEndpoint"] = Value::String(endpoint.to_owned());
    }
    reply.to_string()
}

pub fn unregister_reply(channel_id: &str, status: u16) -> String {
    json!({"messageType": "unregister", "channelID": channel_id, "status": status}).to_string()
}

pub fn broadcast_message(reply: &BroadcastReply) -> String {
    json!({"messageType": "broadcast", "broadcasts": broadcast_map(reply)}).to_string()
}

pub const PING_REPLY: &str = "{}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firefox_hello() {
        let hello = parse(r#"{"messageType":"hello","broadcasts":{},"use_webpush":true}"#).unwrap();
        assert_eq!(
            hello,
            ClientMessage::Hello(Hello {
                uaid: None,
                channel_ids: None,
                use_webpush: true,
                wakeup: None,
                broadcasts: BroadcastRequest::default()
            })
        );
    }

    #[test]
    fn parses_wakeup_only_when_complete() {
        let full = r#"{"messageType":"hello","wakeup_hostport":{"ip":"10.1.2.3","port":5000},
            "mobilenetwork":{"mcc":"214","mnc":"07","netid":"x"}}"#;
        let ClientMessage::Hello(hello) = parse(full).unwrap() else {
            panic!("not a hello")
        };
        assert_eq!(hello.wakeup.unwrap().port, 5000);
        let partial = r#"{"messageType":"hello","wakeup_hostport":{"ip":"10.1.2.3","port":5000}}"#;
        let ClientMessage::Hello(hello) = parse(partial).unwrap() else {
            panic!("not a hello")
        };
        assert!(hello.wakeup.is_none());
    }

    #[test]
    fn pings_in_every_form() {
        assert_eq!(parse("{}").unwrap(), ClientMessage::Ping);
        assert_eq!(
            parse(r#"{"messageType":"ping"}"#).unwrap(),
            ClientMessage::Ping
        );
        assert_eq!(parse("PING").unwrap(), ClientMessage::TextPing);
    }

    #[test]
    fn acks_take_strings_and_numbers() {
        let ack = parse(
            r#"{"messageType":"ack","updates":[{"channelID":"a","version":"x","code":100},{"channelID":"b","version":7}]}"#,
        );
        assert_eq!(
            ack.unwrap(),
            ClientMessage::Ack(vec![
                AckUpdate {
                    channel_id: "a".into(),
                    version: AckVersion::Text("x".into())
                },
                AckUpdate {
                    channel_id: "b".into(),
                    version: AckVersion::Number(7)
                },
            ])
        );
    }

    /// The typed fast path and the general path read every ack alike.
    #[test]
    fn both_ack_paths_agree() {
        for text in [
            r#"{"messageType":"ack","updates":[{"channelID":"a","version":"x","code":100},{"channelID":"b","version":7}]}"#,
            r#"{"messageType":"ACK","updates":[]}"#,
            r#" {"updates":[{"version":3,"channelID":"c","extra":[1]}],"messageType":"Ack"}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            let general = parse_ack(value.as_object().unwrap()).unwrap();
            assert_eq!(parse_well_formed_ack(text), Some(general), "{text}");
        }
        for not_fast in [
            r#"["ack",[{"channelID":"a","version":"x"}]]"#,
            r#"{"messageType":"ack","updates":[{"channelID":null,"version":"x"}]}"#,
            r#"{"messageType":"nack","updates":[]}"#,
        ] {
            assert_eq!(parse_well_formed_ack(not_fast), None, "{not_fast}");
        }
        assert!(parse(r#"["ack",[{"channelID":"a","version":"x"}]]"#).is_err());
    }

    #[test]
    fn rejects_bad_input_cleanly() {
        for bad in [
            "",
            "nope",
            "[]",
            "1",
            r#"{"messageType":5}"#,
            r#"{"messageType":"bogus"}"#,
            r#"{"messageType":"register"}"#,
            r#"{"messageType":"register","channelID":3}"#,
            r#"{"messageType":"hello","use_webpush":"yes"}"#,
            r#"{"messageType":"ack","updates":[{"channelID":"a","version":-1}]}"#,
            r#"{"messageType":"ack","updates":[{"channelID":"a","version":1e400}]}"#,
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
