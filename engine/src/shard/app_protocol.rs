//! The extended protocol's UA side and app notifications (SPEC §3.6).

use super::*;

impl Shard {
    /// A socket that negotiated `push-extended-notification`.
    pub fn on_open_extended(&mut self, now_ms: Millis, conn: ConnId) {
        self.on_open(now_ms, conn);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.extended = true;
        }
    }

    pub(super) fn on_extended_text(
        &mut self,
        now_ms: Millis,
        conn: ConnId,
        bound: Option<Uaid>,
        text: &str,
    ) {
        let message = match extended::parse(text) {
            Ok(message) => message,
            Err(error) => {
                self.stats.protocol_errors += 1;
                return self.send(conn, None, error.reply());
            }
        };
        let not_registered = |message_type: &str| {
            extended::error_reply(401, "registerUA first on this socket", Some(message_type))
        };
        match (message, bound) {
            (ExtendedMessage::RegisterUa { uatoken, wakeup }, _) => {
                self.on_register_ua(now_ms, conn, bound, &uatoken, wakeup, text)
            }
            (
                ExtendedMessage::RegisterWa {
                    uatoken,
                    watoken,
                    public_key_der,
                },
                Some(uaid),
            ) => {
                if self.keys.check_uaid(&uatoken) != Some(uaid) {
                    let reply =
                        extended::error_reply(401, extended::BAD_UA_TOKEN, Some("registerWA"));
                    return self.send(conn, None, reply);
                }
                self.on_register_wa(now_ms, conn, uaid, &watoken, public_key_der)
            }
            (ExtendedMessage::GetAllMessages, Some(uaid)) => {
                self.purge_expired(now_ms, uaid);
                let messages: Vec<StoredMessage> = self
                    .uas
                    .get(&uaid)
                    .map(|ua| {
                        ua.pending
                            .values()
                            .map(|pending| pending.message.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let objects = messages
                    .iter()
                    .filter(|message| matches!(message.body, MessageBody::Extended { .. }))
                    .map(|message| self.extended_object(message))
                    .collect();
                self.send(conn, None, extended::all_messages(objects));
            }
            (ExtendedMessage::Ack { message_id }, Some(uaid)) => {
                if let Some(claims) = self.keys.open_message_id(&message_id) {
                    let present = self
                        .uas
                        .get(&uaid)
                        .is_some_and(|ua| ua.pending.contains_key(&claims.seq));
                    if claims.uaid == uaid && present && !self.store_failed {
                        self.stats.acks += 1;
                        self.append(Record::MessageRemoved {
                            uaid,
                            channel: claims.channel,
                            seq: claims.seq,
                            reason: Removal::Acked,
                        });
                    }
                }
            }
            (ExtendedMessage::RegisterWa { .. }, None) => {
                self.send(conn, None, not_registered("registerWA"))
            }
            (ExtendedMessage::GetAllMessages, None) => {
                self.send(conn, None, not_registered("getAllMessages"))
            }
            (ExtendedMessage::Ack { .. }, None) => self.send(conn, None, not_registered("ack")),
        }
    }

    /// registerUA binds the socket to the UA its token names, like a hello:
    /// on the owning shard, the newer socket wins, pending messages follow.
    pub(super) fn on_register_ua(
        &mut self,
        now_ms: Millis,
        conn: ConnId,
        bound: Option<Uaid>,
        uatoken: &str,
        wakeup: Option<WakeupInfo>,
        text: &str,
    ) {
        let Some(uaid) = self.keys.check_uaid(uatoken) else {
            let reply = extended::error_reply(401, extended::BAD_UA_TOKEN, Some("registerUA"));
            return self.send(conn, None, reply);
        };
        if bound.is_some_and(|bound| bound != uaid) {
            let reply = extended::error_reply(
                409,
                "this socket is registered for another UA",
                Some("registerUA"),
            );
            return self.send(conn, None, reply);
        }
        if self.hand_off_if_foreign(conn, uaid, text) {
            return;
        }
        if self.needs_load(uaid) {
            // Cluster mode: claimed and loaded like a hello's UA (the last
            // socket wins, its web apps and messages come with it).
            return self.park_hello(conn, uaid, text);
        }
        self.ua_for_socket(now_ms, uaid);
        self.set_wakeup(uaid, wakeup);
        let previous = self.uas.get_mut(&uaid).and_then(|ua| ua.conn.replace(conn));
        if let Some(previous) = previous.filter(|previous| *previous != conn) {
            self.close(previous, close::NORMAL, "another socket took over this UA");
            if let Some(ua) = self.uas.get_mut(&uaid) {
                ua.conn = Some(conn);
            }
        }
        self.bind(conn, uaid);
        self.send(conn, None, extended::registered("registerUA"));
        if self.uas.get(&uaid).is_some_and(|ua| ua.wakeup.is_some()) {
            self.actions.push_back(Action::Awake { uaid });
            let sleep_at = now_ms + self.config.limits.wakeup_idle_ms;
            self.timers.insert((sleep_at, Timer::SleepIdle(conn)));
        }
        self.deliver_pending(now_ms, conn, uaid);
    }

    pub(super) fn on_register_wa(
        &mut self,
        now_ms: Millis,
        conn: ConnId,
        uaid: Uaid,
        watoken: &str,
        public_key_der: Vec<u8>,
    ) {
        let (channel, url_token) = extended::app_token(watoken, &public_key_der);
        let url = self.app_url(&url_token);
        let registered = self
            .web_apps
            .get(&channel)
            .is_some_and(|app| app.uaids.contains(&uaid));
        let after = if registered {
            self.next_lsn.checked_sub(1)
        } else if self.store_failed {
            let reply = extended::error_reply(503, "Try again later", Some("registerWA"));
            return self.send(conn, None, reply);
        } else if self
            .uas
            .get(&uaid)
            .is_some_and(|ua| ua.channels.len() >= self.config.limits.channels_per_uaid_max)
        {
            let reply =
                extended::error_reply(429, "too many web apps on this UA", Some("registerWA"));
            return self.send(conn, None, reply);
        } else {
            self.stats.registers += 1;
            self.record_ua(now_ms, uaid);
            Some(self.append(Record::WebAppRegistered {
                uaid,
                channel,
                url_token,
                public_key_der,
            }))
        };
        self.send(conn, after, extended::registered_app(&url));
    }

    /// An AS posted to an app url. Every shard hears it; each stores it for
    /// its own UAs that registered the app. The answer: 404 when this shard
    /// has none of them, 401 for a bad signature, else 200 once durable.
    pub fn on_app_notify(
        &mut self,
        now_ms: Millis,
        request: RequestId,
        channel: ChannelId,
        notification: extended::AppNotification,
    ) {
        let (after, response) = self.app_notify(now_ms, channel, notification);
        self.actions.push_back(Action::Reply {
            request,
            after,
            response,
        });
    }

    pub(super) fn app_notify(
        &mut self,
        now_ms: Millis,
        channel: ChannelId,
        notification: extended::AppNotification,
    ) -> (Option<Lsn>, HttpResponse) {
        if let Some(refusal) =
            self.app_refusal(now_ms, channel, &notification, Endpoint::App(channel))
        {
            return (None, refusal);
        }
        let uaids: Vec<Uaid> = self.web_apps[&channel].uaids.iter().copied().collect();
        let mut after = None;
        for uaid in uaids {
            if self.uas.contains_key(&uaid) {
                after = Some(self.store_app_message(now_ms, uaid, channel, &notification));
            }
        }
        (after, extended::accepted())
    }

    /// One UA's share of an app notification (cluster mode): stored for
    /// `uaid` if it registered the app. Its rate is that UA's channel's, as
    /// for any push to one endpoint.
    pub(super) fn app_share(
        &mut self,
        now_ms: Millis,
        uaid: Uaid,
        channel: ChannelId,
        notification: extended::AppNotification,
    ) -> (Option<Lsn>, HttpResponse) {
        let member = self
            .web_apps
            .get(&channel)
            .is_some_and(|app| app.uaids.contains(&uaid));
        if !member || !self.uas.contains_key(&uaid) {
            return (None, extended::as_error(404, "No valid AppToken"));
        }
        let rate = Endpoint::Channel(uaid, channel);
        if let Some(refusal) = self.app_refusal(now_ms, channel, &notification, rate) {
            return (None, refusal);
        }
        let after = self.store_app_message(now_ms, uaid, channel, &notification);
        (Some(after), extended::accepted())
    }

    /// Why an app notification is not taken, if it is not: no such app here,
    /// a signature the app's key does not verify, the store failed, or the
    /// rate of `rate` is spent.
    fn app_refusal(
        &mut self,
        now_ms: Millis,
        channel: ChannelId,
        notification: &extended::AppNotification,
        rate: Endpoint,
    ) -> Option<HttpResponse> {
        let Some(app) = self.web_apps.get(&channel) else {
            return Some(extended::as_error(404, "No valid AppToken"));
        };
        if !extended::signature_is_valid(
            &app.public_key_der,
            &notification.message,
            &notification.signature,
        ) {
            return Some(extended::as_error(
                401,
                "Bad signature, dropping notification",
            ));
        }
        if self.store_failed {
            return Some(extended::as_error(503, "Try again later"));
        }
        if let Err(limited) = self.endpoint_rates.check(rate, now_ms) {
            self.stats.channel_rate_limited += 1;
            let refusal = extended::as_error(429, "Too many notifications for this app");
            return Some(refusal.with_retry_after(limited));
        }
        None
    }

    /// Stores (and delivers, if its UA is connected) `uaid`'s copy of an
    /// app notification; `uaid` must be held here.
    fn store_app_message(
        &mut self,
        now_ms: Millis,
        uaid: Uaid,
        channel: ChannelId,
        notification: &extended::AppNotification,
    ) -> Lsn {
        let ua = &self.uas[&uaid];
        self.stats.notifications_in += 1;
        let seq = next_seq(ua, now_ms, true);
        let connected = ua.conn;
        let message = StoredMessage {
            uaid,
            channel,
            seq,
            arrived_ms: now_ms,
            expires_ms: now_ms.saturating_add(notification.ttl_s.saturating_mul(1000)),
            urgency: Urgency::Normal,
            topic: None,
            body: MessageBody::Extended {
                id: notification.id.clone(),
                message: notification.message.clone(),
                timestamp_ms: notification.timestamp_ms,
                priority: notification.priority,
            },
        };
        self.store_and_deliver(now_ms, &message, connected)
    }
}
