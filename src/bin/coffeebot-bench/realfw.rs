//! The real MrCoffeeBot firmware on its emulated board (`../shared/realfw/run.sh LINK LOG`):
//! started and stopped, its control FIFO, and its event log read from its stderr as it is
//! written, with the `t=` stamps (CLOCK_MONOTONIC seconds) mapped onto `Instant`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::device::next_fw_event;
use crate::WAIT;

/// One line of the board's event log, its `t=` (CLOCK_MONOTONIC seconds) as an `Instant`.
#[derive(Clone, Debug)]
pub(crate) struct FwEvent {
    pub(crate) at: Instant,
    /// `RELAY 1`, `RELAY 0`, `RX`, `BOOT`, `RX_DROP`, …
    pub(crate) name: String,
    /// `by=` of a relay change: `command`, `loop`, `reset`, …
    pub(crate) by: Option<String>,
    /// `line=` unquoted (`\n` as a newline), of `RX` and `RELAY … by=command`.
    pub(crate) line: Option<String>,
    /// `n=` of `RX_DROP` / `RX_LOST`: bytes lost.
    pub(crate) n: Option<u64>,
}

/// Running totals over the board's log; in the report without the relay's last state.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct FwCounters {
    #[serde(rename = "controller_boots")]
    pub(crate) boots: u64,
    #[serde(skip)]
    pub(crate) relay_on: bool,
    /// `RELAY 0 … by=loop`: the firmware's own 1 s heater time-out switched the relay off.
    #[serde(rename = "relay_dropouts_by_loop")]
    pub(crate) relay_dropouts: u64,
    pub(crate) rx_dropped_bytes: u64,
    pub(crate) rx_lost_bytes: u64,
    /// `TX_CUT`: replies a watchdog reset cut short.
    #[serde(rename = "replies_cut")]
    pub(crate) tx_cut: u64,
}

impl FwCounters {
    /// What happened between `earlier` and `self`.
    pub(crate) fn since(self, earlier: FwCounters) -> FwCounters {
        FwCounters {
            boots: self.boots.saturating_sub(earlier.boots),
            relay_on: self.relay_on,
            relay_dropouts: self.relay_dropouts.saturating_sub(earlier.relay_dropouts),
            rx_dropped_bytes: self
                .rx_dropped_bytes
                .saturating_sub(earlier.rx_dropped_bytes),
            rx_lost_bytes: self.rx_lost_bytes.saturating_sub(earlier.rx_lost_bytes),
            tx_cut: self.tx_cut.saturating_sub(earlier.tx_cut),
        }
    }

    pub(crate) fn add(&mut self, e: &FwEvent) {
        match e.name.as_str() {
            "BOOT" => self.boots += 1,
            "RELAY 1" => self.relay_on = true,
            "RELAY 0" => {
                self.relay_on = false;
                if e.by.as_deref() == Some("loop") {
                    self.relay_dropouts += 1;
                }
            }
            "RX_DROP" => self.rx_dropped_bytes += e.n.unwrap_or(0),
            "RX_LOST" => self.rx_lost_bytes += e.n.unwrap_or(0),
            "TX_CUT" => self.tx_cut += 1,
            _ => {}
        }
    }

    pub(crate) fn brief(self) -> String {
        format!(
            "{} relay drop-outs (by=loop), {} B RX_DROP, {} B RX_LOST, {} boots, {} cut replies",
            self.relay_dropouts, self.rx_dropped_bytes, self.rx_lost_bytes, self.boots, self.tx_cut
        )
    }
}

/// Parses one event line: `NAME t=SECONDS up=… key=value …`. `None` for other output
/// (build messages).
pub(crate) fn parse_fw_event(text: &str, clock: &MonoClock) -> Option<FwEvent> {
    let (name, rest) = text.split_once(" t=")?;
    let (t, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let at = clock.instant(t.parse().ok()?);
    let field = |key: &str| -> Option<&str> {
        let start = rest
            .find(&format!(" {key}="))
            .map(|i| i + key.len() + 2)
            .or_else(|| {
                rest.starts_with(&format!("{key}="))
                    .then_some(key.len() + 1)
            })?;
        let value = &rest[start..];
        if let Some(quoted) = value.strip_prefix('"') {
            // rf_quote: C escapes inside double quotes; the closing quote is unescaped.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            Some(&quoted[..end?])
        } else {
            Some(value.split(' ').next().unwrap_or(value))
        }
    };
    Some(FwEvent {
        at,
        name: name.to_owned(),
        by: field("by").map(str::to_owned),
        line: field("line").map(|l| l.replace("\\n", "\n").replace("\\r", "\r")),
        n: field("n").and_then(|n| n.parse().ok()),
    })
}

/// Maps CLOCK_MONOTONIC seconds (the board's `t=`) onto `Instant`, which reads the same clock
/// on Linux: one reading of both, taken together.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MonoClock {
    pub(crate) instant: Instant,
    pub(crate) mono_s: f64,
}

impl MonoClock {
    pub(crate) fn now() -> Result<MonoClock> {
        let instant = Instant::now();
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .context("clock_gettime(CLOCK_MONOTONIC)")?;
        Ok(MonoClock {
            instant,
            mono_s: ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9,
        })
    }

    pub(crate) fn instant(&self, mono_s: f64) -> Instant {
        let delta = mono_s - self.mono_s;
        if !delta.is_finite() {
            return self.instant;
        }
        let d = Duration::from_secs_f64(delta.abs().min(1e6));
        if delta >= 0.0 {
            self.instant + d
        } else {
            self.instant.checked_sub(d).unwrap_or(self.instant)
        }
    }
}

/// Where the real firmware's folder is: `COFFEEBOT_REALFW`, else `../shared/realfw`
/// beside the repository.
pub(crate) fn realfw_dir() -> PathBuf {
    match std::env::var_os("COFFEEBOT_REALFW") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/realfw"),
    }
}

/// The real firmware's board (`run.sh LINK LOG`), its event log read from its stderr as it
/// is written. Stopped with SIGTERM on drop, so it removes its link and control FIFO.
pub(crate) struct Realfw {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) link: PathBuf,
    pub(crate) ctl: Mutex<fs::File>,
    pub(crate) firmware: String,
    pub(crate) events: broadcast::Sender<FwEvent>,
    pub(crate) counters: Arc<Mutex<FwCounters>>,
}

impl Realfw {
    pub(crate) async fn start(link: &Path, log: &Path) -> Result<Realfw> {
        let dir = realfw_dir();
        let run = dir.join("run.sh");
        if !run.is_file() {
            bail!(
                "no real firmware at {} (set COFFEEBOT_REALFW to the realfw folder)",
                dir.display()
            );
        }
        // Build first, so that a build's time never counts against the start's deadline.
        let build = dir.join("build.sh");
        let built = {
            let build = build.clone();
            tokio::task::spawn_blocking(move || Command::new(build).stdin(Stdio::null()).status())
        }
        .await?
        .with_context(|| format!("cannot run {}", build.display()))?;
        if !built.success() {
            bail!("{} failed: {built}", build.display());
        }
        let clock = MonoClock::now()?;
        let mut child = Command::new(&run)
            .arg(link)
            .arg(log)
            // Every line the firmware takes in is logged (`RX`): the controller's side of the
            // feed cadence and of command latency.
            .env("REALFW_TRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", run.display()))?;
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (o, e),
            _ => bail!("run.sh has no pipes"),
        };
        let (events, mut booted) = broadcast::channel(65_536);
        let counters = Arc::new(Mutex::new(FwCounters::default()));
        {
            let events = events.clone();
            let counters = Arc::clone(&counters);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for text in std::io::BufReader::new(stderr).lines() {
                    let Ok(text) = text else { return };
                    if let Some(e) = parse_fw_event(&text, &clock) {
                        if let Ok(mut c) = counters.lock() {
                            c.add(&e);
                        }
                        let _ = events.send(e);
                    }
                }
            });
        }
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut first = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut first);
            let _ = ready_tx.send(first);
        });
        let mut board = Realfw {
            child,
            dir,
            link: link.to_owned(),
            // Replaced once the board said where its FIFO is.
            ctl: Mutex::new(fs::File::open("/dev/null")?),
            firmware: String::new(),
            events,
            counters,
        };
        let first = tokio::time::timeout(WAIT, ready)
            .await
            .map_err(|_| anyhow!("run.sh said nothing within {WAIT:?}"))?
            .unwrap_or_default();
        let info: Value = serde_json::from_str(first.trim()).map_err(|_| {
            let status = board.child.try_wait().ok().flatten();
            anyhow!("run.sh did not start the board ({status:?}): {first:?}")
        })?;
        if info["ready"] != true {
            bail!("run.sh is not ready: {first}");
        }
        let ctl = info["ctl"]
            .as_str()
            .ok_or_else(|| anyhow!("run.sh named no control FIFO: {first}"))?;
        // The board holds its FIFO open read-write, so this open does not block.
        board.ctl = Mutex::new(
            fs::OpenOptions::new()
                .write(true)
                .open(ctl)
                .with_context(|| format!("cannot open {ctl}"))?,
        );
        board.firmware = info["firmware"].as_str().unwrap_or("?").to_owned();
        // The bridge starts once the firmware runs (its watchdog armed after the banner): what
        // a bridge sends while the board powers on is lost (`RX_LOST`), which is a start-up
        // race of the bench, not a figure of the link.
        next_fw_event(&mut booted, WAIT, |e| e.name == "WDT_ENABLE")
            .await
            .ok_or_else(|| anyhow!("the firmware did not boot within {WAIT:?}"))?;
        Ok(board)
    }

    /// One line on the control FIFO (`plate 85`, `water 2.0`).
    pub(crate) fn control(&self, line: &str) -> Result<()> {
        use std::io::Write;
        let mut ctl = self
            .ctl
            .lock()
            .map_err(|_| anyhow!("the control FIFO's lock is poisoned"))?;
        ctl.write_all(format!("{line}\n").as_bytes())
            .context("cannot write to the board's control FIFO")
    }

    pub(crate) fn counters(&self) -> FwCounters {
        self.counters.lock().map(|c| *c).unwrap_or_default()
    }
}

impl Drop for Realfw {
    fn drop(&mut self) {
        // SIGTERM (it cleans up), then SIGKILL if it has not gone within 2 s.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // Exit poll with a deadline.
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the board writes them (its README's verification log and this bench's runs).
    #[test]
    fn parses_the_boards_event_lines() {
        let clock = MonoClock::now().expect("clock");
        let at = |s: f64| clock.instant(s);
        let relay = parse_fw_event(
            r#"RELAY 1 t=2776.710371 up=6.557306 boot=1 by=command line="B+1\n" plate_c=22.80"#,
            &clock,
        )
        .expect("relay");
        assert_eq!(relay.name, "RELAY 1");
        assert_eq!(relay.by.as_deref(), Some("command"));
        assert_eq!(relay.line.as_deref(), Some("B+1\n"));
        assert_eq!(relay.at, at(2776.710371));
        let off = parse_fw_event(
            "RELAY 0 t=2778.925051 up=8.771987 boot=1 by=loop plate_c=26.02",
            &clock,
        )
        .expect("relay off");
        assert_eq!(off.by.as_deref(), Some("loop"));
        assert!(off.at > relay.at);
        let drop = parse_fw_event(
            r#"RX_DROP t=2775.942578 up=5.789513 boot=1 n=24 fifo=16 data="S+?\nS+?\n""#,
            &clock,
        )
        .expect("drop");
        assert_eq!(drop.n, Some(24));
        let rx =
            parse_fw_event(r#"RX t=1.5 up=0.05 boot=1 line="say \"hi\"\n""#, &clock).expect("rx");
        assert_eq!(rx.line.as_deref(), Some("say \\\"hi\\\"\n"));
        assert!(parse_fw_event("build.sh: realfw-board", &clock).is_none());
    }

    #[test]
    fn counts_dropouts_and_lost_bytes() {
        let clock = MonoClock::now().expect("clock");
        let mut c = FwCounters::default();
        for line in [
            "BOOT t=1.0 up=0.01 boot=1 reason=poweron",
            r#"RELAY 1 t=2.0 up=1 boot=1 by=command line="B+1\n" plate_c=21.00"#,
            "RELAY 0 t=3.0 up=2 boot=1 by=loop plate_c=22.00",
            "RX_LOST t=3.5 up=2.5 boot=1 n=4 reason=sent-while-resetting",
            r#"RX_DROP t=4.0 up=3 boot=1 n=24 fifo=16 data="x""#,
        ] {
            c.add(&parse_fw_event(line, &clock).expect(line));
        }
        assert_eq!(
            (
                c.boots,
                c.relay_on,
                c.relay_dropouts,
                c.rx_lost_bytes,
                c.rx_dropped_bytes
            ),
            (1, false, 1, 4, 24)
        );
        let later = FwCounters {
            relay_dropouts: 3,
            ..c
        };
        assert_eq!(later.since(c).relay_dropouts, 2);
    }
}
