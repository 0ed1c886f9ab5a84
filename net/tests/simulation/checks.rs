//! The checks: every frame a UA receives and every answer an AS gets,
//! against the model and against the logs' durability at that moment; the
//! state after each step; what a crash may and may not take back; and the
//! final restart.

use std::collections::BTreeSet;

use herald_engine::push::HttpResponse;
use herald_engine::record::Record;
use herald_engine::shard::close;
use herald_engine::{ConnId, Lsn, Millis, RequestId};
use herald_store::RecordLog;
use serde_json::{json, Value};

use crate::common::*;
use crate::model::{Awaiting, Expect, LogView, ModelChannel, Msg, OnSuccess, Tok};
use crate::sim::{ensure, Sim};

impl Sim {
    /// Reads everything that reached the UAs and the ASes so far, then
    /// notes which sockets are held back by a frame waiting for its record.
    pub fn settle(&mut self) {
        self.take_frames();
        self.take_answers();
        self.note_held_sockets();
    }

    fn take_frames(&mut self) {
        let conns: Vec<ConnId> = self
            .h
            .socks
            .iter()
            .filter(|(_, sock)| sock.cursor < sock.frames.len())
            .map(|(conn, _)| *conn)
            .collect();
        for conn in conns {
            for (frame, received) in self.h.take_received(conn) {
                self.on_frame(conn, frame, received);
            }
        }
    }

    /// A socket held back keeps, behind the frame that waits, the frames
    /// the shard queued meanwhile: they may name messages removed since
    /// (deleted, replaced, expired). What the UA had pending while the
    /// socket was held is what those frames may carry.
    fn note_held_sockets(&mut self) {
        let conns: Vec<(ConnId, usize, bool)> = self
            .conns
            .iter()
            .map(|(conn, (ua, web_push))| (*conn, *ua, *web_push))
            .collect();
        for (conn, ua, web_push) in conns {
            if self.h.blocked(conn) {
                let tokens: Vec<(String, Tok)> = self.uas[ua]
                    .pending
                    .iter()
                    .map(|m| (m.channel.clone(), m.token(web_push)))
                    .collect();
                self.held_tokens.entry(conn).or_default().extend(tokens);
            } else {
                self.held_tokens.remove(&conn);
            }
        }
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame, received: Received) {
        let Some(&(ua, _)) = self.conns.get(&conn) else {
            self.fail(format!(
                "a frame on a conn the model never opened (or saw closed): conn{conn} {frame:?}"
            ));
        };
        if frame.is_notification() {
            return self.validate_frames(conn, vec![(frame, received.at_ms)]);
        }
        let awaiting = self.awaiting.remove(&conn);
        match (&frame, awaiting) {
            (
                Frame::Json(reply),
                Some(Awaiting::Register {
                    channel,
                    status,
                    endpoint,
                    lsn,
                }),
            ) if reply["messageType"] == "register" => {
                ensure!(
                    self,
                    reply["channelID"] == channel.as_str() && reply["status"] == status,
                    "register {channel} of ua{ua}: expected {status}, got {reply}"
                );
                if status != 200 {
                    return;
                }
                ensure!(
                    self,
                    reply["pushEndpoint"] == endpoint.as_str(),
                    "register of {channel} answers {reply}, its endpoint is {endpoint}"
                );
                self.ensure_durable(
                    ua,
                    received,
                    lsn,
                    "a register reply",
                    "its ChannelRegistered",
                );
                if let Some(state) = self.uas[ua].channels.get_mut(&channel) {
                    state.confirmed = true;
                }
            }
            (Frame::Json(reply), Some(Awaiting::Unregister { channel, lsn }))
                if reply["messageType"] == "unregister" =>
            {
                ensure!(
                    self,
                    reply["channelID"] == channel.as_str() && reply["status"] == 200,
                    "unregister {channel} of ua{ua}: {reply}"
                );
                if let Some(lsn) = lsn {
                    self.ensure_durable(
                        ua,
                        received,
                        lsn,
                        "an unregister reply",
                        "its ChannelUnregistered",
                    );
                }
                if !self.uas[ua].channels.contains_key(&channel) {
                    self.uas[ua].unregistered.insert(channel);
                }
            }
            (Frame::Text(text), Some(Awaiting::Ping { text_form: true })) if text == "PONG" => {}
            (Frame::Json(reply), Some(Awaiting::Ping { text_form: false }))
                if *reply == json!({}) => {}
            (_, awaiting) => self.fail(format!(
                "unexpected frame {frame:?} on conn{conn} of ua{ua}, which waits for {awaiting:?}"
            )),
        }
    }

    /// A frame that needed record `lsn` reached ua's socket when its shard
    /// had `received.durable` on disk.
    fn ensure_durable(&self, ua: usize, received: Received, lsn: Lsn, what: &str, record: &str) {
        let Received { shard, durable, .. } = received;
        let owner = self.owner(ua);
        ensure!(
            self,
            shard == owner,
            "{what} for ua{ua} came from shard {shard}, not its owner {owner}"
        );
        ensure!(
            self,
            lsn <= durable,
            "{what} reached ua{ua} before {record} was durable: \
             LSN {lsn} on shard {shard}, durable up to {durable}"
        );
    }

    /// The (channel, token) entries of a notification frame on `conn`,
    /// checking the frame's form matches the socket's mode.
    pub fn entries(&self, conn: ConnId, frame: &Frame) -> Vec<(String, Tok)> {
        let (_, web_push) = self.conns[&conn];
        let Frame::Json(value) = frame else {
            self.fail(format!("unexpected text frame {frame:?} on conn{conn}"));
        };
        match (value["messageType"].as_str(), web_push) {
            (Some("notification"), true) => {
                let channel = value["channelID"].as_str().unwrap_or_default().to_owned();
                let version = value["version"].as_str().unwrap_or_default();
                let tok = if self.h.keys.open_message_id(version).is_some() {
                    Tok::Id(version.to_owned())
                } else if let Ok(number) = version.parse() {
                    Tok::Num(number)
                } else {
                    self.fail(format!("bad version in {value}"));
                };
                vec![(channel, tok)]
            }
            (Some(kind @ ("notification" | "desktop-notification")), false) => value["updates"]
                .as_array()
                .unwrap_or_else(|| {
                    self.fail(format!("no updates in {value} on a SimplePush socket"))
                })
                .iter()
                .map(|update| {
                    let channel = update["channelID"].as_str().unwrap_or_default().to_owned();
                    let number = update["version"]
                        .as_u64()
                        .unwrap_or_else(|| self.fail(format!("non-numeric version in {value}")));
                    if kind == "desktop-notification" {
                        let body = update["body"].as_str().unwrap_or_default().to_owned();
                        (channel, Tok::Desktop(number, body))
                    } else {
                        (channel, Tok::Num(number))
                    }
                })
                .collect(),
            _ => self.fail(format!(
                "unexpected frame {value} on conn{conn} (web_push={web_push})"
            )),
        }
    }

    /// Whether an entry is the TTL=0 message sent to this socket (and marks
    /// it seen).
    fn take_transient(&mut self, ua: usize, conn: ConnId, channel: &str, tok: &Tok) -> bool {
        let uaid = self.uas[ua].uaid_bytes;
        let keys = &self.h.keys;
        let found = self.transient.iter_mut().find(|t| {
            t.ua == ua
                && t.conn == conn
                && !t.seen
                && t.channel == channel
                && match (&t.tok, tok) {
                    (Some(expected), tok) => expected == tok,
                    // An unstored message's id: this UA's channel, an odd seq.
                    (None, Tok::Id(id)) => keys.open_message_id(id).is_some_and(|claims| {
                        claims.uaid == uaid
                            && claims.channel.to_text() == channel
                            && claims.seq % 2 == 1
                    }),
                    (None, _) => false,
                }
        });
        match found {
            Some(transient) => {
                transient.seen = true;
                true
            }
            None => false,
        }
    }

    /// Invariants 1, 4 and 7 for frames that arrived on `conn` (at the
    /// times given).
    pub fn validate_frames(&mut self, conn: ConnId, frames: Vec<(Frame, Millis)>) {
        let Some(&(ua, web_push)) = self.conns.get(&conn) else {
            self.fail(format!(
                "frames on a conn the model never opened: {frames:?}"
            ));
        };
        let current = self.uas[ua].conn == Some(conn);
        let retry = self.limits().retry_interval_ms;
        for (frame, now) in frames {
            // A frame carries each message at most once.
            let mut in_frame = BTreeSet::new();
            for (channel, tok) in self.entries(conn, &frame) {
                self.counters.deliveries += 1;
                if self.take_transient(ua, conn, &channel, &tok) {
                    continue;
                }
                let held = self
                    .held_tokens
                    .get(&conn)
                    .is_some_and(|held| held.contains(&(channel.clone(), tok.clone())));
                if !current {
                    // On a socket a newer one has replaced: it names what
                    // was pending when it was queued.
                    let pending = self.uas[ua]
                        .pending
                        .iter()
                        .any(|m| m.channel == channel && m.token(web_push) == tok);
                    ensure!(
                        self,
                        held || pending,
                        "a message that is not pending was delivered on a replaced socket: \
                         conn{conn} ua{ua} {channel} {tok:?} in {frame:?}"
                    );
                    self.counters.late_frames += 1;
                    continue;
                }
                let model = &mut self.uas[ua];
                // Messages that share a token are told apart on the wire by
                // no one: their re-send counts are only known as a group.
                let shared_token = model
                    .pending
                    .iter()
                    .filter(|m| m.channel == channel && m.token(web_push) == tok)
                    .count()
                    > 1;
                // Several messages can share a numeric token (same channel, same
                // ms): one not yet in this frame, preferably one still live at
                // the end of the step (an expiring one may have missed the
                // last retry), the least sent.
                let found = model
                    .pending
                    .iter_mut()
                    .filter(|m| {
                        m.channel == channel
                            && m.token(web_push) == tok
                            && !in_frame.contains(&m.serial)
                    })
                    .min_by_key(|m| (m.expired(now), m.seen, m.sends.1));
                let message = match found {
                    Some(message) => message,
                    // Queued while the socket was held back: it names what
                    // was pending then (removed since).
                    None if held => {
                        self.counters.late_frames += 1;
                        continue;
                    }
                    None => {
                        let acked = matches!(&tok, Tok::Id(id) if model.acked_ids.contains(id));
                        let foreign =
                            self.uas.iter().enumerate().find(|(i, other)| {
                                *i != ua && other.channels.contains_key(&channel)
                            });
                        let what = if acked {
                            "an acked message was re-sent".to_owned()
                        } else if let Some((other, _)) = foreign {
                            format!("a message of ua{other} reached ua{ua}'s socket")
                        } else {
                            "a message that is not pending was delivered".to_owned()
                        };
                        self.fail(format!(
                            "{what}: conn{conn} ua{ua} {channel} {tok:?} in {frame:?}"
                        ));
                    }
                };
                if let (Frame::Json(value), crate::model::Kind::WebPush { data, .. }, true) =
                    (&frame, &message.kind, web_push)
                {
                    let expected = if data.is_empty() {
                        Value::Null
                    } else {
                        json!(b64(data))
                    };
                    if value["data"] != expected {
                        let detail = format!("data {} != {expected}", value["data"]);
                        self.fail(detail);
                    }
                }
                in_frame.insert(message.serial);
                message.seen = true;
                message.sends.2 = now;
                if shared_token {
                    message.ambiguous = true;
                } else if message.ambiguous {
                    // Its siblings are gone: from here on its count is its own.
                    message.ambiguous = false;
                    message.sends.1 = 0;
                }
                if message.sends.1 == 0 {
                    message.sends = (now, 1, now);
                } else if !held {
                    // A frame queued while the socket was held back comes
                    // late and may stand for a message removed since that
                    // shared this token: it says nothing about the pace.
                    message.sends.1 += 1;
                }
                let (first, count, _) = message.sends;
                let allowed = 2 + (now - first) / retry;
                let version = match message.kind {
                    crate::model::Kind::Version(version) => Some(version),
                    _ => None,
                };
                let serial = message.serial;
                if count as u64 > allowed {
                    if !message.ambiguous {
                        self.fail(format!(
                            "message {serial} re-sent {count} times in {} ms on conn{conn} \
                             (retry interval {retry} ms)",
                            now - first
                        ));
                    }
                    self.counters.exemptions += 1;
                }
                if let Some(version) = version {
                    let last = self.uas[ua]
                        .last_version
                        .entry(channel.clone())
                        .or_insert(0);
                    if version >= *last {
                        *last = version;
                    } else {
                        let detail = format!(
                            "SimplePush version went backwards on {channel}: {last} then {version}"
                        );
                        self.fail(detail);
                    }
                }
            }
        }
    }

    // ---- AS answers ----------------------------------------------------

    fn take_answers(&mut self) {
        let ids: Vec<RequestId> = self.h.replies.keys().copied().collect();
        for id in ids {
            let response = self.h.replies.remove(&id).expect("listed above");
            let durable = self.h.answered_durable.remove(&id);
            let Some(expect) = self.answers.remove(&id) else {
                self.fail(format!(
                    "an answer to request {id}, which waits for none (answered twice?): {response:?}"
                ));
            };
            self.check_answer(expect, &response, durable);
        }
    }

    fn check_answer(&mut self, expect: Expect, response: &HttpResponse, durable: Option<Vec<Lsn>>) {
        let what = &expect.what;
        let status = response.status;
        ensure!(
            self,
            expect.statuses.contains(&status),
            "{what}: answered {response:?}, expected {:?}",
            expect.statuses
        );
        if let Some(body) = expect.body {
            ensure!(self, response.body == body, "{what}: body {response:?}");
        }
        if let Some(ttl) = &expect.ttl {
            ensure!(
                self,
                header(response, "TTL") == Some(ttl.as_str()),
                "{what}: TTL header {response:?}"
            );
        }
        if let Some(id) = &expect.location {
            ensure!(
                self,
                location_id(response) == *id,
                "{what}: Location {response:?}, the stored message's id is {id}"
            );
        }
        if let Some(channel) = &expect.unstored_location {
            let uaid = self.uas[expect.ua].uaid_bytes;
            let claims = self.h.keys.open_message_id(&location_id(response));
            ensure!(
                self,
                claims.is_some_and(|c| c.uaid == uaid && c.channel == *channel && c.seq % 2 == 1),
                "{what}: Location names another message: {response:?}"
            );
        }
        if let (Some(state), 200) = (expect.state, status) {
            ensure!(
                self,
                body_json(response)["state"] == state,
                "{what}: {response:?}"
            );
        }
        if !(200..300).contains(&status) {
            return;
        }
        // No reply leaves before its record is durable, whatever the driver
        // believes: the durable LSNs are the logs' own, at the moment of the
        // answer.
        if let Some((shard, lsn, record)) = expect.durable {
            let Some(durable) = durable else {
                self.fail(format!("{what}: a {status} no shard gave"));
            };
            ensure!(
                self,
                lsn <= durable[shard],
                "{what}: the {status} reached the AS before its record was durable: \
                 {record} at LSN {lsn} on shard {shard}, durable up to {}",
                durable[shard]
            );
        }
        if expect.step < self.step {
            self.counters.late_answers += 1;
        }
        match expect.on_success {
            OnSuccess::Nothing => {}
            OnSuccess::Stored(serial) => {
                self.acknowledged.insert(serial);
            }
            OnSuccess::VersionCovered(ua, channel, version) => {
                // Only while the channel lives on (an unregister ends it).
                if self.uas[ua].channels.contains_key(&channel) {
                    self.covered_versions.push((ua, channel, version));
                }
            }
            OnSuccess::Deleted(serial) => {
                self.deleted.insert(serial);
            }
        }
    }

    // ---- after each step -------------------------------------------------

    pub fn check(&mut self) {
        self.settle();
        self.sync_records();
        let now = self.h.now;
        self.check_transients();

        // Invariant 6: closes.
        ensure!(
            self,
            self.h.sent_after_close() == 0,
            "the engine addressed frames to a socket after its close"
        );
        let closed_now: Vec<(ConnId, u16)> = self
            .h
            .socks
            .iter()
            .filter_map(|(&conn, sock)| sock.closed.map(|code| (conn, code)))
            .filter(|(conn, _)| self.conns.contains_key(conn))
            .collect();
        for (conn, code) in closed_now {
            let (ua, _) = self.conns[&conn];
            self.forget_conn(conn);
            if let Some(expected) = self.expected_closes.remove(&conn) {
                ensure!(
                    self,
                    code == expected,
                    "conn{conn} closed {code}, expected {expected}"
                );
                continue;
            }
            if self.uas[ua].conn != Some(conn) {
                // Already gone in the model (the UA hung up); the engine's close came after.
                if code == close::SLEEP || code == close::NORMAL {
                    continue;
                }
            }
            let live: Vec<_> = self.uas[ua]
                .pending
                .iter()
                .filter(|m| !m.expired(now))
                .map(|m| m.serial)
                .collect();
            ensure!(
                self,
                code == close::SLEEP && self.uas[ua].wakeup && live.is_empty(),
                "conn{conn} of ua{ua} closed with {code} (wakeup={}, pending {live:?})",
                self.uas[ua].wakeup
            );
            self.note(format!("ua{ua} conn{conn} put to sleep (4774)"));
            self.counters.sleeps += 1;
            self.uas[ua].conn = None;
        }
        // A takeover close the model expected must have happened by now,
        // unless the socket is still held back by a frame waiting for its
        // record (the close comes after it).
        let overdue: Vec<ConnId> = self.expected_closes.keys().copied().collect();
        for conn in overdue {
            if self.h.socks[&conn].gone {
                self.expected_closes.remove(&conn);
                self.forget_conn(conn);
                continue;
            }
            if !self.h.blocked(conn) {
                self.fail(format!("conn{conn} should have been closed with 1000"));
            }
        }

        // Expiry: the model forgets expired messages.
        for ua in 0..self.uas.len() {
            let model = &mut self.uas[ua];
            let (expired, live): (Vec<Msg>, Vec<Msg>) =
                model.pending.drain(..).partition(|m| m.expired(now));
            model.pending = live;
            for message in expired {
                self.counters.expired += 1;
                if let Some(id) = message.web_push_id() {
                    model.expired_ids.insert(id.to_owned());
                }
            }
        }

        // Invariant 2: a connected UA has everything pending on its socket,
        // and got each unacked one again within the last retry interval
        // (unless its socket is held back by a frame waiting for its record).
        let retry = self.limits().retry_interval_ms;
        for (index, ua) in self.uas.iter().enumerate() {
            let Some(conn) = ua.conn.filter(|conn| !self.h.blocked(*conn)) else {
                continue;
            };
            let stale: Vec<_> = ua
                .pending
                .iter()
                .filter(|m| m.seen && now - m.sends.2 > retry)
                .map(|m| (m.serial, now - m.sends.2, m.sends.0 - START_MS, m.sends.1))
                .collect();
            ensure!(
                self,
                stale.is_empty(),
                "ua{index} (conn{conn}): unacked messages not re-sent for \
                 (serial, ms since, first sent at +ms, sends) {stale:?}"
            );
            let missing: Vec<_> = ua
                .pending
                .iter()
                .filter(|m| !m.seen)
                .map(|m| (m.serial, m.channel.clone(), m.token(ua.web_push)))
                .collect();
            ensure!(
                self,
                missing.is_empty(),
                "connected ua{index} (conn{conn}) never received {missing:?}"
            );
        }

        // Invariant 3: the records appended hold exactly the model's pending
        // set and channels.
        let max = self.limits().pending_per_uaid_max;
        for index in 0..self.uas.len() {
            let ua = &self.uas[index];
            let logged = self.view.pending_seqs(&ua.uaid_bytes, now);
            let mut modelled: Vec<u64> = ua.pending.iter().map(|m| m.seq).collect();
            modelled.sort_unstable();
            ensure!(
                self,
                logged == modelled,
                "ua{index}: the log holds pending seqs {logged:?}, the model {modelled:?}"
            );
            let logged = self.view.channel_versions(&ua.uaid_bytes);
            let modelled: Vec<(String, u64)> = ua
                .channels
                .iter()
                .map(|(id, state)| (id.clone(), state.version))
                .collect();
            ensure!(
                self,
                logged == modelled,
                "ua{index}: the log holds channels (id, version) {logged:?}, the model {modelled:?}"
            );
            let over = ua.pending.len().saturating_sub(max);
            ensure!(
                self,
                over <= ua.over_limit,
                "ua{index} holds {} pending (limit {max})",
                ua.pending.len()
            );
            self.uas[index].over_limit = over;
        }
        self.prune_limbo();
    }

    fn forget_conn(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.awaiting.remove(&conn);
        self.held_tokens.remove(&conn);
    }

    /// A TTL=0 message sent to a connected UA must reach that socket,
    /// once nothing holds the socket back (also if a newer socket has taken
    /// over: its close comes after what was queued).
    fn check_transients(&mut self) {
        let (conns, socks) = (&self.conns, &self.h.socks);
        self.transient
            .retain(|t| !t.seen && conns.contains_key(&t.conn) && !socks[&t.conn].gone);
        let unsent: Vec<String> = self
            .transient
            .iter()
            .filter(|t| !self.h.blocked(t.conn))
            .map(|t| format!("ua{} conn{} {} {:?}", t.ua, t.conn, t.channel, t.tok))
            .collect();
        ensure!(
            self,
            unsent.is_empty(),
            "TTL=0 message to a connected UA not sent: {unsent:?}"
        );
    }

    /// Once everything appended is durable, nothing may still wait: every
    /// AS request has its answer, every UA its reply, every frame has left.
    pub fn after_full_commit(&mut self) {
        let held: Vec<ConnId> = self
            .conns
            .keys()
            .copied()
            .filter(|conn| self.h.blocked(*conn))
            .collect();
        ensure!(
            self,
            held.is_empty(),
            "everything is durable, yet the outboxes of {held:?} still hold frames back"
        );
        let unanswered: Vec<&str> = self.answers.values().map(|e| e.what.as_str()).collect();
        let shards: Vec<String> = self
            .h
            .shards
            .iter()
            .map(|driver| {
                format!(
                    "shard {}: durable {} of {}, {} requests waiting, {} sent to other shards",
                    driver.index(),
                    driver.log().durable_lsn(),
                    driver.log().last_lsn(),
                    driver.requests_waiting(),
                    driver.remote_in_flight()
                )
            })
            .collect();
        ensure!(
            self,
            unanswered.is_empty(),
            "everything is durable, yet these AS requests have no answer: {unanswered:?}; {shards:?}"
        );
        let waiting: Vec<String> = self
            .awaiting
            .iter()
            .map(|(conn, awaiting)| {
                format!("conn{conn}: {awaiting:?}, socket {:?}", self.h.socks[conn])
            })
            .collect();
        ensure!(
            self,
            waiting.is_empty(),
            "everything is durable, yet these UAs wait for replies: {waiting:?}"
        );
    }

    // ---- crashes ---------------------------------------------------------

    /// After a crash: what each shard replayed must be what the records
    /// said, cut where the crash cut each log; nothing acknowledged may be
    /// missing and nothing durably removed back. Then the model becomes what
    /// replay rebuilt (a message never durable, or whose removal was not, is
    /// what it is in the surviving log).
    pub fn recover(&mut self, durable_before: &[Lsn]) {
        let survived_last: Vec<Lsn> = self.h.logs.iter().map(|log| log.last_lsn()).collect();
        let replayed: Vec<Record> = self.h.logs.iter().flat_map(|log| log.replay()).collect();
        let survived = LogView::from_replay(&replayed);
        // Answers not given and frames not written die with the process.
        self.counters.unanswered_at_crash += self.answers.len() as u64;
        self.answers.clear();
        self.awaiting.clear();
        self.conns.clear();
        self.held_tokens.clear();
        self.expected_closes.clear();
        self.transient.clear();
        for ua in 0..self.uas.len() {
            self.recover_ua(ua, &survived, &survived_last, durable_before);
        }
        self.view = survived;
        self.log_cursor = survived_last;
        self.wakeup_cursor = self.h.wakeups.len();
    }

    fn recover_ua(
        &mut self,
        ua: usize,
        survived: &LogView,
        survived_last: &[Lsn],
        durable_before: &[Lsn],
    ) {
        let now = self.h.now;
        let shard = self.owner(ua);
        let (last, durable) = (survived_last[shard], durable_before[shard]);
        let uaid = self.uas[ua].uaid_bytes;
        let model = &mut self.uas[ua];
        let candidates: Vec<(Msg, Option<&'static str>)> = std::mem::take(&mut model.pending)
            .into_iter()
            .map(|m| (m, None))
            .chain(
                std::mem::take(&mut model.limbo)
                    .into_iter()
                    .map(|r| (r.msg, Some(r.why))),
            )
            .collect();
        let mut kept = Vec::new();
        for (mut message, removed) in candidates {
            let acknowledged = self.acknowledged.contains(&message.serial);
            let serial = message.serial;
            if message.stored_lsn > last {
                ensure!(
                    self,
                    !acknowledged,
                    "ua{ua}: message {serial} was acknowledged to its AS, yet a crash lost it \
                     (stored at LSN {} on shard {shard}, the log kept up to {last})",
                    message.stored_lsn
                );
                ensure!(
                    self,
                    message.stored_lsn > durable,
                    "ua{ua}: message {serial} was durable (LSN {} <= {durable}) and is lost",
                    message.stored_lsn
                );
                self.counters.uncertain_lost += 1;
                if message.seen || removed == Some("acked") {
                    self.counters.delivered_then_lost += 1;
                }
                if let Some(id) = message.web_push_id() {
                    self.uas[ua].reclassify(id, Some("lost in a crash"));
                }
                continue;
            }
            if message.stored_lsn > durable {
                self.counters.uncertain_kept += 1;
            }
            if let Some(why) = removed {
                let removal = self
                    .view
                    .ua(&uaid)
                    .and_then(|view| view.removed.get(&message.seq))
                    .copied();
                let Some(removal) = removal else {
                    self.fail(format!(
                        "ua{ua}: message {serial} was {why}, but no record removed it"
                    ));
                };
                if removal <= last || message.expired(now) {
                    continue;
                }
                // The removal was not durable: the message is back.
                self.counters.resurrected += 1;
                message.resurrected = true;
                if let Some(id) = message.web_push_id() {
                    let id = id.to_owned();
                    self.uas[ua].reclassify(&id, None);
                }
            }
            ensure!(
                self,
                !self.deleted.contains(&serial),
                "ua{ua}: message {serial}, whose DELETE was answered 204, came back"
            );
            kept.push(message);
        }
        // Replay applies the collapse rules itself: of two kept messages
        // where the newer replaces the older (a SimplePush version, a Topic),
        // only the newer is pending, whether or not the removal record of
        // the older survived.
        let replaced: Vec<u64> = kept
            .iter()
            .filter(|older| kept.iter().any(|newer| newer.replaces(older)))
            .map(|older| older.seq)
            .collect();
        self.counters.collapsed_on_replay += replaced.len() as u64;
        kept.retain(|message| !replaced.contains(&message.seq));
        let mut predicted: Vec<u64> = kept
            .iter()
            .filter(|m| !m.expired(now))
            .map(|m| m.seq)
            .collect();
        predicted.sort_unstable();
        let replayed = survived.pending_seqs(&uaid, now);
        let lost_acknowledged: Vec<u64> = kept
            .iter()
            .filter(|m| {
                !m.expired(now)
                    && self.acknowledged.contains(&m.serial)
                    && !replayed.contains(&m.seq)
            })
            .map(|m| m.serial)
            .collect();
        ensure!(
            self,
            lost_acknowledged.is_empty(),
            "ua{ua}: acknowledged messages {lost_acknowledged:?} are not pending after replay"
        );
        ensure!(
            self,
            predicted == replayed,
            "ua{ua}: after the crash the shard replayed pending seqs {replayed:?}, \
             the records up to LSN {last} say {predicted:?}"
        );
        let max = self.limits().pending_per_uaid_max;
        let model = &mut self.uas[ua];
        kept.iter_mut().for_each(Msg::unsent);
        model.over_limit = predicted.len().saturating_sub(max);
        model.pending = kept;
        model.conn = None;
        model.wakeup = survived.ua(&uaid).is_some_and(|view| view.wakeup);
        self.recover_channels(ua, survived);
    }

    /// Registrations confirmed to the UA survive, confirmed unregistrations
    /// too, and a not-newer version answered 200 stays covered; then the
    /// model's channels are the replayed ones.
    fn recover_channels(&mut self, ua: usize, survived: &LogView) {
        let uaid = self.uas[ua].uaid_bytes;
        let replayed = survived.channel_versions(&uaid);
        let has = |channel: &str| replayed.iter().find(|(id, _)| id == channel);
        let model = &self.uas[ua];
        for (channel, state) in &model.channels {
            ensure!(
                self,
                !state.confirmed || has(channel).is_some(),
                "ua{ua}: channel {channel}, whose register reply reached the UA, is gone after a crash"
            );
        }
        for channel in &model.unregistered {
            ensure!(
                self,
                has(channel).is_none(),
                "ua{ua}: channel {channel}, whose unregister reply reached the UA, is back after a crash"
            );
        }
        for (_, channel, version) in self.covered_versions.iter().filter(|(u, ..)| *u == ua) {
            if let Some((_, now)) = has(channel) {
                ensure!(
                    self,
                    now >= version,
                    "ua{ua}: version {version} of {channel} was answered 200 as not newer, \
                     yet after a crash the channel is at {now}"
                );
            }
        }
        let endpoints: Vec<String> = replayed
            .iter()
            .map(|(channel, _)| self.endpoint_of(ua, channel))
            .collect();
        let model = &mut self.uas[ua];
        let mut channels = std::collections::BTreeMap::new();
        for ((channel, version), endpoint) in replayed.into_iter().zip(endpoints) {
            let max_sent = model
                .channels
                .get(&channel)
                .map_or(version, |old| old.max_sent.max(version));
            // A version the UA saw before its record was durable may be
            // lost: the order holds from the newest version replay kept.
            if let Some(last) = model.last_version.get_mut(&channel) {
                *last = (*last).min(version);
            }
            model.endpoints.insert(channel.clone(), endpoint.clone());
            channels.insert(
                channel,
                ModelChannel {
                    endpoint,
                    version,
                    max_sent,
                    confirmed: true,
                },
            );
        }
        model
            .last_version
            .retain(|channel, _| channels.contains_key(channel));
        model.channels = channels;
        self.covered_versions
            .retain(|(u, channel, _)| *u != ua || self.uas[ua].channels.contains_key(channel));
    }

    /// The records (shard, LSN, record) that name the message `id`.
    pub fn history_of(&self, id: &str) -> Vec<String> {
        let Some(claims) = self.h.keys.open_message_id(id) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for shard in 0..self.shards() {
            for (at, record) in self.h.log(shard).iter().enumerate() {
                let about = match record {
                    Record::MessageStored(m) => m.uaid == claims.uaid && m.seq == claims.seq,
                    Record::MessageRemoved { uaid, seq, .. } => {
                        *uaid == claims.uaid && *seq == claims.seq
                    }
                    Record::ChannelUnregistered { uaid, channel } => {
                        *uaid == claims.uaid && *channel == claims.channel
                    }
                    Record::ChannelRegistered(r) => {
                        r.uaid == claims.uaid && r.channel == claims.channel
                    }
                    _ => false,
                };
                if about {
                    found.push(format!("shard {shard} replay #{}: {record:?}", at + 1));
                }
            }
        }
        found
    }

    // ---- the end ---------------------------------------------------------

    /// Every UA reconnects to shards rebuilt from their logs alone and must
    /// get exactly its pending set and its endpoints back.
    pub fn final_replay_check(&mut self) {
        if self.uncommitted() > 0 {
            self.full_commit();
        }
        self.check();
        self.crash_with(&vec![0; self.shards()]);
        self.check();
        // From here on every append is committed at once.
        self.h.auto_commit = true;
        for ua in 0..self.uas.len() {
            let web_push = self.uas[ua].web_push;
            let mobile = self.uas[ua].mobile;
            let hello = self.hello_fields(Some(ua), mobile, web_push);
            let conn = self.h.open();
            let (reply, frames) = self.send_hello(conn, &hello);
            ensure!(
                self,
                reply["uaid"] == self.uas[ua].uaid,
                "replayed hello {reply}"
            );
            self.uas[ua].conn = Some(conn);
            self.uas[ua].pending.iter_mut().for_each(Msg::unsent);
            self.conns.insert(conn, (ua, web_push));
            self.after_hello(ua, conn, frames);
            let missing: Vec<u64> = self.uas[ua]
                .pending
                .iter()
                .filter(|m| !m.seen)
                .map(|m| m.serial)
                .collect();
            ensure!(
                self,
                missing.is_empty(),
                "after replay ua{ua} did not get {missing:?}"
            );
            let channels: Vec<(String, String)> = self.uas[ua]
                .channels
                .iter()
                .map(|(channel, state)| (channel.clone(), state.endpoint.clone()))
                .collect();
            for (channel, endpoint) in channels {
                self.h.send_json(
                    conn,
                    json!({"messageType": "register", "channelID": channel}),
                );
                let lsn = self.registered_lsn(ua, &channel);
                self.awaiting.insert(
                    conn,
                    Awaiting::Register {
                        channel: channel.clone(),
                        status: 200,
                        endpoint,
                        lsn,
                    },
                );
                self.settle();
                ensure!(
                    self,
                    !self.awaiting.contains_key(&conn),
                    "after replay the register of {channel} got no reply"
                );
            }
        }
        self.check();
    }
}
