//! The status page in a real browser: headless Chromium from the distribution's packages
//! (`scripts/install-test-deps.sh` installs it) loads the page from the running bridge — the
//! simulated controller on a real pseudo-terminal, the real serial link and driver, the HTTP
//! server on port 0 — lets its script poll `status.json`, and the rendered DOM must show the
//! temperature and mode of `/status.json`. A second run takes screenshots during a brew
//! (`target/status-page.png`, phone size, and `target/status-page-tablet.png`) for a person to
//! look at. A third run loads a saved page whose embedded state differs from its server-side
//! text, so the script's wording must match the server's, from the labels the page carries.
//!
//! Without Chromium the test fails when `CI=true` and is skipped with a notice otherwise.

mod support;

use coffeebot::core::{Cutoff, Fault, Mode};
use coffeebot::http::page;
use coffeebot::protocol::ReplyFormat;
use coffeebot::state::{LastFault, Link, OnOff, StateDoc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};
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
    let profile = target_dir().join(format!(
        "chromium-profile-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&profile).unwrap();
    let mut command = Command::new("timeout");
    command
        .arg("--kill-after=5")
        .arg(CHROMIUM_TIMEOUT.as_secs().to_string())
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--lang=en-GB",
        ])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_live_state_in_a_real_browser() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    // Slow enough brews for the screenshots to show one in progress.
    let mut bridge = Bridge::start(
        "browser",
        &[
            ("COFFEEBOT__BREW__SECONDS_PER_CUP", "40"),
            ("COFFEEBOT__BREW__PREHEAT_C", "23"),
        ],
    )
    .await;
    bridge.set_broker_connected(true);
    bridge
        .wait_state("the controller answers", |s| {
            s.online() && s.temperature_c.is_some()
        })
        .await;
    let url = format!("http://{}/", bridge.addr);

    // Idle, the published state only moves beyond the deadband: what the page shows after its
    // polls must be what status.json says.
    let before = bridge.get("/status.json").await.body;
    let (dom, log) = run_chromium_logged(
        &browser,
        &url,
        &["--timeout=4000".into(), "--dump-dom".into()],
    )
    .await;
    let after = bridge.get("/status.json").await.body;
    assert_eq!(csp_violations(&log), Vec::<&str>::new(), "CSP violations");

    // Not yet asserted: that the update arrived through /events within 1 s. Chromium's
    // virtual time never ends while a stream is open, and `--timeout` dumps before it opens.
    eprintln!(
        "page source {}, {} events",
        attr_of(&dom, "page", "data-source"),
        attr_of(&dom, "page", "data-events")
    );

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

    // During a brew: screenshots with the heater on and the temperature rising (the server
    // keeps the history the sparkline starts from).
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
        run_chromium(
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
    let Some(browser) = chromium_or_skip() else {
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
