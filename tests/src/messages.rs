//! Reading the JSON messages a UA receives.

use serde_json::Value;

use crate::util::b64url_decode;

/// The `data` of a Web Push notification, decoded.
pub fn notification_data(n: &Value) -> Vec<u8> {
    b64url_decode(
        n["data"]
            .as_str()
            .unwrap_or_else(|| panic!("notification has string data: {n}")),
    )
}

/// Flatten SimplePush-form messages (`notification` with `updates`) into
/// (channelID lower-cased, version) pairs. Panics on any other message.
pub fn sp_updates(msgs: &[Value]) -> Vec<(String, Value)> {
    let mut out = vec![];
    for m in msgs {
        assert_eq!(
            m["messageType"], "notification",
            "SimplePush notification: {m}"
        );
        let ups = m["updates"]
            .as_array()
            .unwrap_or_else(|| panic!("notification has an updates array: {m}"));
        for u in ups {
            let c = u["channelID"]
                .as_str()
                .unwrap_or_else(|| panic!("update has channelID: {u}"));
            out.push((c.to_ascii_lowercase(), u["version"].clone()));
        }
    }
    out
}

/// True when the JSON value is absent or null.
pub fn absent(v: &Value) -> bool {
    v.is_null()
}

/// Channel IDs compare case-insensitively (stored lower-case, any case accepted).
pub fn same_channel(a: &Value, b: &str) -> bool {
    a.as_str()
        .map(|a| a.eq_ignore_ascii_case(b))
        .unwrap_or(false)
}
