//! Latency histograms per operation type (HdrHistogram, microseconds) and their summaries.
//! Each worker records into its own [`OpStats`]; the runner merges them once at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram holds; larger values are clamped to it.
pub const LATENCY_US_MAX: u64 = 120_000_000;
/// Significant decimal digits kept by every histogram.
pub const LATENCY_SIGFIG: u8 = 3;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Latencies and error counts keyed by an operation name.
#[derive(Debug, Clone)]
pub struct OpStats<K: Ord + Copy> {
    latency: BTreeMap<K, Histogram<u64>>,
    errors: BTreeMap<K, u64>,
    /// The first few error messages, for the report.
    pub error_samples: Vec<String>,
}

/// Error messages kept per [`OpStats`].
pub const ERROR_SAMPLES_MAX: usize = 5;

impl<K: Ord + Copy> Default for OpStats<K> {
    fn default() -> Self {
        Self {
            latency: BTreeMap::new(),
            errors: BTreeMap::new(),
            error_samples: Vec::new(),
        }
    }
}

impl<K: Ord + Copy> OpStats<K> {
    pub fn record(&mut self, op: K, took: Duration) {
        let us = u64::try_from(took.as_micros())
            .unwrap_or(LATENCY_US_MAX)
            .clamp(1, LATENCY_US_MAX);
        self.latency
            .entry(op)
            .or_insert_with(new_histogram)
            .saturating_record(us);
    }

    pub fn record_error(&mut self, op: K, message: impl FnOnce() -> String) {
        *self.errors.entry(op).or_default() += 1;
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            self.error_samples.push(message());
        }
    }

    pub fn merge(&mut self, other: &OpStats<K>) {
        for (op, h) in &other.latency {
            self.latency
                .entry(*op)
                .or_insert_with(new_histogram)
                .add(h)
                .expect("histograms with equal bounds always add");
        }
        for (op, n) in &other.errors {
            *self.errors.entry(*op).or_default() += n;
        }
        for sample in &other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES_MAX {
                self.error_samples.push(sample.clone());
            }
        }
    }

    /// Successful operations of every type.
    pub fn count(&self) -> u64 {
        self.latency.values().map(Histogram::len).sum()
    }

    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One histogram over every operation type.
    pub fn combined(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for h in self.latency.values() {
            all.add(h).expect("histograms with equal bounds always add");
        }
        all
    }

    /// Summary per operation type, in key order.
    pub fn summaries(&self) -> Vec<(K, Summary)> {
        self.latency
            .iter()
            .map(|(op, h)| {
                let mut s = Summary::of(h);
                s.errors = self.errors.get(op).copied().unwrap_or(0);
                (*op, s)
            })
            .collect()
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub errors: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            errors: 0,
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Median of durations (upper median for even counts), `None` when empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

/// `a / b`, or `None` when `b` is zero or either is not finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}
