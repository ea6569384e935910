//! The simulated controller fed arbitrary bytes, time and faults: it must never panic, never
//! write more than its banners, replies and injected garbage account for, and never keep the
//! heater on 1 s past the last `B+1` it accepted (unless the relay is welded on purpose).
#![no_main]

use coffeebot::sim::{Device, Fault, SimConfig};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

/// The firmware's heater timeout (SPEC §2).
const HEATER_TIMEOUT: Duration = Duration::from_secs(1);
/// An upper bound on one reply: two `DBL_MAX` decimals or two injected texts, and `B+x`.
const MAX_REPLY: u64 = 1024;
/// Longest injected sensor text.
const MAX_TEXT: usize = 64;

#[derive(Arbitrary, Debug)]
enum Inject {
    Mute(bool),
    Hang(bool),
    Reboot { mid_reply: bool },
    Garbage(Vec<u8>),
    CrcError(bool),
    SetTemperature(f64),
    SetWaterDistance(f64),
    ReplyDelayMs(u16),
    PowerOnReading85(bool),
    TemperatureText(Option<String>),
    WaterText(Option<String>),
    AnswerBeforeFirstReading(bool),
}

impl Inject {
    fn fault(&self) -> Fault {
        let text = |t: &Option<String>| t.as_ref().map(|t| t.chars().take(MAX_TEXT).collect());
        match self {
            Inject::Mute(on) => Fault::Mute(*on),
            Inject::Hang(on) => Fault::Hang(*on),
            Inject::Reboot { mid_reply } => Fault::Reboot {
                mid_reply: *mid_reply,
            },
            Inject::Garbage(bytes) => Fault::Garbage(bytes.clone()),
            Inject::CrcError(on) => Fault::CrcError(*on),
            Inject::SetTemperature(c) => Fault::SetTemperature(*c),
            Inject::SetWaterDistance(d) => Fault::SetWaterDistance(*d),
            Inject::ReplyDelayMs(ms) => Fault::ReplyDelay(Duration::from_millis(u64::from(*ms))),
            Inject::PowerOnReading85(on) => Fault::PowerOnReading85(*on),
            Inject::TemperatureText(t) => Fault::TemperatureText(text(t)),
            Inject::WaterText(t) => Fault::WaterText(text(t)),
            Inject::AnswerBeforeFirstReading(on) => Fault::AnswerBeforeFirstReading(*on),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Bytes from the host, at once.
    Bytes(Vec<u8>),
    /// A valid command line, so that the fuzzer reaches the heater states quickly.
    Command(u8),
    Wait(u16),
    ToDeadline,
    Inject(Inject),
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
            Step::Inject(inject) => {
                if let Inject::Garbage(bytes) = inject {
                    garbage += bytes.len() as u64;
                }
                dev.inject(now, inject.fault());
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
