//! The workload: what UAs and application servers do, one random action per
//! step, and what the model expects of each. The shards apply an action at
//! once (records appended, engine state changed), so the model changes with
//! it; what the UA and the AS see of it may come later (after a commit) or
//! never (a crash first).

use std::collections::BTreeSet;

use herald_engine::message::Urgency;
use herald_engine::record::Record;
use herald_engine::shard::close;
use herald_engine::ChannelId;
use herald_engine::Lsn;
use rand::Rng;
use serde_json::{json, Value};

use crate::common::*;
use crate::model::{Awaiting, Expect, Kind, ModelChannel, ModelUa, Msg, OnSuccess, Tok, Transient};
use crate::sim::{ensure, Sim};

const MAX_UAS: usize = 24;

impl Sim {
    pub fn random_step(&mut self) {
        let idle = self.idle_uas();
        let roll = self.rng.gen_range(0..100u32);
        match roll {
            0..=6 if self.uas.len() < MAX_UAS => self.new_ua(),
            0..=15 => {
                if let Some(ua) = self.pick(&(0..self.uas.len()).collect::<Vec<_>>()) {
                    self.reconnect(ua);
                } else {
                    self.new_ua();
                }
            }
            16..=20 => {
                if let Some(ua) = self.pick(&self.live_uas()) {
                    self.disconnect(ua);
                }
            }
            21..=30 => {
                if let Some(ua) = self.pick(&idle) {
                    self.register(ua);
                }
            }
            31..=33 => {
                if let Some(ua) = self.pick(&idle) {
                    self.unregister(ua);
                }
            }
            34..=43 => {
                if let Some(ua) = self.pick(&idle) {
                    self.ack(ua);
                }
            }
            44..=55 => self.put_version(),
            56..=72 => self.post(),
            // Application servers pushing at once: one group commit (or a
            // crash) for all of them.
            73..=74 => {
                for _ in 0..self.rng.gen_range(2..=8) {
                    if self.rng.gen_bool(0.5) {
                        self.post();
                    } else {
                        self.put_version();
                    }
                }
            }
            75..=76 => self.put_desktop(),
            77..=78 => self.push_to_gone(),
            79..=93 => self.advance(),
            94..=95 => self.delete(),
            96..=97 => self.get_acked_state(),
            98 => {
                if let Some(ua) = self.pick(&idle) {
                    self.ping(ua);
                }
            }
            _ => match self.rng.gen_range(0..3) {
                0 => self.crash(),
                // A live compaction, as the server runs it.
                1 => self.compact(),
                _ => self.advance(),
            },
        }
    }

    fn random_channel(&mut self) -> String {
        let value: u128 = self.rng.gen();
        let text = format!("{value:032x}");
        format!(
            "{}-{}-4{}-8{}-{}",
            &text[..8],
            &text[8..12],
            &text[13..16],
            &text[17..20],
            &text[20..32]
        )
    }

    /// The endpoint the shard issues for a channel without a key.
    pub fn endpoint_of(&self, ua: usize, channel: &str) -> String {
        let channel = ChannelId::parse(channel).expect("a valid channel id");
        let token = self
            .h
            .keys
            .endpoint_token(&self.uas[ua].uaid_bytes, &channel, None);
        format!("{ORIGIN}/wpush/v1/{token}")
    }

    // ---- UA actions ----------------------------------------------------

    pub fn hello_fields(&mut self, ua: Option<usize>, mobile: bool, web_push: bool) -> Value {
        let mut hello = json!({"messageType": "hello"});
        if let Some(ua) = ua {
            hello["uaid"] = json!(self.uas[ua].uaid);
        }
        if web_push {
            hello["use_webpush"] = json!(true);
        }
        if mobile {
            let (mcc, mnc) = ROUTED_NETWORK.split_once('-').unwrap();
            hello["wakeup_hostport"] = json!({"ip": "10.0.0.7", "port": 4000 + ua.unwrap_or(0)});
            hello["mobilenetwork"] = json!({"mcc": mcc, "mnc": mnc, "netid": "sim"});
        }
        hello
    }

    /// Sends a hello on a fresh socket, sometimes right behind a WebSocket
    /// ping in the same read (whose pong is queued before any hand-off);
    /// returns the hello reply and the frames after it. A hello reply waits
    /// for no record, and the frames after it none either.
    pub fn send_hello(
        &mut self,
        conn: herald_engine::ConnId,
        hello: &Value,
    ) -> (Value, Vec<(Frame, herald_engine::Millis)>) {
        if self.rng.gen_bool(0.2) {
            let accepted_by = self.h.socks[&conn].shard;
            self.h.send_after_ws_ping(conn, b"sim", &hello.to_string());
            let pongs = self.h.socks[&conn].pongs;
            let handed_off = self.h.socks[&conn].shard != accepted_by;
            ensure!(
                self,
                pongs == 1,
                "a WebSocket ping before the hello (hand-off: {handed_off}) got {pongs} pongs on conn{conn}"
            );
            if handed_off {
                self.counters.pongs_before_hand_off += 1;
            }
        } else {
            self.h.send_json(conn, hello.clone());
        }
        let mut frames = self
            .h
            .take_received(conn)
            .into_iter()
            .map(|(frame, received)| (frame, received.at_ms));
        let Some((Frame::Json(reply), _)) = frames.next() else {
            self.fail(format!("no hello reply on conn{conn}"));
        };
        ensure!(
            self,
            reply["messageType"] == "hello",
            "first frame after a hello: {reply}"
        );
        (reply, frames.collect())
    }

    fn new_ua(&mut self) {
        let web_push = self.rng.gen_bool(0.6);
        let mobile = self.rng.gen_bool(0.2);
        let shard = self.rng.gen_range(0..self.shards());
        let conn = self.h.open_on(shard);
        let hello = self.hello_fields(None, mobile, web_push);
        let (reply, frames) = self.send_hello(conn, &hello);
        let expected_status = if mobile { 201 } else { 200 };
        ensure!(
            self,
            reply["status"] == expected_status,
            "fresh hello reply {reply}"
        );
        let uaid = reply["uaid"].as_str().unwrap_or_default().to_owned();
        ensure!(
            self,
            self.h.keys.check_uaid(&uaid).is_some(),
            "fresh UAID {uaid:?} does not verify"
        );
        ensure!(
            self,
            self.uas.iter().all(|ua| ua.uaid != uaid),
            "fresh UAID {uaid} was already issued"
        );
        let index = self.uas.len();
        self.note(format!(
            "new ua{index} {uaid} web_push={web_push} mobile={mobile} conn{conn} on shard {shard}"
        ));
        let mut model = ModelUa::new(uaid.clone(), uaid_of(&uaid), mobile, web_push);
        model.conn = Some(conn);
        self.uas.push(model);
        self.conns.insert(conn, (index, web_push));
        self.counters.hellos += 1;
        self.after_hello(index, conn, frames);
    }

    fn reconnect(&mut self, ua: usize) {
        if let Some(old) = self.uas[ua].conn {
            if self.rng.gen_bool(0.5) {
                self.disconnect(ua);
            } else {
                // A newer socket takes over: the old one is closed with 1000
                // (after whatever its outbox still holds).
                self.expected_closes.insert(old, close::NORMAL);
                self.uas[ua].conn = None;
            }
        }
        let web_push = if self.rng.gen_bool(0.8) {
            self.uas[ua].web_push
        } else {
            !self.uas[ua].web_push
        };
        let mobile = self.uas[ua].mobile;
        let mut hello = self.hello_fields(Some(ua), mobile, web_push);
        let mut sync = None;
        if self.rng.gen_bool(0.15) {
            let mut listed: Vec<String> = self.uas[ua].channels.keys().cloned().collect();
            if !listed.is_empty() && self.rng.gen_bool(0.4) {
                let at = self.rng.gen_range(0..listed.len());
                listed.remove(at);
            }
            // Stay within the channel limit (the limit on sync is a rules test).
            if listed.len() < self.limits().channels_per_uaid_max && self.rng.gen_bool(0.4) {
                let channel = self.random_channel();
                listed.push(channel);
            }
            let shown: Vec<String> = listed
                .iter()
                .map(|ch| {
                    if self.rng.gen_bool(0.2) {
                        ch.to_uppercase()
                    } else {
                        ch.clone()
                    }
                })
                .collect();
            hello["channelIDs"] = json!(shown);
            sync = Some(listed);
        }
        let shard = self.rng.gen_range(0..self.shards());
        let hand_offs = self.h.hand_offs;
        let conn = self.h.open_on(shard);
        self.note(format!(
            "reconnect ua{ua} conn{conn} on shard {shard} web_push={web_push} sync={sync:?}"
        ));
        let (reply, frames) = self.send_hello(conn, &hello);
        ensure!(
            self,
            reply["uaid"] == self.uas[ua].uaid,
            "known UAID not kept: {reply}"
        );
        let expected_status = if mobile { 201 } else { 200 };
        ensure!(
            self,
            reply["status"] == expected_status,
            "hello reply {reply}"
        );
        let owner = self.owner(ua);
        ensure!(
            self,
            self.h.socks[&conn].shard == owner,
            "socket ended on shard {} but ua{ua} belongs to shard {owner}",
            self.h.socks[&conn].shard
        );
        ensure!(
            self,
            (self.h.hand_offs > hand_offs) == (shard != owner),
            "hand-off iff accepted by another shard"
        );
        if shard != owner {
            self.counters.hand_offs += 1;
        }
        if let Some(listed) = sync {
            let listed: BTreeSet<String> = listed.into_iter().collect();
            let have: Vec<String> = self.uas[ua].channels.keys().cloned().collect();
            for channel in have.iter().filter(|ch| !listed.contains(*ch)) {
                self.model_unregister(ua, channel);
            }
            for channel in listed.iter().filter(|ch| !have.contains(*ch)) {
                let endpoint = self.endpoint_of(ua, channel);
                // The hello reply does not wait for these records.
                self.model_register(ua, channel, endpoint, false);
            }
        }
        let model = &mut self.uas[ua];
        model.conn = Some(conn);
        model.web_push = web_push;
        // A mobile hello always names its (routed) network.
        model.wakeup = model.mobile;
        model.pending.iter_mut().for_each(Msg::unsent);
        self.conns.insert(conn, (ua, web_push));
        self.counters.hellos += 1;
        self.after_hello(ua, conn, frames);
    }

    /// Right after a hello: the pending messages follow the reply, high first.
    pub fn after_hello(
        &mut self,
        ua: usize,
        conn: herald_engine::ConnId,
        frames: Vec<(Frame, herald_engine::Millis)>,
    ) {
        let mut urgencies = Vec::new();
        let mut assigned = BTreeSet::new();
        let web_push = self.uas[ua].web_push;
        for (frame, _) in &frames {
            for (channel, tok) in self.entries(conn, frame) {
                let candidates: Vec<&Msg> = self.uas[ua]
                    .pending
                    .iter()
                    .filter(|m| {
                        !assigned.contains(&m.serial)
                            && m.channel == channel
                            && m.token(web_push) == tok
                    })
                    .collect();
                // Same channel, same ms, same number: only an unambiguous
                // entry says something about the order.
                if let Some(best) = candidates.iter().max_by_key(|m| m.urgency) {
                    assigned.insert(best.serial);
                    if candidates.iter().all(|m| m.urgency == best.urgency) {
                        urgencies.push(best.urgency);
                    }
                }
            }
        }
        let first_normal = urgencies.iter().position(|u| *u != Urgency::High);
        if let Some(first_normal) = first_normal {
            ensure!(
                self,
                urgencies[first_normal..]
                    .iter()
                    .all(|u| *u != Urgency::High),
                "pending after hello not high-urgency first: {urgencies:?}"
            );
        }
        self.validate_frames(conn, frames);
    }

    pub fn disconnect(&mut self, ua: usize) {
        if let Some(conn) = self.uas[ua].conn.take() {
            self.note(format!("disconnect ua{ua} conn{conn}"));
            self.awaiting.remove(&conn);
            self.h.disconnect(conn);
        }
    }

    fn register(&mut self, ua: usize) {
        let conn = self.uas[ua].conn.unwrap();
        let existing: Vec<String> = self.uas[ua].channels.keys().cloned().collect();
        let previous: Vec<String> = self.uas[ua].endpoints.keys().cloned().collect();
        let channel = if !existing.is_empty() && self.rng.gen_bool(0.25) {
            existing[self.rng.gen_range(0..existing.len())].clone()
        } else if !previous.is_empty() && self.rng.gen_bool(0.15) {
            previous[self.rng.gen_range(0..previous.len())].clone()
        } else {
            self.random_channel()
        };
        let shown = if self.rng.gen_bool(0.2) {
            channel.to_uppercase()
        } else {
            channel.clone()
        };
        let known = self.uas[ua].channels.contains_key(&channel);
        let full = self.uas[ua].channels.len() >= self.limits().channels_per_uaid_max;
        let status = if !known && full { 429 } else { 200 };
        self.h
            .send_json(conn, json!({"messageType": "register", "channelID": shown}));
        self.note(format!("register ua{ua} {channel} (expect {status})"));
        let fresh = self.sync_records();
        let registered = fresh
            .iter()
            .filter(|(_, _, record)| matches!(record, Record::ChannelRegistered(_)))
            .count();
        ensure!(
            self,
            registered == usize::from(status == 200 && !known),
            "register of {channel} (known={known}) appended {registered} registrations"
        );
        let endpoint = self.endpoint_of(ua, &channel);
        if status == 200 && !known {
            self.model_register(ua, &channel, endpoint.clone(), false);
        }
        let lsn = self.registered_lsn(ua, &channel);
        if self.h.blocked(conn) {
            self.counters.held_ua_replies += 1;
        }
        self.awaiting.insert(
            conn,
            Awaiting::Register {
                channel,
                status,
                endpoint,
                lsn,
            },
        );
    }

    /// The LSN of the newest `ChannelRegistered` of ua's channel (0: none).
    pub fn registered_lsn(&self, ua: usize, channel: &str) -> Lsn {
        let channel = ChannelId::parse(channel).expect("a valid channel id");
        self.view
            .ua(&self.uas[ua].uaid_bytes)
            .and_then(|view| view.channels.get(&channel))
            .map_or(0, |state| state.registered_lsn)
    }

    pub fn model_register(&mut self, ua: usize, channel: &str, endpoint: String, confirmed: bool) {
        let model = &mut self.uas[ua];
        model.endpoints.insert(channel.to_owned(), endpoint.clone());
        model.unregistered.remove(channel);
        model.channels.insert(
            channel.to_owned(),
            ModelChannel {
                endpoint,
                version: 0,
                max_sent: 0,
                confirmed,
            },
        );
    }

    fn unregister(&mut self, ua: usize) {
        let conn = self.uas[ua].conn.unwrap();
        let channels: Vec<String> = self.uas[ua].channels.keys().cloned().collect();
        let Some(channel) = self.pick_string(&channels) else {
            return;
        };
        self.h.send_json(
            conn,
            json!({"messageType": "unregister", "channelID": channel}),
        );
        self.note(format!("unregister ua{ua} {channel}"));
        let lsn = self
            .sync_records()
            .iter()
            .find(|(_, _, record)| matches!(record, Record::ChannelUnregistered { .. }))
            .map(|(_, lsn, _)| *lsn);
        ensure!(
            self,
            lsn.is_some(),
            "unregister of {channel} appended no record"
        );
        self.model_unregister(ua, &channel);
        if self.h.blocked(conn) {
            self.counters.held_ua_replies += 1;
        }
        self.awaiting
            .insert(conn, Awaiting::Unregister { channel, lsn });
    }

    pub fn model_unregister(&mut self, ua: usize, channel: &str) {
        let model = &mut self.uas[ua];
        model.channels.remove(channel);
        // A re-registered channel is a new subscription: versions start over.
        model.last_version.remove(channel);
        let (gone, kept): (Vec<Msg>, Vec<Msg>) = model
            .pending
            .drain(..)
            .partition(|message| message.channel == channel);
        model.pending = kept;
        for message in gone {
            model.remove(message, "unregistered");
        }
        self.covered_versions
            .retain(|(u, ch, _)| !(*u == ua && ch == channel));
    }

    fn ack(&mut self, ua: usize) {
        let conn = self.uas[ua].conn.unwrap();
        let web_push = self.uas[ua].web_push;
        let seen: Vec<(String, Tok)> = self.uas[ua]
            .pending
            .iter()
            .filter(|m| m.seen)
            .map(|m| (m.channel.clone(), m.token(web_push)))
            .collect();
        let mut updates = Vec::new();
        let mut chosen = Vec::new();
        for (channel, tok) in seen {
            if self.rng.gen_bool(0.6) {
                let version = match (tok.number(), web_push) {
                    (None, _) => match &tok {
                        Tok::Id(id) => json!(id),
                        _ => unreachable!("only ids have no number"),
                    },
                    (Some(n), true) => json!(n.to_string()),
                    (Some(n), false) => json!(n),
                };
                updates.push(json!({"channelID": channel, "version": version, "code": 100}));
                chosen.push((channel, tok));
            }
        }
        if self.rng.gen_bool(0.1) {
            let channel = self.random_channel();
            updates.push(json!({"channelID": channel, "version": "junk"}));
        }
        self.note(format!("ack ua{ua} {chosen:?}"));
        self.h
            .send_json(conn, json!({"messageType": "ack", "updates": updates}));
        for (channel, tok) in chosen {
            let model = &mut self.uas[ua];
            let freed: Vec<usize> = model
                .pending
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    m.channel == channel
                        && match &tok {
                            Tok::Id(id) => m.web_push_id() == Some(id.as_str()),
                            // A Web Push socket saw Web Push messages by id:
                            // a number never frees those there.
                            Tok::Num(n) | Tok::Desktop(n, _) => {
                                m.numeric() <= *n
                                    && !(web_push && matches!(m.kind, Kind::WebPush { .. }))
                            }
                        }
                })
                .map(|(at, _)| at)
                .collect();
            for at in freed.into_iter().rev() {
                let message = model.pending.remove(at);
                self.counters.acks += 1;
                model.remove(message, "acked");
            }
        }
    }

    fn ping(&mut self, ua: usize) {
        let conn = self.uas[ua].conn.unwrap();
        let text_form = self.rng.gen_bool(0.5);
        self.h.send(conn, if text_form { "PING" } else { "{}" });
        self.awaiting.insert(conn, Awaiting::Ping { text_form });
    }

    // ---- AS actions ----------------------------------------------------

    /// A random (UA, channel) with a live registration.
    fn pick_channel(&mut self) -> Option<(usize, String)> {
        let all: Vec<(usize, String)> = self
            .uas
            .iter()
            .enumerate()
            .flat_map(|(i, ua)| ua.channels.keys().map(move |ch| (i, ch.clone())))
            .collect();
        if all.is_empty() {
            None
        } else {
            Some(all[self.rng.gen_range(0..all.len())].clone())
        }
    }

    fn random_urgency(&mut self) -> Urgency {
        [
            Urgency::VeryLow,
            Urgency::Low,
            Urgency::Normal,
            Urgency::High,
        ][self.rng.gen_range(0..4)]
    }

    /// An AS request for `ua`'s shard, accepted by a random shard (which
    /// sends it over the ring when it is not the owner). `None` when it was
    /// refused at once: the accepting shard already waits for as many
    /// answers as it may (checked here).
    fn submit(
        &mut self,
        ua: usize,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<herald_engine::RequestId> {
        let owner = self.owner(ua);
        let accepting = self.rng.gen_range(0..self.shards());
        let refuse = accepting != owner
            && self.h.shards[accepting].remote_in_flight()
                >= self.limits().as_in_flight_per_shard_max;
        let request = match self
            .h
            .submit_request_via(accepting, method, url, headers, body)
        {
            Ok(request) => request,
            Err(response) => self.fail(format!(
                "{method} {url} answered by the decoder: {response:?}"
            )),
        };
        if accepting != owner {
            self.counters.ring_routed += 1;
        }
        if !refuse {
            return Some(request);
        }
        let response = self.h.replies.remove(&request);
        ensure!(
            self,
            response.as_ref().is_some_and(|r| r.status == 503),
            "shard {accepting} waits for {} answers, yet {method} was not refused: {response:?}",
            self.h.shards[accepting].remote_in_flight()
        );
        let fresh = self.sync_records();
        ensure!(
            self,
            fresh.is_empty(),
            "a refused request appended {fresh:?}"
        );
        self.note(format!("{method} for ua{ua} refused by shard {accepting}"));
        self.counters.refused += 1;
        None
    }

    fn expect(&mut self, request: herald_engine::RequestId, expect: Expect) {
        self.answers.insert(request, expect);
        self.settle();
    }

    fn put_version(&mut self) {
        let Some((ua, channel)) = self.pick_channel() else {
            return;
        };
        let state = &self.uas[ua].channels[&channel];
        let (current, max_sent, endpoint) = (state.version, state.max_sent, state.endpoint.clone());
        // Not newer than the shard's, or newer than any the AS ever sent.
        let version = if current > 0 && self.rng.gen_ratio(1, 4) {
            self.rng
                .gen_range(current.saturating_sub(3).max(1)..=current)
        } else {
            self.rng.gen_range(max_sent + 1..=max_sent + 5)
        };
        let body = format!("version={version}");
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        let Some(request) = self.submit(ua, "PUT", &endpoint, &headers, body.as_bytes()) else {
            return;
        };
        let what = format!("PUT ua{ua} {channel} version={version} (current {current})");
        self.note(what.clone());
        self.counters.pushes += 1;
        let state = self.uas[ua].channels.get_mut(&channel).unwrap();
        state.max_sent = state.max_sent.max(version);
        let stored = self.take_stored(ua);
        let mut expect = Expect::new(ua, what, &[200], self.step);
        expect.body = Some("{}");
        if version <= current {
            ensure!(self, stored.is_none(), "a not-newer version was stored");
            // Accepted as covered by the newer one: that one must be durable.
            let shard = self.owner(ua);
            let basis = self
                .view
                .ua(&self.uas[ua].uaid_bytes)
                .and_then(|view| view.channels.get(&ChannelId::parse(&channel).unwrap()))
                .map(|view| view.version_lsn);
            let Some(basis) = basis else {
                self.fail(format!("no record holds version {current} of {channel}"));
            };
            expect.durable = Some((shard, basis, "the record of a newer version"));
            expect.on_success = OnSuccess::VersionCovered(ua, channel, version);
            self.after_push(ua, None);
            return self.expect(request, expect);
        }
        let Some((seq, lsn)) = stored else {
            self.fail(format!("version {version} > {current} was not stored"));
        };
        self.uas[ua].channels.get_mut(&channel).unwrap().version = version;
        let message = self.new_msg(
            seq,
            lsn,
            &channel,
            0,
            Urgency::Normal,
            None,
            Kind::Version(version),
        );
        expect.durable = Some((self.owner(ua), lsn, "MessageStored"));
        expect.on_success = OnSuccess::Stored(message.serial);
        self.model_store(ua, message);
        self.expect(request, expect);
    }

    fn put_desktop(&mut self) {
        let Some((ua, channel)) = self.pick_channel() else {
            return;
        };
        let ttl: Option<u64> = if self.rng.gen_bool(0.7) {
            Some(self.rng.gen_range(1..60))
        } else {
            None
        };
        let text = format!("note {}", self.rng.gen_range(0..1000));
        let body = match ttl {
            Some(ttl) => format!("body={}&ttl={ttl}", text.replace(' ', "+")),
            None => format!("body={}", text.replace(' ', "+")),
        };
        let endpoint = self.uas[ua].channels[&channel].endpoint.clone();
        let Some(request) = self.submit(ua, "PUT", &endpoint, &[], body.as_bytes()) else {
            return;
        };
        let what = format!("PUT desktop ua{ua} {channel} ttl={ttl:?}");
        self.note(what.clone());
        self.counters.pushes += 1;
        let Some((seq, lsn)) = self.take_stored(ua) else {
            self.fail("desktop notification not stored".into());
        };
        let expires = ttl.map_or(0, |ttl| self.h.now + ttl * 1000);
        let message = self.new_msg(
            seq,
            lsn,
            &channel,
            expires,
            Urgency::Normal,
            None,
            Kind::Desktop(text),
        );
        let mut expect = Expect::new(ua, what, &[200], self.step);
        expect.durable = Some((self.owner(ua), lsn, "MessageStored"));
        expect.on_success = OnSuccess::Stored(message.serial);
        self.model_store(ua, message);
        self.expect(request, expect);
    }

    fn post(&mut self) {
        let Some((ua, channel)) = self.pick_channel() else {
            return;
        };
        let ttl: u64 = match self.rng.gen_range(0..10) {
            0 => 0,
            1..=5 => self.rng.gen_range(1..30),
            6..=8 => 600,
            _ => 3600,
        };
        let topic = match self.rng.gen_range(0..6) {
            0 => Some("alpha"),
            1 => Some("beta"),
            _ => None,
        };
        let urgency = self.random_urgency();
        let data: Vec<u8> = if self.rng.gen_bool(0.5) {
            let len = self.rng.gen_range(1..40);
            (0..len).map(|_| self.rng.gen()).collect()
        } else {
            Vec::new()
        };
        let respond_async = self.rng.gen_bool(0.1);
        let ttl_text = ttl.to_string();
        let mut headers = vec![("TTL", ttl_text.as_str()), ("Urgency", urgency.as_str())];
        if let Some(topic) = topic {
            headers.push(("Topic", topic));
        }
        if !data.is_empty() {
            headers.push(("Content-Encoding", "aes128gcm"));
        }
        if respond_async {
            headers.push(("Prefer", "respond-async"));
        }
        let endpoint = self.uas[ua].channels[&channel].endpoint.clone();
        let Some(request) = self.submit(ua, "POST", &endpoint, &headers, &data) else {
            return;
        };
        let what = format!(
            "POST ua{ua} {channel} ttl={ttl} topic={topic:?} {urgency:?} data={}",
            data.len()
        );
        self.note(what.clone());
        self.counters.pushes += 1;
        let status = if respond_async { 202 } else { 201 };
        let mut expect = Expect::new(ua, what, &[status], self.step);
        expect.ttl = Some(ttl_text);
        let stored = self.take_stored(ua);
        let channel_id = ChannelId::parse(&channel).unwrap();
        if ttl == 0 {
            ensure!(self, stored.is_none(), "a TTL=0 message was stored");
            expect.unstored_location = Some(channel_id);
            if let Some(conn) = self.uas[ua].conn {
                let tok = (!self.uas[ua].web_push).then_some(Tok::Num(self.h.now));
                self.transient.push(Transient {
                    ua,
                    conn,
                    channel,
                    tok,
                    seen: false,
                });
            }
            self.after_push(ua, None);
            return self.expect(request, expect);
        }
        let Some((seq, lsn)) = stored else {
            self.fail("a Web Push message was not stored".into());
        };
        let id = self
            .h
            .keys
            .message_id(&self.uas[ua].uaid_bytes, &channel_id, seq);
        let expires = self.h.now + ttl * 1000;
        let message = self.new_msg(
            seq,
            lsn,
            &channel,
            expires,
            urgency,
            topic.map(str::to_owned),
            Kind::WebPush {
                id: id.clone(),
                data,
            },
        );
        expect.location = Some(id);
        expect.durable = Some((self.owner(ua), lsn, "MessageStored"));
        expect.on_success = OnSuccess::Stored(message.serial);
        self.model_store(ua, message);
        self.expect(request, expect);
    }

    fn push_to_gone(&mut self) {
        let candidates: Vec<(usize, String)> = self
            .uas
            .iter()
            .enumerate()
            .flat_map(|(i, ua)| {
                ua.endpoints
                    .iter()
                    .filter(|(ch, _)| !ua.channels.contains_key(*ch))
                    .map(move |(_, endpoint)| (i, endpoint.clone()))
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (ua, endpoint) = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let post = self.rng.gen_bool(0.5);
        let submitted = if post {
            self.submit(ua, "POST", &endpoint, &[("TTL", "60")], b"")
        } else {
            let headers = [("Content-Type", "application/x-www-form-urlencoded")];
            self.submit(ua, "PUT", &endpoint, &headers, b"version=1")
        };
        let Some(request) = submitted else {
            return;
        };
        let what = format!("push to an unregistered endpoint of ua{ua}");
        self.note(what.clone());
        let fresh = self.sync_records();
        ensure!(
            self,
            fresh.is_empty(),
            "a push to an unregistered endpoint appended {fresh:?}"
        );
        self.after_push(ua, None);
        let expect = Expect::new(ua, what, &[410], self.step);
        self.expect(request, expect);
    }

    #[allow(clippy::too_many_arguments)]
    fn new_msg(
        &mut self,
        seq: u64,
        stored_lsn: Lsn,
        channel: &str,
        expires: herald_engine::Millis,
        urgency: Urgency,
        topic: Option<String>,
        kind: Kind,
    ) -> Msg {
        self.next_serial += 1;
        Msg {
            serial: self.next_serial,
            seq,
            channel: channel.to_owned(),
            arrived: self.h.now,
            expires,
            urgency,
            topic,
            kind,
            stored_lsn,
            seen: false,
            sends: (0, 0, 0),
            ambiguous: false,
            resurrected: false,
        }
    }

    /// SPEC §4.1/§4.2/§7: replace older versions / same topic, then make room
    /// by dropping the oldest message of the lowest urgency among live ones.
    /// The removals the shard logged for this push must be exactly these
    /// (it may also drop expired messages it had not purged yet).
    fn model_store(&mut self, ua: usize, message: Msg) {
        let max = self.limits().pending_per_uaid_max;
        let logged = std::mem::take(&mut self.step_removals);
        let model = &mut self.uas[ua];
        let mut replaced = Vec::new();
        model.pending.retain(|old| {
            let replace = old.channel == message.channel
                && match (&old.kind, &message.kind) {
                    (Kind::Version(_), Kind::Version(_)) => true,
                    _ => message.topic.is_some() && old.topic == message.topic,
                };
            if replace {
                replaced.push(old.clone());
            }
            !replace
        });
        let mut dropped = Vec::new();
        if model.pending.len() >= max {
            let victim = model
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, m)| (m.urgency, m.seq))
                .map(|(at, _)| at)
                .unwrap();
            dropped.push(model.pending.remove(victim));
        }
        // Compare with what the shard logged, for messages the model holds live.
        let live_seq = |seq: &u64| {
            replaced.iter().chain(&dropped).any(|m| m.seq == *seq)
                || model.pending.iter().any(|m| m.seq == *seq)
        };
        let mut logged_replaced: Vec<u64> = logged
            .iter()
            .filter(|(seq, reason)| {
                *reason == herald_engine::message::Removal::Replaced && live_seq(seq)
            })
            .map(|(seq, _)| *seq)
            .collect();
        let mut logged_dropped: Vec<u64> = logged
            .iter()
            .filter(|(seq, reason)| {
                *reason == herald_engine::message::Removal::Dropped && live_seq(seq)
            })
            .map(|(seq, _)| *seq)
            .collect();
        logged_replaced.sort_unstable();
        logged_dropped.sort_unstable();
        let mut want_replaced: Vec<u64> = replaced.iter().map(|m| m.seq).collect();
        want_replaced.sort_unstable();
        let want_dropped: Vec<u64> = dropped.iter().map(|m| m.seq).collect();
        if logged_replaced != want_replaced || logged_dropped != want_dropped {
            self.fail(format!(
                "ua{ua}: the shard replaced {logged_replaced:?} and dropped {logged_dropped:?}, \
                 the spec wants replaced {want_replaced:?} and dropped {want_dropped:?}"
            ));
        }
        self.counters.replaced += replaced.len() as u64;
        self.counters.dropped += dropped.len() as u64;
        let model = &mut self.uas[ua];
        for old in replaced {
            model.remove(old, "replaced");
        }
        for old in dropped {
            model.remove(old, "dropped");
        }
        let urgency = message.urgency;
        model.pending.push(message);
        self.after_push(ua, Some(urgency));
    }

    /// A push was stored (with this urgency) or not: an asleep wakeup UA gets
    /// exactly one wakeup for a stored message of normal or high urgency;
    /// very-low and low ones wait for its next connection.
    fn after_push(&mut self, ua: usize, stored: Option<Urgency>) {
        let calls: Vec<WakeupCall> = self.h.wakeups[self.wakeup_cursor..].to_vec();
        self.wakeup_cursor = self.h.wakeups.len();
        let model = &self.uas[ua];
        let asleep = model.wakeup && model.conn.is_none();
        if stored.is_some_and(|urgency| urgency >= Urgency::Normal) && asleep {
            ensure!(
                self,
                calls.len() == 1 && calls[0].uaid == model.uaid_bytes,
                "asleep ua{ua} needed one wakeup, got {calls:?}"
            );
            self.counters.wakeups += 1;
        } else {
            ensure!(self, calls.is_empty(), "unexpected wakeups {calls:?}");
        }
    }

    fn delete(&mut self) {
        let candidates: Vec<(usize, String)> = self
            .uas
            .iter()
            .enumerate()
            .flat_map(|(i, ua)| {
                ua.pending
                    .iter()
                    .filter_map(|m| m.web_push_id().map(str::to_owned))
                    .chain(ua.gone_ids.iter().map(|(id, _)| id.clone()))
                    .chain(ua.acked_ids.iter().cloned())
                    .map(move |id| (i, id))
                    .collect::<Vec<_>>()
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (ua, id) = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let Some(request) = self.submit(ua, "DELETE", &format!("{ORIGIN}/m/{id}"), &[], b"") else {
            return;
        };
        let what = format!("DELETE ua{ua} {id}");
        self.note(what.clone());
        let removal = self
            .sync_records()
            .iter()
            .find(|(_, _, record)| matches!(record, Record::MessageRemoved { .. }))
            .map(|(shard, lsn, _)| (*shard, *lsn));
        let at = self.uas[ua]
            .pending
            .iter()
            .position(|m| m.web_push_id() == Some(id.as_str()));
        let expect = match at {
            Some(at) => {
                let Some((shard, lsn)) = removal else {
                    self.fail(format!("DELETE of pending {id} appended no record"));
                };
                let message = self.uas[ua].pending.remove(at);
                let mut expect = Expect::new(ua, what, &[204], self.step);
                expect.durable = Some((shard, lsn, "MessageRemoved"));
                expect.on_success = OnSuccess::Deleted(message.serial);
                self.uas[ua].remove(message, "deleted");
                expect
            }
            None if self.uas[ua].expired_ids.contains(&id) => {
                ensure!(
                    self,
                    removal.is_none(),
                    "DELETE of expired {id} appended a removal"
                );
                Expect::new(ua, what, &[404, 204], self.step)
            }
            None => {
                if removal.is_some() {
                    let history = self.history_of(&id);
                    self.fail(format!(
                        "DELETE of {id}, which is not pending, appended a removal; its records: {history:#?}"
                    ));
                }
                Expect::new(ua, what, &[404], self.step)
            }
        };
        self.expect(request, expect);
    }

    fn get_acked_state(&mut self) {
        let candidates: Vec<(usize, String, bool)> = self
            .uas
            .iter()
            .enumerate()
            .flat_map(|(i, ua)| {
                ua.acked_ids
                    .iter()
                    .map(move |id| (i, id.clone(), false))
                    .chain(ua.forgotten_ids.iter().map(move |id| (i, id.clone(), true)))
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (ua, id, forgotten) = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let Some(request) = self.submit(ua, "GET", &format!("/m/{id}"), &[], b"") else {
            return;
        };
        let what = format!("GET /m of acked {id} (ua{ua}, maybe forgotten: {forgotten})");
        self.note(what.clone());
        let statuses: &[u16] = if forgotten { &[200, 404] } else { &[200] };
        let mut expect = Expect::new(ua, what, statuses, self.step);
        expect.state = Some("acked");
        self.expect(request, expect);
    }

    // ---- time ----------------------------------------------------------

    fn advance(&mut self) {
        let ms = match self.rng.gen_range(0..10) {
            0..=3 => self.rng.gen_range(1..200),
            4..=7 => self.rng.gen_range(200..4_000),
            8 => self.rng.gen_range(4_000..15_000),
            _ => self.rng.gen_range(15_000..90_000),
        };
        // Records do not wait long for their commit.
        if self
            .uncommitted_since
            .is_some_and(|since| self.h.now + ms - since > crate::sim::UNCOMMITTED_MS_MAX)
        {
            self.full_commit();
        }
        self.note(format!("advance {ms} ms"));
        self.h.advance(ms);
    }

    // ---- records -------------------------------------------------------

    /// Takes the records appended since the last call into the view;
    /// returns the (seq, LSN) of the message stored for `ua` among them, if
    /// any, and keeps the removals logged for `ua` for `model_store`.
    fn take_stored(&mut self, ua: usize) -> Option<(u64, Lsn)> {
        let uaid = self.uas[ua].uaid_bytes;
        let mut stored = Vec::new();
        self.step_removals.clear();
        for (_, lsn, record) in self.sync_records() {
            match record {
                Record::MessageStored(message) => stored.push((message.uaid, message.seq, lsn)),
                Record::MessageRemoved {
                    uaid: owner,
                    seq,
                    reason,
                    ..
                } if owner == uaid => self.step_removals.push((seq, reason)),
                _ => {}
            }
        }
        ensure!(
            self,
            stored.len() <= 1,
            "one push stored {} messages: {stored:?}",
            stored.len()
        );
        let (owner, seq, lsn) = *stored.first()?;
        ensure!(
            self,
            owner == uaid,
            "a push to ua{ua} stored a message for another UAID"
        );
        Some((seq, lsn))
    }
}
