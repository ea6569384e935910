//! The daemon's side of the schedule: holds the planner, the runner and the preheat history,
//! and a task that re-reads the calendar every `schedule.calendar_refresh_s`.
//!
//! What must survive a restart is kept in `schedule.json` of the state directory
//! (`counters.state_dir`), through the counters' [`Store`] (atomic writes, a corrupt file set
//! aside): the measured preheats, the `schedule/set ON|OFF` switch, and which brews were
//! handled (started, skipped by `SKIP` or otherwise), so that a restart neither forgets a skip
//! nor brews twice. The switch holds only while `schedule.enabled` in the configuration is what
//! it was when the switch was set: editing the configuration wins.
//!
//! The driver passes the wall-clock time in (nothing here reads a clock). A calendar's server
//! gets at most [`CALENDAR_TIMEOUT`] or half of `schedule.calendar_refresh_s`, whichever is
//! shorter, to answer. A calendar that cannot be read or parsed leaves the last good one in use; the refresh task logs one WARN line per
//! change of condition (not per attempt) and counts every failure in
//! `coffeebot_calendar_refresh_failures_total{kind}`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::runner::{Due, Runner};
use super::{
    source, Calendar, PlannedBrew, PlannedBrewDoc, Planner, PreheatHistory, CALENDAR_TIMEOUT,
};
use crate::config::Settings;
use crate::core::Mode;
use crate::counters::{Persisted, Store};

/// What the schedule keeps across restarts, as stored in `schedule.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kept {
    /// The last measured preheats in seconds, oldest first (at most
    /// [`PreheatHistory::KEEP`]).
    pub preheats_s: Vec<f64>,
    /// The last `schedule/set ON|OFF`, if any.
    pub switched: Option<Switched>,
    /// Brews ready at or before this instant (RFC 3339) were handled.
    pub handled_until: Option<String>,
}

/// A `schedule/set ON|OFF` and the configuration it was given under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switched {
    /// ON (true) or OFF.
    pub enabled: bool,
    /// `schedule.enabled` of the configuration at the time.
    pub configured: bool,
}

impl Kept {
    fn handled_until(&self) -> Option<DateTime<Utc>> {
        let text = self.handled_until.as_deref()?;
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }
}

/// The expected preheat the daemon would use now: from the measured preheats kept in the
/// state directory, else `schedule.default_preheat_s`. Only reads (a bad file is ignored, not
/// set aside): for the `schedule` command.
pub fn expected_preheat(settings: &Settings) -> Duration {
    let mut history =
        PreheatHistory::new(Duration::from_secs_f64(settings.schedule.default_preheat_s));
    let dir = &settings.counters.state_dir;
    if !dir.is_empty() {
        let path = std::path::Path::new(dir).join(Kept::FILE);
        let kept = std::fs::read(path)
            .ok()
            .and_then(|text| serde_json::from_slice::<Kept>(&text).ok())
            .filter(Kept::valid);
        for &took in kept.iter().flat_map(|k| &k.preheats_s) {
            history.record(Duration::from_secs_f64(took));
        }
    }
    history.expected()
}

impl Persisted for Kept {
    const FILE: &'static str = "schedule.json";
    const WHAT: &'static str = "schedule state";
    const FRESH: &'static str = "starting from the configuration";

    fn valid(&self) -> bool {
        self.preheats_s.len() <= PreheatHistory::KEEP
            && self
                .preheats_s
                .iter()
                .all(|s| s.is_finite() && (0.0..=86_400.0).contains(s))
            && (self.handled_until.is_none() || self.handled_until().is_some())
    }
}

/// How long after start a due brew waits for the controller's first answer; past it, the brew
/// is handled as usual (and skipped when the controller is offline).
pub const STARTUP_GRACE: chrono::Duration = chrono::Duration::seconds(15);

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
    /// The first poll, and whether the controller has answered since: see [`Shell::poll`].
    first_poll: Option<DateTime<Utc>>,
    heard: bool,
    /// `schedule.enabled` of the configuration.
    configured: bool,
    /// The last switch by command, kept with the rest.
    switched: Option<Switched>,
    /// Where [`Kept`] is written.
    store: Store<Kept>,
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
        let dir = Some(std::path::PathBuf::from(&settings.counters.state_dir))
            .filter(|d| !d.as_os_str().is_empty());
        let store: Store<Kept> = Store::new(dir, Duration::ZERO);
        let kept = store.load();
        let mut shell = Shell {
            planner: Planner::from_settings(settings),
            runner: Runner::new(s.enabled, Duration::from_secs_f64(s.max_late_s)),
            history: PreheatHistory::new(Duration::from_secs_f64(s.default_preheat_s)),
            calendar,
            calendar_read_at: None,
            preheat_since: None,
            cached: None,
            first_poll: None,
            heard: false,
            configured: s.enabled,
            switched: None,
            store,
        };
        shell.resume(&kept);
        shell
    }

    /// Takes back what was kept before a restart.
    fn resume(&mut self, kept: &Kept) {
        for &took in &kept.preheats_s {
            self.history.record(Duration::from_secs_f64(took));
        }
        self.runner.resume(kept.handled_until());
        match kept.switched {
            Some(switched) if switched.configured == self.configured => {
                self.runner.set_enabled(switched.enabled);
                self.switched = Some(switched);
            }
            Some(_) => {
                info!(
                    enabled = self.configured,
                    "schedule.enabled was changed in the configuration; it overrides the last schedule/set"
                );
                self.keep();
            }
            None => {}
        }
    }

    /// Writes what must survive a restart (rare: a switch, a skip, a brew handled, a preheat
    /// measured).
    fn keep(&mut self) {
        let kept = Kept {
            preheats_s: self.history.recent().map(|d| d.as_secs_f64()).collect(),
            switched: self.switched,
            handled_until: self
                .runner
                .handled_until()
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        };
        self.store.save_now(&kept);
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

    /// What is due now, the pot being in `mode`; `answering`: whether the controller answers.
    ///
    /// Until the controller has answered once since start (at most [`STARTUP_GRACE`]), nothing
    /// is due: after a restart a missed brew then starts, rather than being skipped because
    /// the link had not come up yet.
    pub fn poll(&mut self, now: DateTime<Utc>, mode: Mode, answering: bool) -> Option<Due> {
        self.heard |= answering;
        let since = *self.first_poll.get_or_insert(now);
        if !self.heard && now - since < STARTUP_GRACE {
            return None;
        }
        let brew = self.next(now)?;
        if brew.start_at > now {
            return None;
        }
        self.cached = None;
        let handled = self.runner.handled_until();
        let due = self
            .runner
            .poll(&self.planner, now, self.history.expected(), mode);
        if self.runner.handled_until() != handled {
            self.keep();
        }
        due
    }

    /// `schedule/set ON|OFF`.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.runner.set_enabled(enabled);
        self.switched = Some(Switched {
            enabled,
            configured: self.configured,
        });
        self.cached = None;
        self.keep();
    }

    /// `schedule/set SKIP`: the brew that will not start, if there is one.
    pub fn skip_next(&mut self, now: DateTime<Utc>) -> Option<PlannedBrewDoc> {
        self.cached = None;
        let brew = self
            .runner
            .skip_next(&self.planner, now, self.history.expected())?;
        self.keep();
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
                    self.keep();
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
    // A read never outlasts half the refresh interval, so a server that hangs cannot delay the
    // next attempt by more than that.
    let timeout = CALENDAR_TIMEOUT.min(refresh / 2);
    loop {
        let from = source.clone();
        let result = tokio::task::spawn_blocking(move || source::load(&from, timeout))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WeeklyBrew;
    use crate::schedule::tests::at;

    /// Four cups ready at 07:00 UTC every day, kept in `dir`.
    fn settings(dir: &std::path::Path, enabled: bool) -> Settings {
        let mut settings = Settings::default();
        settings.counters.state_dir = dir.display().to_string();
        settings.schedule.enabled = enabled;
        settings.schedule.timezone = "UTC".to_owned();
        settings.schedule.default_preheat_s = 120.0;
        settings.schedule.brew = vec![WeeklyBrew {
            days: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .map(str::to_owned)
                .to_vec(),
            ready_at: "07:00".to_owned(),
            cups: Some(4),
        }];
        settings
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("coffeebot-shell-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn start(settings: &Settings) -> Shell {
        Shell::start(settings, CancellationToken::new())
    }

    fn next_ready(shell: &mut Shell, now: DateTime<Utc>) -> Option<String> {
        shell.state(now).0.map(|doc| doc.ready_at)
    }

    #[test]
    fn a_switch_a_skip_and_measured_preheats_survive_a_restart() {
        let d = dir("restart");
        let now = at("2026-06-01T05:00:00Z");
        let mut shell = start(&settings(&d, true));
        assert_eq!(
            next_ready(&mut shell, now).as_deref(),
            Some("2026-06-01T07:00:00+00:00")
        );
        assert_eq!(shell.history.expected(), Duration::from_secs(120));
        shell.observe(now, Mode::Preheating);
        shell.observe(now + chrono::Duration::seconds(200), Mode::Brewing);
        shell.observe(now + chrono::Duration::seconds(400), Mode::Off);
        shell.skip_next(now).expect("a brew to skip");
        shell.set_enabled(false);
        drop(shell);

        let mut shell = start(&settings(&d, true));
        assert_eq!(shell.history.expected(), Duration::from_secs(200));
        assert!(!shell.runner.enabled(), "OFF is kept");
        shell.set_enabled(true);
        drop(shell);

        let mut shell = start(&settings(&d, true));
        assert_eq!(
            next_ready(&mut shell, now).as_deref(),
            Some("2026-06-02T07:00:00+00:00"),
            "the skip is kept"
        );
        // A brew that was started is handled: a restart does not start it again.
        let due = shell.poll(at("2026-06-02T06:55:00Z"), Mode::Off, true);
        assert!(matches!(due, Some(Due::Start(_))), "{due:?}");
        drop(shell);
        let mut shell = start(&settings(&d, true));
        assert_eq!(
            shell.poll(at("2026-06-02T06:55:01Z"), Mode::Off, true),
            None
        );
        let kept: Kept =
            serde_json::from_slice(&std::fs::read(d.join(Kept::FILE)).unwrap()).unwrap();
        assert_eq!(kept.preheats_s, vec![200.0]);
        assert_eq!(kept.handled_until.as_deref(), Some("2026-06-02T07:00:00Z"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn after_start_a_due_brew_waits_for_the_controller_at_most_the_grace() {
        let d = dir("grace");
        // Started 30 s after the brew's start (06:54:30): missed by less than max_late_s.
        let t0 = at("2026-06-01T06:55:00Z");
        let mut shell = start(&settings(&d, true));
        assert_eq!(shell.poll(t0, Mode::Off, false), None);
        let due = shell.poll(t0 + chrono::Duration::seconds(2), Mode::Off, true);
        assert!(matches!(due, Some(Due::Start(_))), "{due:?}");
        let _ = std::fs::remove_dir_all(&d);

        let d = dir("grace-offline");
        let mut shell = start(&settings(&d, true));
        assert_eq!(shell.poll(t0, Mode::Off, false), None);
        let later = t0 + STARTUP_GRACE - chrono::Duration::seconds(1);
        assert_eq!(shell.poll(later, Mode::Off, false), None);
        // Past the grace the brew is handled (the core then refuses it: offline).
        let due = shell.poll(t0 + STARTUP_GRACE, Mode::Off, false);
        assert!(matches!(due, Some(Due::Start(_))), "{due:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_planner_command_reads_the_kept_preheats() {
        let d = dir("command");
        let settings = settings(&d, true);
        assert_eq!(expected_preheat(&settings), Duration::from_secs(120));
        let mut shell = start(&settings);
        let t0 = at("2026-06-01T05:00:00Z");
        shell.observe(t0, Mode::Preheating);
        shell.observe(t0 + chrono::Duration::seconds(90), Mode::Brewing);
        assert_eq!(expected_preheat(&settings), Duration::from_secs(90));
        std::fs::write(d.join(Kept::FILE), "{").unwrap();
        assert_eq!(expected_preheat(&settings), Duration::from_secs(120));
        assert!(d.join(Kept::FILE).exists(), "only read");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_configuration_overrides_a_switch_made_under_another() {
        let d = dir("config");
        let mut shell = start(&settings(&d, true));
        shell.set_enabled(false);
        drop(shell);
        let shell = start(&settings(&d, true));
        assert!(
            !shell.runner.enabled(),
            "the same configuration: OFF is kept"
        );
        drop(shell);
        // Edited to `false`: the configuration applies, and the switch is forgotten.
        let shell = start(&settings(&d, false));
        assert!(!shell.runner.enabled());
        drop(shell);
        let mut shell = start(&settings(&d, true));
        assert!(
            shell.runner.enabled(),
            "edited back: the configuration, not the old OFF"
        );
        shell.set_enabled(false);
        shell.set_enabled(true);
        drop(shell);
        let shell = start(&settings(&d, true));
        assert!(shell.runner.enabled(), "the last switch is kept");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_or_out_of_range_file_is_set_aside() {
        let d = dir("corrupt");
        for text in [
            "{\"preheats_s\": [",
            "{\"preheats_s\": [-1]}",
            "{\"preheats_s\": [1, 2, 3, 4, 5, 6]}",
            "{\"handled_until\": \"tomorrow\"}",
            "{\"switched\": {\"enabled\": false}}",
        ] {
            std::fs::write(d.join(Kept::FILE), text).unwrap();
            let mut shell = start(&settings(&d, true));
            assert!(shell.runner.enabled(), "{text}");
            assert_eq!(shell.history.expected(), Duration::from_secs(120), "{text}");
            assert_eq!(
                next_ready(&mut shell, at("2026-06-01T05:00:00Z")).as_deref(),
                Some("2026-06-01T07:00:00+00:00"),
                "{text}"
            );
            assert!(d.join("schedule.json.bad").is_file(), "{text}");
            assert!(!d.join(Kept::FILE).exists(), "{text}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
