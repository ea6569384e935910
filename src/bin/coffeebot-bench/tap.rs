//! The serial tap: a pseudo-terminal between the bridge and the controller that forwards bytes
//! both ways as soon as they can be read and stamps every line as it crosses, so that a
//! latency splits into the bridge's share and the controller's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::WAIT;

/// Which way a line crossed the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Written by the bridge.
    ToDevice,
    /// Written by the controller.
    FromDevice,
}

/// One line as it crossed the tap, stamped when the chunk holding its `\n` was read.
#[derive(Clone, Debug)]
pub(crate) struct TapLine {
    pub(crate) at: Instant,
    pub(crate) dir: Dir,
    pub(crate) line: String,
}

/// A pseudo-terminal between the bridge and the simulator that stamps and forwards lines.
pub(crate) struct Tap {
    /// The pty the bridge opens.
    pub(crate) bridge_path: PathBuf,
    /// The bridge side's slave, held open so that the master never sees a hang-up before the
    /// bridge opens it (it is never read here).
    #[allow(dead_code, reason = "held open, never used")]
    pub(crate) slave: SerialStream,
    /// New bridge-side masters for the shuttle.
    pub(crate) swap: mpsc::Sender<SerialStream>,
    pub(crate) lines: broadcast::Sender<TapLine>,
    pub(crate) task: JoinHandle<()>,
}

impl Tap {
    pub(crate) async fn start(sim_link: &Path) -> Result<Tap> {
        let (master, slave, bridge_path) = bridge_pty()?;
        // The simulator's link exists once `Simulator::start` returned.
        let device = tokio_serial::new(sim_link.to_string_lossy(), 115_200)
            .open_native_async()
            .with_context(|| format!("cannot open {}", sim_link.display()))?;
        let (lines, _) = broadcast::channel(65_536);
        let (swap, swaps) = mpsc::channel(1);
        let task = tokio::spawn(shuttle(master, device, swaps, lines.clone()));
        Ok(Tap {
            bridge_path,
            slave,
            swap,
            lines,
            task,
        })
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TapLine> {
        self.lines.subscribe()
    }

    /// A fresh pty for the next bridge process: a bridge leaves its port exclusive (TIOCEXCL
    /// stays while the slave is held open), and nothing stale is queued for the newcomer.
    pub(crate) fn renew(&mut self) -> Result<()> {
        let (master, slave, path) = bridge_pty()?;
        self.swap
            .try_send(master)
            .map_err(|_| anyhow!("the serial tap is not running"))?;
        self.slave = slave;
        self.bridge_path = path;
        Ok(())
    }
}

/// A pty pair for the bridge side and the slave's path.
pub(crate) fn bridge_pty() -> Result<(SerialStream, SerialStream, PathBuf)> {
    let (master, slave) = SerialStream::pair().context("cannot create a pty pair")?;
    let path = PathBuf::from(
        slave
            .name()
            .ok_or_else(|| anyhow!("the pty slave has no name"))?,
    );
    Ok((master, slave, path))
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards bytes both ways as soon as they can be read, stamping each line.
pub(crate) async fn shuttle(
    bridge: SerialStream,
    mut device: SerialStream,
    mut swaps: mpsc::Receiver<SerialStream>,
    lines: broadcast::Sender<TapLine>,
) {
    let mut from_bridge = [0u8; 512];
    let mut from_device = [0u8; 512];
    let mut to_device_line = Vec::new();
    let mut from_device_line = Vec::new();
    // `None` after the bridge side failed (its slave was released before the swap arrived):
    // the controller's output is dropped until the next bridge side, as with no reader.
    let mut bridge = Some(bridge);
    loop {
        tokio::select! {
            swap = swaps.recv() => match swap {
                Some(master) => {
                    bridge = Some(master);
                    to_device_line.clear();
                }
                None => return,
            },
            read = async {
                match bridge.as_mut() {
                    Some(b) => b.read(&mut from_bridge).await,
                    None => std::future::pending().await,
                }
            } => {
                let at = Instant::now();
                let n = match read {
                    Ok(n) if n > 0 => n,
                    _ => {
                        bridge = None;
                        continue;
                    }
                };
                if device.write_all(&from_bridge[..n]).await.is_err() {
                    return;
                }
                split(&mut to_device_line, &from_bridge[..n], at, Dir::ToDevice, &lines);
            }
            read = device.read(&mut from_device) => {
                let at = Instant::now();
                let n = match read { Ok(n) if n > 0 => n, _ => return };
                if let Some(b) = bridge.as_mut() {
                    if b.write_all(&from_device[..n]).await.is_err() {
                        bridge = None;
                    }
                }
                split(&mut from_device_line, &from_device[..n], at, Dir::FromDevice, &lines);
            }
        }
    }
}

/// Cuts bytes into lines and sends each complete one, stamped `at`.
pub(crate) fn split(
    partial: &mut Vec<u8>,
    bytes: &[u8],
    at: Instant,
    dir: Dir,
    out: &broadcast::Sender<TapLine>,
) {
    for &b in bytes {
        if b == b'\n' {
            let line = String::from_utf8_lossy(partial)
                .trim_end_matches('\r')
                .to_owned();
            partial.clear();
            let _ = out.send(TapLine { at, dir, line });
        } else if partial.len() < 1024 {
            partial.push(b);
        }
    }
}

/// Reads tap lines in order until `want` accepts one, or `WAIT` passes.
pub(crate) async fn next_line(
    rx: &mut broadcast::Receiver<TapLine>,
    mut want: impl FnMut(&TapLine) -> bool,
    what: &str,
) -> Result<TapLine> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(line)) if want(&line) => return Ok(line),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("the serial tap stopped"),
            Err(_) => bail!("no {what} on the serial line within {WAIT:?}"),
        }
    }
}
