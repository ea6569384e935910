//! `coffeebot-bench`: the end-to-end benchmark of the bridge (issue 7).
//!
//! It runs the real parts on one host, with one monotonic clock: a mosquitto on a free
//! loopback port, the simulated controller on a real pseudo-terminal in this process, and the
//! release bridge (`coffeebot run`) as a separate process configured through environment
//! variables. Between the bridge and the simulator sits a *tap*: a second pseudo-terminal
//! whose master this process reads and writes as soon as the kernel says it can. It stamps
//! every line when it crosses (the bridge's write, the controller's reply) and forwards it
//! unchanged, so the bridge's share of a latency can be told from the controller's: the
//! simulated firmware only reads its UART in a ~4 ms window every ~21 ms, and the simulator polls
//! its pty every 2 ms, which is the device's time, not the bridge's.
//!
//! Measured: command latency (MQTT `heater/set` → the controller handles `B+1`/`B+0`),
//! telemetry latency (the controller writes a changed reading → a subscriber has it in
//! `state`), the watchdog feed cadence while brewing (alone, under a CPU hog on every core,
//! and under a flood of 1,000 commands/s), and the footprint (RSS, CPU time idle and while
//! brewing, binary size, start to first state, shutdown). It prints a table and writes JSON to
//! `target/bench/`. No figure is judged here; `BENCHMARKS.md` compares them with the targets.
//!
//! Everything it waits for has a deadline, the whole run has one too, and every child process
//! (mosquitto, the bridge, the CPU hogs) is killed when its owner is dropped.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use coffeebot::sim::{CommandStream, SimConfig, SimHandle, Simulator};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

/// Topics of the product contract (SPEC §4) with the default base topic and device id.
const STATE: &str = "coffeebot/coffeepot/state";
const EVENT: &str = "coffeebot/coffeepot/event";
const HEATER_SET: &str = "coffeebot/coffeepot/heater/set";
const BREW_SET: &str = "coffeebot/coffeepot/brew/set";
const CUPS_SET: &str = "coffeebot/coffeepot/cups/set";
/// The controller's heater timeout (SPEC §2), for the watchdog margin.
const CONTROLLER_CUTOFF_MS: f64 = 1000.0;
/// `serial.feed_interval_ms`, default (the bench runs the defaults).
const FEED_INTERVAL_MS: f64 = 250.0;
/// Upper bound of any single wait; reached only when something is broken.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "End-to-end benchmark of the coffeebot bridge (see BENCHMARKS.md).")]
struct Args {
    /// A few samples and seconds per figure: proves the benchmark works, figures are noise.
    #[arg(long)]
    short: bool,
    /// The bridge binary (default: `coffeebot` next to this binary, i.e. the release build).
    #[arg(long)]
    bridge: Option<PathBuf>,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Run mosquitto without `set_tcp_nodelay` (its default), to see what Nagle's algorithm
    /// on the broker's sockets costs.
    #[arg(long)]
    broker_nagle: bool,
    /// Internal: spin one core for this many seconds (the CPU hog's child process).
    #[arg(long, hide = true)]
    hog: Option<u64>,
}

/// How much of everything a run measures.
#[derive(Clone, Copy, Debug)]
struct Plan {
    starts: usize,
    idle: Duration,
    command_samples: usize,
    telemetry_samples: usize,
    heating: Duration,
    flood_per_s: u64,
    limit: Duration,
}

impl Plan {
    fn new(short: bool) -> Plan {
        if short {
            Plan {
                starts: 1,
                idle: Duration::from_secs(3),
                command_samples: 10,
                telemetry_samples: 10,
                heating: Duration::from_secs(3),
                flood_per_s: 1000,
                limit: Duration::from_secs(120),
            }
        } else {
            Plan {
                starts: 5,
                idle: Duration::from_secs(60),
                command_samples: 200,
                telemetry_samples: 200,
                heating: Duration::from_secs(60),
                flood_per_s: 1000,
                limit: Duration::from_secs(600),
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
    let plan = Plan::new(args.short);
    let result = runtime.block_on(async {
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

/// Spins one core until `secs` have passed (bounded, so a lost hog ends by itself).
fn hog(secs: Duration) {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < secs {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}

async fn run(args: &Args, plan: Plan) -> Result<()> {
    let bridge_bin = match &args.bridge {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this binary")?
            .with_file_name("coffeebot"),
    };
    if !bridge_bin.is_file() {
        bail!(
            "no bridge binary at {} (build it: cargo build --release)",
            bridge_bin.display()
        );
    }
    let work = std::env::temp_dir().join(format!("coffeebot-bench-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let _cleanup = RemoveDir(work.clone());
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    say(&format!(
        "coffeebot-bench ({} mode): bridge {}",
        if args.short { "short" } else { "full" },
        bridge_bin.display()
    ));
    let broker = Broker::start(&work, !args.broker_nagle).context("mosquitto")?;
    say(&format!("mosquitto on 127.0.0.1:{}", broker.port));
    let sim = Simulator::start(SimConfig::default(), work.join("sim-tty"))
        .await
        .context("cannot start the simulated controller")?;
    let mut tap = Tap::start(sim.path()).await.context("the serial tap")?;
    let mut client = Client::connect("bench-observer", broker.port).await?;
    client.subscribe(STATE).await?;
    client.subscribe(EVENT).await?;

    let mut figures = Figures {
        loadavg_start: loadavg(),
        ..Figures::default()
    };

    // 1. Start-up (and shutdown for all but the last start).
    let log_path = args.out.join("bridge.log");
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

    // 2. Idle footprint.
    let idle = measure_cpu(&bridge, plan.idle).await?;
    figures.idle_cpu = Some(idle);
    figures.rss_idle_kb = proc_status_kb(bridge.pid, "VmRSS");
    say(&format!("idle: {}", idle.brief()));

    // 3. Command latency.
    command_latency(&mut client, &tap, &sim, plan.command_samples, &mut figures).await?;
    bridge.check_alive()?;

    // 4. Telemetry latency.
    telemetry_latency(
        &mut client,
        &tap,
        &sim,
        plan.telemetry_samples,
        &mut figures,
    )
    .await?;
    bridge.check_alive()?;

    // 5. Feed cadence while brewing: alone, under a CPU hog, under a command flood.
    let scenarios = [Stress::None, Stress::CpuHog, Stress::Flood];
    for stress in scenarios {
        let run = heating(&mut client, &tap, &sim, &bridge, &broker, stress, plan)
            .await
            .with_context(|| format!("feed cadence ({})", stress.name()))?;
        say(&format!(
            "feed cadence ({}): {}",
            stress.name(),
            run.brief()
        ));
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
    client.disconnect().await;

    let report = figures.to_json(args, plan, &bridge_bin);
    let table = figures.table();
    println!("\n{table}");
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let text = serde_json::to_string_pretty(&report)?;
    for name in [format!("bench-{stamp}.json"), "latest.json".to_owned()] {
        let path = args.out.join(name);
        fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    say(&format!(
        "wrote {} and {}",
        args.out.join(format!("bench-{stamp}.json")).display(),
        args.out.join("latest.json").display()
    ));
    drop(sim);
    Ok(())
}

fn say(line: &str) {
    eprintln!("coffeebot-bench: {line}");
}

/// Removes a directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// mosquitto

/// A mosquitto child process: anonymous, one loopback listener on a free port, no persistence.
/// Killed on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(work: &Path, nodelay: bool) -> Result<Broker> {
        let program = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("mosquitto"));
        let mut last = String::new();
        // Another process may take the port between the probe and mosquitto's bind.
        for _ in 0..5 {
            let port = free_port()?;
            let conf = work.join("mosquitto.conf");
            fs::write(
                &conf,
                format!(
                    "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                     listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n\
                     set_tcp_nodelay {nodelay}\n"
                ),
            )?;
            let log = fs::File::create(work.join("mosquitto.log"))?;
            let mut child = Command::new(&program)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot run {} (install it: scripts/install-test-deps.sh)",
                        program.display()
                    )
                })?;
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = child.try_wait()? {
                    last = format!(
                        "exited with {status}: {}",
                        fs::read_to_string(work.join("mosquitto.log")).unwrap_or_default()
                    );
                    break;
                }
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if StdTcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Ok(Broker { child, port });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("port {port} did not open within {WAIT:?}");
                    break;
                }
                // Readiness poll with a deadline.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        bail!("mosquitto did not start: {last}")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// MQTT clients

/// What a client's event loop saw, stamped when `poll` returned it.
#[derive(Debug)]
enum Seen {
    Message {
        at: Instant,
        topic: String,
        payload: Vec<u8>,
    },
    SubAck,
    PubAck,
}

/// An MQTT 3.1.1 client whose event loop runs in its own task.
struct Client {
    client: AsyncClient,
    seen: mpsc::Receiver<Seen>,
    task: JoinHandle<()>,
}

impl Client {
    async fn connect(id: &str, port: u16) -> Result<Client> {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(1000)
            .set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        // The bench's own clients must not add Nagle delays to what they measure.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, seen) = mpsc::channel(100_000);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            let mut errors = 0u32;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        let at = Instant::now();
                        let seen = match packet {
                            Packet::ConnAck(_) => {
                                if let Some(tx) = connected_tx.take() {
                                    let _ = tx.send(());
                                }
                                continue;
                            }
                            Packet::Publish(p) => Seen::Message {
                                at,
                                topic: p.topic,
                                payload: p.payload.to_vec(),
                            },
                            Packet::SubAck(_) => Seen::SubAck,
                            Packet::PubAck(_) => Seen::PubAck,
                            _ => continue,
                        };
                        // A client nobody reads (the flood) just drops what it sees.
                        let _ = tx.try_send(seen);
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(_) => {
                        errors += 1;
                        if errors > 50 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tokio::time::timeout(WAIT, connected)
            .await
            .map_err(|_| anyhow!("MQTT client {id}: no CONNACK within {WAIT:?}"))?
            .map_err(|_| anyhow!("MQTT client {id}: event loop ended"))?;
        Ok(Client { client, seen, task })
    }

    async fn subscribe(&mut self, topic: &str) -> Result<()> {
        self.client.subscribe(topic, QoS::AtLeastOnce).await?;
        self.wait(|s| matches!(s, Seen::SubAck), "SUBACK").await?;
        Ok(())
    }

    /// Publishes at QoS 1; returns when it was handed to the event loop.
    async fn publish(&self, topic: &str, payload: &str) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await?;
        Ok(())
    }

    /// Waits for the first thing seen that `want` accepts, dropping the rest.
    async fn wait(&mut self, mut want: impl FnMut(&Seen) -> bool, what: &str) -> Result<Seen> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(seen)) if want(&seen) => return Ok(seen),
                Ok(Some(_)) => {}
                Ok(None) => bail!("MQTT client stopped while waiting for {what}"),
                Err(_) => bail!("no {what} within {WAIT:?}"),
            }
        }
    }

    /// The next state document received after `after`, which `want` accepts.
    async fn state(
        &mut self,
        after: Instant,
        mut want: impl FnMut(&Value, Instant) -> bool,
        what: &str,
    ) -> Result<(Instant, Value)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seen = tokio::time::timeout_at(deadline, self.seen.recv())
                .await
                .map_err(|_| anyhow!("no state with {what} within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("MQTT client stopped"))?;
            if let Seen::Message { at, topic, payload } = seen {
                if topic != STATE || at < after || payload.is_empty() {
                    continue;
                }
                let Ok(doc) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                if want(&doc, at) {
                    return Ok((at, doc));
                }
            }
        }
    }

    /// Forgets everything seen so far.
    fn drain(&mut self) {
        while self.seen.try_recv().is_ok() {}
    }

    async fn disconnect(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The serial tap

/// Which way a line crossed the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Written by the bridge.
    ToDevice,
    /// Written by the controller.
    FromDevice,
}

/// One line as it crossed the tap, stamped when the chunk holding its `\n` was read.
#[derive(Clone, Debug)]
struct TapLine {
    at: Instant,
    dir: Dir,
    line: String,
}

/// A pseudo-terminal between the bridge and the simulator that stamps and forwards lines.
struct Tap {
    /// The pty the bridge opens.
    bridge_path: PathBuf,
    /// The bridge side's slave, held open so that the master never sees a hang-up before the
    /// bridge opens it (it is never read here).
    #[allow(dead_code, reason = "held open, never used")]
    slave: SerialStream,
    /// New bridge-side masters for the shuttle.
    swap: mpsc::Sender<SerialStream>,
    lines: broadcast::Sender<TapLine>,
    task: JoinHandle<()>,
}

impl Tap {
    async fn start(sim_link: &Path) -> Result<Tap> {
        let (master, slave, bridge_path) = bridge_pty()?;
        // The simulator's link exists once `Simulator::start` returned.
        let device = tokio_serial::new(sim_link.to_string_lossy(), 115_200)
            .open_native_async()
            .with_context(|| format!("cannot open {}", sim_link.display()))?;
        let (lines, _) = broadcast::channel(65_536);
        let (swap, swaps) = mpsc::channel(1);
        let task = tokio::spawn(shuttle(master, device, swaps, lines.clone()));
        Ok(Tap {
            bridge_path,
            slave,
            swap,
            lines,
            task,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<TapLine> {
        self.lines.subscribe()
    }

    /// A fresh pty for the next bridge process: a bridge leaves its port exclusive (TIOCEXCL
    /// stays while the slave is held open), and nothing stale is queued for the newcomer.
    fn renew(&mut self) -> Result<()> {
        let (master, slave, path) = bridge_pty()?;
        self.swap
            .try_send(master)
            .map_err(|_| anyhow!("the serial tap is not running"))?;
        self.slave = slave;
        self.bridge_path = path;
        Ok(())
    }
}

/// A pty pair for the bridge side and the slave's path.
fn bridge_pty() -> Result<(SerialStream, SerialStream, PathBuf)> {
    let (master, slave) = SerialStream::pair().context("cannot create a pty pair")?;
    let path = PathBuf::from(
        slave
            .name()
            .ok_or_else(|| anyhow!("the pty slave has no name"))?,
    );
    Ok((master, slave, path))
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards bytes both ways as soon as they can be read, stamping each line.
async fn shuttle(
    bridge: SerialStream,
    mut device: SerialStream,
    mut swaps: mpsc::Receiver<SerialStream>,
    lines: broadcast::Sender<TapLine>,
) {
    let mut from_bridge = [0u8; 512];
    let mut from_device = [0u8; 512];
    let mut to_device_line = Vec::new();
    let mut from_device_line = Vec::new();
    // `None` after the bridge side failed (its slave was released before the swap arrived):
    // the controller's output is dropped until the next bridge side, as with no reader.
    let mut bridge = Some(bridge);
    loop {
        tokio::select! {
            swap = swaps.recv() => match swap {
                Some(master) => {
                    bridge = Some(master);
                    to_device_line.clear();
                }
                None => return,
            },
            read = async {
                match bridge.as_mut() {
                    Some(b) => b.read(&mut from_bridge).await,
                    None => std::future::pending().await,
                }
            } => {
                let at = Instant::now();
                let n = match read {
                    Ok(n) if n > 0 => n,
                    _ => {
                        bridge = None;
                        continue;
                    }
                };
                if device.write_all(&from_bridge[..n]).await.is_err() {
                    return;
                }
                split(&mut to_device_line, &from_bridge[..n], at, Dir::ToDevice, &lines);
            }
            read = device.read(&mut from_device) => {
                let at = Instant::now();
                let n = match read { Ok(n) if n > 0 => n, _ => return };
                if let Some(b) = bridge.as_mut() {
                    if b.write_all(&from_device[..n]).await.is_err() {
                        bridge = None;
                    }
                }
                split(&mut from_device_line, &from_device[..n], at, Dir::FromDevice, &lines);
            }
        }
    }
}

fn split(
    partial: &mut Vec<u8>,
    bytes: &[u8],
    at: Instant,
    dir: Dir,
    out: &broadcast::Sender<TapLine>,
) {
    for &b in bytes {
        if b == b'\n' {
            let line = String::from_utf8_lossy(partial)
                .trim_end_matches('\r')
                .to_owned();
            partial.clear();
            let _ = out.send(TapLine { at, dir, line });
        } else if partial.len() < 1024 {
            partial.push(b);
        }
    }
}

/// Reads tap lines in order until `want` accepts one, or `WAIT` passes.
async fn next_line(
    rx: &mut broadcast::Receiver<TapLine>,
    mut want: impl FnMut(&TapLine) -> bool,
    what: &str,
) -> Result<TapLine> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(line)) if want(&line) => return Ok(line),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("the serial tap stopped"),
            Err(_) => bail!("no {what} on the serial line within {WAIT:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The bridge process

fn bridge_env(port: &Path, mqtt_port: u16, http_port: u16) -> Vec<(String, String)> {
    [
        (
            "COFFEEBOT__SERIAL__PORT",
            port.to_string_lossy().into_owned(),
        ),
        ("COFFEEBOT__MQTT__HOST", "127.0.0.1".to_owned()),
        ("COFFEEBOT__MQTT__PORT", mqtt_port.to_string()),
        ("COFFEEBOT__MQTT__USERNAME", String::new()),
        (
            "COFFEEBOT__MQTT__CLIENT_ID",
            "coffeebot-bench-bridge".to_owned(),
        ),
        // HTTP is on by default (probes, status page): on, on a free loopback port.
        ("COFFEEBOT__HTTP__LISTEN", format!("127.0.0.1:{http_port}")),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The bridge child process; killed on drop.
struct Bridge {
    child: Child,
    pid: u32,
    /// Where its HTTP server (and `/metrics`) listens.
    http_port: u16,
}

impl Bridge {
    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the bridge exited with {status} (see target/bench/bridge.log)"),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the bridge and records the time to its first state and to the first state that
/// carries the controller's answer.
async fn start_bridge(
    bin: &Path,
    log: &fs::File,
    client: &mut Client,
    mqtt_port: u16,
    tap: &mut Tap,
    figures: &mut Figures,
) -> Result<Bridge> {
    tap.renew()?;
    let http_port = free_port()?;
    let env = bridge_env(&tap.bridge_path, mqtt_port, http_port);
    // A retained state from an earlier start must not count: clear it and wait for the ack.
    client
        .client
        .publish(STATE, QoS::AtLeastOnce, true, Vec::new())
        .await?;
    client.wait(|s| matches!(s, Seen::PubAck), "PUBACK").await?;
    client.drain();
    let mut command = Command::new(bin);
    command
        .arg("run")
        .env_remove("COFFEEBOT_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    for (k, v) in &env {
        command.env(k, v);
    }
    let t0 = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let pid = child.id();
    let mut bridge = Bridge {
        child,
        pid,
        http_port,
    };
    // One pass over the states: the first one, and the first with the controller's reading
    // (often the same message, when the bridge had the reading before it reached the broker).
    let mut first_at = None;
    let ready = client
        .state(
            t0,
            |doc, at| {
                first_at.get_or_insert(at);
                doc["link"] == "up" && doc["temperature_c"].is_number()
            },
            "link up and a temperature",
        )
        .await;
    let (ready_at, _) = match ready {
        Ok(x) => x,
        Err(e) => {
            bridge.check_alive()?;
            return Err(e.context("the bridge published no state with a reading"));
        }
    };
    let first_at = first_at.unwrap_or(ready_at);
    figures.start_to_state.push(first_at - t0);
    figures.start_to_reading.push(ready_at.max(first_at) - t0);
    Ok(bridge)
}

/// SIGTERM, then waits (≤ 5 s) for a clean exit; records how long it took and the exit code.
async fn stop_bridge(mut bridge: Bridge, figures: &mut Figures) -> Result<()> {
    let t0 = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &bridge.pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -TERM {} failed", bridge.pid);
    }
    let deadline = t0 + Duration::from_secs(5);
    loop {
        if let Some(status) = bridge.child.try_wait()? {
            figures.shutdown.push(t0.elapsed());
            figures.shutdown_codes.push(status.code().unwrap_or(-1));
            return Ok(());
        }
        if Instant::now() > deadline {
            figures.shutdown.push(t0.elapsed());
            figures.shutdown_codes.push(-1);
            return Ok(()); // Drop kills it.
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The bridge's own view: /metrics

/// The bridge's feed-gap histogram (`coffeebot_feed_gap_seconds`): total count and the count
/// at or below each bucket bound, from its `/metrics`. `None` when unavailable.
fn feed_gap_histogram(http_port: u16) -> Option<Histogram> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
    let mut stream = StdTcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.take(4 << 20).read_to_string(&mut text).ok()?;
    let mut h = Histogram::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("coffeebot_feed_gap_seconds_bucket{le=\"") {
            let (le, count) = rest.split_once("\"} ")?;
            h.buckets.push((le.to_owned(), count.trim().parse().ok()?));
        } else if let Some(count) = line.strip_prefix("coffeebot_feed_gap_seconds_count ") {
            h.count = count.trim().parse().ok()?;
        }
    }
    Some(h)
}

/// A Prometheus histogram's cumulative buckets.
#[derive(Clone, Debug, Default)]
struct Histogram {
    count: u64,
    buckets: Vec<(String, u64)>,
}

impl Histogram {
    /// Observations above `le` between `earlier` and `self`.
    fn above_since(&self, earlier: Option<&Histogram>, le: &str) -> Option<u64> {
        let at = |h: &Histogram| -> Option<u64> {
            let below = h.buckets.iter().find(|(b, _)| b == le)?.1;
            Some(h.count - below.min(h.count))
        };
        let now = at(self)?;
        let before = earlier.map_or(Some(0), at)?;
        Some(now.saturating_sub(before))
    }

    /// Observations between `earlier` and `self`.
    fn count_since(&self, earlier: Option<&Histogram>) -> u64 {
        self.count.saturating_sub(earlier.map_or(0, |h| h.count))
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time of a process: the sum of its threads' run time (ns, `schedstat`) and
/// utime + stime in clock ticks (`stat`, which also counts threads that have exited).
#[derive(Clone, Copy, Debug, Default)]
struct CpuSample {
    at: Option<Instant>,
    thread_ns: u64,
    ticks: u64,
}

fn cpu_sample(pid: u32) -> CpuSample {
    let mut thread_ns = 0;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
                thread_ns += text
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let ticks = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = text.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    CpuSample {
        at: Some(Instant::now()),
        thread_ns,
        ticks,
    }
}

/// CPU used over a window.
#[derive(Clone, Copy, Debug)]
struct CpuUse {
    window: Duration,
    thread_ns: u64,
    ticks: u64,
}

impl CpuUse {
    fn between(a: CpuSample, b: CpuSample) -> CpuUse {
        let window = match (a.at, b.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        CpuUse {
            window,
            thread_ns: b.thread_ns.saturating_sub(a.thread_ns),
            ticks: b.ticks.saturating_sub(a.ticks),
        }
    }

    /// CPU milliseconds per minute of wall time.
    fn ms_per_min(&self) -> f64 {
        if self.window.is_zero() {
            return 0.0;
        }
        self.thread_ns as f64 / 1e6 * 60.0 / self.window.as_secs_f64()
    }

    /// Percent of one core.
    fn pct(&self) -> f64 {
        self.ms_per_min() / 600.0
    }

    fn brief(&self) -> String {
        format!(
            "{:.1} ms CPU/min ({:.3}% of a core) over {:.0} s",
            self.ms_per_min(),
            self.pct(),
            self.window.as_secs_f64()
        )
    }

    fn to_json(self) -> Value {
        json!({
            "window_s": self.window.as_secs_f64(),
            "cpu_ms": self.thread_ns as f64 / 1e6,
            "cpu_ticks": self.ticks,
            "cpu_ms_per_min": self.ms_per_min(),
            "pct_of_one_core": self.pct(),
        })
    }
}

async fn measure_cpu(bridge: &Bridge, window: Duration) -> Result<CpuUse> {
    let a = cpu_sample(bridge.pid);
    tokio::time::sleep(window).await;
    let b = cpu_sample(bridge.pid);
    Ok(CpuUse::between(a, b))
}

// ---------------------------------------------------------------------------------------------
// 1. Command latency

async fn command_latency(
    client: &mut Client,
    tap: &Tap,
    sim: &SimHandle,
    samples: usize,
    figures: &mut Figures,
) -> Result<()> {
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
        let mut commands = sim.commands();
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
        let handled = next_command(&mut commands, line, t0).await?;
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
    let stats = Stats::of(
        &figures
            .commands
            .iter()
            .map(|s| s.bridge)
            .collect::<Vec<_>>(),
    );
    say(&format!("command latency, bridge share: {}", stats.brief()));
    Ok(())
}

struct CommandSample {
    on: bool,
    /// Publish → the controller handled the line (includes its UART window).
    to_handled: Duration,
    /// Publish → the bridge's line crossed the tap.
    to_wire: Duration,
    /// The bridge's share: from publish, or from the reply it had to wait for, to the line.
    bridge: Duration,
    /// Publish → a subscriber has the state showing the relay as commanded (the controller's
    /// reply included).
    to_state: Duration,
    /// Whether a reply to an earlier line arrived after the publish (the one-line-at-a-time
    /// rule made the command wait for it).
    waited_for_reply: bool,
}

async fn next_command(commands: &mut CommandStream, line: &str, after: Instant) -> Result<Instant> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = commands
            .next_matching(line, left)
            .await
            .ok_or_else(|| anyhow!("the controller did not handle {line} within {WAIT:?}"))?;
        if event.at >= after {
            return Ok(event.at);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Telemetry latency

async fn telemetry_latency(
    client: &mut Client,
    tap: &Tap,
    sim: &SimHandle,
    samples: usize,
    figures: &mut Figures,
) -> Result<()> {
    // While heating, the bridge asks every feed interval (250 ms), so samples come quickly.
    let start = Instant::now();
    client.publish(HEATER_SET, "ON").await?;
    client
        .state(start, |doc, _| doc["heater"] == "ON", "heater ON")
        .await?;
    for i in 0..samples {
        let target = if i % 2 == 0 { 40.0 } else { 50.0 };
        let mut lines = tap.subscribe();
        client.drain();
        let t_set = Instant::now();
        sim.set_temperature(target).await?;
        let emitted = next_line(
            &mut lines,
            |l| {
                l.dir == Dir::FromDevice
                    && l.at >= t_set
                    && l.line
                        .strip_prefix("T+")
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| (v - target).abs() < 2.0)
            },
            "the new reading",
        )
        .await?;
        let (received, _) = client
            .state(
                t_set,
                |doc, _| {
                    doc["temperature_c"]
                        .as_f64()
                        .is_some_and(|v| (v - target).abs() < 2.0)
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
    let t_off = Instant::now();
    client.publish(HEATER_SET, "OFF").await?;
    client
        .state(t_off, |doc, _| doc["heater"] == "OFF", "heater OFF")
        .await?;
    let stats = Stats::of(
        &figures
            .telemetry
            .iter()
            .map(|s| s.emitted_to_received)
            .collect::<Vec<_>>(),
    );
    say(&format!("telemetry latency: {}", stats.brief()));
    Ok(())
}

struct TelemetrySample {
    /// The controller wrote the reply with the new reading → the subscriber had the state.
    emitted_to_received: Duration,
    /// The plate changed → the subscriber had it (includes waiting for the next poll/feed).
    set_to_received: Duration,
}

// ---------------------------------------------------------------------------------------------
// 3. Feed cadence while brewing

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stress {
    None,
    CpuHog,
    Flood,
}

impl Stress {
    fn name(self) -> &'static str {
        match self {
            Stress::None => "alone",
            Stress::CpuHog => "cpu hog",
            Stress::Flood => "command flood",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Stress::None => "alone",
            Stress::CpuHog => "cpu_hog",
            Stress::Flood => "flood",
        }
    }
}

/// CPU hog child processes, one per core; killed on drop (and they end by themselves).
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(secs: u64) -> Result<Hogs> {
        let me = std::env::current_exe()?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut hogs = Hogs(Vec::new());
        for _ in 0..cores {
            hogs.0.push(
                Command::new(&me)
                    .args(["--hog", &secs.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()?,
            );
        }
        Ok(hogs)
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cadence {
    stress: Stress,
    window: Duration,
    /// Gaps between consecutive `B+1` as written by the bridge (crossing the tap).
    wire_gaps: Vec<Duration>,
    /// Gaps between consecutive `B+1` as the controller handled them.
    handled_gaps: Vec<Duration>,
    cpu: CpuUse,
    heater_stayed_on: bool,
    reboots: u64,
    faults: usize,
    flood_sent: u64,
    flood_acked: u64,
    rejected_events: usize,
    /// Feed gaps the bridge itself recorded (`/metrics`), and how many exceeded 300 ms.
    bridge_gaps: Option<u64>,
    bridge_gaps_over_300ms: Option<u64>,
    /// The serial lines around the largest gap.
    context: Vec<String>,
}

impl Cadence {
    fn brief(&self) -> String {
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
async fn heating(
    client: &mut Client,
    tap: &Tap,
    sim: &SimHandle,
    bridge: &Bridge,
    broker: &Broker,
    stress: Stress,
    plan: Plan,
) -> Result<Cadence> {
    // A full reservoir and a plate past preheat: the brew starts at once, and the plate is held
    // below 90 °C, so no interlock ends the run (this measures the bridge, not the model).
    sim.set_water_distance(2.0).await?;
    sim.set_temperature(85.0).await?;
    let keeper = {
        let sim = sim.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if sim.set_temperature(85.0).await.is_err()
                    || sim.set_water_distance(2.0).await.is_err()
                {
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
        Stress::Flood => Some(Client::connect("bench-flood", broker.port).await?),
        _ => None,
    };
    let boots_before = sim.snapshot().await?.device.boots;
    let mut lines = tap.subscribe();
    let mut commands = sim.commands();
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
        tokio::spawn(async move { flood(c, per_s, dur).await })
    });
    let cpu_a = cpu_sample(bridge.pid);
    let metrics_a = feed_gap_histogram(bridge.http_port);
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
            event = commands.next_matching("B+1", end.saturating_duration_since(now)) => {
                if let Some(e) = event {
                    if e.at >= start && e.at <= end {
                        handled.push(e.at);
                    }
                }
            }
            _ = check.tick() => {
                if !sim.snapshot().await?.device.heater_on {
                    heater_stayed_on = false;
                }
            }
            () = tokio::time::sleep_until(end.into()) => break,
        }
    }
    let cpu = CpuUse::between(cpu_a, cpu_sample(bridge.pid));
    let metrics_b = feed_gap_histogram(bridge.http_port);
    let (bridge_gaps, bridge_gaps_over_300ms) = match &metrics_b {
        Some(b) => (
            Some(b.count_since(metrics_a.as_ref())),
            b.above_since(metrics_a.as_ref(), "0.3"),
        ),
        None => (None, None),
    };
    let context = largest_gap_context(&wire, &window_lines);
    let (flood_sent, flood_acked) = match flood {
        Some(task) => tokio::time::timeout(WAIT, task)
            .await
            .map_err(|_| anyhow!("the flood did not stop"))???,
        None => (0, 0),
    };
    drop(hogs);
    let boots_after = sim.snapshot().await?.device.boots;
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
        flood_sent,
        flood_acked,
        rejected_events,
        bridge_gaps,
        bridge_gaps_over_300ms,
        context,
    })
}

/// The serial lines around the largest gap between feeds, as offsets in ms from the feed
/// that opened the gap.
fn largest_gap_context(feeds: &[Instant], lines: &[TapLine]) -> Vec<String> {
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
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes `cups/set` at `per_s` for `dur`, half of them valid and half out of range; returns
/// (sent, acknowledged).
async fn flood(mut client: Client, per_s: u64, dur: Duration) -> Result<(u64, u64)> {
    let start = Instant::now();
    let mut sent = 0u64;
    let mut acked = 0u64;
    while start.elapsed() < dur {
        let due = (start.elapsed().as_secs_f64() * per_s as f64) as u64;
        while sent < due {
            let payload = if sent % 2 == 0 { "3" } else { "99" };
            tokio::time::timeout(WAIT, client.publish(CUPS_SET, payload))
                .await
                .map_err(|_| anyhow!("the flood client is stuck"))??;
            sent += 1;
        }
        while let Ok(seen) = client.seen.try_recv() {
            if matches!(seen, Seen::PubAck) {
                acked += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Give the last acknowledgements a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while acked < sent && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), client.seen.recv()).await {
            Ok(Some(Seen::PubAck)) => acked += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {}
        }
    }
    client.disconnect().await;
    Ok((sent, acked))
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

// ---------------------------------------------------------------------------------------------
// Figures

/// Nearest-rank percentiles of a sample.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    min: Duration,
    mean: Duration,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut v = samples.to_vec();
        v.sort();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let sum: Duration = v.iter().sum();
        Stats {
            n: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
            min: v[0],
            mean: sum / v.len() as u32,
        }
    }

    fn brief(&self) -> String {
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.n
        )
    }

    fn to_json(self) -> Value {
        json!({
            "n": self.n,
            "min_ms": ms(self.min),
            "p50_ms": ms(self.p50),
            "p99_ms": ms(self.p99),
            "max_ms": ms(self.max),
            "mean_ms": ms(self.mean),
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Figures {
    /// `/proc/loadavg` before and after: other work on the machine shows here.
    loadavg_start: Option<String>,
    loadavg_end: Option<String>,
    start_to_state: Vec<Duration>,
    start_to_reading: Vec<Duration>,
    shutdown: Vec<Duration>,
    shutdown_codes: Vec<i32>,
    idle_cpu: Option<CpuUse>,
    rss_idle_kb: Option<u64>,
    rss_end_kb: Option<u64>,
    rss_peak_kb: Option<u64>,
    binary_bytes: Option<u64>,
    commands: Vec<CommandSample>,
    telemetry: Vec<TelemetrySample>,
    cadence: Vec<Cadence>,
}

impl Figures {
    fn command_stats(&self, f: impl Fn(&CommandSample) -> Duration, on: Option<bool>) -> Stats {
        let v: Vec<Duration> = self
            .commands
            .iter()
            .filter(|s| on.is_none_or(|on| s.on == on))
            .map(f)
            .collect();
        Stats::of(&v)
    }

    fn to_json(&self, args: &Args, plan: Plan, bin: &Path) -> Value {
        let telemetry = |f: fn(&TelemetrySample) -> Duration| {
            Stats::of(&self.telemetry.iter().map(f).collect::<Vec<_>>()).to_json()
        };
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
                        "gap_written": w.to_json(),
                        "gap_at_controller": h.to_json(),
                        "largest_gap_ms": ms(w.max.max(h.max)),
                        "largest_gap_vs_feed_interval": ms(w.max.max(h.max)) / FEED_INTERVAL_MS,
                        "watchdog_margin_ms": CONTROLLER_CUTOFF_MS - ms(w.max.max(h.max)),
                        "heater_stayed_on": c.heater_stayed_on,
                        "controller_reboots": c.reboots,
                        "fault_events": c.faults,
                        "bridge_cpu": c.cpu.to_json(),
                        "flood_sent": c.flood_sent,
                        "flood_acked": c.flood_acked,
                        "flood_rate_per_s": c.flood_sent as f64 / c.window.as_secs_f64(),
                        "command_rejected_events": c.rejected_events,
                        "bridge_metrics_feed_gaps": c.bridge_gaps,
                        "bridge_metrics_feed_gaps_over_300ms": c.bridge_gaps_over_300ms,
                        "largest_gap_serial_context": c.context,
                    }),
                )
            })
            .collect();
        json!({
            "benchmark": "coffeebot-bench",
            "mode": if args.short { "short" } else { "full" },
            "when": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "machine": machine(),
            "loadavg": { "start": self.loadavg_start, "end": self.loadavg_end },
            "commit": commit(),
            "bridge_binary": bin.display().to_string(),
            "settings": {
                "bridge": "config/default.toml defaults; anonymous MQTT and HTTP on loopback; RUST_LOG=info to a file",
                "feed_interval_ms": FEED_INTERVAL_MS,
                "poll_interval_ms": 1000,
                "starts": plan.starts,
                "idle_s": plan.idle.as_secs_f64(),
                "command_samples_each_way": plan.command_samples,
                "telemetry_samples": plan.telemetry_samples,
                "heating_window_s": plan.heating.as_secs_f64(),
                "flood_target_per_s": plan.flood_per_s,
                "simulator": "SimConfig::default() in the bench process, behind a stamping pty tap",
                "broker_tcp_nodelay": !args.broker_nagle,
            },
            "command_latency": {
                "bridge_share": self.command_stats(|s| s.bridge, None).to_json(),
                "publish_to_wire": self.command_stats(|s| s.to_wire, None).to_json(),
                "publish_to_controller": self.command_stats(|s| s.to_handled, None).to_json(),
                "publish_to_state": self.command_stats(|s| s.to_state, None).to_json(),
                "on_publish_to_controller": self.command_stats(|s| s.to_handled, Some(true)).to_json(),
                "off_publish_to_controller": self.command_stats(|s| s.to_handled, Some(false)).to_json(),
                "samples_behind_a_reply": self.commands.iter().filter(|s| s.waited_for_reply).count(),
            },
            "telemetry_latency": {
                "reply_to_subscriber": telemetry(|s| s.emitted_to_received),
                "plate_change_to_subscriber": telemetry(|s| s.set_to_received),
            },
            "feed_cadence": cadence,
            "footprint": {
                "rss_idle_kb": self.rss_idle_kb,
                "rss_end_kb": self.rss_end_kb,
                "rss_peak_kb": self.rss_peak_kb,
                "idle_cpu": self.idle_cpu.map(CpuUse::to_json),
                "brewing_cpu": self.cadence.iter().find(|c| c.stress == Stress::None).map(|c| c.cpu.to_json()),
                "binary_bytes": self.binary_bytes,
                "start_to_first_state": Stats::of(&self.start_to_state).to_json(),
                "start_to_state_with_reading": Stats::of(&self.start_to_reading).to_json(),
                "sigterm_to_exit": Stats::of(&self.shutdown).to_json(),
                "exit_codes": self.shutdown_codes,
            },
        })
    }

    fn table(&self) -> String {
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
        row(
            &mut t,
            "command: bridge share (publish → line written)",
            lat(self.command_stats(|s| s.bridge, None)),
        );
        row(
            &mut t,
            "command: publish → line written",
            lat(self.command_stats(|s| s.to_wire, None)),
        );
        row(
            &mut t,
            "command: publish → controller handled it",
            lat(self.command_stats(|s| s.to_handled, None)),
        );
        row(
            &mut t,
            "command: publish → state shows the relay",
            lat(self.command_stats(|s| s.to_state, None)),
        );
        row(
            &mut t,
            "telemetry: reply written → subscriber",
            lat(Stats::of(
                &self
                    .telemetry
                    .iter()
                    .map(|s| s.emitted_to_received)
                    .collect::<Vec<_>>(),
            )),
        );
        row(
            &mut t,
            "telemetry: plate change → subscriber",
            lat(Stats::of(
                &self
                    .telemetry
                    .iter()
                    .map(|s| s.set_to_received)
                    .collect::<Vec<_>>(),
            )),
        );
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
                            "; flood {:.0}/s",
                            c.flood_sent as f64 / c.window.as_secs_f64()
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

fn machine() -> Value {
    let uname = Command::new("uname")
        .arg("-a")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let cpu = fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines().find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        })
    });
    json!({
        "uname": uname,
        "cpu_model": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
    })
}

fn loadavg() -> Option<String> {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.trim().to_owned())
}

fn commit() -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "head": git(&["rev-parse", "HEAD"]),
        "dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
    })
}
