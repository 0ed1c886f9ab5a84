//! WAL compaction in the real server (issue 3): with a tiny compaction
//! threshold the log is compacted many times under traffic, and a restart
//! still finds every registration and every pending message, and nothing
//! that was acked.

use std::collections::BTreeSet;

use herald_tests::*;

fn data_of(notification: &serde_json::Value) -> String {
    String::from_utf8(notification_data(notification)).expect("test bodies are UTF-8")
}

#[test]
fn compacted_logs_keep_registrations_and_pending_messages() {
    let mut server = Server::start(
        ServerOptions::new()
            .shards(2)
            .limit("wal_compact_after_bytes", 4096),
    );
    // Online UAs ack what they get; offline ones keep a backlog.
    let mut online = Vec::new();
    let mut offline = Vec::new();
    for index in 0..8 {
        let mut ua = server.ua_webpush();
        let (channel, endpoint) = ua.register_new();
        if index % 2 == 0 {
            online.push((ua, endpoint));
        } else {
            let uaid = ua.uaid();
            drop(ua);
            offline.push((uaid, channel, endpoint));
        }
    }
    let mut expected_offline: Vec<BTreeSet<String>> = vec![BTreeSet::new(); offline.len()];
    for round in 0..40 {
        for (ua, endpoint) in &mut online {
            push_aes128gcm(endpoint, format!("online {round}").as_bytes(), 600)
                .assert_status(201, "online push");
            let notification = ua.recv_notification(DEADLINE);
            ua.ack_notification(&notification);
        }
        for (index, (_, _, endpoint)) in offline.iter().enumerate() {
            let body = format!("offline {index} {round}");
            push_aes128gcm(endpoint, body.as_bytes(), 600).assert_status(201, "offline push");
            expected_offline[index].insert(body);
        }
    }
    wait_until(DEADLINE, "the log was compacted", || {
        server.metric_sum("wal_compactions") >= 2.0
    });
    let online_uaids: Vec<String> = online.iter().map(|(ua, _)| ua.uaid()).collect();
    drop(online);
    server.restart();
    for uaid in &online_uaids {
        let mut ua = server.ua_resume(uaid, true);
        ua.expect_silence(NEG_WINDOW);
    }
    for (index, (uaid, channel, endpoint)) in offline.iter().enumerate() {
        let mut ua = server.ua_resume(uaid, true);
        let mut got = BTreeSet::new();
        while got.len() < expected_offline[index].len() {
            let notification = ua.recv_notification(DEADLINE);
            got.insert(data_of(&notification));
        }
        assert_eq!(
            got, expected_offline[index],
            "UA {index}'s backlog after compaction and restart"
        );
        assert_eq!(
            ua.register(channel),
            *endpoint,
            "same endpoint after restart"
        );
        ua.expect_silence(NEG_WINDOW);
    }
}
