//! The coffee maker around the board: a hot plate that heats while the relay conducts and
//! cools towards ambient, and a reservoir that drains while the plate pumps. This crate's own
//! model (realfw has none), kept apart from the firmware's timing.
#![deny(clippy::disallowed_methods)]

use std::time::Duration;

use super::Device;

/// Longest physics integration step, so Newton cooling stays accurate across long gaps.
const MAX_STEP: Duration = Duration::from_millis(20);
/// The plate cannot get hotter than boiling while water is pumped through it.
pub(super) const BOIL_C: f64 = 100.0;
/// How much faster a dry plate heats than one with water in the boiler.
const DRY_HEAT_FACTOR: f64 = 1.5;

impl Device {
    /// The thermal and water model over `dt`: heating while the relay conducts (faster when the
    /// boiler is dry), Newton cooling towards ambient, pumping above the threshold, which holds
    /// the plate at boiling and lowers the water surface.
    pub(super) fn integrate(&mut self, dt: Duration) {
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
