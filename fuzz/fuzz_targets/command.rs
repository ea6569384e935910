//! The MQTT command payload parser fed arbitrary topics' payloads: it must never panic, and
//! every payload either parses or is rejected with a reason a person can read.
//!
//! Not built yet: `coffeebot::mqtt::command` lives on another branch. Once it is merged, add
//! this target's `[[bin]]` section (commented out in `fuzz/Cargo.toml`) and adjust the call
//! below to the parser's final signature.
#![no_main]

use coffeebot::mqtt::command;
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
    if let Err(rejection) = command::parse(name, &input.payload) {
        assert!(!rejection.to_string().is_empty(), "a rejection without a reason");
    }
});
