//! systemd's service notifications (`sd_notify`): `READY=1`, `WATCHDOG=1`, `STATUS=` and
//! `STOPPING=1`, so that systemd knows when the bridge works and restarts it when its driver
//! stalls.
//!
//! The driver calls [`Notifier::tick`] from its own loop and from nowhere else: the watchdog
//! pings prove that the task deciding about the heater runs, not merely that the process does.
//! What to send is decided by the pure [`Notifier::plan`]; [`Notifier::tick`] only sends it.
//! Without `NOTIFY_SOCKET` (not started by systemd) nothing is sent and nothing is computed.
//!
//! `READY=1` waits for both ends: the controller has answered (the link is up) and the broker
//! connection is up. Until then the unit is "activating", and each tick extends systemd's start
//! timeout by [`START_EXTENSION`] (`EXTEND_TIMEOUT_USEC=`): a bridge that waits for an unplugged
//! board or an absent broker is not failed, but one whose driver stalls while it waits is.

use crate::state::{Link, StateDoc};
use sd_notify::NotifyState;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info};

/// How far each tick pushes systemd's start timeout while the bridge waits for the controller
/// or the broker. A driver that stops ticking fails the start after this long.
pub const START_EXTENSION: Duration = Duration::from_secs(30);

/// The driver's end of the notification protocol.
#[derive(Debug)]
pub struct Notifier {
    /// Whether `NOTIFY_SOCKET` is set: without it every call does nothing.
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when systemd asks for pings.
    ping_every: Option<Duration>,
    /// When the next ping (or start-timeout extension) is due.
    next: Option<Instant>,
    ready: bool,
    status: String,
    stopping: bool,
}

/// What one tick sends, in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `READY=1` (once).
    pub ready: bool,
    /// `STATUS=` with this line, when it changed.
    pub status: Option<String>,
    /// `WATCHDOG=1`.
    pub ping: bool,
    /// `EXTEND_TIMEOUT_USEC=` with this duration (while not ready).
    pub extend: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let ping_every = sd_notify::watchdog_enabled().map(|usec| usec / 2);
        if enabled {
            info!(
                watchdog_ping_ms = ping_every.map(|d| d.as_millis() as u64),
                "systemd notifications on"
            );
        }
        Notifier::new(enabled, ping_every)
    }

    /// A notifier that sends when `enabled`, pinging every `ping_every`.
    pub fn new(enabled: bool, ping_every: Option<Duration>) -> Self {
        Notifier {
            enabled,
            ping_every: ping_every.filter(|d| !d.is_zero()),
            next: None,
            ready: false,
            status: String::new(),
            stopping: false,
        }
    }

    /// When the driver must tick next for the pings to keep their cadence; `None` when
    /// nothing is timed.
    pub fn next_due(&self) -> Option<Instant> {
        if self.enabled && !self.stopping {
            self.next
        } else {
            None
        }
    }

    /// Decides what to send at `now`, given the latest state and whether the broker
    /// connection is up, and remembers it as sent. Pure: no I/O, no clock.
    pub fn plan(&mut self, now: Instant, state: Option<&StateDoc>, broker_up: bool) -> Plan {
        let mut plan = Plan::default();
        if !self.enabled || self.stopping {
            return plan;
        }
        let controller_up = state.is_some_and(|s| s.link == Link::Up);
        if !self.ready && controller_up && broker_up {
            self.ready = true;
            plan.ready = true;
        }
        let status = status_line(state, broker_up);
        if status != self.status {
            self.status.clone_from(&status);
            plan.status = Some(status);
        }
        let every = if self.ready {
            self.ping_every
        } else {
            Some(START_EXTENSION / 3)
        };
        let due = self.next.is_none_or(|next| now >= next) || plan.ready;
        if let (true, Some(every)) = (due, every) {
            if self.ready {
                plan.ping = self.ping_every.is_some();
            } else {
                plan.extend = Some(START_EXTENSION);
            }
            self.next = Some(now + every);
        } else if every.is_none() {
            self.next = None;
        }
        plan
    }

    /// Sends what [`Notifier::plan`] decides; a failed send is logged at debug level (systemd
    /// may be restarting; the next tick tries again).
    pub fn tick(&mut self, now: Instant, state: Option<&StateDoc>, broker_up: bool) {
        let plan = self.plan(now, state, broker_up);
        let mut states = Vec::with_capacity(4);
        if plan.ready {
            info!("ready: the controller answers and the broker is connected");
            states.push(NotifyState::Ready);
        }
        if let Some(status) = &plan.status {
            states.push(NotifyState::Status(status));
        }
        if plan.ping {
            states.push(NotifyState::Watchdog);
        }
        let extend = plan
            .extend
            .map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        if let Some(usec) = extend {
            states.push(NotifyState::ExtendTimeoutUsec(usec));
        }
        send(&states);
    }

    /// Sends `STOPPING=1` (once); no pings follow.
    pub fn stopping(&mut self) {
        if self.enabled && !self.stopping {
            self.stopping = true;
            send(&[
                NotifyState::Stopping,
                NotifyState::Status("stopping: heater off"),
            ]);
        }
    }
}

fn send(states: &[NotifyState]) {
    if states.is_empty() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "systemd notification not sent");
    }
}

/// The `STATUS=` line: mode, link, broker and faults, e.g.
/// `mode=brewing link=up broker=up faults=none`.
pub fn status_line(state: Option<&StateDoc>, broker_up: bool) -> String {
    let broker = if broker_up { "up" } else { "down" };
    let Some(state) = state else {
        return format!("starting; broker={broker}");
    };
    let faults: Vec<&str> = state.faults.iter().map(|f| f.as_str()).collect();
    let faults = if faults.is_empty() {
        "none".to_owned()
    } else {
        faults.join(",")
    };
    format!(
        "mode={} link={} broker={broker} faults={faults}",
        state.mode.as_str(),
        state.link.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Fault, FaultSet, Mode};

    fn doc(link: Link) -> StateDoc {
        StateDoc {
            mode: Mode::Brewing,
            heater: None,
            temperature_c: None,
            water_distance_in: None,
            water_level_pct: None,
            cups: 4,
            brew_remaining_s: None,
            keep_warm: crate::state::OnOff::Off,
            faults: FaultSet::only(Fault::Overtemp),
            last_fault: None,
            link,
            controller_reboots: 0,
            firmware: None,
            reply_format: None,
            updated_at: None,
            next_brew: None,
            schedule: crate::state::OnOff::Off,
            calendar_read_at: None,
            counters: Default::default(),
        }
    }

    #[test]
    fn nothing_is_planned_without_a_socket() {
        let mut n = Notifier::new(false, Some(Duration::from_secs(5)));
        let now = Instant::now();
        assert_eq!(n.plan(now, Some(&doc(Link::Up)), true), Plan::default());
        assert_eq!(n.next_due(), None);
    }

    #[test]
    fn ready_waits_for_the_controller_and_the_broker() {
        let mut n = Notifier::new(true, Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        let first = n.plan(t0, Some(&doc(Link::Down)), true);
        assert!(!first.ready);
        assert_eq!(first.extend, Some(START_EXTENSION));
        assert!(!first.ping, "no pings before ready");
        assert!(!n.plan(t0, Some(&doc(Link::Up)), false).ready);
        let ready = n.plan(t0, Some(&doc(Link::Up)), true);
        assert!(ready.ready && ready.ping);
        assert_eq!(ready.extend, None);
        assert!(!n.plan(t0, Some(&doc(Link::Up)), true).ready, "READY once");
    }

    #[test]
    fn pings_follow_the_cadence() {
        let mut n = Notifier::new(true, Some(Duration::from_millis(500)));
        let t0 = Instant::now();
        assert!(n.plan(t0, Some(&doc(Link::Up)), true).ping);
        assert_eq!(n.next_due(), Some(t0 + Duration::from_millis(500)));
        let early = t0 + Duration::from_millis(499);
        assert!(!n.plan(early, Some(&doc(Link::Up)), true).ping);
        let due = t0 + Duration::from_millis(500);
        assert!(n.plan(due, Some(&doc(Link::Up)), true).ping);
        n.stopping = true;
        assert_eq!(n.next_due(), None);
        assert!(!n.plan(due, Some(&doc(Link::Up)), true).ping);
    }

    #[test]
    fn without_a_watchdog_ready_sends_no_pings() {
        let mut n = Notifier::new(true, None);
        let t0 = Instant::now();
        let plan = n.plan(t0, Some(&doc(Link::Up)), true);
        assert!(plan.ready && !plan.ping);
        assert_eq!(n.next_due(), None);
    }

    #[test]
    fn the_status_line_says_mode_link_broker_and_faults() {
        assert_eq!(
            status_line(Some(&doc(Link::Up)), true),
            "mode=brewing link=up broker=up faults=overtemp"
        );
        assert_eq!(status_line(None, false), "starting; broker=down");
        let mut n = Notifier::new(true, None);
        let t0 = Instant::now();
        assert!(n.plan(t0, Some(&doc(Link::Up)), true).status.is_some());
        assert_eq!(n.plan(t0, Some(&doc(Link::Up)), true).status, None);
    }
}
