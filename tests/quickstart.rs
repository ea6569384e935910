//! The README's first quick-start command, run as a user runs it: `scripts/quickstart.sh` starts
//! the shipped pair of brokers and the bridge on the simulator, and the lines it prints work as
//! printed — watching, brewing, the public broker, the status page and the metrics. Ctrl-C (a
//! SIGINT to the whole process group, as a terminal sends it) stops everything and leaves
//! nothing behind.

mod support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::bridge::binary_under_test;
use support::child::spawn_reading_lines;
use support::http::request;
use support::listen::HeldPort;

/// How long the script may take to have both brokers up and print its lines.
const START: Duration = Duration::from_secs(30);

/// The lines of one child's output, as they come.
struct Output {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Output {
    /// Runs `command` in a process group of its own (as a shell runs a job), reading its
    /// standard output.
    fn spawn(mut command: Command, what: &str) -> Output {
        let (tx, lines) = mpsc::channel();
        command
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        let child = spawn_reading_lines(&mut command, what, move |line| {
            eprintln!("{line}");
            tx.send(line).is_ok()
        });
        Output {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// A shell running `line` exactly as the script printed it.
    fn shell(line: &str, what: &str) -> Output {
        let mut command = Command::new("sh");
        command.args(["-c", line]);
        Output::spawn(command, what)
    }

    /// Sends `signal` (e.g. `-INT`) to the child's whole process group.
    fn signal_group(&self, signal: &str) -> bool {
        let group = format!("-{}", self.child.id());
        Command::new("kill")
            .args([signal, "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The first line (from now on) that `pred` accepts, within `within`; panics naming `what`.
    fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {within:?}; the output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the child to exit, at most `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            // Polling the child's exit: nothing else reports it.
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // A failed test leaves no process behind: the child's whole group (for the script:
        // the brokers and the bridge).
        if let Ok(None) = self.child.try_wait() {
            self.signal_group("-KILL");
        }
        let _ = self.child.wait();
    }
}

/// The printed command line after `heading` (the script prints each under a heading line).
fn line_after(seen: &[String], heading: &str) -> String {
    let at = seen
        .iter()
        .position(|l| l.contains(heading))
        .unwrap_or_else(|| panic!("the script printed no {heading:?}:\n{}", seen.join("\n")));
    seen[at + 1].trim().to_string()
}

/// The `http://127.0.0.1:PORT/` address printed after `label`.
fn address_after(seen: &[String], label: &str) -> SocketAddr {
    let line = seen
        .iter()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("the script printed no {label:?}"));
    let rest = &line[line.find("http://").expect("an http:// address") + "http://".len()..];
    let addr = rest.split('/').next().expect("an address");
    addr.parse().expect("an address like 127.0.0.1:8080")
}

/// Whether something accepts connections on loopback `port`.
fn listening(port: &str) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("a port"))).is_ok()
}

#[test]
fn the_quick_start_runs_as_printed_and_ctrl_c_leaves_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = support::fresh_dir("quickstart", "tmp");
    // The script's six ports, held free until it binds them (mosquitto and the bridge both
    // bind with SO_REUSEADDR, so a held port is theirs to take).
    let held: Vec<HeldPort> = (0..6)
        .map(|_| HeldPort::new().expect("a free loopback port"))
        .collect();
    let ports: Vec<String> = held.iter().map(|h| h.port().to_string()).collect();
    let mut script = Command::new("bash");
    script
        .arg(root.join("scripts/quickstart.sh"))
        .env("TMPDIR", &tmp)
        .env("QUICKSTART_MQTT_PORT", &ports[0])
        .env("QUICKSTART_FEED_PORT", &ports[1])
        .env("QUICKSTART_WS_PORT", &ports[2])
        .env("QUICKSTART_PUBLIC_PORT", &ports[3])
        .env("QUICKSTART_HTTP_PORT", &ports[4])
        .env("QUICKSTART_OPS_PORT", &ports[5])
        .env("QUICKSTART_BIN", binary_under_test())
        .env("RUST_LOG", "info")
        .env_remove("COFFEEBOT_CONFIG");
    let mut run = Output::spawn(script, "scripts/quickstart.sh");
    run.wait_for("the printed lines", START, |l| {
        l.contains("Ctrl-C stops everything")
    });

    let watch = line_after(&run.seen, "watch everything:");
    let brew = line_after(&run.seen, "brew 2 cups");
    let public = line_after(&run.seen, "what the public sees");
    let page = address_after(&run.seen, "the status page:");
    let ops = address_after(&run.seen, "metrics and probes:");
    assert!(
        watch.starts_with("mosquitto_sub ") && watch.contains(&ports[0]),
        "{watch}"
    );
    assert!(
        brew.starts_with("mosquitto_pub ") && brew.contains("brew/set -m 2"),
        "{brew}"
    );
    assert!(public.contains(&ports[3]), "{public}");

    // Watching, as printed: the bridge comes online with the controller answering.
    let mut lan = Output::shell(&watch, "the printed mosquitto_sub");
    lan.wait_for("a state with the controller answering", START, |l| {
        l.starts_with("coffeebot/coffeepot/state ") && l.contains(r#""link":"up""#)
    });
    let mut outside = Output::shell(&public, "the public mosquitto_sub");
    outside.wait_for("the state on the public broker", START, |l| {
        l.starts_with("coffeebot/coffeepot/state ")
    });

    // Brewing, as printed: the brew starts, and the public side sees it too.
    let sent = Output::shell(&brew, "the printed mosquitto_pub")
        .wait_exit(START)
        .expect("mosquitto_pub exits");
    assert!(sent.success(), "the printed mosquitto_pub failed: {sent}");
    lan.wait_for("the brew_started event", START, |l| {
        l.starts_with("coffeebot/coffeepot/event ") && l.contains(r#""event_type":"brew_started""#)
    });
    outside.wait_for("a preheating state on the public broker", START, |l| {
        l.contains(r#""mode":"preheating""#)
    });

    // The status page and the operator's side, at the printed addresses.
    let http = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let status = http.block_on(request(page, "GET", "/status.json", b""));
    assert_eq!(status.status, 200, "{}", status.body);
    assert!(
        status.body.contains(r#""mode":"preheating""#),
        "{}",
        status.body
    );
    let metrics = http.block_on(request(ops, "GET", "/metrics", b""));
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("coffeebot_"), "{}", metrics.body);
    let ready = http.block_on(request(ops, "GET", "/readyz", b""));
    assert_eq!(ready.status, 200, "{}", ready.body);

    // Ctrl-C: the terminal signals the whole foreground group.
    assert!(run.signal_group("-INT"), "SIGINT to the script's group");
    run.wait_for("the script's goodbye", START, |l| {
        l == "quickstart: stopped"
    });
    run.wait_exit(START).expect("the script exits after Ctrl-C");
    for (what, port) in [
        ("LAN broker", 0),
        ("public broker", 3),
        ("page", 4),
        ("ops", 5),
    ] {
        assert!(
            !listening(&ports[port]),
            "the {what} still listens after Ctrl-C"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .expect("the test's TMPDIR")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
    drop(held);
    let _ = std::fs::remove_dir_all(&tmp);
}
