//! The MQTT command payload parser fed arbitrary payloads for every command name (and names
//! that are none): it must never panic; a rejection always has a reason; an accepted brew or
//! cup count is within `1..=max_cups`; a payload over `MAX_PAYLOAD` is never accepted.

#![no_main]

use coffeebot::core::Request;
use coffeebot::mqtt::command::{unknown, CommandName, Order, MAX_PAYLOAD};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// A command of SPEC §4 (an index into `CommandName::ALL`), or a name that may be none.
#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    name: Name,
    max_cups: u8,
    payload: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let max_cups = 1 + u32::from(input.max_cups % 24);
    // What the MQTT task does with the name of a `B/D/<name>/set` topic.
    let parsed = match &input.name {
        Name::Known(i) => CommandName::ALL[usize::from(*i) % CommandName::ALL.len()]
            .parse(&input.payload, max_cups),
        Name::Other(other) => match CommandName::from_name(other) {
            Some(command) => command.parse(&input.payload, max_cups),
            None => Err(unknown(other)),
        },
    };
    match parsed {
        Ok(order) => {
            assert!(
                input.payload.len() <= MAX_PAYLOAD,
                "oversized payload accepted"
            );
            let cups = match order {
                Order::Core(Request::BrewStart { cups: Some(n) } | Request::SelectCups(n)) => {
                    Some(n)
                }
                _ => None,
            };
            if let Some(n) = cups {
                assert!(
                    (1..=max_cups).contains(&n),
                    "{n} cups accepted, max {max_cups}"
                );
            }
        }
        Err(reason) => assert!(!reason.trim().is_empty(), "a rejection without a reason"),
    }
});
