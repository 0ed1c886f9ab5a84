//! What every executor of the process shares: configuration, metrics, the
//! shutdown flag, the wakeup core's client.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::{Metrics, ShardSnapshot};
use crate::ServerConfig;

/// What every shard can read: configuration, metrics, the shutdown flag.
pub struct Shared {
    pub config: ServerConfig,
    pub build: crate::Build,
    pub metrics: Metrics,
    pub snapshots: Vec<Mutex<ShardSnapshot>>,
    pub shutdown: AtomicBool,
    pub started: Instant,
    /// Every shard's handle on the wakeup core (SPEC §5).
    pub wakeups: crate::wakeup_client::WakeupClient,
    pub connections_per_ip: Arc<crate::per_ip::PerIpCounter>,
    /// What each shard says about itself: replaying, serving, store failed
    /// (the listeners accept once none replays; readiness reads it).
    pub states: crate::health::ShardStates,
    /// Cluster mode: the UAs each shard holds (empty on a single node).
    pub held: Vec<herald_store::cluster::HeldSet>,
    /// Built-in TLS on the UA and AS listeners (`--tls-cert`); None: plain.
    pub tls: Option<crate::tls::Tls>,
}

impl Shared {
    /// Cluster mode: whether a shard of this node holds `uaid` (then an AS
    /// request for it needs no lookup in Redis).
    pub fn holds(&self, uaid: &herald_engine::Uaid) -> bool {
        self.held
            .get(uaid.shard(self.config.shards))
            .and_then(|held| held.lock().ok().map(|held| held.contains(uaid)))
            .unwrap_or(false)
    }
}
