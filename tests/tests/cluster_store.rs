//! The cluster store (herald_store::cluster) against a real nine-node Redis
//! Cluster: the claims and fences that the consistency argument of
//! ARCHITECTURE.md ("Cluster mode") rests on.

#[path = "support/glommio.rs"]
mod glommio_support;

use std::rc::Rc;

use glommio::spawn_local;
use glommio_support::block_on;
use herald_engine::message::{MessageBody, Registration, Removal, StoredMessage, Urgency};
use herald_engine::record::Record;
use herald_engine::{ChannelId, Uaid};
use herald_store::cluster::{ClusterLog, ClusterLogOptions, SCRIPTS};
use herald_store::redis::{parse_seeds, ClusterClient, RedisConfig};
use herald_store::RecordLog;
use herald_tests::redis_cluster::request;
use herald_tests::RedisCluster;
use redis_protocol::resp2::types::OwnedFrame;

/// A node's store, its writer running.
async fn node(seeds: &str, node_url: &str) -> ClusterLog {
    let config = RedisConfig::new(parse_seeds(seeds).expect("seeds"));
    let client = ClusterClient::connect(config, &SCRIPTS)
        .await
        .expect("connect");
    let log = ClusterLog::new(
        client,
        ClusterLogOptions {
            node_url: node_url.to_owned(),
            ua_ttl_ms: 60_000,
            pipeline_max: 64,
        },
        Default::default(),
    );
    let writer = log.clone();
    spawn_local(async move { writer.run_writer().await }).detach();
    log
}

fn registered(uaid: Uaid, channel: u8) -> Record {
    Record::ChannelRegistered(Registration {
        uaid,
        channel: ChannelId([channel; 16]),
        key_hash: None,
    })
}

async fn write(log: &ClusterLog, records: &[Record]) -> u64 {
    let lsn = log.append_batch(records).expect("append");
    log.wait_durable(lsn).await.expect("durable");
    lsn
}

#[test]
fn a_claim_reads_every_write_before_it_and_fences_every_write_after_it() {
    let redis = RedisCluster::start();
    let seeds = Rc::new(redis.seeds());
    block_on(async move {
        let x = node(&seeds, "http://x.example:1").await;
        let y = node(&seeds, "http://y.example:1").await;
        let uaid = Uaid([0x5a; 16]);

        let first = x.claim(uaid).await.expect("x claims a new UA");
        assert!(first.records.is_empty() && first.previous.is_none());
        write(&x, &[registered(uaid, 1)]).await;
        assert!(x.take_fenced().is_empty());

        let taken = y.claim(uaid).await.expect("y takes the UA over");
        assert_eq!(
            taken.records,
            vec![registered(uaid, 1)],
            "y reads x's write"
        );
        let displaced = taken.previous.expect("x's claim was displaced");
        assert_eq!(displaced.node, "http://x.example:1");

        // x does not know yet: its next write is refused, and says so. (Told
        // of a claim that is not its current one, it would keep the UA.)
        assert!(!x.displaced(uaid, "not-x's-claim"));
        let late = write(&x, &[registered(uaid, 2)]).await;
        let fenced = x.take_fenced();
        assert_eq!(fenced.len(), 1);
        assert_eq!(
            (fenced[0].lsn, fenced[0].uaid, fenced[0].lost),
            (late, uaid, true)
        );

        // y's writes go through; x's refused one never happened.
        write(&y, &[registered(uaid, 3)]).await;
        assert!(y.take_fenced().is_empty());
        y.release(uaid);
        y.flush().await.expect("flush");
        let again = x.claim(uaid).await.expect("x claims it back");
        assert_eq!(
            again.records,
            vec![registered(uaid, 1), registered(uaid, 3)]
        );
        assert_eq!(again.previous, None, "y let it go");
        // Told that this claim was displaced, x lets go of it.
        let newest = y.claim(uaid).await.expect("y claims it again").previous;
        assert!(x.displaced(uaid, &newest.expect("x's claim").nonce));
        assert!(!x.displaced(uaid, "already let go"));
    });
}

#[test]
fn a_minted_ua_is_created_by_its_first_write_and_an_anonymous_one_leaves_nothing() {
    let redis = RedisCluster::start();
    let seeds = Rc::new(redis.seeds());
    block_on(async move {
        let x = node(&seeds, "http://x.example:1").await;
        let y = node(&seeds, "http://y.example:1").await;
        // Minted here: written without a claim, and it exists from then on.
        let minted = Uaid([0x11; 16]);
        write(
            &x,
            &[
                Record::UaidCreated {
                    uaid: minted,
                    at_ms: 7,
                },
                registered(minted, 1),
            ],
        )
        .await;
        assert!(x.take_fenced().is_empty());
        let read = y.claim(minted).await.expect("claim");
        assert_eq!(
            read.records,
            vec![
                Record::UaidCreated {
                    uaid: minted,
                    at_ms: 7
                },
                registered(minted, 1)
            ]
        );
        // A claimed UA that never wrote anything leaves no key behind.
        let anonymous = Uaid([0x22; 16]);
        y.claim(anonymous).await.expect("claim");
        y.release(anonymous);
        y.flush().await.expect("flush");
        let read = x.claim(anonymous).await.expect("claim");
        assert!(read.records.is_empty());
        assert_eq!(read.previous, None, "the anonymous UA's keys were deleted");
    });
}

/// The master serving `key`: the one that does not redirect a read of it.
fn owner_of(redis: &RedisCluster, key: &str) -> u16 {
    redis
        .masters()
        .into_iter()
        .find(|port| {
            !matches!(request(*port, &["EXISTS", key]),
                Ok(OwnedFrame::Error(e)) if e.starts_with("MOVED"))
        })
        .expect("a master serves the key")
}

#[test]
fn a_registered_ua_at_rest_is_one_compact_key() {
    let redis = Rc::new(RedisCluster::start());
    let seeds = redis.seeds();
    let uaid = Uaid([0x33; 16]);
    let hash = format!("{{{}}}u", uaid.to_hex());
    let messages = format!("{{{}}}m", uaid.to_hex());
    let ask = |argv: &[&str]| request(owner_of(&redis, &hash), argv).expect("request");
    let message = Record::MessageStored(StoredMessage {
        uaid,
        channel: ChannelId([1; 16]),
        seq: 1,
        arrived_ms: 5,
        expires_ms: 0,
        urgency: Urgency::Normal,
        topic: None,
        body: MessageBody::Version(1),
    });
    let removed = Record::MessageRemoved {
        uaid,
        channel: ChannelId([1; 16]),
        seq: 1,
        reason: Removal::Acked,
    };
    block_on({
        let (redis, messages) = (redis.clone(), messages.clone());
        async move {
            let x = node(&seeds, "http://x.example:1").await;
            let mut keyed = registered(uaid, 2);
            if let Record::ChannelRegistered(registration) = &mut keyed {
                registration.key_hash = Some([0xee; 32]);
            }
            let seen = Record::UaidCreated { uaid, at_ms: 9 };
            write(&x, &[seen.clone(), registered(uaid, 1), keyed.clone()]).await;
            write(&x, &[message]).await;
            assert_eq!(
                request(owner_of(&redis, &messages), &["EXISTS", &messages]).expect("EXISTS"),
                OwnedFrame::Integer(1),
                "a pending message has its own key"
            );
            write(&x, &[removed]).await;
            x.release(uaid);
            x.flush().await.expect("flush");
            let read = node(&seeds, "http://y.example:1")
                .await
                .claim(uaid)
                .await
                .expect("claim");
            assert_eq!(read.records, vec![seen, registered(uaid, 1), keyed]);
        }
    });
    assert_eq!(
        ask(&["EXISTS", &messages]),
        OwnedFrame::Integer(0),
        "no message left"
    );
    let OwnedFrame::Integer(slot) = ask(&["CLUSTER", "KEYSLOT", &hash]) else {
        panic!("CLUSTER KEYSLOT")
    };
    assert_eq!(
        ask(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
        OwnedFrame::Integer(1),
        "the UA's slot holds its one key"
    );
    assert_eq!(ask(&["EXISTS", &hash]), OwnedFrame::Integer(1));
    // Redis's compact encoding: the whole UA in one small allocation.
    assert_eq!(
        ask(&["OBJECT", "ENCODING", &hash]),
        OwnedFrame::BulkString(b"listpack".to_vec())
    );
    let OwnedFrame::Integer(ttl) = ask(&["PTTL", &hash]) else {
        panic!("PTTL")
    };
    assert!(ttl > 0, "the UA's key has a lease (PTTL {ttl})");
}
