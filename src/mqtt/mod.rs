//! The task that owns the MQTT connection (SPEC §4): it publishes availability, state, events
//! and Home Assistant discovery, and turns command messages into [`CommandIn`]s for the
//! driver. Commands it cannot forward (bad payloads, a busy or closing bridge) it rejects and
//! publishes the `command_rejected` event itself; the driver publishes the core's rejections.
//!
//! Two loops, so that nothing ever blocks rumqttc's event loop and nothing waits on it:
//! - the *poller* owns the [`EventLoop`] and does nothing but poll it, forwarding what matters
//!   and sleeping a capped backoff after an error (polling again is how rumqttc reconnects);
//! - the *bridge* reacts to those events, to the driver's state `watch` and its event queue,
//!   and publishes with `try_publish` only, into a request queue sized for a whole reconnect's
//!   worth of messages. It publishes only while connected: nothing queues while the broker is
//!   away, and on every ConnAck it re-subscribes and re-publishes availability, the current
//!   state and discovery.
//!
//! Discovery after a ConnAck waits for one look at what the broker holds retained under this
//! bridge's discovery topics of either mode ([`discovery::probe_filters`]): the bridge
//! subscribes to them with the command subscription and unsubscribes at once; the broker
//! sends the retained messages of a new subscription before it answers the next packet, so
//! when both UNSUBACKs are in, every retained config has arrived. Then it publishes the
//! migrations and removals [`discovery::cleanup`] derives from them, and the configs.
//!
//! The heater core never waits on any of this: commands go to the driver with `try_send` and
//! a full queue is a rejection ("bridge busy"), never a wait.
//!
//! The connection is MQTT 5 with a clean start, so that commands sent while the bridge was away
//! are never replayed, and with a Maximum Packet Size of [`MAX_INCOMING_PACKET`]: the broker
//! drops larger messages for this client instead of delivering them, so an oversized (even a
//! retained) command can neither make the bridge allocate it nor make it drop the connection
//! over and over. The command subscription asks for "retain as published", so a retained
//! command is recognised as such even when it arrives live, and is never acted on.
//!
//! The client id is `mqtt.client_id` plus a random suffix, new at every connect
//! ([`client_id`]): a broker closes a session when another client connects with its id, so an
//! id anyone could guess would let anyone who can connect cut the bridge off. A session the
//! broker ends that way (DISCONNECT "session taken over") is logged once and the bridge
//! reconnects under a new id.
//!
//! The task ends when the driver's state sender is dropped (the driver has finished shutting
//! down): it publishes `offline` on both availability topics and disconnects.

pub mod command;
pub mod discovery;
pub mod topics;

use crate::config::{Discovery, Settings};
use crate::metrics as m;
use crate::state::{Clock, EventDoc, StateDoc};
pub use command::CommandIn;
use command::{Answer, CommandName, ReplyTo};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, Packet, PubAckReason,
    PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use topics::{CommandTopic, Topics};
use tracing::{debug, info, warn};

/// Largest packet the broker may send the bridge (MQTT 5 Maximum Packet Size); commands are
/// a few bytes, `homeassistant/status` a word.
pub const MAX_INCOMING_PACKET: u32 = 64 * 1024;
/// First wait before reconnecting after an error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait before reconnecting.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long starts the next backoff from [`BACKOFF_MIN`] again.
const STABLE: Duration = Duration::from_secs(10);
/// Requests queued for the event loop: a reconnect's subscription, availability, state and
/// every discovery message (with removals) fit with room to spare.
const REQUEST_QUEUE: usize = 256;
/// Most QoS 1 publications awaiting their PUBACK at once; the broker may ask for fewer.
const OUTGOING_INFLIGHT: u16 = 100;
/// How long the broker keeps the bridge's session (its command subscription and the commands
/// sent meanwhile) after a connection is lost: a reconnect within it resumes the session, and
/// the commands the broker acknowledged while the bridge was away are carried out or answered
/// as rejected. At shutdown the bridge unsubscribes first, so a stopped bridge's session
/// collects nothing.
pub const SESSION_EXPIRY_S: u32 = 60;
/// Longest wait, at shutdown, for the `offline` messages and the DISCONNECT to go out.
const DISCONNECT_WAIT: Duration = Duration::from_millis(500);

/// Why the MQTT connection cannot be set up at all (a configuration problem).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The password could not be read (`mqtt.password_file`).
    #[error(transparent)]
    Password(#[from] crate::config::ConfigError),
    /// A TLS file named in `mqtt.tls` could not be read.
    #[error("{key} {path}: {source}")]
    TlsFile {
        /// The setting that names the file.
        key: &'static str,
        /// The file.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
}

/// The MQTT task's ends of its channels (built with the others by
/// [`crate::bridge::channels`]).
#[derive(Debug)]
pub struct Io {
    /// The driver's state; every send is a publication. The driver holds the sender: its
    /// closing (the driver has finished) ends this task.
    pub state: watch::Receiver<Option<StateDoc>>,
    /// The driver's events to publish; the driver holds the sender. Dropping this makes the
    /// driver count its events as dropped.
    pub events: mpsc::Receiver<EventDoc>,
    /// Commands for the driver, which holds the receiver (bounded; full means "bridge busy",
    /// closed means "shutting down").
    pub commands: mpsc::Sender<CommandIn>,
    /// Answers from the driver to commands that asked for one; the driver holds the sender.
    pub answers: mpsc::Receiver<Answer>,
    /// Set while connected to the broker; HTTP holds the receiver (`/readyz`). Dropping it
    /// fails `/healthz` ("the MQTT task has stopped").
    pub connected: watch::Sender<bool>,
}

/// The client id for the next connection: `mqtt.client_id`, and unless
/// `mqtt.client_id_suffix` is off, a dash and 16 random hex digits (fresh at every call).
pub fn client_id(m: &crate::config::Mqtt) -> String {
    if m.client_id_suffix {
        format!("{}-{:016x}", m.client_id, fastrand::u64(..))
    } else {
        m.client_id.clone()
    }
}

/// The rumqttc options of these settings: client id ([`client_id`]), clean start, last will, keep-alive, credentials,
/// TLS, packet size limit. Reads the password and TLS files.
pub fn options(settings: &Settings) -> Result<MqttOptions, SetupError> {
    let m = &settings.mqtt;
    let topics = Topics::new(settings);
    let mut options = MqttOptions::new(client_id(m), m.host.clone(), m.port);
    options
        .set_clean_start(true)
        .set_session_expiry_interval(Some(SESSION_EXPIRY_S))
        .set_keep_alive(Duration::from_secs(m.keep_alive_s.max(5)))
        .set_request_channel_capacity(REQUEST_QUEUE)
        .set_max_packet_size(Some(MAX_INCOMING_PACKET))
        // rumqttc sizes its table of unacknowledged publications by this limit up front
        // (65,535 by default: 13.5 MiB resident); the bridge never has more than a few
        // publications in flight.
        .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
        .set_last_will(LastWill::new(
            topics.bridge_availability(),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
    if !m.username.is_empty() {
        let password = settings.mqtt_password()?.unwrap_or_default();
        options.set_credentials(m.username.clone(), password);
    }
    if m.tls.enabled() {
        let read = |key: &'static str, path: &str| {
            std::fs::read(path).map_err(|source| SetupError::TlsFile {
                key,
                path: path.to_owned(),
                source,
            })
        };
        let ca = read("mqtt.tls.ca_file", &m.tls.ca_file)?;
        let client_auth = if m.tls.client_cert.is_empty() {
            None
        } else {
            Some((
                read("mqtt.tls.client_cert", &m.tls.client_cert)?,
                read("mqtt.tls.client_key", &m.tls.client_key)?,
            ))
        };
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(5);
    options.set_network_options(network);
    Ok(options)
}

/// Runs the MQTT side until the driver's state channel closes, then publishes `offline` and
/// disconnects (bounded by a short deadline). Never returns on broker errors: it logs each
/// distinct one once and reconnects with a capped backoff.
pub async fn run(settings: Settings, options: MqttOptions, io: Io) {
    let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
    let (polled_tx, polled_rx) = mpsc::channel(64);
    let poller = tokio::spawn(poll(eventloop, settings.mqtt.clone(), polled_tx));
    let bridge = Bridge {
        topics: Topics::new(&settings),
        host: host_name(),
        settings,
        client,
        io,
        connected: false,
        ever_connected: false,
        announced_online: None,
        firmware: None,
        discovery_due: None,
        probe: None,
        last_error: None,
        client_id: String::new(),
        queue_full_logged: false,
        refused_publish_logged: false,
        refused_reply_logged: false,
        replaying: false,
        started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    bridge.run(polled_rx).await;
    poller.abort();
}

/// What the poller forwards.
#[derive(Debug)]
enum Polled {
    /// The broker accepted the connection of this client id (CONNACK), resuming the session
    /// of the previous connection (`true`) or starting a new one.
    Connected(String, bool),
    Event(Box<Event>),
    Error(ConnectionError),
    /// After our DISCONNECT, the broker closed the connection: everything sent before it
    /// was read and handled by the broker.
    Closed,
}

/// Polls the event loop forever; after an error, waits the backoff, picks the client id of
/// the next connection ([`client_id`]) and polls again.
async fn poll(mut eventloop: EventLoop, mqtt: crate::config::Mqtt, tx: mpsc::Sender<Polled>) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_at: Option<Instant> = None;
    let mut disconnecting = false;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                let done = matches!(event, Event::Outgoing(Outgoing::Disconnect));
                disconnecting |= done;
                if let Event::Incoming(Packet::ConnAck(ack)) = &event {
                    connected_at = Some(Instant::now());
                    // Later connections under this id resume its session.
                    eventloop.options.set_clean_start(false);
                    let id = eventloop.options.client_id();
                    let resumed = ack.session_present;
                    if tx.send(Polled::Connected(id, resumed)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let forward = match &event {
                    Event::Incoming(
                        Packet::Publish(_)
                        | Packet::SubAck(_)
                        | Packet::UnsubAck(_)
                        | Packet::PubAck(_)
                        | Packet::Disconnect(_),
                    ) => true,
                    _ => done,
                };
                if forward && tx.send(Polled::Event(Box::new(event))).await.is_err() {
                    return;
                }
            }
            // Keep reading after our DISCONNECT until the broker closes the connection: a
            // process that exits with unread bytes (PUBACKs) resets the connection, and a
            // reset can make the broker drop what it had not read yet — the `offline`.
            Err(_) if disconnecting => {
                let _ = tx.send(Polled::Closed).await;
                return;
            }
            Err(e) => {
                if connected_at.take().is_some_and(|at| at.elapsed() >= STABLE) {
                    backoff = BACKOFF_MIN;
                }
                let taken = taken_over(&e) || closed_abruptly(&e);
                if tx.send(Polled::Error(e)).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                // A lost network keeps the id, so the session (and what it queued) resumes;
                // a session another client took gets a new id and a clean start.
                if taken {
                    eventloop.options.set_client_id(client_id(&mqtt));
                    eventloop.options.set_clean_start(true);
                }
            }
        }
    }
}

struct Bridge {
    settings: Settings,
    topics: Topics,
    host: Option<String>,
    client: AsyncClient,
    io: Io,
    connected: bool,
    ever_connected: bool,
    /// The device availability last published in this connection.
    announced_online: Option<bool>,
    /// The firmware the last discovery carried.
    firmware: Option<String>,
    /// When to re-publish discovery after Home Assistant's `online`.
    discovery_due: Option<Instant>,
    /// While the look at the retained discovery topics after a ConnAck runs.
    probe: Option<Probe>,
    /// The last connection error logged, so a refusal is one line, not one per retry.
    last_error: Option<String>,
    /// The client id of the current (or last) connection.
    client_id: String,
    queue_full_logged: bool,
    refused_publish_logged: bool,
    /// A Response Topic outside `B/reply/` was logged (once per run; each is counted).
    refused_reply_logged: bool,
    /// When the bridge started (RFC 3339), for `B/bridge/info`.
    started_at: String,
    /// Between the CONNACK of a resumed session and the SUBACK: commands arriving now were
    /// sent while the bridge was away.
    replaying: bool,
}

/// The look at the retained discovery configs after a ConnAck.
struct Probe {
    /// UNSUBACKs still to come; at zero every retained config has arrived.
    unsubacks_left: usize,
    /// Topics holding a non-empty retained config.
    retained: BTreeSet<String>,
}

impl Bridge {
    async fn run(mut self, mut polled: mpsc::Receiver<Polled>) {
        loop {
            let discovery_due = self.discovery_due;
            tokio::select! {
                changed = self.io.state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_state();
                }
                p = polled.recv() => match p {
                    Some(Polled::Connected(id, resumed)) => self.on_connack(id, resumed),
                    Some(Polled::Event(event)) => self.on_event(*event),
                    Some(Polled::Error(e)) => self.on_error(&e),
                    Some(Polled::Closed) => {}
                    None => {
                        // The poller never ends on its own; keep the state closing as the cue.
                        warn!("MQTT event loop ended");
                        let _ = self.io.state.changed().await;
                        return;
                    }
                },
                Some(answer) = self.io.answers.recv() => self.publish_answer(answer),
                event = self.io.events.recv() => {
                    if let Some(event) = event {
                        self.publish_event(&event);
                    }
                }
                () = sleep_until(discovery_due.unwrap_or_else(Instant::now)), if discovery_due.is_some() => {
                    self.discovery_due = None;
                    self.publish_discovery();
                }
            }
        }
        self.shut_down(polled).await;
    }

    /// Publishes the driver's last events and `offline`, then disconnects.
    async fn shut_down(&mut self, mut polled: mpsc::Receiver<Polled>) {
        while let Ok(event) = self.io.events.try_recv() {
            self.publish_event(&event);
        }
        if !self.connected {
            info!("MQTT: not connected at shutdown; the last will marks the bridge offline");
            return;
        }
        // The session outlives the connection (SESSION_EXPIRY_S): without its subscription it
        // collects no command that nobody would carry out.
        for filter in self.topics.subscriptions() {
            let _ = self.client.try_unsubscribe(filter);
        }
        self.publish(&self.topics.availability(), "offline", true);
        self.publish(&self.topics.bridge_availability(), "offline", true);
        if self.client.try_disconnect().is_err() {
            warn!("MQTT: cannot queue DISCONNECT; the last will marks the bridge offline");
            return;
        }
        let deadline = Instant::now() + DISCONNECT_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, polled.recv()).await {
                Ok(Some(Polled::Closed)) => {
                    info!("MQTT: published offline and disconnected");
                    break;
                }
                Ok(Some(Polled::Error(_)) | None) | Err(_) => {
                    warn!("MQTT: no clean disconnect; the last will marks the bridge offline");
                    break;
                }
                Ok(Some(Polled::Event(_) | Polled::Connected(..))) => {}
            }
        }
        self.set_connected(false);
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::Publish(p)) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let reply = p.properties.and_then(|props| {
                    let to = props.response_topic?;
                    self.reply_to(&topic, to, props.correlation_data.map(|c| c.to_vec()))
                });
                self.on_message(&topic, &p.payload, p.retain, reply);
            }
            Event::Incoming(Packet::UnsubAck(_)) => {
                if let Some(probe) = self.probe.as_mut() {
                    probe.unsubacks_left = probe.unsubacks_left.saturating_sub(1);
                    if probe.unsubacks_left == 0 {
                        self.finish_probe();
                    }
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                self.replaying = false;
                for (filter, code) in self.topics.subscriptions().iter().zip(&ack.return_codes) {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        warn!(
                            "broker refused the subscription to {filter}: {code:?}; commands \
                             cannot reach the bridge (check the broker's ACL for user {:?})",
                            self.settings.mqtt.username
                        );
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack))
                if !matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) && !self.refused_publish_logged =>
            {
                self.refused_publish_logged = true;
                warn!(
                    "broker refused a publication: {:?} (check the broker's ACL lets user \
                     {:?} write {}/# and {}/#)",
                    ack.reason,
                    self.settings.mqtt.username,
                    self.topics.base,
                    self.topics.discovery_prefix
                );
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                warn!("broker closed the connection: {:?}", d.reason_code);
            }
            _ => {}
        }
    }

    fn on_connack(&mut self, client_id: String, resumed: bool) {
        let m = &self.settings.mqtt;
        if self.ever_connected {
            metrics::counter!(m::MQTT_RECONNECTS).increment(1);
        }
        info!(host = %m.host, port = m.port, client_id = %client_id, resumed, "connected to the MQTT broker");
        // A resumed session delivers what it queued while the bridge was away right after the
        // CONNACK, before the broker reads this connection's SUBSCRIBE: until its SUBACK, a
        // command is one sent while the bridge was away.
        self.replaying = resumed;
        self.client_id = client_id;
        self.ever_connected = true;
        self.last_error = None;
        self.refused_publish_logged = false;
        self.set_connected(true);
        self.announced_online = None;
        let mut filters: Vec<Filter> = self
            .topics
            .subscriptions()
            .into_iter()
            .map(|path| {
                let mut filter = Filter::new(path, QoS::AtLeastOnce);
                // Keep the retain flag of live messages, so a retained command is always seen
                // as one.
                filter.preserve_retain = true;
                filter
            })
            .collect();
        let probe = self.settings.homeassistant.discovery != Discovery::Off;
        let probe_filters = discovery::probe_filters(&self.settings);
        if probe {
            // After the command subscription, so that its SUBACK codes come first.
            filters.extend(
                probe_filters
                    .iter()
                    .map(|path| Filter::new(path.clone(), QoS::AtMostOnce)),
            );
        }
        if let Err(e) = self.client.try_subscribe_many(filters) {
            warn!("MQTT: cannot queue the subscription: {e}");
        }
        self.publish(&self.topics.bridge_availability(), "online", true);
        self.firmware = self.current().and_then(|s| s.firmware);
        self.publish_info();
        self.probe = None;
        if probe {
            let queued = probe_filters
                .iter()
                .filter(|f| self.client.try_unsubscribe(f.as_str()).is_ok())
                .count();
            self.probe = Some(Probe {
                unsubacks_left: queued,
                retained: BTreeSet::new(),
            });
            if queued < probe_filters.len() {
                warn!("MQTT: cannot queue the unsubscription of the discovery probe");
            }
            if queued == 0 {
                self.finish_probe();
            }
        }
        self.publish_current_state();
    }

    fn on_error(&mut self, e: &ConnectionError) {
        let was_connected = self.connected;
        self.set_connected(false);
        let text = describe(e, &self.settings);
        if taken_over(e) || (was_connected && closed_abruptly(e)) {
            let next = if self.settings.mqtt.client_id_suffix {
                "reconnecting under a new client id"
            } else {
                "reconnecting under the same id (mqtt.client_id_suffix is off: turn it on so \
                 that no other client can guess the id)"
            };
            let why = if taken_over(e) {
                "another client connected with the bridge's client id"
            } else {
                // mosquitto 2.0 closes the old connection without a DISCONNECT when another
                // client connects with its id; a broker going away usually does the same.
                "the broker closed the connection without a DISCONNECT (a broker restart or \
                 another client connecting with the bridge's client id)"
            };
            warn!(client_id = %self.client_id, "lost the MQTT broker: {why}; {next}");
            self.last_error = Some(text);
        } else if was_connected {
            warn!("lost the MQTT broker: {text}; reconnecting");
            self.last_error = Some(text);
        } else if self.last_error.as_deref() != Some(text.as_str()) {
            warn!("{text}; retrying with backoff (up to {BACKOFF_MAX:?})");
            self.last_error = Some(text);
        } else {
            debug!("{text}; still retrying");
        }
    }

    fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
        self.io.connected.send_replace(connected);
    }

    fn current(&self) -> Option<StateDoc> {
        self.io.state.borrow().clone()
    }

    fn on_state(&mut self) {
        let state = self.io.state.borrow_and_update().clone();
        if !self.connected {
            return;
        }
        let firmware = state.as_ref().and_then(|s| s.firmware.clone());
        if firmware.is_some() && firmware != self.firmware {
            self.firmware = firmware;
            self.publish_info();
            self.publish_discovery();
        }
        self.publish_state(state.as_ref());
    }

    fn publish_current_state(&mut self) {
        let state = self.io.state.borrow_and_update().clone();
        self.publish_state(state.as_ref());
    }

    /// Availability when it changed (or was not yet said in this connection), then the state.
    fn publish_state(&mut self, state: Option<&StateDoc>) {
        let online = state.is_some_and(StateDoc::online);
        if self.announced_online != Some(online) {
            let payload = if online { "online" } else { "offline" };
            self.publish(&self.topics.availability(), payload, true);
            self.announced_online = Some(online);
        }
        if let Some(state) = state {
            self.publish(&self.topics.state(), state.to_json(), true);
        }
    }

    fn publish_event(&mut self, event: &EventDoc) {
        if self.connected {
            self.publish(&self.topics.event(), event.to_json(), false);
        } else {
            debug!(
                event = event.event_type(),
                "not connected; event not published"
            );
            metrics::counter!(m::MQTT_EVENTS_DROPPED).increment(1);
        }
    }

    /// Every retained config has arrived: migrations and removals, then the configs.
    fn finish_probe(&mut self) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        let cleanup = discovery::cleanup(&self.settings, &probe.retained);
        if !cleanup.before.is_empty() {
            info!(
                retained = probe.retained.len(),
                messages = cleanup.before.len(),
                "clearing discovery left under other topics"
            );
        }
        for (topic, payload) in cleanup.before {
            self.publish(&topic, payload, true);
        }
        self.publish_discovery();
    }

    fn publish_discovery(&mut self) {
        if self.probe.is_some() {
            // The probe's end publishes discovery, after the migrations.
            return;
        }
        let messages = discovery::messages(
            &self.settings,
            self.firmware.as_deref(),
            self.host.as_deref(),
        );
        if !messages.is_empty() {
            debug!(count = messages.len(), "publishing discovery");
        }
        for (topic, payload) in messages {
            self.publish(&topic, payload, true);
        }
    }

    /// The retained `B/bridge/info`: what a person needs to know about this bridge without a
    /// shell on its machine.
    fn publish_info(&mut self) {
        let settings = &self.settings;
        let info = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at,
            "discovery": settings.homeassistant.discovery,
            "controller_port": settings.serial.port,
            "firmware": self.firmware,
            "mqtt_protocol": "5",
        });
        self.publish(&self.topics.bridge_info(), info.to_string(), true);
    }

    /// The answer's address for a command that came with a Response Topic, if the bridge
    /// may write there ([`Topics::reply_allowed`]). Anywhere else: no answer, counted, and
    /// logged once per run.
    fn reply_to(
        &mut self,
        topic: &str,
        response_topic: String,
        correlation: Option<Vec<u8>>,
    ) -> Option<ReplyTo> {
        if self.topics.reply_allowed(&response_topic) {
            return Some(ReplyTo {
                topic: response_topic,
                correlation,
            });
        }
        metrics::counter!(m::MQTT_REPLIES, "outcome" => "refused_topic").increment(1);
        if !std::mem::replace(&mut self.refused_reply_logged, true) {
            warn!(
                topic,
                response_topic,
                "a command asked for its answer outside {}<user>/…; it gets none (logged \
                 once; counted in {})",
                self.topics.reply_prefix(),
                m::MQTT_REPLIES
            );
        } else {
            debug!(
                topic,
                response_topic, "Response Topic outside the reply space"
            );
        }
        None
    }

    /// Publishes an answer (QoS 1, not retained, with the request's Correlation Data); one
    /// that cannot go out now (not connected, a full queue) is counted as shed.
    fn publish_answer(&mut self, answer: Answer) {
        let outcome = if !self.connected {
            "shed"
        } else {
            let properties = PublishProperties {
                correlation_data: answer.to.correlation.map(Into::into),
                content_type: Some("application/json".to_owned()),
                ..PublishProperties::default()
            };
            match self.client.try_publish_with_properties(
                answer.to.topic,
                QoS::AtLeastOnce,
                false,
                answer.json,
                properties,
            ) {
                Ok(()) => "sent",
                Err(e) => {
                    metrics::counter!(m::MQTT_PUBLISH_DROPPED).increment(1);
                    if !self.queue_full_logged {
                        self.queue_full_logged = true;
                        warn!("MQTT: answer dropped: {e}");
                    }
                    "shed"
                }
            }
        };
        metrics::counter!(m::MQTT_REPLIES, "outcome" => outcome).increment(1);
    }

    /// Queues a QoS 1 publication without waiting; a full queue drops it (the broker is not
    /// taking what it gets; the next ConnAck re-publishes everything that matters).
    fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        let payload: Vec<u8> = payload.into();
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => self.queue_full_logged = false,
            Err(e) => {
                metrics::counter!(m::MQTT_PUBLISH_DROPPED).increment(1);
                if !self.queue_full_logged {
                    self.queue_full_logged = true;
                    warn!("MQTT: publication to {topic} dropped: {e}");
                }
            }
        }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8], retain: bool, reply: Option<ReplyTo>) {
        if let Some(probe) = self.probe.as_mut() {
            let filters = discovery::probe_filters(&self.settings);
            if filters.iter().any(|f| topics::filter_matches(f, topic)) {
                if retain && !discovery::holds_nothing(payload) {
                    probe.retained.insert(topic.to_owned());
                }
                return;
            }
        }
        if topic == self.topics.ha_status() {
            let online = payload.trim_ascii().eq_ignore_ascii_case(b"online");
            if online && self.settings.homeassistant.discovery != Discovery::Off {
                let delay = Duration::from_millis(fastrand::u64(1000..=5000));
                debug!(?delay, "Home Assistant is online; discovery follows");
                self.discovery_due = Some(Instant::now() + delay);
            }
            return;
        }
        let Some(command) = self.topics.parse_command(topic) else {
            debug!(topic, "message on a topic the bridge does not handle");
            return;
        };
        let known = match &command {
            CommandTopic::Known(name) => Some(*name),
            CommandTopic::Unknown(_) => None,
        };
        let name = match &command {
            CommandTopic::Known(name) => name.name(),
            CommandTopic::Unknown(name) => name.as_str(),
        };
        if retain {
            info!(
                topic,
                "ignoring a retained command (clear it with: mosquitto_pub -r -n -t {topic})"
            );
            count(known, "retained_ignored");
            return;
        }
        let mut parsed = match command {
            CommandTopic::Known(name) => name
                .parse(payload, self.settings.brew.max_cups)
                .map(|request| (name, request)),
            CommandTopic::Unknown(ref name) => Err(command::unknown(name)),
        };
        if self.replaying {
            // Sent while the bridge was away: what cannot heat is carried out (an OFF must
            // never be lost); what could start heating is not started late, but answered.
            if let Ok((name, command::Order::Core(request))) = &parsed {
                if request.starts_heating() {
                    info!(
                        command = name.name(),
                        "a command sent while the bridge was away"
                    );
                    parsed = Err(LATE.to_owned());
                }
            }
        }
        match parsed {
            Ok((name, request)) => {
                let command = CommandIn {
                    request,
                    command: name,
                    payload: payload.to_vec(),
                    accepted_at: Instant::now(),
                    reply,
                };
                match self.io.commands.try_send(command) {
                    Ok(()) => count(known, "forwarded"),
                    Err(mpsc::error::TrySendError::Full(command)) => {
                        count(known, "busy");
                        self.reject(
                            name.name(),
                            payload,
                            "bridge busy: too many commands at once; try again in a moment",
                            command.reply,
                        );
                    }
                    Err(mpsc::error::TrySendError::Closed(command)) => {
                        count(known, "rejected");
                        self.reject(
                            name.name(),
                            payload,
                            "the bridge is shutting down",
                            command.reply,
                        );
                    }
                }
            }
            Err(reason) => {
                count(known, "rejected");
                self.reject(name, payload, &reason, reply);
            }
        }
    }

    fn reject(&mut self, command: &str, payload: &[u8], reason: &str, reply: Option<ReplyTo>) {
        if let Some(to) = reply {
            self.publish_answer(Answer::rejected(to, command, payload, reason));
        }
        info!(command, reason, "command rejected");
        let clock = Clock {
            now: std::time::Instant::now(),
            wall: SystemTime::now(),
        };
        self.publish_event(&EventDoc::command_rejected(
            command, payload, reason, &clock,
        ));
    }
}

/// The reason given for a command that could start heating and was sent while the bridge was
/// away from the broker.
const LATE: &str = "sent while the bridge was disconnected from the broker; a command that can start heating is never carried out late: send it again";

/// Counts a command by what became of it on the MQTT side (`forwarded` to the core, which
/// may still reject it; `rejected`; `busy`; `retained_ignored`).
fn count(command: Option<CommandName>, outcome: &'static str) {
    // Unknown names are not labels: they would let anyone grow the metric without bound.
    let command = command.map_or("unknown", CommandName::name);
    metrics::counter!(m::MQTT_COMMANDS, "command" => command, "outcome" => outcome).increment(1);
}

/// One line a person can act on, the same for every retry of the same problem.
fn describe(e: &ConnectionError, settings: &Settings) -> String {
    let m = &settings.mqtt;
    let at = format!("{}:{}", m.host, m.port);
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                // mosquitto answers a wrong password over MQTT 5 with "not authorized".
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    format!(
                        "bad user name or password, or not authorized ({code:?}; user {:?}: \
                         check the password in mqtt.password_file or COFFEEBOT__MQTT__PASSWORD \
                         against the broker's password file)",
                        m.username
                    )
                }
                ConnectReturnCode::ClientIdentifierNotValid | ConnectReturnCode::BadClientId => {
                    format!("client id {:?} not accepted (mqtt.client_id)", m.client_id)
                }
                other => format!("{other:?}"),
            };
            format!("broker {at} refused the connection: {why}")
        }
        ConnectionError::Io(io) => format!("cannot reach the MQTT broker at {at}: {io}"),
        ConnectionError::Tls(tls) => {
            // rustls adds the clock to an expired certificate's error ("verification time …,
            // … seconds ago"): without it the line is the same at every retry, so it is
            // logged once.
            let tls = tls.to_string();
            let tls = tls.split(": verification time").next().unwrap_or(&tls);
            format!("TLS with the MQTT broker at {at} failed: {tls}")
        }
        ConnectionError::Timeout(_) => format!("the MQTT broker at {at} did not answer in time"),
        other => format!("connection to the MQTT broker at {at} failed: {other}"),
    }
}

/// Whether the broker ended the session because another client connected with its client id
/// (MQTT 5 DISCONNECT reason 0x8E).
fn taken_over(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        })
    )
}

/// Whether the broker closed the connection without a word (no DISCONNECT, no error).
fn closed_abruptly(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::MqttState(StateError::ConnectionAborted))
}

/// This machine's host name, for `configuration_url` when HTTP listens on every address.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
