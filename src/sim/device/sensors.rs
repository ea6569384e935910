//! The two sensors as the firmware sees them: the DS18B20 (conversions that outlive MCU
//! reboots, the 85.0 power-on value, CRC failures, 1/16 °C steps) and the HC-SR04 (a read that
//! lasts as long as its echo, 1/148 in steps, and that never returns when the ranger is dead).
#![deny(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use super::firmware::{Cpu, Work};
use super::Device;

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
/// The temperature the firmware prints when the DS18B20's CRC check fails.
pub const CRC_SENTINEL: &str = "-1000.0";
/// The DS18B20's power-on scratchpad value, °C.
pub const POWER_ON_C: f64 = 85.0;

/// The DS18B20: it has its own power, so it outlives MCU reboots.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sensor {
    /// The scratchpad's temperature; `None` is the power-on value (85.0).
    pub(super) scratchpad: Option<f64>,
    /// When the running conversion ends.
    pub(super) conversion_end: Option<Instant>,
}

impl Sensor {
    /// Just powered: no conversion yet, the scratchpad at 85.0.
    pub(super) const POWER_ON: Sensor = Sensor {
        scratchpad: None,
        conversion_end: None,
    };
}

impl Device {
    /// Starts a water read at `t`: busy for the trigger and the echo, or hung on a dead ranger.
    pub(super) fn start_water(&mut self, t: Instant, first: bool) {
        if self.ranger_dead {
            self.cpu = Cpu::Hung;
            return;
        }
        let inches = self.water_distance_in.clamp(0.0, MAX_WATER_IN);
        let echo = Duration::from_secs_f64(inches * ECHO_PER_INCH_US / 1e6);
        self.cpu = Cpu::Busy(t + WATER_READ_BASE + echo, Work::Water { first });
    }

    /// Starts a temperature read at `t`; its Convert T starts a conversion unless one runs.
    pub(super) fn start_temperature(&mut self, t: Instant, first: bool) {
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

    /// The distance the firmware computes from the echo, with jitter, in 1/148 in steps.
    pub(super) fn measure_water(&mut self) -> f64 {
        let jitter = (self.rng.f64() * 2.0 - 1.0) * self.cfg.water_jitter_in;
        let inches = (self.water_distance_in + jitter).clamp(0.0, MAX_WATER_IN);
        // `read_raw` counts whole microseconds, `inches_from_raw` divides by 2 × 74.
        (inches * ECHO_PER_INCH_US).round() / ECHO_PER_INCH_US
    }

    /// The scratchpad as the firmware reads it: 85.0 before a conversion, -1000.0 on a CRC
    /// failure or without the probe.
    pub(super) fn measure_temperature(&mut self) -> f64 {
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
}

/// The DS18B20's 12-bit resolution: 1/16 °C, as the firmware converts it (`reading / 16.0f`).
fn quantize_c(c: f64) -> f64 {
    let raw = (c * 16.0).round().clamp(-55.0 * 16.0, 125.0 * 16.0);
    raw / 16.0
}
