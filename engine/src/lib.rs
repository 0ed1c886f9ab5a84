//! Herald's engine: the sans-IO heart of a shard.
//!
//! Nothing here touches a socket, a file, a runtime or a clock. The shard state
//! machine ([`shard::Shard`]) takes decoded inputs together with the current
//! time and returns [`shard::Action`]s for the `net/` layer to carry out. That
//! makes every protocol rule testable deterministically, without sockets.

pub mod aesgcm_params;
pub mod extended;
pub mod identity;
pub mod limits;
pub mod message;
pub mod push;
pub mod rate;
pub mod record;
pub mod shard;
pub mod ua;
pub mod vapid;
pub mod wakeup_plan;

/// Unix time in milliseconds. Always passed in, never read from a clock here.
pub type Millis = u64;

/// Log sequence number: the position of a record in a shard's write-ahead log.
/// A reply that depends on a record may leave only once that LSN is durable.
pub type Lsn = u64;

/// A connection (UA WebSocket) as the net layer names it, unique per shard.
pub type ConnId = u64;

/// An AS request in flight, as the net layer names it, unique per shard.
pub type RequestId = u64;

/// A UAID: 16 bytes that are an AES block encrypted under the server's UAID key
/// (see [`identity`]); shown to the world as 32 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Uaid(pub [u8; 16]);

impl Uaid {
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        for byte in self.0 {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// Parses exactly 32 hex characters (either case), so that one UAID has
    /// one spelling up to case. Says nothing about authenticity: see
    /// [`identity::Keys::check_uaid`].
    pub fn from_hex(text: &str) -> Option<Uaid> {
        identity::unhex::<16>(text).map(Uaid)
    }

    /// The shard that owns this UAID out of `shards`. Computed from the public
    /// bytes so that any shard can route without decrypting.
    pub fn shard(&self, shards: usize) -> usize {
        let word = u64::from_le_bytes(self.0[..8].try_into().expect("16-byte uaid"));
        (word % shards.max(1) as u64) as usize
    }
}

/// A channel: one subscription of one app on one UA, a UUID chosen by the UA.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ChannelId(pub [u8; 16]);

impl ChannelId {
    /// Accepts a UUID in any case, hyphenated form only (what UAs send).
    pub fn parse(text: &str) -> Option<ChannelId> {
        if text.len() != 36 {
            return None;
        }
        uuid::Uuid::try_parse(text)
            .ok()
            .map(|id| ChannelId(*id.as_bytes()))
    }

    /// The stored, lower-case hyphenated form.
    pub fn to_text(&self) -> String {
        uuid::Uuid::from_bytes(self.0).hyphenated().to_string()
    }
}

/// SHA-256 of a channel's VAPID public key (raw uncompressed point bytes).
pub type KeyHash = [u8; 32];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uaid_has_one_hex_spelling_up_to_case() {
        let uaid = Uaid([0x0f; 16]);
        let hex = uaid.to_hex();
        assert_eq!(Uaid::from_hex(&hex), Some(uaid));
        assert_eq!(Uaid::from_hex(&hex.to_ascii_uppercase()), Some(uaid));
        // `u8::from_str_radix("+f", 16)` is 0x0f: a sign is not a digit.
        assert_eq!(Uaid::from_hex(&format!("+f{}", &hex[2..])), None);
        assert_eq!(Uaid::from_hex(&hex[1..]), None);
        assert_eq!(Uaid::from_hex(&format!("{hex}0")), None);
        assert_eq!(Uaid::from_hex(&"\u{e9}".repeat(16)), None);
    }
}
