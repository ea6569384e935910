//! The values that go in and out of the core.

use crate::protocol::Command;
use std::time::Instant;

/// Declares a field-less enum together with `ALL`, the array of every variant in declaration
/// order, from one list: a variant cannot be left out of `ALL`.
macro_rules! listed_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident,)+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($name::$variant),+].len()] = [$($name::$variant),+];
        }
    };
}

listed_enum! {
    /// The `mode` field of the state, in the order Home Assistant lists the options.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub enum Mode {
        /// Nothing running.
        #[default]
        Off,
        /// Brew started; heating the plate to `brew.preheat_c`.
        Preheating,
        /// Brewing: heating for `seconds_per_cup` × cups.
        Brewing,
        /// Thermostat on the plate.
        KeepWarm,
        /// Heater switched on by hand.
        Manual,
    }
}

impl Mode {
    /// The name in the state JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Preheating => "preheating",
            Mode::Brewing => "brewing",
            Mode::KeepWarm => "keep_warm",
            Mode::Manual => "manual",
        }
    }

    /// What the status page calls it.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Off => "Off",
            Mode::Preheating => "Preheating",
            Mode::Brewing => "Brewing",
            Mode::KeepWarm => "Keeping warm",
            Mode::Manual => "Manual heat",
        }
    }
}

listed_enum! {
    /// An interlock of SPEC §3. While one holds (but `NoWater`), nothing may heat. `ALL` is
    /// the order the state lists them in.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Fault {
        /// The serial port is gone or cannot be opened.
        LinkDown,
        /// The port is open but no valid reply came in time.
        StaleTelemetry,
        /// The temperature is a sentinel or outside the sensor's range.
        SensorError,
        /// The plate reached `safety.max_plate_c` (latched until a new start command).
        Overtemp,
        /// The plate rose too fast while heating above 90 °C (latched until a new start command).
        DryBoil,
        /// The controller reports the heater on while it was commanded off.
        HeaterMismatch,
        /// The reservoir reads empty (blocks brewing only).
        NoWater,
    }
}

impl Fault {
    /// The name in `faults` and in `fault` events.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::LinkDown => "link_down",
            Fault::StaleTelemetry => "stale_telemetry",
            Fault::SensorError => "sensor_error",
            Fault::Overtemp => "overtemp",
            Fault::DryBoil => "dry_boil",
            Fault::HeaterMismatch => "heater_mismatch",
            Fault::NoWater => "no_water",
        }
    }

    /// What the status page calls it.
    pub fn label(self) -> &'static str {
        match self {
            Fault::LinkDown => "Controller unplugged",
            Fault::StaleTelemetry => "Controller not answering",
            Fault::SensorError => "Temperature sensor error",
            Fault::Overtemp => "Plate too hot",
            Fault::DryBoil => "Boiling dry?",
            Fault::HeaterMismatch => "Heater stuck on",
            Fault::NoWater => "Reservoir empty",
        }
    }

    /// What a person can do about it, for rejection reasons.
    pub fn advice(self) -> &'static str {
        match self {
            Fault::LinkDown => "the controller's serial port is gone; check the USB cable",
            Fault::StaleTelemetry => "the controller does not answer; check it and its firmware",
            Fault::SensorError => "the temperature sensor gives no valid reading; check its wiring",
            Fault::Overtemp => "the plate is too hot; let it cool below the limit first",
            Fault::DryBoil => "the plate heated too fast (boiling dry?); check the pot",
            Fault::HeaterMismatch => {
                "the controller reports the heater on while commanded off; cut the power"
            }
            Fault::NoWater => "the reservoir reads empty; fill it and try again",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The bits of a [`FaultSet`].
type FaultBits = u32;
const _: () = assert!(
    Fault::ALL.len() <= FaultBits::BITS as usize,
    "FaultSet is too small"
);

/// A set of faults, ordered as [`Fault::ALL`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FaultSet(FaultBits);

impl FaultSet {
    /// A set holding one fault.
    pub fn only(fault: Fault) -> Self {
        FaultSet(fault.bit())
    }
    /// Adds a fault.
    pub fn insert(&mut self, fault: Fault) {
        self.0 |= fault.bit();
    }
    /// Removes a fault.
    pub fn remove(&mut self, fault: Fault) {
        self.0 &= !fault.bit();
    }
    /// Whether the set holds `fault`.
    pub fn contains(self, fault: Fault) -> bool {
        self.0 & fault.bit() != 0
    }
    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The faults in `self` but not in `other`.
    pub fn without(self, other: FaultSet) -> FaultSet {
        FaultSet(self.0 & !other.0)
    }
    /// The faults that forbid heating (all but `NoWater`).
    pub fn blocking(self) -> FaultSet {
        self.without(FaultSet::only(Fault::NoWater))
    }
    /// The faults in order.
    pub fn iter(self) -> impl Iterator<Item = Fault> {
        Fault::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl FromIterator<Fault> for FaultSet {
    fn from_iter<I: IntoIterator<Item = Fault>>(faults: I) -> Self {
        let mut set = FaultSet::default();
        for fault in faults {
            set.insert(fault);
        }
        set
    }
}

/// The faults' names, as the state lists them (`["no_water"]`).
impl std::fmt::Debug for FaultSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(Fault::as_str))
            .finish()
    }
}

listed_enum! {
    /// Why the core ended a program or cut the heater when no [`Fault`] holds: a limit ran
    /// out, the controller changed under it, or the bridge is stopping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Cutoff {
        /// The heater was on and no `B+1` went out for the controller's heater timeout.
        FeedGap,
        /// The heater ran for `safety.max_heater_on_s` without a break.
        MaxHeaterOn,
        /// The plate did not reach `brew.preheat_c` within `brew.preheat_timeout_s`.
        PreheatTimeout,
        /// The controller rebooted (banner, or heater found off while commanded on).
        ControllerRebooted,
        /// A user reset the controller.
        ControllerReset,
        /// Another firmware build answers on the same link.
        FirmwareChanged,
        /// The bridge is shutting down.
        Shutdown,
    }
}

impl Cutoff {
    /// The name in events and `last_fault`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cutoff::FeedGap => "feed_gap",
            Cutoff::MaxHeaterOn => "max_heater_on",
            Cutoff::PreheatTimeout => "preheat_timeout",
            Cutoff::ControllerRebooted => "controller_rebooted",
            Cutoff::ControllerReset => "controller_reset",
            Cutoff::FirmwareChanged => "firmware_changed",
            Cutoff::Shutdown => "shutdown",
        }
    }

    /// What the status page calls it.
    pub fn label(self) -> &'static str {
        match self {
            Cutoff::FeedGap => "Heater feed late",
            Cutoff::MaxHeaterOn => "Heater on too long",
            Cutoff::PreheatTimeout => "Preheat too slow",
            Cutoff::ControllerRebooted => "Controller rebooted",
            Cutoff::ControllerReset => "Controller reset",
            Cutoff::FirmwareChanged => "Firmware changed",
            Cutoff::Shutdown => "Bridge stopped",
        }
    }
}

/// Why the core ended a program on its own: a fault that tripped, or a [`Cutoff`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TripReason {
    /// An interlock tripped.
    Fault(Fault),
    /// A limit, a controller change or shutdown.
    Cutoff(Cutoff),
}

impl TripReason {
    /// Every reason: the faults, then the cutoffs.
    pub fn all() -> impl Iterator<Item = TripReason> {
        let faults = Fault::ALL.into_iter().map(TripReason::Fault);
        faults.chain(Cutoff::ALL.into_iter().map(TripReason::Cutoff))
    }

    /// The name in events and `last_fault`.
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::Fault(fault) => fault.as_str(),
            TripReason::Cutoff(cutoff) => cutoff.as_str(),
        }
    }

    /// What the status page calls it.
    pub fn label(self) -> &'static str {
        match self {
            TripReason::Fault(fault) => fault.label(),
            TripReason::Cutoff(cutoff) => cutoff.label(),
        }
    }
}

impl From<Fault> for TripReason {
    fn from(fault: Fault) -> Self {
        TripReason::Fault(fault)
    }
}

impl From<Cutoff> for TripReason {
    fn from(cutoff: Cutoff) -> Self {
        TripReason::Cutoff(cutoff)
    }
}

/// A user command, already parsed and range-checked against its syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `heater/set ON|OFF`: manual heating.
    Heater(bool),
    /// `brew/set START` (`None`: the selected cups) or a number of cups.
    BrewStart {
        /// Cups to brew; also selects them.
        cups: Option<u32>,
    },
    /// `brew/set STOP`: end the running program.
    BrewStop,
    /// `cups/set N`: select what the next `START` brews.
    SelectCups(u32),
    /// `keep_warm/set ON|OFF`.
    KeepWarm(bool),
    /// `controller/set RESET`: heater off, then reboot the controller.
    ResetController,
}

impl Request {
    /// Whether this request may switch the heater on.
    pub fn starts_heating(self) -> bool {
        matches!(
            self,
            Request::Heater(true) | Request::BrewStart { .. } | Request::KeepWarm(true)
        )
    }
}

/// Why a request was refused, in words a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The reason, e.g. `cups must be 1..12, got 99`.
    pub reason: String,
}

impl Rejection {
    /// A rejection with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Rejection {
            reason: reason.into(),
        }
    }
}

/// Something that happened, published as an event (SPEC §4).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A brew began (preheating).
    BrewStarted {
        /// Cups being brewed.
        cups: u32,
    },
    /// A brew ended normally: `done` or `reservoir_empty`.
    BrewFinished {
        /// Cups brewed.
        cups: u32,
        /// `done` or `reservoir_empty`.
        reason: &'static str,
    },
    /// A brew ended early.
    BrewAborted {
        /// Cups that were being brewed.
        cups: u32,
        /// `stopped`, `replaced`, `preheat_timeout`, a fault name, …
        reason: &'static str,
    },
    /// Keep warm began.
    KeepWarmStarted,
    /// Keep warm ended.
    KeepWarmFinished {
        /// `timeout`, `stopped`, `replaced`, a fault name, …
        reason: &'static str,
    },
    /// The heater reached `safety.max_heater_on_s` and was switched off.
    HeaterAutoOff {
        /// The limit, in seconds.
        after_s: f64,
    },
    /// An interlock tripped, or the feed to the controller lapsed, or another build answers.
    Fault {
        /// What tripped.
        reason: TripReason,
    },
    /// The controller rebooted (banner, or heater found off while commanded on).
    ControllerRebooted {
        /// Reboots counted since start.
        count: u64,
    },
}

impl Event {
    /// The `event_type` of the JSON.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::BrewStarted { .. } => "brew_started",
            Event::BrewFinished { .. } => "brew_finished",
            Event::BrewAborted { .. } => "brew_aborted",
            Event::KeepWarmStarted => "keep_warm_started",
            Event::KeepWarmFinished { .. } => "keep_warm_finished",
            Event::HeaterAutoOff { .. } => "heater_auto_off",
            Event::Fault { .. } => "fault",
            Event::ControllerRebooted { .. } => "controller_rebooted",
        }
    }
}

/// What the core asks its shell to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Write this command to the controller.
    Serial(Command),
    /// Publish this event.
    Event(Event),
}

/// Everything the state JSON shows, as the core knows it. The default knows nothing: off,
/// port closed, nothing measured, no cups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// Current mode.
    pub mode: Mode,
    /// Heater state the controller last reported; `None` if unknown.
    pub heater: Option<bool>,
    /// Valid plate temperature; `None` if unknown or invalid.
    pub temperature_c: Option<f64>,
    /// Water distance (with `water.enabled`); `None` if unknown.
    pub water_distance_in: Option<f64>,
    /// Water level derived from the distance.
    pub water_level_pct: Option<u8>,
    /// Cups a `START` brews.
    pub cups: u32,
    /// Whole seconds of brewing left (rounded up) in the brewing mode.
    pub brew_remaining_s: Option<u64>,
    /// When the brew ends, in the brewing mode: fixed for a whole brew, unlike the countdown.
    pub brew_ends_at: Option<Instant>,
    /// Whether keep warm is running.
    pub keep_warm: bool,
    /// Interlocks that hold now.
    pub faults: FaultSet,
    /// The latest trip: its reason and when.
    pub last_fault: Option<(TripReason, Instant)>,
    /// Whether the serial port is open.
    pub link_up: bool,
    /// Whether the controller answers: the port is open, a reply came since it was opened,
    /// and replies are not stale.
    pub answering: bool,
    /// Controller reboots seen since start.
    pub controller_reboots: u64,
    /// Firmware from the boot banner.
    pub firmware: Option<String>,
    /// The reply form of the controller that answers now (which build), if it has answered.
    pub reply_format: Option<crate::protocol::ReplyFormat>,
    /// When the controller last answered.
    pub updated_at: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_sets_hold_every_fault_in_order() {
        // FaultSet's bits are the discriminants: ALL must be them in order.
        for (i, fault) in Fault::ALL.into_iter().enumerate() {
            assert_eq!(fault as usize, i);
        }
        let all: FaultSet = Fault::ALL.into_iter().rev().collect();
        assert!(all.iter().eq(Fault::ALL));
        assert_eq!(
            format!("{:?}", FaultSet::only(Fault::NoWater)),
            r#"["no_water"]"#
        );
    }

    #[test]
    fn every_reason_has_its_own_name_and_label() {
        let reasons: Vec<TripReason> = TripReason::all().collect();
        assert_eq!(reasons.len(), Fault::ALL.len() + Cutoff::ALL.len());
        for (i, a) in reasons.iter().enumerate() {
            assert!(!a.label().is_empty());
            for b in &reasons[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
                assert_ne!(a.label(), b.label());
            }
        }
    }
}
