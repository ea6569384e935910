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

#![deny(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Bytes the UART receive FIFO holds while the firmware is busy reading sensors.
pub const UART_FIFO_BYTES: usize = 16;
/// Size of the firmware's line buffer (`7*3`); a longer line wraps around inside it.
pub const LINE_BUFFER_BYTES: usize = 21;
/// One byte on the wire at 115200 8N1 (10 bits).
pub const BYTE_TIME: Duration = Duration::from_nanos(86_806);
/// One bit on the wire at 115200.
const BIT_TIME: Duration = Duration::from_nanos(8_681);
/// The firmware's `RateLimiter` period for each sensor (5000 µs).
pub const SENSOR_PERIOD: Duration = Duration::from_millis(5);
/// One temperature read: Match ROM, Convert T, Match ROM, Read Scratchpad (bit-banged 1-Wire).
pub const TEMPERATURE_READ: Duration = Duration::from_millis(16);
/// When the Convert T command goes out within a temperature read.
const CONVERT_T_AT: Duration = Duration::from_millis(6);
/// The DS18B20's 12-bit conversion time.
pub const CONVERSION_TIME: Duration = Duration::from_millis(750);
/// Fixed part of a water read: trigger pulse and the HC-SR04's 460 µs before the echo.
const WATER_READ_BASE: Duration = Duration::from_micros(500);
/// Echo time per inch of distance (the firmware divides by 2 × 74).
const ECHO_PER_INCH_US: f64 = 148.0;
/// The firmware's range cap (`set_max_read_inches(72)`).
const MAX_WATER_IN: f64 = 72.0;
/// Static constructors before `main()`: mostly the DS1820 ROM search.
pub const BOOT_TIME: Duration = Duration::from_millis(21);
/// Formatting a reply (`printf` with two doubles) before its first byte goes out.
const FORMAT_TIME: Duration = Duration::from_micros(100);
/// The heater goes off when this passes without a `B+1` or `B+0` (6105f59 only).
pub const HEATER_TIMEOUT: Duration = Duration::from_secs(1);
/// The controller reboots when this passes without a valid command line.
pub const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(5);
/// The temperature the firmware prints when the DS18B20's CRC check fails.
pub const CRC_SENTINEL: &str = "-1000.0";
/// The DS18B20's power-on scratchpad value, °C.
pub const POWER_ON_C: f64 = 85.0;
/// NUL bytes a 115200 host sees of the 9600-baud `error()` text when the probe is missing.
const MISSING_PROBE_NULS: usize = 84;
/// Entries kept in the command logs; older ones are forgotten so a long run stays bounded.
const COMMAND_LOG_CAP: usize = 10_000;
/// Host bytes in flight on the wire at most (~0.35 s at 115200); beyond that they are lost.
const WIRE_CAP: usize = 4096;
/// Output kept while nobody polls it; beyond that the controller's bytes are lost.
const OUTPUT_CAP: usize = 64 * 1024;
/// Longest physics integration step, so Newton cooling stays accurate across long gaps.
const MAX_STEP: Duration = Duration::from_millis(20);
/// The plate cannot get hotter than boiling while water is pumped through it.
const BOIL_C: f64 = 100.0;
/// How much faster a dry plate heats than one with water in the boiler.
const DRY_HEAT_FACTOR: f64 = 1.5;

/// The firmware build the simulated controller runs: the two that exist of MrCoffeeBot v2.0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Build {
    /// The last commit: one-line replies and a 1 s heater time-out.
    #[default]
    B6105f59,
    /// The commit before: three-line replies and no heater time-out.
    B05a9a00,
}

impl Build {
    /// The commit hash, as the firmware's repository names it.
    pub fn commit(self) -> &'static str {
        match self {
            Build::B6105f59 => "6105f59",
            Build::B05a9a00 => "05a9a00",
        }
    }

    /// Whether the build switches the heater off by itself 1 s after the last `B+1`/`B+0`.
    pub fn has_heater_timeout(self) -> bool {
        self == Build::B6105f59
    }
}

impl fmt::Display for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.commit())
    }
}

impl FromStr for Build {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "6105f59" => Ok(Build::B6105f59),
            "05a9a00" => Ok(Build::B05a9a00),
            other => Err(format!(
                "unknown firmware build `{other}`: 6105f59 (one-line replies, 1 s heater \
                 time-out) or 05a9a00 (three-line replies, no time-out)"
            )),
        }
    }
}

/// What the simulated controller and its coffee maker start as.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The firmware build: reply format and heater time-out.
    pub firmware: Build,
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
    /// Whether the DS18B20 reads 85.0 until its first conversion after its power-on, as the
    /// real sensor does (false: it starts with a reading).
    pub sensor_power_on_85: bool,
    /// Whether `RESET` reboots the board. The real board's reset pin is never driven (false):
    /// `RESET` only feeds the watchdog.
    pub reset_pin_wired: bool,
    /// A firmware build that answers before its first sensor reading: the first reply after each
    /// boot carries the largest double for `T+` and `W+`. No real build does.
    pub answers_before_first_reading: bool,
    /// Seed of the jitter, so runs can be repeated.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            firmware: Build::default(),
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
            sensor_power_on_85: true,
            reset_pin_wired: false,
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
    /// Dead ultrasonic ranger: the firmware's `while (!echo);` never ends, so the loop hangs at
    /// its next water read: a banner every 5 s (watchdog), never a reply. Off: the ranger works
    /// again from the next boot on.
    Hang(bool),
    /// Reboot now (nRESET pulled; the sensors keep their state). With `mid_reply`, the next
    /// reply is cut by the reset on its third byte (`W+\xb2`…) and the banner follows on the
    /// same line.
    Reboot {
        /// Cut the next reply short instead of rebooting at once.
        mid_reply: bool,
    },
    /// Write these bytes to the host as they are.
    Garbage(Vec<u8>),
    /// The temperature sensor's CRC fails: `T+-1000.0`.
    CrcError(bool),
    /// The temperature probe is unplugged: reads fail the CRC (`-1000.0`); a board booting
    /// without it stops before its banner. Plugged back, it powers on (85.0) and a halted board
    /// needs a reboot.
    ProbeMissing(bool),
    /// Set the plate temperature, °C (the thermal model goes on from there).
    SetTemperature(f64),
    /// Set the distance to the water surface, inches (the water model goes on from there).
    SetWaterDistance(f64),
    /// Welded relay: the heater stays on and is reported `B+1` whatever is commanded.
    StuckHeater(bool),
    /// Answer every command this much later.
    ReplyDelay(Duration),
    /// The DS18B20 loses power on every MCU reboot too, so it reads 85.0 again after each boot
    /// (the real sensor keeps its value across watchdog reboots).
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

/// What the MCU is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cpu {
    /// No power, or stopped in `error()`: only a power cycle or nRESET helps.
    Halted,
    /// In reset and static constructors until the given time; the UART drops what arrives.
    Booting(Instant),
    /// Blocked in some work until the given time.
    Busy(Instant, Work),
    /// Polling the UART, until the given time at the latest (a sensor or the heater is due).
    Idle(Instant),
    /// Spinning on an echo that never comes; only the watchdog ends it.
    Hung,
}

/// A blocking step of the firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// The water read; `first` is the unconditional read before the loop.
    Water { first: bool },
    /// The temperature read.
    Temperature { first: bool },
    /// `printf` of a reply, until its tail is in the TX FIFO.
    Printf,
}

/// The command a line starts with, as the firmware's `starts_with` chain sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Status,
    HeaterOn,
    HeaterOff,
    Reset,
}

impl Command {
    const ALL: [(Command, &'static [u8]); 4] = [
        (Command::Status, b"S+?"),
        (Command::HeaterOn, b"B+1"),
        (Command::HeaterOff, b"B+0"),
        (Command::Reset, b"RESET"),
    ];

    fn text(self) -> &'static str {
        match self {
            Command::Status => "S+?",
            Command::HeaterOn => "B+1",
            Command::HeaterOff => "B+0",
            Command::Reset => "RESET",
        }
    }
}

/// Bytes on the UART's transmit line: `bytes[i]` finishes at `start + (i + 1) × BYTE_TIME`.
#[derive(Clone, Debug)]
struct TxChunk {
    start: Instant,
    bytes: Vec<u8>,
}

impl TxChunk {
    fn end(&self) -> Instant {
        self.start + BYTE_TIME * u32::try_from(self.bytes.len()).unwrap_or(u32::MAX)
    }
}

/// The DS18B20: it has its own power, so it outlives MCU reboots.
#[derive(Clone, Copy, Debug)]
struct Sensor {
    /// The scratchpad's temperature; `None` is the power-on value (85.0).
    scratchpad: Option<f64>,
    /// When the running conversion ends.
    conversion_end: Option<Instant>,
}

impl Sensor {
    const POWER_ON: Sensor = Sensor {
        scratchpad: None,
        conversion_end: None,
    };
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

    /// A reset (power-on, watchdog, nRESET) at `t`: the reply on the wire is cut, the relay
    /// drops (pins become inputs), the UART forgets what it held; the firmware starts over.
    fn reset(&mut self, t: Instant) {
        self.cut_tx(t);
        self.boots += 1;
        self.cpu = Cpu::Booting(t + BOOT_TIME);
        self.running = false;
        self.heater_pin = false;
        self.watchdog_deadline = None;
        self.forced_reset = None;
        self.cut_next_reply = false;
        self.fifo.clear();
        self.line_len = 0;
        self.pending_replies.clear();
        self.temperature_reading = None;
        self.water_reading = None;
        self.answered_since_boot = false;
        if self.power_on_85_each_boot {
            self.sensor = Sensor::POWER_ON;
        }
    }

    /// What a reset does to the bytes on the transmit line: the ones sent arrive, the one in
    /// the shift register arrives with its unsent bits read as 1s, the rest are lost.
    fn cut_tx(&mut self, t: Instant) {
        let Some(chunk) = self.tx.pop_front() else {
            return;
        };
        self.tx.clear();
        if chunk.start >= t {
            return;
        }
        let elapsed = t - chunk.start;
        let sent = usize::try_from(elapsed.as_nanos() / BYTE_TIME.as_nanos()).unwrap_or(0);
        let sent = sent.min(chunk.bytes.len());
        let mut partial = chunk.bytes[..sent].to_vec();
        if let Some(&byte) = chunk.bytes.get(sent) {
            let into_byte = elapsed.saturating_sub(BYTE_TIME * sent as u32);
            if !into_byte.is_zero() {
                // Bit 0 is the start bit, then the data bits, least significant first.
                let bits = into_byte.as_nanos() / BIT_TIME.as_nanos();
                let data_bits = u32::try_from(bits.saturating_sub(1)).unwrap_or(8).min(8);
                let unsent = if data_bits >= 8 {
                    0
                } else {
                    0xFFu8 << data_bits
                };
                partial.push(byte | unsent);
            }
        }
        self.emit(&partial);
    }

    /// End of the static constructors: `main()` prints the banner, arms the watchdog and reads
    /// the sensors once. Without its probe the board stops in the DS1820 constructor instead.
    fn boot_done(&mut self, t: Instant) {
        if self.probe_missing {
            self.emit(&[0; MISSING_PROBE_NULS]);
            self.cpu = Cpu::Halted;
            return;
        }
        self.heater_pin = false;
        self.heater_written = t;
        self.line_len = 0;
        let banner = self.banner();
        let returns = self.write(t, banner.into_bytes());
        self.watchdog_deadline = Some(returns + WATCHDOG_TIMEOUT);
        if self.answer_before_reading {
            // The variant skips the read before the loop.
            self.water_read_end = returns;
            self.temperature_read_end = returns;
            self.cpu = Cpu::Idle(returns);
            self.running = true;
            return;
        }
        self.start_water(returns, true);
    }

    fn start_water(&mut self, t: Instant, first: bool) {
        if self.ranger_dead {
            self.cpu = Cpu::Hung;
            return;
        }
        let inches = self.water_distance_in.clamp(0.0, MAX_WATER_IN);
        let echo = Duration::from_secs_f64(inches * ECHO_PER_INCH_US / 1e6);
        self.cpu = Cpu::Busy(t + WATER_READ_BASE + echo, Work::Water { first });
    }

    fn start_temperature(&mut self, t: Instant, first: bool) {
        let convert_at = t + CONVERT_T_AT;
        let converting = self
            .sensor
            .conversion_end
            .is_some_and(|end| end > convert_at);
        if !converting && !self.probe_missing {
            self.sensor.conversion_end = Some(convert_at + CONVERSION_TIME);
        }
        self.cpu = Cpu::Busy(t + TEMPERATURE_READ, Work::Temperature { first });
    }

    fn work_done(&mut self, t: Instant, work: Work) {
        match work {
            Work::Water { first } => {
                if self.reads_update() {
                    self.water_reading = Some(self.measure_water());
                }
                self.water_read_end = t;
                if first {
                    self.start_temperature(t, true);
                    return;
                }
                // The same pass goes on to the temperature limiter.
                if t.saturating_duration_since(self.temperature_read_end) >= SENSOR_PERIOD {
                    self.start_temperature(t, false);
                    return;
                }
                self.cpu = Cpu::Idle(t);
                self.uart_step(t);
            }
            Work::Temperature { first } => {
                if self.reads_update() {
                    self.temperature_reading = Some(self.measure_temperature());
                }
                self.temperature_read_end = t;
                self.running = true;
                if first && self.cfg.firmware == Build::B05a9a00 {
                    // 05a9a00 constructs its rate limiters after the first read.
                    self.water_read_end = t;
                }
                self.cpu = Cpu::Idle(t);
                self.uart_step(t);
            }
            Work::Printf => {
                self.feed(t);
                self.cpu = Cpu::Idle(t);
                self.run_cpu();
            }
        }
    }

    /// One or more loop passes from the top, at the clock, until the firmware blocks or idles.
    fn run_cpu(&mut self) {
        let t = self.clock;
        if !matches!(self.cpu, Cpu::Idle(_)) {
            return;
        }
        if self.cfg.firmware.has_heater_timeout()
            && t.saturating_duration_since(self.heater_written) >= HEATER_TIMEOUT
        {
            self.heater_pin = false;
        }
        if t.saturating_duration_since(self.water_read_end) >= SENSOR_PERIOD {
            self.start_water(t, false);
            return;
        }
        if t.saturating_duration_since(self.temperature_read_end) >= SENSOR_PERIOD {
            self.start_temperature(t, false);
            return;
        }
        self.uart_step(t);
    }

    /// The end of a pass: read the UART up to one `\n` and handle that line; then the next
    /// pass, or idle until a sensor or the heater time-out is due or a byte arrives.
    fn uart_step(&mut self, t: Instant) {
        while let Some(byte) = self.fifo.pop_front() {
            if self.line_len == LINE_BUFFER_BYTES {
                self.line_len = 0;
                self.line = [0; LINE_BUFFER_BYTES];
            }
            self.line[self.line_len] = byte;
            self.line_len += 1;
            if byte == b'\n' {
                let command = Command::ALL
                    .iter()
                    .find(|(_, prefix)| self.line.starts_with(prefix))
                    .map(|(command, _)| *command);
                self.line_len = 0;
                self.line = [0; LINE_BUFFER_BYTES];
                if let Some(command) = command {
                    self.handle_command(t, command);
                }
                // The next pass starts at once (a no-op unless the firmware is still idle).
                self.run_cpu();
                return;
            }
        }
        let mut wake = (self.water_read_end + SENSOR_PERIOD)
            .min(self.temperature_read_end + SENSOR_PERIOD)
            .max(t);
        if self.heater_pin && self.cfg.firmware.has_heater_timeout() {
            wake = wake.min((self.heater_written + HEATER_TIMEOUT).max(t));
        }
        self.cpu = Cpu::Idle(wake);
    }

    fn handle_command(&mut self, t: Instant, command: Command) {
        self.commands += 1;
        let event = CommandEvent {
            at: t,
            line: command.text().to_owned(),
        };
        for log in [&mut self.log, &mut self.new_commands] {
            if log.len() >= COMMAND_LOG_CAP {
                log.pop_front();
            }
            log.push_back(event.clone());
        }
        match command {
            Command::Status => {}
            Command::HeaterOn => {
                self.heater_pin = true;
                self.heater_written = t;
            }
            Command::HeaterOff => {
                self.heater_pin = false;
                self.heater_written = t;
            }
            Command::Reset => {
                if self.cfg.reset_pin_wired {
                    self.reset(t);
                } else {
                    // `reset_pin.mode(OpenDrain)` on an undriven pin: nothing, but a valid line.
                    self.feed(t);
                }
                return;
            }
        }
        self.reply(t);
    }

    fn feed(&mut self, t: Instant) {
        if self.watchdog_deadline.is_some() {
            self.watchdog_deadline = Some(t + WATCHDOG_TIMEOUT);
        }
    }

    fn reply(&mut self, t: Instant) {
        let water = match (&self.water_text, self.water_reading) {
            (Some(text), _) => text.clone(),
            (None, Some(d)) => format!("{d:.2}"),
            (None, None) => format!("{:.2}", f64::MAX),
        };
        let temperature = match (&self.temperature_text, self.temperature_reading) {
            (Some(text), _) => text.clone(),
            (None, Some(c)) => format!("{c:.1}"),
            (None, None) => format!("{:.1}", f64::MAX),
        };
        self.answered_since_boot = true;
        let heater = u8::from(self.relay_on());
        let reply = match self.cfg.firmware {
            Build::B6105f59 => format!("W+{water},T+{temperature},B+{heater}\n"),
            Build::B05a9a00 => format!("W+{water}\nT+{temperature}\nB+{heater}\n"),
        };
        if !self.reply_delay.is_zero() {
            self.pending_replies
                .push_back((t + self.reply_delay, reply.into_bytes()));
            self.cpu = Cpu::Busy(t + FORMAT_TIME, Work::Printf);
            return;
        }
        let start = t + FORMAT_TIME;
        let returns = self.write(start, reply.into_bytes());
        if std::mem::take(&mut self.cut_next_reply) {
            // Two bytes sent, then the start bit and seven data bits of the third.
            let cut = self.tx.back().map_or(start, |c| c.start) + BYTE_TIME * 2 + BIT_TIME * 8;
            self.forced_reset = Some(cut);
        }
        self.cpu = Cpu::Busy(returns, Work::Printf);
    }

    /// Queues bytes on the transmit line from `t` on; returns when `printf` would return: the
    /// TX FIFO takes 16 bytes, then each further 16 once it has drained (mbed's `serial_putc`
    /// waits for THRE).
    fn write(&mut self, t: Instant, bytes: Vec<u8>) -> Instant {
        let free = self.tx.back().map_or(t, TxChunk::end).max(t);
        let refills = u32::try_from(bytes.len().saturating_sub(1) / UART_FIFO_BYTES).unwrap_or(0);
        if self.tx.len() < 64 {
            self.tx.push_back(TxChunk { start: free, bytes });
        }
        free + BYTE_TIME * (15 * refills)
    }

    /// Whether a sensor read updates the printed value (not in the "answers before the first
    /// reading" variant until its first reply).
    fn reads_update(&self) -> bool {
        !self.answer_before_reading || self.answered_since_boot
    }

    fn measure_water(&mut self) -> f64 {
        let jitter = (self.rng.f64() * 2.0 - 1.0) * self.cfg.water_jitter_in;
        let inches = (self.water_distance_in + jitter).clamp(0.0, MAX_WATER_IN);
        // `read_raw` counts whole microseconds, `inches_from_raw` divides by 2 × 74.
        (inches * ECHO_PER_INCH_US).round() / ECHO_PER_INCH_US
    }

    fn measure_temperature(&mut self) -> f64 {
        if self.crc_error || self.probe_missing {
            return -1000.0;
        }
        match self.sensor.scratchpad {
            None if self.cfg.sensor_power_on_85 => POWER_ON_C,
            None => {
                // A sensor that starts with a reading.
                let c = self.plate_c;
                self.sensor.scratchpad = Some(c);
                quantize_c(c)
            }
            Some(c) => quantize_c(c),
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.powered && !self.muted {
            let room = OUTPUT_CAP.saturating_sub(self.out.len());
            self.out.extend_from_slice(&bytes[..bytes.len().min(room)]);
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

/// The DS18B20's 12-bit resolution: 1/16 °C, as the firmware converts it (`reading / 16.0f`).
fn quantize_c(c: f64) -> f64 {
    let raw = (c * 16.0).round().clamp(-55.0 * 16.0, 125.0 * 16.0);
    raw / 16.0
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
    #![allow(clippy::disallowed_methods)]

    use super::*;
    use proptest::prelude::*;

    const BANNER: &str = "MrCoffeeBot v2.0 Booted.\n";
    const MS: Duration = Duration::from_millis(1);

    /// A device in virtual time: jumps from event to event, never sleeps.
    struct Bench {
        dev: Device,
        now: Instant,
        out: Vec<u8>,
    }

    /// Exact readings, a sensor that starts with a reading, booted and past its first read.
    fn exact() -> SimConfig {
        SimConfig {
            temperature_jitter_c: 0.0,
            water_jitter_in: 0.0,
            sensor_power_on_85: false,
            ..SimConfig::default()
        }
    }

    impl Bench {
        /// Powered on and run until the first sensor read is done.
        fn new(cfg: SimConfig) -> Self {
            let now = Instant::now();
            let mut b = Self {
                dev: Device::new(cfg, now),
                now,
                out: Vec::new(),
            };
            b.run_for(60 * MS);
            b
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
            self.send_bytes(text.as_bytes());
        }

        fn send_bytes(&mut self, bytes: &[u8]) {
            self.dev.receive(self.now, bytes);
            self.drain();
        }

        /// Sends a command and waits 40 ms (two loop cycles), as a careful host does.
        fn command(&mut self, text: &str) -> String {
            self.send(text);
            self.run_for(40 * MS);
            self.take()
        }

        fn inject(&mut self, fault: Fault) {
            self.dev.inject(self.now, fault);
            self.drain();
        }

        fn drain(&mut self) {
            while let Some(bytes) = self.dev.poll_output() {
                self.out.extend(bytes);
            }
        }

        fn take(&mut self) -> String {
            String::from_utf8_lossy(&std::mem::take(&mut self.out)).into_owned()
        }

        fn boots(&self) -> u64 {
            self.dev.snapshot().boots
        }

        fn log(&self) -> Vec<String> {
            self.dev.command_log().map(|e| e.line.clone()).collect()
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
    fn boots_with_banner_and_answers_one_line_like_6105f59() {
        let mut b = with_plate(50.0, 3.25);
        assert_eq!(b.take(), BANNER);
        assert_eq!(b.command("S+?\n"), "W+3.25,T+50.0,B+0\n");
        assert_eq!(b.command("B+1\r\n"), "W+3.25,T+50.0,B+1\n");
        assert_eq!(b.command("B+0\n"), "W+3.25,T+50.0,B+0\n");
        assert_eq!(b.log(), ["S+?", "B+1", "B+0"]);
    }

    #[test]
    fn build_05a9a00_answers_three_lines_and_has_no_heater_timeout() {
        let mut b = Bench::new(SimConfig {
            firmware: Build::B05a9a00,
            ..exact()
        });
        b.take();
        assert_eq!(b.command("B+1\n"), "W+2.00\nT+21.0\nB+1\n");
        b.run_for(Duration::from_millis(4500));
        assert!(b.dev.snapshot().heater_on, "no 1 s time-out");
        assert!(b.command("S+?\n").ends_with("\nB+1\n"));
        // Only B+0 or the watchdog turns it off.
        b.run_for(Duration::from_millis(5100));
        assert_eq!(b.boots(), 2);
        assert!(!b.dev.snapshot().heater_on);
    }

    #[test]
    fn builds_parse_and_print_as_their_commits() {
        for build in [Build::B6105f59, Build::B05a9a00] {
            assert_eq!(build.to_string().parse::<Build>(), Ok(build));
        }
        assert!("6105".parse::<Build>().unwrap_err().contains("05a9a00"));
        assert_eq!(Build::default(), Build::B6105f59);
    }

    #[test]
    fn banner_first_then_one_read_and_no_reply_before_it() {
        let now = Instant::now();
        let mut b = Bench {
            dev: Device::new(exact(), now),
            now,
            out: Vec::new(),
        };
        b.send("S+?\n"); // lost: the MCU is still in its constructors
        b.run_for(BOOT_TIME + MS * 4);
        assert_eq!(b.take(), BANNER);
        b.send("S+?\n"); // waits in the FIFO during the first read
        b.run_for(10 * MS);
        assert_eq!(b.take(), "", "nothing before the first sensor read");
        b.run_for(20 * MS);
        assert_eq!(b.take(), "W+2.00,T+21.0,B+0\n");
        assert_eq!(b.dev.snapshot().dropped_bytes, 4);
    }

    #[test]
    fn the_ds18b20_reads_85_after_its_power_on_and_lags_one_conversion() {
        let mut b = Bench::new(SimConfig {
            sensor_power_on_85: true,
            initial_plate_c: 40.0,
            ambient_c: 40.0,
            ..exact()
        });
        b.take();
        assert_eq!(b.command("S+?\n"), "W+2.00,T+85.0,B+0\n");
        b.run_for(Duration::from_millis(800));
        assert_eq!(b.command("S+?\n"), "W+2.00,T+40.0,B+0\n");
        // A new plate temperature shows up only after a whole conversion.
        b.inject(Fault::SetTemperature(60.0));
        assert_eq!(b.command("S+?\n"), "W+2.00,T+40.0,B+0\n");
        b.run_for(Duration::from_millis(1600));
        assert!(b.command("S+?\n").contains("T+59."), "cooling towards 40");
        // A watchdog reboot keeps the sensor's value; a power cycle does not.
        b.run_for(Duration::from_millis(5100));
        assert_eq!(b.boots(), 2);
        b.take();
        assert!(!b.command("S+?\n").contains("T+85.0"));
        b.dev.power_off(b.now);
        b.dev.power_on(b.now);
        b.run_for(60 * MS);
        b.take();
        assert!(b.command("S+?\n").contains("T+85.0"));
    }

    #[test]
    fn readings_are_the_firmware_s_steps() {
        let mut b = with_plate(52.3, 2.004);
        b.take();
        // 52.3 °C is 52.3125 in 1/16 °C; 2.004 in is 297 µs of echo, 2.01 in.
        assert_eq!(b.command("S+?\n"), "W+2.01,T+52.3,B+0\n");
    }

    #[test]
    fn commands_match_by_case_sensitive_prefix() {
        let mut b = Bench::new(exact());
        b.take();
        for line in ["S+?junk\n", "B+10\n", "B+0\r\n", "RESETX\n"] {
            b.command(line);
        }
        assert_eq!(b.log(), ["S+?", "B+1", "B+0", "RESET"]);
        for line in ["s+?\n", " S+?\n", "\n", "B+\n", "TEMP+?\n", "RESE\n"] {
            assert_eq!(b.command(line), "", "{line:?}");
        }
        assert_eq!(b.log().len(), 4);
    }

    #[test]
    fn heater_goes_off_1000_to_1020_ms_after_the_last_b1_and_b0_restarts_the_timer() {
        let mut b = Bench::new(exact());
        b.send("B+1\n");
        b.run_for(40 * MS);
        let on_at = b.dev.command_log().last().unwrap().at;
        let mut off_at = None;
        for _ in 0..1200 {
            b.run_for(MS);
            if !b.dev.snapshot().heater_on {
                off_at = Some(b.now);
                break;
            }
        }
        let after = off_at.unwrap() - on_at;
        assert!(
            after >= HEATER_TIMEOUT && after <= HEATER_TIMEOUT + 22 * MS,
            "{after:?}"
        );
        // S+? does not feed the heater, B+1 does.
        b.command("B+1\n");
        for _ in 0..5 {
            b.run_for(Duration::from_millis(210));
            b.command("S+?\n");
        }
        assert!(!b.dev.snapshot().heater_on);
        for _ in 0..20 {
            b.command("B+1\n");
            b.run_for(Duration::from_millis(200));
            assert!(b.dev.snapshot().heater_on);
        }
    }

    #[test]
    fn watchdog_reboots_five_seconds_after_the_last_valid_line() {
        let mut b = Bench::new(exact());
        b.take();
        b.command("B+1\n");
        let fed = b.dev.command_log().last().unwrap().at;
        b.command("s+?\n"); // invalid: does not feed
        b.run_for(fed + WATCHDOG_TIMEOUT - b.now);
        assert_eq!(b.boots(), 1);
        b.run_for(2 * MS);
        assert_eq!(b.boots(), 2);
        b.run_for(30 * MS);
        assert_eq!(b.take(), BANNER);
        assert!(!b.dev.snapshot().heater_on);
        b.run_for(Duration::from_millis(10_100));
        assert_eq!(b.boots(), 4, "keeps rebooting every ~5.02 s");
    }

    #[test]
    fn reset_feeds_the_watchdog_without_a_reply_unless_the_pin_is_wired() {
        let mut b = Bench::new(exact());
        b.take();
        for _ in 0..3 {
            assert_eq!(b.command("RESET\n"), "");
            b.run_for(Duration::from_secs(4));
        }
        assert_eq!(b.boots(), 1, "RESET is a valid line: it feeds the watchdog");
        let mut b = Bench::new(SimConfig {
            reset_pin_wired: true,
            ..exact()
        });
        b.take();
        assert_eq!(b.command("RESET\n"), BANNER);
        assert_eq!(b.boots(), 2);
    }

    #[test]
    fn a_burst_of_ten_status_polls_overflows_the_fifo_like_the_real_board() {
        let mut b = Bench::new(exact());
        b.take();
        b.run_for(7 * MS); // into the idle part of a cycle, as likely as not
        b.send(&"S+?\n".repeat(10));
        b.run_for(Duration::from_millis(200));
        let replies = b.take().lines().count();
        let dropped = b.dev.snapshot().dropped_bytes;
        assert!((3..=5).contains(&replies), "{replies} replies");
        assert!((16..=28).contains(&dropped), "{dropped} bytes dropped");
    }

    #[test]
    fn one_command_at_a_time_never_loses_anything() {
        let mut b = Bench::new(exact());
        b.take();
        for i in 0..50 {
            let line = if i % 2 == 0 { "B+1\n" } else { "S+?\n" };
            assert_eq!(b.command(line).lines().count(), 1);
        }
        assert_eq!(b.dev.snapshot().dropped_bytes, 0);
    }

    #[test]
    fn a_lost_newline_glues_the_next_command_and_a_lone_newline_clears_it() {
        let mut b = Bench::new(exact());
        b.take();
        b.command("xx");
        assert_eq!(b.command("S+?\n"), "", "`xxS+?` is no command");
        b.command("xx");
        b.command("\n");
        assert_eq!(b.command("S+?\n").lines().count(), 1);
    }

    #[test]
    fn the_line_buffer_wraps_at_21_bytes() {
        let mut b = Bench::new(exact());
        b.take();
        // Sent 8 bytes at a time, as the realfw self-test does.
        let send = |b: &mut Bench, text: String| {
            let mut replies = String::new();
            for piece in text.as_bytes().chunks(8) {
                b.send_bytes(piece);
                b.run_for(25 * MS);
                replies += &b.take();
            }
            b.run_for(25 * MS);
            replies + &b.take()
        };
        assert_eq!(send(&mut b, "x".repeat(21) + "S+?\n").lines().count(), 1);
        assert_eq!(send(&mut b, "x".repeat(20) + "S+?\n"), "");
        assert_eq!(b.dev.snapshot().dropped_bytes, 0);
    }

    #[test]
    fn replies_come_1_to_22_ms_after_the_command() {
        let mut b = Bench::new(exact());
        b.take();
        let mut latencies = Vec::new();
        for i in 0..60 {
            b.run_for(Duration::from_micros(3_700 * (i % 7) + 250));
            let sent = b.now;
            b.send("S+?\n");
            let mut got = None;
            for _ in 0..400 {
                b.run_for(Duration::from_micros(100));
                if !b.take().is_empty() {
                    got = Some(b.now - sent);
                    break;
                }
            }
            latencies.push(got.unwrap());
        }
        let min = latencies.iter().min().unwrap();
        let max = latencies.iter().max().unwrap();
        assert!(*min >= MS && *min < 3 * MS, "{min:?}");
        assert!(*max > 15 * MS && *max <= 22 * MS, "{max:?}");
    }

    #[test]
    fn crc_failure_and_a_missing_probe_read_the_sentinel() {
        let mut b = with_plate(30.0, 2.0);
        b.take();
        b.inject(Fault::CrcError(true));
        assert_eq!(b.command("S+?\n"), "W+2.00,T+-1000.0,B+0\n");
        b.inject(Fault::CrcError(false));
        assert_eq!(b.command("S+?\n"), "W+2.00,T+30.0,B+0\n");
        b.inject(Fault::ProbeMissing(true));
        assert_eq!(b.command("S+?\n"), "W+2.00,T+-1000.0,B+0\n");
    }

    #[test]
    fn a_board_without_its_probe_stops_before_the_banner() {
        let mut b = Bench::new(exact());
        b.take();
        b.inject(Fault::ProbeMissing(true));
        b.inject(Fault::Reboot { mid_reply: false });
        b.run_for(60 * MS);
        assert_eq!(b.out, vec![0; MISSING_PROBE_NULS]);
        b.out.clear();
        assert!(b.dev.snapshot().halted);
        assert_eq!(b.command("S+?\n"), "");
        b.run_for(Duration::from_secs(12));
        assert_eq!((b.take(), b.boots()), (String::new(), 2), "no watchdog");
        b.inject(Fault::ProbeMissing(false));
        b.inject(Fault::Reboot { mid_reply: false });
        b.run_for(60 * MS);
        assert_eq!(b.take(), BANNER);
        assert_eq!(b.command("S+?\n"), "W+2.00,T+21.0,B+0\n");
    }

    #[test]
    fn other_sentinels_can_be_injected() {
        let mut b = with_plate(30.0, 2.0);
        b.take();
        b.inject(Fault::TemperatureText(Some("nan".into())));
        b.inject(Fault::WaterText(Some("ovf".into())));
        assert_eq!(b.command("S+?\n"), "W+ovf,T+nan,B+0\n");
    }

    #[test]
    fn power_on_reading_85_after_every_boot_when_asked() {
        let mut b = with_plate(30.0, 2.0);
        b.inject(Fault::PowerOnReading85(true));
        b.dev.cfg.sensor_power_on_85 = true;
        b.inject(Fault::Reboot { mid_reply: false });
        b.run_for(60 * MS);
        b.take();
        assert_eq!(b.command("S+?\n"), "W+2.00,T+85.0,B+0\n");
        b.run_for(Duration::from_millis(800));
        assert_eq!(b.command("S+?\n"), "W+2.00,T+30.0,B+0\n");
    }

    #[test]
    fn a_firmware_that_answers_before_reading_prints_the_largest_double() {
        let mut b = Bench::new(SimConfig {
            answers_before_first_reading: true,
            ..exact()
        });
        b.take();
        b.send("S+?\n");
        // 636 bytes take 55 ms on the wire.
        b.run_for(80 * MS);
        let reply = b.take();
        let expected = format!("W+{:.2},T+{:.1},B+0\n", f64::MAX, f64::MAX);
        assert_eq!(reply, expected);
        assert!(reply.len() > 600);
        assert_eq!(b.command("S+?\n"), "W+2.00,T+21.0,B+0\n");
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
    }

    #[test]
    fn a_reboot_mid_reply_cuts_a_byte_and_glues_the_banner() {
        let mut b = with_plate(52.3, 2.0);
        b.take();
        b.command("B+1\n");
        b.inject(Fault::Reboot { mid_reply: true });
        b.send("S+?\n");
        b.run_for(60 * MS);
        assert_eq!(b.out, b"W+\xb2MrCoffeeBot v2.0 Booted.\n");
        assert_eq!(b.boots(), 2);
        assert!(!b.dev.snapshot().heater_on);
    }

    #[test]
    fn the_watchdog_cuts_a_reply_written_just_before_its_deadline() {
        // Like realfw's provoke_cut_reply.py: a line written at different leads before the
        // deadline; those the firmware handles in its last ~1.4 ms have their reply cut.
        let mut cuts = Vec::new();
        for lead_us in (100..=2500).step_by(100) {
            let mut b = Bench::new(exact());
            b.command("S+?\n");
            b.take();
            let fed = b.dev.command_log().last().unwrap().at + 1400 * Duration::from_micros(1);
            let send_at = fed + WATCHDOG_TIMEOUT - Duration::from_micros(lead_us) - BYTE_TIME * 4;
            b.run_for(send_at - b.now);
            b.send("S+?\n");
            b.run_for(60 * MS);
            let out = std::mem::take(&mut b.out);
            if b.boots() == 2 && out.len() > BANNER.len() && out.len() < BANNER.len() + 18 {
                assert!(out.ends_with(BANNER.as_bytes()));
                cuts.push(out);
            }
        }
        // As on realfw: `\xff` (cut in the first byte), `W\xfb`, `W+\xb2`…
        assert!(
            cuts.iter().any(|c| c.starts_with(b"W")),
            "no reply was cut: {cuts:?}"
        );
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
        assert_eq!(b.command("S+?\n").lines().count(), 1);
    }

    #[test]
    fn a_dead_ranger_hangs_the_loop_a_banner_every_five_seconds() {
        let mut b = Bench::new(exact());
        b.take();
        b.inject(Fault::Hang(true));
        let mut seen = String::new();
        for _ in 0..16 {
            seen += &b.command("S+?\n");
            b.run_for(Duration::from_millis(960));
            seen += &b.take();
        }
        assert_eq!(seen, BANNER.repeat(3));
        assert_eq!(b.boots(), 4);
        assert!(b.dev.command_log().next().is_none());
        b.inject(Fault::Hang(false));
        b.run_for(Duration::from_millis(5100));
        b.take();
        assert_eq!(
            b.command("S+?\n").lines().count(),
            1,
            "answers after the next boot"
        );
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
        assert_eq!(b.take().lines().count(), 1);
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
            b.run_for(Duration::from_millis(400));
            let fields: Vec<&str> = reply.trim_end().split(',').collect();
            let w: f64 = fields[0][2..].parse().unwrap();
            let t: f64 = fields[1][2..].parse().unwrap();
            assert!((t - 60.0).abs() <= 0.25, "{t}");
            assert!((w - 3.0).abs() <= 0.03, "{w}");
            temperatures.insert(fields[1].to_owned());
        }
        assert!(temperatures.len() > 1);
    }

    /// Feeds `B+1` every 250 ms for `secs` seconds.
    fn heat_for(b: &mut Bench, secs: u64) {
        for _ in 0..secs * 4 {
            b.command("B+1\n");
            b.run_for(Duration::from_millis(210));
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
    }

    #[test]
    fn the_reservoir_drains_while_pumping_and_a_dry_plate_runs_away() {
        let mut b = with_plate(95.0, 7.9);
        b.dev.cfg.ambient_c = 21.0;
        heat_for(&mut b, 5);
        let s = b.dev.snapshot();
        assert!(s.plate_c <= BOIL_C, "held at boiling: {}", s.plate_c);
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
        b.run_for(60 * MS);
        assert_eq!(b.take(), BANNER);
        assert_eq!(b.command("S+?\n").lines().count(), 1);
    }

    proptest! {
        /// Whatever arrives, whenever: no panic, the heater never outlives its time-out by more
        /// than a sensor read, memory stays bounded, and every output line is a banner, a reply,
        /// or a cut reply glued to a banner.
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
            let mut last_write: Option<Instant> = None;
            for (gap_ms, bytes) in chunks {
                b.run_for(Duration::from_millis(gap_ms));
                b.send_bytes(&bytes);
                if let Some(e) = b.dev.command_log().filter(|e| e.line.starts_with("B+")).last() {
                    last_write = Some(e.at);
                }
                if b.dev.snapshot().heater_on {
                    let since = b.now - last_write.expect("heater on without any B+1");
                    prop_assert!(since <= HEATER_TIMEOUT + 22 * MS);
                }
                prop_assert!(b.dev.wire.len() <= WIRE_CAP && b.dev.fifo.len() <= UART_FIFO_BYTES);
            }
            b.run_for(Duration::from_millis(30));
            let out = b.take();
            for line in out.lines() {
                let ok = line == BANNER.trim_end()
                    || (line.starts_with("W+") && line.contains(",T+") && line.contains(",B+"))
                    || line.ends_with(BANNER.trim_end());
                prop_assert!(ok, "{line:?}");
            }
        }
    }
}
