//! The brew schedule: weekly "ready at" entries and a coffee calendar turned into the next
//! planned brews, each with the instant it must be *ready* and the instant it must *start*.
//!
//! Pure, like the heater core: the planner never reads a clock and never does I/O. `from` is
//! passed in; the calendar comes in as text ([`Calendar::parse`], or [`calendar::read`] from a
//! reader, one component at a time; [`source`] is the one part that opens a file or a URL); the expected preheat comes from [`PreheatHistory`], which the
//! daemon feeds with what the pot did. The planner decides *when*; [`runner`] says when a start
//! is due, and the start goes into the core as an ordinary `BrewStart` request, with every
//! interlock.
//!
//! Wall-clock rules, in the schedule's zone (or an event's own): a ready time that does not
//! exist (spring forward) is the first instant after the gap; one that exists twice (fall back)
//! is its first occurrence, so it brews once. Candidates whose brews would overlap are merged:
//! see [`merge`].
#![deny(clippy::disallowed_methods)]

pub mod calendar;
mod ics;
pub mod runner;
pub mod shell;
pub mod source;

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::Settings;

pub use calendar::{Calendar, CalendarError};

/// Longest wait for a calendar's server (the daemon waits at most half its refresh interval).
pub const CALENDAR_TIMEOUT: Duration = Duration::from_secs(20);

/// How far ahead the planner looks for brews.
pub const HORIZON_DAYS: i64 = 400;

/// Where a planned brew comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A `[[schedule.brew]]` entry.
    Weekly,
    /// An event of `schedule.calendar`.
    Calendar,
}

impl Source {
    /// `weekly` or `calendar`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Weekly => "weekly",
            Source::Calendar => "calendar",
        }
    }
}

/// One `[[schedule.brew]]` entry, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weekly {
    /// The weekdays it brews on.
    pub days: Vec<Weekday>,
    /// Local wall-clock time the coffee must be ready.
    pub ready_at: NaiveTime,
    /// Cups; already bounded by `brew.max_cups`.
    pub cups: u32,
}

/// A brew the planner wants: ready by `ready_at`, so it starts at `start_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedBrew {
    /// When the coffee must be ready.
    pub ready_at: DateTime<Utc>,
    /// When the brew must start: `ready_at` − (expected preheat + cups × seconds a cup).
    pub start_at: DateTime<Utc>,
    /// Cups to brew.
    pub cups: u32,
    /// Which kind of entry asked for it.
    pub source: Source,
}

/// A planned brew as JSON, times in RFC 3339 with the zone's offset (the `schedule` command's
/// lines, the state's `next_brew`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedBrewDoc {
    /// When the coffee must be ready.
    pub ready_at: String,
    /// When the brew starts.
    pub start_at: String,
    /// Cups to brew.
    pub cups: u32,
    /// `weekly` or `calendar`.
    pub source: Source,
}

impl PlannedBrew {
    /// The JSON form, with the offsets of `zone`.
    pub fn doc(&self, zone: Tz) -> PlannedBrewDoc {
        PlannedBrewDoc {
            ready_at: rfc3339(self.ready_at, zone),
            start_at: rfc3339(self.start_at, zone),
            cups: self.cups,
            source: self.source,
        }
    }
}

/// RFC 3339 in `zone`'s offset, whole seconds, e.g. `2026-03-30T06:45:00+02:00`.
pub fn rfc3339(at: DateTime<Utc>, zone: Tz) -> String {
    at.with_timezone(&zone)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// What the planner needs besides the entries: the brew's timing and the cups' bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BrewTiming {
    /// `brew.seconds_per_cup`.
    pub seconds_per_cup: f64,
    /// `brew.max_cups`.
    pub max_cups: u32,
    /// `brew.default_cups`: calendar events without a number in their summary.
    pub default_cups: u32,
}

impl BrewTiming {
    /// How long a brew of `cups` takes from its start to ready, with `preheat`.
    pub fn duration(&self, cups: u32, preheat: Duration) -> chrono::Duration {
        let brewing = Duration::try_from_secs_f64(self.seconds_per_cup * f64::from(cups))
            .unwrap_or(Duration::ZERO);
        // Whole seconds, rounded up: a start is never later than the exact one.
        let total = (preheat + brewing).as_secs_f64().ceil();
        chrono::Duration::seconds(total as i64)
    }
}

/// The weekly entries, the calendar (if any) and the zone: asks for the next brews.
#[derive(Clone, Debug)]
pub struct Planner {
    /// The schedule's zone: weekly entries and floating calendar times are in it.
    pub zone: Tz,
    /// `[[schedule.brew]]`.
    pub weekly: Vec<Weekly>,
    /// The last good calendar, if one is configured and was read.
    pub calendar: Option<Calendar>,
    /// Timing and cups.
    pub timing: BrewTiming,
}

impl Planner {
    /// The next `count` brews that are ready at or after `from`, sorted by `ready_at`, none
    /// overlapping another; `preheat` is the expected preheat.
    pub fn plan(&self, from: DateTime<Utc>, count: usize, preheat: Duration) -> Vec<PlannedBrew> {
        if count == 0 {
            return Vec::new();
        }
        // Candidates a little before `from` take part in merging, so that the plan does not
        // change its mind as time passes; only brews ready at or after `from` are returned.
        let lead = self.timing.duration(self.timing.max_cups, preheat) * 2;
        let window_start = from - lead;
        // Expand a window long enough for `count` brews, doubled until it holds them (merging
        // can join entries) or reaches the horizon. Weekly entries and the calendar share the
        // window, so that nothing inside it is missing from the sorted plan.
        let mut days = weekly_days_needed(count, &self.weekly);
        loop {
            let until = window_start + chrono::Duration::days(days);
            let mut brews = self.plan_window(window_start, from, until, count, preheat);
            // Near the end a brew may still merge with one beyond the window: not yet final.
            brews.retain(|brew| brew.ready_at >= from && brew.ready_at < until - lead);
            if brews.len() >= count || days >= HORIZON_DAYS {
                brews.truncate(count);
                return brews;
            }
            days = (days * 2).min(HORIZON_DAYS);
        }
    }

    /// Every brew whose candidates are ready in `[start, until)`, merged; at least `count` of
    /// each calendar event's ready at or after `from` (those before only take part in merging).
    fn plan_window(
        &self,
        start: DateTime<Utc>,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        count: usize,
        preheat: Duration,
    ) -> Vec<PlannedBrew> {
        let mut candidates: Vec<Candidate> = Vec::new();
        let days = (until - start).num_days() + 1;
        for entry in &self.weekly {
            weekly_candidates(entry, self.zone, start, days, &mut candidates);
        }
        candidates.retain(|c| c.ready_at >= start && c.ready_at < until);
        if let Some(calendar) = &self.calendar {
            let occurrences =
                calendar.occurrences(self.zone, start, until, (from, count), self.timing.max_cups);
            for (ready_at, cups) in occurrences {
                candidates.push(Candidate {
                    ready_at,
                    cups: cups.unwrap_or(self.timing.default_cups),
                    source: Source::Calendar,
                });
            }
        }
        for candidate in &mut candidates {
            candidate.cups = candidate.cups.clamp(1, self.timing.max_cups.max(1));
        }
        merge(candidates, self.timing, preheat)
    }
}

impl Planner {
    /// The planner of validated settings, without a calendar yet.
    pub fn from_settings(settings: &Settings) -> Planner {
        let brew = &settings.brew;
        Planner {
            zone: zone(&settings.schedule.timezone).unwrap_or(Tz::UTC),
            weekly: settings
                .schedule
                .brew
                .iter()
                .map(|entry| Weekly {
                    days: entry.days.iter().filter_map(|d| weekday(d)).collect(),
                    ready_at: time_of_day(&entry.ready_at).unwrap_or(NaiveTime::MIN),
                    cups: entry.cups.unwrap_or(brew.default_cups),
                })
                .collect(),
            calendar: None,
            timing: BrewTiming {
                seconds_per_cup: brew.seconds_per_cup,
                max_cups: brew.max_cups,
                default_cups: brew.default_cups,
            },
        }
    }
}

/// A brew before merging.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    ready_at: DateTime<Utc>,
    cups: u32,
    source: Source,
}

/// Days to expand first so that `count` brews are likely found (capped at the horizon).
fn weekly_days_needed(count: usize, weekly: &[Weekly]) -> i64 {
    let per_week: usize = weekly.iter().map(|entry| entry.days.len()).sum();
    if per_week == 0 {
        return 8;
    }
    let weeks = count.div_ceil(per_week) as i64 + 1;
    (weeks * 7 + 2).min(HORIZON_DAYS)
}

/// The entry's ready instants from the local date of `start` on, for `days` days.
fn weekly_candidates(
    entry: &Weekly,
    zone: Tz,
    start: DateTime<Utc>,
    days: i64,
    out: &mut Vec<Candidate>,
) {
    let first = start.with_timezone(&zone).date_naive();
    for offset in 0..days {
        let Some(date) = first.checked_add_signed(chrono::Duration::days(offset)) else {
            break;
        };
        if entry.days.contains(&date.weekday()) {
            out.push(Candidate {
                ready_at: localize(zone, date.and_time(entry.ready_at)),
                cups: entry.cups,
                source: Source::Weekly,
            });
        }
    }
}

/// Merges candidates into brews that do not overlap.
///
/// Sorted by ready time, a candidate whose brew would start before the previous brew is ready
/// joins that brew: the merged brew is ready at the *earlier* time and brews the *larger* of
/// the two cup counts (its source is that of the entry whose cups won; the earlier on a tie).
/// A merged brew takes longer and so starts earlier; merging repeats until nothing overlaps.
fn merge(
    mut candidates: Vec<Candidate>,
    timing: BrewTiming,
    preheat: Duration,
) -> Vec<PlannedBrew> {
    candidates.sort_by_key(|c| (c.ready_at, c.cups));
    let brew = |c: &Candidate| PlannedBrew {
        ready_at: c.ready_at,
        start_at: c.ready_at - timing.duration(c.cups, preheat),
        cups: c.cups,
        source: c.source,
    };
    let mut brews: Vec<PlannedBrew> = Vec::with_capacity(candidates.len());
    for candidate in &candidates {
        let mut next = brew(candidate);
        // Join the previous brew while they overlap; a grown brew may reach further back.
        while let Some(previous) = brews.last() {
            if next.start_at >= previous.ready_at {
                break;
            }
            let (cups, source) = if next.cups > previous.cups {
                (next.cups, next.source)
            } else {
                (previous.cups, previous.source)
            };
            let ready_at = previous.ready_at.min(next.ready_at);
            next = brew(&Candidate {
                ready_at,
                cups,
                source,
            });
            brews.pop();
        }
        brews.push(next);
    }
    brews
}

/// The instant of a local wall-clock time in `zone`: a time that does not exist (spring
/// forward) becomes the first instant after the gap; one that exists twice (fall back) its
/// first occurrence.
pub fn localize(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match zone.from_local_datetime(&local) {
        chrono::LocalResult::Single(at) => at.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(first, second) => first.min(second).with_timezone(&Utc),
        chrono::LocalResult::None => first_instant_at_or_after(zone, local),
    }
}

/// The first instant whose wall-clock time in `zone` is at or after `local` (inside a gap).
fn first_instant_at_or_after(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    // No zone's offset is beyond ±26 h: the answer lies in this range of UTC instants, and
    // local time is monotonic across a gap, so a binary search over seconds finds it.
    let guess = local.and_utc();
    let mut low = guess - chrono::Duration::hours(27);
    let mut high = guess + chrono::Duration::hours(27);
    let wall = |at: DateTime<Utc>| at.with_timezone(&zone).naive_local();
    while high - low > chrono::Duration::seconds(1) {
        let mid = low + (high - low) / 2;
        if wall(mid) >= local {
            high = mid;
        } else {
            low = mid;
        }
    }
    high
}

/// The zone named by `schedule.timezone`: an IANA name, or empty for the machine's zone (its
/// IANA name from the system; UTC if the system names none).
pub fn zone(name: &str) -> Result<Tz, String> {
    if name.is_empty() {
        return Ok(iana_time_zone::get_timezone()
            .ok()
            .and_then(|name| name.parse().ok())
            .unwrap_or(Tz::UTC));
    }
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone"))
}

/// A weekday from its three-letter name (`mon` … `sun`, any case).
pub fn weekday(name: &str) -> Option<Weekday> {
    Some(match name.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

/// A local time of day written `HH:MM` (24 h).
pub fn time_of_day(text: &str) -> Option<NaiveTime> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(hours.parse().ok()?, minutes.parse().ok()?, 0)
}

/// How long the pot takes to preheat, from what it did: the median of the last
/// [`PreheatHistory::KEEP`] preheats, or the configured default before there is one.
#[derive(Clone, Debug)]
pub struct PreheatHistory {
    default: Duration,
    recent: VecDeque<Duration>,
}

impl PreheatHistory {
    /// Preheats remembered.
    pub const KEEP: usize = 5;

    /// No history yet: [`PreheatHistory::expected`] is `default`.
    pub fn new(default: Duration) -> Self {
        PreheatHistory {
            default,
            recent: VecDeque::with_capacity(Self::KEEP),
        }
    }

    /// A finished preheat took `took`.
    pub fn record(&mut self, took: Duration) {
        if self.recent.len() == Self::KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(took);
    }

    /// The remembered preheats, oldest first (to keep across restarts).
    pub fn recent(&self) -> impl Iterator<Item = Duration> + '_ {
        self.recent.iter().copied()
    }

    /// The expected preheat: the median of the remembered ones (the upper of the two middle
    /// ones for an even count, so a brew rather starts early), else the default.
    pub fn expected(&self) -> Duration {
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        sorted
            .get(sorted.len() / 2)
            .copied()
            .unwrap_or(self.default)
    }
}

impl fmt::Display for PlannedBrewDoc {
    /// The JSON line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&json)
    }
}

#[cfg(test)]
mod tests;
