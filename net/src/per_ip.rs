//! The optional cap on simultaneous connections from one source IP (SPEC §9,
//! `connections_per_ip_max`, off by default because load tests come from one
//! address). The count is process-wide, so it sits behind a mutex that is
//! touched only when the cap is on: at accept and when a socket closes.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ahash::AHashMap;

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
}
