//! Delivery: pending messages to a socket, in the form it speaks (SPEC §3.3).

use super::*;

impl Shard {
    /// Logs a new message, then what it displaces (a crash between the
    /// records may keep both, delivered twice, never neither: an acknowledged
    /// message lost), and sends it to the UA's socket or asks for a wakeup.
    /// Returns the LSN the AS's answer waits for.
    pub(super) fn store_and_deliver(
        &mut self,
        now_ms: Millis,
        message: &StoredMessage,
        connected: Option<ConnId>,
    ) -> Lsn {
        let uaid = message.uaid;
        let displaced = self.displaced_by(now_ms, uaid, message);
        let lsn = self.append(Record::MessageStored(message.clone()));
        for (seq, channel, reason) in displaced {
            self.append(Record::MessageRemoved {
                uaid,
                channel,
                seq,
                reason,
            });
        }
        match connected {
            Some(conn) => {
                if let Some(pending) = self
                    .uas
                    .get_mut(&uaid)
                    .and_then(|ua| ua.pending.get_mut(&message.seq))
                {
                    pending.sent = true;
                }
                self.send_messages(conn, &[message]);
                self.schedule_retry(now_ms, conn);
            }
            // RFC 8030 §5.3: very-low and low urgency wait for the UA's next
            // natural connection instead of waking a sleeping phone.
            None if message.urgency >= Urgency::Normal => {
                if let Some(target) = self
                    .uas
                    .get(&uaid)
                    .and_then(|ua| ua.wakeup.as_deref().cloned())
                {
                    self.actions.push_back(Action::Wakeup {
                        uaid,
                        target,
                        urgency: message.urgency,
                    });
                }
            }
            None => {}
        }
        lsn
    }

    /// Forgets messages whose TTL ran out. No record is needed: replay keeps
    /// them only until the next purge, and compaction leaves them out.
    pub(super) fn purge_expired(&mut self, now_ms: Millis, uaid: Uaid) {
        let Some(ua) = self.uas.get_mut(&uaid) else {
            return;
        };
        let expired: Vec<u64> = ua
            .pending
            .iter()
            .filter(|(_, pending)| pending.message.is_expired(now_ms))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &expired {
            ua.remove_pending(*seq);
        }
        for seq in expired {
            self.remember_outcome(uaid, seq, Removal::Expired);
        }
    }

    /// Sends every pending message of `uaid` on `conn`: high urgency first,
    /// then arrival order; expired ones are dropped on the way.
    pub(super) fn deliver_pending(&mut self, now_ms: Millis, conn: ConnId, uaid: Uaid) {
        self.purge_expired(now_ms, uaid);
        let Some(ua) = self.uas.get_mut(&uaid) else {
            return;
        };
        // Out of the table while the frames are built, so that no message is
        // copied (building needs the whole shard); nothing on that path
        // reads a UA's pending messages.
        let mut pending = std::mem::take(&mut ua.pending);
        let mut order: Vec<(std::cmp::Reverse<Urgency>, u64)> = pending
            .iter_mut()
            .map(|(seq, pending)| {
                pending.sent = true;
                (std::cmp::Reverse(pending.message.urgency), *seq)
            })
            .collect();
        order.sort();
        let messages: Vec<&StoredMessage> = order
            .iter()
            .filter_map(|(_, seq)| pending.get(seq).map(|pending| &pending.message))
            .collect();
        if !messages.is_empty() {
            self.send_messages(conn, &messages);
            self.schedule_retry(now_ms, conn);
        }
        if let Some(ua) = self.uas.get_mut(&uaid) {
            ua.pending = pending;
        }
    }

    /// One retry chain per socket: a re-send covers every unacked message,
    /// so more timers would only multiply the re-sends.
    pub(super) fn schedule_retry(&mut self, now_ms: Millis, conn: ConnId) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if state.retry_at_ms == 0 {
            let retry_at = now_ms + self.config.limits.retry_interval_ms;
            state.retry_at_ms = retry_at;
            self.timers.insert((retry_at, Timer::Retry(conn)));
        }
    }

    /// Drops `conn`'s retry timer once `uaid` has nothing sent and unacked:
    /// an idle socket then costs what it cost before its first message.
    pub(super) fn cancel_retry_if_acked(&mut self, conn: ConnId, uaid: Uaid) {
        let unacked = self
            .uas
            .get(&uaid)
            .is_some_and(|ua| ua.pending.values().any(|pending| pending.sent));
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if unacked || state.retry_at_ms == 0 {
            return;
        }
        self.timers.remove(&(state.retry_at_ms, Timer::Retry(conn)));
        state.retry_at_ms = 0;
    }

    /// Frames for `messages` in the form the socket speaks (SPEC §3.3).
    pub(super) fn send_messages(&mut self, conn: ConnId, messages: &[&StoredMessage]) {
        let web_push = self.conns.get(&conn).is_some_and(|state| state.web_push);
        let extended = self.conns.get(&conn).is_some_and(|state| state.extended);
        self.stats.notifications_out += messages.len() as u64;
        // Extended notifications exist only in the extended form, and only
        // they do: anything else cannot be shown on the other kind of socket.
        let (shown, hidden): (Vec<&StoredMessage>, Vec<&StoredMessage>) = messages
            .iter()
            .partition(|message| matches!(message.body, MessageBody::Extended { .. }) == extended);
        self.stats.cross_mode_dropped += hidden.len() as u64;
        let messages = shown;
        if extended {
            for message in &messages {
                let text = self.extended_object(message).to_string();
                self.send(conn, None, text);
            }
            return;
        }
        if web_push {
            for message in &messages {
                let text = self.web_push_frame(message);
                self.send(conn, None, text);
            }
            return;
        }
        let mut updates = Vec::new();
        let mut desktop = Vec::new();
        for message in &messages {
            let channel_id = message.channel.to_text();
            match &message.body {
                MessageBody::Desktop { body, ttl_s } => desktop.push(json!({
                    "channelID": channel_id,
                    "version": numeric_version(message),
                    "body": body,
                    "ttl": ttl_s,
                })),
                MessageBody::WebPush { data, .. } => {
                    if !data.is_empty() {
                        self.stats.cross_mode_dropped += 1;
                    }
                    updates.push(
                        json!({"channelID": channel_id, "version": numeric_version(message)}),
                    );
                }
                MessageBody::Version(_) => {
                    updates.push(
                        json!({"channelID": channel_id, "version": numeric_version(message)}),
                    );
                }
                // Filtered out above: only extended sockets show these.
                MessageBody::Extended { .. } => {}
            }
        }
        if !updates.is_empty() {
            self.send(
                conn,
                None,
                json!({"messageType": "notification", "updates": updates}).to_string(),
            );
        }
        if !desktop.is_empty() {
            self.send(
                conn,
                None,
                json!({"messageType": "desktop-notification", "updates": desktop}).to_string(),
            );
        }
    }

    pub(super) fn web_push_frame(&mut self, message: &StoredMessage) -> String {
        use base64::Engine;
        let channel_id = message.channel.to_text();
        let frame = match &message.body {
            MessageBody::WebPush {
                data,
                encoding,
                encryption,
                crypto_key,
            } => {
                let with_data = !data.is_empty();
                WebPushFrame {
                    channel_id: &channel_id,
                    version: self
                        .keys
                        .message_id(&message.uaid, &message.channel, message.seq),
                    data: with_data
                        .then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)),
                    headers: with_data.then_some(FrameHeaders {
                        encoding: encoding.as_deref(),
                        encryption: encryption.as_deref(),
                        crypto_key: crypto_key.as_deref(),
                    }),
                    ..WebPushFrame::default()
                }
            }
            MessageBody::Version(version) => WebPushFrame {
                channel_id: &channel_id,
                version: version.to_string(),
                ..WebPushFrame::default()
            },
            MessageBody::Desktop { .. } => {
                // A Web Push socket cannot show a desktop body: it gets the version only.
                self.stats.cross_mode_dropped += 1;
                WebPushFrame {
                    channel_id: &channel_id,
                    version: numeric_version(message).to_string(),
                    ..WebPushFrame::default()
                }
            }
            // Filtered out by send_messages: only extended sockets show these.
            MessageBody::Extended { .. } => WebPushFrame {
                channel_id: &channel_id,
                ..WebPushFrame::default()
            },
        };
        // Serializing a struct of plain fields cannot fail.
        serde_json::to_string(&frame).unwrap_or_default()
    }

    /// An extended notification as the UA sees it (SPEC §3.6).
    pub(super) fn extended_object(&self, message: &StoredMessage) -> Value {
        let MessageBody::Extended {
            id,
            message: payload,
            timestamp_ms,
            priority,
        } = &message.body
        else {
            return Value::Null;
        };
        let url_token = self
            .web_apps
            .get(&message.channel)
            .map_or("", |app| app.url_token.as_str());
        extended::notification_object(
            id,
            payload,
            *timestamp_ms,
            *priority,
            &self
                .keys
                .message_id(&message.uaid, &message.channel, message.seq),
            &self.app_url(url_token),
        )
    }

    pub(super) fn app_url(&self, url_token: &str) -> String {
        format!(
            "{}/notify/{url_token}",
            self.config.endpoint_url.trim_end_matches('/')
        )
    }
}

/// A notification as a Web Push socket sees it (SPEC §3.3). Written from a
/// struct rather than a `serde_json::Value`: a UA reconnecting to a backlog
/// gets hundreds of these at once, and a `Value` costs an allocation per key.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WebPushFrame<'a> {
    message_type: &'static str,
    #[serde(rename = "channelID")]
    channel_id: &'a str,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<FrameHeaders<'a>>,
}

impl Default for WebPushFrame<'_> {
    fn default() -> Self {
        WebPushFrame {
            message_type: "notification",
            channel_id: "",
            version: String::new(),
            data: None,
            headers: None,
        }
    }
}

/// The crypto headers a UA needs to decrypt `data` (only those the AS sent).
#[derive(serde::Serialize)]
struct FrameHeaders<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crypto_key: Option<&'a str>,
}
