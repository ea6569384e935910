//! The broker's promise seen from the bridge (issue 4): with the shipped configuration, only
//! LAN users can brew; anonymous publishes on the public listener never reach the bridge; and a
//! bridge whose credentials the broker refuses says so once and keeps retrying.

mod support;

use std::time::Duration;

use coffeebot::sim::{SimConfig, SimHandle};
use support::bridge::{Bridge, Process};
use support::mosquitto::{Broker, Credentials, Listener, Login, Protocol, TestClient, User};
use support::sim::simulator;

const D: &str = "coffeebot/coffeepot";
const WAIT: Duration = Duration::from_secs(10);

/// The shipped broker, the simulator, the bridge and a `lan` client watching the state.
struct Rig {
    broker: Broker,
    sim: SimHandle,
    bridge: Bridge,
    watcher: TestClient,
}

impl Rig {
    async fn start(name: &str) -> Rig {
        let broker = Broker::start();
        let sim = simulator("acl", name, SimConfig::default()).await;
        let bridge = Bridge::start(
            sim.path(),
            &broker,
            &broker.credentials(User::Coffeebot),
            &[],
        );
        let mut watcher = lan(&broker, User::Lan).await;
        watcher.subscribe(&format!("{D}/state")).await.unwrap();
        Rig {
            broker,
            sim,
            bridge,
            watcher,
        }
    }
}

async fn lan(broker: &Broker, user: User) -> TestClient {
    broker
        .connect(Protocol::V311, Listener::Lan, Login::User(user))
        .await
        .expect("LAN client connects")
}

/// Waits for a state whose `cups` is `n`, as `user` sees it.
async fn wait_cups(client: &mut TestClient, n: u64) {
    client
        .wait_for(&format!("cups {n}"), WAIT, |m| {
            m.topic == format!("{D}/state")
                && serde_json::from_slice::<serde_json::Value>(&m.payload)
                    .is_ok_and(|s| s["cups"] == n)
        })
        .await
        .unwrap();
}

/// Waits for a state showing the controller answering with a temperature: before that, a
/// brew is refused ("no valid plate temperature yet").
async fn wait_answering(client: &mut TestClient) {
    client
        .wait_for("the controller answering", WAIT, |m| {
            m.topic == format!("{D}/state")
                && serde_json::from_slice::<serde_json::Value>(&m.payload)
                    .is_ok_and(|s| s["link"] == "up" && s["temperature_c"].is_number())
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_listener_commands_never_reach_the_bridge() {
    let Rig {
        broker,
        sim,
        bridge,
        mut watcher,
    } = Rig::start("public").await;
    wait_cups(&mut watcher, 4).await;
    let commands = [
        ("heater", "ON"),
        ("brew", "START"),
        ("brew", "7"),
        ("cups", "9"),
        ("keep_warm", "ON"),
        ("controller", "RESET"),
    ];
    for (i, protocol) in Protocol::ALL.into_iter().enumerate() {
        let mut public = broker
            .connect(protocol, Listener::Public, Login::Anonymous)
            .await
            .expect("anonymous public client connects");
        for (command, payload) in commands {
            // mosquitto answers the PUBACK after it has routed (here: dropped) the message.
            public
                .publish(&format!("{D}/{command}/set"), payload, false)
                .await
                .unwrap();
        }
        // A LAN command after them: once its effect shows, the bridge has handled everything
        // the broker routed to it before (one connection, in order).
        let marker = 2 + i as u64;
        let mut user = lan(&broker, User::Lan).await;
        user.publish(&format!("{D}/cups/set"), marker.to_string(), false)
            .await
            .unwrap();
        wait_cups(&mut watcher, marker).await;
    }
    let log = sim.command_log().await.unwrap();
    assert!(
        log.iter().all(|c| c.line != "B+1" && c.line != "RESET"),
        "a public command reached the controller: {log:?}"
    );
    assert!(!sim.snapshot().await.unwrap().device.heater_on);
    assert!(
        !bridge.log().iter().any(|l| l.contains("command rejected")),
        "{:#?}",
        bridge.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_and_homeassistant_can_brew() {
    let Rig {
        broker,
        sim,
        bridge: _bridge,
        mut watcher,
    } = Rig::start("lan").await;
    wait_answering(&mut watcher).await;
    for user in [User::Lan, User::HomeAssistant] {
        for protocol in Protocol::ALL {
            let mut client = broker
                .connect(protocol, Listener::Lan, Login::User(user))
                .await
                .expect("LAN user connects");
            let mut commands = sim.commands();
            client
                .publish(&format!("{D}/brew/set"), "START", false)
                .await
                .unwrap();
            assert!(
                commands.next_matching("B+1", WAIT).await.is_some(),
                "{user:?} over {protocol:?} could not brew"
            );
            client
                .publish(&format!("{D}/brew/set"), "STOP", false)
                .await
                .unwrap();
            assert!(commands.next_matching("B+0", WAIT).await.is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bridge_says_so_once_and_keeps_retrying() {
    let broker = Broker::start();
    let sim = simulator("acl", "refused", SimConfig::default()).await;
    let wrong = Credentials {
        username: User::Coffeebot.name().to_owned(),
        password: "not-the-password".to_owned(),
    };
    let process = Process {
        rust_log: "info,coffeebot::mqtt=debug",
        ..Process::default()
    };
    let mut bridge = Bridge::start_with(process, sim.path(), &broker, &wrong, &[]);
    let line = bridge
        .wait_for_log("refused the connection: bad user name or password", WAIT)
        .expect("a refusal line");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        !line.contains("not-the-password"),
        "the password was logged: {line}"
    );
    // Two more attempts (0.5 s, then 1 s of backoff), each logged at debug level only.
    assert!(
        bridge.wait_for_log_count("still retrying", 2, WAIT),
        "no retries: {:#?}",
        bridge.log()
    );
    let refusals = bridge
        .log()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("refused the connection"))
        .count();
    assert_eq!(refusals, 1, "{:#?}", bridge.log());
    assert!(bridge.is_running(), "the bridge exited");
    // Still driving the controller safely meanwhile: it answers polls.
    assert!(sim
        .commands()
        .next_matching("S+?", Duration::from_secs(3))
        .await
        .is_some());
}
