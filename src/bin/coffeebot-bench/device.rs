//! The controller behind the tap: the simulator in this process, or the real firmware on its
//! emulated board. One face for the experiments: the plant's knobs, the moments the controller
//! took in a line or switched its relay, its boots.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use coffeebot::sim::{CommandStream, SimConfig, SimHandle, Simulator};
use tokio::sync::broadcast;

use crate::realfw::{FwCounters, FwEvent, Realfw};
use crate::WAIT;

/// Which controller the bridge talks to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceKind {
    /// The simulated controller (`coffeebot::sim`), in this process.
    Sim,
    /// The real MrCoffeeBot firmware on its emulated board (`../shared/realfw`, run.sh).
    Realfw,
}

impl DeviceKind {
    pub(crate) fn key(self) -> &'static str {
        match self {
            DeviceKind::Sim => "sim",
            DeviceKind::Realfw => "realfw",
        }
    }
}

/// The controller behind the tap, with what the bench needs of it: the plant's knobs and the
/// moments it acted on a line.
#[derive(Clone)]
pub(crate) enum Device {
    Sim(SimHandle),
    Realfw(Arc<Realfw>),
}

impl Device {
    pub(crate) async fn start(kind: DeviceKind, work: &Path, out: &Path) -> Result<Device> {
        match kind {
            DeviceKind::Sim => Ok(Device::Sim(
                Simulator::start(SimConfig::default(), work.join("sim-tty"))
                    .await
                    .context("cannot start the simulated controller")?,
            )),
            DeviceKind::Realfw => Ok(Device::Realfw(Arc::new(
                Realfw::start(&work.join("realfw-tty"), &out.join("realfw.log")).await?,
            ))),
        }
    }

    /// The port the tap opens.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Device::Sim(sim) => sim.path(),
            Device::Realfw(fw) => &fw.link,
        }
    }

    pub(crate) fn kind(&self) -> DeviceKind {
        match self {
            Device::Sim(_) => DeviceKind::Sim,
            Device::Realfw(_) => DeviceKind::Realfw,
        }
    }

    /// Sets the hot plate's temperature now (°C).
    pub(crate) async fn set_plate(&self, c: f64) -> Result<()> {
        match self {
            Device::Sim(sim) => Ok(sim.set_temperature(c).await?),
            Device::Realfw(fw) => fw.control(&format!("plate {c}")),
        }
    }

    /// Sets the water level the ranger sees (inches from the sensor).
    pub(crate) async fn set_water(&self, inches: f64) -> Result<()> {
        match self {
            Device::Sim(sim) => Ok(sim.set_water_distance(inches).await?),
            Device::Realfw(fw) => fw.control(&format!("water {inches}")),
        }
    }

    /// Boots so far (the simulator's count; the board's `BOOT` events).
    pub(crate) async fn boots(&self) -> Result<u64> {
        match self {
            Device::Sim(sim) => Ok(sim.snapshot().await?.device.boots),
            Device::Realfw(fw) => Ok(fw.counters().boots),
        }
    }

    /// Whether the relay is closed now.
    pub(crate) async fn heater_on(&self) -> Result<bool> {
        match self {
            Device::Sim(sim) => Ok(sim.snapshot().await?.device.heater_on),
            Device::Realfw(fw) => Ok(fw.counters().relay_on),
        }
    }

    /// What the real firmware's log counted so far; `None` for the simulator.
    pub(crate) fn counters(&self) -> Option<FwCounters> {
        match self {
            Device::Sim(_) => None,
            Device::Realfw(fw) => Some(fw.counters()),
        }
    }

    /// From now on: the moments the controller acts.
    pub(crate) fn watch(&self) -> DeviceWatch {
        match self {
            Device::Sim(sim) => DeviceWatch::Sim(sim.commands()),
            Device::Realfw(fw) => DeviceWatch::Realfw(fw.events.subscribe()),
        }
    }

    /// What the JSON says about the controller.
    pub(crate) fn describe(&self) -> String {
        match self {
            Device::Sim(_) => {
                "SimConfig::default() in the bench process, behind a stamping pty tap".to_owned()
            }
            Device::Realfw(fw) => format!(
                "the real MrCoffeeBot firmware {} on its emulated board ({}), behind a stamping \
                 pty tap; controller times from its log (REALFW_TRACE=1)",
                fw.firmware,
                fw.dir.display()
            ),
        }
    }
}

/// The moments a controller acts, from the time it was subscribed.
pub(crate) enum DeviceWatch {
    Sim(CommandStream),
    Realfw(broadcast::Receiver<FwEvent>),
}

impl DeviceWatch {
    /// When the controller next took in a line starting with `line` (the simulator's command
    /// log; the firmware's `RX` trace), within `within`.
    pub(crate) async fn next_handled(&mut self, line: &str, within: Duration) -> Option<Instant> {
        match self {
            DeviceWatch::Sim(commands) => commands.next_matching(line, within).await.map(|e| e.at),
            DeviceWatch::Realfw(events) => {
                next_fw_event(events, within, |e| {
                    e.name == "RX" && e.line.as_deref().is_some_and(|l| l.starts_with(line))
                })
                .await
            }
        }
    }

    /// When the relay next switched to `on` by a command at or after `after` (the simulator
    /// switches as it handles `B+1`/`B+0`; the firmware logs `RELAY 1`/`RELAY 0 … by=command`).
    pub(crate) async fn relay_switched(&mut self, on: bool, after: Instant) -> Result<Instant> {
        let line = if on { "B+1" } else { "B+0" };
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let at = match self {
                DeviceWatch::Sim(_) => self.next_handled(line, left).await,
                DeviceWatch::Realfw(events) => {
                    let name = if on { "RELAY 1" } else { "RELAY 0" };
                    next_fw_event(events, left, |e| {
                        e.name == name && e.by.as_deref() == Some("command")
                    })
                    .await
                }
            }
            .ok_or_else(|| anyhow!("the controller did not act on {line} within {WAIT:?}"))?;
            if at >= after {
                return Ok(at);
            }
        }
    }
}

/// The next firmware event `want` accepts, within `within`.
pub(crate) async fn next_fw_event(
    events: &mut broadcast::Receiver<FwEvent>,
    within: Duration,
    mut want: impl FnMut(&FwEvent) -> bool,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if want(&e) => return Some(e.at),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
        }
    }
}

/// The temperature a reply line carries: `T+…` alone (three-line replies) or as a field of
/// the one-line reply (`W+…,T+…,B+…`).
pub(crate) fn reply_temperature(line: &str) -> Option<f64> {
    line.split(',')
        .find_map(|f| f.strip_prefix("T+"))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_temperature_of_either_reply_format() {
        assert_eq!(reply_temperature("W+1.98,T+21.0,B+0"), Some(21.0));
        assert_eq!(reply_temperature("T+-1000.0"), Some(-1000.0));
        assert_eq!(reply_temperature("W+1.98"), None);
        assert_eq!(reply_temperature("W+1.98,T+x,B+0"), None);
    }
}
