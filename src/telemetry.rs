//! Process-wide latency and size measurements: the histograms and counters that `/metrics` exports.
//!
//! The figures that come from the replicated state (jobs by status, slots, terms, indexes) are read from it when
//! scraped; this module holds only what must be *measured as it happens*: how long a Raft proposal took to commit
//! and apply, how long a snapshot took to build and how big it was, and how long checkpoints took and how much
//! state they hold. Code that measures calls e.g. `telemetry::PROPOSAL_SECONDS.observe(elapsed)`; the REST layer
//! renders everything in Prometheus' text format.
//!
//! Everything here is a lock-free atomic, cheap enough for the hot path (one proposal is tens of microseconds of
//! bookkeeping against milliseconds of fsync).
//!
//! # Invariants
//!
//! * A histogram's buckets are fixed at compile time and cumulative when rendered: `le="+Inf"` equals `_count`.
//! * Counters only go up. Everything starts at zero when the process starts, as Prometheus expects of a process
//!   restart.
//!
//! # Caveats
//!
//! * The measurements are per process, so a test that runs several replicas inside one process sees their sum.
//!   Every real deployment runs one replica (or one TaskManager) per process.
//! * Checkpoint figures are observed where checkpoints complete: on the leader's JobMasters. A follower exports
//!   empty checkpoint histograms, and a new leader's start from where that process left them.
//! * `_sum` is kept as an `f64` updated by compare-and-swap, exact enough for seconds and bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

/// Buckets for latencies in seconds: 1 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Buckets for sizes in bytes: 1 KiB to 1 GiB, by powers of 4.
pub const SIZE_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

/// A consistent-enough copy of a histogram, for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`, ending with `(f64::INFINITY, count)`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Sum of the observed values.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending upper bounds; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bucket bounds must ascend");
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self { bounds, buckets, count: AtomicU64::new(0), sum_bits: AtomicU64::new(0f64.to_bits()) }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() { value.max(0.0) } else { return };
        let index = self.bounds.iter().position(|bound| value <= *bound).unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let mut current = self.sum_bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self.sum_bits.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// The cumulative buckets, count and sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        // `count` is read after the buckets, so a concurrent observation can make it exceed them by one for a
        // scrape; the `+Inf` bucket is what Prometheus' quantiles use, so keep the two equal.
        let count = cumulative;
        HistogramSnapshot { buckets, count, sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)) }
    }
}

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (the last one set wins).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Time from proposing a command on the leader to its being committed and applied there.
pub static PROPOSAL_SECONDS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(LATENCY_BUCKETS));
/// Time to build (serialize and persist) a snapshot of the state machine.
pub static SNAPSHOT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(LATENCY_BUCKETS));
/// Size of the last snapshot built or installed, in bytes.
pub static SNAPSHOT_BYTES: Gauge = Gauge(AtomicU64::new(0));
/// Checkpoint durations, trigger to commit, of completed checkpoints and savepoints.
pub static CHECKPOINT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(LATENCY_BUCKETS));
/// State size of completed checkpoints and savepoints, in bytes.
pub static CHECKPOINT_BYTES: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(SIZE_BUCKETS));
/// Checkpoints and savepoints that failed (expired, declined, or their commit refused).
pub static CHECKPOINTS_FAILED: Counter = Counter(AtomicU64::new(0));
/// Checkpoints and savepoints aborted without a fault of theirs (restart, failover, cancel).
pub static CHECKPOINTS_ABORTED: Counter = Counter(AtomicU64::new(0));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let h = Histogram::new(&[1.0, 2.0, 5.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 7.0, 100.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (2.0, 3), (5.0, 4), (f64::INFINITY, 6)]);
        assert_eq!(s.count, 6);
        assert!((s.sum - 113.0).abs() < 1e-9);
    }

    #[test]
    fn non_finite_and_negative_values_do_not_corrupt_the_sum() {
        let h = Histogram::new(LATENCY_BUCKETS);
        h.observe(f64::NAN);
        h.observe(f64::INFINITY);
        h.observe(-3.0);
        let s = h.snapshot();
        assert_eq!(s.count, 1, "NaN and infinity are dropped; a negative value counts as zero");
        assert_eq!(s.sum, 0.0);
        assert_eq!(s.buckets[0], (0.001, 1));
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = std::sync::Arc::new(Histogram::new(LATENCY_BUCKETS));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| h.observe(0.5)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let s = h.snapshot();
        assert_eq!(s.count, 40_000);
        assert!((s.sum - 20_000.0).abs() < 1e-6);
    }
}
