//! The task that owns the controller's serial port.
//!
//! It opens the port (reopening with capped backoff when it disappears: a USB unplug, or the
//! path coming back as a new device), frames what it reads with the pure
//! [`Decoder`](crate::protocol::Decoder), and writes the commands the core decides — one line
//! at a time, each followed by a wait for its reply or a short timeout, because the
//! controller's UART holds 16 bytes and loses what arrives while it reads its sensors. It
//! decides nothing: link up/down and every frame go to the core. A USB identity
//! (`usb:VID:PID`) is looked up again at every open ([`crate::port`]); a board that is not
//! there is a link down like any other, retried with the same backoff.

use crate::metrics::{self as m, LineTimer};
use crate::port::{locate, PortSpec};
use crate::protocol::{Command, Decoder, Frame};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_serial::SerialPortBuilderExt;
use tracing::{debug, info, warn};

/// How long to wait for the three-line reply before the next command may be written.
/// The controller answers within one 20 ms sensor cycle plus 30 bytes at 115200 baud.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(150);
/// First and largest delay between attempts to open the port.
pub const REOPEN_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_millis(2000));

/// What the link tells the core.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEvent {
    /// The port is open; nothing has been written on it yet.
    Up,
    /// The port is gone or could not be opened.
    Down {
        /// Why, for the log.
        reason: String,
    },
    /// A complete frame from the controller.
    Frame(Frame),
}

/// A line for the controller, as the driver hands it to the link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outgoing {
    /// What to write.
    pub command: Command,
    /// When the user command that caused this line came in, if one did (for the
    /// command-to-serial latency).
    pub accepted_at: Option<Instant>,
}

/// Where the port is and how to talk to it.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// A device path (a symlink is followed at every open) or a USB identity, looked up at
    /// every open.
    pub port: PortSpec,
    /// Where USB identities are looked up (`/`, see [`crate::port::sysfs_root`]).
    pub sysfs_root: PathBuf,
    /// Line speed.
    pub baud: u32,
}

/// Runs the link until the command channel closes (the daemon drops its sender after the
/// final `B+0`), so every queued command, the last one included, is written first.
///
/// `commands`: the daemon holds the sender; closing it ends this task.
/// `events`: the daemon holds the receiver; if it is gone, this task ends.
pub async fn run(
    config: LinkConfig,
    mut commands: mpsc::Receiver<Outgoing>,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut timer = LineTimer::default();
    let mut backoff = REOPEN_BACKOFF.0;
    let mut last_error: Option<String> = None;
    let mut resolved: Option<PathBuf> = None;
    loop {
        let opened = match locate(&config.port, &config.sysfs_root) {
            Ok(path) => {
                if let (PortSpec::Usb(id), true) = (&config.port, resolved.as_ref() != Some(&path))
                {
                    info!(port = %id, device = %path.display(), "controller port {id} is {}", path.display());
                }
                resolved = Some(path.clone());
                open(&path, config.baud)
                    .map(|port| (port, path.clone()))
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))
            }
            Err(no_board) => Err(no_board.to_string()),
        };
        let (port, path) = match opened {
            Ok(opened) => opened,
            Err(reason) => {
                if last_error.as_deref() != Some(reason.as_str()) {
                    warn!("{reason}; retrying");
                    last_error = Some(reason.clone());
                }
                if events.send(LinkEvent::Down { reason }).await.is_err() {
                    return;
                }
                // Commands meant for a port that is not there are dropped, not replayed later.
                let deadline = Instant::now() + backoff;
                loop {
                    tokio::select! {
                        cmd = commands.recv() => if cmd.is_none() { return },
                        () = sleep_until(deadline) => break,
                    }
                }
                backoff = (backoff * 2).min(REOPEN_BACKOFF.1);
                continue;
            }
        };
        info!(port = %path.display(), "controller port open");
        last_error = None;
        backoff = REOPEN_BACKOFF.0;
        while commands.try_recv().is_ok() {}
        if events.send(LinkEvent::Up).await.is_err() {
            return;
        }
        match session(port, &mut commands, &events, &mut timer).await {
            Ended::CommandsClosed | Ended::EventsClosed => return,
            Ended::PortLost(e) => {
                let reason = format!("lost {}: {e}", path.display());
                warn!("{reason}");
                metrics::counter!(m::SERIAL_LINK_LOST).increment(1);
                if events.send(LinkEvent::Down { reason }).await.is_err() {
                    return;
                }
                sleep(backoff).await;
            }
        }
    }
}

fn open(path: &Path, baud: u32) -> io::Result<tokio_serial::SerialStream> {
    let port = tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()?;
    Ok(port)
}

enum Ended {
    CommandsClosed,
    EventsClosed,
    PortLost(io::Error),
}

async fn session(
    mut port: tokio_serial::SerialStream,
    commands: &mut mpsc::Receiver<Outgoing>,
    events: &mpsc::Sender<LinkEvent>,
    timer: &mut LineTimer,
) -> Ended {
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 256];
    // While a reply is awaited, no further command is written (one line at a time).
    let mut awaiting: Option<Instant> = None;
    let mut closing = false;
    loop {
        if closing && awaiting.is_none() {
            return Ended::CommandsClosed;
        }
        tokio::select! {
            biased;
            read = port.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return Ended::PortLost(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => n,
                    Err(e) => return Ended::PortLost(e),
                };
                decoder.push(&buf[..n]);
                while let Some(frame) = decoder.next_frame() {
                    match &frame {
                        Frame::Reading(_) | Frame::Banner { .. } => {
                            awaiting = None;
                            metrics::counter!(m::SERIAL_REPLIES).increment(1);
                        }
                        Frame::Rejected(why) => {
                            debug!(?why, "skipped a controller line");
                            metrics::counter!(m::SERIAL_LINES_REJECTED).increment(1);
                            continue;
                        }
                    }
                    if events.send(LinkEvent::Frame(frame)).await.is_err() {
                        return Ended::EventsClosed;
                    }
                }
            }
            () = async { sleep_until(awaiting.unwrap_or_else(Instant::now)).await }, if awaiting.is_some() => {
                metrics::counter!(m::SERIAL_REPLY_TIMEOUTS).increment(1);
                awaiting = None;
            }
            cmd = commands.recv(), if awaiting.is_none() && !closing => {
                let Some(line) = cmd else {
                    closing = true;
                    continue;
                };
                if let Err(e) = write_line(&mut port, line, timer).await {
                    return Ended::PortLost(e);
                }
                if line.command.expects_reply() {
                    awaiting = Some(Instant::now() + REPLY_TIMEOUT);
                }
            }
        }
    }
}

async fn write_line(
    port: &mut tokio_serial::SerialStream,
    line: Outgoing,
    timer: &mut LineTimer,
) -> io::Result<()> {
    let cmd = line.command;
    port.write_all(cmd.line()).await?;
    port.flush().await?;
    metrics::counter!(m::SERIAL_LINES_SENT).increment(1);
    timer.written(cmd, line.accepted_at, Instant::now());
    debug!(?cmd, "wrote");
    Ok(())
}
