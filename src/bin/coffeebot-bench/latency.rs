//! Experiments 1 and 2: command latency (MQTT `heater/set` → the line on the wire → the
//! controller acted → the state shows it) and telemetry latency (the controller wrote a changed
//! reading → a subscriber has it).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::client::Client;
use crate::device::{reply_temperature, Device};
use crate::report::Figures;
use crate::stats::{ms, Stats};
use crate::tap::{next_line, Dir, Tap};
use crate::{say, HEATER_SET, NEAR_C};

/// What the latency experiments drive the bridge through and watch it by: the MQTT client,
/// the tap on the serial link and the controller.
pub(crate) struct Probes<'a> {
    pub(crate) client: &'a mut Client,
    pub(crate) tap: &'a Tap,
    pub(crate) device: &'a Device,
}

/// Alternates `heater/set ON`/`OFF` at random offsets and times each to the wire, to the
/// controller's relay and to the state.
pub(crate) async fn command_latency(
    probes: &mut Probes<'_>,
    samples: usize,
    figures: &mut Figures,
) -> Result<()> {
    let Probes {
        client,
        tap,
        device,
    } = probes;
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..samples * 2 {
        let (payload, line) = if i % 2 == 0 {
            ("ON", "B+1")
        } else {
            ("OFF", "B+0")
        };
        // A random pause, so that commands land anywhere in the controller's 20 ms cycle
        // and relative to the bridge's own polls and feeds.
        tokio::time::sleep(Duration::from_millis(40 + rng.u64(0..60))).await;
        let mut lines = tap.subscribe();
        let mut watch = device.watch();
        client.drain();
        let t0 = Instant::now();
        client.publish(HEATER_SET, payload).await?;
        // The bridge may be waiting for the reply to a poll or feed it wrote before t0: that
        // wait is the controller's, so the bridge's share starts at the reply's last line.
        let mut last_reply = None;
        let wire = next_line(
            &mut lines,
            |l| {
                if l.dir == Dir::FromDevice {
                    last_reply = Some(l.at);
                    false
                } else {
                    l.at >= t0 && l.line == line
                }
            },
            line,
        )
        .await?;
        let handled = watch.relay_switched(payload == "ON", t0).await?;
        let shown = if payload == "ON" { "ON" } else { "OFF" };
        let (state_at, _) = client
            .state(
                t0,
                |doc, _| doc["heater"] == shown,
                "the heater's new state",
            )
            .await?;
        let busy_until = last_reply.filter(|at| *at > t0);
        let sample = CommandSample {
            on: i % 2 == 0,
            to_handled: handled.saturating_duration_since(t0),
            to_wire: wire.at - t0,
            bridge: wire.at - busy_until.unwrap_or(t0).max(t0),
            waited_for_reply: busy_until.is_some(),
            to_state: state_at - t0,
        };
        if std::env::var_os("BENCH_DEBUG").is_some() {
            say(&format!(
                "{line}: wire {:.3} ms handled {:.3} ms state {:.3} ms bridge {:.3} ms waited {}",
                ms(sample.to_wire),
                ms(sample.to_handled),
                ms(sample.to_state),
                ms(sample.bridge),
                sample.waited_for_reply
            ));
        }
        figures.commands.push(sample);
    }
    // Leave the heater off and the bridge idle.
    client.drain();
    say_stats("command latency, bridge share", &figures.commands, |s| {
        s.bridge
    });
    Ok(())
}

/// One command's timings.
pub(crate) struct CommandSample {
    pub(crate) on: bool,
    /// Publish → the relay switched: the simulator handled the line (includes its UART
    /// window); the real firmware's `RELAY` event.
    pub(crate) to_handled: Duration,
    /// Publish → the bridge's line crossed the tap.
    pub(crate) to_wire: Duration,
    /// The bridge's share: from publish, or from the reply it had to wait for, to the line.
    pub(crate) bridge: Duration,
    /// Publish → a subscriber has the state showing the relay as commanded (the controller's
    /// reply included).
    pub(crate) to_state: Duration,
    /// Whether a reply to an earlier line arrived after the publish (the one-line-at-a-time
    /// rule made the command wait for it).
    pub(crate) waited_for_reply: bool,
}

/// While heating, steps the plate 10 °C at a time and times the reply carrying it to the
/// subscriber.
pub(crate) async fn telemetry_latency(
    probes: &mut Probes<'_>,
    samples: usize,
    figures: &mut Figures,
) -> Result<()> {
    // While heating, the bridge asks every feed interval (250 ms), so samples come quickly.
    switch_heater(probes.client, "ON").await?;
    for i in 0..samples {
        let target = if i % 2 == 0 { 40.0 } else { 50.0 };
        let mut lines = probes.tap.subscribe();
        probes.client.drain();
        let t_set = Instant::now();
        probes.device.set_plate(target).await?;
        let emitted = next_line(
            &mut lines,
            |l| {
                l.dir == Dir::FromDevice
                    && l.at >= t_set
                    && reply_temperature(&l.line).is_some_and(|v| (v - target).abs() < NEAR_C)
            },
            "the new reading",
        )
        .await?;
        let (received, _) = probes
            .client
            .state(
                t_set,
                |doc, _| {
                    doc["temperature_c"]
                        .as_f64()
                        .is_some_and(|v| (v - target).abs() < NEAR_C)
                },
                "the new temperature",
            )
            .await?;
        if std::env::var_os("BENCH_DEBUG").is_some() {
            say(&format!(
                "telemetry {target}: emitted +{:.3} ms received +{:.3} ms",
                ms(emitted.at - t_set),
                ms(received - t_set)
            ));
        }
        figures.telemetry.push(TelemetrySample {
            emitted_to_received: received.saturating_duration_since(emitted.at),
            set_to_received: received - t_set,
        });
    }
    switch_heater(probes.client, "OFF").await?;
    say_stats("telemetry latency", &figures.telemetry, |s| {
        s.emitted_to_received
    });
    Ok(())
}

/// `heater/set` `payload` (`ON` or `OFF`), then the state showing it.
async fn switch_heater(client: &mut Client, payload: &str) -> Result<()> {
    let at = Instant::now();
    client.publish(HEATER_SET, payload).await?;
    client
        .state(
            at,
            |doc, _| doc["heater"] == payload,
            &format!("heater {payload}"),
        )
        .await?;
    Ok(())
}

/// Prints one measure's percentiles over `samples` as a progress line.
fn say_stats<T>(what: &str, samples: &[T], measure: impl Fn(&T) -> Duration) {
    say(&format!(
        "{what}: {}",
        Stats::of_each(samples, measure).brief()
    ));
}

/// One changed reading's timings.
pub(crate) struct TelemetrySample {
    /// The controller wrote the reply with the new reading → the subscriber had the state.
    pub(crate) emitted_to_received: Duration,
    /// The plate changed → the subscriber had it (includes waiting for the next poll/feed).
    pub(crate) set_to_received: Duration,
}
