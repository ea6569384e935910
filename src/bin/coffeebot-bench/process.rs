//! The bridge as a separate process (the release `coffeebot run`, configured through its
//! environment): start with the time to its first state, SIGTERM with the time to exit; and
//! the CPU hog processes of the stress scenario.
//!
//! Overlaps `tests/support/bridge.rs` (environment for a bridge on a given port and broker,
//! spawn, wait for a state, SIGTERM and wait).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::QoS;

use crate::client::{Client, Seen};
use crate::listen::HeldPort;
use crate::report::Figures;
use crate::tap::Tap;
use crate::STATE;

/// The bridge's environment: the tap's port, the bench's broker, HTTP on held ports (the
/// public page on `public_port`, the operator listener on `http_port`).
pub(crate) fn bridge_env(
    port: &Path,
    mqtt_port: u16,
    http_port: u16,
    public_port: u16,
) -> Vec<(String, String)> {
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
        // HTTP is on by default: the public page (which the page-load experiment visits)
        // and the operator listener (metrics, probes, which the bench scrapes) on free
        // loopback ports.
        (
            "COFFEEBOT__HTTP__LISTEN",
            format!("127.0.0.1:{public_port}"),
        ),
        // Room for every viewer of the page-load experiment (default 256).
        ("COFFEEBOT__HTTP__MAX_STREAMS", PAGE_MAX_STREAMS.to_string()),
        (
            "COFFEEBOT__HTTP__OPS_LISTEN",
            format!("127.0.0.1:{http_port}"),
        ),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `http.max_streams` for the bench: the page-load experiment's 500 viewers all get a stream
/// (the public listener holds 512 connections; the `/status.json` load takes 8 of the rest).
pub(crate) const PAGE_MAX_STREAMS: u32 = 500;

/// The bridge child process; killed on drop.
pub(crate) struct Bridge {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    /// Where its operator HTTP server (`/metrics`, probes) listens.
    pub(crate) http_port: u16,
    /// Where its public HTTP server (page, `status.json`, `/events`) listens.
    pub(crate) public_port: u16,
    /// Both ports, held for as long as it runs.
    _ports: [HeldPort; 2],
}

impl Bridge {
    /// Runs `bin run` with `env` added to this process's environment and no
    /// `COFFEEBOT_CONFIG` (the built-in defaults), its output appended to `log`; `env` puts its
    /// HTTP servers on `ports` (the operator's, the public one).
    pub(crate) fn spawn(
        bin: &Path,
        env: &[(String, String)],
        log: &fs::File,
        ports: [HeldPort; 2],
    ) -> Result<Bridge> {
        let child = Command::new(bin)
            .arg("run")
            .env_remove("COFFEEBOT_CONFIG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        Ok(Bridge {
            pid: child.id(),
            child,
            http_port: ports[0].port(),
            public_port: ports[1].port(),
            _ports: ports,
        })
    }

    pub(crate) fn check_alive(&mut self) -> Result<()> {
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
pub(crate) async fn start_bridge(
    bin: &Path,
    log: &fs::File,
    client: &mut Client,
    mqtt_port: u16,
    tap: &mut Tap,
    figures: &mut Figures,
) -> Result<Bridge> {
    tap.renew()?;
    let ports = [HeldPort::new()?, HeldPort::new()?];
    let env = bridge_env(
        &tap.bridge_path,
        mqtt_port,
        ports[0].port(),
        ports[1].port(),
    );
    // A retained state from an earlier start must not count: clear it and wait for the ack.
    client
        .client
        .publish(STATE, QoS::AtLeastOnce, true, Vec::new())
        .await?;
    client.wait(|s| matches!(s, Seen::PubAck), "PUBACK").await?;
    client.drain();
    let t0 = Instant::now();
    let mut bridge = Bridge::spawn(bin, &env, log, ports)?;
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
pub(crate) async fn stop_bridge(mut bridge: Bridge, figures: &mut Figures) -> Result<()> {
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

/// CPU hog child processes, one per core; killed on drop (and they end by themselves).
pub(crate) struct Hogs(Vec<Child>);

impl Hogs {
    pub(crate) fn start(secs: u64) -> Result<Hogs> {
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

/// Spins one core until `secs` have passed (bounded, so a lost hog ends by itself).
pub(crate) fn hog(secs: Duration) {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < secs {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}
