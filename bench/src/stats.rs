//! Latency histograms (hdrhistogram, microseconds), wall-clock stamps and
//! summaries of several runs.

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Wall-clock microseconds: workers and the orchestrator compare them.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// 1 µs to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as a base64 string, so that workers can hand theirs over.
pub fn serialize_histogram(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .expect("serializing into a Vec");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Adds a worker's serialized histogram into `total`.
pub fn merge_histogram(total: &mut Histogram<u64>, encoded: &str) {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return;
    };
    if let Ok(histogram) = Deserializer::new().deserialize::<u64, _>(&mut bytes.as_slice()) {
        let _ = total.add(histogram);
    }
}

/// Latency percentiles in milliseconds.
#[derive(Serialize, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Median with the range of a figure over several runs.
#[derive(Serialize, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
pub fn median(values: &[f64]) -> f64 {
    Spread::of(values).median
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        let precision = if self.median.abs() >= 100.0 { 0 } else { 2 };
        write!(
            formatter,
            "{:.*} ({:.*}–{:.*})",
            precision, self.median, precision, self.min, precision, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        let spread = Spread::of(&[5.0, 1.0, 9.0]);
        assert_eq!((spread.median, spread.min, spread.max), (5.0, 1.0, 9.0));
    }

    #[test]
    fn histograms_survive_the_trip_between_processes() {
        let mut sent = new_histogram();
        for us in [10, 20, 5_000] {
            sent.record(us).unwrap();
        }
        let mut total = new_histogram();
        merge_histogram(&mut total, &serialize_histogram(&sent));
        merge_histogram(&mut total, "not base64!");
        assert_eq!(total.len(), 3);
        assert_eq!(total.max(), sent.max());
    }
}
