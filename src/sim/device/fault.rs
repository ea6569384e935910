//! The faults and changes of the world a test or an operator can inject into a running device.
#![deny(clippy::disallowed_methods)]

use std::time::Duration;

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
