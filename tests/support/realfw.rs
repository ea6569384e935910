//! The real MrCoffeeBot firmware on a pseudo-terminal (`../shared/realfw`, see its README):
//! located beside the repository (or at `$COFFEEBOT_REALFW`), built once per test binary with
//! its own `build.sh`, and run per test with `run.sh LINK LOG` in a fresh temporary directory.
//! Its event log (`RELAY`, `BOOT`, `WDT_RESET`, `RX_DROP`, `RX`, …, each with `t=` in
//! `CLOCK_MONOTONIC` seconds) is parsed so tests assert what the firmware itself did, and its
//! control FIFO is written to inject faults. Terminated (SIGTERM) on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use super::child::spawn_reading_lines;

/// Environment variable naming the realfw folder (default: `../shared/realfw` from the
/// repository root).
pub const ROOT_VAR: &str = "COFFEEBOT_REALFW";

/// Environment variable that turns a missing realfw into a failure instead of a skip (set by
/// `scripts/test.sh` when it has built realfw, so CI cannot skip the suite by accident).
pub const REQUIRED_VAR: &str = "COFFEEBOT_REALFW_REQUIRED";

/// How long `run.sh` may take to print its JSON line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The realfw folder, built; or why the suite cannot run. Built once per test binary.
fn built_root() -> &'static Result<PathBuf, String> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = match std::env::var_os(ROOT_VAR) {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/realfw"),
        };
        let build = root.join("build.sh");
        if !build.is_file() {
            return Err(format!(
                "{} not found (set {ROOT_VAR} to the realfw folder)",
                build.display()
            ));
        }
        let out = Command::new(&build)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", build.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                build.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(root)
    })
}

/// The built realfw folder, or `None` after printing one line saying why `test` is skipped.
/// Panics instead when [`REQUIRED_VAR`] is set: then a missing firmware is a failure.
pub fn available(test: &str) -> Option<PathBuf> {
    match built_root() {
        Ok(root) => Some(root.clone()),
        Err(why) if std::env::var_os(REQUIRED_VAR).is_some() => {
            panic!("realfw is required ({REQUIRED_VAR}) but unusable: {why}")
        }
        Err(why) => {
            println!("SKIPPED {test}: the real-firmware suite needs realfw: {why}");
            None
        }
    }
}

/// One line of the event log: `KIND t=… key=value key="quoted"…`.
#[derive(Clone, Debug)]
pub struct Event {
    /// Everything before ` t=`, e.g. `RELAY 0`, `HOST open`, `RX`, `WDT_RESET`.
    pub kind: String,
    /// `CLOCK_MONOTONIC` seconds.
    pub t: f64,
    /// The whole line.
    pub raw: String,
}

impl Event {
    fn parse(line: &str) -> Option<Event> {
        let (kind, rest) = line.split_once(" t=")?;
        let t = rest.split_whitespace().next()?.parse().ok()?;
        Some(Event {
            kind: kind.to_owned(),
            t,
            raw: line.to_owned(),
        })
    }

    /// The value of `key=` (without quotes; escapes such as `\n` kept as written).
    pub fn field(&self, key: &str) -> Option<String> {
        let start = self.raw.find(&format!(" {key}="))? + key.len() + 2;
        let rest = &self.raw[start..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        out.push('\\');
                        out.extend(chars.next());
                    }
                    '"' => return Some(out),
                    c => out.push(c),
                }
            }
            Some(out)
        } else {
            rest.split_whitespace().next().map(str::to_owned)
        }
    }

    /// For `RX`: the line the firmware read, e.g. `B+1\n` (escaped as in the log).
    pub fn rx_line(&self) -> Option<String> {
        (self.kind == "RX").then(|| self.field("line")).flatten()
    }
}

/// A running `run.sh LINK LOG`.
pub struct Realfw {
    child: Option<Child>,
    root: PathBuf,
    env: Vec<(String, String)>,
    /// The temporary directory of this run.
    pub dir: PathBuf,
    /// The serial port path the bridge opens (a symlink to the pty).
    pub link: PathBuf,
    /// The event log.
    pub log: PathBuf,
    /// The control FIFO.
    pub ctl: PathBuf,
    /// The firmware build, as `run.sh` reports it (`6105f59`, `05a9a00`).
    pub firmware: String,
}

impl Realfw {
    /// Starts realfw from `root` with `REALFW_TRACE=1` (every line read and written is logged)
    /// and `env` (`REALFW_…`, value) on top, in a fresh directory; waits for its JSON line.
    pub fn start(root: &Path, env: &[(&str, &str)]) -> Realfw {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "coffeebot-realfw-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the realfw directory");
        let mut fw = Realfw {
            child: None,
            root: root.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            link: dir.join("tty"),
            log: dir.join("events.log"),
            ctl: dir.join("tty.ctl"),
            dir,
            firmware: String::new(),
        };
        fw.spawn();
        fw
    }

    fn spawn(&mut self) {
        let (tx, rx) = mpsc::channel();
        let mut command = Command::new(self.root.join("run.sh"));
        command
            .arg(&self.link)
            .arg(&self.log)
            .env("REALFW_TRACE", "1")
            .env("REALFW_LOG_STDERR", "0")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        // The first line is the JSON line; whatever else it prints is drained.
        let child = spawn_reading_lines(&mut command, "realfw run.sh", move |line| {
            let _ = tx.send(line);
            false
        });
        let first = rx.recv_timeout(READY_TIMEOUT);
        self.child = Some(child);
        let line = match first {
            Ok(line) => line,
            other => panic!("realfw did not print its JSON line: {other:?}"),
        };
        let info: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("realfw said {line:?}: {e}"));
        assert_eq!(info["ready"], true, "{info}");
        self.firmware = info["firmware"].as_str().unwrap_or_default().to_owned();
        if let Some(ctl) = info["ctl"].as_str() {
            self.ctl = PathBuf::from(ctl);
        }
    }

    /// Stops the board (SIGTERM: it removes the link and the FIFO, as a USB unplug removes
    /// the device node) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            // Polling for the exit with a deadline, not synchronisation.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the board again on the same link path (a replug), appending to the same log.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Writes one command to the control FIFO (`plate 40`, `crc 5`, `ranger dead`, `status`…).
    pub fn ctl(&self, command: &str) {
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.ctl)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.ctl.display()));
        fifo.write_all(format!("{command}\n").as_bytes())
            .expect("write to the control FIFO");
    }

    /// Every event logged so far.
    pub fn events(&self) -> Vec<Event> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(Event::parse)
            .collect()
    }

    /// Waits (at most `within`) until `pred` holds for the events logged so far; returns them
    /// then, or `None` on time-out. Blocks the thread (telling tokio so when inside it).
    pub fn wait_until(
        &self,
        within: Duration,
        pred: impl Fn(&[Event]) -> bool,
    ) -> Option<Vec<Event>> {
        let wait = || {
            let deadline = Instant::now() + within;
            loop {
                let events = self.events();
                if pred(&events) {
                    return Some(events);
                }
                if Instant::now() >= deadline {
                    return None;
                }
                // The log is a file another process appends to: polled, with a deadline.
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        }
    }

    /// Waits (at most `within`) for an event of `kind` for which `pred` holds, among all
    /// events; returns the first such.
    pub fn wait_for(
        &self,
        kind: &str,
        within: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<Event> {
        let found = |events: &[Event]| events.iter().find(|e| e.kind == kind && pred(e)).cloned();
        self.wait_until(within, |events| found(events).is_some())
            .and_then(|events| found(&events))
    }

    /// A marker in the firmware's clock: writes `status` to the control FIFO and returns the
    /// `t` of the `STATUS` line it logs (the board answers it at once).
    pub fn now_t(&self) -> f64 {
        let before = self.events().iter().filter(|e| e.kind == "STATUS").count();
        self.ctl("status");
        let events = self
            .wait_until(Duration::from_secs(5), |ev| {
                ev.iter().filter(|e| e.kind == "STATUS").count() > before
            })
            .expect("realfw logs STATUS");
        events
            .iter()
            .filter(|e| e.kind == "STATUS")
            .nth(before)
            .map(|e| e.t)
            .expect("the new STATUS line")
    }

    /// Every line the firmware read (`RX`), escaped as in the log, with its time.
    pub fn received(&self) -> Vec<(f64, String)> {
        self.events()
            .iter()
            .filter_map(|e| e.rx_line().map(|l| (e.t, l)))
            .collect()
    }

    /// The whole log, for a failure message.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Realfw {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- realfw log ({}) ---", self.log.display());
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            // The tail is what explains a failure; the trace makes the whole log long.
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where [`figure`] collects the measured figures of a run (`scripts/test.sh` prints it).
pub fn figures_file() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("realfw-figures.txt")
}

/// Reports a measured figure: on stderr, and appended to [`figures_file`], since the test
/// harness hides the output of passing tests.
pub fn figure(line: &str) {
    eprintln!("FIGURE {line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(figures_file())
    {
        let _ = writeln!(f, "FIGURE {line}");
    }
}
