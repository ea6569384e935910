//! When a planned brew is due, and what becomes of it: started, or skipped with a reason.
//!
//! Pure: time comes in as `now`; the plan from the [`Planner`]. The daemon calls
//! [`Runner::poll`] at [`Runner::deadline`] (earlier or more often is harmless) and turns a
//! [`Due::Start`] into an ordinary `BrewStart` request for the core; a rejection there becomes a
//! `brew_skipped` event. Nothing is queued: each brew is handled once, at its start time.
//!
//! After a restart (the shell keeps [`Runner::handled_until`] in the state directory, so a
//! brew handled before is not handled again), a brew that is not yet ready but whose start is
//! past is started at once if its start was missed by at most `max_late`, else skipped with a
//! `late` reason. A brew whose ready time has passed is over and not mentioned.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{PlannedBrew, Planner};
use crate::core::Mode;

/// Why a planned brew did not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Its start was missed by more than `schedule.max_late_s` (the bridge was down).
    Late,
    /// `schedule/set SKIP`.
    Skipped,
    /// A brew or manual heating is running.
    Busy(Mode),
    /// The core refused the start (an interlock, no water, the controller offline).
    Rejected(String),
}

impl SkipReason {
    /// The `reason` of the `brew_skipped` event.
    pub fn text(&self) -> String {
        match self {
            SkipReason::Late => {
                "late: its start was missed by more than schedule.max_late_s".to_owned()
            }
            SkipReason::Skipped => "skipped by command".to_owned(),
            SkipReason::Busy(mode) => format!("busy: the pot is in {} mode", mode.as_str()),
            SkipReason::Rejected(reason) => reason.clone(),
        }
    }
}

/// What the daemon must do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Send `BrewStart` with these cups; if the core refuses, the brew is skipped.
    Start(PlannedBrew),
    /// Publish `brew_skipped`.
    Skip(PlannedBrew, SkipReason),
}

/// Which planned brews have been handled, and whether the schedule is on.
#[derive(Clone, Debug)]
pub struct Runner {
    enabled: bool,
    max_late: chrono::Duration,
    /// Brews ready at or before this have been handled (started, skipped, or passed while
    /// the schedule was off).
    handled_until: Option<DateTime<Utc>>,
}

impl Runner {
    /// A runner that has handled nothing yet.
    pub fn new(enabled: bool, max_late: Duration) -> Self {
        Runner {
            enabled,
            max_late: chrono::Duration::from_std(max_late).unwrap_or(chrono::Duration::zero()),
            handled_until: None,
        }
    }

    /// Whether scheduled brews start.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Brews ready at or before this have been handled (to keep across restarts).
    pub fn handled_until(&self) -> Option<DateTime<Utc>> {
        self.handled_until
    }

    /// Takes back what a runner before a restart had handled.
    pub fn resume(&mut self, handled_until: Option<DateTime<Utc>>) {
        self.handled_until = self.handled_until.max(handled_until);
    }

    /// `schedule/set ON|OFF`. Brews whose start passes while off are let pass.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// The next brew not yet handled that is not yet ready at `now`.
    pub fn next(
        &self,
        planner: &Planner,
        now: DateTime<Utc>,
        preheat: Duration,
    ) -> Option<PlannedBrew> {
        let after = now + chrono::Duration::seconds(1);
        let from = self
            .handled_until
            .map_or(after, |h| (h + chrono::Duration::seconds(1)).max(after));
        planner.plan(from, 1, preheat).into_iter().next()
    }

    /// When to call [`Runner::poll`] next: the next brew's start.
    pub fn deadline(
        &self,
        planner: &Planner,
        now: DateTime<Utc>,
        preheat: Duration,
    ) -> Option<DateTime<Utc>> {
        self.next(planner, now, preheat).map(|brew| brew.start_at)
    }

    /// What is due at `now`, with the pot in `mode`; each brew is returned once.
    pub fn poll(
        &mut self,
        planner: &Planner,
        now: DateTime<Utc>,
        preheat: Duration,
        mode: Mode,
    ) -> Option<Due> {
        let brew = self.next(planner, now, preheat)?;
        if brew.start_at > now {
            return None;
        }
        self.handled_until = Some(brew.ready_at);
        if !self.enabled {
            return None;
        }
        if now - brew.start_at > self.max_late {
            return Some(Due::Skip(brew, SkipReason::Late));
        }
        if matches!(mode, Mode::Preheating | Mode::Brewing | Mode::Manual) {
            return Some(Due::Skip(brew, SkipReason::Busy(mode)));
        }
        Some(Due::Start(brew))
    }

    /// `schedule/set SKIP`: the next brew will not start. Returns it.
    pub fn skip_next(
        &mut self,
        planner: &Planner,
        now: DateTime<Utc>,
        preheat: Duration,
    ) -> Option<PlannedBrew> {
        let brew = self.next(planner, now, preheat)?;
        self.handled_until = Some(brew.ready_at);
        Some(brew)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{self, at, every_day};
    use super::*;

    const PREHEAT: Duration = Duration::from_secs(120);

    /// A brew of four cups ready at 07:00 UTC every day.
    fn planner() -> Planner {
        tests::planner(chrono_tz::UTC, vec![every_day("07:00", 4)], None)
    }

    #[test]
    fn a_brew_starts_once_at_its_start_time() {
        let p = planner();
        let mut runner = Runner::new(true, Duration::from_secs(600));
        // 07:00 − 330 s = 06:54:30.
        assert_eq!(
            runner.deadline(&p, at("2026-06-01T06:00:00Z"), PREHEAT),
            Some(at("2026-06-01T06:54:30Z"))
        );
        assert_eq!(
            runner.poll(&p, at("2026-06-01T06:54:29Z"), PREHEAT, Mode::Off),
            None
        );
        let due = runner.poll(&p, at("2026-06-01T06:54:30Z"), PREHEAT, Mode::Off);
        assert!(matches!(due, Some(Due::Start(brew)) if brew.cups == 4));
        assert_eq!(
            runner.poll(&p, at("2026-06-01T06:54:31Z"), PREHEAT, Mode::Off),
            None
        );
        assert_eq!(
            runner.deadline(&p, at("2026-06-01T06:54:31Z"), PREHEAT),
            Some(at("2026-06-02T06:54:30Z"))
        );
    }

    #[test]
    fn after_a_restart_a_start_missed_by_less_than_max_late_starts_at_once() {
        let p = planner();
        let mut runner = Runner::new(true, Duration::from_secs(600));
        let due = runner.poll(&p, at("2026-06-01T06:58:00Z"), PREHEAT, Mode::Off);
        assert!(matches!(due, Some(Due::Start(_))));
        let mut strict = Runner::new(true, Duration::from_secs(60));
        let due = strict.poll(&p, at("2026-06-01T06:58:00Z"), PREHEAT, Mode::Off);
        assert!(matches!(due, Some(Due::Skip(_, SkipReason::Late))));
        // Once ready time has passed, the brew is over and not mentioned.
        let mut after = Runner::new(true, Duration::from_secs(60));
        assert_eq!(
            after.poll(&p, at("2026-06-01T07:00:01Z"), PREHEAT, Mode::Off),
            None
        );
    }

    #[test]
    fn skip_off_and_busy() {
        let p = planner();
        let mut runner = Runner::new(true, Duration::from_secs(600));
        let skipped = runner
            .skip_next(&p, at("2026-06-01T06:00:00Z"), PREHEAT)
            .unwrap();
        assert_eq!(skipped.ready_at, at("2026-06-01T07:00:00Z"));
        assert_eq!(
            runner.poll(&p, at("2026-06-01T06:55:00Z"), PREHEAT, Mode::Off),
            None
        );
        runner.set_enabled(false);
        assert_eq!(
            runner.poll(&p, at("2026-06-02T06:55:00Z"), PREHEAT, Mode::Off),
            None
        );
        runner.set_enabled(true);
        assert_eq!(
            runner.poll(&p, at("2026-06-02T06:56:00Z"), PREHEAT, Mode::Off),
            None
        );
        let due = runner.poll(&p, at("2026-06-03T06:55:00Z"), PREHEAT, Mode::Manual);
        assert!(matches!(
            due,
            Some(Due::Skip(_, SkipReason::Busy(Mode::Manual)))
        ));
    }
}
