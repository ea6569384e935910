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
use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use icalendar::parser::{Component, Property};

use super::ics::{Components, Stop};
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
    /// `TZID=…` not yet resolved, by its index in [`Builder::unresolved`]: only while reading
    /// (a `VTIMEZONE` may come after the events that name it); [`Builder::finish`] resolves
    /// every one.
    Named(u32),
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
            Zoned::Floating | Zoned::Named(_) => schedule,
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

/// One event: a single time or a recurring series, as little as planning needs (a calendar
/// of thousands of events is kept for as long as it is in use).
#[derive(Clone, Debug)]
struct Series {
    start: Written,
    /// The `RRULE` value, if any.
    rule: Option<Box<str>>,
    /// The integers of the summary that may name cups (1 … 999), in order: see [`cups_in`].
    numbers: Box<[u16]>,
    /// `RDATE`, `EXDATE` and overrides: most events have none.
    extra: Option<Box<Extra>>,
}

/// What few events have besides their start and rule.
#[derive(Clone, Debug, Default)]
struct Extra {
    rdates: Vec<Written>,
    exdates: Vec<Written>,
    /// `EXDATE;VALUE=DATE`: every occurrence on these local dates.
    exdays: Vec<NaiveDate>,
    /// Occurrences replaced by an override (`RECURRENCE-ID` of another event with this UID).
    overridden: Vec<Written>,
}

/// A parsed calendar, ready to be expanded into ready times. Cloning it shares its events.
#[derive(Clone, Debug, Default)]
pub struct Calendar {
    series: Arc<[Series]>,
    /// `VEVENT`s read.
    pub events: usize,
    /// What was left out and why, e.g. an unknown `TZID` or an hourly rule (each once).
    pub notes: Vec<String>,
}

/// Why a calendar could not be read from a reader.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The reader failed (a file, a connection).
    #[error("{0}")]
    Io(std::io::Error),
    /// A line is not UTF-8.
    #[error("the calendar is not UTF-8 text")]
    NotText,
    /// The text is no usable calendar.
    #[error("{0}")]
    Calendar(#[from] CalendarError),
}

impl Calendar {
    /// Parses a calendar, refusing one that is too large or holds too many events.
    pub fn parse(text: &str) -> Result<Calendar, CalendarError> {
        if text.len() > MAX_BYTES {
            return Err(CalendarError::TooLarge(text.len()));
        }
        read(text.as_bytes()).map_err(|e| match e {
            ReadError::Calendar(e) => e,
            other => CalendarError::Invalid(other.to_string()),
        })
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
        for series in self.series.iter() {
            let cups = first_fitting(series.numbers.iter().map(|&n| u32::from(n)), max_cups);
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

/// Reads a calendar from `reader` one component at a time (see [`super::ics`]), keeping only
/// what planning needs: never more than [`MAX_BYTES`] + 1 bytes are read, and a text that is
/// refused is refused for the first of: too large, not UTF-8, too many events, not a calendar.
pub fn read(reader: impl BufRead) -> Result<Calendar, ReadError> {
    let mut components = Components::new(reader);
    let mut builder = Builder::default();
    let mut invalid = None;
    let mut text = true;
    loop {
        let stop = match components.next_component() {
            Ok(None) => break,
            Ok(Some(block)) => match builder.add(block) {
                Ok(()) if components.vevents() <= MAX_EVENTS => continue,
                // Too many: the rest is only counted.
                Ok(()) => None,
                Err(reason) => Some(reason),
            },
            Err(Stop::Io(e)) => return Err(ReadError::Io(e)),
            Err(Stop::NotText) => {
                text = false;
                None
            }
            Err(Stop::Invalid(reason)) => Some(reason),
        };
        invalid = stop;
        text &= components.drain().map_err(|stop| match stop {
            Stop::Io(e) => ReadError::Io(e),
            _ => ReadError::NotText,
        })?;
        break;
    }
    if components.bytes() > MAX_BYTES {
        return Err(CalendarError::TooLarge(components.bytes()).into());
    }
    if !text {
        return Err(ReadError::NotText);
    }
    if components.vevents() > MAX_EVENTS {
        return Err(CalendarError::TooManyEvents(components.vevents()).into());
    }
    if let Some(reason) = invalid {
        return Err(CalendarError::Invalid(reason).into());
    }
    Ok(builder.finish())
}

/// A calendar being read: its events reduced as they come.
#[derive(Default)]
struct Builder {
    series: Vec<Series>,
    /// The `UID` of each series that is not an override (to find its overrides at the end).
    uids: Vec<Option<Box<str>>>,
    /// `RECURRENCE-ID`s by `UID`.
    overrides: HashMap<String, Vec<Written>>,
    /// `TZID`s of `VTIMEZONE`s that name an IANA zone in `X-LIC-LOCATION`.
    zones: HashMap<String, Tz>,
    /// Every `TZID` met in a time, as resolved when first met.
    tzids: HashMap<String, Zoned>,
    /// `TZID`s not (yet) resolved: [`Zoned::Named`] indexes this.
    unresolved: Vec<String>,
    events: usize,
    notes: Vec<String>,
}

impl Builder {
    /// Takes in one child component of the calendar (its unfolded text).
    fn add(&mut self, block: &str) -> Result<(), String> {
        let parsed = icalendar::parser::read_calendar_simple(block)
            .map_err(|e| first_line(&format!("{:?}", e.code)))?;
        for component in &parsed {
            if is(component.name.as_str(), "VTIMEZONE") {
                self.time_zone(component);
            } else if is(component.name.as_str(), "VEVENT") {
                self.event(component);
            }
        }
        Ok(())
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// A `VTIMEZONE` whose `TZID` or `X-LIC-LOCATION` names an IANA zone.
    fn time_zone(&mut self, component: &Component<'_>) {
        let Some(id) = prop(component, "TZID") else {
            return;
        };
        let id = id.val.as_str();
        let zone = iana(id).or_else(|| iana(prop(component, "X-LIC-LOCATION")?.val.as_str()));
        if let Some(zone) = zone {
            self.zones.insert(id.to_owned(), zone);
        }
    }

    fn event(&mut self, event: &Component<'_>) {
        self.events += 1;
        let recurrence_id = prop(event, "RECURRENCE-ID");
        // A RECURRENCE-ID removes that occurrence from its series (also when cancelled).
        if let (Some(uid), Some(id)) = (prop(event, "UID"), recurrence_id) {
            if let Some(written) = self.date_time(id) {
                self.overrides
                    .entry(uid.val.as_str().to_owned())
                    .or_default()
                    .push(written);
            }
        }
        if prop(event, "STATUS").is_some_and(|s| is(s.val.as_str(), "CANCELLED")) {
            return;
        }
        let Some(start) = prop(event, "DTSTART") else {
            return;
        };
        // All-day events (no time) are no brews.
        let Some(start) = self.date_time(start) else {
            return;
        };
        let is_override = recurrence_id.is_some();
        let rule = if is_override {
            None
        } else {
            prop(event, "RRULE").map(|p| p.val.as_str())
        };
        if let Some(reason) = rule.and_then(unsupported) {
            self.note(reason);
            return;
        }
        let mut extra = Extra::default();
        if !is_override {
            for property in props(event, "RDATE") {
                extra.rdates.extend(self.date_times(property).0);
            }
            for property in props(event, "EXDATE") {
                let (times, days) = self.date_times(property);
                extra.exdates.extend(times);
                extra.exdays.extend(days);
            }
        }
        let has_extra =
            !(extra.rdates.is_empty() && extra.exdates.is_empty() && extra.exdays.is_empty());
        let summary = prop(event, "SUMMARY").map_or("", |p| p.val.as_str());
        self.series.push(Series {
            start,
            rule: rule.map(Box::from),
            numbers: numbers(summary)
                .filter_map(|n| u16::try_from(n).ok())
                .collect(),
            extra: has_extra.then(|| Box::new(extra)),
        });
        let uid = (!is_override)
            .then(|| prop(event, "UID").map(|p| Box::from(p.val.as_str())))
            .flatten();
        self.uids.push(uid);
    }

    /// A date-time property (`DTSTART`, `RECURRENCE-ID`); `None` for a date without a time.
    fn date_time(&mut self, property: &Property<'_>) -> Option<Written> {
        self.date_times(property).0.into_iter().next()
    }

    /// The values of a date-time list property (`EXDATE`, `RDATE`): times, and dates
    /// without one.
    fn date_times(&mut self, property: &Property<'_>) -> (Vec<Written>, Vec<NaiveDate>) {
        let tzid = property
            .params
            .iter()
            .find(|p| is(p.key.as_str(), "TZID"))
            .and_then(|p| p.val.as_ref());
        let zoned_by_id = tzid.map(|id| self.tzid(id.as_str()));
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

    /// The zone of a `TZID`: an IANA name (directly or at the end of a longer id), a
    /// `VTIMEZONE` read so far, or one to resolve at the end.
    fn tzid(&mut self, id: &str) -> Zoned {
        if let Some(zoned) = self.tzids.get(id) {
            return *zoned;
        }
        let zoned = match iana(id).or_else(|| self.zones.get(id).copied()) {
            Some(zone) => Zoned::Zone(zone),
            None => {
                let index = u32::try_from(self.unresolved.len()).unwrap_or(u32::MAX);
                self.unresolved.push(id.to_owned());
                Zoned::Named(index)
            }
        };
        self.tzids.insert(id.to_owned(), zoned);
        zoned
    }

    /// The calendar: every `TZID` resolved, overrides joined to their series.
    fn finish(mut self) -> Calendar {
        let mut resolved = Vec::with_capacity(self.unresolved.len());
        for id in std::mem::take(&mut self.unresolved) {
            resolved.push(match self.zones.get(&id) {
                Some(zone) => Zoned::Zone(*zone),
                None => {
                    self.note(format!(
                        "unknown TZID {id:?}: its times are read in the schedule's zone"
                    ));
                    Zoned::Floating
                }
            });
        }
        let resolve = |w: &mut Written| {
            if let Zoned::Named(index) = w.zoned {
                w.zoned = resolved
                    .get(index as usize)
                    .copied()
                    .unwrap_or(Zoned::Floating);
            }
        };
        for times in self.overrides.values_mut() {
            times.iter_mut().for_each(resolve);
        }
        for (series, uid) in self.series.iter_mut().zip(&self.uids) {
            resolve(&mut series.start);
            let overridden = uid.as_deref().and_then(|uid| self.overrides.get(uid));
            if let Some(overridden) = overridden {
                series
                    .extra
                    .get_or_insert_with(Box::default)
                    .overridden
                    .clone_from(overridden);
            }
            if let Some(extra) = &mut series.extra {
                extra.rdates.iter_mut().for_each(resolve);
                extra.exdates.iter_mut().for_each(resolve);
                extra.rdates.shrink_to_fit();
                extra.exdates.shrink_to_fit();
                extra.exdays.shrink_to_fit();
            }
        }
        Calendar {
            series: self.series.into(),
            events: self.events,
            notes: self.notes,
        }
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
        let none = Extra::default();
        let extra = self.extra.as_deref().unwrap_or(&none);
        locals.extend(extra.rdates.iter().map(|w| w.local_in(zone, schedule)));
        let excluded: Vec<NaiveDateTime> = extra
            .exdates
            .iter()
            .map(|w| w.local_in(zone, schedule))
            .collect();
        let overridden: Vec<DateTime<Utc>> = extra
            .overridden
            .iter()
            .map(|w| w.instant(schedule))
            .collect();
        locals
            .into_iter()
            .filter(|local| !excluded.contains(local) && !extra.exdays.contains(&local.date()))
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

/// The first integer in `summary` that is 1 … `max_cups`.
pub fn cups_in(summary: &str, max_cups: u32) -> Option<u32> {
    first_fitting(numbers(summary), max_cups)
}

/// The integers of a summary that may name cups: runs of one to three digits, 1 … 999.
fn numbers(summary: &str) -> impl Iterator<Item = u32> + '_ {
    summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty() && run.len() <= 3)
        .filter_map(|run| run.parse::<u32>().ok())
        .filter(|n| *n >= 1)
}

/// The first of `numbers` that is 1 … `max_cups`.
fn first_fitting(mut numbers: impl Iterator<Item = u32>, max_cups: u32) -> Option<u32> {
    numbers.find(|n| (1..=max_cups).contains(n))
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
