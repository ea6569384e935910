//! The driver keeps talking to the controller while the rest of the bridge is stuck.
//!
//! `bridge::run` is the production entry point; here it runs on a one-thread runtime that the
//! test then blocks outright — the worst an overloaded HTTP or MQTT side could do to it. The
//! simulated controller runs on a runtime of its own, on a real pseudo-terminal, and logs every
//! line it handles. If the driver shared the blocked runtime, nothing would reach the
//! controller until the block ended.

use coffeebot::bridge;
use coffeebot::config;
use coffeebot::sim::{SimConfig, Simulator};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
/// The poll interval the bridge is given (the shortest allowed is 100 ms).
const POLL: Duration = Duration::from_millis(250);
/// How long the bridge's own runtime is kept from running.
const BLOCK: Duration = Duration::from_secs(2);

#[test]
fn controller_is_polled_while_the_bridge_runtime_is_blocked() {
    let dir = std::env::temp_dir().join(format!("coffeebot-driver-thread-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("tty");
    let sim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sim = sim_runtime
        .block_on(Simulator::start(SimConfig::default(), link.clone()))
        .unwrap();
    let mut lines = sim.commands();

    // No broker listens here: MQTT keeps retrying, which the driver does not wait for.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env: Vec<(String, String)> = [
        ("COFFEEBOT__SERIAL__PORT", link.display().to_string()),
        (
            "COFFEEBOT__SERIAL__POLL_INTERVAL_MS",
            POLL.as_millis().to_string(),
        ),
        ("COFFEEBOT__MQTT__HOST", "127.0.0.1".to_owned()),
        ("COFFEEBOT__MQTT__PORT", closed.port().to_string()),
        ("COFFEEBOT__HTTP__LISTEN", String::new()),
        ("COFFEEBOT__HTTP__OPS_LISTEN", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = config::load_with(None, &env).unwrap();

    let bridge_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let (blocked_from, blocked_until) = bridge_runtime.block_on(async {
        let bridge = tokio::spawn(bridge::run(settings, shutdown.clone()));
        // Start-up is done once the controller has handled the first poll.
        assert!(
            lines.next_matching("S+?", WAIT).await.is_some(),
            "the controller was never polled"
        );
        // Keep this runtime (MQTT's and HTTP's) from running at all.
        let from = Instant::now();
        std::thread::sleep(BLOCK);
        let until = Instant::now();
        shutdown.cancel();
        let stopped = tokio::time::timeout(WAIT, bridge).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the bridge did not stop cleanly: {stopped:?}"
        );
        (from, until)
    });

    let log = sim_runtime.block_on(sim.command_log()).unwrap();
    let during: Vec<Instant> = log
        .iter()
        .filter(|e| e.at > blocked_from && e.at < blocked_until)
        .map(|e| e.at)
        .collect();
    let mut largest = during.first().map_or(BLOCK, |first| *first - blocked_from);
    for pair in during.windows(2) {
        largest = largest.max(pair[1] - pair[0]);
    }
    if let Some(last) = during.last() {
        largest = largest.max(blocked_until - *last);
    }
    // About 8 polls fit in the block; a loaded machine may delay some, not stop them.
    assert!(
        during.len() >= 4,
        "only {} lines reached the controller in {BLOCK:?} of a blocked runtime",
        during.len()
    );
    assert!(
        largest < Duration::from_millis(1000),
        "the controller went {largest:?} without a line while the bridge's runtime was blocked"
    );
    // Start-up and shutdown are unchanged: `B+0` first and last.
    assert_eq!(log.first().map(|e| e.line.as_str()), Some("B+0"));
    assert_eq!(log.last().map(|e| e.line.as_str()), Some("B+0"));
    drop(sim);
    sim_runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}
