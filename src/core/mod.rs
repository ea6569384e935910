//! The heater state machine: every decision about the heater, and nothing else.
//!
//! This module never does I/O, never awaits and never reads a clock (clippy's
//! `disallowed-methods` enforces the last). Inputs arrive through `handle_*(now, …)`; serial
//! commands and events come out of [`Core::poll_output`] until it returns `None`;
//! [`Core::poll_timeout`] says when to call [`Core::handle_timeout`] next. Calling it early or
//! twice is harmless. Feeding the controller's watchdog is one of these decisions: `B+1` is
//! emitted only from here, only while heating is right, so a stuck decision-maker lets the
//! controller's own 1 s timeout switch the heater off.
//!
//! The shape follows SPEC §3: five modes, brew (preheat, then seconds per cup), keep warm
//! (thermostat with hysteresis and a time limit), manual (with a time limit), and the
//! interlocks in [`Fault`]. The first output is `B+0`; after [`Core::handle_shutdown`] the last
//! output is `B+0`.
//!
//! Parts: `interlocks` (which faults hold, trips, why heating may not start), `limits` (the
//! configured bounds), `types` (what goes in and comes out).
#![deny(clippy::disallowed_methods)]

mod interlocks;
mod limits;
mod types;

pub use interlocks::{DRY_BOIL_ABOVE_C, DRY_BOIL_WINDOW};
pub use limits::Limits;
pub use types::{
    Cutoff, Event, Fault, FaultSet, Mode, Output, Rejection, Request, Status, TripReason,
};

use crate::protocol::{Command, Reading, ReplyFormat};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The controller switches its heater off when this long passes without a `B+1` (SPEC §2).
pub const CONTROLLER_HEATER_TIMEOUT: Duration = Duration::from_millis(1000);
/// Plate temperatures the DS18B20 can report; anything outside is a broken reading.
pub const SENSOR_RANGE_C: (f64, f64) = (-20.0, 125.0);
/// The value a DS18B20 reads right after its own power-on reset: not trusted as a first reading.
const DS18B20_POWER_ON_C: f64 = 85.0;
/// How long after the first reading of a boot 85.0 °C is still the power-on value: the sensor
/// keeps it until its first conversion ends (750 ms after the firmware starts it, just after
/// the banner), and replies can come every few milliseconds meanwhile.
const DS18B20_POWER_ON_WINDOW: Duration = Duration::from_millis(900);
/// Bound on the temperature history kept for the dry-boil check, whatever the reply rate.
const MAX_SAMPLES: usize = 256;

/// What the heater is doing for whom.
#[derive(Clone, Debug, PartialEq)]
enum Program {
    Idle,
    Manual,
    Preheat { cups: u32, since: Instant },
    Brew { cups: u32, ends_at: Instant },
    KeepWarm { ends_at: Instant, heating: bool },
}

impl Program {
    fn mode(&self) -> Mode {
        match self {
            Program::Idle => Mode::Off,
            Program::Manual => Mode::Manual,
            Program::Preheat { .. } => Mode::Preheating,
            Program::Brew { .. } => Mode::Brewing,
            Program::KeepWarm { .. } => Mode::KeepWarm,
        }
    }

    fn wants_heat(&self) -> bool {
        match self {
            Program::Idle => false,
            Program::Manual | Program::Preheat { .. } | Program::Brew { .. } => true,
            Program::KeepWarm { heating, .. } => *heating,
        }
    }
}

/// How a program ended; decides which event(s) announce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Finished as planned (brew done, keep warm time up).
    Done,
    /// The reservoir ran empty during a brew.
    ReservoirEmpty,
    /// A command stopped it.
    Stopped,
    /// Another start command replaced it.
    Replaced,
    /// A limit or a fault ended it.
    Tripped(TripReason),
}

/// The heater core. See the module documentation.
#[derive(Debug)]
pub struct Core {
    limits: Limits,
    outputs: VecDeque<Output>,

    program: Program,
    cups: u32,

    link_up: bool,
    link_up_at: Option<Instant>,
    shutting_down: bool,
    shutdown_confirmed: bool,

    /// The relay state last commanded (`B+1`/`B+0` emitted).
    relay_on: bool,
    /// When the current continuous heater run began.
    relay_on_since: Option<Instant>,
    /// When the last `B+1` was emitted.
    last_feed: Option<Instant>,
    /// When the last command of any kind was emitted.
    last_send: Option<Instant>,

    reading: Option<Reading>,
    temperature_c: Option<f64>,
    /// The latest reading carried an invalid temperature (sentinel or out of range).
    sensor_invalid: bool,
    last_reply_at: Option<Instant>,
    /// The next reading is the first after a boot (its 85.0 °C is not trusted).
    after_boot: bool,
    /// Until when a reading of 85.0 °C is still the DS18B20's power-on value.
    power_on_value_until: Option<Instant>,
    /// Since when the controller has reported a heater state other than commanded.
    mismatch_since: Option<Instant>,
    samples: VecDeque<(Instant, f64)>,

    overtemp_latched: bool,
    dry_boil_latched: bool,
    /// Faults that held at the last evaluation (to publish each trip once).
    faults: FaultSet,
    last_fault: Option<(TripReason, Instant)>,

    controller_reboots: u64,
    firmware: Option<String>,
    /// The reply form of this link session's controller (which build answers); `None` until
    /// its first reply, and again after the link drops.
    reply_format: Option<ReplyFormat>,
    /// The controller has answered since the port was opened: a banner after that is a reboot;
    /// one before it is the board starting up as the port opened (or before), not a reboot.
    answered_this_session: bool,
    /// The latest `now` seen: deadlines at or before it have been dealt with.
    now: Instant,
}

impl Core {
    /// A core with the heater off and nothing running. Its first output is `B+0`.
    pub fn new(limits: Limits, now: Instant) -> Self {
        let mut core = Core {
            cups: limits.default_cups,
            limits,
            outputs: VecDeque::new(),
            program: Program::Idle,
            link_up: false,
            link_up_at: None,
            shutting_down: false,
            shutdown_confirmed: false,
            relay_on: false,
            relay_on_since: None,
            last_feed: None,
            last_send: None,
            reading: None,
            temperature_c: None,
            sensor_invalid: false,
            last_reply_at: None,
            after_boot: true,
            power_on_value_until: None,
            mismatch_since: None,
            samples: VecDeque::new(),
            overtemp_latched: false,
            dry_boil_latched: false,
            // The port is not open yet: that is where every start begins, not a trip.
            faults: FaultSet::only(Fault::LinkDown),
            last_fault: None,
            controller_reboots: 0,
            firmware: None,
            reply_format: None,
            answered_this_session: false,
            now,
        };
        core.send(now, Command::HeaterOff);
        core.step(now);
        core
    }

    /// The limits this core enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The serial port was opened (`true`) or lost (`false`).
    pub fn handle_link(&mut self, now: Instant, up: bool) {
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        self.mismatch_since = None;
        self.reading = None;
        self.sensor_invalid = false;
        self.temperature_c = None;
        self.reply_format = None;
        self.answered_this_session = false;
        if up {
            self.link_up_at = Some(now);
            self.after_boot = true;
            // A freshly opened port: the first thing written is B+0.
            self.send(now, Command::HeaterOff);
        } else {
            // Nothing can be commanded; the controller's 1 s timeout turns the heater off.
            self.relay_on = false;
            self.relay_on_since = None;
            self.last_feed = None;
            if self.shutting_down {
                self.shutdown_confirmed = true;
            }
        }
        self.step(now);
    }

    /// A complete status reply from the controller.
    pub fn handle_reading(&mut self, now: Instant, reading: Reading) {
        if !self.link_up {
            return;
        }
        self.last_reply_at = Some(now);
        self.answered_this_session = true;
        if self
            .reply_format
            .replace(reading.format)
            .is_some_and(|f| f != reading.format)
        {
            // Another build answers on the same port without a banner in between: nothing
            // about the running program can be trusted any more.
            self.record_trip(now, Cutoff::FirmwareChanged.into());
            self.end_program(now, End::Tripped(Cutoff::FirmwareChanged.into()));
            self.force_off(now);
        }
        if std::mem::take(&mut self.after_boot) {
            self.power_on_value_until = Some(now + DS18B20_POWER_ON_WINDOW);
        }
        let suspect = reading.temperature_c == Some(DS18B20_POWER_ON_C)
            && self.power_on_value_until.is_some_and(|until| now < until);
        let valid = reading
            .temperature_c
            .filter(|t| (SENSOR_RANGE_C.0..=SENSOR_RANGE_C.1).contains(t));
        self.sensor_invalid = valid.is_none() && !suspect;
        self.temperature_c = if suspect { None } else { valid };
        if let Some(t) = self.temperature_c {
            if t >= self.limits.max_plate_c {
                self.overtemp_latched = true;
            }
            if self.samples.len() == MAX_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back((now, t));
            self.check_rise(now, t);
        }
        if reading.heater_on != self.relay_on {
            self.mismatch_since.get_or_insert(now);
        } else {
            self.mismatch_since = None;
        }
        if self.shutting_down && !reading.heater_on {
            self.shutdown_confirmed = true;
        }
        self.reading = Some(reading);
        self.step(now);
    }

    /// The controller printed its boot banner: its heater is off. After it has answered on
    /// this link session that is a reboot; before, it is the board starting as the port opened
    /// (nothing can have been heating: heating needs a reading), so it only names the firmware.
    pub fn handle_banner(&mut self, now: Instant, firmware: &str) {
        self.firmware = Some(firmware.to_owned());
        if self.answered_this_session {
            self.rebooted(now);
        } else {
            self.after_boot = true;
        }
        self.step(now);
    }

    /// A command from a user. `Err` carries a reason a person can act on; nothing changed.
    pub fn handle_request(&mut self, now: Instant, request: Request) -> Result<(), Rejection> {
        // Bring time-driven state up to date first, so the decision sees the present.
        self.step(now);
        let result = self.apply(now, request);
        self.step(now);
        result
    }

    /// Time passed; call at [`Core::poll_timeout`] (earlier or more often is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.step(now);
    }

    /// SIGTERM/SIGINT: end any program, write `B+0`, and write nothing after it.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.end_program(now, End::Tripped(Cutoff::Shutdown.into()));
        self.shutting_down = true;
        self.shutdown_confirmed = !self.link_up;
        self.send(now, Command::HeaterOff);
        self.relay_on = false;
        self.relay_on_since = None;
    }

    /// After [`Core::handle_shutdown`]: the controller confirmed the heater off (or the link
    /// is gone, so nothing can be on for more than the controller's 1 s timeout).
    pub fn shutdown_confirmed(&self) -> bool {
        self.shutting_down && self.shutdown_confirmed
    }

    /// The relay state last commanded (the latest `B+1`/`B+0` written): what the controller's
    /// next reply shows once it has carried the command out.
    pub fn relay_commanded(&self) -> bool {
        self.relay_on
    }

    /// The next output, or `None` when there is nothing more to do now.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Core::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.shutting_down {
            return None;
        }
        let mut next: Option<Instant> = None;
        let handled = self.now;
        let mut at = |t: Instant| {
            if t > handled {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        if self.link_up {
            let interval = if self.relay_on || self.relay_stuck() {
                self.limits.feed_interval
            } else {
                self.limits.poll_interval
            };
            if let Some(sent) = self.last_send {
                at(sent + interval);
            }
            if let Some(reply) = self.reply_deadline() {
                at(reply + self.limits.stale_after);
            }
            if let Some(since) = self.mismatch_since {
                at(since + self.limits.feed_interval + Duration::from_millis(1));
            }
        }
        if let Some(since) = self.relay_on_since {
            at(since + self.limits.max_heater_on);
        }
        match self.program {
            Program::Preheat { since, .. } => at(since + self.limits.preheat_timeout),
            Program::Brew { ends_at, .. } | Program::KeepWarm { ends_at, .. } => at(ends_at),
            Program::Idle | Program::Manual => {}
        }
        next
    }

    /// A snapshot of everything the state JSON shows, as of `now`.
    pub fn status(&self, now: Instant) -> Status {
        // Readings and the relay are shown only while they are fresh: with the link down, before
        // the first reply, or once replies are stale, the bridge does not know them now.
        let answering = self.link_up
            && self
                .last_reply_at
                .zip(self.link_up_at)
                .is_some_and(|(reply, up)| reply >= up)
            && !self.faults.contains(Fault::StaleTelemetry);
        let fresh = |reading: Option<Reading>| reading.filter(|_| answering);
        let water_distance_in = if self.limits.water_enabled {
            fresh(self.reading).and_then(|r| r.water_distance_in)
        } else {
            None
        };
        Status {
            mode: self.program.mode(),
            heater: fresh(self.reading).map(|r| r.heater_on),
            temperature_c: self.temperature_c.filter(|_| answering),
            water_distance_in,
            water_level_pct: water_distance_in.map(|d| self.limits.water_level_pct(d)),
            cups: self.cups,
            brew_remaining_s: match self.program {
                Program::Brew { ends_at, .. } => {
                    let left = ends_at.saturating_duration_since(now);
                    Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
                }
                _ => None,
            },
            brew_ends_at: match self.program {
                Program::Brew { ends_at, .. } => Some(ends_at),
                _ => None,
            },
            keep_warm: matches!(self.program, Program::KeepWarm { .. }),
            faults: self.faults,
            last_fault: self.last_fault,
            link_up: self.link_up,
            answering,
            controller_reboots: self.controller_reboots,
            firmware: self.firmware.clone(),
            reply_format: self.reply_format,
            updated_at: self.last_reply_at,
        }
    }

    // ----- decisions -------------------------------------------------------------------

    fn apply(&mut self, now: Instant, request: Request) -> Result<(), Rejection> {
        if self.shutting_down && request.starts_heating() {
            return Err(Rejection::new("the bridge is shutting down"));
        }
        match request {
            Request::Heater(false) => {
                self.end_program(now, End::Stopped);
                // Always write B+0, even when idle: OFF must reach a stuck relay too.
                self.force_off(now);
            }
            Request::Heater(true) => {
                self.check_can_heat(now)?;
                self.start(now, Program::Manual);
            }
            Request::SelectCups(cups) => {
                self.check_cups(cups)?;
                self.cups = cups;
            }
            Request::BrewStart { cups } => {
                let cups = cups.unwrap_or(self.cups);
                self.check_cups(cups)?;
                self.check_can_heat(now)?;
                self.check_water()?;
                self.cups = cups;
                self.start(now, Program::Preheat { cups, since: now });
                self.emit(Event::BrewStarted { cups });
            }
            Request::BrewStop => {
                self.end_program(now, End::Stopped);
                self.force_off(now);
            }
            Request::KeepWarm(true) => {
                self.check_can_heat(now)?;
                self.start_keep_warm(now);
            }
            Request::KeepWarm(false) => {
                if matches!(self.program, Program::KeepWarm { .. }) {
                    self.end_program(now, End::Stopped);
                }
            }
            Request::ResetController => {
                if !self.link_up {
                    return Err(Rejection::new(
                        "the controller link is down; reconnect the controller first",
                    ));
                }
                self.end_program(now, End::Tripped(Cutoff::ControllerReset.into()));
                self.force_off(now);
                self.send(now, Command::Reset);
            }
        }
        Ok(())
    }

    fn check_cups(&self, cups: u32) -> Result<(), Rejection> {
        if (1..=self.limits.max_cups).contains(&cups) {
            Ok(())
        } else {
            Err(Rejection::new(format!(
                "cups must be 1..{}, got {cups}",
                self.limits.max_cups
            )))
        }
    }

    fn start(&mut self, now: Instant, program: Program) {
        self.release_latches();
        self.end_program(now, End::Replaced);
        self.program = program;
    }

    fn start_keep_warm(&mut self, now: Instant) {
        let ends_at = now + self.limits.keep_warm_max;
        self.start(
            now,
            Program::KeepWarm {
                ends_at,
                heating: false,
            },
        );
        self.emit(Event::KeepWarmStarted);
    }

    /// Ends the running program (if any) and announces how.
    fn end_program(&mut self, _now: Instant, end: End) {
        let program = std::mem::replace(&mut self.program, Program::Idle);
        let reason = match end {
            End::Done => "done",
            End::ReservoirEmpty => "reservoir_empty",
            End::Stopped => "stopped",
            End::Replaced => "replaced",
            End::Tripped(reason) => reason.as_str(),
        };
        match program {
            Program::Idle | Program::Manual => {}
            Program::Preheat { cups, .. } | Program::Brew { cups, .. } => match end {
                End::Done | End::ReservoirEmpty => self.emit(Event::BrewFinished { cups, reason }),
                _ => self.emit(Event::BrewAborted { cups, reason }),
            },
            Program::KeepWarm { .. } => {
                let reason = if end == End::Done { "timeout" } else { reason };
                self.emit(Event::KeepWarmFinished { reason });
            }
        }
    }

    /// The controller is off after a reboot: end the program and never re-enable silently.
    fn rebooted(&mut self, now: Instant) {
        self.controller_reboots += 1;
        self.after_boot = true;
        self.mismatch_since = None;
        self.emit(Event::ControllerRebooted {
            count: self.controller_reboots,
        });
        self.end_program(now, End::Tripped(Cutoff::ControllerRebooted.into()));
        self.force_off(now);
    }

    /// Everything that depends on time and state: program phases, limits, interlocks, and
    /// the serial command that is due. Called after every input.
    fn step(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.shutting_down {
            return;
        }
        // The controller has already cut the heater if the feed lapsed (e.g. the process was
        // frozen): end the program rather than switch the heater back on behind its back.
        if self.relay_on
            && self
                .last_feed
                .is_some_and(|fed| now.saturating_duration_since(fed) >= CONTROLLER_HEATER_TIMEOUT)
        {
            self.record_trip(now, Cutoff::FeedGap.into());
            self.end_program(now, End::Tripped(Cutoff::FeedGap.into()));
            self.force_off(now);
        }
        // The controller reports the heater off while it should be on: it rebooted.
        if self.relay_on && self.mismatch_lasted(now) && self.reading.is_some_and(|r| !r.heater_on)
        {
            self.rebooted(now);
        }
        self.advance_program(now);
        self.update_faults(now);
        self.decide_relay(now);
    }

    fn advance_program(&mut self, now: Instant) {
        let temp = self.temperature_c;
        let empty = self.reservoir_empty();
        match self.program {
            Program::Preheat { cups, since } => {
                if self.limits.water_enabled && empty {
                    self.end_brew(now, End::ReservoirEmpty);
                } else if temp.is_some_and(|t| t >= self.limits.preheat_c) {
                    self.program = Program::Brew {
                        cups,
                        ends_at: now + self.limits.brew_duration(cups),
                    };
                } else if now.saturating_duration_since(since) >= self.limits.preheat_timeout {
                    self.end_program(now, End::Tripped(Cutoff::PreheatTimeout.into()));
                }
            }
            Program::Brew { ends_at, .. } => {
                if self.limits.water_enabled && empty {
                    self.end_brew(now, End::ReservoirEmpty);
                } else if now >= ends_at {
                    self.end_brew(now, End::Done);
                }
            }
            Program::KeepWarm { ends_at, heating } => {
                if now >= ends_at {
                    self.end_program(now, End::Done);
                } else {
                    let heating = match temp {
                        None => false,
                        Some(t) if t >= self.limits.keep_warm_target_c => false,
                        Some(t) if t < self.limits.keep_warm_on_below_c() => true,
                        Some(_) => heating,
                    };
                    self.program = Program::KeepWarm { ends_at, heating };
                }
            }
            Program::Idle | Program::Manual => {}
        }
        if let Some(since) = self.relay_on_since {
            if now.saturating_duration_since(since) >= self.limits.max_heater_on {
                self.emit(Event::HeaterAutoOff {
                    after_s: self.limits.max_heater_on.as_secs_f64(),
                });
                self.end_program(now, End::Tripped(Cutoff::MaxHeaterOn.into()));
                self.force_off(now);
            }
        }
    }

    fn end_brew(&mut self, now: Instant, end: End) {
        self.end_program(now, end);
        if self.limits.keep_warm_after_brew {
            self.start_keep_warm(now);
        }
    }

    /// Commands the relay to the state the program wants, and feeds or polls when due.
    fn decide_relay(&mut self, now: Instant) {
        if !self.link_up {
            return;
        }
        let want = self.program.wants_heat() && self.faults.blocking().is_empty();
        if want != self.relay_on {
            self.send(
                now,
                if want {
                    Command::HeaterOn
                } else {
                    Command::HeaterOff
                },
            );
            return;
        }
        let due = |interval: Duration| {
            self.last_send
                .is_none_or(|sent| now.saturating_duration_since(sent) >= interval)
        };
        if self.relay_on {
            if due(self.limits.feed_interval) {
                self.send(now, Command::HeaterOn);
            }
        } else if self.relay_stuck() {
            if due(self.limits.feed_interval) {
                self.send(now, Command::HeaterOff);
            }
        } else if due(self.limits.poll_interval) {
            self.send(now, Command::Status);
        }
    }

    // ----- helpers ---------------------------------------------------------------------

    fn send(&mut self, now: Instant, command: Command) {
        match command {
            Command::HeaterOn => {
                if !self.relay_on {
                    self.relay_on_since = Some(now);
                }
                self.relay_on = true;
                self.last_feed = Some(now);
            }
            Command::HeaterOff => {
                self.relay_on = false;
                self.relay_on_since = None;
                self.last_feed = None;
            }
            Command::Status | Command::Reset => {}
        }
        self.last_send = Some(now);
        self.outputs.push_back(Output::Serial(command));
    }

    /// `B+0` now, whatever the relay was thought to be.
    fn force_off(&mut self, now: Instant) {
        self.send(now, Command::HeaterOff);
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn reply_deadline(&self) -> Option<Instant> {
        match (self.last_reply_at, self.link_up_at) {
            (Some(r), Some(u)) => Some(r.max(u)),
            (r, u) => r.or(u),
        }
    }
}

#[cfg(test)]
mod tests;
