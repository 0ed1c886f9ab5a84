//! [`ClusterClient`]: routes a batch to the slots' masters, pipelined, and
//! ends it with `WAIT` on the same connections.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use glommio::sync::Semaphore;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use super::command::encode_argv;
use super::conn::{within, Conn};
use super::slots::SlotMap;
use super::{seed_addr, Command, RedisConfig, RedisError, Reply};

/// A client for one shard. See the module doc for the rules it keeps.
pub struct ClusterClient {
    config: RedisConfig,
    scripts: Vec<&'static str>,
    /// `shas[i]`: script `i`'s sha, as the first node answered `SCRIPT
    /// LOAD`; every later connection must answer the same.
    shas: Vec<String>,
    /// Where a stale slot map is read again: the nodes of the last map,
    /// then the seeds (`host:port`).
    known: RefCell<Vec<String>>,
    /// One batch at a time: the batch owns the connections.
    turn: Semaphore,
    /// The running batch takes this out and puts it back only on success, so
    /// a failed or dropped batch leaves it stale with no connection.
    state: RefCell<State>,
}

/// `map: None` means stale: the next batch reads the slot map again and
/// opens new connections.
#[derive(Default)]
struct State {
    map: Option<SlotMap>,
    /// `conns[i]`: the connection to `map.masters[i]`, opened on first use.
    conns: Vec<Option<Conn>>,
}

/// One connection's share of a round: the commands (indices into the
/// batch) whose replies come back, and whether a `WAIT` follows them.
struct Share<'a> {
    master: usize,
    commands: &'a [usize],
    wait: bool,
    bytes: Vec<u8>,
}

impl ClusterClient {
    /// Tries the seeds in order (a dead or unresolvable one is skipped after
    /// at most `io_timeout_ms`), reads the slot map and loads `scripts` on
    /// the first that answers. Fails if none answers, or if a script does not
    /// load (`Config`). Master connections open on first use.
    pub async fn connect(
        config: RedisConfig,
        scripts: &[&'static str],
    ) -> Result<ClusterClient, RedisError> {
        config.check()?;
        let seeds = config
            .seeds
            .iter()
            .map(|s| seed_addr(s))
            .collect::<Result<Vec<_>, _>>()?;
        let io = Duration::from_millis(config.io_timeout_ms);
        let mut failures = Vec::new();
        for addr in &seeds {
            let attempt = async {
                let (mut conn, map) = fetch_map(addr, io).await?;
                let shas = load_scripts(&mut conn, scripts, io).await?;
                Ok::<_, RedisError>((map, shas))
            };
            match attempt.await {
                Ok((map, shas)) => {
                    let client = ClusterClient {
                        scripts: scripts.to_vec(),
                        shas,
                        known: RefCell::new(seeds.clone()),
                        turn: Semaphore::new(1),
                        state: RefCell::new(State::default()),
                        config,
                    };
                    client.adopt(map, &mut client.state.borrow_mut());
                    return Ok(client);
                }
                Err(e @ RedisError::Config(_)) => return Err(e),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(RedisError::Unreachable(format!(
            "no seed answered: {}",
            failures.join("; ")
        )))
    }

    /// Runs one batch: each command pipelined to its slot's master; with
    /// `durable`, then `WAIT replicas wait_timeout_ms` on each connection
    /// the batch used. Replies come back in command order; a command's own
    /// error reply is `Reply::Error` in its place. Anything else that goes
    /// wrong fails the whole batch, with nothing retried, and marks the
    /// topology stale for the next batch.
    pub async fn run(&self, commands: &[Command], durable: bool) -> Result<Vec<Reply>, RedisError> {
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|e| RedisError::Protocol(format!("batch turn: {e}")))?;
        let mut state = self.state.take();
        let replies = self.run_batch(&mut state, commands, durable).await?;
        self.state.replace(state);
        Ok(replies)
    }

    async fn run_batch(
        &self,
        state: &mut State,
        commands: &[Command],
        durable: bool,
    ) -> Result<Vec<Reply>, RedisError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        if state.map.is_none() {
            let map = self.read_map().await?;
            self.adopt(map, state);
        }
        let (Some(map), conns) = (&state.map, &mut state.conns) else {
            return Err(RedisError::Protocol("no slot map".into()));
        };
        // Each master's commands, in batch order.
        let mut queues: Vec<Vec<usize>> = vec![Vec::new(); map.masters.len()];
        for (i, command) in commands.iter().enumerate() {
            queues[map.owner(command.slot())?].push(i);
        }
        let used: Vec<usize> = (0..queues.len())
            .filter(|&m| !queues[m].is_empty())
            .collect();
        let io = Duration::from_millis(self.config.io_timeout_ms);
        within(io, "connecting to the masters", async {
            for &m in &used {
                if conns[m].is_none() {
                    conns[m] = Some(self.open_master(&map.masters[m]).await?);
                }
            }
            Ok(())
        })
        .await?;
        let wait = durable && self.config.replicas > 0;
        let per_round = self.config.pipeline_max;
        let rounds = used
            .iter()
            .map(|&m| queues[m].len().div_ceil(per_round))
            .max()
            .unwrap_or(0);
        let mut replies: Vec<Option<Reply>> = vec![None; commands.len()];
        for round in 0..rounds {
            let last = round + 1 == rounds;
            let mut shares = Vec::with_capacity(used.len());
            for &m in &used {
                let chunk = queues[m].chunks(per_round).nth(round).unwrap_or(&[]);
                if chunk.is_empty() && !(wait && last) {
                    continue;
                }
                let mut bytes = Vec::new();
                for &i in chunk {
                    commands[i].encode(&self.shas, &mut bytes)?;
                }
                if wait && last {
                    self.encode_wait(&mut bytes)?;
                }
                shares.push(Share {
                    master: m,
                    commands: chunk,
                    wait: wait && last,
                    bytes,
                });
            }
            let mut limit = Duration::from_millis(self.config.io_timeout_ms);
            if wait && last {
                limit += Duration::from_millis(self.config.wait_timeout_ms);
            }
            let round_trip = self.round_trip(conns, &shares, &mut replies);
            within(limit, "batch round trip", round_trip).await?;
        }
        replies
            .into_iter()
            .map(|r| r.ok_or_else(|| RedisError::Protocol("a command got no reply".into())))
            .collect()
    }

    /// Writes every share, then reads each one's replies (the masters work
    /// on them in parallel meanwhile).
    async fn round_trip(
        &self,
        conns: &mut [Option<Conn>],
        shares: &[Share<'_>],
        replies: &mut [Option<Reply>],
    ) -> Result<(), RedisError> {
        for share in shares {
            conn_of(conns, share.master)?.write(&share.bytes).await?;
        }
        for share in shares {
            let conn = conn_of(conns, share.master)?;
            for &i in share.commands {
                replies[i] = Some(command_reply(conn.read().await?)?);
            }
            if share.wait {
                self.check_wait(conn.read().await?)?;
            }
        }
        Ok(())
    }

    fn encode_wait(&self, out: &mut Vec<u8>) -> Result<(), RedisError> {
        let replicas = self.config.replicas.to_string();
        let timeout = self.config.wait_timeout_ms.to_string();
        encode_argv(
            &[
                BorrowedFrame::BulkString(b"WAIT"),
                BorrowedFrame::BulkString(replicas.as_bytes()),
                BorrowedFrame::BulkString(timeout.as_bytes()),
            ],
            out,
        )
    }

    /// `WAIT` answers the number of replicas that acknowledged every write
    /// made so far on its connection.
    fn check_wait(&self, frame: OwnedFrame) -> Result<(), RedisError> {
        let wanted = self.config.replicas;
        match frame {
            OwnedFrame::Integer(got) if got >= i64::from(wanted) => Ok(()),
            OwnedFrame::Integer(got) => Err(RedisError::Replicas { wanted, got }),
            OwnedFrame::Error(e) => {
                Err(RedisError::from_reply(&e)
                    .unwrap_or(RedisError::Protocol(format!("WAIT: {e}"))))
            }
            other => Err(RedisError::Protocol(format!("WAIT answered {other:?}"))),
        }
    }

    /// Installs a fresh map (no connection yet) and remembers its nodes.
    fn adopt(&self, map: SlotMap, state: &mut State) {
        let mut known = map.nodes.clone();
        for seed in &self.config.seeds {
            if let Ok(addr) = seed_addr(seed) {
                if !known.contains(&addr) {
                    known.push(addr);
                }
            }
        }
        *self.known.borrow_mut() = known;
        state.conns = (0..map.masters.len()).map(|_| None).collect();
        state.map = Some(map);
    }

    /// The slot map from the first known node that gives one. All are asked
    /// at once, so dead or hung nodes cost one `io_timeout_ms` in all, not
    /// one each.
    async fn read_map(&self) -> Result<SlotMap, RedisError> {
        let io = Duration::from_millis(self.config.io_timeout_ms);
        let known = self.known.borrow().clone();
        let attempts = known
            .iter()
            .map(|addr| Box::pin(async move { fetch_map(addr, io).await.map(|(_, map)| map) }))
            .collect();
        within(io, "reading the slot map", first_ok(attempts)).await
    }

    /// A connection to a master, its scripts loaded.
    async fn open_master(&self, addr: &str) -> Result<Conn, RedisError> {
        let io = Duration::from_millis(self.config.io_timeout_ms);
        let mut conn = Conn::open(addr, io).await?;
        let shas = load_scripts(&mut conn, &self.scripts, io).await?;
        if shas != self.shas {
            return Err(RedisError::Protocol(format!(
                "{addr} gives other script shas: {shas:?}"
            )));
        }
        Ok(conn)
    }
}

/// The first of `attempts` to succeed. Once all failed: `Timeout` if every
/// one timed out (the nodes are there but hung), else `Unreachable` — the
/// same kinds a batch's own failure has, whichever deadline fires first.
async fn first_ok<T, F>(mut attempts: Vec<Pin<Box<F>>>) -> Result<T, RedisError>
where
    F: Future<Output = Result<T, RedisError>>,
{
    let mut failures = Vec::new();
    let mut all_timed_out = true;
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < attempts.len() {
            match attempts[i].as_mut().poll(cx) {
                Poll::Ready(Ok(value)) => return Poll::Ready(Ok(value)),
                Poll::Ready(Err(e)) => {
                    all_timed_out &= matches!(e, RedisError::Timeout(_));
                    failures.push(e.to_string());
                    drop(attempts.swap_remove(i));
                }
                Poll::Pending => i += 1,
            }
        }
        if attempts.is_empty() {
            let cause = format!("no node gave a slot map: {}", failures.join("; "));
            Poll::Ready(Err(if all_timed_out && !failures.is_empty() {
                RedisError::Timeout(cause)
            } else {
                RedisError::Unreachable(cause)
            }))
        } else {
            Poll::Pending
        }
    })
    .await
}

fn conn_of(conns: &mut [Option<Conn>], master: usize) -> Result<&mut Conn, RedisError> {
    conns
        .get_mut(master)
        .and_then(Option::as_mut)
        .ok_or_else(|| RedisError::Protocol(format!("no connection to master {master}")))
}

/// A command's reply, unless it is an error that fails the batch.
fn command_reply(frame: OwnedFrame) -> Result<Reply, RedisError> {
    if let OwnedFrame::Error(e) = &frame {
        if let Some(failure) = RedisError::from_reply(e) {
            return Err(failure);
        }
    }
    Ok(Reply::from(frame))
}

/// Connects to `addr` and reads its `CLUSTER SLOTS`.
async fn fetch_map(addr: &str, io: Duration) -> Result<(Conn, SlotMap), RedisError> {
    let mut conn = Conn::open(addr, io).await?;
    let reply = within(io, "CLUSTER SLOTS", conn.request(&[b"CLUSTER", b"SLOTS"])).await?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let map = SlotMap::parse(reply, host)?;
    Ok((conn, map))
}

/// `SCRIPT LOAD`s every script on `conn`, pipelined; their shas in order.
/// A script Redis refuses (say, a syntax error) is a `Config` error.
async fn load_scripts(
    conn: &mut Conn,
    scripts: &[&'static str],
    io: Duration,
) -> Result<Vec<String>, RedisError> {
    let mut out = Vec::new();
    for script in scripts {
        encode_argv(
            &[
                BorrowedFrame::BulkString(b"SCRIPT"),
                BorrowedFrame::BulkString(b"LOAD"),
                BorrowedFrame::BulkString(script.as_bytes()),
            ],
            &mut out,
        )?;
    }
    let addr = conn.addr().to_string();
    within(io, "SCRIPT LOAD", async {
        conn.write(&out).await?;
        let mut shas = Vec::with_capacity(scripts.len());
        for i in 0..scripts.len() {
            match conn.read().await? {
                OwnedFrame::BulkString(sha) => {
                    shas.push(String::from_utf8_lossy(&sha).into_owned())
                }
                OwnedFrame::Error(e) => {
                    return Err(RedisError::from_reply(&e).unwrap_or_else(|| {
                        RedisError::Config(format!("script {i} on {addr}: {e}"))
                    }))
                }
                other => {
                    return Err(RedisError::Protocol(format!(
                        "SCRIPT LOAD on {addr} answered {other:?}"
                    )))
                }
            }
        }
        Ok(shas)
    })
    .await
}
