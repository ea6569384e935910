//! Fault injection: the controller's USB serial port unplugged mid-brew and a new device
//! plugged in behind the same path, with `coffeebot run` as a separate process, a real
//! mosquitto and the simulated controller on a real pseudo-terminal (see tests/faults.rs for
//! the rest of the suite).
//!
//! A test binary of its own, with the bridge started before the simulator: the simulator's pty
//! master becomes close-on-exec only just after it is opened (see `src/sim/pty.rs`), and a
//! process spawned in that instant by a parallel test would keep a copy, so that an unplug
//! (closing the master) never reached the bridge as a hang-up. Here nothing is spawned after
//! the simulator starts.

mod support;

use std::time::{Duration, Instant};

use coffeebot::sim::{SimConfig, Simulator};
use serde_json::Value;
use support::bridge::Bridge;
use support::mosquitto::{
    json, message_since, next_state, Broker, Listener, Login, Protocol, User,
};

const D: &str = "coffeebot/coffeepot";
const WAIT: Duration = Duration::from_secs(10);

fn has_fault(state: &Value, fault: &str) -> bool {
    state["faults"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == fault))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_unplugged_mid_brew_and_replugged_recovers_without_a_restart() {
    let broker = Broker::start();
    let dir = std::env::temp_dir().join(format!("coffeebot-faults-serial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tty");
    let mut w = broker
        .watcher(&[
            &format!("{D}/state"),
            &format!("{D}/event"),
            &format!("{D}/availability"),
        ])
        .await;
    let mut bridge = Bridge::start(
        &path,
        &broker,
        &broker.credentials(User::Coffeebot),
        &[("BREW__SECONDS_PER_CUP", "10")],
    );
    assert!(bridge.wait_for_log("cannot open", WAIT).is_some());
    let sim = Simulator::start(SimConfig::default(), path).await.unwrap();
    next_state(&mut w, "the controller answering", |s| {
        s["temperature_c"].is_number()
    })
    .await;

    let mut lan = broker
        .connect(Protocol::V311, Listener::Lan, Login::User(User::Lan))
        .await
        .unwrap();
    lan.publish(&format!("{D}/brew/set"), "2", false)
        .await
        .unwrap();
    next_state(&mut w, "brewing", |s| s["mode"] == "brewing").await;
    assert!(sim.snapshot().await.unwrap().device.heater_on);

    let before = w.seen().len();
    let unplugged = Instant::now();
    sim.unplug().await.unwrap();
    let state = next_state(&mut w, "link down", |s| has_fault(s, "link_down")).await;
    let noticed = unplugged.elapsed();
    assert_eq!(state["link"], "down");
    assert_eq!(state["mode"], "off");
    assert_eq!(state["heater"], Value::Null, "{state}");
    for (event_type, reason) in [("fault", "link_down"), ("brew_aborted", "link_down")] {
        message_since(&mut w, before, event_type, |m| {
            m.topic == format!("{D}/event")
                && json(m)["event_type"] == event_type
                && json(m)["reason"] == reason
        })
        .await;
    }
    message_since(&mut w, before, "device offline", |m| {
        m.topic == format!("{D}/availability") && m.payload == b"offline"
    })
    .await;

    // A new device behind the same path; the same process picks it up.
    let mut commands = sim.commands();
    let replugged = Instant::now();
    sim.replug().await.unwrap();
    assert_eq!(
        commands.next(WAIT).await.map(|c| c.line),
        Some("B+0".to_owned()),
        "the first line on the new device is not B+0"
    );
    let state = next_state(&mut w, "link up again", |s| {
        s["link"] == "up" && s["faults"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    let recovery = replugged.elapsed();
    assert_eq!(state["mode"], "off");
    for _ in 0..2 {
        assert!(commands.next_matching("S+?", WAIT).await.is_some());
    }
    let log = sim.command_log().await.unwrap();
    assert!(
        log.iter().all(|c| c.line != "B+1" || c.at < replugged),
        "heating resumed after the replug: {log:?}"
    );
    assert!(!sim.snapshot().await.unwrap().device.heater_on);
    assert!(bridge.is_running());
    println!(
        "FIGURE serial unplug: link_down published {} ms after the unplug; link up {} ms after the replug",
        noticed.as_millis(),
        recovery.as_millis()
    );
}
