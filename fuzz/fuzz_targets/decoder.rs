//! The serial decoder fed arbitrary bytes in arbitrary pieces: it must never panic, never hold
//! more than a line's worth of bytes, never report a non-finite value, and decode the next
//! valid reply whatever came before it.
#![no_main]

use coffeebot::protocol::{ReplyFormat, Decoder, Frame, Reading, MAX_LINE};
use libfuzzer_sys::fuzz_target;

/// The reply every stream ends with; the decoder must find it after any garbage.
const RESYNC: &[u8] = b"\nW+1.00\nT+20.0\nB+0\n";

fuzz_target!(|chunks: Vec<Vec<u8>>| {
    let mut decoder = Decoder::new();
    for chunk in &chunks {
        decoder.push(chunk);
        assert!(decoder.buffered() <= 2 * (MAX_LINE + 2), "line buffer grew");
        while let Some(frame) = decoder.next_frame() {
            if let Frame::Reading(r) = frame {
                assert!(r.temperature_c.is_none_or(f64::is_finite));
                assert!(r.water_distance_in.is_none_or(f64::is_finite));
            }
        }
    }
    decoder.push(RESYNC);
    let last = std::iter::from_fn(|| decoder.next_frame()).last();
    let expected = Frame::Reading(Reading {
        water_distance_in: Some(1.0),
        temperature_c: Some(20.0),
        heater_on: false,
        format: ReplyFormat::ThreeLines,
    });
    assert_eq!(last, Some(expected), "no resynchronisation");
});
