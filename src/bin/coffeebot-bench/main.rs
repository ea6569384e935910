//! `coffeebot-bench`: the end-to-end benchmark of the bridge (issue 7).
//!
//! It runs the real parts on one host, with one monotonic clock: a mosquitto on a free
//! loopback port, the simulated controller on a real pseudo-terminal in this process, and the
//! release bridge (`coffeebot run`) as a separate process configured through environment
//! variables. Between the bridge and the simulator sits a *tap*: a second pseudo-terminal
//! whose master this process reads and writes as soon as the kernel says it can. It stamps
//! every line when it crosses (the bridge's write, the controller's reply) and forwards it
//! unchanged, so the bridge's share of a latency can be told from the controller's: the
//! simulated firmware only reads its UART in a 4 ms window every 20 ms, and the simulator polls
//! its pty every 2 ms, which is the device's time, not the bridge's.
//!
//! With `--device realfw` the controller is the real MrCoffeeBot firmware on its emulated board
//! (`../shared/realfw/run.sh LINK LOG`, built first with its `build.sh`; the folder is found
//! beside the repository or named by `COFFEEBOT_REALFW`) instead of the simulator. Its
//! side of each figure comes from the board's event log, read from its stderr as it is
//! written: `RELAY 1`/`RELAY 0` for command → relay, `RX` (`REALFW_TRACE=1`) for the feeds it
//! took in, `RELAY 0 … by=loop` while heating for a relay drop-out, `RX_DROP`/`RX_LOST` for
//! UART bytes lost. Its `t=` stamps are CLOCK_MONOTONIC seconds, the clock `Instant` reads.
//!
//! Measured: command latency (MQTT `heater/set` → the controller handles `B+1`/`B+0`),
//! telemetry latency (the controller writes a changed reading → a subscriber has it in
//! `state`), the watchdog feed cadence while brewing (alone, under a CPU hog on every core,
//! under a flood of 1,000 commands/s, under the public page's load — 500 `/events` viewers and
//! 2,000 `/status.json` requests a second — and with 1,000 idle connections on the public
//! port), and the footprint (RSS, CPU time idle and while
//! brewing, binary size, start to first state, shutdown). It prints a table and writes JSON to
//! `target/bench/`. No figure is judged here; `BENCHMARKS.md` compares them with the targets.
//!
//! Everything it waits for has a deadline, the whole run has one too, and every child process
//! (mosquitto, the bridge, the CPU hogs) is killed when its owner is dropped.

//!
//! The parts, one job per module (a binary with modules under `src/bin/coffeebot-bench/`
//! rather than `benches/` with `harness = false`: it is a program with options, run by
//! `scripts/bench.sh` from a release build, while a bench target would be built in the bench
//! profile and run by every `cargo bench`):
//!
//! | module | job |
//! | --- | --- |
//! | `main` | options, plan, the run in order, the output files |
//! | `broker` | the bench's mosquitto |
//! | `client` | MQTT clients that stamp what they receive |
//! | `tap` | the stamping pseudo-terminal between the bridge and the controller |
//! | `device`, `realfw` | the controller: the simulator, or the real firmware's board and its log |
//! | `process` | the bridge process, the CPU hogs |
//! | `sample` | `/metrics`, `/proc`, load average, machine, commit |
//! | `latency`, `cadence`, `viewers` | the experiments |
//! | `stats`, `report` | percentiles; the figures as a table and as JSON |
//! | `soak` | `--soak MINUTES`: random use and faults for a while, invariants and drift |

mod broker;
mod cadence;
mod client;
mod device;
mod latency;
mod listen;
mod process;
mod realfw;
mod report;
mod sample;
mod soak;
mod stats;
mod tap;
mod viewers;

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

use crate::broker::Broker;
use crate::cadence::{heating, Stress};
use crate::client::Client;
use crate::device::{Device, DeviceKind};
use crate::latency::{command_latency, telemetry_latency, Probes};
use crate::process::{hog, start_bridge, stop_bridge};
use crate::report::Figures;
use crate::sample::{loadavg, measure_cpu, proc_status_kb};
use crate::stats::Stats;
use crate::tap::Tap;

/// Topics of the product contract (SPEC §4) with the default base topic and device id: the
/// state document.
pub(crate) const STATE: &str = "coffeebot/coffeepot/state";
/// Events (SPEC §4).
pub(crate) const EVENT: &str = "coffeebot/coffeepot/event";
/// The heater command.
pub(crate) const HEATER_SET: &str = "coffeebot/coffeepot/heater/set";
/// The brew command.
pub(crate) const BREW_SET: &str = "coffeebot/coffeepot/brew/set";
/// The cups setting, the flood's target.
pub(crate) const CUPS_SET: &str = "coffeebot/coffeepot/cups/set";
/// The controller's heater timeout (SPEC §2), for the watchdog margin.
pub(crate) const CONTROLLER_CUTOFF_MS: f64 = 1000.0;
/// `serial.feed_interval_ms`, default (the bench runs the defaults).
pub(crate) const FEED_INTERVAL_MS: f64 = 250.0;
/// How near a reading must be to the plate temperature set (°C; steps are 10 °C): the real
/// firmware's plate keeps heating during the conversion that reports it.
pub(crate) const NEAR_C: f64 = 4.0;
/// Upper bound of any single wait; reached only when something is broken.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "End-to-end benchmark of the coffeebot bridge (see BENCHMARKS.md).")]
pub(crate) struct Args {
    /// A few samples and seconds per figure: proves the benchmark works, figures are noise.
    #[arg(long)]
    pub(crate) short: bool,
    /// The bridge binary (default: `coffeebot` next to this binary, i.e. the release build).
    #[arg(long)]
    pub(crate) bridge: Option<PathBuf>,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench")]
    pub(crate) out: PathBuf,
    /// Run mosquitto without `set_tcp_nodelay` (its default), to see what Nagle's algorithm
    /// on the broker's sockets costs.
    #[arg(long)]
    pub(crate) broker_nagle: bool,
    /// The controller: the simulator, or the real firmware on its emulated board
    /// (`../shared/realfw` beside the repository, or `COFFEEBOT_REALFW`).
    #[arg(long, value_enum, default_value = "sim")]
    pub(crate) device: DeviceKind,
    /// Instead of the benchmark: a soak of this many minutes (random brews, commands,
    /// controller faults, broker restarts) checking invariants, memory and file descriptors.
    #[arg(long, value_name = "MINUTES")]
    pub(crate) soak: Option<f64>,
    /// Only these feed-cadence scenarios (comma-separated), and no idle, command or telemetry
    /// figures: for comparing two bridges on one kind of load in minutes instead of the full
    /// run. Start-up and shutdown are still measured.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) scenarios: Vec<Stress>,
    /// Internal: spin one core for this many seconds (the CPU hog's child process).
    #[arg(long, hide = true)]
    pub(crate) hog: Option<u64>,
}

impl Args {
    /// The bridge binary to run: `--bridge`, or `coffeebot` next to this binary; it must exist.
    pub(crate) fn bridge_bin(&self) -> Result<PathBuf> {
        let bin = match &self.bridge {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .context("cannot find this binary")?
                .with_file_name("coffeebot"),
        };
        if !bin.is_file() {
            bail!(
                "no bridge binary at {} (build it: cargo build --release)",
                bin.display()
            );
        }
        Ok(bin)
    }
}

/// How much of everything a run measures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub(crate) starts: usize,
    pub(crate) idle: Duration,
    pub(crate) command_samples: usize,
    pub(crate) telemetry_samples: usize,
    pub(crate) heating: Duration,
    pub(crate) flood_per_s: u64,
    /// `/events` streams of the page-load experiment.
    pub(crate) viewers: usize,
    /// `/status.json` requests a second beside them.
    pub(crate) status_per_s: u64,
    /// Idle connections of the second page-load set.
    pub(crate) idle_connections: usize,
    pub(crate) limit: Duration,
}

impl Plan {
    pub(crate) fn new(short: bool, device: DeviceKind) -> Plan {
        if short {
            Plan {
                starts: 1,
                idle: Duration::from_secs(3),
                command_samples: 10,
                telemetry_samples: 10,
                heating: Duration::from_secs(3),
                flood_per_s: 1000,
                viewers: 20,
                status_per_s: 100,
                idle_connections: 50,
                limit: Duration::from_secs(120),
            }
        } else {
            Plan {
                starts: 5,
                idle: Duration::from_secs(60),
                command_samples: 200,
                // The real firmware reports a new plate temperature one conversion later
                // (up to ~1.5 s), so each of its samples takes about a second.
                telemetry_samples: match device {
                    DeviceKind::Sim => 200,
                    DeviceKind::Realfw => 100,
                },
                heating: Duration::from_secs(60),
                flood_per_s: 1000,
                viewers: 500,
                status_per_s: 2000,
                idle_connections: 1000,
                limit: Duration::from_secs(900),
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(secs) = args.hog {
        hog(Duration::from_secs(secs));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coffeebot-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = Plan::new(args.short, args.device);
    let result = runtime.block_on(async {
        if let Some(minutes) = args.soak {
            if !(minutes > 0.0 && minutes <= 24.0 * 60.0) || args.device != DeviceKind::Sim {
                return Err(anyhow!(
                    "--soak takes 0 < MINUTES ≤ 1440, with --device sim"
                ));
            }
            let limit = Duration::from_secs_f64(minutes * 60.0) + Duration::from_secs(600);
            return match tokio::time::timeout(limit, soak::run(&args, minutes)).await {
                Ok(result) => result,
                Err(_) => Err(anyhow!("the soak did not finish within {limit:?}")),
            };
        }
        match tokio::time::timeout(plan.limit, run(&args, plan)).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!(
                "the benchmark did not finish within {:?}",
                plan.limit
            )),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffeebot-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The whole run, in order: start-ups, idle, latencies, cadence, footprint, report.
pub(crate) async fn run(args: &Args, plan: Plan) -> Result<()> {
    let bridge_bin = args.bridge_bin()?;
    let work = std::env::temp_dir().join(format!("coffeebot-bench-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let _cleanup = RemoveDir(work.clone());
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    say(&format!(
        "coffeebot-bench ({} mode, {}): bridge {}",
        if args.short { "short" } else { "full" },
        args.device.key(),
        bridge_bin.display()
    ));
    let broker = Broker::start(&work, !args.broker_nagle).context("mosquitto")?;
    say(&format!("mosquitto on 127.0.0.1:{}", broker.port));
    let device = Device::start(args.device, &work, &args.out).await?;
    if let Device::Realfw(fw) = &device {
        say(&format!(
            "real firmware {} on {}",
            fw.firmware,
            fw.link.display()
        ));
    }
    let mut tap = Tap::start(device.path()).await.context("the serial tap")?;
    let mut client = Client::connect("bench-observer", broker.port).await?;
    client.subscribe(STATE).await?;
    client.subscribe(EVENT).await?;

    let mut figures = Figures {
        loadavg_start: loadavg(),
        realfw: args.device == DeviceKind::Realfw,
        ..Figures::default()
    };

    // 1. Start-up (and shutdown for all but the last start).
    // The simulator's files keep their names; the real firmware's carry its name.
    let suffix = match args.device {
        DeviceKind::Sim => String::new(),
        DeviceKind::Realfw => "-realfw".to_owned(),
    };
    let log_path = args.out.join(format!("bridge{suffix}.log"));
    let log = fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut bridge = None;
    for i in 0..plan.starts {
        let b = start_bridge(
            &bridge_bin,
            &log,
            &mut client,
            broker.port,
            &mut tap,
            &mut figures,
        )
        .await?;
        if i + 1 < plan.starts {
            stop_bridge(b, &mut figures).await?;
        } else {
            bridge = Some(b);
        }
    }
    let Some(mut bridge) = bridge else {
        bail!("no start planned");
    };
    say(&format!(
        "start to first state: {}",
        Stats::of(&figures.start_to_state).brief()
    ));

    // 2.–4. Idle footprint, command and telemetry latency (not with --scenarios).
    let only = !args.scenarios.is_empty();
    if !only {
        idle_and_latency(&mut client, &tap, &device, &mut bridge, plan, &mut figures).await?;
    }

    // 5. Feed cadence while brewing: alone, under a CPU hog, under a command flood, under the
    // public page's load (viewers, then idle connections); or the scenarios asked for.
    let all = [
        Stress::None,
        Stress::CpuHog,
        Stress::Flood,
        Stress::Viewers,
        Stress::IdleConnections,
    ];
    let scenarios = if only { &args.scenarios[..] } else { &all[..] };
    for &stress in scenarios {
        let run = heating(&mut client, &tap, &device, &bridge, &broker, stress, plan)
            .await
            .with_context(|| format!("feed cadence ({})", stress.name()))?;
        say(&format!(
            "feed cadence ({}): {}",
            stress.name(),
            run.brief()
        ));
        if let Some(load) = &run.load {
            say(&format!("page load ({}): {}", stress.name(), load.brief()));
        }
        if std::env::var_os("BENCH_DEBUG").is_some() {
            for line in &run.context {
                say(line);
            }
        }
        figures.cadence.push(run);
        bridge.check_alive()?;
    }

    // 6. Footprint at the end, and a clean shutdown.
    figures.rss_end_kb = proc_status_kb(bridge.pid, "VmRSS");
    figures.rss_peak_kb = proc_status_kb(bridge.pid, "VmHWM");
    figures.binary_bytes = fs::metadata(&bridge_bin).ok().map(|m| m.len());
    figures.loadavg_end = loadavg();
    stop_bridge(bridge, &mut figures).await?;
    figures.firmware_log = device.counters();
    client.disconnect().await;

    let report = figures.to_json(args, plan, &bridge_bin, &device);
    let table = figures.table();
    println!("\n{table}");
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let text = serde_json::to_string_pretty(&report)?;
    let names = [
        format!("bench{suffix}-{stamp}.json"),
        format!("latest{suffix}.json"),
    ];
    for name in &names {
        let path = args.out.join(name);
        fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    say(&format!(
        "wrote {} and {}",
        args.out.join(&names[0]).display(),
        args.out.join(&names[1]).display()
    ));
    drop(tap);
    drop(device);
    Ok(())
}

/// Steps 2–4 of the full run: the idle footprint, then command and telemetry latency.
async fn idle_and_latency(
    client: &mut Client,
    tap: &Tap,
    device: &Device,
    bridge: &mut process::Bridge,
    plan: Plan,
    figures: &mut Figures,
) -> Result<()> {
    // 2. Idle footprint.
    let idle = measure_cpu(&*bridge, plan.idle).await?;
    figures.idle_cpu = Some(idle);
    figures.rss_idle_kb = proc_status_kb(bridge.pid, "VmRSS");
    say(&format!("idle: {}", idle.brief()));

    // 3. Command latency.
    let mut probes = Probes {
        client,
        tap,
        device,
    };
    command_latency(&mut probes, plan.command_samples, figures).await?;
    bridge.check_alive()?;

    // 4. Telemetry latency.
    telemetry_latency(&mut probes, plan.telemetry_samples, figures).await?;
    bridge.check_alive()?;

    Ok(())
}

/// A progress line on stderr.
pub(crate) fn say(line: &str) {
    eprintln!("coffeebot-bench: {line}");
}

/// Removes a directory on drop.
pub(crate) struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
