//! The status page in a real browser: headless Chromium from the distribution's packages
//! (`scripts/install-test-deps.sh` installs it) loads the page from the running bridge — the
//! simulated controller on a real pseudo-terminal, the real serial link and driver, the HTTP
//! server on port 0.
//!
//! Driven through the DevTools protocol (`support::cdp`), the page must follow a state change
//! within a second over `/events` (no reload, no poll: Chromium's network log shows the
//! `EventSource` and no `status.json` request), fall back to polling when `/events` is
//! refused, and with JavaScript off show the current values as the server rendered them;
//! Chromium reports no Content-Security-Policy violation in any of them. A further run takes
//! screenshots during a brew (`target/status-page.png`, phone size, and
//! `target/status-page-tablet.png`) for a person to look at. The last loads a saved page whose
//! embedded state differs from its server-side text, so the script's wording must match the
//! server's, from the labels the page carries.
//!
//! Without Chromium the tests fail when `CI=true` and are skipped with a notice otherwise.

mod support;

use coffeebot::core::{Cutoff, Fault, Mode};
use coffeebot::http::page;
use coffeebot::http::Options;
use coffeebot::protocol::ReplyFormat;
use coffeebot::state::{LastFault, Link, OnOff, StateDoc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};
use support::cdp;
use support::http::{brew, Bridge};

/// Longest a Chromium run may take (enforced with coreutils' `timeout`).
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

fn chromium() -> Option<PathBuf> {
    // `CHROMIUM` names another build (or, set to a missing path, tests the missing case).
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|p| p.exists());
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Chromium, or `None` after a notice when the test may be skipped.
fn chromium_or_skip() -> Option<PathBuf> {
    match chromium() {
        Some(path) => Some(path),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "Chromium is not installed; run scripts/install-test-deps.sh (Debian package \
             `chromium`) before the tests"
        ),
        None => {
            eprintln!(
                "NOTICE: skipping the browser test: Chromium is not installed \
                 (scripts/install-test-deps.sh installs it)"
            );
            None
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    )
}

/// Runs headless Chromium on `url` with `extra` flags and a fresh profile; returns stdout.
async fn run_chromium(browser: &Path, url: &str, extra: &[String]) -> String {
    run_chromium_logged(browser, url, extra).await.0
}

/// [`run_chromium`] with Chromium's log on stderr (console messages, CSP reports among them):
/// returns stdout and that log.
async fn run_chromium_logged(browser: &Path, url: &str, extra: &[String]) -> (String, String) {
    let profile = cdp::fresh_profile(&target_dir(), "chromium-profile");
    let mut command = Command::new("timeout");
    command
        .arg("--kill-after=5")
        .arg(CHROMIUM_TIMEOUT.as_secs().to_string())
        .arg(browser)
        .args(cdp::HEADLESS_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--enable-logging=stderr", "--v=0"])
        .args(extra)
        .arg(url);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Lines of Chromium's log that report a Content-Security-Policy violation.
fn csp_violations(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("Content Security Policy") || l.contains("Content-Security-Policy"))
        .collect()
}

/// The text of the element with `id` in a serialised DOM (elements here hold plain text).
fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} not in the page:\n{dom}"));
    let open_end = at + dom[at..].find('>').unwrap() + 1;
    let close = open_end + dom[open_end..].find('<').unwrap();
    dom[open_end..close].trim().to_owned()
}

/// The value of attribute `name` on the element with `id`.
fn attr_of(dom: &str, id: &str, name: &str) -> String {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap();
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..at + dom[at..].find('>').unwrap()];
    let key = format!("{name}=\"");
    let v = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} on #{id}: {tag}"));
    let rest = &tag[v + key.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// One browser test at a time: each runs a bridge and a Chromium on a machine of two cores,
/// and the live test holds the page to a one-second deadline.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Chromium's path and this test's turn at [`ONE_BROWSER`]; `None` when the test is skipped.
async fn chromium_turn() -> Option<(PathBuf, tokio::sync::MutexGuard<'static, ()>)> {
    let path = chromium_or_skip()?;
    Some((path, ONE_BROWSER.lock().await))
}

/// How soon after the bridge publishes a state the page must show it over `/events`.
const PUSHED_WITHIN: Duration = Duration::from_secs(1);
/// How soon when it polls (every second, plus the request).
const POLLED_WITHIN: Duration = Duration::from_millis(2500);

/// A bridge whose brews stay in one mode long enough to be seen, answering already.
async fn live_bridge(name: &str, options: Options) -> Bridge {
    let bridge = Bridge::start_with(
        name,
        &[
            ("COFFEEBOT__BREW__SECONDS_PER_CUP", "40"),
            ("COFFEEBOT__BREW__PREHEAT_C", "23"),
        ],
        options,
    )
    .await;
    bridge.set_broker_connected(true);
    bridge
        .wait_state("the controller answers", |s| {
            s.online() && s.temperature_c.is_some() && s.mode == Mode::Off
        })
        .await;
    bridge
}

/// `document.getElementById(id)` in page expressions.
fn el(id: &str) -> String {
    format!("document.getElementById('{id}')")
}

/// One live-page test: the browser lock held, a bridge answering, and Chromium with one tab.
struct Live {
    _one: tokio::sync::MutexGuard<'static, ()>,
    bridge: Bridge,
    browser: cdp::Browser,
    tab: cdp::Tab,
}

impl Live {
    /// Starts the bridge `name` with `options` and a browser with a blank tab; `None` when the
    /// test is skipped for want of Chromium.
    async fn start(name: &str, options: Options) -> Option<Live> {
        let (path, one) = chromium_turn().await?;
        let bridge = live_bridge(name, options).await;
        let mut browser = cdp::Browser::launch(&path, &target_dir());
        let tab = browser.open_tab().await;
        Some(Live {
            _one: one,
            bridge,
            browser,
            tab,
        })
    }

    /// Loads the bridge's page in the tab.
    async fn load(&mut self) {
        let url = format!("http://{}/", self.bridge.addr);
        self.browser.navigate(&self.tab, &url).await;
    }

    /// Waits until the page says its values come from `source` (`sse` or `poll`).
    async fn wait_source(&mut self, source: &str) {
        self.browser
            .wait_until(
                &self.tab,
                &format!("document.body.dataset.source === '{source}'"),
                "document.body.dataset.source",
                cdp::CALL_TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| panic!("the page takes its values from {source}: {e}"));
    }

    /// Starts a brew and waits for the bridge to publish it; then the page must show a mode other
    /// than off within `within` of that publication. Returns how long the page took.
    async fn follows_a_brew(&mut self, within: Duration) -> Duration {
        self.bridge.command(brew(1)).await;
        let published = self
            .bridge
            .wait_state("the brew started", |s| s.mode != Mode::Off)
            .await;
        let shown = self
            .browser
            .wait_until(
                &self.tab,
                &format!("{}.dataset.value !== 'off'", el("mode")),
                &format!(
                    "{m}.dataset.value + ' via ' + document.body.dataset.source",
                    m = el("mode")
                ),
                within,
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the page did not follow the bridge to {:?} within {within:?}: {e}",
                    published.mode
                )
            });
        eprintln!(
            "the page showed {:?} {shown:?} after the bridge published it",
            published.mode
        );
        shown
    }

    /// Asserts that Chromium reported no Content-Security-Policy violation, then stops both.
    async fn finish(self) {
        assert_eq!(
            self.browser.csp_reports(&self.tab),
            Vec::<String>::new(),
            "CSP reports"
        );
        self.browser.close().await;
        self.bridge.stop().await;
    }
}

/// With JavaScript on, the page opens `/events` and shows a new state within a second of the
/// bridge publishing it, without a reload and without polling: Chromium's own network log
/// shows the `EventSource` request and no `status.json` request, and the page says each value
/// came from the stream. Chromium reports no Content-Security-Policy violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_the_state_over_events_within_a_second() {
    let Some(mut live) = Live::start("live.browser-sse", Options::default()).await else {
        return;
    };
    live.load().await;
    // The stream delivers the current state at once.
    live.wait_source("sse").await;
    let navigations = live
        .browser
        .events
        .iter()
        .filter(|e| e["method"] == "Page.frameNavigated")
        .count();

    let took = live.follows_a_brew(PUSHED_WITHIN).await;
    assert!(took <= PUSHED_WITHIN);
    let said = live
        .browser
        .eval(
            &live.tab,
            "[document.body.dataset.source, document.body.dataset.polls, \
              document.body.dataset.events]",
        )
        .await
        .unwrap();
    assert_eq!(said[0], "sse", "the last value came from the stream");
    assert_eq!(said[1], "0", "the page never polled");
    let events: u32 = said[2].as_str().unwrap().parse().unwrap();
    assert!(
        events >= 2,
        "the first state and the brew arrived as events"
    );
    let requests = live.browser.requests(&live.tab);
    let events_url = format!("http://{}/events", live.bridge.addr);
    assert!(
        requests
            .iter()
            .any(|(url, kind)| *url == events_url && kind == "EventSource"),
        "an EventSource request for /events: {requests:?}"
    );
    assert!(
        !requests.iter().any(|(url, _)| url.contains("status.json")),
        "no status.json request: {requests:?}"
    );
    assert_eq!(
        live.browser
            .events
            .iter()
            .filter(|e| e["method"] == "Page.frameNavigated")
            .count(),
        navigations,
        "no reload"
    );
    live.finish().await;
}

/// When `/events` is refused (here: no stream slot, so 503), the page falls back to polling
/// `status.json` and still follows the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_events_the_page_polls() {
    let options = Options {
        max_streams: 0,
        ..Options::default()
    };
    let Some(mut live) = Live::start("live.browser-poll", options).await else {
        return;
    };
    live.load().await;
    live.wait_source("poll").await;

    live.follows_a_brew(POLLED_WITHIN).await;
    let said = live
        .browser
        .eval(
            &live.tab,
            "[document.body.dataset.source, document.body.dataset.events]",
        )
        .await
        .unwrap();
    assert_eq!(said, serde_json::json!(["poll", "0"]));
    let refused = live.browser.events.iter().any(|e| {
        e["method"] == "Network.responseReceived"
            && e["params"]["response"]["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/events"))
            && e["params"]["response"]["status"] == 503
    });
    assert!(refused, "the page tried /events and got 503");
    live.finish().await;
}

/// With JavaScript off, the page as the server renders it shows the current values: the
/// temperature and mode of `status.json` at the time, and the script never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_javascript_the_page_shows_the_current_values() {
    let Some(mut live) = Live::start("browser-nojs", Options::default()).await else {
        return;
    };
    live.browser
        .call(
            Some(&live.tab.session),
            "Emulation.setScriptExecutionDisabled",
            serde_json::json!({ "value": true }),
        )
        .await
        .expect("scripts off");
    // Idle, the published state only moves beyond the deadband: the page must show what
    // status.json says just before or just after it was rendered.
    let before = live.bridge.get("/status.json").await.body;
    live.load().await;
    let after = live.bridge.get("/status.json").await.body;
    let dom = live.browser.outer_html(&live.tab).await;
    assert_eq!(
        attr_of(&dom, "page", "data-source"),
        "server",
        "no script ran"
    );
    assert_eq!(attr_of(&dom, "page", "data-events"), "0");
    let shown_temperature = text_of(&dom, "temperature");
    let shown_mode = (attr_of(&dom, "mode", "data-value"), text_of(&dom, "mode"));
    let matches = |json: &str| {
        let doc: serde_json::Value = serde_json::from_str(json).unwrap();
        let t = format!("{:.1}", doc["temperature_c"].as_f64().unwrap());
        let mode = doc["mode"].as_str().unwrap().to_owned();
        let label = coffeebot::http::page::mode_label(&mode).to_owned();
        shown_temperature == t && shown_mode == (mode, label)
    };
    assert!(
        matches(&before) || matches(&after),
        "the page shows {shown_temperature} °C, {shown_mode:?}; status.json said {before} \
         and then {after}"
    );
    assert!(text_of(&dom, "updated-ago").ends_with("ago"));
    assert!(!text_of(&dom, "updated-clock").is_empty());
    let requests = live.browser.requests(&live.tab);
    assert!(
        !requests
            .iter()
            .any(|(url, _)| url.ends_with("/events") || url.contains("status.json")),
        "without a script the page makes no data request: {requests:?}"
    );
    live.finish().await;
}

/// Screenshots during a brew (`target/status-page.png`, phone size, light, and
/// `target/status-page-tablet.png`, dark) for a person to look at, with the heater on and the
/// temperature rising (the server keeps the history the sparkline starts from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_during_a_brew() {
    let Some((browser, _one)) = chromium_turn().await else {
        return;
    };
    let mut bridge = live_bridge("browser-shots", Options::default()).await;
    let url = format!("http://{}/", bridge.addr);
    bridge.command(brew(2)).await;
    bridge.wait_event("brew_started").await;
    bridge
        .wait_state("the plate is warming up", |s| {
            s.heater == Some(OnOff::On) && s.mode == Mode::Brewing && s.temperature_c > Some(30.0)
        })
        .await;
    let shots = [
        ("status-page.png", "412,915", "light"),
        ("status-page-tablet.png", "1180,820", "dark"),
    ];
    for (name, size, scheme) in shots {
        let path = target_dir().join(name);
        let _ = std::fs::remove_file(&path);
        let (_, log) = run_chromium_logged(
            &browser,
            &url,
            &[
                format!("--window-size={size}"),
                format!(
                    "--blink-settings=preferredColorScheme={}",
                    u8::from(scheme == "light")
                ),
                "--timeout=3000".into(),
                format!("--screenshot={}", path.display()),
            ],
        )
        .await;
        assert_eq!(csp_violations(&log), Vec::<&str>::new(), "CSP violations");
        let png = std::fs::read(&path).expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            path.display()
        );
        eprintln!("screenshot: {}", path.display());
    }
    bridge.stop().await;
}

/// The script words every value as the server does, from the texts the server puts in the
/// page: a page rendered while waiting, given a state only through its embedded JSON, must
/// show after the script ran what the server renders for that state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_words_values_as_the_server_does() {
    let Some((browser, _one)) = chromium_turn().await else {
        return;
    };
    let doc = StateDoc {
        mode: Mode::KeepWarm,
        heater: Some(OnOff::Off),
        temperature_c: Some(71.5),
        cups: 1,
        keep_warm: OnOff::On,
        faults: [Fault::HeaterMismatch, Fault::NoWater]
            .into_iter()
            .collect(),
        last_fault: Some(LastFault {
            reason: Cutoff::FeedGap.into(),
            at: "2026-11-24T07:29:00.000Z".into(),
        }),
        link: Link::Down,
        controller_reboots: 1,
        firmware: Some("MrCoffeeBot v2.0".into()),
        reply_format: Some(ReplyFormat::ThreeLines),
        updated_at: Some("2026-11-24T07:30:00.123Z".into()),
        next_brew: Some(coffeebot::schedule::PlannedBrewDoc {
            ready_at: "2026-11-25T06:45:00+01:00".into(),
            start_at: "2026-11-25T06:39:15+01:00".into(),
            cups: 1,
            source: coffeebot::schedule::Source::Weekly,
        }),
        schedule: coffeebot::state::OnOff::On,
        ..StateDoc::example()
    };
    let now = SystemTime::now();
    let server = page::render("Pot", Some(&doc), "[]", now);
    let waiting = page::render("Pot", None, "[]", now);
    let given = waiting.replace(
        r#"data-title="Pot">null</script>"#,
        &format!(r#"data-title="Pot">{}</script>"#, doc.to_json()),
    );
    assert_ne!(given, waiting);
    // The page and its assets as files, where the page's relative links find them.
    let dir = target_dir().join(format!("status-page-words-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("assets/page.js"), page::SCRIPT).unwrap();
    std::fs::write(dir.join("assets/page.css"), page::STYLE).unwrap();
    let file = dir.join("index.html");
    std::fs::write(&file, given).unwrap();
    let url = format!("file://{}", file.display());
    let dom = run_chromium(&browser, &url, &["--dump-dom".into()]).await;
    let _ = std::fs::remove_dir_all(&dir);

    for id in [
        "mode",
        "heater",
        "keep-warm",
        "link",
        "firmware",
        "cups",
        "water-level",
        "water-distance",
        "brew-remaining",
        "reboots",
        "next-brew",
        "next-brew-detail",
    ] {
        assert_eq!(text_of(&dom, id), text_of(&server, id), "#{id}");
    }
    assert_eq!(text_of(&dom, "next-brew"), "Ready 2026-11-25 06:45");
    assert_eq!(
        attr_of(&dom, "next-brew", "datetime"),
        "2026-11-25T06:45:00+01:00"
    );
    assert_eq!(text_of(&dom, "mode"), "Keeping warm");
    for fault in ["Heater stuck on", "Reservoir empty"] {
        let item = format!("<li>{fault}</li>");
        assert!(server.contains(&item) && dom.contains(&item), "{fault}");
    }
    assert!(text_of(&dom, "last-fault").starts_with("Last: Heater feed late at "));
}
