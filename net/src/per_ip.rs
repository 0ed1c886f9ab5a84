//! Limits per source IP (SPEC §9):
//!
//! - the optional cap on simultaneous connections (`connections_per_ip_max`,
//!   off by default because load tests come from one address). The count is
//!   process-wide, so it sits behind a mutex that is touched only when the
//!   cap is on: at accept and when a socket closes;
//! - the rates of AS requests and UA connects ([`AddressRates`]), per shard:
//!   they are checked on every request, so they take no lock and share no
//!   cache line. Each shard limits what it accepts.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ahash::AHashMap;

use herald_engine::limits::Limits;
use herald_engine::rate::{Limited, Limiter, Rate};
use herald_engine::Millis;

#[derive(Default)]
pub struct PerIpCounter {
    counts: Mutex<AHashMap<IpAddr, usize>>,
}

/// One counted connection; gives its slot back when dropped.
pub struct IpSlot {
    counter: Arc<PerIpCounter>,
    ip: IpAddr,
}

impl PerIpCounter {
    /// Takes a slot for `ip`, or `None` when it already holds `max`.
    /// `max == 0` disables the cap (no slot, no locking).
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Result<Option<IpSlot>, ()> {
        if max == 0 {
            return Ok(None);
        }
        let Ok(mut counts) = self.counts.lock() else {
            return Ok(None);
        };
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return Err(());
        }
        *count += 1;
        Ok(Some(IpSlot {
            counter: self.clone(),
            ip,
        }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counter.counts.lock() {
            if let Some(count) = counts.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&self.ip);
                }
            }
        }
    }
}

/// One shard's rate limits per source address.
pub struct AddressRates {
    as_requests: RefCell<Limiter<IpAddr>>,
    ua_connects: RefCell<Limiter<IpAddr>>,
    /// `rate_limit_loopback`.
    loopback: bool,
    /// The limits' clock: monotonic, so that a step of the wall clock
    /// neither frees nor blocks anyone.
    epoch: Instant,
}

impl AddressRates {
    pub fn new(limits: &Limits) -> AddressRates {
        let limiter = |per_s, burst| {
            RefCell::new(Limiter::new(
                Rate::per_s(per_s, burst),
                limits.rate_limited_keys_max,
            ))
        };
        AddressRates {
            as_requests: limiter(
                limits.as_requests_per_ip_per_s,
                limits.as_requests_per_ip_burst,
            ),
            ua_connects: limiter(
                limits.ua_connects_per_ip_per_s,
                limits.ua_connects_per_ip_burst,
            ),
            loopback: limits.rate_limit_loopback,
            epoch: Instant::now(),
        }
    }

    /// One AS request from `ip` (`as_requests_per_ip_per_s`).
    pub fn as_request(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check(&self.as_requests, ip, self.now_ms())
    }

    /// One UA connect from `ip` (`ua_connects_per_ip_per_s`).
    pub fn ua_connect(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check(&self.ua_connects, ip, self.now_ms())
    }

    fn now_ms(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    fn check(
        &self,
        limiter: &RefCell<Limiter<IpAddr>>,
        ip: IpAddr,
        now_ms: Millis,
    ) -> Result<(), Limited> {
        let ip = ip.to_canonical();
        if ip.is_loopback() && !self.loopback {
            return Ok(());
        }
        limiter.borrow_mut().check(subscriber(ip), now_ms)
    }
}

/// What one address limit counts: an IPv4 address, or an IPv6 /64. One
/// subscriber (a home, a phone) is usually given a whole /64; counted per
/// address, it would have 2^64 buckets to choose from.
fn subscriber(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_frees_on_drop() {
        let counter = Arc::new(PerIpCounter::default());
        let ip: IpAddr = "127.0.0.1".parse().expect("literal");
        let other: IpAddr = "127.0.0.2".parse().expect("literal");
        let first = counter.acquire(ip, 2).expect("first");
        let second = counter.acquire(ip, 2).expect("second");
        assert!(counter.acquire(ip, 2).is_err(), "third from one address");
        assert!(counter
            .acquire(other, 2)
            .expect("another address")
            .is_some());
        drop(first);
        assert!(counter.acquire(ip, 2).is_ok(), "a slot came back");
        drop(second);
        assert!(counter.acquire(ip, 0).expect("cap off").is_none());
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal")
    }

    /// UA connects: 2, then one a second; AS requests: no limit.
    fn address_rates(loopback: bool) -> AddressRates {
        AddressRates::new(&Limits {
            as_requests_per_ip_per_s: 0,
            ua_connects_per_ip_per_s: 1,
            ua_connects_per_ip_burst: 2,
            rate_limit_loopback: loopback,
            ..Limits::default()
        })
    }

    /// A UA connect at a fixed time: nothing refills while the test runs.
    fn connect(rates: &AddressRates, ip: IpAddr) -> Result<(), Limited> {
        rates.check(&rates.ua_connects, ip, 0)
    }

    #[test]
    fn rates_count_per_address_and_ipv6_per_64() {
        let rates = address_rates(false);
        for (first, same, other) in [
            ("192.0.2.1", "192.0.2.1", "192.0.2.2"),
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"),
            ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.8"),
        ] {
            assert!(connect(&rates, ip(first)).is_ok());
            assert!(connect(&rates, ip(same)).is_ok());
            let limited = connect(&rates, ip(first)).expect_err(first);
            assert_eq!(limited.retry_after_s(), 1, "one a second");
            assert!(connect(&rates, ip(same)).is_err(), "{same} is {first}");
            assert!(connect(&rates, ip(other)).is_ok(), "{other} is not");
        }
        for _ in 0..1_000 {
            assert!(
                rates.check(&rates.as_requests, ip("192.0.2.1"), 0).is_ok(),
                "0 is off"
            );
        }
    }

    #[test]
    fn loopback_is_counted_only_when_asked() {
        let rates = address_rates(false);
        for _ in 0..100 {
            for address in ["127.0.0.1", "127.0.0.9", "::1", "::ffff:127.0.0.1"] {
                assert!(connect(&rates, ip(address)).is_ok(), "{address}");
            }
        }
        let rates = address_rates(true);
        assert!(connect(&rates, ip("127.0.0.1")).is_ok());
        assert!(connect(&rates, ip("::ffff:127.0.0.1")).is_ok());
        assert!(connect(&rates, ip("127.0.0.1")).is_err());
        assert!(connect(&rates, ip("127.0.0.2")).is_ok(), "each address");
    }
}
