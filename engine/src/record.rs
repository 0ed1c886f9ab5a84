//! What a shard writes to its write-ahead log. Every state change that an
//! acknowledgement depends on is one of these records; replaying them in order
//! through [`crate::shard::Shard::apply`] rebuilds the shard's state.

use crate::message::{Registration, Removal, StoredMessage, WakeupInfo};
use crate::{ChannelId, Millis, Uaid};

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Record {
    UaidCreated {
        uaid: Uaid,
        at_ms: Millis,
    },
    ChannelRegistered(Registration),
    ChannelUnregistered {
        uaid: Uaid,
        channel: ChannelId,
    },
    MessageStored(StoredMessage),
    MessageRemoved {
        uaid: Uaid,
        channel: ChannelId,
        seq: u64,
        reason: Removal,
    },
    /// The UA asked for UDP wakeup (None: it no longer does).
    WakeupSet {
        uaid: Uaid,
        wakeup: Option<WakeupInfo>,
    },
    /// The newest SimplePush version a channel has seen. Written by snapshots
    /// so that compaction does not forget it once its message was acked.
    ChannelVersion {
        uaid: Uaid,
        channel: ChannelId,
        version: u64,
    },
    /// An extended UA registered a web app (SPEC §3.6); `channel` and
    /// `url_token` derive from (watoken, key) and are the same on every UA.
    WebAppRegistered {
        uaid: Uaid,
        channel: ChannelId,
        url_token: String,
        public_key_der: Vec<u8>,
    },
}

impl Record {
    pub fn uaid(&self) -> Uaid {
        match self {
            Record::UaidCreated { uaid, .. }
            | Record::ChannelUnregistered { uaid, .. }
            | Record::MessageRemoved { uaid, .. }
            | Record::WakeupSet { uaid, .. }
            | Record::ChannelVersion { uaid, .. }
            | Record::WebAppRegistered { uaid, .. } => *uaid,
            Record::ChannelRegistered(registration) => registration.uaid,
            Record::MessageStored(message) => message.uaid,
        }
    }
}
