//! The thin shell that puts the pure [`Device`] on a real pseudo-terminal, so the bridge opens
//! a device path exactly as it opens the USB serial port.
//!
//! One task owns the pty master and the device: it feeds bytes from the master into the device,
//! writes what the device prints, and sleeps until the device's next deadline or the next read of
//! the master (every 2 ms), always on tokio's clock. A stable symlink points at the slave (`/dev/pts/N`); unplugging closes the master and
//! removes the link, replugging creates a new pty and points the link at it. Handles talk to the
//! task over a channel; when every [`SimHandle`] is dropped the task removes the link and ends.
//!
//! The task does not keep the slave open itself, so the slave's settings are the client's and
//! nothing stale is queued for the next client: while no client has the port open (the master
//! reads EIO) the controller's output is lost, as it is when nobody reads a USB serial port.
//! When the client closes the port, the link is re-pointed at a fresh pty before the old one is
//! closed: the kernel keeps the exclusive flag (`TIOCEXCL`) a client set for as long as the
//! master lives, and a non-root client reopening that pty would get EBUSY. A client that
//! reopens the link within a moment of closing it may still land on the old pty and see a
//! hang-up; it reopens, as it would after any serial error.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_serial::{SerialPort, SerialStream};

use super::device::{CommandEvent, Device, DeviceSnapshot, Fault, SimConfig};

/// Output kept while the client does not read; beyond it the controller's bytes are lost.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// How often the master is read while a client has the port open. The master is polled rather
/// than awaited: once it has seen a hang-up (no client yet, or between clients) tokio reports it
/// readable forever, which would spin.
const POLL_CLIENT: Duration = Duration::from_millis(2);
/// How often the master is checked for a new client while none has the port open.
const POLL_NO_CLIENT: Duration = Duration::from_millis(10);

/// Starts simulated controllers.
#[derive(Debug)]
pub struct Simulator;

/// What the simulator shows: the device and its connection.
#[derive(Clone, Debug, PartialEq)]
pub struct SimSnapshot {
    /// The device model's state.
    pub device: DeviceSnapshot,
    /// Whether the pty exists (false after [`SimHandle::unplug`]).
    pub plugged: bool,
    /// The slave device behind the link, e.g. `/dev/pts/3`, while plugged. It changes when a
    /// client closes the port (see the module doc) and on replug.
    pub device_path: Option<PathBuf>,
}

/// A cloneable remote control of a running simulator. Dropping every clone stops it.
#[derive(Clone, Debug)]
pub struct SimHandle {
    path: PathBuf,
    /// To the simulator task; it ends when every sender is gone.
    control: mpsc::Sender<Control>,
    /// From the simulator task, updated after every step.
    state: watch::Receiver<SimSnapshot>,
    /// The task sends every accepted command line here; kept to hand out receivers.
    commands: broadcast::Sender<CommandEvent>,
}

/// Requests from handles to the simulator task; each carries the sender of its answer.
#[derive(Debug)]
enum Control {
    Inject(Fault, oneshot::Sender<()>),
    Unplug(oneshot::Sender<()>),
    Replug(oneshot::Sender<io::Result<PathBuf>>),
    Snapshot(oneshot::Sender<SimSnapshot>),
    CommandLog(oneshot::Sender<Vec<CommandEvent>>),
    Shutdown(oneshot::Sender<()>),
}

/// The pty currently plugged in.
struct Port {
    master: SerialStream,
    device_path: PathBuf,
    /// Whether a client has the slave open; while none has, the master reads EIO.
    client: bool,
}

impl Simulator {
    /// Creates a pty, points a symlink at `link_path` to its slave and runs the simulated
    /// controller on it until every [`SimHandle`] is dropped or [`SimHandle::shutdown`].
    /// Returns once the board runs its loop and its DS18B20 has finished a first conversion
    /// (~0.8 s), as a board plugged in before the bridge starts: what the real firmware receives
    /// while it boots is lost, and its sensor reads 85.0 until that conversion.
    /// An existing symlink at `link_path` is replaced; any other file there is an error.
    pub async fn start(cfg: SimConfig, link_path: PathBuf) -> io::Result<SimHandle> {
        let port = open_port(&link_path)?;
        let device = Device::new(cfg, now());
        let (control, control_rx) = mpsc::channel(64);
        let (commands, _) = broadcast::channel(1024);
        let snapshot = SimSnapshot {
            device: device.snapshot(),
            plugged: true,
            device_path: Some(port.device_path.clone()),
        };
        let (state_tx, state) = watch::channel(snapshot);
        let shell = Shell {
            device,
            link_path: link_path.clone(),
            port: Some(port),
            control: control_rx,
            state: state_tx,
            commands: commands.clone(),
            pending: Vec::new(),
        };
        tokio::spawn(shell.run());
        let mut ready = state.clone();
        // ~0.8 s of the simulator's clock; a paused test clock advances to it.
        tokio::time::timeout(
            Duration::from_secs(5),
            ready.wait_for(|s| s.device.running && s.device.sensor_converted),
        )
        .await
        .map_err(|_| io::Error::other("the simulated controller did not boot"))?
        .map_err(|_| stopped())?;
        Ok(SimHandle {
            path: link_path,
            control,
            state,
            commands,
        })
    }
}

impl SimHandle {
    /// The stable path (the symlink) the bridge opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies a fault; returns once the device has it.
    pub async fn inject(&self, fault: Fault) -> io::Result<()> {
        self.request(|tx| Control::Inject(fault, tx)).await
    }

    /// Dead link: the board reads and writes nothing; its watchdog reboots it every 5 s.
    pub async fn mute(&self, on: bool) -> io::Result<()> {
        self.inject(Fault::Mute(on)).await
    }

    /// Dead ultrasonic ranger: the loop hangs at its next water read, a banner every 5 s and
    /// never a reply; off, the board answers again after its next reboot.
    pub async fn hang(&self, on: bool) -> io::Result<()> {
        self.inject(Fault::Hang(on)).await
    }

    /// Reboots now, or with `mid_reply` in the middle of the next reply.
    pub async fn reboot(&self, mid_reply: bool) -> io::Result<()> {
        self.inject(Fault::Reboot { mid_reply }).await
    }

    /// Writes arbitrary bytes to the bridge.
    pub async fn garbage(&self, bytes: impl Into<Vec<u8>>) -> io::Result<()> {
        self.inject(Fault::Garbage(bytes.into())).await
    }

    /// The temperature reads `-1000.0` while on.
    pub async fn crc_error(&self, on: bool) -> io::Result<()> {
        self.inject(Fault::CrcError(on)).await
    }

    /// Sets the plate temperature, °C.
    pub async fn set_temperature(&self, c: f64) -> io::Result<()> {
        self.inject(Fault::SetTemperature(c)).await
    }

    /// Sets the distance to the water surface, inches.
    pub async fn set_water_distance(&self, inches: f64) -> io::Result<()> {
        self.inject(Fault::SetWaterDistance(inches)).await
    }

    /// Welds the relay: the heater stays on and reports `B+1` whatever is commanded.
    pub async fn stuck_heater(&self, on: bool) -> io::Result<()> {
        self.inject(Fault::StuckHeater(on)).await
    }

    /// Delays every reply.
    pub async fn reply_delay(&self, delay: Duration) -> io::Result<()> {
        self.inject(Fault::ReplyDelay(delay)).await
    }

    /// Closes the pty (the bridge's reads fail) and removes the symlink. Harmless when
    /// unplugged.
    pub async fn unplug(&self) -> io::Result<()> {
        self.request(Control::Unplug).await
    }

    /// Plugs in a new pty (a new `/dev/pts/M`), re-points the symlink at it and powers the
    /// board on. Unplugs first if needed. Returns the new slave device.
    pub async fn replug(&self) -> io::Result<PathBuf> {
        self.request(Control::Replug).await?
    }

    /// The state right now.
    pub async fn snapshot(&self) -> io::Result<SimSnapshot> {
        self.request(Control::Snapshot).await
    }

    /// A receiver of the state, updated after every step (for `wait_for`).
    pub fn watch(&self) -> watch::Receiver<SimSnapshot> {
        self.state.clone()
    }

    /// Every valid command line the device accepts from now on.
    pub fn commands(&self) -> CommandStream {
        CommandStream(self.commands.subscribe())
    }

    /// Every valid command line accepted so far (the latest 10 000), oldest first.
    pub async fn command_log(&self) -> io::Result<Vec<CommandEvent>> {
        self.request(Control::CommandLog).await
    }

    /// Stops the simulator and removes the symlink; returns once done.
    pub async fn shutdown(&self) -> io::Result<()> {
        self.request(Control::Shutdown).await
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Control) -> io::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.control.send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

/// Command lines as the device accepts them, for tests that wait on observable events.
#[derive(Debug)]
pub struct CommandStream(broadcast::Receiver<CommandEvent>);

impl CommandStream {
    /// The next accepted line equal to `line`, or `None` if `within` passes first or the
    /// simulator stops. Skips other lines; a receiver that lagged skips the lost ones.
    pub async fn next_matching(&mut self, line: &str, within: Duration) -> Option<CommandEvent> {
        tokio::time::timeout(within, async {
            loop {
                match self.0.recv().await {
                    Ok(event) if event.line == line => return Some(event),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next accepted line, or `None` if `within` passes first or the simulator stops.
    pub async fn next(&mut self, within: Duration) -> Option<CommandEvent> {
        tokio::time::timeout(within, async {
            loop {
                match self.0.recv().await {
                    Ok(event) => return Some(event),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }
}

/// The simulator task's state: the one owner of the device and the pty.
struct Shell {
    device: Device,
    link_path: PathBuf,
    port: Option<Port>,
    control: mpsc::Receiver<Control>,
    state: watch::Sender<SimSnapshot>,
    commands: broadcast::Sender<CommandEvent>,
    /// Device output not yet written to the master.
    pending: Vec<u8>,
}

impl Shell {
    async fn run(mut self) {
        let mut buf = [0u8; 256];
        let mut next_poll = tokio::time::Instant::now();
        loop {
            self.collect();
            let deadline = self
                .device
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let poll = self.port.is_some().then_some(next_poll);
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(control) => {
                        if self.handle_control(control) {
                            break;
                        }
                    }
                    None => break,
                },
                () = sleep_until(poll) => {
                    self.poll_master(&mut buf);
                    let client = self.port.as_ref().is_some_and(|p| p.client);
                    next_poll = tokio::time::Instant::now()
                        + if client { POLL_CLIENT } else { POLL_NO_CLIENT };
                }
                () = sleep_until(deadline) => self.device.handle_timeout(now()),
            }
        }
        self.unplug();
    }

    /// Hands the device's output to the client, its commands to subscribers and its state to
    /// watchers.
    fn collect(&mut self) {
        let port = self.port.as_mut().filter(|p| p.client);
        while let Some(bytes) = self.device.poll_output() {
            if port.is_some() {
                let room = MAX_PENDING_OUTPUT.saturating_sub(self.pending.len());
                self.pending
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
        if let Some(port) = port {
            while !self.pending.is_empty() {
                match port.master.try_write(&self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n.min(self.pending.len()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The client is not reading; try again after the next step.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => self.pending.clear(),
                }
            }
        }
        while let Some(event) = self.device.poll_command() {
            // No subscriber is fine: nobody is waiting.
            let _ = self.commands.send(event);
        }
        let snapshot = self.snapshot();
        self.state.send_if_modified(|old| {
            let changed = *old != snapshot;
            *old = snapshot;
            changed
        });
    }

    fn snapshot(&self) -> SimSnapshot {
        SimSnapshot {
            device: self.device.snapshot(),
            plugged: self.port.is_some(),
            device_path: self.port.as_ref().map(|p| p.device_path.clone()),
        }
    }

    /// Reads what the client wrote. EIO means no client has the port open; once one has, it
    /// means the client closed it.
    fn poll_master(&mut self, buf: &mut [u8]) {
        loop {
            let Some(port) = self.port.as_mut() else {
                return;
            };
            match port.master.try_read(buf) {
                Ok(n) if n > 0 => {
                    port.client = true;
                    self.device.receive(now(), &buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    port.client = true;
                    return;
                }
                _ if port.client => return self.client_left(),
                _ => return,
            }
        }
    }

    /// The client closed the port: a fresh pty behind the link (see the module doc).
    fn client_left(&mut self) {
        self.pending.clear();
        let Some(port) = self.port.as_mut() else {
            return;
        };
        port.client = false;
        match open_port(&self.link_path) {
            // The old pty closes here, after the link points at the new one.
            Ok(fresh) => *port = fresh,
            Err(e) => tracing::warn!(error = %e, "simulator: cannot renew the pty"),
        }
    }

    /// Carries out one request; true when the task must stop.
    fn handle_control(&mut self, control: Control) -> bool {
        match control {
            Control::Inject(fault, done) => {
                self.device.inject(now(), fault);
                let _ = done.send(());
            }
            Control::Unplug(done) => {
                self.unplug();
                let _ = done.send(());
            }
            Control::Replug(done) => {
                self.unplug();
                let result = open_port(&self.link_path).map(|port| {
                    let path = port.device_path.clone();
                    self.port = Some(port);
                    self.device.power_on(now());
                    path
                });
                let _ = done.send(result);
            }
            Control::Snapshot(done) => {
                let _ = done.send(self.snapshot());
            }
            Control::CommandLog(done) => {
                let _ = done.send(self.device.command_log().cloned().collect());
            }
            Control::Shutdown(done) => {
                self.unplug();
                let _ = done.send(());
                return true;
            }
        }
        false
    }

    /// Powers the device off, closes the pty and removes the link if it still points at it.
    fn unplug(&mut self) {
        self.device.power_off(now());
        self.pending.clear();
        if let Some(port) = self.port.take() {
            if std::fs::read_link(&self.link_path).is_ok_and(|t| t == port.device_path) {
                if let Err(e) = std::fs::remove_file(&self.link_path) {
                    tracing::warn!(path = %self.link_path.display(), error = %e,
                        "simulator: cannot remove the link");
                }
            }
        }
        self.collect();
    }
}

/// A new pty pair with the link pointing at its slave.
fn open_port(link_path: &Path) -> io::Result<Port> {
    let (master, slave) = serialport::TTYPort::pair().map_err(io::Error::from)?;
    // `pair` opens the master without close-on-exec; every process started later (a bridge,
    // a broker) would keep a copy and an unplug would never hang the port up. A close-on-exec
    // duplicate replaces it.
    let master = master.try_clone_native().map_err(io::Error::from)?;
    let device_path = slave
        .name()
        .map(PathBuf::from)
        .ok_or_else(|| io::Error::other("the pty slave has no name"))?;
    point_link(link_path, &device_path)?;
    // The slave closes here; a client opens it through the link.
    drop(slave);
    let master = SerialStream::try_from(master).map_err(io::Error::from)?;
    Ok(Port {
        master,
        device_path,
        client: false,
    })
}

/// Points `link` at `target` atomically (a temporary link renamed over it). Refuses to replace
/// anything that is not a symlink, so a mistyped path cannot destroy a file.
fn point_link(link: &Path, target: &Path) -> io::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(link) {
        if !meta.file_type().is_symlink() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a symlink", link.display()),
            ));
        }
    }
    let name = link.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", link.display()),
        )
    })?;
    let tmp = link.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The device's clock: tokio's, so a paused test clock drives it too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the simulator has stopped")
}
