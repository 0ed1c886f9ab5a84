//! The Redis client against a fake one-node "cluster" that misbehaves:
//! malformed or oversized replies are protocol errors (bounded memory, no
//! panic), silence is a timeout. The real-cluster tests are in
//! tests/tests/redis_client.rs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use herald_store::limits::REDIS_REPLY_MAX_BYTES;
use herald_store::redis::{ClusterClient, Command, RedisConfig, RedisError};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

/// What the fake answers to GET.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// A frame type byte RESP does not have.
    Garbage,
    /// A bulk string longer than the client's cap, streamed until the
    /// client hangs up.
    Oversized,
    /// Nothing.
    Silent,
}

/// Serves one node owning every slot; returns its port.
fn fake_node(mode: Misbehaviour) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream, port, mode));
        }
    });
    port
}

fn serve(mut stream: TcpStream, port: u16, mode: Misbehaviour) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (frame, used) = match decode(&buf) {
            Ok(Some(found)) => found,
            Ok(None) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
            Err(_) => return,
        };
        buf.drain(..used);
        let OwnedFrame::Array(argv) = frame else {
            return;
        };
        let name = match argv.first() {
            Some(OwnedFrame::BulkString(b)) => b.to_ascii_uppercase(),
            _ => return,
        };
        let reply: Vec<u8> = match (name.as_slice(), mode) {
            (b"CLUSTER", _) => format!(
                "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$2\r\nid\r\n"
            )
            .into_bytes(),
            (_, Misbehaviour::Garbage) => b"?what\r\n".to_vec(),
            (_, Misbehaviour::Silent) => continue,
            (_, Misbehaviour::Oversized) => {
                let claimed = 2 * REDIS_REPLY_MAX_BYTES;
                if stream
                    .write_all(format!("${claimed}\r\n").as_bytes())
                    .is_err()
                {
                    return;
                }
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..claimed >> 20 {
                    if stream.write_all(&zeros).is_err() {
                        return;
                    }
                }
                return;
            }
        };
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

fn run_against(mode: Misbehaviour, io_timeout_ms: u64) -> Result<(), RedisError> {
    let port = fake_node(mode);
    glommio::LocalExecutorBuilder::default()
        // Small: the locked-memory limit here is 8 MiB.
        .io_memory(256 << 10)
        .make()
        .expect("glommio executor (needs io_uring)")
        .run(async move {
            let config = RedisConfig {
                io_timeout_ms,
                ..RedisConfig::new(vec![format!("redis://127.0.0.1:{port}")])
            };
            let client = ClusterClient::connect(config, &[]).await.expect("connect");
            let get = Command::new(b"k", vec![b"GET".to_vec(), b"k".to_vec()]);
            client.run(&[get], false).await.map(|_| ())
        })
}

#[test]
fn malformed_reply_is_a_protocol_error() {
    assert!(matches!(
        run_against(Misbehaviour::Garbage, 2000),
        Err(RedisError::Protocol(_))
    ));
}

#[test]
fn oversized_reply_is_refused_at_the_cap() {
    // A deadline long enough for 64 MiB over loopback on a busy machine:
    // the cap, not the deadline, must end it.
    match run_against(Misbehaviour::Oversized, 30_000) {
        Err(RedisError::Protocol(e)) => assert!(e.contains("exceeds"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn silence_is_a_timeout() {
    let started = Instant::now();
    let result = run_against(Misbehaviour::Silent, 500);
    assert!(matches!(result, Err(RedisError::Timeout(_))), "{result:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
}
