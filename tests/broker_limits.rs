//! The shipped brokers' limits against clients that try to exhaust them. On the LAN broker
//! (`mosquitto/config/mosquitto.conf`) packets over `max_packet_size` are refused where they
//! arrive (MQTT 5: a DISCONNECT "packet too large"; MQTT 3.1.1: the connection closes). Public
//! clients only ever reach the public broker (`mosquitto/config/public.conf`, fed one way from
//! the LAN broker): there huge publishes (mosquitto 2.0's websockets listener buffers a whole
//! packet before it checks its size), floods of subscriptions and of persistent sessions meet
//! the public broker's `memory_limit`, while the LAN broker's memory does not move, the
//! bridge's connection stays up, and the status keeps reaching LAN and public readers; nothing
//! a public client leaves survives a restart of the public broker. Clients here speak raw MQTT
//! over TCP (through the harness's websocket relay on the public listener), as an attacker
//! would: a library client would refuse to send an oversized packet in the first place.

mod support;

use std::time::Duration;

use support::mosquitto::{
    remaining_length, websocket_relay, Broker, Listener, Login, Protocol, TestClient, User, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The broker's `max_packet_size`, also what the bridge announces it accepts.
const MAX_PACKET: usize = 65_536;
/// What the LAN broker may grow to under the LAN-side attacks, in KiB of resident memory. Its
/// `memory_limit` caps its heap at 24 MiB; its Kubernetes limit is 64 MiB.
const RSS_BOUND_KIB: u64 = 48 * 1024;
/// What the public broker may grow to under any public attack: its `memory_limit` caps its heap
/// at 16 MiB; its Kubernetes limit is 48 MiB.
const PUBLIC_RSS_BOUND_KIB: u64 = 32 * 1024;
/// How much the LAN broker may grow while public clients attack the public broker: nothing of
/// theirs reaches it (slack for the feed's own queue and the test's clients).
const LAN_GROWTH_BOUND_KIB: u64 = 2 * 1024;
const STATE: &str = "coffeebot/coffeepot/state";

/// The LAN broker's resident memory in KiB.
fn rss_kib(broker: &Broker) -> u64 {
    proc_rss_kib(broker.pid().expect("mosquitto runs"))
}

/// The public broker's resident memory in KiB (starts it if no test used it yet).
fn public_rss_kib(broker: &Broker) -> u64 {
    broker.ws_port();
    proc_rss_kib(broker.public_pid().expect("the public mosquitto runs"))
}

/// A process's resident memory in KiB.
fn proc_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A CONNECT packet.
fn connect(v5: bool, client_id: &str, login: Option<(&str, &str)>, clean: bool) -> Vec<u8> {
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.push(if v5 { 5 } else { 4 });
    let mut flags = if clean { 0x02 } else { 0 };
    if login.is_some() {
        flags |= 0xC0;
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    if v5 {
        // Session expiry: an hour for a persistent session, none for a clean one.
        if clean {
            body.push(0);
        } else {
            body.extend_from_slice(&[5, 0x11]);
            body.extend_from_slice(&3600u32.to_be_bytes());
        }
    }
    string(client_id, &mut body);
    if let Some((user, password)) = login {
        string(user, &mut body);
        string(password, &mut body);
    }
    let mut packet = vec![0x10];
    remaining_length(body.len(), &mut packet);
    packet.extend(body);
    packet
}

/// The fixed and variable header of a QoS 0 PUBLISH of `payload_len` bytes to `topic`.
fn publish_header(v5: bool, topic: &str, payload_len: usize) -> Vec<u8> {
    let mut variable = Vec::new();
    string(topic, &mut variable);
    if v5 {
        variable.push(0);
    }
    let mut packet = vec![0x30];
    remaining_length(variable.len() + payload_len, &mut packet);
    packet.extend(variable);
    packet
}

/// A SUBSCRIBE of one filter, QoS 1.
fn subscribe(v5: bool, packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    string(filter, &mut body);
    body.push(1);
    let mut packet = vec![0x82];
    remaining_length(body.len(), &mut packet);
    packet.extend(body);
    packet
}

/// Reads one packet: its first byte and body; `None` when the connection closed.
async fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let first = stream.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = stream.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.ok()?;
    Some((first, body))
}

/// The Maximum Packet Size property (0x27) of an MQTT 5 CONNACK body.
fn connack_max_packet(body: &[u8]) -> Option<u32> {
    let mut i = 2;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = *body.get(i)?;
        i += 1;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let props = body.get(i..i + len)?;
    let mut p = 0;
    while p < props.len() {
        let id = props[p];
        p += 1;
        let size = match id {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x21 | 0x22 | 0x13 => 2,
            0x11 | 0x27 => 4,
            0x12 | 0x1F | 0x1A | 0x1C | 0x15 | 0x16 => {
                2 + usize::from(u16::from_be_bytes([*props.get(p)?, *props.get(p + 1)?]))
            }
            0x26 => {
                let a = usize::from(u16::from_be_bytes([*props.get(p)?, *props.get(p + 1)?]));
                let b = usize::from(u16::from_be_bytes([
                    *props.get(p + 2 + a)?,
                    *props.get(p + 3 + a)?,
                ]));
                4 + a + b
            }
            _ => return None,
        };
        if id == 0x27 {
            return Some(u32::from_be_bytes(props.get(p..p + 4)?.try_into().ok()?));
        }
        p += size;
    }
    None
}

/// A raw connection on `listener`, connected (CONNACK 0 checked); returns the CONNACK body.
async fn raw_connect(
    broker: &Broker,
    listener: Listener,
    v5: bool,
    client_id: &str,
    user: Option<User>,
    clean: bool,
) -> (TcpStream, Vec<u8>) {
    let port = match listener {
        Listener::Lan => broker.lan_port(),
        Listener::Public => websocket_relay(broker.ws_port()).await.unwrap(),
    };
    let mut stream = TcpStream::connect((broker.host(), port)).await.unwrap();
    let login = user.map(|u| (u.name(), u.test_password()));
    stream
        .write_all(&connect(v5, client_id, login, clean))
        .await
        .unwrap();
    let (first, body) = tokio::time::timeout(WAIT, read_packet(&mut stream))
        .await
        .expect("CONNACK in time")
        .expect("a CONNACK");
    assert_eq!(first, 0x20, "CONNACK");
    assert_eq!(body[1], 0, "connection accepted");
    (stream, body)
}

/// Sends a PUBLISH of `size` payload bytes and returns how the broker answered: the reason code
/// of a DISCONNECT it sent, or `None` if it just closed the connection. Panics if it neither
/// disconnects nor closes.
async fn send_oversized(stream: &mut TcpStream, v5: bool, topic: &str, size: usize) -> Option<u8> {
    let header = publish_header(v5, topic, size);
    // The broker may close while we still write: a write error is part of the answer.
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    if stream.write_all(&header).await.is_ok() {
        while sent < size {
            let n = chunk.len().min(size - sent);
            if stream.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
    }
    let answer = tokio::time::timeout(WAIT, read_packet(stream))
        .await
        .expect("the broker answers an oversized packet by disconnecting");
    match answer {
        None => None,
        Some((0xE0, body)) => Some(body.first().copied().unwrap_or(0)),
        Some((first, _)) => panic!("unexpected packet {first:#x} after an oversized PUBLISH"),
    }
}

/// A client of `listener` logged in as `login`, subscribed to the state topic.
async fn state_reader(
    broker: &Broker,
    protocol: Protocol,
    listener: Listener,
    login: Login,
) -> TestClient {
    let mut reader = broker.connect(protocol, listener, login).await.unwrap();
    reader.subscribe(STATE).await.unwrap();
    reader
}

/// A LAN reader of the state topic still gets the bridge's messages.
async fn state_still_flows(broker: &Broker, text: &str) {
    let mut reader =
        state_reader(broker, Protocol::V5, Listener::Lan, Login::User(User::Lan)).await;
    let mut bridge = broker
        .connect(Protocol::V5, Listener::Lan, Login::User(User::Coffeebot))
        .await
        .unwrap();
    bridge.publish(STATE, text, false).await.unwrap();
    reader.wait_for_payload(STATE, text).await.unwrap();
}

/// The bridge's side of a public attack: connected to the LAN broker (as `coffeebot`) before
/// the attack, with a LAN reader and a public reader of the state.
struct Watch {
    bridge: TestClient,
    lan: TestClient,
    public: TestClient,
    lan_rss_before: u64,
}

impl Watch {
    async fn start(broker: &Broker) -> Watch {
        let bridge = broker
            .connect(Protocol::V5, Listener::Lan, Login::User(User::Coffeebot))
            .await
            .unwrap();
        let lan = state_reader(broker, Protocol::V5, Listener::Lan, Login::User(User::Lan)).await;
        let public = state_reader(broker, Protocol::V311, Listener::Public, Login::Anonymous).await;
        Watch {
            bridge,
            lan,
            public,
            lan_rss_before: rss_kib(broker),
        }
    }

    /// After the attack: the bridge's connection from before is still up (its publish is
    /// acknowledged on it), its state reaches the LAN reader at once and the public reader
    /// through the feed, and the LAN broker's memory has not grown by more than
    /// [`LAN_GROWTH_BOUND_KIB`]. Returns the LAN broker's growth in KiB.
    async fn check(mut self, broker: &Broker, attack: &str) -> u64 {
        let text = format!("state after {attack}");
        let ack = self.bridge.publish(STATE, text.as_str(), false).await;
        assert!(
            ack.as_ref().is_ok_and(|a| a.accepted()),
            "the bridge's connection did not survive {attack}: {ack:?}"
        );
        self.lan.wait_for_payload(STATE, &text).await.unwrap();
        self.public
            .wait_for("the state through the feed", Duration::from_secs(15), |m| {
                m.topic == STATE && m.payload == text.as_bytes()
            })
            .await
            .unwrap_or_else(|e| panic!("the public reader after {attack}: {e}"));
        let lan_after = rss_kib(broker);
        let growth = lan_after.saturating_sub(self.lan_rss_before);
        assert!(
            growth <= LAN_GROWTH_BOUND_KIB,
            "the LAN broker grew by {growth} KiB during {attack}"
        );
        growth
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_are_refused_where_they_arrive() {
    let broker = Broker::start();
    // Every MQTT 5 client is told the limit.
    for listener in [Listener::Lan, Listener::Public] {
        let user = (listener == Listener::Lan).then_some(User::Lan);
        let (_, connack) = raw_connect(&broker, listener, true, "told", user, true).await;
        assert_eq!(
            connack_max_packet(&connack),
            Some(MAX_PACKET as u32),
            "{listener:?}"
        );
    }
    // On the LAN listener an MQTT 5 client is disconnected with "packet too large" (0x95)…
    let user = Some(User::Lan);
    let (mut stream, _) = raw_connect(&broker, Listener::Lan, true, "big-v5", user, true).await;
    let answer = send_oversized(&mut stream, true, "coffeebot/coffeepot/brew/set", 1 << 20).await;
    assert_eq!(answer, Some(0x95), "DISCONNECT reason");
    // … and an MQTT 3.1.1 client, which has no reason codes, is disconnected.
    let (mut stream, _) = raw_connect(&broker, Listener::Lan, false, "big-v3", user, true).await;
    let answer = send_oversized(&mut stream, false, "coffeebot/coffeepot/brew/set", 1 << 20).await;
    assert_eq!(answer, None, "a 3.1.1 client is only disconnected");
    state_still_flows(&broker, "after oversized packets").await;
    let rss = rss_kib(&broker);
    assert!(rss < RSS_BOUND_KIB, "LAN mosquitto at {rss} KiB");
    // A packet just under the limit still goes through (the limit is not lower than said).
    let (mut stream, _) = raw_connect(
        &broker,
        Listener::Lan,
        true,
        "near-limit",
        Some(User::Lan),
        true,
    )
    .await;
    stream
        .write_all(&subscribe(true, 1, "coffeebot/coffeepot/brew/set"))
        .await
        .unwrap();
    let (first, _) = read_packet(&mut stream).await.unwrap();
    assert_eq!(first, 0x90, "SUBACK");
    let payload = MAX_PACKET - 1024;
    let mut packet = publish_header(true, "coffeebot/coffeepot/brew/set", payload);
    packet.extend(std::iter::repeat_n(b'x', payload));
    stream.write_all(&packet).await.unwrap();
    let (first, body) = tokio::time::timeout(WAIT, read_packet(&mut stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first & 0xF0, 0x30, "our own publish comes back");
    assert!(body.len() > payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_public_publishes_stay_under_the_bound() {
    let broker = Broker::start();
    let watch = Watch::start(&broker).await;
    let before = public_rss_kib(&broker);
    for i in 0..3 {
        let (mut stream, _) = raw_connect(
            &broker,
            Listener::Public,
            false,
            &format!("huge-{i}"),
            None,
            true,
        )
        .await;
        // mosquitto 2.0 reads a websocket client's whole packet before it checks the size; its
        // memory limit ends the connection instead.
        let answer =
            send_oversized(&mut stream, false, "coffeebot/coffeepot/state", 30 << 20).await;
        assert_eq!(answer, None, "a 3.1.1 client is only disconnected");
    }
    let after = public_rss_kib(&broker);
    let lan_growth = watch.check(&broker, "huge public publishes").await;
    eprintln!(
        "FIGURE 3 x 30 MiB public publishes: public mosquitto RSS {before} -> {after} KiB, \
         LAN mosquitto +{lan_growth} KiB, bridge connected"
    );
    assert!(after < PUBLIC_RSS_BOUND_KIB, "{before} -> {after} KiB");
}

/// Floods `listener` with up to 50,000 distinct filters (~60 MiB without a limit) from one
/// client, written in batches of 10 (a client that sends more at once than its queue of
/// answers holds, `max_queued_messages`, is disconnected sooner); the broker answers each with
/// a SUBACK or disconnects the client once its memory limit is reached. Returns how many were
/// acknowledged and whether the client was still connected.
async fn subscription_flood(
    broker: &Broker,
    listener: Listener,
    user: Option<User>,
) -> (u32, bool) {
    let (mut stream, _) = raw_connect(broker, listener, true, "subflood", user, true).await;
    const BATCH: u16 = 10;
    let mut acked = 0u32;
    for batch in 0..5000u16 {
        let mut packets = Vec::new();
        for i in 0..BATCH {
            let id = batch * BATCH + i + 1;
            packets.extend(subscribe(
                true,
                id,
                &format!("coffeebot/{id}/flood/{}/x", "y".repeat(200)),
            ));
        }
        if stream.write_all(&packets).await.is_err() {
            return (acked, false);
        }
        for _ in 0..BATCH {
            match tokio::time::timeout(WAIT, read_packet(&mut stream)).await {
                Ok(Some((0x90, _))) => acked += 1,
                Ok(Some(_)) | Ok(None) | Err(_) => return (acked, false),
            }
        }
    }
    (acked, true)
}

fn connected(open: bool) -> &'static str {
    if open {
        "still connected"
    } else {
        "disconnected"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_flood_stays_under_the_bound() {
    let broker = Broker::start();
    let watch = Watch::start(&broker).await;
    let before = public_rss_kib(&broker);
    let (acked, open) = subscription_flood(&broker, Listener::Public, None).await;
    let after = public_rss_kib(&broker);
    let lan_growth = watch.check(&broker, "a subscription flood").await;
    eprintln!(
        "FIGURE public subscription flood: public mosquitto RSS {before} -> {after} KiB after \
         {acked} subscriptions (client {}), LAN mosquitto +{lan_growth} KiB, bridge connected",
        connected(open)
    );
    assert!(after < PUBLIC_RSS_BOUND_KIB, "{after} KiB");
}

/// The same flood from a LAN user (who has a password): the LAN broker's own `memory_limit`
/// bounds it, which is what its Kubernetes memory limit is sized from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lan_subscription_flood_stays_under_the_bound() {
    let broker = Broker::start();
    let before = rss_kib(&broker);
    let (acked, open) = subscription_flood(&broker, Listener::Lan, Some(User::Lan)).await;
    let after = rss_kib(&broker);
    eprintln!(
        "FIGURE LAN subscription flood: LAN mosquitto RSS {before} -> {after} KiB after {acked} \
         subscriptions (client {})",
        connected(open)
    );
    assert!(after < RSS_BOUND_KIB, "{after} KiB");
    state_still_flows(&broker, "after a LAN subscription flood").await;
}

/// How many persistent public sessions the flood opens.
const SESSIONS: usize = 1000;

/// One anonymous public client: connects with a persistent session, subscribes to the state
/// and leaves (DISCONNECT). Returns whether the broker granted the subscription.
async fn persistent_session(ws_port: u16, i: usize) -> bool {
    let port = websocket_relay(ws_port).await.unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let id = format!("persist-{i:04}");
    stream
        .write_all(&connect(false, &id, None, false))
        .await
        .unwrap();
    let Ok(Some((0x20, _))) = tokio::time::timeout(WAIT, read_packet(&mut stream)).await else {
        return false;
    };
    stream.write_all(&subscribe(false, 1, STATE)).await.unwrap();
    let granted = matches!(
        tokio::time::timeout(WAIT, read_packet(&mut stream)).await,
        Ok(Some((0x90, _)))
    );
    let _ = stream.write_all(&[0xE0, 0]).await;
    granted
}

/// Opens [`SESSIONS`] anonymous persistent sessions (clean session off) on the public
/// listener, 50 at a time, each subscribed to the state; returns how many the broker granted.
async fn open_persistent_sessions(broker: &Broker) -> usize {
    let ws_port = broker.ws_port();
    let mut granted = 0;
    for chunk in (0..SESSIONS).collect::<Vec<_>>().chunks(50) {
        let mut tasks = tokio::task::JoinSet::new();
        for &i in chunk {
            tasks.spawn(persistent_session(ws_port, i));
        }
        while let Some(done) = tasks.join_next().await {
            granted += usize::from(done.unwrap());
        }
    }
    granted
}

/// The attack that exhausted the single broker: 1,000 persistent public sessions on the state,
/// then 1,000 states of ~600 bytes (QoS 1) that queue for every one of them. On the public
/// broker each session keeps at most `max_queued_messages` (20) of them, `memory_limit` caps
/// the rest, and the LAN broker sees none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_public_sessions_stay_under_the_bound() {
    let broker = Broker::start();
    let mut watch = Watch::start(&broker).await;
    let before = public_rss_kib(&broker);
    assert_eq!(open_persistent_sessions(&broker).await, SESSIONS);
    let state = format!("{{\"mode\":\"off\",\"pad\":\"{}\"}}", "p".repeat(560));
    for i in 0..1000 {
        watch
            .bridge
            .publish(STATE, format!("{state}{i}"), false)
            .await
            .unwrap();
    }
    let after = public_rss_kib(&broker);
    let lan_growth = watch.check(&broker, "persistent public sessions").await;
    eprintln!(
        "FIGURE {SESSIONS} persistent public sessions x 1,000 states: public mosquitto RSS \
         {before} -> {after} KiB, LAN mosquitto +{lan_growth} KiB, bridge connected"
    );
    assert!(after < PUBLIC_RSS_BOUND_KIB, "{after} KiB");
}

/// Nothing a public client leaves behind survives a restart of the public broker: a persistent
/// session comes back as a new one (CONNACK "session present" 0, no queued message), no file
/// is written, and the status is there again at once, retained, through the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_from_the_public_side_survives_a_restart() {
    let mut broker = Broker::start();
    let mut bridge = broker
        .connect(Protocol::V5, Listener::Lan, Login::User(User::Coffeebot))
        .await
        .unwrap();
    bridge
        .publish(STATE, "retained status", true)
        .await
        .unwrap();
    assert_eq!(open_persistent_sessions(&broker).await, SESSIONS);
    // A state that queues for every session while they are away.
    bridge.publish(STATE, "queued", false).await.unwrap();
    let files_before = files_in(broker.dir());
    broker.restart_public();
    for i in [0, SESSIONS / 2, SESSIONS - 1] {
        let (mut stream, connack) = raw_connect(
            &broker,
            Listener::Public,
            false,
            &format!("persist-{i:04}"),
            None,
            false,
        )
        .await;
        assert_eq!(
            connack[0] & 1,
            0,
            "persist-{i:04}: session present after a restart"
        );
        // Nothing queued arrives: the next packet is the answer to a ping.
        stream.write_all(&[0xC0, 0]).await.unwrap();
        let (first, _) = tokio::time::timeout(WAIT, read_packet(&mut stream))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first, 0xD0,
            "persist-{i:04}: only PINGRESP, no queued message"
        );
    }
    let mut public = broker
        .connect(Protocol::V311, Listener::Public, Login::Anonymous)
        .await
        .unwrap();
    let got = public.subscribe_and_collect(STATE, 1, WAIT).await.unwrap();
    assert_eq!(
        (got[0].text().as_str(), got[0].retain),
        ("retained status", true)
    );
    let files_after = files_in(broker.dir());
    assert_eq!(files_before, files_after, "files written by the restart");
    assert!(
        !files_after
            .iter()
            .any(|f| f.ends_with(".db") && !f.starts_with("data/")),
        "the public broker wrote a persistence file: {files_after:?}"
    );
}

/// The files below `dir` (relative paths), logs left out.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_none_or(|e| e != "log") {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}
