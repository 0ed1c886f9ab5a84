//! AS requests: notify, delete, message state (SPEC §4).

use super::*;

/// A 410 is final (an unregistered channel never comes back): a sender, or
/// a cache in front of Herald, may remember it for a day instead of asking
/// again. autopush sends the same.
const GONE_CACHE_CONTROL: &str = "max-age=86400";

impl Shard {
    pub fn on_push(&mut self, now_ms: Millis, request: RequestId, push: PushRequest) {
        if self.needs_load(push.uaid()) {
            return self.park_request(request, push);
        }
        let (after, response) = match push {
            PushRequest::Notify {
                uaid,
                channel,
                key_hash,
                notification,
            } => self.on_notify(now_ms, uaid, channel, key_hash, notification),
            PushRequest::DeleteMessage(claims) => self.on_delete(now_ms, claims),
            PushRequest::MessageState(claims) => (None, self.message_state(now_ms, claims)),
            PushRequest::AppShare {
                uaid,
                channel,
                notification,
            } => self.app_share(now_ms, uaid, channel, notification),
        };
        self.actions.push_back(Action::Reply {
            request,
            after,
            response,
        });
    }

    pub(super) fn on_notify(
        &mut self,
        now_ms: Millis,
        uaid: Uaid,
        channel: ChannelId,
        key_hash: Option<KeyHash>,
        notification: Notification,
    ) -> (Option<Lsn>, HttpResponse) {
        let gone = || {
            HttpResponse::error(
                410,
                errno::ENDPOINT_GONE,
                "this subscription is no longer valid",
            )
            .with_header("Cache-Control", GONE_CACHE_CONTROL.to_owned())
        };
        let Some(ua) = self.uas.get(&uaid) else {
            return (None, gone());
        };
        let Some(state) = ua.channels.get(&channel) else {
            return (None, gone());
        };
        if state.key_hash != key_hash {
            return (None, gone());
        }
        if self.store_failed {
            return (
                None,
                HttpResponse::error(503, errno::STORAGE_FAILED, "storage unavailable"),
            );
        }
        // Before anything is stored: a refused notification leaves no trace.
        let endpoint = Endpoint::Channel(uaid, channel);
        if let Err(limited) = self.endpoint_rates.check(endpoint, now_ms) {
            self.stats.channel_rate_limited += 1;
            let message = "too many notifications for this subscription";
            return (None, HttpResponse::rate_limited(message, limited));
        }
        self.stats.notifications_in += 1;
        let mut body = notification.body;
        if let MessageBody::Version(version) = &mut body {
            if *version == VERSION_FROM_CLOCK {
                *version = now_ms;
            }
            if Some(*version) <= state.version {
                // Not newer: accepted, nothing to send (SPEC §4.1).
                return (
                    self.next_lsn.checked_sub(1),
                    HttpResponse::json(200, "{}".to_owned()),
                );
            }
        }
        let connected = ua.conn;
        let web_push = notification.web_push;
        let ttl_s = notification.ttl_s.unwrap_or(0);
        // RFC 8030 §5.2: TTL=0 is delivered now or never; it is not stored.
        let stored = !(web_push && ttl_s == 0);
        let seq = next_seq(ua, now_ms, stored);
        let message = StoredMessage {
            uaid,
            channel,
            seq,
            arrived_ms: now_ms,
            expires_ms: notification
                .ttl_s
                .map_or(0, |ttl_s| now_ms.saturating_add(ttl_s.saturating_mul(1000))),
            urgency: notification.urgency,
            topic: notification.topic,
            body,
        };
        let after = if !stored {
            if let Some(ua) = self.uas.get_mut(&uaid) {
                ua.next_seq = seq + 1;
            }
            if let Some(conn) = connected {
                self.send_messages(conn, &[&message]);
            }
            self.next_lsn.checked_sub(1)
        } else {
            Some(self.store_and_deliver(now_ms, &message, connected))
        };
        if !web_push {
            return (after, HttpResponse::json(200, "{}".to_owned()));
        }
        let location = format!(
            "{}/m/{}",
            self.config.endpoint_url.trim_end_matches('/'),
            self.keys.message_id(&uaid, &channel, seq)
        );
        let response = if notification.respond_async {
            HttpResponse::json(202, String::new()).with_header(
                "Link",
                format!("<{location}>; rel=\"urn:ietf:params:push:receipt\""),
            )
        } else {
            HttpResponse::json(201, String::new())
        };
        (
            after,
            response
                .with_header("Location", location)
                .with_header("TTL", ttl_s.to_string()),
        )
    }

    /// What storing `incoming` displaces: older SimplePush versions on its
    /// channel and messages with its Topic (replaced), and at the pending limit
    /// the oldest message of the lowest urgency present (dropped).
    pub(super) fn displaced_by(
        &mut self,
        now_ms: Millis,
        uaid: Uaid,
        incoming: &StoredMessage,
    ) -> Vec<(u64, ChannelId, Removal)> {
        self.purge_expired(now_ms, uaid);
        let Some(ua) = self.uas.get(&uaid) else {
            return Vec::new();
        };
        let replaces = |old: &StoredMessage| incoming.replaces(old);
        let mut displaced: Vec<(u64, ChannelId, Removal)> = ua
            .pending
            .values()
            .filter(|pending| replaces(&pending.message))
            .map(|pending| {
                (
                    pending.message.seq,
                    pending.message.channel,
                    Removal::Replaced,
                )
            })
            .collect();
        let remaining = ua.pending.len() - displaced.len();
        if remaining >= self.config.limits.pending_per_uaid_max {
            let victim = ua
                .pending
                .values()
                .filter(|pending| !replaces(&pending.message))
                .min_by_key(|pending| (pending.message.urgency, pending.message.seq));
            if let Some(pending) = victim {
                self.stats.pending_dropped += 1;
                displaced.push((
                    pending.message.seq,
                    pending.message.channel,
                    Removal::Dropped,
                ));
            }
        }
        displaced
    }

    pub(super) fn on_delete(
        &mut self,
        now_ms: Millis,
        claims: MessageClaims,
    ) -> (Option<Lsn>, HttpResponse) {
        let present = self
            .uas
            .get(&claims.uaid)
            .and_then(|ua| ua.pending.get(&claims.seq))
            .is_some_and(|pending| {
                pending.message.channel == claims.channel && !pending.message.is_expired(now_ms)
            });
        if !present {
            return (
                None,
                HttpResponse::error(404, errno::MESSAGE_NOT_FOUND, "no such pending message"),
            );
        }
        if self.store_failed {
            return (
                None,
                HttpResponse::error(503, errno::STORAGE_FAILED, "storage unavailable"),
            );
        }
        let record = Record::MessageRemoved {
            uaid: claims.uaid,
            channel: claims.channel,
            seq: claims.seq,
            reason: Removal::Deleted,
        };
        let lsn = self.append(record);
        (
            Some(lsn),
            HttpResponse {
                status: 204,
                content_type: "application/json",
                headers: Vec::new(),
                body: String::new(),
            },
        )
    }

    /// `GET /m/<id>`: stored | delivered | acked | expired (SPEC §4.2).
    pub(super) fn message_state(&self, now_ms: Millis, claims: MessageClaims) -> HttpResponse {
        let pending = self
            .uas
            .get(&claims.uaid)
            .and_then(|ua| ua.pending.get(&claims.seq));
        let state = match (pending, self.outcomes.get(&(claims.uaid, claims.seq))) {
            (Some(pending), _) if pending.message.is_expired(now_ms) => "expired",
            (Some(pending), _) if pending.sent => "delivered",
            (Some(_), _) => "stored",
            (None, Some(Removal::Acked)) => "acked",
            (None, Some(Removal::Deleted)) | (None, None) => {
                return HttpResponse::error(404, errno::MESSAGE_NOT_FOUND, "no such message");
            }
            (None, Some(_)) => "expired",
        };
        HttpResponse::json(200, json!({"state": state}).to_string())
    }
}
