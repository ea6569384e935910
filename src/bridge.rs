//! The whole bridge in one call: [`run`] builds every channel in one place ([`channels`]) and
//! starts the tasks — the serial link and the driver ([`daemon::run`]), MQTT ([`mqtt::run`]),
//! HTTP ([`http::serve`]: the public page and the operator's metrics and probes; it also runs
//! the metrics tracker) — then shuts them down in order
//! when the token is cancelled.
//!
//! Each task gets its own small struct of channel ends ([`daemon::Io`], [`mqtt::Io`],
//! [`HttpDeps`]); each field says who holds the other end and what dropping it means. The
//! driver is the only one that can act on the heater; MQTT can only send it commands, and HTTP
//! only watches.

use crate::config::Settings;
use crate::daemon;
use crate::http::{self, HttpDeps};
use crate::mqtt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest wait at shutdown for the MQTT task's `offline` and DISCONNECT, so that the whole
/// shutdown stays inside SPEC §3's 2 s.
pub const MQTT_FINISH: Duration = Duration::from_millis(600);
/// Events queued from the driver to MQTT; when full, events are counted as dropped.
const EVENT_QUEUE: usize = 256;
/// Commands queued from MQTT to the driver; when full, a command is rejected ("bridge busy").
const COMMAND_QUEUE: usize = 32;
/// Answers queued from the driver to MQTT; when full, an answer is counted as shed.
const ANSWER_QUEUE: usize = 256;

/// Why the bridge cannot start (a configuration or environment problem, found before any task
/// runs).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The MQTT connection cannot be set up (password or TLS files); the source says why.
    #[error("MQTT")]
    Mqtt(#[from] mqtt::SetupError),
    /// An HTTP listener cannot bind (`http.listen` or `http.ops_listen`); the source says why.
    #[error("cannot listen on {addr} ({key})")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The setting that asked for it.
        key: &'static str,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Every task's ends of the channels between them.
#[derive(Debug)]
pub struct Channels {
    /// The driver's: state and events out, commands in, its heartbeat.
    pub driver: daemon::Io,
    /// The MQTT task's: state and events in, commands out, whether it is connected.
    pub mqtt: mqtt::Io,
    /// The HTTP server's read-only views, titled with the device's name.
    pub http: HttpDeps,
}

/// Makes every channel between the driver, MQTT and HTTP; `device_name` titles the page.
pub fn channels(device_name: &str) -> Channels {
    let (state_tx, state_rx) = watch::channel(None);
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (answers_tx, answers_rx) = mpsc::channel(ANSWER_QUEUE);
    let (heartbeat_tx, heartbeat_rx) = watch::channel(Instant::now());
    let (connected_tx, connected_rx) = watch::channel(false);
    Channels {
        http: HttpDeps {
            title: device_name.to_owned(),
            state: state_rx.clone(),
            heartbeat: heartbeat_rx,
            broker_connected: connected_rx.clone(),
        },
        driver: daemon::Io {
            state: state_tx,
            events: events_tx,
            commands: commands_rx,
            answers: answers_tx,
            heartbeat: heartbeat_tx,
            broker_connected: connected_rx,
        },
        mqtt: mqtt::Io {
            state: state_rx,
            events: events_rx,
            commands: commands_tx,
            answers: answers_rx,
            connected: connected_tx,
        },
    }
}

/// Binds one of HTTP's listeners; the error names the setting that asked for it.
async fn listen(addr: SocketAddr, key: &'static str) -> Result<tokio::net::TcpListener, Error> {
    http::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, key, source })
}

/// Runs the bridge until `shutdown` is cancelled and the heater is confirmed off, then lets
/// MQTT say `offline` (at most [`MQTT_FINISH`]) and stops HTTP. Installs the metrics recorder
/// first, so that no count is lost.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), Error> {
    let mqtt_options = mqtt::options(&settings)?;
    crate::metrics::install();
    let Channels { driver, mqtt, http } = channels(&settings.device.name);
    let mut listeners = http::Listeners::default();
    if let Some(addr) = settings.http.listen_addr() {
        listeners.public = Some(listen(addr, "http.listen").await?);
        info!(%addr, "status page on http://{addr}/");
    }
    if let Some(addr) = settings.http.ops_listen_addr() {
        listeners.ops = Some(listen(addr, "http.ops_listen").await?);
        info!(%addr, "metrics and probes on http://{addr}/");
    }
    let http_task = (listeners.public.is_some() || listeners.ops.is_some()).then(|| {
        let options = http::Options::from_settings(&settings);
        tokio::spawn(http::serve(listeners, http, options, shutdown.clone()))
    });
    let mqtt_task = tokio::spawn(mqtt::run(settings.clone(), mqtt_options, mqtt));
    daemon::run(&settings, driver, shutdown).await;
    // The driver's state sender is gone: the MQTT task publishes offline and disconnects.
    if tokio::time::timeout(MQTT_FINISH, mqtt_task).await.is_err() {
        warn!("the MQTT task did not finish in time; the last will marks the bridge offline");
    }
    if let Some(task) = http_task {
        // The token is cancelled: the server stops accepting; open requests are cut short.
        task.abort();
    }
    Ok(())
}
