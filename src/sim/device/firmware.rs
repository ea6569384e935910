//! The firmware's main loop, step by step as `main.cpp` runs it: boot and banner, the sensor
//! rate limiters, the UART's receive FIFO and the 21-byte line buffer, prefix matching of
//! commands, replies through the transmit FIFO, the heater time-out and the watchdog. The
//! timing lives here; the sensors it reads are in `sensors`, the world they measure in `plant`.
#![deny(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use super::sensors::Sensor;
use super::{Build, CommandEvent, Device};

/// Bytes the UART receive FIFO holds while the firmware is busy reading sensors.
pub const UART_FIFO_BYTES: usize = 16;
/// Size of the firmware's line buffer (`7*3`); a longer line wraps around inside it.
pub const LINE_BUFFER_BYTES: usize = 21;
/// One byte on the wire at 115200 8N1 (10 bits).
pub const BYTE_TIME: Duration = Duration::from_nanos(86_806);
/// One bit on the wire at 115200.
pub(super) const BIT_TIME: Duration = Duration::from_nanos(8_681);
/// The firmware's `RateLimiter` period for each sensor (5000 µs).
pub const SENSOR_PERIOD: Duration = Duration::from_millis(5);
/// Static constructors before `main()`: mostly the DS1820 ROM search.
pub const BOOT_TIME: Duration = Duration::from_millis(21);
/// Formatting a reply (`printf` with two doubles) before its first byte goes out.
const FORMAT_TIME: Duration = Duration::from_micros(100);
/// The heater goes off when this passes without a `B+1` or `B+0` (6105f59 only).
pub const HEATER_TIMEOUT: Duration = Duration::from_secs(1);
/// The controller reboots when this passes without a valid command line.
pub const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(5);
/// NUL bytes a 115200 host sees of the 9600-baud `error()` text when the probe is missing.
pub(super) const MISSING_PROBE_NULS: usize = 84;
/// Entries kept in the command logs; older ones are forgotten so a long run stays bounded.
const COMMAND_LOG_CAP: usize = 10_000;

/// What the MCU is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cpu {
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
pub(super) enum Work {
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
pub(super) struct TxChunk {
    pub(super) start: Instant,
    pub(super) bytes: Vec<u8>,
}

impl TxChunk {
    /// When the last byte has left the line.
    pub(super) fn end(&self) -> Instant {
        self.start + BYTE_TIME * u32::try_from(self.bytes.len()).unwrap_or(u32::MAX)
    }
}

impl Device {
    /// A reset (power-on, watchdog, nRESET) at `t`: the reply on the wire is cut, the relay
    /// drops (pins become inputs), the UART forgets what it held; the firmware starts over.
    pub(super) fn reset(&mut self, t: Instant) {
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
    pub(super) fn boot_done(&mut self, t: Instant) {
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

    /// A blocking step ended at `t`: take its result and go on with the loop.
    pub(super) fn work_done(&mut self, t: Instant, work: Work) {
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
    pub(super) fn run_cpu(&mut self) {
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
}
