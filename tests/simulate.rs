//! `coffeebot run --simulate` as a process: its simulator lives in `coffeebot-sim-<pid>` under
//! the temporary directory, and that folder is gone when the run ends — on SIGTERM, on SIGINT,
//! and when the run fails. Each run gets a temporary directory of its own (`TMPDIR`), so the
//! test sees exactly what the run left there.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::bridge::{binary_under_test, wrapper_under_test};

const WAIT: Duration = Duration::from_secs(20);
const STARTED: &str = "simulated controller started";

/// What is in `dir`, by name.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Starts `coffeebot run --simulate` with `tmpdir` as its temporary directory, no broker to
/// talk to (it keeps retrying) and `http_listen` as its public address; returns the process
/// and its stdout lines.
fn start(tmpdir: &Path, http_listen: &str) -> (Child, mpsc::Receiver<String>) {
    let mut program = wrapper_under_test();
    program.push(binary_under_test().to_string_lossy().into_owned());
    let mut cmd = Command::new(&program[0]);
    // Nothing listens on a port that was free a moment ago: the MQTT side just retries.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    cmd.args(&program[1..])
        .args(["run", "--simulate"])
        .env("TMPDIR", tmpdir)
        .env("RUST_LOG", "info")
        .env("COFFEEBOT__MQTT__HOST", "127.0.0.1")
        .env("COFFEEBOT__MQTT__PORT", closed.port().to_string())
        .env("COFFEEBOT__HTTP__LISTEN", http_listen)
        .env("COFFEEBOT__HTTP__OPS_LISTEN", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn coffeebot");
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    (child, rx)
}

/// Waits for a line containing `text`; returns it.
fn wait_line(lines: &mpsc::Receiver<String>, text: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {text:?}: {e}"),
        }
    }
}

/// Waits for the process to exit (killing it after [`WAIT`]).
fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("coffeebot did not exit");
        }
        // Polling for the exit with a deadline.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, name: &str) {
    // The shell's builtin `kill`: std can only send SIGKILL.
    let status = Command::new("sh")
        .args(["-c", &format!("kill -{name} {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_simulator_folder_is_removed_on_sigterm_and_sigint() {
    for sig in ["TERM", "INT"] {
        let tmpdir = support::fresh_dir("simulate-test", sig);
        let (mut child, lines) = start(&tmpdir, "");
        let line = wait_line(&lines, STARTED);
        let made = entries(&tmpdir);
        assert!(
            made.len() == 1 && made[0].starts_with("coffeebot-sim-"),
            "SIG{sig}: {made:?}"
        );
        assert!(line.contains(&made[0]), "{line}");
        signal(&child, sig);
        let status = wait_exit(&mut child);
        assert!(status.success(), "SIG{sig}: {status}");
        assert_eq!(
            entries(&tmpdir),
            Vec::<String>::new(),
            "SIG{sig}: left behind"
        );
        std::fs::remove_dir_all(&tmpdir).unwrap();
    }
}

#[test]
fn the_simulator_folder_is_removed_when_the_run_fails() {
    let tmpdir = support::fresh_dir("simulate-test", "fails");
    // The public HTTP address is taken: the run starts the simulator, then fails.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut child, lines) = start(&tmpdir, &taken.local_addr().unwrap().to_string());
    wait_line(&lines, STARTED);
    let status = wait_exit(&mut child);
    assert!(!status.success(), "{status}");
    assert_eq!(entries(&tmpdir), Vec::<String>::new(), "left behind");
    std::fs::remove_dir_all(&tmpdir).unwrap();
}
