//! The run's figures: every sample and count collected, printed as a table and as the JSON
//! that `BENCHMARKS.md` is written from.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::cadence::{Cadence, Stress};
use crate::device::{Device, DeviceKind};
use crate::latency::{CommandSample, TelemetrySample};
use crate::realfw::FwCounters;
use crate::sample::{commit, machine, CpuUse};
use crate::stats::{ms, Stats};
use crate::viewers::LoadFigures;
use crate::{Args, Plan, CONTROLLER_CUTOFF_MS, FEED_INTERVAL_MS};

/// Every sample and count of a run.
#[derive(Default)]
pub(crate) struct Figures {
    /// `/proc/loadavg` before and after: other work on the machine shows here.
    pub(crate) loadavg_start: Option<String>,
    pub(crate) loadavg_end: Option<String>,
    pub(crate) start_to_state: Vec<Duration>,
    pub(crate) start_to_reading: Vec<Duration>,
    pub(crate) shutdown: Vec<Duration>,
    pub(crate) shutdown_codes: Vec<i32>,
    pub(crate) idle_cpu: Option<CpuUse>,
    pub(crate) rss_idle_kb: Option<u64>,
    pub(crate) rss_end_kb: Option<u64>,
    pub(crate) rss_peak_kb: Option<u64>,
    pub(crate) binary_bytes: Option<u64>,
    pub(crate) commands: Vec<CommandSample>,
    pub(crate) telemetry: Vec<TelemetrySample>,
    pub(crate) cadence: Vec<Cadence>,
    /// The real firmware's log over the whole run; `None` for the simulator.
    pub(crate) firmware_log: Option<FwCounters>,
    /// Whether the controller is the real firmware (its relay events time the commands).
    pub(crate) realfw: bool,
}

impl Figures {
    pub(crate) fn command_stats(
        &self,
        f: impl Fn(&CommandSample) -> Duration,
        on: Option<bool>,
    ) -> Stats {
        let v: Vec<Duration> = self
            .commands
            .iter()
            .filter(|s| on.is_none_or(|on| s.on == on))
            .map(f)
            .collect();
        Stats::of(&v)
    }

    pub(crate) fn to_json(&self, args: &Args, plan: Plan, bin: &Path, device: &Device) -> Value {
        let telemetry = |f: fn(&TelemetrySample) -> Duration| Stats::of_each(&self.telemetry, f);
        let cadence: serde_json::Map<String, Value> = self
            .cadence
            .iter()
            .map(|c| {
                let w = Stats::of(&c.wire_gaps);
                let h = Stats::of(&c.handled_gaps);
                (
                    c.stress.key().to_owned(),
                    json!({
                        "window_s": c.window.as_secs_f64(),
                        "feeds_written": c.wire_gaps.len() + 1,
                        "gap_written": w,
                        "gap_at_controller": h,
                        "largest_gap_ms": ms(w.max.max(h.max)),
                        "largest_gap_vs_feed_interval": ms(w.max.max(h.max)) / FEED_INTERVAL_MS,
                        "watchdog_margin_ms": CONTROLLER_CUTOFF_MS - ms(w.max.max(h.max)),
                        "heater_stayed_on": c.heater_stayed_on,
                        "controller_reboots": c.reboots,
                        "fault_events": c.faults,
                        "bridge_cpu": c.cpu.to_json(),
                        "flood_sent": c.flood.sent,
                        "flood_acked": c.flood.acked,
                        "flood_rate_per_s": c.flood.sent as f64 / c.window.as_secs_f64(),
                        "flood_answered": c.flood.answered,
                        "flood_duplicate_answers": c.flood.duplicate_answers,
                        "flood_answers_shed": c.flood.shed,
                        "flood_unaccounted": c.flood.unaccounted(),
                        "command_rejected_events": c.rejected_events,
                        "bridge_metrics_feed_gaps": c.bridge_gaps,
                        "bridge_metrics_feed_gaps_over_300ms": c.bridge_gaps_over_300ms,
                        "largest_gap_serial_context": c.context,
                        "firmware_log": c.firmware_log,
                        "page_load": c.load.as_ref().map(LoadFigures::to_json),
                    }),
                )
            })
            .collect();
        json!({
            "benchmark": "coffeebot-bench",
            "mode": if args.short { "short" } else { "full" },
            "device": device.kind().key(),
            "when": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "machine": machine(),
            "loadavg": { "start": self.loadavg_start, "end": self.loadavg_end },
            "commit": commit(),
            "bridge_binary": bin.display().to_string(),
            "settings": {
                "bridge": match device.kind() {
                    DeviceKind::Sim => "config/default.toml defaults; anonymous MQTT and HTTP on loopback; RUST_LOG=info to a file; serial.allow_firmware_without_heater_timeout = true (the simulator may speak the three-line build)",
                    DeviceKind::Realfw => "config/default.toml defaults; anonymous MQTT and HTTP on loopback; RUST_LOG=info to a file",
                },
                "feed_interval_ms": FEED_INTERVAL_MS,
                "poll_interval_ms": 1000,
                "starts": plan.starts,
                "idle_s": plan.idle.as_secs_f64(),
                "command_samples_each_way": plan.command_samples,
                "telemetry_samples": plan.telemetry_samples,
                "heating_window_s": plan.heating.as_secs_f64(),
                "flood_target_per_s": plan.flood_per_s,
                "page_viewers": plan.viewers,
                "page_status_json_target_per_s": plan.status_per_s,
                "page_idle_connections": plan.idle_connections,
                "http_max_streams": crate::process::PAGE_MAX_STREAMS,
                "simulator": device.describe(),
                "broker_tcp_nodelay": !args.broker_nagle,
                "only_scenarios": args.scenarios.iter().map(|s| s.key()).collect::<Vec<_>>(),
            },
            "command_latency": {
                "bridge_share": self.command_stats(|s| s.bridge, None),
                "publish_to_wire": self.command_stats(|s| s.to_wire, None),
                "publish_to_controller": self.command_stats(|s| s.to_handled, None),
                "publish_to_state": self.command_stats(|s| s.to_state, None),
                "on_publish_to_controller": self.command_stats(|s| s.to_handled, Some(true)),
                "off_publish_to_controller": self.command_stats(|s| s.to_handled, Some(false)),
                "samples_behind_a_reply": self.commands.iter().filter(|s| s.waited_for_reply).count(),
            },
            "telemetry_latency": {
                "reply_to_subscriber": telemetry(|s| s.emitted_to_received),
                "plate_change_to_subscriber": telemetry(|s| s.set_to_received),
            },
            "feed_cadence": cadence,
            "firmware_log": self.firmware_log,
            "footprint": {
                "rss_idle_kb": self.rss_idle_kb,
                "rss_end_kb": self.rss_end_kb,
                "rss_peak_kb": self.rss_peak_kb,
                "idle_cpu": self.idle_cpu.map(CpuUse::to_json),
                "brewing_cpu": self.cadence.iter().find(|c| c.stress == Stress::None).map(|c| c.cpu.to_json()),
                "binary_bytes": self.binary_bytes,
                "start_to_first_state": Stats::of(&self.start_to_state),
                "start_to_state_with_reading": Stats::of(&self.start_to_reading),
                "sigterm_to_exit": Stats::of(&self.shutdown),
                "exit_codes": self.shutdown_codes,
            },
        })
    }

    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let row = |t: &mut String, name: &str, value: String| {
            let _ = writeln!(t, "{name:<46} {value}");
        };
        let lat = |s: Stats| {
            format!(
                "p50 {:>7.3}  p99 {:>7.3}  max {:>7.3} ms  (n={})",
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                s.n
            )
        };
        let _ = writeln!(t, "{:<46} figure", "measure");
        let handled = if self.realfw {
            "command: publish → relay switched (log)"
        } else {
            "command: publish → controller handled it"
        };
        let latencies = [
            (
                "command: bridge share (publish → line written)",
                self.command_stats(|s| s.bridge, None),
            ),
            (
                "command: publish → line written",
                self.command_stats(|s| s.to_wire, None),
            ),
            (handled, self.command_stats(|s| s.to_handled, None)),
            (
                "command: publish → state shows the relay",
                self.command_stats(|s| s.to_state, None),
            ),
            (
                "telemetry: reply written → subscriber",
                Stats::of_each(&self.telemetry, |s| s.emitted_to_received),
            ),
            (
                "telemetry: plate change → subscriber",
                Stats::of_each(&self.telemetry, |s| s.set_to_received),
            ),
        ];
        for (name, stats) in latencies {
            row(&mut t, name, lat(stats));
        }
        for c in &self.cadence {
            let w = Stats::of(&c.wire_gaps);
            let h = Stats::of(&c.handled_gaps);
            row(
                &mut t,
                &format!(
                    "feed gap, brewing, {} (written/controller)",
                    c.stress.name()
                ),
                format!(
                    "max {:.1} / {:.1} ms, p99 {:.1} / {:.1} ms, {} feeds{}{}",
                    ms(w.max),
                    ms(h.max),
                    ms(w.p99),
                    ms(h.p99),
                    c.wire_gaps.len() + 1,
                    if c.heater_stayed_on && c.reboots == 0 && c.faults == 0 {
                        String::new()
                    } else {
                        format!("; HEATER DROPPED/REBOOTS {}/FAULTS {}", c.reboots, c.faults)
                    },
                    if c.stress == Stress::Flood {
                        format!(
                            "; flood {:.0}/s: {} sent, {} answered, {} shed, {} unaccounted, {} duplicate answers",
                            c.flood.sent as f64 / c.window.as_secs_f64(),
                            c.flood.sent,
                            c.flood.answered,
                            c.flood.shed.map_or("?".to_owned(), |n| n.to_string()),
                            c.flood.unaccounted().map_or("?".to_owned(), |n| n.to_string()),
                            c.flood.duplicate_answers,
                        )
                    } else {
                        String::new()
                    }
                ),
            );
            row(
                &mut t,
                &format!("bridge CPU, brewing, {}", c.stress.name()),
                c.cpu.brief(),
            );
            if let Some(log) = c.firmware_log {
                row(
                    &mut t,
                    &format!("firmware log, brewing, {}", c.stress.name()),
                    log.brief(),
                );
            }
            if let Some(load) = &c.load {
                load_rows(&mut t, c.stress.name(), load, &lat);
            }
        }
        if let Some(log) = self.firmware_log {
            row(&mut t, "firmware log, whole run", log.brief());
        }
        if let Some(cpu) = self.idle_cpu {
            row(&mut t, "bridge CPU, idle", cpu.brief());
        }
        let kb =
            |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{:.1} MB", v as f64 / 1024.0));
        row(
            &mut t,
            "RSS idle / end / peak (VmHWM)",
            format!(
                "{} / {} / {}",
                kb(self.rss_idle_kb),
                kb(self.rss_end_kb),
                kb(self.rss_peak_kb)
            ),
        );
        row(
            &mut t,
            "load average at start / end",
            format!(
                "{} / {}",
                self.loadavg_start.as_deref().unwrap_or("?"),
                self.loadavg_end.as_deref().unwrap_or("?")
            ),
        );
        row(
            &mut t,
            "release binary size",
            self.binary_bytes.map_or("?".to_owned(), |b| {
                format!("{:.2} MB", b as f64 / 1_048_576.0)
            }),
        );
        row(
            &mut t,
            "start → first state on the broker",
            lat(Stats::of(&self.start_to_state)),
        );
        row(
            &mut t,
            "start → state with a reading",
            lat(Stats::of(&self.start_to_reading)),
        );
        row(
            &mut t,
            "SIGTERM → exit",
            format!(
                "{} exit codes {:?}",
                lat(Stats::of(&self.shutdown)),
                self.shutdown_codes
            ),
        );
        t
    }
}

/// The table rows of one page-load set.
fn load_rows(t: &mut String, name: &str, load: &LoadFigures, lat: &dyn Fn(Stats) -> String) {
    let mut row = |what: &str, value: String| {
        let _ = writeln!(t, "{:<46} {value}", format!("{name}: {what}"));
    };
    if load.viewers > 0 {
        row(
            "/events streams (refused 503)",
            format!(
                "{} of {} ({}), {} events, largest gap at a viewer {:.0} ms",
                load.streams_opened,
                load.viewers,
                load.streams_refused_503,
                load.events,
                ms(load.largest_event_gap)
            ),
        );
        row(
            "reading → event at a viewer",
            lat(Stats::of(&load.event_delays)),
        );
        row(
            &format!("/status.json at {:.0}/s", load.status_rate()),
            lat(Stats::of(&load.status_latencies)),
        );
    }
    if load.idle_connections > 0 {
        row(
            "idle connections (closed by the bridge)",
            format!("{} ({})", load.idle_connections, load.idle_closed_by_bridge),
        );
        row(
            "fresh /status.json meanwhile",
            lat(Stats::of(&load.probe_latencies)),
        );
        row(
            "ops /healthz meanwhile",
            lat(Stats::of(&load.healthz_latencies)),
        );
    }
    let kb = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{:.1} MB", v as f64 / 1024.0));
    row(
        "errors; RSS max (VmHWM); load average",
        format!(
            "{}{}; {} ({}); {}",
            load.errors,
            if load.error_examples.is_empty() {
                String::new()
            } else {
                format!(" e.g. {:?}", load.error_examples)
            },
            kb(load.rss_max_kb),
            kb(load.rss_hwm_kb),
            load.loadavg_end.as_deref().unwrap_or("?")
        ),
    );
}
