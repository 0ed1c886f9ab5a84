//! Token buckets without a clock: time is passed in, as everywhere in the
//! engine, so every limit is tested deterministically. Used per channel by
//! the shard, per source address by `net/`, per mobile network by the
//! wakeup planner.
//!
//! A bucket is one number: the time at which it is full again (GCRA, the
//! "virtual scheduling" form of a token bucket). Each token taken pushes
//! that time one interval later; a token is refused when the time would
//! then lie more than a burst's worth of intervals ahead of now. A bucket
//! whose time has passed is full, which is the same as having no bucket, so
//! a [`Limiter`] keeps only the keys seen within the last few intervals.
//!
//! Hand-written rather than the `governor` crate: governor's keyed limiter
//! is a concurrent map shared by threads and reads its own clock, while a
//! shard is one thread, the engine has no clock, and the table here must
//! stay bounded against keys an attacker chooses (see [`Limiter::check`]).
//! The arithmetic is a dozen lines.

use std::hash::Hash;

use ahash::AHashMap;

use crate::Millis;

/// Buckets count in microseconds, so that rates up to a million a second
/// have an exact interval and the caller's milliseconds convert exactly.
const US_PER_MS: u64 = 1000;
/// A [`Limiter`] below this many keys is never swept.
const SWEEP_FLOOR: usize = 1024;

/// A rate and the burst allowed after a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Between two tokens.
    interval_us: u64,
    /// How far past now a bucket's full time may be and still give a token:
    /// `burst − 1` intervals.
    tolerance_us: u64,
}

impl Rate {
    /// `tokens` every `period_ms`, up to `burst` at once (a burst of 0 counts
    /// as 1); `None`, no limit, when `tokens` is 0.
    pub fn new(tokens: u32, period_ms: Millis, burst: u32) -> Option<Rate> {
        if tokens == 0 {
            return None;
        }
        let interval_us = (period_ms.saturating_mul(US_PER_MS) / u64::from(tokens)).max(1);
        let tolerance_us = interval_us.saturating_mul(u64::from(burst.max(1)) - 1);
        Some(Rate {
            interval_us,
            tolerance_us,
        })
    }

    pub fn per_s(tokens: u32, burst: u32) -> Option<Rate> {
        Rate::new(tokens, 1000, burst)
    }

    pub fn per_minute(tokens: u32, burst: u32) -> Option<Rate> {
        Rate::new(tokens, 60_000, burst)
    }
}

/// A refusal: the next token is this far away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub wait_ms: Millis,
}

impl Limited {
    /// The wait in whole seconds, at least 1, for `Retry-After`.
    pub fn retry_after_s(&self) -> u64 {
        self.wait_ms.div_ceil(1000).max(1)
    }
}

/// One token bucket, full when made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket is full again, in µs on the caller's clock.
    full_at_us: u64,
}

impl Bucket {
    /// Takes a token at `now_ms`, or says how long until there is one (a
    /// refusal takes nothing, so hammering does not lengthen the wait).
    pub fn take(&mut self, rate: &Rate, now_ms: Millis) -> Result<(), Limited> {
        let now_us = now_ms.saturating_mul(US_PER_MS);
        let start_us = self.full_at_us.max(now_us);
        let ahead_us = start_us - now_us;
        if ahead_us > rate.tolerance_us {
            return Err(Limited {
                wait_ms: (ahead_us - rate.tolerance_us).div_ceil(US_PER_MS),
            });
        }
        self.full_at_us = start_us.saturating_add(rate.interval_us);
        Ok(())
    }

    /// Gives back a token whose use did not happen.
    pub fn refund(&mut self, rate: &Rate) {
        self.full_at_us = self.full_at_us.saturating_sub(rate.interval_us);
    }

    /// When the next token is there (`now_ms` if one is).
    pub fn ready_at_ms(&self, rate: &Rate, now_ms: Millis) -> Millis {
        let ready_us = self.full_at_us.saturating_sub(rate.tolerance_us);
        now_ms.max(ready_us.div_ceil(US_PER_MS))
    }

    fn is_full(&self, now_ms: Millis) -> bool {
        self.full_at_us <= now_ms.saturating_mul(US_PER_MS)
    }
}

/// One rate for many keys (channels, source addresses), in a table that
/// stays bounded whatever keys arrive.
pub struct Limiter<K> {
    rate: Option<Rate>,
    buckets: AHashMap<K, Bucket>,
    keys_max: usize,
    /// A new key is let in only below this size; at it, the table is swept.
    sweep_at: usize,
}

impl<K: Hash + Eq> Limiter<K> {
    /// `rate` `None` limits nothing and keeps nothing.
    pub fn new(rate: Option<Rate>, keys_max: usize) -> Limiter<K> {
        let keys_max = keys_max.max(1);
        Limiter {
            rate,
            buckets: AHashMap::new(),
            keys_max,
            sweep_at: SWEEP_FLOOR.min(keys_max),
        }
    }

    /// Takes a token from `key`'s bucket at `now_ms`.
    ///
    /// Bounded: only keys whose bucket is not full are worth keeping, and
    /// they are dropped by a sweep once the table doubles since the last
    /// one (amortised O(1) per call). If `keys_max` keys are busy at once,
    /// which only someone with that many addresses or endpoints can cause,
    /// the table starts afresh: every key gets its burst again, which is
    /// better than refusing keys never seen or growing without end.
    pub fn check(&mut self, key: K, now_ms: Millis) -> Result<(), Limited> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.take(&rate, now_ms);
        }
        if self.buckets.len() >= self.sweep_at {
            self.sweep(now_ms);
        }
        let mut bucket = Bucket::default();
        let taken = bucket.take(&rate, now_ms);
        self.buckets.insert(key, bucket);
        taken
    }

    fn sweep(&mut self, now_ms: Millis) {
        self.buckets.retain(|_, bucket| !bucket.is_full(now_ms));
        if self.buckets.len() >= self.keys_max {
            self.buckets.clear();
        }
        self.sweep_at = self
            .buckets
            .len()
            .saturating_mul(2)
            .max(SWEEP_FLOOR)
            .min(self.keys_max);
    }

    /// Keys tracked now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takes(bucket: &mut Bucket, rate: &Rate, now_ms: Millis) -> usize {
        std::iter::from_fn(|| bucket.take(rate, now_ms).ok())
            .take(1_000_000)
            .count()
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_per_interval() {
        let rate = Rate::per_s(10, 3).expect("a rate");
        let mut bucket = Bucket::default();
        assert_eq!(takes(&mut bucket, &rate, 1_000), 3, "the burst");
        assert_eq!(
            bucket.take(&rate, 1_000),
            Err(Limited { wait_ms: 100 }),
            "then one each 100 ms"
        );
        assert_eq!(bucket.ready_at_ms(&rate, 1_050), 1_100);
        assert_eq!(takes(&mut bucket, &rate, 1_099), 0);
        assert_eq!(takes(&mut bucket, &rate, 1_100), 1);
        assert_eq!(takes(&mut bucket, &rate, 1_350), 2, "250 ms earn 2");
        // A long quiet spell refills to the burst, no more.
        assert_eq!(takes(&mut bucket, &rate, 60_000), 3);
    }

    #[test]
    fn refusals_do_not_lengthen_the_wait_and_refunds_give_back() {
        let rate = Rate::per_minute(60, 1).expect("a rate");
        let mut bucket = Bucket::default();
        assert!(bucket.take(&rate, 0).is_ok());
        for now_ms in 0..1_000 {
            assert!(bucket.take(&rate, now_ms).is_err(), "at {now_ms}");
        }
        assert!(
            bucket.take(&rate, 1_000).is_ok(),
            "a minute's 60: one a second"
        );
        bucket.refund(&rate);
        assert!(bucket.take(&rate, 1_000).is_ok(), "the refunded token");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(Limited { wait_ms: 1 }.retry_after_s(), 1);
        assert_eq!(Limited { wait_ms: 0 }.retry_after_s(), 1);
        assert_eq!(Limited { wait_ms: 1_000 }.retry_after_s(), 1);
        assert_eq!(Limited { wait_ms: 1_001 }.retry_after_s(), 2);
        let rate = Rate::per_minute(1, 1).expect("a rate");
        let mut bucket = Bucket::default();
        assert!(bucket.take(&rate, 0).is_ok());
        let limited = bucket.take(&rate, 500).expect_err("one a minute");
        assert_eq!((limited.wait_ms, limited.retry_after_s()), (59_500, 60));
    }

    #[test]
    fn zero_is_off_and_extreme_rates_do_not_overflow() {
        assert_eq!(Rate::per_s(0, 100), None);
        let mut off = Limiter::new(None, 10);
        for key in 0..10_000u32 {
            assert!(off.check(key, 0).is_ok());
        }
        assert!(off.is_empty(), "an unlimited limiter keeps nothing");
        let fast = Rate::per_s(u32::MAX, u32::MAX).expect("a rate");
        let mut bucket = Bucket::default();
        assert!(bucket.take(&fast, u64::MAX).is_ok());
        let slow = Rate::new(1, u64::MAX, 1).expect("a rate");
        let mut bucket = Bucket::default();
        assert!(bucket.take(&slow, 0).is_ok());
        assert!(bucket.take(&slow, u64::MAX / 2_000).is_err());
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let mut limiter = Limiter::new(Rate::per_s(1, 2), 100);
        assert!(limiter.check("a", 0).is_ok());
        assert!(limiter.check("a", 0).is_ok());
        assert!(limiter.check("a", 0).is_err());
        assert!(limiter.check("b", 0).is_ok(), "another key is not limited");
        assert!(limiter.check("a", 1_000).is_ok());
    }

    #[test]
    fn the_table_keeps_only_busy_keys_and_never_exceeds_its_bound() {
        let keys_max = 5_000;
        let mut limiter = Limiter::new(Rate::per_s(10, 5), keys_max);
        // A stream of never-repeated keys, 100 a millisecond: each bucket is
        // full again 100 ms after its one token, so about 10,000 are busy
        // at any moment, more than the bound.
        for key in 0..200_000u64 {
            let now_ms = key / 100;
            assert!(
                limiter.check(key, now_ms).is_ok(),
                "a new key has its burst"
            );
            assert!(limiter.len() <= keys_max, "{} keys", limiter.len());
        }
        // A slower stream: only the keys of the last 100 ms stay.
        let mut limiter = Limiter::new(Rate::per_s(10, 5), keys_max);
        for key in 0..200_000u64 {
            assert!(limiter.check(key, key).is_ok());
        }
        assert!(
            limiter.len() < 2 * SWEEP_FLOOR,
            "full buckets are swept: {} keys",
            limiter.len()
        );
        // A busy key survives sweeps: its bucket is not full.
        let mut limiter = Limiter::new(Rate::per_minute(1, 1), keys_max);
        assert!(limiter.check(u64::MAX, 0).is_ok());
        for key in 0..3 * SWEEP_FLOOR as u64 {
            assert!(limiter.check(key, 1 + key).is_ok());
        }
        assert!(
            limiter.check(u64::MAX, 3 * SWEEP_FLOOR as u64).is_err(),
            "still limited after sweeps"
        );
    }
}
