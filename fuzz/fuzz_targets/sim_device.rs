//! The simulated controller fed arbitrary bytes, time and faults: it must never panic, never
//! write more than its banners, replies and injected garbage account for, and never keep the
//! heater on 1 s past the last `B+1` it accepted (unless the relay is welded on purpose).
#![no_main]

use coffeebot::sim::{Device, Fault, SimConfig};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

/// The firmware's heater timeout (SPEC §2).
const HEATER_TIMEOUT: Duration = Duration::from_secs(1);
/// An upper bound on one reply: two `DBL_MAX` decimals or two injected texts, and `B+x`.
const MAX_REPLY: u64 = 1024;
/// Longest injected sensor text.
const MAX_TEXT: usize = 64;

/// A fault to inject, drawn from the fuzzer's bytes: every kind but the missing probe and the
/// welded relay, with injected texts cut to [`MAX_TEXT`] and reply delays under 66 s.
fn fault(u: &mut Unstructured) -> arbitrary::Result<Fault> {
    let text = |t: Option<String>| t.map(|t| t.chars().take(MAX_TEXT).collect());
    Ok(match u.int_in_range(0..=11u8)? {
        0 => Fault::Mute(u.arbitrary()?),
        1 => Fault::Hang(u.arbitrary()?),
        2 => Fault::Reboot {
            mid_reply: u.arbitrary()?,
        },
        3 => Fault::Garbage(u.arbitrary()?),
        4 => Fault::CrcError(u.arbitrary()?),
        5 => Fault::SetTemperature(u.arbitrary()?),
        6 => Fault::SetWaterDistance(u.arbitrary()?),
        7 => Fault::ReplyDelay(Duration::from_millis(u.arbitrary::<u16>()?.into())),
        8 => Fault::PowerOnReading85(u.arbitrary()?),
        9 => Fault::TemperatureText(text(u.arbitrary()?)),
        10 => Fault::WaterText(text(u.arbitrary()?)),
        _ => Fault::AnswerBeforeFirstReading(u.arbitrary()?),
    })
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Bytes from the host, at once.
    Bytes(Vec<u8>),
    /// A valid command line, so that the fuzzer reaches the heater states quickly.
    Command(u8),
    Wait(u16),
    ToDeadline,
    Inject(#[arbitrary(with = fault)] Fault),
    PowerOff,
    PowerOn,
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    reset_pin_wired: bool,
    answers_before_first_reading: bool,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let cfg = SimConfig {
        seed: input.seed,
        reset_pin_wired: input.reset_pin_wired,
        answers_before_first_reading: input.answers_before_first_reading,
        ..SimConfig::default()
    };
    let banner_len = cfg.firmware_version.len() as u64 + "MrCoffeeBot v Booted.\n".len() as u64;
    let start = Instant::now();
    let mut now = start;
    let mut dev = Device::new(cfg, start);
    let mut out: u64 = 0;
    let mut garbage: u64 = 0;
    let mut last_feed: Option<Instant> = None;
    for step in input.steps.iter().take(500) {
        match step {
            Step::Bytes(bytes) => dev.receive(now, bytes),
            Step::Command(i) => {
                let line: &[u8] = match i % 4 {
                    0 => b"S+?\n",
                    1 => b"B+1\n",
                    2 => b"B+0\n",
                    _ => b"RESET\n",
                };
                dev.receive(now, line);
            }
            Step::Wait(ms) => {
                now += Duration::from_millis(u64::from(*ms));
                dev.handle_timeout(now);
            }
            Step::ToDeadline => {
                if let Some(t) = dev.poll_timeout() {
                    now = now.max(t);
                    dev.handle_timeout(now);
                }
            }
            Step::Inject(fault) => {
                if let Fault::Garbage(bytes) = fault {
                    garbage += bytes.len() as u64;
                }
                dev.inject(now, fault.clone());
            }
            Step::PowerOff => dev.power_off(now),
            Step::PowerOn => dev.power_on(now),
        }
        while let Some(bytes) = dev.poll_output() {
            out += bytes.len() as u64;
        }
        while let Some(command) = dev.poll_command() {
            match command.line.as_str() {
                "B+1" => last_feed = Some(command.at),
                "B+0" => last_feed = None,
                _ => {}
            }
        }
        let snap = dev.snapshot();
        let budget = garbage + snap.boots * banner_len + snap.commands * MAX_REPLY;
        assert!(out <= budget, "wrote {out} bytes, budget {budget}");
        if let Some(next) = dev.poll_timeout() {
            assert!(next > now, "deadline {next:?} not after {now:?}");
        }
        if snap.heater_on && !snap.stuck_heater {
            let fed = last_feed.expect("heater on without any B+1");
            assert!(
                now.duration_since(fed) < HEATER_TIMEOUT,
                "heater on {:?} after the last B+1",
                now.duration_since(fed)
            );
        }
    }
});
