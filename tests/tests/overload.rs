//! Overload (issue 13 item 8): a UA that stops reading is disconnected once
//! its outbox is full, its messages stay stored, and the server goes on
//! serving everyone else.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_tests::as_client::push_aes128gcm;
use herald_tests::util::{b64url_encode, wait_until};
use herald_tests::*;

/// Small bounds, so the test fills them quickly: the outbox holds
/// `pending_per_uaid_max + ua_outbox_frames_max` frames beyond what the
/// kernel's socket buffers took.
const PENDING_MAX: usize = 40;
const BODY_BYTES: usize = 3000;
/// Enough pushes to fill the server's socket send buffer (autotuned up to a
/// few MB on loopback) and then the outbox; the test stops at the
/// disconnect, long before.
const PUSHES_MAX: usize = 6000;

#[test]
fn a_ua_that_stops_reading_is_disconnected_and_its_messages_stay_stored() {
    let server = Server::start(
        ServerOptions::new()
            .limit("pending_per_uaid_max", PENDING_MAX)
            .limit("ua_outbox_frames_max", 8)
            .limit("notifications_per_channel_per_minute", 0),
    );
    let mut slow = server.ua_webpush();
    let (_, endpoint) = slow.register_new();
    let uaid = slow.uaid();
    // The gauge read below is published once a second: see it count the UA
    // before taking its fall to 0 as the disconnect.
    wait_until(DEADLINE, "the UA's socket counted", || {
        server.metric_named("herald_connections") == 1.0
    });
    // From here on the UA reads nothing.
    let mut accepted = Vec::new();
    let mut disconnected = false;
    for n in 0..PUSHES_MAX {
        let mut body = format!("message {n} ").into_bytes();
        body.resize(BODY_BYTES, b'.');
        let response = push_aes128gcm(&endpoint, &body, 600);
        response.assert_status(201, "a push to a UA that does not read");
        accepted.push(b64url_encode(&body));
        if n % 100 == 99 && server.metric_named("herald_connections") == 0.0 {
            disconnected = true;
            break;
        }
    }
    assert!(
        disconnected,
        "the server never gave up on a UA that reads nothing"
    );
    eprintln!(
        "[overload] the UA was disconnected after {} pushes",
        accepted.len()
    );

    // Everyone else is served as before.
    let mut other = server.ua_webpush();
    let (_, other_endpoint) = other.register_new();
    push_aes128gcm(&other_endpoint, b"hello", 60).assert_status(201, "a push to another UA");
    let notification = other.recv_notification(DEADLINE);
    other.ack_notification(&notification);

    // The slow UA comes back: what is still pending is all there, bounded by
    // the pending limit, newest included, and nothing it was not sent.
    drop(slow);
    let mut back = server.ua_resume(&uaid, true);
    let mut received = BTreeSet::new();
    while let Some(message) = back.try_recv_json(Duration::from_secs(2)) {
        if message["messageType"] == "notification" {
            received.insert(message["data"].as_str().unwrap_or_default().to_owned());
            back.ack_notification(&message);
        }
    }
    let accepted_set: BTreeSet<String> = accepted.iter().cloned().collect();
    assert!(
        received.is_subset(&accepted_set),
        "only accepted messages come back"
    );
    assert_eq!(
        received.len(),
        PENDING_MAX,
        "the pending limit's worth of messages is kept"
    );
    assert!(
        received.contains(accepted.last().expect("pushes were made")),
        "the newest message is among those kept"
    );
    wait_until(DEADLINE, "nothing pending once acked", || {
        server.metric_named("herald_pending_messages") == 0.0
    });
}
