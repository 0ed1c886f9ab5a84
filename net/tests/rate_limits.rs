//! SPEC §9's rate limit per channel, through the real driver on the fake
//! clock: a notification over its channel's rate is answered 429 with
//! `Retry-After` on the shard that owns the channel, and leaves no record
//! and no frame. (The buckets themselves: `engine/src/rate.rs`; the limits
//! per source address and the binary: `tests/tests/limits.rs`.)

mod common;

use common::*;
use herald_engine::limits::Limits;
use herald_engine::push::{errno, HttpResponse};
use herald_engine::record::Record;
use herald_engine::ChannelId;
use serde_json::json;

/// A channel may take 3 at once, then one a second.
fn limits() -> Limits {
    Limits {
        notifications_per_channel_per_minute: 60,
        notifications_per_channel_burst: 3,
        ..Limits::default()
    }
}

fn assert_rate_limited(response: &HttpResponse, retry_after_s: &str) {
    assert_eq!(response.status, 429, "{response:?}");
    assert_eq!(header(response, "Retry-After"), Some(retry_after_s));
    let body = body_json(response);
    assert_eq!(body["code"], 429, "{body}");
    assert_eq!(body["errno"], errno::RATE_LIMITED, "{body}");
    assert_eq!(body["error"], "Too Many Requests", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// `MessageStored` records of `channel` in shard `index`'s log.
fn stored(h: &Harness, index: usize, channel: &str) -> usize {
    let channel = ChannelId::parse(channel).expect("channel id");
    h.log(index)
        .iter()
        .filter(|record| matches!(record, Record::MessageStored(m) if m.channel == channel))
        .count()
}

/// Notifications `conn` received since the last call, acked (so that the
/// retry timer does not send them again).
fn receive(h: &mut Harness, conn: herald_engine::ConnId) -> usize {
    let notifications = h.take_notifications(conn);
    for notification in &notifications {
        let channel = notification["channelID"].as_str().expect("channelID");
        h.ack(conn, channel, notification["version"].clone());
    }
    notifications.len()
}

#[test]
fn a_channel_over_its_rate_gets_429_and_nothing_is_stored_or_sent() {
    let mut h = Harness::with_limits(limits());
    let (conn, _) = h.connect_new(true);
    let busy = h.register(conn, &chan(1));
    let quiet = h.register(conn, &chan(2));
    for _ in 0..3 {
        assert_eq!(h.post(&busy, 60).status, 201, "the burst");
    }
    assert_rate_limited(&h.post(&busy, 60), "1");
    // Either method on the endpoint counts against the same channel.
    assert_rate_limited(&h.put_version(&busy, 7), "1");
    assert_eq!(h.post(&quiet, 60).status, 201, "another channel of the UA");
    assert_eq!(receive(&mut h, conn), 4, "3 + 1, no more");
    assert_eq!(
        stored(&h, 0, &chan(1)),
        3,
        "a refused notification is not stored"
    );
    assert_eq!(h.engine(0).stats().channel_rate_limited, 2);
    assert_eq!(h.engine(0).stats().notifications_in, 4);

    // One token a second.
    h.advance(999);
    assert_rate_limited(&h.post(&busy, 60), "1");
    h.advance(1);
    assert_eq!(h.post(&busy, 60).status, 201, "a second later");
    assert_rate_limited(&h.post(&busy, 60), "1");
    assert_eq!(receive(&mut h, conn), 1);
    // A quiet spell refills the burst, no more.
    h.advance(60_000);
    for _ in 0..3 {
        assert_eq!(h.post(&busy, 60).status, 201);
    }
    assert_rate_limited(&h.post(&busy, 60), "1");
    assert_eq!(receive(&mut h, conn), 3);
    assert_eq!(stored(&h, 0, &chan(1)), 7);
}

#[test]
fn an_endpoint_that_is_gone_is_410_not_429() {
    let mut h = Harness::with_limits(limits());
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    for _ in 0..3 {
        assert_eq!(h.post(&endpoint, 60).status, 201);
    }
    h.send_json(
        conn,
        json!({"messageType": "unregister", "channelID": chan(1)}),
    );
    assert_eq!(h.take_reply(conn, "unregister")["status"], 200);
    assert_eq!(h.post(&endpoint, 60).status, 410);
}

#[test]
fn the_limit_is_kept_by_the_owning_shard_whichever_shard_accepts() {
    let mut h = Harness::build(2, limits(), &[], 1);
    let (conn, uaid) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    let owner = uaid_of(&uaid).shard(2);
    let request = |h: &Harness| {
        h.decode("POST", &endpoint, &[("TTL", "60")], b"")
            .expect("a valid request")
    };
    let answers: Vec<u16> = (0..6)
        .map(|n| {
            let push = request(&h);
            h.deliver_request_via(n % 2, push).status
        })
        .collect();
    assert_eq!(answers, [201, 201, 201, 429, 429, 429], "one bucket");
    assert_eq!(h.engine(owner).stats().channel_rate_limited, 3);
    assert_eq!(h.engine(1 - owner).stats().channel_rate_limited, 0);
    assert_eq!(h.take_notifications(conn).len(), 3);
}

#[test]
fn by_default_a_whole_backlog_fits_in_the_burst_and_zero_is_off() {
    // Default: 1,000 at once (a UA's whole pending backlog), then 10 a second.
    let mut h = Harness::with_limits(Limits::default());
    let (uaid, endpoint) = {
        let (conn, uaid) = h.connect_new(true);
        let endpoint = h.register(conn, &chan(1));
        h.disconnect(conn);
        (uaid, endpoint)
    };
    for n in 0..1_000 {
        assert_eq!(h.post(&endpoint, 600).status, 201, "push {n}");
    }
    assert_rate_limited(&h.post(&endpoint, 600), "1");
    h.advance(100);
    assert_eq!(h.post(&endpoint, 600).status, 201, "10 a second");
    let conn = h.reconnect(&uaid, true);
    assert_eq!(h.take_notifications(conn).len(), 1_000, "the pending cap");

    let mut h = Harness::with_limits(Limits {
        notifications_per_channel_per_minute: 0,
        ..limits()
    });
    let (conn, _) = h.connect_new(true);
    let endpoint = h.register(conn, &chan(1));
    for n in 0..2_000 {
        assert_eq!(h.post(&endpoint, 0).status, 201, "push {n}: no limit");
    }
}
