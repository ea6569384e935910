//! Household counters that survive restarts: cups brewed, brews, heater hours, an energy
//! estimate and "descale due".
//!
//! [`Tally`] counts from what the core already says (its events and the relay it reports),
//! outside the core, which stays pure. [`Store`] keeps the counters in a small JSON file in the
//! state directory (`counters.state_dir`; systemd's `StateDirectory=`), written atomically —
//! a temporary file, `fsync`, `rename`, `fsync` of the directory — at most every
//! `counters.save_interval_s` and at shutdown, so that a crash at any moment leaves either the
//! old file or the new one, never a torn one. A missing file starts from zero; an unreadable or
//! corrupt one starts from zero with one WARN line and is kept aside (`counters.json.bad`).
//! Counters only ever grow: a value read back is never lowered, and nothing here panics.
//!
//! The same [`Store`] keeps any other [`Persisted`] value of the bridge in a file of its own
//! in the same directory (the schedule's: [`crate::schedule::shell`]).

use crate::core::Event;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// The file name in the state directory.
pub const FILE: &str = "counters.json";
/// The longest relay-on step counted at once: a driver that stalled for longer does not add
/// heating time it did not see.
pub const MAX_STEP: Duration = Duration::from_secs(2);

/// The counters as stored and published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Cups of brews that finished (`done` or `reservoir_empty`).
    pub cups_brewed_total: u64,
    /// Brews that finished.
    pub brews_total: u64,
    /// Seconds the relay was reported on.
    pub heater_on_seconds_total: f64,
    /// `heater_on_seconds_total × heater.watts`, in kWh: an estimate (the relay's time, the
    /// plate's rated power), not a measurement.
    pub energy_kwh_total: f64,
    /// Brews since the last descale (reset by the `descale_reset` command).
    pub brews_since_descale: u64,
}

impl Counters {
    /// Whether descaling is due after `every` brews (0: never).
    pub fn descale_due(&self, every: u64) -> bool {
        every > 0 && self.brews_since_descale >= every
    }

    /// Whether no total is lower than in `earlier` (`brews_since_descale` may be reset).
    pub fn not_below(&self, earlier: &Counters) -> bool {
        self.cups_brewed_total >= earlier.cups_brewed_total
            && self.brews_total >= earlier.brews_total
            && self.heater_on_seconds_total >= earlier.heater_on_seconds_total
            && self.energy_kwh_total >= earlier.energy_kwh_total
    }
}

/// `counters` of the state JSON: what Home Assistant shows (the energy dashboard's estimate,
/// the totals, "descale due"). The totals are rounded down, so that they never go backwards.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CountersDoc {
    /// Cups of brews that finished.
    pub cups_brewed_total: u64,
    /// Brews that finished.
    pub brews_total: u64,
    /// Seconds the relay was reported on, in tenths.
    pub heater_on_seconds_total: f64,
    /// The energy estimate in kWh, in tenths of a Wh.
    pub energy_kwh_total: f64,
    /// Whether `maintenance.descale_every_brews` brews have passed since the last descale.
    pub descale_due: bool,
}

impl CountersDoc {
    /// Whether `self` differs from `published` in what is worth a state of its own: the
    /// counts and `descale_due`. Heater time and energy grow every second while heating; they
    /// go out with the next state (at least every `mqtt.state_interval_s`).
    pub fn differs_from(&self, published: &CountersDoc) -> bool {
        self.cups_brewed_total != published.cups_brewed_total
            || self.brews_total != published.brews_total
            || self.descale_due != published.descale_due
    }
}

impl Counters {
    /// The state's `counters`; `descale_every` is `maintenance.descale_every_brews`.
    pub fn doc(&self, descale_every: u64) -> CountersDoc {
        // Still monotonic; the nudge keeps e.g. 0.001 from showing as 0.0009.
        let down = |x: f64, scale: f64| (x * scale + 1e-6).floor() / scale;
        CountersDoc {
            cups_brewed_total: self.cups_brewed_total,
            brews_total: self.brews_total,
            heater_on_seconds_total: down(self.heater_on_seconds_total, 10.0),
            energy_kwh_total: down(self.energy_kwh_total, 10_000.0),
            descale_due: self.descale_due(descale_every),
        }
    }
}

/// Counts from the core's events and reported relay state. Pure: time comes in.
#[derive(Clone, Debug)]
pub struct Tally {
    counters: Counters,
    watts: f64,
    heater_on_since: Option<Instant>,
    changed: bool,
}

impl Tally {
    /// Starts from `counters`, with the heater's rated power in watts.
    pub fn new(counters: Counters, watts: f64) -> Self {
        Tally {
            counters,
            watts,
            heater_on_since: None,
            // Exported and written once at start: a state directory that cannot be written
            // is reported at once, not after the first brew.
            changed: true,
        }
    }

    /// The counters now.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts a core event.
    pub fn on_event(&mut self, event: &Event) {
        if let Event::BrewFinished { cups, .. } = event {
            self.counters.brews_total += 1;
            self.counters.cups_brewed_total += u64::from(*cups);
            self.counters.brews_since_descale += 1;
            self.changed = true;
        }
    }

    /// Counts relay-on time up to `now`, given whether the relay is reported on.
    pub fn on_heater(&mut self, now: Instant, on: bool) {
        if let Some(since) = self.heater_on_since {
            let step = now.saturating_duration_since(since).min(MAX_STEP);
            if !step.is_zero() {
                let s = step.as_secs_f64();
                self.counters.heater_on_seconds_total += s;
                self.counters.energy_kwh_total += s * self.watts / 3_600_000.0;
                self.changed = true;
            }
        }
        self.heater_on_since = on.then_some(now);
    }

    /// Descaled: starts the count towards the next one.
    pub fn descaled(&mut self) {
        self.counters.brews_since_descale = 0;
        self.changed = true;
    }

    /// Sets the Prometheus series of the counters (`/metrics`); `descale_every` is
    /// `maintenance.descale_every_brews`.
    pub fn export(&self, descale_every: u64) {
        let c = &self.counters;
        metrics::counter!("coffeebot_cups_brewed_total").absolute(c.cups_brewed_total);
        metrics::counter!("coffeebot_brews_total").absolute(c.brews_total);
        metrics::gauge!("coffeebot_heater_on_seconds_total").set(c.heater_on_seconds_total);
        metrics::gauge!("coffeebot_energy_kwh_total").set(c.energy_kwh_total);
        metrics::gauge!("coffeebot_brews_since_descale").set(c.brews_since_descale as f64);
        metrics::gauge!("coffeebot_descale_due")
            .set(f64::from(u8::from(c.descale_due(descale_every))));
    }

    /// Whether anything changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }
}

/// A value the bridge keeps across restarts in a JSON file of the state directory.
pub trait Persisted: Serialize + DeserializeOwned + Default + std::fmt::Debug {
    /// Its file name in the state directory.
    const FILE: &'static str;
    /// What it is, for log lines (e.g. `counters`).
    const WHAT: &'static str;
    /// What a missing or corrupt file means, for log lines.
    const FRESH: &'static str = "starting from zero";
    /// Whether a value read back can be used; an invalid one is treated as a corrupt file.
    fn valid(&self) -> bool {
        true
    }
}

impl Persisted for Counters {
    const FILE: &'static str = FILE;
    const WHAT: &'static str = "counters";
    fn valid(&self) -> bool {
        valid(self)
    }
}

/// The file of a [`Persisted`] value (the counters by default), and when it was last written.
#[derive(Debug)]
pub struct Store<T = Counters> {
    dir: Option<PathBuf>,
    interval: Duration,
    saved_at: Option<Instant>,
    dirty: bool,
    kept: PhantomData<fn() -> T>,
}

impl<T: Persisted> Store<T> {
    /// A store in `dir` (`None`: the value is kept in memory only), written at most every
    /// `interval`.
    pub fn new(dir: Option<PathBuf>, interval: Duration) -> Self {
        Store {
            dir,
            interval,
            saved_at: None,
            dirty: false,
            kept: PhantomData,
        }
    }

    /// Reads the value: the default when there is no directory or no file; the default with
    /// one WARN when the file cannot be read or parsed, the bad file renamed to `<file>.bad`.
    pub fn load(&self) -> T {
        let Some(dir) = &self.dir else {
            return T::default();
        };
        let what = T::WHAT;
        let path = dir.join(T::FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                info!(path = %path.display(), "no {what} yet; {}", T::FRESH);
                return T::default();
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read the {what}; {}", T::FRESH);
                return T::default();
            }
        };
        match serde_json::from_slice::<T>(&text) {
            Ok(c) if c.valid() => {
                info!(path = %path.display(), ?c, "{what} loaded");
                c
            }
            result => {
                let aside = dir.join(format!("{}.bad", T::FILE));
                let moved = std::fs::rename(&path, &aside);
                warn!(
                    path = %path.display(),
                    kept_as = %aside.display(),
                    error = %result.err().map_or("a value out of range".to_owned(), |e| e.to_string()),
                    moved = moved.is_ok(),
                    "corrupt {what} file; {}",
                    T::FRESH
                );
                T::default()
            }
        }
    }

    /// Saves `value` when it changed and the interval has passed (or `force`).
    pub fn maybe_save(&mut self, now: Instant, value: &T, changed: bool, force: bool) {
        self.dirty |= changed;
        let due = self.saved_at.is_none_or(|at| now >= at + self.interval);
        if !self.dirty || !(due || force) {
            return;
        }
        // On failure it is tried again at the next interval.
        self.write(value);
        self.saved_at = Some(now);
    }

    /// Saves `value` now, whatever the interval (a rare change worth keeping at once).
    /// Returns whether it was written (or there is no directory).
    pub fn save_now(&mut self, value: &T) -> bool {
        self.dirty = true;
        self.write(value)
    }

    fn write(&mut self, value: &T) -> bool {
        let Some(dir) = &self.dir else {
            self.dirty = false;
            return true;
        };
        match write_atomically(dir, T::FILE, value) {
            Ok(()) => {
                self.dirty = false;
                true
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot save the {}", T::WHAT);
                false
            }
        }
    }
}

fn valid(c: &Counters) -> bool {
    c.heater_on_seconds_total.is_finite()
        && c.heater_on_seconds_total >= 0.0
        && c.energy_kwh_total.is_finite()
        && c.energy_kwh_total >= 0.0
}

/// Temp file, fsync, rename over the old file, fsync of the directory.
fn write_atomically(dir: &Path, file: &str, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{file}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&text)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(file))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("coffeebot-counters-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn brews_and_relay_time_are_counted() {
        let mut t = Tally::new(Counters::default(), 900.0);
        assert!(t.take_changed(), "the first flush writes and exports");
        let t0 = Instant::now();
        t.on_event(&Event::BrewFinished {
            cups: 4,
            reason: "done",
        });
        t.on_event(&Event::BrewAborted {
            cups: 2,
            reason: "stopped",
        });
        t.on_heater(t0, true);
        t.on_heater(t0 + Duration::from_secs(1), true);
        t.on_heater(t0 + Duration::from_secs(2), false);
        t.on_heater(t0 + Duration::from_secs(60), false);
        // A stall of a minute counts at most MAX_STEP.
        t.on_heater(t0 + Duration::from_secs(61), true);
        t.on_heater(t0 + Duration::from_secs(121), false);
        let c = t.counters().clone();
        assert_eq!((c.brews_total, c.cups_brewed_total), (1, 4));
        assert!((c.heater_on_seconds_total - 4.0).abs() < 1e-9, "{c:?}");
        assert!((c.energy_kwh_total - 4.0 * 900.0 / 3.6e6).abs() < 1e-12);
        assert!(c.descale_due(1) && !c.descale_due(2) && !c.descale_due(0));
        let doc = c.doc(1);
        assert_eq!((doc.brews_total, doc.cups_brewed_total), (1, 4));
        assert_eq!(doc.heater_on_seconds_total, 4.0);
        assert_eq!(
            doc.energy_kwh_total, 0.001,
            "4 s × 900 W = 1 Wh, in tenths of a Wh"
        );
        assert!(doc.descale_due && !c.doc(2).descale_due);
        t.descaled();
        assert!(!t.counters().descale_due(1));
        assert!(doc.differs_from(&t.counters().doc(1)));
        let more_heat = Counters {
            heater_on_seconds_total: 100.0,
            energy_kwh_total: 1.0,
            ..c.clone()
        };
        assert!(
            !doc.differs_from(&more_heat.doc(1)),
            "heat alone rides along"
        );
    }

    #[test]
    fn saved_counters_load_back_and_a_corrupt_file_is_kept_aside() {
        let d = dir("roundtrip");
        let mut store: Store = Store::new(Some(d.clone()), Duration::from_secs(60));
        assert_eq!(store.load(), Counters::default());
        let c = Counters {
            cups_brewed_total: 7,
            brews_total: 2,
            heater_on_seconds_total: 12.5,
            energy_kwh_total: 0.003,
            brews_since_descale: 2,
        };
        let t0 = Instant::now();
        store.maybe_save(t0, &c, true, false);
        assert_eq!(store.load(), c);
        // Not again within the interval, unless forced.
        let more = Counters {
            brews_total: 3,
            ..c.clone()
        };
        store.maybe_save(t0 + Duration::from_secs(1), &more, true, false);
        assert_eq!(store.load(), c);
        store.maybe_save(t0 + Duration::from_secs(1), &more, false, true);
        assert_eq!(store.load(), more);

        std::fs::write(d.join(FILE), b"{\"brews_total\": ").unwrap();
        assert_eq!(store.load(), Counters::default());
        assert!(d.join("counters.json.bad").is_file());
        assert!(!d.join(FILE).exists());
        std::fs::write(d.join(FILE), b"{\"energy_kwh_total\": -1}").unwrap();
        assert_eq!(store.load(), Counters::default());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn without_a_directory_nothing_is_written() {
        let mut store: Store = Store::new(None, Duration::ZERO);
        store.maybe_save(Instant::now(), &Counters::default(), true, true);
        assert_eq!(store.load(), Counters::default());
    }
}
