//! UA sockets: open, hello, register, unregister, ack, ping, close (SPEC §3.1–3.4).

use super::*;

impl Shard {
    /// A WebSocket upgrade completed on this shard.
    pub fn on_open(&mut self, now_ms: Millis, conn: ConnId) {
        let hello_deadline_ms = now_ms + self.config.limits.hello_timeout_ms;
        self.conns.insert(
            conn,
            Conn {
                uaid: None,
                timer_ms: hello_deadline_ms,
                web_push: false,
                last_activity_ms: now_ms,
                ping_window_start_ms: now_ms,
                pings_in_window: 0,
                broadcasts: Box::default(),
                retry_at_ms: 0,
                extended: false,
            },
        );
        self.timers
            .insert((hello_deadline_ms, Timer::HelloDeadline(conn)));
    }

    /// A socket handed over by another shard, with the hello it already read.
    pub fn on_adopted(&mut self, now_ms: Millis, conn: ConnId, hello: &str) {
        self.on_open(now_ms, conn);
        self.on_text(now_ms, conn, hello);
    }

    /// An extended-protocol socket handed over with its registerUA message.
    pub fn on_adopted_extended(&mut self, now_ms: Millis, conn: ConnId, register_ua: &str) {
        self.on_open_extended(now_ms, conn);
        self.on_text(now_ms, conn, register_ua);
    }

    /// The socket is gone (`now_ms` is 0 when the engine closed it itself).
    pub fn on_closed(&mut self, now_ms: Millis, conn: ConnId) {
        let Some(state) = self.remove_conn(conn) else {
            return;
        };
        for id in state.broadcasts.iter() {
            if let Some(subscribers) = self.broadcast_subscribers.get_mut(id) {
                subscribers.remove(&conn);
            }
        }
        if let Some(uaid) = state.uaid {
            self.ua_left(uaid, conn, now_ms.max(state.last_activity_ms));
        }
    }

    /// The socket broke the framing rules (too big, bad frame) or the UA
    /// closed it: answer with `code` and forget the connection.
    pub fn on_socket_error(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        if code != close::NORMAL {
            self.stats.protocol_errors += 1;
        }
        self.close(conn, code, reason);
    }

    pub fn on_text(&mut self, now_ms: Millis, conn: ConnId, text: &str) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        state.last_activity_ms = now_ms;
        let identified = state.uaid;
        if state.extended {
            return self.on_extended_text(now_ms, conn, identified, text);
        }
        let message = match ua::parse(text) {
            Ok(message) => message,
            Err(error) => {
                self.stats.protocol_errors += 1;
                return self.close(conn, close::PROTOCOL_ERROR, error.reason());
            }
        };
        match (identified, message) {
            (None, ClientMessage::Hello(hello)) => self.on_hello(now_ms, conn, hello, text),
            (Some(_), ClientMessage::Hello(_)) => {
                self.stats.protocol_errors += 1;
                self.close(conn, close::PROTOCOL_ERROR, "second hello on one socket");
            }
            (None, _) => {
                self.stats.protocol_errors += 1;
                self.close(
                    conn,
                    close::PROTOCOL_ERROR,
                    "the first message must be hello",
                );
            }
            (Some(uaid), ClientMessage::Register { channel_id, key }) => {
                self.on_register(now_ms, conn, uaid, &channel_id, key.as_deref())
            }
            (Some(uaid), ClientMessage::Unregister { channel_id }) => {
                self.on_unregister(conn, uaid, &channel_id)
            }
            (Some(uaid), ClientMessage::Ack(updates)) => self.on_ack(conn, uaid, &updates),
            (Some(_), ClientMessage::Nack { .. }) => self.stats.nacks += 1,
            (Some(_), ClientMessage::Ping) => self.on_ping(now_ms, conn, false),
            (Some(_), ClientMessage::TextPing) => self.on_ping(now_ms, conn, true),
            (Some(_), ClientMessage::BroadcastSubscribe(wanted)) => {
                let reply = self.subscribe_broadcasts(conn, &wanted);
                if !reply.is_empty() {
                    self.send(conn, None, ua::broadcast_message(&reply));
                }
            }
        }
    }

    pub(super) fn close(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        self.actions.push_back(Action::Close { conn, code, reason });
        // The socket is gone for the engine now; net reports nothing more for it.
        self.on_closed(0, conn);
    }

    pub(super) fn send(&mut self, conn: ConnId, after: Option<Lsn>, text: String) {
        self.actions.push_back(Action::Send { conn, after, text });
    }

    /// SPEC §8: a socket whose UA another shard owns goes there, with the
    /// message that named the UA; this shard forgets it. True if it went.
    pub(super) fn hand_off_if_foreign(&mut self, conn: ConnId, uaid: Uaid, text: &str) -> bool {
        let owner = uaid.shard(self.config.shards);
        if owner == self.config.index {
            return false;
        }
        self.stats.hand_offs += 1;
        self.remove_conn(conn);
        self.actions.push_back(Action::HandOff {
            conn,
            shard: owner,
            hello: text.to_owned(),
        });
        true
    }

    pub(super) fn on_hello(&mut self, now_ms: Millis, conn: ConnId, hello: Hello, text: &str) {
        let claimed = hello
            .uaid
            .as_deref()
            .and_then(|uaid| self.keys.check_uaid(uaid));
        if claimed.is_some_and(|uaid| self.hand_off_if_foreign(conn, uaid, text)) {
            return;
        }
        let uaid = match claimed {
            Some(uaid) if self.needs_load(uaid) => return self.park_hello(conn, uaid, text),
            Some(uaid) => uaid,
            None => {
                let minted =
                    self.keys
                        .mint_uaid(&mut self.rng, self.config.index, self.config.shards);
                self.mark_resident(minted);
                minted
            }
        };
        self.ua_for_socket(now_ms, uaid);
        if claimed.is_some() {
            if let Some(listed) = &hello.channel_ids {
                self.sync_channels(now_ms, uaid, listed);
            }
        }
        let status = self.set_wakeup(uaid, hello.wakeup);
        let previous = self.uas.get_mut(&uaid).and_then(|ua| ua.conn.replace(conn));
        if let Some(previous) = previous.filter(|previous| *previous != conn) {
            self.close(
                previous,
                close::NORMAL,
                "another socket took over this UAID",
            );
            if let Some(ua) = self.uas.get_mut(&uaid) {
                ua.conn = Some(conn);
            }
        }
        self.bind(conn, uaid);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.web_push = hello.use_webpush;
        }
        let broadcasts = self.subscribe_broadcasts(conn, &hello.broadcasts);
        self.send(
            conn,
            None,
            ua::hello_reply(&uaid.to_hex(), status, hello.use_webpush, &broadcasts),
        );
        if self.uas.get(&uaid).is_some_and(|ua| ua.wakeup.is_some()) {
            self.actions.push_back(Action::Awake { uaid });
            let sleep_at = now_ms + self.config.limits.wakeup_idle_ms;
            self.timers.insert((sleep_at, Timer::SleepIdle(conn)));
        }
        self.deliver_pending(now_ms, conn, uaid);
        self.schedule_ws_ping(now_ms, conn);
    }

    /// The socket's next WebSocket ping, one interval from `now_ms`.
    pub(super) fn schedule_ws_ping(&mut self, now_ms: Millis, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.timer_ms = now_ms + self.config.limits.ws_ping_interval_ms;
            self.timers.insert((state.timer_ms, Timer::WsPing(conn)));
        }
    }

    /// Forgets `conn` and its standing timer (see `Conn::timer_ms`).
    fn remove_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let state = self.conns.remove(&conn)?;
        self.timers
            .remove(&(state.timer_ms, Timer::HelloDeadline(conn)));
        self.timers.remove(&(state.timer_ms, Timer::WsPing(conn)));
        Some(state)
    }

    /// The socket named its UA (hello, registerUA). Its hello deadline can no
    /// longer close it, so the timer goes: an idle socket keeps one timer.
    pub(super) fn bind(&mut self, conn: ConnId, uaid: Uaid) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.uaid = Some(uaid);
            let deadline = (state.timer_ms, Timer::HelloDeadline(conn));
            self.timers.remove(&deadline);
        }
    }

    /// SPEC §3.1: the UA's list wins: drop what it forgot, recreate what we lost.
    pub(super) fn sync_channels(&mut self, now_ms: Millis, uaid: Uaid, listed: &[String]) {
        let wanted: BTreeSet<ChannelId> = listed
            .iter()
            .filter_map(|text| ChannelId::parse(text))
            .collect();
        let have: BTreeSet<ChannelId> = self
            .uas
            .get(&uaid)
            .map(|ua| ua.channels.keys().copied().collect())
            .unwrap_or_default();
        for channel in have.difference(&wanted) {
            self.append(Record::ChannelUnregistered {
                uaid,
                channel: *channel,
            });
        }
        // Channels kept after the removals above count against the limit too.
        let kept = have.intersection(&wanted).count();
        let room = self
            .config
            .limits
            .channels_per_uaid_max
            .saturating_sub(kept);
        let added: Vec<ChannelId> = wanted.difference(&have).take(room).copied().collect();
        if !added.is_empty() {
            self.record_ua(now_ms, uaid);
        }
        for channel in added {
            self.append(Record::ChannelRegistered(Registration {
                uaid,
                channel,
                key_hash: None,
            }));
        }
    }

    /// Returns the hello status: 201 when the UA joins UDP wakeup.
    pub(super) fn set_wakeup(&mut self, uaid: Uaid, wakeup: Option<WakeupInfo>) -> u16 {
        let routed = wakeup.filter(|info| {
            let network = format!("{}-{}", info.mcc, info.mnc);
            self.config.wakeup_networks.contains(&network)
        });
        let current = self.uas.get(&uaid).and_then(|ua| ua.wakeup.as_deref());
        let status = if routed.is_some() { 201 } else { 200 };
        if current != routed.as_ref() {
            let record = Record::WakeupSet {
                uaid,
                wakeup: routed,
            };
            // A UA without channels keeps it in memory, until it has one.
            if self.is_recorded(uaid) {
                self.append(record);
            } else {
                self.apply(&record);
            }
        }
        status
    }

    pub(super) fn on_ping(&mut self, now_ms: Millis, conn: ConnId, text_form: bool) {
        let max = self.config.limits.pings_per_minute_max;
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if now_ms.saturating_sub(state.ping_window_start_ms) >= PING_WINDOW_MS {
            state.ping_window_start_ms = now_ms;
            state.pings_in_window = 0;
        }
        state.pings_in_window += 1;
        if state.pings_in_window > max {
            self.stats.ping_rate_closes += 1;
            return self.close(conn, close::POLICY, "too many pings");
        }
        let reply = if text_form { ua::PONG } else { ua::PING_REPLY };
        self.send(conn, None, reply.to_owned());
    }

    pub(super) fn on_register(
        &mut self,
        now_ms: Millis,
        conn: ConnId,
        uaid: Uaid,
        channel_text: &str,
        key: Option<&str>,
    ) {
        let Some(channel) = ChannelId::parse(channel_text) else {
            return self.send(conn, None, ua::register_reply(channel_text, 457, None));
        };
        let channel_text = channel.to_text();
        let key_hash = match key.filter(|key| !key.is_empty()) {
            None => None,
            Some(key) => match crate::vapid::decode_public_key(key) {
                Some(raw) => Some(crate::vapid::key_hash(&raw)),
                None => return self.send(conn, None, ua::register_reply(&channel_text, 400, None)),
            },
        };
        if self.store_failed {
            return self.send(conn, None, ua::register_reply(&channel_text, 500, None));
        }
        let Some(ua) = self.uas.get(&uaid) else {
            return;
        };
        let existing = ua.channels.get(&channel).map(|state| state.key_hash);
        let after = match existing {
            Some(registered) if registered == key_hash => self.next_lsn.checked_sub(1),
            None if ua.channels.len() >= self.config.limits.channels_per_uaid_max => {
                return self.send(conn, None, ua::register_reply(&channel_text, 429, None));
            }
            // A new channel, or the UA re-registers it with another key: the
            // UA owns its channels, so the newer key wins.
            _ => {
                self.stats.registers += 1;
                self.record_ua(now_ms, uaid);
                Some(self.append(Record::ChannelRegistered(Registration {
                    uaid,
                    channel,
                    key_hash,
                })))
            }
        };
        let endpoint = self.endpoint(uaid, channel, key_hash);
        self.send(
            conn,
            after,
            ua::register_reply(&channel_text, 200, Some(&endpoint)),
        );
    }

    pub(super) fn endpoint(
        &self,
        uaid: Uaid,
        channel: ChannelId,
        key_hash: Option<KeyHash>,
    ) -> String {
        let token = self.keys.endpoint_token(&uaid, &channel, key_hash.as_ref());
        let version = if key_hash.is_some() { 2 } else { 1 };
        format!(
            "{}/wpush/v{version}/{token}",
            self.config.endpoint_url.trim_end_matches('/')
        )
    }

    pub(super) fn on_unregister(&mut self, conn: ConnId, uaid: Uaid, channel_text: &str) {
        let Some(channel) = ChannelId::parse(channel_text) else {
            return self.send(conn, None, ua::unregister_reply(channel_text, 457));
        };
        let registered = self
            .uas
            .get(&uaid)
            .is_some_and(|ua| ua.channels.contains_key(&channel));
        let after = if registered {
            if self.store_failed {
                return self.send(conn, None, ua::unregister_reply(&channel.to_text(), 500));
            }
            self.stats.unregisters += 1;
            Some(self.append(Record::ChannelUnregistered { uaid, channel }))
        } else {
            None
        };
        self.send(conn, after, ua::unregister_reply(&channel.to_text(), 200));
    }

    pub(super) fn on_ack(&mut self, conn: ConnId, uaid: Uaid, updates: &[ua::AckUpdate]) {
        let web_push_socket = self.conns.get(&conn).is_some_and(|state| state.web_push);
        for update in updates {
            let Some(channel) = ChannelId::parse(&update.channel_id) else {
                continue;
            };
            let acked: Vec<u64> = match &update.version {
                AckVersion::Text(text) => match self.keys.open_message_id(text) {
                    Some(claims) if claims.uaid == uaid && claims.channel == channel => {
                        vec![claims.seq]
                    }
                    Some(_) => Vec::new(),
                    None => match text.parse::<u64>() {
                        Ok(number) => self.acked_by_number(uaid, channel, number, web_push_socket),
                        Err(_) => Vec::new(),
                    },
                },
                AckVersion::Number(number) => {
                    self.acked_by_number(uaid, channel, *number, web_push_socket)
                }
            };
            for seq in acked {
                let present = self
                    .uas
                    .get(&uaid)
                    .is_some_and(|ua| ua.pending.contains_key(&seq));
                if present && !self.store_failed {
                    self.stats.acks += 1;
                    self.append(Record::MessageRemoved {
                        uaid,
                        channel,
                        seq,
                        reason: Removal::Acked,
                    });
                }
            }
        }
        self.cancel_retry_if_acked(conn, uaid);
    }

    /// A numeric ack frees every message on the channel whose numeric form
    /// (SimplePush version, or arrival time for other kinds) is at most `number`:
    /// SimplePush only cares about the newest version. A Web Push socket saw
    /// Web Push messages by their ids, not by a number, so a numeric ack
    /// there never frees one of those.
    pub(super) fn acked_by_number(
        &self,
        uaid: Uaid,
        channel: ChannelId,
        number: u64,
        web_push_socket: bool,
    ) -> Vec<u64> {
        let Some(ua) = self.uas.get(&uaid) else {
            return Vec::new();
        };
        ua.pending
            .iter()
            .filter(|(_, pending)| {
                let message = &pending.message;
                let shown_as_number =
                    !(web_push_socket && matches!(message.body, MessageBody::WebPush { .. }));
                message.channel == channel && shown_as_number && numeric_version(message) <= number
            })
            .map(|(seq, _)| *seq)
            .collect()
    }
}
