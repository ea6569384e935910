//! An MQTT client whose event loop runs in its own task and stamps everything it receives
//! with `Instant::now()`, so a subscriber's side of a latency is measured where it happens.
//!
//! Overlaps the MQTT helpers of `tests/support/mosquitto.rs` (connect and wait for CONNACK,
//! subscribe and wait for SUBACK, next matching state document).

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
