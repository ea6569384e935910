//! The controller's line protocol (SPEC §2) as pure code: commands to bytes, bytes to frames.
//!
//! Nothing here does I/O or reads a clock. [`Decoder`] takes bytes in whatever pieces the port
//! delivers, splits them into lines (`\n` or `\r\n`), caps line length, and assembles the
//! three-line status reply (`W+`, `T+`, `B+`) into one [`Reading`]. The boot banner is found
//! anywhere in a line, because a watchdog reboot can cut a reply short and print the banner
//! on the same line. Every sentinel of the firmware becomes "no valid reading" (`None`),
//! never a number.

/// Longest line kept, in bytes. The firmware's largest legal line is a `T+` or `W+` followed by
/// the ~310-character decimal of `DBL_MAX`; anything longer is garbage and is skipped whole.
pub const MAX_LINE: usize = 400;

/// A command line the host sends to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `S+?`: report the sensors and the heater state.
    Status,
    /// `B+1`: heater on (must be repeated within 1 s or the controller switches it off).
    HeaterOn,
    /// `B+0`: heater off.
    HeaterOff,
    /// `RESET`: ask the controller to reboot. No reply is ever guaranteed.
    Reset,
}

impl Command {
    /// The bytes to write, newline included. Never more than the controller's 16-byte FIFO.
    pub fn line(self) -> &'static [u8] {
        match self {
            Command::Status => b"S+?\n",
            Command::HeaterOn => b"B+1\n",
            Command::HeaterOff => b"B+0\n",
            Command::Reset => b"RESET\n",
        }
    }

    /// Whether the controller answers this command with a three-line status reply.
    pub fn expects_reply(self) -> bool {
        !matches!(self, Command::Reset)
    }
}

/// One complete status reply, sentinels already turned into `None`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Distance from the sensor to the water surface in inches (`W+`); `None` if a sentinel.
    pub water_distance_in: Option<f64>,
    /// Hot-plate temperature in °C (`T+`); `None` if a sentinel (CRC error, DBL_MAX, inf, nan,
    /// ovf). Range checks (−20…125 °C) and the suspect 85.0 after a boot are the core's call.
    pub temperature_c: Option<f64>,
    /// The heater state the controller reports after the command (`B+`).
    pub heater_on: bool,
}

/// What the decoder makes of the byte stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A complete, well-formed three-line reply.
    Reading(Reading),
    /// The boot banner; `firmware` is e.g. `MrCoffeeBot v2.0`.
    Banner {
        /// Name and version as printed, without ` Booted.`.
        firmware: String,
    },
    /// A line (or partial reply) that was skipped; counted by the caller.
    Rejected(Rejected),
}

/// Why a line or partial reply was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Longer than [`MAX_LINE`]; the whole line up to the next newline was dropped.
    TooLong,
    /// Not a line of the protocol (wrapped buffer, noise, an unsupported firmware's reply).
    Garbage,
    /// A reply line out of order (e.g. `T+` without `W+` before it), or a reply cut short.
    OutOfSequence,
}

/// Splits a byte stream into lines and assembles replies. Feed it with [`Decoder::push`], then
/// call [`Decoder::next_frame`] until it returns `None` ("need more bytes", not an error).
#[derive(Debug, Default)]
pub struct Decoder {
    // SKELETON: implemented in the protocol change.
}

impl Decoder {
    /// A decoder with no partial line or reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes as the port delivered them (any split, any size).
    pub fn push(&mut self, _bytes: &[u8]) {}

    /// The next complete frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        None
    }

    /// Forgets any partial line and partial reply (after the port was reopened).
    pub fn reset(&mut self) {}
}
