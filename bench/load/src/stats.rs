//! Pure arithmetic over samples: percentiles, rates and the median and range of rounds.

use std::time::Duration;

/// The `p`-th percentile (0–100) of samples sorted ascending, by the nearest-rank method (the
/// smallest sample with at least `p` % of the samples at or below it); `sorted` must not be empty.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Median (p50), p99 and maximum of a set of latencies in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Nearest-rank 50th percentile.
    pub p50: f64,
    /// Nearest-rank 99th percentile.
    pub p99: f64,
    /// The largest sample.
    pub max: f64,
    /// How many samples there were.
    pub count: usize,
}

impl Latency {
    /// Summarises `samples` (milliseconds); all zero when there are none.
    pub fn of(samples: &[f64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Latency {
            p50: percentile_sorted(&sorted, 50.0),
            p99: percentile_sorted(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        }
    }
}

/// Milliseconds in a duration, as a float.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// The steady-state rate (items per second) from `events`, each `(seconds since start, items
/// completed by that event)`: the items completed between the moment the running total first reached
/// `from` of `total` and the moment it first reached `to` of `total`, divided by the time between.
/// Leaves out the ramp-up and the tail. `None` when the window is empty or has no duration.
pub fn steady_rate(events: &[(f64, u64)], total: u64, from: f64, to: f64) -> Option<f64> {
    let mut sorted = events.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (low, high) = ((total as f64 * from).ceil() as u64, (total as f64 * to).ceil() as u64);
    let mut done = 0u64;
    let (mut start, mut end) = (None, None);
    for (at, count) in sorted {
        done += count;
        if start.is_none() && done >= low {
            start = Some((at, done));
        }
        if end.is_none() && done >= high {
            end = Some((at, done));
            break;
        }
    }
    let ((t0, n0), (t1, n1)) = (start?, end?);
    (t1 > t0 && n1 > n0).then(|| (n1 - n0) as f64 / (t1 - t0))
}

/// Median of `values` (the mean of the two middle values for an even count) and their minimum and
/// maximum; `None` when there are none.
pub fn median_range(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    Some((median, sorted[0], sorted[n - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percentile(samples: &[f64], p: f64) -> Option<f64> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        (!sorted.is_empty()).then(|| percentile_sorted(&sorted, p))
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&samples, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
        // p99 of ten samples is the largest: ceil(9.9) = 10th.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
    }

    #[test]
    fn latency_summary() {
        let summary = Latency::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(summary, Latency { p50: 3.0, p99: 5.0, max: 5.0, count: 5 });
        assert_eq!(Latency::of(&[]), Latency::default());
    }

    #[test]
    fn steady_rate_skips_ramp_and_tail() {
        // 10 items per 0.1 s for 100 items, then a slow tail.
        let mut events: Vec<(f64, u64)> = (1..=10).map(|i| (i as f64 * 0.1, 10)).collect();
        events.push((5.0, 10));
        let rate = steady_rate(&events, 110, 0.1, 0.9).unwrap_or(0.0);
        // 10% of 110 → 11 reached at 0.2 s (20 done); 90% → 99 reached at 1.0 s (100 done).
        assert!((rate - 80.0 / 0.8).abs() < 1e-9, "{rate}");
        assert_eq!(steady_rate(&[], 10, 0.1, 0.9), None);
        assert_eq!(steady_rate(&[(1.0, 10)], 10, 0.1, 0.9), None);
    }

    #[test]
    fn median_and_range_of_rounds() {
        assert_eq!(median_range(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(median_range(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(median_range(&[]), None);
    }
}
