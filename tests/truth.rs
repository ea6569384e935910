//! A truthful interface (SPEC §4), end to end: the bridge as a real process, the simulator on a
//! real pseudo-terminal, the shipped mosquitto configuration, MQTT 5 test clients.
//!
//! - One state per change: no state shows a mode with a relay that the controller did not
//!   report after the command (`preheating` with the heater off, `off` with it on), and no
//!   state repeats the one before it.
//! - Readings alone make at most one state a second.
//! - Answers to commands (MQTT 5 request/response): one per command with a Response Topic
//!   under `B/reply/`, QoS 1, not retained, the same Correlation Data; none anywhere else.
//! - `B/bridge/info`, retained.
//!
//! Commands sent while the bridge was away are in `tests/client_id.rs`.
//!
//! Every wait ends on an observable event (a message, a log line) or fails after a timeout.

mod support;

use std::time::Duration;

use coffeebot::sim::SimConfig;
use serde_json::Value;
use support::mosquitto::{json, Broker, Listener, Login, Message, Protocol, TestClient, User};
use support::rig::Rig;

const B: &str = "coffeebot";
const D: &str = "coffeebot/coffeepot";
const WAIT: Duration = Duration::from_secs(15);

/// No periodic re-publication (every state in these tests is one for a change), preheat to
/// `preheat_c` at the simulator's 2 °C/s from 21 °C.
fn settings(preheat_c: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("MQTT__STATE_INTERVAL_S", "3600"),
        ("BREW__PREHEAT_C", preheat_c),
    ]
}

/// The shipped broker, the simulator, a watcher (`homeassistant`) and the bridge with `extra`.
async fn start(name: &str, extra: &[(&str, &str)]) -> Rig {
    let watched: [&str; 1] = [&format!("{B}/#")];
    Rig::shipped("truth", name, SimConfig::default(), &watched, extra).await
}

/// The state messages the watcher has seen from index `from` on.
fn states(watcher: &TestClient, from: usize) -> Vec<Message> {
    let topic = format!("{D}/state");
    watcher.seen()[from..]
        .iter()
        .filter(|m| m.topic == topic)
        .cloned()
        .collect()
}

/// A state that shows a combination that never existed: a heating mode with the relay
/// reported off, or `off` with it reported on (while the controller answers, no fault holds).
fn inconsistent(s: &Value) -> bool {
    let known = s["link"] == "up"
        && !s["heater"].is_null()
        && s["faults"].as_array().is_some_and(Vec::is_empty);
    let heating_mode = ["preheating", "brewing", "manual"].contains(&s["mode"].as_str().unwrap());
    known && ((heating_mode && s["heater"] == "OFF") || (s["mode"] == "off" && s["heater"] == "ON"))
}

/// The state without what changes without the state changing (`updated_at`, the countdown).
fn content(s: &Value) -> Value {
    let mut s = s.clone();
    let map = s.as_object_mut().unwrap();
    map.remove("updated_at");
    map.remove("brew_remaining_s");
    s
}

/// The state without its readings and the counters (whose heater seconds tick once a second
/// while heating): what is left when only readings changed.
fn beyond_readings(s: &Value) -> Value {
    let mut s = content(s);
    let map = s.as_object_mut().unwrap();
    for key in [
        "temperature_c",
        "water_distance_in",
        "water_level_pct",
        "counters",
    ] {
        map.remove(key);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_state_per_change_through_brews_manual_keep_warm_and_stop() {
    let mut rig = start("one_state", &settings("30.0")).await;
    let from = rig.watcher.seen().len();

    // A brew stopped in its preheat (the plate is cold), then one to its end.
    rig.command("brew", "START").await;
    rig.state_where("preheating", |s| s["mode"] == "preheating")
        .await;
    rig.command("brew", "STOP").await;
    rig.state_where("off", |s| s["mode"] == "off").await;

    rig.command("brew", "1").await;
    rig.event("brew_finished").await;
    rig.state_where("off after the brew", |s| s["mode"] == "off")
        .await;

    rig.command("heater", "ON").await;
    rig.state_where("manual", |s| s["mode"] == "manual").await;
    rig.command("heater", "OFF").await;
    rig.state_where("off", |s| s["mode"] == "off").await;

    rig.command("keep_warm", "ON").await;
    rig.state_where("keep warm", |s| s["mode"] == "keep_warm")
        .await;
    rig.command("keep_warm", "OFF").await;
    rig.state_where("off", |s| s["mode"] == "off").await;

    let all = states(&rig.watcher, from);
    let docs: Vec<Value> = all.iter().map(json).collect();
    let modes: Vec<&str> = docs.iter().map(|s| s["mode"].as_str().unwrap()).collect();
    for mode in ["preheating", "brewing", "manual", "keep_warm", "off"] {
        assert!(modes.contains(&mode), "{mode} never published: {modes:?}");
    }
    let mut failures = Vec::new();
    for (i, s) in docs.iter().enumerate() {
        if inconsistent(s) {
            failures.push(format!("state {i} never existed: {s}"));
        }
        if i > 0 && content(s) == content(&docs[i - 1]) {
            failures.push(format!("state {i} repeats the one before: {s}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(of {} states)",
        failures.join("\n"),
        docs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_alone_make_at_most_one_state_a_second() {
    // 21 → 36 °C at 2 °C/s: 7.5 s of preheat, a 0.3 °C deadband step every 0.15 s.
    let mut rig = start("readings", &settings("36.0")).await;
    let from = rig.watcher.seen().len();
    rig.command("brew", "1").await;
    rig.state_where("brewing", |s| s["mode"] == "brewing").await;
    rig.command("brew", "STOP").await;

    let all = states(&rig.watcher, from);
    let mut gaps = Vec::new();
    for pair in all.windows(2) {
        let (a, b) = (json(&pair[0]), json(&pair[1]));
        if a["mode"] == "preheating" && beyond_readings(&a) == beyond_readings(&b) {
            gaps.push(pair[1].at.duration_since(pair[0].at));
        }
    }
    assert!(
        gaps.len() >= 3,
        "the preheat should make several states of readings alone: {gaps:?}\n{}",
        all.iter().map(Message::text).collect::<Vec<_>>().join("\n")
    );
    // Arrival times: the broker and the test's own scheduling may bunch two a little.
    let short: Vec<&Duration> = gaps
        .iter()
        .filter(|g| **g < Duration::from_millis(900))
        .collect();
    assert!(
        short.is_empty(),
        "states of readings alone less than a second apart: {short:?} (all: {gaps:?})"
    );
}

/// A `lan` MQTT 5 client subscribed to its answers.
async fn requester(broker: &Broker) -> TestClient {
    let mut lan = broker
        .connect(Protocol::V5, Listener::Lan, Login::User(User::Lan))
        .await
        .unwrap();
    lan.subscribe(&format!("{B}/reply/lan/#")).await.unwrap();
    lan
}

/// Sends `command` `payload` asking for the answer on `reply` with `correlation`.
async fn request(
    lan: &mut TestClient,
    command: &str,
    payload: &str,
    reply: &str,
    correlation: &str,
) {
    let ack = lan
        .request(
            &format!("{D}/{command}/set"),
            payload,
            reply,
            correlation.as_bytes(),
        )
        .await
        .unwrap();
    assert!(ack.accepted(), "{command} {payload}: {ack:?}");
}

/// The answer carrying `correlation`.
async fn answer(lan: &mut TestClient, correlation: &str) -> (Message, Value) {
    // Each correlation is used once: the answer may have come while the request waited.
    let m = lan
        .wait_for(&format!("the answer {correlation}"), WAIT, |m| {
            m.correlation.as_deref() == Some(correlation.as_bytes())
        })
        .await
        .unwrap();
    let doc = json(&m);
    (m, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_with_a_response_topic_get_one_answer_there() {
    let mut rig = start("answers", &[]).await;
    let mut lan = requester(&rig.broker).await;
    let reply = format!("{B}/reply/lan/test");

    request(&mut lan, "cups", "3", &reply, "one").await;
    let (m, doc) = answer(&mut lan, "one").await;
    assert_eq!(m.topic, reply);
    assert_eq!((m.qos, m.retain), (1, false), "QoS 1, not retained");
    assert_eq!(doc["status"], "accepted", "{doc}");
    assert_eq!(
        (&doc["command"], &doc["payload"]),
        (&"cups".into(), &"3".into())
    );
    assert!(doc["reason"].is_null(), "{doc}");
    assert_eq!(doc["state"]["cups"], 3, "the state after its effect: {doc}");

    request(&mut lan, "cups", "99", &reply, "two").await;
    let (_, doc) = answer(&mut lan, "two").await;
    assert_eq!(doc["status"], "rejected", "{doc}");
    assert!(doc["reason"].as_str().unwrap().contains("1..12"), "{doc}");

    // A relay command's answer shows the relay as the controller reported it.
    request(&mut lan, "heater", "ON", &reply, "three").await;
    let (_, doc) = answer(&mut lan, "three").await;
    assert_eq!(doc["status"], "accepted", "{doc}");
    assert_eq!(
        (&doc["state"]["mode"], &doc["state"]["heater"]),
        (&"manual".into(), &"ON".into()),
        "{doc}"
    );

    // Response Topics the bridge must not write: carried out, never answered, logged once.
    let outside = "answer outside";
    request(&mut lan, "heater", "OFF", &format!("{B}/reply/lan"), "four").await;
    rig.state_where("heater off", |s| s["mode"] == "off" && s["heater"] == "OFF")
        .await;
    request(&mut lan, "cups", "4", &format!("{D}/state"), "five").await;
    request(&mut lan, "cups", "5", &format!("{B}/reply/lan/set"), "six").await;
    request(&mut lan, "cups", "2", &reply, "seven").await;
    let (_, doc) = answer(&mut lan, "seven").await;
    assert_eq!(doc["state"]["cups"], 2, "{doc}");
    // Answers go out in order: one to the earlier commands would have come before.
    let mut per_correlation = std::collections::BTreeMap::new();
    for m in lan.seen() {
        let c = String::from_utf8_lossy(m.correlation.as_deref().unwrap_or(b"none")).into_owned();
        *per_correlation.entry(c).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeMap<String, i32> = ["one", "two", "three", "seven"]
        .into_iter()
        .map(|c| (c.to_owned(), 1))
        .collect();
    assert_eq!(per_correlation, expected, "answers by Correlation Data");
    assert!(
        rig.bridge.wait_for_log(outside, WAIT).is_some(),
        "the refused Response Topic is logged"
    );
    assert_eq!(rig.bridge.log_count(outside), 1, "logged once");
    // The state topic got the bridge's states only.
    assert!(rig
        .watcher
        .seen()
        .iter()
        .filter(|m| m.topic == format!("{D}/state"))
        .all(|m| json(m)["mode"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_info_is_retained_with_what_a_person_needs() {
    let rig = start("info", &[]).await;
    let mut late = rig.broker.lan_client(Login::User(User::Lan)).await;
    let got = late
        .subscribe_and_collect(&format!("{B}/bridge/info"), 1, WAIT)
        .await
        .unwrap();
    assert!(got[0].retain);
    let info = json(&got[0]);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info}");
    assert!(
        humantime::parse_rfc3339(info["started_at"].as_str().unwrap()).is_ok(),
        "{info}"
    );
    assert_eq!(info["discovery"], "components", "{info}");
    assert_eq!(
        info["controller_port"],
        rig.sim.path().to_string_lossy().as_ref(),
        "{info}"
    );
    assert_eq!(info["mqtt_protocol"], "5", "{info}");
    assert!(info.get("firmware").is_some(), "{info}");
}

/// README's one-liner, with mosquitto's own `mosquitto_rr`: brew 2 cups and see the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_mosquitto_rr_one_liner_brews_and_prints_the_answer() {
    let rig = start("mosquitto_rr", &settings("30.0")).await;
    let lan = rig.broker.credentials(User::Lan);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("mosquitto_rr "))
        .expect("README shows a mosquitto_rr line");
    let args: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|a| match a {
            "BROKER" => rig.broker.host().to_owned(),
            "\"$LAN_PASSWORD\"" => lan.password.clone(),
            a => a.to_owned(),
        })
        .chain(["-p".to_owned(), rig.broker.lan_port().to_string()])
        .chain(["-W".to_owned(), "10".to_owned()])
        .collect();
    // `-W 10` bounds the wait for the answer; the run blocks a thread, not the runtime.
    let program = support::mosquitto::find_program("mosquitto_rr");
    let run_args = args.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program).args(&run_args).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert_eq!(
        (&answer["command"], &answer["payload"]),
        (&"brew".into(), &"2".into())
    );
    assert_eq!(
        (&answer["state"]["mode"], &answer["state"]["heater"]),
        (&"preheating".into(), &"ON".into()),
        "{answer}"
    );
}
