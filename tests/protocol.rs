//! Golden lines and properties of the controller's line protocol (SPEC §2).

use coffeebot::protocol::{Command, Decoder, Frame, Reading, Rejected, ReplyFormat, MAX_LINE};
use proptest::prelude::*;

/// `DBL_MAX` as the firmware prints it with `%.1f`.
const DBL_MAX: &str = "179769313486231570814527423731704356798070567525844996598917476803157260780028538760589558632766878171540458953514382464234321326889464182768467546703537516986049910576551282076245490090389328944075868508455133942304583236903222948165808559332123348274797826204144723168738177180919299881250404026184124858368.0";

fn decode(bytes: &[u8]) -> Vec<Frame> {
    let mut decoder = Decoder::new();
    decoder.push(bytes);
    drain(&mut decoder)
}

fn drain(decoder: &mut Decoder) -> Vec<Frame> {
    std::iter::from_fn(|| decoder.next_frame()).collect()
}

fn reading(water: Option<f64>, temperature: Option<f64>, heater_on: bool) -> Frame {
    Frame::Reading(Reading {
        water_distance_in: water,
        temperature_c: temperature,
        heater_on,
        format: ReplyFormat::ThreeLines,
    })
}

fn banner(firmware: &str) -> Frame {
    Frame::Banner {
        firmware: firmware.to_owned(),
    }
}

const GARBAGE: Frame = Frame::Rejected(Rejected::Garbage);
const OUT_OF_SEQUENCE: Frame = Frame::Rejected(Rejected::OutOfSequence);
const TOO_LONG: Frame = Frame::Rejected(Rejected::TooLong);

/// Asserts that each reply decodes to the one reading (water, temperature, heater) beside it.
fn assert_readings(cases: &[(&str, Option<f64>, Option<f64>, bool)]) {
    for &(reply, water, temperature, heater) in cases {
        assert_eq!(
            decode(reply.as_bytes()),
            [reading(water, temperature, heater)],
            "{reply:?}"
        );
    }
}

#[test]
fn a_normal_reply() {
    assert_readings(&[
        ("W+3.52\nT+92.4\nB+1\n", Some(3.52), Some(92.4), true),
        ("W+0.00\nT+-5.5\nB+0\n", Some(0.0), Some(-5.5), false),
    ]);
}

#[test]
fn crlf_line_endings() {
    assert_readings(&[("W+3.52\r\nT+21.0\r\nB+0\r\n", Some(3.52), Some(21.0), false)]);
}

#[test]
fn nothing_until_the_line_ends() {
    let mut decoder = Decoder::new();
    decoder.push(b"W+3.52\nT+21.0\nB+0");
    assert_eq!(decoder.next_frame(), None);
    decoder.push(b"\n");
    assert_eq!(
        drain(&mut decoder),
        [reading(Some(3.52), Some(21.0), false)]
    );
}

#[test]
fn dbl_max_is_a_legal_line_and_a_sentinel() {
    let line = format!("T+{DBL_MAX}");
    assert!(line.len() > 300 && line.len() <= MAX_LINE);
    let reply = format!("W+{DBL_MAX}\n{line}\nB+0\n");
    assert_eq!(decode(reply.as_bytes()), [reading(None, None, false)]);
    let reply = format!("W+{DBL_MAX}\r\n{line}\r\nB+0\r\n");
    assert_eq!(decode(reply.as_bytes()), [reading(None, None, false)]);
}

#[test]
fn temperature_sentinels_are_no_reading() {
    for sentinel in [
        "-1000.0", "-1000.00", "inf", "-inf", "INF", "nan", "NAN", "-nan", "ovf", "OVF", "Ovf",
        "1e309",
    ] {
        let reply = format!("W+3.00\nT+{sentinel}\nB+0\n");
        assert_eq!(
            decode(reply.as_bytes()),
            [reading(Some(3.0), None, false)],
            "T+{sentinel}"
        );
    }
}

#[test]
fn range_checks_are_not_the_decoders_job() {
    assert_readings(&[
        ("W+3.00\nT+85.0\nB+0\n", Some(3.0), Some(85.0), false),
        ("W+400.00\nT+150.0\nB+1\n", Some(400.0), Some(150.0), true),
        ("W+3.00\nT+-999.9\nB+1\n", Some(3.0), Some(-999.9), true),
    ]);
}

#[test]
fn the_banner() {
    assert_eq!(
        decode(b"MrCoffeeBot v2.0 Booted.\n"),
        [banner("MrCoffeeBot v2.0")]
    );
    assert_eq!(
        decode(b"MrCoffeeBot v2.1.3-rc1 Booted.\r\n"),
        [banner("MrCoffeeBot v2.1.3-rc1")]
    );
}

#[test]
fn a_banner_glued_to_a_cut_line() {
    assert_eq!(
        decode(b"W+3.52\nT+5MrCoffeeBot v2.0 Booted.\n"),
        [OUT_OF_SEQUENCE, banner("MrCoffeeBot v2.0")]
    );
    // The cut line alone, with no reply pending, is still reported once.
    assert_eq!(
        decode(b"W+3.5MrCoffeeBot v2.0 Booted.\n"),
        [OUT_OF_SEQUENCE, banner("MrCoffeeBot v2.0")]
    );
    // Non-UTF-8 noise before the banner does not hide it.
    assert_eq!(
        decode(b"\xff\xfeMrCoffeeBot v2.0 Booted.\n"),
        [OUT_OF_SEQUENCE, banner("MrCoffeeBot v2.0")]
    );
}

#[test]
fn a_banner_mid_reply_discards_it() {
    assert_eq!(
        decode(b"W+3.52\nT+90.0\nMrCoffeeBot v2.0 Booted.\nB+1\nW+3.50\nT+20.0\nB+0\n"),
        [
            OUT_OF_SEQUENCE,
            banner("MrCoffeeBot v2.0"),
            OUT_OF_SEQUENCE,
            reading(Some(3.5), Some(20.0), false),
        ]
    );
}

#[test]
fn a_banner_between_replies_is_just_a_banner() {
    assert_eq!(
        decode(b"W+3.52\nT+90.0\nB+1\nMrCoffeeBot v2.0 Booted.\nW+3.50\nT+20.0\nB+0\n"),
        [
            reading(Some(3.52), Some(90.0), true),
            banner("MrCoffeeBot v2.0"),
            reading(Some(3.5), Some(20.0), false),
        ]
    );
}

#[test]
fn not_quite_a_banner_is_garbage() {
    assert_eq!(decode(b"MrCoffeeBot v Booted.\n"), [GARBAGE]);
    assert_eq!(decode(b"MrCoffeeBot v2.0 Booting\n"), [GARBAGE]);
}

#[test]
fn out_of_sequence_lines() {
    assert_eq!(decode(b"T+20.0\n"), [OUT_OF_SEQUENCE]);
    assert_eq!(decode(b"B+0\n"), [OUT_OF_SEQUENCE]);
    assert_eq!(decode(b"W+3.0\nB+0\n"), [OUT_OF_SEQUENCE]);
    // A new W+ while a reply is partial: the partial one is reported, the new one counts.
    assert_eq!(
        decode(b"W+3.0\nW+3.1\nT+20.0\nB+1\n"),
        [OUT_OF_SEQUENCE, reading(Some(3.1), Some(20.0), true)]
    );
    assert_eq!(
        decode(b"W+3.0\nT+20.0\nW+3.1\nT+21.0\nB+1\n"),
        [OUT_OF_SEQUENCE, reading(Some(3.1), Some(21.0), true)]
    );
    // After a rejected line, the rest of that reply is out of sequence too.
    assert_eq!(
        decode(b"W+3.0\nT+20.0\nT+20.0\nB+1\n"),
        [OUT_OF_SEQUENCE, OUT_OF_SEQUENCE]
    );
}

#[test]
fn malformed_values_are_garbage_and_drop_the_reply() {
    assert_eq!(decode(b"W+3.0\nT+abc\nB+1\n"), [GARBAGE, OUT_OF_SEQUENCE]);
    assert_eq!(
        decode(b"W+\nT+20.0\nB+1\n"),
        [GARBAGE, OUT_OF_SEQUENCE, OUT_OF_SEQUENCE]
    );
    assert_eq!(decode(b"W+3.0\nT+20.0\nB+2\n"), [GARBAGE]);
    assert_eq!(decode(b"W+3.0\nT+20.0\nB+\n"), [GARBAGE]);
    assert_eq!(decode(b"T+abc\n"), [GARBAGE]);
    assert_eq!(decode(b"W+3.0\nT+2\xff\nB+1\n"), [GARBAGE, OUT_OF_SEQUENCE]);
}

#[test]
fn unknown_lines_are_garbage() {
    // The controller's 21-byte receive buffer wrapped around a longer line.
    assert_eq!(decode(b"B+1S+?B+1S+?B+1S+?B+1S+?\n"), [GARBAGE]);
    assert_eq!(decode(b"+?B+1S+?B+1S+?B+1S+?B\n"), [GARBAGE]);
    // An unsupported firmware's command set, noise, non-UTF-8.
    assert_eq!(decode(b"TEMP+?\n"), [GARBAGE]);
    assert_eq!(decode(b"X+1.0\n"), [GARBAGE]);
    assert_eq!(decode(b"\xff\xfe\xfd\n"), [GARBAGE]);
    assert_eq!(decode(b"\0\n"), [GARBAGE]);
}

#[test]
fn empty_lines_are_ignored() {
    assert_eq!(decode(b"\n\r\n  \n"), []);
    assert_eq!(
        decode(b"W+3.0\n\nT+20.0\r\n\r\nB+0\n"),
        [reading(Some(3.0), Some(20.0), false)]
    );
}

#[test]
fn an_overlong_line_is_dropped_whole_and_reported_once() {
    let mut decoder = Decoder::new();
    decoder.push(b"W+3.0\nT+20.0\n");
    for _ in 0..100 {
        decoder.push(&[b'7'; 1000]);
        assert_eq!(decoder.next_frame(), None);
    }
    decoder.push(b"\nB+1\nW+3.0\nT+20.0\nB+1\n");
    assert_eq!(
        drain(&mut decoder),
        [
            TOO_LONG,
            OUT_OF_SEQUENCE,
            reading(Some(3.0), Some(20.0), true)
        ]
    );
}

#[test]
fn the_length_limit_is_exact() {
    let fits = format!("W+{}\n", "1".repeat(MAX_LINE - 2));
    assert_eq!(decode(fits.as_bytes()).len(), 0);
    let fits_crlf = format!("W+{}\r\n", "1".repeat(MAX_LINE - 2));
    assert_eq!(decode(fits_crlf.as_bytes()).len(), 0);
    let too_long = format!("W+{}\n", "1".repeat(MAX_LINE - 1));
    assert_eq!(decode(too_long.as_bytes()), [TOO_LONG]);
    let too_long_crlf = format!("W+{}\r\n", "1".repeat(MAX_LINE - 1));
    assert_eq!(decode(too_long_crlf.as_bytes()), [TOO_LONG]);
}

#[test]
fn a_banner_at_the_end_of_an_overlong_line_is_still_seen() {
    let line = format!("{}MrCoffeeBot v2.0 Booted.\n", "x".repeat(2 * MAX_LINE));
    assert_eq!(
        decode(line.as_bytes()),
        [TOO_LONG, banner("MrCoffeeBot v2.0")]
    );
}

#[test]
fn reset_forgets_partial_line_and_reply() {
    let mut decoder = Decoder::new();
    decoder.push(b"W+3.0\nT+20.0\nB+");
    decoder.reset();
    decoder.push(b"1\nW+3.0\nT+20.0\nB+1\n");
    assert_eq!(
        drain(&mut decoder),
        [GARBAGE, reading(Some(3.0), Some(20.0), true)]
    );
}

/// A session exercising every shape above, for the splitting tests.
fn session() -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"MrCoffeeBot v2.0 Booted.\r\nW+3.52\r\nT+21.0\r\nB+0\r\n");
    bytes.extend_from_slice(format!("W+{DBL_MAX}\nT+{DBL_MAX}\nB+0\n").as_bytes());
    bytes.extend_from_slice(b"W+3.1\nT+-1000.0\nB+1\nW+3.1\nT+5MrCoffeeBot v2.0 Booted.\n");
    bytes.extend_from_slice(b"B+1S+?B+1S+?B+1S+?B+1\n\xff\n\nT+1\nW+2\nT+nan\nB+1\n");
    bytes.extend_from_slice(&[b'9'; 1234]);
    bytes.extend_from_slice(b"\nW+3\nT+abc\nB+1\nW+3\nT+85.0\nB+0\n");
    bytes
}

#[test]
fn byte_at_a_time_equals_whole() {
    let bytes = session();
    let whole = decode(&bytes);
    let expected = [
        banner("MrCoffeeBot v2.0"),
        reading(Some(3.52), Some(21.0), false),
        reading(None, None, false),
        reading(Some(3.1), None, true),
        OUT_OF_SEQUENCE,
        banner("MrCoffeeBot v2.0"),
        GARBAGE,
        GARBAGE,
        OUT_OF_SEQUENCE,
        reading(Some(2.0), None, true),
        TOO_LONG,
        GARBAGE,
        OUT_OF_SEQUENCE,
        reading(Some(3.0), Some(85.0), false),
    ];
    assert_eq!(whole, expected);
    let mut decoder = Decoder::new();
    let mut one_by_one = Vec::new();
    for byte in &bytes {
        decoder.push(std::slice::from_ref(byte));
        one_by_one.extend(drain(&mut decoder));
    }
    assert_eq!(one_by_one, whole);
}

#[test]
fn commands_round_trip() {
    for command in [
        Command::Status,
        Command::HeaterOn,
        Command::HeaterOff,
        Command::Reset,
    ] {
        let line = command.line();
        assert!(line.len() <= 16, "{command:?}");
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(Command::parse(line), Some(command));
        assert_eq!(Command::parse(&line[..line.len() - 1]), Some(command));
    }
    assert_eq!(Command::parse(b"B+1\r\n"), Some(Command::HeaterOn));
    assert_eq!(Command::parse(b"TEMP+?\n"), None);
    assert_eq!(Command::parse(b"B+1B+1\n"), None);
    assert_eq!(Command::parse(b""), None);
    assert_eq!(Command::line(Command::Status), b"S+?\n");
    assert!(!Command::Reset.expects_reply());
    assert!(Command::Status.expects_reply());
}

proptest! {
    #[test]
    fn any_split_decodes_the_same(cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30)) {
        let bytes = session();
        let whole = decode(&bytes);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut decoder = Decoder::new();
        let mut pieces = Vec::new();
        for pair in points.windows(2) {
            decoder.push(&bytes[pair[0]..pair[1]]);
            pieces.extend(drain(&mut decoder));
        }
        prop_assert_eq!(pieces, whole);
    }

    #[test]
    fn protocol_like_noise_never_panics(lines in prop::collection::vec(
        "(W\\+|T\\+|B\\+|MrCoffeeBot v|[ -~]{0,3})[-0-9.a-z+ ]{0,8}( Booted\\.)?(\r?\n)?", 0..40)) {
        let mut decoder = Decoder::new();
        for line in &lines {
            decoder.push(line.as_bytes());
            drain(&mut decoder);
        }
    }

    #[test]
    fn resynchronises_after_garbage(
        garbage in prop::collection::vec(any::<u8>(), 0..2000),
        water in 0.0f64..200.0,
        temperature in -20.0f64..125.0,
        heater_on in any::<bool>(),
    ) {
        let mut decoder = Decoder::new();
        decoder.push(&garbage);
        decoder.push(b"\n");
        let junk = drain(&mut decoder);
        prop_assert!(junk.iter().all(|f| !matches!(f, Frame::Reading(_))));
        let reply = format!("W+{water:.2}\r\nT+{temperature:.1}\r\nB+{}\r\n", u8::from(heater_on));
        decoder.push(reply.as_bytes());
        let frames = drain(&mut decoder);
        let expected = reading(
            Some(format!("{water:.2}").parse().unwrap()),
            Some(format!("{temperature:.1}").parse().unwrap()),
            heater_on,
        );
        prop_assert_eq!(frames.last(), Some(&expected));
        prop_assert!(frames.len() <= 2);
    }
}
