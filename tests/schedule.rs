//! The schedule end to end: `coffeebot run` as a real process, the simulator on a real
//! pseudo-terminal, a real mosquitto with the shipped configuration, and calendars from a file
//! or from a loopback HTTP server run by the test. Where a test needs a given time of day or a
//! restart after a missed start, libfaketime moves the bridge's wall clock (`CLOCK_REALTIME`;
//! its monotonic clock, which every timer runs on, is left alone): the schedule runs on the wall
//! clock, so that is the clock it plans with.
//!
//! Every wait ends on an observable event (a message, a log line, a request to the calendar's
//! server, the process's exit) or fails after a timeout; nothing sleeps to synchronise.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use coffeebot::sim::SimConfig;
use serde_json::Value;
use support::bridge::{Bridge, Process};
use support::listen::HeldPort;
use support::mosquitto::{json, Broker, Message, TestClient, User};
use support::rig::Rig;
use support::sim::simulator;

const D: &str = "coffeebot/coffeepot";
/// How long a scheduled start may come after its instant: the driver wakes every 250 ms; the
/// rest is a busy machine.
const START_SLACK: chrono::Duration = chrono::Duration::seconds(3);

/// The schedule's settings common to the tests: a brew of N cups takes N s (`FAST`), the
/// expected preheat before there is a history is 8 s (the simulated plate takes about 2 s to
/// reach `FAST`'s 25 °C).
const SCHEDULE: &[(&str, &str)] = &[
    ("SCHEDULE__TIMEZONE", "Europe/Berlin"),
    ("SCHEDULE__DEFAULT_PREHEAT_S", "8"),
    ("SCHEDULE__CALENDAR_REFRESH_S", "10"),
];

/// How one bridge of a test is launched.
#[derive(Default)]
struct Launch {
    /// `COFFEEBOT_CONFIG` (weekly entries need a file: they are an array of tables).
    config: Option<PathBuf>,
    /// A libfaketime `FAKETIME` value: `@YYYY-MM-DD hh:mm:ss` (UTC) starts the wall clock
    /// there; `+N` sets it N s ahead.
    faketime: Option<String>,
    /// Settings (`SECTION__KEY`, value) on top of `FAST` and [`SCHEDULE`].
    extra: Vec<(&'static str, String)>,
}

impl Launch {
    fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((key, value.into()));
        self
    }
}

/// The broker, the simulator, a watching client and the bridge; the state directory is kept
/// across restarts of the bridge.
struct Setup {
    rig: Rig,
    state_dir: PathBuf,
}

impl Setup {
    async fn start(name: &str, dir: &Path, launch: Launch) -> Setup {
        let broker = Broker::start();
        let sim = simulator("schedule", name, SimConfig::default()).await;
        let watcher = broker.watcher(&[&format!("{D}/#")]).await;
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let bridge = bridge(&broker, sim.path(), &state_dir, launch);
        let rig = Rig::answering(broker, sim, watcher, bridge, |s| {
            s["link"] == "up" && s["temperature_c"].is_number()
        })
        .await;
        Setup { rig, state_dir }
    }

    /// Stops the bridge (SIGTERM, exit awaited) and starts another one with `launch`.
    async fn restart(&mut self, launch: Launch) {
        self.rig.bridge.sigterm();
        let status = self.rig.bridge.wait_exit(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        self.rig.bridge = bridge(
            &self.rig.broker,
            self.rig.sim.path(),
            &self.state_dir,
            launch,
        );
    }

    /// The first state from now on with a `next_brew`.
    async fn next_brew(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let state = self
            .rig
            .state_where(what, |s| {
                s["next_brew"].is_object() && pred(&s["next_brew"])
            })
            .await;
        state["next_brew"].clone()
    }

    /// The first event of `event_type` from now on, waiting at most `limit`.
    async fn event_within(&mut self, event_type: &str, limit: Duration) -> Value {
        event_within(&mut self.rig.watcher, event_type, limit).await
    }

    /// The first `brew_skipped` event from now on (at most `limit`), which must be for the brew
    /// ready at `ready` and give a reason starting with `reason`.
    async fn brew_skipped(&mut self, limit: Duration, reason: &str, ready: DateTime<Utc>) -> Value {
        let skipped = self.event_within("brew_skipped", limit).await;
        assert!(
            skipped["reason"].as_str().unwrap().starts_with(reason),
            "{skipped}"
        );
        assert_eq!(time(&skipped["ready_at"]), ready, "{skipped}");
        skipped
    }

    /// Waits (at most `start_within`) for the brew `planned` to start, then for it to finish,
    /// and asserts that it began at its `start_at` and was done by its `ready_at`.
    async fn brews_on_time(&mut self, planned: &Value, start_within: Duration) {
        let started = self.event_within("brew_started", start_within).await;
        let finished = self
            .event_within("brew_finished", Duration::from_secs(30))
            .await;
        let start_at = time(&planned["start_at"]);
        let ready_at = time(&planned["ready_at"]);
        let began = time(&started["at"]);
        assert!(
            began >= start_at && began <= start_at + START_SLACK,
            "planned to start at {start_at}, started at {began}"
        );
        assert_eq!(started["cups"], planned["cups"], "{started}");
        assert_eq!(finished["reason"], "done", "{finished}");
        let done = time(&finished["at"]);
        assert!(
            done <= ready_at,
            "ready at {ready_at} was planned; done at {done}"
        );
    }
}

fn bridge(broker: &Broker, port: &Path, state_dir: &Path, launch: Launch) -> Bridge {
    let lib = launch.faketime.as_ref().map(|_| support::libfaketime());
    let config_env;
    let mut wrapper: Vec<&str> = Vec::new();
    if let Some(config) = &launch.config {
        // `env` sets it for the bridge: the harness clears COFFEEBOT_CONFIG in its own.
        config_env = format!("COFFEEBOT_CONFIG={}", config.display());
        wrapper = vec!["env", &config_env];
    }
    let mut env: Vec<(&str, &str)> = Vec::new();
    if let (Some(spec), Some(lib)) = (&launch.faketime, &lib) {
        env.extend([
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", spec.as_str()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("TZ", "UTC"),
        ]);
    }
    let state_dir = state_dir.display().to_string();
    let mut extra: Vec<(&str, &str)> = SCHEDULE.to_vec();
    extra.push(("COUNTERS__STATE_DIR", &state_dir));
    extra.extend(launch.extra.iter().map(|(k, v)| (*k, v.as_str())));
    let process = Process {
        wrapper: &wrapper,
        env: &env,
        ..Process::default()
    };
    let login = broker.credentials(User::Coffeebot);
    Bridge::start_with(process, port, broker, &login, &extra)
}

/// The first event of `event_type` among the messages arriving from now on (at most `limit`).
async fn event_within(watcher: &mut TestClient, event_type: &str, limit: Duration) -> Value {
    let topic = format!("{D}/event");
    let old = watcher.seen().len();
    let calls = std::cell::Cell::new(0usize);
    let m = watcher
        .wait_for(event_type, limit, |m: &Message| {
            calls.set(calls.get() + 1);
            calls.get() > old && m.topic == topic && json(m)["event_type"] == event_type
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    json(&m)
}

/// The events the watcher has seen so far, of `event_type`.
fn seen_events(watcher: &TestClient, event_type: &str) -> Vec<Value> {
    let topic = format!("{D}/event");
    watcher
        .seen()
        .iter()
        .filter(|m| m.topic == topic)
        .map(json)
        .filter(|e| e["event_type"] == event_type)
        .collect()
}

/// An RFC 3339 time of a document.
fn time(v: &Value) -> DateTime<FixedOffset> {
    let text = v.as_str().unwrap_or_else(|| panic!("a timestamp, got {v}"));
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Now, in whole seconds (calendar times carry no fractions).
fn now_s() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now")
}

/// A calendar whose events are timed (UTC) brews with these summaries.
fn ics(events: &[(DateTime<Utc>, &str)]) -> String {
    let mut text =
        String::from("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//coffeebot tests//EN\r\n");
    for (i, (at, summary)) in events.iter().enumerate() {
        let start = at.format("%Y%m%dT%H%M%SZ");
        text.push_str(&format!(
            "BEGIN:VEVENT\r\nUID:{i}@coffeebot.test\r\nDTSTAMP:{start}\r\nDTSTART:{start}\r\n\
             DURATION:PT15M\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\n"
        ));
    }
    text.push_str("END:VCALENDAR\r\n");
    text
}

/// A fresh directory for test `name` holding the calendar of these brews (see [`ics`]) as
/// `coffee.ics`; the directory and the calendar's path.
fn calendar_dir(name: &str, events: &[(DateTime<Utc>, &str)]) -> (PathBuf, String) {
    let dir = support::fresh_dir("schedule", name);
    let path = dir.join("coffee.ics");
    std::fs::write(&path, ics(events)).expect("calendar written");
    (dir, path.display().to_string())
}

// ----- brewing on schedule -------------------------------------------------------------------

/// A weekly entry in Europe/Berlin on a Monday: the bridge's wall clock starts at 08:44:30
/// local time; the brew of 3 cups ready at 08:45 starts at 08:45 − (8 s preheat + 3 × 1 s) =
/// 08:44:49 and is finished by 08:45. The preheat it measured is kept in the state directory:
/// the next Monday's brew starts later (the pot preheats in less than the default 8 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weekly_brew_starts_on_time_and_is_ready_at_ready_at() {
    let dir = support::fresh_dir("schedule", "weekly");
    let config = dir.join("coffeebot.toml");
    std::fs::write(
        &config,
        "[[schedule.brew]]\ndays = [\"mon\"]\nready_at = \"08:45\"\ncups = 3\n",
    )
    .unwrap();
    let launch = Launch {
        config: Some(config),
        faketime: Some("@2026-06-01 06:44:30".to_owned()),
        ..Launch::default()
    };
    let mut s = Setup::start("weekly", &dir, launch).await;
    let planned = s.next_brew("the weekly brew", |_| true).await;
    assert_eq!(
        planned,
        serde_json::json!({
            "ready_at": "2026-06-01T08:45:00+02:00",
            "start_at": "2026-06-01T08:44:49+02:00",
            "cups": 3,
            "source": "weekly",
        })
    );
    s.brews_on_time(&planned, Duration::from_secs(40)).await;

    let next = s
        .next_brew("next Monday's brew", |b| {
            b["ready_at"] == "2026-06-08T08:45:00+02:00"
        })
        .await;
    let kept: Value =
        serde_json::from_slice(&std::fs::read(s.state_dir.join("schedule.json")).unwrap()).unwrap();
    let measured = kept["preheats_s"][0].as_f64().expect("a measured preheat");
    assert!(measured > 0.0 && measured < 8.0, "{kept}");
    let lead = time(&next["ready_at"]) - time(&next["start_at"]);
    assert_eq!(
        lead.num_seconds(),
        (measured + 3.0).ceil() as i64,
        "the start follows the measured preheat: {next}, {kept}"
    );
}

/// A calendar served over HTTP on loopback: an event "Coffee 2" 25 s from now is a brew of 2
/// cups ready then, started 10 s before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_event_from_a_loopback_server_brews() {
    let dir = support::fresh_dir("schedule", "http");
    let ready = now_s() + chrono::Duration::seconds(25);
    let server = CalendarServer::start(vec![Answer::Calendar(ics(&[(ready, "Coffee 2")]))]);
    let launch = Launch::default().with("SCHEDULE__CALENDAR", server.url());
    let mut s = Setup::start("http", &dir, launch).await;
    let planned = s.next_brew("the calendar's brew", |_| true).await;
    assert_eq!(planned["source"], "calendar");
    assert_eq!(planned["cups"], 2);
    assert_eq!(time(&planned["ready_at"]), ready);
    assert_eq!(
        time(&planned["ready_at"]) - time(&planned["start_at"]),
        chrono::Duration::seconds(10)
    );
    s.brews_on_time(&planned, Duration::from_secs(40)).await;
    let request = server.request(Duration::from_secs(1)).expect("a request");
    assert!(request.starts_with("GET /coffee.ics HTTP/1.1"), "{request}");
}

/// `SKIP` skips the next planned brew (from a calendar file), and the skip holds across a
/// restart: the first brew that starts is the one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_skips_the_next_brew_even_across_a_restart() {
    let first = now_s() + chrono::Duration::seconds(30);
    let second = first + chrono::Duration::seconds(20);
    let (dir, calendar) = calendar_dir("skip", &[(first, "Coffee 1"), (second, "Coffee 1")]);
    let launch = || Launch::default().with("SCHEDULE__CALENDAR", calendar.clone());
    let mut s = Setup::start("skip", &dir, launch()).await;
    let planned = s.next_brew("the first brew", |_| true).await;
    assert_eq!(time(&planned["ready_at"]), first);

    s.rig.command("schedule", "SKIP").await;
    let after = s
        .next_brew("the second brew next", |b| time(&b["ready_at"]) == second)
        .await;
    s.restart(launch()).await;
    let kept = s
        .next_brew("the second brew next after a restart", |_| true)
        .await;
    assert_eq!(kept, after, "the skip is kept");

    s.brews_on_time(&after, Duration::from_secs(60)).await;
    assert_eq!(
        seen_events(&s.rig.watcher, "brew_started").len(),
        1,
        "the skipped brew did not start"
    );
}

/// The reservoir reads empty when a planned brew is due: it does not start; `brew_skipped`
/// says why and which brew, and nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interlock_at_start_time_gives_brew_skipped() {
    let ready = now_s() + chrono::Duration::seconds(30);
    let (dir, calendar) = calendar_dir("interlock", &[(ready, "Coffee 1")]);
    let launch = Launch::default().with("SCHEDULE__CALENDAR", calendar);
    let mut s = Setup::start("interlock", &dir, launch).await;
    let planned = s.next_brew("the brew", |_| true).await;
    s.rig.sim.set_water_distance(9.0).await.unwrap();
    s.rig
        .state_where("no water", |s| {
            s["faults"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "no_water"))
        })
        .await;
    let skipped = s
        .brew_skipped(Duration::from_secs(40), "no_water", ready)
        .await;
    assert_eq!(skipped["cups"], 1);
    assert_eq!(skipped["source"], "calendar");
    let at = time(&skipped["at"]);
    let start_at = time(&planned["start_at"]);
    assert!(at >= start_at && at <= start_at + START_SLACK, "{skipped}");
    // Water again: the skipped brew does not come back.
    s.rig.sim.set_water_distance(2.0).await.unwrap();
    let state = s
        .rig
        .state_where("water again", |s| {
            s["faults"].as_array().is_some_and(|f| f.is_empty())
        })
        .await;
    assert_eq!(state["next_brew"], Value::Null, "{state}");
    assert_eq!(state["mode"], "off");
    assert!(seen_events(&s.rig.watcher, "brew_started").is_empty());
}

/// After restarts, with `max_late_s = 30` and a default preheat of 120 s (so a brew of 2 cups
/// starts 122 s before it is ready): a bridge that comes up 60 s after a start skips that brew
/// (`late`), one that comes up 10 s after a start runs it at once. The bridges' wall clocks
/// are set ahead with libfaketime; the brews are an hour and two hours away in real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_missed_by_a_restart_runs_within_max_late_and_is_skipped_after() {
    let first = now_s() + chrono::Duration::hours(1);
    let second = first + chrono::Duration::hours(1);
    let (dir, calendar) = calendar_dir("late", &[(first, "Coffee 2"), (second, "Coffee 2")]);
    let launch = |clock: Option<String>| Launch {
        faketime: clock,
        ..Launch::default()
            .with("SCHEDULE__CALENDAR", calendar.clone())
            .with("SCHEDULE__MAX_LATE_S", "30")
            .with("SCHEDULE__DEFAULT_PREHEAT_S", "120")
    };
    // The bridge's clock this far after `at`, from now on.
    let ahead_of = |at: DateTime<Utc>, after_s: i64| {
        // Rounded up: the clock is never behind `at + after_s`.
        let ms = (at + chrono::Duration::seconds(after_s) - Utc::now()).num_milliseconds();
        let offset = (ms + 999).div_euclid(1000);
        Some(format!("+{offset}"))
    };
    let mut s = Setup::start("late", &dir, launch(None)).await;
    let planned = s.next_brew("the first brew", |_| true).await;
    assert_eq!(time(&planned["ready_at"]), first);
    let first_start = time(&planned["start_at"]).with_timezone(&Utc);
    assert_eq!(first - first_start, chrono::Duration::seconds(122));

    s.restart(launch(ahead_of(first_start, 60))).await;
    s.brew_skipped(Duration::from_secs(20), "late", first).await;
    let planned = s
        .next_brew("the second brew", |b| time(&b["ready_at"]) == second)
        .await;
    let second_start = time(&planned["start_at"]).with_timezone(&Utc);

    s.restart(launch(ahead_of(second_start, 10))).await;
    let started = s
        .event_within("brew_started", Duration::from_secs(20))
        .await;
    let began = time(&started["at"]);
    assert!(
        began >= second_start + chrono::Duration::seconds(10)
            && began <= second_start + chrono::Duration::seconds(30),
        "a start at {second_start} missed by 10 s (and the bridge's start-up) ran at {began}"
    );
    assert_eq!(started["cups"], 2);
    s.event_within("brew_finished", Duration::from_secs(30))
        .await;
    assert_eq!(
        seen_events(&s.rig.watcher, "brew_skipped").len(),
        1,
        "the first brew was not announced again"
    );
    let kept: Value =
        serde_json::from_slice(&std::fs::read(s.state_dir.join("schedule.json")).unwrap()).unwrap();
    assert_eq!(
        time(&kept["handled_until"]),
        second,
        "both brews handled: {kept}"
    );
}

// ----- a calendar that cannot be read ------------------------------------------------------

/// The calendar's server, one request after another (refreshed every 10 s; a read waits at
/// most 5 s): a good calendar; no answer; HTTP 500 twice; garbage; a 50 MiB body; the good
/// calendar again. Each bad condition gives one WARN line (the second 500 none), the last good
/// calendar stays in use (the same `next_brew` and `calendar_read_at`), the failures are
/// counted in `/metrics`, commands are served all along, and the 50 MiB cost the bridge at
/// most a little over the 1 MiB it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_server_that_hangs_fails_or_floods_leaves_the_last_good_calendar() {
    let dir = support::fresh_dir("schedule", "down");
    let ready = now_s() + chrono::Duration::hours(3);
    let good = ics(&[(ready, "Coffee 3")]);
    let server = CalendarServer::start(vec![
        Answer::Calendar(good.clone()),
        Answer::Hang,
        Answer::Status(500),
        Answer::Status(500),
        Answer::Garbage,
        Answer::Huge(50 << 20),
        Answer::Calendar(good),
    ]);
    let held = HeldPort::new().expect("a free loopback port");
    let ops = held.port();
    let launch = Launch::default()
        .with("SCHEDULE__CALENDAR", server.url())
        .with("HTTP__OPS_LISTEN", format!("127.0.0.1:{ops}"));
    let mut s = Setup::start("down", &dir, launch).await;
    let first = s
        .rig
        .state_where("the calendar read", |s| {
            s["next_brew"].is_object() && s["calendar_read_at"].is_string()
        })
        .await;
    let rss_before = s.rig.bridge.proc_status_kb("VmRSS").unwrap();
    let warn = "calendar unavailable";
    let wait = Duration::from_secs(20);
    let seen = server.request(wait).expect("the first request");
    assert!(seen.starts_with("GET "), "{seen}");
    for (request, warnings) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 4)] {
        let seen = server.request(wait).expect("the next request");
        assert!(seen.starts_with("GET "), "{seen}");
        assert_eq!(server.served(), request + 1);
        // The bridge has given up on this answer once it asks again, or has logged it.
        assert!(
            s.rig.bridge.wait_for_log_count(warn, warnings, wait),
            "request {request}: {warnings} WARN lines expected: {:?}",
            s.rig.bridge.log()
        );
        // Commands are served while the calendar is down.
        let cups = 1 + request as u32;
        s.rig.command("cups", cups.to_string()).await;
        let state = s.rig.state_where("cups set", |s| s["cups"] == cups).await;
        assert_eq!(state["next_brew"], first["next_brew"], "the last good plan");
        assert_eq!(state["calendar_read_at"], first["calendar_read_at"]);
    }
    let seen = server
        .request(wait)
        .expect("the good calendar asked for again");
    assert!(seen.starts_with("GET "));
    let again = s
        .rig
        .state_where("the calendar read again", |s| {
            s["calendar_read_at"].is_string() && s["calendar_read_at"] != first["calendar_read_at"]
        })
        .await;
    assert_eq!(again["next_brew"], first["next_brew"]);
    let warnings: Vec<String> = s
        .rig
        .bridge
        .log()
        .into_iter()
        .filter(|l| l.contains(warn))
        .collect();
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    for (line, cause) in warnings.iter().zip([
        "cannot fetch the calendar",
        "HTTP 500",
        "not an iCalendar document",
        "larger than 1 MiB",
    ]) {
        assert!(
            line.contains("WARN") && line.contains(cause),
            "{cause}: {line}"
        );
    }
    let metrics = http_get(ops, "/metrics");
    for (kind, count) in [
        ("fetch", 1),
        ("status", 2),
        ("invalid", 1),
        ("too_large", 1),
    ] {
        let series =
            format!("coffeebot_calendar_refresh_failures_total{{kind=\"{kind}\"}} {count}");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    let hwm = s.rig.bridge.proc_status_kb("VmHWM").unwrap();
    let rss_after = s.rig.bridge.proc_status_kb("VmRSS").unwrap();
    println!(
        "FIGURE calendar server hangs, 500 twice, garbage, 50 MiB: VmRSS {rss_before} kB before, \
         {rss_after} kB after, VmHWM {hwm} kB"
    );
    assert!(
        hwm < rss_before + 8 * 1024,
        "50 MiB offered: peak {hwm} kB, {rss_before} kB before"
    );
    assert!(
        rss_after < rss_before + 4 * 1024,
        "{rss_before} kB → {rss_after} kB"
    );
}

/// What the calendar's server answers to one request.
#[derive(Clone, Debug)]
enum Answer {
    /// 200 with this text.
    Calendar(String),
    /// Reads the request and answers nothing until the client gives up.
    Hang,
    /// This status, with a short text body.
    Status(u16),
    /// 200 with a body that is no calendar.
    Garbage,
    /// 200 with a body of this many bytes (written until the client stops reading).
    Huge(usize),
}

/// A loopback HTTP server that answers request *n* with the script's answer *n* (the last one
/// from then on), each on a thread of its own, and reports every request it has read.
struct CalendarServer {
    port: u16,
    requests: mpsc::Receiver<String>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CalendarServer {
    fn start(script: Vec<Answer>) -> CalendarServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (tx, requests) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stopping, counter) = (Arc::clone(&stop), Arc::clone(&served));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let answer = script[n.min(script.len() - 1)].clone();
                let tx = tx.clone();
                std::thread::spawn(move || serve(stream, answer, tx));
            }
        });
        CalendarServer {
            port,
            requests,
            served,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/coffee.ics", self.port)
    }

    /// The request line of the next request read (at most `within`).
    fn request(&self, within: Duration) -> Option<String> {
        self.requests.recv_timeout(within).ok()
    }

    /// Connections accepted so far.
    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for CalendarServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request and answers it; reports the request line once read.
fn serve(stream: TcpStream, answer: Answer, requests: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let mut stream = stream;
    let reply = |stream: &mut TcpStream, status: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/calendar\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    match answer {
        Answer::Calendar(text) => reply(&mut stream, "200 OK", text.as_bytes()),
        Answer::Status(code) => reply(
            &mut stream,
            &format!("{code} Internal Server Error"),
            b"oops",
        ),
        Answer::Garbage => reply(
            &mut stream,
            "200 OK",
            b"<html><body>Sign in to see this calendar</body></html>\n",
        ),
        Answer::Huge(size) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/calendar\r\nContent-Length: {size}\r\n\
                 Connection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            let chunk = vec![b'X'; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
        Answer::Hang => {
            let _ = requests.send(request_line.trim_end().to_owned());
            // Until the client gives up and closes.
            let _ = reader.read_to_end(&mut Vec::new());
            return;
        }
    }
    let _ = requests.send(request_line.trim_end().to_owned());
}

/// The body of `GET path` from the ops listener on `port`.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("ops listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("a reply");
    text
}
