//! A stored notification and its parts.

use crate::{ChannelId, KeyHash, Millis, Uaid};

/// RFC 8030 §5.3 urgency. Order matters: `High` sorts last so that
/// `max()` picks it, and [`Urgency::rank`] puts it first in a queue.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

impl Urgency {
    pub fn parse(text: &str) -> Option<Urgency> {
        match text {
            "very-low" => Some(Urgency::VeryLow),
            "low" => Some(Urgency::Low),
            "normal" => Some(Urgency::Normal),
            "high" => Some(Urgency::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Option<Urgency> {
        [
            Urgency::VeryLow,
            Urgency::Low,
            Urgency::Normal,
            Urgency::High,
        ]
        .get(value as usize)
        .copied()
    }
}

/// What the AS sent, in the form it sent it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MessageBody {
    /// SimplePush: the AS's version number; only the newest per channel matters.
    Version(u64),
    /// Seed 001's desktop notification: a text body and an optional TTL.
    Desktop { body: String, ttl_s: Option<u64> },
    /// Web Push: opaque ciphertext (possibly empty) and its encoding headers.
    WebPush {
        data: Vec<u8>,
        encoding: Option<String>,
        encryption: Option<String>,
        crypto_key: Option<String>,
    },
    /// Seed 003's extended notification (SPEC §3.6), signature already checked.
    Extended {
        id: String,
        message: String,
        timestamp_ms: Millis,
        priority: u8,
    },
}

/// A notification held for a UA until it is acked or expires.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredMessage {
    pub uaid: Uaid,
    pub channel: ChannelId,
    /// Per-UAID sequence number; with (uaid, channel) it names the message.
    pub seq: u64,
    pub arrived_ms: Millis,
    /// 0 means "never expires" (SimplePush versions live until replaced).
    pub expires_ms: Millis,
    pub urgency: Urgency,
    pub topic: Option<String>,
    pub body: MessageBody,
}

impl StoredMessage {
    pub fn is_expired(&self, now_ms: Millis) -> bool {
        self.expires_ms != 0 && now_ms >= self.expires_ms
    }

    /// Whether storing `self` replaces `older` (SPEC §7): a SimplePush
    /// version replaces the channel's older version, a message with a Topic
    /// the channel's older one with the same Topic.
    pub fn replaces(&self, older: &StoredMessage) -> bool {
        older.channel == self.channel
            && match (&older.body, &self.body) {
                (MessageBody::Version(_), MessageBody::Version(_)) => true,
                _ => self.topic.is_some() && older.topic == self.topic,
            }
    }
}

/// Why a stored message stopped being pending.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Removal {
    Acked,
    Deleted,
    Expired,
    /// Replaced by a newer SimplePush version or a message with the same Topic.
    Replaced,
    /// Dropped to keep the UA under `max_pending_per_uaid`.
    Dropped,
    /// Its channel was unregistered.
    Unregistered,
}

impl Removal {
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Option<Removal> {
        [
            Removal::Acked,
            Removal::Deleted,
            Removal::Expired,
            Removal::Replaced,
            Removal::Dropped,
            Removal::Unregistered,
        ]
        .get(value as usize)
        .copied()
    }
}

/// Where to send the UDP datagram that wakes a sleeping UA (SPEC §5).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WakeupInfo {
    pub ip: std::net::IpAddr,
    pub port: u16,
    pub mcc: String,
    pub mnc: String,
    pub netid: String,
}

/// A channel's registration as the WAL keeps it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Registration {
    pub uaid: Uaid,
    pub channel: ChannelId,
    pub key_hash: Option<KeyHash>,
}
