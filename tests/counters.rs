//! Household counters across crashes: `coffeebot run` as a process, killed with SIGKILL at
//! random moments during brews, 50 times, against one broker and one simulated controller.
//! After every kill the counters file must parse and no counter may be lower than after the
//! kill before; by the end the brews, cups and heater time must have grown.

mod support;

use std::path::Path;
use std::time::Duration;

use coffeebot::counters::{Counters, FILE};
use coffeebot::sim::{SimConfig, Simulator};
use support::bridge::Bridge;
use support::mosquitto::{lan_command, Broker, Setup, User};

const WAIT: Duration = Duration::from_secs(10);
const KILLS: usize = 50;

fn read(dir: &Path) -> Option<Counters> {
    let text = match std::fs::read(dir.join(FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot read the counters: {e}"),
    };
    Some(serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "the counters file does not parse ({e}): {:?}",
            String::from_utf8_lossy(&text)
        )
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_kill_9_and_never_go_backwards() {
    let dir = std::env::temp_dir().join(format!("coffeebot-counters-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).expect("state dir");
    let sim = Simulator::start(SimConfig::default(), dir.join("tty"))
        .await
        .expect("simulator");
    let broker = Broker::start_with(Setup::Shipped);
    let state = state_dir.to_string_lossy().into_owned();
    let extra = [
        ("COUNTERS__STATE_DIR", state.as_str()),
        ("COUNTERS__SAVE_INTERVAL_S", "1"),
        ("MAINTENANCE__DESCALE_EVERY_BREWS", "3"),
    ];
    let mut rng = fastrand::Rng::with_seed(17);
    let mut last = Counters::default();
    for round in 0..KILLS {
        let mut bridge = Bridge::start(
            sim.path(),
            &broker,
            &broker.credentials(User::Coffeebot),
            &extra,
        );
        bridge
            .wait_for_log("connected to the MQTT broker", WAIT)
            .expect("the bridge connects");
        // A brew needs a plate temperature: wait for the controller's first answer.
        bridge
            .wait_for_log("the controller answers in one line", WAIT)
            .expect("the controller answers");
        lan_command(&broker, "brew", "1").await;
        // A random moment: before, during or after the brew (an injected fault's timing).
        let moment = Duration::from_millis(rng.u64(0..4000));
        tokio::time::sleep(moment).await;
        bridge.kill();
        let now = read(&state_dir).unwrap_or_default();
        assert!(
            now.not_below(&last),
            "round {round}: counters went backwards: {last:?} -> {now:?}"
        );
        last = now;
        assert!(
            !state_dir.join("counters.json.bad").exists(),
            "round {round}: a file was set aside as corrupt"
        );
    }
    println!("after {KILLS} kills: {last:?}");
    assert!(last.brews_total > 0 && last.cups_brewed_total >= last.brews_total);
    assert!(last.heater_on_seconds_total > 0.0 && last.energy_kwh_total > 0.0);
    sim.shutdown().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
}
