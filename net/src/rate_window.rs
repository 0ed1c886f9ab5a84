//! Rates over the last minute from a counter sampled once a second, for
//! `/about`: a lifetime average hides what the server does now.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window the rates are taken over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Samples of some counters (`N` of them) over the last [`WINDOW`]; one
/// sample at or before the window's start is kept, so a full window is
/// measured once the server has run that long. Bounded by the sampling
/// pace: a sample a second keeps about 61.
pub struct RateWindow<const N: usize> {
    samples: VecDeque<(Instant, [u64; N])>,
}

impl<const N: usize> Default for RateWindow<N> {
    fn default() -> Self {
        RateWindow {
            samples: VecDeque::new(),
        }
    }
}

impl<const N: usize> RateWindow<N> {
    /// Adds the counters' values `at`; returns each one's rate per second
    /// over the window (over the time since the first sample while the
    /// server is younger than the window; 0 with a single sample).
    pub fn sample(&mut self, at: Instant, totals: [u64; N]) -> [f64; N] {
        self.samples.push_back((at, totals));
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
        let (first_at, first) = self.samples[0];
        let seconds = at.duration_since(first_at).as_secs_f64();
        std::array::from_fn(|index| {
            if seconds > 0.0 {
                totals[index].saturating_sub(first[index]) as f64 / seconds
            } else {
                0.0
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_the_last_minute_not_the_lifetime() {
        let start = Instant::now();
        let mut window = RateWindow::<1>::default();
        let second = |s: u64| start + Duration::from_secs(s);
        assert_eq!(window.sample(start, [0]), [0.0]);
        // 100 a second for the first two minutes...
        let mut total = 0;
        for s in 1..=120 {
            total += 100;
            assert_eq!(window.sample(second(s), [total]), [100.0], "second {s}");
        }
        // ...then nothing for a minute: the rate falls to 0, where the
        // lifetime average would still say 66.
        let mut last = [f64::MAX];
        for s in 121..=180 {
            last = window.sample(second(s), [total]);
        }
        assert_eq!(last, [0.0]);
        assert!(window.samples.len() <= 62, "{}", window.samples.len());
    }
}
