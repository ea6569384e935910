//! The bridge's MQTT commands (SPEC §4), each in one place: [`CommandName`] owns a command's
//! topic level, its payload parser, the payloads a rejection says it accepts and the Home
//! Assistant entities that send it, so that the topics, the subscription check, the metrics'
//! labels, discovery and the broker ACL test all follow from one list.
//!
//! Parsing is pure, so that every bad payload is a value with a reason a person can act on,
//! never a panic, and so that the rules can be tested without a broker. Payloads are trimmed
//! and case-insensitive. Anything over [`MAX_PAYLOAD`] bytes is refused by its length alone,
//! before it is decoded or parsed.

use crate::core::Request;
use crate::mqtt::discovery::Entity;
use crate::mqtt::topics::Topics;
use serde_json::json;
use tokio::time::Instant;

/// Longest payload that is parsed at all; the longest valid one (`{"cups": 12}` with some
/// spaces) is far shorter.
pub const MAX_PAYLOAD: usize = 256;

/// What a command asks of the driver: the heater core decides about heating alone, so the
/// schedule and the counters get their own orders, which never reach the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// For the heater core.
    Core(Request),
    /// `schedule/set`: for the schedule.
    Schedule(ScheduleOrder),
    /// `maintenance/set DESCALED`: the pot was descaled; the count towards the next starts.
    Descaled,
}

impl From<Request> for Order {
    fn from(request: Request) -> Self {
        Order::Core(request)
    }
}

/// `schedule/set ON|OFF|SKIP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleOrder {
    /// `ON`/`OFF`: scheduled brews start, or not (kept across restarts while
    /// `schedule.enabled` in the configuration stays as it was).
    Enable(bool),
    /// `SKIP`: the next planned brew does not start.
    SkipNext,
}

/// A user command on its way from the MQTT task to the driver, with what a rejection must
/// quote and when it came in.
#[derive(Clone, Debug)]
pub struct CommandIn {
    /// The parsed command.
    pub request: Order,
    /// The command whose topic it came on.
    pub command: CommandName,
    /// The payload as received (for `command_rejected`).
    pub payload: Vec<u8>,
    /// When the MQTT task took it in: the command-to-serial latency runs from here to the
    /// relay line it causes.
    pub accepted_at: Instant,
    /// Where to answer it (MQTT 5 request/response), when the sender asked for an answer on
    /// a topic the bridge may write.
    pub reply: Option<ReplyTo>,
}

/// Where an answer goes: an MQTT 5 Response Topic under `B/reply/`, and the Correlation Data
/// the request carried, returned as it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    /// The response topic (checked to be under `B/reply/`).
    pub topic: String,
    /// The request's Correlation Data, if any.
    pub correlation: Option<Vec<u8>>,
}

/// The answer to a command that asked for one: `{"status", "command", "payload", "reason"}`,
/// and for an accepted command the state after its effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Where it goes.
    pub to: ReplyTo,
    /// The JSON text.
    pub json: String,
}

/// A payload as an answer quotes it: like `command_rejected`, at most 200 characters, invalid
/// UTF-8 replaced, so an answer is never much larger than its bound.
fn quoted(payload: &[u8]) -> String {
    let head = &payload[..payload.len().min(800)];
    String::from_utf8_lossy(head).chars().take(200).collect()
}

impl Answer {
    /// The answer to a command taken, with the state that shows its effect (`None` when the
    /// state is not known yet).
    pub fn accepted(
        to: ReplyTo,
        command: &str,
        payload: &[u8],
        state: Option<&crate::state::StateDoc>,
    ) -> Answer {
        Answer {
            to,
            json: json!({
                "status": "accepted",
                "command": command,
                "payload": quoted(payload),
                "reason": null,
                "state": state,
            })
            .to_string(),
        }
    }

    /// The answer to a command refused, with the reason a person can act on.
    pub fn rejected(to: ReplyTo, command: &str, payload: &[u8], reason: &str) -> Answer {
        Answer {
            to,
            json: json!({
                "status": "rejected",
                "command": command,
                "payload": quoted(payload),
                "reason": reason,
            })
            .to_string(),
        }
    }
}

/// A command the bridge takes: the `<name>` of `B/D/<name>/set`.
///
/// Adding one: a variant here (the compiler then asks for its place in [`CommandName::ALL`],
/// its name, parser, accepted payloads and entities), the [`Request`] it makes, and the docs
/// and broker ACL, which the tests check against [`CommandName::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandName {
    /// `heater/set ON|OFF`: manual heating.
    Heater,
    /// `brew/set START|STOP|N|{"cups": N}`.
    Brew,
    /// `cups/set N`: what the next `START` brews.
    Cups,
    /// `keep_warm/set ON|OFF`.
    KeepWarm,
    /// `controller/set RESET`.
    Controller,
    /// `schedule/set ON|OFF|SKIP`.
    Schedule,
    /// `maintenance/set DESCALED`.
    Maintenance,
}

impl CommandName {
    /// Every command, in the order the rejection of an unknown name lists them. The build
    /// fails when a variant is missing (see `every_command_is_in_all` below).
    pub const ALL: [CommandName; 7] = [
        CommandName::Heater,
        CommandName::Brew,
        CommandName::Cups,
        CommandName::KeepWarm,
        CommandName::Controller,
        CommandName::Schedule,
        CommandName::Maintenance,
    ];

    /// The topic level, `B/D/<name>/set`; also the `command` label of the metrics and events.
    pub const fn name(self) -> &'static str {
        match self {
            CommandName::Heater => "heater",
            CommandName::Brew => "brew",
            CommandName::Cups => "cups",
            CommandName::KeepWarm => "keep_warm",
            CommandName::Controller => "controller",
            CommandName::Schedule => "schedule",
            CommandName::Maintenance => "maintenance",
        }
    }

    /// The command a topic level names, if any (exact, case-sensitive, as MQTT topics are).
    pub fn from_name(name: &str) -> Option<CommandName> {
        CommandName::ALL.into_iter().find(|c| c.name() == name)
    }

    /// What this command accepts, as said in rejections. `max_cups` is `brew.max_cups`.
    pub fn expected(self, max_cups: u32) -> String {
        match self {
            CommandName::Heater | CommandName::KeepWarm => "ON or OFF".to_owned(),
            CommandName::Brew => {
                format!("START, STOP, a number of cups 1..{max_cups} or {{\"cups\": N}}")
            }
            CommandName::Cups => format!("a number of cups 1..{max_cups}"),
            CommandName::Controller => "RESET".to_owned(),
            CommandName::Schedule => "ON, OFF or SKIP".to_owned(),
            CommandName::Maintenance => "DESCALED".to_owned(),
        }
    }

    /// Parses this command's payload. `max_cups` is `brew.max_cups`.
    ///
    /// The error is the `reason` of a `command_rejected` event, e.g. `cups must be 1..12, got 99`.
    pub fn parse(self, payload: &[u8], max_cups: u32) -> Result<Order, String> {
        let expected = self.expected(max_cups);
        if payload.len() > MAX_PAYLOAD {
            return Err(format!(
                "payload too large ({} bytes); expected {expected}",
                payload.len()
            ));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|_| format!("payload is not UTF-8 text; expected {expected}"))?
            .trim();
        let word = text.to_ascii_uppercase();
        let got = || format!("expected {expected}, got {text:?}");
        let on_off = || match word.as_str() {
            "ON" => Ok(true),
            "OFF" => Ok(false),
            _ => Err(got()),
        };
        let request = match self {
            CommandName::Heater => on_off().map(Request::Heater),
            CommandName::KeepWarm => on_off().map(Request::KeepWarm),
            CommandName::Brew => match word.as_str() {
                "START" => Ok(Request::BrewStart { cups: None }),
                "STOP" => Ok(Request::BrewStop),
                _ if text.starts_with('{') => {
                    let cups = json_cups(text).ok_or_else(got)?;
                    Ok(Request::BrewStart {
                        cups: Some(check_cups(&cups, max_cups)?),
                    })
                }
                _ if looks_numeric(text) => Ok(Request::BrewStart {
                    cups: Some(check_cups(text, max_cups)?),
                }),
                _ => Err(got()),
            },
            CommandName::Cups if looks_numeric(text) => {
                Ok(Request::SelectCups(check_cups(text, max_cups)?))
            }
            CommandName::Cups => Err(got()),
            CommandName::Controller => match word.as_str() {
                "RESET" => Ok(Request::ResetController),
                _ => Err(got()),
            },
            CommandName::Schedule => {
                return match word.as_str() {
                    "SKIP" => Ok(Order::Schedule(ScheduleOrder::SkipNext)),
                    _ => on_off().map(|on| Order::Schedule(ScheduleOrder::Enable(on))),
                }
            }
            CommandName::Maintenance => {
                return match word.as_str() {
                    "DESCALED" => Ok(Order::Descaled),
                    _ => Err(got()),
                }
            }
        };
        request.map(Order::Core)
    }

    /// The Home Assistant entities that send this command (SPEC §4), for discovery.
    pub fn entities(self, topics: &Topics, max_cups: u32) -> Vec<Entity> {
        let command_topic = topics.command(self);
        let switch = |key, name, icon| {
            Entity::new(
                key,
                "switch",
                name,
                json!({
                    "command_topic": command_topic,
                    "state_topic": topics.state(),
                    "value_template": format!("{{{{ value_json.{key} }}}}"),
                    "payload_on": "ON", "payload_off": "OFF",
                    "state_on": "ON", "state_off": "OFF",
                    "optimistic": false,
                    "icon": icon,
                }),
            )
        };
        // A button that sends `press`.
        let button = |key, name, press| {
            Entity::new(
                key,
                "button",
                name,
                json!({"command_topic": command_topic, "payload_press": press}),
            )
        };
        match self {
            CommandName::Heater => vec![switch("heater", "Heater", "mdi:heating-coil")],
            CommandName::KeepWarm => {
                vec![switch("keep_warm", "Keep warm", "mdi:thermometer-check")]
            }
            CommandName::Brew => vec![
                button("brew", "Brew", "START").with(json!({"icon": "mdi:coffee"})),
                button("stop", "Stop", "STOP").with(json!({"icon": "mdi:coffee-off"})),
            ],
            CommandName::Cups => vec![Entity::new(
                "cups",
                "number",
                "Cups",
                json!({
                    "command_topic": command_topic,
                    "state_topic": topics.state(),
                    "value_template": "{{ value_json.cups }}",
                    "min": 1, "max": max_cups, "step": 1,
                    "mode": "box",
                    "optimistic": false,
                    "icon": "mdi:cup",
                }),
            )],
            CommandName::Controller => {
                vec![button("restart_controller", "Restart controller", "RESET")
                    .with(json!({"device_class": "restart", "entity_category": "config"}))]
            }
            CommandName::Schedule => vec![
                switch("schedule", "Schedule", "mdi:calendar-clock"),
                button("skip_next_brew", "Skip next brew", "SKIP")
                    .with(json!({"icon": "mdi:debug-step-over"})),
            ],
            CommandName::Maintenance => vec![button("descaled", "Descale done", "DESCALED")
                .with(json!({"entity_category": "config", "icon": "mdi:water-check"}))],
        }
    }
}

/// Whether [`CommandName::ALL`] lists `command`.
const fn listed(command: CommandName) -> bool {
    let mut i = 0;
    while i < CommandName::ALL.len() {
        if CommandName::ALL[i] as usize == command as usize {
            return true;
        }
        i += 1;
    }
    false
}

/// Never called: the compiler evaluates its `const` blocks while building, so a variant missing
/// from [`CommandName::ALL`] stops the build, and the match makes a new variant need an arm.
#[allow(dead_code)] // Checked by being compiled, never run.
const fn every_command_is_in_all(command: CommandName) {
    match command {
        CommandName::Heater => const { assert!(listed(CommandName::Heater), "not in ALL") },
        CommandName::Brew => const { assert!(listed(CommandName::Brew), "not in ALL") },
        CommandName::Cups => const { assert!(listed(CommandName::Cups), "not in ALL") },
        CommandName::KeepWarm => const { assert!(listed(CommandName::KeepWarm), "not in ALL") },
        CommandName::Controller => const { assert!(listed(CommandName::Controller), "not in ALL") },
        CommandName::Schedule => const { assert!(listed(CommandName::Schedule), "not in ALL") },
        CommandName::Maintenance => {
            const { assert!(listed(CommandName::Maintenance), "not in ALL") }
        }
    }
}

/// The rejection of `B/D/<name>/set` with a name that is no command.
pub fn unknown(name: &str) -> String {
    let names: Vec<&str> = CommandName::ALL.iter().map(|c| c.name()).collect();
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.concat(),
    };
    format!("unknown command {name:?}; the commands are {list}")
}

/// Whether the text is meant as a number (so that the reason talks about the range).
fn looks_numeric(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
}

/// A cup count `1..=max_cups` from its text.
fn check_cups(text: &str, max_cups: u32) -> Result<u32, String> {
    match text.parse::<i64>() {
        Ok(n) if (1..=i64::from(max_cups)).contains(&n) => Ok(n as u32),
        Ok(_) => Err(format!("cups must be 1..{max_cups}, got {text}")),
        Err(_) => Err(format!(
            "cups must be a whole number 1..{max_cups}, got {text:?}"
        )),
    }
}

/// The `N` of `{"cups": N}` (exactly that key) as text, for [`check_cups`].
fn json_cups(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    if object.len() != 1 {
        return None;
    }
    match object.get("cups")? {
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the MQTT task does with a topic's name and payload.
    fn parse(command: &str, payload: &[u8], max_cups: u32) -> Result<Order, String> {
        match CommandName::from_name(command) {
            Some(c) => c.parse(payload, max_cups),
            None => Err(unknown(command)),
        }
    }

    fn p(command: &str, payload: &str) -> Result<Request, String> {
        match parse(command, payload.as_bytes(), 12)? {
            Order::Core(request) => Ok(request),
            other => Err(format!("not for the core: {other:?}")),
        }
    }

    #[test]
    fn good_payloads() {
        assert_eq!(p("heater", "ON"), Ok(Request::Heater(true)));
        assert_eq!(p("heater", " off\n"), Ok(Request::Heater(false)));
        assert_eq!(p("keep_warm", "On"), Ok(Request::KeepWarm(true)));
        assert_eq!(p("brew", "start"), Ok(Request::BrewStart { cups: None }));
        assert_eq!(p("brew", "STOP"), Ok(Request::BrewStop));
        assert_eq!(p("brew", "4"), Ok(Request::BrewStart { cups: Some(4) }));
        assert_eq!(
            p("brew", r#"{"cups": 12}"#),
            Ok(Request::BrewStart { cups: Some(12) })
        );
        assert_eq!(p("cups", "1"), Ok(Request::SelectCups(1)));
        assert_eq!(p("controller", "reset"), Ok(Request::ResetController));
        let order = |command, payload: &str| parse(command, payload.as_bytes(), 12);
        assert_eq!(
            order("schedule", "on"),
            Ok(Order::Schedule(ScheduleOrder::Enable(true)))
        );
        assert_eq!(
            order("schedule", "OFF "),
            Ok(Order::Schedule(ScheduleOrder::Enable(false)))
        );
        assert_eq!(
            order("schedule", "Skip"),
            Ok(Order::Schedule(ScheduleOrder::SkipNext))
        );
        assert_eq!(order("maintenance", "descaled"), Ok(Order::Descaled));
    }

    #[test]
    fn reasons_a_person_can_act_on() {
        let reasons = [
            ("cups", "99", "cups must be 1..12, got 99"),
            ("brew", "0", "cups must be 1..12, got 0"),
            ("brew", "-3", "cups must be 1..12, got -3"),
            ("brew", r#"{"cups": 13}"#, "cups must be 1..12, got 13"),
            (
                "cups",
                "4.5",
                "cups must be a whole number 1..12, got \"4.5\"",
            ),
            ("heater", "maybe", "expected ON or OFF, got \"maybe\""),
            ("controller", "", "expected RESET, got \"\""),
            (
                "schedule",
                "START",
                "expected ON, OFF or SKIP, got \"START\"",
            ),
            ("maintenance", "RESET", "expected DESCALED, got \"RESET\""),
        ];
        for (command, payload, reason) in reasons {
            assert_eq!(
                p(command, payload).unwrap_err(),
                reason,
                "{command} {payload:?}"
            );
        }
        assert!(p("brew", r#"{"cup": 4}"#)
            .unwrap_err()
            .starts_with("expected START, STOP"));
        assert!(p("brew", "{not json").is_err());
        assert!(p("cups", "many")
            .unwrap_err()
            .contains("a number of cups 1..12"));
        assert!(p("grind", "ON")
            .unwrap_err()
            .starts_with("unknown command \"grind\""));
        let big = vec![b'O'; 1_000_000];
        assert_eq!(
            parse("heater", &big, 12).unwrap_err(),
            "payload too large (1000000 bytes); expected ON or OFF"
        );
        assert_eq!(
            parse("heater", b"\xffON", 12).unwrap_err(),
            "payload is not UTF-8 text; expected ON or OFF"
        );
        assert!(p("cups", "99999999999999999999999").is_err());
    }

    #[test]
    fn all_lists_every_command_once() {
        let names: std::collections::BTreeSet<&str> =
            CommandName::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), CommandName::ALL.len());
        for c in CommandName::ALL {
            assert_eq!(CommandName::from_name(c.name()), Some(c));
        }
        assert_eq!(CommandName::from_name("Heater"), None);
        assert_eq!(
            unknown("grind"),
            "unknown command \"grind\"; the commands are heater, brew, cups, keep_warm, \
             controller, schedule and maintenance"
        );
    }

    #[test]
    fn every_command_is_in_the_readme_topics_table() {
        // Read, not include_str!: README.md is not in the image's build context (.dockerignore),
        // and scripts/check-deploy.sh requires every included file to be there.
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md next to Cargo.toml");
        for c in CommandName::ALL {
            let row = format!("| `B/D/{}/set` | → bridge | must not be |", c.name());
            assert!(readme.contains(&row), "README.md lacks the row {row} …");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_cups_stay_in_range(
            command in prop::sample::select(
                CommandName::ALL.iter().map(|c| c.name()).chain(["x"]).collect::<Vec<_>>()
            ),
            payload in prop::collection::vec(any::<u8>(), 0..300),
            max_cups in 1u32..40,
        ) {
            if let Ok(Order::Core(Request::BrewStart { cups: Some(n) } | Request::SelectCups(n))) =
                parse(command, &payload, max_cups)
            {
                prop_assert!((1..=max_cups).contains(&n));
            }
        }
    }
}
