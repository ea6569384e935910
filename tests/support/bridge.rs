//! The bridge as a real process: `coffeebot run` configured through `COFFEEBOT__…`
//! environment variables, its stdout captured line by line so tests can wait for a log line,
//! and signals to stop it. Killed on drop.
//!
//! The binary is this build's, unless the environment names another one, so the same tests
//! prove a cross-compiled binary under emulation (scripts/test.sh does, for each Raspberry Pi
//! target):
//!
//! - `COFFEEBOT_TEST_BIN`: the `coffeebot` binary to run instead of this build's;
//! - `COFFEEBOT_TEST_WRAPPER`: a program and its arguments, separated by spaces, that runs it
//!   (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`); a test's own wrapper goes before it.
//!
//! Under a wrapper such as qemu-user the process the test sees (its pid, its signals, its
//! `/proc` status) is the emulator running the bridge, which is what a signal or a kill on the
//! target would reach too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::child::spawn_reading_lines;
use super::mosquitto::{Broker, Credentials};

/// Settings that make the tests fast: short intervals, a quick brew, no HTTP server.
pub const FAST: &[(&str, &str)] = &[
    ("MQTT__STATE_INTERVAL_S", "2"),
    ("MQTT__KEEP_ALIVE_S", "5"),
    ("BREW__SECONDS_PER_CUP", "1.0"),
    ("BREW__PREHEAT_C", "25.0"),
    ("BREW__PREHEAT_TIMEOUT_S", "30"),
    ("KEEP_WARM__AFTER_BREW", "false"),
    ("HTTP__LISTEN", ""),
    ("HTTP__OPS_LISTEN", ""),
];

/// The `coffeebot` binary the tests run: `COFFEEBOT_TEST_BIN`, or this build's.
pub fn binary_under_test() -> PathBuf {
    match std::env::var_os("COFFEEBOT_TEST_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_coffeebot")),
    }
}

/// The program and arguments that run [`binary_under_test`]: `COFFEEBOT_TEST_WRAPPER` split at
/// whitespace; empty when unset.
pub fn wrapper_under_test() -> Vec<String> {
    std::env::var("COFFEEBOT_TEST_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A running `coffeebot run`.
pub struct Bridge {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// The MQTT client id it connects with (unique per bridge).
    pub client_id: String,
}

/// How the bridge's process runs, beyond the usual: a wrapper program and its arguments (e.g.
/// `["setpriv", "--bounding-set=-sys_admin", "--"]`; empty: none), variables (full names, e.g.
/// `LD_PRELOAD`) added to its environment, and its `RUST_LOG` filter. The binary is
/// [`binary_under_test`], run through `wrapper`, then [`wrapper_under_test`].
#[derive(Clone, Copy)]
pub struct Process<'a> {
    pub wrapper: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    pub rust_log: &'a str,
}

impl Default for Process<'_> {
    fn default() -> Self {
        Process {
            wrapper: &[],
            env: &[],
            rust_log: "info",
        }
    }
}

impl Bridge {
    /// Starts the bridge on the simulator's `port`, against `broker`'s LAN listener with
    /// `login`, with [`FAST`] settings, then `extra` (`SECTION__KEY`, value) on top.
    pub fn start(
        port: &Path,
        broker: &Broker,
        login: &Credentials,
        extra: &[(&str, &str)],
    ) -> Bridge {
        Bridge::start_with(Process::default(), port, broker, login, extra)
    }

    /// [`Bridge::start`], the process run as `process` says.
    pub fn start_with(
        process: Process<'_>,
        port: &Path,
        broker: &Broker,
        login: &Credentials,
        extra: &[(&str, &str)],
    ) -> Bridge {
        let Process {
            wrapper,
            env,
            rust_log,
        } = process;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let client_id = format!(
            "coffeebot-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let binary = binary_under_test();
        let outer = wrapper_under_test();
        let mut program = wrapper
            .iter()
            .map(|s| s.to_string())
            .chain(outer)
            .map(OsString::from)
            .chain([binary.into_os_string()]);
        let mut cmd = Command::new(program.next().expect("a program to run"));
        cmd.args(program);
        cmd.envs(env.iter().copied());
        cmd.arg("run")
            .env_remove("COFFEEBOT_CONFIG")
            .env("RUST_LOG", rust_log)
            .env("COFFEEBOT__SERIAL__PORT", port)
            .env("COFFEEBOT__MQTT__HOST", broker.host())
            .env("COFFEEBOT__MQTT__PORT", broker.lan_port().to_string())
            .env("COFFEEBOT__MQTT__CLIENT_ID", &client_id)
            .env("COFFEEBOT__MQTT__USERNAME", &login.username)
            .env("COFFEEBOT__MQTT__PASSWORD", &login.password);
        for (key, value) in FAST.iter().chain(extra) {
            cmd.env(format!("COFFEEBOT__{key}"), value);
        }
        cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&log);
        let child = spawn_reading_lines(&mut cmd, "coffeebot", move |line| {
            keep.lock().expect("log lock").push(line.clone());
            tx.send(line).is_ok()
        });
        Bridge {
            child: Some(child),
            lines,
            log,
            client_id,
        }
    }

    /// Waits (at most `within`) for a log line containing `text`, looking at the lines
    /// already logged first; returns it. Blocks the thread: inside a multi-threaded tokio runtime it tells tokio so first.
    pub fn wait_for_log(&self, text: &str, within: Duration) -> Option<String> {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.wait_for_log_blocking(text, within))
        } else {
            self.wait_for_log_blocking(text, within)
        }
    }

    fn wait_for_log_blocking(&self, text: &str, within: Duration) -> Option<String> {
        if let Some(line) = self.log().into_iter().find(|l| l.contains(text)) {
            return Some(line);
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits (at most `within`) until `count` lines containing `text` have been logged;
    /// returns whether they were.
    pub fn wait_for_log_count(&self, text: &str, count: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let wait = || loop {
            if self.log().iter().filter(|l| l.contains(text)).count() >= count {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            // Any new line wakes the check; the reader thread has stored it before sending.
            if self.lines.recv_timeout(left).is_err() {
                return self.log().iter().filter(|l| l.contains(text)).count() >= count;
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        }
    }

    /// Waits (at most `within`) until `pred` holds for the lines logged so far (checked again
    /// at every new line); returns whether it did.
    pub fn wait_for_log_where(&self, pred: impl Fn(&[String]) -> bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let wait = || loop {
            if pred(&self.log()) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if self.lines.recv_timeout(left).is_err() {
                return pred(&self.log());
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        }
    }

    /// Every line logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// How many lines logged so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends SIGTERM (through the shell's builtin `kill`; std can only SIGKILL).
    pub fn sigterm(&self) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.pid())])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Sends `signal` (a name the shell's `kill` knows: `INT`, `STOP`, `CONT`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", self.pid())])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) in kB; `None` once the
    /// process is gone.
    pub fn proc_status_kb(&self, field: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (at most `within`) for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.wait_exit_blocking(within))
        } else {
            self.wait_exit_blocking(within)
        }
    }

    fn wait_exit_blocking(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("poll coffeebot") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling for the exit with a deadline, not synchronisation.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("poll coffeebot").is_none(),
            None => false,
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- coffeebot log ---");
            for line in self.log() {
                eprintln!("{line}");
            }
        }
    }
}
