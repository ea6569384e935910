//! The MQTT command payload parser fed arbitrary payloads for every command name (and names
//! that are none): it must never panic; a rejection always has a reason; an accepted brew or
//! cup count is within `1..=max_cups`; a payload over `MAX_PAYLOAD` is never accepted.
//!
//! Not built yet: `coffeebot::mqtt::command` is not on this branch. Once it is, uncomment this
//! target's `[[bin]]` section in `fuzz/Cargo.toml`.
#![no_main]

use coffeebot::core::Request;
use coffeebot::mqtt::command::{parse, MAX_PAYLOAD};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// The command names of SPEC §4, and one that is not.
#[derive(Arbitrary, Debug)]
enum Name {
    Heater,
    Brew,
    Cups,
    KeepWarm,
    Controller,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    name: Name,
    max_cups: u8,
    payload: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let name = match &input.name {
        Name::Heater => "heater",
        Name::Brew => "brew",
        Name::Cups => "cups",
        Name::KeepWarm => "keep_warm",
        Name::Controller => "controller",
        Name::Other(other) => other.as_str(),
    };
    let max_cups = 1 + u32::from(input.max_cups % 24);
    match parse(name, &input.payload, max_cups) {
        Ok(request) => {
            assert!(input.payload.len() <= MAX_PAYLOAD, "oversized payload accepted");
            let cups = match request {
                Request::BrewStart { cups: Some(n) } | Request::SelectCups(n) => Some(n),
                _ => None,
            };
            if let Some(n) = cups {
                assert!((1..=max_cups).contains(&n), "{n} cups accepted, max {max_cups}");
            }
        }
        Err(reason) => assert!(!reason.trim().is_empty(), "a rejection without a reason"),
    }
});
