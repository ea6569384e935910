//! Nearest-rank percentiles of a sample of durations.

use std::time::Duration;

use serde::{Serialize, Serializer};

/// Nearest-rank percentiles of a sample; in the report in milliseconds (`p50_ms`, …).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Stats {
    pub(crate) n: usize,
    #[serde(rename = "p50_ms", serialize_with = "as_ms")]
    pub(crate) p50: Duration,
    #[serde(rename = "p99_ms", serialize_with = "as_ms")]
    pub(crate) p99: Duration,
    #[serde(rename = "max_ms", serialize_with = "as_ms")]
    pub(crate) max: Duration,
    #[serde(rename = "min_ms", serialize_with = "as_ms")]
    pub(crate) min: Duration,
    #[serde(rename = "mean_ms", serialize_with = "as_ms")]
    pub(crate) mean: Duration,
}

impl Stats {
    pub(crate) fn of(samples: &[Duration]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut v = samples.to_vec();
        v.sort();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let sum: Duration = v.iter().sum();
        Stats {
            n: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
            min: v[0],
            mean: sum / v.len() as u32,
        }
    }

    /// The statistics of one duration taken from each item.
    pub(crate) fn of_each<T>(items: &[T], f: impl Fn(&T) -> Duration) -> Stats {
        Stats::of(&items.iter().map(f).collect::<Vec<_>>())
    }

    pub(crate) fn brief(&self) -> String {
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.n
        )
    }
}

/// Milliseconds as a float.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A duration as milliseconds (a float): serde's `serialize_with` for the report's `…_ms`
/// figures.
pub(crate) fn as_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(*d))
}
