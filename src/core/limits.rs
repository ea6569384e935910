//! The numbers the core enforces: plain data, filled from the validated settings outside the
//! core (`From<&Settings>` in `config`), so that the core does not depend on how they are read.

use std::time::Duration;

/// The limits and set points of SPEC §3, in the units the core computes with.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Largest gap between `B+1` while heating.
    pub feed_interval: Duration,
    /// Largest gap between `S+?` while idle.
    pub poll_interval: Duration,
    /// Heating is allowed with a controller build that has no 1 s heater timeout.
    pub allow_firmware_without_heater_timeout: bool,
    /// Most cups a brew may ask for.
    pub max_cups: u32,
    /// Cups selected at start.
    pub default_cups: u32,
    /// Plate temperature that ends preheating.
    pub preheat_c: f64,
    /// Longest preheat before the brew is aborted.
    pub preheat_timeout: Duration,
    /// Brewing time per cup after preheating.
    pub seconds_per_cup: f64,
    /// Keep warm when a brew ends.
    pub keep_warm_after_brew: bool,
    /// Keep-warm thermostat set point (heater off at or above).
    pub keep_warm_target_c: f64,
    /// Heater on below `keep_warm_target_c - keep_warm_hysteresis_c`.
    pub keep_warm_hysteresis_c: f64,
    /// Keep warm ends after this long.
    pub keep_warm_max: Duration,
    /// Longest continuous heater run.
    pub max_heater_on: Duration,
    /// No valid reply for this long trips `stale_telemetry`.
    pub stale_after: Duration,
    /// Plate temperature that trips `overtemp`.
    pub max_plate_c: f64,
    /// Rise rate above 90 °C that trips `dry_boil`.
    pub max_rise_c_per_s: f64,
    /// Whether the reservoir is checked.
    pub water_enabled: bool,
    /// Distance at which the reservoir is empty.
    pub empty_distance_in: f64,
    /// Distance at which the reservoir is full.
    pub full_distance_in: f64,
}

impl Limits {
    /// How long a brew of `cups` heats after preheating.
    pub fn brew_duration(&self, cups: u32) -> Duration {
        secs(self.seconds_per_cup * f64::from(cups))
    }

    /// Keep warm switches the heater on below this temperature.
    pub fn keep_warm_on_below_c(&self) -> f64 {
        self.keep_warm_target_c - self.keep_warm_hysteresis_c
    }

    /// Whether a water distance means an empty reservoir.
    pub fn reservoir_empty(&self, distance_in: f64) -> bool {
        distance_in >= self.empty_distance_in
    }

    /// Water level in percent: linear from empty (0) to full (100), clamped.
    pub fn water_level_pct(&self, distance_in: f64) -> u8 {
        let span = self.empty_distance_in - self.full_distance_in;
        let pct = (self.empty_distance_in - distance_in) / span * 100.0;
        // Clamped to 0..=100 first, so the cast cannot truncate.
        pct.clamp(0.0, 100.0).round() as u8
    }
}

/// Seconds (validated: finite, positive, bounded) as a `Duration`.
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}
