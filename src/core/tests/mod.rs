//! The core in virtual time: a rig answers every command like the controller would, and
//! `run_for` jumps from one deadline to the next. Nothing sleeps.
// The clock is read once per test for a base instant; every later instant is virtual.
#![allow(clippy::disallowed_methods)]

use super::*;
use proptest::prelude::*;

mod interlocks;
mod properties;

fn limits() -> Limits {
    Limits {
        feed_interval: Duration::from_millis(250),
        poll_interval: Duration::from_millis(1000),
        max_cups: 12,
        default_cups: 4,
        preheat_c: 54.0,
        preheat_timeout: Duration::from_secs(300),
        seconds_per_cup: 52.5,
        keep_warm_after_brew: true,
        keep_warm_target_c: 80.0,
        keep_warm_hysteresis_c: 4.0,
        keep_warm_max: Duration::from_secs(40 * 60),
        max_heater_on: Duration::from_secs(900),
        allow_firmware_without_heater_timeout: false,
        stale_after: Duration::from_secs(3),
        max_plate_c: 110.0,
        max_rise_c_per_s: 1.5,
        water_enabled: true,
        empty_distance_in: 8.0,
        full_distance_in: 1.0,
    }
}

/// The core plus a model of the controller that answers every command at once.
struct Rig {
    core: Core,
    t0: Instant,
    now: Instant,
    /// Plate temperature the controller reports (may be a sentinel: `None`).
    temp: Option<f64>,
    water: Option<f64>,
    /// The controller's relay.
    relay: bool,
    /// A welded relay: stays on whatever is commanded.
    stuck: bool,
    /// A dead relay (or a controller that lost its state): stays off whatever is commanded.
    dead: bool,
    /// How the modelled controller answers (which firmware build).
    format: ReplyFormat,
    /// The controller answers nothing.
    mute: bool,
    /// When the plate warms by itself while the relay is on (°C per second), if at all.
    heat_rate: f64,
    sent: Vec<(Duration, Command)>,
    events: Vec<(Duration, Event)>,
}

impl Rig {
    fn new(limits: Limits) -> Rig {
        let t0 = Instant::now();
        let mut rig = Rig {
            core: Core::new(limits, t0),
            t0,
            now: t0,
            temp: Some(21.0),
            water: Some(2.0),
            relay: false,
            stuck: false,
            dead: false,
            format: ReplyFormat::OneLine,
            mute: false,
            heat_rate: 0.0,
            sent: Vec::new(),
            events: Vec::new(),
        };
        rig.drain();
        rig.core.handle_link(t0, true);
        rig.drain();
        rig
    }

    fn at(&self) -> Duration {
        self.now - self.t0
    }

    /// Takes every output; answers serial commands like the controller.
    fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Event(e) => self.events.push((self.at(), e)),
                Output::Serial(c) => {
                    self.sent.push((self.at(), c));
                    match c {
                        Command::HeaterOn => self.relay = !self.dead,
                        Command::HeaterOff => self.relay = self.stuck,
                        Command::Status | Command::Reset => {}
                    }
                    if !self.mute && c.expects_reply() && self.core.link_up {
                        let reading = Reading {
                            water_distance_in: self.water,
                            temperature_c: self.temp,
                            heater_on: self.relay,
                            format: self.format,
                        };
                        self.core.handle_reading(self.now, reading);
                    }
                }
            }
        }
    }

    /// Advances virtual time by `d`, calling the core at every deadline on the way.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.drain();
            let next = self
                .core
                .poll_timeout()
                .map_or(end, |t| t.min(end))
                .max(self.now);
            if self.relay && self.heat_rate > 0.0 {
                let dt = (next - self.now).as_secs_f64();
                self.temp = self.temp.map(|t| t + self.heat_rate * dt);
            }
            self.now = next;
            self.core.handle_timeout(self.now);
            self.drain();
            if self.now >= end {
                break;
            }
        }
    }

    fn request(&mut self, r: Request) -> Result<(), Rejection> {
        let result = self.core.handle_request(self.now, r);
        self.drain();
        result
    }

    fn status(&self) -> Status {
        self.core.status(self.now)
    }

    fn event_types(&self) -> Vec<&'static str> {
        self.events.iter().map(|(_, e)| e.event_type()).collect()
    }

    fn has_event(&self, wanted: &Event) -> bool {
        self.events.iter().any(|(_, e)| e == wanted)
    }

    fn last_command(&self) -> Command {
        self.sent.last().map(|(_, c)| *c).unwrap()
    }

    /// When (after the start) each `command` was written, in order.
    fn sent_at(&self, command: Command) -> Vec<Duration> {
        self.sent
            .iter()
            .filter(|(_, c)| *c == command)
            .map(|(t, _)| *t)
            .collect()
    }

    /// When (after the start) the first event of this type came.
    fn first_event_at(&self, event_type: &str) -> Duration {
        self.events
            .iter()
            .find(|(_, e)| e.event_type() == event_type)
            .unwrap_or_else(|| panic!("no {event_type} event in {:?}", self.events))
            .0
    }

    fn feeds_after(&self, t: Duration) -> usize {
        self.sent
            .iter()
            .filter(|(at, c)| *at > t && *c == Command::HeaterOn)
            .count()
    }
}

/// A one-line reply at room conditions (2 in of water, relay off) with this temperature.
fn one_line(temperature_c: f64) -> Reading {
    Reading {
        water_distance_in: Some(2.0),
        temperature_c: Some(temperature_c),
        heater_on: false,
        format: ReplyFormat::OneLine,
    }
}

/// A rig whose controller has just booted, its sensor still at the DS18B20's power-on 85.0,
/// one millisecond on.
fn booted_at_85() -> Rig {
    let mut rig = Rig::new(limits());
    rig.temp = Some(85.0);
    rig.core.handle_banner(rig.now, "MrCoffeeBot v2.0");
    rig.drain();
    rig.run_for(Duration::from_millis(1));
    rig
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn first_output_is_heater_off_and_link_up_writes_heater_off_first() {
    let t0 = Instant::now();
    let mut core = Core::new(limits(), t0);
    assert_eq!(core.poll_output(), Some(Output::Serial(Command::HeaterOff)));
    assert_eq!(core.poll_output(), None);
    core.handle_link(t0, true);
    assert_eq!(core.poll_output(), Some(Output::Serial(Command::HeaterOff)));
}

#[test]
fn the_controller_answers_only_after_a_reply_on_the_open_port() {
    let t0 = Instant::now();
    let mut core = Core::new(limits(), t0);
    core.handle_link(t0, true);
    assert!(core.status(t0).link_up);
    assert!(!core.status(t0).answering, "an open port is not an answer");
    let reading = one_line(21.0);
    core.handle_reading(t0, reading);
    assert!(core.status(t0).answering);
    let later = t0 + secs(4);
    core.handle_timeout(later);
    assert!(
        !core.status(later).answering,
        "stale replies are not answers"
    );
}

#[test]
fn starting_with_the_port_closed_is_not_a_trip() {
    let rig = Rig::new(limits());
    assert!(rig.events.is_empty(), "{:?}", rig.events);
    assert_eq!(rig.status().last_fault, None);
}

#[test]
fn idle_polls_at_the_poll_interval_and_never_heats() {
    let mut rig = Rig::new(limits());
    rig.run_for(secs(15));
    let polls = rig.sent_at(Command::Status);
    assert_eq!(polls.len(), 15);
    for pair in polls.windows(2) {
        assert!(pair[1] - pair[0] <= limits().poll_interval);
    }
    assert_eq!(rig.feeds_after(Duration::ZERO), 0);
    assert_eq!(rig.status().mode, Mode::Off);
}

#[test]
fn manual_heating_feeds_every_feed_interval_until_off() {
    let mut rig = Rig::new(limits());
    rig.run_for(secs(1));
    rig.request(Request::Heater(true)).unwrap();
    assert_eq!(rig.last_command(), Command::HeaterOn);
    assert_eq!(rig.status().mode, Mode::Manual);
    rig.run_for(secs(10));
    let feeds = rig.sent_at(Command::HeaterOn);
    assert_eq!(feeds.len(), 41);
    assert!(feeds
        .windows(2)
        .all(|w| w[1] - w[0] == limits().feed_interval));
    rig.request(Request::Heater(false)).unwrap();
    assert_eq!(rig.last_command(), Command::HeaterOff);
    let off_at = rig.at();
    rig.run_for(secs(5));
    assert_eq!(rig.feeds_after(off_at), 0);
    assert_eq!(rig.status().mode, Mode::Off);
}

#[test]
fn manual_heating_stops_at_max_heater_on() {
    let mut rig = Rig::new(limits());
    rig.request(Request::Heater(true)).unwrap();
    let on_at = rig.at();
    rig.run_for(secs(899));
    assert_eq!(rig.status().mode, Mode::Manual);
    rig.run_for(secs(2));
    assert!(rig.has_event(&Event::HeaterAutoOff { after_s: 900.0 }));
    assert_eq!(rig.status().mode, Mode::Off);
    let last_feed = *rig.sent_at(Command::HeaterOn).last().unwrap();
    assert!(last_feed - on_at < secs(900));
    // A limit, not a fault.
    assert_eq!(rig.status().last_fault, None);
    assert!(!rig.relay);
}

#[test]
fn brew_preheats_then_brews_per_cup_then_keeps_warm() {
    let mut rig = Rig::new(limits());
    rig.heat_rate = 1.0;
    rig.request(Request::BrewStart { cups: Some(2) }).unwrap();
    assert_eq!(rig.status().mode, Mode::Preheating);
    assert_eq!(rig.status().cups, 2);
    assert_eq!(rig.status().brew_remaining_s, None);
    // 21 → 54 °C at 1 °C/s: 33 s of preheat.
    rig.run_for(secs(32));
    assert_eq!(rig.status().mode, Mode::Preheating);
    rig.run_for(secs(2));
    assert_eq!(rig.status().mode, Mode::Brewing);
    assert_eq!(rig.status().brew_remaining_s, Some(104));
    rig.heat_rate = 0.0;
    rig.run_for(Duration::from_millis(104_000));
    assert_eq!(rig.status().mode, Mode::KeepWarm);
    assert!(rig.has_event(&Event::BrewFinished {
        cups: 2,
        reason: "done"
    }));
    assert_eq!(
        rig.event_types(),
        ["brew_started", "brew_finished", "keep_warm_started"]
    );
    assert!(rig.status().keep_warm);
}

#[test]
fn brew_without_keep_warm_ends_with_heater_off() {
    let mut rig = Rig::new(Limits {
        keep_warm_after_brew: false,
        preheat_c: 20.0,
        ..limits()
    });
    rig.request(Request::BrewStart { cups: None }).unwrap();
    rig.run_for(secs(211));
    assert_eq!(rig.status().mode, Mode::Off);
    assert_eq!(rig.last_command(), Command::Status);
    assert!(!rig.relay);
    assert_eq!(rig.event_types(), ["brew_started", "brew_finished"]);
}

#[test]
fn preheat_timeout_aborts_the_brew() {
    let mut rig = Rig::new(limits());
    rig.request(Request::BrewStart { cups: Some(1) }).unwrap();
    rig.run_for(secs(301));
    assert!(rig.has_event(&Event::BrewAborted {
        cups: 1,
        reason: "preheat_timeout"
    }));
    assert_eq!(rig.status().mode, Mode::Off);
    assert!(!rig.relay);
}

#[test]
fn empty_reservoir_ends_the_brew_normally() {
    let mut rig = Rig::new(Limits {
        keep_warm_after_brew: false,
        ..limits()
    });
    rig.temp = Some(60.0);
    rig.request(Request::BrewStart { cups: Some(12) }).unwrap();
    rig.run_for(secs(30));
    assert_eq!(rig.status().mode, Mode::Brewing);
    rig.water = Some(8.5);
    rig.run_for(secs(1));
    assert!(rig.has_event(&Event::BrewFinished {
        cups: 12,
        reason: "reservoir_empty"
    }));
    assert!(!rig.relay);
    assert!(rig.status().faults.contains(Fault::NoWater));
    // Not a trip: no fault event.
    assert!(!rig.event_types().contains(&"fault"));
}

#[test]
fn brew_start_needs_water_but_manual_and_keep_warm_do_not() {
    let mut rig = Rig::new(limits());
    rig.water = Some(9.0);
    rig.run_for(secs(1));
    let err = rig.request(Request::BrewStart { cups: None }).unwrap_err();
    assert!(err.reason.starts_with("no_water"), "{}", err.reason);
    assert_eq!(rig.status().mode, Mode::Off);
    rig.water = None;
    rig.run_for(secs(1));
    assert!(rig.request(Request::BrewStart { cups: None }).is_err());
    rig.request(Request::KeepWarm(true)).unwrap();
    rig.request(Request::Heater(true)).unwrap();
    assert_eq!(rig.status().mode, Mode::Manual);
}

#[test]
fn water_checks_are_off_when_water_is_disabled() {
    let mut rig = Rig::new(Limits {
        water_enabled: false,
        ..limits()
    });
    rig.water = Some(9.0);
    rig.run_for(secs(1));
    rig.request(Request::BrewStart { cups: None }).unwrap();
    assert!(!rig.status().faults.contains(Fault::NoWater));
    assert_eq!(rig.status().water_level_pct, None);
}

#[test]
fn cups_out_of_range_are_rejected_and_change_nothing() {
    let mut rig = Rig::new(limits());
    let before = rig.status();
    let err = rig.request(Request::SelectCups(99)).unwrap_err();
    assert_eq!(err.reason, "cups must be 1..12, got 99");
    assert!(rig.request(Request::BrewStart { cups: Some(0) }).is_err());
    assert_eq!(rig.status(), before);
    rig.request(Request::SelectCups(7)).unwrap();
    assert_eq!(rig.status().cups, 7);
    assert_eq!(rig.status().mode, Mode::Off);
}

#[test]
fn keep_warm_is_a_thermostat_with_hysteresis_and_a_time_limit() {
    let mut rig = Rig::new(limits());
    rig.temp = Some(70.0);
    rig.run_for(secs(1));
    rig.request(Request::KeepWarm(true)).unwrap();
    assert!(rig.relay, "on below target − hysteresis");
    rig.temp = Some(78.0);
    rig.run_for(secs(1));
    assert!(rig.relay, "stays on inside the band while heating");
    rig.temp = Some(80.0);
    rig.run_for(secs(1));
    assert!(!rig.relay, "off at the target");
    rig.temp = Some(77.0);
    rig.run_for(secs(2));
    assert!(!rig.relay, "stays off inside the band while cooling");
    rig.temp = Some(75.9);
    rig.run_for(secs(2));
    assert!(rig.relay);
    rig.temp = Some(80.0);
    rig.run_for(secs(40 * 60));
    assert!(rig.has_event(&Event::KeepWarmFinished { reason: "timeout" }));
    assert!(!rig.relay);
    assert_eq!(rig.status().mode, Mode::Off);
}

#[test]
fn heater_off_replaces_a_brew() {
    let mut rig = Rig::new(limits());
    rig.request(Request::BrewStart { cups: None }).unwrap();
    rig.run_for(secs(3));
    rig.request(Request::Heater(false)).unwrap();
    assert!(rig.has_event(&Event::BrewAborted {
        cups: 4,
        reason: "stopped"
    }));
    assert_eq!(rig.last_command(), Command::HeaterOff);
}

#[test]
fn heating_is_refused_on_a_build_without_heater_timeout_unless_allowed() {
    let mut rig = Rig::new(limits());
    rig.format = ReplyFormat::ThreeLines;
    rig.run_for(secs(2));
    assert_eq!(rig.status().reply_format, Some(ReplyFormat::ThreeLines));
    for request in [
        Request::Heater(true),
        Request::BrewStart { cups: Some(2) },
        Request::KeepWarm(true),
    ] {
        let err = rig.request(request).unwrap_err();
        assert!(err.reason.contains("05a9a00"), "{}", err.reason);
        assert!(
            err.reason
                .contains("serial.allow_firmware_without_heater_timeout"),
            "{}",
            err.reason
        );
    }
    rig.run_for(secs(2));
    assert_eq!(rig.feeds_after(Duration::ZERO), 0, "no B+1 ever");
    assert_eq!(rig.status().mode, Mode::Off);

    let mut rig = Rig::new(Limits {
        allow_firmware_without_heater_timeout: true,
        ..limits()
    });
    rig.format = ReplyFormat::ThreeLines;
    rig.run_for(secs(2));
    rig.request(Request::Heater(true)).unwrap();
    rig.run_for(secs(1));
    assert!(rig.feeds_after(secs(2)) >= 3);
}

#[test]
fn one_line_build_heats_by_default() {
    let mut rig = Rig::new(limits());
    rig.run_for(secs(2));
    assert_eq!(rig.status().reply_format, Some(ReplyFormat::OneLine));
    rig.request(Request::Heater(true)).unwrap();
    rig.run_for(secs(1));
    assert!(rig.relay);
}

#[test]
fn another_build_answering_mid_program_ends_it() {
    let mut rig = Rig::new(Limits {
        allow_firmware_without_heater_timeout: true,
        ..limits()
    });
    rig.run_for(secs(2));
    rig.request(Request::Heater(true)).unwrap();
    rig.run_for(secs(1));
    rig.format = ReplyFormat::ThreeLines;
    rig.run_for(secs(1));
    assert_eq!(rig.status().mode, Mode::Off);
    assert!(!rig.relay);
    assert!(rig.has_event(&Event::Fault {
        reason: Cutoff::FirmwareChanged.into()
    }));
    let after = rig.at();
    rig.run_for(secs(2));
    assert_eq!(rig.feeds_after(after), 0, "nothing re-enabled");
}

#[test]
fn the_first_banner_of_a_link_session_is_not_a_reboot() {
    let t0 = Instant::now();
    let mut core = Core::new(limits(), t0);
    core.handle_link(t0, true);
    core.handle_banner(t0, "MrCoffeeBot v2.0");
    let status = core.status(t0);
    assert_eq!(status.controller_reboots, 0);
    assert_eq!(status.firmware.as_deref(), Some("MrCoffeeBot v2.0"));
    let reading = one_line(85.0);
    core.handle_reading(t0, reading);
    assert_eq!(
        core.status(t0).temperature_c,
        None,
        "85.0 right after the power-on banner is the DS18B20's power-on value"
    );
    // After an answer, a banner is a reboot.
    let t1 = t0 + secs(1);
    core.handle_banner(t1, "MrCoffeeBot v2.0");
    assert_eq!(core.status(t1).controller_reboots, 1);
    // A new link session: its first banner is again only the board starting.
    core.handle_link(t1, false);
    core.handle_link(t1, true);
    core.handle_banner(t1, "MrCoffeeBot v2.0");
    assert_eq!(core.status(t1).controller_reboots, 1);
}
