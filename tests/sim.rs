//! The simulator over a real pseudo-terminal, opened the way the bridge opens the serial port.
//! Every wait is bounded by a timeout on an observable event; nothing sleeps to synchronise.

use std::path::PathBuf;
use std::time::Duration;

use coffeebot::sim::{Build, Fault, SimConfig, SimHandle, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

const WAIT: Duration = Duration::from_secs(5);

fn link_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("coffeebot-sim-{}-{name}", std::process::id()))
}

async fn start(name: &str) -> SimHandle {
    Simulator::start(SimConfig::default(), link_path(name))
        .await
        .expect("simulator starts")
}

/// The port with a line buffer, as a host reads it.
struct Port {
    stream: SerialStream,
    text: String,
}

impl Port {
    fn open(sim: &SimHandle) -> Self {
        let stream = tokio_serial::new(sim.path().to_string_lossy(), 115_200)
            .open_native_async()
            .expect("the link opens as a serial port");
        Self {
            stream,
            text: String::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next complete line, waiting at most [`WAIT`].
    async fn line(&mut self) -> String {
        let mut buf = [0u8; 512];
        timeout(WAIT, async {
            loop {
                if let Some(end) = self.text.find('\n') {
                    let line: String = self.text.drain(..=end).collect();
                    return line.trim_end().to_owned();
                }
                let got = self.stream.read(&mut buf).await.expect("read");
                assert!(got > 0, "unexpected EOF");
                self.text.push_str(&String::from_utf8_lossy(&buf[..got]));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no line within {WAIT:?}; got {:?}", self.text))
    }

    /// The next line that is not a boot banner.
    async fn reply_line(&mut self) -> String {
        loop {
            let line = self.line().await;
            if line != "MrCoffeeBot v2.0 Booted." {
                return line;
            }
        }
    }

    /// Sends a command and returns its reply, skipping banners: one line (6105f59), or
    /// `lines` lines (05a9a00: 3).
    async fn command(&mut self, line: &str) -> Vec<String> {
        self.command_lines(line, 1).await
    }

    async fn command_lines(&mut self, line: &str, lines_per_reply: usize) -> Vec<String> {
        self.write(line.as_bytes()).await;
        let mut lines = Vec::new();
        for _ in 0..lines_per_reply {
            lines.push(self.reply_line().await);
        }
        lines
    }
}

/// The fields of a one-line reply `W+…,T+…,B+…` (6105f59).
fn fields(lines: &[String]) -> Vec<String> {
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines[0].split(',').map(str::to_owned).collect()
}

fn assert_reply_at(lines: &[String], heater: &str, plate_c: f64) {
    let fields = fields(lines);
    assert_eq!(fields.len(), 3, "{lines:?}");
    assert!(fields[0].starts_with("W+"), "{lines:?}");
    assert!(fields[1].starts_with("T+"), "{lines:?}");
    let t: f64 = fields[1][2..].parse().expect("a temperature");
    assert!((t - plate_c).abs() < 0.5, "{t}");
    assert_eq!(fields[2], heater);
}

fn assert_reply(lines: &[String], heater: &str) {
    assert_reply_at(lines, heater, 21.0);
}

#[tokio::test]
async fn answers_a_status_request_over_the_link() {
    let sim = start("status").await;
    assert!(std::fs::read_link(sim.path())
        .unwrap()
        .starts_with("/dev/pts"));
    let mut port = Port::open(&sim);
    let mut commands = sim.commands();
    let lines = port.command("S+?\n").await;
    assert_reply(&lines, "B+0");
    let event = commands.next_matching("S+?", WAIT).await.expect("logged");
    assert_eq!(event.line, "S+?");
    sim.shutdown().await.unwrap();
    assert!(
        std::fs::symlink_metadata(sim.path()).is_err(),
        "link removed"
    );
}

#[tokio::test]
async fn heater_command_and_injected_sentinel_show_up() {
    let sim = start("heater").await;
    let mut port = Port::open(&sim);
    let lines = port.command("B+1\n").await;
    assert_eq!(fields(&lines)[2], "B+1");
    assert!(sim.snapshot().await.unwrap().device.heater_on);
    sim.inject(Fault::CrcError(true)).await.unwrap();
    // A reply carries the last temperature read (≤ 21 ms old): the sentinel shows from the
    // next read on.
    let mut polls = 0;
    while fields(&port.command("S+?\n").await)[1] != "T+-1000.0" {
        polls += 1;
        assert!(polls < 5, "no CRC sentinel after {polls} polls");
    }
    let lines = port.command("B+0\n").await;
    assert_eq!(fields(&lines)[1..], ["T+-1000.0", "B+0"]);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_older_build_answers_three_lines_and_keeps_the_heater_on() {
    let sim = Simulator::start(
        SimConfig {
            firmware: Build::B05a9a00,
            ..SimConfig::default()
        },
        link_path("three-lines"),
    )
    .await
    .expect("simulator starts");
    let mut port = Port::open(&sim);
    let lines = port.command_lines("B+1\n", 3).await;
    assert!(
        lines[0].starts_with("W+") && lines[1].starts_with("T+"),
        "{lines:?}"
    );
    assert_eq!(lines[2], "B+1");
    // No 1 s time-out on this build: still on 1.5 s later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(port.command_lines("S+?\n", 3).await[2], "B+1");
    assert!(sim.snapshot().await.unwrap().device.heater_on);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn unplug_breaks_the_reader_and_replug_brings_a_new_device_behind_the_same_path() {
    let sim = start("replug").await;
    let first = std::fs::read_link(sim.path()).unwrap();
    let mut port = Port::open(&sim);
    assert_reply(&port.command("S+?\n").await, "B+0");

    sim.unplug().await.unwrap();
    assert!(std::fs::symlink_metadata(sim.path()).is_err(), "link gone");
    let mut buf = [0u8; 64];
    let read = timeout(WAIT, async {
        // Anything already buffered may still come; then EOF or an error.
        loop {
            match port.stream.read(&mut buf).await {
                Ok(0) => return Ok(0),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the read ends instead of hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The old descriptor is still open (a bridge that has not closed it yet), so the kernel
    // cannot hand out the same pty number again.
    let second = sim.replug().await.unwrap();
    assert_eq!(std::fs::read_link(sim.path()).unwrap(), second);
    assert_ne!(first, second, "a new pty");
    drop(port);
    // What arrives while the board boots is lost: wait until it runs its loop.
    timeout(WAIT, sim.watch().wait_for(|s| s.device.running))
        .await
        .expect("boots")
        .unwrap();
    let mut port = Port::open(&sim);
    // Plugged in again, the DS18B20 has just powered on: 85.0 until its first conversion.
    assert_reply_at(&port.command("S+?\n").await, "B+0", 85.0);
    assert_eq!(sim.snapshot().await.unwrap().device.boots, 2);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_port_can_be_closed_and_opened_again() {
    let sim = start("reopen").await;
    let mut state = sim.watch();
    for _ in 0..3 {
        let before = state.borrow_and_update().device_path.clone();
        let mut port = Port::open(&sim);
        assert_reply(&port.command("S+?\n").await, "B+0");
        drop(port);
        // Closing the port renews the pty behind the link (a non-root reopen of the old one
        // would get EBUSY from its exclusive flag).
        timeout(WAIT, state.wait_for(|s| s.device_path != before))
            .await
            .expect("a fresh pty")
            .unwrap();
    }
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reboot_mid_reply_glues_the_banner_to_the_cut_line() {
    let sim = start("midreply").await;
    let mut port = Port::open(&sim);
    assert_reply(&port.command("S+?\n").await, "B+0");
    sim.reboot(true).await.unwrap();
    port.write(b"S+?\n").await;
    // As on the real firmware: two bytes, the third with its unsent bits as 1s, the banner.
    assert_eq!(port.line().await, "W+\u{fffd}MrCoffeeBot v2.0 Booted.");
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_stops_the_simulator() {
    let sim = start("drop").await;
    let path = sim.path().to_owned();
    let mut state = sim.watch();
    drop(sim);
    timeout(WAIT, async { while state.changed().await.is_ok() {} })
        .await
        .expect("the task ends");
    assert!(std::fs::symlink_metadata(&path).is_err(), "link removed");
}
