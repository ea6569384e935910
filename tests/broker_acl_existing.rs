//! coffeebot on a mosquitto the household already runs (issue 13): the ACL lines of
//! `mosquitto/acl-existing-broker`, appended to an existing ACL file, give the bridge its own
//! topics and nothing else, give Home Assistant what it needs for coffeebot while it keeps its
//! other rights, and (with the `topic deny` lines `mosquitto/README.md` gives) keep another
//! client with a broad grant away from coffeebot's commands. Proven against a real mosquitto
//! with MQTT 3.1.1 and 5 clients, and with the real bridge and the simulated controller.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use coffeebot::config::load_with;
use coffeebot::mqtt::command::CommandName;
use coffeebot::mqtt::topics::Topics;
use coffeebot::sim::SimConfig;
use support::acl::Access::{self, No, Pub, PubSub, Sub};
use support::bridge::Bridge;
use support::mosquitto::{Broker, Listener, Login, Protocol, PubAck, TestClient, User};
use support::sim::simulator;

const D: &str = "coffeebot/coffeepot";
const WAIT: Duration = Duration::from_secs(10);

/// An ACL in use before coffeebot: Home Assistant owns the discovery prefix and shares
/// zigbee2mqtt's topics; another client may do anything, as the Home Assistant Mosquitto
/// add-on's documented ACL has it for its `addons` user (here the test user `lan`).
const EXISTING_ACL: &str = "\
# Before coffeebot.
user homeassistant
topic readwrite homeassistant/#
topic readwrite zigbee2mqtt/#

user lan
topic readwrite #
";

/// What `mosquitto/README.md` says to add for such a user (there: `user addons`).
const DENY_LINE: &str = "topic deny coffeebot/#";

fn mosquitto_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mosquitto")
}

fn snippet() -> String {
    let path = mosquitto_dir().join("acl-existing-broker");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The existing ACL with the documented lines appended, as a user would leave it.
fn merged_acl() -> String {
    format!("{EXISTING_ACL}\n{}\nuser lan\n{DENY_LINE}\n", snippet())
}

/// The columns: the bridge, Home Assistant, another client with a broad grant.
const SUBJECTS: [User; 3] = [User::Coffeebot, User::HomeAssistant, User::Lan];

/// Subjects × topics under [`merged_acl`].
fn matrix() -> Vec<(String, [Access; 3])> {
    let topics = Topics::new(&load_with(None, &[]).expect("default settings"));
    #[rustfmt::skip]
    let fixed: [(&str, [Access; 3]); 14] = [
        ("coffeebot/bridge/availability", [Pub, Sub, No]),
        ("coffeebot/bridge/info", [Pub, Sub, No]),
        // Answers to commands: each user reads only its own.
        ("coffeebot/reply/homeassistant/kitchen-tablet", [Pub, Sub, No]),
        ("coffeebot/reply/lan/phone", [Pub, No, No]),
        ("coffeebot/coffeepot/availability", [Pub, Sub, No]),
        ("coffeebot/coffeepot/state", [Pub, Sub, No]),
        ("coffeebot/coffeepot/event", [Pub, Sub, No]),
        ("homeassistant/status", [Sub, PubSub, PubSub]),
        // The bridge's discovery, in both modes and its device triggers.
        ("homeassistant/switch/coffeebot_coffeepot/heater/config", [PubSub, PubSub, PubSub]),
        ("homeassistant/device/coffeebot_coffeepot/config", [PubSub, PubSub, PubSub]),
        ("homeassistant/device_automation/coffeebot_coffeepot/on_fault/config", [PubSub, PubSub, PubSub]),
        // Somebody else's discovery and topics: not the bridge's business.
        ("homeassistant/light/0x00158d0001a2b3c4/light/config", [No, PubSub, PubSub]),
        ("zigbee2mqtt/bridge/state", [No, PubSub, PubSub]),
        ("zigbee2mqtt/kitchen_lamp/set", [No, PubSub, PubSub]),
    ];
    fixed
        .iter()
        .map(|(t, c)| (t.to_string(), *c))
        .chain(
            CommandName::ALL
                .into_iter()
                .map(|c| (topics.command(c), [Sub, PubSub, No])),
        )
        .collect()
}

async fn connect(broker: &Broker, protocol: Protocol, user: User) -> TestClient {
    broker
        .connect(protocol, Listener::Lan, Login::User(user))
        .await
        .unwrap_or_else(|e| panic!("{protocol:?} {}: must connect: {e}", user.name()))
}

/// Every subject publishes to every topic and subscribes to all of them and `#`; each must
/// receive exactly the allowed publications on the topics it may read ([`support::acl`]).
#[tokio::test]
async fn merged_acl_gives_each_user_what_it_needs_and_nothing_more() {
    let matrix = matrix();
    for protocol in Protocol::ALL {
        let broker = Broker::start_with_lan_acl(&merged_acl());
        let mut clients = [None, None, None];
        for (client, user) in clients.iter_mut().zip(SUBJECTS) {
            *client = Some(connect(&broker, protocol, user).await);
        }
        let labels = SUBJECTS.map(|user| user.name());
        let failures = support::acl::check(protocol, &mut clients, labels, &matrix).await;
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// The bridge works under the merged ACL: it clears a stale config of its own node (it may read
/// and write its discovery), publishes its discovery and state, and takes Home Assistant's
/// commands; the broadly granted client's commands never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_works_under_the_merged_acl() {
    let broker = Broker::start_with_lan_acl(&merged_acl());
    let mut ha = connect(&broker, Protocol::V5, User::HomeAssistant).await;
    let stale = "homeassistant/sensor/coffeebot_coffeepot/retired/config";
    let ack = ha
        .publish(stale, r#"{"name": "retired"}"#, true)
        .await
        .unwrap();
    assert!(ack.accepted(), "{ack:?}");
    ha.subscribe_many(&["homeassistant/#", "coffeebot/#"])
        .await
        .unwrap();

    let sim = simulator("acl-existing", "bridge", SimConfig::default()).await;
    let bridge = Bridge::start(
        sim.path(),
        &broker,
        &broker.credentials(User::Coffeebot),
        &[],
    );
    ha.wait_for("the stale config cleared", WAIT, |m| {
        m.topic == stale && m.payload.is_empty()
    })
    .await
    .unwrap();
    ha.wait_for("the bridge's discovery", WAIT, |m| {
        m.topic.starts_with("homeassistant/")
            && m.topic.contains("/coffeebot_coffeepot/")
            && m.topic != stale
            && !m.payload.is_empty()
    })
    .await
    .unwrap();
    ha.wait_for_payload(&format!("{D}/availability"), "online")
        .await
        .unwrap();
    let state = |n: u64| {
        move |m: &support::mosquitto::Message| {
            m.topic == format!("{D}/state")
                && serde_json::from_slice::<serde_json::Value>(&m.payload)
                    .is_ok_and(|s| s["cups"] == n)
        }
    };

    let mut other = connect(&broker, Protocol::V5, User::Lan).await;
    let refused = other
        .publish(&format!("{D}/cups/set"), "5", false)
        .await
        .unwrap();
    assert_eq!(refused, PubAck::NotAuthorized);
    // Home Assistant's command after the refused one: once its effect shows, the bridge has
    // had everything the broker routed to it before.
    let ack = ha
        .publish(&format!("{D}/cups/set"), "3", false)
        .await
        .unwrap();
    assert!(ack.accepted(), "{ack:?}");
    ha.wait_for("cups 3", WAIT, state(3)).await.unwrap();
    assert!(
        !ha.seen().iter().any(state(5)),
        "a command of the broadly granted client reached the bridge"
    );
    assert_eq!(
        bridge.log_count("not authorized"),
        0,
        "the bridge met a refusal:\n{}",
        bridge.log().join("\n")
    );
}

/// `mosquitto/README.md` gives these lines verbatim: the file to append and the deny line.
#[test]
fn the_lines_are_in_mosquitto_readme() {
    let readme = std::fs::read_to_string(mosquitto_dir().join("README.md")).unwrap();
    let lines = snippet();
    assert!(
        readme.contains(&lines),
        "mosquitto/README.md must contain mosquitto/acl-existing-broker verbatim"
    );
    assert!(
        readme.contains(&format!("user addons\n{DENY_LINE}\n")),
        "mosquitto/README.md must give `user addons` / `{DENY_LINE}`"
    );
}
