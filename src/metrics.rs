//! Prometheus metrics: every name with its help text (declared once, below), the recorder,
//! build info, and the few measurements that need more than a counter at the call site.
//!
//! The rest of the crate counts with the `metrics` facade and these names
//! (`metrics::counter!(metrics::SERIAL_LINES_SENT)`); until [`install`] runs, those calls cost
//! a no-op. [`install`] puts one Prometheus recorder in place for the whole process
//! (idempotent, so tests may start several HTTP servers) and `/metrics` renders it.
//!
//! Two timings are measured where the serial task writes a line ([`LineTimer`]), from what
//! travels with the line, with no state shared between tasks:
//! - the **feed gap**: the time between consecutive `B+1` writes; a `B+0` or `RESET` ends the
//!   run of feeds.
//! - the **command-to-serial latency**: from a command's arrival (one the core accepted, see
//!   [`crate::mqtt::command::CommandIn::accepted_at`]) to the first relay line it caused being
//!   written. Commands that switch nothing (selecting cups, keep warm on a hot plate) cause
//!   no relay line and are not measured.
//!
//! Heater on-seconds and the gauges that mirror the state are derived from the state document
//! by [`track_state`], which the HTTP server runs.

use crate::core::{Event, Request};
use crate::protocol::{Command, ReplyFormat};
use crate::state::{OnOff, StateDoc};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

/// What a metric is, for its `# TYPE` line.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Declares each metric once: a constant with its name, and a row of [`TABLE`] with its kind
/// and help text.
macro_rules! metrics_table {
    ($($id:ident: $kind:ident $name:literal, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $id: &str = $name;
        )*
        /// Every metric the bridge records, with its kind and help text.
        const TABLE: &[(Kind, &str, &str)] = &[$((Kind::$kind, $name, $help)),*];
    };
}

metrics_table! {
    BUILD_INFO: Gauge "coffeebot_build_info",
        "Always 1; the label carries the version.";
    SERIAL_LINES_SENT: Counter "coffeebot_serial_lines_sent_total",
        "Command lines written to the controller.";
    SERIAL_REPLIES: Counter "coffeebot_serial_replies_total",
        "Complete replies and boot banners received from the controller.";
    SERIAL_LINES_REJECTED: Counter "coffeebot_serial_lines_rejected_total",
        "Lines from the controller that were not understood.";
    SERIAL_REPLY_TIMEOUTS: Counter "coffeebot_serial_reply_timeouts_total",
        "Commands whose reply did not come in time.";
    SERIAL_LINK_LOST: Counter "coffeebot_serial_link_lost_total",
        "Times the serial port went away.";
    SERIAL_COMMANDS_DROPPED: Counter "coffeebot_serial_commands_dropped_total",
        "Commands dropped because the serial queue was full.";
    COMMANDS: Counter "coffeebot_commands_total",
        "User commands by command (topic) and outcome.";
    MQTT_COMMANDS: Counter "coffeebot_mqtt_commands_total",
        "Command messages by command and what the MQTT side did with them (forwarded, rejected, busy, retained_ignored).";
    MQTT_REPLIES: Counter "coffeebot_mqtt_replies_total",
        "Answers to commands with an MQTT 5 Response Topic, by outcome: sent, shed (a full queue: not sent), refused_topic (a Response Topic outside B/reply/: never answered).";
    EVENTS: Counter "coffeebot_events_total",
        "Events published, by event_type.";
    EVENTS_DROPPED: Counter "coffeebot_events_dropped_total",
        "Events dropped because the queue to MQTT was full.";
    MQTT_EVENTS_DROPPED: Counter "coffeebot_mqtt_events_dropped_total",
        "Events not published because the broker was not connected.";
    MQTT_PUBLISH_DROPPED: Counter "coffeebot_mqtt_publish_dropped_total",
        "Publications dropped because the MQTT request queue was full.";
    BREWS_STARTED: Counter "coffeebot_brews_started_total",
        "Brews started.";
    BREWS_ENDED: Counter "coffeebot_brews_ended_total",
        "Brews ended, by outcome (finished, aborted) and reason.";
    FAULTS: Counter "coffeebot_faults_total",
        "Interlock trips, by reason.";
    CONTROLLER_REBOOTS: Counter "coffeebot_controller_reboots_total",
        "Controller reboots seen (banner, or heater found off while commanded on).";
    MQTT_RECONNECTS: Counter "coffeebot_mqtt_reconnects_total",
        "Reconnections to the MQTT broker.";
    HEATER_ON_SECONDS: Counter "coffeebot_heater_on_seconds_total",
        "Whole seconds the controller reported the heater on.";
    FEED_GAP: Histogram "coffeebot_feed_gap_seconds",
        "Time between consecutive B+1 writes while heating.";
    COMMAND_TO_SERIAL: Histogram "coffeebot_command_to_serial_seconds",
        "From an accepted command to the relay line it caused being written.";
    HEATER_ON: Gauge "coffeebot_heater_on",
        "1 while the controller reports the heater on.";
    PLATE_TEMPERATURE: Gauge "coffeebot_plate_temperature_celsius",
        "Hot-plate temperature as last published.";
    WATER_LEVEL: Gauge "coffeebot_water_level_percent",
        "Reservoir level as last published.";
    CONTROLLER_ONLINE: Gauge "coffeebot_controller_online",
        "1 while the controller answers.";
    CONTROLLER_REPLY_FORMAT: Gauge "coffeebot_controller_reply_format",
        "1 for the reply form of the controller that answers: one_line (MrCoffeeBot 6105f59, 1 s heater timeout) or three_lines (05a9a00, none).";
}

/// Histogram buckets for the latency and feed-gap histograms, in seconds. The feed gap must
/// stay well below the controller's 1 s heater timeout; its default target is 0.25 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle)
/// and sets `coffeebot_build_info`. Call it before the daemon starts so that no count is lost.
///
/// If another recorder was installed first (a library user's), metrics are not ours to
/// render: the handle then renders an empty page and a warning is logged.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty");
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    warn!("cannot install the Prometheus recorder ({e}); /metrics stays empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            for &(kind, name, help) in TABLE {
                match kind {
                    Kind::Counter => describe_counter!(name, help),
                    Kind::Gauge => describe_gauge!(name, help),
                    Kind::Histogram => describe_histogram!(name, help),
                }
            }
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Counts an event the core emitted (call once per event, where it is published).
pub fn record_event(event: &Event) {
    counter!(EVENTS, "event_type" => event.event_type()).increment(1);
    match event {
        Event::BrewStarted { .. } => counter!(BREWS_STARTED).increment(1),
        Event::BrewFinished { reason, .. } => {
            counter!(BREWS_ENDED, "outcome" => "finished", "reason" => *reason).increment(1);
        }
        Event::BrewAborted { reason, .. } => {
            counter!(BREWS_ENDED, "outcome" => "aborted", "reason" => *reason).increment(1);
        }
        Event::Fault { reason } => {
            counter!(FAULTS, "reason" => reason.as_str()).increment(1);
        }
        Event::ControllerRebooted { .. } => {
            counter!(CONTROLLER_REBOOTS).increment(1);
        }
        Event::KeepWarmStarted | Event::KeepWarmFinished { .. } | Event::HeaterAutoOff { .. } => {}
    }
}

/// Counts a user command the core accepted or rejected.
pub fn command_handled(command: &'static str, accepted: bool) {
    let outcome = if accepted { "accepted" } else { "rejected" };
    counter!(COMMANDS, "command" => command, "outcome" => outcome).increment(1);
}

/// Whether an accepted request can switch the relay, and so start the command-to-serial
/// latency (selecting cups never does).
pub fn may_switch(request: &Request) -> bool {
    !matches!(request, Request::SelectCups(_))
}

/// The serial task's timings of the lines it writes; owned by that task alone.
#[derive(Debug, Default)]
pub struct LineTimer {
    /// When the last `B+1` was written, while feeds run.
    last_feed: Option<Instant>,
}

impl LineTimer {
    /// `command` was written at `now`; `accepted_at` is when the command that caused it came
    /// in, if one did. Allocation-free: histograms with static names.
    pub fn written(&mut self, command: Command, accepted_at: Option<Instant>, now: Instant) {
        match command {
            Command::HeaterOn => {
                if let Some(last) = self.last_feed.replace(now) {
                    histogram!(FEED_GAP).record(now.saturating_duration_since(last).as_secs_f64());
                }
            }
            Command::HeaterOff | Command::Reset => self.last_feed = None,
            Command::Status => return,
        }
        if let Some(at) = accepted_at {
            histogram!(COMMAND_TO_SERIAL).record(now.saturating_duration_since(at).as_secs_f64());
        }
    }
}

/// Mirrors the state document into gauges and counts the seconds the heater is reported on,
/// until the state's sender is dropped. Several trackers in one process (tests) add up.
pub async fn track_state(mut state: watch::Receiver<Option<StateDoc>>) {
    let mut on_since: Option<Instant> = None;
    let mut counted = Duration::ZERO;
    let mut reported_s = 0u64;
    loop {
        let now = Instant::now();
        let doc = state.borrow_and_update().clone();
        let heater_on = doc.as_ref().is_some_and(|d| d.heater == Some(OnOff::On));
        match (on_since, heater_on) {
            (None, true) => on_since = Some(now),
            (Some(since), false) => {
                counted += now - since;
                on_since = None;
            }
            _ => {}
        }
        let total = counted + on_since.map_or(Duration::ZERO, |since| now - since);
        if total.as_secs() > reported_s {
            counter!(HEATER_ON_SECONDS).increment(total.as_secs() - reported_s);
            reported_s = total.as_secs();
        }
        if let Some(doc) = &doc {
            gauge!(HEATER_ON).set(f64::from(u8::from(heater_on)));
            gauge!(CONTROLLER_ONLINE).set(f64::from(u8::from(doc.online())));
            if let Some(t) = doc.temperature_c {
                gauge!(PLATE_TEMPERATURE).set(t);
            }
            for format in [ReplyFormat::OneLine, ReplyFormat::ThreeLines] {
                let this = doc.reply_format == Some(format);
                gauge!(CONTROLLER_REPLY_FORMAT, "format" => format.as_str())
                    .set(f64::from(u8::from(this)));
            }
            if let Some(pct) = doc.water_level_pct {
                gauge!(WATER_LEVEL).set(f64::from(pct));
            }
        }
        // While the heater is on, count whole seconds even when the state does not change.
        let tick = async {
            if on_since.is_some() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            () = tick => {}
        }
    }
}
