//! Drives the heater core.
//!
//! The driver owns the [`Core`] and carries out what it says: commands go to the serial link
//! task ([`serial::run`], started here), events and the state document go out on the
//! channels of [`Io`] that MQTT and HTTP read. Nothing here decides anything about the heater.
//! The driver never waits on MQTT: state is a `watch` (the latest value wins, nothing queues
//! while the broker is away) and events are sent with `try_send` into a bounded queue.
//!
//! It reads the clock once per wake and hands that `now` to the core and everything after.
//!
//! One state per change (SPEC §4): after a `B+1`/`B+0`, the state is held until the
//! controller's reply shows the relay as commanded (at most [`SETTLE_MAX`]), so the first
//! state showing a command's new mode also shows the relay as the controller reported it after
//! that command — never a combination that did not exist, never two messages for one change.
//! A change of readings alone (temperature, water) goes out at most once per
//! [`READINGS_INTERVAL`]; mode, relay, fault and command effects go out at once.
//!
//! Commands that asked for an answer (MQTT 5 request/response) get it from here: a rejection
//! at once, an acceptance with the first settled state after it.
//!
//! Shutdown is a state of the core: on the token, the core writes `B+0`; the driver waits (at
//! most [`SHUTDOWN_CONFIRM`]) for the reply that shows the heater off, then drops the command
//! sender so the link writes what is queued — `B+0` last — and ends.

use crate::config::Settings;
use crate::core::{Core, Limits, Output, Request};
use crate::counters::{Store, Tally};
use crate::metrics as m;
use crate::mqtt::command::{Answer, Order, ReplyTo, ScheduleOrder};
use crate::mqtt::CommandIn;
use crate::notify::Notifier;
use crate::port::PortSpec;
use crate::protocol::{Command, Frame, ReplyFormat};
use crate::schedule::runner::{Due, SkipReason};
use crate::schedule::shell::Shell;
use crate::serial::{self, LinkConfig, LinkEvent, Outgoing};
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
/// Longest hold of the state after a relay command while the controller has not yet reported
/// the relay as commanded: two replies (a poll in flight, then the command's own).
pub const SETTLE_MAX: Duration =
    Duration::from_millis(2 * serial::REPLY_TIMEOUT.as_millis() as u64);
/// Shortest time between two states published for a change of readings alone.
pub const READINGS_INTERVAL: Duration = Duration::from_secs(1);

/// The driver's ends of its channels (built with the others by [`crate::bridge::channels`]).
#[derive(Debug)]
pub struct Io {
    /// The latest state document; MQTT and HTTP hold receivers. Dropping it (the driver has
    /// finished) ends the MQTT task and fails `/healthz`.
    pub state: watch::Sender<Option<StateDoc>>,
    /// Events to publish; the MQTT task holds the receiver. Bounded: when it is full or gone,
    /// an event is counted as dropped, never waited for.
    pub events: mpsc::Sender<EventDoc>,
    /// Commands from the MQTT task, which holds the sender; when it is gone, no more come.
    pub commands: mpsc::Receiver<CommandIn>,
    /// Answers to commands that asked for one; the MQTT task holds the receiver. Bounded:
    /// when it is full or gone, an answer is counted as shed, never waited for.
    pub answers: mpsc::Sender<Answer>,
    /// When the driver last ran; HTTP holds the receiver (`/healthz`). Dropping it fails the
    /// liveness probe.
    pub heartbeat: watch::Sender<Instant>,
    /// Whether the MQTT task is connected to the broker (it holds the sender); read for
    /// systemd's READY and STATUS.
    pub broker_connected: watch::Receiver<bool>,
}

/// Runs the serial link and the driver until `shutdown` is cancelled and the heater is
/// confirmed off. Returns when the link has written its last command.
pub async fn run(settings: &Settings, io: Io, shutdown: CancellationToken) {
    let (link_tx, link_rx) = mpsc::channel(16);
    let (link_events_tx, link_events_rx) = mpsc::channel(64);
    let link = tokio::spawn(serial::run(
        LinkConfig {
            // Validated; a path is the fallback that keeps the old meaning.
            port: PortSpec::parse(&settings.serial.port)
                .unwrap_or_else(|_| PortSpec::Path(PathBuf::from(&settings.serial.port))),
            sysfs_root: crate::port::sysfs_root(),
            baud: settings.serial.baud,
        },
        link_rx,
        link_events_tx,
    ));
    let now = Instant::now();
    let store: Store = Store::new(
        Some(PathBuf::from(&settings.counters.state_dir)).filter(|d| !d.as_os_str().is_empty()),
        Duration::from_secs_f64(settings.counters.save_interval_s),
    );
    let driver = Driver {
        core: Core::new(Limits::from(settings), now.into_std()),
        link: link_tx,
        io,
        deadbands: Deadbands {
            temperature_c: settings.mqtt.temperature_deadband_c,
            water_in: settings.mqtt.water_deadband_in,
        },
        state_interval: Duration::from_secs_f64(settings.mqtt.state_interval_s),
        published: None,
        published_at: now,
        unsettled_since: None,
        next_publish: None,
        pending_answers: Vec::new(),
        command_at: None,
        notifier: Notifier::from_env(),
        tally: Tally::new(store.load(), settings.heater.watts),
        store,
        descale_every: settings.maintenance.descale_every_brews,
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
    /// Lines for the link task; dropping it ends the link after its queue.
    link: mpsc::Sender<Outgoing>,
    io: Io,
    deadbands: Deadbands,
    state_interval: Duration,
    published: Option<StateDoc>,
    published_at: Instant,
    /// Since when the controller's reported relay differs from the one last commanded.
    unsettled_since: Option<Instant>,
    /// When a held or rate-limited state is due.
    next_publish: Option<Instant>,
    /// Accepted commands whose answer waits for the state that shows their effect.
    pending_answers: Vec<(ReplyTo, &'static str, Vec<u8>)>,
    /// When the command accepted in this wake came in, until the relay line it causes is
    /// queued (it rides on that line to the link, for the command-to-serial latency).
    command_at: Option<Instant>,
    /// systemd notifications; ticked only here, so its pings prove this loop runs.
    notifier: Notifier,
    /// Household counters, counted from the core's events and reported relay.
    tally: Tally,
    /// Where the counters are kept across restarts.
    store: Store,
    /// Brews between descalings (`maintenance.descale_every_brews`).
    descale_every: u64,
    /// Scheduled brews: when one is due, it enters the core as a `BrewStart` request.
    schedule: Shell,
}

/// What woke the driver.
enum Woke {
    Shutdown,
    Link(Option<LinkEvent>),
    Command(Option<CommandIn>),
    Calendar,
    Timer,
}

impl Driver {
    async fn run(mut self, mut link: mpsc::Receiver<LinkEvent>, shutdown: CancellationToken) {
        let mut stop_by: Option<Instant> = None;
        let mut now = read_clock();
        loop {
            self.flush(&now, false);
            let at = now.instant;
            if let Some(deadline) = stop_by {
                if self.core.shutdown_confirmed() {
                    info!("heater confirmed off");
                    break;
                }
                if at >= deadline {
                    warn!("no confirmation of heater off within 1 s; the controller's own timeout applies");
                    break;
                }
            }
            let wake = [
                self.core.poll_timeout().map(Instant::from_std),
                Some(at + HEARTBEAT),
                self.next_publish,
                Some(self.published_at + self.state_interval),
                stop_by,
                self.notifier.next_due(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(at + HEARTBEAT);
            let woke = tokio::select! {
                biased;
                () = shutdown.cancelled(), if stop_by.is_none() => Woke::Shutdown,
                event = link.recv() => Woke::Link(event),
                command = self.io.commands.recv(), if stop_by.is_none() => Woke::Command(command),
                () = self.schedule.calendar_changed(), if stop_by.is_none() => Woke::Calendar,
                () = sleep_until(wake) => Woke::Timer,
            };
            // The one reading of the clock for this wake.
            now = read_clock();
            let core_now = now.clock.now;
            match woke {
                Woke::Shutdown => {
                    info!("shutting down: heater off");
                    self.notifier.stopping();
                    self.core.handle_shutdown(core_now);
                    stop_by = Some(now.instant + SHUTDOWN_CONFIRM);
                }
                Woke::Link(None) => break,
                Woke::Link(Some(event)) => self.on_link(core_now, event),
                Woke::Command(Some(command)) => self.on_command(&now.clock, command),
                Woke::Command(None) => {}
                Woke::Calendar => self.schedule.take_calendar(),
                Woke::Timer => self.core.handle_timeout(core_now),
            }
            if stop_by.is_none() {
                self.run_schedule(&now);
            }
        }
        // The last state goes out whatever is held: nothing follows it.
        self.flush(&now, true);
        self.store
            .maybe_save(now.instant, self.tally.counters(), true, true);
    }

    fn on_link(&mut self, now: std::time::Instant, event: LinkEvent) {
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

    fn on_command(&mut self, clock: &Clock, command: CommandIn) {
        let request = match command.request {
            Order::Core(request) => request,
            order => return self.on_order(clock, &command, order),
        };
        let result = self.core.handle_request(clock.now, request);
        let name = command.command.name();
        m::command_handled(name, result.is_ok());
        if let Err(rejection) = result {
            info!(command = name, reason = %rejection.reason, "command rejected");
            self.rejected(clock, &command, &rejection.reason);
        } else {
            info!(command = name, ?request, "command accepted");
            if m::may_switch(&request) {
                self.command_at = Some(command.accepted_at);
            }
            self.accepted(command);
        }
    }

    /// A command refused here: the `command_rejected` event, and its answer if it asked for one.
    fn rejected(&self, clock: &Clock, command: &CommandIn, reason: &str) {
        let name = command.command.name();
        let doc = EventDoc::command_rejected(name, &command.payload, reason, clock);
        self.send_event(doc);
        if let Some(to) = command.reply.clone() {
            self.send_answer(Answer::rejected(to, name, &command.payload, reason));
        }
    }

    /// A command taken: its answer (if it asked for one) waits for the state that shows its
    /// effect, which [`Driver::flush`] sends.
    fn accepted(&mut self, command: CommandIn) {
        if let Some(to) = command.reply {
            self.pending_answers
                .push((to, command.command.name(), command.payload));
        }
    }

    /// Carries out a command that is not the heater core's: the schedule's and the counters'.
    /// Neither can switch the heater, so none is measured for latency.
    fn on_order(&mut self, clock: &Clock, command: &CommandIn, order: Order) {
        let name = command.command.name();
        match order {
            Order::Core(_) => return,
            Order::Schedule(ScheduleOrder::Enable(on)) => {
                self.schedule.set_enabled(on);
                info!(command = name, enabled = on, "schedule switched");
            }
            Order::Schedule(ScheduleOrder::SkipNext) => {
                let wall = chrono::DateTime::<chrono::Utc>::from(clock.wall);
                match self.schedule.skip_next(wall) {
                    Some(brew) => {
                        info!(command = name, ready_at = %brew.ready_at, "next scheduled brew skipped");
                    }
                    None => {
                        let reason = "no planned brew to skip";
                        m::command_handled(name, false);
                        info!(command = name, reason, "command rejected");
                        self.rejected(clock, command, reason);
                        return;
                    }
                }
            }
            Order::Descaled => {
                self.tally.descaled();
                info!(
                    command = name,
                    "descaled; counting towards the next descale"
                );
            }
        }
        m::command_handled(name, true);
        self.accepted(command.clone());
    }

    /// Starts a scheduled brew that is due, as an ordinary start request (same interlocks,
    /// same events); one that cannot start is skipped with `brew_skipped`, never queued.
    fn run_schedule(&mut self, now: &Now) {
        let wall = chrono::DateTime::<chrono::Utc>::from(now.clock.wall);
        let clock = now.clock;
        let now = now.clock.now;
        let status = self.core.status(now);
        let mode = status.mode;
        self.schedule.observe(wall, mode);
        while let Some(due) = self.schedule.poll(wall, mode, status.answering) {
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
            self.send_event(EventDoc::brew_skipped(&doc, &reason, &clock));
        }
    }

    /// Carries out every output of the core, then publishes the state if it changed and is
    /// settled (see the module documentation); `force` publishes what is held.
    fn flush(&mut self, now: &Now, force: bool) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Serial(command) => {
                    // The first relay line after an accepted command carries its arrival.
                    let accepted_at = match command {
                        Command::Status => None,
                        _ => self.command_at.take(),
                    };
                    let line = Outgoing {
                        command,
                        accepted_at,
                    };
                    if self.link.try_send(line).is_err() {
                        // The link is stuck or gone; the controller's 1 s timeout is the net.
                        warn!(?command, "serial queue full; command dropped");
                        metrics::counter!(m::SERIAL_COMMANDS_DROPPED).increment(1);
                    }
                }
                Output::Event(event) => {
                    self.tally.on_event(&event);
                    m::record_event(&event);
                    info!(event = event.event_type(), details = ?event, "event");
                    self.send_event(EventDoc::new(&event, &now.clock));
                }
            }
        }
        // A command that queued no relay line switched nothing and is not measured.
        self.command_at = None;
        let mut doc = StateDoc::new(&self.core.status(now.clock.now), &now.clock);
        let due = now.instant >= self.published_at + self.state_interval;
        self.tally
            .on_heater(now.instant, doc.heater.is_some_and(OnOff::is_on));
        let counted = self.tally.take_changed();
        if counted {
            self.tally.export(self.descale_every);
        }
        self.store
            .maybe_save(now.instant, self.tally.counters(), counted, false);
        let (next_brew, enabled, calendar_read_at) =
            self.schedule
                .state(chrono::DateTime::<chrono::Utc>::from(now.clock.wall));
        doc.next_brew = next_brew;
        doc.schedule = enabled.into();
        doc.calendar_read_at = calendar_read_at;
        doc.counters = self.tally.counters().doc(self.descale_every);
        if let Some(published) = &self.published {
            doc.keep_brew_end(published);
        }
        let changed = self
            .published
            .as_ref()
            .is_none_or(|p| doc.differs_from(p, self.deadbands));
        let beyond_readings = self
            .published
            .as_ref()
            .is_none_or(|p| doc.differs_beyond_readings(p, self.deadbands));
        if doc.reply_format.is_some()
            && doc.reply_format != self.published.as_ref().and_then(|p| p.reply_format)
        {
            announce_build(doc.reply_format, self.core.limits());
        }
        // Settled: the controller reports the relay as last commanded (or nothing is known of
        // it, which the state says with `heater: null`).
        let settled = doc
            .heater
            .is_none_or(|h| h.is_on() == self.core.relay_commanded());
        let settle_by = if settled {
            self.unsettled_since = None;
            None
        } else {
            Some(*self.unsettled_since.get_or_insert(now.instant) + SETTLE_MAX)
        };
        let holding = !force && settle_by.is_some_and(|by| now.instant < by);
        let readings_due = now.instant >= self.published_at + READINGS_INTERVAL;
        let publish = !holding && (beyond_readings || due || (changed && readings_due));
        self.next_publish = if holding {
            settle_by
        } else if changed && !publish {
            Some(self.published_at + READINGS_INTERVAL)
        } else {
            None
        };
        if publish {
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
            self.published_at = now.instant;
            self.io.state.send_replace(Some(doc.clone()));
        }
        if !holding {
            for (to, name, payload) in std::mem::take(&mut self.pending_answers) {
                self.send_answer(Answer::accepted(to, name, &payload, Some(&doc)));
            }
        }
        self.io.heartbeat.send_replace(now.instant);
        let broker_up = *self.io.broker_connected.borrow();
        self.notifier
            .tick(now.instant, self.published.as_ref(), broker_up);
    }

    fn send_answer(&self, answer: Answer) {
        if self.io.answers.try_send(answer).is_err() {
            metrics::counter!(m::MQTT_REPLIES, "outcome" => "shed").increment(1);
        }
    }

    fn send_event(&self, doc: EventDoc) {
        if self.io.events.try_send(doc).is_err() {
            metrics::counter!(m::EVENTS_DROPPED).increment(1);
        }
    }
}

/// The time of one wake: tokio's instant (timers, heartbeat) and the core's clock (the same
/// moment as a std instant, and the wall clock for the documents).
struct Now {
    instant: Instant,
    clock: Clock,
}

fn read_clock() -> Now {
    let instant = Instant::now();
    Now {
        instant,
        clock: Clock {
            now: instant.into_std(),
            wall: SystemTime::now(),
        },
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
