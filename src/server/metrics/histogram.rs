//! A histogram of atomics, for the paths that observe on every request: prometheus-client's
//! own takes a lock per observation; this one adds to two atomics and never waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Request latencies, in seconds: Prometheus's default buckets, which dashboards expect.
pub const REQUEST_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A reconcile pass, in seconds: a pass with nothing to do takes milliseconds; one that
/// builds a large package or makes keys takes minutes.
pub const PASS_SECONDS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A package build, in seconds: a small script archives in well under a second; a large
/// installer fetched from a URL takes minutes.
pub const BUILD_SECONDS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

/// A built archive, in bytes: from a script (1 KiB) to a large installer (4 GiB).
pub const BUILD_BYTES: &[f64] = &[
    1024.0,
    65_536.0,
    1_048_576.0,
    16_777_216.0,
    134_217_728.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// Observations counted per bucket (not cumulated: the encoder cumulates), and their sum.
/// Clones share the counts (as prometheus-client's metrics do), so one is registered and
/// another kept where the observations are made.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// One per bound, then the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    /// The sum, as the bits of an `f64`.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            inner: Arc::new(Inner {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        let inner = &*self.inner;
        let bucket = inner
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(inner.bounds.len());
        inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Relaxed is enough: a scrape may see a sum a step ahead of the buckets, which
        // Prometheus tolerates; the bits never tear.
        let _ = inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, so `_count` always equals the `+Inf` bucket.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn observations_land_in_cumulative_buckets_with_their_sum() {
        let mut registry = Registry::default();
        let histogram = Histogram::new(&[1.0, 10.0]);
        registry.register("t_seconds", "A test", histogram.clone());
        histogram.observe(0.5);
        histogram.observe(5.0);
        histogram.observe(50.0);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("t_seconds_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("t_seconds_sum 55.5\n"), "{text}");
        assert!(text.contains("t_seconds_count 3\n"), "{text}");
        assert_eq!(histogram.count(), 3);
    }
}
