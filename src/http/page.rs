//! The status page: an HTML document rendered with the current values, so that it reads right
//! without JavaScript too, plus one style sheet and one script served as files (the CSP allows
//! no inline script or style).
//!
//! Pure: the state and the wall-clock time go in, HTML comes out. The script formats values the
//! same way as [`render`], follows `/events` and falls back to polling `status.json`.

use crate::core::{Mode, TripReason};
use crate::protocol::ReplyFormat;
use crate::schedule::Source;
use crate::state::{Link, OnOff, StateDoc};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::SystemTime;

const TEMPLATE: &str = include_str!("page.html");
/// The page's style sheet.
pub const STYLE: &str = include_str!("page.css");
/// The page's script.
pub const SCRIPT: &str = include_str!("page.js");
/// Where [`STYLE`] is served (the page links it relative, so it works under a path prefix).
pub const STYLE_PATH: &str = "/assets/page.css";
/// Where [`SCRIPT`] is served.
pub const SCRIPT_PATH: &str = "/assets/page.js";

/// A hash of the assets, in their URLs: a new build's files are never taken from a cache.
fn asset_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in STYLE.bytes().chain(SCRIPT.bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:012x}", hash & 0xffff_ffff_ffff)
    })
}

/// The page for `state` (`None`: no state yet) with the temperature `history` (JSON
/// `[[unix ms, °C], …]`) as of wall-clock `now`.
pub fn render(title: &str, state: Option<&StateDoc>, history: &str, now: SystemTime) -> String {
    let v = Values::new(state, now);
    let initial = state.map_or_else(|| "null".to_owned(), StateDoc::to_json);
    let fields: [(&str, &str); 31] = [
        ("asset_tag", asset_tag()),
        ("title", &escape(title)),
        ("conn_state", v.conn_state),
        ("conn_text", v.conn_text),
        ("temperature", &v.temperature),
        ("mode", v.mode),
        ("mode_label", v.mode_label),
        ("heater", v.heater),
        ("heater_label", v.heater_label),
        ("water_level", &v.water_level),
        ("water_bar", &v.water_bar),
        ("water_distance", &v.water_distance),
        ("brew_remaining", &v.brew_remaining),
        ("cups", &v.cups),
        ("keep_warm", v.keep_warm),
        ("keep_warm_label", v.keep_warm_label),
        ("link", v.link),
        ("link_label", v.link_label),
        ("firmware", &escape(&v.firmware)),
        ("reboots", &v.reboots),
        ("faults", &v.faults),
        ("last_fault", &escape(&v.last_fault)),
        ("updated_at", &escape(&v.updated_at)),
        ("updated_clock", &escape(&v.updated_clock)),
        ("updated_ago", &v.updated_ago),
        ("next_brew_at", &escape(&v.next_brew_at)),
        ("next_brew", &escape(&v.next_brew)),
        ("next_brew_detail", &escape(&v.next_brew_detail)),
        // Inside <script>: `<` escaped so no `</script>` can end it early.
        ("initial_json", &initial.replace('<', "\\u003c")),
        ("history_json", &history.replace('<', "\\u003c")),
        ("labels_json", &escape(labels_json())),
    ];
    fill(TEMPLATE, &fields)
}

/// Replaces every `{{name}}` in `template` by its value; unknown names are left as they are.
fn fill(template: &str, fields: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            rest = &rest[start..];
            break;
        };
        let name = &after[..end];
        match fields.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => out.push_str(value),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Escapes text for HTML content and double-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The label the page shows for a mode, by its name in the state JSON.
pub fn mode_label(mode: &str) -> &'static str {
    Mode::ALL
        .into_iter()
        .find(|m| m.as_str() == mode)
        .map_or("Unknown", Mode::label)
}

fn heater_label(heater: Option<OnOff>) -> &'static str {
    match heater {
        Some(OnOff::On) => "Heater on",
        Some(OnOff::Off) => "Heater off",
        None => "Heater unknown",
    }
}

fn keep_warm_label(keep_warm: OnOff) -> &'static str {
    match keep_warm {
        OnOff::On => "On",
        OnOff::Off => "Off",
    }
}

/// Which build answers and whether it has the 1 s heater timeout.
fn build_label(format: ReplyFormat) -> String {
    let timeout = if format.has_heater_timeout() {
        "1 s heater timeout"
    } else {
        "no heater timeout"
    };
    format!("build {} ({timeout})", format.build())
}

/// The texts the script shows for the state's values, keyed by their JSON names: the page
/// carries them (`data-labels`), so the script keeps no table of its own.
fn labels_json() -> &'static str {
    static LABELS: OnceLock<String> = OnceLock::new();
    LABELS.get_or_init(|| {
        let heater = OnOff::ALL.map(|h| (h.as_str(), heater_label(Some(h))));
        json!({
            "modes": table(Mode::ALL.map(|m| (m.as_str(), m.label()))),
            "reasons": table(TripReason::all().map(|r| (r.as_str(), r.label()))),
            "heater": table(heater.into_iter().chain([("unknown", heater_label(None))])),
            "keep_warm": table(OnOff::ALL.map(|k| (k.as_str(), keep_warm_label(k)))),
            "link": table(Link::ALL.map(|l| (l.as_str(), l.label()))),
            "formats": table(
                [ReplyFormat::OneLine, ReplyFormat::ThreeLines].map(|f| (f.as_str(), build_label(f)))
            ),
            "schedule": table(OnOff::ALL.map(|o| (o.as_str(), no_brew_label(o)))),
            "sources": table([Source::Weekly, Source::Calendar].map(|s| (s.as_str(), source_label(s)))),
        })
        .to_string()
    })
}

/// What the next-brew card says when there is no next brew, the schedule being `schedule`.
fn no_brew_label(schedule: OnOff) -> &'static str {
    match schedule {
        OnOff::On => "None planned",
        OnOff::Off => "Schedule off",
    }
}

/// Where a planned brew comes from, as the page says it.
fn source_label(source: Source) -> &'static str {
    match source {
        Source::Weekly => "weekly",
        Source::Calendar => "from the calendar",
    }
}

/// `YYYY-MM-DD HH:MM` of an RFC 3339 time, in the offset it is written in (the schedule's
/// zone: the wall-clock time a person planned); the script shows it the same way.
fn wall_minute(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(day), Some(hm)) => format!("{day} {hm}"),
        _ => rfc3339.to_owned(),
    }
}

/// The next-brew card: its `datetime`, its time and a line of details.
fn next_brew_texts(d: &StateDoc) -> (String, String, String) {
    match &d.next_brew {
        None => (
            String::new(),
            no_brew_label(d.schedule).into(),
            String::new(),
        ),
        Some(b) => (
            b.ready_at.clone(),
            format!("Ready {}", wall_minute(&b.ready_at)),
            format!(
                "{} {} · {} · starts {}",
                b.cups,
                if b.cups == 1 { "cup" } else { "cups" },
                source_label(b.source),
                b.start_at.get(11..16).unwrap_or_default()
            ),
        ),
    }
}

/// A JSON object from `(name, text)` pairs.
fn table(pairs: impl IntoIterator<Item = (&'static str, impl Into<String>)>) -> Value {
    let map: Map<String, Value> = pairs
        .into_iter()
        .map(|(name, text)| (name.to_owned(), Value::String(text.into())))
        .collect();
    Value::Object(map)
}

/// Every value the template shows, formatted.
struct Values {
    conn_state: &'static str,
    conn_text: &'static str,
    temperature: String,
    mode: &'static str,
    mode_label: &'static str,
    heater: &'static str,
    heater_label: &'static str,
    water_level: String,
    water_bar: String,
    water_distance: String,
    brew_remaining: String,
    cups: String,
    keep_warm: &'static str,
    keep_warm_label: &'static str,
    link: &'static str,
    link_label: &'static str,
    firmware: String,
    reboots: String,
    faults: String,
    last_fault: String,
    updated_at: String,
    updated_clock: String,
    updated_ago: String,
    next_brew_at: String,
    next_brew: String,
    next_brew_detail: String,
}

impl Values {
    fn new(state: Option<&StateDoc>, now: SystemTime) -> Self {
        let Some(d) = state else {
            return Self::waiting();
        };
        let (next_brew_at, next_brew, next_brew_detail) = next_brew_texts(d);
        let mut faults = String::new();
        if d.faults.is_empty() {
            faults.push_str(r#"<li class="none">None</li>"#);
        }
        for f in d.faults.iter() {
            let _ = write!(faults, "<li>{}</li>", f.label());
        }
        Values {
            conn_state: "live",
            conn_text: "As of page load",
            temperature: d
                .temperature_c
                .map_or_else(|| "—".into(), |t| format!("{t:.1}")),
            mode: d.mode.as_str(),
            mode_label: d.mode.label(),
            heater: d.heater.map_or("unknown", OnOff::as_str),
            heater_label: heater_label(d.heater),
            water_level: d
                .water_level_pct
                .map_or_else(|| "—".into(), |p| format!("{p} %")),
            water_bar: d.water_level_pct.unwrap_or(0).to_string(),
            water_distance: d.water_distance_in.map_or_else(
                || "No reading".into(),
                |w| format!("{w:.2} in to the surface"),
            ),
            brew_remaining: match (d.mode, d.brew_remaining_s) {
                (Mode::Brewing, Some(s)) => format!("{}:{:02}", s / 60, s % 60),
                _ => "—".into(),
            },
            cups: format!(
                "{} {} selected",
                d.cups,
                if d.cups == 1 { "cup" } else { "cups" }
            ),
            keep_warm: d.keep_warm.as_str(),
            keep_warm_label: keep_warm_label(d.keep_warm),
            link: d.link.as_str(),
            link_label: d.link.label(),
            firmware: firmware_label(d.firmware.as_deref(), d.reply_format),
            reboots: format!(
                "{} {} since start",
                d.controller_reboots,
                if d.controller_reboots == 1 {
                    "reboot"
                } else {
                    "reboots"
                }
            ),
            faults,
            last_fault: d.last_fault.as_ref().map_or_else(
                || "No trips since start".into(),
                |f| format!("Last: {} at {}", f.reason.label(), utc_clock(&f.at)),
            ),
            updated_at: d.updated_at.clone().unwrap_or_default(),
            updated_clock: d
                .updated_at
                .as_deref()
                .map_or_else(|| "Never".into(), utc_clock),
            updated_ago: d.updated_at.as_deref().map_or_else(
                || "The controller has not answered yet".into(),
                |at| ago(at, now),
            ),
            next_brew_at,
            next_brew,
            next_brew_detail,
        }
    }

    fn waiting() -> Self {
        let dash = || "—".to_owned();
        Values {
            conn_state: "waiting",
            conn_text: "Waiting for the controller…",
            temperature: dash(),
            mode: Mode::Off.as_str(),
            mode_label: "Starting",
            heater: "unknown",
            heater_label: heater_label(None),
            water_level: dash(),
            water_bar: "0".into(),
            water_distance: "No reading".into(),
            brew_remaining: dash(),
            cups: String::new(),
            keep_warm: OnOff::Off.as_str(),
            keep_warm_label: keep_warm_label(OnOff::Off),
            link: Link::Down.as_str(),
            link_label: Link::Down.label(),
            firmware: "Firmware unknown".into(),
            reboots: String::new(),
            faults: String::new(),
            last_fault: String::new(),
            updated_at: String::new(),
            updated_clock: "Never".into(),
            updated_ago: "The controller has not answered yet".into(),
            next_brew_at: String::new(),
            next_brew: dash(),
            next_brew_detail: String::new(),
        }
    }
}

/// `HH:MM:SS UTC` from an RFC 3339 time (the script shows local time instead).
fn utc_clock(rfc3339: &str) -> String {
    match rfc3339.get(11..19) {
        Some(hms) => format!("{hms} UTC"),
        None => rfc3339.to_owned(),
    }
}

fn ago(rfc3339: &str, now: SystemTime) -> String {
    let Ok(at) = humantime::parse_rfc3339(rfc3339) else {
        return String::new();
    };
    let s = now.duration_since(at).map_or(0, |d| d.as_secs());
    if s < 90 {
        format!("{s} s ago")
    } else if s < 90 * 60 {
        format!("{} min ago", (s + 30) / 60)
    } else {
        format!("{} h ago", (s + 1800) / 3600)
    }
}

/// The firmware line of the page: the banner's name (or "Firmware unknown") and, once the
/// controller has answered, its build and whether it has the 1 s heater timeout. The page's
/// script builds the same text from the labels (`firmwareLabel` in `page.html`).
fn firmware_label(firmware: Option<&str>, reply_format: Option<ReplyFormat>) -> String {
    let name = firmware.unwrap_or("Firmware unknown");
    match reply_format {
        Some(format) => format!("{name} · {}", build_label(format)),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Fault, FaultSet};
    use crate::schedule::PlannedBrewDoc;
    use crate::state::LastFault;
    use std::time::Duration;

    fn doc() -> StateDoc {
        StateDoc {
            mode: Mode::Brewing,
            heater: Some(OnOff::On),
            temperature_c: Some(92.4),
            water_distance_in: Some(3.52),
            water_level_pct: Some(61),
            brew_remaining_s: Some(118),
            faults: FaultSet::only(Fault::NoWater),
            last_fault: Some(LastFault {
                reason: Fault::Overtemp.into(),
                at: "2026-11-24T07:29:00.000Z".into(),
            }),
            controller_reboots: 1,
            firmware: Some("Mr<Coffee>Bot \"v2\" </script>".into()),
            reply_format: Some(ReplyFormat::OneLine),
            updated_at: Some("2026-11-24T07:30:00.123Z".into()),
            ..StateDoc::example()
        }
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn renders_every_value_and_no_placeholder_is_left() {
        let html = render(
            "Coffee Pot",
            Some(&doc()),
            "[]",
            at("2026-11-24T07:30:05.123Z") + Duration::from_millis(1),
        );
        assert!(!html.contains("{{"), "placeholder left in the page");
        for needle in [
            r#"<span id="temperature">92.4</span>"#,
            r#"data-value="brewing" aria-live="polite">Brewing</span>"#,
            r#"data-value="ON">Heater on</span>"#,
            r#"id="water-level">61 %</p>"#,
            r#"id="water-bar" width="61""#,
            r#"id="brew-remaining">1:58</p>"#,
            r#"id="cups">4 cups selected</p>"#,
            "<li>Reservoir empty</li>",
            "Last: Plate too hot at 07:29:00 UTC",
            ">07:30:00 UTC</time>",
            r#"id="updated-ago">5 s ago</p>"#,
            "<title>Coffee Pot</title>",
        ] {
            assert!(html.contains(needle), "{needle} missing");
        }
    }

    #[test]
    fn device_text_is_escaped_in_html_and_in_the_script() {
        let html = render("<b>Pot</b>", Some(&doc()), "[]", SystemTime::UNIX_EPOCH);
        assert!(html.contains("Mr&lt;Coffee&gt;Bot &quot;v2&quot; &lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;Pot&lt;/b&gt;"));
        // The embedded JSON cannot close its <script> element.
        let script = html.split(r#"id="initial""#).nth(1).unwrap();
        let json_end = script.find("</script>").unwrap();
        assert!(script[..json_end].contains(r"\u003c/script>"));
        assert_eq!(html.matches("</script>").count(), 3);
    }

    #[test]
    fn without_state_the_page_says_it_waits() {
        let html = render("Coffee Pot", None, "[]", SystemTime::UNIX_EPOCH);
        assert!(!html.contains("{{"));
        assert!(html.contains("Waiting for the controller"));
        assert!(html.contains(r#"data-title="Coffee Pot">null</script>"#));
    }

    #[test]
    fn nothing_inline_runs_or_styles() {
        let html = render("Pot", Some(&doc()), "[]", SystemTime::UNIX_EPOCH);
        // Every <script> is data or a file; no style element or attribute, no handler.
        for (i, tag) in html.split("<script").skip(1).enumerate() {
            let open = &tag[..tag.find('>').unwrap()];
            assert!(
                open.contains("type=\"application/json\"") || open.contains("src="),
                "script {i}: {open}"
            );
        }
        assert!(!html.contains("<style") && !html.contains("style=\""));
        for handler in ["onload=", "onerror=", "onclick="] {
            assert!(!html.contains(handler), "{handler}");
        }
        let tag = asset_tag();
        assert!(html.contains(&format!("href=\"assets/page.css?v={tag}\"")));
        assert!(html.contains(&format!("src=\"assets/page.js?v={tag}\"")));
    }

    #[test]
    fn the_script_gets_every_label_from_the_server() {
        let html = render("Pot", None, "[]", SystemTime::UNIX_EPOCH);
        let labels: Value = serde_json::from_str(labels_json()).unwrap();
        assert!(html.contains(&format!(r#"data-labels="{}""#, escape(labels_json()))));
        for reason in TripReason::all() {
            assert_eq!(labels["reasons"][reason.as_str()], reason.label());
            // The template holds no table of its own.
            assert!(!TEMPLATE.contains(reason.label()), "{reason:?}");
        }
        for mode in Mode::ALL {
            assert_eq!(labels["modes"][mode.as_str()], mode.label());
            assert_eq!(mode_label(mode.as_str()), mode.label());
        }
        assert_eq!(labels["heater"]["unknown"], "Heater unknown");
        assert_eq!(
            labels["formats"]["three_lines"],
            "build 05a9a00 (no heater timeout)"
        );
    }

    #[test]
    fn fill_keeps_unknown_and_unclosed_placeholders() {
        assert_eq!(fill("a{{x}}b{{y}}c{{", &[("x", "1")]), "a1b{{y}}c{{");
    }

    #[test]
    fn the_next_brew_is_shown_in_the_schedule_zone() {
        let mut d = doc();
        let html = render("Pot", Some(&d), "[]", SystemTime::UNIX_EPOCH);
        assert!(
            html.contains(r#"datetime="">Schedule off</time>"#),
            "{html}"
        );
        d.schedule = OnOff::On;
        let html = render("Pot", Some(&d), "[]", SystemTime::UNIX_EPOCH);
        assert!(html.contains(r#"datetime="">None planned</time>"#));
        d.next_brew = Some(PlannedBrewDoc {
            ready_at: "2026-03-30T06:45:00+02:00".into(),
            start_at: "2026-03-30T06:38:30+02:00".into(),
            cups: 4,
            source: Source::Calendar,
        });
        let html = render("Pot", Some(&d), "[]", SystemTime::UNIX_EPOCH);
        assert!(html.contains(
            r#"<time id="next-brew" datetime="2026-03-30T06:45:00+02:00">Ready 2026-03-30 06:45</time>"#
        ));
        assert!(
            html.contains(r#"id="next-brew-detail">4 cups · from the calendar · starts 06:38</p>"#)
        );
        let labels: Value = serde_json::from_str(labels_json()).unwrap();
        assert_eq!(labels["sources"]["calendar"], "from the calendar");
        assert_eq!(labels["schedule"]["OFF"], "Schedule off");
    }

    #[test]
    fn brew_time_shows_only_while_brewing() {
        let mut d = doc();
        d.mode = Mode::KeepWarm;
        let html = render("Pot", Some(&d), "[]", SystemTime::UNIX_EPOCH);
        assert!(html.contains(r#"id="brew-remaining">—</p>"#));
    }
}
