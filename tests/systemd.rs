//! systemd integration of `coffeebot run` as a separate process: the notification protocol on a
//! datagram socket given as `NOTIFY_SOCKET` (as systemd gives it), and the unit's sandbox.
//!
//! - READY=1 only once the controller answers and the broker connection is up, with the start
//!   timeout extended while it waits; WATCHDOG=1 at half of `WATCHDOG_USEC`; no ping while the
//!   process is stopped (SIGSTOP); STOPPING=1 at SIGTERM.
//! - The binary runs a brew and stops cleanly under the unit's own SystemCallFilter= and
//!   RestrictAddressFamilies=, applied with libseccomp by `support/unit-seccomp-exec.py`
//!   (systemd is not PID 1 where the tests run, so `systemd-run -p` cannot apply them).

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coffeebot::sim::{SimConfig, SimHandle, Simulator};
use support::bridge::{Bridge, Process};
use support::mosquitto::{json, lan_command, next_message, Broker, Login, Setup, User};

const WAIT: Duration = Duration::from_secs(10);
/// `WATCHDOG_USEC` the tests give: pings are expected every 500 ms.
const WATCHDOG: Duration = Duration::from_secs(1);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coffeebot-systemd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn simulator(dir: &Path) -> SimHandle {
    Simulator::start(SimConfig::default(), dir.join("tty"))
        .await
        .expect("simulator starts")
}

/// The service manager's end: a datagram socket, and a thread that timestamps each message.
struct Manager {
    path: PathBuf,
    messages: mpsc::Receiver<(Instant, String)>,
}

impl Manager {
    fn bind(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), text)).is_err() {
                    break;
                }
            }
        });
        Manager { path, messages }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.path.to_string_lossy().into_owned()),
            ("WATCHDOG_USEC", WATCHDOG.as_micros().to_string()),
        ]
    }

    /// The next message with a line `line` (e.g. `READY=1`), within `within`; the messages
    /// skipped on the way are returned too.
    fn until(&self, line: &str, within: Duration) -> (Option<(Instant, String)>, Vec<String>) {
        self.until_where(within, |m| has(m, line))
    }

    /// The next message for which `pred` holds, within `within`, and the ones skipped.
    fn until_where(
        &self,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (Option<(Instant, String)>, Vec<String>) {
        let deadline = Instant::now() + within;
        let mut skipped = Vec::new();
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return (None, skipped);
            };
            match self.messages.recv_timeout(left) {
                Ok((at, text)) if pred(&text) => return (Some((at, text)), skipped),
                Ok((_, text)) => skipped.push(text),
                Err(_) => return (None, skipped),
            }
        }
    }

    /// Every message already received.
    fn drain(&self) -> Vec<String> {
        self.messages.try_iter().map(|(_, text)| text).collect()
    }
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn status(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// Waits until the process is stopped (`T` in `/proc/PID/stat`).
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not stop: {stat}"
        );
        std::thread::yield_now();
    }
}

fn start(
    wrapper: &[&str],
    manager: &Manager,
    sim: &SimHandle,
    broker: &Broker,
    extra: &[(&str, &str)],
) -> Bridge {
    let env = manager.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let process = Process {
        wrapper,
        env: &env,
        ..Process::default()
    };
    Bridge::start_with(
        process,
        sim.path(),
        broker,
        &broker.credentials(User::Coffeebot),
        extra,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_both_ends_then_pings_until_stopped() {
    let dir = temp_dir("notify");
    let manager = Manager::bind(&dir);
    let sim = simulator(&dir).await;
    // The broker is not there yet: the controller answers first.
    let mut broker = Broker::reserve(Setup::Shipped);
    let mut bridge = start(&[], &manager, &sim, &broker, &[]);

    let (waiting, before) = manager.until_where(WAIT, |m| {
        status(m).is_some_and(|s| s.contains("link=up broker=down"))
    });
    assert!(
        waiting.is_some(),
        "a STATUS saying the controller answers and the broker is down; got {before:?}"
    );
    assert!(
        before
            .iter()
            .chain(waiting.iter().map(|(_, m)| m))
            .all(|m| !has(m, "READY=1") && !has(m, "WATCHDOG=1")),
        "neither READY=1 nor pings before the broker: {before:?} {waiting:?}"
    );
    // The extension goes out at the first message and then every 10 s: it may already be
    // among the messages seen, else the next one comes within 10 s.
    let extend = "EXTEND_TIMEOUT_USEC=30000000";
    let extended = before
        .iter()
        .chain(waiting.iter().map(|(_, m)| m))
        .any(|m| has(m, extend))
        || manager.until(extend, WAIT + WAIT).0.is_some();
    assert!(extended, "the start timeout is extended while waiting");

    broker.launch();
    let (ready, skipped) = manager.until("READY=1", WAIT);
    let (ready_at, ready) = ready.unwrap_or_else(|| panic!("no READY=1; got {skipped:?}"));
    assert!(
        status(&ready).is_some_and(|s| s.contains("link=up broker=up")),
        "READY comes with the status that shows both ends up: {ready}"
    );

    // Pings at half of WATCHDOG_USEC.
    let mut pings = vec![ready_at];
    while pings.len() < 7 {
        let (ping, _) = manager.until("WATCHDOG=1", WAIT);
        pings.push(ping.expect("WATCHDOG=1").0);
    }
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    println!("watchdog ping gaps: {gaps:?}");
    let half = WATCHDOG / 2;
    for gap in &gaps {
        assert!(
            *gap >= half - Duration::from_millis(50) && *gap < WATCHDOG,
            "ping gaps near {half:?} and below the watchdog: {gaps:?}"
        );
    }

    // Frozen: no pings (systemd would kill and restart it after WATCHDOG_USEC).
    bridge.signal("STOP");
    wait_stopped(bridge.pid());
    manager.drain();
    let frozen = manager.until("WATCHDOG=1", 3 * WATCHDOG);
    assert!(frozen.0.is_none(), "a ping while stopped: {frozen:?}");
    bridge.signal("CONT");
    let (resumed, _) = manager.until("WATCHDOG=1", WAIT);
    assert!(resumed.is_some(), "pings resume after SIGCONT");

    // SIGTERM: STOPPING=1, then no more pings, and a clean exit.
    bridge.sigterm();
    let (stopping, _) = manager.until("STOPPING=1", WAIT);
    assert!(stopping.is_some(), "STOPPING=1 at SIGTERM");
    let status = bridge.wait_exit(WAIT).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let after = manager.drain();
    assert!(
        after.iter().all(|m| !has(m, "WATCHDOG=1")),
        "no ping after STOPPING=1: {after:?}"
    );
    sim.shutdown().await.ok();
}

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/coffeebot.service")
}

fn seccomp_wrapper() -> [String; 2] {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/unit-seccomp-exec.py");
    [
        script.to_string_lossy().into_owned(),
        unit_file().to_string_lossy().into_owned(),
    ]
}

#[test]
fn the_seccomp_wrapper_kills_what_the_unit_forbids() {
    let [script, unit] = seccomp_wrapper();
    // chroot is in @privileged, which the unit removes: SIGSYS, as under systemd.
    let status = Command::new(&script)
        .args([&unit, "/usr/bin/python3", "-c", "import os; os.chroot('/')"])
        .status()
        .expect("run the wrapper (Debian: python3-seccomp, systemd)");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(31), "killed by SIGSYS: {status:?}");
    // A packet socket is outside RestrictAddressFamilies=: refused, not killed.
    let status = Command::new(&script)
        .args([
            &unit,
            "/usr/bin/python3",
            "-c",
            "import socket, sys\ntry:\n socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\nexcept OSError as e:\n sys.exit(0 if e.errno == 97 else 1)\nsys.exit(2)",
        ])
        .status()
        .expect("run the wrapper");
    assert_eq!(status.code(), Some(0), "EAFNOSUPPORT: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_works_under_the_units_system_call_filter() {
    let dir = temp_dir("seccomp");
    let manager = Manager::bind(&dir);
    let sim = simulator(&dir).await;
    let broker = Broker::start_with(Setup::Shipped);
    let mut watcher = broker
        .connect(
            support::mosquitto::Protocol::V311,
            support::mosquitto::Listener::Lan,
            Login::User(User::HomeAssistant),
        )
        .await
        .expect("watcher connects");
    assert!(watcher.subscribe_many(&["coffeebot/#"]).await.unwrap());
    let [script, unit] = seccomp_wrapper();
    let wrapper = [script.as_str(), unit.as_str()];
    let mut bridge = start(&wrapper, &manager, &sim, &broker, &[]);
    let (ready, skipped) = manager.until("READY=1", WAIT);
    assert!(ready.is_some(), "READY=1 under the filter; got {skipped:?}");

    // A brew: MQTT in, B+1 out on the serial port, the heater on, the brew finished.
    lan_command(&broker, "brew", "1").await;
    next_message(&mut watcher, "brew_finished", |m| {
        m.topic == "coffeebot/coffeepot/event" && json(m)["event_type"] == "brew_finished"
    })
    .await;
    assert!(bridge.is_running(), "still running under the filter");

    bridge.sigterm();
    let status = bridge.wait_exit(WAIT).expect("exits after SIGTERM");
    assert!(
        status.success(),
        "a clean exit under the filter (SIGSYS would show here): {status:?}"
    );
    sim.shutdown().await.ok();
}
