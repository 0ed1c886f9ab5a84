//! Cluster mode (SPEC §2 `--cluster`, issue 11): Herald nodes sharing a
//! nine-node Redis Cluster (three "data centres" of three nodes, every
//! master with a replica in both other DCs), all on loopback.

#[path = "support/extended.rs"]
mod extended_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use herald_tests::as_client::{http, push_aes128gcm, put_version};
use herald_tests::redis_cluster::RedisCluster;
use herald_tests::server::{Server, ServerOptions};
use herald_tests::ua::{WsClient, WsEvent};
use herald_tests::util::{b64url_encode, free_port, random_hex, wait_until, TempDir};
use herald_tests::DEADLINE;

const ADMIN_TOKEN: &str = "cluster-admin-token";

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
                        .arg(key_file.to_str().expect("utf-8 temp path"))
                        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN),
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

/// Reads `ua` until the server ends the connection (close frame or EOF);
/// returns the messages that came first.
fn until_closed(ua: &mut WsClient) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + DEADLINE;
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ua.next_event(left) {
            WsEvent::Text(text) => messages.push(serde_json::from_str(&text).expect("JSON")),
            WsEvent::Close(..) | WsEvent::Eof(_) => return messages,
            WsEvent::Ping(_) | WsEvent::Pong(_) => {}
            other => panic!("expected the connection to end within {DEADLINE:?}, got {other:?}"),
        }
    }
}

/// The sum over shards of one `herald_cluster_events_total` event.
fn cluster_event(server: &Server, event: &str) -> f64 {
    server
        .metrics()
        .iter()
        .filter(|(sample, _)| {
            sample.starts_with("herald_cluster_events_total{")
                && sample.contains(&format!("event=\"{event}\""))
        })
        .map(|(_, value)| *value)
        .sum()
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
            ua.send_json(&json!({"messageType": "ack", "updates": message["updates"]}));
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
    wait_until(DEADLINE, "node A counts the forward it made", || {
        cluster_event(&cluster.nodes[0], "forwards") >= 1.0
    });

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
fn an_app_notification_taken_by_one_node_reaches_the_app_s_uas_on_every_node() {
    use extended_support::{notify, AppKey, ExtUa};
    let cluster = Nodes::start(2);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let key = AppKey::new(11);
    let mut at_a = ExtUa::fresh(a);
    let url_a = at_a.register_wa(a, "wa-cluster", &key);
    let mut at_b = ExtUa::fresh(b);
    let url_b = at_b.register_wa(b, "wa-cluster", &key);
    // A third UA of the app registers at B and leaves: no node holds it.
    let mut away = ExtUa::fresh(b);
    away.register_wa(b, "wa-cluster", &key);
    let away_token = away.token.clone();
    away.close();
    wait_until(DEADLINE, "node B forgets the UA that left", || {
        b.metric_named("herald_user_agents") == 1.0
    });

    // Posted to A's url: A holds one UA of the app, B the other.
    let sent = notify(&url_a, &key, "cluster-1", "to every UA of the app");
    at_a.expect_notifications(&[&sent], &url_a);
    at_b.expect_notifications(&[&sent], &url_b);
    wait_until(DEADLINE, "node A forwarded B's share", || {
        cluster_event(a, "forwards") >= 1.0
    });
    // The UA that was away gets its share when it comes back, anywhere.
    let mut back = ExtUa::resume(a, &away_token);
    back.expect_notifications(&[&sent], &url_a);
    for ua in [&mut at_a, &mut at_b, &mut back] {
        ua.expect_silence();
    }
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
    until_closed(&mut at_b);
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
    // The gauge is published once a second: see it count the UA first.
    wait_until(DEADLINE, "node A counts the connected UA", || {
        cluster.nodes[0].metric_named("herald_user_agents") == 1.0
    });
    ua.close();
    // A node holds only the UAs connected to it (and one a request names,
    // for that request): nothing once the socket is gone.
    wait_until(DEADLINE, "node A forgets the UA once it left", || {
        cluster.nodes[0].metric_named("herald_user_agents") == 0.0
    });
    let mut accepted = 0;
    for _ in 0..5 {
        let response = push_aes128gcm(&cluster.via(1, &endpoint), &[7u8; 32], 300);
        response.assert_status(201, "a push for a disconnected UA");
        accepted += 1;
    }
    wait_until(
        DEADLINE,
        "node B claimed the UA for each push and let it go",
        || {
            cluster_event(&cluster.nodes[1], "claims") >= 5.0
                && cluster.nodes[1].metric_named("herald_user_agents") == 0.0
        },
    );
    let mut ua = cluster.nodes[1].ua_resume(&uaid, true);
    for _ in 0..accepted {
        let notification = ua.recv_notification(DEADLINE);
        ua.ack_notification(&notification);
    }
    ua.expect_silence(Duration::from_millis(300));
}

#[test]
fn with_every_redis_node_stopped_no_push_is_acknowledged_and_service_comes_back_by_itself() {
    let mut cluster = Nodes::start(1);
    let mut ua = cluster.nodes[0].ua_simplepush();
    let (_, endpoint) = ua.register_new();
    put_version(&endpoint, 1).assert_status(200, "a push with Redis up");
    // Stopped, not killed: these Redis nodes keep no data on disk, and a
    // cluster restarted empty would have forgotten the UA (a deployment
    // that must survive restarting every node at once runs Redis with AOF).
    let nodes = cluster.redis.ports().len();
    for node in 0..nodes {
        cluster.redis.freeze_node(node);
    }
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
    for node in 0..nodes {
        cluster.redis.thaw_node(node);
    }
    wait_until(Duration::from_secs(30), "a 2xx once Redis is back", || {
        version += 1;
        put_version(&endpoint, version).status == 200
    });
}

/// Web Push UAs whose every accepted message must arrive: the bodies the
/// AS got a 201 for, by UA, and when each answer came.
struct Load {
    endpoints: Vec<String>,
    uaids: Vec<String>,
    accepted: Mutex<BTreeMap<usize, BTreeSet<String>>>,
    /// (when the request was sent, its UA, its status), in no particular
    /// order.
    answers: Mutex<Vec<(Instant, usize, u16)>>,
    sent: AtomicUsize,
}

impl Load {
    /// `count` Web Push UAs registered at node `at`, then disconnected
    /// (their messages wait in Redis).
    fn register(cluster: &Nodes, at: usize, count: usize) -> Load {
        let (mut endpoints, mut uaids) = (Vec::new(), Vec::new());
        for _ in 0..count {
            let mut ua = cluster.nodes[at].ua_webpush();
            endpoints.push(ua.register_new().1);
            uaids.push(ua.uaid());
            ua.close();
        }
        Load {
            endpoints,
            uaids,
            accepted: Mutex::new(BTreeMap::new()),
            answers: Mutex::new(Vec::new()),
            sent: AtomicUsize::new(0),
        }
    }

    /// The UAs' endpoints as reached through node `at`.
    fn targets(&self, cluster: &Nodes, at: usize) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|endpoint| cluster.via(at, endpoint))
            .collect()
    }

    /// Pushes unique bodies round-robin to the UAs from `threads` senders
    /// until `stop`, sender `t` through `via[t % via.len()]` (each the UAs'
    /// endpoints at one node); records what was accepted.
    fn run(&self, via: &[Vec<String>], threads: usize, stop: &AtomicBool) {
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let targets = &via[thread % via.len()];
                scope.spawn(move || {
                    let mut n = thread;
                    while !stop.load(Ordering::Relaxed) {
                        let ua = n % targets.len();
                        let body = format!("message {n}");
                        let started = Instant::now();
                        let response = push_aes128gcm(&targets[ua], body.as_bytes(), 600);
                        self.answers
                            .lock()
                            .unwrap()
                            .push((started, ua, response.status));
                        if response.status == 201 {
                            let data = b64url_encode(body.as_bytes());
                            self.accepted
                                .lock()
                                .unwrap()
                                .entry(ua)
                                .or_default()
                                .insert(data);
                        }
                        self.sent.fetch_add(1, Ordering::Relaxed);
                        n += threads;
                    }
                });
            }
        });
    }

    fn accepted_count(&self) -> usize {
        self.accepted
            .lock()
            .unwrap()
            .values()
            .map(BTreeSet::len)
            .sum()
    }

    /// Every UA reconnects at node `at` and must receive every body that was
    /// accepted for it.
    fn all_delivered_at(&self, cluster: &Nodes, at: usize) {
        for ua in 0..self.uaids.len() {
            let mut client = cluster.nodes[at].ua_resume(&self.uaids[ua], true);
            self.await_all(ua, &mut client, &mut BTreeSet::new());
        }
    }

    /// Reads and acks `ua`'s notifications on `client` until every body
    /// accepted for it is in `seen` (bodies it saw earlier may be there).
    fn await_all(&self, ua: usize, client: &mut WsClient, seen: &mut BTreeSet<String>) {
        let wanted = self
            .accepted
            .lock()
            .unwrap()
            .get(&ua)
            .cloned()
            .unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !wanted.is_subset(seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "UA {ua}: {} acknowledged messages never arrived",
                wanted.difference(seen).count()
            );
            let Some(message) = client.try_recv_json(left) else {
                continue;
            };
            if message["messageType"] == "notification" {
                seen.insert(message["data"].as_str().unwrap_or_default().to_owned());
                client.ack_notification(&message);
            }
        }
    }

    /// How long after `from` until every UA had a push sent and accepted
    /// (None: some UA has had none yet).
    fn all_accepting_after(&self, from: Instant) -> Option<Duration> {
        let answers = self.answers.lock().unwrap();
        (0..self.uaids.len())
            .map(|ua| {
                answers
                    .iter()
                    .filter(|(sent, of, status)| *of == ua && *sent >= from && *status == 201)
                    .map(|(sent, _, _)| *sent - from)
                    .min()
            })
            .try_fold(Duration::ZERO, |longest, first| Some(longest.max(first?)))
    }
}

#[test]
fn kill_9_of_a_node_under_load_loses_nothing_acknowledged() {
    let mut cluster = Nodes::start(2);
    let load = Load::register(&cluster, 0, 8);
    // The UAs hold their sockets at node A while node B takes the pushes.
    let mut at_a: Vec<WsClient> = load
        .uaids
        .iter()
        .map(|uaid| cluster.nodes[0].ua_resume(uaid, true))
        .collect();
    let stop = AtomicBool::new(false);
    let targets = load.targets(&cluster, 1);
    std::thread::scope(|scope| {
        scope.spawn(|| load.run(std::slice::from_ref(&targets), 4, &stop));
        wait_until(Duration::from_secs(20), "100 pushes accepted", || {
            load.accepted_count() >= 100
        });
        cluster.nodes[0].kill9();
        let after_kill = load.accepted_count();
        wait_until(
            Duration::from_secs(20),
            "100 more accepted after the kill",
            || load.accepted_count() >= after_kill + 100,
        );
        stop.store(true, Ordering::Relaxed);
    });
    for ua in at_a.iter_mut() {
        until_closed(ua);
    }
    load.all_delivered_at(&cluster, 1);
}

#[test]
fn losing_a_whole_data_centre_under_load_loses_nothing_acknowledged() {
    let mut cluster = Nodes::start(2);
    let load = Load::register(&cluster, 0, 8);
    let stop = AtomicBool::new(false);
    let mut killed_at = Instant::now();
    let targets = load.targets(&cluster, 1);
    std::thread::scope(|scope| {
        scope.spawn(|| load.run(std::slice::from_ref(&targets), 4, &stop));
        wait_until(Duration::from_secs(20), "100 pushes accepted", || {
            load.accepted_count() >= 100
        });
        killed_at = Instant::now();
        cluster.redis.kill_dc(0);
        // Every UA's slot is served again: its pushes get 2xx once more.
        wait_until(
            Duration::from_secs(40),
            "every UA's pushes accepted again",
            || load.all_accepting_after(killed_at).is_some(),
        );
        stop.store(true, Ordering::Relaxed);
    });
    let resumed = load
        .all_accepting_after(killed_at)
        .expect("every UA accepting");
    eprintln!(
        "[cluster] DC lost: every UA's pushes got 2xx again after {:.2} s ({} requests sent)",
        resumed.as_secs_f64(),
        load.sent.load(Ordering::Relaxed)
    );
    load.all_delivered_at(&cluster, 0);
}

#[test]
fn a_ua_hopping_between_nodes_while_both_take_its_pushes_loses_nothing() {
    let cluster = Nodes::start(2);
    let load = Load::register(&cluster, 0, 1);
    let uaid = load.uaids[0].clone();
    let via = [load.targets(&cluster, 0), load.targets(&cluster, 1)];
    let stop = AtomicBool::new(false);
    let mut seen = BTreeSet::new();
    std::thread::scope(|scope| {
        scope.spawn(|| load.run(&via, 2, &stop));
        let mut current = cluster.nodes[0].ua_resume(&uaid, true);
        for hop in 1..=12 {
            // The new socket connects before the old one goes: the last
            // connect must win, and the server must close the old one.
            let next = cluster.nodes[hop % 2].ua_resume(&uaid, true);
            for message in until_closed(&mut current) {
                if message["messageType"] == "notification" {
                    seen.insert(message["data"].as_str().unwrap_or_default().to_owned());
                }
            }
            current = next;
        }
        stop.store(true, Ordering::Relaxed);
        load.await_all(0, &mut current, &mut seen);
    });
    assert!(
        load.accepted_count() > 0,
        "pushes were accepted while the UA hopped"
    );
}

#[test]
fn a_redis_master_restart_loses_nothing_acknowledged() {
    let mut cluster = Nodes::start(1);
    let load = Load::register(&cluster, 0, 8);
    let stop = AtomicBool::new(false);
    let targets = load.targets(&cluster, 0);
    let master = cluster.redis.masters()[0];
    let index = cluster
        .redis
        .ports()
        .iter()
        .position(|port| *port == master)
        .expect("a node");
    std::thread::scope(|scope| {
        scope.spawn(|| load.run(std::slice::from_ref(&targets), 4, &stop));
        wait_until(Duration::from_secs(20), "100 pushes accepted", || {
            load.accepted_count() >= 100
        });
        cluster.redis.kill_node(index);
        // Its replica takes over; only then does it come back (as a replica:
        // a master without persistence that restarts before its failover
        // would come back empty).
        wait_until(Duration::from_secs(30), "a replica took over", || {
            !cluster.redis.masters().contains(&master) && cluster.redis.masters().len() == 3
        });
        cluster.redis.restart_node(index);
        cluster.redis.wait_healthy();
        let after = load.accepted_count();
        wait_until(
            Duration::from_secs(20),
            "100 more accepted after the restart",
            || load.accepted_count() >= after + 100,
        );
        stop.store(true, Ordering::Relaxed);
    });
    load.all_delivered_at(&cluster, 0);
}

#[test]
fn a_broadcast_set_at_one_node_reaches_subscribers_of_every_node() {
    let cluster = Nodes::start(2);
    let id = "remote-settings/monitor_changes";
    let subscribe = |node: usize| {
        let mut ua = cluster.nodes[node].ua();
        ua.hello_raw(
            &json!({"messageType": "hello", "use_webpush": true, "broadcasts": {id: "v0"}}),
        );
        ua
    };
    let (mut at_a, mut at_b) = (subscribe(0), subscribe(1));
    let url = format!("{}/v1/broadcasts/{id}", cluster.nodes[0].as_url());
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    http(
        "PUT",
        &url,
        &[("Authorization", &bearer)],
        Some(b"version=v1"),
    )
    .assert_status(200, "PUT a broadcast at node A");
    for ua in [&mut at_a, &mut at_b] {
        let message = ua.recv_type("broadcast", DEADLINE);
        assert_eq!(message["broadcasts"][id], "v1", "{message}");
    }
    // A UA that says hello later, anywhere, is told the current version,
    // once every shard of its node has read it (each reads the cluster's
    // broadcasts once a second: `at_b`'s shard may have been the first).
    wait_until(DEADLINE, "a later hello at node B is told v1", || {
        let mut later = cluster.nodes[1].ua();
        let reply = later.hello_raw(
            &json!({"messageType": "hello", "use_webpush": true, "broadcasts": {id: "v0"}}),
        );
        reply["broadcasts"][id] == "v1"
    });
}
