//! A coffee calendar (RFC 5545): every timed event is a brew that must be ready at the
//! event's start.
//!
//! The `icalendar` crate parses the text into components; this module reads what real
//! calendars export — `DTSTART` in UTC, floating, or with `TZID` (an IANA name, found directly,
//! at the end of a longer id, or in its `VTIMEZONE`'s `X-LIC-LOCATION`), `RRULE` (expanded by
//! the `rrule` crate), `EXDATE`, `RDATE`, `RECURRENCE-ID` overrides and `STATUS:CANCELLED`.
//! All-day events (a `DTSTART` without a time) are ignored.
//!
//! Recurrences are expanded in the event's *local* wall-clock time (the `rrule` crate is given
//! the local times as if they were UTC), and each local time is then placed in the event's zone
//! by [`super::localize`]: so a daily 02:30 event on a spring-forward day is at the first
//! instant after the gap, and on a fall-back day once, like the weekly entries.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use icalendar::parser::{Component, Property};

use super::localize;

/// Largest calendar accepted, in bytes.
pub const MAX_BYTES: usize = 1024 * 1024;
/// Most events (`VEVENT`s) a calendar may hold.
pub const MAX_EVENTS: usize = 10_000;

/// Why a calendar cannot be used. One line each, for the log and the state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// More than [`MAX_BYTES`].
    #[error("the calendar is larger than 1 MiB ({0} bytes or more)")]
    TooLarge(usize),
    /// More than [`MAX_EVENTS`] events.
    #[error("the calendar holds more than 10000 events ({0})")]
    TooManyEvents(usize),
    /// Not an iCalendar document.
    #[error("not an iCalendar document: {0}")]
    Invalid(String),
}

/// How a time is written in the calendar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Zoned {
    /// `…Z`.
    Utc,
    /// No zone: the schedule's.
    Floating,
    /// `TZID=…`, resolved to an IANA zone.
    Zone(Tz),
}

/// A date-time as written: its local value and how it is zoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Written {
    local: NaiveDateTime,
    zoned: Zoned,
}

impl Written {
    /// The zone this time is in, with floating times in `schedule`.
    fn zone(self, schedule: Tz) -> Tz {
        match self.zoned {
            Zoned::Utc => Tz::UTC,
            Zoned::Floating => schedule,
            Zoned::Zone(zone) => zone,
        }
    }

    /// The instant it names.
    fn instant(self, schedule: Tz) -> DateTime<Utc> {
        localize(self.zone(schedule), self.local)
    }

    /// Its local time in `zone` (itself when it is written in that zone).
    fn local_in(self, zone: Tz, schedule: Tz) -> NaiveDateTime {
        if self.zone(schedule) == zone {
            self.local
        } else {
            self.instant(schedule).with_timezone(&zone).naive_local()
        }
    }
}

/// One event: a single time or a recurring series.
#[derive(Clone, Debug)]
struct Series {
    start: Written,
    /// The `RRULE` value, if any.
    rule: Option<String>,
    rdates: Vec<Written>,
    exdates: Vec<Written>,
    /// `EXDATE;VALUE=DATE`: every occurrence on these local dates.
    exdays: Vec<NaiveDate>,
    /// Occurrences replaced by an override (`RECURRENCE-ID` of another event with this UID).
    overridden: Vec<Written>,
    summary: String,
}

/// A parsed calendar, ready to be expanded into ready times.
#[derive(Clone, Debug, Default)]
pub struct Calendar {
    series: Vec<Series>,
    /// `VEVENT`s read.
    pub events: usize,
    /// What was left out and why, e.g. an unknown `TZID` or an hourly rule.
    pub notes: Vec<String>,
}

impl Calendar {
    /// Parses a calendar, refusing one that is too large or holds too many events.
    pub fn parse(text: &str) -> Result<Calendar, CalendarError> {
        if text.len() > MAX_BYTES {
            return Err(CalendarError::TooLarge(text.len()));
        }
        // Counted before parsing, so that a huge calendar costs no parse.
        let events = count_events(text);
        if events > MAX_EVENTS {
            return Err(CalendarError::TooManyEvents(events));
        }
        let unfolded = icalendar::parser::unfold(text);
        let parsed = icalendar::parser::read_calendar_simple(&unfolded)
            .map_err(|e| CalendarError::Invalid(first_line(&format!("{:?}", e.code))))?;
        let Some(root) = parsed.iter().find(|c| is(c.name.as_str(), "VCALENDAR")) else {
            return Err(CalendarError::Invalid("no BEGIN:VCALENDAR".to_owned()));
        };
        let mut calendar = Calendar::default();
        let zones = time_zones(root);
        // Overrides first: a RECURRENCE-ID removes that occurrence from its series.
        let mut overridden: HashMap<String, Vec<Written>> = HashMap::new();
        let vevents = root
            .components
            .iter()
            .filter(|c| is(c.name.as_str(), "VEVENT"));
        for event in vevents.clone() {
            if let (Some(uid), Some(id)) = (prop(event, "UID"), prop(event, "RECURRENCE-ID")) {
                if let Some(written) = date_time(id, &zones, &mut calendar.notes) {
                    overridden
                        .entry(uid.val.as_str().to_owned())
                        .or_default()
                        .push(written);
                }
            }
        }
        for event in vevents {
            calendar.events += 1;
            if prop(event, "STATUS").is_some_and(|s| is(s.val.as_str(), "CANCELLED")) {
                continue;
            }
            let Some(start) = prop(event, "DTSTART") else {
                continue;
            };
            // All-day events (no time) are no brews.
            let Some(start) = date_time(start, &zones, &mut calendar.notes) else {
                continue;
            };
            let is_override = prop(event, "RECURRENCE-ID").is_some();
            let rule = if is_override {
                None
            } else {
                prop(event, "RRULE").map(|p| p.val.as_str().to_owned())
            };
            if let Some(rule) = &rule {
                if let Some(reason) = unsupported(rule) {
                    calendar.notes.push(reason);
                    continue;
                }
            }
            let mut series = Series {
                start,
                rule,
                rdates: Vec::new(),
                exdates: Vec::new(),
                exdays: Vec::new(),
                overridden: Vec::new(),
                summary: prop(event, "SUMMARY")
                    .map(|p| p.val.as_str().to_owned())
                    .unwrap_or_default(),
            };
            if !is_override {
                for property in props(event, "RDATE") {
                    series
                        .rdates
                        .extend(date_times(property, &zones, &mut calendar.notes).0);
                }
                for property in props(event, "EXDATE") {
                    let (times, days) = date_times(property, &zones, &mut calendar.notes);
                    series.exdates.extend(times);
                    series.exdays.extend(days);
                }
                if let Some(uid) = prop(event, "UID") {
                    if let Some(ids) = overridden.get(uid.val.as_str()) {
                        series.overridden.clone_from(ids);
                    }
                }
            }
            calendar.series.push(series);
        }
        Ok(calendar)
    }

    /// The ready instants in `[from, until)` with the cups their summary names (if it names
    /// 1 … `max_cups`): from each event every one before `limit.0` and at most `limit.1` from
    /// then on (an occurrence before the planner's own start, e.g. one just skipped, must not
    /// use up the count). Floating times are in `schedule`.
    pub fn occurrences(
        &self,
        schedule: Tz,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: (DateTime<Utc>, usize),
        max_cups: u32,
    ) -> Vec<(DateTime<Utc>, Option<u32>)> {
        let (counted_from, count) = limit;
        let mut out = Vec::new();
        for series in &self.series {
            let cups = cups_in(&series.summary, max_cups);
            let mut instants = series.expand(schedule, from, counted_from, until, count);
            instants.sort_unstable();
            instants.dedup();
            let before = instants.partition_point(|at| *at < counted_from);
            out.extend(
                instants
                    .into_iter()
                    .take(before.saturating_add(count))
                    .map(|at| (at, cups)),
            );
        }
        out
    }
}

impl Series {
    /// This event's instants in `[from, until)`: those of its rule, all before `counted_from`
    /// and at least `limit` after.
    fn expand(
        &self,
        schedule: Tz,
        from: DateTime<Utc>,
        counted_from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let zone = self.start.zone(schedule);
        let mut locals: Vec<NaiveDateTime> = match &self.rule {
            None => vec![self.start.local],
            Some(rule) => {
                let from_local =
                    from.with_timezone(&zone).naive_local() - chrono::Duration::days(2);
                let until_local =
                    until.with_timezone(&zone).naive_local() + chrono::Duration::days(2);
                // Rules recur daily at most: one more per day before `counted_from`.
                let early = (counted_from - from).num_days().max(0) as usize + 1;
                let limit = limit.saturating_add(early);
                expand_rule(self.start.local, rule, zone, from_local, until_local, limit)
            }
        };
        locals.extend(self.rdates.iter().map(|w| w.local_in(zone, schedule)));
        let excluded: Vec<NaiveDateTime> = self
            .exdates
            .iter()
            .map(|w| w.local_in(zone, schedule))
            .collect();
        let overridden: Vec<DateTime<Utc>> = self
            .overridden
            .iter()
            .map(|w| w.instant(schedule))
            .collect();
        locals
            .into_iter()
            .filter(|local| !excluded.contains(local) && !self.exdays.contains(&local.date()))
            .map(|local| localize(zone, local))
            .filter(|at| !overridden.contains(at) && *at >= from && *at < until)
            .collect()
    }
}

/// The local times of a rule starting at `start` (local in `zone`) between two local times.
fn expand_rule(
    start: NaiveDateTime,
    rule: &str,
    zone: Tz,
    from_local: NaiveDateTime,
    until_local: NaiveDateTime,
    limit: usize,
) -> Vec<NaiveDateTime> {
    let carrier = |local: NaiveDateTime| rrule::Tz::UTC.from_utc_datetime(&local);
    let text = format!(
        "DTSTART:{}Z\nRRULE:{}",
        start.format("%Y%m%dT%H%M%S"),
        local_until(rule, zone)
    );
    let Ok(set) = text.parse::<rrule::RRuleSet>() else {
        return Vec::new();
    };
    let limit = u16::try_from(limit.saturating_add(8)).unwrap_or(u16::MAX);
    set.after(carrier(from_local))
        .before(carrier(until_local))
        .all(limit)
        .dates
        .into_iter()
        .map(|at| at.naive_utc())
        .collect()
}

/// The rule with its `UNTIL` as a local time of `zone` written as if UTC (the carrier the
/// expansion runs in): a UTC `UNTIL` converted, a date-only one through the end of that day.
fn local_until(rule: &str, zone: Tz) -> String {
    let parts: Vec<String> = rule
        .split(';')
        .map(|part| {
            let Some((name, value)) = part.split_once('=') else {
                return part.to_owned();
            };
            if !is(name, "UNTIL") {
                return part.to_owned();
            }
            let local = if let Some(utc) = value.strip_suffix(['Z', 'z']) {
                NaiveDateTime::parse_from_str(utc, "%Y%m%dT%H%M%S")
                    .ok()
                    .map(|t| Utc.from_utc_datetime(&t).with_timezone(&zone).naive_local())
            } else if value.len() == 8 {
                NaiveDate::parse_from_str(value, "%Y%m%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(23, 59, 59))
            } else {
                NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%S").ok()
            };
            match local {
                Some(local) => format!("UNTIL={}Z", local.format("%Y%m%dT%H%M%S")),
                None => part.to_owned(),
            }
        })
        .collect();
    parts.join(";")
}

/// Why a rule is left out, if it is: brews recur daily at most.
fn unsupported(rule: &str) -> Option<String> {
    let freq = rule
        .split(';')
        .find_map(|part| part.split_once('=').filter(|(name, _)| is(name, "FREQ")))
        .map(|(_, value)| value.to_ascii_uppercase());
    match freq.as_deref() {
        Some("DAILY" | "WEEKLY" | "MONTHLY" | "YEARLY") => None,
        Some(other) => Some(format!(
            "an event recurring {other} is left out: brews recur daily at most"
        )),
        None => Some("an RRULE without FREQ is left out".to_owned()),
    }
}

/// `TZID`s of the calendar's `VTIMEZONE`s that name an IANA zone in `X-LIC-LOCATION`.
fn time_zones(root: &Component<'_>) -> HashMap<String, Tz> {
    root.components
        .iter()
        .filter(|c| is(c.name.as_str(), "VTIMEZONE"))
        .filter_map(|c| {
            let id = prop(c, "TZID")?.val.as_str().to_owned();
            let zone = iana(&id).or_else(|| iana(prop(c, "X-LIC-LOCATION")?.val.as_str()))?;
            Some((id, zone))
        })
        .collect()
}

/// An IANA zone from a `TZID`: the name itself, or its last one to three `/` parts (ids like
/// `/mozilla.org/20050126_1/Europe/Berlin`).
fn iana(id: &str) -> Option<Tz> {
    let id = id.trim().trim_matches('"');
    if let Ok(zone) = id.parse() {
        return Some(zone);
    }
    let parts: Vec<&str> = id.split('/').collect();
    (1..=3.min(parts.len()))
        .rev()
        .find_map(|n| parts[parts.len() - n..].join("/").parse().ok())
}

/// A date-time property (`DTSTART`, `RECURRENCE-ID`); `None` for a date without a time.
fn date_time(
    property: &Property<'_>,
    zones: &HashMap<String, Tz>,
    notes: &mut Vec<String>,
) -> Option<Written> {
    date_times(property, zones, notes).0.into_iter().next()
}

/// The values of a date-time list property (`EXDATE`, `RDATE`): times, and dates without one.
fn date_times(
    property: &Property<'_>,
    zones: &HashMap<String, Tz>,
    notes: &mut Vec<String>,
) -> (Vec<Written>, Vec<NaiveDate>) {
    let param = |name: &str| {
        property
            .params
            .iter()
            .find(|p| is(p.key.as_str(), name))
            .and_then(|p| p.val.as_ref().map(|v| v.as_str().to_owned()))
    };
    let tzid = param("TZID");
    let zoned_by_id = tzid
        .as_ref()
        .map(|id| match zones.get(id).copied().or_else(|| iana(id)) {
            Some(zone) => Zoned::Zone(zone),
            None => {
                let note =
                    format!("unknown TZID {id:?}: its times are read in the schedule's zone");
                if !notes.contains(&note) {
                    notes.push(note);
                }
                Zoned::Floating
            }
        });
    let mut times = Vec::new();
    let mut days = Vec::new();
    for value in property.val.as_str().split(',') {
        let value = value.trim();
        if let Some(utc) = value.strip_suffix(['Z', 'z']) {
            if let Ok(local) = NaiveDateTime::parse_from_str(utc, "%Y%m%dT%H%M%S") {
                times.push(Written {
                    local,
                    zoned: Zoned::Utc,
                });
            }
        } else if let Ok(local) = NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%S") {
            times.push(Written {
                local,
                zoned: zoned_by_id.unwrap_or(Zoned::Floating),
            });
        } else if let Ok(day) = NaiveDate::parse_from_str(value, "%Y%m%d") {
            days.push(day);
        }
    }
    (times, days)
}

/// The first integer in `summary` that is 1 … `max_cups`.
pub fn cups_in(summary: &str, max_cups: u32) -> Option<u32> {
    summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty() && run.len() <= 3)
        .filter_map(|run| run.parse::<u32>().ok())
        .find(|n| (1..=max_cups).contains(n))
}

/// `VEVENT`s in the text, counted by their `BEGIN` lines.
fn count_events(text: &str) -> usize {
    text.lines()
        .filter(|line| line.trim_end().eq_ignore_ascii_case("BEGIN:VEVENT"))
        .count()
}

fn is(name: &str, wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

fn prop<'a>(component: &'a Component<'_>, name: &str) -> Option<&'a Property<'a>> {
    component
        .properties
        .iter()
        .find(|p| is(p.name.as_str(), name))
}

fn props<'a>(
    component: &'a Component<'_>,
    name: &'a str,
) -> impl Iterator<Item = &'a Property<'a>> + 'a {
    component
        .properties
        .iter()
        .filter(move |p| is(p.name.as_str(), name))
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// A local time, for tests.
#[cfg(test)]
pub(crate) fn local(date: &str, time: &str) -> NaiveDateTime {
    NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .unwrap()
        .and_time(chrono::NaiveTime::parse_from_str(time, "%H:%M").unwrap())
}
