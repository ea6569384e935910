//! The read-only HTTP side against the running bridge: the simulated controller on a real
//! pseudo-terminal, the real serial link and driver, the HTTP server on port 0. The broker
//! connection that `/readyz` needs is set through the watch sender the MQTT task holds in the
//! product (the MQTT task itself is tested against a real mosquitto elsewhere). Waits are for
//! observable events (state documents, events, bytes on a socket) under a timeout.

mod support;

use coffeebot::bridge;
use coffeebot::core::Mode;
use coffeebot::http;
use coffeebot::http::listener::Limits;
use coffeebot::http::Options;
use coffeebot::state::{OnOff, StateDoc};
use std::time::Duration;
use support::http::{
    brew, connect_from, loopback_listeners, metric, request, request_from, request_with, Bridge,
    WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Online and with a reading: the link is `up` from the moment the port opens.
fn answering(s: &coffeebot::state::StateDoc) -> bool {
    s.online() && s.updated_at.is_some()
}

/// A bridge named `name`, connected to its broker as far as HTTP knows, whose controller
/// answers.
async fn ready_bridge(name: &str) -> Bridge {
    let bridge = Bridge::start(name, &[]).await;
    bridge.set_broker_connected(true);
    bridge.wait_state("the controller answers", answering).await;
    bridge
}

/// What the public listener serves.
const PUBLIC_PATHS: [&str; 5] = [
    "/",
    "/status.json",
    "/events",
    "/assets/page.css",
    "/assets/page.js",
];
/// What the operator listener serves.
const OPS_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

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
    assert_eq!(status.header("cache-control"), Some("public, max-age=1"));
    assert!(
        status.body == before || status.body == after,
        "{} is not the published state {before}",
        status.body
    );
    let doc: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(doc["link"], "up");
    assert_eq!(
        doc.as_object().unwrap().len(),
        StateDoc::KEYS.len(),
        "SPEC keys plus brew_ends_at, next_brew, schedule, calendar_read_at, counters"
    );

    let metrics = bridge.ops_get("/metrics").await;
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

    let health = bridge.ops_get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    bridge.set_broker_connected(false);
    let ready = bridge.ops_get("/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "not connected to the broker\n")
    );
    bridge.set_broker_connected(true);
    let ready = bridge.ops_get("/readyz").await;
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
    let channels = bridge::channels("Coffee Pot");
    let (listeners, addr, ops) = loopback_listeners().await;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listeners,
        channels.http,
        Options::default(),
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

    channels.mqtt.connected.send_replace(true);
    let ready = request(ops, "GET", "/readyz", b"").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "controller not answering\n")
    );

    drop(channels.driver);
    let health = request(ops, "GET", "/healthz", b"").await;
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
        let ready = bridge.ops_get("/readyz").await;
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (200, "ok\n"),
            "round {round}"
        );

        bridge.sim.mute(true).await.unwrap();
        bridge
            .wait_state("the controller is silent", |s| !s.online())
            .await;
        let ready = bridge.ops_get("/readyz").await;
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (503, "controller not answering\n"),
            "round {round}"
        );
        // Liveness is about the bridge, not the controller.
        assert_eq!(bridge.ops_get("/healthz").await.status, 200);

        bridge.sim.mute(false).await.unwrap();
    }
    bridge.wait_state("the controller answers", answering).await;
    assert_eq!(bridge.ops_get("/readyz").await.status, 200);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_a_brew_runs() {
    let mut bridge = Bridge::start("brew", &[]).await;
    bridge.wait_state("the controller answers", answering).await;
    let before = bridge.ops_get("/metrics").await.body;

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
        let text = bridge.ops_get("/metrics").await.body;
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
    let listeners = [
        (bridge.addr, &PUBLIC_PATHS[..]),
        (bridge.ops, &OPS_PATHS[..]),
    ];
    for (addr, served) in listeners {
        for path in served.iter().chain(&["/heater/set", "/brew/set", "/nope"]) {
            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
                for body in bodies {
                    let reply = request(addr, method, path, body).await;
                    if served.contains(path) {
                        assert_eq!(reply.status, 405, "{method} {path}");
                        let allow = reply.header("allow").unwrap_or_default();
                        assert!(allow.contains("GET"), "{method} {path}: Allow: {allow}");
                    } else {
                        assert_eq!(reply.status, 404, "{method} {path}");
                    }
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
        per_peer: 1,
        idle: Duration::from_millis(300),
        lifetime: Duration::from_secs(60),
    };
    let options = Options {
        ops_limits: limits,
        ..Options::default()
    };
    let bridge = Bridge::start_with("limits", &[], options).await;

    let mut slow = TcpStream::connect(bridge.ops).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The only slot is taken: this request (from another address, as the per-address limit
    // closes a second connection from the same one) is served once the slow client is cut off.
    let started = Instant::now();
    let reply = request_from("127.0.0.2", bridge.ops, "/healthz").await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut rest = Vec::new();
    let read = timeout(WAIT, slow.read_to_end(&mut rest))
        .await
        .expect("the slow connection was closed");
    assert!(read.is_err() || rest.is_empty() || !rest.starts_with(b"HTTP/1.1 200"));
    bridge.stop().await;
}

/// Each listener serves its own paths and nothing else, with the security headers on every
/// public answer, and only for this server's host names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_serves_its_own_paths_only() {
    let bridge = ready_bridge("listeners").await;
    for path in PUBLIC_PATHS.iter().filter(|p| **p != "/events") {
        let reply = bridge.get(path).await;
        assert_eq!(reply.status, 200, "public {path}");
        assert_eq!(bridge.ops_get(path).await.status, 404, "ops {path}");
    }
    for path in OPS_PATHS {
        assert_eq!(bridge.get(path).await.status, 404, "public {path}");
        assert_eq!(bridge.ops_get(path).await.status, 200, "ops {path}");
    }
    for path in ["/", "/status.json", "/assets/page.js", "/metrics", "/nope"] {
        let reply = bridge.get(path).await;
        let csp = reply.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
        // Nothing names the server, its version or a path on disk.
        assert!(reply.header("server").is_none(), "{path}");
        assert!(!reply.body.contains("/tmp/") && !reply.body.contains("coffeebot-http-"));
    }
    let page = bridge.get("/").await;
    assert!(!page
        .body
        .contains(&format!("v{}", env!("CARGO_PKG_VERSION"))));
    assert_eq!(
        bridge.get("/assets/page.js").await.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );

    // DNS rebinding: another name for this address is refused on both sides.
    for addr in [bridge.addr, bridge.ops] {
        let reply = request_with(
            addr,
            "GET",
            "/status.json",
            &[("Host", "rebind.example")],
            b"",
        )
        .await;
        assert_eq!(reply.status, 421, "{addr}");
        let reply = request_with(addr, "GET", "/healthz", &[], b"").await;
        assert_eq!(reply.status, 400, "{addr}: no Host");
        let local = format!("localhost:{}", addr.port());
        let reply = request_with(addr, "GET", "/nope", &[("Host", &local)], b"").await;
        assert_eq!(reply.status, 404, "{addr}: localhost is this server");
    }
    bridge.stop().await;
}

/// A configured name is answered on the public side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_are_answered() {
    let options = Options {
        allowed_hosts: vec!["coffee.example.org".into()],
        ..Options::default()
    };
    let bridge = Bridge::start_with("hosts", &[], options).await;
    bridge.wait_state("the controller answers", answering).await;
    let host = [("Host", "Coffee.Example.org")];
    let reply = request_with(bridge.addr, "GET", "/status.json", &host, b"").await;
    assert_eq!(reply.status, 200);
    bridge.stop().await;
}

/// `status.json` carries an ETag: the same state revalidates to 304 without a body, a new
/// state gets a new tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_revalidates_with_its_etag() {
    let fake = FakeServer::start(Options::default()).await;
    let (state, addr) = (&fake.state, fake.addr);
    state.send_replace(Some(doc(20.0)));
    let first = wait_status(addr, |r| r.status == 200).await;
    let etag = first.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let host = addr.to_string();
    let conditional = [("Host", host.as_str()), ("If-None-Match", etag.as_str())];
    let revalidate = || request_with(addr, "GET", "/status.json", &conditional, b"");
    let again = revalidate().await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.header("cache-control"), Some("public, max-age=1"));

    state.send_replace(Some(doc(21.0)));
    let changed = wait_status(addr, |r| r.header("etag") != Some(etag.as_str())).await;
    assert_eq!(changed.status, 200);
    assert!(changed.body.contains("\"temperature_c\":21"));
    let stale = revalidate().await;
    assert_eq!(stale.status, 200);
    fake.stop().await;
}

/// `/events` sends the current state at once, then each new one; `Last-Event-ID` of the
/// current state skips it; idle streams get keep-alive comments; beyond `max_streams` 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_states_and_are_capped() {
    let options = Options {
        max_streams: 2,
        keep_alive: Duration::from_millis(200),
        ..Options::default()
    };
    let fake = FakeServer::start(options).await;
    let (state, addr) = (&fake.state, fake.addr);
    state.send_replace(Some(doc(20.0)));

    let mut first = Sse::open(addr, None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("text/event-stream"));
    assert!(first.header("content-security-policy").is_some());
    let (id, data) = first.next_event().await;
    assert!(data.contains("\"temperature_c\":20"), "{data}");

    // A client that already has this state hears only a keep-alive until the next one.
    let mut second = Sse::open(addr, Some(&id)).await;
    assert_eq!(second.status, 200);
    second.wait_for(": keep-alive").await;
    assert!(!second.seen.contains("data:"), "{}", second.seen);

    // Full: a third viewer is told when to come back.
    let third = request(addr, "GET", "/events", b"").await;
    assert_eq!(third.status, 503);
    assert!(third.header("retry-after").is_some());

    state.send_replace(Some(doc(22.5)));
    for stream in [&mut first, &mut second] {
        let (next, data) = stream.next_event().await;
        assert_ne!(next, id);
        assert!(data.contains("\"temperature_c\":22.5"), "{data}");
    }
    // A closed stream frees its slot.
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let again = Sse::open(addr, None).await;
        if again.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.stop().await;
}

/// A viewer that stops reading is cut off once its socket stops taking bytes for the idle
/// timeout; meanwhile states keep coming and the server's memory does not grow with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let options = Options {
        max_streams: 1,
        public_limits: Limits {
            idle: Duration::from_millis(500),
            ..http::PUBLIC_LIMITS
        },
        ..Options::default()
    };
    let fake = FakeServer::start(options).await;
    let (state, addr) = (&fake.state, fake.addr);
    // States of 64 KiB each: a few fill any socket buffer.
    let big = |n: usize| {
        let mut d = doc(20.0 + n as f64 / 10.0);
        d.firmware = Some(format!("{n}-{}", "x".repeat(64 * 1024)));
        d
    };
    state.send_replace(Some(big(0)));

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hog = socket.connect(addr).await.unwrap();
    hog.write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The hog reads the head of its answer, then nothing more.
    let mut head = [0u8; 12];
    timeout(WAIT, hog.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(request(addr, "GET", "/events", b"").await.status, 503);
    let rss_before = rss_kib();
    // States as fast as they can be made (gigabytes of JSON) while the hog reads nothing.
    let pushed = Instant::now();
    let mut n = 1;
    let freed = loop {
        for _ in 0..100 {
            state.send_replace(Some(big(n)));
            n += 1;
            tokio::task::yield_now().await;
        }
        let probe = Sse::open(addr, None).await;
        if probe.status == 200 {
            break pushed.elapsed();
        }
        assert!(pushed.elapsed() < WAIT, "the hog was never dropped");
    };
    let grown = rss_kib().saturating_sub(rss_before);
    eprintln!("hog dropped after {freed:?} and {n} states; RSS grew {grown} KiB");
    assert!(grown < 32 * 1024, "RSS grew {grown} KiB");
    // The hog's connection is closed: after what the buffers held, the stream ends.
    let mut rest = Vec::new();
    let read = timeout(WAIT, hog.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the hog's connection stays open");
    fake.stop().await;
}

/// Slow-loris on the public port: 300 connections from several addresses, each dripping a
/// header byte now and then, hold public slots; the probes on the operator port still answer
/// (within 1 s: a starved probe would wait for a slot for the header timeout; how fast they
/// answer under load is the benchmark's figure), and one address cannot hold more than its
/// share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_under_slow_loris_on_the_public_port() {
    let bridge = ready_bridge("loris").await;
    let per_peer = http::PUBLIC_LIMITS.per_peer;
    let mut held = Vec::new();
    for i in 0..300 {
        let from = format!("127.0.1.{}", 1 + i / 50);
        let mut c = connect_from(&from, bridge.addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    // Beyond its share, an address's connections are closed at once.
    let mut extra = Vec::new();
    for _ in 0..=per_peer {
        extra.push(connect_from("127.0.2.1", bridge.addr).await.unwrap());
    }
    let mut last = extra.pop().unwrap();
    let mut byte = [0u8; 1];
    let read = timeout(WAIT, last.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "connection {} from one address: {read:?}",
        per_peer + 1
    );
    // The others are open and waiting for a request.
    let closed: Vec<usize> = (0..extra.len())
        .filter(|i| {
            let open = matches!(
                extra[*i].try_read(&mut byte),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            );
            !open
        })
        .collect();
    assert!(closed.is_empty(), "closed within the share: {closed:?}");

    let drip = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for c in &mut held {
                let _ = c.write_all(b"X").await;
            }
        }
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let started = Instant::now();
        let health = bridge.ops_get("/healthz").await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(health.status, 200);
        assert_eq!(bridge.ops_get("/readyz").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("slowest /healthz under 300 slow public connections: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // The public page still answers a new address: its slots are not all taken.
    assert_eq!(
        request_from("127.0.3.1", bridge.addr, "/status.json")
            .await
            .status,
        200
    );
    drip.abort();
    bridge.stop().await;
}

/// The HTTP server alone on loopback, its state fed by the test instead of a driver.
struct FakeServer {
    /// The state the server shows.
    state: tokio::sync::watch::Sender<Option<coffeebot::state::StateDoc>>,
    /// The public address.
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The other channel ends, which must stay alive while it runs.
    _rest: (coffeebot::daemon::Io, coffeebot::mqtt::Io),
}

impl FakeServer {
    /// Starts the server with `options`.
    async fn start(options: Options) -> FakeServer {
        let bridge::Channels {
            driver,
            mqtt,
            http: mut views,
        } = bridge::channels("Pot");
        let (state, rx) = tokio::sync::watch::channel(None);
        views.state = rx;
        let (listeners, addr, _) = loopback_listeners().await;
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(http::serve(listeners, views, options, shutdown.clone()));
        FakeServer {
            state,
            addr,
            shutdown,
            server,
            _rest: (driver, mqtt),
        }
    }

    /// Shuts the server down and waits for it to finish cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        timeout(WAIT, self.server).await.unwrap().unwrap().unwrap();
    }
}

/// A state document with this temperature.
fn doc(temperature_c: f64) -> coffeebot::state::StateDoc {
    coffeebot::state::StateDoc {
        heater: Some(OnOff::Off),
        temperature_c: Some(temperature_c),
        cups: 2,
        updated_at: Some("2026-11-24T07:30:00.123Z".into()),
        ..coffeebot::state::StateDoc::example()
    }
}

/// `GET /status.json` until `done` says so (the feed follows the state on its own task).
async fn wait_status(
    addr: std::net::SocketAddr,
    done: impl Fn(&support::http::Reply) -> bool,
) -> support::http::Reply {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = request(addr, "GET", "/status.json", b"").await;
        if done(&reply) {
            return reply;
        }
        assert!(Instant::now() < deadline, "status.json stayed {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An open `/events` stream, read as it comes.
struct Sse {
    status: u16,
    head: String,
    stream: TcpStream,
    /// Everything read after the head so far, not yet taken as an event.
    seen: String,
}

impl Sse {
    async fn open(addr: std::net::SocketAddr, last_id: Option<&str>) -> Sse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let last = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let head = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n{last}\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut sse = Sse {
            status: 0,
            head: String::new(),
            stream,
            seen: String::new(),
        };
        sse.wait_for("\r\n\r\n").await;
        let (head, rest) = sse.seen.split_once("\r\n\r\n").unwrap();
        sse.head = head.to_owned();
        sse.status = head.split(' ').nth(1).unwrap().parse().unwrap();
        sse.seen = rest.to_owned();
        sse
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Reads until `needle` has been seen.
    async fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.seen.contains(needle) {
            let mut buf = [0u8; 4096];
            let n = timeout(deadline - Instant::now(), self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} within {WAIT:?}: {}", self.seen))
                .unwrap();
            assert!(n > 0, "the stream ended before {needle:?}: {}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// The next event with data: its id and data (the body is chunked; the chunks here are
    /// small, so an event's lines are never split by a chunk size line).
    async fn next_event(&mut self) -> (String, String) {
        loop {
            if let Some(start) = self.seen.find("id: ") {
                if let Some(end) = self.seen[start..].find("\n\n") {
                    let event = self.seen[start..start + end].to_owned();
                    self.seen = self.seen[start + end + 2..].to_owned();
                    let field = |name: &str| {
                        event
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .unwrap_or_default()
                            .to_owned()
                    };
                    return (field("id: "), field("data: "));
                }
            }
            let mut buf = [0u8; 4096];
            let n = timeout(WAIT, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no event within {WAIT:?}: {}", self.seen))
                .unwrap();
            assert!(n > 0, "the stream ended: {}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}
