//! The bridge's serial side end to end: the daemon (core + serial link) in this process,
//! talking to the simulated controller over a real pseudo-terminal, through the same
//! `tokio-serial` code path as real hardware. Every wait is for an observable event, with a
//! timeout.

use coffeebot::config::{self, Settings};
use coffeebot::core::{Fault, Mode, Request};
use coffeebot::mqtt::command::CommandName;
use coffeebot::mqtt::{self, CommandIn};
use coffeebot::protocol::ReplyFormat;
use coffeebot::sim::{Build, SimConfig, SimHandle, Simulator};
use coffeebot::state::{Link, OnOff, StateDoc};
use coffeebot::{bridge, daemon};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn link_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "coffeebot-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tty")
}

fn settings(port: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
    let mut env: Vec<(String, String)> = vec![
        ("COFFEEBOT__SERIAL__PORT".into(), port.display().to_string()),
        ("COFFEEBOT__MQTT__STATE_INTERVAL_S".into(), "1".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    config::load_with(None, &env).unwrap()
}

struct Bridge {
    sim: SimHandle,
    /// The MQTT task's ends of the channels: the test stands in for it.
    mqtt: mqtt::Io,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Bridge {
    async fn start(extra: &[(&str, &str)]) -> Bridge {
        Self::start_with(SimConfig::default(), extra).await
    }

    async fn start_with(sim: SimConfig, extra: &[(&str, &str)]) -> Bridge {
        let path = link_path();
        let sim = Simulator::start(sim, path.clone()).await.unwrap();
        let settings = settings(&path, extra);
        let channels = bridge::channels(&settings.device.name);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let driver = channels.driver;
        let task = tokio::spawn(async move { daemon::run(&settings, driver, token).await });
        let mut bridge = Bridge {
            sim,
            mqtt: channels.mqtt,
            shutdown,
            task,
        };
        bridge
            .state_where("the controller answers", |s| {
                s.online() && s.temperature_c.is_some()
            })
            .await;
        bridge
    }

    /// Waits for a published state that satisfies `pred`.
    async fn state_where(&mut self, what: &str, pred: impl Fn(&StateDoc) -> bool) -> StateDoc {
        let mut state = self.mqtt.state.clone();
        let found = tokio::time::timeout(WAIT, async {
            state
                .wait_for(|s| s.as_ref().is_some_and(&pred))
                .await
                .map(|s| s.clone())
        })
        .await;
        match found {
            Ok(Ok(Some(s))) => s,
            _ => panic!(
                "timed out waiting for {what}; last state: {:?}",
                *self.mqtt.state.borrow()
            ),
        }
    }

    /// Waits for an event of this type and returns its JSON.
    async fn event(&mut self, event_type: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let e = tokio::time::timeout_at(deadline, self.mqtt.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {event_type} event"))
                .unwrap();
            if e.event_type() == event_type {
                return e.0;
            }
        }
    }

    /// Asks for heating and waits for the state showing the heater on.
    async fn heating(&mut self) {
        self.ask(Request::Heater(true)).await;
        self.state_where("heating", |s| s.heater == Some(OnOff::On))
            .await;
    }

    async fn ask(&self, request: Request) {
        // The tests here ask for heating or a brew only.
        let command = if matches!(request, Request::BrewStart { .. }) {
            CommandName::Brew
        } else {
            CommandName::Heater
        };
        self.mqtt
            .commands
            .send(CommandIn {
                request: request.into(),
                command,
                payload: Vec::new(),
                accepted_at: tokio::time::Instant::now(),
                reply: None,
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_line_written_is_heater_off() {
    let bridge = Bridge::start(&[]).await;
    let log = bridge.sim.command_log().await.unwrap();
    assert_eq!(log.first().map(|c| c.line.as_str()), Some("B+0"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_polling_keeps_the_watchdog_from_firing() {
    let mut bridge = Bridge::start(&[]).await;
    let boots = bridge.sim.snapshot().await.unwrap().device.boots;
    // The controller reboots after 5 s without a valid command: observe three times that.
    let mut commands = bridge.sim.commands();
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut polls = 0;
    while tokio::time::Instant::now() < end {
        if commands
            .next_matching("S+?", Duration::from_millis(1500))
            .await
            .is_some()
        {
            polls += 1;
        } else {
            panic!("no poll within 1.5 s");
        }
    }
    assert!(polls >= 14, "{polls} polls in 15 s");
    assert_eq!(bridge.sim.snapshot().await.unwrap().device.boots, boots);
    let state = bridge.state_where("still up", |s| s.online()).await;
    assert_eq!(state.controller_reboots, 0);
    assert_eq!(state.heater, Some(OnOff::Off));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brew_runs_preheat_then_brew_then_off() {
    let mut bridge = Bridge::start(&[
        ("COFFEEBOT__BREW__PREHEAT_C", "27"),
        ("COFFEEBOT__BREW__SECONDS_PER_CUP", "1.5"),
        ("COFFEEBOT__KEEP_WARM__AFTER_BREW", "false"),
    ])
    .await;
    let mut commands = bridge.sim.commands();
    bridge.ask(Request::BrewStart { cups: Some(2) }).await;
    assert_eq!(bridge.event("brew_started").await["cups"], 2);
    bridge
        .state_where("preheating", |s| s.mode == Mode::Preheating)
        .await;
    assert!(commands.next_matching("B+1", WAIT).await.is_some());
    let brewing = bridge
        .state_where("brewing", |s| s.mode == Mode::Brewing)
        .await;
    assert!(brewing.temperature_c.unwrap() >= 26.5);
    assert!(brewing.brew_remaining_s.unwrap() <= 3);
    let done = bridge.event("brew_finished").await;
    assert_eq!(done["reason"], "done");
    let off = bridge
        .state_where("off with the heater off", |s| {
            s.mode == Mode::Off && s.heater == Some(OnOff::Off)
        })
        .await;
    assert_eq!(off.brew_remaining_s, None);
    assert!(!bridge.sim.snapshot().await.unwrap().device.heater_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muting_the_controller_trips_stale_telemetry_and_heater_off() {
    let mut bridge = Bridge::start(&[]).await;
    let mut commands = bridge.sim.commands();
    bridge.heating().await;
    assert!(commands.next_matching("B+1", WAIT).await.is_some());
    bridge.sim.mute(true).await.unwrap();
    let fault = bridge.event("fault").await;
    assert_eq!(fault["reason"], "stale_telemetry");
    let state = bridge
        .state_where("stale", |s| s.faults.contains(Fault::StaleTelemetry))
        .await;
    assert_eq!(state.mode, Mode::Off);
    assert_eq!(state.link, Link::Down);
    // Nobody knows the relay now: it is shown as unknown, never as its last reported value.
    assert_eq!(state.heater, None);
    assert_eq!(state.temperature_c, None);
    // The controller's own 1 s timeout has switched the heater off, and nothing re-enabled it.
    bridge.sim.mute(false).await.unwrap();
    let back = bridge
        .state_where("answering again", |s| s.online() && s.faults.is_empty())
        .await;
    assert_eq!(back.heater, Some(OnOff::Off));
    assert_eq!(back.mode, Mode::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_and_replug_recover_without_a_restart() {
    let mut bridge = Bridge::start(&[]).await;
    bridge.heating().await;
    bridge.sim.unplug().await.unwrap();
    assert_eq!(bridge.event("fault").await["reason"], "link_down");
    let down = bridge
        .state_where("link down", |s| s.faults.contains(Fault::LinkDown))
        .await;
    assert_eq!(down.mode, Mode::Off);
    assert_eq!(down.heater, None);
    bridge.sim.replug().await.unwrap();
    let up = bridge
        .state_where("back", |s| s.online() && s.temperature_c.is_some())
        .await;
    assert!(up.faults.is_empty(), "{:?}", up.faults);
    assert_eq!(
        up.heater,
        Some(OnOff::Off),
        "no silent re-enable after a replug"
    );
    // The new device got B+0 first.
    let log = bridge.sim.command_log().await.unwrap();
    assert!(log.iter().any(|c| c.line == "B+0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reboot_mid_brew_ends_it_and_never_re_enables() {
    let mut bridge = Bridge::start(&[]).await;
    bridge.ask(Request::BrewStart { cups: Some(1) }).await;
    bridge
        .state_where("preheating", |s| s.mode == Mode::Preheating)
        .await;
    bridge.sim.reboot(true).await.unwrap();
    assert_eq!(bridge.event("controller_rebooted").await["count"], 1);
    let state = bridge
        .state_where("rebooted", |s| {
            s.controller_reboots == 1 && s.mode == Mode::Off
        })
        .await;
    assert_eq!(state.firmware.as_deref(), Some("MrCoffeeBot v2.0"));
    let mut commands = bridge.sim.commands();
    assert!(
        commands
            .next_matching("B+1", Duration::from_secs(2))
            .await
            .is_none(),
        "B+1 after a reboot without a new start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_heating_writes_heater_off_last_within_two_seconds() {
    let mut bridge = Bridge::start(&[]).await;
    let mut commands = bridge.sim.commands();
    bridge.ask(Request::Heater(true)).await;
    assert!(commands.next_matching("B+1", WAIT).await.is_some());
    let started = tokio::time::Instant::now();
    bridge.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), &mut bridge.task)
        .await
        .expect("shut down within 2 s")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let log = bridge.sim.command_log().await.unwrap();
    assert_eq!(log.last().map(|c| c.line.as_str()), Some("B+0"), "{log:?}");
    assert!(!bridge.sim.snapshot().await.unwrap().device.heater_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_errors_trip_sensor_error() {
    let mut bridge = Bridge::start(&[]).await;
    bridge.heating().await;
    bridge.sim.crc_error(true).await.unwrap();
    assert_eq!(bridge.event("fault").await["reason"], "sensor_error");
    let s = bridge
        .state_where("sensor error", |s| s.faults.contains(Fault::SensorError))
        .await;
    assert_eq!(s.temperature_c, None);
    assert_eq!(s.mode, Mode::Off);
    assert!(
        s.online(),
        "a controller answering with sentinels is online"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_relay_trips_heater_mismatch() {
    let mut bridge = Bridge::start(&[]).await;
    bridge.sim.stuck_heater(true).await.unwrap();
    bridge.heating().await;
    bridge.ask(Request::Heater(false)).await;
    assert_eq!(bridge.event("fault").await["reason"], "heater_mismatch");
    let mut commands = bridge.sim.commands();
    // It keeps telling the controller to switch off.
    assert!(commands.next_matching("B+0", WAIT).await.is_some());
    assert!(commands.next_matching("B+0", WAIT).await.is_some());
}

/// The older build, 05a9a00 (three-line replies, no 1 s heater time-out): the bridge reads it,
/// says which format it speaks, and heats with it only when the owner opted in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_three_line_build_heats_only_when_allowed() {
    let older = || SimConfig {
        firmware: Build::B05a9a00,
        ..SimConfig::default()
    };
    let mut bridge = Bridge::start_with(older(), &[]).await;
    let state = bridge
        .state_where("three-line replies", |s| {
            s.reply_format == Some(ReplyFormat::ThreeLines)
        })
        .await;
    assert!(state.temperature_c.is_some());
    bridge.ask(Request::BrewStart { cups: Some(1) }).await;
    let rejected = bridge.event("command_rejected").await;
    let reason = rejected["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("serial.allow_firmware_without_heater_timeout"),
        "{rejected}"
    );
    assert!(!bridge.sim.snapshot().await.unwrap().device.heater_on);
    let log = bridge.sim.command_log().await.unwrap();
    assert!(log.iter().all(|c| c.line != "B+1"), "{log:?}");

    let mut bridge = Bridge::start_with(
        older(),
        &[(
            "COFFEEBOT__SERIAL__ALLOW_FIRMWARE_WITHOUT_HEATER_TIMEOUT",
            "true",
        )],
    )
    .await;
    let mut commands = bridge.sim.commands();
    bridge.ask(Request::BrewStart { cups: Some(1) }).await;
    assert_eq!(bridge.event("brew_started").await["cups"], 1);
    assert!(commands.next_matching("B+1", WAIT).await.is_some());
    bridge
        .state_where("heating on the three-line build", |s| {
            s.heater == Some(OnOff::On) && s.reply_format == Some(ReplyFormat::ThreeLines)
        })
        .await;
}
