//! The interlocks: which faults hold now, when a trip is recorded, and why heating may not
//! start. Split from the state machine so the safety rules read in one place; like the rest of
//! the core it never does I/O and never reads a clock.
#![deny(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use super::{Core, End, Event, Fault, FaultSet, Rejection, TripReason};

/// The dry-boil check looks at the rise over this window, and only above [`DRY_BOIL_ABOVE_C`].
pub const DRY_BOIL_WINDOW: Duration = Duration::from_secs(5);
/// Plate temperature above which a fast rise means the pot is boiling dry.
pub const DRY_BOIL_ABOVE_C: f64 = 90.0;

impl Core {
    /// Why heating may not start now, if anything. Changes nothing.
    pub(super) fn check_can_heat(&self, now: Instant) -> Result<(), Rejection> {
        let mut faults = self.active_faults(now);
        // A new start command releases the latched trips, but only once their cause is gone.
        if self.overtemp_clears() {
            faults.remove(Fault::Overtemp);
        }
        faults.remove(Fault::DryBoil);
        if let Some(fault) = faults.blocking().iter().next() {
            return Err(Rejection::new(format!(
                "{}: {}",
                fault.as_str(),
                fault.advice()
            )));
        }
        if self.temperature_c.is_none() {
            return Err(Rejection::new(
                "no valid plate temperature yet; wait for the controller to report one",
            ));
        }
        if self.reply_format.is_some_and(|f| !f.has_heater_timeout())
            && !self.limits.allow_firmware_without_heater_timeout
        {
            return Err(Rejection::new(
                "the controller runs MrCoffeeBot 05a9a00 (three-line replies), which has no 1 s \
                 heater timeout: if the bridge died while heating, the heater would stay on up to \
                 5 s; flash MrCoffeeBot 6105f59, or set \
                 serial.allow_firmware_without_heater_timeout = true to accept that",
            ));
        }
        Ok(())
    }

    pub(super) fn overtemp_clears(&self) -> bool {
        self.temperature_c
            .is_some_and(|t| t < self.limits.max_plate_c)
    }

    /// A start command was accepted: the latched trips it may release are released.
    pub(super) fn release_latches(&mut self) {
        if self.overtemp_clears() {
            self.overtemp_latched = false;
        }
        self.dry_boil_latched = false;
        self.samples.clear();
    }

    pub(super) fn check_water(&self) -> Result<(), Rejection> {
        if !self.limits.water_enabled {
            return Ok(());
        }
        match self.reading.and_then(|r| r.water_distance_in) {
            None => Err(Rejection::new(
                "no_water: the reservoir level is unknown (no valid water reading yet)",
            )),
            Some(d) if self.limits.reservoir_empty(d) => Err(Rejection::new(format!(
                "no_water: the reservoir reads empty ({d:.2} in ≥ {:.2} in); fill it and try again",
                self.limits.empty_distance_in
            ))),
            Some(_) => Ok(()),
        }
    }

    pub(super) fn update_faults(&mut self, now: Instant) {
        let active = self.active_faults(now);
        let new = active.without(self.faults);
        self.faults = active;
        if let Some(fault) = new.blocking().iter().next() {
            // One trip, reported under the first new fault; the rest show in `faults`.
            self.record_trip(now, fault.into());
            self.end_program(now, End::Tripped(fault.into()));
            if self.relay_on {
                self.force_off(now);
            }
        }
    }

    pub(super) fn record_trip(&mut self, now: Instant, reason: TripReason) {
        self.last_fault = Some((reason, now));
        self.emit(Event::Fault { reason });
    }

    pub(super) fn active_faults(&self, now: Instant) -> FaultSet {
        let mut f = FaultSet::default();
        if !self.link_up {
            f.insert(Fault::LinkDown);
            return f;
        }
        if self
            .reply_deadline()
            .is_some_and(|t| now.saturating_duration_since(t) >= self.limits.stale_after)
        {
            f.insert(Fault::StaleTelemetry);
        }
        if self.sensor_invalid {
            f.insert(Fault::SensorError);
        }
        if self.overtemp_latched {
            f.insert(Fault::Overtemp);
        }
        if self.dry_boil_latched {
            f.insert(Fault::DryBoil);
        }
        if self.relay_stuck() && self.mismatch_lasted(now) {
            f.insert(Fault::HeaterMismatch);
        }
        if self.limits.water_enabled && self.reservoir_empty() {
            f.insert(Fault::NoWater);
        }
        f
    }

    pub(super) fn relay_stuck(&self) -> bool {
        !self.relay_on && self.reading.is_some_and(|r| r.heater_on)
    }

    pub(super) fn mismatch_lasted(&self, now: Instant) -> bool {
        self.mismatch_since
            .is_some_and(|since| now.saturating_duration_since(since) > self.limits.feed_interval)
    }

    pub(super) fn reservoir_empty(&self) -> bool {
        self.reading
            .and_then(|r| r.water_distance_in)
            .is_some_and(|d| self.limits.reservoir_empty(d))
    }

    /// Dry boil: rising faster than the limit over the window while heating above 90 °C.
    pub(super) fn check_rise(&mut self, now: Instant, temp: f64) {
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= DRY_BOIL_WINDOW)
        {
            self.samples.pop_front();
        }
        let Some(&(t0, temp0)) = self.samples.front() else {
            return;
        };
        let span = now.saturating_duration_since(t0);
        if self.relay_on && temp > DRY_BOIL_ABOVE_C && span >= DRY_BOIL_WINDOW {
            let rate = (temp - temp0) / span.as_secs_f64();
            if rate > self.limits.max_rise_c_per_s {
                self.dry_boil_latched = true;
            }
        }
    }
}
