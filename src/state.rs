//! The state and event documents of SPEC §4, built from the core's [`Status`] and [`Event`].
//!
//! Pure: the caller passes the wall-clock time and the monotonic `now` so that instants the
//! core remembers can be shown as RFC 3339 times. One builder serves MQTT and HTTP, so the
//! retained state and `/status.json` are the same document.

use crate::core::{Event, Fault, FaultSet, Mode, Status, TripReason};
use crate::counters::CountersDoc;
use crate::protocol::ReplyFormat;
use crate::schedule::PlannedBrewDoc;
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};
use std::time::{Instant, SystemTime};

/// The `B/D/state` JSON. Every key is always present; `None` serialises as `null`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StateDoc {
    /// `off`, `preheating`, `brewing`, `keep_warm`, `manual`.
    pub mode: Mode,
    /// The relay as the controller reports it.
    pub heater: Option<OnOff>,
    /// Hot-plate temperature, one decimal.
    pub temperature_c: Option<f64>,
    /// Distance to the water surface, two decimals.
    pub water_distance_in: Option<f64>,
    /// Reservoir level.
    pub water_level_pct: Option<u8>,
    /// Cups a `START` brews.
    pub cups: u32,
    /// Seconds of brewing left (only while brewing). A countdown: its ticks alone are not a
    /// change worth publishing (see [`StateDoc::differs_from`]).
    pub brew_remaining_s: Option<u64>,
    /// When the brew ends (only while brewing): what Home Assistant shows and counts down
    /// itself, so that the state need not go out every second of a brew.
    pub brew_ends_at: Option<String>,
    /// `ON` while keep warm runs.
    pub keep_warm: OnOff,
    /// Interlocks that hold now, as a list of names.
    pub faults: FaultSet,
    /// The latest trip.
    pub last_fault: Option<LastFault>,
    /// Whether the controller answers.
    pub link: Link,
    /// Controller reboots since start.
    pub controller_reboots: u64,
    /// Firmware from the boot banner.
    pub firmware: Option<String>,
    /// `one_line` (MrCoffeeBot 6105f59, 1 s heater timeout) or `three_lines` (05a9a00, none):
    /// how the controller on this link answers; `null` until it has.
    pub reply_format: Option<ReplyFormat>,
    /// When the controller last answered.
    pub updated_at: Option<String>,
    /// The next planned brew that will start, `null` for none or while the schedule is off.
    pub next_brew: Option<PlannedBrewDoc>,
    /// `ON` while scheduled brews start.
    pub schedule: OnOff,
    /// When the calendar was last read successfully (how old the plan's calendar is); `null`
    /// without a calendar or before the first good read.
    pub calendar_read_at: Option<String>,
    /// The household counters (kept across restarts) and whether descaling is due.
    pub counters: CountersDoc,
}

/// `last_fault` of the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LastFault {
    /// What tripped.
    pub reason: TripReason,
    /// When it tripped.
    pub at: String,
}

/// A switch as the state shows it: `ON` or `OFF` (Home Assistant's payloads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnOff {
    /// `ON`.
    On,
    /// `OFF`.
    Off,
}

impl OnOff {
    /// Every value.
    pub const ALL: [OnOff; 2] = [OnOff::On, OnOff::Off];

    /// `ON` or `OFF`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnOff::On => "ON",
            OnOff::Off => "OFF",
        }
    }

    /// Whether it is on.
    pub fn is_on(self) -> bool {
        self == OnOff::On
    }
}

impl From<bool> for OnOff {
    fn from(on: bool) -> Self {
        if on {
            OnOff::On
        } else {
            OnOff::Off
        }
    }
}

/// `link` of the state: whether the controller answers (the device availability).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// The controller answers.
    Up,
    /// The port is gone, or the controller does not answer.
    Down,
}

impl Link {
    /// Every value.
    pub const ALL: [Link; 2] = [Link::Up, Link::Down];

    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Up => "up",
            Link::Down => "down",
        }
    }

    /// What the status page calls it.
    pub fn label(self) -> &'static str {
        match self {
            Link::Up => "Answering",
            Link::Down => "Not answering",
        }
    }
}

/// The JSON form of the state's typed values is their name (`as_str`).
macro_rules! serialize_as_str {
    ($($ty:ty),+) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    )+};
}

serialize_as_str!(Mode, Fault, TripReason, OnOff, Link, ReplyFormat);

/// A fault set is the list of its faults' names, in [`Fault::ALL`] order.
impl Serialize for FaultSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Deadbands under which a reading does not count as a change (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Deadbands {
    /// `mqtt.temperature_deadband_c`.
    pub temperature_c: f64,
    /// `mqtt.water_deadband_in`.
    pub water_in: f64,
}

/// Converts monotonic instants into wall-clock RFC 3339 strings as of one moment.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Monotonic now.
    pub now: Instant,
    /// Wall-clock now.
    pub wall: SystemTime,
}

impl Clock {
    /// RFC 3339 with milliseconds, UTC (`2026-11-24T07:30:00.123Z`), of an instant in the
    /// past or the future.
    pub fn rfc3339(&self, at: Instant) -> String {
        let wall = match at.checked_duration_since(self.now) {
            Some(ahead) => self.wall.checked_add(ahead),
            None => self.wall.checked_sub(self.now.duration_since(at)),
        }
        .unwrap_or(self.wall);
        humantime::format_rfc3339_millis(wall).to_string()
    }

    /// The wall-clock now as RFC 3339.
    pub fn now_rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(self.wall).to_string()
    }
}

impl StateDoc {
    /// Every key of the document, in order (SPEC §4): what MQTT retains and `/status.json`
    /// serves.
    pub const KEYS: [&'static str; 20] = [
        "mode",
        "heater",
        "temperature_c",
        "water_distance_in",
        "water_level_pct",
        "cups",
        "brew_remaining_s",
        "brew_ends_at",
        "keep_warm",
        "faults",
        "last_fault",
        "link",
        "controller_reboots",
        "firmware",
        "reply_format",
        "updated_at",
        "next_brew",
        "schedule",
        "calendar_read_at",
        "counters",
    ];

    /// A document for tests and examples: idle with the link up, four cups, nothing measured
    /// yet. Tests change the keys they are about with `StateDoc { key, ..StateDoc::example() }`.
    #[doc(hidden)]
    pub fn example() -> StateDoc {
        let idle = Status {
            cups: 4,
            link_up: true,
            answering: true,
            ..Status::default()
        };
        // The status holds no instant, so the clock's reading shows nowhere.
        let clock = Clock {
            now: Instant::now(),
            wall: SystemTime::UNIX_EPOCH,
        };
        StateDoc::new(&idle, &clock)
    }

    /// The document for a status.
    pub fn new(status: &Status, clock: &Clock) -> StateDoc {
        StateDoc {
            mode: status.mode,
            heater: status.heater.map(OnOff::from),
            temperature_c: status.temperature_c.map(|t| round(t, 10.0)),
            water_distance_in: status.water_distance_in.map(|d| round(d, 100.0)),
            water_level_pct: status.water_level_pct,
            cups: status.cups,
            brew_remaining_s: status.brew_remaining_s,
            brew_ends_at: status.brew_ends_at.map(|at| clock.rfc3339(at)),
            keep_warm: status.keep_warm.into(),
            faults: status.faults,
            last_fault: status.last_fault.map(|(reason, at)| LastFault {
                reason,
                at: clock.rfc3339(at),
            }),
            link: if status.answering {
                Link::Up
            } else {
                Link::Down
            },
            controller_reboots: status.controller_reboots,
            firmware: status.firmware.clone(),
            reply_format: status.reply_format,
            updated_at: status.updated_at.map(|at| clock.rfc3339(at)),
            // The driver fills in the schedule.
            next_brew: None,
            schedule: OnOff::Off,
            calendar_read_at: None,
            // The driver fills in the counters.
            counters: CountersDoc::default(),
        }
    }

    /// Whether `self` differs from `published` enough to publish: any key but `updated_at`
    /// and the `brew_remaining_s` countdown, with readings compared through their deadbands,
    /// `brew_ends_at` as [`same_end`] says, and the counters as
    /// [`CountersDoc::differs_from`] says.
    pub fn differs_from(&self, published: &StateDoc, deadbands: Deadbands) -> bool {
        let moved = |a: Option<f64>, b: Option<f64>, band: f64| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() >= band.max(f64::EPSILON),
            (a, b) => a.is_some() != b.is_some(),
        };
        moved(
            self.temperature_c,
            published.temperature_c,
            deadbands.temperature_c,
        ) || moved(
            self.water_distance_in,
            published.water_distance_in,
            deadbands.water_in,
        ) || StateDoc {
            temperature_c: published.temperature_c,
            water_distance_in: published.water_distance_in,
            // The level follows the distance's deadband.
            water_level_pct: published.water_level_pct,
            updated_at: published.updated_at.clone(),
            // The countdown follows `brew_ends_at`, which moves only when the end does.
            brew_remaining_s: published.brew_remaining_s,
            brew_ends_at: published.brew_ends_at.clone(),
            counters: published.counters.clone(),
            ..self.clone()
        } != *published
            || !same_end(&self.brew_ends_at, &published.brew_ends_at)
            || self.counters.differs_from(&published.counters)
    }

    /// Whether `self` differs from `published` in anything but the readings (temperature and
    /// water): a change that goes out at once, where one of readings alone is rate-limited.
    pub fn differs_beyond_readings(&self, published: &StateDoc, deadbands: Deadbands) -> bool {
        StateDoc {
            temperature_c: published.temperature_c,
            water_distance_in: published.water_distance_in,
            water_level_pct: published.water_level_pct,
            ..self.clone()
        }
        .differs_from(published, deadbands)
    }

    /// Takes `published`'s `brew_ends_at` when it names the same end (see [`same_end`]): the
    /// end is fixed for a brew, but its wall-clock text is computed afresh from the monotonic
    /// clock at every wake and may move by a millisecond; what goes out keeps one text a brew.
    pub fn keep_brew_end(&mut self, published: &StateDoc) {
        if self.brew_ends_at.is_some() && same_end(&self.brew_ends_at, &published.brew_ends_at) {
            self.brew_ends_at.clone_from(&published.brew_ends_at);
        }
    }

    /// Whether the controller answers (the device availability).
    pub fn online(&self) -> bool {
        self.link == Link::Up
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An event as published on `B/D/event`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDoc(pub Value);

impl EventDoc {
    /// The JSON of a core event at wall time `at`.
    pub fn new(event: &Event, clock: &Clock) -> EventDoc {
        let details = match event {
            Event::BrewStarted { cups } => json!({ "cups": cups }),
            Event::BrewFinished { cups, reason } | Event::BrewAborted { cups, reason } => {
                json!({ "cups": cups, "reason": reason })
            }
            Event::KeepWarmStarted => json!({}),
            Event::KeepWarmFinished { reason } => json!({ "reason": reason }),
            Event::Fault { reason } => json!({ "reason": reason }),
            Event::HeaterAutoOff { after_s } => json!({ "after_s": after_s }),
            Event::ControllerRebooted { count } => json!({ "count": count }),
        };
        Self::with(event.event_type(), details, clock)
    }

    /// A `command_rejected` event. The payload is cut to 200 characters, invalid UTF-8
    /// replaced.
    pub fn command_rejected(command: &str, payload: &[u8], reason: &str, clock: &Clock) -> Self {
        let head = &payload[..payload.len().min(800)];
        let text: String = String::from_utf8_lossy(head).chars().take(200).collect();
        Self::with(
            "command_rejected",
            json!({ "command": command, "payload": text, "reason": reason }),
            clock,
        )
    }

    /// A `brew_skipped` event: a planned brew that did not start, and why.
    pub fn brew_skipped(brew: &PlannedBrewDoc, reason: &str, clock: &Clock) -> Self {
        Self::with(
            "brew_skipped",
            json!({
                "reason": reason,
                "ready_at": brew.ready_at,
                "cups": brew.cups,
                "source": brew.source,
            }),
            clock,
        )
    }

    fn with(event_type: &str, details: Value, clock: &Clock) -> Self {
        let mut map = Map::new();
        map.insert("event_type".into(), event_type.into());
        map.insert("at".into(), clock.now_rfc3339().into());
        if let Value::Object(details) = details {
            map.extend(details);
        }
        EventDoc(Value::Object(map))
    }

    /// The `event_type`.
    pub fn event_type(&self) -> &str {
        self.0["event_type"].as_str().unwrap_or_default()
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        self.0.to_string()
    }
}

/// Whether two `brew_ends_at` values name the same end of a brew: both absent, or both
/// present and less than a second apart (the same end, seen at two wakes; a new end is a
/// new brew, seconds away).
pub fn same_end(a: &Option<String>, b: &Option<String>) -> bool {
    let parse = |t: &str| humantime::parse_rfc3339_weak(t).ok();
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => match (parse(a), parse(b)) {
            (Some(a), Some(b)) => {
                let apart = a.duration_since(b).or_else(|_| b.duration_since(a));
                apart.is_ok_and(|d| d < std::time::Duration::from_secs(1))
            }
            _ => false,
        },
        _ => false,
    }
}

fn round(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Cutoff;
    use std::time::Duration;

    const TRIP_OVERTEMP: TripReason = TripReason::Fault(Fault::Overtemp);
    const TRIP_FEED_GAP: TripReason = TripReason::Cutoff(Cutoff::FeedGap);
    const TRIP_FIRMWARE_CHANGED: TripReason = TripReason::Cutoff(Cutoff::FirmwareChanged);

    fn status(now: Instant) -> Status {
        Status {
            mode: Mode::Brewing,
            heater: Some(true),
            temperature_c: Some(92.44),
            water_distance_in: Some(3.523),
            water_level_pct: Some(61),
            cups: 4,
            brew_remaining_s: Some(118),
            brew_ends_at: Some(now + Duration::from_millis(117_500)),
            keep_warm: false,
            faults: FaultSet::default(),
            last_fault: None,
            link_up: true,
            answering: true,
            controller_reboots: 0,
            firmware: Some("MrCoffeeBot v2.0".into()),
            reply_format: Some(ReplyFormat::OneLine),
            updated_at: Some(now - Duration::from_millis(500)),
        }
    }

    fn clock(now: Instant) -> Clock {
        Clock {
            now,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
        }
    }

    #[test]
    fn state_json_has_every_key_of_the_spec() {
        let now = Instant::now();
        let doc = StateDoc::new(&status(now), &clock(now));
        let v: Value = serde_json::from_str(&doc.to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for key in StateDoc::KEYS {
            assert!(keys.contains(&key), "{key} missing from {v}");
        }
        assert_eq!(keys.len(), StateDoc::KEYS.len());
        assert_eq!(v["reply_format"], "one_line");
        assert_eq!(v["temperature_c"], 92.4);
        assert_eq!(v["water_distance_in"], 3.52);
        assert_eq!(v["heater"], "ON");
        assert_eq!(v["last_fault"], Value::Null);
        assert_eq!(v["updated_at"], "2026-11-18T11:06:39.500Z");
    }

    /// A status with nothing known yet, as at start before the controller answered.
    fn unknown() -> Status {
        Status {
            cups: 4,
            ..Status::default()
        }
    }

    /// The state JSON, byte for byte, for nulls, every mode, every fault, trips and both
    /// reply formats: what MQTT retains and `/status.json` serves must not move.
    #[test]
    fn state_json_is_byte_for_byte_stable() {
        let now = Instant::now();
        let clock = clock(now);
        let json = |s: &Status| StateDoc::new(s, &clock).to_json();
        assert_eq!(
            json(&unknown()),
            r#"{"mode":"off","heater":null,"temperature_c":null,"water_distance_in":null,"water_level_pct":null,"cups":4,"brew_remaining_s":null,"brew_ends_at":null,"keep_warm":"OFF","faults":[],"last_fault":null,"link":"down","controller_reboots":0,"firmware":null,"reply_format":null,"updated_at":null,"next_brew":null,"schedule":"OFF","calendar_read_at":null,"counters":{"cups_brewed_total":0,"brews_total":0,"heater_on_seconds_total":0.0,"energy_kwh_total":0.0,"descale_due":false}}"#
        );
        assert_eq!(
            json(&status(now)),
            r#"{"mode":"brewing","heater":"ON","temperature_c":92.4,"water_distance_in":3.52,"water_level_pct":61,"cups":4,"brew_remaining_s":118,"brew_ends_at":"2026-11-18T11:08:37.500Z","keep_warm":"OFF","faults":[],"last_fault":null,"link":"up","controller_reboots":0,"firmware":"MrCoffeeBot v2.0","reply_format":"one_line","updated_at":"2026-11-18T11:06:39.500Z","next_brew":null,"schedule":"OFF","calendar_read_at":null,"counters":{"cups_brewed_total":0,"brews_total":0,"heater_on_seconds_total":0.0,"energy_kwh_total":0.0,"descale_due":false}}"#
        );
        let modes: Vec<String> = Mode::ALL
            .iter()
            .map(|&mode| {
                let s = Status {
                    mode,
                    heater: Some(mode != Mode::Off),
                    keep_warm: mode == Mode::KeepWarm,
                    brew_remaining_s: None,
                    ..status(now)
                };
                let v: Value = serde_json::from_str(&json(&s)).unwrap();
                format!("{} {} {}", v["mode"], v["heater"], v["keep_warm"])
            })
            .collect();
        assert_eq!(
            modes,
            [
                r#""off" "OFF" "OFF""#,
                r#""preheating" "ON" "OFF""#,
                r#""brewing" "ON" "OFF""#,
                r#""keep_warm" "ON" "ON""#,
                r#""manual" "ON" "OFF""#,
            ]
        );
        let mut faults = FaultSet::default();
        for fault in Fault::ALL.into_iter().rev() {
            faults.insert(fault);
        }
        let tripped = Status {
            mode: Mode::Off,
            heater: Some(false),
            temperature_c: Some(-127.0),
            water_distance_in: Some(0.004),
            water_level_pct: Some(0),
            cups: 12,
            faults,
            last_fault: Some((TRIP_OVERTEMP, now - Duration::from_secs(61))),
            link_up: true,
            answering: false,
            controller_reboots: 3,
            firmware: Some("MrCoffeeBot \"v2\" <b>".into()),
            reply_format: Some(ReplyFormat::ThreeLines),
            ..status(now)
        };
        assert_eq!(
            json(&tripped),
            r#"{"mode":"off","heater":"OFF","temperature_c":-127.0,"water_distance_in":0.0,"water_level_pct":0,"cups":12,"brew_remaining_s":118,"brew_ends_at":"2026-11-18T11:08:37.500Z","keep_warm":"OFF","faults":["link_down","stale_telemetry","sensor_error","overtemp","dry_boil","heater_mismatch","no_water"],"last_fault":{"reason":"overtemp","at":"2026-11-18T11:05:39.000Z"},"link":"down","controller_reboots":3,"firmware":"MrCoffeeBot \"v2\" <b>","reply_format":"three_lines","updated_at":"2026-11-18T11:06:39.500Z","next_brew":null,"schedule":"OFF","calendar_read_at":null,"counters":{"cups_brewed_total":0,"brews_total":0,"heater_on_seconds_total":0.0,"energy_kwh_total":0.0,"descale_due":false}}"#
        );
        let last_fault = |reason| {
            let s = Status {
                last_fault: Some((reason, now)),
                ..unknown()
            };
            let v: Value = serde_json::from_str(&json(&s)).unwrap();
            v["last_fault"].to_string()
        };
        assert_eq!(
            [TRIP_FEED_GAP, TRIP_FIRMWARE_CHANGED].map(last_fault),
            [
                r#"{"at":"2026-11-18T11:06:40.000Z","reason":"feed_gap"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","reason":"firmware_changed"}"#,
            ]
        );
    }

    /// The event JSON of every core event and of a rejection, byte for byte.
    #[test]
    fn event_json_is_byte_for_byte_stable() {
        let now = Instant::now();
        let clock = clock(now);
        let json = |e: Event| EventDoc::new(&e, &clock).to_json();
        assert_eq!(
            [
                json(Event::BrewStarted { cups: 2 }),
                json(Event::BrewFinished {
                    cups: 2,
                    reason: "done"
                }),
                json(Event::BrewAborted {
                    cups: 3,
                    reason: "preheat_timeout"
                }),
                json(Event::KeepWarmStarted),
                json(Event::KeepWarmFinished { reason: "timeout" }),
                json(Event::HeaterAutoOff { after_s: 900.0 }),
                json(Event::Fault {
                    reason: TRIP_FEED_GAP
                }),
                json(Event::Fault {
                    reason: TRIP_OVERTEMP
                }),
                json(Event::ControllerRebooted { count: 2 }),
                EventDoc::command_rejected("cups", b"99", "cups must be 1..12, got 99", &clock)
                    .to_json(),
            ],
            [
                r#"{"at":"2026-11-18T11:06:40.000Z","cups":2,"event_type":"brew_started"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","cups":2,"event_type":"brew_finished","reason":"done"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","cups":3,"event_type":"brew_aborted","reason":"preheat_timeout"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","event_type":"keep_warm_started"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","event_type":"keep_warm_finished","reason":"timeout"}"#,
                r#"{"after_s":900.0,"at":"2026-11-18T11:06:40.000Z","event_type":"heater_auto_off"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","event_type":"fault","reason":"feed_gap"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","event_type":"fault","reason":"overtemp"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","count":2,"event_type":"controller_rebooted"}"#,
                r#"{"at":"2026-11-18T11:06:40.000Z","command":"cups","event_type":"command_rejected","payload":"99","reason":"cups must be 1..12, got 99"}"#,
            ]
        );
    }

    /// The dead-bands the change tests compare with.
    const BANDS: Deadbands = Deadbands {
        temperature_c: 0.3,
        water_in: 0.05,
    };

    #[test]
    fn jitter_inside_the_deadband_is_not_a_change() {
        let now = Instant::now();
        let a = StateDoc::new(&status(now), &clock(now));
        let mut s = status(now);
        s.temperature_c = Some(92.6);
        s.water_distance_in = Some(3.54);
        s.updated_at = Some(now);
        assert!(!StateDoc::new(&s, &clock(now)).differs_from(&a, BANDS));
        s.temperature_c = Some(92.8);
        assert!(StateDoc::new(&s, &clock(now)).differs_from(&a, BANDS));
        let mut s = status(now);
        s.temperature_c = None;
        assert!(StateDoc::new(&s, &clock(now)).differs_from(&a, BANDS));
    }

    #[test]
    fn readings_alone_are_told_from_other_changes() {
        let now = Instant::now();
        let a = StateDoc::new(&status(now), &clock(now));
        let mut s = status(now);
        s.temperature_c = Some(95.0);
        s.water_distance_in = Some(4.0);
        let readings = StateDoc::new(&s, &clock(now));
        assert!(readings.differs_from(&a, BANDS));
        assert!(!readings.differs_beyond_readings(&a, BANDS));
        s.heater = Some(!s.heater.unwrap_or(false));
        let relay = StateDoc::new(&s, &clock(now));
        assert!(relay.differs_beyond_readings(&a, BANDS));
    }

    #[test]
    fn a_countdown_tick_is_not_a_change_but_a_new_brew_end_is() {
        let now = Instant::now();
        let a = StateDoc::new(&status(now), &clock(now));
        assert_eq!(a.brew_ends_at.as_deref(), Some("2026-11-18T11:08:37.500Z"));
        // A second later: the countdown ticked, the end is the same instant.
        let later = Clock {
            now: now + Duration::from_secs(1),
            wall: clock(now).wall + Duration::from_secs(1),
        };
        let mut s = status(now);
        s.brew_remaining_s = Some(117);
        let ticked = StateDoc::new(&s, &later);
        assert_ne!(ticked.brew_remaining_s, a.brew_remaining_s);
        assert!(!ticked.differs_from(&a, BANDS));
        // The same end, its text a millisecond off (the two clocks read at another wake).
        let mut jitter = ticked.clone();
        jitter.brew_ends_at = Some("2026-11-18T11:08:37.501Z".into());
        assert!(!jitter.differs_from(&a, BANDS));
        jitter.keep_brew_end(&a);
        assert_eq!(jitter.brew_ends_at, a.brew_ends_at);
        // The end moved (a new brew): a change, and the new end is kept.
        s.brew_ends_at = Some(now + Duration::from_secs(200));
        let mut moved = StateDoc::new(&s, &later);
        assert!(moved.differs_from(&a, BANDS));
        moved.keep_brew_end(&a);
        assert_eq!(
            moved.brew_ends_at.as_deref(),
            Some("2026-11-18T11:10:00.000Z")
        );
        // The brew ended: a change.
        s.brew_ends_at = None;
        assert!(StateDoc::new(&s, &later).differs_from(&a, BANDS));
        let none = StateDoc::new(&s, &later);
        assert!(a.differs_from(&none, BANDS));
    }

    #[test]
    fn rejected_payloads_are_cut_and_made_valid_text() {
        let now = Instant::now();
        let long = vec![b'x'; 10_000];
        let e = EventDoc::command_rejected("brew", &long, "bad", &clock(now));
        assert_eq!(e.0["payload"].as_str().unwrap().len(), 200);
        let e = EventDoc::command_rejected("brew", b"\xff\xfeON", "bad", &clock(now));
        assert_eq!(e.0["payload"], "\u{fffd}\u{fffd}ON");
        assert_eq!(e.event_type(), "command_rejected");
    }
}
