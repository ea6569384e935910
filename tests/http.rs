//! The read-only HTTP side against the running bridge: the simulated controller on a real
//! pseudo-terminal, the real serial link and driver, the HTTP server on port 0. The broker
//! connection that `/readyz` needs is set through the watch sender the MQTT task holds in the
//! product (the MQTT task itself is tested against a real mosquitto elsewhere). Waits are for
//! observable events (state documents, events, bytes on a socket) under a timeout.

mod http_support;

use coffeebot::core::Mode;
use coffeebot::daemon;
use coffeebot::http::listener::Limits;
use coffeebot::http::{self, HttpDeps};
use coffeebot::state::OnOff;
use http_support::{brew, metric, request, Bridge, WAIT};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Online and with a reading: the link is `up` from the moment the port opens.
fn answering(s: &coffeebot::state::StateDoc) -> bool {
    s.online() && s.updated_at.is_some()
}

const PATHS: [&str; 5] = ["/", "/status.json", "/metrics", "/healthz", "/readyz"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_documented() {
    let bridge = Bridge::start("endpoints", &[]).await;
    bridge.wait_state("the controller answers", answering).await;

    let page = bridge.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.header("content-security-policy").is_some());
    for id in [
        "temperature",
        "mode",
        "heater",
        "water-level",
        "brew-remaining",
        "keep-warm",
        "faults",
        "link",
        "updated-clock",
        "updated-ago",
        "sparkline",
    ] {
        assert!(page.body.contains(&format!("id=\"{id}\"")), "#{id} missing");
    }
    assert!(!page.body.contains("<form") && !page.body.contains("<button"));
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));

    // Exactly the document the MQTT side publishes (it only changes beyond a deadband).
    let before = bridge.state().unwrap().to_json();
    let status = bridge.get("/status.json").await;
    let after = bridge.state().unwrap().to_json();
    assert_eq!(status.status, 200);
    assert_eq!(status.header("content-type"), Some("application/json"));
    assert_eq!(status.header("cache-control"), Some("no-store"));
    assert!(
        status.body == before || status.body == after,
        "{} is not the published state {before}",
        status.body
    );
    let doc: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(doc["link"], "up");
    assert_eq!(doc.as_object().unwrap().len(), 15);

    let metrics = bridge.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metric(
            &metrics.body,
            &format!("coffeebot_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );
    assert!(metric(&metrics.body, "coffeebot_serial_lines_sent_total") > 0.0);
    assert!(metric(&metrics.body, "coffeebot_serial_replies_total") > 0.0);
    assert!(metrics
        .body
        .contains("# TYPE coffeebot_serial_lines_sent_total counter"));

    let health = bridge.get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    bridge.set_broker_connected(false);
    let ready = bridge.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "not connected to the broker\n")
    );
    bridge.set_broker_connected(true);
    let ready = bridge.get("/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));

    let head = request(bridge.addr, "HEAD", "/status.json", b"").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    for path in [
        "/nope",
        "/status",
        "/index.html",
        "/metrics/x",
        "/../etc/passwd",
    ] {
        let reply = bridge.get(path).await;
        assert_eq!(reply.status, 404, "GET {path}");
    }
    bridge.stop().await;
}

/// Without a running driver: no state yet gives 503 with a JSON error, and a driver that has
/// stopped fails the liveness probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_yet_and_a_stopped_driver_answer_503() {
    let (inlets, outlets) = daemon::channels();
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        HttpDeps::new(&outlets, "Coffee Pot"),
        shutdown.clone(),
    ));

    let status = request(addr, "GET", "/status.json", b"").await;
    assert_eq!(status.status, 503);
    assert_eq!(status.header("content-type"), Some("application/json"));
    let error: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("no state yet"));

    let page = request(addr, "GET", "/", b"").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Waiting for the controller"));

    outlets.broker_connected_tx.send_replace(true);
    let ready = request(addr, "GET", "/readyz", b"").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "controller not answering\n")
    );

    drop(inlets);
    let health = request(addr, "GET", "/healthz", b"").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (503, "the heater driver has stopped\n")
    );

    shutdown.cancel();
    timeout(WAIT, server).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_controller_through_mute_and_unmute() {
    let bridge = Bridge::start("readyz", &[]).await;
    bridge.set_broker_connected(true);
    for round in 0..2 {
        bridge.wait_state("the controller answers", answering).await;
        let ready = bridge.get("/readyz").await;
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (200, "ok\n"),
            "round {round}"
        );

        bridge.sim.mute(true).await.unwrap();
        bridge
            .wait_state("the controller is silent", |s| !s.online())
            .await;
        let ready = bridge.get("/readyz").await;
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (503, "controller not answering\n"),
            "round {round}"
        );
        // Liveness is about the bridge, not the controller.
        assert_eq!(bridge.get("/healthz").await.status, 200);

        bridge.sim.mute(false).await.unwrap();
    }
    bridge.wait_state("the controller answers", answering).await;
    assert_eq!(bridge.get("/readyz").await.status, 200);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_a_brew_runs() {
    let mut bridge = Bridge::start("brew", &[]).await;
    bridge.wait_state("the controller answers", answering).await;
    let before = bridge.get("/metrics").await.body;

    bridge.command(brew(1)).await;
    bridge.wait_event("brew_started").await;
    let finished = bridge.wait_event("brew_finished").await;
    assert_eq!(finished["reason"], "done");
    bridge
        .wait_state("the heater is off again", |s| {
            s.mode == Mode::Off && s.heater == Some(OnOff::Off)
        })
        .await;

    // The heater-seconds counter is kept by a task that follows the state: scrape, as
    // Prometheus would, until it shows or the deadline passes.
    let deadline = Instant::now() + WAIT;
    let mut scrape = tokio::time::interval(Duration::from_millis(100));
    let after = loop {
        scrape.tick().await;
        let text = bridge.get("/metrics").await.body;
        let on_s = metric(&text, "coffeebot_heater_on_seconds_total")
            - metric(&before, "coffeebot_heater_on_seconds_total");
        if on_s >= 1.0 || Instant::now() > deadline {
            break text;
        }
    };
    let moved = |series: &str| metric(&after, series) - metric(&before, series);

    assert_eq!(moved("coffeebot_brews_started_total"), 1.0);
    assert_eq!(
        moved(r#"coffeebot_brews_ended_total{outcome="finished",reason="done"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"coffeebot_events_total{event_type="brew_started"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"coffeebot_commands_total{command="brew",outcome="accepted"}"#),
        1.0
    );
    assert!(moved("coffeebot_heater_on_seconds_total") >= 1.0, "{after}");
    assert!(moved("coffeebot_serial_lines_sent_total") >= 4.0);
    assert!(moved("coffeebot_serial_replies_total") >= 4.0);
    // Feeds every 250 ms during the brew; each gap well inside the controller's 1 s.
    let feeds = moved("coffeebot_feed_gap_seconds_count");
    assert!(feeds >= 3.0, "{after}");
    assert_eq!(
        moved(r#"coffeebot_feed_gap_seconds_bucket{le="0.5"}"#),
        feeds,
        "a feed gap above 0.5 s: {after}"
    );
    assert_eq!(moved("coffeebot_command_to_serial_seconds_count"), 1.0);
    assert!(metric(&after, "coffeebot_command_to_serial_seconds_sum") < 0.5);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_every_path_change_nothing() {
    let bridge = Bridge::start("writes", &[]).await;
    bridge.set_broker_connected(true);
    let idle = bridge.wait_state("the controller answers", answering).await;
    assert_eq!((idle.mode, idle.heater), (Mode::Off, Some(OnOff::Off)));
    let mut commands = bridge.sim.commands();

    let bodies: [&[u8]; 3] = [b"ON", b"{\"cups\": 4}", b"B+1\n"];
    for path in PATHS.iter().chain(&["/heater/set", "/brew/set", "/nope"]) {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            for body in bodies {
                let reply = request(bridge.addr, method, path, body).await;
                if PATHS.contains(path) {
                    assert_eq!(reply.status, 405, "{method} {path}");
                    let allow = reply.header("allow").unwrap_or_default();
                    assert!(allow.contains("GET"), "{method} {path}: Allow: {allow}");
                } else {
                    assert_eq!(reply.status, 404, "{method} {path}");
                }
            }
        }
    }
    // A body beyond the limit is refused before anything looks at it.
    let big = vec![b'x'; http::BODY_LIMIT_BYTES + 1];
    assert_eq!(request(bridge.addr, "POST", "/", &big).await.status, 413);

    // The driver keeps polling; by its next poll every request above has been answered.
    assert!(commands.next_matching("S+?", WAIT).await.is_some());
    let log = bridge.sim.command_log().await.unwrap();
    assert!(
        log.iter().all(|c| c.line != "B+1"),
        "the heater was switched on: {log:?}"
    );
    let now = bridge.state().unwrap();
    assert_eq!(
        (now.mode, now.heater, now.keep_warm, now.cups),
        (Mode::Off, Some(OnOff::Off), OnOff::Off, idle.cups)
    );
    bridge.stop().await;
}

/// A client that opens connections and sends nothing (or half a request) holds a slot only
/// until the idle timeout, and while every slot is taken others wait instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_are_bounded() {
    let limits = Limits {
        connections: 1,
        idle: Duration::from_millis(300),
        lifetime: Duration::from_secs(60),
    };
    let bridge = Bridge::start_with("limits", &[], limits).await;

    let mut slow = TcpStream::connect(bridge.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The only slot is taken: this request is served once the slow client is cut off.
    let started = Instant::now();
    let reply = bridge.get("/healthz").await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut rest = Vec::new();
    let read = timeout(WAIT, slow.read_to_end(&mut rest))
        .await
        .expect("the slow connection was closed");
    assert!(read.is_err() || rest.is_empty() || !rest.starts_with(b"HTTP/1.1 200"));
    bridge.stop().await;
}
