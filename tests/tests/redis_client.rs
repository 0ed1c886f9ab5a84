//! The Redis Cluster client (herald_store::redis) against a real nine-node
//! cluster: routing, ordered replies, honest WAIT, per-command errors, dead
//! seeds, and failing fast (then recovering) when nodes die or hang.

#[path = "support/glommio.rs"]
mod glommio_support;

use std::time::{Duration, Instant};

use glommio_support::block_on;
use herald_store::redis::{
    parse_seeds, ClusterClient, Command, RedisConfig, RedisError, Reply, ScriptId,
};
use herald_tests::redis_cluster::{CLUSTER_DEADLINE, SHARD_SLOTS};
use herald_tests::RedisCluster;

const IO_TIMEOUT_MS: u64 = 1000;
/// Generous: replicas answer WAIT within milliseconds, but this machine runs
/// four clusters of these tests side by side on shared cores.
const WAIT_TIMEOUT_MS: u64 = 2000;
/// Longest a failing batch may take: a connect or round trip per known node
/// would be far more; one deadline plus scheduling slack on a busy machine.
const FAIL_WITHIN: Duration = Duration::from_millis(IO_TIMEOUT_MS + WAIT_TIMEOUT_MS + 1500);

const SCRIPT_FAILS: &str = "return redis.error_reply('HERALD-STALE ' .. KEYS[1])";
const SCRIPT_INCR: &str = "return redis.call('INCRBY', KEYS[1], ARGV[1])";

fn config(cluster: &RedisCluster, replicas: u32) -> RedisConfig {
    RedisConfig {
        replicas,
        wait_timeout_ms: WAIT_TIMEOUT_MS,
        io_timeout_ms: IO_TIMEOUT_MS,
        ..RedisConfig::new(parse_seeds(&cluster.seeds()).expect("seeds"))
    }
}

/// `per_shard` keys in each shard's slot range, interleaved shard by shard,
/// tagged with `tag` so tests do not share keys.
fn keys_on_every_shard(tag: &str, per_shard: usize) -> Vec<Vec<u8>> {
    let mut buckets: Vec<Vec<Vec<u8>>> = vec![Vec::new(); SHARD_SLOTS.len()];
    let mut n = 0;
    while buckets.iter().any(|b| b.len() < per_shard) {
        let key = format!("{tag}:{n}").into_bytes();
        n += 1;
        let slot = Command::new(&key, vec![]).slot();
        let shard = SHARD_SLOTS
            .iter()
            .position(|&(lo, hi)| (lo..=hi).contains(&slot))
            .expect("slot in a range");
        if buckets[shard].len() < per_shard {
            buckets[shard].push(key);
        }
    }
    (0..per_shard)
        .flat_map(|i| buckets.iter().map(move |b| b[i].clone()))
        .collect()
}

fn set(key: &[u8], value: &[u8]) -> Command {
    Command::new(key, vec![b"SET".to_vec(), key.to_vec(), value.to_vec()])
}

fn get(key: &[u8]) -> Command {
    Command::new(key, vec![b"GET".to_vec(), key.to_vec()])
}

/// SET then GET of every key, durably; asserts every reply in its place.
async fn write_and_read_back(client: &ClusterClient, keys: &[Vec<u8>], round: u32) {
    let value = |k: &[u8]| [k, format!("={round}").as_bytes()].concat();
    let mut batch: Vec<Command> = keys.iter().map(|k| set(k, &value(k))).collect();
    batch.extend(keys.iter().rev().map(|k| get(k)));
    let replies = client.run(&batch, true).await.expect("durable batch");
    assert_eq!(replies.len(), batch.len());
    for reply in &replies[..keys.len()] {
        assert_eq!(*reply, Reply::Status("OK".into()));
    }
    for (reply, key) in replies[keys.len()..].iter().zip(keys.iter().rev()) {
        assert_eq!(
            *reply,
            Reply::Bulk(value(key)),
            "GET {:?}",
            String::from_utf8_lossy(key)
        );
    }
}

#[test]
fn batches_route_wait_and_keep_errors_in_place() {
    let cluster = RedisCluster::start();
    block_on(async {
        let keys = keys_on_every_shard("route", 4);
        let client = ClusterClient::connect(config(&cluster, 1), &[])
            .await
            .expect("connect");
        write_and_read_back(&client, &keys, 1).await;
        assert_eq!(client.run(&[], true).await, Ok(vec![]));

        // Pipelines of at most 2 commands per connection: the same batch
        // takes several round trips, replies still in order.
        let small = RedisConfig {
            pipeline_max: 2,
            ..config(&cluster, 1)
        };
        let client = ClusterClient::connect(small, &[]).await.expect("connect");
        write_and_read_back(&client, &keys, 2).await;

        // Each master has two replicas: WAIT 2 is met, WAIT 3 never is, and
        // that fails the batch instead of answering it.
        let two = ClusterClient::connect(config(&cluster, 2), &[])
            .await
            .expect("connect");
        write_and_read_back(&two, &keys, 3).await;
        let three = ClusterClient::connect(config(&cluster, 3), &[])
            .await
            .expect("connect");
        let batch = [set(&keys[0], b"x"), set(&keys[1], b"y")];
        match three.run(&batch, true).await {
            Err(RedisError::Replicas { wanted: 3, got: 2 }) => {}
            other => panic!("WAIT 3 with two replicas: {other:?}"),
        }
        // Not durable: no WAIT, so the same client's batch goes through.
        assert!(three.run(&batch, false).await.is_ok());

        // A script's own error is its command's reply; the batch succeeds.
        let client = ClusterClient::connect(config(&cluster, 1), &[SCRIPT_FAILS, SCRIPT_INCR])
            .await
            .expect("connect with scripts");
        let counter = b"{route}:counter".as_slice();
        let batch: Vec<Command> = keys
            .iter()
            .flat_map(|k| {
                [
                    Command::script(ScriptId(0), &[k], vec![]),
                    Command::script(ScriptId(1), &[counter], vec![b"5".to_vec()]),
                ]
            })
            .collect();
        let replies = client
            .run(&batch, true)
            .await
            .expect("batch with script errors");
        for (i, key) in keys.iter().enumerate() {
            let stale = format!("HERALD-STALE {}", String::from_utf8_lossy(key));
            assert_eq!(replies[2 * i], Reply::Error(stale));
            assert_eq!(replies[2 * i + 1], Reply::Int(5 * (i as i64 + 1)));
        }
        // A command Redis refuses is an error in its place too.
        let wrong = Command::new(
            counter,
            vec![b"LPUSH".to_vec(), counter.to_vec(), b"v".to_vec()],
        );
        let replies = client
            .run(&[wrong, get(counter)], true)
            .await
            .expect("batch");
        assert!(matches!(&replies[0], Reply::Error(e) if e.starts_with("WRONGTYPE")));
        assert_eq!(
            replies[1],
            Reply::Bulk(format!("{}", 5 * keys.len()).into_bytes())
        );

        // A script Redis cannot compile fails connect.
        match ClusterClient::connect(config(&cluster, 1), &["return ("]).await {
            Err(RedisError::Config(e)) => assert!(e.contains("script 0"), "{e}"),
            Err(e) => panic!("bad script: {e}"),
            Ok(_) => panic!("bad script: connected"),
        }
    });
}

#[test]
fn dead_seeds_do_not_block_connect() {
    let cluster = RedisCluster::start();
    block_on(async {
        // Nothing listens on a port of a node that is not started, and
        // 10.255.255.1 is not routed here (or it hangs: the deadline ends it).
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let seeds = format!(
            "redis://127.0.0.1:{dead_port},redis://10.255.255.1:6379,{}",
            cluster.seeds()
        );
        let cfg = RedisConfig {
            seeds: parse_seeds(&seeds).unwrap(),
            ..config(&cluster, 1)
        };
        let started = Instant::now();
        let client = ClusterClient::connect(cfg, &[])
            .await
            .expect("connect past dead seeds");
        let took = started.elapsed();
        assert!(took < 2 * FAIL_WITHIN, "connect took {took:?}");
        write_and_read_back(&client, &keys_on_every_shard("seeds", 2), 1).await;

        let only_dead = RedisConfig {
            seeds: parse_seeds(&format!("redis://127.0.0.1:{dead_port}")).unwrap(),
            ..config(&cluster, 1)
        };
        assert!(matches!(
            ClusterClient::connect(only_dead, &[]).await,
            Err(RedisError::Unreachable(_))
        ));
    });
}

/// `client.run`, which must end (fail or succeed) within `FAIL_WITHIN`; a
/// batch that hangs fails the test instead of hanging it.
async fn timed_run(
    client: &ClusterClient,
    batch: &[Command],
    durable: bool,
) -> Result<Vec<Reply>, RedisError> {
    let started = Instant::now();
    let result = futures_lite::future::or(client.run(batch, durable), async {
        glommio::timer::sleep(3 * FAIL_WITHIN).await;
        panic!("a batch hangs: no answer in {:?}", 3 * FAIL_WITHIN);
    })
    .await;
    let took = started.elapsed();
    assert!(took < FAIL_WITHIN, "a batch took {took:?}: {result:?}");
    result
}

/// Runs `batch` until it succeeds, each attempt bounded by `FAIL_WITHIN`;
/// returns the errors seen before.
async fn until_ok(client: &ClusterClient, batch: &[Command]) -> Vec<RedisError> {
    let deadline = Instant::now() + CLUSTER_DEADLINE;
    let mut errors = Vec::new();
    loop {
        match timed_run(client, batch, true).await {
            Ok(_) => return errors,
            Err(e) => errors.push(e),
        }
        assert!(
            Instant::now() < deadline,
            "no success in {CLUSTER_DEADLINE:?}; errors: {errors:?}"
        );
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn dc_loss_fails_batches_then_heals() {
    let mut cluster = RedisCluster::start();
    block_on(async {
        let keys = keys_on_every_shard("dc", 3);
        // WAIT 2: each record is on both replicas, so whichever is promoted
        // has it.
        let client = ClusterClient::connect(config(&cluster, 2), &[])
            .await
            .expect("connect");
        write_and_read_back(&client, &keys, 1).await;

        let lost = cluster.dc_of(cluster.masters()[0]);
        cluster.kill_dc(lost);
        // The connection to the dead master is gone: the next batch fails at
        // once, nothing is re-routed inside it.
        // (Other keys: the masters still alive may apply their part of it.)
        let batch: Vec<Command> = keys_on_every_shard("dc-after", 1)
            .iter()
            .map(|k| set(k, b"after"))
            .collect();
        let first = timed_run(&client, &batch, true).await;
        assert!(first.is_err(), "a batch right after the DC loss: {first:?}");

        // Until failover batches fail (within a deadline each), then they
        // succeed again with WAIT 1: each shard has one replica left.
        let client = ClusterClient::connect(config(&cluster, 1), &[])
            .await
            .expect("reconnect");
        let reads: Vec<Command> = keys.iter().map(|k| get(k)).collect();
        let errors = until_ok(&client, &reads).await;
        eprintln!(
            "[redis_client] {} failed batches before failover: {:?}",
            errors.len(),
            errors.first()
        );
        let replies = client.run(&reads, false).await.expect("reads");
        for (reply, key) in replies.iter().zip(&keys) {
            assert_eq!(
                *reply,
                Reply::Bulk([key.as_slice(), b"=1"].concat()),
                "acknowledged by WAIT 2 before the loss"
            );
        }
        write_and_read_back(&client, &keys, 2).await;
        let took = cluster.wait_healthy_without(lost);
        eprintln!("[redis_client] cluster healthy {took:?} after the DC loss");
    });
}

#[test]
fn hung_or_stopped_redis_fails_fast_then_recovers() {
    let mut cluster = RedisCluster::start();
    block_on(async {
        let keys = keys_on_every_shard("stop", 2);
        let client = ClusterClient::connect(config(&cluster, 1), &[])
            .await
            .expect("connect");
        write_and_read_back(&client, &keys, 1).await;
        let batch: Vec<Command> = keys.iter().map(|k| set(k, b"v")).collect();

        // Every node hung (SIGSTOP): the sockets accept, nothing answers.
        for i in 0..cluster.ports().len() {
            cluster.freeze_node(i);
        }
        for _ in 0..2 {
            let result = timed_run(&client, &batch, true).await;
            assert!(matches!(result, Err(RedisError::Timeout(_))), "{result:?}");
        }
        for i in 0..cluster.ports().len() {
            cluster.thaw_node(i);
        }
        until_ok(&client, &batch).await;

        // Every node killed: refused at once, until they are back.
        cluster.stop_all();
        for _ in 0..2 {
            let result = timed_run(&client, &batch, true).await;
            assert!(
                matches!(result, Err(RedisError::Unreachable(_))),
                "{result:?}"
            );
        }
        cluster.start_all();
        until_ok(&client, &batch).await;
        // Nothing persisted (`save ""`): the records are gone, and the
        // client writes and reads new ones.
        write_and_read_back(&client, &keys, 2).await;
    });
}

#[test]
fn failover_fails_one_batch_with_moved_then_routes_anew() {
    let cluster = RedisCluster::start();
    block_on(async {
        let keys = keys_on_every_shard("moved", 2);
        let client = ClusterClient::connect(config(&cluster, 1), &[])
            .await
            .expect("connect");
        write_and_read_back(&client, &keys, 1).await;

        // The old master stays up, as a replica: the client's connection to
        // it still works, and Redis answers its commands with MOVED.
        let old = cluster.masters()[0];
        let new = cluster.replicas_of(old)[0];
        cluster.promote(new);
        assert!(cluster.masters().contains(&new));
        let reads: Vec<Command> = keys.iter().map(|k| get(k)).collect();
        match client.run(&reads, false).await {
            Err(RedisError::Moved(e)) => assert!(e.starts_with("MOVED"), "{e}"),
            other => panic!("a batch through the demoted master: {other:?}"),
        }
        // The next batch reads the new slot map and goes to the new master.
        let replies = client
            .run(&reads, false)
            .await
            .expect("after the slot map is re-read");
        for (reply, key) in replies.iter().zip(&keys) {
            assert_eq!(*reply, Reply::Bulk([key.as_slice(), b"=1"].concat()));
        }
        write_and_read_back(&client, &keys, 2).await;
    });
}
