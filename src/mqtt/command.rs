//! Command payloads (SPEC §4) to [`Request`]s: a pure parser, so that every bad payload is a
//! value with a reason a person can act on, never a panic, and so that the rules can be
//! tested without a broker.
//!
//! Payloads are trimmed and case-insensitive. Anything over [`MAX_PAYLOAD`] bytes is refused by
//! its length alone, before it is decoded or parsed.

use crate::core::Request;

/// Longest payload that is parsed at all; the longest valid one (`{"cups": 12}` with some
/// spaces) is far shorter.
pub const MAX_PAYLOAD: usize = 256;

/// Parses the payload of `B/D/<command>/set`. `max_cups` is `brew.max_cups`.
///
/// The error is the `reason` of a `command_rejected` event, e.g. `cups must be 1..12, got 99`.
pub fn parse(command: &str, payload: &[u8], max_cups: u32) -> Result<Request, String> {
    let expected = expected(command, max_cups)?;
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
    match command {
        "heater" | "keep_warm" => {
            let on = match word.as_str() {
                "ON" => true,
                "OFF" => false,
                _ => return Err(got()),
            };
            Ok(if command == "heater" {
                Request::Heater(on)
            } else {
                Request::KeepWarm(on)
            })
        }
        "brew" => match word.as_str() {
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
        "cups" => {
            if looks_numeric(text) {
                Ok(Request::SelectCups(check_cups(text, max_cups)?))
            } else {
                Err(got())
            }
        }
        "controller" => match word.as_str() {
            "RESET" => Ok(Request::ResetController),
            _ => Err(got()),
        },
        // `expected` has refused every other name.
        _ => Err(got()),
    }
}

/// What a command accepts, as said in rejections; an error for a name that is no command.
pub fn expected(command: &str, max_cups: u32) -> Result<String, String> {
    Ok(match command {
        "heater" | "keep_warm" => "ON or OFF".to_owned(),
        "brew" => format!("START, STOP, a number of cups 1..{max_cups} or {{\"cups\": N}}"),
        "cups" => format!("a number of cups 1..{max_cups}"),
        "controller" => "RESET".to_owned(),
        other => {
            return Err(format!(
                "unknown command {other:?}; the commands are heater, brew, cups, keep_warm \
                 and controller"
            ))
        }
    })
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

    fn p(command: &str, payload: &str) -> Result<Request, String> {
        parse(command, payload.as_bytes(), 12)
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
    }

    #[test]
    fn reasons_a_person_can_act_on() {
        assert_eq!(p("cups", "99").unwrap_err(), "cups must be 1..12, got 99");
        assert_eq!(p("brew", "0").unwrap_err(), "cups must be 1..12, got 0");
        assert_eq!(p("brew", "-3").unwrap_err(), "cups must be 1..12, got -3");
        assert_eq!(
            p("brew", r#"{"cups": 13}"#).unwrap_err(),
            "cups must be 1..12, got 13"
        );
        assert_eq!(
            p("cups", "4.5").unwrap_err(),
            "cups must be a whole number 1..12, got \"4.5\""
        );
        assert_eq!(
            p("heater", "maybe").unwrap_err(),
            "expected ON or OFF, got \"maybe\""
        );
        assert_eq!(p("controller", "").unwrap_err(), "expected RESET, got \"\"");
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

    proptest! {
        #[test]
        fn never_panics_and_cups_stay_in_range(
            command in prop::sample::select(vec!["heater", "brew", "cups", "keep_warm", "controller", "x"]),
            payload in prop::collection::vec(any::<u8>(), 0..300),
            max_cups in 1u32..40,
        ) {
            if let Ok(Request::BrewStart { cups: Some(n) } | Request::SelectCups(n)) =
                parse(command, &payload, max_cups)
            {
                prop_assert!((1..=max_cups).contains(&n));
            }
        }
    }
}
