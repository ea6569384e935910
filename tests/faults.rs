//! Fault injection end to end: `coffeebot run` as a separate process, a real mosquitto (the
//! shipped configuration), the simulated controller on a real pseudo-terminal in this process,
//! and faults of every layer: the broker, the network, the serial port, the controller, the
//! bridge's own process, hostile command traffic and the wall clock. Each test checks what the
//! user sees (MQTT state and events) and what the heater does (the simulator's command log and
//! relay), and prints the figures RELIABILITY.md quotes (`cargo test --test faults --
//! --nocapture`).
//!
//! Every wait ends on an observable event (a message, a serial command line, a log line, a
//! change of the simulated relay, the process's exit) or fails after a timeout; the only
//! sleeps are injected fault durations (a process frozen for 3 s).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffeebot::sim::device::WATCHDOG_TIMEOUT;
use coffeebot::sim::{CommandEvent, Fault, SimConfig, SimHandle};
use serde_json::Value;
use support::bridge::{Bridge, Process};
use support::mosquitto::{json, next_message, Broker, Login, Setup, User};
use support::rig::Rig;
use support::sim::{keeps_seeing, simulator};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const B: &str = "coffeebot";
const D: &str = "coffeebot/coffeepot";
const WAIT: Duration = Duration::from_secs(10);
/// Long enough that a brew is still running when a fault is injected into it; every fault
/// below ends it early.
const SLOW_BREW: (&str, &str) = ("BREW__SECONDS_PER_CUP", "10");

/// A rig named `name` with `extra` settings, in the middle of a [`SLOW_BREW`] of two cups: the
/// start of every test that injects a fault into a running brew.
async fn mid_brew(name: &str, extra: &[(&str, &str)]) -> Rig {
    let settings: Vec<(&str, &str)> = std::iter::once(SLOW_BREW)
        .chain(extra.iter().copied())
        .collect();
    let mut rig = Rig::start(name, &settings).await;
    rig.brewing(2).await;
    rig
}

// ----- the rig ------------------------------------------------------------------------------

/// How to start the bridge process, and extra broker configuration lines.
#[derive(Default)]
struct Launch<'a> {
    process: Process<'a>,
    broker_conf: &'a str,
}

impl Rig {
    async fn start(name: &str, extra: &[(&str, &str)]) -> Rig {
        Rig::start_with(name, extra, Launch::default()).await
    }

    async fn start_with(name: &str, extra: &[(&str, &str)], launch: Launch<'_>) -> Rig {
        let broker = Broker::start_with_extra(Setup::Shipped, launch.broker_conf);
        let sim = simulator("faults", name, SimConfig::default()).await;
        // Not `B/#`: the test clients' packet size limit would drop the connection over a
        // megabyte command.
        let watcher = broker.watcher(&watched()).await;
        let login = broker.credentials(User::Coffeebot);
        let bridge = Bridge::start_with(launch.process, sim.path(), &broker, &login, extra);
        Rig::answering(broker, sim, watcher, bridge, |s| {
            s["link"] == "up" && s["temperature_c"].is_number()
        })
        .await
    }

    /// `heater ON` is refused with a `command_rejected` event whose reason starts with
    /// `reason` (the fault that holds).
    async fn heater_on_refused(&mut self, reason: &str) {
        self.command("heater", "ON").await;
        let rejected = self.event("command_rejected").await;
        assert!(
            rejected["reason"].as_str().unwrap().starts_with(reason),
            "{rejected}"
        );
    }

    /// `fault` trips: its `fault` event (with its time), then a state that shows it, the mode
    /// `off`. Returns when the event came.
    async fn trips(&mut self, fault: &str) -> Instant {
        let event = self.event_where("fault", |e| e["reason"] == fault).await;
        let at = Instant::now();
        assert!(event["at"].is_string(), "{event}");
        let state = self.state_where(fault, |s| has_fault(s, fault)).await;
        assert_eq!(state["mode"], "off", "{state}");
        at
    }

    /// A brew of `cups` started and seen in the `brewing` mode; returns the first `B+1`.
    async fn brewing(&mut self, cups: u32) -> CommandEvent {
        let mut commands = self.sim.commands();
        self.command("brew", cups.to_string()).await;
        self.event("brew_started").await;
        let first = commands.next_matching("B+1", WAIT).await.expect("B+1");
        self.state_where("brewing", |s| s["mode"] == "brewing")
            .await;
        first
    }

    /// Waits until the simulated relay is `on`; returns when (test clock).
    async fn relay(&self, on: bool) -> Instant {
        relay(&self.sim, on).await
    }

    /// The `B+1` lines the controller accepted after `t`.
    async fn feeds_after(&self, t: Instant) -> Vec<CommandEvent> {
        lines_after(&self.sim, "B+1", t).await
    }
}

/// What the watcher follows: everything the bridge publishes under `B/`.
fn watched() -> [&'static str; 4] {
    [
        "coffeebot/coffeepot/state",
        "coffeebot/coffeepot/event",
        "coffeebot/coffeepot/availability",
        "coffeebot/bridge/availability",
    ]
}

async fn relay(sim: &SimHandle, on: bool) -> Instant {
    let mut watch = sim.watch();
    tokio::time::timeout(WAIT, watch.wait_for(|s| s.device.heater_on == on))
        .await
        .unwrap_or_else(|_| panic!("the simulated relay never went {on}"))
        .expect("simulator running");
    Instant::now()
}

async fn lines_after(sim: &SimHandle, line: &str, t: Instant) -> Vec<CommandEvent> {
    sim.command_log()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.line == line && c.at > t)
        .collect()
}

/// Waits for `n` more status polls: a few seconds of the bridge going on as it is, proven by
/// what the controller saw rather than by a sleep.
async fn polls(sim: &SimHandle, n: usize) {
    keeps_seeing(sim, "S+?", n, WAIT).await;
}

fn has_fault(state: &Value, fault: &str) -> bool {
    state["faults"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == fault))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The default settings (the tests use the default ids and prefix).
fn settings() -> coffeebot::config::Settings {
    coffeebot::config::load_with(None, &[]).expect("defaults load")
}

/// Every discovery config topic of the default settings.
fn discovery_topics() -> Vec<String> {
    coffeebot::mqtt::discovery::entities(&settings())
        .iter()
        .map(|e| {
            format!(
                "homeassistant/{}/coffeebot_coffeepot/{}/config",
                e.platform, e.key
            )
        })
        .collect()
}

/// After an outage: availability, the current state and every discovery config, as a client
/// that connects now sees them (retained). Returns the state.
async fn everything_back(broker: &Broker, state: impl Fn(&Value) -> bool) -> Value {
    let mut w = broker.lan_client(Login::User(User::HomeAssistant)).await;
    w.subscribe_many(&[&format!("{B}/#"), "homeassistant/#"])
        .await
        .unwrap();
    for topic in [
        format!("{B}/bridge/availability"),
        format!("{D}/availability"),
    ] {
        w.wait_for(&topic, WAIT, |m| m.topic == topic && m.payload == b"online")
            .await
            .unwrap();
    }
    let s = w
        .wait_for("state", WAIT, |m| {
            m.topic == format!("{D}/state") && state(&json(m))
        })
        .await
        .unwrap();
    for topic in discovery_topics() {
        w.wait_for(&topic, WAIT, |m| m.topic == topic && !m.payload.is_empty())
            .await
            .unwrap();
    }
    json(&s)
}

// ----- the broker and the network -----------------------------------------------------------

/// tests/mqtt.rs `broker_restart_brings_everything_back_and_the_brew_keeps_its_limits` covers
/// a killed broker mid-brew (the brew ends on time while it is away; availability, state and
/// discovery come back). This adds the figures and what comes after the reconnect: the bridge
/// reconnects with a clean session, and the brew it was given before the outage is not run
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_brew_comes_back_within_10_s_and_replays_nothing() {
    let mut rig = Rig::start("broker-kill", &[]).await;
    let first = rig.brewing(2).await;
    rig.broker.kill();
    // The brew ends on time with nobody to tell: preheat (none: the plate is warm enough at
    // 25 °C after about 2 s) plus 2 cups of 1 s.
    let mut commands = rig.sim.commands();
    let off = commands.next_matching("B+0", WAIT).await.expect("B+0");
    let heated = off.at.duration_since(first.at);
    assert!(heated < Duration::from_secs(6), "heated {heated:?}");
    assert!(rig
        .bridge
        .wait_for_log("lost the MQTT broker", WAIT)
        .is_some());
    let restarted = Instant::now();
    rig.broker.launch();
    let state = everything_back(&rig.broker, |s| s["mode"] == "off").await;
    let recovery = restarted.elapsed();
    println!(
        "FIGURE broker killed: heater on {} ms for a 2-cup brew while away; \
         availability+state+discovery back {} ms after the broker",
        ms(heated),
        ms(recovery)
    );
    assert!(recovery < WAIT, "back after {recovery:?}");
    assert_eq!(state["heater"], "OFF");
    // Nothing replayed: a few more polls, and not one B+1 after the brew's end, nor a second
    // brew_started.
    polls(&rig.sim, 3).await;
    assert!(rig.feeds_after(restarted).await.is_empty());
    let mut late = rig.broker.lan_client(Login::User(User::Lan)).await;
    let marker = "a marker after the reconnect";
    late.subscribe(&format!("{D}/#")).await.unwrap();
    late.publish(&format!("{D}/cups/set"), "7", false)
        .await
        .unwrap();
    next_message(&mut late, marker, |m| json(m)["cups"] == 7).await;
    assert!(
        late.seen()
            .iter()
            .all(|m| json(m)["event_type"] != "brew_started"),
        "a brew started again"
    );
    // The reconnect asked for a clean session (mosquitto logs `c1`).
    let id = rig.bridge.client_id.clone();
    rig.broker.stop();
    let log = rig.broker.log();
    let connects: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&id))
        .collect();
    assert!(!connects.is_empty(), "{log}");
    assert!(connects.iter().all(|l| l.contains("c1")), "{connects:?}");
}

/// A loopback TCP relay in front of the broker that can cut every connection and refuse new
/// ones (a network partition) while the broker stays up, then let them through again.
struct Relay {
    port: u16,
    control: mpsc::Sender<(bool, oneshot::Sender<()>)>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (control, mut rx) = mpsc::channel::<(bool, oneshot::Sender<()>)>(4);
        tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = async { listener.as_ref().unwrap().accept().await }, if listener.is_some() => {
                        if let Ok((mut inbound, _)) = accepted {
                            conns.spawn(async move {
                                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                        }
                    }
                    msg = rx.recv() => {
                        let Some((open, ack)) = msg else { return };
                        if open && listener.is_none() {
                            listener = Some(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
                        } else if !open {
                            listener = None;
                            conns.shutdown().await;
                        }
                        let _ = ack.send(());
                    }
                }
            }
        });
        Relay { port, control }
    }

    async fn set_open(&self, open: bool) {
        let (tx, rx) = oneshot::channel();
        self.control.send((open, tx)).await.unwrap();
        rx.await.unwrap();
    }
}

/// A network partition between the bridge and a broker that stays up: the commands people send
/// meanwhile reach nobody, and are not delivered when the bridge is back (a clean session:
/// a kept session would queue them and run a brew minutes or hours later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_the_bridge_is_cut_off_are_never_replayed() {
    let broker = Broker::start();
    let sim = simulator("faults", "partition", SimConfig::default()).await;
    let relay = Relay::start(broker.lan_port()).await;
    let mut watcher = broker.lan_client(Login::User(User::HomeAssistant)).await;
    watcher.subscribe(&format!("{B}/#")).await.unwrap();
    let relay_port = relay.port.to_string();
    let bridge = Bridge::start(
        sim.path(),
        &broker,
        &broker.credentials(User::Coffeebot),
        &[("MQTT__PORT", &relay_port)],
    );
    next_message(&mut watcher, "bridge online", |m| {
        m.topic == format!("{D}/state") && json(m)["link"] == "up"
    })
    .await;
    relay.set_open(false).await;
    let cut = Instant::now();
    // The broker publishes the last will when the connection drops.
    next_message(&mut watcher, "last will", |m| {
        m.topic == format!("{B}/bridge/availability") && m.payload == b"offline"
    })
    .await;
    assert!(bridge.wait_for_log("lost the MQTT broker", WAIT).is_some());
    let mut lan = broker.lan_client(Login::User(User::Lan)).await;
    for (command, payload) in [("heater", "ON"), ("brew", "START"), ("keep_warm", "ON")] {
        lan.publish(&format!("{D}/{command}/set"), payload, false)
            .await
            .unwrap();
    }
    relay.set_open(true).await;
    let reopened = Instant::now();
    next_message(&mut watcher, "bridge online again", |m| {
        m.topic == format!("{B}/bridge/availability") && m.payload == b"online"
    })
    .await;
    let recovery = reopened.elapsed();
    // A queued message would arrive before this one, and its effect would show first.
    lan.subscribe(&format!("{D}/state")).await.unwrap();
    lan.publish(&format!("{D}/cups/set"), "9", false)
        .await
        .unwrap();
    let state = next_message(&mut lan, "cups 9", |m| json(m)["cups"] == 9).await;
    let state = json(&state);
    println!(
        "FIGURE network partition: last will after the cut, bridge back {} ms after the network (cut {} ms)",
        ms(recovery),
        ms(reopened.duration_since(cut))
    );
    assert_eq!(state["mode"], "off", "{state}");
    assert!(lines_after(&sim, "B+1", cut).await.is_empty());
    assert!(!sim.snapshot().await.unwrap().device.heater_on);
    assert!(bridge
        .log()
        .iter()
        .all(|l| !l.contains("command accepted") || l.contains("SelectCups")));
}

/// The broker is not there when the bridge starts: the controller is polled (heater off first)
/// all the same, and the bridge connects when the broker appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_at_start_up_polls_safely_then_connects() {
    let mut broker = Broker::reserve(Setup::Shipped);
    let sim = simulator("faults", "no-broker", SimConfig::default()).await;
    let mut commands = sim.commands();
    let bridge = Bridge::start(
        sim.path(),
        &broker,
        &broker.credentials(User::Coffeebot),
        &[],
    );
    assert_eq!(
        commands.next(WAIT).await.map(|c| c.line),
        Some("B+0".to_owned())
    );
    for _ in 0..3 {
        assert!(commands.next_matching("S+?", WAIT).await.is_some());
    }
    assert!(bridge
        .wait_for_log("cannot reach the MQTT broker", WAIT)
        .is_some());
    let log = sim.command_log().await.unwrap();
    assert!(log.iter().all(|c| c.line != "B+1"), "{log:?}");
    assert!(!sim.snapshot().await.unwrap().device.heater_on);
    let started = Instant::now();
    broker.launch();
    let state = everything_back(&broker, |s| s["link"] == "up").await;
    println!(
        "FIGURE broker late: online with state and discovery {} ms after the broker started",
        ms(started.elapsed())
    );
    assert_eq!(state["heater"], "OFF");
    assert!(started.elapsed() < WAIT);
}

// ----- the serial port ----------------------------------------------------------------------

// Unplugging and replugging: tests/faults_serial.rs (a test binary of its own; see there).

/// Another process holds the port exclusively (TIOCEXCL, as tokio-serial and most serial
/// programs open it): one clear line in the log, retries, and the bridge connects once the
/// port is free. The bridge runs without CAP_SYS_ADMIN, as it does in production (non-root):
/// with it, the kernel ignores the exclusive flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_another_process_is_a_clear_error_and_retried() {
    let broker = Broker::start();
    let sim = simulator("faults", "held", SimConfig::default()).await;
    let holder =
        tokio_serial::SerialStream::open(&tokio_serial::new(sim.path().to_string_lossy(), 115_200))
            .expect("the test holds the port");
    let mut watcher = broker.lan_client(Login::User(User::HomeAssistant)).await;
    watcher.subscribe(&format!("{D}/state")).await.unwrap();
    let process = Process {
        wrapper: &["setpriv", "--bounding-set=-sys_admin", "--"],
        ..Process::default()
    };
    let login = broker.credentials(User::Coffeebot);
    let bridge = Bridge::start_with(process, sim.path(), &broker, &login, &[]);
    let line = bridge
        .wait_for_log("cannot open", WAIT)
        .expect("an error line");
    assert!(line.contains("busy") && line.contains("retrying"), "{line}");
    assert!(line.contains(&sim.path().display().to_string()), "{line}");
    next_message(&mut watcher, "link down", |m| {
        json(m)["link"] == "down" && has_fault(&json(m), "link_down")
    })
    .await;
    let released = Instant::now();
    drop(holder);
    next_message(&mut watcher, "link up", |m| json(m)["link"] == "up").await;
    println!(
        "FIGURE port held: connected {} ms after the other process let go",
        ms(released.elapsed())
    );
    let log = bridge.log();
    let errors = log.iter().filter(|l| l.contains("cannot open")).count();
    assert_eq!(errors, 1, "one line per distinct error: {log:#?}");
}

// ----- the controller -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reboot_mid_brew_ends_the_brew_and_never_re_enables() {
    let mut rig = mid_brew("reboot", &[]).await;
    let rebooted = Instant::now();
    rig.sim.reboot(true).await.unwrap();
    rig.event("controller_rebooted").await;
    let aborted = rig.event("brew_aborted").await;
    assert_eq!(aborted["reason"], "controller_rebooted");
    let state = rig
        .state_where("off, one reboot", |s| {
            s["mode"] == "off" && s["controller_reboots"] == 1 && s["heater"] == "OFF"
        })
        .await;
    println!(
        "FIGURE controller reboot: brew ended and published {} ms after the reboot",
        ms(rebooted.elapsed())
    );
    assert_eq!(state["faults"], serde_json::json!([]));
    // Nothing after the bridge's B+0 that answered the reboot (the B+1 before it went out
    // while the cut reply was still on its way).
    polls(&rig.sim, 2).await;
    let off = lines_after(&rig.sim, "B+0", rebooted).await[0].at;
    assert!(rig.feeds_after(off).await.is_empty());
}

/// A hung firmware (no replies) and a controller that answers nothing but garbage both trip
/// `stale_telemetry`; a burst of garbage between good replies does not. A dead ultrasonic
/// ranger hangs the real firmware's whole loop, its heater time-out included: the relay stays
/// on until the watchdog reboots the board, 5 s after the last line it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_hang_trips_stale_telemetry() {
    let mut rig = mid_brew("hang", &[("SAFETY__STALE_AFTER_S", "2")]).await;
    let hung = Instant::now();
    rig.sim.hang(true).await.unwrap();
    let tripped = rig.trips("stale_telemetry").await.duration_since(hung);
    let off = rig.relay(false).await;
    println!(
        "FIGURE controller hang: relay off {} ms (the controller's watchdog), stale_telemetry {} ms after the hang",
        ms(off.duration_since(hung)),
        ms(tripped)
    );
    assert!(tripped < Duration::from_secs(4));
    assert!(off.duration_since(hung) < WATCHDOG_TIMEOUT + Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_skipped_and_a_controller_answering_only_garbage_trips_stale_telemetry() {
    let mut rig = Rig::start("garbage", &[SLOW_BREW, ("SAFETY__STALE_AFTER_S", "2")]).await;
    let first = rig.brewing(2).await;
    // Noise on the line between replies: skipped, the brew goes on.
    let mut noise = vec![0xff, 0x00, b'T', b'+', b'\n', b'W', b'+', b'x', b'\n'];
    noise.extend(std::iter::repeat_n(b'A', 1000));
    noise.extend_from_slice(b"\r\nB+7\nT+\n\xc3\x28\n");
    rig.sim.garbage(noise).await.unwrap();
    keeps_seeing(&rig.sim, "B+1", 8, Duration::from_millis(1000)).await;
    let state = rig.state_where("still brewing", |_| true).await;
    assert_eq!(state["mode"], "brewing", "{state}");
    assert!(rig.feeds_after(first.at).await.len() >= 8);
    // Now the controller answers nothing but garbage.
    rig.sim.hang(true).await.unwrap();
    let since = Instant::now();
    let sim = rig.sim.clone();
    let spam = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if sim.garbage(&b"W+\xfe\xfe\nT+??\nB+2\n"[..]).await.is_err() {
                return;
            }
        }
    });
    let tripped = rig.trips("stale_telemetry").await.duration_since(since);
    spam.abort();
    println!(
        "FIGURE garbage-only controller: stale_telemetry {} ms after the last good reply",
        ms(tripped)
    );
    // The hung loop leaves the relay to the watchdog (see controller_hang_trips_stale_telemetry).
    let off = rig.relay(false).await;
    assert!(off.duration_since(since) < WATCHDOG_TIMEOUT + Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_crc_errors_trip_sensor_error() {
    let mut rig = mid_brew("crc", &[]).await;
    let injected = Instant::now();
    rig.sim.crc_error(true).await.unwrap();
    rig.event_where("fault", |e| e["reason"] == "sensor_error")
        .await;
    let aborted = rig.event("brew_aborted").await;
    assert_eq!(aborted["reason"], "sensor_error");
    let state = rig
        .state_where("sensor error", |s| has_fault(s, "sensor_error"))
        .await;
    assert_eq!(state["temperature_c"], Value::Null, "{state}");
    let off = rig.relay(false).await;
    println!(
        "FIGURE CRC error: relay off {} ms after the first -1000.0",
        ms(off.duration_since(injected))
    );
    // A start is refused while it holds.
    rig.heater_on_refused("sensor_error").await;
    assert!(rig.feeds_after(off).await.is_empty());
}

/// The first reply of a firmware that answers before its first reading carries the largest
/// double for both sensors: never shown as a number, reported as `sensor_error` until a real
/// reading comes, and a start is refused meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dbl_max_first_reading_is_no_reading() {
    let mut rig = Rig::start("dbl-max", &[]).await;
    rig.command("heater", "ON").await;
    rig.state_where("manual", |s| s["heater"] == "ON").await;
    rig.sim
        .inject(Fault::AnswerBeforeFirstReading(true))
        .await
        .unwrap();
    let old = rig.watcher.seen().len();
    rig.sim.reboot(false).await.unwrap();
    rig.event("controller_rebooted").await;
    rig.event_where("fault", |e| e["reason"] == "sensor_error")
        .await;
    rig.state_where("a valid reading again", |s| {
        s["temperature_c"].is_number() && !has_fault(s, "sensor_error")
    })
    .await;
    for m in &rig.watcher.seen()[old..] {
        if m.topic == format!("{D}/state") {
            let s = json(m);
            let t = s["temperature_c"].as_f64().unwrap_or(0.0);
            let w = s["water_distance_in"].as_f64().unwrap_or(0.0);
            assert!((-20.0..=125.0).contains(&t), "{s}");
            assert!(w < 1000.0, "{s}");
        }
    }
    assert!(!rig.sim.snapshot().await.unwrap().device.heater_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_heater_trips_heater_mismatch_and_off_keeps_being_sent() {
    let mut rig = mid_brew("stuck", &[]).await;
    rig.sim.stuck_heater(true).await.unwrap();
    let stopped = Instant::now();
    rig.command("brew", "STOP").await;
    rig.event_where("fault", |e| e["reason"] == "heater_mismatch")
        .await;
    let tripped = stopped.elapsed();
    let state = rig
        .state_where("mismatch", |s| has_fault(s, "heater_mismatch"))
        .await;
    // The switch shows what the controller reports, not what was asked.
    assert_eq!(state["heater"], "ON", "{state}");
    assert_eq!(state["mode"], "off");
    // B+0 goes on at the feed pace, never a B+1.
    keeps_seeing(&rig.sim, "B+0", 4, Duration::from_millis(600)).await;
    let first_off = lines_after(&rig.sim, "B+0", stopped).await[0].at;
    assert!(rig.feeds_after(first_off).await.is_empty());
    rig.heater_on_refused("heater_mismatch").await;
    println!(
        "FIGURE stuck relay: heater_mismatch published {} ms after STOP",
        ms(tripped)
    );
    // The relay is freed: the fault clears.
    rig.sim.stuck_heater(false).await.unwrap();
    rig.state_where("mismatch cleared", |s| {
        !has_fault(s, "heater_mismatch") && s["heater"] == "OFF"
    })
    .await;
}

// ----- the bridge's own process -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_brew_the_controller_cuts_the_heater_and_the_will_says_offline() {
    let mut rig = mid_brew("sigkill", &[]).await;
    assert!(rig.sim.snapshot().await.unwrap().device.heater_on);
    let sim = rig.sim.clone();
    let relay_off = tokio::spawn(async move { relay(&sim, false).await });
    let killed = Instant::now();
    rig.bridge.kill();
    next_message(&mut rig.watcher, "last will", |m| {
        m.topic == format!("{B}/bridge/availability") && m.payload == b"offline"
    })
    .await;
    let offline = killed.elapsed();
    let to_off = relay_off.await.unwrap().duration_since(killed);
    println!(
        "FIGURE SIGKILL: relay off {} ms after the kill (controller timeout); last will {} ms",
        ms(to_off),
        ms(offline)
    );
    assert!(to_off < Duration::from_millis(1500), "{to_off:?}");
}

async fn signal_mid_brew_exits_cleanly(name: &str, signal: &str) {
    let mut rig = Rig::start(name, &[SLOW_BREW]).await;
    rig.brewing(2).await;
    let sent = Instant::now();
    rig.bridge.signal(signal);
    let status = rig
        .bridge
        .wait_exit(Duration::from_secs(2))
        .expect("exited within 2 s");
    let exited = sent.elapsed();
    assert!(status.success(), "{status}");
    let log = rig.sim.command_log().await.unwrap();
    assert_eq!(log.last().map(|c| c.line.as_str()), Some("B+0"), "{log:?}");
    assert!(!rig.sim.snapshot().await.unwrap().device.heater_on);
    // What a client connecting now is told: both availabilities are retained `offline`. (The
    // bridge published them before its clean DISCONNECT, so no last will was involved.)
    let mut fresh = rig
        .broker
        .lan_client(Login::User(User::HomeAssistant))
        .await;
    for topic in [
        format!("{D}/availability"),
        format!("{B}/bridge/availability"),
    ] {
        let retained = fresh.subscribe_and_collect(&topic, 1, WAIT).await.unwrap();
        assert_eq!(
            retained.last().map(|m| m.payload.as_slice()),
            Some(&b"offline"[..]),
            "{topic}"
        );
    }
    println!(
        "FIGURE SIG{signal} mid-brew: exit 0 after {} ms, B+0 last",
        ms(exited)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_brew_writes_off_last_publishes_offline_and_exits_0() {
    signal_mid_brew_exits_cleanly("sigterm", "TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_brew_writes_off_last_publishes_offline_and_exits_0() {
    signal_mid_brew_exits_cleanly("sigint", "INT").await;
}

/// Frozen for 3 s (SIGSTOP, as a stalled VM or a debugger would): the controller's own timeout
/// cuts the heater; after SIGCONT the bridge sees that its feed lapsed, ends the brew with a
/// `feed_gap` fault and does not switch the heater back on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_bridge_the_controller_cuts_the_heater_and_it_is_not_re_enabled() {
    let mut rig = mid_brew("sigstop", &[]).await;
    let stopped = Instant::now();
    rig.bridge.signal("STOP");
    let off = rig.relay(false).await;
    // The injected fault: the process stays frozen for 3 s in all.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed())).await;
    let resumed = Instant::now();
    rig.bridge.signal("CONT");
    rig.event_where("fault", |e| e["reason"] == "feed_gap")
        .await;
    let noticed = resumed.elapsed();
    let aborted = rig.event("brew_aborted").await;
    assert_eq!(aborted["reason"], "feed_gap");
    let state = rig
        .state_where("off after the freeze", |s| s["mode"] == "off")
        .await;
    // The latest trip is feed_gap, or stale_telemetry when the freeze outlasted
    // safety.stale_after_s (3 s) and the replies waiting to be read had not been read yet.
    let last = &state["last_fault"]["reason"];
    assert!(last == "feed_gap" || last == "stale_telemetry", "{state}");
    polls(&rig.sim, 2).await;
    let feeds = rig.feeds_after(resumed).await;
    assert!(feeds.is_empty(), "re-enabled after SIGCONT: {feeds:?}");
    assert!(!rig.sim.snapshot().await.unwrap().device.heater_on);
    println!(
        "FIGURE SIGSTOP 3 s: relay off {} ms after the freeze (controller timeout); feed_gap published {} ms after SIGCONT",
        ms(off.duration_since(stopped)),
        ms(noticed)
    );
    // A new start command heats again.
    rig.command("heater", "ON").await;
    rig.relay(true).await;
}

// ----- hostile command traffic --------------------------------------------------------------

/// The largest gap between consecutive `B+1` accepted by the controller from the last one at
/// or before `from` to the first one at or after `to`.
fn max_feed_gap(log: &[CommandEvent], from: Instant, to: Instant) -> Duration {
    let feeds: Vec<Instant> = log
        .iter()
        .filter(|c| c.line == "B+1")
        .map(|c| c.at)
        .collect();
    let first = feeds.iter().rposition(|t| *t <= from).expect("fed before");
    let last = feeds.iter().position(|t| *t >= to).expect("fed after");
    feeds[first..=last]
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// The simulator's log once it holds a `B+1` after `t`.
async fn log_fed_after(sim: &SimHandle, t: Instant) -> Vec<CommandEvent> {
    let mut commands = sim.commands();
    if lines_after(sim, "B+1", t).await.is_empty() {
        assert!(commands.next_matching("B+1", WAIT).await.is_some());
    }
    sim.command_log().await.unwrap()
}

fn mosquitto_pub(broker: &Broker, user: User, args: &[&str]) -> Command {
    let login = broker.credentials(user);
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", broker.host(), "-p", &broker.lan_port().to_string()])
        .args(["-u", &login.username, "-P", &login.password])
        .args(args);
    cmd
}

/// 10,000 commands as fast as one client sends them while the heater is on: the feed cadence
/// holds, memory stays bounded, and every rejection is accounted for. (The metrics endpoint is
/// built elsewhere; here the accounting is the bridge's log and the `command_rejected` events.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_10000_commands_keeps_the_feed_and_memory_bounded() {
    const N: usize = 10_000;
    // mosquitto queues at most 1000 QoS 1 messages for a client that reads slower than the
    // flood comes, and drops the rest (max_queued_messages): lift that here, so that every
    // message reaches the bridge and the accounting below is the bridge's alone.
    let mut rig = Rig::start_with(
        "flood",
        &[],
        Launch {
            broker_conf: "max_queued_messages 20000",
            ..Launch::default()
        },
    )
    .await;
    rig.command("heater", "ON").await;
    rig.state_where("heater ON", |s| s["heater"] == "ON").await;
    let rss_before = rig.bridge.proc_status_kb("VmRSS").unwrap();
    let mut events = rig.broker.lan_client(Login::User(User::Lan)).await;
    events.subscribe(&format!("{D}/event")).await.unwrap();
    // Three of four are invalid (out of range, not a number, unknown topic's payload), one of
    // four valid; all on the cups topic so the heater keeps running.
    let mut flood = mosquitto_pub(
        &rig.broker,
        User::Lan,
        &["-q", "1", "-t", &format!("{D}/cups/set"), "-l"],
    )
    .stdin(Stdio::piped())
    .spawn()
    .expect("mosquitto_pub");
    let mut stdin = flood.stdin.take().unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut buf = String::new();
        for i in 0..N {
            buf.push_str(match i % 4 {
                0 => "99\n",
                1 => "lots\n",
                2 => "-1\n",
                _ => "5\n",
            });
        }
        stdin.write_all(buf.as_bytes()).unwrap();
    });
    writer.join().unwrap();
    let status = tokio::task::spawn_blocking(move || flood.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let sent = started.elapsed();
    // Every message reached the bridge and was either accepted or rejected, in the log (the
    // ON at the start was accepted too).
    let handled = |log: &[String]| {
        let accepted = log
            .iter()
            .filter(|l| l.contains("command accepted"))
            .count();
        let rejected = log
            .iter()
            .filter(|l| l.contains("command rejected"))
            .count();
        (accepted.saturating_sub(1), rejected)
    };
    rig.bridge.wait_for_log_where(
        |log| {
            let (a, r) = handled(log);
            a + r >= N
        },
        WAIT,
    );
    let (accepted, rejected) = handled(&rig.bridge.log());
    let done = started.elapsed();
    let log = log_fed_after(&rig.sim, started + done).await;
    let gap = max_feed_gap(&log, started, started + done);
    let hwm = rig.bridge.proc_status_kb("VmHWM").unwrap();
    // The events: each rejection is published, unless a bounded queue was full. A marker
    // rejection after the flood arrives after every event of the flood that was published.
    rig.command("cups", "end-of-flood").await;
    next_message(&mut events, "the marker", |m| {
        json(m)["event_type"] == "command_rejected" && json(m)["payload"] == "end-of-flood"
    })
    .await;
    let rejected_events = events
        .seen()
        .iter()
        .filter(|m| json(m)["event_type"] == "command_rejected")
        .count()
        - 1;
    let rss_after = rig.bridge.proc_status_kb("VmRSS").unwrap();
    println!(
        "FIGURE flood: {N} commands sent in {} ms, handled in {} ms; accepted {accepted}, \
         rejected {rejected} (log), {rejected_events} command_rejected events received; \
         largest feed gap {} ms; VmRSS {rss_before} kB before, {rss_after} kB after, VmHWM {hwm} kB",
        ms(sent),
        ms(done),
        ms(gap)
    );
    assert_eq!(accepted + rejected, N, "messages unaccounted for");
    assert!(rejected >= N * 3 / 4);
    assert!(rejected_events <= rejected);
    assert!(gap < Duration::from_millis(1000), "feed gap {gap:?}");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} kB");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} -> {rss_after} kB"
    );
    assert!(rig.sim.snapshot().await.unwrap().device.heater_on);
}

/// Megabyte payloads on every command topic while the heater is on: the broker refuses them
/// where they arrive (its `max_packet_size`, the same 64 KiB the bridge announces), payloads
/// just under that limit reach the bridge and are rejected one by one, memory stays bounded and
/// the feed never lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_payloads_keep_the_feed_and_memory_bounded() {
    let mut rig = Rig::start("megabytes", &[]).await;
    rig.command("heater", "ON").await;
    rig.state_where("heater ON", |s| s["heater"] == "ON").await;
    let rss_before = rig.bridge.proc_status_kb("VmRSS").unwrap();
    let dir = rig.broker.dir().to_owned();
    let big = dir.join("big");
    let large = dir.join("large");
    std::fs::write(&big, vec![b'O'; 1 << 20]).unwrap();
    std::fs::write(&large, vec![b'1'; 60 * 1024]).unwrap();
    let started = Instant::now();
    let mut under_limit = 0;
    for round in 0..4 {
        for command in ["heater", "brew", "cups", "keep_warm", "controller"] {
            let file: &Path = if round % 2 == 0 { &big } else { &large };
            under_limit += usize::from(round % 2 == 1);
            let topic = format!("{D}/{command}/set");
            let mut cmd = mosquitto_pub(
                &rig.broker,
                User::Lan,
                &["-q", "1", "-t", &topic, "-f", &file.display().to_string()],
            );
            let status = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap();
            if round % 2 == 0 {
                assert!(!status.status.success(), "the broker took 1 MiB on {topic}");
            } else {
                assert!(status.status.success(), "{topic}: {status:?}");
            }
        }
    }
    assert!(rig
        .bridge
        .wait_for_log_count("payload too large", under_limit, WAIT));
    rig.command("cups", "3").await;
    rig.state_where("still serving", |s| s["cups"] == 3).await;
    let done = started.elapsed();
    let log = log_fed_after(&rig.sim, started + done).await;
    let gap = max_feed_gap(&log, started, started + done);
    let hwm = rig.bridge.proc_status_kb("VmHWM").unwrap();
    let rss_after = rig.bridge.proc_status_kb("VmRSS").unwrap();
    let too_large = rig.bridge.log_count("payload too large");
    println!(
        "FIGURE 1 MB payloads: 10 x 1 MB + 10 x 60 kB in {} ms; {too_large} rejected as too large; \
         largest feed gap {} ms; VmRSS {rss_before} kB before, {rss_after} kB after, VmHWM {hwm} kB",
        ms(done),
        ms(gap)
    );
    assert_eq!(too_large, under_limit, "the megabytes reached the bridge");
    assert!(gap < Duration::from_millis(1000), "feed gap {gap:?}");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} kB");
    assert!(rss_after < rss_before + 16 * 1024);
    let reconnects = rig.bridge.log_count("connected to the MQTT broker");
    assert_eq!(reconnects, 1);
    assert!(rig.sim.snapshot().await.unwrap().device.heater_on);
}

// ----- the wall clock -----------------------------------------------------------------------

fn rfc3339_secs(v: &Value) -> f64 {
    let t = humantime::parse_rfc3339(v.as_str().expect("a timestamp")).expect("RFC 3339");
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The wall clock jumps back a day and then forward two mid-brew (libfaketime moves
/// `CLOCK_REALTIME` and leaves `CLOCK_MONOTONIC` alone, as NTP or a user would): the brew ends
/// on time all the same, because every timer of the bridge runs on the monotonic clock (the
/// core takes `now: Instant` and clippy bans reading clocks in it: clippy.toml,
/// `#![deny(clippy::disallowed_methods)]` in src/core/mod.rs). The timestamps people see do
/// follow the wall clock, which shows the jumps took effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_jumps_do_not_move_the_brew_timers() {
    const CUPS: u32 = 4;
    let lib = support::libfaketime();
    let offset = std::env::temp_dir().join(format!("coffeebot-faketime-{}", std::process::id()));
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_file = offset.display().to_string();
    let mut rig = Rig::start_with(
        "clock",
        &[("BREW__PREHEAT_C", "20.0")],
        Launch {
            process: Process {
                env: &[
                    ("LD_PRELOAD", &lib),
                    ("FAKETIME_TIMESTAMP_FILE", &offset_file),
                    ("FAKETIME_NO_CACHE", "1"),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ],
                ..Process::default()
            },
            ..Launch::default()
        },
    )
    .await;
    let mut commands = rig.sim.commands();
    rig.command("brew", CUPS.to_string()).await;
    let started = rig.event("brew_started").await;
    let first = commands.next_matching("B+1", WAIT).await.expect("B+1");
    std::fs::write(&offset, "-1d\n").unwrap();
    let back = rig
        .state_where("a state a day back", |s| {
            rfc3339_secs(&s["updated_at"]) < rfc3339_secs(&started["at"]) - 80_000.0
        })
        .await;
    std::fs::write(&offset, "+1d\n").unwrap();
    let finished = rig.event("brew_finished").await;
    let off = commands.next_matching("B+0", WAIT).await.expect("B+0");
    let heated = off.at.duration_since(first.at);
    let jump = rfc3339_secs(&finished["at"]) - rfc3339_secs(&back["updated_at"]);
    let _ = std::fs::remove_file(&offset);
    println!(
        "FIGURE wall clock -1 d then +2 d mid-brew: a {CUPS}-cup brew (1 s a cup) heated {} ms; \
         the published timestamps moved {jump:.0} s",
        ms(heated)
    );
    assert_eq!(finished["reason"], "done");
    assert!(jump > 150_000.0, "the wall clock did not move: {jump} s");
    let expected = Duration::from_secs(u64::from(CUPS));
    assert!(
        heated > expected - Duration::from_millis(300)
            && heated < expected + Duration::from_millis(700),
        "a {expected:?} brew heated {heated:?}"
    );
}
