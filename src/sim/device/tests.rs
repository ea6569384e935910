//! The device model in virtual time: timing, protocol quirks, faults and the plant.
#![allow(clippy::disallowed_methods)]

use super::firmware::MISSING_PROBE_NULS;
use super::plant::BOIL_C;
use super::*;
use proptest::prelude::*;

const BANNER: &str = "MrCoffeeBot v2.0 Booted.\n";
const MS: Duration = Duration::from_millis(1);

/// A device in virtual time: jumps from event to event, never sleeps.
struct Bench {
    dev: Device,
    now: Instant,
    out: Vec<u8>,
}

/// Exact readings, a sensor that starts with a reading, booted and past its first read.
fn exact() -> SimConfig {
    SimConfig {
        temperature_jitter_c: 0.0,
        water_jitter_in: 0.0,
        sensor_power_on_85: false,
        ..SimConfig::default()
    }
}

impl Bench {
    /// Powered on and run until the first sensor read is done.
    fn new(cfg: SimConfig) -> Self {
        let now = Instant::now();
        let mut b = Self {
            dev: Device::new(cfg, now),
            now,
            out: Vec::new(),
        };
        b.run_for(60 * MS);
        b
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(t) = self.dev.poll_timeout().filter(|t| *t <= until) {
            self.now = t.max(self.now);
            self.dev.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
        self.dev.handle_timeout(until);
        self.drain();
    }

    fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.dev.receive(self.now, bytes);
        self.drain();
    }

    /// Sends a command and waits 40 ms (two loop cycles), as a careful host does.
    fn command(&mut self, text: &str) -> String {
        self.send(text);
        self.run_for(40 * MS);
        self.take()
    }

    fn inject(&mut self, fault: Fault) {
        self.dev.inject(self.now, fault);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(bytes) = self.dev.poll_output() {
            self.out.extend(bytes);
        }
    }

    fn take(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.out)).into_owned()
    }

    fn boots(&self) -> u64 {
        self.dev.snapshot().boots
    }

    fn log(&self) -> Vec<String> {
        self.dev.command_log().map(|e| e.line.clone()).collect()
    }
}

fn with_plate(c: f64, water: f64) -> Bench {
    Bench::new(SimConfig {
        initial_plate_c: c,
        ambient_c: c,
        initial_water_distance_in: water,
        ..exact()
    })
}

#[test]
fn boots_with_banner_and_answers_one_line_like_6105f59() {
    let mut b = with_plate(50.0, 3.25);
    assert_eq!(b.take(), BANNER);
    assert_eq!(b.command("S+?\n"), "W+3.25,T+50.0,B+0\n");
    assert_eq!(b.command("B+1\r\n"), "W+3.25,T+50.0,B+1\n");
    assert_eq!(b.command("B+0\n"), "W+3.25,T+50.0,B+0\n");
    assert_eq!(b.log(), ["S+?", "B+1", "B+0"]);
}

#[test]
fn build_05a9a00_answers_three_lines_and_has_no_heater_timeout() {
    let mut b = Bench::new(SimConfig {
        firmware: Build::B05a9a00,
        ..exact()
    });
    b.take();
    assert_eq!(b.command("B+1\n"), "W+2.00\nT+21.0\nB+1\n");
    b.run_for(Duration::from_millis(4500));
    assert!(b.dev.snapshot().heater_on, "no 1 s time-out");
    assert!(b.command("S+?\n").ends_with("\nB+1\n"));
    // Only B+0 or the watchdog turns it off.
    b.run_for(Duration::from_millis(5100));
    assert_eq!(b.boots(), 2);
    assert!(!b.dev.snapshot().heater_on);
}

#[test]
fn builds_parse_and_print_as_their_commits() {
    for build in [Build::B6105f59, Build::B05a9a00] {
        assert_eq!(build.to_string().parse::<Build>(), Ok(build));
    }
    assert!("6105".parse::<Build>().unwrap_err().contains("05a9a00"));
    assert_eq!(Build::default(), Build::B6105f59);
}

#[test]
fn banner_first_then_one_read_and_no_reply_before_it() {
    let now = Instant::now();
    let mut b = Bench {
        dev: Device::new(exact(), now),
        now,
        out: Vec::new(),
    };
    b.send("S+?\n"); // lost: the MCU is still in its constructors
    b.run_for(BOOT_TIME + MS * 4);
    assert_eq!(b.take(), BANNER);
    b.send("S+?\n"); // waits in the FIFO during the first read
    b.run_for(10 * MS);
    assert_eq!(b.take(), "", "nothing before the first sensor read");
    b.run_for(20 * MS);
    assert_eq!(b.take(), "W+2.00,T+21.0,B+0\n");
    assert_eq!(b.dev.snapshot().dropped_bytes, 4);
}

#[test]
fn the_ds18b20_reads_85_after_its_power_on_and_lags_one_conversion() {
    let mut b = Bench::new(SimConfig {
        sensor_power_on_85: true,
        initial_plate_c: 40.0,
        ambient_c: 40.0,
        ..exact()
    });
    b.take();
    assert_eq!(b.command("S+?\n"), "W+2.00,T+85.0,B+0\n");
    b.run_for(Duration::from_millis(800));
    assert_eq!(b.command("S+?\n"), "W+2.00,T+40.0,B+0\n");
    // A new plate temperature shows up only after a whole conversion.
    b.inject(Fault::SetTemperature(60.0));
    assert_eq!(b.command("S+?\n"), "W+2.00,T+40.0,B+0\n");
    b.run_for(Duration::from_millis(1600));
    assert!(b.command("S+?\n").contains("T+59."), "cooling towards 40");
    // A watchdog reboot keeps the sensor's value; a power cycle does not.
    b.run_for(Duration::from_millis(5100));
    assert_eq!(b.boots(), 2);
    b.take();
    assert!(!b.command("S+?\n").contains("T+85.0"));
    b.dev.power_off(b.now);
    b.dev.power_on(b.now);
    b.run_for(60 * MS);
    b.take();
    assert!(b.command("S+?\n").contains("T+85.0"));
}

#[test]
fn readings_are_the_firmware_s_steps() {
    let mut b = with_plate(52.3, 2.004);
    b.take();
    // 52.3 °C is 52.3125 in 1/16 °C; 2.004 in is 297 µs of echo, 2.01 in.
    assert_eq!(b.command("S+?\n"), "W+2.01,T+52.3,B+0\n");
}

#[test]
fn commands_match_by_case_sensitive_prefix() {
    let mut b = Bench::new(exact());
    b.take();
    for line in ["S+?junk\n", "B+10\n", "B+0\r\n", "RESETX\n"] {
        b.command(line);
    }
    assert_eq!(b.log(), ["S+?", "B+1", "B+0", "RESET"]);
    for line in ["s+?\n", " S+?\n", "\n", "B+\n", "TEMP+?\n", "RESE\n"] {
        assert_eq!(b.command(line), "", "{line:?}");
    }
    assert_eq!(b.log().len(), 4);
}

#[test]
fn heater_goes_off_1000_to_1020_ms_after_the_last_b1_and_b0_restarts_the_timer() {
    let mut b = Bench::new(exact());
    b.send("B+1\n");
    b.run_for(40 * MS);
    let on_at = b.dev.command_log().last().unwrap().at;
    let mut off_at = None;
    for _ in 0..1200 {
        b.run_for(MS);
        if !b.dev.snapshot().heater_on {
            off_at = Some(b.now);
            break;
        }
    }
    let after = off_at.unwrap() - on_at;
    assert!(
        after >= HEATER_TIMEOUT && after <= HEATER_TIMEOUT + 22 * MS,
        "{after:?}"
    );
    // S+? does not feed the heater, B+1 does.
    b.command("B+1\n");
    for _ in 0..5 {
        b.run_for(Duration::from_millis(210));
        b.command("S+?\n");
    }
    assert!(!b.dev.snapshot().heater_on);
    for _ in 0..20 {
        b.command("B+1\n");
        b.run_for(Duration::from_millis(200));
        assert!(b.dev.snapshot().heater_on);
    }
}

#[test]
fn watchdog_reboots_five_seconds_after_the_last_valid_line() {
    let mut b = Bench::new(exact());
    b.take();
    b.command("B+1\n");
    let fed = b.dev.command_log().last().unwrap().at;
    b.command("s+?\n"); // invalid: does not feed
    b.run_for(fed + WATCHDOG_TIMEOUT - b.now);
    assert_eq!(b.boots(), 1);
    b.run_for(2 * MS);
    assert_eq!(b.boots(), 2);
    b.run_for(30 * MS);
    assert_eq!(b.take(), BANNER);
    assert!(!b.dev.snapshot().heater_on);
    b.run_for(Duration::from_millis(10_100));
    assert_eq!(b.boots(), 4, "keeps rebooting every ~5.02 s");
}

#[test]
fn reset_feeds_the_watchdog_without_a_reply_unless_the_pin_is_wired() {
    let mut b = Bench::new(exact());
    b.take();
    for _ in 0..3 {
        assert_eq!(b.command("RESET\n"), "");
        b.run_for(Duration::from_secs(4));
    }
    assert_eq!(b.boots(), 1, "RESET is a valid line: it feeds the watchdog");
    let mut b = Bench::new(SimConfig {
        reset_pin_wired: true,
        ..exact()
    });
    b.take();
    assert_eq!(b.command("RESET\n"), BANNER);
    assert_eq!(b.boots(), 2);
}

#[test]
fn a_burst_of_ten_status_polls_overflows_the_fifo_like_the_real_board() {
    let mut b = Bench::new(exact());
    b.take();
    b.run_for(7 * MS); // into the idle part of a cycle, as likely as not
    b.send(&"S+?\n".repeat(10));
    b.run_for(Duration::from_millis(200));
    let replies = b.take().lines().count();
    let dropped = b.dev.snapshot().dropped_bytes;
    assert!((3..=5).contains(&replies), "{replies} replies");
    assert!((16..=28).contains(&dropped), "{dropped} bytes dropped");
}

#[test]
fn one_command_at_a_time_never_loses_anything() {
    let mut b = Bench::new(exact());
    b.take();
    for i in 0..50 {
        let line = if i % 2 == 0 { "B+1\n" } else { "S+?\n" };
        assert_eq!(b.command(line).lines().count(), 1);
    }
    assert_eq!(b.dev.snapshot().dropped_bytes, 0);
}

#[test]
fn a_lost_newline_glues_the_next_command_and_a_lone_newline_clears_it() {
    let mut b = Bench::new(exact());
    b.take();
    b.command("xx");
    assert_eq!(b.command("S+?\n"), "", "`xxS+?` is no command");
    b.command("xx");
    b.command("\n");
    assert_eq!(b.command("S+?\n").lines().count(), 1);
}

#[test]
fn the_line_buffer_wraps_at_21_bytes() {
    let mut b = Bench::new(exact());
    b.take();
    // Sent 8 bytes at a time, as the realfw self-test does.
    let send = |b: &mut Bench, text: String| {
        let mut replies = String::new();
        for piece in text.as_bytes().chunks(8) {
            b.send_bytes(piece);
            b.run_for(25 * MS);
            replies += &b.take();
        }
        b.run_for(25 * MS);
        replies + &b.take()
    };
    assert_eq!(send(&mut b, "x".repeat(21) + "S+?\n").lines().count(), 1);
    assert_eq!(send(&mut b, "x".repeat(20) + "S+?\n"), "");
    assert_eq!(b.dev.snapshot().dropped_bytes, 0);
}

#[test]
fn replies_come_1_to_22_ms_after_the_command() {
    let mut b = Bench::new(exact());
    b.take();
    let mut latencies = Vec::new();
    for i in 0..60 {
        b.run_for(Duration::from_micros(3_700 * (i % 7) + 250));
        let sent = b.now;
        b.send("S+?\n");
        let mut got = None;
        for _ in 0..400 {
            b.run_for(Duration::from_micros(100));
            if !b.take().is_empty() {
                got = Some(b.now - sent);
                break;
            }
        }
        latencies.push(got.unwrap());
    }
    let min = latencies.iter().min().unwrap();
    let max = latencies.iter().max().unwrap();
    assert!(*min >= MS && *min < 3 * MS, "{min:?}");
    assert!(*max > 15 * MS && *max <= 22 * MS, "{max:?}");
}

#[test]
fn crc_failure_and_a_missing_probe_read_the_sentinel() {
    let mut b = with_plate(30.0, 2.0);
    b.take();
    b.inject(Fault::CrcError(true));
    assert_eq!(b.command("S+?\n"), "W+2.00,T+-1000.0,B+0\n");
    b.inject(Fault::CrcError(false));
    assert_eq!(b.command("S+?\n"), "W+2.00,T+30.0,B+0\n");
    b.inject(Fault::ProbeMissing(true));
    assert_eq!(b.command("S+?\n"), "W+2.00,T+-1000.0,B+0\n");
}

#[test]
fn a_board_without_its_probe_stops_before_the_banner() {
    let mut b = Bench::new(exact());
    b.take();
    b.inject(Fault::ProbeMissing(true));
    b.inject(Fault::Reboot { mid_reply: false });
    b.run_for(60 * MS);
    assert_eq!(b.out, vec![0; MISSING_PROBE_NULS]);
    b.out.clear();
    assert!(b.dev.snapshot().halted);
    assert_eq!(b.command("S+?\n"), "");
    b.run_for(Duration::from_secs(12));
    assert_eq!((b.take(), b.boots()), (String::new(), 2), "no watchdog");
    b.inject(Fault::ProbeMissing(false));
    b.inject(Fault::Reboot { mid_reply: false });
    b.run_for(60 * MS);
    assert_eq!(b.take(), BANNER);
    assert_eq!(b.command("S+?\n"), "W+2.00,T+21.0,B+0\n");
}

#[test]
fn other_sentinels_can_be_injected() {
    let mut b = with_plate(30.0, 2.0);
    b.take();
    b.inject(Fault::TemperatureText(Some("nan".into())));
    b.inject(Fault::WaterText(Some("ovf".into())));
    assert_eq!(b.command("S+?\n"), "W+ovf,T+nan,B+0\n");
}

#[test]
fn power_on_reading_85_after_every_boot_when_asked() {
    let mut b = with_plate(30.0, 2.0);
    b.inject(Fault::PowerOnReading85(true));
    b.dev.cfg.sensor_power_on_85 = true;
    b.inject(Fault::Reboot { mid_reply: false });
    b.run_for(60 * MS);
    b.take();
    assert_eq!(b.command("S+?\n"), "W+2.00,T+85.0,B+0\n");
    b.run_for(Duration::from_millis(800));
    assert_eq!(b.command("S+?\n"), "W+2.00,T+30.0,B+0\n");
}

#[test]
fn a_firmware_that_answers_before_reading_prints_the_largest_double() {
    let mut b = Bench::new(SimConfig {
        answers_before_first_reading: true,
        ..exact()
    });
    b.take();
    b.send("S+?\n");
    // 636 bytes take 55 ms on the wire.
    b.run_for(80 * MS);
    let reply = b.take();
    let expected = format!("W+{:.2},T+{:.1},B+0\n", f64::MAX, f64::MAX);
    assert_eq!(reply, expected);
    assert!(reply.len() > 600);
    assert_eq!(b.command("S+?\n"), "W+2.00,T+21.0,B+0\n");
}

#[test]
fn a_welded_relay_stays_on_after_b0() {
    let mut b = Bench::new(exact());
    b.inject(Fault::StuckHeater(true));
    b.take();
    b.command("B+1\n");
    assert!(b.command("B+0\n").ends_with("B+1\n"));
    b.run_for(Duration::from_secs(3));
    assert!(b.dev.snapshot().heater_on);
}

#[test]
fn a_reboot_mid_reply_cuts_a_byte_and_glues_the_banner() {
    let mut b = with_plate(52.3, 2.0);
    b.take();
    b.command("B+1\n");
    b.inject(Fault::Reboot { mid_reply: true });
    b.send("S+?\n");
    b.run_for(60 * MS);
    assert_eq!(b.out, b"W+\xb2MrCoffeeBot v2.0 Booted.\n");
    assert_eq!(b.boots(), 2);
    assert!(!b.dev.snapshot().heater_on);
}

#[test]
fn the_watchdog_cuts_a_reply_written_just_before_its_deadline() {
    // Like realfw's provoke_cut_reply.py: a line written at different leads before the
    // deadline; those the firmware handles in its last ~1.4 ms have their reply cut.
    let mut cuts = Vec::new();
    for lead_us in (100..=2500).step_by(100) {
        let mut b = Bench::new(exact());
        b.command("S+?\n");
        b.take();
        let fed = b.dev.command_log().last().unwrap().at + 1400 * Duration::from_micros(1);
        let send_at = fed + WATCHDOG_TIMEOUT - Duration::from_micros(lead_us) - BYTE_TIME * 4;
        b.run_for(send_at - b.now);
        b.send("S+?\n");
        b.run_for(60 * MS);
        let out = std::mem::take(&mut b.out);
        if b.boots() == 2 && out.len() > BANNER.len() && out.len() < BANNER.len() + 18 {
            assert!(out.ends_with(BANNER.as_bytes()));
            cuts.push(out);
        }
    }
    // As on realfw: `\xff` (cut in the first byte), `W\xfb`, `W+\xb2`…
    assert!(
        cuts.iter().any(|c| c.starts_with(b"W")),
        "no reply was cut: {cuts:?}"
    );
}

#[test]
fn mute_is_a_dead_link_that_reboots_unseen() {
    let mut b = Bench::new(exact());
    b.take();
    b.command("B+1\n");
    b.inject(Fault::Mute(true));
    assert_eq!(b.command("S+?\n"), "");
    assert_eq!(b.dev.snapshot().dropped_bytes, 4);
    b.run_for(Duration::from_millis(1100));
    assert!(!b.dev.snapshot().heater_on, "the heater timeout still runs");
    b.run_for(Duration::from_secs(10));
    assert_eq!(b.boots(), 3);
    assert_eq!(b.take(), "");
    b.inject(Fault::Mute(false));
    assert_eq!(b.command("S+?\n").lines().count(), 1);
}

#[test]
fn a_dead_ranger_hangs_the_loop_a_banner_every_five_seconds() {
    let mut b = Bench::new(exact());
    b.take();
    b.inject(Fault::Hang(true));
    let mut seen = String::new();
    for _ in 0..16 {
        seen += &b.command("S+?\n");
        b.run_for(Duration::from_millis(960));
        seen += &b.take();
    }
    assert_eq!(seen, BANNER.repeat(3));
    assert_eq!(b.boots(), 4);
    assert!(b.dev.command_log().next().is_none());
    b.inject(Fault::Hang(false));
    b.run_for(Duration::from_millis(5100));
    b.take();
    assert_eq!(
        b.command("S+?\n").lines().count(),
        1,
        "answers after the next boot"
    );
}

#[test]
fn replies_can_be_delayed() {
    let mut b = Bench::new(exact());
    b.take();
    b.inject(Fault::ReplyDelay(Duration::from_millis(300)));
    b.send("S+?\n");
    b.run_for(Duration::from_millis(250));
    assert_eq!(b.take(), "");
    b.run_for(Duration::from_millis(100));
    assert_eq!(b.take().lines().count(), 1);
}

#[test]
fn garbage_is_written_as_is() {
    let mut b = Bench::new(exact());
    b.take();
    b.inject(Fault::Garbage(b"\xff\x00junk".to_vec()));
    assert_eq!(b.out, b"\xff\x00junk");
}

#[test]
fn readings_jitter_by_a_digit_or_two() {
    let mut b = with_plate(60.0, 3.0);
    b.dev.cfg.temperature_jitter_c = 0.15;
    b.dev.cfg.water_jitter_in = 0.02;
    b.take();
    let mut temperatures = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let reply = b.command("S+?\n");
        b.run_for(Duration::from_millis(400));
        let fields: Vec<&str> = reply.trim_end().split(',').collect();
        let w: f64 = fields[0][2..].parse().unwrap();
        let t: f64 = fields[1][2..].parse().unwrap();
        assert!((t - 60.0).abs() <= 0.25, "{t}");
        assert!((w - 3.0).abs() <= 0.03, "{w}");
        temperatures.insert(fields[1].to_owned());
    }
    assert!(temperatures.len() > 1);
}

/// Feeds `B+1` every 250 ms for `secs` seconds.
fn heat_for(b: &mut Bench, secs: u64) {
    for _ in 0..secs * 4 {
        b.command("B+1\n");
        b.run_for(Duration::from_millis(210));
    }
}

#[test]
fn the_plate_heats_while_on_and_cools_towards_ambient_when_off() {
    let mut b = Bench::new(exact());
    heat_for(&mut b, 10);
    let hot = b.dev.snapshot().plate_c;
    assert!((35.0..42.0).contains(&hot), "{hot}");
    b.command("B+0\n");
    b.run_for(Duration::from_secs(60));
    let cooled = b.dev.snapshot().plate_c;
    assert!(cooled < hot - 1.0 && cooled > 21.0, "{cooled}");
}

#[test]
fn the_reservoir_drains_while_pumping_and_a_dry_plate_runs_away() {
    let mut b = with_plate(95.0, 7.9);
    b.dev.cfg.ambient_c = 21.0;
    heat_for(&mut b, 5);
    let s = b.dev.snapshot();
    assert!(s.plate_c <= BOIL_C, "held at boiling: {}", s.plate_c);
    assert!(s.water_distance_in > 7.9);
    heat_for(&mut b, 10);
    let s = b.dev.snapshot();
    assert_eq!(s.water_distance_in, 8.0, "empty");
    assert!(s.plate_c > 110.0, "dry boil: {}", s.plate_c);
}

#[test]
fn unplugged_board_is_silent_and_boots_when_plugged_in() {
    let mut b = Bench::new(exact());
    b.take();
    b.command("B+1\n");
    b.dev.power_off(b.now);
    assert!(!b.dev.snapshot().heater_on);
    assert_eq!(b.dev.poll_timeout(), None);
    assert_eq!(b.command("S+?\n"), "");
    b.run_for(Duration::from_secs(20));
    assert_eq!(b.boots(), 1);
    b.dev.power_on(b.now);
    b.run_for(60 * MS);
    assert_eq!(b.take(), BANNER);
    assert_eq!(b.command("S+?\n").lines().count(), 1);
}

proptest! {
    /// Whatever arrives, whenever: no panic, the heater never outlives its time-out by more
    /// than a sensor read, memory stays bounded, and every output line is a banner, a reply,
    /// or a cut reply glued to a banner.
    #[test]
    fn any_input_is_survived(
        chunks in proptest::collection::vec(
            (0u64..1500, prop_oneof![
                Just(b"B+1\n".to_vec()),
                Just(b"S+?\n".to_vec()),
                Just(b"B+0\n".to_vec()),
                Just(b"RESET\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
            ]),
            0..60,
        )
    ) {
        let mut b = Bench::new(SimConfig::default());
        let mut last_write: Option<Instant> = None;
        for (gap_ms, bytes) in chunks {
            b.run_for(Duration::from_millis(gap_ms));
            b.send_bytes(&bytes);
            if let Some(e) = b.dev.command_log().filter(|e| e.line.starts_with("B+")).last() {
                last_write = Some(e.at);
            }
            if b.dev.snapshot().heater_on {
                let since = b.now - last_write.expect("heater on without any B+1");
                prop_assert!(since <= HEATER_TIMEOUT + 22 * MS);
            }
            prop_assert!(b.dev.wire.len() <= WIRE_CAP && b.dev.fifo.len() <= UART_FIFO_BYTES);
        }
        b.run_for(Duration::from_millis(30));
        let out = b.take();
        for line in out.lines() {
            let ok = line == BANNER.trim_end()
                || (line.starts_with("W+") && line.contains(",T+") && line.contains(",B+"))
                || line.ends_with(BANNER.trim_end());
            prop_assert!(ok, "{line:?}");
        }
    }
}
