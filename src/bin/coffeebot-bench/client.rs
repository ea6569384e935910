//! An MQTT client whose event loop runs in its own task and stamps everything it receives
//! with `Instant::now()`, so a subscriber's side of a latency is measured where it happens.
//!
//! [`Requester`] is the MQTT 5 flood client: commands with a Response Topic, answers counted.
//!
//! Overlaps the MQTT helpers of `tests/support/mosquitto.rs` (connect and wait for CONNACK,
//! subscribe and wait for SUBACK, next matching state document).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{STATE, WAIT};

/// What a client's event loop saw, stamped when `poll` returned it.
#[derive(Debug)]
pub(crate) enum Seen {
    Message {
        at: Instant,
        topic: String,
        payload: Vec<u8>,
    },
    SubAck,
    PubAck,
}

/// An MQTT 3.1.1 client whose event loop runs in its own task.
pub(crate) struct Client {
    pub(crate) client: AsyncClient,
    pub(crate) seen: mpsc::Receiver<Seen>,
    pub(crate) task: JoinHandle<()>,
}

impl Client {
    pub(crate) async fn connect(id: &str, port: u16) -> Result<Client> {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(1000)
            .set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        // The bench's own clients must not add Nagle delays to what they measure.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, seen) = mpsc::channel(100_000);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            let mut errors = 0u32;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        let at = Instant::now();
                        let seen = match packet {
                            Packet::ConnAck(_) => {
                                if let Some(tx) = connected_tx.take() {
                                    let _ = tx.send(());
                                }
                                continue;
                            }
                            Packet::Publish(p) => Seen::Message {
                                at,
                                topic: p.topic,
                                payload: p.payload.to_vec(),
                            },
                            Packet::SubAck(_) => Seen::SubAck,
                            Packet::PubAck(_) => Seen::PubAck,
                            _ => continue,
                        };
                        // A client nobody reads (the flood) just drops what it sees.
                        let _ = tx.try_send(seen);
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(_) => {
                        errors += 1;
                        if errors > 50 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tokio::time::timeout(WAIT, connected)
            .await
            .map_err(|_| anyhow!("MQTT client {id}: no CONNACK within {WAIT:?}"))?
            .map_err(|_| anyhow!("MQTT client {id}: event loop ended"))?;
        Ok(Client { client, seen, task })
    }

    pub(crate) async fn subscribe(&mut self, topic: &str) -> Result<()> {
        self.client.subscribe(topic, QoS::AtLeastOnce).await?;
        self.wait(|s| matches!(s, Seen::SubAck), "SUBACK").await?;
        Ok(())
    }

    /// Publishes at QoS 1; returns when it was handed to the event loop.
    pub(crate) async fn publish(&self, topic: &str, payload: &str) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await?;
        Ok(())
    }

    /// Waits for the first thing seen that `want` accepts, dropping the rest.
    pub(crate) async fn wait(
        &mut self,
        mut want: impl FnMut(&Seen) -> bool,
        what: &str,
    ) -> Result<Seen> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(seen)) if want(&seen) => return Ok(seen),
                Ok(Some(_)) => {}
                Ok(None) => bail!("MQTT client stopped while waiting for {what}"),
                Err(_) => bail!("no {what} within {WAIT:?}"),
            }
        }
    }

    /// The next state document received after `after`, which `want` accepts.
    pub(crate) async fn state(
        &mut self,
        after: Instant,
        mut want: impl FnMut(&Value, Instant) -> bool,
        what: &str,
    ) -> Result<(Instant, Value)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seen = tokio::time::timeout_at(deadline, self.seen.recv())
                .await
                .map_err(|_| anyhow!("no state with {what} within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("MQTT client stopped"))?;
            if let Seen::Message { at, topic, payload } = seen {
                if topic != STATE || at < after || payload.is_empty() {
                    continue;
                }
                let Ok(doc) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                if want(&doc, at) {
                    return Ok((at, doc));
                }
            }
        }
    }

    /// Forgets everything seen so far.
    pub(crate) fn drain(&mut self) {
        while self.seen.try_recv().is_ok() {}
    }

    pub(crate) async fn disconnect(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        self.task.abort();
    }
}

/// Waits (at most [`WAIT`]) for the [`Requester`]'s event loop to report `what`.
async fn ready_within(ready: &mut mpsc::Receiver<()>, what: &str) -> Result<()> {
    tokio::time::timeout(WAIT, ready.recv())
        .await
        .map_err(|_| anyhow!("MQTT 5 client: no {what} within {WAIT:?}"))?
        .ok_or_else(|| anyhow!("MQTT 5 client: event loop ended"))
}

/// Where the flood asks for its answers: `B/reply/<user>/…` (the bench's broker is anonymous;
/// the shipped ACL would let user `bench` read it).
pub(crate) const REPLY_TOPIC: &str = "coffeebot/reply/bench/flood";

/// What a [`Requester`] counted: acknowledgements of its publications, answers, and answers
/// whose Correlation Data had already been answered (each command must get exactly one).
#[derive(Debug, Default)]
pub(crate) struct Answers {
    pub(crate) acked: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
}

/// An MQTT 5 client that publishes commands with a Response Topic ([`REPLY_TOPIC`]) and a
/// Correlation Data of their sequence number, and counts their answers.
pub(crate) struct Requester {
    client: rumqttc::v5::AsyncClient,
    pub(crate) answers: Arc<Answers>,
    task: JoinHandle<()>,
}

impl Requester {
    /// Connects, subscribes to the answers and waits for both acknowledgements.
    pub(crate) async fn connect(id: &str, port: u16) -> Result<Requester> {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_start(true)
            .set_outgoing_inflight_upper_limit(1000);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 1000);
        let answers = Arc::new(Answers::default());
        let counts = Arc::clone(&answers);
        let (ready_tx, mut ready) = mpsc::channel(2);
        let task = tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut errors = 0u32;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(packet)) => match packet {
                        P5::ConnAck(_) | P5::SubAck(_) => {
                            let _ = ready_tx.try_send(());
                        }
                        P5::PubAck(_) => {
                            counts.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        P5::Publish(p) if p.topic.starts_with(REPLY_TOPIC.as_bytes()) => {
                            counts.answered.fetch_add(1, Ordering::Relaxed);
                            let key = p.properties.and_then(|props| props.correlation_data);
                            if !seen.insert(key) {
                                counts.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(_) => {
                        errors += 1;
                        if errors > 50 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        ready_within(&mut ready, "CONNACK").await?;
        client
            .subscribe(REPLY_TOPIC, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await?;
        ready_within(&mut ready, "SUBACK").await?;
        Ok(Requester {
            client,
            answers,
            task,
        })
    }

    /// Publishes `payload` to `topic` at QoS 1 asking for the answer, correlated by `seq`.
    pub(crate) async fn request(&self, topic: &str, payload: &str, seq: u64) -> Result<()> {
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(REPLY_TOPIC.to_owned()),
            correlation_data: Some(seq.to_be_bytes().to_vec().into()),
            ..Default::default()
        };
        self.client
            .publish_with_properties(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
                properties,
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn disconnect(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        self.task.abort();
    }
}
