//! `coffeebot-bench --soak MINUTES`: living with the bridge for a while (issue 17, point 5).
//!
//! The release bridge runs as one process against the simulated controller (on its own
//! pseudo-terminal, which the simulator can unplug and replug) and the bench's mosquitto, while
//! a driver does what a household and a bad day do, in random order: brews (some stopped
//! early), manual runs (some to the run-time limit), keep warm, valid and invalid commands, a
//! controller `RESET`, controller reboots (also in the middle of a reply), unplug and replug,
//! sensor errors, an overheated plate, a mute link, broker restarts on the same port while
//! heating. [`monitor`] checks the safety invariants on the controller's side the whole time.
//!
//! Sampled over time: the bridge's RSS, open file descriptors and threads (`/proc`), its
//! `/metrics` counters (no total ever goes back, every brew started has ended once idle, the
//! household `brews_total` follows the finished brews), the feed cadence at the controller, the
//! `command_rejected` events against the invalid commands sent, and WARN/ERROR lines of its log.
//! At the end the bridge is restarted once to check that the household counters survived.
//!
//! It prints the figures, writes them as JSON (`soak-<timestamp>.json`, `soak-latest.json`)
//! and fails when an invariant broke, RSS grew by more than 1 MB or file descriptors by any,
//! a feed was missed (a gap of two feed intervals, 500 ms; gaps over the 300 ms target are
//! counted and shown), or the bridge died or panicked. `RELIABILITY.md` has a 30-minute run.
//! It is not part of CI: it runs for minutes by design.

mod monitor;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use coffeebot::sim::{SimConfig, SimHandle, Simulator};
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::client::{Client, Seen};
use crate::listen::HeldPort;
use crate::process::{bridge_env, stop_bridge, Bridge};
use crate::report::Figures;
use crate::sample::{
    commit, feed_gap_histogram, loadavg, machine, metrics_text, proc_status_kb, Histogram,
};
use crate::stats::{ms, Stats};
use crate::{say, Args, RemoveDir, BREW_SET, CUPS_SET, EVENT, HEATER_SET, STATE, WAIT};

use self::monitor::{Findings, Monitor};

/// The keep-warm command.
const KEEP_WARM_SET: &str = "coffeebot/coffeepot/keep_warm/set";
/// The controller command (`RESET`).
const CONTROLLER_SET: &str = "coffeebot/coffeepot/controller/set";
/// `safety.max_heater_on_s` for the soak: short, so that manual runs reach it.
const MAX_ON_S: u64 = 25;
/// `safety.max_plate_c` (the default).
const MAX_PLATE_C: f64 = 110.0;
/// The feed target: 1.2 × `serial.feed_interval_ms` (BENCHMARKS.md).
const FEED_TARGET: Duration = Duration::from_millis(300);
/// A gap this long means a whole feed was missed: 2 × `serial.feed_interval_ms`.
const MISSED: Duration = Duration::from_millis(500);
/// RSS growth allowed over the run (issue 17: ≤ 1 MB).
const RSS_GROWTH_KB: i64 = 1024;
/// How often RSS, fds and threads are sampled between the actions.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The longest an action may take before it counts as stuck.
const ACTION_LIMIT: Duration = Duration::from_secs(120);

/// The bridge's settings for the soak: short programs, so that many run; counters saved often.
fn soak_env(state_dir: &Path) -> Vec<(String, String)> {
    [
        ("COFFEEBOT__BREW__SECONDS_PER_CUP", "2".to_owned()),
        ("COFFEEBOT__BREW__PREHEAT_C", "40".to_owned()),
        ("COFFEEBOT__KEEP_WARM__TARGET_C", "60".to_owned()),
        ("COFFEEBOT__KEEP_WARM__MAX_MINUTES", "0.2".to_owned()),
        ("COFFEEBOT__SAFETY__MAX_HEATER_ON_S", MAX_ON_S.to_string()),
        ("COFFEEBOT__SAFETY__MAX_PLATE_C", MAX_PLATE_C.to_string()),
        (
            "COFFEEBOT__COUNTERS__STATE_DIR",
            state_dir.to_string_lossy().into_owned(),
        ),
        ("COFFEEBOT__COUNTERS__SAVE_INTERVAL_S", "5".to_owned()),
        (
            "COFFEEBOT__MAINTENANCE__DESCALE_EVERY_BREWS",
            "10".to_owned(),
        ),
        (
            "COFFEEBOT__MQTT__CLIENT_ID",
            "coffeebot-soak-bridge".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What the driver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Brew,
    BrewStopped,
    Manual,
    ManualToLimit,
    KeepWarm,
    Commands,
    ControllerFault,
    BrokerRestart,
    Idle,
}

/// One round: every action at least once, the common ones more often; shuffled.
const ROUND: &[Action] = &[
    Action::Brew,
    Action::Brew,
    Action::Brew,
    Action::BrewStopped,
    Action::Manual,
    Action::Manual,
    Action::ManualToLimit,
    Action::KeepWarm,
    Action::Commands,
    Action::ControllerFault,
    Action::ControllerFault,
    Action::BrokerRestart,
    Action::Idle,
];

/// A controller fault injected while heating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Reboot,
    RebootMidReply,
    Unplug,
    SensorError,
    /// The plate jumps to boiling while heating: a dry boil if it keeps heating.
    Boiling,
    /// The reservoir empty and the plate past `safety.max_plate_c` (with water in it, the
    /// simulated plate stays at boiling).
    Overtemp,
    Mute,
}

const FAULTS: &[Fault] = &[
    Fault::Reboot,
    Fault::RebootMidReply,
    Fault::Unplug,
    Fault::SensorError,
    Fault::Boiling,
    Fault::Overtemp,
    Fault::Mute,
];

/// RSS, fds and threads of the bridge at one moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Seconds into the soak.
    t: f64,
    rss_kb: Option<u64>,
    fds: Option<u64>,
    threads: Option<u64>,
    /// Taken between actions with the bridge idle and connected (comparable moments).
    steady: bool,
}

/// Samples of the bridge process.
fn sample(pid: u32, started: Instant, steady: bool) -> Sample {
    Sample {
        t: started.elapsed().as_secs_f64(),
        rss_kb: proc_status_kb(pid, "VmRSS"),
        fds: fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()
            .map(|d| d.count() as u64),
        threads: proc_status_kb(pid, "Threads"),
        steady,
    }
}

/// The observer: one MQTT client on state and events that counts every event it sees,
/// replaced after each broker restart (its session went with the broker).
struct Observer {
    client: Client,
    events: BTreeMap<String, u64>,
    /// The reason of the latest `command_rejected`.
    last_rejected: Option<String>,
    state: Value,
}

impl Observer {
    async fn connect(port: u16) -> Result<Observer> {
        let mut client = Client::connect("coffeebot-soak-observer", port).await?;
        client.subscribe(STATE).await?;
        client.subscribe(EVENT).await?;
        Ok(Observer {
            client,
            events: BTreeMap::new(),
            last_rejected: None,
            state: Value::Null,
        })
    }

    /// Events of `kind` seen so far.
    fn count(&self, kind: &str) -> u64 {
        self.events.get(kind).copied().unwrap_or(0)
    }

    /// Takes in one message: counts an event, keeps a state.
    fn note(&mut self, seen: Seen) -> Option<Instant> {
        let Seen::Message { at, topic, payload } = seen else {
            return None;
        };
        let doc: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        if topic == EVENT {
            if let Some(kind) = doc["event_type"].as_str() {
                *self.events.entry(kind.to_owned()).or_default() += 1;
                if kind == "command_rejected" {
                    self.last_rejected = doc["reason"].as_str().map(str::to_owned);
                }
            }
            None
        } else if topic == STATE && doc.is_object() {
            self.state = doc;
            Some(at)
        } else {
            None
        }
    }

    /// Waits (≤ `within`) until a state received from now on satisfies `want`, or the current
    /// one already does when `now_ok`; returns when it was received.
    async fn until(
        &mut self,
        within: Duration,
        what: &str,
        now_ok: bool,
        mut want: impl FnMut(&Value) -> bool,
    ) -> Result<Instant> {
        if now_ok && want(&self.state) {
            return Ok(Instant::now());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = tokio::time::timeout_at(deadline, self.client.seen.recv())
                .await
                .map_err(|_| anyhow!("no state with {what} within {within:?}"))?
                .ok_or_else(|| anyhow!("the observer's MQTT client stopped"))?;
            if let Some(at) = self.note(seen) {
                if want(&self.state) {
                    return Ok(at);
                }
            }
        }
    }

    /// Waits (≤ `within`) until `kind` has been seen more than `before` times.
    async fn event(&mut self, kind: &str, before: u64, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while self.count(kind) <= before {
            let seen = tokio::time::timeout_at(deadline, self.client.seen.recv())
                .await
                .map_err(|_| anyhow!("no {kind} event within {within:?}"))?
                .ok_or_else(|| anyhow!("the observer's MQTT client stopped"))?;
            self.note(seen);
        }
        Ok(())
    }

    /// Takes in whatever arrived, without waiting.
    fn take_in(&mut self) {
        while let Ok(seen) = self.client.seen.try_recv() {
            self.note(seen);
        }
    }

    async fn publish(&self, topic: &str, payload: &str) -> Result<()> {
        self.client.publish(topic, payload).await
    }
}

/// `mode` is `off` and the heater is not on.
fn idle(doc: &Value) -> bool {
    doc["mode"] == "off" && doc["heater"] != "ON"
}

/// Idle with the controller answering, a reading below boiling and no interlock holding but
/// the latched ones (which the next start command clears): a start would be accepted. Waiting
/// for it after the plant was restored keeps the driver from racing the bridge's next reading.
fn ready(doc: &Value) -> bool {
    let latched = |f: &Value| f == "overtemp" || f == "dry_boil";
    idle(doc)
        && doc["link"] == "up"
        && doc["temperature_c"].as_f64().is_some_and(|c| c < 100.0)
        && doc["faults"]
            .as_array()
            .is_some_and(|faults| faults.iter().all(latched))
}

/// The `/metrics` samples of the bridge: `name{labels}` → value.
fn scrape(http_port: u16) -> Option<BTreeMap<String, f64>> {
    let text = metrics_text(http_port)?;
    let body = text.split_once("\r\n\r\n").map_or(text.as_str(), |x| x.1);
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// The sum of a metric over its labels.
fn total(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| *k == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .map(|(_, v)| v)
        .sum()
}

/// The household counters, which must survive restarts and never go back.
const HOUSEHOLD: &[&str] = &[
    "coffeebot_cups_brewed_total",
    "coffeebot_brews_total",
    "coffeebot_heater_on_seconds_total",
    "coffeebot_energy_kwh_total",
];

/// The bridge as the soak runs it: the process, its log, where it keeps its counters.
struct Run {
    bin: PathBuf,
    log: fs::File,
    link: PathBuf,
    mqtt_port: u16,
    state_dir: PathBuf,
}

impl Run {
    /// Starts the bridge and waits until it is idle with the controller answering.
    async fn start(&self, observer: &mut Observer) -> Result<Bridge> {
        let ports = [HeldPort::new()?, HeldPort::new()?];
        let env: Vec<_> = bridge_env(&self.link, self.mqtt_port, ports[0].port(), ports[1].port())
            .into_iter()
            .chain(soak_env(&self.state_dir))
            .collect();
        let mut bridge = Bridge::spawn(&self.bin, &env, &self.log, ports)?;
        if let Err(e) = observer.until(WAIT, "the bridge ready", false, ready).await {
            bridge.check_alive()?;
            return Err(e);
        }
        Ok(bridge)
    }
}

/// Everything the driver counted.
#[derive(Default)]
struct Tally {
    actions: BTreeMap<String, u64>,
    /// When each action started (soak time, s), to place a late feed or a violation.
    timeline: Vec<(f64, String)>,
    /// The bridge's own feed-gap histogram (`/metrics`) at start and before the restart.
    gaps_first: Option<Histogram>,
    gaps_last: Option<Histogram>,
    faults: BTreeMap<String, u64>,
    invalid_commands_sent: u64,
    broker_restarts: u64,
    /// From the broker's restart to the bridge's state seen again, per restart.
    broker_back: Vec<Duration>,
    bridge_restarts: u64,
    /// Household counters before and after the bridge restart.
    counters_before_restart: BTreeMap<String, f64>,
    counters_after_restart: BTreeMap<String, f64>,
    /// `/metrics` at the first and last steady moment of the first bridge process.
    metrics_first: BTreeMap<String, f64>,
    metrics_last: BTreeMap<String, f64>,
}

/// The soak: `minutes` of random use and trouble, then the figures.
pub(crate) async fn run(args: &Args, minutes: f64) -> Result<()> {
    let bin = args.bridge_bin()?;
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let work = std::env::temp_dir().join(format!("coffeebot-soak-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let _cleanup = RemoveDir(work.clone());
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let state_dir = work.join("state");
    fs::create_dir_all(&state_dir)?;
    let log_path = args.out.join("soak-bridge.log");
    let log = fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    say(&format!(
        "soak for {minutes} min (seed {seed}, SOAK_SEED to repeat; nice {}): bridge {}",
        nice().map_or("?".to_owned(), |n| n.to_string()),
        bin.display()
    ));

    let mut broker = Broker::start(&work, true).context("mosquitto")?;
    let sim = Simulator::start(SimConfig::default(), work.join("sim-tty"))
        .await
        .context("cannot start the simulated controller")?;
    let run = Run {
        bin: bin.clone(),
        log,
        link: sim.path().to_owned(),
        mqtt_port: broker.port,
        state_dir,
    };
    let mut observer = Observer::connect(broker.port).await?;
    let loadavg_start = loadavg();
    let started = Instant::now();
    let monitor = Monitor::start(&sim, started, MAX_PLATE_C, Duration::from_secs(MAX_ON_S));
    let mut bridge = run.start(&mut observer).await?;
    let mut tally = Tally {
        metrics_first: scrape(bridge.http_port).unwrap_or_default(),
        // Before the first feed the histogram has no buckets yet: counted from zero.
        gaps_first: feed_gap_histogram(bridge.http_port).filter(|h| !h.buckets.is_empty()),
        ..Tally::default()
    };
    let boots_at_start = sim.snapshot().await?.device.boots;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let samples = samples.clone();
        let pid = bridge.pid;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let s = sample(pid, started, false);
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            }
        })
    };

    let mut household_last: BTreeMap<String, f64> = BTreeMap::new();
    let mut queue: Vec<Action> = Vec::new();
    let mut faults: Vec<Fault> = Vec::new();
    let mut next_report = started + Duration::from_secs(60);
    let mut driver_errors: Vec<String> = Vec::new();
    let end = started + duration;
    while Instant::now() < end {
        if queue.is_empty() {
            queue = ROUND.to_vec();
            rng.shuffle(&mut queue);
        }
        let action = queue.pop().unwrap_or(Action::Idle);
        *tally.actions.entry(format!("{action:?}")).or_default() += 1;
        tally
            .timeline
            .push((started.elapsed().as_secs_f64(), format!("{action:?}")));
        let outcome = tokio::time::timeout(
            ACTION_LIMIT,
            act(
                action,
                &mut rng,
                &sim,
                &monitor,
                &mut observer,
                &mut broker,
                &mut faults,
                &mut tally,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow!("did not finish within {ACTION_LIMIT:?}")));
        bridge.check_alive()?;
        if let Err(e) = outcome {
            let line = format!("{action:?}: {e:#}");
            say(&format!("action failed: {line}"));
            monitor.violation(format!("action {line}"));
            driver_errors.push(line);
            // Back to a known state: the plant cool and sane, the controller plugged in, a
            // fresh observer; then idle.
            let _ = restore_plant(&sim).await;
            if let Ok(mut fresh) = Observer::connect(broker.port).await {
                fresh.events = std::mem::take(&mut observer.events);
                let old = std::mem::replace(&mut observer, fresh);
                old.client.task.abort();
            }
            let _ = observer.publish(HEATER_SET, "OFF").await;
            observer
                .until(
                    Duration::from_secs(30),
                    "idle after a failed action",
                    false,
                    ready,
                )
                .await
                .context("the bridge did not come back after a failed action")?;
            monitor.deny(Instant::now(), "recovered");
        }
        // A comparable moment: idle, connected, answered.
        observer.take_in();
        samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample(bridge.pid, started, true));
        if let Some(m) = scrape(bridge.http_port) {
            check_counters(&m, &mut household_last, &monitor);
            tally.metrics_last = m;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(60);
            let s = sample(bridge.pid, started, false);
            say(&format!(
                "{:5.1} min: {} actions, {} violations, RSS {} kB, {} fds, load {}",
                started.elapsed().as_secs_f64() / 60.0,
                tally.actions.values().sum::<u64>(),
                monitor.violations(),
                s.rss_kb.unwrap_or(0),
                s.fds.unwrap_or(0),
                loadavg().unwrap_or_default()
            ));
        }
    }
    sampler.abort();
    let rss_peak_kb = proc_status_kb(bridge.pid, "VmHWM");
    let soaked = started.elapsed();

    // The household counters across a restart: saved at SIGTERM, read back at start.
    observer
        .until(WAIT, "idle before the restart", true, ready)
        .await?;
    let before = scrape(bridge.http_port).unwrap_or_default();
    tally.gaps_last = feed_gap_histogram(bridge.http_port);
    let mut stopped = Figures::default();
    stop_bridge(bridge, &mut stopped).await?;
    if stopped.shutdown_codes != [0] {
        monitor.violation(format!(
            "the bridge exited with {:?} at SIGTERM",
            stopped.shutdown_codes
        ));
    }
    observer.take_in();
    let bridge = run.start(&mut observer).await?;
    tally.bridge_restarts += 1;
    let after = scrape(bridge.http_port).unwrap_or_default();
    for name in HOUSEHOLD {
        let (b, a) = (total(&before, name), total(&after, name));
        tally.counters_before_restart.insert((*name).to_owned(), b);
        tally.counters_after_restart.insert((*name).to_owned(), a);
        // The published totals are rounded down; what was saved must come back, not less.
        if a + 1e-6 < b {
            monitor.violation(format!("{name} went from {b} to {a} across a restart"));
        }
    }
    let mut stopped = Figures::default();
    stop_bridge(bridge, &mut stopped).await?;
    let loadavg_end = loadavg();
    let boots = sim.snapshot().await?.device.boots - boots_at_start;
    let findings = monitor.finish();
    observer.take_in();
    let log_text = fs::read_to_string(&log_path).unwrap_or_default();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));

    let report = Report {
        minutes,
        soaked,
        seed,
        findings,
        samples,
        rss_peak_kb,
        tally,
        events: observer.events.clone(),
        controller_boots: boots,
        warn_lines: log_text.lines().filter(|l| l.contains(" WARN ")).count(),
        error_lines: log_text.lines().filter(|l| l.contains(" ERROR ")).count(),
        panics: log_text.lines().filter(|l| l.contains("panicked")).count(),
        loadavg_start,
        loadavg_end,
        driver_errors,
    };
    let verdict = report.verdict();
    println!("\n{}", report.table(&verdict));
    let json = report.to_json(&verdict, &bin);
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let text = serde_json::to_string_pretty(&json)?;
    for name in [format!("soak-{stamp}.json"), "soak-latest.json".to_owned()] {
        let path = args.out.join(&name);
        fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    say(&format!(
        "wrote {} (bridge log {})",
        args.out.join("soak-latest.json").display(),
        log_path.display()
    ));
    observer.client.disconnect().await;
    let _ = sim.shutdown().await;
    drop(broker);
    if verdict.is_empty() {
        Ok(())
    } else {
        bail!("the soak FAILED: {}", verdict.join("; "))
    }
}

/// No total of `/metrics` goes back; once idle, every brew started has ended; the household
/// `brews_total` grew by the brews that finished.
fn check_counters(m: &BTreeMap<String, f64>, last: &mut BTreeMap<String, f64>, monitor: &Monitor) {
    for (name, value) in m {
        let base = name.split('{').next().unwrap_or(name);
        if !base.ends_with("_total") && !base.ends_with("_count") {
            continue;
        }
        if let Some(before) = last.get(name) {
            if value + 1e-9 < *before {
                monitor.violation(format!("{name} went back from {before} to {value}"));
            }
        }
        last.insert(name.clone(), *value);
    }
    let started = total(m, "coffeebot_brews_started_total");
    let ended = total(m, "coffeebot_brews_ended_total");
    if (started - ended).abs() > 0.5 {
        monitor.violation(format!(
            "idle, but {started} brews started and {ended} ended"
        ));
    }
}

/// The plant back to a sane, idle state: plugged in, answering, cool, a full reservoir.
async fn restore_plant(sim: &SimHandle) -> Result<()> {
    let snap = sim.snapshot().await?;
    if !snap.plugged {
        sim.replug().await?;
    }
    if snap.device.crc_error {
        sim.crc_error(false).await?;
    }
    if snap.device.muted {
        sim.mute(false).await?;
    }
    sim.set_water_distance(2.0).await?;
    sim.set_temperature(30.0).await?;
    Ok(())
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the parts of the soak"
)]
/// Runs one action to its end, the bridge idle again.
async fn act(
    action: Action,
    rng: &mut fastrand::Rng,
    sim: &SimHandle,
    monitor: &Monitor,
    observer: &mut Observer,
    broker: &mut Broker,
    faults: &mut Vec<Fault>,
    tally: &mut Tally,
) -> Result<()> {
    // Each use starts with a pot somewhere between cold and warm and a full reservoir.
    sim.set_water_distance(2.0).await?;
    let plate = if action == Action::ManualToLimit {
        22.0
    } else {
        rng.f64().mul_add(16.0, 24.0)
    };
    sim.set_temperature(plate).await?;
    observer
        .until(WAIT, "idle before the next action", true, ready)
        .await?;
    let long = Duration::from_secs(MAX_ON_S + 30);
    match action {
        Action::Brew => {
            start(monitor, observer, BREW_SET, &rng.u32(1..=3).to_string()).await?;
            finish(monitor, observer, long).await?;
        }
        Action::BrewStopped => {
            let run = Duration::from_millis(rng.u64(500..6000));
            start_and_stop(monitor, observer, BREW_SET, ("{\"cups\": 3}", "STOP"), run).await?;
        }
        Action::Manual => {
            let run = Duration::from_millis(rng.u64(500..8000));
            start_and_stop(monitor, observer, HEATER_SET, ("ON", "OFF"), run).await?;
        }
        Action::ManualToLimit => {
            let before = observer.count("heater_auto_off");
            start(monitor, observer, HEATER_SET, "ON").await?;
            finish(monitor, observer, long).await?;
            observer
                .event("heater_auto_off", before, WAIT)
                .await
                .context("a manual run reached the limit")?;
        }
        Action::KeepWarm => {
            let run = Duration::from_millis(rng.u64(500..8000));
            start_and_stop(monitor, observer, KEEP_WARM_SET, ("ON", "OFF"), run).await?;
        }
        Action::Commands => {
            let invalid: [(&str, &str); 6] = [
                (CUPS_SET, "0"),
                (CUPS_SET, "99"),
                (CUPS_SET, "two"),
                (BREW_SET, "{\"cups\": "),
                (HEATER_SET, "MAYBE"),
                (KEEP_WARM_SET, ""),
            ];
            let before = observer.count("command_rejected");
            let cups = rng.u64(1..=12);
            observer.publish(CUPS_SET, &cups.to_string()).await?;
            let mut sent = 0;
            for (topic, payload) in invalid {
                if rng.bool() {
                    observer.publish(topic, payload).await?;
                    sent += 1;
                }
            }
            if rng.u8(..4) == 0 {
                observer.publish(CONTROLLER_SET, "RESET").await?;
            }
            tally.invalid_commands_sent += sent;
            if sent > 0 {
                observer
                    .event("command_rejected", before + sent - 1, WAIT)
                    .await
                    .with_context(|| format!("{sent} invalid commands sent"))?;
            }
            observer
                .until(WAIT, "the cups selected", true, |d| d["cups"] == cups)
                .await?;
        }
        Action::ControllerFault => {
            if faults.is_empty() {
                *faults = FAULTS.to_vec();
                rng.shuffle(faults);
            }
            let fault = faults.pop().unwrap_or(Fault::Reboot);
            *tally.faults.entry(format!("{fault:?}")).or_default() += 1;
            if rng.bool() {
                start(monitor, observer, HEATER_SET, "ON").await?;
            } else {
                start(monitor, observer, BREW_SET, "2").await?;
            }
            observer
                .until(WAIT, "the heater on", true, |d| d["heater"] == "ON")
                .await?;
            tokio::time::sleep(Duration::from_millis(rng.u64(100..3000))).await;
            monitor.disturbed();
            match fault {
                Fault::Reboot => sim.reboot(false).await?,
                Fault::RebootMidReply => sim.reboot(true).await?,
                Fault::Unplug => sim.unplug().await?,
                Fault::SensorError => sim.crc_error(true).await?,
                Fault::Boiling => sim.set_temperature(100.0).await?,
                Fault::Overtemp => {
                    sim.set_water_distance(SimConfig::default().empty_distance_in)
                        .await?;
                    sim.set_temperature(MAX_PLATE_C + 5.0).await?;
                }
                Fault::Mute => sim.mute(true).await?,
            }
            // A plate at boiling is a dry boil only while it keeps rising (SPEC §3: over 5 s
            // above 90 °C); a program that is past its heating ends by itself.
            let within = if fault == Fault::Boiling {
                long
            } else {
                Duration::from_secs(15)
            };
            let ended = observer
                .until(within, "the program ended by the fault", true, |d| {
                    d["mode"] == "off"
                })
                .await?;
            monitor.deny(ended, "program ended by a fault");
            if fault == Fault::Unplug {
                tokio::time::sleep(Duration::from_millis(rng.u64(200..3000))).await;
            }
            monitor.disturbed();
            restore_plant(sim).await?;
            observer
                .until(Duration::from_secs(30), "the controller back", true, ready)
                .await?;
        }
        Action::BrokerRestart => {
            let heating = rng.u8(..4) != 0;
            if heating {
                start(monitor, observer, HEATER_SET, "ON").await?;
                observer
                    .until(WAIT, "the heater on", true, |d| d["heater"] == "ON")
                    .await?;
            }
            broker.restart()?;
            let t0 = Instant::now();
            tally.broker_restarts += 1;
            let mut fresh = Observer::connect(broker.port).await?;
            fresh.events = std::mem::take(&mut observer.events);
            let old = std::mem::replace(observer, fresh);
            old.client.task.abort();
            // The bridge re-publishes its state when it is back (the broker lost it).
            let heater = if heating { "ON" } else { "OFF" };
            observer
                .until(Duration::from_secs(15), "the bridge back", false, |d| {
                    d["heater"] == heater && d["link"] == "up"
                })
                .await?;
            tally.broker_back.push(t0.elapsed());
            if heating {
                observer.publish(HEATER_SET, "OFF").await?;
                finish(monitor, observer, WAIT).await?;
            }
        }
        Action::Idle => {
            tokio::time::sleep(Duration::from_millis(rng.u64(2000..10000))).await;
        }
    }
    Ok(())
}

/// Allows heating and sends a start command; returns once the bridge shows a program.
async fn start(
    monitor: &Monitor,
    observer: &mut Observer,
    topic: &str,
    payload: &str,
) -> Result<()> {
    monitor.allow();
    let rejected = observer.count("command_rejected");
    observer.publish(topic, payload).await?;
    let what = format!("a program after {payload} on {topic}");
    let outcome = observer
        .until(WAIT, &what, false, |d| d["mode"] != "off")
        .await;
    match outcome {
        Ok(_) => Ok(()),
        Err(_) if observer.count("command_rejected") > rejected => bail!(
            "{payload} on {topic} was refused: {}",
            observer.last_rejected.as_deref().unwrap_or("?")
        ),
        Err(e) => Err(e),
    }
}

/// [`start`]s a program with the first payload on `topic`, stops it with the second after
/// `run` and waits for it to end.
async fn start_and_stop(
    monitor: &Monitor,
    observer: &mut Observer,
    topic: &str,
    (on, off): (&str, &str),
    run: Duration,
) -> Result<()> {
    start(monitor, observer, topic, on).await?;
    // Workload: a program stopped some time into it.
    tokio::time::sleep(run).await;
    observer.publish(topic, off).await?;
    finish(monitor, observer, WAIT).await
}

/// Waits (≤ `within`) for the program to end; heating is no longer allowed from then on.
async fn finish(monitor: &Monitor, observer: &mut Observer, within: Duration) -> Result<()> {
    let at = observer
        .until(within, "the program ended", true, idle)
        .await?;
    monitor.deny(at, "program over");
    Ok(())
}

/// This process's nice value (`/proc/self/stat`, field 19).
fn nice() -> Option<i64> {
    let text = fs::read_to_string("/proc/self/stat").ok()?;
    let rest = text.rsplit_once(')')?.1;
    rest.split_whitespace().nth(16)?.parse().ok()
}

/// The soak's figures.
struct Report {
    minutes: f64,
    soaked: Duration,
    seed: u64,
    findings: Findings,
    samples: Vec<Sample>,
    rss_peak_kb: Option<u64>,
    tally: Tally,
    events: BTreeMap<String, u64>,
    controller_boots: u64,
    warn_lines: usize,
    error_lines: usize,
    panics: usize,
    loadavg_start: Option<String>,
    loadavg_end: Option<String>,
    driver_errors: Vec<String>,
}

/// Growth of a sampled quantity over the steady samples after a warm-up (the first tenth of
/// the run): the median of the last third of them minus the median of the first third.
fn growth(
    samples: &[Sample],
    soaked: f64,
    f: impl Fn(&Sample) -> Option<u64>,
) -> Option<(u64, u64)> {
    let warm = soaked / 10.0;
    let steady: Vec<u64> = samples
        .iter()
        .filter(|s| s.steady && s.t >= warm)
        .filter_map(f)
        .collect();
    let third = (steady.len() / 3).max(1);
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    Some((
        median(steady.get(..third)?)?,
        median(steady.get(steady.len().checked_sub(third)?..)?)?,
    ))
}

impl Report {
    fn gaps(&self) -> (Stats, usize, usize) {
        let gaps = &self.findings.feed_gaps;
        (
            Stats::of(gaps),
            gaps.iter().filter(|g| **g > FEED_TARGET).count(),
            gaps.iter().filter(|g| **g >= MISSED).count(),
        )
    }

    fn rss(&self) -> Option<(u64, u64)> {
        growth(&self.samples, self.soaked.as_secs_f64(), |s| s.rss_kb)
    }

    fn fds(&self) -> Option<(u64, u64)> {
        growth(&self.samples, self.soaked.as_secs_f64(), |s| s.fds)
    }

    /// The household heater seconds the bridge counted up to the restart.
    fn bridge_heater_s(&self) -> f64 {
        total(
            &self.tally.metrics_last,
            "coffeebot_heater_on_seconds_total",
        ) - total(
            &self.tally.metrics_first,
            "coffeebot_heater_on_seconds_total",
        )
    }

    /// The bridge's own count of feed gaps (as written) and of those over 300 and 500 ms.
    fn bridge_gaps(&self) -> Option<(u64, u64, u64)> {
        let last = self.tally.gaps_last.as_ref()?;
        let first = self.tally.gaps_first.as_ref();
        Some((
            last.count_since(first),
            last.above_since(first, "0.3")?,
            last.above_since(first, "0.5")?,
        ))
    }

    /// Why the soak failed; empty when it passed.
    fn verdict(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.findings.violations.is_empty() {
            why.push(format!(
                "{} invariant violations",
                self.findings.violations.len()
            ));
        }
        match self.rss() {
            Some((a, b)) if b as i64 - a as i64 > RSS_GROWTH_KB => {
                why.push(format!("RSS grew {a} → {b} kB"));
            }
            None => why.push("no RSS samples".to_owned()),
            _ => {}
        }
        match self.fds() {
            Some((a, b)) if b > a => why.push(format!("file descriptors grew {a} → {b}")),
            None => why.push("no fd samples".to_owned()),
            _ => {}
        }
        let (stats, _, missed) = self.gaps();
        if missed > 0 {
            why.push(format!(
                "{missed} feed gaps of {} ms or more (a feed missed)",
                MISSED.as_millis()
            ));
        }
        if stats.n == 0 {
            why.push("no feed gaps measured".to_owned());
        }
        if self.panics > 0 {
            why.push(format!("{} panics in the bridge log", self.panics));
        }
        why
    }

    fn table(&self, verdict: &[String]) -> String {
        let f = &self.findings;
        let (gaps, over, cut) = self.gaps();
        let mut t = String::new();
        let rss = self.rss();
        let fds = self.fds();
        let steady: Vec<&Sample> = self.samples.iter().filter(|s| s.steady).collect();
        let all_rss: Vec<u64> = self.samples.iter().filter_map(|s| s.rss_kb).collect();
        let all_fds: Vec<u64> = self.samples.iter().filter_map(|s| s.fds).collect();
        let threads: Vec<u64> = self.samples.iter().filter_map(|s| s.threads).collect();
        let range = |v: &[u64]| {
            format!(
                "{}–{}",
                v.iter().min().copied().unwrap_or(0),
                v.iter().max().copied().unwrap_or(0)
            )
        };
        let _ = writeln!(
            t,
            "soak: {:.1} min of {} planned (seed {}), load {} → {}",
            self.soaked.as_secs_f64() / 60.0,
            self.minutes,
            self.seed,
            self.loadavg_start.as_deref().unwrap_or("?"),
            self.loadavg_end.as_deref().unwrap_or("?")
        );
        let _ = writeln!(t, "actions: {:?}", self.tally.actions);
        let _ = writeln!(
            t,
            "controller faults: {:?}; broker restarts: {} (bridge state back in {}); bridge \
             restarts: {}",
            self.tally.faults,
            self.tally.broker_restarts,
            Stats::of(&self.tally.broker_back).brief(),
            self.tally.bridge_restarts
        );
        let _ = writeln!(
            t,
            "controller: {} feeds, {} B+0, {} polls, {} RESET handled; {} boots; {} interlock \
             conditions seen",
            f.feeds, f.offs, f.polls, f.resets, self.controller_boots, f.trips_seen
        );
        let _ = writeln!(t, "invariant violations: {} (goal 0)", f.violations.len());
        for v in &f.violations {
            let _ = writeln!(t, "  {v}");
        }
        let _ = writeln!(
            t,
            "feed gaps at the controller: {}; over {} ms (target): {over}; {} ms or more (a feed \
             missed; goal 0): {cut}; set aside (fault injected): {}",
            gaps.brief(),
            FEED_TARGET.as_millis(),
            MISSED.as_millis(),
            f.gaps_set_aside
        );
        let _ = writeln!(
            t,
            "  the bridge's own count (coffeebot_feed_gap_seconds, as written): {}",
            self.bridge_gaps()
                .map_or("?".to_owned(), |(n, over, missed)| format!(
                    "{n} gaps, {over} over 300 ms, {missed} over 500 ms"
                ))
        );
        for (at, gap) in f.late_gaps.iter().filter(|(_, g)| *g >= ms(MISSED)) {
            let doing = self
                .tally
                .timeline
                .iter()
                .rev()
                .find(|(t, _)| t <= at)
                .map_or("?", |(_, a)| a.as_str());
            let _ = writeln!(
                t,
                "  missed feed: {gap:.0} ms gap ending at {at:.1} s ({doing})"
            );
        }
        let _ = writeln!(
            t,
            "relay: on {:.1} s in all (simulated relay), longest run {:.1} s (limit {} s); the \
             bridge counted {:.0} s (coffeebot_heater_on_seconds_total, before the restart)",
            f.relay_on_total.as_secs_f64(),
            f.longest_on.as_secs_f64(),
            MAX_ON_S,
            self.bridge_heater_s()
        );
        let _ = writeln!(
            t,
            "RSS: {} kB (steady, first third → last third; goal ≤ +1024), all samples {} kB, \
             VmHWM {} kB",
            rss.map_or("?".to_owned(), |(a, b)| format!(
                "{a} → {b} ({:+})",
                b as i64 - a as i64
            )),
            range(&all_rss),
            self.rss_peak_kb.unwrap_or(0)
        );
        let _ = writeln!(
            t,
            "fds: {} (steady, goal +0), all samples {}; threads {}; {} steady / {} samples",
            fds.map_or("?".to_owned(), |(a, b)| format!(
                "{a} → {b} ({:+})",
                b as i64 - a as i64
            )),
            range(&all_fds),
            range(&threads),
            steady.len(),
            self.samples.len()
        );
        let _ = writeln!(
            t,
            "household counters across the restart: {:?} → {:?}",
            self.tally.counters_before_restart, self.tally.counters_after_restart
        );
        let _ = writeln!(
            t,
            "events seen: {:?}; invalid commands sent: {}",
            self.events, self.tally.invalid_commands_sent
        );
        let _ = writeln!(
            t,
            "bridge log: {} WARN, {} ERROR, {} panics",
            self.warn_lines, self.error_lines, self.panics
        );
        let _ = writeln!(
            t,
            "verdict: {}",
            if verdict.is_empty() {
                "PASS".to_owned()
            } else {
                format!("FAIL — {}", verdict.join("; "))
            }
        );
        t
    }

    fn to_json(&self, verdict: &[String], bin: &Path) -> Value {
        let f = &self.findings;
        let (gaps, over, cut) = self.gaps();
        let pair = |x: Option<(u64, u64)>| {
            x.map(
                |(a, b)| json!({"first_third": a, "last_third": b, "growth": b as i64 - a as i64}),
            )
        };
        json!({
            "planned_minutes": self.minutes,
            "soaked_s": self.soaked.as_secs_f64(),
            "seed": self.seed,
            "bridge": bin.display().to_string(),
            "nice": nice(),
            "machine": machine(),
            "commit": commit(),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": self.loadavg_end,
            "actions": self.tally.actions,
            "timeline": self.tally.timeline,
            "controller_faults": self.tally.faults,
            "broker_restarts": self.tally.broker_restarts,
            "broker_back": Stats::of(&self.tally.broker_back),
            "bridge_restarts": self.tally.bridge_restarts,
            "violations": f.violations,
            "feeds_while_denied": f.feeds_while_denied,
            "driver_errors": self.driver_errors,
            "controller": {
                "feeds": f.feeds, "offs": f.offs, "polls": f.polls, "resets": f.resets,
                "boots": self.controller_boots, "interlock_conditions": f.trips_seen,
            },
            "feed_gaps": {
                "stats": gaps,
                "over_target": over,
                "target_ms": ms(FEED_TARGET),
                "missed_feed_ms": ms(MISSED),
                "missed_feeds": cut,
                "set_aside": f.gaps_set_aside,
                "over_target_at": f.late_gaps,
                "bridge_histogram": self.bridge_gaps().map(|(n, over, missed)| json!({
                    "gaps": n, "over_300_ms": over, "over_500_ms": missed,
                })),
            },
            "relay_on_s": f.relay_on_total.as_secs_f64(),
            "longest_on_s": f.longest_on.as_secs_f64(),
            "bridge_heater_on_s": self.bridge_heater_s(),
            "rss_kb": pair(self.rss()),
            "rss_peak_kb": self.rss_peak_kb,
            "fds": pair(self.fds()),
            "samples": self.samples.iter().map(|s| json!({
                "t": s.t, "rss_kb": s.rss_kb, "fds": s.fds, "threads": s.threads, "steady": s.steady,
            })).collect::<Vec<_>>(),
            "household_before_restart": self.tally.counters_before_restart,
            "household_after_restart": self.tally.counters_after_restart,
            "events": self.events,
            "invalid_commands_sent": self.tally.invalid_commands_sent,
            "log": {"warn": self.warn_lines, "error": self.error_lines, "panics": self.panics},
            "verdict": if verdict.is_empty() { json!("pass") } else { json!(verdict) },
        })
    }
}
