//! Wires the tasks together and drives the heater core.
//!
//! One task owns the serial port ([`serial::run`]); the driver here owns the [`Core`] and
//! carries out what it says: commands go to the link, events and the state document go out on
//! channels that MQTT and HTTP read. Nothing here decides anything about the heater. The
//! driver never waits on MQTT: state is a `watch` (the latest value wins, nothing queues while
//! the broker is away) and events are sent with `try_send` into a bounded queue.
//!
//! Shutdown is a state of the core: on the token, the core writes `B+0`; the driver waits (at
//! most [`SHUTDOWN_CONFIRM`]) for the reply that shows the heater off, then drops the command
//! sender so the link writes what is queued — `B+0` last — and ends.

use crate::config::Settings;
use crate::core::{Core, Limits, Output, Request};
use crate::mqtt::command::CommandName;
use crate::protocol::{Command, Frame, ReplyFormat};
use crate::schedule::runner::{Due, SkipReason};
use crate::schedule::shell::Shell;
use crate::serial::{self, LinkConfig, LinkEvent};
use crate::state::{Clock, Deadbands, EventDoc, OnOff, StateDoc};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Longest wait for the controller to confirm `B+0` at shutdown (SPEC §3: ≤ 1 s).
pub const SHUTDOWN_CONFIRM: Duration = Duration::from_secs(1);
/// Longest wait, after the heater is confirmed off, for the link to write what is queued.
/// With [`SHUTDOWN_CONFIRM`] and the MQTT goodbye this keeps shutdown within SPEC's 2 s.
pub const LINK_FINISH: Duration = Duration::from_millis(200);
/// The driver wakes at least this often, so `/healthz` can tell a stuck core.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// A user command on its way to the core, with what a rejection must quote.
#[derive(Clone, Debug)]
pub struct CommandIn {
    /// The parsed request.
    pub request: Request,
    /// The command whose topic it came on.
    pub command: CommandName,
    /// The payload as received (for `command_rejected`).
    pub payload: Vec<u8>,
}

/// The ends of the driver's channels that the other tasks hold.
#[derive(Debug)]
pub struct Outlets {
    /// The latest state document (`None` before the first). MQTT and HTTP read it.
    pub state: watch::Receiver<Option<StateDoc>>,
    /// Events to publish. MQTT holds it; if nobody does, events are only logged.
    pub events: mpsc::Receiver<EventDoc>,
    /// For tasks that reject commands themselves (bad payloads): same queue as `events`.
    pub events_tx: mpsc::Sender<EventDoc>,
    /// Commands for the core. Bounded: when full, a command is rejected, never queued.
    pub commands: mpsc::Sender<CommandIn>,
    /// When the driver last ran (for `/healthz`).
    pub heartbeat: watch::Receiver<Instant>,
    /// The MQTT task sets it while connected to the broker (for `/readyz`).
    pub broker_connected_tx: watch::Sender<bool>,
    /// Whether the MQTT task is connected to the broker (for `/readyz`).
    pub broker_connected: watch::Receiver<bool>,
}

/// The driver's ends of the channels in [`Outlets`].
#[derive(Debug)]
pub struct Inlets {
    state: watch::Sender<Option<StateDoc>>,
    events: mpsc::Sender<EventDoc>,
    commands: mpsc::Receiver<CommandIn>,
    heartbeat: watch::Sender<Instant>,
}

/// Makes the channels between the driver and the tasks that publish.
pub fn channels() -> (Inlets, Outlets) {
    let (state_tx, state_rx) = watch::channel(None);
    let (events_tx, events_rx) = mpsc::channel(256);
    let (commands_tx, commands_rx) = mpsc::channel(32);
    let (heartbeat_tx, heartbeat_rx) = watch::channel(Instant::now());
    let (broker_tx, broker_rx) = watch::channel(false);
    (
        Inlets {
            state: state_tx,
            events: events_tx.clone(),
            commands: commands_rx,
            heartbeat: heartbeat_tx,
        },
        Outlets {
            state: state_rx,
            events: events_rx,
            events_tx,
            commands: commands_tx,
            heartbeat: heartbeat_rx,
            broker_connected_tx: broker_tx,
            broker_connected: broker_rx,
        },
    )
}

/// Runs the serial link and the driver until `shutdown` is cancelled and the heater is
/// confirmed off. Returns when the link has written its last command.
pub async fn run(settings: &Settings, inlets: Inlets, shutdown: CancellationToken) {
    let (link_tx, link_rx) = mpsc::channel(16);
    let (link_events_tx, link_events_rx) = mpsc::channel(64);
    let link = tokio::spawn(serial::run(
        LinkConfig {
            path: PathBuf::from(&settings.serial.port),
            baud: settings.serial.baud,
        },
        link_rx,
        link_events_tx,
    ));
    let driver = Driver {
        core: Core::new(Limits::from(settings), Instant::now().into_std()),
        link: link_tx,
        inlets,
        deadbands: Deadbands {
            temperature_c: settings.mqtt.temperature_deadband_c,
            water_in: settings.mqtt.water_deadband_in,
        },
        state_interval: Duration::from_secs_f64(settings.mqtt.state_interval_s),
        published: None,
        published_at: Instant::now(),
        schedule: Shell::start(settings, shutdown.clone()),
    };
    driver.run(link_events_rx, shutdown).await;
    // The command sender is gone: the link writes what is queued (B+0 last) and ends.
    if tokio::time::timeout(LINK_FINISH, link).await.is_err() {
        warn!("the serial link did not finish in time");
    }
}

struct Driver {
    core: Core,
    /// Commands for the link task; dropping it ends the link after its queue.
    link: mpsc::Sender<Command>,
    inlets: Inlets,
    deadbands: Deadbands,
    state_interval: Duration,
    published: Option<StateDoc>,
    published_at: Instant,
    /// Scheduled brews: when one is due, it enters the core as a `BrewStart` request.
    schedule: Shell,
}

impl Driver {
    async fn run(mut self, mut link: mpsc::Receiver<LinkEvent>, shutdown: CancellationToken) {
        let mut stop_by: Option<Instant> = None;
        loop {
            let now = Instant::now();
            self.flush(now);
            if let Some(deadline) = stop_by {
                if self.core.shutdown_confirmed() {
                    info!("heater confirmed off");
                    break;
                }
                if now >= deadline {
                    warn!("no confirmation of heater off within 1 s; the controller's own timeout applies");
                    break;
                }
            }
            let wake = [
                self.core.poll_timeout().map(Instant::from_std),
                Some(now + HEARTBEAT),
                Some(self.published_at + self.state_interval),
                stop_by,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + HEARTBEAT);
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if stop_by.is_none() => {
                    info!("shutting down: heater off");
                    self.core.handle_shutdown(Instant::now().into_std());
                    stop_by = Some(Instant::now() + SHUTDOWN_CONFIRM);
                }
                event = link.recv() => {
                    let Some(event) = event else { break };
                    self.on_link(event);
                }
                command = self.inlets.commands.recv(), if stop_by.is_none() => {
                    if let Some(command) = command {
                        self.on_command(command);
                    }
                }
                () = self.schedule.calendar_changed(), if stop_by.is_none() => {
                    self.schedule.take_calendar();
                }
                () = sleep_until(wake) => {
                    self.core.handle_timeout(Instant::now().into_std());
                }
            }
            if stop_by.is_none() {
                self.run_schedule();
            }
        }
        self.flush(Instant::now());
    }

    fn on_link(&mut self, event: LinkEvent) {
        let now = Instant::now().into_std();
        match event {
            LinkEvent::Up => self.core.handle_link(now, true),
            LinkEvent::Down { reason } => {
                debug!(%reason, "link down");
                self.core.handle_link(now, false);
            }
            LinkEvent::Frame(Frame::Reading(reading)) => {
                debug!(?reading, "reading");
                self.core.handle_reading(now, reading);
            }
            LinkEvent::Frame(Frame::Banner { firmware }) => {
                info!(%firmware, "controller booted");
                self.core.handle_banner(now, &firmware);
            }
            LinkEvent::Frame(Frame::Rejected(_)) => {}
        }
    }

    fn on_command(&mut self, command: CommandIn) {
        let now = Instant::now().into_std();
        let result = self.core.handle_request(now, command.request);
        let name = command.command.name();
        crate::metrics::command_handled(name, &command.request, result.is_ok());
        if let Err(rejection) = result {
            info!(command = name, reason = %rejection.reason, "command rejected");
            let doc =
                EventDoc::command_rejected(name, &command.payload, &rejection.reason, &clock());
            self.send_event(doc);
        } else {
            info!(command = name, request = ?command.request, "command accepted");
        }
    }

    /// Starts a scheduled brew that is due, as an ordinary start request (same interlocks,
    /// same events); one that cannot start is skipped with `brew_skipped`, never queued.
    fn run_schedule(&mut self) {
        let wall = chrono::Utc::now();
        let now = Instant::now().into_std();
        let mode = self.core.status(now).mode;
        self.schedule.observe(wall, mode);
        while let Some(due) = self.schedule.poll(wall, mode) {
            let (brew, reason) = match due {
                Due::Start(brew) => {
                    let request = Request::BrewStart {
                        cups: Some(brew.cups),
                    };
                    match self.core.handle_request(now, request) {
                        Ok(()) => {
                            info!(cups = brew.cups, ready_at = %brew.ready_at, "scheduled brew started");
                            continue;
                        }
                        Err(rejection) => (brew, SkipReason::Rejected(rejection.reason)),
                    }
                }
                Due::Skip(brew, reason) => (brew, reason),
            };
            let doc = self.schedule.doc(&brew);
            let reason = reason.text();
            info!(ready_at = %doc.ready_at, %reason, "scheduled brew skipped");
            metrics::counter!("coffeebot_scheduled_brews_skipped_total").increment(1);
            self.send_event(EventDoc::brew_skipped(&doc, &reason, &clock()));
        }
    }

    /// Carries out every output of the core, then publishes the state if it changed.
    fn flush(&mut self, now: Instant) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Serial(command) => {
                    crate::metrics::serial_queued(command);
                    if self.link.try_send(command).is_err() {
                        // The link is stuck or gone; the controller's 1 s timeout is the net.
                        warn!(?command, "serial queue full; command dropped");
                        metrics::counter!("coffeebot_serial_commands_dropped_total").increment(1);
                    }
                }
                Output::Event(event) => {
                    crate::metrics::record_event(&event);
                    info!(event = event.event_type(), details = ?event, "event");
                    self.send_event(EventDoc::new(&event, &clock()));
                }
            }
        }
        crate::metrics::flushed();
        let clock = Clock {
            now: now.into_std(),
            wall: SystemTime::now(),
        };
        let mut doc = StateDoc::new(&self.core.status(clock.now), &clock);
        let (next_brew, enabled, calendar_read_at) = self.schedule.state(chrono::Utc::now());
        doc.next_brew = next_brew;
        doc.schedule = enabled.into();
        doc.calendar_read_at = calendar_read_at;
        let due = now >= self.published_at + self.state_interval;
        let changed = self
            .published
            .as_ref()
            .is_none_or(|p| doc.differs_from(p, self.deadbands));
        if doc.reply_format.is_some()
            && doc.reply_format != self.published.as_ref().and_then(|p| p.reply_format)
        {
            announce_build(doc.reply_format, self.core.limits());
        }
        if changed || due {
            if changed {
                info!(
                    mode = doc.mode.as_str(),
                    heater = doc.heater.map(OnOff::as_str),
                    temperature_c = doc.temperature_c,
                    link = doc.link.as_str(),
                    faults = ?doc.faults,
                    "state"
                );
            }
            self.published = Some(doc.clone());
            self.published_at = now;
            self.inlets.state.send_replace(Some(doc));
        }
        self.inlets.heartbeat.send_replace(now);
    }

    fn send_event(&self, doc: EventDoc) {
        if self.inlets.events.try_send(doc).is_err() {
            metrics::counter!("coffeebot_events_dropped_total").increment(1);
        }
    }
}

/// Says once per link session which firmware build answers, and what that means for heating.
fn announce_build(format: Option<ReplyFormat>, limits: &Limits) {
    match format {
        Some(ReplyFormat::OneLine) => info!(
            reply_format = ReplyFormat::OneLine.as_str(),
            "the controller answers in one line: MrCoffeeBot 6105f59, whose heater goes off 1 s after the last B+1"
        ),
        Some(format) if limits.allow_firmware_without_heater_timeout => warn!(
            reply_format = format.as_str(),
            "the controller answers in three lines: MrCoffeeBot 05a9a00 has no 1 s heater timeout (a dead bridge leaves the heater on up to 5 s); heating allowed by serial.allow_firmware_without_heater_timeout"
        ),
        Some(format) => warn!(
            reply_format = format.as_str(),
            "the controller answers in three lines: MrCoffeeBot 05a9a00 has no 1 s heater timeout; heating is refused — flash 6105f59 or set serial.allow_firmware_without_heater_timeout = true"
        ),
        None => {}
    }
}

fn clock() -> Clock {
    Clock {
        now: Instant::now().into_std(),
        wall: SystemTime::now(),
    }
}
