//! The bridge end to end: `coffeebot run` as a real process, the simulator on a real
//! pseudo-terminal, a real mosquitto running the shipped configuration (or a plain anonymous
//! one where a test needs what the shipped ACL forbids), and MQTT test clients.
//!
//! Every wait ends on an observable event (a message, a serial command line, a log line, the
//! process's exit) or fails after a timeout; nothing sleeps to synchronise.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use coffeebot::sim::SimConfig;
use coffeebot::state::StateDoc;
use serde_json::Value;
use support::bridge::Bridge;
use support::mosquitto::{json, message_since, next_message, Broker, Login, User};
use support::rig::Rig;
use support::sim::{keeps_seeing, simulator};

const B: &str = "coffeebot";
const D: &str = "coffeebot/coffeepot";
const WAIT: Duration = Duration::from_secs(10);

impl Rig {
    /// The shipped broker configuration; the watcher is `homeassistant`.
    async fn start(name: &str, extra: &[(&str, &str)]) -> Rig {
        Self::start_with(name, SimConfig::default(), extra).await
    }

    /// [`Rig::start`] with a simulator configured by `sim`.
    async fn start_with(name: &str, sim: SimConfig, extra: &[(&str, &str)]) -> Rig {
        let watched: [&str; 2] = [&format!("{B}/#"), "homeassistant/#"];
        Rig::shipped("mqtt", name, sim, &watched, extra).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_and_state_key_and_discovery_on_start() {
    let mut rig = Rig::start("topics", &[]).await;
    let w = &mut rig.watcher;
    w.wait_for_payload(&format!("{B}/bridge/availability"), "online")
        .await
        .unwrap();
    w.wait_for_payload(&format!("{D}/availability"), "online")
        .await
        .unwrap();
    let state = rig.state_where("a full state", |_| true).await;
    let keys: Vec<&str> = state
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in StateDoc::KEYS {
        assert!(keys.contains(&key), "{key} missing from {state}");
    }
    assert_eq!(keys.len(), StateDoc::KEYS.len(), "{state}");
    assert_eq!(state["mode"], "off");
    assert_eq!(state["heater"], "OFF");
    assert_eq!(state["cups"], 4);
    assert_eq!(state["brew_remaining_s"], Value::Null);
    assert_eq!(state["brew_ends_at"], Value::Null);
    // Every discovery config, non-empty.
    let expected = coffeebot::mqtt::discovery::entities(&settings());
    for e in &expected {
        let topic = format!(
            "homeassistant/{}/coffeebot_coffeepot/{}/config",
            e.platform, e.key
        );
        let m = rig
            .watcher
            .wait_for(&topic, WAIT, |m| m.topic == topic && !m.payload.is_empty())
            .await
            .unwrap();
        assert_eq!(
            json(&m)["unique_id"],
            format!("coffeebot_coffeepot_{}", e.key)
        );
    }
    // The retained messages are there for a client that comes later.
    let mut late = rig.broker.lan_client(Login::User(User::Lan)).await;
    let got = late
        .subscribe_and_collect(&format!("{B}/#"), 3, WAIT)
        .await
        .unwrap();
    assert!(got.iter().all(|m| m.retain), "{got:?}");
    // The event topic: a rejected command is an event.
    rig.command("heater", "maybe").await;
    let event = rig.event("command_rejected").await;
    assert!(event["at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heater_on_feeds_the_controller_until_off() {
    let mut rig = Rig::start("heater", &[]).await;
    rig.command("heater", "ON").await;
    keeps_seeing(&rig.sim, "B+1", 6, Duration::from_millis(600)).await;
    rig.state_where("heater ON, manual", |s| {
        s["heater"] == "ON" && s["mode"] == "manual"
    })
    .await;
    assert!(rig.sim.snapshot().await.unwrap().device.heater_on);
    rig.command("heater", "off").await;
    rig.state_where("heater OFF", |s| s["heater"] == "OFF" && s["mode"] == "off")
        .await;
    assert!(!rig.sim.snapshot().await.unwrap().device.heater_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brew_cups_keep_warm_and_reset_commands() {
    // `RESET` reboots only a board whose reset pin is wired to nRESET; on the stock board it
    // just feeds the watchdog (see the simulator's module doc).
    let wired = SimConfig {
        reset_pin_wired: true,
        ..SimConfig::default()
    };
    let mut rig = Rig::start_with("brew", wired, &[]).await;
    rig.command("cups", "2").await;
    rig.state_where("cups 2", |s| s["cups"] == 2).await;
    let mut commands = rig.sim.commands();
    rig.command("brew", "START").await;
    assert_eq!(rig.event("brew_started").await["cups"], 2);
    assert!(commands.next_matching("B+1", WAIT).await.is_some());
    let finished = rig.event("brew_finished").await;
    assert_eq!(finished["reason"], "done");
    rig.state_where("off after the brew", |s| s["mode"] == "off")
        .await;

    rig.command("brew", r#"{"cups": 3}"#).await;
    assert_eq!(rig.event("brew_started").await["cups"], 3);
    rig.state_where("3 cups selected", |s| s["cups"] == 3).await;
    rig.command("brew", "stop").await;
    assert_eq!(rig.event("brew_aborted").await["reason"], "stopped");

    rig.command("keep_warm", "ON").await;
    rig.event("keep_warm_started").await;
    rig.state_where("keep warm", |s| {
        s["keep_warm"] == "ON" && s["mode"] == "keep_warm"
    })
    .await;
    rig.command("keep_warm", "OFF").await;
    rig.event("keep_warm_finished").await;
    rig.state_where("keep warm off", |s| s["keep_warm"] == "OFF")
        .await;

    let before_reset = rig.watcher.seen().len();
    rig.command("controller", "RESET").await;
    assert!(commands.next_matching("RESET", WAIT).await.is_some());
    rig.event("controller_rebooted").await;
    rig.state_where("one reboot counted", |s| {
        s["controller_reboots"] == 1 && s["firmware"] == "MrCoffeeBot v2.0"
    })
    .await;
    // The banner's firmware is the device's software in every config.
    message_since(
        &mut rig.watcher,
        before_reset,
        "discovery with the firmware",
        |m| {
            m.topic == "homeassistant/sensor/coffeebot_coffeepot/temperature/config"
                && json(m)["device"]["sw_version"] == "MrCoffeeBot v2.0"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brew_publishes_when_it_ends_not_every_second_of_its_countdown() {
    // Readings out of the way (a wide deadband, no periodic state within the brew): what is
    // left to publish a state during the brew is the brew itself.
    let mut rig = Rig::start(
        "brew_ends_at",
        &[
            ("MQTT__STATE_INTERVAL_S", "60"),
            ("MQTT__TEMPERATURE_DEADBAND_C", "10"),
        ],
    )
    .await;
    rig.command("cups", "6").await;
    rig.state_where("cups 6", |s| s["cups"] == 6).await;
    rig.command("brew", "START").await;
    let brewing = rig.state_where("brewing", |s| s["mode"] == "brewing").await;
    let from = rig.watcher.seen().len() - 1;
    let started = std::time::Instant::now();
    assert_eq!(rig.event("brew_finished").await["reason"], "done");
    let brewed = started.elapsed();
    let topic = format!("{D}/state");
    let states: Vec<Value> = rig.watcher.seen()[from..]
        .iter()
        .filter(|m| m.topic == topic)
        .map(json)
        .filter(|s| s["mode"] == "brewing")
        .collect();
    // Six cups at one second a cup: a countdown published every tick would be six states.
    assert!(brewed >= Duration::from_secs(5), "brewed for {brewed:?}");
    assert!(
        states.len() <= 2,
        "{} states in {brewed:?} of brewing: {states:#?}",
        states.len()
    );
    // The end is there from the first brewing state on, the same in each, 6 s after the
    // brew began.
    let ends_at = brewing["brew_ends_at"].as_str().expect("brew_ends_at");
    assert!(
        states.iter().all(|s| s["brew_ends_at"] == ends_at),
        "{states:#?}"
    );
    let secs = |t: &str| {
        humantime::parse_rfc3339_weak(t)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let left = secs(ends_at) - secs(brewing["updated_at"].as_str().unwrap());
    assert!(
        (4.5..=7.0).contains(&left),
        "ends {left} s after the reading"
    );
    let off = rig.state_where("off", |s| s["mode"] == "off").await;
    assert_eq!(off["brew_ends_at"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_rejected_and_the_bridge_keeps_serving() {
    // The shipped ACL keeps unknown topics from the bridge; an anonymous broker does not.
    let broker = Broker::start_anonymous();
    let sim = simulator("mqtt", "bad", SimConfig::default()).await;
    let mut w = broker.lan_client(Login::Anonymous).await;
    // Not the command topics: this client would drop its connection over the megabyte too.
    w.subscribe_many(&[&format!("{D}/state"), &format!("{D}/event")])
        .await
        .unwrap();
    let mut bridge = Bridge::start(
        sim.path(),
        &broker,
        &support::mosquitto::Credentials {
            username: String::new(),
            password: String::new(),
        },
        &[],
    );
    next_message(&mut w, "state", |m| m.topic == format!("{D}/state")).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "heater",
            b"maybe".to_vec(),
            "expected ON or OFF, got \"maybe\"",
        ),
        ("cups", b"99".to_vec(), "cups must be 1..12, got 99"),
        (
            "brew",
            br#"{"cups": 0}"#.to_vec(),
            "cups must be 1..12, got 0",
        ),
        ("brew", b"{nope".to_vec(), "expected START, STOP"),
        (
            "keep_warm",
            b"\xff\xfe".to_vec(),
            "payload is not UTF-8 text",
        ),
        (
            "controller",
            vec![b'R'; 1000],
            "payload too large (1000 bytes)",
        ),
        ("grind", b"ON".to_vec(), "unknown command \"grind\""),
    ];
    for (command, payload, reason) in cases {
        w.publish(&format!("{D}/{command}/set"), payload, false)
            .await
            .unwrap();
        let m = next_message(&mut w, reason, |m| {
            m.topic == format!("{D}/event")
                && json(m)["event_type"] == "command_rejected"
                && json(m)["reason"].as_str().unwrap_or("").starts_with(reason)
        })
        .await;
        assert_eq!(json(&m)["command"], command);
    }
    // A megabyte: the broker never delivers it (the bridge's MQTT 5 maximum packet size).
    let mut big = Command::new("mosquitto_pub")
        .args(["-h", broker.host(), "-p", &broker.lan_port().to_string()])
        .args(["-q", "1", "-t", &format!("{D}/heater/set"), "-s"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        use std::io::Write;
        let mut stdin = big.stdin.take().unwrap();
        stdin.write_all(&vec![b'O'; 1 << 20]).unwrap();
    }
    assert!(big.wait().unwrap().success());
    // Still serving, and still on its first connection.
    w.command("cups", "5", false).await;
    next_message(&mut w, "cups 5", |m| {
        m.topic == format!("{D}/state") && json(m)["cups"] == 5
    })
    .await;
    assert!(bridge.is_running());
    let reconnects = bridge.log_count("connected to the MQTT broker");
    assert_eq!(reconnects, 1, "{:#?}", bridge.log());
    assert!(!sim.snapshot().await.unwrap().device.heater_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_on_never_switches_the_heater_on() {
    let broker = Broker::start();
    let sim = simulator("mqtt", "retained", SimConfig::default()).await;
    let mut lan = broker.lan_client(Login::User(User::Lan)).await;
    lan.command("heater", "ON", true).await;
    lan.command("brew", "START", true).await;
    let bridge = Bridge::start(
        sim.path(),
        &broker,
        &broker.credentials(User::Coffeebot),
        &[],
    );
    assert!(bridge
        .wait_for_log("ignoring a retained command", WAIT)
        .is_some());
    // Also live: a retained publication while the bridge is connected.
    lan.subscribe(&format!("{D}/state")).await.unwrap();
    lan.command("keep_warm", "ON", true).await;
    lan.command("cups", "6", false).await;
    next_message(&mut lan, "cups 6", |m| json(m)["cups"] == 6).await;
    // The bridge logged before it published the state; the log's reader may be behind.
    bridge.wait_for_log_count("ignoring a retained command", 3, WAIT);
    let log = bridge.log();
    let ignored = log
        .iter()
        .filter(|l| l.contains("ignoring a retained command"))
        .count();
    assert_eq!(ignored, 3, "{log:#?}");
    let lines = sim.command_log().await.unwrap();
    assert!(
        lines.iter().all(|c| c.line != "B+1"),
        "the heater was switched on: {lines:?}"
    );
    assert!(!sim.snapshot().await.unwrap().device.heater_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_brings_everything_back_and_the_brew_keeps_its_limits() {
    let mut rig = Rig::start("restart", &[]).await;
    rig.watcher
        .wait_for("discovery", WAIT, |m| m.topic.starts_with("homeassistant/"))
        .await
        .unwrap();
    let mut commands = rig.sim.commands();
    rig.command("brew", "3").await;
    let first = commands.next_matching("B+1", WAIT).await.expect("B+1");
    // The broker crashes: nothing retained survives, so what comes back was re-published.
    rig.broker.kill();
    let off = commands.next_matching("B+0", WAIT).await.expect("B+0");
    let log = rig.sim.command_log().await.unwrap();
    let last_on = log
        .iter()
        .filter(|c| c.line == "B+1")
        .map(|c| c.at)
        .max()
        .unwrap();
    let heating = last_on.duration_since(first.at);
    // Preheat (about 2 s at the simulator's 2 °C/s) plus 3 cups at 1 s, with a margin.
    assert!(heating < Duration::from_secs(8), "heated {heating:?}");
    assert!(off.at >= last_on);
    rig.broker.restart();
    let mut w = rig
        .broker
        .lan_client(Login::User(User::HomeAssistant))
        .await;
    w.subscribe_many(&[&format!("{B}/#"), "homeassistant/#"])
        .await
        .unwrap();
    w.wait_for("bridge online", WAIT, |m| {
        m.topic == format!("{B}/bridge/availability") && m.payload == b"online"
    })
    .await
    .unwrap();
    w.wait_for("device online", WAIT, |m| {
        m.topic == format!("{D}/availability") && m.payload == b"online"
    })
    .await
    .unwrap();
    w.wait_for("state after the brew", WAIT, |m| {
        m.topic == format!("{D}/state") && json(m)["mode"] == "off"
    })
    .await
    .unwrap();
    for e in coffeebot::mqtt::discovery::entities(&settings()) {
        let topic = format!(
            "homeassistant/{}/coffeebot_coffeepot/{}/config",
            e.platform, e.key
        );
        w.wait_for(&topic, WAIT, |m| m.topic == topic && !m.payload.is_empty())
            .await
            .unwrap();
    }
    assert!(rig.bridge.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_online_republishes_every_discovery_config() {
    let mut rig = Rig::start("ha-status", &[]).await;
    let entities = coffeebot::mqtt::discovery::entities(&settings());
    let mut ha = rig
        .broker
        .lan_client(Login::User(User::HomeAssistant))
        .await;
    ha.subscribe("homeassistant/+/coffeebot_coffeepot/+/config")
        .await
        .unwrap();
    ha.publish("homeassistant/status", "online", false)
        .await
        .unwrap();
    // Live (not retained-on-subscribe) copies of every config.
    for e in &entities {
        let topic = format!(
            "homeassistant/{}/coffeebot_coffeepot/{}/config",
            e.platform, e.key
        );
        ha.wait_for(&topic, WAIT, |m| m.topic == topic && !m.retain)
            .await
            .unwrap();
    }
    assert!(rig.bridge.is_running());
    let _ = &mut rig.watcher;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_will_marks_a_killed_bridge_offline() {
    let mut rig = Rig::start("will", &[]).await;
    rig.bridge.kill();
    next_message(&mut rig.watcher, "bridge offline", |m| {
        m.topic == format!("{B}/bridge/availability") && m.payload == b"offline"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_the_heater_off_publishes_offline_and_exits_0_within_2_s() {
    let mut rig = Rig::start("sigterm", &[]).await;
    rig.command("heater", "ON").await;
    rig.state_where("heater ON", |s| s["heater"] == "ON").await;
    let mut commands = rig.sim.commands();
    let start = std::time::Instant::now();
    rig.bridge.sigterm();
    let status = rig
        .bridge
        .wait_exit(Duration::from_secs(2))
        .expect("exited within 2 s");
    assert!(status.success(), "{status}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(commands.next_matching("B+0", WAIT).await.is_some());
    next_message(&mut rig.watcher, "device offline", |m| {
        m.topic == format!("{D}/availability") && m.payload == b"offline"
    })
    .await;
    next_message(&mut rig.watcher, "bridge offline", |m| {
        m.topic == format!("{B}/bridge/availability") && m.payload == b"offline"
    })
    .await;
    assert!(!rig.sim.snapshot().await.unwrap().device.heater_on);
}

/// The default settings (the tests use the default ids, prefix and max cups).
fn settings() -> coffeebot::config::Settings {
    coffeebot::config::load_with(None, &[]).expect("defaults load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flood_never_starves_the_heater() {
    let mut rig = Rig::start("flood", &[]).await;
    rig.command("heater", "ON").await;
    rig.state_where("heater ON", |s| s["heater"] == "ON").await;
    let lan = rig.broker.credentials(User::Lan);
    let mut flood = Command::new("mosquitto_pub")
        .args([
            "-h",
            rig.broker.host(),
            "-p",
            &rig.broker.lan_port().to_string(),
        ])
        .args(["-u", &lan.username, "-P", &lan.password])
        .args(["-q", "0", "-t", &format!("{D}/cups/set"), "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = flood.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..5000 {
            if writeln!(stdin, "{}", 1 + i % 12).is_err() {
                break;
            }
        }
    });
    // The feed goes on at its pace all through the flood.
    keeps_seeing(&rig.sim, "B+1", 8, Duration::from_millis(600)).await;
    writer.join().unwrap();
    assert!(flood.wait().unwrap().success());
    keeps_seeing(&rig.sim, "B+1", 4, Duration::from_millis(600)).await;
    // And commands are served after it.
    rig.command("heater", "OFF").await;
    rig.state_where("heater OFF", |s| s["heater"] == "OFF")
        .await;
}

/// A calendar file with one timed event every day, ready three hours from now (UTC).
fn daily_calendar(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("coffeebot-mqtt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("calendar dir");
    let first = chrono::Utc::now() + chrono::Duration::hours(3);
    let start = first.format("%Y%m%dT%H%M00Z");
    let ics = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//coffeebot tests//EN\r\nBEGIN:VEVENT\r\n\
         UID:daily@coffeebot.test\r\nDTSTAMP:{start}\r\nDTSTART:{start}\r\nDURATION:PT15M\r\n\
         RRULE:FREQ=DAILY\r\nSUMMARY:Coffee 2\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    );
    let path = dir.join("coffee.ics");
    std::fs::write(&path, ics).expect("calendar written");
    path
}

/// `ready_at` of the state's `next_brew`.
fn next_ready(state: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    let text = state["next_brew"]["ready_at"]
        .as_str()
        .expect("a next brew");
    chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_skip_off_and_on_through_the_broker() {
    let calendar = daily_calendar("schedule");
    let calendar = calendar.to_str().expect("UTF-8 path");
    let mut rig = Rig::start("schedule", &[("SCHEDULE__CALENDAR", calendar)]).await;
    let planned = rig
        .state_where("a next brew from the calendar", |s| {
            s["next_brew"].is_object() && s["schedule"] == "ON"
        })
        .await;
    let first = next_ready(&planned);
    assert_eq!(planned["next_brew"]["source"], "calendar");
    assert_eq!(planned["next_brew"]["cups"], 2);

    rig.command("schedule", "SKIP").await;
    let skipped = rig
        .state_where("the next brew a day later", |s| {
            s["next_brew"].is_object() && next_ready(s) != first
        })
        .await;
    assert_eq!(next_ready(&skipped) - first, chrono::Duration::days(1));

    rig.command("schedule", "OFF").await;
    let off = rig
        .state_where("the schedule off", |s| s["schedule"] == "OFF")
        .await;
    assert_eq!(off["next_brew"], Value::Null, "{off}");

    rig.command("schedule", "ON").await;
    let on = rig
        .state_where("the schedule on again", |s| s["schedule"] == "ON")
        .await;
    assert_eq!(next_ready(&on) - first, chrono::Duration::days(1), "{on}");

    rig.command("schedule", "later").await;
    let rejected = rig.event("command_rejected").await;
    assert_eq!(rejected["command"], "schedule");
    assert_eq!(
        rejected["reason"],
        "expected ON, OFF or SKIP, got \"later\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_in_the_state_and_descaled_resets_descale_due() {
    let mut rig = Rig::start("counters", &[("MAINTENANCE__DESCALE_EVERY_BREWS", "1")]).await;
    let before = rig.state_where("counters at zero", |_| true).await;
    assert_eq!(before["counters"]["brews_total"], 0, "{before}");
    assert_eq!(before["counters"]["descale_due"], false);
    rig.command("brew", "1").await;
    rig.event("brew_finished").await;
    let after = rig
        .state_where("one brew counted", |s| s["counters"]["brews_total"] == 1)
        .await;
    let c = &after["counters"];
    assert_eq!(c["cups_brewed_total"], 1, "{after}");
    assert_eq!(c["descale_due"], true, "{after}");
    assert!(
        c["heater_on_seconds_total"].as_f64().unwrap() > 0.0,
        "{after}"
    );
    assert!(c["energy_kwh_total"].as_f64().unwrap() >= 0.0, "{after}");

    rig.command("maintenance", "DESCALED").await;
    let descaled = rig
        .state_where("descale no longer due", |s| {
            s["counters"]["descale_due"] == false
        })
        .await;
    assert_eq!(descaled["counters"]["brews_total"], 1, "totals stay");
    rig.command("maintenance", "ON").await;
    let rejected = rig.event("command_rejected").await;
    assert_eq!(rejected["reason"], "expected DESCALED, got \"ON\"");
}
