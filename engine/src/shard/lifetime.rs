//! When a UA is recorded, seen, forgotten and expired (issue 13: bounded
//! growth).
//!
//! A UAID authenticates itself, so accepting one needs no record: a UA
//! without channels lives in memory only while it is connected, and the log
//! hears of it (`UaidCreated`) only with its first channel. A recorded UA's
//! newest `UaidCreated` is also its last-seen time; one not seen for
//! `ua_expiry_days` is dropped at the next compaction, channels, messages
//! and all.

use super::*;

impl Shard {
    /// A socket named `uaid` (hello, registerUA). An unknown UA is kept in
    /// memory only, until it registers a channel or its socket goes.
    pub(super) fn ua_for_socket(&mut self, now_ms: Millis, uaid: Uaid) {
        if self.uas.contains_key(&uaid) {
            self.seen(uaid, now_ms);
        } else {
            self.uas.insert(uaid, UserAgent::default());
        }
    }

    /// Before a UA's first durable state (a channel or web app): its
    /// `UaidCreated`, then the wakeup data it gave while it had nothing to
    /// keep (a UA without channels cannot be sent anything to wake it for).
    pub(super) fn record_ua(&mut self, now_ms: Millis, uaid: Uaid) {
        let wakeup = match self.uas.get(&uaid) {
            Some(ua) if !ua.recorded() => ua.wakeup.as_deref().cloned(),
            _ => return,
        };
        self.append(Record::UaidCreated {
            uaid,
            at_ms: now_ms,
        });
        if wakeup.is_some() {
            self.append(Record::WakeupSet { uaid, wakeup });
        }
    }

    /// Whether a change to `uaid`'s state goes to the log (else it is kept
    /// in memory only, like the UA).
    pub(super) fn is_recorded(&self, uaid: Uaid) -> bool {
        self.uas.get(&uaid).is_some_and(UserAgent::recorded)
    }

    /// The UA's socket `conn` is gone, its last sign of life at `at_ms`. A UA
    /// with nothing to keep leaves memory; another one was seen.
    pub(super) fn ua_left(&mut self, uaid: Uaid, conn: ConnId, at_ms: Millis) {
        let Some(ua) = self.uas.get_mut(&uaid) else {
            return;
        };
        if ua.conn != Some(conn) {
            // A newer socket took over the UA.
            return;
        }
        ua.conn = None;
        if ua.holds_nothing() {
            self.uas.remove(&uaid);
        } else {
            self.seen(uaid, at_ms);
        }
        self.release_if_unused(uaid);
    }

    /// `uaid` was seen at `at_ms`. A recorded UA gets a new `UaidCreated`
    /// once its last one is `ua_seen_refresh_ms` old, so a UA that connects
    /// all day costs a few records per expiry period, not one per connection.
    fn seen(&mut self, uaid: Uaid, at_ms: Millis) {
        let refresh_ms = self.config.limits.ua_seen_refresh_ms();
        let stale = self
            .uas
            .get(&uaid)
            .is_some_and(|ua| ua.seen_ms != 0 && at_ms.saturating_sub(ua.seen_ms) >= refresh_ms);
        if stale && !self.store_failed {
            self.append(Record::UaidCreated { uaid, at_ms });
        }
    }

    /// Whether `ua` has been away longer than `ua_expiry_days`.
    fn expired(&self, ua: &UserAgent, now_ms: Millis) -> bool {
        ua.conn.is_none()
            && ua.seen_ms != 0
            && self
                .config
                .limits
                .ua_expiry_ms()
                .is_some_and(|expiry_ms| now_ms.saturating_sub(ua.seen_ms) >= expiry_ms)
    }

    /// Whether a snapshot taken at `now_ms` writes `ua`.
    pub(super) fn kept_by_snapshot(&self, ua: &UserAgent, now_ms: Millis) -> bool {
        !ua.holds_nothing() && !self.expired(ua, now_ms)
    }

    /// Drops from memory what a snapshot taken at `now_ms` leaves out: UAs
    /// not seen for `ua_expiry_days` (counted in `user_agents_expired`) and
    /// disconnected UAs with nothing to keep (a log written before UAs
    /// without channels went unrecorded has them). A compaction calls this
    /// as it starts, so that memory and the compacted log agree: a UA that
    /// comes back is a new one on both.
    pub fn expire_user_agents(&mut self, now_ms: Millis) {
        let expired: Vec<Uaid> = self
            .uas
            .iter()
            .filter(|(_, ua)| self.expired(ua, now_ms))
            .map(|(uaid, _)| *uaid)
            .collect();
        for uaid in expired {
            self.stats.user_agents_expired += 1;
            self.forget_user_agent(uaid);
        }
        self.uas
            .retain(|_, ua| ua.conn.is_some() || !ua.holds_nothing());
    }
}

impl UserAgent {
    /// No channel, so nothing can be sent to it: nothing to keep once it
    /// is disconnected.
    fn holds_nothing(&self) -> bool {
        self.channels.is_empty() && self.pending.is_empty()
    }

    /// The log knows the UA (it has a `UaidCreated`, or channels from a
    /// log that had none).
    fn recorded(&self) -> bool {
        self.seen_ms != 0 || !self.channels.is_empty()
    }
}

/// The last-seen time a snapshot writes for `ua`: now if it is connected
/// (or its time is unknown), else the time its log holds.
pub(super) fn seen_in_snapshot(ua: &UserAgent, now_ms: Millis) -> Millis {
    if ua.conn.is_some() || ua.seen_ms == 0 {
        now_ms
    } else {
        ua.seen_ms
    }
}
