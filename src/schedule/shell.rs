//! The daemon's side of the schedule: holds the planner, the runner and the preheat history,
//! and a task that re-reads the calendar every `schedule.calendar_refresh_s`.
//!
//! The driver passes the wall-clock time in (nothing here reads a clock). A calendar that cannot
//! be read or parsed leaves the last good one in use; the refresh task logs one WARN line per
//! change of condition (not per attempt) and counts every failure in
//! `coffeebot_calendar_refresh_failures_total{kind}`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::runner::{Due, Runner};
use super::{
    source, Calendar, PlannedBrew, PlannedBrewDoc, Planner, PreheatHistory, CALENDAR_TIMEOUT,
};
use crate::config::Settings;
use crate::core::Mode;

/// The last good calendar and when it was read.
type Loaded = Option<(Arc<Calendar>, DateTime<Utc>)>;

/// The schedule as the driver sees it.
#[derive(Debug)]
pub struct Shell {
    planner: Planner,
    runner: Runner,
    history: PreheatHistory,
    /// Held by the refresh task; `None` without a calendar.
    calendar: Option<watch::Receiver<Loaded>>,
    calendar_read_at: Option<DateTime<Utc>>,
    /// When the current preheat began (wall clock), to learn how long preheats take.
    preheat_since: Option<DateTime<Utc>>,
    /// The next brew as last planned, and until when that answer holds (planning a large
    /// calendar is not free, and the driver asks several times a second).
    cached: Option<(DateTime<Utc>, Option<PlannedBrew>)>,
}

impl Shell {
    /// The schedule of validated settings; starts the calendar's refresh task (ended by
    /// `shutdown`) when a calendar is configured.
    pub fn start(settings: &Settings, shutdown: CancellationToken) -> Shell {
        let s = &settings.schedule;
        let calendar = (!s.calendar.is_empty()).then(|| {
            let (tx, rx) = watch::channel(None);
            let refresh = Duration::from_secs_f64(s.calendar_refresh_s);
            tokio::spawn(refresh_task(s.calendar.clone(), refresh, tx, shutdown));
            rx
        });
        Shell {
            planner: Planner::from_settings(settings),
            runner: Runner::new(s.enabled, Duration::from_secs_f64(s.max_late_s)),
            history: PreheatHistory::new(Duration::from_secs_f64(s.default_preheat_s)),
            calendar,
            calendar_read_at: None,
            preheat_since: None,
            cached: None,
        }
    }

    /// Resolves when the refresh task has read a new calendar (never without one).
    pub async fn calendar_changed(&mut self) {
        match &mut self.calendar {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The task ended (shutdown): stay pending.
                    self.calendar = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Takes the newest good calendar into the planner.
    pub fn take_calendar(&mut self) {
        if let Some(rx) = &mut self.calendar {
            if let Some((calendar, at)) = rx.borrow_and_update().clone() {
                self.planner.calendar = Some((*calendar).clone());
                self.calendar_read_at = Some(at);
                self.cached = None;
            }
        }
    }

    /// The next brew not yet handled, planned again only when the last answer expired.
    fn next(&mut self, now: DateTime<Utc>) -> Option<PlannedBrew> {
        if let Some((until, brew)) = self.cached {
            if now < until {
                return brew;
            }
        }
        let brew = self
            .runner
            .next(&self.planner, now, self.history.expected());
        let until = brew.map_or(now + chrono::Duration::seconds(60), |b| {
            b.start_at.min(now + chrono::Duration::seconds(60))
        });
        self.cached = Some((until, brew));
        brew
    }

    /// What is due now, the pot being in `mode`.
    pub fn poll(&mut self, now: DateTime<Utc>, mode: Mode) -> Option<Due> {
        let brew = self.next(now)?;
        if brew.start_at > now {
            return None;
        }
        self.cached = None;
        self.runner
            .poll(&self.planner, now, self.history.expected(), mode)
    }

    /// `schedule/set ON|OFF`.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.runner.set_enabled(enabled);
        self.cached = None;
    }

    /// `schedule/set SKIP`: the brew that will not start, if there is one.
    pub fn skip_next(&mut self, now: DateTime<Utc>) -> Option<PlannedBrewDoc> {
        self.cached = None;
        let brew = self
            .runner
            .skip_next(&self.planner, now, self.history.expected())?;
        Some(brew.doc(self.planner.zone))
    }

    /// The JSON of a planned brew in the schedule's zone.
    pub fn doc(&self, brew: &PlannedBrew) -> PlannedBrewDoc {
        brew.doc(self.planner.zone)
    }

    /// Learns from the pot: a preheat that ends in brewing is one more measured preheat.
    pub fn observe(&mut self, now: DateTime<Utc>, mode: Mode) {
        match (mode, self.preheat_since) {
            (Mode::Preheating, None) => self.preheat_since = Some(now),
            (Mode::Preheating, Some(_)) => {}
            (Mode::Brewing, Some(since)) => {
                if let Ok(took) = (now - since).to_std() {
                    info!(preheat_s = took.as_secs_f64(), "preheat measured");
                    self.history.record(took);
                    self.cached = None;
                }
                self.preheat_since = None;
            }
            (_, _) => self.preheat_since = None,
        }
    }

    /// `next_brew`, `schedule` and `calendar_read_at` of the state.
    pub fn state(&mut self, now: DateTime<Utc>) -> (Option<PlannedBrewDoc>, bool, Option<String>) {
        let next = self
            .next(now)
            .filter(|_| self.runner.enabled())
            .map(|brew| brew.doc(self.planner.zone));
        let read_at = self
            .calendar_read_at
            .map(|at| super::rfc3339(at, self.planner.zone));
        (next, self.runner.enabled(), read_at)
    }
}

/// Reads the calendar now and every `refresh`, sending each good one.
#[allow(
    clippy::disallowed_methods,
    reason = "the refresh task is the shell: it stamps when a calendar was read"
)]
async fn refresh_task(
    source: String,
    refresh: Duration,
    tx: watch::Sender<Loaded>,
    shutdown: CancellationToken,
) {
    // The condition last logged: `None` while reads succeed.
    let mut failing: Option<String> = None;
    let mut first = true;
    loop {
        let from = source.clone();
        let result = tokio::task::spawn_blocking(move || source::load(&from, CALENDAR_TIMEOUT))
            .await
            .unwrap_or_else(|e| {
                Err(source::SourceError::Fetch(format!(
                    "the reader failed: {e}"
                )))
            });
        match result {
            Ok(calendar) => {
                if failing.take().is_some() || first {
                    info!(events = calendar.events, notes = ?calendar.notes, "calendar read");
                }
                metrics::gauge!("coffeebot_calendar_read_timestamp_seconds")
                    .set(chrono::Utc::now().timestamp() as f64);
                tx.send_replace(Some((Arc::new(calendar), chrono::Utc::now())));
            }
            Err(error) => {
                metrics::counter!("coffeebot_calendar_refresh_failures_total", "kind" => error.kind())
                    .increment(1);
                let condition = match &error {
                    source::SourceError::Status(code) => format!("status {code}"),
                    other => other.kind().to_owned(),
                };
                if failing.as_deref() != Some(condition.as_str()) {
                    warn!(%error, "calendar unavailable; the last good one stays in use");
                    failing = Some(condition);
                }
            }
        }
        first = false;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(refresh) => {}
        }
    }
}
