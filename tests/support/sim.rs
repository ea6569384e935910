//! The simulated controller on a fresh pseudo-terminal path, one per test, so that tests
//! running in parallel never share a link.

use coffeebot::sim::{SimConfig, SimHandle, Simulator};
use std::path::PathBuf;
use std::time::Duration;

/// A link path of its own for test `name` of binary `binary`: a directory under the temporary
/// directory named after both and this process, created if missing.
pub fn link_path(binary: &str, name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("coffeebot-{binary}-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("sim dir");
    dir.join("tty")
}

/// The simulator configured by `cfg` on [`link_path`]`(binary, name)`, started or the test
/// fails.
pub async fn simulator(binary: &str, name: &str, cfg: SimConfig) -> SimHandle {
    Simulator::start(cfg, link_path(binary, name))
        .await
        .expect("simulator starts")
}

/// Waits until the simulator has accepted `line` `times` times in a row of waits, each within
/// `within` of the previous.
pub async fn keeps_seeing(sim: &SimHandle, line: &str, times: usize, within: Duration) {
    let mut commands = sim.commands();
    for i in 0..times {
        assert!(
            commands.next_matching(line, within).await.is_some(),
            "{line} number {i} did not come within {within:?}"
        );
    }
}
