//! The heater core driven by arbitrary inputs in virtual time: readings (with NaN, infinities,
//! sentinels and out-of-range values), banners, link changes, user requests, shutdown and time
//! jumps. Besides "no panic", it checks the safety invariants of SPEC §3 after every call:
//!
//! - the first output is `B+0`, and nothing but `B+0` follows a shutdown;
//! - the relay is never left commanded on while a blocking interlock holds;
//! - one continuous heater run never reaches `max_heater_on`;
//! - while the relay is on, the core asks to be woken before the next feed is due, and after
//!   `handle_timeout` its next deadline lies ahead (no busy loop).
#![no_main]

use coffeebot::core::{Core, Limits, Output, Request};
use coffeebot::protocol::{Command, Reading, ReplyFormat};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

/// The controller switches its heater off after this long without `B+1` (SPEC §2).
const HEATER_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings the fuzzer picks, mapped into the ranges `Settings::validate` accepts, with short
/// durations so that time limits are reached within a few steps.
#[derive(Arbitrary, Debug)]
struct Knobs {
    feed_ms: u16,
    poll_ms: u16,
    stale_ds: u8,
    max_on_s: u8,
    preheat_s: u8,
    per_cup_ds: u8,
    keep_warm_s: u8,
    max_cups: u8,
    default_cups: u8,
    keep_warm_after_brew: bool,
    water_enabled: bool,
    max_rise_ds: u8,
}

impl Knobs {
    fn limits(&self) -> Limits {
        let stale_ms = 1000 + u64::from(self.stale_ds % 36) * 100; // 1..=4.5 s
        let poll_ms = 100 + u64::from(self.poll_ms) % (stale_ms - 100); // 100..stale
        let max_cups = 1 + u32::from(self.max_cups % 24);
        Limits {
            feed_interval: Duration::from_millis(50 + u64::from(self.feed_ms) % 950),
            poll_interval: Duration::from_millis(poll_ms),
            allow_firmware_without_heater_timeout: self.feed_ms % 2 == 0,
            max_cups,
            default_cups: 1 + u32::from(self.default_cups) % max_cups,
            preheat_c: 54.0,
            preheat_timeout: Duration::from_secs(1 + u64::from(self.preheat_s % 120)),
            seconds_per_cup: 0.1 + f64::from(self.per_cup_ds) / 10.0,
            keep_warm_after_brew: self.keep_warm_after_brew,
            keep_warm_target_c: 80.0,
            keep_warm_hysteresis_c: 4.0,
            keep_warm_max: Duration::from_secs(1 + u64::from(self.keep_warm_s)),
            max_heater_on: Duration::from_secs(1 + u64::from(self.max_on_s % 60)),
            stale_after: Duration::from_millis(stale_ms),
            max_plate_c: 110.0,
            max_rise_c_per_s: 0.1 + f64::from(self.max_rise_ds % 200) / 10.0,
            water_enabled: self.water_enabled,
            empty_distance_in: 8.0,
            full_distance_in: 1.0,
        }
    }
}

/// A sensor value as a reply may carry it.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Missing,
    Special(u8),
    Raw(f64),
    /// Tenths of a degree or inch, -100.0..=555.3: the plausible range and a bit beyond.
    Tenths(u16),
}

impl Value {
    fn get(self) -> Option<f64> {
        const SPECIAL: [f64; 16] = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            -1000.0,
            85.0,
            125.0,
            125.1,
            -20.0,
            -20.1,
            54.0,
            90.0,
            109.9,
            110.0,
            8.0,
            0.0,
        ];
        match self {
            Value::Missing => None,
            Value::Special(i) => Some(SPECIAL[usize::from(i) % SPECIAL.len()]),
            Value::Raw(v) => Some(v),
            Value::Tenths(t) => Some(f64::from(t % 6554) / 10.0 - 100.0),
        }
    }
}

/// A user request, as the MQTT side would hand it over.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Req {
    Heater(bool),
    BrewStart(Option<u32>),
    BrewStop,
    SelectCups(u32),
    KeepWarm(bool),
    ResetController,
}

impl From<Req> for Request {
    fn from(r: Req) -> Request {
        match r {
            Req::Heater(on) => Request::Heater(on),
            Req::BrewStart(cups) => Request::BrewStart { cups },
            Req::BrewStop => Request::BrewStop,
            Req::SelectCups(cups) => Request::SelectCups(cups),
            Req::KeepWarm(on) => Request::KeepWarm(on),
            Req::ResetController => Request::ResetController,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// The port opened or was lost.
    Link(bool),
    /// A reply with an arbitrary heater state.
    Reading {
        water: Value,
        temperature: Value,
        heater_on: bool,
    },
    /// A reply as a working controller gives it: the heater state it was commanded.
    Reply {
        water: Value,
        temperature: Value,
    },
    /// The boot banner.
    Banner,
    Request(Req),
    /// Time passes with no call into the core (a frozen or busy process).
    Wait(u16),
    WaitSeconds(u8),
    /// Time passes as the daemon drives it: to the core's next deadline.
    ToDeadline,
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Input {
    knobs: Knobs,
    steps: Vec<Step>,
}

/// The core plus what the harness has seen of its outputs.
struct Harness {
    core: Core,
    limits: Limits,
    now: Instant,
    outputs: usize,
    /// The controller's relay as commanded: on since when, last fed when.
    on_since: Option<Instant>,
    last_feed: Option<Instant>,
    shut_down: bool,
}

impl Harness {
    fn relay_on(&self) -> bool {
        self.on_since.is_some()
    }

    /// Takes every output of the last call and checks the invariants; `timer` says the call was
    /// `handle_timeout` (after which the next deadline must lie ahead: no busy loop).
    fn check(&mut self, timer: bool) {
        let now = self.now;
        let mut batch = 0;
        while let Some(output) = self.core.poll_output() {
            batch += 1;
            assert!(batch < 64, "a single call produced too many outputs");
            if self.outputs == 0 {
                assert_eq!(output, Output::Serial(Command::HeaterOff), "first output");
            }
            self.outputs += 1;
            let Output::Serial(command) = output else {
                continue;
            };
            match command {
                Command::HeaterOn => {
                    assert!(!self.shut_down, "B+1 after shutdown");
                    // A feed after the controller's own timeout starts a new run.
                    let lapsed = self
                        .last_feed
                        .is_none_or(|fed| now.duration_since(fed) >= HEATER_TIMEOUT);
                    if self.on_since.is_none() || lapsed {
                        self.on_since = Some(now);
                    }
                    let run = now.duration_since(self.on_since.unwrap_or(now));
                    assert!(
                        run < self.limits.max_heater_on,
                        "heater on for {run:?}, limit {:?}",
                        self.limits.max_heater_on
                    );
                    self.last_feed = Some(now);
                }
                Command::HeaterOff => {
                    self.on_since = None;
                    self.last_feed = None;
                }
                Command::Status | Command::Reset => {}
            }
        }
        let status = self.core.status(now);
        if self.relay_on() {
            let blocking = status.faults.blocking();
            assert!(blocking.is_empty(), "relay left on with {blocking:?}");
            let fed = self.last_feed.unwrap_or(now);
            let next = self.core.poll_timeout();
            assert!(
                next.is_some_and(|t| t <= fed + self.limits.feed_interval),
                "relay on, but the next wake-up {next:?} is after the feed is due"
            );
        }
        if timer {
            if let Some(next) = self.core.poll_timeout() {
                assert!(next > now, "deadline {next:?} not after {now:?}");
            }
        }
    }
}

/// A reading in the three-line form (the form these steps model).
fn three_lines(water: Value, temperature: Value, heater_on: bool) -> Reading {
    Reading {
        water_distance_in: water.get(),
        temperature_c: temperature.get(),
        heater_on,
        format: ReplyFormat::ThreeLines,
    }
}

fuzz_target!(|input: Input| {
    let limits = input.knobs.limits();
    let start = Instant::now();
    let mut h = Harness {
        core: Core::new(limits.clone(), start),
        limits,
        now: start,
        outputs: 0,
        on_since: None,
        last_feed: None,
        shut_down: false,
    };
    h.check(true);
    for step in input.steps.iter().take(2000) {
        let now = h.now;
        let timer = matches!(step, Step::ToDeadline);
        match *step {
            Step::Link(up) => {
                h.core.handle_link(now, up);
                if !up {
                    // Nothing can feed it: the controller's own timeout ends the run.
                    h.on_since = None;
                    h.last_feed = None;
                }
            }
            Step::Reading {
                water,
                temperature,
                heater_on,
            } => h
                .core
                .handle_reading(now, three_lines(water, temperature, heater_on)),
            Step::Reply { water, temperature } => {
                let heater_on = h
                    .last_feed
                    .is_some_and(|fed| now.duration_since(fed) < HEATER_TIMEOUT);
                h.core
                    .handle_reading(now, three_lines(water, temperature, heater_on));
            }
            Step::Banner => {
                h.core.handle_banner(now, "MrCoffeeBot v2.0");
                h.on_since = None;
                h.last_feed = None;
            }
            Step::Request(req) => {
                let _ = h.core.handle_request(now, req.into());
            }
            Step::Wait(ms) => h.now += Duration::from_millis(u64::from(ms)),
            Step::WaitSeconds(s) => h.now += Duration::from_secs(u64::from(s)),
            Step::ToDeadline => {
                if let Some(next) = h.core.poll_timeout() {
                    h.now = next.max(now);
                    h.core.handle_timeout(h.now);
                }
            }
            Step::Shutdown => {
                h.core.handle_shutdown(now);
                h.shut_down = true;
            }
        }
        h.check(timer);
    }
});
