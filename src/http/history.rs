//! The last minutes of plate temperature, so the page can draw its sparkline at once instead of
//! starting empty at every load.
//!
//! Fed from the state document (a point whenever a new one is published — so at least every
//! `mqtt.state_interval_s`, and as often as readings move beyond the deadband), at most one
//! point a second, none older than [`SPAN`]: at most a few hundred points.

use crate::state::StateDoc;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How far back the history goes.
pub const SPAN: Duration = Duration::from_secs(10 * 60);
/// One point per this many milliseconds: a later one in the same slot replaces it.
const RESOLUTION_MS: u64 = 1000;

/// Temperature points `(Unix milliseconds, °C)`, oldest first. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct History(Arc<Mutex<VecDeque<(u64, f64)>>>);

impl History {
    /// Adds a reading taken at `at` (the last point of the same second is replaced) and
    /// forgets what is older than [`SPAN`].
    pub fn record(&self, at: SystemTime, temperature_c: f64) {
        let ms = unix_ms(at);
        let mut points = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = points.back_mut() {
            if ms / RESOLUTION_MS == last.0 / RESOLUTION_MS {
                *last = (ms, temperature_c);
                return;
            }
        }
        points.push_back((ms, temperature_c));
        let oldest = ms.saturating_sub(u64::try_from(SPAN.as_millis()).unwrap_or(u64::MAX));
        while points.front().is_some_and(|p| p.0 < oldest) {
            points.pop_front();
        }
    }

    /// The points as JSON, `[[ms, °C], …]`.
    pub fn to_json(&self) -> String {
        let points = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::with_capacity(points.len() * 22 + 2);
        out.push('[');
        for (i, (ms, t)) in points.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "[{ms},{t}]");
        }
        out.push(']');
        out
    }

    /// Records every published temperature until the state's sender is dropped.
    pub async fn follow(self, mut state: watch::Receiver<Option<StateDoc>>) {
        loop {
            let t = state
                .borrow_and_update()
                .as_ref()
                .and_then(|d| d.temperature_c);
            if let Some(t) = t {
                self.record(SystemTime::now(), t);
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn keeps_one_point_a_second_for_ten_minutes() {
        let h = History::default();
        h.record(at(1_000_000), 20.0);
        h.record(at(1_000_400), 20.5);
        h.record(at(1_001_000), 21.0);
        assert_eq!(h.to_json(), "[[1000400,20.5],[1001000,21]]");
        h.record(at(1_000_400 + 600_001), 22.0);
        assert_eq!(h.to_json(), "[[1001000,21],[1600401,22]]");
    }
}
