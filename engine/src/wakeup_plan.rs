//! The wakeup core's decisions, without IO (SPEC §5): which sleeping UA gets a
//! datagram next, when a silent one is tried again, and when we give up.
//!
//! Time is passed in (milliseconds on the core's monotonic clock) so every rule
//! here is unit-tested deterministically, like the shard. The wakeup core in
//! `net/` owns the sockets and the clock and calls in here.
//!
//! Shape of the state:
//! - one [`Entry`] per UAID that has a wakeup in flight. A second request for
//!   the same UAID is *coalesced* into it (its urgency may rise; the target is
//!   refreshed), so a burst of notifications costs one datagram;
//! - per mobile network: a token bucket and four FIFO ready queues, one per
//!   urgency, drained `high` first;
//! - one min-heap of retry deadlines. A woken UA that has not said hello by
//!   its deadline is queued again, with the delay doubling each time, until
//!   `retries_max` re-sends; then the entry is dropped (counted as failed) and
//!   the next notification starts afresh.
//!
//! Queue and heap items carry the entry's generation; an item whose entry has
//! gone (UA awake) or moved on is skipped when popped. That keeps `awake` O(1).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;

use ahash::AHashMap;

use crate::limits::Limits;
use crate::message::{Urgency, WakeupInfo};
use crate::rate::{Bucket, Rate};
use crate::Uaid;

/// Monotonic milliseconds on the wakeup core's clock.
pub type Ms = u64;

/// What the planner needs from [`Limits`], copied once.
#[derive(Clone, Debug)]
pub struct PlanLimits {
    pub pending_max: usize,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub retries_max: u32,
    pub per_network_per_s: u32,
    pub per_network_burst: u32,
}

impl PlanLimits {
    pub fn from_limits(limits: &Limits) -> PlanLimits {
        PlanLimits {
            pending_max: limits.wakeup_pending_max.max(1),
            retry_initial_ms: limits.wakeup_retry_initial_ms.max(1),
            retry_max_ms: limits
                .wakeup_retry_max_ms
                .max(limits.wakeup_retry_initial_ms.max(1)),
            retries_max: limits.wakeup_retries_max,
            per_network_per_s: limits.wakeup_per_network_per_s.max(1),
            per_network_burst: limits.wakeup_per_network_burst.max(1),
        }
    }
}

/// How a request for a wakeup was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeOutcome {
    /// A new entry, queued for its first datagram.
    Queued,
    /// One was already in flight for this UAID.
    Coalesced,
    /// The UA's MCC-MNC has no route (configuration changed since it slept).
    NoRoute,
    /// `pending_max` entries already: refused rather than grow without bound.
    Overloaded,
}

/// One datagram (or proxy call) to make now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub uaid: Uaid,
    pub generation: u64,
    /// Index into the routes the planner was built with.
    pub route: usize,
    pub addr: SocketAddr,
    /// The MCC-MNC key (the proxy's JSON needs mcc, mnc and netid).
    pub network: usize,
    pub netid: Box<str>,
    /// 1 for the first datagram, 2.. for re-sends.
    pub attempt: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In its network's ready queue, waiting for a token.
    Queued,
    /// Sent; its retry deadline is in the heap.
    Waiting,
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    state: State,
    urgency: Urgency,
    network: usize,
    addr: SocketAddr,
    netid: Box<str>,
    /// Datagrams sent so far.
    attempts: u32,
    first_sent_ms: Option<Ms>,
}

#[derive(Debug)]
struct Network {
    key: String,
    route: usize,
    /// Paid a token per dispatch, at `per_network_per_s`.
    bucket: Bucket,
    /// Indexed by [`Urgency::to_u8`]; drained from the highest index down.
    ready: [VecDeque<(Uaid, u64)>; 4],
}

impl Network {
    fn queued(&self) -> bool {
        self.ready.iter().any(|queue| !queue.is_empty())
    }
}

/// Counters since the planner was built; the core publishes the differences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub requested: u64,
    pub coalesced: u64,
    /// Dispatches that were re-sends (attempt ≥ 2).
    pub retried: u64,
    pub dispatched: u64,
    pub gave_up: u64,
    pub no_route: u64,
    pub overloaded: u64,
    /// Times a queued wakeup had to wait for its network's token bucket.
    pub rate_limited: u64,
    pub awake_after_wakeup: u64,
}

pub struct Planner {
    limits: PlanLimits,
    /// Each network's bucket refills at this rate.
    rate: Rate,
    entries: AHashMap<Uaid, Entry>,
    networks: Vec<Network>,
    network_index: AHashMap<String, usize>,
    retries: BinaryHeap<Reverse<(Ms, Uaid, u64)>>,
    next_generation: u64,
    /// Round-robin start, so one busy network cannot starve the others.
    next_network: usize,
    stats: PlanStats,
}

impl Planner {
    /// `networks`: (MCC-MNC, route index) for every configured route.
    pub fn new(limits: PlanLimits, networks: &[(String, usize)]) -> Planner {
        let networks: Vec<Network> = networks
            .iter()
            .map(|(key, route)| Network {
                key: key.clone(),
                route: *route,
                bucket: Bucket::default(),
                ready: Default::default(),
            })
            .collect();
        let network_index = networks
            .iter()
            .enumerate()
            .map(|(index, network)| (network.key.clone(), index))
            .collect();
        let rate = Rate::per_s(limits.per_network_per_s.max(1), limits.per_network_burst)
            .expect("a rate of at least one a second");
        Planner {
            limits,
            rate,
            entries: AHashMap::new(),
            networks,
            network_index,
            retries: BinaryHeap::new(),
            next_generation: 1,
            next_network: 0,
            stats: PlanStats::default(),
        }
    }

    pub fn stats(&self) -> PlanStats {
        self.stats
    }

    /// UAs with a wakeup queued or awaiting their reconnect.
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    pub fn network_key(&self, network: usize) -> &str {
        self.networks
            .get(network)
            .map_or("", |network| &network.key)
    }

    /// A notification was stored for `uaid`, which is asleep.
    pub fn wake(&mut self, uaid: Uaid, target: &WakeupInfo, urgency: Urgency) -> WakeOutcome {
        self.stats.requested += 1;
        let key = format!("{}-{}", target.mcc, target.mnc);
        let Some(&network) = self.network_index.get(&key) else {
            self.stats.no_route += 1;
            return WakeOutcome::NoRoute;
        };
        // An IPv4-mapped IPv6 address goes out on the IPv4 socket.
        let addr = SocketAddr::new(target.ip.to_canonical(), target.port);
        if let Some(entry) = self.entries.get_mut(&uaid) {
            self.stats.coalesced += 1;
            entry.addr = addr;
            entry.netid = target.netid.as_str().into();
            if urgency > entry.urgency {
                entry.urgency = urgency;
                if entry.state == State::Queued && entry.network == network {
                    // Jump to the higher queue; the old item is skipped later
                    // because the generation moves on.
                    self.next_generation += 1;
                    entry.generation = self.next_generation;
                    self.networks[network].ready[urgency.to_u8() as usize]
                        .push_back((uaid, entry.generation));
                }
            }
            if entry.network != network {
                // The UA moved to another operator while asleep: requeue there.
                entry.network = network;
                if entry.state == State::Queued {
                    self.next_generation += 1;
                    entry.generation = self.next_generation;
                    self.networks[network].ready[entry.urgency.to_u8() as usize]
                        .push_back((uaid, entry.generation));
                }
            }
            return WakeOutcome::Coalesced;
        }
        if self.entries.len() >= self.limits.pending_max {
            self.stats.overloaded += 1;
            return WakeOutcome::Overloaded;
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        self.entries.insert(
            uaid,
            Entry {
                generation,
                state: State::Queued,
                urgency,
                network,
                addr,
                netid: target.netid.as_str().into(),
                attempts: 0,
                first_sent_ms: None,
            },
        );
        self.networks[network].ready[urgency.to_u8() as usize].push_back((uaid, generation));
        WakeOutcome::Queued
    }

    /// `uaid` said hello: stop. Returns the time from its first datagram to
    /// now, when one was sent (the wake-to-reconnect latency).
    pub fn awake(&mut self, now_ms: Ms, uaid: Uaid) -> Option<Ms> {
        let entry = self.entries.remove(&uaid)?;
        let first_sent_ms = entry.first_sent_ms?;
        self.stats.awake_after_wakeup += 1;
        Some(now_ms.saturating_sub(first_sent_ms))
    }

    /// Moves due retries into the ready queues, then takes up to `max`
    /// dispatches: round-robin over networks, `high` urgency first within one,
    /// each paid for with a token from that network's bucket. Dispatched
    /// entries are marked sent and get their retry deadline now; a send that
    /// could not even be attempted is handed back with [`Planner::unsend`].
    pub fn poll(&mut self, now_ms: Ms, max: usize, out: &mut Vec<Dispatch>) {
        self.fire_retries(now_ms);
        let count = self.networks.len();
        if count == 0 {
            return;
        }
        let start = self.next_network % count;
        self.next_network = self.next_network.wrapping_add(1);
        // Take from each network in turn until the batch is full or nothing
        // more can go: fair across networks, one token at a time.
        let mut progress = true;
        while out.len() < max && progress {
            progress = false;
            for offset in 0..count {
                if out.len() >= max {
                    break;
                }
                let index = (start + offset) % count;
                if self.dispatch_one(now_ms, index, out) {
                    progress = true;
                }
            }
        }
    }

    /// Takes one valid item from network `index`, if a token allows it.
    fn dispatch_one(&mut self, now_ms: Ms, index: usize, out: &mut Vec<Dispatch>) -> bool {
        let network = &mut self.networks[index];
        if !network.queued() {
            return false;
        }
        loop {
            let Some((level, (uaid, generation))) = (0..4)
                .rev()
                .find_map(|level| network.ready[level].front().map(|item| (level, *item)))
            else {
                return false;
            };
            let valid = self.entries.get(&uaid).is_some_and(|entry| {
                entry.generation == generation
                    && entry.state == State::Queued
                    && entry.network == index
            });
            if !valid {
                network.ready[level].pop_front();
                continue;
            }
            if network.bucket.take(&self.rate, now_ms).is_err() {
                self.stats.rate_limited += 1;
                return false;
            }
            network.ready[level].pop_front();
            let route = network.route;
            let Some(entry) = self.entries.get_mut(&uaid) else {
                return false;
            };
            entry.attempts += 1;
            entry.state = State::Waiting;
            entry.first_sent_ms.get_or_insert(now_ms);
            let delay = retry_delay_ms(&self.limits, entry.attempts);
            self.retries
                .push(Reverse((now_ms + delay, uaid, entry.generation)));
            if entry.attempts > 1 {
                self.stats.retried += 1;
            }
            self.stats.dispatched += 1;
            out.push(Dispatch {
                uaid,
                generation: entry.generation,
                route,
                addr: entry.addr,
                network: index,
                netid: entry.netid.clone(),
                attempt: entry.attempts,
            });
            return true;
        }
    }

    /// The dispatch could not be handed to the socket at all (EAGAIN, a full
    /// proxy queue): put it back at the head of its queue and refund the token.
    pub fn unsend(&mut self, dispatch: &Dispatch) {
        let Some(entry) = self.entries.get_mut(&dispatch.uaid) else {
            return;
        };
        if entry.generation != dispatch.generation || entry.state != State::Waiting {
            return;
        }
        entry.attempts = entry.attempts.saturating_sub(1);
        if entry.attempts == 0 {
            entry.first_sent_ms = None;
        } else {
            self.stats.retried = self.stats.retried.saturating_sub(1);
        }
        self.stats.dispatched = self.stats.dispatched.saturating_sub(1);
        entry.state = State::Queued;
        // The heap item still carries this generation; bumping it makes the
        // stale retry deadline harmless.
        self.next_generation += 1;
        entry.generation = self.next_generation;
        let network = &mut self.networks[entry.network];
        network.bucket.refund(&self.rate);
        network.ready[entry.urgency.to_u8() as usize].push_front((dispatch.uaid, entry.generation));
    }

    fn fire_retries(&mut self, now_ms: Ms) {
        while let Some(Reverse((due_ms, uaid, generation))) = self.retries.peek().copied() {
            if due_ms > now_ms {
                break;
            }
            self.retries.pop();
            let Some(entry) = self.entries.get_mut(&uaid) else {
                continue;
            };
            if entry.generation != generation || entry.state != State::Waiting {
                continue;
            }
            if entry.attempts > self.limits.retries_max {
                // Silent through every re-send: the UA is gone or out of
                // coverage. Forget it; the next notification starts again.
                self.entries.remove(&uaid);
                self.stats.gave_up += 1;
                continue;
            }
            entry.state = State::Queued;
            self.networks[entry.network].ready[entry.urgency.to_u8() as usize]
                .push_back((uaid, generation));
        }
    }

    /// When the planner next has something to do, if nothing arrives before:
    /// the earliest retry deadline, or the moment a rate-limited network earns
    /// its next token.
    pub fn next_deadline(&self, now_ms: Ms) -> Option<Ms> {
        let retry = self.retries.peek().map(|Reverse((due_ms, _, _))| *due_ms);
        let refill = self
            .networks
            .iter()
            .filter(|network| network.queued())
            .map(|network| network.bucket.ready_at_ms(&self.rate, now_ms))
            .min();
        match (retry, refill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Delay after the `attempts`-th datagram: initial × 2^(attempts−1), capped.
pub fn retry_delay_ms(limits: &PlanLimits, attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(32);
    limits
        .retry_initial_ms
        .saturating_mul(1u64 << shift)
        .min(limits.retry_max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PlanLimits {
        PlanLimits {
            pending_max: 100,
            retry_initial_ms: 1000,
            retry_max_ms: 8000,
            retries_max: 3,
            per_network_per_s: 1000,
            per_network_burst: 1000,
        }
    }

    fn target(port: u16, network: &str) -> WakeupInfo {
        let (mcc, mnc) = network.split_once('-').unwrap();
        WakeupInfo {
            ip: "10.0.0.1".parse().unwrap(),
            port,
            mcc: mcc.into(),
            mnc: mnc.into(),
            netid: "cell".into(),
        }
    }

    fn uaid(n: u8) -> Uaid {
        Uaid([n; 16])
    }

    fn planner(limits: PlanLimits) -> Planner {
        Planner::new(
            limits,
            &[("214-07".to_owned(), 0), ("310-410".to_owned(), 1)],
        )
    }

    fn poll(planner: &mut Planner, now: Ms, max: usize) -> Vec<Dispatch> {
        let mut out = vec![];
        planner.poll(now, max, &mut out);
        out
    }

    #[test]
    fn coalesces_while_in_flight_and_stops_on_awake() {
        let mut p = planner(limits());
        assert_eq!(
            p.wake(uaid(1), &target(5000, "214-07"), Urgency::Normal),
            WakeOutcome::Queued
        );
        assert_eq!(
            p.wake(uaid(1), &target(5000, "214-07"), Urgency::Normal),
            WakeOutcome::Coalesced
        );
        let sent = poll(&mut p, 10, 64);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].attempt, 1);
        assert_eq!(sent[0].addr, "10.0.0.1:5000".parse::<SocketAddr>().unwrap());
        assert_eq!(
            p.wake(uaid(1), &target(5000, "214-07"), Urgency::High),
            WakeOutcome::Coalesced
        );
        assert!(
            poll(&mut p, 20, 64).is_empty(),
            "no second datagram while waiting"
        );
        assert_eq!(p.awake(250, uaid(1)), Some(240));
        assert_eq!(p.pending(), 0);
        assert!(poll(&mut p, 5000, 64).is_empty(), "no retry after awake");
        assert_eq!(p.stats().coalesced, 2);
    }

    #[test]
    fn retries_back_off_then_give_up() {
        let mut p = planner(limits());
        p.wake(uaid(1), &target(5000, "214-07"), Urgency::Normal);
        let mut sends = vec![];
        for now in (0..40_000).step_by(100) {
            for dispatch in poll(&mut p, now, 64) {
                sends.push((now, dispatch.attempt));
            }
        }
        // 1 + retries_max datagrams at 0, 1, 3 and 7 s; given up 8 s after the last.
        assert_eq!(sends, vec![(0, 1), (1000, 2), (3000, 3), (7000, 4)]);
        assert_eq!(p.pending(), 0);
        assert_eq!(p.stats().gave_up, 1);
        assert_eq!(p.stats().retried, 3);
        assert_eq!(p.awake(40_000, uaid(1)), None);
    }

    #[test]
    fn high_urgency_goes_first_and_can_jump_the_queue() {
        let mut p = planner(limits());
        p.wake(uaid(1), &target(1, "214-07"), Urgency::Low);
        p.wake(uaid(2), &target(2, "214-07"), Urgency::Normal);
        p.wake(uaid(3), &target(3, "214-07"), Urgency::High);
        // uaid 1 is raised to high before anything is sent.
        p.wake(uaid(1), &target(1, "214-07"), Urgency::High);
        let order: Vec<u8> = poll(&mut p, 0, 64).iter().map(|d| d.uaid.0[0]).collect();
        assert_eq!(order, vec![3, 1, 2]);
    }

    #[test]
    fn token_bucket_limits_each_network_separately() {
        let mut l = limits();
        l.per_network_per_s = 10;
        l.per_network_burst = 2;
        let mut p = planner(l);
        for n in 0..5 {
            p.wake(uaid(n), &target(1, "214-07"), Urgency::Normal);
        }
        p.wake(uaid(9), &target(1, "310-410"), Urgency::Normal);
        let first = poll(&mut p, 0, 64);
        assert_eq!(first.len(), 3, "burst of 2 on one network, 1 on the other");
        assert!(poll(&mut p, 50, 64).is_empty());
        assert_eq!(p.next_deadline(50), Some(100));
        assert_eq!(poll(&mut p, 100, 64).len(), 1);
        assert_eq!(poll(&mut p, 300, 64).len(), 2);
        assert!(p.stats().rate_limited > 0);
    }

    #[test]
    fn unsend_puts_it_back_first_and_refunds() {
        let mut l = limits();
        l.per_network_burst = 1;
        l.per_network_per_s = 1;
        let mut p = planner(l);
        p.wake(uaid(1), &target(1, "214-07"), Urgency::Normal);
        p.wake(uaid(2), &target(2, "214-07"), Urgency::Normal);
        let sent = poll(&mut p, 0, 64);
        assert_eq!(sent.len(), 1);
        p.unsend(&sent[0]);
        let again = poll(&mut p, 0, 64);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].uaid, uaid(1));
        assert_eq!(again[0].attempt, 1);
        assert_eq!(p.stats().dispatched, 1);
    }

    #[test]
    fn bounded_and_unrouted() {
        let mut l = limits();
        l.pending_max = 1;
        let mut p = planner(l);
        assert_eq!(
            p.wake(uaid(1), &target(1, "214-07"), Urgency::Normal),
            WakeOutcome::Queued
        );
        assert_eq!(
            p.wake(uaid(2), &target(1, "214-07"), Urgency::Normal),
            WakeOutcome::Overloaded
        );
        assert_eq!(
            p.wake(uaid(3), &target(1, "999-99"), Urgency::Normal),
            WakeOutcome::NoRoute
        );
    }

    #[test]
    fn delay_doubles_and_caps() {
        let l = limits();
        let delays: Vec<u64> = (1..=6).map(|a| retry_delay_ms(&l, a)).collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 8000, 8000]);
    }
}
