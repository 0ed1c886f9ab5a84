//! Cluster mode (SPEC §2 `--cluster`, issue 11): Herald nodes sharing a
//! nine-node Redis Cluster (three "data centres" of three nodes, every
//! master with a replica in both other DCs), all on loopback.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herald_tests::as_client::{push_aes128gcm, put_version};
use herald_tests::redis_cluster::RedisCluster;
use herald_tests::server::{Server, ServerOptions};
use herald_tests::ua::WsClient;
use herald_tests::util::{free_port, random_hex, wait_until, TempDir};
use herald_tests::DEADLINE;

/// Herald nodes of one cluster, sharing one key file.
struct Nodes {
    redis: RedisCluster,
    nodes: Vec<Server>,
    _keys: TempDir,
}

impl Nodes {
    fn start(count: usize) -> Nodes {
        let redis = RedisCluster::start();
        let keys = TempDir::new("cluster-keys");
        let key_file = keys.path().join("keys");
        std::fs::write(
            &key_file,
            format!(
                "uaid_key = {}\ntoken_key = {}\n",
                random_hex(16),
                random_hex(32)
            ),
        )
        .expect("write the shared key file");
        let nodes = (0..count)
            .map(|_| {
                let node_port = free_port();
                Server::start(
                    ServerOptions::new()
                        .shards(2)
                        .arg("--cluster")
                        .arg(&redis.seeds())
                        .arg("--node-listen")
                        .arg(&format!("127.0.0.1:{node_port}"))
                        .arg("--keys-file")
                        .arg(key_file.to_str().expect("utf-8 temp path")),
                )
            })
            .collect();
        Nodes {
            redis,
            nodes,
            _keys: keys,
        }
    }

    /// `endpoint` as the AS would reach it through node `at`.
    fn via(&self, at: usize, endpoint: &str) -> String {
        let path = &endpoint[endpoint
            .find("/wpush/")
            .or(endpoint.find("/v1/"))
            .expect("an endpoint path")..];
        format!("{}{path}", self.nodes[at].as_url())
    }
}

fn versions_of(notification: &serde_json::Value) -> Vec<u64> {
    notification["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|update| update["version"].as_u64().expect("a numeric version"))
        .collect()
}

/// Receives SimplePush notifications, acking each, until every version in
/// `wanted` was seen; returns what was seen.
fn receive_versions(ua: &mut WsClient, wanted: &BTreeSet<u64>, within: Duration) -> BTreeSet<u64> {
    let deadline = Instant::now() + within;
    let mut seen = BTreeSet::new();
    while !wanted.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "still missing {:?}",
            wanted.difference(&seen).collect::<Vec<_>>()
        );
        let Some(message) = ua.try_recv_json(left) else {
            continue;
        };
        if message["messageType"] == "notification" {
            seen.extend(versions_of(&message));
            ua.ack_notification(&message);
        }
    }
    seen
}

#[test]
fn a_push_taken_by_one_node_reaches_a_ua_held_by_another() {
    let cluster = Nodes::start(2);
    let mut ua = cluster.nodes[1].ua_simplepush();
    let (_, endpoint) = ua.register_new();
    let response = put_version(&cluster.via(0, &endpoint), 7);
    response.assert_status(200, "a SimplePush PUT through the other node");
    let notification = ua.recv_notification(DEADLINE);
    assert_eq!(versions_of(&notification), vec![7]);
    ua.ack_notification(&notification);

    let mut web = cluster.nodes[1].ua_webpush();
    let (_, endpoint) = web.register_new();
    let response = push_aes128gcm(&cluster.via(0, &endpoint), &[1u8; 64], 60);
    response.assert_status(201, "a Web Push POST through the other node");
    let location = response.header("location").expect("a Location").to_owned();
    assert!(location.contains("/m/"), "a message id: {location}");
    let notification = web.recv_notification(DEADLINE);
    assert_eq!(notification["messageType"], "notification");
}

#[test]
fn a_ua_that_moves_between_nodes_loses_nothing_and_keeps_one_socket() {
    let cluster = Nodes::start(2);
    let mut at_b = cluster.nodes[1].ua_simplepush();
    let (_, endpoint) = at_b.register_new();
    let uaid = at_b.uaid();
    for version in 1..=5 {
        put_version(&cluster.via(0, &endpoint), version).assert_status(200, "push via A");
    }
    let first: BTreeSet<u64> = (1..=5).collect();
    receive_versions(&mut at_b, &first, DEADLINE);
    // Pushes keep coming while the UA reconnects at A.
    for version in 6..=8 {
        put_version(&cluster.via(0, &endpoint), version).assert_status(200, "push via A");
    }
    let mut at_a = cluster.nodes[0].ua_resume(&uaid, false);
    // The last connect wins: B closes the old socket.
    at_b.expect_closed_or_eof(DEADLINE);
    for version in 9..=12 {
        put_version(&cluster.via(1, &endpoint), version).assert_status(200, "push via B");
    }
    // SimplePush keeps the newest version per channel: 12 must arrive, and
    // nothing older than what the UA already acked at B may come back.
    let seen = receive_versions(&mut at_a, &BTreeSet::from([12]), DEADLINE);
    assert!(
        seen.iter().all(|version| *version > 5),
        "no acked version again: {seen:?}"
    );
}

#[test]
fn messages_for_a_disconnected_ua_wait_in_redis_for_its_reconnect_anywhere() {
    let cluster = Nodes::start(2);
    let mut ua = cluster.nodes[0].ua_webpush();
    let (_, endpoint) = ua.register_new();
    let uaid = ua.uaid();
    ua.close();
    let mut accepted = 0;
    for _ in 0..5 {
        let response = push_aes128gcm(&cluster.via(1, &endpoint), &[7u8; 32], 300);
        response.assert_status(201, "a push for a disconnected UA");
        accepted += 1;
    }
    let mut ua = cluster.nodes[1].ua_resume(&uaid, true);
    for _ in 0..accepted {
        let notification = ua.recv_notification(DEADLINE);
        ua.ack_notification(&notification);
    }
    ua.expect_silence(Duration::from_millis(300));
}

#[test]
fn with_redis_gone_no_push_is_acknowledged_and_service_comes_back_by_itself() {
    let mut cluster = Nodes::start(1);
    let mut ua = cluster.nodes[0].ua_simplepush();
    let (_, endpoint) = ua.register_new();
    put_version(&endpoint, 1).assert_status(200, "a push with Redis up");
    cluster.redis.stop_all();
    let mut version = 2;
    wait_until(Duration::from_secs(20), "a 503 while Redis is down", || {
        let response = put_version(&endpoint, version);
        version += 1;
        assert!(
            !(200..300).contains(&response.status),
            "a 2xx while every Redis node is down: {}",
            response.status
        );
        response.status == 503
    });
    cluster.redis.start_all();
    wait_until(Duration::from_secs(30), "a 2xx once Redis is back", || {
        version += 1;
        put_version(&endpoint, version).status == 200
    });
}
