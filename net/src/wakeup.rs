//! The wakeup core's client side: what a shard calls to have a sleeping UA
//! woken (SPEC §5).
//!
//! PLACEHOLDER: the wakeup core executor is being built; until then these
//! calls only log.

use herald_engine::message::{Urgency, WakeupInfo};
use herald_engine::Uaid;

#[derive(Clone, Default)]
pub struct WakeupClient {}

impl WakeupClient {
    /// Queue a wakeup for `uaid` (coalesced while one is in flight).
    pub fn wake(&self, uaid: Uaid, target: WakeupInfo, urgency: Urgency) {
        tracing::debug!(uaid = %uaid.to_hex(), ip = %target.ip, port = target.port, ?urgency, "wakeup requested");
    }

    /// `uaid` reconnected: stop retrying its wakeup.
    pub fn awake(&self, uaid: Uaid) {
        tracing::debug!(uaid = %uaid.to_hex(), "awake");
    }
}
