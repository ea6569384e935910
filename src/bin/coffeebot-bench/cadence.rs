//! Experiment 3: the watchdog feed cadence during a brew, alone, with every core saturated,
//! and under a flood of MQTT commands; measured on the wire, at the controller, and by the
//! bridge itself.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::client::{Client, Requester, Seen};
use crate::device::Device;
use crate::process::{Bridge, Hogs};
use crate::realfw::FwCounters;
use crate::sample::{cpu_sample, feed_gap_histogram, replies_total, CpuUse};
use crate::stats::{ms, Stats};
use crate::tap::{next_line, Dir, Tap, TapLine};
use crate::viewers::{self, Load, LoadFigures};
use crate::{Plan, BREW_SET, CUPS_SET, EVENT, WAIT};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Stress {
    /// Nothing else running.
    #[value(name = "alone")]
    None,
    /// Every core saturated by a busy-loop process.
    CpuHog,
    /// 1,000 `cups/set` commands a second.
    Flood,
    /// The public page's viewers and `/status.json` load ([`crate::viewers`]).
    Viewers,
    /// Idle connections on the public port ([`crate::viewers`]).
    IdleConnections,
}

impl Stress {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stress::None => "alone",
            Stress::CpuHog => "cpu hog",
            Stress::Flood => "command flood",
            Stress::Viewers => "page viewers",
            Stress::IdleConnections => "idle connections",
        }
    }
    pub(crate) fn key(self) -> &'static str {
        match self {
            Stress::None => "alone",
            Stress::CpuHog => "cpu_hog",
            Stress::Flood => "flood",
            Stress::Viewers => "viewers",
            Stress::IdleConnections => "idle_connections",
        }
    }
}

/// One feed-cadence scenario's figures.
pub(crate) struct Cadence {
    pub(crate) stress: Stress,
    pub(crate) window: Duration,
    /// Gaps between consecutive `B+1` as written by the bridge (crossing the tap).
    pub(crate) wire_gaps: Vec<Duration>,
    /// Gaps between consecutive `B+1` as the controller handled them.
    pub(crate) handled_gaps: Vec<Duration>,
    pub(crate) cpu: CpuUse,
    pub(crate) heater_stayed_on: bool,
    pub(crate) reboots: u64,
    pub(crate) faults: usize,
    pub(crate) flood: Flood,
    pub(crate) rejected_events: usize,
    /// Feed gaps the bridge itself recorded (`/metrics`), and how many exceeded 300 ms.
    pub(crate) bridge_gaps: Option<u64>,
    pub(crate) bridge_gaps_over_300ms: Option<u64>,
    /// The serial lines around the largest gap.
    pub(crate) context: Vec<String>,
    /// The real firmware's log over the window: relay drop-outs, bytes lost; `None` for the
    /// simulator.
    pub(crate) firmware_log: Option<FwCounters>,
    /// The public page's load and what it saw, for [`Stress::Viewers`] and
    /// [`Stress::IdleConnections`].
    pub(crate) load: Option<LoadFigures>,
}

impl Cadence {
    pub(crate) fn brief(&self) -> String {
        let w = Stats::of(&self.wire_gaps);
        let h = Stats::of(&self.handled_gaps);
        format!(
            "largest gap {:.1} ms written / {:.1} ms at the controller ({} feeds; the bridge's \
             /metrics: {} gaps over 300 ms), {}",
            ms(w.max),
            ms(h.max),
            self.handled_gaps.len() + 1,
            self.bridge_gaps_over_300ms
                .map_or("?".to_owned(), |n| n.to_string()),
            self.cpu.brief()
        )
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the parts of one scenario"
)]
/// Brews for `plan.heating` under `stress` and records every feed on the wire, at the
/// controller and in the bridge's own histogram.
pub(crate) async fn heating(
    client: &mut Client,
    tap: &Tap,
    device: &Device,
    bridge: &Bridge,
    broker: &Broker,
    stress: Stress,
    plan: Plan,
) -> Result<Cadence> {
    // A full reservoir and a plate past preheat: the brew starts at once, and the plate is held
    // below 90 °C, so no interlock ends the run (this measures the bridge, not the model).
    device.set_water(2.0).await?;
    device.set_plate(85.0).await?;
    let keeper = {
        let device = device.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if device.set_plate(85.0).await.is_err() || device.set_water(2.0).await.is_err() {
                    return;
                }
            }
        })
    };
    let _keeper = AbortOnDrop(keeper);
    let hogs = match stress {
        Stress::CpuHog => Some(Hogs::start(plan.heating.as_secs() + 10)?),
        _ => None,
    };
    let flood_client = match stress {
        Stress::Flood => Some(Requester::connect("bench-flood", broker.port).await?),
        _ => None,
    };
    let boots_before = device.boots().await?;
    let mut lines = tap.subscribe();
    let mut watch = device.watch();
    client.drain();
    let t0 = Instant::now();
    client.publish(BREW_SET, "{\"cups\": 2}").await?;
    client
        .state(t0, |doc, _| doc["mode"] == "brewing", "mode brewing")
        .await?;
    // The window starts at the first feed written after brewing began.
    let first = next_line(
        &mut lines,
        |l| l.dir == Dir::ToDevice && l.line == "B+1",
        "B+1",
    )
    .await?;
    let start = first.at;
    let end = start + plan.heating;
    let flood = flood_client.map(|c| {
        let per_s = plan.flood_per_s;
        let dur = plan.heating;
        let port = bridge.http_port;
        tokio::spawn(async move { flood(c, per_s, dur, port).await })
    });
    let load = match stress {
        Stress::Viewers => Some(Load::Viewers),
        Stress::IdleConnections => Some(Load::IdleConnections),
        _ => None,
    }
    .map(|load| {
        let target = viewers::Target {
            pid: bridge.pid,
            public_port: bridge.public_port,
            ops_port: bridge.http_port,
        };
        let window = end.saturating_duration_since(Instant::now());
        viewers::spawn(load, plan, window, target)
    });
    let cpu_a = cpu_sample(bridge.pid);
    let metrics_a = feed_gap_histogram(bridge.http_port);
    let log_a = device.counters();
    let mut wire = vec![start];
    // Every line in the window, to show what surrounded the largest gap.
    let mut window_lines: Vec<TapLine> = Vec::new();
    let mut handled = Vec::new();
    let mut heater_stayed_on = true;
    // Collect until the window ends; check the relay every second on the way.
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(500),
        Duration::from_secs(1),
    );
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        tokio::select! {
            line = lines.recv() => match line {
                Ok(l) => {
                    if l.dir == Dir::ToDevice && l.line == "B+1" && l.at <= end {
                        wire.push(l.at);
                    }
                    if window_lines.len() < 100_000 {
                        window_lines.push(l);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => bail!("the serial tap stopped"),
            },
            event = watch.next_handled("B+1", end.saturating_duration_since(now)) => {
                if let Some(at) = event {
                    if at >= start && at <= end {
                        handled.push(at);
                    }
                }
            }
            _ = check.tick() => {
                if !device.heater_on().await? {
                    heater_stayed_on = false;
                }
            }
            () = tokio::time::sleep_until(end.into()) => break,
        }
    }
    let cpu = CpuUse::between(cpu_a, cpu_sample(bridge.pid));
    let metrics_b = feed_gap_histogram(bridge.http_port);
    let firmware_log = device
        .counters()
        .zip(log_a)
        .map(|(now, before)| now.since(before));
    if firmware_log.is_some_and(|c| c.relay_dropouts > 0) {
        heater_stayed_on = false;
    }
    let (bridge_gaps, bridge_gaps_over_300ms) = match &metrics_b {
        Some(b) => (
            Some(b.count_since(metrics_a.as_ref())),
            b.above_since(metrics_a.as_ref(), "0.3"),
        ),
        None => (None, None),
    };
    let context = largest_gap_context(&wire, &window_lines);
    let flood = match flood {
        Some(task) => tokio::time::timeout(WAIT, task)
            .await
            .map_err(|_| anyhow!("the flood did not stop"))???,
        None => Flood::default(),
    };
    let load = match load {
        Some(task) => Some(
            tokio::time::timeout(WAIT * 3, task)
                .await
                .map_err(|_| anyhow!("the page load did not stop"))???,
        ),
        None => None,
    };
    drop(hogs);
    let boots_after = device.boots().await?;
    // What the bridge said meanwhile: faults and rejected commands.
    let mut faults = 0;
    let mut rejected_events = 0;
    while let Ok(seen) = client.seen.try_recv() {
        if let Seen::Message { topic, payload, .. } = seen {
            if topic == EVENT {
                let doc: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                match doc["event_type"].as_str() {
                    Some("fault") => faults += 1,
                    Some("command_rejected") => rejected_events += 1,
                    _ => {}
                }
            }
        }
    }
    let t_stop = Instant::now();
    client.publish(BREW_SET, "STOP").await?;
    client
        .state(
            t_stop,
            |doc, _| doc["mode"] == "off" && doc["heater"] == "OFF",
            "mode off",
        )
        .await?;
    Ok(Cadence {
        stress,
        window: plan.heating,
        wire_gaps: gaps(&wire),
        handled_gaps: gaps(&handled),
        cpu,
        heater_stayed_on,
        reboots: boots_after.saturating_sub(boots_before),
        faults,
        flood,
        rejected_events,
        bridge_gaps,
        bridge_gaps_over_300ms,
        context,
        firmware_log,
        load,
    })
}

/// The serial lines around the largest gap between feeds, as offsets in ms from the feed
/// that opened the gap.
pub(crate) fn largest_gap_context(feeds: &[Instant], lines: &[TapLine]) -> Vec<String> {
    let Some((a, b)) = feeds
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|(a, b)| *b - *a)
    else {
        return Vec::new();
    };
    let from = a.checked_sub(Duration::from_millis(300)).unwrap_or(a);
    lines
        .iter()
        .filter(|l| l.at >= from && l.at <= b)
        .map(|l| {
            let offset = if l.at >= a {
                ms(l.at - a)
            } else {
                -ms(a - l.at)
            };
            let dir = match l.dir {
                Dir::ToDevice => "bridge→",
                Dir::FromDevice => "←device",
            };
            format!("{offset:+9.3} ms {dir} {}", l.line)
        })
        .collect()
}

/// Aborts a task on drop.
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the command flood sent and what became of it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flood {
    /// Commands published.
    pub(crate) sent: u64,
    /// Acknowledged by the broker.
    pub(crate) acked: u64,
    /// Answers received on the Response Topic.
    pub(crate) answered: u64,
    /// Answers to a command already answered (must be 0).
    pub(crate) duplicate_answers: u64,
    /// Answers the bridge counted as shed (`coffeebot_mqtt_replies_total{outcome="shed"}`
    /// over the flood); `None` without `/metrics`.
    pub(crate) shed: Option<u64>,
}

impl Flood {
    /// Commands neither answered nor counted as shed (must be 0).
    pub(crate) fn unaccounted(&self) -> Option<u64> {
        self.shed
            .map(|shed| self.sent.saturating_sub(self.answered + shed))
    }
}

/// Publishes `cups/set` at `per_s` for `dur` over MQTT 5 with a Response Topic, half of them
/// valid and half out of range; then waits (at most [`WAIT`]) until every command is answered
/// or counted as shed by the bridge (`/metrics` on `http_port`).
pub(crate) async fn flood(
    client: Requester,
    per_s: u64,
    dur: Duration,
    http_port: u16,
) -> Result<Flood> {
    let shed_before = replies_total(http_port, "shed");
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        let due = (start.elapsed().as_secs_f64() * per_s as f64) as u64;
        while sent < due {
            let payload = if sent % 2 == 0 { "3" } else { "99" };
            tokio::time::timeout(WAIT, client.request(CUPS_SET, payload, sent))
                .await
                .map_err(|_| anyhow!("the flood client is stuck"))??;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let shed = || {
        replies_total(http_port, "shed")
            .zip(shed_before)
            .map(|(now, before)| now.saturating_sub(before))
    };
    let a = &client.answers;
    let deadline = Instant::now() + WAIT;
    let mut figures = loop {
        let figures = Flood {
            sent,
            acked: a.acked.load(Ordering::Relaxed),
            answered: a.answered.load(Ordering::Relaxed),
            duplicate_answers: a.duplicates.load(Ordering::Relaxed),
            shed: shed(),
        };
        if figures.unaccounted().is_none_or(|n| n == 0) || Instant::now() >= deadline {
            break figures;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    figures.acked = a.acked.load(Ordering::Relaxed);
    client.disconnect().await;
    Ok(figures)
}

/// Gaps between consecutive instants.
pub(crate) fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}
