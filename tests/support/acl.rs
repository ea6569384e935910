//! The ACL matrix check the broker tests share: every subject publishes to every topic of a
//! matrix and subscribes to all of them and `#`; each must receive exactly the allowed
//! publications on the topics it may read. mosquitto 2.0 grants every SUBSCRIBE and filters at
//! delivery, so only deliveries are evidence; silence is proven by ordering (QoS 1
//! publications one after another, then a last message each reader may read).

use super::mosquitto::{Protocol, PubAck, TestClient};
use std::collections::BTreeSet;

/// What a subject may do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Neither publish nor receive.
    No,
    /// Receive (subscribe and get the messages).
    Sub,
    /// Publish (subscribers with read rights get it).
    Pub,
    /// Both.
    PubSub,
}

impl Access {
    /// Whether a publication of the subject reaches readers.
    pub fn may_pub(self) -> bool {
        matches!(self, Access::Pub | Access::PubSub)
    }

    /// Whether the subject receives what others publish.
    pub fn may_sub(self) -> bool {
        matches!(self, Access::Sub | Access::PubSub)
    }
}

/// Runs `matrix` (topic, one cell per subject) with `clients` (`None`: a subject that may not
/// connect) named by `labels`; returns every difference from the matrix, empty when none.
pub async fn check<const N: usize>(
    protocol: Protocol,
    clients: &mut [Option<TestClient>; N],
    labels: [&str; N],
    matrix: &[(String, [Access; N])],
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut filters: Vec<&str> = matrix.iter().map(|(topic, _)| topic.as_str()).collect();
    filters.push("#");
    for client in clients.iter_mut().flatten() {
        client.subscribe_many(&filters).await.unwrap();
    }

    // (topic, payload, allowed) of every publication, in order.
    let mut sent: Vec<(&str, String, bool)> = Vec::new();
    for (topic, cells) in matrix {
        for (si, client) in clients.iter_mut().enumerate() {
            let Some(client) = client else { continue };
            let label = labels[si];
            let payload = format!("{protocol:?} from {label} to {topic}");
            let ack = client.publish(topic, payload.clone(), false).await.unwrap();
            let allowed = cells[si].may_pub();
            let as_expected = if allowed {
                ack.accepted()
            } else {
                ack == PubAck::NotAuthorized
            };
            if protocol == Protocol::V5 && !as_expected {
                failures.push(format!(
                    "{protocol:?} {label} publishing {topic}: PUBACK {ack:?}, expected {}",
                    if allowed { "accepted" } else { "NotAuthorized" }
                ));
            }
            sent.push((topic, payload, allowed));
        }
    }

    // A last message for each reader, after all the above.
    for (ri, label) in labels.iter().enumerate() {
        if clients[ri].is_none() {
            continue;
        }
        let Some((topic, cells)) = matrix.iter().find(|(_, cells)| cells[ri].may_sub()) else {
            continue;
        };
        let writer = cells
            .iter()
            .position(|c| c.may_pub())
            .expect("a topic somebody may write");
        let payload = format!("{protocol:?} last message for {label}");
        let client = clients[writer].as_mut().expect("a writer connects");
        client.publish(topic, payload.clone(), false).await.unwrap();
        sent.push((topic, payload, true));
    }

    for (ri, label) in labels.iter().enumerate() {
        let Some(client) = clients[ri].as_mut() else {
            continue;
        };
        let readable = |topic: &str| matrix.iter().any(|(t, c)| t == topic && c[ri].may_sub());
        let expected: BTreeSet<(String, String)> = sent
            .iter()
            .filter(|(topic, _, allowed)| *allowed && readable(topic))
            .map(|(topic, payload, _)| (topic.to_string(), payload.clone()))
            .collect();
        for (topic, payload) in &expected {
            if let Err(e) = client.wait_for_payload(topic, payload).await {
                failures.push(format!("{protocol:?} {label}: missing: {e}"));
            }
        }
        if expected.is_empty() {
            client.round_trip().await.unwrap();
        }
        let received: BTreeSet<(String, String)> = client
            .seen()
            .iter()
            .map(|m| (m.topic.clone(), m.text()))
            .collect();
        for (topic, payload) in received.difference(&expected) {
            failures.push(format!(
                "{protocol:?} {label} received what it must not: {payload:?} on {topic}"
            ));
        }
    }
    failures
}
