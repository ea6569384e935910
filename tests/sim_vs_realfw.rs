//! The simulator against the real MrCoffeeBot firmware (`../shared/realfw`: the firmware's own
//! code on an emulated board, on a pseudo-terminal): the same command script goes to both, for
//! both builds, and what comes back must agree line by line in shape (digits aside), in reply
//! counts, FIFO loss, prefix matching, the 85.0 power-on reading, the heater time-out, `RESET`
//! and the watchdog. When `../shared/realfw` (or `$COFFEEBOT_REALFW`) is absent the test says
//! so in one `SKIPPED` line and checks the simulator alone (a failure instead when
//! `COFFEEBOT_REALFW_REQUIRED` is set, as `scripts/test.sh` does in CI).
//!
//! The script waits fixed times between steps because the behaviour under test is timing
//! (a 1 s heater time-out, a 5 s watchdog); every read is bounded by a window.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use coffeebot::sim::{Build, SimConfig, SimHandle, Simulator};
use std::io::BufRead as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout, Instant};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

const BANNER: &str = "MrCoffeeBot v2.0 Booted.";
/// How long a step listens for replies; the slowest reply comes 22 ms after its command.
const WINDOW: Duration = Duration::from_millis(300);

mod support;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coffeebot-vs-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What one run of the script saw, step by step.
#[derive(Debug, Default)]
struct Transcript {
    steps: Vec<(String, Vec<String>)>,
    /// Seconds from the last valid line (`RESETX`) to the watchdog's banner.
    watchdog_s: f64,
}

impl Transcript {
    fn step(&self, name: &str) -> &[String] {
        &self.steps.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Every step's lines with digits as `d`, for a comparison that ignores readings.
    fn shapes(&self) -> Vec<(String, Vec<String>)> {
        self.steps
            .iter()
            .filter(|(name, _)| name != "burst" && name != "end of burst")
            .map(|(name, lines)| {
                let shapes = lines
                    .iter()
                    .map(|l| {
                        l.chars()
                            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
                            .collect()
                    })
                    .collect();
                (name.clone(), shapes)
            })
            .collect()
    }
}

/// Reads lines until `window` passes without a complete line being needed.
async fn listen(port: &mut SerialStream, window: Duration) -> Vec<String> {
    listen_raw(port, window)
        .await
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What arrives within `window`, as text.
async fn listen_raw(port: &mut SerialStream, window: Duration) -> String {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 512];
    let end = Instant::now() + window;
    while let Ok(Ok(n)) = timeout(end - Instant::now(), port.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn send(port: &mut SerialStream, bytes: &[u8]) -> Vec<String> {
    port.write_all(bytes).await.unwrap();
    listen(port, WINDOW).await
}

/// The script. `port` is open, the board powered on within the last ~100 ms, its banner read.
async fn script(mut port: SerialStream) -> Transcript {
    let mut t = Transcript::default();
    let start = Instant::now();
    let step = |t: &mut Transcript, name: &str, lines: Vec<String>| {
        t.steps.push((name.to_owned(), lines));
    };
    let lines = send(&mut port, b"S+?\n").await;
    step(&mut t, "power-on S+?", lines);
    sleep((start + Duration::from_millis(1000)).saturating_duration_since(Instant::now())).await;
    let lines = send(&mut port, b"S+?\n").await;
    step(&mut t, "S+? after 1 s", lines);
    for (name, line) in [
        ("S+?junk", &b"S+?junk\n"[..]),
        ("s+?", b"s+?\n"),
        (" S+?", b" S+?\n"),
        ("S+? CRLF", b"S+?\r\n"),
        ("21 x + S+?", b"xxxxxxxxxxxxxxxxxxxxxS+?\n"),
        ("20 x + S+?", b"xxxxxxxxxxxxxxxxxxxxS+?\n"),
    ] {
        // Long lines in 8-byte pieces, as a host that never overflows the FIFO.
        let mut lines = Vec::new();
        for piece in line.chunks(8) {
            port.write_all(piece).await.unwrap();
            lines.extend(listen(&mut port, Duration::from_millis(40)).await);
        }
        lines.extend(listen(&mut port, WINDOW).await);
        step(&mut t, name, lines);
    }
    let lines = send(&mut port, b"B+10\n").await;
    step(&mut t, "B+10", lines);
    sleep(Duration::from_millis(1100)).await;
    let lines = send(&mut port, b"S+?\n").await;
    step(&mut t, "S+? 1.4 s after B+1", lines);
    let lines = send(&mut port, b"B+0\n").await;
    step(&mut t, "B+0", lines);
    let lines = send(&mut port, "S+?\n".repeat(10).as_bytes()).await;
    step(&mut t, "burst", lines);
    // The lost bytes may leave a partial line in the buffer: a `\n` ends it, and answers when
    // what was left is a whole `S+?` (where the loss falls is the loop's phase). A second `\n`
    // is then a lone newline on an empty buffer.
    let lines = send(&mut port, b"\n").await;
    step(&mut t, "end of burst", lines);
    let lines = send(&mut port, b"\n").await;
    step(&mut t, "lone newline", lines);
    port.write_all(b"RESETX\n").await.unwrap();
    let fed = Instant::now();
    let lines = listen(&mut port, WINDOW).await;
    step(&mut t, "RESETX", lines.clone());
    // Everything heard since, as one text: the real UART sends the banner over ~2 ms, so it can
    // straddle two listening windows.
    let mut heard = lines.join("\n");
    while !heard.contains(BANNER.trim_end()) && fed.elapsed() < Duration::from_secs(7) {
        heard.push_str(&listen_raw(&mut port, Duration::from_millis(20)).await);
    }
    t.watchdog_s = fed.elapsed().as_secs_f64();
    t
}

async fn open(link: &Path) -> SerialStream {
    tokio_serial::new(link.to_string_lossy(), 115_200)
        .open_native_async()
        .unwrap_or_else(|e| panic!("{} opens: {e}", link.display()))
}

async fn run_sim(build: Build) -> Transcript {
    let link = scratch(&format!("sim-{build}")).join("tty");
    let sim: SimHandle = Simulator::start(
        SimConfig {
            firmware: build,
            ..SimConfig::default()
        },
        link.clone(),
    )
    .await
    .unwrap();
    // A power cycle, so that the DS18B20 has just powered on as on the realfw run; the
    // simulator has no "power on when the host opens" mode, so its banner is not compared.
    sim.replug().await.unwrap();
    timeout(
        Duration::from_secs(5),
        sim.watch().wait_for(|s| s.device.running),
    )
    .await
    .expect("boots")
    .unwrap();
    let mut port = open(&link).await;
    listen(&mut port, Duration::from_millis(60)).await;
    let t = script(port).await;
    sim.shutdown().await.unwrap();
    t
}

/// The realfw board process; stopped (SIGTERM, then reaped) when dropped.
struct Board(std::process::Child);

impl Drop for Board {
    fn drop(&mut self) {
        // run.sh execs the board: this is our own child, which removes its link on SIGTERM.
        let _ = std::process::Command::new("kill")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

async fn run_realfw(build: Build, root: &Path) -> Transcript {
    let dir = scratch(&format!("realfw-{build}"));
    let link = dir.join("tty");
    let mut child = std::process::Command::new(root.join("run.sh"))
        .arg(&link)
        .arg(dir.join("log"))
        .env("REALFW_FIRMWARE", build.commit())
        .env("REALFW_POWERON", "host")
        .env("REALFW_LOG_STDERR", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("realfw starts");
    let stdout = child.stdout.take().unwrap();
    let board = Board(child);
    // The first line says the port exists (after a build of ~7 s when needed).
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let ready = timeout(Duration::from_secs(120), ready)
        .await
        .expect("realfw builds and starts within 2 min")
        .unwrap()
        .unwrap();
    assert!(ready.contains("\"ready\": true"), "{ready}");
    let mut port = open(&link).await;
    let boot = listen(&mut port, Duration::from_millis(150)).await;
    assert_eq!(
        boot,
        [BANNER],
        "the power-on banner, with REALFW_POWERON=host"
    );
    let t = script(port).await;
    drop(board);
    t
}

/// What both must show, whoever runs the script.
fn check(who: &str, build: Build, t: &Transcript) {
    let one = |name: &str| {
        let lines = t.step(name);
        assert!(lines.concat().starts_with("W+"), "{who}: {name}: {lines:?}");
        lines.join("\n")
    };
    assert!(one("power-on S+?").contains("T+85.0"), "{who}: {t:?}");
    assert!(!one("S+? after 1 s").contains("T+85.0"), "{who}: {t:?}");
    for valid in ["S+?junk", "S+? CRLF", "21 x + S+?"] {
        one(valid);
    }
    for invalid in ["s+?", " S+?", "20 x + S+?", "lone newline", "RESETX"] {
        assert!(t.step(invalid).is_empty(), "{who}: {invalid}: {t:?}");
    }
    assert!(one("B+10").ends_with("B+1"), "{who}");
    let timeout = build.has_heater_timeout();
    assert_eq!(
        one("S+? 1.4 s after B+1").ends_with("B+0"),
        timeout,
        "{who}: {t:?}"
    );
    let lines_per_reply = if build == Build::B6105f59 { 1 } else { 3 };
    let replies = t.step("burst").len() / lines_per_reply;
    // 16 bytes (4 lines) wait in the FIFO through a sensor read and the rest is lost; a burst
    // that lands in the ~4 ms idle part of a cycle gets up to two more lines handled first
    // (realfw: 4 replies in most runs, "20-24 bytes lost"). Where the burst lands depends on
    // the loop's phase, which the script's fixed waits lock to each loop's own period.
    assert!(
        (4..=6).contains(&replies),
        "{who}: burst: {replies} replies"
    );
    assert!(
        t.step("end of burst").len() <= lines_per_reply,
        "{who}: end of burst: {t:?}"
    );
    assert!(
        (4.95..5.3).contains(&t.watchdog_s),
        "{who}: the watchdog fired {:.3} s after RESETX",
        t.watchdog_s
    );
}

fn print(who: &str, t: &Transcript) {
    for (name, lines) in &t.steps {
        println!("{who:>14} {name:<22} {lines:?}");
    }
    println!("{who:>14} watchdog after RESETX: {:.3} s", t.watchdog_s);
}

async fn compare(build: Build, realfw: Option<&Path>) {
    let Some(root) = realfw else {
        let sim = run_sim(build).await;
        print(&format!("sim {build}"), &sim);
        check("sim", build, &sim);
        return;
    };
    let (sim, real) = tokio::join!(run_sim(build), run_realfw(build, root));
    print(&format!("sim {build}"), &sim);
    print(&format!("realfw {build}"), &real);
    check("sim", build, &sim);
    check("realfw", build, &real);
    assert_eq!(sim.shapes(), real.shapes(), "line shapes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_answers_like_realfw_for_both_builds() {
    // One `SKIPPED` line when realfw is absent; the simulator half still runs.
    let realfw = support::realfw::available("the_simulator_answers_like_realfw_for_both_builds");
    tokio::join!(
        compare(Build::B6105f59, realfw.as_deref()),
        compare(Build::B05a9a00, realfw.as_deref())
    );
}
