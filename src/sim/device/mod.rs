//! The MrCoffeeBot firmware as a pure state machine (SPEC §2), so that its timing quirks can be
//! tested in virtual time and driven by a thin pseudo-terminal shell.
//!
//! Nothing here does I/O or reads a clock: bytes and `now` go in through [`Device::receive`],
//! [`Device::handle_timeout`] and [`Device::inject`]; bytes come out of [`Device::poll_output`];
//! [`Device::poll_timeout`] says when to call again (extra calls are harmless).
//!
//! The model copies the real firmware's `main.cpp` (BenTheElder/MrCoffeeBot; by default the
//! last build, 6105f59, see [`Build`]) step by step, not a correct parser:
//!
//! - **Boot**: constructors (the DS1820 ROM search, ~21 ms), then the banner, then the watchdog
//!   is armed, then one sensor read (water, then temperature), then the loop. Nothing is
//!   answered before that first read. A missing temperature probe stops the board before its
//!   banner (a few NUL bytes, the error text at the wrong baud), for good.
//! - **Loop**: each pass checks the heater time-out (6105f59), reads the water level when 5 ms
//!   have passed since its last read (~1 ms), the temperature when 5 ms have passed since its
//!   last read (~16 ms), then drains the UART up to one `\n`. So the sensors are read about
//!   every 21 ms and the UART is left alone ~17 ms of that; the 16-byte RX FIFO holds what
//!   arrives meanwhile and drops the rest. Host bytes arrive one per 86.8 µs (115200 8N1).
//! - **Lines**: a 21-byte buffer; on the 22nd byte without `\n` it is cleared and refilled from
//!   the start. Commands match by case-sensitive prefix (`S+?`, `B+1`, `B+0`, `RESET`, in that
//!   order), so `S+?junk`, `B+10`, `RESETX` and `\r\n` endings count; `s+?` and ` S+?` do not.
//! - **Replies**: one line `W+%.2f,T+%.1f,B+%d\n` (05a9a00: three lines). A reply leaves the
//!   UART at one byte per 86.8 µs and is handed out once its last byte is sent; `printf`
//!   blocks until the 16-byte TX FIFO takes its tail (~1.4 ms for a reply), then the watchdog is
//!   fed. A reset while a reply is on the wire cuts it: the byte in the shift register arrives
//!   with its unsent bits as 1s (`W+\xb2`), the rest is lost, and the banner follows on the
//!   same line.
//! - **Heater** (6105f59): `B+1` and `B+0` restart a 1 s timer (`S+?` does not); the loop turns
//!   the relay off once it passes 1 s, checked between sensor reads. 05a9a00 has no time-out.
//! - **Watchdog**: 5 s after the last valid line (`RESET` included: on the real board the reset
//!   pin is never driven, so `RESET` only feeds the watchdog; [`SimConfig::reset_pin_wired`]
//!   makes it reboot instead).
//! - **DS18B20**: each read starts a conversion (750 ms; ignored while one runs) and reads the
//!   scratchpad at once, so a temperature is the previous conversion's (up to ~0.8 s old). It
//!   reads 85.0 until its first conversion after the sensor's own power-on (the board's power-on
//!   or a power cycle), and keeps its value across MCU reboots. A CRC failure reads -1000.0.
//!   Values are 1/16 °C steps, water distances 1/148 in steps, as the firmware computes them.
//! - **Dead ultrasonic ranger** ([`Fault::Hang`]): the water read never returns; a banner every
//!   5 s, never a reply.
//!
//! Memory is bounded: the FIFO, the wire, the output and the command logs all have caps.
//!
//! ## Where the model differs from the real firmware (checked against `../shared/realfw`)
//!
//! - Sensor and `printf` durations are fixed figures (water 0.5 ms + 148 µs per inch,
//!   temperature 16 ms, Convert T 6 ms into it, constructors 21 ms), not instruction-exact;
//!   replies come 1–22 ms after the command in both, but not at the same microsecond.
//! - A reply is handed out whole once its last byte is sent (the real UART trickles it out
//!   byte by byte over ~1.6 ms).
//! - A watchdog reset in the first 6 ms of a temperature read still counts that read's
//!   Convert T.
//! - The plant (hot plate, reservoir) is this crate's model, not realfw's, and the sensor noise
//!   is uniform jitter.
//! - Bytes with a baud mismatch are not garbled; the missing-probe NUL bytes are a fixed count.
//!
//! ## Parts
//!
//! - this file: the [`Device`], its driving contract, and what it shows ([`DeviceSnapshot`],
//!   [`CommandEvent`]);
//! - `config`: [`Build`] and [`SimConfig`], what the board is; `fault`: [`Fault`];
//! - `firmware`: the main loop, UART, line buffer, replies, heater time-out and watchdog;
//! - `sensors`: the DS18B20 and the HC-SR04; `plant`: the hot plate and the reservoir.

#![deny(clippy::disallowed_methods)]

mod config;
mod fault;
mod firmware;
mod plant;
mod sensors;
#[cfg(test)]
mod tests;

pub use config::{Build, SimConfig};
pub use fault::Fault;
pub use firmware::{
    BOOT_TIME, BYTE_TIME, HEATER_TIMEOUT, LINE_BUFFER_BYTES, SENSOR_PERIOD, UART_FIFO_BYTES,
    WATCHDOG_TIMEOUT,
};
pub use sensors::{CONVERSION_TIME, CRC_SENTINEL, POWER_ON_C, TEMPERATURE_READ};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use firmware::{Cpu, TxChunk};
use sensors::Sensor;

/// Host bytes in flight on the wire at most (~0.35 s at 115200); beyond that they are lost.
const WIRE_CAP: usize = 4096;
/// Output kept while nobody polls it; beyond that the controller's bytes are lost.
const OUTPUT_CAP: usize = 64 * 1024;

/// A valid command line the firmware accepted, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEvent {
    /// When the firmware handled the line (when it read its `\n` from the UART, not when the
    /// host wrote it).
    pub at: Instant,
    /// The command the line matched (`S+?`, `B+1`, `B+0`, `RESET`), whatever followed it.
    pub line: String,
}

/// What a test or an operator can see of the device at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSnapshot {
    /// The firmware build.
    pub firmware: Build,
    /// Whether the board has power (USB plugged in).
    pub powered: bool,
    /// Whether the heater relay conducts (the pin, or on when welded).
    pub heater_on: bool,
    /// Physical plate temperature, °C, without jitter or sentinels.
    pub plate_c: f64,
    /// Physical distance to the water surface, inches.
    pub water_distance_in: f64,
    /// MCU boots since construction (power-ons, watchdog and reset-pin reboots).
    pub boots: u64,
    /// Bytes from the host that were lost (FIFO overflow, sent during a reboot, or while muted).
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
    /// Whether the firmware stopped for good (booted without its temperature probe).
    pub halted: bool,
    /// Whether the firmware is in its main loop (past its banner and first sensor read), so a
    /// line written now is read.
    pub running: bool,
    /// Whether the DS18B20 has finished a conversion since its power-on (until then it reads
    /// 85.0, when [`SimConfig::sensor_power_on_85`]).
    pub sensor_converted: bool,
}

/// The simulated controller. See the module doc for the driving contract.
#[derive(Debug)]
pub struct Device {
    cfg: SimConfig,
    rng: fastrand::Rng,
    /// Time the model has been advanced to; `now` values before it are treated as it.
    clock: Instant,
    powered: bool,

    cpu: Cpu,
    /// Past the first sensor read since the last reset.
    running: bool,
    /// Host bytes on their way in; the front one arrives at `wire_at`.
    wire: VecDeque<u8>,
    wire_at: Instant,
    fifo: VecDeque<u8>,
    line: [u8; LINE_BUFFER_BYTES],
    line_len: usize,
    /// End of the last water and temperature reads (the rate limiters' timers).
    water_read_end: Instant,
    temperature_read_end: Instant,
    heater_pin: bool,
    /// Since the last `B+1`/`B+0` (or the boot's `heater.disable()`).
    heater_written: Instant,
    watchdog_deadline: Option<Instant>,
    /// A reset scheduled by [`Fault::Reboot`] with `mid_reply`.
    forced_reset: Option<Instant>,
    temperature_reading: Option<f64>,
    water_reading: Option<f64>,
    answered_since_boot: bool,
    pending_replies: VecDeque<(Instant, Vec<u8>)>,
    tx: VecDeque<TxChunk>,
    sensor: Sensor,

    plate_c: f64,
    water_distance_in: f64,

    muted: bool,
    ranger_dead: bool,
    crc_error: bool,
    probe_missing: bool,
    stuck_heater: bool,
    reply_delay: Duration,
    cut_next_reply: bool,
    power_on_85_each_boot: bool,
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
    /// Powers the board on at `now`: it boots, prints its banner ~21 ms later and starts with
    /// the heater off and the DS18B20 at its power-on value.
    pub fn new(cfg: SimConfig, now: Instant) -> Self {
        let mut device = Self {
            rng: fastrand::Rng::with_seed(cfg.seed),
            clock: now,
            powered: true,
            cpu: Cpu::Halted,
            running: false,
            wire: VecDeque::new(),
            wire_at: now,
            fifo: VecDeque::with_capacity(UART_FIFO_BYTES),
            line: [0; LINE_BUFFER_BYTES],
            line_len: 0,
            water_read_end: now,
            temperature_read_end: now,
            heater_pin: false,
            heater_written: now,
            watchdog_deadline: None,
            forced_reset: None,
            temperature_reading: None,
            water_reading: None,
            answered_since_boot: false,
            pending_replies: VecDeque::new(),
            tx: VecDeque::new(),
            sensor: Sensor::POWER_ON,
            plate_c: finite_or(cfg.initial_plate_c, cfg.ambient_c),
            water_distance_in: finite_or(cfg.initial_water_distance_in, 0.0),
            muted: false,
            ranger_dead: false,
            crc_error: false,
            probe_missing: false,
            stuck_heater: false,
            reply_delay: Duration::ZERO,
            cut_next_reply: false,
            power_on_85_each_boot: false,
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
        device.reset(now);
        device
    }

    /// Bytes the host writes at `now`. They arrive on the UART one per [`BYTE_TIME`], after
    /// whatever is still on its way; the firmware reads them as its loop allows.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) {
        self.advance(now);
        if !self.powered {
            return;
        }
        if self.muted {
            self.dropped_bytes += bytes.len() as u64;
            return;
        }
        if self.wire.is_empty() {
            self.wire_at = self.clock + BYTE_TIME;
        }
        let room = WIRE_CAP.saturating_sub(self.wire.len());
        let taken = bytes.len().min(room);
        self.wire.extend(&bytes[..taken]);
        self.dropped_bytes += (bytes.len() - taken) as u64;
    }

    /// Runs everything due at or before `now`. Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// When [`Device::handle_timeout`] must be called next; `None` while unpowered or halted
    /// with nothing left to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.powered {
            return None;
        }
        self.next_event()
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
            // A loop already stuck on the echo stays stuck until the watchdog reboots it.
            Fault::Hang(on) => self.ranger_dead = on,
            Fault::Reboot { mid_reply: true } => self.cut_next_reply = true,
            Fault::Reboot { mid_reply: false } => {
                if self.powered {
                    self.reset(self.clock);
                }
            }
            Fault::Garbage(bytes) => self.emit(&bytes),
            Fault::CrcError(on) => self.crc_error = on,
            Fault::ProbeMissing(on) => {
                if self.probe_missing && !on {
                    self.sensor = Sensor::POWER_ON;
                }
                self.probe_missing = on;
            }
            Fault::SetTemperature(c) => self.plate_c = finite_or(c, self.plate_c),
            Fault::SetWaterDistance(d) => {
                self.water_distance_in = finite_or(d, self.water_distance_in).max(0.0);
            }
            Fault::StuckHeater(on) => self.stuck_heater = on,
            Fault::ReplyDelay(delay) => self.reply_delay = delay,
            Fault::PowerOnReading85(on) => self.power_on_85_each_boot = on,
            Fault::TemperatureText(text) => self.temperature_text = text,
            Fault::WaterText(text) => self.water_text = text,
            Fault::AnswerBeforeFirstReading(on) => self.answer_before_reading = on,
        }
        self.run_cpu();
    }

    /// USB unplugged: the board and the DS18B20 lose power at once and the relay drops (unless
    /// welded). What was on the wire is lost. The plate keeps cooling.
    pub fn power_off(&mut self, now: Instant) {
        self.advance(now);
        self.powered = false;
        self.cpu = Cpu::Halted;
        self.heater_pin = false;
        self.watchdog_deadline = None;
        self.forced_reset = None;
        self.tx.clear();
        self.pending_replies.clear();
        self.dropped_bytes += (self.wire.len() + self.fifo.len()) as u64;
        self.wire.clear();
        self.fifo.clear();
        self.sensor = Sensor::POWER_ON;
    }

    /// USB plugged in again: a power-on boot (the DS18B20 reads 85.0 again). Harmless while
    /// powered.
    pub fn power_on(&mut self, now: Instant) {
        self.advance(now);
        if !self.powered {
            self.powered = true;
            self.sensor = Sensor::POWER_ON;
            self.reset(self.clock);
        }
    }

    /// The current state, for tests and the status line.
    pub fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            firmware: self.cfg.firmware,
            powered: self.powered,
            heater_on: self.relay_on(),
            plate_c: self.plate_c,
            water_distance_in: self.water_distance_in,
            boots: self.boots,
            dropped_bytes: self.dropped_bytes,
            commands: self.commands,
            muted: self.muted,
            hung: self.ranger_dead,
            stuck_heater: self.stuck_heater,
            crc_error: self.crc_error,
            halted: self.powered && self.cpu == Cpu::Halted,
            running: self.powered && self.running,
            sensor_converted: self.sensor.scratchpad.is_some() || !self.cfg.sensor_power_on_85,
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
        self.stuck_heater || (self.powered && self.heater_pin)
    }

    /// The earliest moment something happens by itself.
    fn next_event(&self) -> Option<Instant> {
        let cpu = match self.cpu {
            Cpu::Halted | Cpu::Hung => None,
            Cpu::Booting(t) | Cpu::Busy(t, _) | Cpu::Idle(t) => Some(t),
        };
        [
            cpu,
            (!self.wire.is_empty()).then_some(self.wire_at),
            self.watchdog_deadline,
            self.forced_reset,
            self.tx.front().map(TxChunk::end),
            self.pending_replies.front().map(|(t, _)| *t),
            self.sensor.conversion_end,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Moves the model to `now`, handling every event on the way in time order.
    fn advance(&mut self, now: Instant) {
        let now = now.max(self.clock);
        loop {
            let due = self.next_event().filter(|t| *t <= now);
            let target = due.unwrap_or(now);
            self.integrate(target.saturating_duration_since(self.clock));
            self.clock = target;
            match due {
                Some(t) => self.fire(t),
                None => break,
            }
        }
    }

    /// Handles everything due at `t` (= the clock). Every branch moves its deadline past `t`.
    fn fire(&mut self, t: Instant) {
        while let Some(chunk) = self.tx.front() {
            if chunk.end() > t {
                break;
            }
            if let Some(chunk) = self.tx.pop_front() {
                self.emit(&chunk.bytes);
            }
        }
        while self.pending_replies.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, reply)) = self.pending_replies.pop_front() {
                self.emit(&reply);
            }
        }
        if self.sensor.conversion_end.is_some_and(|end| end <= t) {
            self.sensor.conversion_end = None;
            let jitter = (self.rng.f64() * 2.0 - 1.0) * self.cfg.temperature_jitter_c;
            self.sensor.scratchpad = Some(self.plate_c + jitter);
        }
        if self.watchdog_deadline.is_some_and(|d| d <= t)
            || self.forced_reset.is_some_and(|d| d <= t)
        {
            self.reset(t);
            return;
        }
        while !self.wire.is_empty() && self.wire_at <= t {
            let Some(byte) = self.wire.pop_front() else {
                break;
            };
            self.wire_at += BYTE_TIME;
            let listening = matches!(self.cpu, Cpu::Busy(..) | Cpu::Idle(_) | Cpu::Hung);
            if listening && self.fifo.len() < UART_FIFO_BYTES {
                self.fifo.push_back(byte);
            } else {
                self.dropped_bytes += 1;
            }
            if matches!(self.cpu, Cpu::Idle(_)) {
                // The idle loop polls `readable()` every few µs: it takes the byte at once.
                self.cpu = Cpu::Idle(t);
                break;
            }
        }
        match self.cpu {
            Cpu::Booting(until) if until <= t => self.boot_done(t),
            Cpu::Busy(until, work) if until <= t => self.work_done(t, work),
            Cpu::Idle(until) if until <= t => self.run_cpu(),
            _ => {}
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.powered && !self.muted {
            let room = OUTPUT_CAP.saturating_sub(self.out.len());
            self.out.extend_from_slice(&bytes[..bytes.len().min(room)]);
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
