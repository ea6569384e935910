//! Prometheus metrics: the recorder, build info, and the few measurements that need more than
//! a counter at the call site.
//!
//! The rest of the crate counts with the `metrics` facade (`metrics::counter!`); until
//! [`install`] runs, those calls cost a no-op. [`install`] puts one Prometheus recorder in place
//! for the whole process (idempotent, so tests may start several HTTP servers) and `/metrics`
//! renders it.
//!
//! Two measurements span tasks and are kept here in atomics, allocation-free:
//! - the **feed gap**: the time between consecutive `B+1` writes, observed where the serial
//!   task writes the line ([`line_written`]); a `B+0` or `RESET` ends the run of feeds.
//! - the **command-to-serial latency**: from a command the core accepted
//!   ([`command_handled`]) through the driver queueing the relay line it caused
//!   ([`serial_queued`]) to the serial task writing it ([`line_written`]). Commands that
//!   switch nothing (selecting cups, keep warm on a hot plate) are not measured
//!   ([`flushed`] forgets them).
//!
//! Heater on-seconds and the gauges that mirror the state are derived from the state document
//! by [`track_state`], which the HTTP server runs.

use crate::core::{Event, Request};
use crate::protocol::{Command, ReplyFormat};
use crate::state::{OnOff, StateDoc};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

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
            describe();
            gauge!("coffeebot_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        "coffeebot_build_info",
        "Always 1; the label carries the version."
    );
    describe_counter!(
        "coffeebot_serial_lines_sent_total",
        "Command lines written to the controller."
    );
    describe_counter!(
        "coffeebot_serial_replies_total",
        "Complete replies and boot banners received from the controller."
    );
    describe_counter!(
        "coffeebot_serial_lines_rejected_total",
        "Lines from the controller that were not understood."
    );
    describe_counter!(
        "coffeebot_serial_reply_timeouts_total",
        "Commands whose reply did not come in time."
    );
    describe_counter!(
        "coffeebot_serial_link_lost_total",
        "Times the serial port went away."
    );
    describe_counter!(
        "coffeebot_serial_commands_dropped_total",
        "Commands dropped because the serial queue was full."
    );
    describe_counter!(
        "coffeebot_commands_total",
        "User commands by command (topic) and outcome."
    );
    describe_counter!("coffeebot_events_total", "Events published, by event_type.");
    describe_counter!(
        "coffeebot_events_dropped_total",
        "Events dropped because the queue to MQTT was full."
    );
    describe_counter!("coffeebot_brews_started_total", "Brews started.");
    describe_counter!(
        "coffeebot_brews_ended_total",
        "Brews ended, by outcome (finished, aborted) and reason."
    );
    describe_counter!("coffeebot_faults_total", "Interlock trips, by reason.");
    describe_counter!(
        "coffeebot_controller_reboots_total",
        "Controller reboots seen (banner, or heater found off while commanded on)."
    );
    describe_counter!(
        "coffeebot_mqtt_reconnects_total",
        "Reconnections to the MQTT broker."
    );
    describe_counter!(
        "coffeebot_heater_on_seconds_total",
        "Whole seconds the controller reported the heater on."
    );
    describe_histogram!(
        "coffeebot_feed_gap_seconds",
        "Time between consecutive B+1 writes while heating."
    );
    describe_histogram!(
        "coffeebot_command_to_serial_seconds",
        "From an accepted command to the relay line it caused being written."
    );
    describe_gauge!(
        "coffeebot_heater_on",
        "1 while the controller reports the heater on."
    );
    describe_gauge!(
        "coffeebot_plate_temperature_celsius",
        "Hot-plate temperature as last published."
    );
    describe_gauge!(
        "coffeebot_water_level_percent",
        "Reservoir level as last published."
    );
    describe_gauge!(
        "coffeebot_controller_online",
        "1 while the controller answers."
    );
    describe_gauge!(
        "coffeebot_controller_reply_format",
        "1 for the reply form of the controller that answers: one_line (MrCoffeeBot 6105f59, 1 s heater timeout) or three_lines (05a9a00, none)."
    );
}

/// Counts an event the core emitted (call once per event, where it is published).
pub fn record_event(event: &Event) {
    counter!("coffeebot_events_total", "event_type" => event.event_type()).increment(1);
    match event {
        Event::BrewStarted { .. } => counter!("coffeebot_brews_started_total").increment(1),
        Event::BrewFinished { reason, .. } => {
            counter!("coffeebot_brews_ended_total", "outcome" => "finished", "reason" => *reason)
                .increment(1);
        }
        Event::BrewAborted { reason, .. } => {
            counter!("coffeebot_brews_ended_total", "outcome" => "aborted", "reason" => *reason)
                .increment(1);
        }
        Event::Fault { reason } => {
            counter!("coffeebot_faults_total", "reason" => reason.as_str()).increment(1);
        }
        Event::ControllerRebooted { .. } => {
            counter!("coffeebot_controller_reboots_total").increment(1);
        }
        Event::KeepWarmStarted | Event::KeepWarmFinished { .. } | Event::HeaterAutoOff { .. } => {}
    }
}

/// Counts a user command the core accepted or rejected, and starts the latency clock for an
/// accepted one.
pub fn command_handled(command: &'static str, request: &Request, accepted: bool) {
    let outcome = if accepted { "accepted" } else { "rejected" };
    counter!("coffeebot_commands_total", "command" => command, "outcome" => outcome).increment(1);
    if accepted && !matches!(request, Request::SelectCups(_)) {
        COMMAND_AT.store(stamp(Instant::now()), Ordering::Relaxed);
    }
}

/// The driver queued `command` for the serial task. The first relay line after an accepted
/// command carries its latency clock to [`line_written`].
pub fn serial_queued(command: Command) {
    if !matches!(command, Command::Status) {
        let at = COMMAND_AT.swap(0, Ordering::Relaxed);
        if at != 0 {
            IN_FLIGHT_AT.store(at, Ordering::Relaxed);
        }
    }
}

/// The driver carried out every output after a command: a command that queued no relay line
/// switched nothing and is not measured.
pub fn flushed() {
    COMMAND_AT.store(0, Ordering::Relaxed);
}

/// The serial task wrote `command`. Allocation-free: atomics and histograms with static keys.
pub fn line_written(command: Command) {
    let now = Instant::now();
    match command {
        Command::HeaterOn => {
            let last = LAST_FEED_AT.swap(stamp(now), Ordering::Relaxed);
            if last != 0 {
                histogram!("coffeebot_feed_gap_seconds").record(since(last, now));
            }
        }
        Command::HeaterOff | Command::Reset => LAST_FEED_AT.store(0, Ordering::Relaxed),
        Command::Status => return,
    }
    let at = IN_FLIGHT_AT.swap(0, Ordering::Relaxed);
    if at != 0 {
        histogram!("coffeebot_command_to_serial_seconds").record(since(at, now));
    }
}

// The stamps below are 64-bit atomics: native on x86_64, aarch64 and armv7 (ldrexd/strexd),
// the targets coffeebot ships for; a 32-bit target without them is told so here rather than
// by an unresolved import.
#[cfg(not(target_has_atomic = "64"))]
compile_error!("coffeebot's metrics need 64-bit atomics (AtomicU64), which this target lacks");

/// When an accepted command last came in and has not yet queued a relay line (0: none).
static COMMAND_AT: AtomicU64 = AtomicU64::new(0);
/// When the command whose relay line is queued came in (0: none).
static IN_FLIGHT_AT: AtomicU64 = AtomicU64::new(0);
/// When the last `B+1` was written, while feeds run (0: none).
static LAST_FEED_AT: AtomicU64 = AtomicU64::new(0);
/// The origin of the stamps above.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// `at` as nanoseconds since [`EPOCH`] plus one, so that 0 means "none".
fn stamp(at: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(epoch).as_nanos())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

fn since(stamp_: u64, now: Instant) -> f64 {
    let now = stamp(now);
    Duration::from_nanos(now.saturating_sub(stamp_)).as_secs_f64()
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
            counter!("coffeebot_heater_on_seconds_total").increment(total.as_secs() - reported_s);
            reported_s = total.as_secs();
        }
        if let Some(doc) = &doc {
            gauge!("coffeebot_heater_on").set(f64::from(u8::from(heater_on)));
            gauge!("coffeebot_controller_online").set(f64::from(u8::from(doc.online())));
            if let Some(t) = doc.temperature_c {
                gauge!("coffeebot_plate_temperature_celsius").set(t);
            }
            for format in [ReplyFormat::OneLine, ReplyFormat::ThreeLines] {
                let this = doc.reply_format == Some(format);
                gauge!("coffeebot_controller_reply_format", "format" => format.as_str())
                    .set(f64::from(u8::from(this)));
            }
            if let Some(pct) = doc.water_level_pct {
                gauge!("coffeebot_water_level_percent").set(f64::from(pct));
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
