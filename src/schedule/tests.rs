//! The planner in virtual time: DST days in two zones, calendars as real exports write them,
//! merging, limits, and properties over random schedules.

use super::calendar::{cups_in, local, MAX_BYTES, MAX_EVENTS};
use super::*;
use proptest::prelude::*;

const PREHEAT: Duration = Duration::from_secs(120);

fn timing() -> BrewTiming {
    BrewTiming {
        seconds_per_cup: 52.5,
        max_cups: 12,
        default_cups: 4,
    }
}

/// A UTC instant from RFC 3339 text.
pub(super) fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn berlin() -> Tz {
    "Europe/Berlin".parse().unwrap()
}

fn new_york() -> Tz {
    "America/New_York".parse().unwrap()
}

/// `cups` ready at `time` (`HH:MM`) every day of the week.
pub(super) fn every_day(time: &str, cups: u32) -> Weekly {
    Weekly {
        days: vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ],
        ready_at: time_of_day(time).unwrap(),
        cups,
    }
}

/// A planner in `zone` with these weekly brews and calendar text.
pub(super) fn planner(zone: Tz, weekly: Vec<Weekly>, calendar: Option<&str>) -> Planner {
    Planner {
        zone,
        weekly,
        calendar: calendar.map(|text| Calendar::parse(text).unwrap()),
        timing: timing(),
    }
}

/// The ready times of a plan, in the zone's RFC 3339.
fn ready(planner: &Planner, from: &str, count: usize) -> Vec<String> {
    planner
        .plan(at(from), count, PREHEAT)
        .iter()
        .map(|b| rfc3339(b.ready_at, planner.zone))
        .collect()
}

/// A calendar with the Europe/Berlin and America/New_York VTIMEZONEs (as Google exports
/// them) around `events`.
fn ics(events: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Google Inc//Google Calendar 70.9054//EN\r\n\
X-WR-CALNAME:Coffee\r\nX-WR-TIMEZONE:Europe/Berlin\r\n\
BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nX-LIC-LOCATION:Europe/Berlin\r\n\
BEGIN:DAYLIGHT\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nTZNAME:CEST\r\nDTSTART:19700329T020000\r\n\
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nEND:DAYLIGHT\r\n\
BEGIN:STANDARD\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nTZNAME:CET\r\nDTSTART:19701025T030000\r\n\
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n\
BEGIN:VTIMEZONE\r\nTZID:Eastern Time\r\nX-LIC-LOCATION:America/New_York\r\nEND:VTIMEZONE\r\n\
{events}END:VCALENDAR\r\n"
    )
}

fn vevent(lines: &str) -> String {
    let mut text = String::from("BEGIN:VEVENT\r\n");
    for line in lines.lines() {
        text.push_str(line.trim());
        text.push_str("\r\n");
    }
    text.push_str("END:VEVENT\r\n");
    text
}

#[test]
fn weekly_entries_start_ready_at_minus_preheat_and_cups() {
    let p = planner(berlin(), vec![every_day("06:45", 4)], None);
    let brews = p.plan(at("2026-06-01T00:00:00Z"), 2, PREHEAT);
    assert_eq!(brews.len(), 2);
    let doc = brews[0].doc(p.zone);
    assert_eq!(doc.ready_at, "2026-06-01T06:45:00+02:00");
    // 120 s preheat + 4 × 52.5 s = 330 s.
    assert_eq!(doc.start_at, "2026-06-01T06:39:30+02:00");
    assert_eq!(doc.cups, 4);
    assert_eq!(doc.source, Source::Weekly);
    assert_eq!(
        doc.to_string(),
        r#"{"ready_at":"2026-06-01T06:45:00+02:00","start_at":"2026-06-01T06:39:30+02:00","cups":4,"source":"weekly"}"#
    );
}

#[test]
fn weekdays_only_and_count_and_from() {
    let mut weekdays = every_day("06:45", 4);
    weekdays.days = vec![
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
    ];
    let p = planner(berlin(), vec![weekdays], None);
    // Friday 2026-06-05 after 06:45: next is Monday.
    assert_eq!(
        ready(&p, "2026-06-05T05:00:00Z", 2),
        ["2026-06-08T06:45:00+02:00", "2026-06-09T06:45:00+02:00"]
    );
    // From just before a ready time, that brew is still planned (its start may be past).
    assert_eq!(
        ready(&p, "2026-06-05T04:44:00Z", 1),
        ["2026-06-05T06:45:00+02:00"]
    );
    assert_eq!(p.plan(at("2026-06-05T04:44:00Z"), 25, PREHEAT).len(), 25);
    assert!(p.plan(at("2026-06-05T04:44:00Z"), 0, PREHEAT).is_empty());
}

/// A daily brew across each DST change: on the spring day its time falls in the gap it brews
/// at the first instant after the gap; on the fall day its time comes twice and it brews once.
#[test]
fn daily_brews_across_dst_changes() {
    // (zone, daily ready time, from, the ready times that follow)
    let cases: [(Tz, &str, &str, &[&str]); 4] = [
        (
            berlin(),
            "02:30",
            "2026-03-27T12:00:00Z",
            &[
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
            ],
        ),
        (
            berlin(),
            "02:30",
            "2026-10-24T12:00:00Z",
            &[
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
                "2026-10-27T02:30:00+01:00",
            ],
        ),
        (
            new_york(),
            "02:15",
            "2026-03-07T12:00:00Z",
            &["2026-03-08T03:00:00-04:00", "2026-03-09T02:15:00-04:00"],
        ),
        (
            new_york(),
            "01:30",
            "2026-10-31T12:00:00Z",
            &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
    ];
    for (zone, time, from, expected) in cases {
        let p = planner(zone, vec![every_day(time, 2)], None);
        assert_eq!(
            ready(&p, from, expected.len()),
            expected,
            "{time} daily from {from}"
        );
    }
}

#[test]
fn calendar_rrule_across_dst_in_both_zones() {
    let text = ics(&(vevent(
        "UID:berlin@example
         DTSTART;TZID=Europe/Berlin:20260320T023000
         DTEND;TZID=Europe/Berlin:20260320T030000
         RRULE:FREQ=DAILY
         SUMMARY:Coffee 3",
    ) + &vevent(
        "UID:ny@example
         DTSTART;TZID=Eastern Time:20261020T013000
         RRULE:FREQ=DAILY
         SUMMARY:Coffee 5",
    )));
    let p = planner(berlin(), vec![], Some(&text));
    let brews = p.plan(at("2026-03-28T12:00:00Z"), 2, PREHEAT);
    let docs: Vec<_> = brews.iter().map(|b| b.doc(p.zone)).collect();
    assert_eq!(docs[0].ready_at, "2026-03-29T03:00:00+02:00");
    assert_eq!(docs[0].cups, 3);
    assert_eq!(docs[0].source, Source::Calendar);
    assert_eq!(docs[1].ready_at, "2026-03-30T02:30:00+02:00");
    let ny = planner(new_york(), vec![], Some(&text));
    let ready_ny: Vec<String> = ny
        .plan(at("2026-10-31T12:00:00Z"), 10, PREHEAT)
        .iter()
        .filter(|b| b.cups == 5)
        .take(2)
        .map(|b| rfc3339(b.ready_at, new_york()))
        .collect();
    assert_eq!(
        ready_ny,
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    );
}

#[test]
fn rrule_with_exdate_rdate_and_a_moved_occurrence() {
    // Mondays, Wednesdays and Fridays at 06:45, every other week, ten times; one Wednesday
    // excluded, one extra Sunday, and one Friday moved to 08:00 on Saturday.
    let text = ics(&(vevent(
        "UID:series@example
         DTSTART;TZID=Europe/Berlin:20260601T064500
         RRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE,FR;COUNT=10
         EXDATE;TZID=Europe/Berlin:20260603T064500
         RDATE;TZID=Europe/Berlin:20260607T093000
         SUMMARY:Coffee",
    ) + &vevent(
        "UID:series@example
         RECURRENCE-ID;TZID=Europe/Berlin:20260605T064500
         DTSTART;TZID=Europe/Berlin:20260606T080000
         SUMMARY:Late coffee 8",
    )));
    let p = planner(berlin(), vec![], Some(&text));
    let brews = p.plan(at("2026-05-31T00:00:00Z"), 20, PREHEAT);
    let got: Vec<(String, u32)> = brews
        .iter()
        .map(|b| (rfc3339(b.ready_at, p.zone), b.cups))
        .collect();
    let want = [
        ("2026-06-01T06:45:00+02:00", 4),
        ("2026-06-06T08:00:00+02:00", 8),
        ("2026-06-07T09:30:00+02:00", 4),
        ("2026-06-15T06:45:00+02:00", 4),
        ("2026-06-17T06:45:00+02:00", 4),
        ("2026-06-19T06:45:00+02:00", 4),
        ("2026-06-29T06:45:00+02:00", 4),
        ("2026-07-01T06:45:00+02:00", 4),
        ("2026-07-03T06:45:00+02:00", 4),
        ("2026-07-13T06:45:00+02:00", 4),
    ];
    let want: Vec<(String, u32)> = want.iter().map(|(t, c)| ((*t).to_owned(), *c)).collect();
    assert_eq!(got, want);
}

#[test]
fn rrule_until_in_utc_includes_the_last_occurrence() {
    // Google writes UNTIL as the last occurrence in UTC.
    let text = ics(&vevent(
        "UID:until@example
         DTSTART;TZID=Europe/Berlin:20260601T064500
         RRULE:FREQ=DAILY;UNTIL=20260603T044500Z",
    ));
    let p = planner(berlin(), vec![], Some(&text));
    assert_eq!(
        ready(&p, "2026-05-31T00:00:00Z", 10),
        [
            "2026-06-01T06:45:00+02:00",
            "2026-06-02T06:45:00+02:00",
            "2026-06-03T06:45:00+02:00"
        ]
    );
}

#[test]
fn utc_floating_all_day_and_cancelled_events() {
    let text = ics(&(vevent(
        "UID:utc@example
         DTSTART:20260610T050000Z
         SUMMARY:2 cups",
    ) + &vevent(
        "UID:floating@example
         DTSTART:20260611T070000
         SUMMARY:Coffee for 30 people, 6 cups",
    ) + &vevent(
        "UID:allday@example
         DTSTART;VALUE=DATE:20260612
         SUMMARY:Holiday",
    ) + &vevent(
        "UID:cancelled@example
         DTSTART:20260613T070000
         STATUS:CANCELLED",
    )));
    // Floating times are in the schedule's zone.
    let p = planner(new_york(), vec![], Some(&text));
    let brews = p.plan(at("2026-06-01T00:00:00Z"), 10, PREHEAT);
    let docs: Vec<_> = brews.iter().map(|b| b.doc(p.zone)).collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].ready_at, "2026-06-10T01:00:00-04:00");
    assert_eq!(docs[0].cups, 2);
    assert_eq!(docs[1].ready_at, "2026-06-11T07:00:00-04:00");
    assert_eq!(
        docs[1].cups, 6,
        "30 is more than max_cups; 6 is the first that fits"
    );
    let in_berlin = planner(berlin(), vec![], Some(&text));
    assert_eq!(
        ready(&in_berlin, "2026-06-01T00:00:00Z", 10)[1],
        "2026-06-11T07:00:00+02:00"
    );
}

#[test]
fn entries_ready_within_one_brew_merge_into_the_earlier_time_with_the_larger_cups() {
    let text = ics(&vevent(
        "UID:meeting@example
         DTSTART;TZID=Europe/Berlin:20260601T065000
         SUMMARY:Coffee 6",
    ));
    let p = planner(berlin(), vec![every_day("06:45", 4)], Some(&text));
    let brews = p.plan(at("2026-06-01T00:00:00Z"), 2, PREHEAT);
    let doc = brews[0].doc(p.zone);
    assert_eq!(doc.ready_at, "2026-06-01T06:45:00+02:00");
    assert_eq!(doc.cups, 6);
    assert_eq!(doc.source, Source::Calendar);
    // 120 + 6 × 52.5 = 435 s.
    assert_eq!(doc.start_at, "2026-06-01T06:37:45+02:00");
    assert_eq!(brews[1].doc(p.zone).ready_at, "2026-06-02T06:45:00+02:00");
    // Far enough apart, they stay two brews.
    let p = planner(
        berlin(),
        vec![every_day("06:45", 4), every_day("07:00", 2)],
        None,
    );
    assert_eq!(
        ready(&p, "2026-06-01T00:00:00Z", 2),
        ["2026-06-01T06:45:00+02:00", "2026-06-01T07:00:00+02:00"]
    );
}

#[test]
fn calendars_too_large_too_many_or_not_calendars_are_refused() {
    let big = ics(&"X".repeat(MAX_BYTES));
    assert!(matches!(
        Calendar::parse(&big),
        Err(CalendarError::TooLarge(_))
    ));
    let many = ics(&vevent("DTSTART:20260610T050000Z").repeat(MAX_EVENTS + 1));
    assert_eq!(
        Calendar::parse(&many).unwrap_err().to_string(),
        "the calendar holds more than 10000 events (10001)"
    );
    assert!(matches!(
        Calendar::parse("<html>500 Internal Server Error</html>"),
        Err(CalendarError::Invalid(_))
    ));
    assert!(Calendar::parse("").is_err());
    let ok = ics(&vevent("DTSTART:20260610T050000Z").repeat(MAX_EVENTS));
    assert_eq!(Calendar::parse(&ok).unwrap().events, MAX_EVENTS);
}

#[test]
fn a_calendar_is_read_component_by_component_as_it_arrives() {
    // A folded summary and a folded DTSTART, the zone's VTIMEZONE after the event that names
    // it, blank lines; read through a reader that hands out a few bytes at a time.
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\n\r\n\
BEGIN:VEVENT\r\nUID:a@example\r\nDTSTART;TZID=Eastern Ti\r\n me:20260610T060000\r\n\
SUMMARY:Coffee\r\n  for 3\r\nEND:VEVENT\r\n\
BEGIN:VTIMEZONE\r\nTZID:Eastern Time\r\nX-LIC-LOCATION:America/New_York\r\nEND:VTIMEZONE\r\n\
X-WR-CALNAME:Coffee\r\nEND:VCALENDAR\r\n\r\n";
    let whole = Calendar::parse(text).unwrap();
    let trickled = calendar::read(std::io::BufReader::with_capacity(3, text.as_bytes())).unwrap();
    for calendar in [whole, trickled] {
        assert_eq!(calendar.events, 1);
        assert!(calendar.notes.is_empty(), "{:?}", calendar.notes);
        let p = Planner {
            zone: berlin(),
            weekly: vec![],
            calendar: Some(calendar),
            timing: timing(),
        };
        let brews = p.plan(at("2026-06-01T00:00:00Z"), 10, PREHEAT);
        assert_eq!(brews.len(), 1);
        assert_eq!(
            brews[0].doc(new_york()).ready_at,
            "2026-06-10T06:00:00-04:00"
        );
        assert_eq!(brews[0].cups, 3);
    }
}

#[test]
fn a_cut_off_or_damaged_calendar_is_refused_for_its_first_reason() {
    let good = ics(&vevent("DTSTART:20260610T050000Z"));
    assert!(Calendar::parse(&good).is_ok());
    // A download cut off anywhere is no calendar (the last good one stays in use).
    for cut in [good.len() - 3, good.len() / 2, 20] {
        assert!(
            matches!(
                Calendar::parse(&good[..cut]),
                Err(CalendarError::Invalid(_))
            ),
            "cut at {cut}"
        );
    }
    for bad in [
        good.clone() + "BEGIN:VCALENDAR\r\n",
        good.replace("END:VCALENDAR", "END:VEVENT"),
        good.replace("END:VEVENT", "END:VTODO"),
        good.replace("VERSION:2.0", "<html>"),
        ics(&vevent("DTSTART:20260610T050000Z")).replace("BEGIN:VCALENDAR", "BEGIN:VEVENT"),
    ] {
        assert!(
            matches!(Calendar::parse(&bad), Err(CalendarError::Invalid(_))),
            "{bad}"
        );
    }
    let mut bytes = good.clone().into_bytes();
    bytes.splice(10..10, [0xff, 0xfe]);
    assert!(matches!(
        calendar::read(bytes.as_slice()),
        Err(calendar::ReadError::NotText)
    ));
    // Too large wins over not text and not a calendar: what is read is counted to the end.
    bytes.extend(std::iter::repeat_n(b'x', MAX_BYTES));
    assert!(matches!(
        calendar::read(bytes.as_slice()),
        Err(calendar::ReadError::Calendar(CalendarError::TooLarge(n))) if n == MAX_BYTES + 1
    ));
    // Too many events wins over a damaged end.
    let many = ics(&vevent("DTSTART:20260610T050000Z").repeat(MAX_EVENTS + 1));
    assert_eq!(
        Calendar::parse(&many[..many.len() - 5])
            .unwrap_err()
            .to_string(),
        "the calendar holds more than 10000 events (10001)"
    );
}

#[test]
fn unknown_zones_and_sub_daily_rules_are_noted() {
    let text = ics(&(vevent(
        "UID:a@example
         DTSTART;TZID=Mars/Olympus:20260610T050000",
    ) + &vevent(
        "UID:b@example
         DTSTART:20260610T050000Z
         RRULE:FREQ=MINUTELY",
    ) + &vevent(
        "UID:c@example
         DTSTART;TZID=/mozilla.org/20050126_1/America/New_York:20260611T050000",
    )));
    let calendar = Calendar::parse(&text).unwrap();
    assert_eq!(calendar.notes.len(), 2, "{:?}", calendar.notes);
    let p = Planner {
        zone: berlin(),
        weekly: vec![],
        calendar: Some(calendar),
        timing: timing(),
    };
    assert_eq!(
        ready(&p, "2026-06-01T00:00:00Z", 10),
        ["2026-06-10T05:00:00+02:00", "2026-06-11T11:00:00+02:00"]
    );
}

#[test]
fn cups_come_from_the_first_fitting_number() {
    assert_eq!(cups_in("Coffee 6", 12), Some(6));
    assert_eq!(cups_in("6 cups", 12), Some(6));
    assert_eq!(cups_in("Coffee", 12), None);
    assert_eq!(cups_in("Team of 40: 10 cups", 12), Some(10));
    assert_eq!(cups_in("0 cups", 12), None);
    assert_eq!(cups_in("99999999999999999999 2", 12), Some(2));
}

#[test]
fn the_expected_preheat_is_the_median_of_the_last_five() {
    let mut history = PreheatHistory::new(Duration::from_secs(180));
    assert_eq!(history.expected(), Duration::from_secs(180));
    for s in [100, 300, 110] {
        history.record(Duration::from_secs(s));
    }
    assert_eq!(history.expected(), Duration::from_secs(110));
    for s in [120, 130, 140] {
        history.record(Duration::from_secs(s));
    }
    // 100 fell out: 110 120 130 140 300.
    assert_eq!(history.expected(), Duration::from_secs(130));
}

#[test]
fn localize_resolves_gaps_and_folds() {
    assert_eq!(
        rfc3339(localize(berlin(), local("2026-03-29", "02:59")), berlin()),
        "2026-03-29T03:00:00+02:00"
    );
    assert_eq!(
        rfc3339(localize(berlin(), local("2026-10-25", "02:00")), berlin()),
        "2026-10-25T02:00:00+02:00"
    );
}

fn arbitrary_weekly() -> impl Strategy<Value = Weekly> {
    (
        proptest::collection::vec(0u8..7, 1..7),
        0u32..24,
        0u32..60,
        1u32..=12,
    )
        .prop_map(|(days, h, m, cups)| Weekly {
            days: days
                .into_iter()
                .map(|d| Weekday::try_from(d).unwrap())
                .collect(),
            ready_at: NaiveTime::from_hms_opt(h, m, 0).unwrap(),
            cups,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// No two planned brews overlap, each starts early enough for its cups, and the plan is
    /// sorted and as long as asked — whatever the entries and the zone.
    #[test]
    fn planned_brews_never_overlap(
        weekly in proptest::collection::vec(arbitrary_weekly(), 0..5),
        events in proptest::collection::vec((0i64..(30 * 24 * 60), 0u32..15), 0..30),
        zone in prop_oneof![Just("Europe/Berlin"), Just("America/New_York"), Just("UTC"), Just("Australia/Lord_Howe")],
        start in 0i64..(365 * 24 * 60),
        preheat_s in 0u64..600,
        count in 1usize..40,
    ) {
        let base = at("2026-01-01T00:00:00Z");
        let from = base + chrono::Duration::minutes(start);
        let mut text = String::new();
        for (minute, cups) in &events {
            let when = (from + chrono::Duration::minutes(*minute)).format("%Y%m%dT%H%M%SZ");
            text.push_str(&vevent(&format!("DTSTART:{when}\nSUMMARY:Coffee {cups}")));
        }
        let p = Planner {
            zone: zone.parse().unwrap(),
            weekly: weekly.clone(),
            calendar: Some(Calendar::parse(&ics(&text)).unwrap()),
            timing: timing(),
        };
        let preheat = Duration::from_secs(preheat_s);
        let brews = p.plan(from, count, preheat);
        for brew in &brews {
            prop_assert!(brew.ready_at >= from);
            prop_assert!((1..=12).contains(&brew.cups));
            let brewing = chrono::Duration::milliseconds((52.5 * f64::from(brew.cups) * 1000.0) as i64);
            prop_assert!(brew.start_at <= brew.ready_at - brewing);
            prop_assert!(brew.start_at <= brew.ready_at - brewing - chrono::Duration::seconds(preheat_s as i64));
        }
        for pair in brews.windows(2) {
            prop_assert!(pair[0].ready_at < pair[1].ready_at);
            prop_assert!(pair[1].start_at >= pair[0].ready_at, "{:?}", pair);
        }
        if !weekly.is_empty() {
            prop_assert_eq!(brews.len(), count);
        }
    }
}

#[test]
fn an_occurrence_just_before_from_does_not_use_up_the_count() {
    // After `SKIP`, the plan starts one second after the skipped brew's ready time, which the
    // merging window still holds.
    let text = ics(&vevent(
        "UID:daily@example
         DTSTART:20261201T231800Z
         RRULE:FREQ=DAILY",
    ));
    let p = planner(chrono_tz::UTC, vec![], Some(&text));
    assert_eq!(
        ready(&p, "2026-12-01T23:18:01Z", 1),
        ["2026-12-02T23:18:00+00:00"]
    );
    assert_eq!(
        ready(&p, "2026-12-01T23:18:01Z", 2),
        ["2026-12-02T23:18:00+00:00", "2026-12-03T23:18:00+00:00"]
    );
}
