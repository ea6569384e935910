//! The end-to-end rig of the MQTT tests: the broker, the simulated controller, a watching
//! client subscribed before the bridge starts (so nothing it publishes is missed) and the
//! bridge as a real process. [`Rig::shipped`] starts the usual one; a test binary adds its
//! own ways to start one (`impl Rig` in the test file) and its own steps.

use coffeebot::sim::{SimConfig, SimHandle};
use serde_json::Value;

use super::bridge::Bridge;
use super::mosquitto::{lan_command, next_event, next_state, Broker, TestClient, User};
use super::sim::simulator;

/// A broker, the simulator, a watching client and the bridge.
pub struct Rig {
    /// The broker the bridge and the test clients connect to.
    pub broker: Broker,
    /// The simulated controller on the bridge's link.
    pub sim: SimHandle,
    /// Subscribed before the bridge started.
    pub watcher: TestClient,
    /// The bridge process.
    pub bridge: Bridge,
}

impl Rig {
    /// The shipped broker, a simulator configured by `sim` for test `name` of the test binary
    /// `binary`, a watcher (`homeassistant`) subscribed to `watched`, and the bridge logged in
    /// as `coffeebot` with `extra` settings; once the link is up.
    pub async fn shipped(
        binary: &str,
        name: &str,
        sim: SimConfig,
        watched: &[&str],
        extra: &[(&str, &str)],
    ) -> Rig {
        let broker = Broker::start();
        let sim = simulator(binary, name, sim).await;
        let watcher = broker.watcher(watched).await;
        let login = broker.credentials(User::Coffeebot);
        let bridge = Bridge::start(sim.path(), &broker, &login, extra);
        Rig::answering(broker, sim, watcher, bridge, |s| s["link"] == "up").await
    }

    /// The rig, once a state for which `answering` holds has come (the controller answers).
    pub async fn answering(
        broker: Broker,
        sim: SimHandle,
        watcher: TestClient,
        bridge: Bridge,
        answering: impl Fn(&Value) -> bool,
    ) -> Rig {
        let mut rig = Rig {
            broker,
            sim,
            watcher,
            bridge,
        };
        rig.state_where("the controller answering", answering).await;
        rig
    }

    /// Publishes a command as `lan` (a fresh connection, QoS 1, PUBACK awaited).
    pub async fn command(&self, command: &str, payload: impl Into<Vec<u8>>) {
        lan_command(&self.broker, command, payload).await;
    }

    /// The first state (from now on: earlier ones do not count) for which `pred` holds.
    pub async fn state_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        next_state(&mut self.watcher, what, pred).await
    }

    /// The first event (from now on) of this type for which `pred` holds.
    pub async fn event_where(&mut self, event_type: &str, pred: impl Fn(&Value) -> bool) -> Value {
        next_event(&mut self.watcher, event_type, pred).await
    }

    /// The first event (from now on) of this type.
    pub async fn event(&mut self, event_type: &str) -> Value {
        self.event_where(event_type, |_| true).await
    }
}
