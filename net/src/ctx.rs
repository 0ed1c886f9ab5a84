//! One shard on glommio: its [`Driver`] over its store (the WAL, or the
//! cluster's Redis), the [`Runtime`] the driver reaches glommio through, and
//! what the listeners need besides.
//! Listeners and pages use [`Ctx`]; it knows none of them.

use std::cell::RefCell;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::spawn_local;

use herald_engine::identity::Keys;
use herald_engine::message::{Urgency, WakeupInfo};
use herald_engine::push::HttpResponse;
use herald_engine::record::Record;
use herald_engine::{Millis, Uaid};
use herald_store::{Claim, ClaimError};

use crate::cluster::ClusterNode;
use crate::metrics::ShardMeters;
use crate::node_link::NodeLink;
use crate::per_ip::{AddressRates, IpSlot};
use crate::shard::{Driver, RingMsg, Runtime};
use crate::shared::Shared;
use crate::store::ShardStore;
use crate::wakeup_client::WakeupClient;

/// A UA socket handed to the shard that owns its UAID (SPEC §8).
pub struct Adopted {
    /// A `dup` of the socket, now the receiver's to own.
    pub fd: RawFd,
    /// On `wss://`, the socket's TLS session (keys, sequence numbers).
    pub tls: Option<Box<crate::ua_tls::UaTls>>,
    /// Every byte the other shard read after the hello.
    pub buffered: Vec<u8>,
    pub hello: String,
    pub ip_slot: Option<IpSlot>,
    /// The client's address: behind a trusted proxy not the socket's peer,
    /// so it travels with the socket (`client_addr.rs`).
    pub client: IpAddr,
    /// The socket speaks the extended protocol; `hello` is its registerUA.
    pub extended: bool,
}

/// What crosses the rings of this process.
pub type ShardRing = RingMsg<Adopted>;

/// The driver as glommio runs it.
pub type ShardDriver = Driver<ShardStore, Glommio>;

/// A claim's outcome, on its way back to the driver (cluster mode).
pub type Claimed = (Uaid, Result<Vec<Record>, ClaimError>);

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as Millis)
}

/// Microseconds since the Unix epoch: the clock of
/// [`Runtime::now_us`], read again when a stamped frame is written.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// The driver's [`Runtime`] on glommio: the wall clock, the shard mesh,
/// local answer channels and the wakeup core.
pub struct Glommio {
    index: usize,
    senders: Rc<Senders<ShardRing>>,
    wakeups: WakeupClient,
    /// Claims that finished (cluster mode), for the task that feeds them to
    /// the driver, and the link that tells a UA's previous node.
    claimed: Rc<LocalSender<Claimed>>,
    link: Option<Rc<NodeLink>>,
}

impl Runtime for Glommio {
    type Socket = Adopted;
    type Waiter = LocalSender<HttpResponse>;

    fn now_ms(&self) -> Millis {
        now_ms()
    }

    fn now_us(&self) -> u64 {
        now_us()
    }

    fn try_send(&self, shard: usize, message: ShardRing) -> Result<(), ShardRing> {
        self.senders
            .try_send_to(shard, message)
            .map_err(|error| match error {
                glommio::GlommioError::Closed(glommio::ResourceType::Channel(message))
                | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(message)) => {
                    message
                }
                _ => unreachable!(
                    "a ring send fails only as full or closed: the shard index is valid"
                ),
            })
    }

    fn send(&self, shard: usize, message: ShardRing) {
        let Err(message) = self.try_send(shard, message) else {
            return;
        };
        let (senders, index) = (self.senders.clone(), self.index);
        spawn_local(async move {
            // The ring is full: wait for space, the answer must not be dropped
            // (answers are independent: another may overtake this one).
            if senders.send_to(shard, message).await.is_err() {
                tracing::warn!(shard = index, peer = shard, "ring closed");
            }
        })
        .detach();
    }

    fn answer(&self, waiter: LocalSender<HttpResponse>, response: HttpResponse) {
        // The waiter may have gone (client hung up); nothing to do then.
        let _ = waiter.try_send(response);
    }

    fn wakeup(&self, uaid: Uaid, target: WakeupInfo, urgency: Urgency) {
        self.wakeups.wake(uaid, target, urgency);
    }

    fn awake(&self, uaid: Uaid) {
        self.wakeups.awake(uaid);
    }

    fn load(
        &self,
        uaid: Uaid,
        claim: impl std::future::Future<Output = Result<Claim, ClaimError>> + 'static,
    ) {
        let (claimed, link) = (self.claimed.clone(), self.link.clone());
        spawn_local(async move {
            let outcome = claim.await;
            if let (Ok(claim), Some(link)) = (&outcome, link) {
                let displaced = claim.previous.clone();
                if let Some(previous) = displaced.filter(|previous| previous.node != link.own_url) {
                    spawn_local(async move { link.dropped(&previous, uaid).await }).detach();
                }
            }
            // Unbounded: one entry per claim the driver itself started.
            let _ = claimed.try_send((uaid, outcome.map(|claim| claim.records)));
        })
        .detach();
    }
}

pub struct Ctx {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub keys: Keys,
    pub driver: RefCell<ShardDriver>,
    /// The driver's store, for the tasks that wait on it (durability, the
    /// writer, compaction, shutdown).
    pub journal: ShardStore,
    /// Cluster mode: where UAs are held, and the node link.
    pub cluster: Option<ClusterNode>,
    pub senders: Rc<Senders<ShardRing>>,
    /// `GET /token` requests per source address in the current minute.
    token_requests: RefCell<AHashMap<IpAddr, (Millis, u32)>>,
    /// This shard's rate limits per source address.
    pub address_rates: AddressRates,
    /// This shard's latency histograms and AS request counts.
    pub meters: ShardMeters,
}

impl Ctx {
    /// `driver` is built by [`Ctx::runtime`]'s caller around `journal`.
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        keys: Keys,
        driver: ShardDriver,
        journal: ShardStore,
        cluster: Option<ClusterNode>,
        senders: Rc<Senders<ShardRing>>,
    ) -> Ctx {
        Ctx {
            index,
            address_rates: AddressRates::new(&shared.config.limits),
            meters: shared.metrics.shard_meters(index),
            shared,
            keys,
            driver: RefCell::new(driver),
            journal,
            cluster,
            senders,
            token_requests: RefCell::new(AHashMap::new()),
        }
    }

    /// The runtime a shard's driver uses; finished claims come out of the
    /// receiver it returns.
    pub fn runtime(
        index: usize,
        senders: Rc<Senders<ShardRing>>,
        shared: &Shared,
        link: Option<Rc<NodeLink>>,
    ) -> (Glommio, LocalReceiver<Claimed>) {
        let (claimed, claims) = local_channel::new_unbounded();
        let runtime = Glommio {
            index,
            senders,
            wakeups: shared.wakeups.clone(),
            claimed: Rc::new(claimed),
            link,
        };
        (runtime, claims)
    }

    /// Runs `input` against the driver. Never held across an `await`.
    pub fn with_driver<T>(&self, input: impl FnOnce(&mut ShardDriver) -> T) -> T {
        input(&mut self.driver.borrow_mut())
    }

    /// Whether `ip` may have another UA token this minute. The table is
    /// bounded: when it is full, a new minute starts for everyone.
    pub fn token_allowed(&self, ip: IpAddr) -> bool {
        const WINDOW_MS: Millis = 60_000;
        const ADDRESSES_TRACKED_MAX: usize = 100_000;
        let now = now_ms();
        let mut requests = self.token_requests.borrow_mut();
        if requests.len() >= ADDRESSES_TRACKED_MAX {
            requests.clear();
        }
        let (window_start, count) = requests.entry(ip).or_insert((now, 0));
        if now.saturating_sub(*window_start) >= WINDOW_MS {
            *window_start = now;
            *count = 0;
        }
        *count += 1;
        *count <= self.shared.config.limits.tokens_per_ip_per_minute_max
    }

    /// A new local waiter for one AS answer.
    pub fn answer_slot() -> (LocalSender<HttpResponse>, LocalReceiver<HttpResponse>) {
        local_channel::new_bounded(1)
    }
}
