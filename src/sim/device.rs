//! The MrCoffeeBot firmware as a pure state machine (SPEC §2), so that its timing quirks can be
//! tested in virtual time and driven by a thin pseudo-terminal shell.
//!
//! Nothing here does I/O or reads a clock: bytes and `now` go in through [`Device::receive`],
//! [`Device::handle_timeout`] and [`Device::inject`]; bytes come out of [`Device::poll_output`];
//! [`Device::poll_timeout`] says when to call again (extra calls are harmless). The model copies
//! the firmware, not a correct parser: a 16-byte UART FIFO that is only drained in the 4 ms window
//! of each 20 ms sensor cycle (overflow is dropped), a 21-byte line buffer that wraps, exact
//! matching of the command lines, a 1 s heater timeout and a 5 s watchdog.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes the UART receive FIFO holds while the firmware is busy reading sensors.
pub const UART_FIFO_BYTES: usize = 16;
/// Size of the firmware's line buffer; a longer line wraps around inside it.
pub const LINE_BUFFER_BYTES: usize = 21;
/// Time spent reading the sensors in each cycle, with the UART left unread.
pub const SENSOR_READ: Duration = Duration::from_millis(16);
/// Time in each cycle during which the UART is drained and command lines are handled.
pub const UART_WINDOW: Duration = Duration::from_millis(4);
/// The heater goes off when this passes without a `B+1`.
pub const HEATER_TIMEOUT: Duration = Duration::from_secs(1);
/// The controller reboots when this passes without a valid command line.
pub const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(5);
/// The temperature the firmware prints when the DS18B20's CRC check fails.
pub const CRC_SENTINEL: &str = "-1000.0";
/// Entries kept in the command log; older ones are forgotten so a long run stays bounded.
const COMMAND_LOG_CAP: usize = 10_000;
/// Longest physics integration step, so Newton cooling stays accurate across long gaps.
const MAX_STEP: Duration = Duration::from_millis(20);
/// The plate cannot get hotter than boiling while water is pumped through it.
const BOIL_C: f64 = 100.0;
/// How much faster a dry plate heats than one with water in the boiler.
const DRY_HEAT_FACTOR: f64 = 1.5;

/// What the simulated controller and its coffee maker start as.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Printed in the banner: `MrCoffeeBot v<firmware_version> Booted.`.
    pub firmware_version: String,
    /// Room temperature the plate cools towards, °C.
    pub ambient_c: f64,
    /// Plate temperature at power-on, °C.
    pub initial_plate_c: f64,
    /// Distance from the sensor to the water surface at power-on, inches.
    pub initial_water_distance_in: f64,
    /// Distance at which the reservoir is empty and the pump stops, inches.
    pub empty_distance_in: f64,
    /// Distance of a full reservoir, inches (for users of the model; the model never refills).
    pub full_distance_in: f64,
    /// Heating power while the relay is on, °C/s (before cooling losses).
    pub heat_rate_c_per_s: f64,
    /// Newton cooling constant, 1/s: the plate loses `k × (T − ambient)` °C/s.
    pub cooling_per_s: f64,
    /// The plate pumps water (and the reservoir drains) above this temperature, °C.
    pub pump_threshold_c: f64,
    /// How fast the water surface drops while pumping, inches/s.
    pub drain_rate_in_per_s: f64,
    /// Largest jitter added to each temperature reading, °C (0 for exact readings).
    pub temperature_jitter_c: f64,
    /// Largest jitter added to each distance reading, inches (0 for exact readings).
    pub water_jitter_in: f64,
    /// Whether `RESET` reboots the board; on some boards the pin is not driven and nothing
    /// visible happens.
    pub reset_pin_wired: bool,
    /// A firmware build that answers before its first sensor reading: the first reply after each
    /// boot carries the largest double for `T+` and `W+`.
    pub answers_before_first_reading: bool,
    /// Seed of the jitter, so runs can be repeated.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            firmware_version: "2.0".to_owned(),
            ambient_c: 21.0,
            initial_plate_c: 21.0,
            initial_water_distance_in: 2.0,
            empty_distance_in: 8.0,
            full_distance_in: 1.0,
            heat_rate_c_per_s: 2.0,
            cooling_per_s: 0.005,
            pump_threshold_c: 70.0,
            // Full to empty (7 in) in about twelve cups of 52.5 s.
            drain_rate_in_per_s: 0.011,
            temperature_jitter_c: 0.15,
            water_jitter_in: 0.02,
            reset_pin_wired: true,
            answers_before_first_reading: false,
            seed: 0x00C0_FFEE,
        }
    }
}

/// A fault or a change of the world injected into the device.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Dead link: reads nothing and writes nothing; the heater timeout and watchdog still run,
    /// so the board reboots every 5 s unseen.
    Mute(bool),
    /// Firmware stuck on a dead ultrasonic sensor: never answers, the UART is never drained,
    /// and the watchdog prints a banner every 5 s.
    Hang(bool),
    /// Reboot now. With `mid_reply`, the next reply is cut after `T+` and one character and the
    /// board reboots there, so the banner follows on the same line.
    Reboot {
        /// Cut the next reply short instead of rebooting at once.
        mid_reply: bool,
    },
    /// Write these bytes to the host as they are.
    Garbage(Vec<u8>),
    /// The temperature sensor's CRC fails: `T+-1000.0`.
    CrcError(bool),
    /// Set the plate temperature, °C (the thermal model goes on from there).
    SetTemperature(f64),
    /// Set the distance to the water surface, inches (the water model goes on from there).
    SetWaterDistance(f64),
    /// Welded relay: the heater stays on and is reported `B+1` whatever is commanded.
    StuckHeater(bool),
    /// Answer every command this much later.
    ReplyDelay(Duration),
    /// The first temperature reading after each boot is the DS18B20's power-on value, 85.0.
    PowerOnReading85(bool),
    /// Print this text after `T+` instead of the reading (e.g. `inf`, `nan`, `ovf`).
    TemperatureText(Option<String>),
    /// Print this text after `W+` instead of the reading.
    WaterText(Option<String>),
    /// Switch the "answers before the first reading" firmware variant on or off.
    AnswerBeforeFirstReading(bool),
}

/// A valid command line the firmware accepted, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEvent {
    /// When the firmware handled the line (end of the FIFO drain, not when the host wrote it).
    pub at: Instant,
    /// The line without its line ending, e.g. `B+1`.
    pub line: String,
}

/// What a test or an operator can see of the device at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSnapshot {
    /// Whether the board has power (USB plugged in).
    pub powered: bool,
    /// Whether the heater relay conducts (the commanded state, or on when welded).
    pub heater_on: bool,
    /// Physical plate temperature, °C, without jitter or sentinels.
    pub plate_c: f64,
    /// Physical distance to the water surface, inches.
    pub water_distance_in: f64,
    /// Banners printed since construction, power-on included.
    pub boots: u64,
    /// Bytes from the host that were lost (FIFO overflow, or read while muted).
    pub dropped_bytes: u64,
    /// Valid command lines accepted since construction.
    pub commands: u64,
    /// Whether [`Fault::Mute`] holds.
    pub muted: bool,
    /// Whether [`Fault::Hang`] holds.
    pub hung: bool,
    /// Whether [`Fault::StuckHeater`] holds.
    pub stuck_heater: bool,
    /// Whether [`Fault::CrcError`] holds.
    pub crc_error: bool,
}

/// The two parts of the firmware's 20 ms loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the sensors; the UART fills its FIFO unattended.
    Sensors,
    /// Draining the UART and handling command lines.
    Uart,
}

/// A command line after exact matching, as the firmware's `strcmp` chain sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Status,
    HeaterOn,
    HeaterOff,
    Reset,
}

/// The simulated controller. See the module doc for the driving contract.
#[derive(Debug)]
pub struct Device {
    cfg: SimConfig,
    rng: fastrand::Rng,
    /// Time the model has been advanced to; `now` values before it are treated as it.
    clock: Instant,
    powered: bool,

    phase: Phase,
    phase_end: Instant,
    fifo: VecDeque<u8>,
    line: [u8; LINE_BUFFER_BYTES],
    line_len: usize,
    heater_commanded: bool,
    heater_deadline: Option<Instant>,
    watchdog_deadline: Instant,
    temperature_reading: Option<f64>,
    water_reading: Option<f64>,
    first_reading_pending: bool,
    answered_since_boot: bool,
    pending_replies: VecDeque<(Instant, Vec<u8>)>,

    plate_c: f64,
    water_distance_in: f64,

    muted: bool,
    hung: bool,
    crc_error: bool,
    stuck_heater: bool,
    reply_delay: Duration,
    cut_next_reply: bool,
    power_on_85: bool,
    answer_before_reading: bool,
    temperature_text: Option<String>,
    water_text: Option<String>,

    out: Vec<u8>,
    boots: u64,
    dropped_bytes: u64,
    commands: u64,
    log: VecDeque<CommandEvent>,
    new_commands: VecDeque<CommandEvent>,
}

impl Device {
    /// Powers the board on at `now`: it prints its banner and starts with the heater off.
    pub fn new(cfg: SimConfig, now: Instant) -> Self {
        let mut device = Self {
            rng: fastrand::Rng::with_seed(cfg.seed),
            clock: now,
            powered: true,
            phase: Phase::Sensors,
            phase_end: now,
            fifo: VecDeque::with_capacity(UART_FIFO_BYTES),
            line: [0; LINE_BUFFER_BYTES],
            line_len: 0,
            heater_commanded: false,
            heater_deadline: None,
            watchdog_deadline: now,
            temperature_reading: None,
            water_reading: None,
            first_reading_pending: true,
            answered_since_boot: false,
            pending_replies: VecDeque::new(),
            plate_c: finite_or(cfg.initial_plate_c, cfg.ambient_c),
            water_distance_in: finite_or(cfg.initial_water_distance_in, 0.0),
            muted: false,
            hung: false,
            crc_error: false,
            stuck_heater: false,
            reply_delay: Duration::ZERO,
            cut_next_reply: false,
            power_on_85: false,
            answer_before_reading: cfg.answers_before_first_reading,
            temperature_text: None,
            water_text: None,
            out: Vec::new(),
            boots: 0,
            dropped_bytes: 0,
            commands: 0,
            log: VecDeque::new(),
            new_commands: VecDeque::new(),
            cfg,
        };
        device.boot(now);
        device
    }

    /// Bytes arriving on the UART at `now`. While the firmware reads sensors they wait in the
    /// 16-byte FIFO and what does not fit is dropped; during the UART window they are handled.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) {
        self.advance(now);
        if !self.powered {
            return;
        }
        if self.muted {
            self.dropped_bytes += bytes.len() as u64;
            return;
        }
        for &byte in bytes {
            if self.phase == Phase::Uart && !self.hung && self.fifo.is_empty() {
                self.handle_byte(byte);
            } else if self.fifo.len() < UART_FIFO_BYTES {
                self.fifo.push_back(byte);
            } else {
                self.dropped_bytes += 1;
            }
        }
    }

    /// Runs everything due at or before `now`. Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// When [`Device::handle_timeout`] must be called next; `None` while unpowered.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.powered {
            return None;
        }
        let mut next = self.phase_end.min(self.watchdog_deadline);
        if let Some(t) = self.heater_deadline {
            next = next.min(t);
        }
        if let Some((t, _)) = self.pending_replies.front() {
            next = next.min(*t);
        }
        Some(next)
    }

    /// Bytes the controller has written since the last call, if any.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out))
        }
    }

    /// The next valid command line accepted since the last call (for a shell that forwards them).
    pub fn poll_command(&mut self) -> Option<CommandEvent> {
        self.new_commands.pop_front()
    }

    /// Applies a fault or a change of the world at `now`.
    pub fn inject(&mut self, now: Instant, fault: Fault) {
        self.advance(now);
        match fault {
            Fault::Mute(on) => self.muted = on,
            Fault::Hang(on) => self.hung = on,
            Fault::Reboot { mid_reply: true } => self.cut_next_reply = true,
            Fault::Reboot { mid_reply: false } => {
                if self.powered {
                    self.boot(self.clock);
                }
            }
            Fault::Garbage(bytes) => self.emit(&bytes),
            Fault::CrcError(on) => self.crc_error = on,
            Fault::SetTemperature(c) => self.plate_c = finite_or(c, self.plate_c),
            Fault::SetWaterDistance(d) => {
                self.water_distance_in = finite_or(d, self.water_distance_in).max(0.0);
            }
            Fault::StuckHeater(on) => self.stuck_heater = on,
            Fault::ReplyDelay(delay) => self.reply_delay = delay,
            Fault::PowerOnReading85(on) => self.power_on_85 = on,
            Fault::TemperatureText(text) => self.temperature_text = text,
            Fault::WaterText(text) => self.water_text = text,
            Fault::AnswerBeforeFirstReading(on) => self.answer_before_reading = on,
        }
    }

    /// USB unplugged: the board stops at once and the relay drops (unless welded). The plate
    /// and water models go on.
    pub fn power_off(&mut self, now: Instant) {
        self.advance(now);
        self.powered = false;
        self.heater_commanded = false;
        self.heater_deadline = None;
        self.fifo.clear();
        self.pending_replies.clear();
        self.out.clear();
    }

    /// USB plugged in again: a power-on boot with its banner. Harmless while powered.
    pub fn power_on(&mut self, now: Instant) {
        self.advance(now);
        if !self.powered {
            self.powered = true;
            self.boot(self.clock);
        }
    }

    /// The current state, for tests and the status line.
    pub fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            powered: self.powered,
            heater_on: self.relay_on(),
            plate_c: self.plate_c,
            water_distance_in: self.water_distance_in,
            boots: self.boots,
            dropped_bytes: self.dropped_bytes,
            commands: self.commands,
            muted: self.muted,
            hung: self.hung,
            stuck_heater: self.stuck_heater,
            crc_error: self.crc_error,
        }
    }

    /// Every valid command line accepted (the latest 10 000), oldest first.
    pub fn command_log(&self) -> impl Iterator<Item = &CommandEvent> {
        self.log.iter()
    }

    /// The banner line, newline included.
    pub fn banner(&self) -> String {
        format!("MrCoffeeBot v{} Booted.\n", self.cfg.firmware_version)
    }

    fn relay_on(&self) -> bool {
        self.stuck_heater || (self.powered && self.heater_commanded)
    }

    /// Moves the model to `now`, firing every deadline on the way in time order.
    fn advance(&mut self, now: Instant) {
        let now = now.max(self.clock);
        loop {
            let due = self.poll_timeout().filter(|t| *t <= now);
            let target = due.unwrap_or(now);
            self.integrate(target.saturating_duration_since(self.clock));
            self.clock = target;
            match due {
                Some(t) => self.fire(t),
                None => break,
            }
        }
    }

    /// Fires everything due at `t` (= the clock). Every branch moves its deadline past `t`.
    fn fire(&mut self, t: Instant) {
        if self.heater_deadline.is_some_and(|d| d <= t) {
            self.heater_commanded = false;
            self.heater_deadline = None;
        }
        if self.watchdog_deadline <= t {
            self.boot(t);
            return;
        }
        while let Some((at, _)) = self.pending_replies.front() {
            if *at > t {
                break;
            }
            if let Some((_, reply)) = self.pending_replies.pop_front() {
                self.emit(&reply);
            }
        }
        if self.phase_end <= t {
            match self.phase {
                Phase::Sensors => {
                    if !self.hung {
                        self.read_sensors();
                    }
                    self.phase = Phase::Uart;
                    self.phase_end = t + UART_WINDOW;
                    if !self.hung {
                        while let Some(byte) = self.fifo.pop_front() {
                            self.handle_byte(byte);
                            if self.phase != Phase::Uart {
                                break; // rebooted by this line
                            }
                        }
                    }
                }
                Phase::Uart => {
                    self.phase = Phase::Sensors;
                    self.phase_end = t + SENSOR_READ;
                }
            }
        }
    }

    fn boot(&mut self, t: Instant) {
        self.boots += 1;
        let banner = self.banner();
        self.emit(banner.as_bytes());
        self.heater_commanded = false;
        self.heater_deadline = None;
        self.watchdog_deadline = t + WATCHDOG_TIMEOUT;
        self.fifo.clear();
        self.line_len = 0;
        self.pending_replies.clear();
        self.temperature_reading = None;
        self.water_reading = None;
        self.first_reading_pending = true;
        self.answered_since_boot = false;
        self.cut_next_reply = false;
        self.phase = Phase::Sensors;
        self.phase_end = t + SENSOR_READ;
    }

    fn read_sensors(&mut self) {
        if self.answer_before_reading && !self.answered_since_boot {
            return;
        }
        let jitter_t = (self.rng.f64() * 2.0 - 1.0) * self.cfg.temperature_jitter_c;
        let jitter_w = (self.rng.f64() * 2.0 - 1.0) * self.cfg.water_jitter_in;
        let temperature = if self.first_reading_pending && self.power_on_85 {
            85.0
        } else {
            self.plate_c + jitter_t
        };
        self.first_reading_pending = false;
        self.temperature_reading = Some(temperature);
        self.water_reading = Some((self.water_distance_in + jitter_w).max(0.0));
    }

    /// One byte from the UART into the line buffer, as the firmware does it: the index wraps at
    /// 21, and on `\n` the line is whatever sits before the index.
    fn handle_byte(&mut self, byte: u8) {
        if byte == b'\n' {
            let mut len = self.line_len;
            self.line_len = 0;
            if len > 0 && self.line[len - 1] == b'\r' {
                len -= 1;
            }
            let line = match &self.line[..len] {
                b"S+?" => Line::Status,
                b"B+1" => Line::HeaterOn,
                b"B+0" => Line::HeaterOff,
                b"RESET" => Line::Reset,
                _ => return,
            };
            self.handle_line(line);
        } else {
            self.line[self.line_len] = byte;
            self.line_len = (self.line_len + 1) % LINE_BUFFER_BYTES;
        }
    }

    fn handle_line(&mut self, line: Line) {
        let t = self.clock;
        self.watchdog_deadline = t + WATCHDOG_TIMEOUT;
        self.commands += 1;
        let text = match line {
            Line::Status => "S+?",
            Line::HeaterOn => "B+1",
            Line::HeaterOff => "B+0",
            Line::Reset => "RESET",
        };
        let event = CommandEvent {
            at: t,
            line: text.to_owned(),
        };
        if self.log.len() >= COMMAND_LOG_CAP {
            self.log.pop_front();
        }
        self.log.push_back(event.clone());
        self.new_commands.push_back(event);
        match line {
            Line::Status => {}
            Line::HeaterOn => {
                self.heater_commanded = true;
                self.heater_deadline = Some(t + HEATER_TIMEOUT);
            }
            Line::HeaterOff => {
                self.heater_commanded = false;
                self.heater_deadline = None;
            }
            Line::Reset => {
                if self.cfg.reset_pin_wired {
                    self.boot(t);
                }
                return;
            }
        }
        self.reply(t);
    }

    fn reply(&mut self, t: Instant) {
        let water = match (&self.water_text, self.water_reading) {
            (Some(text), _) => text.clone(),
            (None, Some(d)) => format!("{d:.2}"),
            (None, None) => format!("{:.2}", f64::MAX),
        };
        let temperature = match (&self.temperature_text, self.temperature_reading) {
            (Some(text), _) => text.clone(),
            (None, _) if self.crc_error => CRC_SENTINEL.to_owned(),
            (None, Some(c)) => format!("{c:.1}"),
            (None, None) => format!("{:.1}", f64::MAX),
        };
        self.answered_since_boot = true;
        if self.cut_next_reply {
            let cut: String = temperature.chars().take(1).collect();
            let partial = format!("W+{water}\nT+{cut}");
            self.emit(partial.as_bytes());
            self.boot(t);
            return;
        }
        let reply = format!(
            "W+{water}\nT+{temperature}\nB+{}\n",
            u8::from(self.relay_on())
        );
        if self.reply_delay.is_zero() {
            self.emit(reply.as_bytes());
        } else {
            self.pending_replies
                .push_back((t + self.reply_delay, reply.into_bytes()));
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.powered && !self.muted {
            self.out.extend_from_slice(bytes);
        }
    }

    /// The thermal and water model over `dt`: heating while the relay conducts (faster when the
    /// boiler is dry), Newton cooling towards ambient, pumping above the threshold, which holds
    /// the plate at boiling and lowers the water surface.
    fn integrate(&mut self, dt: Duration) {
        let mut left = dt;
        while !left.is_zero() {
            let step = left.min(MAX_STEP);
            left -= step;
            let h = step.as_secs_f64();
            let relay = self.relay_on();
            let has_water = self.water_distance_in < self.cfg.empty_distance_in;
            let pumping = relay && has_water && self.plate_c >= self.cfg.pump_threshold_c;
            let mut rate = -self.cfg.cooling_per_s * (self.plate_c - self.cfg.ambient_c);
            if relay {
                let factor = if has_water { 1.0 } else { DRY_HEAT_FACTOR };
                rate += self.cfg.heat_rate_c_per_s * factor;
            }
            self.plate_c += rate * h;
            if pumping {
                self.plate_c = self.plate_c.min(BOIL_C);
                self.water_distance_in = (self.water_distance_in
                    + self.cfg.drain_rate_in_per_s * h)
                    .min(self.cfg.empty_distance_in);
            }
        }
    }
}

fn finite_or(value: f64, fallback: f64) -> f64 {
    if value.is_finite() {
        value
    } else {
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BANNER: &str = "MrCoffeeBot v2.0 Booted.\n";

    /// A device in virtual time: jumps from deadline to deadline, never sleeps.
    struct Bench {
        dev: Device,
        start: Instant,
        now: Instant,
        out: Vec<u8>,
    }

    fn exact() -> SimConfig {
        SimConfig {
            temperature_jitter_c: 0.0,
            water_jitter_in: 0.0,
            ..SimConfig::default()
        }
    }

    impl Bench {
        fn new(cfg: SimConfig) -> Self {
            let start = Instant::now();
            let mut dev = Device::new(cfg, start);
            let out = dev.poll_output().unwrap_or_default();
            Self {
                dev,
                start,
                now: start,
                out,
            }
        }

        fn run_for(&mut self, d: Duration) {
            let until = self.now + d;
            while let Some(t) = self.dev.poll_timeout().filter(|t| *t <= until) {
                self.now = t.max(self.now);
                self.dev.handle_timeout(self.now);
                self.drain();
            }
            self.now = until;
            self.dev.handle_timeout(until);
            self.drain();
        }

        fn send(&mut self, text: &str) {
            self.dev.receive(self.now, text.as_bytes());
            self.drain();
        }

        /// Sends a command and lets one cycle pass, as a careful host does.
        fn command(&mut self, text: &str) -> String {
            self.send(text);
            self.run_for(Duration::from_millis(25));
            self.take()
        }

        fn drain(&mut self) {
            while let Some(bytes) = self.dev.poll_output() {
                self.out.extend(bytes);
            }
        }

        fn take(&mut self) -> String {
            String::from_utf8(std::mem::take(&mut self.out)).unwrap()
        }

        fn boots(&self) -> u64 {
            self.dev.snapshot().boots
        }
    }

    fn with_plate(c: f64, water: f64) -> Bench {
        Bench::new(SimConfig {
            initial_plate_c: c,
            ambient_c: c,
            initial_water_distance_in: water,
            ..exact()
        })
    }

    #[test]
    fn boots_with_banner_and_answers_in_the_exact_format() {
        let mut b = with_plate(50.0, 3.25);
        assert_eq!(b.take(), BANNER);
        assert_eq!(b.command("S+?\n"), "W+3.25\nT+50.0\nB+0\n");
        assert_eq!(b.command("B+1\r\n"), "W+3.25\nT+50.0\nB+1\n");
        assert_eq!(b.command("B+0\n"), "W+3.25\nT+50.0\nB+0\n");
        let log: Vec<_> = b.dev.command_log().map(|e| e.line.as_str()).collect();
        assert_eq!(log, ["S+?", "B+1", "B+0"]);
    }

    #[test]
    fn banner_carries_the_configured_version() {
        let mut b = Bench::new(SimConfig {
            firmware_version: "2.1-rc1".into(),
            ..exact()
        });
        assert_eq!(b.take(), "MrCoffeeBot v2.1-rc1 Booted.\n");
    }

    #[test]
    fn reads_the_sensors_before_the_first_answer() {
        let mut b = with_plate(40.0, 2.0);
        b.take();
        b.send("S+?\n");
        assert_eq!(
            b.take(),
            "",
            "nothing is answered during the first sensor read"
        );
        b.run_for(Duration::from_millis(20));
        assert_eq!(b.take(), "W+2.00\nT+40.0\nB+0\n");
        let first = b.dev.command_log().next().unwrap().at;
        assert_eq!(first - b.start, SENSOR_READ);
    }

    #[test]
    fn heater_times_out_one_second_after_the_last_b1() {
        let mut b = Bench::new(exact());
        b.command("B+1\n");
        b.run_for(Duration::from_millis(900));
        assert!(b.dev.snapshot().heater_on);
        b.run_for(Duration::from_millis(200));
        assert!(!b.dev.snapshot().heater_on);
        assert!(b.command("S+?\n").ends_with("B+0\n"));
    }

    #[test]
    fn heater_stays_on_while_fed_and_status_polls_do_not_feed_it() {
        let mut b = Bench::new(exact());
        for _ in 0..20 {
            b.command("B+1\n");
            b.run_for(Duration::from_millis(225));
            assert!(b.dev.snapshot().heater_on);
        }
        for _ in 0..5 {
            b.command("S+?\n");
            b.run_for(Duration::from_millis(225));
        }
        assert!(!b.dev.snapshot().heater_on);
    }

    #[test]
    fn watchdog_reboots_after_five_silent_seconds() {
        let mut b = Bench::new(exact());
        b.take();
        b.command("B+1\n");
        b.run_for(Duration::from_millis(4900));
        assert_eq!(b.boots(), 1);
        b.take();
        b.run_for(Duration::from_millis(200));
        assert_eq!(b.boots(), 2);
        assert_eq!(b.take(), BANNER);
        assert!(!b.dev.snapshot().heater_on);
        b.run_for(Duration::from_secs(10));
        assert_eq!(b.boots(), 4, "keeps rebooting every 5 s");
    }

    #[test]
    fn a_status_poll_every_second_keeps_the_watchdog_fed() {
        let mut b = Bench::new(exact());
        for _ in 0..12 {
            b.command("S+?\n");
            b.run_for(Duration::from_millis(975));
        }
        assert_eq!(b.boots(), 1);
    }

    #[test]
    fn unknown_lines_get_no_reply_and_do_not_feed_the_watchdog() {
        let mut b = Bench::new(exact());
        b.take();
        for line in ["TEMP+?\n", "s+?\n", "S+? \n", "B+2\n", "\n", "RESET2\n"] {
            assert_eq!(b.command(line), "", "{line:?}");
            b.run_for(Duration::from_millis(900));
        }
        assert_eq!(b.boots(), 2);
        assert_eq!(b.dev.command_log().count(), 0);
    }

    #[test]
    fn a_burst_of_more_than_16_bytes_loses_the_tail() {
        let mut b = Bench::new(exact());
        b.take();
        // Written while the firmware reads its sensors: the FIFO keeps 16 of 20 bytes.
        b.send("B+1\nS+?\nS+?\nS+?\nB+0\n");
        b.run_for(Duration::from_millis(25));
        let log: Vec<_> = b.dev.command_log().map(|e| e.line.clone()).collect();
        assert_eq!(log, ["B+1", "S+?", "S+?", "S+?"]);
        assert_eq!(b.dev.snapshot().dropped_bytes, 4);
        assert!(b.dev.snapshot().heater_on, "the B+0 was lost");
        // The lost newline glues the next command onto the leftover garbage.
        b.send("B+0\n");
        b.run_for(Duration::from_millis(25));
        assert_eq!(b.dev.command_log().count(), 5);
    }

    #[test]
    fn one_command_at_a_time_never_loses_anything() {
        let mut b = Bench::new(exact());
        b.take();
        for i in 0..50 {
            let line = if i % 2 == 0 { "B+1\n" } else { "S+?\n" };
            assert_eq!(b.command(line).lines().count(), 3);
        }
        assert_eq!(b.dev.snapshot().dropped_bytes, 0);
    }

    #[test]
    fn a_16_byte_burst_fits_the_fifo() {
        let mut b = Bench::new(exact());
        b.take();
        b.send("S+?\nS+?\nS+?\nS+?\n");
        b.run_for(Duration::from_millis(25));
        assert_eq!(b.take().lines().count(), 12);
        assert_eq!(b.dev.snapshot().dropped_bytes, 0);
    }

    #[test]
    fn a_line_longer_than_the_buffer_wraps_into_garbage() {
        let mut b = Bench::new(exact());
        b.take();
        // 25 bytes, sent in FIFO-sized pieces: the buffer wraps and holds "xxxx".
        b.command("B+1xxxxxxxxxxxx");
        assert_eq!(b.command("xxxxxxxxxx\n"), "");
        // Exactly 21 bytes: the index is back at 0, an empty line.
        b.command("S+?xxxxxxxxxxxx");
        assert_eq!(b.command("xxxxxx\n"), "");
        assert_eq!(b.dev.command_log().count(), 0);
        assert!(!b.dev.snapshot().heater_on);
    }

    #[test]
    fn the_wrap_keeps_only_the_tail_as_the_firmware_does() {
        // A firmware quirk, not a feature: 21 bytes of noise then `S+?` is answered.
        let mut b = Bench::new(exact());
        b.take();
        b.command("xxxxxxxxxxxxxxxx");
        b.command("xxxxx");
        assert_eq!(b.command("S+?\n").lines().count(), 3);
    }

    #[test]
    fn crc_failure_prints_the_sentinel() {
        let mut b = with_plate(30.0, 2.0);
        b.take();
        b.inject(Fault::CrcError(true));
        assert_eq!(b.command("S+?\n"), "W+2.00\nT+-1000.0\nB+0\n");
        b.inject(Fault::CrcError(false));
        assert_eq!(b.command("S+?\n"), "W+2.00\nT+30.0\nB+0\n");
    }

    #[test]
    fn other_sentinels_can_be_injected() {
        let mut b = with_plate(30.0, 2.0);
        b.take();
        b.inject(Fault::TemperatureText(Some("nan".into())));
        b.inject(Fault::WaterText(Some("ovf".into())));
        assert_eq!(b.command("S+?\n"), "W+ovf\nT+nan\nB+0\n");
    }

    #[test]
    fn power_on_reading_of_85_after_a_boot() {
        let mut b = with_plate(30.0, 2.0);
        b.inject(Fault::PowerOnReading85(true));
        b.inject(Fault::Reboot { mid_reply: false });
        b.take();
        assert_eq!(b.command("S+?\n"), "W+2.00\nT+85.0\nB+0\n");
        assert_eq!(b.command("S+?\n"), "W+2.00\nT+30.0\nB+0\n");
    }

    #[test]
    fn a_firmware_that_answers_before_reading_prints_the_largest_double() {
        let mut b = Bench::new(SimConfig {
            answers_before_first_reading: true,
            ..exact()
        });
        b.take();
        let reply = b.command("S+?\n");
        let expected = format!("W+{:.2}\nT+{:.1}\nB+0\n", f64::MAX, f64::MAX);
        assert_eq!(reply, expected);
        assert!(reply.len() > 600);
        assert_eq!(b.command("S+?\n"), "W+2.00\nT+21.0\nB+0\n");
    }

    #[test]
    fn a_welded_relay_stays_on_after_b0() {
        let mut b = Bench::new(exact());
        b.inject(Fault::StuckHeater(true));
        b.take();
        b.command("B+1\n");
        assert!(b.command("B+0\n").ends_with("B+1\n"));
        b.run_for(Duration::from_secs(3));
        assert!(b.dev.snapshot().heater_on);
        assert!(b.command("S+?\n").ends_with("B+1\n"));
    }

    #[test]
    fn a_reboot_mid_reply_puts_the_banner_on_the_cut_line() {
        let mut b = with_plate(52.3, 2.0);
        b.take();
        b.command("B+1\n");
        b.inject(Fault::Reboot { mid_reply: true });
        let out = b.command("S+?\n");
        assert_eq!(out, format!("W+2.00\nT+5{BANNER}"));
        assert_eq!(b.boots(), 2);
        assert!(!b.dev.snapshot().heater_on);
    }

    #[test]
    fn reset_reboots_only_when_the_pin_is_wired() {
        let mut b = Bench::new(exact());
        b.take();
        assert_eq!(b.command("RESET\n"), BANNER);
        assert_eq!(b.boots(), 2);
        let mut b = Bench::new(SimConfig {
            reset_pin_wired: false,
            ..exact()
        });
        b.take();
        assert_eq!(b.command("RESET\n"), "");
        assert_eq!(b.boots(), 1);
    }

    #[test]
    fn mute_is_a_dead_link_that_reboots_unseen() {
        let mut b = Bench::new(exact());
        b.take();
        b.command("B+1\n");
        b.inject(Fault::Mute(true));
        assert_eq!(b.command("S+?\n"), "");
        assert_eq!(b.dev.snapshot().dropped_bytes, 4);
        b.run_for(Duration::from_millis(1100));
        assert!(!b.dev.snapshot().heater_on, "the heater timeout still runs");
        b.run_for(Duration::from_secs(10));
        assert_eq!(b.boots(), 3);
        assert_eq!(b.take(), "");
        b.inject(Fault::Mute(false));
        assert_eq!(b.command("S+?\n").lines().count(), 3);
    }

    #[test]
    fn a_hung_firmware_prints_a_banner_every_five_seconds_and_never_answers() {
        let mut b = Bench::new(exact());
        b.take();
        b.inject(Fault::Hang(true));
        let mut seen = String::new();
        for _ in 0..15 {
            seen += &b.command("S+?\n");
            b.run_for(Duration::from_millis(975));
            seen += &b.take();
        }
        assert_eq!(seen, BANNER.repeat(3));
        assert_eq!(b.boots(), 4);
        assert_eq!(b.dev.command_log().count(), 0);
    }

    #[test]
    fn replies_can_be_delayed() {
        let mut b = Bench::new(exact());
        b.take();
        b.inject(Fault::ReplyDelay(Duration::from_millis(300)));
        b.send("S+?\n");
        b.run_for(Duration::from_millis(250));
        assert_eq!(b.take(), "");
        b.run_for(Duration::from_millis(100));
        assert_eq!(b.take().lines().count(), 3);
    }

    #[test]
    fn garbage_is_written_as_is() {
        let mut b = Bench::new(exact());
        b.take();
        b.inject(Fault::Garbage(b"\xff\x00junk".to_vec()));
        assert_eq!(b.out, b"\xff\x00junk");
    }

    #[test]
    fn readings_jitter_by_a_digit_or_two() {
        let mut b = with_plate(60.0, 3.0);
        b.dev.cfg.temperature_jitter_c = 0.15;
        b.dev.cfg.water_jitter_in = 0.02;
        b.take();
        let mut temperatures = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let reply = b.command("S+?\n");
            let t: f64 = reply.lines().nth(1).unwrap()[2..].parse().unwrap();
            let w: f64 = reply.lines().next().unwrap()[2..].parse().unwrap();
            assert!((t - 60.0).abs() <= 0.21, "{t}");
            assert!((w - 3.0).abs() <= 0.021, "{w}");
            temperatures.insert(reply.lines().nth(1).unwrap().to_owned());
        }
        assert!(temperatures.len() > 1);
    }

    /// Feeds `B+1` every 250 ms for `secs` seconds.
    fn heat_for(b: &mut Bench, secs: u64) {
        for _ in 0..secs * 4 {
            b.command("B+1\n");
            b.run_for(Duration::from_millis(225));
        }
    }

    #[test]
    fn the_plate_heats_while_on_and_cools_towards_ambient_when_off() {
        let mut b = Bench::new(exact());
        heat_for(&mut b, 10);
        let hot = b.dev.snapshot().plate_c;
        assert!((35.0..42.0).contains(&hot), "{hot}");
        b.command("B+0\n");
        b.run_for(Duration::from_secs(60));
        let cooled = b.dev.snapshot().plate_c;
        assert!(cooled < hot - 1.0 && cooled > 21.0, "{cooled}");
        b.run_for(Duration::from_secs(3600));
        assert!((b.dev.snapshot().plate_c - 21.0).abs() < 0.5);
    }

    #[test]
    fn the_reservoir_drains_while_pumping_and_a_dry_plate_runs_away() {
        let mut b = with_plate(95.0, 7.9);
        b.dev.cfg.ambient_c = 21.0;
        heat_for(&mut b, 5);
        let s = b.dev.snapshot();
        assert!(
            s.plate_c <= BOIL_C,
            "held at boiling while pumping: {}",
            s.plate_c
        );
        assert!(s.water_distance_in > 7.9);
        heat_for(&mut b, 10);
        let s = b.dev.snapshot();
        assert_eq!(s.water_distance_in, 8.0, "empty");
        assert!(s.plate_c > 110.0, "dry boil: {}", s.plate_c);
    }

    #[test]
    fn unplugged_board_is_silent_and_boots_when_plugged_in() {
        let mut b = Bench::new(exact());
        b.take();
        b.command("B+1\n");
        b.dev.power_off(b.now);
        assert!(!b.dev.snapshot().heater_on);
        assert_eq!(b.dev.poll_timeout(), None);
        assert_eq!(b.command("S+?\n"), "");
        b.run_for(Duration::from_secs(20));
        assert_eq!(b.boots(), 1);
        b.dev.power_on(b.now);
        b.drain();
        assert_eq!(b.take(), BANNER);
        assert_eq!(b.command("S+?\n").lines().count(), 3);
    }

    proptest! {
        /// Whatever arrives, whenever: no panic, the heater never outlives its 1 s timeout, and
        /// every output line is a banner, a reply line, or a banner glued to a cut line.
        #[test]
        fn any_input_is_survived(
            chunks in proptest::collection::vec(
                (0u64..1500, prop_oneof![
                    Just(b"B+1\n".to_vec()),
                    Just(b"S+?\n".to_vec()),
                    Just(b"B+0\n".to_vec()),
                    Just(b"RESET\n".to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..40),
                ]),
                0..60,
            )
        ) {
            let mut b = Bench::new(SimConfig::default());
            let mut last_b1: Option<Instant> = None;
            for (gap_ms, bytes) in chunks {
                b.run_for(Duration::from_millis(gap_ms));
                b.send_bytes(&bytes);
                if let Some(e) = b.dev.command_log().filter(|e| e.line == "B+1").last() {
                    last_b1 = Some(e.at);
                }
                if b.dev.snapshot().heater_on {
                    let since = b.now - last_b1.expect("heater on without any B+1");
                    prop_assert!(since <= HEATER_TIMEOUT + Duration::from_millis(20));
                }
            }
            b.run_for(Duration::from_millis(30));
            let out = b.take();
            for line in out.lines() {
                let ok = line == BANNER.trim_end()
                    || line.starts_with("W+")
                    || line.starts_with("T+")
                    || line.starts_with("B+");
                prop_assert!(ok, "{line:?}");
            }
        }
    }

    impl Bench {
        fn inject(&mut self, fault: Fault) {
            self.dev.inject(self.now, fault);
            self.drain();
        }

        fn send_bytes(&mut self, bytes: &[u8]) {
            self.dev.receive(self.now, bytes);
            self.drain();
        }
    }
}
