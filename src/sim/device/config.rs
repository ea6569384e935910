//! What the simulated board is: which firmware build it runs and what it and its coffee maker
//! start as. Plain data, chosen before the device powers on.
#![deny(clippy::disallowed_methods)]

use std::fmt;
use std::str::FromStr;

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
