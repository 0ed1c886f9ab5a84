//! A nine-node Redis Cluster on loopback, for the cluster-mode tests.
//!
//! Three "data centres" DC0..DC2 of three `redis-server` processes each.
//! Shard `s` (of three) has its master in DC`s` and one replica in each of
//! the two other DCs, so losing any one DC leaves every shard a replica to
//! promote. The cluster is built by hand (CLUSTER MEET, ADDSLOTSRANGE,
//! REPLICATE) because `redis-cli --cluster create` places replicas without
//! knowing about DCs.
//!
//! Node `i` (0..9) is in DC `i / 3`; at start node `3s` is shard `s`'s
//! master. Every node has its own port (its cluster bus is port + 10000) and
//! its own temp dir (config, `nodes.conf`, `redis.log`), kept across
//! restarts so a restarted node rejoins with its identity.
//!
//! Nothing persists data (`appendonly no`, `save ""`): a restarted node
//! comes back empty. A master restarted before its replicas fail over would
//! come back as an empty master and its replicas would copy the emptiness,
//! so tests restart a killed master only after [`RedisCluster::wait_healthy`]
//! saw the failover.
//!
//! The processes are killed by PID on drop (also while unwinding from a
//! panic) and, should the test process die without unwinding, by the kernel
//! (`PR_SET_PDEATHSIG`). That signal follows the *thread* that spawned them,
//! so start and restart nodes from the thread that owns the cluster.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use crate::util::{random_bytes, wait_until, TempDir};

/// Number of data centres, and of nodes in each.
pub const DCS: usize = 3;
const NODES_PER_DC: usize = 3;
const NODES: usize = DCS * NODES_PER_DC;
/// Deadline for forming or healing the cluster (gossip, elections, full
/// syncs) on a busy machine.
pub const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);
/// Per-request deadline when the launcher talks to a node.
const NODE_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Ports are taken from [PORT_LOW, PORT_HIGH): below the kernel's ephemeral
/// range (32768..) together with their bus port (+10000), so no outgoing
/// connection of another test can hold them.
const PORT_LOW: u16 = 12000;
const PORT_HIGH: u16 = 22700;
const BUS_OFFSET: u16 = 10000;

/// The hash slot ranges of the three shards (shard `s` first served by
/// node `3s`).
pub const SHARD_SLOTS: [(u16, u16); DCS] = [(0, 5460), (5461, 10922), (10923, 16383)];

struct Node {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    /// When the last node was killed: what [`RedisCluster::wait_healthy_without`]
    /// measures from.
    last_kill: Option<Instant>,
}

impl RedisCluster {
    /// Starts the nine nodes, builds the layout and waits until it is
    /// healthy (see [`RedisCluster::wait_healthy`]).
    pub fn start() -> RedisCluster {
        let ports = pick_ports(NODES);
        let nodes = ports
            .into_iter()
            .map(|port| {
                let dir = TempDir::new(&format!("redis-{port}"));
                std::fs::write(dir.path().join("redis.conf"), node_config(port, &dir))
                    .expect("write redis.conf");
                Node {
                    port,
                    dir,
                    child: None,
                }
            })
            .collect();
        let mut cluster = RedisCluster {
            nodes,
            last_kill: None,
        };
        for i in 0..NODES {
            cluster.spawn(i);
        }
        for i in 0..NODES {
            cluster.wait_answers(i);
        }
        cluster.build();
        cluster.wait_healthy();
        cluster
    }

    /// Every node as a seed list, `redis://127.0.0.1:P,...`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes' ports; node `i` is `ports()[i]`.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The PIDs of the running nodes (the benchmark reads their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// The DC of the node on `port`.
    pub fn dc_of(&self, port: u16) -> usize {
        self.index_of(port) / NODES_PER_DC
    }

    /// SIGKILLs the three nodes of `dc`.
    pub fn kill_dc(&mut self, dc: usize) {
        assert!(dc < DCS, "no DC {dc}");
        for i in dc * NODES_PER_DC..(dc + 1) * NODES_PER_DC {
            self.kill_node(i);
        }
    }

    /// Waits until the nodes outside `dc` (which must be down) form a healthy
    /// cluster on their own, replicas promoted. Returns the time since the
    /// last node was killed (or since this call, if none was).
    pub fn wait_healthy_without(&mut self, dc: usize) -> Duration {
        for i in dc * NODES_PER_DC..(dc + 1) * NODES_PER_DC {
            assert!(self.nodes[i].child.is_none(), "node {i} of DC{dc} is up");
        }
        let from = self.last_kill.unwrap_or_else(Instant::now);
        self.wait_healthy();
        from.elapsed()
    }

    /// Waits until the running nodes form a healthy cluster: each says
    /// `cluster_state:ok`, each maps every slot to a running master, and every
    /// running replica's replication link is up (`WAIT` counts only those).
    pub fn wait_healthy(&self) {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect();
        wait_until(CLUSTER_DEADLINE, "a healthy Redis Cluster", || {
            live.iter().all(|&port| node_healthy(port, &live))
        });
    }

    /// SIGKILLs node `i` (0..9) and reaps it.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // Child::kill is kill(pid, SIGKILL) on this child's PID.
            let _ = child.kill();
            let _ = child.wait();
            self.last_kill = Some(Instant::now());
        }
    }

    /// Starts node `i` again, same port and dir (it rejoins from its
    /// `nodes.conf`, empty of data), and waits until it answers. Whether the
    /// cluster has taken it back is for [`RedisCluster::wait_healthy`].
    pub fn restart_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn(i);
        self.wait_answers(i);
    }

    /// Makes the replica on `port` take its master's slots over (CLUSTER
    /// FAILOVER, coordinated: no write is lost; the old master becomes its
    /// replica) and waits until the cluster is healthy again.
    pub fn promote(&self, port: u16) {
        ok(port, &["CLUSTER", "FAILOVER"]);
        wait_until(CLUSTER_DEADLINE, "the promoted replica is a master", || {
            info_field(port, "INFO", "replication", "role") == "master"
        });
        self.wait_healthy();
    }

    /// SIGSTOPs node `i`: it keeps its sockets but answers nothing, like a
    /// hung or cut-off node. [`RedisCluster::thaw_node`] resumes it.
    pub fn freeze_node(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONTs node `i`.
    pub fn thaw_node(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// SIGKILLs every node.
    pub fn stop_all(&mut self) {
        for i in 0..NODES {
            self.kill_node(i);
        }
    }

    /// Starts every stopped node on its port and dir, and waits until the
    /// cluster is healthy.
    pub fn start_all(&mut self) {
        let stopped: Vec<usize> = (0..NODES)
            .filter(|&i| self.nodes[i].child.is_none())
            .collect();
        for &i in &stopped {
            self.spawn(i);
        }
        for &i in &stopped {
            self.wait_answers(i);
        }
        self.wait_healthy();
    }

    /// The ports of the masters serving slots, as a running node sees them.
    pub fn masters(&self) -> Vec<u16> {
        self.cluster_nodes()
            .iter()
            .filter(|n| n.master && !n.failed && n.has_slots)
            .map(|n| n.port)
            .collect()
    }

    /// The ports of `master`'s replicas, as a running node sees them.
    pub fn replicas_of(&self, master: u16) -> Vec<u16> {
        let nodes = self.cluster_nodes();
        let Some(id) = nodes.iter().find(|n| n.port == master).map(|n| &n.id) else {
            panic!("no node on port {master}");
        };
        nodes
            .iter()
            .filter(|n| !n.master && !n.failed && n.master_id == *id)
            .map(|n| n.port)
            .collect()
    }

    /// Node `i`'s `redis.log`, for failure messages.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.path().join("redis.log")).unwrap_or_default()
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        let child = self.nodes[i].child.as_ref().expect("node is running");
        // SAFETY: kill(2) on the PID of a child we have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut cmd = Command::new("redis-server");
        cmd.arg(node.dir.path().join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl(2) only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start redis-server (apt-get install redis-server): {e}"));
        node.child = Some(child);
    }

    /// Waits until node `i` answers PING (it exits at once if it cannot
    /// bind its port: the log says so).
    fn wait_answers(&mut self, i: usize) {
        let port = self.nodes[i].port;
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        loop {
            if let Ok(OwnedFrame::SimpleString(s)) = request(port, &["PING"]) {
                if s == b"PONG" {
                    return;
                }
            }
            let exited = self.nodes[i]
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                panic!(
                    "redis node {i} (port {port}) does not answer; its log:\n{}",
                    self.log(i)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Joins the nodes, gives each shard its slots and its two replicas.
    fn build(&self) {
        let first = self.nodes[0].port;
        for n in &self.nodes[1..] {
            let (port, bus) = (n.port.to_string(), (n.port + BUS_OFFSET).to_string());
            ok(first, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
        }
        for (shard, (lo, hi)) in SHARD_SLOTS.iter().enumerate() {
            let master = self.nodes[shard * NODES_PER_DC].port;
            let (lo, hi) = (lo.to_string(), hi.to_string());
            ok(master, &["CLUSTER", "ADDSLOTSRANGE", &lo, &hi]);
        }
        // A replica can only follow a master it has heard of.
        wait_until(CLUSTER_DEADLINE, "every node knows all nine", || {
            self.nodes
                .iter()
                .all(|n| info_field(n.port, "CLUSTER", "INFO", "cluster_known_nodes") == "9")
        });
        let ids: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match request(n.port, &["CLUSTER", "MYID"]) {
                Ok(OwnedFrame::BulkString(id)) => String::from_utf8_lossy(&id).into_owned(),
                other => panic!("CLUSTER MYID on {}: {other:?}", n.port),
            })
            .collect();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(shard) = replica_shard(i) {
                ok(
                    n.port,
                    &["CLUSTER", "REPLICATE", &ids[shard * NODES_PER_DC]],
                );
            }
        }
    }

    /// CLUSTER NODES as seen by the first running node.
    fn cluster_nodes(&self) -> Vec<NodeLine> {
        let port = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("no Redis node is running")
            .port;
        match request(port, &["CLUSTER", "NODES"]) {
            Ok(OwnedFrame::BulkString(text)) => String::from_utf8_lossy(&text)
                .lines()
                .filter_map(NodeLine::parse)
                .collect(),
            other => panic!("CLUSTER NODES on {port}: {other:?}"),
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The shard that node `i` replicates at start, if it is a replica. DC `d`'s
/// second node follows shard `d+1`, its third shard `d+2` (mod 3): each
/// shard gets one replica in each DC other than its master's.
fn replica_shard(i: usize) -> Option<usize> {
    let (dc, k) = (i / NODES_PER_DC, i % NODES_PER_DC);
    (k != 0).then_some((dc + k) % DCS)
}

fn node_config(port: u16, dir: &TempDir) -> String {
    format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         dir {dir}\n\
         logfile {dir}/redis.log\n\
         daemonize no\n\
         cluster-enabled yes\n\
         cluster-config-file nodes.conf\n\
         cluster-node-timeout 2000\n\
         # A slot without a master makes the whole cluster refuse: the client\n\
         # must see CLUSTERDOWN, not a partial answer.\n\
         cluster-require-full-coverage yes\n\
         cluster-allow-reads-when-down no\n\
         appendonly no\n\
         save \"\"\n\
         # Replicas sync at once instead of waiting for more replicas (5 s).\n\
         repl-diskless-sync-delay 0\n",
        dir = dir.path().display()
    )
}

/// `n` ports whose bus ports are free too. Each launcher in this process
/// takes the next ones from a shared cursor, starting at a random place so
/// that test binaries running side by side are unlikely to meet.
fn pick_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = PORT_HIGH - PORT_LOW;
    let r = random_bytes(2);
    let _ = NEXT.compare_exchange(
        0,
        u16::from_le_bytes([r[0], r[1]]) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        let port = PORT_LOW + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + BUS_OFFSET) {
            ports.push(port);
            if ports.len() == n {
                return ports;
            }
        }
    }
    panic!("no {n} free port pairs in {PORT_LOW}..{PORT_HIGH}");
}

/// One request to the node on `port`, on a fresh connection, with deadlines.
pub fn request(port: u16, argv: &[&str]) -> Result<OwnedFrame, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&addr, NODE_IO_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(NODE_IO_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(NODE_IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let args: Vec<BorrowedFrame> = argv
        .iter()
        .map(|a| BorrowedFrame::BulkString(a.as_bytes()))
        .collect();
    let frame = BorrowedFrame::Array(&args);
    let mut out = vec![0; frame.encode_len(false)];
    encode_borrowed(&mut out, &frame, false).map_err(|e| e.to_string())?;
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((frame, _)) = decode(&buf).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed".into()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            // A signal (a child of this test process exiting) is not an answer.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A request that must answer `+OK`.
#[track_caller]
fn ok(port: u16, argv: &[&str]) {
    match request(port, argv) {
        Ok(OwnedFrame::SimpleString(s)) if s == b"OK" => {}
        other => panic!("{argv:?} on {port}: {other:?}"),
    }
}

/// `field` of an INFO-style reply (`key:value` lines) to `cmd arg`, or ""
/// when the node does not answer.
pub fn info_field(port: u16, cmd: &str, arg: &str, field: &str) -> String {
    let Ok(OwnedFrame::BulkString(text)) = request(port, &[cmd, arg]) else {
        return String::new();
    };
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// One node's view: cluster state ok, every slot served by a master among
/// `live`, and, if it is a replica, its replication link up.
fn node_healthy(port: u16, live: &[u16]) -> bool {
    if info_field(port, "CLUSTER", "INFO", "cluster_state") != "ok" {
        return false;
    }
    if info_field(port, "INFO", "replication", "role") == "slave"
        && info_field(port, "INFO", "replication", "master_link_status") != "up"
    {
        return false;
    }
    if !roles_settled(port, live) {
        return false;
    }
    let Ok(OwnedFrame::Array(ranges)) = request(port, &["CLUSTER", "SLOTS"]) else {
        return false;
    };
    let mut covered = 0u32;
    for range in &ranges {
        let OwnedFrame::Array(fields) = range else {
            return false;
        };
        let (Some(OwnedFrame::Integer(lo)), Some(OwnedFrame::Integer(hi)), Some(master)) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return false;
        };
        let master_port = match master {
            OwnedFrame::Array(m) => match m.get(1) {
                Some(OwnedFrame::Integer(p)) => *p,
                _ => return false,
            },
            _ => return false,
        };
        if !live.iter().any(|&p| i64::from(p) == master_port) {
            return false;
        }
        covered += (hi - lo + 1) as u32;
    }
    covered == 16384
}

/// Whether the node on `port` sees every node in `live` as healthy and
/// either a master with slots or a replica of one (gossip can show a fresh
/// replica as a master without slots for a while).
fn roles_settled(port: u16, live: &[u16]) -> bool {
    let Ok(OwnedFrame::BulkString(text)) = request(port, &["CLUSTER", "NODES"]) else {
        return false;
    };
    let nodes: Vec<NodeLine> = String::from_utf8_lossy(&text)
        .lines()
        .filter_map(NodeLine::parse)
        .collect();
    let serving = |id: &str| {
        nodes
            .iter()
            .any(|n| n.id == id && n.master && n.has_slots && !n.failed && live.contains(&n.port))
    };
    live.iter().all(|&p| {
        nodes.iter().any(|n| {
            n.port == p
                && !n.failed
                && if n.master {
                    n.has_slots
                } else {
                    serving(&n.master_id)
                }
        })
    })
}

/// One line of CLUSTER NODES: `id ip:port@bus flags master-id ... slots`.
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    master_id: String,
    has_slots: bool,
}

impl NodeLine {
    fn parse(line: &str) -> Option<NodeLine> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let addr = f.get(1)?.split('@').next()?;
        let flags = f.get(2)?;
        Some(NodeLine {
            id: f.first()?.to_string(),
            port: addr.rsplit_once(':')?.1.parse().ok()?,
            master: flags.split(',').any(|x| x == "master"),
            failed: flags.split(',').any(|x| x == "fail" || x == "fail?"),
            master_id: f.get(3)?.to_string(),
            has_slots: f.len() > 8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_has_a_replica_in_each_other_dc() {
        for shard in 0..DCS {
            let mut dcs: Vec<usize> = (0..NODES)
                .filter(|&i| replica_shard(i) == Some(shard))
                .map(|i| i / NODES_PER_DC)
                .collect();
            dcs.sort();
            let mut want: Vec<usize> = (0..DCS).filter(|&d| d != shard).collect();
            want.sort();
            assert_eq!(dcs, want, "shard {shard}");
        }
    }
}
